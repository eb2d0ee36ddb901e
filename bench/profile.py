#!/usr/bin/env python3
"""Profiles behind bench/RESULTS.md, reproducible on a noisy machine.

    bench/profile.py cpu [--journeys 50] [--every 2s] [--seconds 40] [--telemetry on|off]
    bench/profile.py mem [--journeys 2000] [--every 30s] [--seconds 90] [--telemetry on|off]

`cpu` runs `vantage run` under valgrind's callgrind against the loopback target, zeroes
the counters after a warm-up, counts the probes the target answered during the window and
prints instructions per probe and the inclusive share of the functions that matter.
Instruction counts do not depend on the other tenants of the machine (caveat: `rep movsb`
memcpy counts one instruction per byte, so copies weigh more than they cost).

`mem` runs it under massif and groups the heap of the last detailed snapshot by the first
frame of each allocation stack that names a component (the metric store, the journey
model, the span queue, ...). massif sees only the system's malloc: give it a build without
the default `mimalloc` feature (`cargo build --release -p vantage -p vantage-demo
--no-default-features --target-dir target/sysalloc`, then `--bin-dir target/sysalloc/release`).

Needs valgrind (`apt-get install valgrind`) and the release binaries.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

CPU_FUNCS = [
    ("OTLP span export (span_worker)", "vantage::telemetry::otlp::span_worker"),
    ("Telemetry::record (per run)", "vantage::telemetry::Telemetry::record"),
    ("  MetricStore::record (every metric series)", "vantage::telemetry::store::MetricStore::record"),
    ("  encode_run (report -> OTLP protobuf)", "vantage::telemetry::spans::encode_run"),
    ("OTLP metric export", "vantage::telemetry::otlp_metrics::"),
    ("scheduler fire_due", "vantage::scheduler::Scheduler::fire_due"),
    ("  tokio::spawn (moves the run future)", "tokio::task::spawn::spawn"),
    ("HTTP probe (Exchange::run, hyper's connection included)", "vantage::probes::http::Exchange::run"),
]

MEM_GROUPS = [
    ("metric store (series, buckets, exemplars)", lambda f: "telemetry::store" in f),
    ("OTLP span queue and export", lambda f: "span_worker" in f or "SpanQueue" in f or "spans_for" in f),
    ("OTLP metric export", lambda f: "otlp_metrics" in f),
    ("/metrics encoding", lambda f: "telemetry::prometheus" in f),
    ("journey model (journey::build)", lambda f: "journey::build" in f),
    ("config parse (wire types)", lambda f: "config::load" in f),
    ("scheduler", lambda f: "scheduler::" in f),
    ("probes / runner", lambda f: "probes::" in f or "runner::" in f),
    ("tokio", lambda f: f.startswith("tokio::")),
]


def setup(args, name: str):
    args_ns = argparse.Namespace(smoke=True, soak=None, only=None, bin_dir=args.bin_dir, rt=False)
    h = bench.Harness(args_ns)
    h.start_target()
    # The setting `vantage run` would otherwise execute itself again to get, out of
    # valgrind's sight.
    env = {"RUST_LOG": "warn", "MIMALLOC_PURGE_DELAY": "0"}
    if args.telemetry == "on":
        h.sink, port = h.helper("sink")
        env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "OTEL_METRIC_EXPORT_INTERVAL": "15000"})
    d = h.work / name
    h.write_journeys(d, args.journeys, args.every, h.target_url + "/")
    return h, d, env


def cpu(args) -> None:
    h, d, env = setup(args, "cpu")
    out = h.work / "callgrind.out"
    p = bench.spawn(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                     str(h.vantage), "run", str(d), "--listen", f"127.0.0.1:{bench.free_port()}",
                     "--location", "bench"], h.work / "callgrind.log", env=env)
    try:
        time.sleep(args.warmup)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, check=True)
        c0 = h.target_count()
        time.sleep(args.seconds)
        c1 = h.target_count()
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, check=True)
    finally:
        bench.stop(p, grace=30)
        bench.stop(h.target)
        bench.stop(h.sink)
    probes = c1 - c0 - 1
    dump = sorted(h.work.glob("callgrind.out.*"))[0]
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(dump)],
                          capture_output=True, text=True).stdout
    total = int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
    print(f"{probes} probes, {total:,} instructions: {total / max(1, probes):,.0f} per probe "
          f"(user space only; telemetry {args.telemetry})")
    for label, needle in CPU_FUNCS:
        best = 0
        for line in text.splitlines():
            if needle in line:
                m = re.match(r"\s*([\d,]+)", line)
                if m:
                    best = max(best, int(m.group(1).replace(",", "")))
        print(f"  {best / total:6.1%}  {best / max(1, probes):>9,.0f} per probe  {label}")
    print(f"(callgrind file: {dump})")


def mem(args) -> None:
    vantage = Path(args.bin_dir) / "vantage"
    if vantage.exists() and b"mi_malloc" in vantage.read_bytes():
        raise SystemExit(
            f"{vantage} is built with mimalloc, whose heap massif cannot see. Build one with the "
            "system's malloc and point --bin-dir at it:\n"
            "  cargo build --release -p vantage -p vantage-demo --no-default-features "
            "--target-dir target/sysalloc\n"
            "  bench/profile.py mem --bin-dir target/sysalloc/release")
    h, d, env = setup(args, "mem")
    out = h.work / "massif.out"
    p = bench.spawn(["valgrind", "--tool=massif", f"--massif-out-file={out}", "--threshold=0.2",
                     "--time-unit=ms", str(h.vantage), "run", str(d),
                     "--listen", f"127.0.0.1:{bench.free_port()}", "--location", "bench", "--grace", "1s"],
                    h.work / "massif.log", env=env)
    try:
        time.sleep(args.seconds)
    finally:
        bench.stop(p, grace=60)
        bench.stop(h.target)
        bench.stop(h.sink)
    print(massif_groups(out, args.journeys))


def massif_groups(path: Path, journeys: int) -> str:
    lines = path.read_text().split("\n")
    snaps = [i for i, l in enumerate(lines) if l.startswith("heap_tree=detailed") or l.startswith("heap_tree=peak")]
    # The last detailed snapshot before shutdown frees things is the steady state.
    i = snaps[-2] if len(snaps) > 1 else snaps[-1]
    node = re.compile(r"^( *)n(\d+): (\d+) (.*)$")
    stack: list[tuple[int, str]] = []
    groups: collections.Counter = collections.Counter()
    total = 0
    for line in lines[i + 1:]:
        m = node.match(line)
        if not m:
            break
        depth, children, nbytes = len(m.group(1)), int(m.group(2)), int(m.group(3))
        frame = re.sub(r"^0x[0-9A-F]+: ", "", m.group(4))
        frame = re.sub(r" \(in .*\)$", "", frame)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        stack.append((depth, frame))
        if children == 0 and depth > 0:
            total += nbytes
            frames = [f for _, f in stack[1:]]
            for name, pred in MEM_GROUPS:
                if any(pred(f) for f in frames):
                    groups[name] += nbytes
                    break
            else:
                groups["other"] += nbytes
    out = [f"heap {total / 2**20:.1f} MiB for {journeys} journeys "
           f"({total / max(1, journeys) / 1024:.1f} KiB per journey)"]
    for name, b in groups.most_common():
        out.append(f"  {b / 2**20:8.2f} MiB  {b / max(1, journeys):>8,.0f} B/journey  {name}")
    out.append(f"(massif file: {path}; ms_print it for the full trees)")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["cpu", "mem"])
    ap.add_argument("--journeys", type=int)
    ap.add_argument("--every")
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--warmup", type=float, default=20)
    ap.add_argument("--telemetry", choices=["on", "off"], default="on")
    ap.add_argument("--bin-dir", default=str(bench.ROOT / "target" / "release"))
    args = ap.parse_args()
    defaults = {"cpu": (50, "2s", 40.0), "mem": (2000, "30s", 90.0)}[args.what]
    args.journeys = args.journeys or defaults[0]
    args.every = args.every or defaults[1]
    args.seconds = args.seconds or defaults[2]
    os.environ.pop("MALLOC_ARENA_MAX", None)
    (cpu if args.what == "cpu" else mem)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
