#!/usr/bin/env bash
# Proxy CPU for large results on each I/O engine: the same release binary runs twice, once with
# proxy.io-engine = "epoll" and once with "io-uring", over one private MariaDB with a 20,000-row
# sysbench table; one client sends 200 selects of 10,000 rows to each in turn, ROUNDS times
# (default 3). Prints each proxy's CPU (utime+stime, clock ticks) and the client's wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TIPROXY_BIN:-target/release/tiproxy}
rounds=${ROUNDS:-3}
work=bench/.work/engines
db_port=23526
for tool in sysbench mariadb; do
    command -v "$tool" >/dev/null || { echo "bench/engines_large.sh: $tool is missing (make deps)" >&2; exit 1; }
done
[[ -x $bin ]] || { echo "bench/engines_large.sh: $bin is missing (make build)" >&2; exit 1; }
mkdir -p "$work"
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    scripts/mariadb-instance.sh stop "$work/db" >/dev/null 2>&1 || true
}
trap cleanup EXIT
scripts/mariadb-instance.sh start "$work/db" "$db_port" >/dev/null
sb=(--db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$db_port" --mysql-user=app
    --mysql-password=secret --mysql-db=test --tables=1 --table-size=20000)
sysbench oltp_point_select "${sb[@]}" cleanup >/dev/null 2>&1 || true
sysbench oltp_point_select "${sb[@]}" prepare >/dev/null
declare -A port pid
i=0
for engine in epoll io-uring; do
    port[$engine]=$((26526 + i))
    cat >"$work/$engine.toml" <<TOML
[proxy]
addr = "127.0.0.1:${port[$engine]}"
backend-addrs = ["127.0.0.1:$db_port"]
io-engine = "$engine"
[api]
addr = "127.0.0.1:$((23527 + i))"
[log]
level = "warn"
TOML
    "$bin" --config "$work/$engine.toml" >"$work/$engine.log" 2>&1 &
    pid[$engine]=$!
    pids+=("$!")
    i=$((i + 1))
done
client() { mariadb --no-defaults -h127.0.0.1 -P"$1" -uapp -psecret test "${@:2}"; }
for engine in epoll io-uring; do
    for _ in $(seq 1 100); do
        client "${port[$engine]}" -e 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.1
    done
done
awk 'BEGIN { for (i = 0; i < 200; i++) printf "SELECT c FROM sbtest1 WHERE id BETWEEN %d AND %d;\n", 1 + (i % 20) * 500, 10000 + (i % 20) * 500 }' \
    >"$work/range.sql"
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
echo "binary: $bin; 200 selects of 10,000 rows per engine and round"
printf '%-6s %-9s %10s %10s\n' round engine cpu_ticks wall_s
for round in $(seq 1 "$rounds"); do
    for engine in epoll io-uring; do
        before=$(cpu "${pid[$engine]}")
        t0=$(date +%s.%N)
        client "${port[$engine]}" <"$work/range.sql" >/dev/null
        t1=$(date +%s.%N)
        after=$(cpu "${pid[$engine]}")
        printf '%-6s %-9s %10d %10.2f\n' "$round" "$engine" $((after - before)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
    done
done
