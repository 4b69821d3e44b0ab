#!/usr/bin/env bash
# Builds shoal, starts a single-node cluster in a fresh state dir, runs an
# example service (python3 web servers on free ports) and shows it running. The daemon stays in the
# foreground: Ctrl-C stops it. Nothing outside the state dir is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin shoal
shoal=$PWD/target/release/shoal
state_dir=${SHOAL_STATE_DIR:-$(mktemp -d /tmp/shoal-demo.XXXXXX)}
export SHOAL_SOCKET=$state_dir/shoal.sock

# Other hosts would join on this port (SHOAL_LISTEN, default a free port on
# loopback, so the demo never collides with a daemon already on 4242).
"$shoal" daemon --state-dir "$state_dir" --listen-addr "${SHOAL_LISTEN:-127.0.0.1:0}" &
daemon=$!
# Tasks outlive a stopped daemon (the next start adopts them): remove the
# demo's service first, so nothing of it is left running.
cleanup() {
  "$shoal" service rm web >/dev/null 2>&1 || true
  for _ in $(seq 100); do
    [ -z "$("$shoal" service ps web -q 2>/dev/null)" ] && break
    sleep 0.1
  done
  kill $daemon 2>/dev/null || true
}
trap cleanup EXIT
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
  --update-parallelism 2 --update-delay 5s --network backend -- python3 -u -m http.server 0
"$shoal" service ls
"$shoal" service scale web=4
"$shoal" service update web --env A=2
"$shoal" service ps web
"$shoal" service logs web
"$shoal" join-token worker
set +x
echo
echo "state dir: $state_dir"
echo "the daemon keeps running; in another shell: export SHOAL_SOCKET=$SHOAL_SOCKET; $shoal service ls"
echo "Ctrl-C removes the demo service and stops the daemon."
wait $daemon
