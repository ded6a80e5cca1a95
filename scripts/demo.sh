#!/usr/bin/env bash
# `make demo`: two private MariaDB backends and the proxy on port 6000, in the foreground.
# Ctrl-C stops everything. State lives in .demo/ (removed by `make clean`).
# DEMO_SMOKE=1 (the fresh-root check) runs one query through the proxy and reads the dashboard,
# then stops everything and exits with their status instead of waiting.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/.demo
mkdir -p "$root"
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() { local p=$1; while ! port_free "$p"; do p=$((p + 1)); done; echo "$p"; }
b1=$(pick_port 14001); b2=$(pick_port $((b1 + 1)))
sql_port=${DEMO_PORT:-6000}
api_port=${DEMO_API_PORT:-3080}
port_free "$sql_port" || { echo "port $sql_port is busy; set DEMO_PORT=<free port>" >&2; exit 1; }
port_free "$api_port" || { echo "port $api_port is busy; set DEMO_API_PORT=<free port>" >&2; exit 1; }

cleanup() {
  trap - EXIT INT TERM
  [ -n "${proxy_pid:-}" ] && kill -TERM "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null || true
  scripts/mariadb-instance.sh stop "$root/backend1" || true
  scripts/mariadb-instance.sh stop "$root/backend2" || true
}
trap cleanup EXIT INT TERM

echo "starting MariaDB backends on 127.0.0.1:$b1 and 127.0.0.1:$b2 ..."
scripts/mariadb-instance.sh start "$root/backend1" "$b1" &
scripts/mariadb-instance.sh start "$root/backend2" "$b2"
wait

cat >"$root/proxy.toml" <<TOML
[proxy]
addr = "0.0.0.0:$sql_port"
backend-addrs = ["127.0.0.1:$b1", "127.0.0.1:$b2"]

[proxy.service-account]
user = "tiproxy_svc"
password = "svcsecret"

[api]
addr = "0.0.0.0:$api_port"

[log]
encoder = "console"

[log.log-file]
filename = "$root/tiproxy.log"
TOML
bin/tiproxy --config "$root/proxy.toml" &
proxy_pid=$!
for _ in $(seq 1 50); do ! port_free "$sql_port" && break; sleep 0.1; done

cat <<MSG

tiproxy is listening on 127.0.0.1:$sql_port in front of two MariaDB servers.
Connect with the mariadb client (user app, password secret):

  mariadb -h127.0.0.1 -P$sql_port -uapp -psecret test -e 'SELECT @@port, VERSION()'

Each new session goes to the backend with the fewest sessions; run the command twice in
parallel to see both ports.

Dashboard:  http://127.0.0.1:$api_port/
Move every session off the first backend (they keep their state):
  bin/tiproxyctl --port $api_port migrate --from 127.0.0.1:$b1

Config: $root/proxy.toml (edits apply without a restart). Log: $root/tiproxy.log.
Press Ctrl-C to stop.
MSG
if [ -n "${DEMO_SMOKE:-}" ]; then
  mariadb -h127.0.0.1 -P"$sql_port" -uapp -psecret test -e 'SELECT @@port, VERSION()'
  # bash's /dev/tcp, so the runtime needs no curl
  exec 3<>"/dev/tcp/127.0.0.1/$api_port"
  printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$api_port" >&3
  grep -qi '<html' <&3 || { echo "the dashboard did not answer" >&2; exit 1; }
  exec 3<&-
  echo "demo smoke check passed"
  exit 0
fi
wait "$proxy_pid"
