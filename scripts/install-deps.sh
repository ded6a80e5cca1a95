#!/usr/bin/env bash
# Installs what building, testing and the demo need when it is missing (Debian/Ubuntu, via apt):
# MariaDB server and client, protoc, sysbench, haproxy, etcd, curl, chromium (the dashboard
# test). Safe to run again.
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
[ ${#need[@]} -eq 0 ] && exit 0
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
