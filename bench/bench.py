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
GO_PORT, GO_API_PORT = 26002, 23081
# This proxy's binary: the release build by default, another one for an A/B of two builds.
TIPROXY_BIN = os.environ.get("TIPROXY_BIN", os.path.join(ROOT, "bin", "tiproxy"))
# The Go TiProxy's binary, when given: it runs beside the others in every part of the run.
TIPROXY_GO = os.environ.get("TIPROXY_GO", "")
# Which parts run (all by default); only a full run rewrites the results in docs/performance.md.
PARTS = [p for p in os.environ.get("BENCH_PARTS", "sysbench,idle,churn,migration").split(",") if p]
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
        self.proc = subprocess.Popen([TIPROXY_BIN, "--config", cfg],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_port()
        # Health checks must have seen both backends before sessions are spread.
        for _ in range(100):
            if all(b.get("healthy") for b in api("/api/backends")["backends"]):
                return
            time.sleep(0.1)


class GoTiProxy(Target):
    """PingCAP's TiProxy, from a binary the caller built (`TIPROXY_GO`). Without PD
    (`pd-addrs = ""`) it takes its backends from a namespace, which its HTTP API sets
    (`PUT /api/admin/namespace/<name>`, then `POST /api/admin/namespace/commit`)."""

    def __init__(self, binary):
        super().__init__("go-tiproxy", GO_PORT)
        self.binary = binary
        self.logfile = os.path.join(WORK, "go-tiproxy.log")

    def version(self):
        out = subprocess.run([self.binary, "--version"], text=True, capture_output=True)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "unknown"

    def start(self):
        self.ensure_port_free()
        workdir = os.path.join(WORK, "go-tiproxy-work")
        shutil.rmtree(workdir, ignore_errors=True)
        cfg = os.path.join(WORK, "go-tiproxy.toml")
        with open(cfg, "w") as f:
            f.write(f"""workdir = "{workdir}"
[proxy]
addr = "{HOST}:{GO_PORT}"
pd-addrs = ""
[api]
addr = "{HOST}:{GO_API_PORT}"
[log]
level = "warn"
[log.log-file]
filename = "{self.logfile}"
""")
        self.proc = subprocess.Popen([self.binary, "--config", cfg], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(WORK, "go-tiproxy.stderr"), "w"))
        for _ in range(200):
            try:
                go_api("/api/admin/namespace/default", "PUT", {
                    "namespace": "default",
                    "frontend": {"user": ""},
                    "backend": {"instances": [f"{HOST}:{p}" for p in DB_PORTS]},
                })
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("the Go TiProxy's API did not answer")
        go_api("/api/admin/namespace/commit?namespace=default", "POST")
        self.wait_port()
        # Its health check must have seen the backends before sessions come: a login works.
        for _ in range(100):
            if subprocess.run(CLIENT + ["churn", HOST, str(GO_PORT), "0.01", "1"],
                              capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("the Go TiProxy never routed a session to a backend")


def go_api(path, method="GET", body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{HOST}:{GO_API_PORT}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


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


SETTLE_MAX = float(os.environ.get("BENCH_SETTLE", "3"))


def cpu_busy(window):
    """The share of the machine's CPU time that was busy over `window` seconds (/proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(window)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def settle():
    """Waits, at most BENCH_SETTLE seconds, until the machine is nearly idle: the aftermath of
    the previous target's run (a server ending thousands of connections, a garbage collector)
    is then not charged to the next target, whichever comes next in the round."""
    deadline = time.time() + SETTLE_MAX
    while time.time() < deadline and cpu_busy(0.25) > 0.15:
        pass


def run_sysbench_rounds(targets):
    results = {}
    for wl, args in WORKLOADS.items():
        for r in range(ROUNDS):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for t in order:
                settle()
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
    """Sessions per second (connect, log in, `SELECT 1`, quit) and the proxy's CPU ms per session."""
    c0 = target.cpu_seconds()
    out = sh(*CLIENT, "churn", HOST, str(target.port), str(SECONDS), "8")
    rate = float(out.strip())
    cpu_ms = (target.cpu_seconds() - c0) * 1000 / (rate * SECONDS) if target.proc and rate else None
    return rate, cpu_ms


def churn_rounds(targets):
    """Alternating rounds of churn; returns {target: [(rate, cpu ms per session), ...]}."""
    out = {}
    for r in range(ROUNDS):
        for t in (targets if r % 2 == 0 else list(reversed(targets))):
            settle()
            out.setdefault(t.name, []).append(churn(t))
            log(f"churn round {r} {t.name}: {out[t.name][-1]}")
    return out


MOVED = re.compile(r"session moved.*\[reason=api\].*?\[ms=(\d+)\]")


def migration(tp, sessions=2000):
    """`sessions` idle sessions spread over both backends, then every one on DB_PORTS[0] asked to
    move off it through the API; returns (on it, moved, seconds until all moved, median ms, p99 ms).
    Only moves the request caused count (`reason=api`): the balancer may move some back later."""
    tp.start()
    src = f"{HOST}:{DB_PORTS[0]}"
    p = subprocess.Popen(CLIENT + ["idle", HOST, str(tp.port), str(sessions)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("ready")
    on_src = next(b["sessions"] for b in api("/api/backends")["backends"] if b["addr"] == src)
    t0 = time.monotonic()
    api(f"/api/admin/migrate?from={src}", "POST")
    elapsed = None
    while time.monotonic() - t0 < 120:
        if len(MOVED.findall(open(tp.logfile).read())) >= on_src:
            elapsed = time.monotonic() - t0
            break
        time.sleep(0.01)
    ms = sorted(int(x) for x in MOVED.findall(open(tp.logfile).read()))
    p.stdin.close()
    p.wait()
    tp.stop()
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


def machine(go=None):
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        m = re.search(r"model name\s*:\s*(.*)", f.read())
        if m:
            model = m.group(1)
    ver = lambda *c: subprocess.run(c, text=True, capture_output=True).stdout.splitlines()[0]
    lines = [
        f"- machine: {os.cpu_count()} CPUs (nproc), {model}, {platform.system()} {platform.release()}",
        f"- HAProxy: {ver('/usr/sbin/haproxy', '-v')}",
        f"- MariaDB: {ver('mariadbd', '--version')}",
        f"- sysbench: {ver('sysbench', '--version')}",
        f"- tiproxy: {ver(TIPROXY_BIN, '-v')}",
    ]
    if go:
        lines.append(f"- Go TiProxy: {go.version()} ({go.binary})")
    return lines


def sysbench_rows(sb, names):
    """Per workload: QPS, latencies and proxy CPU per query, as medians of the rounds."""
    rows = []
    for wl in WORKLOADS:
        med = {t: {k: median([m[k] for m in sb[(wl, t)]]) for k in sb[(wl, t)][0]} for t in names}
        for key, label in (("qps", "QPS"), ("avg_ms", "avg latency ms"), ("p95_ms", "p95 latency ms"),
                           ("cpu_per_1k", "proxy CPU s / 1k queries")):
            rows.append(Row(f"{wl} {label}", {t: med[t][key] for t in names},
                            {t: [m[key] for m in sb[(wl, t)]] for t in names}))
    return rows


class Row:
    """One measure: the median per target and, where there were rounds, each round's figure."""

    def __init__(self, name, values, rounds=None):
        self.name, self.values, self.rounds = name, values, rounds or {}

    def ratio(self, a, b):
        return ratio(self.values.get(a), self.values.get(b))

    def spread(self, a, b):
        if a in self.rounds and b in self.rounds:
            return round_spread(self.rounds[a], self.rounds[b])
        return None


def render(rows, with_go):
    cols = ["direct", "haproxy", "tiproxy"] + (["go-tiproxy"] if with_go else [])
    head = "| metric | direct | HAProxy | tiproxy |" + (" Go TiProxy |" if with_go else "")
    head += " tiproxy / HAProxy | same, per round |"
    if with_go:
        head += " Go TiProxy / HAProxy | tiproxy / Go TiProxy | same, per round |"
    lines = [head, "|---" + "|---:" * (head.count("|") - 2) + "|"]
    for r in rows:
        spec = ".4f" if "CPU s" in r.name else ".3f" if "CPU ms" in r.name else ".1f"
        cells = [fmt(r.values.get(c), spec) for c in cols]
        cells += [fmt(r.ratio("tiproxy", "haproxy"), ".2f"), r.spread("tiproxy", "haproxy") or ""]
        if with_go:
            cells += [fmt(r.ratio("go-tiproxy", "haproxy"), ".2f"), fmt(r.ratio("tiproxy", "go-tiproxy"), ".2f"),
                      r.spread("tiproxy", "go-tiproxy") or ""]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    os.makedirs(WORK, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    stop_backends()
    start_backends()
    direct, ha, tp = Direct(), HAProxy(), TiProxy()
    go = GoTiProxy(TIPROXY_GO) if TIPROXY_GO else None
    proxies = [ha, tp] + ([go] if go else [])
    names = ["direct"] + [p.name for p in proxies]
    rows = []
    try:
        for i, port in enumerate(DB_PORTS):
            subprocess.run(["sysbench", "oltp_point_select", f"--mysql-port={port}"] + SB_COMMON + ["cleanup"],
                           capture_output=True)
            sysbench(port, WORKLOADS["point_select"], "prepare")
        if "sysbench" in PARTS:
            for p in proxies:
                p.start()
            rows += sysbench_rows(run_sysbench_rounds([direct] + proxies), names)
            for p in proxies:
                p.stop()
        if "idle" in PARTS:
            for n in IDLE_COUNTS:
                per = {p.name: idle_sessions(p, n) for p in proxies}
                log(f"idle {n}: " + ", ".join(f"{k} {v:.1f} KiB" for k, v in per.items()))
                rows.append(Row(f"RSS KiB per idle session @{n}", per))
        if "churn" in PARTS:
            for p in proxies:
                p.start()
            ch = churn_rounds([direct] + proxies)
            for p in proxies:
                p.stop()
            for i, label in ((0, "churn sessions/s"), (1, "churn proxy CPU ms / session")):
                per_round = {k: [x[i] for x in v] for k, v in ch.items()}
                rows.append(Row(label, {k: median(v) for k, v in per_round.items()}, per_round))
        if "migration" in PARTS:
            on_src, moved, secs, med_ms, p99_ms = migration(tp)
            log(f"migration: {moved}/{on_src} moved in {secs}s, median {med_ms} ms, p99 {p99_ms} ms")
            # The Go TiProxy moves a session with TiDB's SHOW SESSION_STATES and a session token;
            # MariaDB backends have neither, so it has no figure here.
            rows.append(Row(f"migrate {on_src} idle sessions, s", {"tiproxy": secs}))
            rows.append(Row("single migration median ms", {"tiproxy": med_ms}))
            rows.append(Row("single migration p99 ms", {"tiproxy": p99_ms}))
    finally:
        for p in proxies:
            p.stop()
        stop_backends()

    table = render(rows, go is not None)
    print(table)
    cmd = "make bench" + "".join(f" {k}={os.environ[k]}"
                                 for k in ("BENCH_ROUNDS", "BENCH_SECONDS", "BENCH_IDLE", "BENCH_PARTS", "TIPROXY_GO", "TIPROXY_BIN")
                                 if k in os.environ)
    if set(PARTS) != {"sysbench", "idle", "churn", "migration"}:
        log(f"({cmd}: a partial run; docs/performance.md is left as it was)")
        return
    results = "\n".join([
        f"Run {started}: `{cmd}` ({ROUNDS} alternating rounds of {SECONDS} s per workload and target;"
        " medians shown; the per-round columns are the range of the single rounds' ratios).", "",
        *machine(go), "", table, ""])
    doc = os.path.join(ROOT, "docs", "performance.md")
    text = open(doc).read() if os.path.exists(doc) else "# Performance\n\n<!-- results -->\n<!-- /results -->\n"
    text = re.sub(r"<!-- results -->.*<!-- /results -->",
                  lambda _: "<!-- results -->\n" + results + "<!-- /results -->", text, flags=re.S)
    with open(doc, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
