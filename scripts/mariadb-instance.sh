#!/usr/bin/env bash
# Starts a private MariaDB server in DIR on PORT (loopback only) and creates the demo users:
#   app / secret (mysql_native_password) and edu / edsecret (ed25519), database `test`, and the
#   proxy's service account tiproxy_svc / svcsecret (SELECT on mysql.*, for session migration).
# Usage: scripts/mariadb-instance.sh start DIR PORT [MAX_CONNECTIONS] | stop DIR
# MAX_CONNECTIONS (default 2000) may also come from the env var MARIADB_MAX_CONNECTIONS.
set -euo pipefail
cmd=${1:?usage: $0 start DIR PORT | stop DIR}
dir=${2:?directory}
case "$cmd" in
start)
  port=${3:?port}
  max_conn=${4:-${MARIADB_MAX_CONNECTIONS:-2000}}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ ! -d "$dir/data/mysql" ]; then
    # --skip-name-resolve: a minimal machine or container may not resolve its own host name,
    # and the users here are created for '%' anyway.
    mkdir -p "$dir/tmp"
    mariadb-install-db --no-defaults --user="$(id -un)" --datadir="$dir/data" --tmpdir="$dir/tmp" \
      --skip-name-resolve --auth-root-authentication-method=socket --skip-test-db >"$dir/install.log" 2>&1 ||
      { cat "$dir/install.log" >&2; exit 1; }
  fi
  mariadbd --no-defaults --user="$(id -un)" --datadir="$dir/data" --port="$port" \
    --bind-address=127.0.0.1 --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" \
    --log-error="$dir/error.log" --skip-log-bin --max-allowed-packet=64M --local-infile=1 \
    --innodb-buffer-pool-size=32M --performance-schema=OFF --max-connections="$max_conn" \
    >/dev/null 2>&1 &
  for _ in $(seq 1 150); do
    mariadb --no-defaults -uroot --socket="$dir/mysqld.sock" -e 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.2
  done
  sql() { mariadb --no-defaults -uroot --socket="$dir/mysqld.sock" "$@"; }
  sql -e 'SELECT 1' >/dev/null || { echo "MariaDB on port $port did not start; see $dir/error.log" >&2; exit 1; }
  if [ "$(sql -N -e "SELECT COUNT(*) FROM information_schema.plugins WHERE plugin_name='ed25519'")" = 0 ]; then
    sql -e "INSTALL SONAME 'auth_ed25519'"
  fi
  sql <<'SQL'
CREATE DATABASE IF NOT EXISTS test;
CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'secret';
GRANT ALL ON *.* TO 'app'@'%';
CREATE USER IF NOT EXISTS 'edu'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('edsecret');
GRANT ALL ON *.* TO 'edu'@'%';
CREATE USER IF NOT EXISTS 'tiproxy_svc'@'%' IDENTIFIED BY 'svcsecret';
GRANT SELECT ON mysql.* TO 'tiproxy_svc'@'%';
SQL
  ;;
stop)
  if [ -f "$dir/mysqld.pid" ]; then
    kill "$(cat "$dir/mysqld.pid")" 2>/dev/null || true
    for _ in $(seq 1 100); do [ -f "$dir/mysqld.pid" ] || break; sleep 0.1; done
  fi
  ;;
*) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
