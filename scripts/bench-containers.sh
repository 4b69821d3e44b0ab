#!/usr/bin/env bash
# Containers side by side on this machine's Docker Engine, in one run:
# Shoal (one node, release build), Docker Swarm mode, and the floor (N
# `docker run -d` in parallel). For each N, ROUNDS rounds of:
#   create: the service created → N containers running (as the engine
#           lists them: ground truth for both orchestrators)
#   kill:   one container killed → N running again, the killed one replaced
#   rm:     the service removed → no container of it left
# Both run `--init` busybox `sleep` (a stop is then prompt on both) with a
# restart delay of 0. Prints a Markdown table of medians.
#
#   bash scripts/bench-containers.sh [N ...]     (default: 20 100)
#
# Needs root, a Docker Engine with swarm mode off (it is switched on and
# off again here), and busybox-static for the image.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("${@:-20}")
[[ $# -gt 0 ]] || sizes=(20 100)
rounds=${ROUNDS:-3}
if [[ $(docker info --format '{{.Swarm.LocalNodeState}}') != inactive ]]; then
  echo "this engine is already in a swarm: the benchmark switches swarm mode on and off, so it will not run here" >&2
  exit 1
fi
image=$(bash scripts/busybox-image.sh)
cargo build --release --locked -p shoal >/dev/null 2>&1
shoal=$PWD/target/release/shoal
work=$(mktemp -d)
swarm_on=
node_label=bench=none
clean_up() {
  [[ -z "$swarm_on" ]] || docker swarm leave --force >/dev/null 2>&1 || true
  pkill -f "$work/state" || true
  for label in bench=floor "$node_label"; do
    docker ps -aq --filter "label=$label" | xargs -r docker rm -f >/dev/null
  done
  rm -rf "$work"
}
trap clean_up EXIT

now_ms() { date +%s%3N; }
# Running containers with label $1.
running() { docker ps -q --filter "label=$1" --filter status=running | wc -l; }
all() { docker ps -aq --filter "label=$1" | wc -l; }
wait_for() { # command... ; polls every 20 ms, at most 10 minutes
  local deadline=$(($(now_ms) + 600000))
  until "$@"; do
    [[ $(now_ms) -lt $deadline ]] || { echo "timed out: $*" >&2; exit 1; }
    sleep 0.02
  done
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
n_running() { [[ $(running "$1") -eq $2 ]]; }
none_left() { [[ $(all "$1") -eq 0 ]]; }
replaced() { # label n killed-id
  [[ $(running "$1") -eq $2 ]] && ! docker ps -q --no-trunc --filter "label=$1" --filter status=running | grep -q "^$3"
}

# Kills one running container of label $1 and times its replacement.
kill_one() {
  local label=$1 n=$2 victim t0
  victim=$(docker ps -q --no-trunc --filter "label=$label" --filter status=running | head -1)
  t0=$(now_ms)
  docker kill "$victim" >/dev/null
  wait_for replaced "$label" "$n" "$victim"
  echo $(($(now_ms) - t0))
}

floor() {
  local n=$1 t0
  t0=$(now_ms)
  seq "$n" | xargs -P "$n" -I{} docker run -d --init --label bench=floor "$image" sleep 3600 >/dev/null
  wait_for n_running bench=floor "$n"
  echo $(($(now_ms) - t0))
  docker ps -aq --filter label=bench=floor | xargs -r docker rm -f >/dev/null
}

swarm_round() {
  local n=$1 t0 create kill rm label=com.docker.swarm.service.name=bench
  t0=$(now_ms)
  docker service create --detach --quiet --no-resolve-image --name bench --replicas "$n" \
    --init --restart-delay 0s "$image" sleep 3600 >/dev/null
  wait_for n_running "$label" "$n"
  create=$(($(now_ms) - t0))
  kill=$(kill_one "$label" "$n")
  t0=$(now_ms)
  docker service rm bench >/dev/null
  wait_for none_left "$label"
  rm=$(($(now_ms) - t0))
  echo "$create $kill $rm"
}

shoal_round() {
  local n=$1 t0 create kill rm id label
  t0=$(now_ms)
  id=$("$shoal" service create -d --name bench --replicas "$n" --init --restart-delay 0s \
    --image "$image" -- sleep 3600)
  label=com.shoal.service.id=$id
  wait_for n_running "$label" "$n"
  create=$(($(now_ms) - t0))
  kill=$(kill_one "$label" "$n")
  t0=$(now_ms)
  "$shoal" service rm bench >/dev/null
  wait_for none_left "$label"
  rm=$(($(now_ms) - t0))
  echo "$create $kill $rm"
}

declare -A results
"$shoal" daemon --state-dir "$work/state" --listen-addr 127.0.0.1:0 >"$work/daemon.log" 2>&1 &
export SHOAL_SOCKET=$work/state/shoal.sock
shoal_up() { "$shoal" version >/dev/null 2>&1; }
wait_for shoal_up
node_label=com.shoal.node.id=$("$shoal" node inspect self | grep -m1 '"id"' | cut -d'"' -f4)
for n in "${sizes[@]}"; do
  f=() s=()
  for _ in $(seq "$rounds"); do f+=("$(floor "$n")"); done
  for _ in $(seq "$rounds"); do s+=("$(shoal_round "$n")"); done
  results[floor,$n]=$(median "${f[@]}")
  for i in 1 2 3; do
    col=()
    for r in "${s[@]}"; do col+=("$(echo "$r" | cut -d' ' -f$i)"); done
    results[shoal,$n,$i]=$(median "${col[@]}")
  done
done
pkill -f "$work/state" || true
docker swarm init --advertise-addr 127.0.0.1 >/dev/null
swarm_on=1
for n in "${sizes[@]}"; do
  w=()
  for _ in $(seq "$rounds"); do w+=("$(swarm_round "$n")"); done
  for i in 1 2 3; do
    col=()
    for r in "${w[@]}"; do col+=("$(echo "$r" | cut -d' ' -f$i)"); done
    results[swarm,$n,$i]=$(median "${col[@]}")
  done
done
docker swarm leave --force >/dev/null
swarm_on=

echo "| N | step | Shoal (ms) | Swarm mode (ms) | floor: N parallel docker run -d (ms) |"
echo "|---|---|---|---|---|"
for n in "${sizes[@]}"; do
  echo "| $n | create → N/N running | ${results[shoal,$n,1]} | ${results[swarm,$n,1]} | ${results[floor,$n]} |"
  echo "| $n | one killed → N/N again | ${results[shoal,$n,2]} | ${results[swarm,$n,2]} | |"
  echo "| $n | service rm → no container | ${results[shoal,$n,3]} | ${results[swarm,$n,3]} | |"
done
echo "($rounds rounds each, medians; $(nproc) cores; Docker Engine $(docker version --format '{{.Server.Version}}'); $(date -u +%F))"
