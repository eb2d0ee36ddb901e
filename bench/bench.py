#!/usr/bin/env python3
"""Vantage benchmark harness: Vantage against blackbox_exporter, same run, same machine.

`scripts/bench` installs what is missing, builds the release binaries and runs this.
Run directly, it needs the binaries already built:

    bench/bench.py [--smoke] [--only 1,2,5] [--soak SECONDS] [--bin-dir target/release]

Figures (issue 5):
  1  CPU per HTTP probe (user+sys of the prober / probes completed at the target), fresh
     connection, telemetry on, N journeys (targets) on a 1 s schedule; baselines:
     blackbox_exporter driven like Prometheus drives it, and wrk's CPU per
     new-connection request (the loopback floor).
  2  Sustained probes per second: each prober offered more than it can do.
  3  Resident set with 10,000 scheduled journeys, sampled over a soak.
  4  Schedule keeping over the same soak (10,000 journeys every 10 s = 1,000 runs/s):
     start lateness p99 from the agent's histogram, skipped ticks.
  5  Timing truth against a target that answers after a known delay.
  6  Browser journey overhead: the login-then-chat journey (journeys/movie-guru.yaml)
     through `vantage once` against bench/bare_webdriver.py making the same WebDriver
     calls, alternating, each on its own chromedriver; then the sessions per minute
     `vantage run --max-browsers 2` sustains, against the bare script 2 at a time.

Everything runs on 127.0.0.1, every phase is bounded in time, and nothing here fails on a
timing: the exit status is non-zero only when the harness itself could not run. The same
file also holds the small helper processes it starts (`sink`, `slow-target`, `drive`), so
their CPU never lands on the harness or on a contestant.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime as dt
import http.client
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# The issue's figures at full scale, and a tiny version of each for the CI smoke.
FULL = {
    "cpu_journeys": [1000, 5000],
    "cpu_warmup": 5.0,
    "cpu_window": 20.0,
    "wrk_seconds": 10,
    "wrk_conns": 16,
    # Figure 2: Vantage is offered this many runs per second (journeys every 1 s) at
    # these concurrency limits (the default, and one that is no limit here) ...
    "max_offered": 20000,
    "max_concurrency": [256, 1024],
    "max_window": 15.0,
    # ... and blackbox_exporter is scraped as fast as wrk can, at these concurrencies.
    "max_bb_conns": [16, 64],
    "mem_journeys": 10000,
    "mem_interval": 10,
    "soak": 600.0,
    "soak_warmup": 30.0,
    "rss_every": 5.0,
    # Figure 5: delay (ms) -> samples; runs `concurrency` at a time. A p99 of 200
    # samples is their second worst, which moved by a third between runs; 400 put
    # four behind it.
    "truth": {10: 600, 100: 400, 1000: 80},
    "truth_concurrency": 8,
    "truth_rounds": 4,
    # Figure 6: alternating rounds after warm-up runs of each, then sessions per minute
    # over a window after a warm-up, this many browsers at a time.
    "browser_warmup_runs": 1,
    "browser_rounds": 10,
    "browser_slots": 2,
    "browser_warmup": 5.0,
    "browser_window": 60.0,
    "browser_bare_parallel": True,
}
SMOKE = {
    "cpu_journeys": [20, 50],
    "cpu_warmup": 1.2,
    "cpu_window": 1.5,
    "wrk_seconds": 1,
    "wrk_conns": 4,
    "max_offered": 300,
    "max_concurrency": [256],
    "max_window": 1.5,
    "max_bb_conns": [8],
    "mem_journeys": 200,
    "mem_interval": 1,
    "soak": 3.0,
    "soak_warmup": 1.5,
    "rss_every": 0.5,
    "truth": {10: 12, 100: 6, 1000: 2},
    "truth_concurrency": 4,
    "truth_rounds": 2,
    "browser_warmup_runs": 0,
    "browser_rounds": 1,
    "browser_slots": 2,
    "browser_warmup": 0.0,
    "browser_window": 8.0,
    # The smoke runs the agent's side of 6b only: the bare script's window would add
    # another 10 s or so.
    "browser_bare_parallel": False,
}

# Row ids, in the order they are printed; tests/tests/bench_smoke.rs checks each one.
ROW_IDS = ["1a-bb", "1a-wrk", "1b-bb", "1b-wrk", "2", "3a", "3b", "4a", "4b",
           "5a", "5b", "5c", "6", "6b"]


def say(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------

_children: list[subprocess.Popen] = []


def _kill_children() -> None:
    # Only the processes this harness started, by pid.
    for p in _children:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass


atexit.register(_kill_children)


def _on_signal(signum, _frame):
    _kill_children()
    sys.exit(128 + signum)


def spawn(cmd: list[str], log: Path, env: dict | None = None, stdout_pipe=False) -> subprocess.Popen:
    full_env = dict(os.environ)
    for k in [k for k in full_env if k.startswith("OTEL_")]:
        del full_env[k]
    full_env.update(env or {})
    logf = open(log, "ab")
    p = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout_pipe else logf,
        stderr=logf,
        env=full_env,
    )
    logf.close()
    _children.append(p)
    return p


def stop(p: subprocess.Popen | None, grace: float = 5.0) -> None:
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=5)


def read_line(p: subprocess.Popen, timeout: float) -> str:
    """The first line a child prints on stdout (how helpers announce their port)."""
    assert p.stdout is not None
    fd = p.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or p.poll() is not None:
            break
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """user+sys of a live process, all threads (dead ones included), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return rss, hwm


def http_get(url: str, timeout: float = 30.0, headers: dict | None = None) -> tuple[int, bytes]:
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            status, _ = http_get(url, timeout=2)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s ({last})")


def parse_prom(text: str) -> list[tuple[str, dict, float]]:
    """Prometheus text exposition -> (name, labels, value); comments skipped."""
    out = []
    label_re = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            labels_s, value_s = rest.rsplit("}", 1)
            labels = dict(label_re.findall(labels_s))
        else:
            name, value_s = line.split(None, 1)
            labels = {}
        value_s = value_s.split()[0]
        try:
            out.append((name, labels, float(value_s)))
        except ValueError:
            pass
    return out


# Where a Vantage run's reported duration goes, beyond the target's own time (the delay
# plus its lateness): the parts add up to the run's own error (figure 5).
PHASE_PARTS = ("before_call", "connect", "before_send", "processing", "transfer", "after_call")


def error_parts(report: dict, inside_target: float) -> dict[str, float]:
    """A passed one-call run's own error split into PHASE_PARTS, in milliseconds:
    run start to call start, connect, the call's time before its request is built and
    sent, processing beyond the target's own time, transfer, and call end to run end."""
    call = report["steps"][0]["calls"][0]
    ph = {k: (v or 0.0) for k, v in call["phases"].items() if k in ("resolve", "connect", "tls",
                                                                    "processing", "transfer")}
    before = call["started_at"] - report["started_at"]
    connect = ph["resolve"] + ph["connect"] + ph["tls"]
    return {k: v * 1e3 for k, v in {
        "before_call": before,
        "connect": connect,
        "before_send": call["duration"] - connect - ph["processing"] - ph["transfer"],
        "processing": ph["processing"] - inside_target,
        "transfer": ph["transfer"],
        "after_call": report["duration"] - before - call["duration"],
    }.items()}


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def hist_quantile(buckets: dict[float, float], q: float) -> float:
    """Quantile from cumulative buckets {le: count}, linear inside the bucket, like
    PromQL's histogram_quantile."""
    les = sorted(buckets)
    total = buckets[les[-1]] if les else 0
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = buckets[le]
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1)
        prev_le, prev_c = le, c
    return les[-1]


def proc_stat() -> list[int]:
    """The machine's cumulative CPU ticks: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def listen_overflows() -> int:
    """The kernel's count of connections a full accept queue turned away (any listener on
    the machine): each one costs a client a SYN or ACK retransmission, a second or more."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            if names.startswith("TcpExt:"):
                table = dict(zip(names.split()[1:], values.split()[1:]))
                return int(table.get("ListenOverflows", 0))
    except (OSError, ValueError):
        pass
    return 0


