#!/usr/bin/env bash
# Installs what building, testing and the demo need when it is missing (Debian/Ubuntu, via apt):
# MariaDB server and client, protoc, sysbench, haproxy, etcd, curl, chromium (the dashboard
# test), binutils (objdump for the glibc check); then the packaging tools (cargo-zigbuild,
# ziglang, and tiup when Go is there) through packaging/tools.sh. Safe to run again.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have mariadbd || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
have mariadb || need+=(mariadb-client)
have protoc || need+=(protobuf-compiler)
have sysbench || need+=(sysbench)
have haproxy || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
have etcd || need+=(etcd-server)
have curl || need+=(curl)
have chromium || need+=(chromium)
have objdump || need+=(binutils)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
packaging_tools() {
  # `make demo` needs only the servers and clients, not the packaging tool chain.
  [ "${1:-}" = runtime ] && return 0
  "$(dirname "$0")/../packaging/tools.sh" zig
  # The TiUP tests skip themselves without Go; with Go, a tiup that fails to build fails them.
  if command -v go >/dev/null 2>&1; then "$(dirname "$0")/../packaging/tools.sh" tiup; fi
}
[ ${#need[@]} -eq 0 ] && { packaging_tools "${1:-}"; exit 0; }
echo "installing: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  have sudo || { echo "need root or sudo to install: ${need[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Package scripts try to start services; a private instance is all the project uses.
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
packaging_tools "${1:-}"
