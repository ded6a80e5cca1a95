#!/usr/bin/env bash
# `make bench-instructions`: user-space instructions per query of the proxy and of HAProxy
# (TCP mode, one thread), side by side, counted by valgrind's callgrind. Unlike times, the
# counts repeat exactly whatever else the machine does, so they show what a change to the
# per-query path costs. Kernel work (most of a proxy's CPU) is not counted: `make bench`
# measures that side by side with HAProxy.
#
# One private MariaDB (bench/.work/cg, port 23316) with a 20,000-row sysbench table; each proxy
# (bin/tiproxy, or $1) runs under callgrind three times: no queries, N point selects
# (CG_QUERIES, default 3000, one client), and 20 range selects of 10,000 rows. Each count is
# the difference to the no-query run, divided by the queries. CG_IO_ENGINE sets the proxy's
# proxy.io-engine (default: its default, "epoll").
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-bin/tiproxy}
n=${CG_QUERIES:-3000}
work=bench/.work/cg
db_port=23316
proxy_port=26416
api_port=23416
haproxy_port=26417
for tool in valgrind callgrind_annotate sysbench mariadb haproxy; do
    command -v "$tool" >/dev/null || { echo "bench/instructions.sh: $tool is missing (make deps)" >&2; exit 1; }
done
mkdir -p "$work"
scripts/mariadb-instance.sh start "$work/db" "$db_port" >/dev/null
trap 'scripts/mariadb-instance.sh stop "$work/db" >/dev/null 2>&1 || true' EXIT
sb=(--db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$db_port" --mysql-user=app
    --mysql-password=secret --mysql-db=test --tables=1 --table-size=20000)
sysbench oltp_point_select "${sb[@]}" cleanup >/dev/null 2>&1 || true
sysbench oltp_point_select "${sb[@]}" prepare >/dev/null

cat >"$work/proxy.toml" <<EOF
[proxy]
addr = "127.0.0.1:$proxy_port"
backend-addrs = ["127.0.0.1:$db_port"]
io-engine = "${CG_IO_ENGINE:-epoll}"
[api]
addr = "127.0.0.1:$api_port"
[log]
level = "warn"
EOF
cat >"$work/haproxy.cfg" <<EOF
global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend sql
    bind 127.0.0.1:$haproxy_port
    default_backend dbs
backend dbs
    balance leastconn
    server db0 127.0.0.1:$db_port
EOF
awk -v n="$n" 'BEGIN { srand(7); for (i = 0; i < n; i++) printf "SELECT c FROM sbtest1 WHERE id=%d;\n", 1 + int(rand() * 20000) }' \
    >"$work/point.sql"
awk 'BEGIN { for (i = 0; i < 20; i++) printf "SELECT c FROM sbtest1 WHERE id BETWEEN %d AND %d;\n", 1 + i * 500, 10000 + i * 500 }' \
    >"$work/range.sql"
: >"$work/none.sql"

client() { mariadb --no-defaults -h127.0.0.1 -P"$1" -uapp -psecret test "${@:2}"; }

# Runs proxy $1 (listening on port $2) under callgrind while one client runs the statements in
# $3; prints the total.
count() {
    # HAProxy ignores SIGINT while under valgrind; SIGUSR1 (soft stop) ends it once idle.
    local name=$1 port=$2 sql=$3 cmd stop=INT
    if [[ $name == tiproxy ]]; then
        cmd=("$bin" --config "$work/proxy.toml")
    else
        cmd=(haproxy -db -f "$work/haproxy.cfg")
        stop=USR1
    fi
    local out="$work/callgrind.$name.$(basename "$sql" .sql)"
    valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 1 200); do
        client "$port" -e 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.2
    done
    client "$port" <"$sql" >/dev/null
    kill -"$stop" "$pid"
    wait "$pid" || true
    callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}

echo "binary: $bin ($("$bin" -v)), io-engine ${CG_IO_ENGINE:-epoll}; $(haproxy -v | head -1)"
printf '%-8s %28s %33s\n' "" "instructions / point select" "instructions / 10,000-row select"
for name in tiproxy haproxy; do
    port=$proxy_port
    [[ $name == haproxy ]] && port=$haproxy_port
    base=$(count "$name" "$port" "$work/none.sql")
    point=$(count "$name" "$port" "$work/point.sql")
    range=$(count "$name" "$port" "$work/range.sql")
    printf '%-8s %28d %33d\n' "$name" $(((point - base) / n)) $(((range - base) / 20))
done
