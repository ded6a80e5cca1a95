#!/usr/bin/env python3
# System calls, context switches and CPU per query: HAProxy against tiproxy on its epoll engine
# (the workers' own loop), on its tokio engine and on its io_uring engine, over two private MariaDB
# backends, with sysbench at 16 threads. Rounds alternate between the four within one run; ratios
# within the run are what to compare.
# Counters: CPU = utime+stime of /proc/PID/stat; context switches = voluntary + nonvoluntary summed
# over /proc/PID/task/*/status, and each kind apart (voluntary: the proxy slept and was woken;
# involuntary: another process took its CPU); system calls = `strace -c -f` attached for one short extra run per
# target (strace slows the target, so only the per-query count is taken from that run).
import os
import re
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import settle  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", ".work-syscalls")
HOST = "127.0.0.1"
# Ports of their own, so this runs beside `make bench`.
DB_PORTS = [24306, 24307]
HAPROXY_PORT = 27001
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "6"))
STRACE_SECONDS = int(os.environ.get("BENCH_STRACE_SECONDS", "4"))
TIPROXY = os.environ.get("TIPROXY_BIN", os.path.join(ROOT, "target", "release", "tiproxy"))
SB_COMMON = ["--db-driver=mysql", f"--mysql-host={HOST}", "--mysql-user=app", "--mysql-password=secret",
             "--mysql-db=test", "--tables=1", "--table-size=100000", "--db-ps-mode=auto"]
ALL_WORKLOADS = {
    "point_select": ["oltp_point_select", "--threads=16"],
    "read_only": ["oltp_read_only", "--threads=16"],
    # make bench's large results: up to 10,000 rows a select.
    "large_ranges": ["oltp_read_only", "--threads=4", "--range_size=10000", "--point_selects=0"],
    # The same offered load for every target (a third of what the slowest carries here), so
    # wake-ups and CPU are compared at equal work: at saturation a proxy that spends less time
    # per event catches up with its sockets, and sleeps, more often.
    "point_select_at_rate": ["oltp_point_select", "--threads=16", f"--rate={os.environ.get('BENCH_RATE', '10000')}"],
}
# SYSCALLS_WORKLOADS picks some (comma-separated); the default is the short-query ones.
WORKLOADS = {w: ALL_WORKLOADS[w] for w in os.environ.get(
    "SYSCALLS_WORKLOADS", "point_select,read_only,point_select_at_rate").split(",")}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sh(*args):
    return subprocess.run(args, check=True, text=True, capture_output=True).stdout


