#!/usr/bin/env bash
# `make bench`: raises the open-file limit (idle sessions need two sockets each in a proxy) and
# runs the driver bench/bench.py. Needs bin/tiproxy (release), sysbench, haproxy and MariaDB.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
exec python3 bench/bench.py "$@"
