"""Proxy overhead: small GETs (a 3-byte body) with wrk at 1 and 50 connections, straight to a
plain aiohttp upstream, through nginx (plain HTTP, keep-alive upstream), through a bare aiohttp
proxy (no auth, no logging: the floor for any aiohttp proxy), and through gate (session cookie
checked, headers cleaned, identity assertion, access log). Then a 100 MB download, direct vs
through gate (and nginx), with curl. Targets are interleaved within each repetition, so each
sees the same moments of the machine's load.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess

from bench.common import GateProcess, NginxProcess, Upstream, wrk

NAME = "proxy"


def curl_mb_s(url: str, cookie: str | None) -> float:
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download} %{http_code}"]
    if cookie:
        cmd += ["-H", f"Cookie: {cookie}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "200", out
    return float(out[0]) / 1e6


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
        gate = GateProcess(ctx.tmp / "gate", upstream.url)
        servers.append(gate)
        await gate.login()
        nginx = NginxProcess(ctx.tmp / "nginx", plain_to=f"127.0.0.1:{upstream.port}")
        servers.append(nginx)
        targets = {
            "direct": (upstream.url, None),
            "nginx": (nginx.url, None),
            "bare_aiohttp_proxy": (bare.url, None),
            "gate": (gate.url, gate.cookie),
        }
        small: dict[int, dict[str, list[dict]]] = {}
        for connections in (1, 50):
            small[connections] = {name: [] for name in targets}
            for name, (base, cookie) in targets.items():  # warm-up
                await asyncio.to_thread(wrk, base + "/small", connections, 1, cookie)
            for _ in range(reps):
                for name, (base, cookie) in targets.items():
                    small[connections][name].append(
                        await asyncio.to_thread(wrk, base + "/small", connections, seconds, cookie)
                    )
        downloads: dict[str, list[float]] = {name: [] for name in ("direct", "nginx", "gate")}
        for _ in range(reps):
            for name in downloads:
                base, cookie = targets[name]
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
                "runs": runs,
            }
            for name, runs in per_target.items()
        }
        figures["small_get"][f"{connections}_connections"] = med
        g = med["gate"]
        for name in ("direct", "nginx", "bare_aiohttp_proxy", "gate"):
            m = med[name]
            row = {
                "case": f"small GET, {connections} connection{'s' if connections > 1 else ''}",
                "metric": f"{name} req/s (p99 ms)",
                "value": f"{m['rps']:g} ({m['p99_ms']:g} ms)",
            }
            if name != "gate":
                row.update(
                    baseline=None,
                    ratio=None,
                    extra=f"gate/{name} = {round(g['rps'] / m['rps'], 3)} req/s, "
                    f"p99 ×{round(g['p99_ms'] / m['p99_ms'], 2) if m['p99_ms'] else '-'}",
                )
            rows.append(row)
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
        "sizes": {"wrk_seconds": seconds, "repetitions": reps, "download_bytes": download},
        **figures,
        "rows": rows,
        "note": "wrk runs with 1 thread at 1 connection and 2 threads at 50, on the same 2 "
        "cores as the servers. nginx proxies over plain HTTP with a keep-alive upstream pool "
        "(the cheapest nginx can do); gate keeps its default settings, access log on.",
    }
