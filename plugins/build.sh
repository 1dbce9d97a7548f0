#!/bin/sh
# Builds the WebAssembly plugins in this directory into components in
# plugins/dist/<name>.wasm. Incremental: a second run only checks.
#
# Guests are built with Debian's Rust (rustc-web, installed by ./setup.sh):
# rustup's toolchain has no wasm target here. They are built for
# wasm32-unknown-unknown with build-std (no WASI imports) and wrapped into
# components by edgeconf-componentize, a host tool of the root workspace.
set -eu

plugins=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$plugins")
dist="$plugins/dist"
guest_target="$plugins/target"

validators="json-schema allow-list limit-from-key spin memory-hog trap reject-all net-probe"
health_checks="http-check tcp-check"

say() { echo "plugins: $*" >&2; }

if [ ! -x /usr/bin/rustc ] || [ ! -x /usr/bin/cargo ]; then
  say "error: /usr/bin/rustc or /usr/bin/cargo is missing (Debian's rustc-web and cargo-web build the wasm plugins): run ./setup.sh"
  exit 1
fi
sysroot=$(/usr/bin/rustc --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/src/rust/library" ]; then
  say "error: the Rust standard library source is missing from $sysroot (package rust-web-src): run ./setup.sh"
  exit 1
fi

# 1. The componentize tool, with the project's usual (rustup) cargo.
(cd "$root" && cargo build --quiet --locked -p edgeconf-componentize)
componentize="${CARGO_TARGET_DIR:-$root/target}/debug/edgeconf-componentize"
case $componentize in /*) ;; *) componentize="$root/$componentize" ;; esac

# 2. The guests. Validators and health checks enable different features of
# the SDK, which are exclusive, so they are built in two cargo runs.
guest_build() {
  feature_set=$1
  shift
  packages=""
  for p in "$@"; do packages="$packages -p $p"; done
  say "building $feature_set: $*"
  # shellcheck disable=SC2086 # word splitting of $packages is intended
  (
    cd "$plugins"
    unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo build --quiet --locked --release \
      --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort \
      --target-dir "$guest_target" $packages
  )
}
# shellcheck disable=SC2086
guest_build validators $validators
# shellcheck disable=SC2086
guest_build "health checks" $health_checks

# 3. Core modules -> components, when the module (or the tool) is newer.
mkdir -p "$dist"
for name in $validators $health_checks; do
  core="$guest_target/wasm32-unknown-unknown/release/$(echo "$name" | tr - _).wasm"
  out="$dist/$name.wasm"
  if [ ! -f "$core" ]; then
    say "error: $core was not built"
    exit 1
  fi
  if [ -f "$out" ] && [ -z "$(find "$core" "$componentize" -newer "$out")" ]; then
    continue
  fi
  "$componentize" new "$core" "$out"
  say "wrote $out ($(wc -c <"$out" | tr -d ' ') bytes)"
done
say "components are in $dist"
