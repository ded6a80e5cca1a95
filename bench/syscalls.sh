#!/usr/bin/env bash
# System calls, context switches and CPU per query: HAProxy, tiproxy on epoll and tiproxy on
# io_uring, side by side (bench/syscalls.py). Needs a release build (target/release/tiproxy, or
# TIPROXY_BIN), sysbench, haproxy, strace and MariaDB. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
exec python3 bench/syscalls.py "$@"
