#!/usr/bin/env bash
# Publishes the tiproxy tarball to a TiUP mirror, as a release version, as a nightly, or both.
# With no --mirror it creates (once) and uses a local mirror in dist/tiup-mirror, signed by a key
# in $TIUP_HOME (default ~/.tiup). See packaging/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/tools.sh

usage() {
  cat <<'USAGE'
usage: packaging/publish.sh [--release] [--nightly] [--mirror DIR|URL] [--key FILE]
                            [--version V] [--tarball FILE] [--owner NAME]
  --release        publish under the version (default when neither --release nor --nightly)
  --nightly        publish under <version>-nightly, which `tiup tiproxy:nightly` resolves to
  --mirror         a local mirror directory (created with `tiup mirror init` when new) or a
                   mirror URL; default dist/tiup-mirror
  --key            the owner's private key (tiup JSON key); default $TIUP_HOME/keys/private.json
  --version        default $VERSION, else `git describe`; made a SemVer when it is not one
  --tarball        default: built by packaging/build.sh
  --owner          the owner id granted on a mirror this script creates; default tiproxy
USAGE
}

release=0 nightly=0 mirror="" key="" tarball="" owner=tiproxy
while [ $# -gt 0 ]; do
  case "$1" in
  --release) release=1 ;;
  --nightly) nightly=1 ;;
  --mirror) mirror=${2:?--mirror needs a value}; shift ;;
  --key) key=${2:?--key needs a value}; shift ;;
  --version) VERSION=${2:?--version needs a value}; shift ;;
  --tarball) tarball=${2:?--tarball needs a value}; shift ;;
  --owner) owner=${2:?--owner needs a value}; shift ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
  esac
  shift
done
[ $release = 1 ] || [ $nightly = 1 ] || release=1

VERSION=$(semver_version "${VERSION:-}")
export VERSION
[ -n "$tarball" ] || tarball=$(packaging/build.sh | tail -n 1)
[ -f "$tarball" ] || { echo "no tarball at $tarball" >&2; exit 1; }

ensure_tiup
# tiup keeps its mirror choice, root manifest and keys in TIUP_HOME; an existing one is kept.
export TIUP_HOME=${TIUP_HOME:-$HOME/.tiup}
# `tiup mirror set` keeps the mirror's root.json in $TIUP_HOME/bin and fails when it is missing.
mkdir -p "$TIUP_HOME/bin"

case "$mirror" in
http://* | https://*)
  tiup mirror set "$mirror"
  ;;
*)
  mirror=${mirror:-dist/tiup-mirror}
  mkdir -p "$(dirname "$mirror")"
  mirror=$(cd "$(dirname "$mirror")" && pwd)/$(basename "$mirror")
  if [ ! -f "$mirror/root.json" ]; then
    tiup mirror init "$mirror"
    tiup mirror set "$mirror"
    # genkey leaves an existing key alone, so a TIUP_HOME that already signs elsewhere still can.
    [ -n "$key" ] || tiup mirror genkey
    tiup mirror grant "$owner" ${key:+--key "$key"}
  else
    tiup mirror set "$mirror"
  fi
  ;;
esac

publish() {
  tiup mirror publish tiproxy "$1" "$tarball" tiproxy --os linux --arch amd64 \
    --desc "TiProxy: a MySQL-protocol proxy for TiDB (Rust drop-in)" ${key:+--key "$key"}
}
[ $release = 0 ] || publish "$VERSION"
# Any version containing "nightly" becomes the component's nightly; keeping the release number
# in front keeps it SemVer and ordered before that release.
[ $nightly = 0 ] || publish "$VERSION-nightly"
echo "published tiproxy to ${mirror}: $([ $release = 0 ] || echo "$VERSION ")$([ $nightly = 0 ] || echo "$VERSION-nightly")"
