#!/usr/bin/env python3
# Migration of 1,000 idle sessions by two builds of the proxy, alternating within one run over
# the same MariaDB servers (the bench's `migration` part): before/after figures for a change to
# the migration path. Usage: bench/migrate_ab.py BINARY_A BINARY_B [ROUNDS]
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__ or "usage: migrate_ab.py BINARY_A BINARY_B [ROUNDS]")
    bins = [os.path.abspath(b) for b in sys.argv[1:3]]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    os.makedirs(bench.WORK, exist_ok=True)
    bench.stop_backends()
    bench.start_backends()
    results = {b: [] for b in bins}
    try:
        for r in range(rounds):
            for b in (bins if r % 2 == 0 else bins[::-1]):
                bench.TIPROXY_BIN = b
                on_src, moved, secs, med, p99 = bench.migration(bench.TiProxy())
                results[b].append((secs, med, p99))
                bench.log(f"round {r} {b}: {moved}/{on_src} moved in {secs:.2f} s, median {med} ms, p99 {p99} ms")
    finally:
        bench.stop_backends()
    print("| build | all moved, s (median; rounds) | single move median ms | single move p99 ms |")
    print("|---|---:|---:|---:|")
    for b, rs in results.items():
        secs = [x[0] for x in rs if x[0] is not None]
        print(f"| {b} | {statistics.median(secs):.2f} ({', '.join(f'{s:.2f}' for s in secs)}) "
              f"| {statistics.median(x[1] for x in rs):.1f} | {statistics.median(x[2] for x in rs):.0f} |")


if __name__ == "__main__":
    main()
