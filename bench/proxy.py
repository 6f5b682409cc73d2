"""Proxy overhead: small GETs (a 3-byte body) with wrk at 1 and 50 connections, straight to a
plain aiohttp upstream, through nginx (plain HTTP, keep-alive upstream), through a bare aiohttp
proxy (no auth, no logging: the floor for any aiohttp proxy), through Go's
``httputil.ReverseProxy`` set up as typester/gate ships it (``bench/goproxy``, built here when
Go is installed; also "tuned", with a 100-connection idle pool), and through gate (session
cookie checked, headers cleaned, identity assertion, access log) with one worker process and
with its default (one per core). Every target gets the same logged-in Cookie header. Then a
100 MB download, direct vs through gate (and nginx), with curl. Targets are interleaved within
each repetition, so each sees the same moments of the machine's load.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
from pathlib import Path

from bench.common import GateProcess, NginxProcess, Upstream, cpu_seconds, loadavg, wrk
from bench.goproxy import GoProxy, build

NAME = "proxy"


def curl_mb_s(url: str, cookie: str | None) -> float:
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download} %{http_code}"]
    if cookie:
        cmd += ["-H", f"Cookie: {cookie}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "200", out
    return float(out[0]) / 1e6


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (gate's worker processes)."""
    total = cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        try:
            total += cpu_seconds(int(child))
        except OSError:
            pass
    return total


def _measure(url: str, connections: int, seconds: float, cookie: str, pid: int | None) -> dict:
    """One wrk run, plus the CPU time the proxy (all its processes) spent per request."""
    before = _tree_cpu(pid) if pid else 0.0
    result = wrk(url, connections, seconds, cookie)
    if pid and result["rps"]:
        used = _tree_cpu(pid) - before
        result["cpu_us_per_request"] = round(used / (result["rps"] * seconds) * 1e6, 1)
    result["loadavg"] = loadavg()
    return result


def _scaling(med: dict) -> str:
    """One sentence: gate with 1 and N workers against Go and direct, at 50 connections."""
    one, many = med["gate_1_worker"], med["gate"]
    loads = [r["loadavg"][0] for m in med.values() for r in m["runs"]]
    text = (
        f"At 50 connections: gate with 1 worker {one['rps']:g} req/s "
        f"({one['cpu_us_per_request']} µs CPU/request), with {os.cpu_count()} workers "
        f"{many['rps']:g} req/s (×{round(many['rps'] / one['rps'], 2) if one['rps'] else '-'})"
    )
    for name, label in (("go", "Go ReverseProxy"), ("go_tuned", "Go with a 100-idle pool")):
        if name in med and med[name]["rps"]:
            text += f"; gate/{label} = {round(many['rps'] / med[name]['rps'], 2)}"
    text += f"; gate/direct = {round(many['rps'] / med['direct']['rps'], 3)}"
    return text + f" (1-minute load average during the runs {min(loads)}–{max(loads)})."


