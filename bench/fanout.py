"""Fan-out: many SSE viewers (400, then 1,000), in separate load-generator processes, follow
one deploy that prints 100 lines/s for 20 s — first straight to pploy, then through gate (its
default workers; CPU and RSS per worker). Reported: viewers
that received every line, delivery latency (arrival − write) median/p99, server CPU and peak
RSS. Then late joiners: viewers connecting to a live job that has already written 100,000
lines; the time until each has the whole backlog.

The baseline for latency is the floor of the latency benchmark (a reader on the pty); here the
comparison is direct vs through gate, and the targets are absolute (every line, p99 ≤ 250 ms,
pploy ≤ 300 MB).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp

from bench.common import (
    GateProcess,
    PployProcess,
    child_env,
    cpu_seconds,
    make_remote,
    peak_rss_kib,
    rss_kib,
    summary,
)
from bench.scripts import backlog, timed_lines

NAME = "fanout"
# Issue 16: through gate, p99 within this factor of direct at 400 viewers.
GATE_RATIO = 1.5
TARGET_P99_MS = 250.0
TARGET_RSS_MB = 300.0


async def start_loadgen(conf: dict) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", json.dumps(conf),
        stdout=asyncio.subprocess.PIPE, env=child_env(), limit=1 << 26,
    )  # fmt: skip


async def read_json_line(proc: asyncio.subprocess.Process) -> dict:
    assert proc.stdout is not None
    while True:
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited with {await proc.wait()}")
        if line.startswith(b"{"):
            await proc.wait()
            return json.loads(line)


def weighted_percentiles(counts: Counter[float]) -> dict[str, float]:
    total = sum(counts.values())
    if not total:
        return {"median": float("nan"), "p99": float("nan"), "max": float("nan")}
    out = {}
    for label, q in (("median", 0.5), ("p99", 0.99)):
        rank = max(1, int(total * q + 0.999999))
        seen = 0
        for value in sorted(counts):
            seen += counts[value]
            if seen >= rank:
                out[label] = value
                break
    out["max"] = max(counts)
    return out


class Sampler:
    """Polls the servers' RSS every 100 ms while the load runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = {name: rss_kib(pid) for name, pid in pids.items()}
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_kib(pid))
            await asyncio.sleep(0.1)

    def __enter__(self) -> Sampler:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def live_phase(
    pploy: PployProcess,
    http: aiohttp.ClientSession,
    project: str,
    go: Path,
    base: str,
    cookie: str,
    servers: dict[str, int],
    viewers: int,
    procs: int,
    lines: int,
    seconds: float,
) -> dict:
    go.unlink(missing_ok=True)
    job = await pploy.deploy(http, project)
    each = [viewers // procs + (1 if i < viewers % procs else 0) for i in range(procs)]
    gens = [
        await start_loadgen(
            {
                "url": f"{base}/api/jobs/{job}/events",
                "count": n,
                "cookie": cookie,
                "mode": "live",
                "timeout": seconds + 120,
            }
        )
        for n in each
    ]
    for gen in gens:
        assert gen.stdout is not None
        ready = await asyncio.wait_for(gen.stdout.readline(), 120)
        assert ready.strip() == b"ready", ready
    await asyncio.sleep(0.5)
    cpu_before = {name: cpu_seconds(pid) for name, pid in servers.items()}
    started = time.monotonic()
    with Sampler(servers) as sampler:
        go.touch()
        results = await asyncio.wait_for(
            asyncio.gather(*(read_json_line(g) for g in gens)), seconds + 180
        )
    elapsed = time.monotonic() - started
    cpu = {
        name: round((cpu_seconds(pid) - cpu_before[name]) / elapsed * 100, 1)
        for name, pid in servers.items()
    }
    record = await pploy.wait_job(http, job, 30)
    counts: list[int] = [n for r in results for n in r["lines"]]
    latencies: Counter[float] = Counter()
    for r in results:
        latencies.update({float(k): v for k, v in r["latency_ms_counts"].items()})
    return {
        "job_status": record["status"],
        "viewers": viewers,
        "load_processes": procs,
        "viewers_with_every_line": sum(1 for c in counts if c >= lines),
        "fewest_lines": min(counts) if counts else 0,
        "errors": sum(r["error_count"] for r in results),
        "error_samples": [e for r in results for e in r["errors"]][:3],
        "latency_ms": weighted_percentiles(latencies),
        "seconds": round(elapsed, 2),
        "cpu_percent_of_one_core": cpu,
        "peak_rss_mib": {name: round(kib / 1024, 1) for name, kib in sampler.peak.items()},
        "peak_rss_hwm_mib": {
            name: round(peak_rss_kib(pid) / 1024, 1) for name, pid in servers.items()
        },
    }


async def backlog_phase(
    pploy: PployProcess,
    http: aiohttp.ClientSession,
    project: str,
    stop: Path,
    lines: int,
    joiners: int,
    routes: dict[str, tuple[str, str]],
    servers: dict[str, int],
) -> dict:
    stop.unlink(missing_ok=True)
    job = await pploy.deploy(http, project)
    path = pploy.log_path(project, job)
    marker = b"B %06d " % (lines - 1)
    deadline = time.monotonic() + 120
    while True:  # until the last backlog line is in the log
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - 4096))
                if marker in fh.read():
                    break
        if time.monotonic() > deadline:
            raise TimeoutError("the backlog was not written in time")
        await asyncio.sleep(0.05)
    log_bytes = path.stat().st_size
    out = {"lines": lines, "log_bytes": log_bytes}
    for route, (base, cookie) in routes.items():
        procs = 2 if joiners >= 2 else 1
        gens = [
            await start_loadgen(
                {
                    "url": f"{base}/api/jobs/{job}/events",
                    "count": joiners // procs,
                    "cookie": cookie,
                    "mode": "backlog",
                    "lines": lines,
                    "timeout": 240,
                }
            )
            for _ in range(procs)
        ]
        cpu_before = {name: cpu_seconds(pid) for name, pid in servers.items()}
        started = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*(read_json_line(g) for g in gens)), 300)
        elapsed = time.monotonic() - started
        times = [t for r in results for t in r["seconds"]]
        out[route] = {
            "joiners": sum(r["viewers"] for r in results),
            "completed": len(times),
            "seconds": summary(times),
            "cpu_percent_of_one_core": {
                name: round((cpu_seconds(pid) - cpu_before[name]) / elapsed * 100, 1)
                for name, pid in servers.items()
            },
        }
    stop.touch()
    await pploy.wait_job(http, job, 30)
    return out


