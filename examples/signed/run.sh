#!/usr/bin/env bash
# Runs one agent with signed config on 127.0.0.1:2379. Keys are made on
# first use in ./signed.run/ (operator.key signs, fleet.age decrypts).
#   ./examples/signed/run.sh
#   edgeconf put --sign-key signed.run/operator.key /app/port 8080
#   edgeconf put --sign-key signed.run/operator.key --encrypt /app/db/password hunter2
#   edgeconf get /app/ --prefix; edgeconf verify /app/ --prefix
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cargo build --quiet --manifest-path "$repo/Cargo.toml"
edgeconf="$repo/target/debug/edgeconf"
run="$PWD/signed.run"
mkdir -p "$run"
[ -f "$run/operator.key" ] || "$edgeconf" keygen --out "$run/operator.key" > "$run/operator.pub"
[ -f "$run/fleet.age" ] || "$edgeconf" keygen --secret --out "$run/fleet.age" > "$run/fleet.pub"
{
  cat "$here/agent.toml"
  printf '\n[trust]\nkeys = ["%s"]\n\n[[trust.prefix]]\nprefix = "/app/"\n' "$(cat "$run/operator.pub")"
  printf '\n[secrets]\nidentity_files = ["fleet.age"]\nrecipients = ["%s"]\n' "$(cat "$run/fleet.pub")"
} > "$run/agent.toml"
cd "$run" && exec "$edgeconf" agent --config agent.toml