async def run(ctx) -> dict:  # type: ignore[no-untyped-def]
    quick = ctx.quick
    seconds = 1 if quick else 5
    reps = 1 if quick else 3
    download = 5_000_000 if quick else 100_000_000
    upstream = Upstream(ctx.tmp)
    servers: list = [upstream]
    try:
        bare = Upstream(ctx.tmp, proxy_to=upstream.url)
        servers.append(bare)
        gate = GateProcess(ctx.tmp / "gate", upstream.url)  # default workers: one per core
        servers.append(gate)
        cookie = await gate.login()
        gate_1 = GateProcess(ctx.tmp / "gate-1", upstream.url, workers=1)
        servers.append(gate_1)
        nginx = NginxProcess(ctx.tmp / "nginx", plain_to=f"127.0.0.1:{upstream.port}")
        servers.append(nginx)
        go_binary, go_version = await asyncio.to_thread(build, ctx.tmp / "go")
        targets: dict[str, tuple[str, int | None]] = {
            "direct": (upstream.url, None),
            "nginx": (nginx.url, None),
            "bare_aiohttp_proxy": (bare.url, bare.proc.pid),
        }
        if go_binary is not None:
            go = GoProxy(go_binary, ctx.tmp / "go", upstream.url)
            servers.append(go)
            go_tuned = GoProxy(go_binary, ctx.tmp / "go", upstream.url, idle=100)
            servers.append(go_tuned)
            targets["go"] = (go.url, go.proc.pid)
            targets["go_tuned"] = (go_tuned.url, go_tuned.proc.pid)
        targets["gate_1_worker"] = (gate_1.url, gate_1.proc.pid)
        targets["gate"] = (gate.url, gate.proc.pid)
        small: dict[int, dict[str, list[dict]]] = {}
        for connections in (1, 50):
            small[connections] = {name: [] for name in targets}
            for name, (base, _pid) in targets.items():  # warm-up
                await asyncio.to_thread(wrk, base + "/small", connections, 1, cookie)
            for _ in range(reps):
                for name, (base, pid) in targets.items():
                    small[connections][name].append(
                        await asyncio.to_thread(
                            _measure, base + "/small", connections, seconds, cookie, pid
                        )
                    )
        downloads: dict[str, list[float]] = {name: [] for name in ("direct", "nginx", "gate")}
        for _ in range(reps):
            for name in downloads:
                base, _pid = targets[name]
                url = f"{base}/bytes?n={download}"
                downloads[name].append(await asyncio.to_thread(curl_mb_s, url, cookie))
    finally:
        for server in reversed(servers):
            server.stop()

    figures: dict = {"small_get": {}, "download_mb_s": {}}
    rows = []
    for connections, per_target in small.items():
        med = {
            name: {
                "rps": round(statistics.median(r["rps"] for r in runs), 1),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 3),
                "cpu_us_per_request": (
                    round(statistics.median(r["cpu_us_per_request"] for r in runs), 1)
                    if all("cpu_us_per_request" in r for r in runs)
                    else None
                ),
                "runs": runs,
            }
            for name, runs in per_target.items()
        }
        figures["small_get"][f"{connections}_connections"] = med
        g = med["gate"]
        for name in med:
            m = med[name]
            row = {
                "case": f"small GET, {connections} connection{'s' if connections > 1 else ''}",
                "metric": f"{name} req/s (p99 ms)",
                "value": f"{m['rps']:g} ({m['p99_ms']:g} ms)",
            }
            if m["cpu_us_per_request"] is not None:
                row["value"] += f", {m['cpu_us_per_request']:g} µs CPU/request"
            if name != "gate":
                row.update(
                    baseline=None,
                    ratio=None,
                    extra=f"gate/{name} = {round(g['rps'] / m['rps'], 3)} req/s, "
                    f"p99 ×{round(g['p99_ms'] / m['p99_ms'], 2) if m['p99_ms'] else '-'}",
                )
            rows.append(row)
    fifty = figures["small_get"].get("50_connections", {})
    for name, label in (("go", "Go's ReverseProxy as typester/gate ships it"),
                        ("go_tuned", "Go with a 100-connection idle pool (stretch)")):  # fmt: skip
        if name in fifty and fifty[name]["rps"]:
            ratio = round(fifty["gate"]["rps"] / fifty[name]["rps"], 2)
            rows.append(
                {
                    "case": "small GET, 50 connections",
                    "metric": f"gate (default workers) req/s against {label}",
                    "value": fifty["gate"]["rps"],
                    "unit": "req/s",
                    "baseline": fifty[name]["rps"],
                    "baseline_label": f"{name} req/s, same run",
                    "ratio": ratio,
                    "target": "≥ 1× (issue 16)" if name == "go" else "≥ 1× (stretch)",
                    "met": ratio >= 1,
                }
            )
    dl = {name: round(statistics.median(v), 1) for name, v in downloads.items()}
    figures["download_mb_s"] = {"median": dl, "runs": downloads}
    for name in ("nginx", "gate"):
        rows.append(
            {
                "case": f"{download // 1_000_000} MB download",
                "metric": f"{name} MB/s",
                "value": dl[name],
                "unit": "MB/s",
                "baseline": dl["direct"],
                "baseline_label": "direct MB/s",
                "ratio": round(dl[name] / dl["direct"], 3),
            }
        )
    return {
        "scaling": (scaling := _scaling(figures["small_get"]["50_connections"])),
        "sizes": {"wrk_seconds": seconds, "repetitions": reps, "download_bytes": download},
        "go_baseline": {"built": go_binary is not None, "detail": go_version},
        "gate_workers": os.cpu_count(),
        **figures,
        "rows": rows,
        "note": scaling + " wrk runs with 1 thread at 1 connection and 2 threads at 50, on the "
        "same 2 cores as the servers. nginx proxies over plain HTTP with a keep-alive upstream "
        "pool (the cheapest nginx can do); gate keeps its default settings (workers: one per core; "
        "gate_1_worker: workers: 1), access log on. go: httputil.ReverseProxy as typester/gate "
        "sets it up (default Transport: 2 idle connections per backend, one log line per "
        "request, to a file); go_tuned: the same with a 100-connection idle pool. Every target "
        "gets the same Cookie header (a signed-in session). "
        + ("" if go_binary is not None else go_version),
    }
