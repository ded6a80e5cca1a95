#!/usr/bin/env bash
# Proves that the README's commands work on a machine that has none of the project's packages:
# builds a minimal Debian root with debootstrap (what a new machine has: no protoc, no MariaDB,
# nothing the project installs), mounts this machine's Rust toolchain into it, copies the
# committed tree there, and runs `make` (which must install its own build dependencies) and the
# demo in its smoke mode (MariaDB installed by `make demo` itself, one query through the proxy,
# the dashboard read). A missing install step fails here even when this machine has the package.
# Needs root and debootstrap (scripts/install-deps.sh installs it). CI runs it; so can you.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
[ "$(id -u)" -eq 0 ] || { echo "check-fresh-root.sh needs root (chroot and mounts)" >&2; exit 1; }
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] ||
  { echo "debootstrap is missing: run scripts/install-deps.sh" >&2; exit 1; }
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
[ -d "$rustup_home/toolchains" ] || { echo "no Rust toolchain under $rustup_home" >&2; exit 1; }

# Same suite and mirror as this machine's apt, so the root is what a new machine of this kind is.
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d /var/tmp/tiproxy-fresh-root.XXXXXX)
root=$work/root
mounts=()
cleanup() {
  # Stop whatever the demo left, then unmount in reverse order.
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  # Never delete through a mount that is still there: it would reach this machine's /dev or
  # crate cache (a bind of the same disk, so --one-file-system would not stop it).
  for m in "${mounts[@]}"; do
    if mountpoint -q "$m"; then echo "still mounted: $m; leaving $work in place" >&2; return; fi
  done
  rm -rf "$work"
}
trap cleanup EXIT
bind() { # bind SRC DEST [ro]
  mkdir -p "$2"
  mount --rbind "$1" "$2"
  mounts+=("$2")
  [ "${3:-}" = ro ] && mount -o remount,bind,ro "$2"
  return 0
}

echo "fresh root: debootstrap $suite (minbase) from $mirror into $root"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
cp /etc/resolv.conf "$root/etc/resolv.conf"
# debootstrap writes no hosts file; every installed machine has at least this one.
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
bind /proc "$root/proc"
bind /dev "$root/dev"
bind /sys "$root/sys" ro
# The toolchain comes from this machine (as on a new machine, where rustup is preinstalled);
# the crate cache is shared only to save downloading it again.
bind "$rustup_home" "$root/opt/rustup" ro
mkdir -p "$root/opt/rust-bin"
cp "$cargo_home/bin/rustup" "$root/opt/rust-bin/rustup"
for t in cargo rustc rustdoc cargo-clippy clippy-driver rustfmt cargo-fmt; do
  ln -sf rustup "$root/opt/rust-bin/$t"
done
[ -d "$cargo_home/registry" ] && bind "$cargo_home/registry" "$root/root/.cargo/registry"

# The committed tree, as a fresh clone has it.
mkdir -p "$root/src/tiproxy"
git -C "$src" archive HEAD | tar -x -C "$root/src/tiproxy"
git -C "$src" rev-parse HEAD >"$root/src/tiproxy/.fresh-root-commit"

inside() {
  chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/opt/rust-bin:/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUSTUP_HOME=/opt/rustup CARGO_HOME=/root/.cargo RUSTUP_TOOLCHAIN="$(rustup show active-toolchain 2>/dev/null | cut -d' ' -f1)" \
    TIPROXY_VERSION=fresh-root TIPROXY_GIT_HASH="$(git -C "$src" rev-parse HEAD)" \
    DEBIAN_FRONTEND=noninteractive \
    bash -c "cd /src/tiproxy && $1"
}
# What a new machine of this kind has before the project installs anything: make and a C
# compiler come with it (the machine doc lists gcc and make), git does not matter here.
inside "apt-get update -qq && apt-get install -y -qq --no-install-recommends make gcc libc6-dev ca-certificates >/dev/null"
for tool in protoc mariadbd mariadb; do
  if inside "command -v $tool || [ -x /usr/sbin/$tool ]" >/dev/null 2>&1; then
    echo "the fresh root already has $tool; it would hide a missing install step" >&2
    exit 1
  fi
done
echo "fresh root: make"
inside "make VERSION=fresh-root GIT_HASH=fresh-root"
echo "fresh root: make demo (smoke mode)"
inside "DEMO_SMOKE=1 DEMO_PORT=16000 DEMO_API_PORT=16080 make demo VERSION=fresh-root GIT_HASH=fresh-root"
echo "fresh root: make, make demo passed on a root that had none of the packages"
