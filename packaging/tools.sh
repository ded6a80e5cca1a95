#!/usr/bin/env bash
# Installs the packaging tools when they are missing: cargo-zigbuild and ziglang (the glibc 2.17
# cross build) and tiup (publishing). Sourced by the other packaging scripts; also runnable as
# `packaging/tools.sh [zig|tiup]...`.
set -euo pipefail

# Zig and tiup land in user-level bin dirs that a fresh shell may not have on PATH.
export PATH="$HOME/.cargo/bin:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin:$HOME/.local/bin:$PATH"

have() { command -v "$1" >/dev/null 2>&1; }

ensure_zig() {
  have cargo-zigbuild || cargo install --locked cargo-zigbuild
  # cargo-zigbuild finds the ziglang wheel through `python3 -m ziglang` when `zig` is not on PATH.
  if ! have zig && ! python3 -c 'import ziglang' >/dev/null 2>&1; then
    python3 -m pip install --quiet ziglang ||
      python3 -m pip install --quiet --break-system-packages ziglang
  fi
}

# The tiup release that the project is tested against, then older ones the Go module proxy may
# still serve when that one is withheld (seen here: v1.16.4 answered 403 while v1.16.2 did not).
TIUP_GO_VERSIONS=${TIUP_GO_VERSIONS:-"v1.16.4 v1.16.2"}

ensure_tiup() {
  have tiup && return 0
  have go || { echo "tiup is missing and Go is not installed to build it" >&2; return 1; }
  local bin v dir
  bin="$(go env GOPATH)/bin"
  mkdir -p "$bin"
  for v in $TIUP_GO_VERSIONS; do
    # Building inside the downloaded module (not `go install pkg@v`) honours tiup's own replace
    # directives and skips the proxy's version list, which `go install` wants and may be refused.
    if dir=$(go mod download -json "github.com/pingcap/tiup@$v" 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])' 2>/dev/null) &&
      [ -d "$dir" ] && (cd "$dir" && go build -o "$bin/tiup" .); then
      echo "built tiup $v into $bin" >&2
      return 0
    fi
    echo "tiup $v could not be fetched or built; trying the next" >&2
  done
  echo "could not install tiup (tried: $TIUP_GO_VERSIONS)" >&2
  return 1
}

# The version to build and publish as: tiup takes only SemVer (with a leading v), while
# `git describe` gives a bare commit hash when there is no tag, so that becomes a pre-release of
# the crate's version.
semver_version() {
  local v=${1:-}
  [ -n "$v" ] || v=$(git describe --tags --always --dirty 2>/dev/null || true)
  local crate
  crate=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
  [ -n "$v" ] || v=$crate
  v=${v#v}
  if [[ $v =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$ ]]; then
    echo "v$v"
  else
    echo "v$crate-g$(tr -c '0-9A-Za-z.-' '-' <<<"$v" | sed 's/-*$//')"
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  [ $# -gt 0 ] || set -- zig tiup
  for t in "$@"; do "ensure_$t"; done
fi