def tree_cpu(pid: int) -> float:
    """user+sys of a live process and of the children it has reaped (so chromedriver's
    figure includes the Chromium sessions that have ended), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def kill_path_processes(paths: list[str]) -> int:
    """SIGKILLs every process whose command line names one of `paths` (directories this
    harness made, under which the browser profiles of its sessions live), until none is
    left (bounded); returns how many there were."""
    killed: set[int] = set()
    for _ in range(30):
        alive = 0
        for pid_s in os.listdir("/proc"):
            if not pid_s.isdigit():
                continue
            try:
                with open(f"/proc/{pid_s}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(p in cmd for p in paths):
                alive += 1
                killed.add(int(pid_s))
                try:
                    os.kill(int(pid_s), signal.SIGKILL)
                except OSError:
                    pass
        if not alive:
            break
        time.sleep(0.1)
    return len(killed)


def machine_share(a: list[int], b: list[int]) -> str:
    """How busy the whole machine was between two proc_stat() samples: the share of
    (v)CPU time that was idle and the share the hypervisor stole."""
    d = [y - x for x, y in zip(a, b)]
    total = sum(d) or 1
    return f"{d[3] / total:.0%} idle, {d[7] / total:.0%} steal"


# --------------------------------------------------------------------------------------
# Helper processes: OTLP sink, known-delay target, Prometheus-like scrape driver
# --------------------------------------------------------------------------------------

async def read_http_message(reader: asyncio.StreamReader) -> tuple[bytes, dict, bytes] | None:
    """One HTTP/1.1 message: (start line, lower-cased headers, body). None on EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower().decode()] = v.strip().decode()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = b""
    return lines[0], headers, body


