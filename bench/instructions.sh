#!/usr/bin/env bash
# `make bench-instructions`: the proxy's own user-space instructions per query, counted by
# valgrind's callgrind. Unlike times, the counts repeat exactly whatever else the machine does,
# so they show what a change to the per-query path costs. Kernel work (most of a proxy's CPU)
# is not counted: `make bench` measures that side by side with HAProxy.
#
# One private MariaDB (bench/.work/cg, port 23316) with a 20,000-row sysbench table; the proxy
# (bin/tiproxy, or $1) runs under callgrind three times: no queries, N point selects
# (CG_QUERIES, default 3000, one client), and 20 range selects of 10,000 rows. Each count is
# the difference to the no-query run, divided by the queries.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-bin/tiproxy}
n=${CG_QUERIES:-3000}
work=bench/.work/cg
db_port=23316
proxy_port=26416
api_port=23416
for tool in valgrind callgrind_annotate sysbench mariadb; do
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
[api]
addr = "127.0.0.1:$api_port"
[log]
level = "warn"
EOF
awk -v n="$n" 'BEGIN { srand(7); for (i = 0; i < n; i++) printf "SELECT c FROM sbtest1 WHERE id=%d;\n", 1 + int(rand() * 20000) }' \
    >"$work/point.sql"
awk 'BEGIN { for (i = 0; i < 20; i++) printf "SELECT c FROM sbtest1 WHERE id BETWEEN %d AND %d;\n", 1 + i * 500, 10000 + i * 500 }' \
    >"$work/range.sql"
: >"$work/none.sql"

client() { mariadb --no-defaults -h127.0.0.1 -P"$proxy_port" -uapp -psecret test "$@"; }

# Runs the proxy under callgrind while one client runs the statements in $1; prints the total.
count() {
    local out="$work/callgrind.$(basename "$1" .sql)"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --config "$work/proxy.toml" \
        >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 1 200); do
        client -e 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.2
    done
    client <"$1" >/dev/null
    kill -INT "$pid"
    wait "$pid" || true
    callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}

base=$(count "$work/none.sql")
point=$(count "$work/point.sql")
range=$(count "$work/range.sql")
echo "binary: $bin ($("$bin" -v))"
echo "user-space instructions per point select: $(((point - base) / n))"
echo "user-space instructions per 10,000-row range select: $(((range - base) / 20))"
