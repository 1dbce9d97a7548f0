#!/usr/bin/env bash
# Three etcd members on loopback (Debian's etcd-server, as the cluster
# bench runs them) under puts from `edgeconf bench`: the same load through
# the leader and through a follower, to set beside
# `tools/profile-puts.sh` (FOLLOWER=1 for the follower).
#   BIN=target/dist/edgeconf CLIENTS=1 TOTAL=3000 tools/etcd-puts.sh
# WORKLOAD="get --consistency l" (or s) runs `bench get` instead of puts.
# Needs etcd and etcdctl (./setup.sh installs both).
set -euo pipefail
source "$(dirname "$0")/leader.sh"
bin=$(realpath "${BIN:-target/release/edgeconf}")
run=/tmp/etcd-puts-run; rm -rf $run; mkdir -p $run; cd $run
clients=(31379 32379 33379); peers=(31380 32380 33380)
initial="e0=http://127.0.0.1:${peers[0]},e1=http://127.0.0.1:${peers[1]},e2=http://127.0.0.1:${peers[2]}"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT
for i in 0 1 2; do
  etcd --name e$i --data-dir $run/e$i \
    --listen-client-urls http://127.0.0.1:${clients[$i]} --advertise-client-urls http://127.0.0.1:${clients[$i]} \
    --listen-peer-urls http://127.0.0.1:${peers[$i]} --initial-advertise-peer-urls http://127.0.0.1:${peers[$i]} \
    --initial-cluster "$initial" --initial-cluster-state new --log-level error 2> e$i.log & pids+=($!)
done
sleep 4
leader=$(leader_index "${clients[@]}")
[ -n "$leader" ] || { echo "no member leads yet" >&2; exit 1; }
follower=$(( (leader + 1) % 3 ))
echo "leader: e$leader"
$bin --endpoints 127.0.0.1:${clients[$leader]} bench put --clients 1 --total 500 >/dev/null
for target in leader follower; do
  port=${clients[$leader]}; [ $target = follower ] && port=${clients[$follower]}
  echo -n "to the $target: "
  $bin --endpoints 127.0.0.1:$port bench ${WORKLOAD:-put} --clients ${CLIENTS:-1} --connections ${CONNECTIONS:-0} --total ${TOTAL:-3000}
done
