#!/usr/bin/env python3
# The benchmark driver behind `make bench`: tiproxy against HAProxy (and direct) over two private
# MariaDB backends, alternating targets within one run; prints a table and writes docs/performance.md.
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", ".work")
DB_PORTS = [23306, 23307]
HAPROXY_PORT, TIPROXY_PORT, API_PORT = 26001, 26000, 23080
HOST = "127.0.0.1"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
# The container's hard nofile limit is 20000 and a proxy holds two sockets per session.
IDLE_COUNTS = [int(x) for x in os.environ.get("BENCH_IDLE", "2000,9500").split(",")]
CLIENT = [sys.executable, os.path.join(ROOT, "bench", "mysqlclient.py")]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sh(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw).stdout


# ---------- processes ----------

def start_backends():
    for i, port in enumerate(DB_PORTS):
        sh(os.path.join(ROOT, "scripts", "mariadb-instance.sh"), "start",
           os.path.join(WORK, f"db{i}"), str(port), "12000")


def stop_backends():
    for i in range(len(DB_PORTS)):
        subprocess.run([os.path.join(ROOT, "scripts", "mariadb-instance.sh"), "stop",
                        os.path.join(WORK, f"db{i}")], check=False)


class Target:
    def __init__(self, name, port):
        self.name, self.port, self.proc = name, port, None

    def pid(self):
        return self.proc.pid if self.proc else None

    def cpu_seconds(self):
        if not self.proc:
            return 0.0
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def ensure_port_free(self):
        # HAProxy binds with SO_REUSEPORT, so a stale instance from an interrupted run would
        # silently take half of the connections (and hide half of the CPU) instead of failing.
        import socket
        with socket.socket() as s:
            if s.connect_ex((HOST, self.port)) == 0:
                raise RuntimeError(f"port {self.port} is already in use (a {self.name} left over "
                                   f"from an earlier run?); stop it and run again")

    def wait_port(self):
        import socket
        for _ in range(200):
            try:
                socket.create_connection((HOST, self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.port}")


class Direct(Target):
    def __init__(self):
        super().__init__("direct", DB_PORTS[0])

    def start(self):
        pass


class HAProxy(Target):
    def __init__(self):
        super().__init__("haproxy", HAPROXY_PORT)

    def start(self):
        self.ensure_port_free()
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
        self.proc = subprocess.Popen(["/usr/sbin/haproxy", "-db", "-f", cfg],
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(WORK, "haproxy.log"), "w"))
        self.wait_port()


