#!/usr/bin/env bash
# Builds the Debian package: the binary, shell completions and man pages
# (generated from the binary's own command-line definition), an example
# /etc/edgeconf/edgeconf.toml and a hardened systemd unit.
#
#   packaging/build-deb.sh [--binary PATH] [--out DIR] [--fast]
#
# Without --binary it builds the shipped binary first (cargo build
# --profile dist: one codegen unit, LTO, optimized for size) and strips it.
# --fast compresses with gzip -1 (for tests).
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out="target/debian"
compression=(-Zxz)
while (($#)); do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --fast) compression=(-Zgzip -z1); shift ;;
    *) echo "build-deb: unknown argument $1 (expected --binary PATH, --out DIR, --fast)" >&2; exit 2 ;;
  esac
done

if [ -z "$binary" ]; then
  cargo build --profile dist --locked -p edgeconf
  binary=target/dist/edgeconf
fi
[ -x "$binary" ] || { echo "build-deb: $binary is not an executable" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/edgeconf_${version}_${arch}"

install -D -m 0755 "$binary" "$root/usr/bin/edgeconf"
strip --strip-unneeded "$root/usr/bin/edgeconf" 2>/dev/null || true
install -D -m 0644 packaging/edgeconf.service "$root/lib/systemd/system/edgeconf.service"
install -D -m 0644 packaging/edgeconf.toml "$root/etc/edgeconf/edgeconf.toml"
install -d "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d" \
  "$root/usr/share/man/man1" \
  "$root/usr/share/doc/edgeconf"
"$root/usr/bin/edgeconf" completion bash >"$root/usr/share/bash-completion/completions/edgeconf"
"$root/usr/bin/edgeconf" completion zsh >"$root/usr/share/zsh/vendor-completions/_edgeconf"
"$root/usr/bin/edgeconf" completion fish >"$root/usr/share/fish/vendor_completions.d/edgeconf.fish"
"$root/usr/bin/edgeconf" man --out-dir "$root/usr/share/man/man1"
gzip -9n "$root"/usr/share/man/man1/*.1
install -m 0644 README.md "$root/usr/share/doc/edgeconf/README.md"

install -d "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: edgeconf
Version: $version
Architecture: $arch
Maintainer: Edgeconf developers <dev@edgeconf.invalid>
Installed-Size: $size
Depends: libc6
Section: admin
Priority: optional
Homepage: https://github.com/edgeconf/edgeconf
Description: configuration agent for edge fleets
 A single binary that stores signed, versioned config in a raft cluster,
 renders it into local files on every edge host, and speaks the etcd v3 API.
CONTROL
echo "/etc/edgeconf/edgeconf.toml" >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
  if [ -n "$2" ]; then
    # An upgrade: a running agent restarts on the new binary.
    systemctl try-restart edgeconf.service >/dev/null || true
  else
    echo "edgeconf: edit /etc/edgeconf/edgeconf.toml, then: systemctl enable --now edgeconf"
  fi
fi
POSTINST
cat >"$root/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop edgeconf.service >/dev/null || true
fi
PRERM
cat >"$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
fi
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/edgeconf_${version}_${arch}.deb"
dpkg-deb --root-owner-group "${compression[@]}" --build "$root" "$deb" >/dev/null
echo "$deb"