def cmd_sink(_args) -> None:
    """A minimal OTLP/HTTP receiver: 200 with an empty protobuf (a valid empty
    Export*ServiceResponse) for every POST; GET /stats counts what arrived."""
    stats = {"requests": 0, "bytes": 0, "paths": {}}

    async def handle(reader, writer):
        while True:
            msg = await read_http_message(reader)
            if msg is None:
                break
            start, _headers, body = msg
            path = start.split(b" ")[1].decode()
            if start.startswith(b"GET /stats"):
                payload = json.dumps(stats).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
            else:
                stats["requests"] += 1
                stats["bytes"] += len(body)
                stats["paths"][path] = stats["paths"].get(path, 0) + 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                             b"Content-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def cmd_slow_target(_args) -> None:
    """The fallback of bench/slow_target.c (same protocol) for a machine without a C
    compiler: GET /delay/MS?ID answers MS milliseconds after the request head arrived,
    one thread per connection, then closes; GET /stats[?reset] returns [ID, lateness]."""
    served: list[list] = []
    lock = threading.Lock()
    body = b"OK\n"

    def handle(conn: socket.socket):
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            t0 = time.perf_counter()
            path = buf.split(b" ", 2)[1].decode()
            if path.startswith("/stats"):
                with lock:
                    payload = json.dumps(served).encode()
                    if "reset" in path:
                        served.clear()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(payload), payload))
                return
            ms, rid = 0, -1
            if path.startswith("/delay/"):
                ms_s, _, id_s = path[len("/delay/"):].partition("?")
                ms, rid = int(ms_s), int(id_s or -1)
            # No spinning: a thread that spins holds the GIL and delays every other
            # connection by up to the switch interval. time.sleep (clock_nanosleep,
            # GIL released) overshoots by tens of microseconds, which /stats reports.
            left = t0 + ms / 1000 - time.perf_counter()
            if left > 0:
                time.sleep(left)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            took = time.perf_counter() - t0
            with lock:
                served.append([rid, took - ms / 1000])
        except OSError:
            pass
        finally:
            conn.close()

    sys.setswitchinterval(0.0001)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    print(srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def cmd_drive(args) -> None:
    """Drives blackbox_exporter the way Prometheus does: GET /probe?target=..&module=..
    over keep-alive connections, one scrape per target per interval, each target at its
    own phase, no overlapping scrapes of one target (a late one is skipped and counted).
    With --count it instead sends COUNT scrapes, CONCURRENCY at a time, and keeps every
    probe_duration_seconds (figure 5). Prints one JSON object."""
    host, port = args.exporter.rsplit(":", 1)
    port = int(port)

    def request(i: int) -> bytes:
        # A "{i}" in the target becomes the scrape's number (figure 5 matches each probe
        # with the target's own record of that request).
        target = args.target.replace("{i}", str(i))
        path = "/probe?" + urllib.parse.urlencode({"module": args.module, "target": target})
        return (f"GET {path} HTTP/1.1\r\nHost: {args.exporter}\r\n"
                f"User-Agent: vantage-bench-driver\r\nAccept: text/plain\r\n"
                f"X-Prometheus-Scrape-Timeout-Seconds: {args.scrape_timeout}\r\n\r\n").encode()

    fixed = request(0)
    stats = {"sent": 0, "completed": 0, "success": 0, "failed": 0, "errors": 0,
             "skipped": 0, "durations": []}
    left = [args.count]
    deadline = 0.0

    async def one(conn_state, req: bytes) -> tuple[float | None, float | None]:
        if conn_state.get("w") is None:
            r, w = await asyncio.open_connection(host, port)
            conn_state["r"], conn_state["w"] = r, w
        conn_state["w"].write(req)
        await conn_state["w"].drain()
        msg = await read_http_message(conn_state["r"])
        if msg is None:
            conn_state["w"] = None
            raise ConnectionError("exporter closed the connection")
        _start, headers, body = msg
        if headers.get("connection", "").lower() == "close":
            conn_state["w"].close()
            conn_state["w"] = None
        success = duration = None
        for line in body.split(b"\n"):
            if line.startswith(b"probe_success "):
                success = float(line.split()[1])
            elif line.startswith(b"probe_duration_seconds "):
                duration = float(line.split()[1])
        return success, duration

    async def worker(queue: asyncio.Queue | None, pending: list[bool] | None):
        conn_state: dict = {}
        loop = asyncio.get_running_loop()
        while True:
            if queue is None:
                # --count: take the next of COUNT scrapes until none is left or time is up.
                if left[0] <= 0 or (deadline and loop.time() >= deadline):
                    return
                left[0] -= 1
                item = args.count - left[0] - 1
            else:
                item = await queue.get()
                if item is None:
                    return
            stats["sent"] += 1
            try:
                success, duration = await one(conn_state, request(item) if args.count else fixed)
                stats["completed"] += 1
                if success == 1.0:
                    stats["success"] += 1
                else:
                    stats["failed"] += 1
                if args.count and duration is not None and len(stats["durations"]) < 100000:
                    stats["durations"].append([item, duration])
            except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                stats["errors"] += 1
                if conn_state.get("w") is not None:
                    conn_state["w"].close()
                conn_state["w"] = None
            if pending is not None:
                pending[item] = False

    async def main():
        nonlocal deadline
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        if args.duration and args.count:
            deadline = loop.time() + args.duration
        if args.count:
            workers = [asyncio.create_task(worker(None, None)) for _ in range(args.conns)]
            await asyncio.gather(*workers)
        else:
            n = args.targets
            pending = [False] * n
            workers = [asyncio.create_task(worker(queue, pending))
                       for _ in range(min(args.conns, n))]
            start = loop.time() + 0.05
            end = start + args.duration
            step = args.interval / n
            k = 0  # global tick index: target k % n, due at start + k * step
            while True:
                now = loop.time()
                if now >= end:
                    break
                while start + k * step <= now:
                    i = k % n
                    if pending[i]:
                        stats["skipped"] += 1
                    else:
                        pending[i] = True
                        queue.put_nowait(i)
                    k += 1
                await asyncio.sleep(min(0.002, max(0.0, start + k * step - loop.time())))
            # Let in-flight scrapes finish, briefly.
            for _ in workers:
                queue.put_nowait(None)
            await asyncio.wait(workers, timeout=6)
        print(json.dumps(stats), flush=True)

    asyncio.run(main())


# --------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------

class Harness:
    def __init__(self, args):
        self.args = args
        self.cfg = dict(SMOKE if args.smoke else FULL)
        if args.soak is not None:
            self.cfg["soak"] = args.soak
        self.only = set(args.only.split(",")) if args.only else None
        self.bin = Path(args.bin_dir).resolve()
        self.vantage = self.bin / "vantage"
        self.demo = self.bin / "vantage-demo"
        for b in (self.vantage, self.demo):
            if not b.is_file():
                raise SystemExit(f"{b} not found: build it (cargo build --release -p vantage -p vantage-demo)")
        self.blackbox = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
        self.wrk = shutil.which("wrk")
        self.work = Path(tempfile.mkdtemp(prefix="vantage-bench-"))
        self.logs = self.work
        self.rows: dict[str, dict] = {}
        self.notes: list[str] = []
        self.raw: dict = {}
        self.target: subprocess.Popen | None = None
        self.target_url = ""
        self.sink: subprocess.Popen | None = None
        self.sink_url = ""
        self.rt: list[str] = []

    # ---- helpers ---------------------------------------------------------------

    def want(self, fig: str) -> bool:
        return self.only is None or fig in self.only

    def note(self, msg: str) -> None:
        say(msg)
        self.notes.append(msg)

    def row(self, rid, what, vantage, baseline, ratio, target, met):
        self.rows[rid] = {"id": rid, "what": what, "vantage": vantage, "baseline": baseline,
                          "ratio": ratio, "target": target, "met": met}

    def helper(self, name: str, *extra: str) -> tuple[subprocess.Popen, int]:
        p = spawn([sys.executable, str(HERE / "bench.py"), name, *extra],
                  self.logs / f"{name}.log", stdout_pipe=True)
        line = read_line(p, 10)
        if not line.strip().isdigit():
            raise RuntimeError(f"{name} did not start: {line!r} (see {self.logs}/{name}.log)")
        return p, int(line)

    def start_target(self) -> None:
        p = spawn([str(self.demo), "--listen", "127.0.0.1:0"], self.logs / "target.log",
                  env={"RUST_LOG": "warn"}, stdout_pipe=True)
        line = read_line(p, 15)
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            raise RuntimeError(f"vantage-demo did not start: {line!r}")
        self.target, self.target_url = p, m.group(1)

    def target_count(self) -> int:
        """Responses the fast target has sent so far (every probe of either contestant)."""
        _, body = http_get(self.target_url + "/metrics")
        n = sum(v for name, _l, v in parse_prom(body.decode())
                if name == "movieguru_http_requests_total")
        return int(n)

    def count_window(self, pid: int, seconds: float) -> dict:
        """CPU of `pid` and probes completed at the target over `seconds`."""
        c0 = self.target_count()
        cpu0, t0, m0, o0 = cpu_seconds(pid), time.monotonic(), proc_stat(), listen_overflows()
        time.sleep(seconds)
        cpu1, t1, m1, o1 = cpu_seconds(pid), time.monotonic(), proc_stat(), listen_overflows()
        c1 = self.target_count()
        probes = max(0, c1 - c0 - 1)  # the first /metrics scrape is itself counted
        overflows = o1 - o0
        machine = machine_share(m0, m1)
        if overflows:
            machine += f", {overflows} listen-queue overflows"
        return {"cpu": cpu1 - cpu0, "wall": t1 - t0, "probes": probes,
                "rate": probes / (t1 - t0), "rss": rss_bytes(pid)[0],
                "machine": machine, "listen_overflows": overflows}

    def write_journeys(self, d: Path, n: int, every: str, url: str, prefix: str = "j") -> None:
        # 5,000 journeys per file, as a large deployment would split them (one file
        # may hold about 100,000 small journeys: the agent's YAML budget is 1,000,000
        # nodes per file).
        d.mkdir(parents=True, exist_ok=True)
        per_file = 5000
        for part in range(0, n, per_file):
            with open(d / f"journeys-{part // per_file:02d}.yaml", "w") as f:
                for i in range(part, min(n, part + per_file)):
                    f.write(f"- name: {prefix}{i:05d}\n  schedule: {{ every: {every} }}\n"
                            f"  timeout: 5s\n  steps:\n    - name: get\n"
                            f"      http: {{ url: \"{url}\" }}\n")

    def start_vantage(self, name: str, journeys: Path, telemetry: bool, concurrency: int = 256):
        port = free_port()
        env = {"RUST_LOG": "info"}
        if telemetry:
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": self.sink_url,
                        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                        # Prometheus' usual 15 s rather than the SDK's 60 s, so every
                        # measuring window pays for metric exports too.
                        "OTEL_METRIC_EXPORT_INTERVAL": "15000"})
        p = spawn([str(self.vantage), "run", str(journeys), "--listen", f"127.0.0.1:{port}",
                   "--location", "bench", "--concurrency", str(concurrency), "--grace", "2s"],
                  self.logs / f"{name}.log", env=env)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/readyz", 120, p)
        return p, base

    def vantage_metrics(self, base: str) -> list[tuple[str, dict, float]]:
        """The few series the harness reads. With 10,000 journeys the exposition is tens
        of megabytes, so lines are filtered before they are parsed."""
        _, body = http_get(base + "/metrics", timeout=120)
        self.raw.setdefault("metrics_bytes", []).append(len(body))
        keep = ("vantage_schedule_lateness_seconds_bucket", "vantage_schedule_skipped_ticks_total",
                "probe_success")
        return parse_prom("\n".join(l for l in body.decode().splitlines() if l.startswith(keep)))

    @staticmethod
    def lateness_buckets(metrics) -> dict[float, float]:
        return {float(l["le"]): v for name, l, v in metrics
                if name == "vantage_schedule_lateness_seconds_bucket"}

    @staticmethod
    def skipped(metrics) -> float:
        return sum(v for name, _l, v in metrics if name == "vantage_schedule_skipped_ticks_total")

    @staticmethod
    def failing(metrics) -> int:
        return sum(1 for name, _l, v in metrics if name == "probe_success" and v == 0)

    def start_blackbox(self, prefix: list[str] | None = None):
        port = free_port()
        p = spawn([*(prefix or []), self.blackbox, f"--config.file={HERE / 'blackbox.yml'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                  self.logs / "blackbox.log")
        wait_http(f"http://127.0.0.1:{port}/-/healthy", 30, p)
        return p, f"127.0.0.1:{port}"

    def drive(self, exporter: str, target: str, *, targets=0, interval=1.0, duration=0.0,
              count=0, conns=64) -> subprocess.Popen:
        cmd = [sys.executable, str(HERE / "bench.py"), "drive", "--exporter", exporter,
               "--target", target, "--targets", str(targets), "--interval", str(interval),
               "--duration", str(duration), "--count", str(count), "--conns", str(conns)]
        return spawn(cmd, self.logs / "drive.log", stdout_pipe=True)

    @staticmethod
    def drive_result(p: subprocess.Popen, timeout: float) -> dict:
        out, _ = p.communicate(timeout=timeout)
        return json.loads(out.decode().strip().splitlines()[-1])

    # ---- figures -----------------------------------------------------------------

    def fig1(self) -> None:
        cfg = self.cfg
        wrk_us = None
        if self.wrk:
            say(f"figure 1: wrk, new connection per request, {cfg['wrk_seconds']} s")
            p = subprocess.Popen([self.wrk, "-t1", f"-c{cfg['wrk_conns']}", f"-d{cfg['wrk_seconds']}s",
                                  "-H", "Connection: close", self.target_url + "/"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            _children.append(p)
            _, status, ru = os.wait4(p.pid, 0)
            out = p.stdout.read().decode() if p.stdout else ""
            p.returncode = os.waitstatus_to_exitcode(status)
            m = re.search(r"(\d+) requests in", out)
            reqs = int(m.group(1)) if m else 0
            cpu = ru.ru_utime + ru.ru_stime
            if reqs:
                wrk_us = cpu / reqs * 1e6
            self.raw["wrk"] = {"requests": reqs, "cpu": cpu, "output": out}
            say(f"  wrk: {reqs} requests, {cpu:.2f} s CPU, {wrk_us or 0:.1f} us/request")
        else:
            self.note("wrk is not installed: the loopback-floor ratio is not measured")

        for idx, n in enumerate(cfg["cpu_journeys"]):
            label = "1a" if idx == 0 else "1b"
            say(f"figure 1: Vantage, {n} journeys every 1 s, telemetry on")
            d = self.work / f"fig1-{n}"
            self.write_journeys(d, n, "1s", self.target_url + "/")
            p, base = self.start_vantage(f"vantage-fig1-{n}", d, telemetry=True)
            try:
                time.sleep(cfg["cpu_warmup"])
                sink0 = json.loads(http_get(self.sink_url + "/stats")[1])["requests"]
                w = self.count_window(p.pid, cfg["cpu_window"])
                sink1 = json.loads(http_get(self.sink_url + "/stats")[1])["requests"]
                m = self.vantage_metrics(base)
            finally:
                stop(p)
            v_us = w["cpu"] / w["probes"] * 1e6 if w["probes"] else float("nan")
            lat = self.lateness_buckets(m)
            w.update({"us_per_probe": v_us, "skipped": self.skipped(m), "failing": self.failing(m),
                      "otlp_posts": sink1 - sink0,
                      "lateness_p99_ms": hist_quantile(lat, 0.99) * 1e3 if lat else None})
            self.raw[f"fig1-vantage-{n}"] = w
            say(f"  Vantage: {w['probes']} probes ({w['rate']:.0f}/s), {w['cpu']:.2f} s CPU, "
                f"{v_us:.1f} us/probe, OTLP posts {sink1 - sink0}, failing {w['failing']}, "
                f"machine {w['machine']}")
            self.notes.append(f"fig 1 ({n} journeys): Vantage {w['rate']:.0f} probes/s, "
                              f"{(sink1 - sink0) / max(1, w['probes']):.2f} OTLP requests per probe, RSS "
                              f"{w['rss'] / MIB:.0f} MiB, machine {w['machine']} during its window")
            if w["rate"] < 0.95 * n:
                self.note(f"fig 1 ({n} journeys): Vantage completed only {w['rate']:.0f} probes/s of {n} scheduled")

            if idx == 0:
                # Context for the profile in RESULTS.md: the same load without OTLP.
                say(f"figure 1 (context): Vantage, {n} journeys every 1 s, telemetry off")
                p, base = self.start_vantage(f"vantage-fig1-{n}-notel", d, telemetry=False)
                try:
                    time.sleep(cfg["cpu_warmup"])
                    w0 = self.count_window(p.pid, cfg["cpu_window"])
                finally:
                    stop(p)
                us0 = w0["cpu"] / w0["probes"] * 1e6 if w0["probes"] else float("nan")
                w0["us_per_probe"] = us0
                self.raw[f"fig1-vantage-{n}-telemetry-off"] = w0
                self.notes.append(f"fig 1 ({n} journeys): with telemetry off Vantage spends {us0:.1f} µs "
                                  f"per probe, against {v_us:.1f} µs with OTLP on")
                say(f"  Vantage, telemetry off: {w0['probes']} probes ({w0['rate']:.0f}/s), {us0:.1f} us/probe")

            bb_us = None
            if self.blackbox:
                say(f"figure 1: blackbox_exporter, {n} targets scraped every 1 s")
                bp, addr = self.start_blackbox()
                try:
                    dp = self.drive(addr, self.target_url + "/", targets=n, interval=1.0,
                                    duration=cfg["cpu_warmup"] + cfg["cpu_window"] + 1,
                                    conns=min(n, 256))
                    time.sleep(cfg["cpu_warmup"])
                    b = self.count_window(bp.pid, cfg["cpu_window"])
                    b["driver"] = self.drive_result(dp, 60)
                    b["rss_hwm"] = rss_bytes(bp.pid)[1]
                finally:
                    stop(bp)
                bb_us = b["cpu"] / b["probes"] * 1e6 if b["probes"] else None
                b["us_per_probe"] = bb_us
                self.raw[f"fig1-blackbox-{n}"] = b
                say(f"  blackbox: {b['probes']} probes ({b['rate']:.0f}/s), {b['cpu']:.2f} s CPU, "
                    f"{bb_us or 0:.1f} us/probe, driver {b['driver']}, machine {b['machine']}")
                self.notes.append(f"fig 1 ({n} targets): blackbox_exporter {b['rate']:.0f} probes/s, "
                                  f"RSS {b['rss'] / MIB:.0f} MiB, machine {b['machine']} during its window")
                if b["rate"] < 0.95 * n:
                    self.note(f"fig 1 ({n} targets): blackbox_exporter completed only {b['rate']:.0f} "
                              f"probes/s of {n} scheduled (saturated); its CPU per probe is over what it did")
            what = f"CPU per probe, {n:,} journeys @1s, telemetry on"
            self.row(f"{label}-bb", what + " (vs blackbox)", f"{v_us:.1f} µs",
                     f"{bb_us:.1f} µs" if bb_us else "n/a", ratio(v_us, bb_us), "≤ 0.125",
                     met(v_us, bb_us, lambda r: r <= 0.125))
            self.row(f"{label}-wrk", what + " (vs wrk new-conn request)", f"{v_us:.1f} µs",
                     f"{wrk_us:.1f} µs" if wrk_us else "n/a", ratio(v_us, wrk_us), "≤ 2.5",
                     met(v_us, wrk_us, lambda r: r <= 2.5))

    def fig2(self) -> None:
        cfg = self.cfg
        best_v = 0.0
        offered = cfg["max_offered"]
        d = self.work / f"fig2-{offered}"
        self.write_journeys(d, offered, "1s", self.target_url + "/")
        for conc in cfg["max_concurrency"]:
            # A journey never overlaps itself: once runs wait longer than their interval,
            # each journey skips every other tick, so the offered load must be well above
            # capacity, and the concurrency limit (in-flight runs) must not be what binds
            # when the machine makes each probe slow.
            say(f"figure 2: Vantage offered {offered} runs/s ({offered} journeys every 1 s), "
                f"--concurrency {conc}")
            p, base = self.start_vantage(f"vantage-fig2-c{conc}", d, telemetry=True, concurrency=conc)
            try:
                time.sleep(cfg["cpu_warmup"])
                w = self.count_window(p.pid, cfg["max_window"])
            finally:
                stop(p)
            self.raw[f"fig2-vantage-c{conc}"] = w
            say(f"  Vantage: {w['rate']:.0f} probes/s, CPU {w['cpu'] / w['wall']:.2f} cores, machine {w['machine']}")
            self.notes.append(f"fig 2: Vantage --concurrency {conc}: {w['rate']:.0f} probes/s on "
                              f"{w['cpu'] / w['wall']:.2f} cores (machine {w['machine']})")
            best_v = max(best_v, w["rate"])
        best_b = None
        if self.blackbox:
            bp, addr = self.start_blackbox()
            try:
                for conns in cfg["max_bb_conns"]:
                    say(f"figure 2: blackbox_exporter scraped flat out, {conns} connections")
                    url = (f"http://{addr}/probe?" +
                           urllib.parse.urlencode({"module": "http_2xx", "target": self.target_url + "/"}))
                    if self.wrk:
                        drv = subprocess.Popen(
                            [self.wrk, "-t1", f"-c{conns}", f"-d{cfg['max_window'] + 2:.0f}s",
                             "--timeout", "10s", url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                    else:
                        drv = self.drive(addr, self.target_url + "/", count=10**9, conns=conns,
                                         duration=cfg["max_window"] + 2)
                    _children.append(drv)
                    time.sleep(1)
                    w = self.count_window(bp.pid, cfg["max_window"])
                    try:
                        drv.communicate(timeout=15)
                    except subprocess.TimeoutExpired:
                        drv.kill()
                    self.raw[f"fig2-blackbox-c{conns}"] = w
                    say(f"  blackbox: {w['rate']:.0f} probes/s, CPU {w['cpu'] / w['wall']:.2f} cores, "
                        f"machine {w['machine']}")
                    self.notes.append(f"fig 2: blackbox_exporter at {conns} scrape connections: "
                                      f"{w['rate']:.0f} probes/s on {w['cpu'] / w['wall']:.2f} cores "
                                      f"(machine {w['machine']})")
                    best_b = max(best_b or 0.0, w["rate"])
            finally:
                stop(bp)
        self.row("2", "Sustained probes/s, 2 cores, target on the same machine",
                 f"{best_v:,.0f}/s", f"{best_b:,.0f}/s" if best_b else "n/a",
                 ratio(best_v, best_b), "≥ 3", met(best_v, best_b, lambda r: r >= 3))

    def fig34(self) -> None:
        cfg = self.cfg
        n, every = cfg["mem_journeys"], cfg["mem_interval"]
        soak, warm = cfg["soak"], cfg["soak_warmup"]
        say(f"figures 3+4: Vantage, {n} journeys every {every} s ({n / every:.0f} runs/s), "
            f"telemetry on, {soak:.0f} s soak after {warm:.0f} s warm-up")
        d = self.work / "fig34"
        self.write_journeys(d, n, f"{every}s", self.target_url + "/")
        p, base = self.start_vantage("vantage-fig34", d, telemetry=True)
        samples: list[tuple[float, int]] = []
        try:
            t_start = time.monotonic()
            time.sleep(warm)
            rss_before_scrape = rss_bytes(p.pid)[0]
            m0 = self.vantage_metrics(base)
            rss_after_scrape = rss_bytes(p.pid)[0]
            c0 = self.target_count()
            t0, ms0 = time.monotonic(), proc_stat()
            while time.monotonic() - t0 < soak:
                samples.append((time.monotonic() - t_start, rss_bytes(p.pid)[0]))
                time.sleep(min(cfg["rss_every"], max(0.0, soak - (time.monotonic() - t0))))
            samples.append((time.monotonic() - t_start, rss_bytes(p.pid)[0]))
            c1 = self.target_count()
            t1, ms1 = time.monotonic(), proc_stat()
            m1 = self.vantage_metrics(base)
            rss_end, hwm = rss_bytes(p.pid)
        finally:
            stop(p)
        rate = (c1 - c0 - 1) / (t1 - t0)
        b0, b1 = self.lateness_buckets(m0), self.lateness_buckets(m1)
        delta = {le: b1[le] - b0.get(le, 0) for le in b1}
        runs = delta.get(float("inf"), 0)
        p50 = hist_quantile(delta, 0.50) * 1e3
        p99 = hist_quantile(delta, 0.99) * 1e3
        within5 = delta.get(0.005, 0) / runs if runs else float("nan")
        skipped = self.skipped(m1) - self.skipped(m0)
        rss_last = samples[-1][1]
        # "Flat": the median of the last tenth of the soak against the median of its
        # third tenth. The first fifth is left out: with 10,000 journeys every series is
        # created during the first tick or two and the resident set climbs to its plateau
        # there; a leak shows as growth after it.
        k = max(1, len(samples) // 10)
        ref_from = min(2 * k, len(samples) - k)
        first = statistics.median(s for _, s in samples[ref_from:ref_from + k])
        last = statistics.median(s for _, s in samples[-k:])
        growth = (last - first) / first
        machine = machine_share(ms0, ms1)
        self.raw["fig34"] = {"journeys": n, "interval": every, "rate": rate, "runs": runs,
                             "lateness_buckets_delta": {str(k2): v for k2, v in delta.items()},
                             "p50_ms": p50, "p99_ms": p99, "within_5ms": within5,
                             "skipped": skipped, "failing": self.failing(m1),
                             "rss_samples": samples, "rss_end": rss_end, "rss_hwm": hwm,
                             "rss_before_scrape": rss_before_scrape,
                             "rss_after_scrape": rss_after_scrape, "machine": machine}
        say(f"  {rate:.0f} runs/s; lateness p50 {p50:.2f} ms p99 {p99:.2f} ms "
            f"({within5:.2%} within 5 ms); skipped {skipped:.0f}; "
            f"RSS {rss_last / MIB:.1f} MiB (peak {hwm / MIB:.1f}), growth {growth:+.1%}; machine {machine}")
        mb = self.raw.get("metrics_bytes", [0])[-1]
        self.notes.append(
            f"figs 3+4 ({n} journeys every {every} s): RSS {samples[0][1] / MIB:.0f} MiB at the start of the "
            f"soak, {first / MIB:.0f} MiB at its third tenth, {rss_last / MIB:.0f} MiB at the end (peak "
            f"{hwm / MIB:.0f} MiB); one /metrics scrape is {mb / 1e6:.0f} MB and moved RSS from "
            f"{rss_before_scrape / MIB:.0f} to {rss_after_scrape / MIB:.0f} MiB; lateness p50 {p50:.2f} ms, "
            f"{within5:.1%} of runs within 5 ms; machine {machine} over the soak")
        bb = self.raw.get(f"fig1-blackbox-{cfg['cpu_journeys'][0]}", {}).get("rss_hwm")
        self.row("3a", f"RSS, {n:,} scheduled journeys ({n / every:,.0f} runs/s), end of soak",
                 f"{rss_last / MIB:.1f} MiB", f"{bb / MIB:.1f} MiB" if bb else "n/a",
                 ratio(rss_last, bb), "< 50 MiB", "yes" if rss_last < 50 * MIB else "NO")
        length = f"{soak / 60:.0f}-min" if soak >= 60 else f"{soak:.0f}-s"
        self.row("3b", f"RSS growth over a {length} soak (last tenth vs third tenth)",
                 f"{growth:+.1%}", "—", "—", "flat (< +5%)", "yes" if growth < 0.05 else "NO")
        self.row("4a", f"Start lateness p99 at {rate:,.0f} runs/s",
                 f"{p99:.2f} ms", "—", "—", "< 5 ms", "yes" if p99 < 5 else "NO")
        self.row("4b", f"Skipped ticks at {rate:,.0f} runs/s", f"{skipped:.0f}", "—", "—", "0",
                 "yes" if skipped == 0 else "NO")
        if n / every and rate < 0.95 * n / every:
            self.note(f"fig 4: only {rate:.0f} of {n / every:.0f} scheduled runs/s reached the target")

    def start_slow_target(self) -> tuple[subprocess.Popen, int]:
        cc = shutil.which("cc") or shutil.which("gcc")
        exe = self.work / "slow_target"
        if cc and subprocess.run([cc, "-O2", "-pthread", "-o", str(exe), str(HERE / "slow_target.c")],
                                 capture_output=True).returncode == 0:
            p = spawn([*self.rt, str(exe)], self.logs / "slow-target.log", stdout_pipe=True)
            line = read_line(p, 10)
            if line.strip().isdigit():
                return p, int(line)
        self.note("figure 5: no C compiler, so the known-delay target is the Python one "
                  "(less precise: its own overshoot is in the raw numbers)")
        return self.helper("slow-target")

    def fig5(self) -> None:
        """Each probe asks for /delay/MS?ID, so its reported duration can be compared both
        with the known delay (the figure) and with that request's real time inside the
        target (delay + the target's own lateness on a busy machine), which separates the
        prober's error from the machine's. Vantage and blackbox_exporter alternate in
        rounds, so both meet the same moments of a shared machine."""
        cfg = self.cfg
        self.rt = []
        if self.args.rt:
            if shutil.which("chrt") and subprocess.run(["chrt", "-f", "10", "true"],
                                                       capture_output=True).returncode == 0:
                # Probers and target SCHED_FIFO: a woken thread no longer waits a scheduler
                # slice behind another tenant's compiler. Opt-in: it does nothing against
                # a hypervisor's steal, and it is rude on a shared machine.
                self.rt = ["chrt", "-f", "10"]
            else:
                self.note("figure 5: --rt asked for, but chrt -f is not permitted here")
        self.raw["fig5-realtime"] = bool(self.rt)
        slow, port = self.start_slow_target()
        conc, rounds = cfg["truth_concurrency"], cfg["truth_rounds"]
        base = f"http://127.0.0.1:{port}"
        fmt = lambda x: "n/a" if x is None else f"{x:.3f} ms"  # noqa: E731
        p99 = lambda xs: percentile([abs(e) for e in xs], 0.99) if xs else None  # noqa: E731
        try:
            for rid, (ms, count) in zip(["5a", "5b", "5c"], cfg["truth"].items()):
                delay = ms / 1000
                say(f"figure 5: {count} probes each against a {ms} ms target, {conc} at a time, "
                    f"in {rounds} alternating rounds")
                v_err, v_own, v_call, b_err, b_own, late_all = [], [], [], [], [], []
                parts: dict[str, list[float]] = {k: [] for k in PHASE_PARTS}
                v_failed = b_failed = 0
                per_round = max(1, count // rounds)
                cpu0 = proc_stat()
                for rnd in range(rounds):
                    first = rnd * per_round
                    # Vantage: `vantage once` on per_round journeys, each its own ID.
                    d = self.work / f"fig5-{ms}-{rnd}"
                    d.mkdir(parents=True, exist_ok=True)
                    with open(d / "journeys.yaml", "w") as f:
                        for i in range(first, first + per_round):
                            f.write(f"- name: t{ms}-{i:05d}\n  schedule: {{ every: 1m }}\n  timeout: 5s\n"
                                    f"  steps:\n    - name: get\n"
                                    f"      http: {{ url: \"{base}/delay/{ms}?{i}\" }}\n")
                    http_get(base + "/stats?reset")
                    out = subprocess.run([*self.rt, str(self.vantage), "once", str(d), "--json",
                                          "--location", "bench", "--concurrency", str(conc)],
                                         capture_output=True, timeout=120,
                                         env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")})
                    if out.returncode not in (0, 1):
                        raise RuntimeError(f"vantage once failed: {out.stderr.decode()[-2000:]}")
                    reports = json.loads(out.stdout)
                    late = {int(i): x for i, x in json.loads(http_get(base + "/stats?reset")[1])}
                    late_all += late.values()
                    ok = [r for r in reports if r["outcome"] == "passed"]
                    v_failed += len(reports) - len(ok)
                    for r in ok:
                        i, x = int(r["journey"].rsplit("-", 1)[1]), r["duration"]
                        v_err.append((x - delay) * 1e3)
                        if i in late:
                            v_own.append((x - delay - late[i]) * 1e3)
                            for k, v in error_parts(r, delay + late[i]).items():
                                parts[k].append(v)
                        v_call.append((r["steps"][0]["calls"][0]["duration"] - delay) * 1e3)
                    # blackbox_exporter: the same number of scrapes, the same concurrency.
                    if self.blackbox:
                        bp, addr = self.start_blackbox(self.rt)
                        try:
                            dp = self.drive(addr, f"{base}/delay/{ms}?{{i}}", count=per_round, conns=conc)
                            res = self.drive_result(dp, 120)
                        finally:
                            stop(bp)
                        b_late = {int(i): x for i, x in json.loads(http_get(base + "/stats?reset")[1])}
                        late_all += b_late.values()
                        for i, x in res["durations"]:
                            b_err.append((x - delay) * 1e3)
                            if i in b_late:
                                b_own.append((x - delay - b_late[i]) * 1e3)
                        b_failed += res["failed"] + res["errors"]
                machine = machine_share(cpu0, proc_stat())
                tl = [x * 1e3 for x in late_all]
                r = {"vantage_err_ms": v_err, "vantage_own_err_ms": v_own, "vantage_call_err_ms": v_call,
                     "vantage_failed": v_failed, "blackbox_err_ms": b_err, "blackbox_own_err_ms": b_own,
                     "blackbox_failed": b_failed, "target_late_ms_p50": percentile(tl, 0.5),
                     "target_late_ms_p99": percentile(tl, 0.99), "machine": machine,
                     "vantage_own_err_parts_ms": {k: {f"p{q}": percentile(v, q / 100) for q in (50, 90, 99)}
                                                  for k, v in parts.items() if v}}
                self.raw[f"fig5-{ms}"] = r
                v99, b99 = p99(v_err), p99(b_err)
                med = lambda xs: f"{percentile(xs, 0.5):+.3f} ms" if xs else "n/a"  # noqa: E731
                say(f"  Vantage: median {med(v_err)}, p99 |err| {fmt(v99)}, without the target's "
                    f"lateness {fmt(p99(v_own))}; blackbox: median {med(b_err)}, p99 |err| {fmt(b99)}, "
                    f"without the target's lateness {fmt(p99(b_own))}; target late p99 "
                    f"{r['target_late_ms_p99']:.3f} ms; machine {machine}")
                if r["vantage_own_err_parts_ms"]:
                    say("  Vantage's own error by part, p50/p90/p99 ms: " + ", ".join(
                        f"{k} {v['p50']:.3f}/{v['p90']:.3f}/{v['p99']:.3f}"
                        for k, v in r["vantage_own_err_parts_ms"].items()))
                self.notes.append(
                    f"fig 5 ({ms} ms): median error Vantage {med(v_err)}, blackbox {med(b_err)}; p99 "
                    f"once each probe's own target lateness is taken out: Vantage {fmt(p99(v_own))}, "
                    f"blackbox {fmt(p99(b_own))} (target late p99 {r['target_late_ms_p99']:.3f} ms; "
                    f"machine {machine})")
                if v_failed or b_failed:
                    self.note(f"fig 5 ({ms} ms): failed probes: Vantage {v_failed}, blackbox {b_failed}")
                self.row(rid, f"Timing truth: p99 of abs(reported − {ms} ms)",
                         fmt(v99), fmt(b99), ratio(v99, b99), "≤ 1 ms",
                         "yes" if v99 is not None and v99 <= 1.0 else "NO")
        finally:
            stop(slow)

    def start_demo_app(self, d: Path) -> tuple[list[subprocess.Popen], str]:
        """The Movie-Guru-like backend and one frontend replica (as scripts/demo starts
        them), on loopback ports of their own; returns the processes and the app URL."""
        procs: list[subprocess.Popen] = []

        def start(name: str, *args: str) -> str:
            p = spawn([str(self.demo), name, *args, "--listen", "127.0.0.1:0"], d / f"demo-{name}.log",
                      env={"RUST_LOG": "warn"}, stdout_pipe=True)
            procs.append(p)
            line = read_line(p, 15)
            m = re.search(r"listening on (http://\S+)", line)
            if not m:
                raise RuntimeError(f"the demo {name} did not start: {line!r}")
            return m.group(1)

        try:
            api = start("backend")
            app = start("frontend", "--backend", api, "--name", "frontend-v1")
        except BaseException:
            for p in procs:
                stop(p)
            raise
        return procs, app

    def start_chromedriver(self, path: str, log: Path) -> tuple[subprocess.Popen, str]:
        # Only --port: chromedriver then listens on 127.0.0.1 and ::1 and refuses other
        # hosts. (--allowed-ips, which the agent's own chromedriver gets, makes it listen
        # on every interface.)
        port = free_port()
        p = spawn([path, f"--port={port}"], log)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(base + "/status", 15, p)
        except BaseException:
            stop(p)
            raise
        return p, base

    def sweep_browsers(self, when: str, roots: dict[str, Path]) -> None:
        """Notes and kills the browsers of sessions that were not closed: the processes
        naming a profile under one of `roots`, and the profile directories left there."""
        for who, root in roots.items():
            left = list(root.iterdir()) if root.is_dir() else []
            killed = kill_path_processes([f"{root}/"])
            if killed or left:
                self.note(f"{when} {who} sessions had left {len(left)} profile director(ies) and "
                          f"{killed} browser process(es) behind (killed now)")
            for x in left:
                shutil.rmtree(x, ignore_errors=True)

    def fig6(self) -> None:
        """The login-then-chat journey through the agent against a bare WebDriver script
        doing the same steps with the same waits (bench/bare_webdriver.py), both on
        Debian's Chromium with the agent's flags, each on its own warm chromedriver.
        Rounds alternate the two (and which goes first), so both meet the same moments
        of a shared machine. Then the sessions per minute the machine sustains with
        `--max-browsers` browsers at a time, the bare script at the same width as the
        baseline."""
        cfg = self.cfg
        chromedriver, chromium = shutil.which("chromedriver"), shutil.which("chromium")
        if not (chromedriver and chromium):
            self.note("figure 6: chromium and chromium-driver are not installed "
                      "(apt-get install chromium chromium-driver; scripts/test does): not measured")
            for rid in ("6", "6b"):
                self.row(rid, "Browser journey (Chromium not installed)", "n/a", "n/a", "n/a",
                         "≤ 1.10" if rid == "6" else "—", "n/a")
            return
        d = self.work / "fig6"
        profiles, tmp, artifacts = d / "profiles", d / "tmp", d / "artifacts"
        for x in (profiles, tmp, artifacts):
            x.mkdir(parents=True, exist_ok=True)
        # Every browser profile of this figure, the agent's (its TMPDIR) and the bare
        # script's, lives under d: whatever happens, the sweep at the end finds their
        # Chromium processes by that path, and no other process matches it. No OTLP
        # export: the bare script exports nothing, and an export happens after a run's
        # clock has stopped anyway. The command line sets everything else.
        own_env = {"TMPDIR": str(tmp), "VANTAGE_ARTIFACTS": str(artifacts), "RUST_LOG": "warn"}
        vantage_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VANTAGE_"))}
        vantage_env.update(own_env)
        journey = ROOT / "journeys" / "movie-guru.yaml"
        rounds, slots = cfg["browser_rounds"], cfg["browser_slots"]
        procs: list[subprocess.Popen] = []
        try:
            demo, app = self.start_demo_app(d)
            procs += demo
            cd_agent, wd_agent = self.start_chromedriver(chromedriver, d / "chromedriver-agent.log")
            procs.append(cd_agent)
            cd_bare, wd_bare = self.start_chromedriver(chromedriver, d / "chromedriver-bare.log")
            procs.append(cd_bare)

            def agent_once() -> dict:
                out = subprocess.run(
                    [str(self.vantage), "once", str(journey), "--json", "--var", f"app={app}",
                     "--location", "bench", "--webdriver", wd_agent, "--chromium", chromium],
                    capture_output=True, timeout=120, env=vantage_env)
                if out.returncode not in (0, 1):
                    raise RuntimeError(f"vantage once failed ({out.returncode}): {out.stderr.decode()[-2000:]}")
                (r,) = json.loads(out.stdout)
                if r["outcome"] != "passed":
                    err = next((s.get("error") for s in r["steps"] if s.get("error")), None)
                    return {"error": f"{r['outcome']}: {err}"}
                steps = {s["name"]: s["duration"] for s in r["steps"]}
                return {"login": steps["log in"], "chat": steps["chat"], "total": r["duration"]}

            def bare_once() -> dict:
                out = subprocess.run(
                    [sys.executable, str(HERE / "bare_webdriver.py"), "--app", app, "--webdriver", wd_bare,
                     "--chromium", chromium, "--profiles", str(profiles)],
                    capture_output=True, timeout=120)
                lines = out.stdout.decode().strip().splitlines()
                if not lines:
                    raise RuntimeError(f"bare_webdriver.py printed nothing: {out.stderr.decode()[-2000:]}")
                return json.loads(lines[-1])

            warm_runs = cfg["browser_warmup_runs"]
            say(f"figure 6: login-then-chat, Vantage (vantage once) and the bare WebDriver script "
                f"alternating, {rounds} round(s) after {warm_runs} warm-up run(s) of each")
            # Warm-up: a chromedriver's first session is slower than the next ones.
            self.raw["fig6-warmup"] = [{"vantage": agent_once(), "bare": bare_once()} for _ in range(warm_runs)]
            runs: dict[str, list[dict]] = {"vantage": [], "bare": []}
            m0 = proc_stat()
            for rnd in range(rounds):
                order = (("vantage", agent_once), ("bare", bare_once))
                for who, fn in (order if rnd % 2 == 0 else order[::-1]):
                    runs[who].append(fn())
            machine = machine_share(m0, proc_stat())
            ok = {k: [r for r in v if "error" not in r] for k, v in runs.items()}
            med = {k: {x: statistics.median(r[x] for r in v) if v else None
                       for x in ("login", "chat", "total")} for k, v in ok.items()}
            for who in ("vantage", "bare"):
                bad = [r["error"] for r in runs[who] if "error" in r]
                if bad:
                    self.note(f"fig 6: {len(bad)} of {rounds} {who} runs failed, first: {bad[0][:300]}")
            v, b = med["vantage"], med["bare"]
            s_ = lambda x: "n/a" if x is None else f"{x:.2f} s"  # noqa: E731

            def cmp(x: str) -> str:
                if v[x] is None or b[x] is None:
                    return f"Vantage {s_(v[x])}, bare {s_(b[x])}"
                return (f"Vantage {s_(v[x])}, bare {s_(b[x])} ({(v[x] - b[x]) * 1e3:+.0f} ms, "
                        f"ratio {v[x] / b[x]:.3g})")

            spread = lambda who: (f"{min(r['total'] for r in ok[who]):.2f}–"  # noqa: E731
                                  f"{max(r['total'] for r in ok[who]):.2f} s") if ok[who] else "n/a"
            # Two readings that resist a busy machine better than the ratio of medians:
            # the median of each round's own ratio (the two runs of a round are
            # neighbours in time), and the ratio of the fastest runs (noise only adds).
            pairs = [x["total"] / y["total"] for x, y in zip(runs["vantage"], runs["bare"])
                     if "error" not in x and "error" not in y]
            paired = f"{statistics.median(pairs):.3g}" if pairs else "n/a"
            fastest = (ratio(min(r["total"] for r in ok["vantage"]), min(r["total"] for r in ok["bare"]))
                       if ok["vantage"] and ok["bare"] else "n/a")
            rm = [r["profile_rm"] for r in ok["bare"]]
            # The agent's run ends after it has removed the session's profile (and killed
            # what still used it); the bare script's total stops at the session's DELETE.
            with_rm = statistics.median(r["total"] + r["profile_rm"] for r in ok["bare"]) if rm else None
            self.raw["fig6-rounds"] = {"runs": runs, "medians": med, "paired_ratios": pairs,
                                       "fastest_ratio": fastest, "machine": machine}
            say(f"  whole run: {cmp('total')}; log in: {cmp('login')}; chat: {cmp('chat')}; "
                f"rounds' own ratios: median {paired}; machine {machine}")
            self.notes.append(
                f"fig 6: medians of {rounds} alternating runs each: whole run {cmp('total')}; log-in step "
                f"(with the session start) {cmp('login')}; chat step {cmp('chat')}. Whole runs ranged "
                f"{spread('vantage')} (Vantage) and {spread('bare')} (bare). The bare script's profile "
                f"removal, which its time leaves out and the agent's includes, took a median "
                f"{statistics.median(rm) * 1e3 if rm else float('nan'):.0f} ms; with it the bare run is "
                f"{s_(with_rm)} (ratio {ratio(v['total'], with_rm)}). Median of the rounds' own ratios "
                f"{paired}, ratio of the fastest runs {fastest}; machine {machine}")
            over = None if v["total"] is None or b["total"] is None else v["total"] / b["total"] - 1
            self.row("6", f"Browser journey overhead: login-then-chat run vs bare WebDriver script "
                          f"(median of {rounds})",
                     f"{s_(v['total'])}" + ("" if over is None else f" ({over:+.1%})"), s_(b["total"]),
                     ratio(v["total"], b["total"]), "≤ 1.10",
                     met(v["total"], b["total"], lambda r: r <= 1.10))

            # Sessions per minute: the agent on its schedule with `slots` browsers, given
            # more journeys than slots (each every 1 s), so a free slot never waits for a
            # tick. The window opens once `slots` runs have ended (each slot has been
            # through a whole run) and the warm-up has passed, on both sides; the smoke
            # has no warm-up runs and counts from the start.
            warmup, window = cfg["browser_warmup"], cfg["browser_window"]
            gate = slots * min(1, cfg["browser_warmup_runs"])
            jd = d / "journeys"
            jd.mkdir(exist_ok=True)
            text = journey.read_text()
            for i in range(slots + 2):
                t = text.replace("name: movie-guru-login-chat\n", f"name: movie-guru-login-chat-{i}\n", 1)
                t = t.replace("schedule: { every: 1m }", "schedule: { every: 1s }", 1)
                if t.count(f"-chat-{i}") != 1 or "every: 1s" not in t:
                    raise RuntimeError(f"{journey} no longer has the name and schedule figure 6 rewrites")
                (jd / f"movie-guru-{i}.yaml").write_text(t)
            say(f"figure 6b: vantage run, {slots + 2} copies of the journey every 1 s, "
                f"--max-browsers {slots}, {window:.0f} s once {gate} runs have ended")
            port = free_port()
            # A short grace: the runs still under way after the window are not measured,
            # and a cancelled run still closes its session.
            vp = spawn([str(self.vantage), "run", str(jd), "--var", f"app={app}", "--listen",
                        f"127.0.0.1:{port}", "--location", "bench", "--webdriver", wd_agent,
                        "--chromium", chromium, "--max-browsers", str(slots), "--grace", "2s"],
                       d / "vantage-run.log", env=own_env)
            procs.append(vp)
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/readyz", 60, vp)

            def counts() -> tuple[float, float, float]:
                _, body = http_get(base + "/metrics")
                passed = failed = total_s = 0.0
                for name, labels, val in parse_prom(body.decode()):
                    if name == "vantage_journey_duration_seconds_count":
                        if labels.get("error_type", ""):
                            failed += val
                        else:
                            passed += val
                    elif name == "vantage_journey_duration_seconds_sum" and not labels.get("error_type", ""):
                        total_s += val
                return passed, failed, total_s

            started = time.monotonic()
            while time.monotonic() < started + warmup + 120:
                c0 = counts()
                if c0[0] + c0[1] >= gate and time.monotonic() >= started + warmup:
                    break
                time.sleep(0.2)
            t0, m0 = time.monotonic(), proc_stat()
            cpu0 = (tree_cpu(vp.pid), tree_cpu(cd_agent.pid))
            time.sleep(window)
            c1, t1, m1 = counts(), time.monotonic(), proc_stat()
            cpu1 = (tree_cpu(vp.pid), tree_cpu(cd_agent.pid))
            stop(vp, grace=20)
            # Before the bare script's window, so that nothing left running skews it.
            self.sweep_browsers("fig 6b: once `vantage run` had stopped (SIGTERM, runs in flight past "
                                "its --grace),", {"the agent's": tmp})
            wall = t1 - t0
            n_ok, n_bad = c1[0] - c0[0], c1[1] - c0[1]
            a_rate = n_ok * 60 / wall
            a = {"passed": n_ok, "failed": n_bad, "window": wall, "warmup": t0 - started, "per_minute": a_rate,
                 "mean_run_s": (c1[2] - c0[2]) / n_ok if n_ok else None,
                 "agent_cpu_s": cpu1[0] - cpu0[0], "chromedriver_chromium_cpu_s": cpu1[1] - cpu0[1],
                 "machine": machine_share(m0, m1)}
            self.raw["fig6b-vantage"] = a
            per = lambda cpu, n: f"{cpu / n:.2f} s" if n else "n/a"  # noqa: E731
            say(f"  Vantage: {n_ok:.0f} passed runs in {wall:.1f} s ({a_rate:.1f}/min), {n_bad:.0f} failed, "
                f"machine {a['machine']}")
            a_note = (f"Vantage {n_ok:.0f} passed runs ({n_bad:.0f} failed), mean run "
                      f"{s_(a['mean_run_s'])}, CPU per run: agent {per(a['agent_cpu_s'], n_ok)}, "
                      f"chromedriver and Chromium {per(a['chromedriver_chromium_cpu_s'], n_ok)} "
                      f"(machine {a['machine']})")

            b_rate = br = None
            if cfg["browser_bare_parallel"]:
                say(f"figure 6b: the bare script, {slots} at a time, {window:.0f} s once {slots} runs have ended")
                bp = spawn([sys.executable, str(HERE / "bare_webdriver.py"), "--app", app, "--webdriver", wd_bare,
                            "--chromium", chromium, "--profiles", str(profiles), "--parallel", str(slots),
                            "--warmup", str(warmup), "--duration", str(window)],
                           d / "bare-parallel.log", stdout_pipe=True)
                procs.append(bp)
                if "window" not in read_line(bp, warmup + 150):
                    raise RuntimeError(f"the bare script's window did not start (see {d}/bare-parallel.log)")
                bm0, bcpu0 = proc_stat(), (tree_cpu(bp.pid), tree_cpu(cd_bare.pid))
                time.sleep(window)
                bm1, bcpu1 = proc_stat(), (tree_cpu(bp.pid), tree_cpu(cd_bare.pid))
                out, _ = bp.communicate(timeout=180)
                br = json.loads(out.decode().strip().splitlines()[-1])
                b_rate = br["per_minute"]
                br.update({"script_cpu_s": bcpu1[0] - bcpu0[0],
                           "chromedriver_chromium_cpu_s": bcpu1[1] - bcpu0[1], "machine": machine_share(bm0, bm1)})
                self.raw["fig6b-bare"] = br
                say(f"  bare: {br['completed']} runs in {window:.0f} s ({b_rate:.1f}/min), {br['failed']} failed, "
                    f"machine {br['machine']}")
                self.notes.append(
                    f"fig 6b: {slots} browsers at a time over {window:.0f} s: {a_note}; bare script "
                    f"{br['completed']} runs ({br['failed']} failed), mean run "
                    f"{s_(br['mean_total'])}, CPU per run: script "
                    f"{per(br['script_cpu_s'], br['completed'])}, chromedriver and Chromium "
                    f"{per(br['chromedriver_chromium_cpu_s'], br['completed'])} (machine {br['machine']})")
            else:
                self.notes.append(f"fig 6b: {slots} browsers at a time over {window:.0f} s: {a_note}; the bare "
                                  f"script's rate is not measured at this scale")
            if n_bad or (br and br["failed"]):
                self.note(f"fig 6b: failed runs: Vantage {n_bad:.0f}, bare {br['failed'] if br else 'n/a'} "
                          f"(logs in {d})")
            self.row("6b", f"Browser sessions per minute, login-then-chat, {slots} at a time "
                           f"(vs bare script, {slots} at a time)",
                     f"{a_rate:.1f}/min", f"{b_rate:.1f}/min" if br else "n/a", ratio(a_rate, b_rate), "—", "—")
        finally:
            for p in reversed(procs):
                stop(p, grace=20 if p.args[0] == str(self.vantage) else 5)
            # By then every session should be closed and its profile gone: what is left
            # is a leak, said in the notes, then killed.
            self.sweep_browsers("fig 6: at the end,", {"the agent's": tmp, "the bare script's": profiles})

    # ---- run -------------------------------------------------------------------

    def run(self) -> int:
        say(f"work directory (journeys, logs): {self.work}")
        if not self.blackbox:
            self.note("prometheus-blackbox-exporter is not installed: the baseline columns are n/a, "
                      "the Vantage side still runs")
        started = dt.datetime.now(dt.timezone.utc)
        t0 = time.monotonic()
        self.start_target()
        self.sink, sink_port = self.helper("sink")
        self.sink_url = f"http://127.0.0.1:{sink_port}"
        broken = []
        rows_of = {"1": ["1a-bb", "1a-wrk", "1b-bb", "1b-wrk"], "2": ["2"], "3": ["3a", "3b", "4a", "4b"],
                   "5": ["5a", "5b", "5c"], "6": ["6", "6b"]}
        try:
            for fig, fn in (("1", self.fig1), ("2", self.fig2), ("3", self.fig34),
                            ("5", self.fig5), ("6", self.fig6)):
                if fig == "3" and not (self.want("3") or self.want("4")):
                    continue
                if fig != "3" and not self.want(fig):
                    continue
                self.raw.setdefault("loadavg", {})[fig] = open("/proc/loadavg").read().split()[:3]
                try:
                    fn()
                except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
                    # One broken figure must not hide the others; the exit status says it.
                    broken.append(fig)
                    self.note(f"figure {fig} could not run: {e} (logs in {self.logs})")
                    for rid in rows_of[fig]:
                        self.rows.setdefault(rid, {"id": rid, "what": "could not run (see notes)",
                                                   "vantage": "error", "baseline": "—", "ratio": "—",
                                                   "target": "—", "met": "—"})
        finally:
            stop(self.target)
            stop(self.sink)
        elapsed = time.monotonic() - t0
        table = self.table()
        print()
        print(table)
        for n in self.notes:
            print(f"- {n}")
        print(f"\n(total {elapsed:.0f} s" + ("" if self.args.smoke else f"; logs in {self.logs}") + ")")
        meta = self.machine(started, elapsed)
        self.raw["meta"] = meta
        out_dir = HERE / "out"
        out_dir.mkdir(exist_ok=True)
        with open(out_dir / ("smoke.json" if self.args.smoke else "latest.json"), "w") as f:
            json.dump({"rows": self.rows, "notes": self.notes, "raw": self.raw}, f, indent=1, default=str)
        if broken:
            say(f"figures {', '.join(broken)} could not run; {HERE / 'RESULTS.md'} left as it was")
            return 1
        if not self.args.smoke and self.only is None:
            self.write_results(table, meta)
        if self.args.smoke:
            # CI runs this often; a passing smoke leaves nothing behind in /tmp.
            shutil.rmtree(self.work, ignore_errors=True)
        return 0

    def table(self) -> str:
        lines = ["| fig | what | Vantage | baseline | ratio | target | met |",
                 "|---|---|---|---|---|---|---|"]
        for rid in ROW_IDS:
            r = self.rows.get(rid)
            if r is None:
                continue
            lines.append(f"| {rid} | {r['what']} | {r['vantage']} | {r['baseline']} | "
                         f"{r['ratio']} | {r['target']} | {r['met']} |")
        return "\n".join(lines)

    def machine(self, started, elapsed) -> dict:
        cpu = ""
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass

        def version(cmd):
            try:
                r = subprocess.run(cmd, capture_output=True, timeout=10)
                return (r.stdout + r.stderr).decode().splitlines()[0].strip()
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "n/a"

        rev = version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "agent", "demo"],
                               capture_output=True).stdout.strip()
        sources = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", "agent", "demo", "Cargo.lock"],
                                 capture_output=True, text=True).stdout.split()
        newest = max((p.stat().st_mtime for p in (ROOT / f for f in sources) if p.exists()), default=0.0)
        if newest > self.vantage.stat().st_mtime:
            # --no-build on binaries older than the code: say so rather than imply HEAD.
            # File times, not commit times: a commit made after the build changes no file.
            rev += " (the binaries are older than the agent/demo sources)"
        return {
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "elapsed_s": round(elapsed),
            "cpu": f"{os.cpu_count()} × {cpu}",
            "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
            "kernel": platform.release(),
            "os": version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
            "load_before": open("/proc/loadavg").read().split()[:3],
            "git": rev + (" (agent/demo modified)" if dirty else ""),
            "vantage": version([str(self.vantage), "--version"]),
            "binaries_built": dt.datetime.fromtimestamp(self.vantage.stat().st_mtime, dt.timezone.utc)
                              .strftime("%Y-%m-%d %H:%M UTC"),
            "blackbox": version([self.blackbox, "--version"]) if self.blackbox else "not installed",
            "wrk": version([self.wrk, "-v"]) if self.wrk else "not installed",
            "python": platform.python_version(),
        }

    def write_results(self, table: str, meta: dict) -> None:
        path = HERE / "RESULTS.md"
        begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
        block = [begin,
                 f"Produced by `scripts/bench` on {meta['date']} in {meta['elapsed_s']} s.",
                 "",
                 f"- machine: {meta['cpu']}, {meta['memory']}, {meta['os']}, kernel {meta['kernel']}; "
                 f"load average before the run {' '.join(meta['load_before'])} (shared machine)",
                 f"- code: git {meta['git']}, {meta['vantage']}, binaries built {meta['binaries_built']} "
                 f"from `{self.bin.relative_to(ROOT) if self.bin.is_relative_to(ROOT) else self.bin}`",
                 f"- baseline: {meta['blackbox']}; {meta['wrk']}",
                 "",
                 table,
                 ""]
        if self.notes:
            block += ["Notes from the run:", ""] + [f"- {n}" for n in self.notes] + [""]
        block += ["Raw numbers: `bench/out/latest.json` (not committed).", end]
        text = path.read_text() if path.exists() else "# Benchmark results\n\n"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            text = head + "\n".join(block) + tail
        else:
            text = text.rstrip() + "\n\n" + "\n".join(block) + "\n"
        path.write_text(text)
        say(f"wrote {path}")


def ratio(v, b) -> str:
    if v is None or b is None or not b or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v / b:.3g}"


def met(v, b, pred) -> str:
    if v is None or b is None or not b or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return "yes" if pred(v / b) else "NO"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("sink", help="OTLP/HTTP sink (internal)")
    sub.add_parser("slow-target", help="known-delay HTTP target (internal)")
    d = sub.add_parser("drive", help="blackbox_exporter scrape driver (internal)")
    d.add_argument("--exporter", required=True)
    d.add_argument("--target", required=True)
    d.add_argument("--module", default="http_2xx")
    d.add_argument("--targets", type=int, default=0)
    d.add_argument("--interval", type=float, default=1.0)
    d.add_argument("--duration", type=float, default=0.0)
    d.add_argument("--count", type=int, default=0)
    d.add_argument("--conns", type=int, default=64)
    d.add_argument("--scrape-timeout", default="5")
    ap.add_argument("--smoke", action="store_true", help="every figure at tiny scale (CI)")
    ap.add_argument("--only", help="comma-separated figures to run, e.g. 1,5 (RESULTS.md untouched)")
    ap.add_argument("--soak", type=float, help="soak seconds for figures 3 and 4")
    ap.add_argument("--nice", type=int, default=-10,
                    help="niceness of the harness and everything it starts (default -10, "
                         "when allowed: both contestants and the targets alike get more of a "
                         "shared machine)")
    ap.add_argument("--rt", action="store_true",
                    help="run figure 5's probers and target SCHED_FIFO (chrt -f 10)")
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"),
                    help="where vantage and vantage-demo are (default target/release)")
    args = ap.parse_args()
    if args.cmd == "sink":
        cmd_sink(args)
    elif args.cmd == "slow-target":
        cmd_slow_target(args)
    elif args.cmd == "drive":
        cmd_drive(args)
    else:
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        except OSError:
            say(f"cannot set niceness {args.nice} (not root?): running at "
                f"{os.getpriority(os.PRIO_PROCESS, 0)}")
        return Harness(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