def wait_port(port):
    import socket
    for _ in range(200):
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Target:
    def __init__(self, name, port, argv):
        self.name, self.port, self.argv, self.proc = name, port, argv, None

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(WORK, f"{self.name}.err"), "w"))
        wait_port(self.port)
        time.sleep(1.5)  # health checks see both backends before sessions are spread

    def cpu(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def ctxt(self):
        """(voluntary, involuntary) context switches over all threads: the first are the
        proxy's own sleeps, each ended by a wake-up; the second are other processes (the
        clients, the servers) taking its CPU."""
        vol = invol = 0
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                with open(f"/proc/{self.proc.pid}/task/{tid}/status") as f:
                    s = f.read()
            except OSError:
                continue
            vol += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", s, re.M).group(1))
            invol += int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", s, re.M).group(1))
        return vol, invol

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tiproxy(name, port, api_port, engine):
    cfg = os.path.join(WORK, f"{name}.toml")
    addrs = ", ".join(f'"{HOST}:{p}"' for p in DB_PORTS)
    with open(cfg, "w") as f:
        f.write(f"""[proxy]
addr = "{HOST}:{port}"
backend-addrs = [{addrs}]
io-engine = "{engine}"
[api]
addr = "{HOST}:{api_port}"
[log]
level = "info"
[log.log-file]
filename = "{os.path.join(WORK, name + '.log')}"
""")
    return Target(name, port, [TIPROXY, "--config", cfg])


def haproxy():
    cfg = os.path.join(WORK, "haproxy.cfg")
    servers = "\n".join(f"    server db{i} {HOST}:{p}" for i, p in enumerate(DB_PORTS))
    with open(cfg, "w") as f:
        f.write(f"""global
    maxconn 9900
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend sql
    bind {HOST}:{HAPROXY_PORT}
    default_backend dbs
backend dbs
    balance leastconn
{servers}
""")
    return Target("haproxy", HAPROXY_PORT, ["/usr/sbin/haproxy", "-db", "-f", cfg])


def sysbench(port, args, seconds):
    out = sh("sysbench", args[0], f"--mysql-port={port}", *SB_COMMON, *args[1:], f"--time={seconds}", "run")
    return int(re.search(r"queries:\s+(\d+)", out).group(1)), \
        float(re.search(r"queries:\s+\d+\s+\(([\d.]+) per sec", out).group(1))


def strace_run(t, args):
    out = os.path.join(WORK, f"strace-{t.name}-{args[0]}.txt")
    st = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(t.proc.pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    queries, _ = sysbench(t.port, args, STRACE_SECONDS)
    st.send_signal(signal.SIGINT)
    st.wait(30)
    with open(out) as f:
        text = f.read()
    calls = {}
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(2) != "total":
            calls[m.group(2)] = int(m.group(1))
    total = sum(calls.values())
    return total / queries, {k: v / queries for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:6]}


def main():
    os.makedirs(WORK, exist_ok=True)
    for i, p in enumerate(DB_PORTS):
        sh(os.path.join(ROOT, "scripts", "mariadb-instance.sh"), "start", os.path.join(WORK, f"db{i}"), str(p))
    targets = [haproxy(), tiproxy("epoll", 27000, 24080, "epoll"), tiproxy("tokio", 27003, 24082, "tokio"),
               tiproxy("uring", 27002, 24081, "io-uring")]
    try:
        for t in targets:
            t.start()
        with open(os.path.join(WORK, "uring.log")) as f:
            engine_line = [l for l in f if "session workers started" in l or "io_uring" in l]
        log("uring instance:", *engine_line)
        port = DB_PORTS[0]
        for p in DB_PORTS:
            subprocess.run(["sysbench", "oltp_point_select", f"--mysql-port={p}", *SB_COMMON, "cleanup"],
                           capture_output=True)
            sh("sysbench", "oltp_point_select", f"--mysql-port={p}", *SB_COMMON, "prepare")
        del port
        res = {}
        for wl, args in WORKLOADS.items():
            for r in range(ROUNDS):
                order = targets if r % 2 == 0 else list(reversed(targets))
                for t in order:
                    settle()
                    c0, x0 = t.cpu(), t.ctxt()
                    q, qps = sysbench(t.port, args, SECONDS)
                    x1 = t.ctxt()
                    m = {"qps": qps, "cpu_us": (t.cpu() - c0) / q * 1e6,
                         "ctxt": (x1[0] + x1[1] - x0[0] - x0[1]) / q,
                         "wakeups": (x1[0] - x0[0]) / q, "preempted": (x1[1] - x0[1]) / q}
                    res.setdefault((wl, t.name), []).append(m)
                    log(f"{wl} round {r} {t.name}: qps {qps:.0f} cpu/q {m['cpu_us']:.2f} us ctxt/q {m['ctxt']:.3f} "
                        f"(wake-ups {m['wakeups']:.3f}, preempted {m['preempted']:.3f})")
            for t in targets:
                per_q, top = strace_run(t, args)
                res[(wl, t.name, "sys")] = (per_q, top)
                log(f"{wl} strace {t.name}: {per_q:.2f} syscalls/query {top}")
        print_table(res, targets)
    finally:
        for t in targets:
            t.stop()
        for i in range(len(DB_PORTS)):
            subprocess.run([os.path.join(ROOT, "scripts", "mariadb-instance.sh"), "stop",
                            os.path.join(WORK, f"db{i}")], check=False)


RATIOS = [("epoll", "haproxy"), ("tokio", "haproxy"), ("uring", "haproxy"), ("epoll", "tokio"), ("uring", "epoll")]


def print_table(res, targets):
    names = [t.name for t in targets]
    print(f"\n{ROUNDS} alternating rounds of {SECONDS} s per target, medians; system calls from one "
          f"{STRACE_SECONDS} s run under strace -c -f per target\n")
    print("| workload | measure | " + " | ".join(names) + " | " + " | ".join(f"{a} / {b}" for a, b in RATIOS) + " |")
    print("|---|---|" + "---:|" * (len(names) + len(RATIOS)))
    for wl in WORKLOADS:
        kinds = ("qps", "cpu_us", "ctxt", "wakeups", "preempted")
        med = {n: {k: statistics.median(m[k] for m in res[(wl, n)]) for k in kinds} for n in names}
        # Ratios per round (same position in the alternation), then their median.
        def ratio(k, a, b):
            return statistics.median(x[k] / y[k] if y[k] else float("nan") for x, y in zip(res[(wl, a)], res[(wl, b)]))
        for k, label, fmt in (("qps", "QPS", ".0f"), ("cpu_us", "CPU us/query", ".2f"),
                              ("ctxt", "context switches/query", ".3f"),
                              ("wakeups", "of which voluntary (wake-ups)", ".3f"),
                              ("preempted", "of which involuntary (preempted)", ".3f")):
            print(f"| {wl} | {label} | " + " | ".join(format(med[n][k], fmt) for n in names) + " | " +
                  " | ".join(f"{ratio(k, a, b):.2f}" for a, b in RATIOS) + " |")
        sys_q = {n: res[(wl, n, "sys")][0] for n in names}
        print(f"| {wl} | syscalls/query | " + " | ".join(f"{sys_q[n]:.2f}" for n in names) + " | " +
              " | ".join(f"{sys_q[a] / sys_q[b]:.2f}" for a, b in RATIOS) + " |")
    print()
    for wl in WORKLOADS:
        for n in names:
            top = ", ".join(f"{k} {v:.2f}" for k, v in res[(wl, n, "sys")][1].items())
            print(f"- {wl} {n}: {top}")


if __name__ == "__main__":
    main()
