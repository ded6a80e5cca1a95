#!/usr/bin/env bash
# Builds dist/tiproxy-<version>-linux-amd64.tar.gz: `tiproxy` (the TiUP entry) and `tiproxyctl`
# at the archive root, linked against glibc 2.17 so they run on CentOS 7 and newer, stripped.
# VERSION comes from the environment, else `git describe`, made a SemVer as tiup needs. Prints the tarball path last.
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/tools.sh
ensure_zig

VERSION=$(semver_version "${VERSION:-}")
export TIPROXY_VERSION=$VERSION
export TIPROXY_GIT_HASH=${GIT_HASH:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

# The `.2.17` suffix is cargo-zigbuild's way to pick the glibc the binaries link against; the
# output still lands under target/x86_64-unknown-linux-gnu, apart from the host build.
cargo zigbuild --release --bins --target x86_64-unknown-linux-gnu.2.17 >&2
out=target/x86_64-unknown-linux-gnu/release

mkdir -p dist
tarball="dist/tiproxy-$VERSION-linux-amd64.tar.gz"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$out/tiproxy" "$out/tiproxyctl" "$stage/"
# The release profile keeps line tables (backtraces with file:line for local builds); the
# package drops them and the symbol table: about a fifth of the size. Host binutils strips
# these x86_64 ELF files (scripts/install-deps.sh installs binutils).
command -v strip >/dev/null || { echo "build.sh: strip (binutils) is needed" >&2; exit 1; }
for bin in tiproxy tiproxyctl; do
  echo "$bin: $(stat -c %s "$stage/$bin") bytes before strip" >&2
  strip "$stage/$bin"
  echo "$bin: $(stat -c %s "$stage/$bin") bytes after strip" >&2
done
# Fixed owner, order and times so the same binaries always give the same archive.
tar -C "$stage" --owner=0 --group=0 --numeric-owner --sort=name --mtime=@0 \
  -cf - tiproxy tiproxyctl | gzip -n -9 >"$tarball.tmp"
mv "$tarball.tmp" "$tarball"
echo "$tarball"
