#!/usr/bin/env bash
# Elections on three managers of one machine, idle and then busy: every
# manager logs "this manager leads" with its raft term when a term of
# leadership starts, so the terms beyond the first are elections nobody
# asked for. A leader whose quorum did not acknowledge it for a lease stops
# its components and starts them again in the same term: counted apart, as
# lapses.
#
#   bash scripts/bench-elections.sh [MINUTES per phase, default 5]
#
# Busy: two CPU burners (one per core) and 64 writers through the leader.
set -euo pipefail
minutes=${1:-5}
cd "$(dirname "$0")/.."
cargo build --release -q -p shoal
bin=$PWD/target/release/shoal
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

start() { # name, args...
  local name=$1; shift
  SHOAL_LOG=info "$bin" daemon --state-dir "$dir/$name" --listen-addr 127.0.0.1:0 "$@" 2>"$dir/$name.log" &
  pids+=($!)
  for _ in $(seq 600); do "$bin" --socket "$dir/$name/shoal.sock" version >/dev/null 2>&1 && return; sleep 0.1; done
  echo "$name did not start" >&2; exit 1
}
start m1
addr=$("$bin" --socket "$dir/m1/shoal.sock" join-token manager | awk '{for (i=1;i<=NF;i++) if ($i=="--join") print $(i+1)}')
token=$("$bin" --socket "$dir/m1/shoal.sock" join-token manager -q)
start m2 --join "$addr" --token "$token"
start m3 --join "$addr" --token "$token"
sleep 5
plain() { cat "$dir"/m*.log | sed 's/\x1b\[[0-9;]*m//g'; }
terms() { plain | grep "this manager leads" | grep -o "term=[0-9]*" | sort -u | wc -l; }
lapses() { plain | grep -c "no quorum acknowledged this leader" || true; }

before=$(terms); lapsed=$(lapses)
sleep $((minutes * 60))
idle=$(( $(terms) - before ))
echo "idle: $idle elections in $minutes min ($(( idle * 60 / minutes )) per hour), $(( $(lapses) - lapsed )) lapses"

burners=()
for _ in 1 2; do (while :; do :; done) & burners+=($!); done
writer() {
  local n=0
  while [ -e "$dir/busy" ]; do
    n=$((n + 1))
    "$bin" --socket "$dir/m$(( (n % 3) + 1 ))/shoal.sock" network create "w$1-$n" >/dev/null 2>&1 || true
  done
}
touch "$dir/busy"
for w in $(seq 64); do writer "$w" & burners+=($!); done
before=$(terms); lapsed=$(lapses)
sleep $((minutes * 60))
busy=$(( $(terms) - before ))
rm -f "$dir/busy"
kill "${burners[@]}" 2>/dev/null || true
echo "busy: $busy elections in $minutes min ($(( busy * 60 / minutes )) per hour), $(( $(lapses) - lapsed )) lapses"
