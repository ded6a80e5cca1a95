#!/usr/bin/env python3
# Two builds of the proxy, alternating within one run over the same MariaDB servers, for the
# before/after figures of a change: `migration` (the bench's migration part: 1,000 idle sessions
# moved) or `churn` (the bench's churn, with HAProxy measured between them as the yardstick).
# Usage: bench/ab.py migration|churn BINARY_A BINARY_B [ROUNDS]
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def migration_round(binary):
    bench.TIPROXY_BIN = binary
    on_src, moved, secs, med, p99 = bench.migration(bench.TiProxy())
    bench.log(f"{binary}: {moved}/{on_src} moved in {secs:.2f} s, median {med} ms, p99 {p99} ms")
    return {"all moved, s": secs, "one move median ms": med, "one move p99 ms": p99}


def churn_round(binary, haproxy):
    bench.TIPROXY_BIN = binary
    tp = bench.TiProxy()
    tp.start()
    try:
        bench.settle()
        rate, cpu = bench.churn(tp)
    finally:
        tp.stop()
    bench.settle()
    ha_rate, ha_cpu = bench.churn(haproxy)
    bench.log(f"{binary}: {rate:.0f}/s at {cpu:.3f} ms; HAProxy next to it {ha_rate:.0f}/s at {ha_cpu:.3f} ms")
    return {"sessions/s vs HAProxy": rate / ha_rate, "CPU per session vs HAProxy": cpu / ha_cpu}


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("migration", "churn"):
        sys.exit("usage: ab.py migration|churn BINARY_A BINARY_B [ROUNDS]")
    part = sys.argv[1]
    bins = [os.path.abspath(b) for b in sys.argv[2:4]]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    os.makedirs(bench.WORK, exist_ok=True)
    bench.stop_backends()
    bench.start_backends()
    ha = bench.HAProxy()
    results = {b: [] for b in bins}
    try:
        if part == "churn":
            ha.start()
        for r in range(rounds):
            for b in (bins if r % 2 == 0 else bins[::-1]):
                results[b].append(migration_round(b) if part == "migration" else churn_round(b, ha))
    finally:
        ha.stop()
        bench.stop_backends()
    keys = list(results[bins[0]][0])
    print("| build | " + " | ".join(f"{k} (median; rounds)" for k in keys) + " |")
    print("|---" + "|---:" * len(keys) + "|")
    for b, rs in results.items():
        cells = []
        for k in keys:
            xs = [x[k] for x in rs if x[k] is not None]
            cells.append(f"{statistics.median(xs):.2f} ({', '.join(f'{x:.2f}' for x in xs)})")
        print(f"| {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
