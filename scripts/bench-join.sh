#!/usr/bin/env bash
# Join time: from `shoal daemon --join` starting to the node Ready in the
# manager's `node ls`, for one worker, then for N workers started at once
# (default 100). Each daemon has its own state dir under one temp dir; all
# listen on loopback. Prints the figures; leaves nothing running.
#
#   bash scripts/bench-join.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
cargo build --release --locked --bin shoal >/dev/null
shoal=$PWD/target/release/shoal
dir=$(mktemp -d /tmp/shoal-join-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
now() { date +%s.%N; }
ready() { SHOAL_SOCKET=$dir/m/shoal.sock "$shoal" node ls --format json | grep -c '"status":"Ready"' || true; }

"$shoal" daemon --state-dir "$dir/m" --listen-addr 127.0.0.1:0 2>"$dir/m.log" &
pids+=($!)
for _ in $(seq 300); do
  SHOAL_SOCKET=$dir/m/shoal.sock "$shoal" version >/dev/null 2>&1 && break
  sleep 0.05
done
export SHOAL_SOCKET=$dir/m/shoal.sock
token=$("$shoal" join-token worker -q)
addr=$("$shoal" join-token worker | awk '/--join/ {for (i = 1; i <= NF; i++) if ($i == "--join") print $(i + 1)}')

start=$(now)
env -u SHOAL_SOCKET "$shoal" daemon --state-dir "$dir/w0" --join "$addr" --token "$token" 2>"$dir/w0.log" &
pids+=($!)
# Each wait is bounded: a join that failed ends the run with its log.
wait_ready() {
  local want=$1 deadline=$(( $(date +%s) + 120 ))
  until [ "$(ready)" -ge "$want" ]; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "not $want nodes Ready within 120 s; the workers' logs:" >&2
      tail -n 3 "$dir"/w*.log >&2
      exit 1
    fi
    sleep "$2"
  done
}
wait_ready 2 0.01
one=$(awk "BEGIN { print $(now) - $start }")
echo "one worker: daemon start to Ready in ${one} s"

start=$(now)
for i in $(seq 1 "$n"); do
  env -u SHOAL_SOCKET "$shoal" daemon --state-dir "$dir/w$i" --join "$addr" --token "$token" 2>"$dir/w$i.log" &
  pids+=($!)
done
wait_ready $((n + 2)) 0.05
many=$(awk "BEGIN { print $(now) - $start }")
echo "$n workers at once: all Ready in ${many} s"
