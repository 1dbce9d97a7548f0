#!/usr/bin/env bash
# Starts a 3-member Edgeconf cluster on loopback (clients on 127.0.0.1:21379,
# :22379 and :23379) and stops it on Ctrl-C. State lives in ./cluster.run/.
#   ./examples/cluster/run.sh
#   edgeconf --endpoints 127.0.0.1:21379,127.0.0.1:22379,127.0.0.1:23379 member list -w table
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cargo build --quiet --manifest-path "$repo/Cargo.toml"
edgeconf="$repo/target/debug/edgeconf"
run="$PWD/cluster.run"
mkdir -p "$run"

# Each member's node key is made on first use; every member trusts all three.
keys=()
for i in 1 2 3; do
  keys+=("\"$("$edgeconf" node-key --data-dir "$run/n$i.data")\"")
done
trust=$(IFS=,; echo "${keys[*]}")

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 1 2 3; do
  { cat "$here/n$i.toml"; printf '\n[peer_trust]\nkeys = [%s]\n' "$trust"; } > "$run/n$i.toml"
  (cd "$run" && exec "$edgeconf" agent --config "n$i.toml") &
  pids+=($!)
done
echo "cluster running: endpoints 127.0.0.1:21379,127.0.0.1:22379,127.0.0.1:23379 (Ctrl-C stops it)"
# A member that dies (or is killed to try a failover) leaves the others up.
set +e
while [ -n "$(jobs -pr)" ]; do wait; done
