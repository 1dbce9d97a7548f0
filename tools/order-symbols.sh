#!/usr/bin/env bash
# Writes packaging/symbol-order.txt: the functions agents run, for the linker
# to lay out side by side in the shipped build (agent/build.rs passes the
# file to lld for `--profile dist`).
#
# Why: an idle agent runs about 3,000 functions (2-3 MiB of code), but they
# lie scattered over the binary's whole .text, and the kernel maps 64 KiB
# around every page an agent touches, so most of .text ends up resident.
# Packed together they cost about their own size (BENCHMARKS.md, issue 19).
#
#   cargo build --profile dist && tools/order-symbols.sh
#
# Runs real agents under valgrind's callgrind (exact: every function that
# ran, not a sample): a single agent taking puts, gets, watches and status
# calls, and a voter with an edge agent following /app/. Needs valgrind and
# a binary with its symbol table (the dist profile keeps it; packaging
# strips it). Takes a few minutes. Symbols that later change name only lose
# their place; the link never fails on them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${BIN:-$repo/target/dist/edgeconf}")
out="$repo/packaging/symbol-order.txt"
command -v valgrind >/dev/null || { echo "order-symbols: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
nm "$bin" >/dev/null 2>&1 || { echo "order-symbols: $bin has no symbol table; build with --profile dist" >&2; exit 1; }
run=$(mktemp -d /tmp/order-symbols.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait; rm -rf "$run"' EXIT
cd "$run"

traced() { # name config
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$run/$1.cg" \
    "$bin" agent --config "$2" 2>"$run/$1.log" &
  pids+=($!)
}
wait_port() {
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "order-symbols: nothing listens on $1 after 60 s" >&2; exit 1
}
cli() { timeout 60 "$bin" --endpoints "127.0.0.1:$1" "${@:2}" >/dev/null; }
stop_all() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}

config() { # name client-port peer-port [more lines]: writes name.toml
  {
    printf 'name = "%s"\ndata_dir = "%s.data"\nlog_level = "info"\n' "$1" "$1"
    printf 'listen_client_urls = ["http://127.0.0.1:%s"]\n' "$2"
    printf 'listen_peer_urls = ["quic://127.0.0.1:%s"]\n' "$3"
    printf '%s\n' "${@:4}"
  } >"$1.toml"
}

echo "order-symbols: a single agent (puts, gets, watches, status)"
config single 27579 27580
traced single single.toml
wait_port 27579
for n in $(seq 20); do cli 27579 put "/app/key$n" "value $n"; done
cli 27579 get /app/ --prefix
cli 27579 get /app/key1 --consistency s
(timeout 3 "$bin" --endpoints 127.0.0.1:27579 watch /app/ --prefix >/dev/null || true) &
sleep 1; cli 27579 put /app/key1 changed; wait $!
cli 27579 del /app/key2
cli 27579 status
cli 27579 endpoint status
sleep 10
stop_all

echo "order-symbols: a voter and an edge agent following /app/"
voter_key=$("$bin" node-key --data-dir voter.data)
edge_key=$("$bin" node-key --data-dir edge.data)
config voter 27679 27680 "[peer_trust]" "keys = [\"$voter_key\", \"$edge_key\"]"
config edge 27779 27780 'role = "edge"' 'sync = ["/app/"]' \
  "[gossip]" 'seeds = ["127.0.0.1:27680"]' \
  "[peer_trust]" "keys = [\"$voter_key\"]" "voters = [\"$voter_key\"]"
traced voter voter.toml
wait_port 27679
traced edge edge.toml
wait_port 27779
# As the edge bench does: 100 values of 256 bytes, then serializable reads
# on the edge, then idle long enough for its periodic work to run.
value=$(printf '%0256d' 0)
for n in $(seq 100); do cli 27679 put "/app/key$n" "$value"; done
sleep 10
cli 27779 get /app/ --prefix --consistency s
for n in $(seq 5); do cli 27779 get "/app/key$n" --consistency s; done
cli 27779 status
sleep 20
stop_all

python3 - "$bin" "$out" "$run"/*.cg <<'PY'
import re, subprocess, sys
binary, out, profiles = sys.argv[1], sys.argv[2], sys.argv[3:]
# Functions of the binary itself that ran, in order of how many runs ran them.
runs = {}
for profile in profiles:
    names, objects, current, ran = {}, {}, None, set()
    for line in open(profile, errors="replace"):
        m = re.match(r"(c?ob|c?fn)=\((\d+)\)(?: (.*))?", line)
        if not m:
            continue
        kind, id, name = m.groups()
        table = objects if kind.endswith("ob") else names
        if name:
            table[id] = name.strip()
        if kind == "ob":
            current = objects.get(id, "")
        elif kind == "fn" and current == binary:
            ran.add(names[id])
    for name in ran:
        runs[name] = runs.get(name, 0) + 1
defined = set()
for line in subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True).stdout.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in "tTwW":
        defined.add(parts[2])
ordered = sorted((n for n in runs if n in defined), key=lambda n: (-runs[n], n))
with open(out, "w") as f:
    f.write("".join(n + "\n" for n in ordered))
print(f"order-symbols: {len(ordered)} functions written to {out}")
PY
