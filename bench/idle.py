#!/usr/bin/env python3
# `make bench-idle`: only the idle-session memory of `make bench`, tiproxy and HAProxy side by
# side in one run: VmRSS growth per session with N authenticated idle sessions held (N from
# BENCH_IDLE, default 2000,9500), each target started fresh, alternating, IDLE_ROUNDS (default
# 2) rounds; prints the per-round figures and their medians. Reuses bench.py's targets.
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

ROUNDS = int(os.environ.get("IDLE_ROUNDS", "2"))
# Ports and a work directory of its own, so it can run next to `make bench`.
bench.DB_PORTS = [23326, 23327]
bench.HAPROXY_PORT, bench.TIPROXY_PORT, bench.API_PORT = 26021, 26020, 23090
bench.WORK = os.path.join(bench.WORK, "idle")


def main():
    os.makedirs(bench.WORK, exist_ok=True)
    bench.stop_backends()
    bench.start_backends()
    ha, tp = bench.HAProxy(), bench.TiProxy()
    per = {}
    try:
        for n in bench.IDLE_COUNTS:
            for r in range(ROUNDS):
                for t in ([ha, tp] if r % 2 == 0 else [tp, ha]):
                    kib = bench.idle_sessions(t, n)
                    per.setdefault((t.name, n), []).append(kib)
                    bench.log(f"idle {n} round {r} {t.name}: {kib:.2f} KiB per session")
    finally:
        ha.stop()
        tp.stop()
        bench.stop_backends()
    print("| idle sessions | HAProxy KiB/session | tiproxy KiB/session | tiproxy / HAProxy |")
    print("|---:|---:|---:|---:|")
    for n in bench.IDLE_COUNTS:
        h = statistics.median(per[("haproxy", n)])
        t = statistics.median(per[("tiproxy", n)])
        print(f"| {n} | {h:.2f} | {t:.2f} | {t / h:.2f} |")


if __name__ == "__main__":
    main()