def _live_rows(viewers: int, lines: int, direct: dict, via_gate: dict, idle: int) -> list[dict]:
    """The report rows of one viewer count: direct, then through gate."""
    rows: list[dict] = []
    for label, phase in (("pploy direct", direct), ("through gate", via_gate)):
        every = phase["viewers_with_every_line"]
        p99 = phase["latency_ms"]["p99"]
        rss = phase["peak_rss_mib"]["pploy"]
        cpu = ", ".join(f"{k} {v}%" for k, v in phase["cpu_percent_of_one_core"].items())
        rss_all = ", ".join(f"{k} {v} MiB" for k, v in phase["peak_rss_mib"].items())
        rows += [
            {
                "case": f"{label}: {viewers} viewers",
                "metric": "viewers with every line",
                "value": f"{every}/{viewers}",
                "extra": f"fewest lines {phase['fewest_lines']}/{lines}; errors {phase['errors']}",
                "target": "all",
                "met": every == viewers,
            },
            {
                "case": f"{label}: {viewers} viewers",
                "metric": "delivery latency median / p99 / max",
                "value": f"{phase['latency_ms']['median']} / {p99} / {phase['latency_ms']['max']}",
                "unit": "ms",
                "baseline": direct["latency_ms"]["p99"] if phase is via_gate else None,
                "baseline_label": "direct p99",
                "ratio": round(p99 / direct["latency_ms"]["p99"], 2)
                if phase is via_gate and direct["latency_ms"]["p99"]
                else None,
                "target": f"p99 ≤ {TARGET_P99_MS:g} ms"
                + (f", ≤ {GATE_RATIO:g}× direct" if phase is via_gate and viewers <= 400 else ""),
                "met": p99 <= TARGET_P99_MS
                and not (
                    phase is via_gate
                    and viewers <= 400
                    and p99 > GATE_RATIO * direct["latency_ms"]["p99"]
                ),
            },
            {
                "case": f"{label}: {viewers} viewers",
                "metric": "server CPU (% of one core) / peak RSS",
                "value": f"{cpu}; {rss_all}",
                "baseline": round(idle / 1024, 1),
                "baseline_label": "pploy idle RSS MiB",
                "target": f"pploy ≤ {TARGET_RSS_MB:g} MB",
                "met": rss * 1.048576 <= TARGET_RSS_MB,
            },
        ]
    return rows


