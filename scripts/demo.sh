#!/usr/bin/env bash
# Builds shoal, starts a single-node cluster in a fresh state dir, declares an
# example service and shows what the cluster stores. The daemon stays in the
# foreground: Ctrl-C stops it. Nothing outside the state dir is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin shoal
shoal=$PWD/target/release/shoal
state_dir=${SHOAL_STATE_DIR:-$(mktemp -d /tmp/shoal-demo.XXXXXX)}
export SHOAL_SOCKET=$state_dir/shoal.sock

"$shoal" daemon --state-dir "$state_dir" &
daemon=$!
trap 'kill $daemon 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  "$shoal" version >/dev/null 2>&1 && break
  kill -0 $daemon 2>/dev/null || { echo "the daemon exited" >&2; exit 1; }
  sleep 0.1
done

set -x
"$shoal" version
"$shoal" node ls
"$shoal" network create backend --subnet 10.20.0.0/16
"$shoal" service create --name web --replicas 3 --env A=1 --label tier=front \
  --reserve-memory 64M --restart-condition on-failure --restart-delay 2s \
  --update-parallelism 2 --update-delay 5s --network backend -- python3 -m http.server
"$shoal" service ls
"$shoal" service scale web=4
"$shoal" service inspect web
set +x
echo
echo "state dir: $state_dir"
echo "the daemon keeps running; in another shell: export SHOAL_SOCKET=$SHOAL_SOCKET; $shoal service ls"
echo "Ctrl-C stops it."
wait $daemon
