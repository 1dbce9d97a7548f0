#!/usr/bin/env bash
# Installs what building and testing Edgeconf needs on Debian, then builds.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")"

# protoc and its well-known types (the gRPC API is generated at build time),
# etcdctl for the compatibility tests, etcd for side-by-side benchmarks.
packages=(protobuf-compiler libprotobuf-dev etcd-client etcd-server)
# Debian's Rust with the WebAssembly targets, for the plugins (rustup's
# toolchain here has no wasm target): see plugins/build.sh.
packages+=(rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc)
# The Debian package and its systemd unit: dpkg-deb builds it, the tests
# check the unit with systemd-analyze (kill for ExecReload, man for its
# Documentation= line).
packages+=(dpkg-dev systemd procps man-db)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian enables the etcd service on install; the project's tests and
  # benchmarks start their own on free ports.
  if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    "${as_root[@]}" systemctl stop etcd || true
  fi
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install Rust with rustup (https://rustup.rs) and run ./setup.sh again" >&2
  exit 1
fi
# The WebAssembly plugins (plugins/dist/*.wasm), which the tests load.
sh plugins/build.sh
cargo build --locked
echo "setup: done"