async def run(ctx) -> dict:  # type: ignore[no-untyped-def]
    quick = ctx.quick
    viewer_counts = (20,) if quick else (400, 1000)
    viewers = viewer_counts[-1]
    procs = 2 if quick else 4
    rate = 100
    seconds = 0.5 if quick else 20.0
    lines = int(rate * seconds)
    backlog_lines = 2000 if quick else 100_000
    joiners = 4 if quick else 100
    root: Path = ctx.tmp
    go, stop = root / "go", root / "stop"
    remote = make_remote(root, timed_lines(str(go), lines, 1 / rate), name="fanout")
    backlog_remote = make_remote(root, backlog(str(stop), backlog_lines), name="backlog")
    pploy = PployProcess(root / "pploy")
    gate = None
    try:
        await pploy.ready()
        # BENCH_GATE_WORKERS=N: gate with N workers instead of its default (one per core).
        workers_env = os.environ.get("BENCH_GATE_WORKERS")
        gate = GateProcess(root / "gate", pploy.base, int(workers_env) if workers_env else None)
        await gate.login()
        async with aiohttp.ClientSession(
            cookies={"user": "alice"}, timeout=aiohttp.ClientTimeout()
        ) as http:
            project = await pploy.prepare(http, remote)
            idle = rss_kib(pploy.proc.pid)
            workers = gate.server_pids()
            gate_servers = {
                "pploy": pploy.proc.pid,
                **{f"gate{'' if len(workers) == 1 else i + 1}": p for i, p in enumerate(workers)},
            }
            phases: dict[int, tuple[dict, dict]] = {}
            for count in viewer_counts:
                direct = await live_phase(
                    pploy, http, project, go, pploy.base, "user=alice",
                    {"pploy": pploy.proc.pid}, count, procs, lines, seconds,
                )  # fmt: skip
                via_gate = await live_phase(
                    pploy, http, project, go, gate.url, gate.cookie, gate_servers,
                    count, procs, lines, seconds,
                )  # fmt: skip
                phases[count] = (direct, via_gate)
            servers = gate_servers
            late_project = await pploy.prepare(http, backlog_remote)
            late = await backlog_phase(
                pploy, http, late_project, stop, backlog_lines, joiners,
                {"pploy": (pploy.base, "user=alice"), "gate": (gate.url, gate.cookie)},
                servers,
            )  # fmt: skip
    finally:
        for server in (gate, pploy):
            if server is not None:
                server.stop()

    rows = []
    for viewers, (direct, via_gate) in phases.items():
        rows += _live_rows(viewers, lines, direct, via_gate, idle)
    direct, via_gate = phases[viewer_counts[-1]]
    for route in ("pploy", "gate"):
        figures = late[route]
        s = figures["seconds"]
        rows.append(
            {
                "case": f"{figures['joiners']} late joiners via {route}",
                "metric": f"time to the whole backlog ({backlog_lines} lines, "
                f"{round(late['log_bytes'] / 1e6, 1)} MB) median / p99 / max",
                "value": f"{s['median']} / {s['p99']} / {s['max']}",
                "unit": "s",
                "baseline": late["pploy"]["seconds"]["median"] if route == "gate" else None,
                "baseline_label": "direct median",
                "ratio": round(s["median"] / late["pploy"]["seconds"]["median"], 2)
                if route == "gate" and late["pploy"]["seconds"]["median"]
                else None,
                "extra": f"{figures['completed']}/{figures['joiners']} got it all; CPU "
                + ", ".join(f"{k} {v}%" for k, v in figures["cpu_percent_of_one_core"].items()),
            }
        )
    return {
        "sizes": {
            "viewers": list(viewer_counts),
            "load_processes": procs,
            "lines_per_second": rate,
            "seconds": seconds,
            "backlog_lines": backlog_lines,
            "late_joiners": joiners,
        },
        "direct": direct,
        "gate": via_gate,
        "by_viewers": {str(count): {"direct": d, "gate": g} for count, (d, g) in phases.items()},
        "gate_workers": len(workers),
        "late_joiners": late,
        "pploy_idle_rss_mib": round(idle / 1024, 1),
        "rows": rows,
        "note": "Through gate / direct p99: "
        + ", ".join(
            f"{count} viewers ×{round(g['latency_ms']['p99'] / d['latency_ms']['p99'], 2)}"
            for count, (d, g) in phases.items()
            if d["latency_ms"]["p99"]
        )
        + f" (gate with {len(workers)} worker{'s' if len(workers) > 1 else ''}). "
        "The load generators run on the same 2 cores as the servers; CPU is the "
        "server's user+system time over the deploy's duration (100% = one core). Latency "
        "medians here are over all viewers' lines. Median of the viewers, not of repetitions "
        f"(one run each: {viewers} viewers already sample it {viewers} times).",
    }
