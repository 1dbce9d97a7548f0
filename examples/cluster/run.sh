#!/usr/bin/env bash
# Starts a 3-member Edgeconf cluster on loopback (clients on 127.0.0.1:21379,
# :22379 and :23379) and one edge agent e1 (:24379), and stops them on
# Ctrl-C. State lives in ./cluster.run/.
#   ./examples/cluster/run.sh
#   edgeconf --endpoints 127.0.0.1:21379,127.0.0.1:22379,127.0.0.1:23379 member list -w table
#   edgeconf --endpoints 127.0.0.1:21379 service list --healthy -w table
# A staged rollout of /app/config, which e1 renders into cluster.run/e1.out/app.conf:
#   edgeconf --endpoints 127.0.0.1:21379 put --sign-key cluster.run/operator.key /app/config v1
#   edgeconf --endpoints 127.0.0.1:21379 rollout start --key /app/config --value v2 \
#       --sign-key cluster.run/operator.key --stages 50,100 --gate 5s --wait
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cargo build --quiet --manifest-path "$repo/Cargo.toml"
edgeconf="$repo/target/debug/edgeconf"
run="$PWD/cluster.run"
mkdir -p "$run"

# Each agent's node key is made on first use; every agent trusts all four.
keys=()
for name in n1 n2 n3 e1; do
  keys+=("\"$("$edgeconf" node-key --data-dir "$run/$name.data")\"")
done
trust=$(IFS=,; echo "${keys[*]}")
# The voters' keys: edges apply the feed only as these attest it.
voters=$(IFS=,; echo "${keys[*]:0:3}")
# The operator key that signs everything under /app/.
if [ ! -f "$run/operator.pub" ]; then
  "$edgeconf" -w json keygen --out "$run/operator.key" \
    | sed -E 's/.*"public_key":"([^"]+)".*/\1/' > "$run/operator.pub"
fi
operator=$(cat "$run/operator.pub")

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
cp "$here/upstream.j2" "$run/"
mkdir -p "$run/e1.out"
for name in n1 n2 n3 e1; do
  { cat "$here/$name.toml"
    printf '\n[peer_trust]\nkeys = [%s]\nvoters = [%s]\n' "$trust" "$voters"
    printf '\n[trust]\nkeys = ["%s"]\n[[trust.prefix]]\nprefix = "/app/"\n' "$operator"
  } > "$run/$name.toml"
  (cd "$run" && exec "$edgeconf" agent --config "$name.toml") &
  pids+=($!)
done
echo "cluster running: endpoints 127.0.0.1:21379,127.0.0.1:22379,127.0.0.1:23379, edge 127.0.0.1:24379 (Ctrl-C stops it)"
# A member that dies (or is killed to try a failover) leaves the others up.
set +e
while [ -n "$(jobs -pr)" ]; do wait; done