class TiProxy(Target):
    def __init__(self):
        super().__init__("tiproxy", TIPROXY_PORT)
        self.logfile = os.path.join(WORK, "tiproxy.log")

    def start(self):
        self.ensure_port_free()
        cfg = os.path.join(WORK, "tiproxy.toml")
        addrs = ", ".join(f'"{HOST}:{p}"' for p in DB_PORTS)
        with open(cfg, "w") as f:
            f.write(f"""[proxy]
addr = "{HOST}:{TIPROXY_PORT}"
backend-addrs = [{addrs}]
[proxy.service-account]
user = "tiproxy_svc"
password = "svcsecret"
[api]
addr = "{HOST}:{API_PORT}"
[log]
level = "info"
[log.log-file]
filename = "{self.logfile}"
""")
        if os.path.exists(self.logfile):
            os.unlink(self.logfile)
        self.proc = subprocess.Popen([os.path.join(ROOT, "bin", "tiproxy"), "--config", cfg],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_port()
        # Health checks must have seen both backends before sessions are spread.
        for _ in range(100):
            if all(b.get("healthy") for b in api("/api/backends")["backends"]):
                return
            time.sleep(0.1)


def api(path, method="GET"):
    req = urllib.request.Request(f"http://{HOST}:{API_PORT}{path}", method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


# ---------- workloads ----------

SB_COMMON = ["--db-driver=mysql", f"--mysql-host={HOST}", "--mysql-user=app", "--mysql-password=secret",
             "--mysql-db=test", "--tables=1", "--table-size=100000", "--db-ps-mode=auto"]
WORKLOADS = {
    "point_select": ["oltp_point_select", "--threads=16"],
    "read_only": ["oltp_read_only", "--threads=16"],
    "large_ranges": ["oltp_read_only", "--threads=4", "--range_size=10000", "--point_selects=0"],
}


def sysbench(port, args, phase):
    cmd = ["sysbench", args[0], f"--mysql-port={port}"] + SB_COMMON + args[1:]
    if phase == "run":
        cmd += [f"--time={SECONDS}", "--percentile=95", "run"]
    else:
        cmd += [phase]
    return sh(*cmd)


def parse_sysbench(out):
    q = float(re.search(r"queries:\s+\d+\s+\(([\d.]+) per sec", out).group(1))
    total = int(re.search(r"queries:\s+(\d+)", out).group(1))
    avg = float(re.search(r"avg:\s+([\d.]+)", out).group(1))
    p95 = float(re.search(r"95th percentile:\s+([\d.]+)", out).group(1))
    return {"qps": q, "queries": total, "avg_ms": avg, "p95_ms": p95}


def run_sysbench_rounds(targets):
    results = {}
    for wl, args in WORKLOADS.items():
        for r in range(ROUNDS):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for t in order:
                c0 = t.cpu_seconds()
                m = parse_sysbench(sysbench(t.port, args, "run"))
                m["cpu_per_1k"] = (t.cpu_seconds() - c0) / m["queries"] * 1000 if t.proc else None
                results.setdefault((wl, t.name), []).append(m)
                log(f"{wl} round {r} {t.name}: {m}")
    return results


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def idle_sessions(target, n):
    target.start()
    time.sleep(0.5)
    base = target.rss_kib()
    p = subprocess.Popen(CLIENT + ["idle", HOST, str(target.port), str(n)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("ready"):
        raise RuntimeError(f"idle client failed against {target.name}: {line!r}")
    time.sleep(2)
    rss = target.rss_kib()
    p.stdin.close()
    p.wait()
    target.stop()
    return (rss - base) / n


def churn(target):
    out = sh(*CLIENT, "churn", HOST, str(target.port), str(SECONDS), "8")
    return float(out.strip())


def migration(tp):
    """1,000 idle sessions on DB_PORTS[0] moved off it; returns (seconds, median ms, p99 ms)."""
    tp.start()
    src = f"{HOST}:{DB_PORTS[0]}"
    p = subprocess.Popen(CLIENT + ["idle", HOST, str(tp.port), "2000"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("ready")
    on_src = next(b["sessions"] for b in api("/api/backends")["backends"] if b["addr"] == src)
    t0 = time.monotonic()
    api(f"/api/admin/migrate?from={src}", "POST")
    elapsed = None
    while time.monotonic() - t0 < 120:
        moved = open(tp.logfile).read().count("session moved")
        if moved >= on_src:
            elapsed = time.monotonic() - t0
            break
        time.sleep(0.02)
    ms = [int(x) for x in re.findall(r"session moved.*?\[ms=(\d+)\]", open(tp.logfile).read())]
    p.stdin.close()
    p.wait()
    tp.stop()
    ms.sort()
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else None
    return on_src, len(ms), elapsed, statistics.median(ms) if ms else None, p99


# ---------- report ----------

def round_spread(tp, ha):
    """The lowest and highest tiproxy / HAProxy ratio of single rounds (each pair measured back
    to back): how far one round can stray on this machine, next to the ratio of the medians."""
    rs = [a / b for a, b in zip(tp, ha) if a is not None and b]
    return f"{min(rs):.2f}-{max(rs):.2f}" if rs else None


def fmt(x, spec=".1f"):
    return "n/a" if x is None else format(x, spec)


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        m = re.search(r"model name\s*:\s*(.*)", f.read())
        if m:
            model = m.group(1)
    ver = lambda *c: subprocess.run(c, text=True, capture_output=True).stdout.splitlines()[0]
    return [
        f"- machine: {os.cpu_count()} CPUs (nproc), {model}, {platform.system()} {platform.release()}",
        f"- HAProxy: {ver('/usr/sbin/haproxy', '-v')}",
        f"- MariaDB: {ver('mariadbd', '--version')}",
        f"- sysbench: {ver('sysbench', '--version')}",
        f"- tiproxy: {ver(os.path.join(ROOT, 'bin', 'tiproxy'), '-v')}",
    ]


def main():
    os.makedirs(WORK, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    stop_backends()
    start_backends()
    direct, ha, tp = Direct(), HAProxy(), TiProxy()
    rows = []
    try:
        for i, port in enumerate(DB_PORTS):
            subprocess.run(["sysbench", "oltp_point_select", f"--mysql-port={port}"] + SB_COMMON + ["cleanup"],
                           capture_output=True)
            sysbench(port, WORKLOADS["point_select"], "prepare")
        ha.start()
        tp.start()
        sb = run_sysbench_rounds([direct, ha, tp])
        for wl in WORKLOADS:
            med = {t: {k: median([m[k] for m in sb[(wl, t)]]) for k in sb[(wl, t)][0]}
                   for t in ("direct", "haproxy", "tiproxy")}
            h, t = med["haproxy"], med["tiproxy"]

            def spread(key):
                return round_spread([m[key] for m in sb[(wl, "tiproxy")]], [m[key] for m in sb[(wl, "haproxy")]])

            rows.append((f"{wl} QPS", med["direct"]["qps"], h["qps"], t["qps"], ratio(t["qps"], h["qps"]),
                         spread("qps")))
            rows.append((f"{wl} avg latency ms", med["direct"]["avg_ms"], h["avg_ms"], t["avg_ms"],
                         ratio(t["avg_ms"], h["avg_ms"]), spread("avg_ms")))
            rows.append((f"{wl} p95 latency ms", med["direct"]["p95_ms"], h["p95_ms"], t["p95_ms"],
                         ratio(t["p95_ms"], h["p95_ms"]), spread("p95_ms")))
            rows.append((f"{wl} proxy CPU s / 1k queries", None, h["cpu_per_1k"], t["cpu_per_1k"],
                         ratio(t["cpu_per_1k"], h["cpu_per_1k"]), spread("cpu_per_1k")))
        ha.stop()
        tp.stop()
        for n in IDLE_COUNTS:
            h = idle_sessions(ha, n)
            t = idle_sessions(tp, n)
            log(f"idle {n}: haproxy {h:.1f} KiB, tiproxy {t:.1f} KiB")
            rows.append((f"RSS KiB per idle session @{n}", None, h, t, ratio(t, h), None))
        ha.start()
        tp.start()
        ch = {}
        for r in range(ROUNDS):
            for t in ([direct, ha, tp] if r % 2 == 0 else [tp, ha, direct]):
                ch.setdefault(t.name, []).append(churn(t))
                log(f"churn round {r} {t.name}: {ch[t.name][-1]}")
        ha.stop()
        tp.stop()
        c = {k: median(v) for k, v in ch.items()}
        rows.append(("churn sessions/s", c["direct"], c["haproxy"], c["tiproxy"], ratio(c["tiproxy"], c["haproxy"]),
                     round_spread(ch["tiproxy"], ch["haproxy"])))
        on_src, moved, secs, med_ms, p99_ms = migration(tp)
        log(f"migration: {moved}/{on_src} moved in {secs}s, median {med_ms} ms, p99 {p99_ms} ms")
        rows.append((f"migrate {on_src} idle sessions, s", None, None, secs, None, None))
        rows.append(("single migration median ms", None, None, med_ms, None, None))
        rows.append(("single migration p99 ms", None, None, p99_ms, None, None))
    finally:
        ha.stop()
        tp.stop()
        stop_backends()

    lines = ["| metric | direct | HAProxy | tiproxy | tiproxy / HAProxy | same, per round |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, d, h, t, r, per_round in rows:
        spec = ".4f" if "CPU" in name else ".1f"
        lines.append(f"| {name} | {fmt(d, spec)} | {fmt(h, spec)} | {fmt(t, spec)} | {fmt(r, '.2f')} | {per_round or ''} |")
    table = "\n".join(lines)
    print(table)
    cmd = "make bench" + "".join(f" {k}={os.environ[k]}" for k in ("BENCH_ROUNDS", "BENCH_SECONDS", "BENCH_IDLE")
                                 if k in os.environ)
    results = "\n".join([
        f"Run {started}: `{cmd}` ({ROUNDS} alternating rounds of {SECONDS} s per workload and target;"
        " medians shown; the last column is the range of the single rounds' ratios).", "", *machine(), "",
        table, ""])
    doc = os.path.join(ROOT, "docs", "performance.md")
    text = open(doc).read() if os.path.exists(doc) else "# Performance\n\n<!-- results -->\n<!-- /results -->\n"
    text = re.sub(r"<!-- results -->.*<!-- /results -->",
                  lambda _: "<!-- results -->\n" + results + "<!-- /results -->", text, flags=re.S)
    with open(doc, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
