#!/usr/bin/env bash
# A rolling update on one node with the process executor: REPLICAS tasks of
# `sleep`, a new env rolled out PARALLELISM at a time (no delay, no
# monitor), timed from `service update` to the update status COMPLETED.
#
#   bash scripts/bench-rolling-update.sh [REPLICAS, default 100] [PARALLELISM, default 10] [ORDER, default stop-first]
set -euo pipefail
replicas=${1:-100}
parallelism=${2:-10}
order=${3:-stop-first}
cd "$(dirname "$0")/.."
cargo build --release -q -p shoal
bin=$PWD/target/release/shoal
dir=$(mktemp -d)
pid=
cleanup() {
  "$bin" --socket "$dir/s/shoal.sock" service rm web >/dev/null 2>&1 || true
  for _ in $(seq 100); do
    [ -z "$("$bin" --socket "$dir/s/shoal.sock" task ls -q 2>/dev/null)" ] && break
    sleep 0.1
  done
  [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
"$bin" daemon --state-dir "$dir/s" --listen-addr 127.0.0.1:0 2>"$dir/daemon.log" &
pid=$!
export SHOAL_SOCKET=$dir/s/shoal.sock
for _ in $(seq 600); do "$bin" version >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" service create --name web --replicas "$replicas" --update-parallelism "$parallelism" \
  --update-monitor 0s --update-order "$order" -- sleep 3600 >/dev/null
until [ "$("$bin" service ls --format json | grep -o '"replicas":"[0-9/]*"')" = "\"replicas\":\"$replicas/$replicas\"" ]; do sleep 0.1; done
start=$(date +%s%N)
"$bin" service update web --env ROLLOUT=1 >/dev/null
until "$bin" service inspect web | grep -q '"state": "COMPLETED"'; do sleep 0.05; done
end=$(date +%s%N)
echo "rolling update of $replicas process tasks, parallelism $parallelism, $order: COMPLETED $(( (end - start) / 1000000 )) ms after service update"
