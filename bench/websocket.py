"""WebSocket round trip: one client sends a small text message to an echo upstream and waits
for it to come back, one message at a time, straight to the upstream and through gate; median
and p99 round trip and messages/s. The two are interleaved within each repetition.
"""

from __future__ import annotations

import statistics
import time

import aiohttp

from bench.common import GateProcess, Upstream, summary

NAME = "websocket"


async def echo_run(url: str, cookie: str | None, messages: int) -> dict:
    headers = {"Cookie": cookie} if cookie else {}
    rtts: list[float] = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.ws_connect(url, headers=headers) as ws:
            payload = "x" * 64
            for _ in range(10):  # warm-up
                await ws.send_str(payload)
                await ws.receive()
            started = time.perf_counter()
            for _ in range(messages):
                sent = time.perf_counter()
                await ws.send_str(payload)
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.TEXT and msg.data == payload, msg
                rtts.append((time.perf_counter() - sent) * 1000)
            elapsed = time.perf_counter() - started
    return {**summary(rtts), "messages_per_s": round(messages / elapsed, 1)}


async def run(ctx) -> dict:  # type: ignore[no-untyped-def]
    messages = 50 if ctx.quick else 2000
    reps = 1 if ctx.quick else 3
    upstream = Upstream(ctx.tmp)
    gate = None
    try:
        gate = GateProcess(ctx.tmp / "gate", upstream.url)
        await gate.login()
        targets = {
            "direct": (upstream.url.replace("http", "ws", 1) + "/echo", None),
            "gate": (gate.url.replace("http", "ws", 1) + "/echo", gate.cookie),
        }
        runs: dict[str, list[dict]] = {name: [] for name in targets}
        for _ in range(reps):
            for name, (url, cookie) in targets.items():
                runs[name].append(await echo_run(url, cookie, messages))
    finally:
        if gate is not None:
            gate.stop()
        upstream.stop()
    med = {
        name: {
            key: round(statistics.median(r[key] for r in rs), 3)
            for key in ("median", "p99", "max", "messages_per_s")
        }
        for name, rs in runs.items()
    }
    d, g = med["direct"], med["gate"]
    rows = [
        {
            "case": "echo, 64-byte text",
            "metric": "round trip median / p99",
            "value": f"gate {g['median']} / {g['p99']}",
            "unit": "ms",
            "baseline": f"{d['median']} / {d['p99']}",
            "baseline_label": "direct",
            "ratio": round(g["median"] / d["median"], 2) if d["median"] else None,
            "extra": f"p99 ×{round(g['p99'] / d['p99'], 2) if d['p99'] else '-'}",
        },
        {
            "case": "echo, 64-byte text",
            "metric": "messages/s (one at a time)",
            "value": g["messages_per_s"],
            "baseline": d["messages_per_s"],
            "baseline_label": "direct",
            "ratio": round(g["messages_per_s"] / d["messages_per_s"], 3),
        },
    ]
    return {
        "sizes": {"messages": messages, "repetitions": reps},
        "median": med,
        "runs": runs,
        "rows": rows,
    }
