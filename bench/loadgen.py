"""Viewers in their own process, so the load does not share the benchmark's event loop.

    python -m bench.loadgen CONFIG_JSON

CONFIG_JSON: {"url", "count", "cookie", "cafile", "mode": "live" | "backlog", "lines",
"timeout"}. Prints ``ready`` once every viewer has its response headers (live mode), then one
JSON line with the results.

The deploy scripts print lines ``L <n> <CLOCK_MONOTONIC ns>`` (live) or ``B <n> ...``
(backlog). Every transport carries them recognisably: raw text as is, SSE as JSON strings (the
newline escaped as ``\\n``), so the viewer matches the pattern on the decoded body.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import sys
import time
from collections import Counter

import aiohttp

# A complete line: the number, the stamp, then its newline (raw or JSON-escaped).
LIVE = re.compile(rb"L (\d+) (\d+)(?:\\n|\\r|\r|\n)")
BACKLOG = re.compile(rb"B (\d+)(?:[ \\\r\n])")


def scan(pattern: re.Pattern[bytes], buffer: bytes) -> tuple[list[re.Match[bytes]], bytes]:
    """Complete matches in ``buffer`` and what is left to keep for the next chunk."""
    matches = list(pattern.finditer(buffer))
    rest = buffer[matches[-1].end() :] if matches else buffer
    return matches, rest[-256:]


async def live_viewer(
    http: aiohttp.ClientSession, conf: dict, headers: dict, connected: asyncio.Event, state: dict
) -> dict:
    seen: set[int] = set()
    latencies: Counter[float] = Counter()
    buffer = b""
    async with http.get(conf["url"], headers=headers) as resp:
        if resp.status != 200:
            state["ready"] += 1
            if state["ready"] >= conf["count"]:
                connected.set()
            return {"status": resp.status, "lines": 0}
        state["ready"] += 1
        if state["ready"] >= conf["count"]:
            connected.set()
        async for chunk in resp.content.iter_any():
            now = time.monotonic_ns()
            matches, buffer = scan(LIVE, buffer + chunk)
            for m in matches:
                seen.add(int(m.group(1)))
                latencies[round((now - int(m.group(2))) / 1e6, 1)] += 1
            if b"event: status" in chunk or b"event: status" in buffer:
                break
    return {"status": 200, "lines": len(seen), "latencies": latencies}


async def backlog_viewer(http: aiohttp.ClientSession, conf: dict, headers: dict) -> dict:
    started = time.monotonic()
    last = conf["lines"] - 1
    buffer = b""
    async with http.get(conf["url"], headers=headers) as resp:
        if resp.status != 200:
            return {"status": resp.status, "seconds": None}
        async for chunk in resp.content.iter_any():
            matches, buffer = scan(BACKLOG, buffer + chunk)
            if matches and int(matches[-1].group(1)) >= last:
                return {"status": 200, "seconds": time.monotonic() - started}
    return {"status": 200, "seconds": None}


async def main(conf: dict) -> dict:
    context: ssl.SSLContext | bool = False
    if conf.get("cafile"):
        context = ssl.create_default_context(cafile=conf["cafile"])
    connector = aiohttp.TCPConnector(limit=0, ssl=context if conf.get("cafile") else False)
    headers = {"Cookie": conf["cookie"]} if conf.get("cookie") else {}
    timeout = aiohttp.ClientTimeout(total=conf.get("timeout", 120))
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        if conf["mode"] == "backlog":
            results = await asyncio.gather(
                *(backlog_viewer(http, conf, headers) for _ in range(conf["count"])),
                return_exceptions=True,
            )
            times = [r["seconds"] for r in results if isinstance(r, dict) and r["seconds"]]
            return {"viewers": conf["count"], "completed": len(times), "seconds": times}
        connected = asyncio.Event()
        state = {"ready": 0}
        tasks = [
            asyncio.create_task(live_viewer(http, conf, headers, connected, state))
            for _ in range(conf["count"])
        ]
        waiter = asyncio.create_task(connected.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        print("ready", flush=True)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        waiter.cancel()
    lines: list[int] = []
    latencies: Counter[float] = Counter()
    errors: list[str] = []
    for r in results:
        if isinstance(r, BaseException):
            errors.append(f"{type(r).__name__}: {r}")
            lines.append(0)
            continue
        lines.append(r["lines"])
        latencies.update(r.get("latencies", {}))
    return {
        "viewers": conf["count"],
        "lines": lines,
        "latency_ms_counts": {str(k): v for k, v in latencies.items()},
        "errors": errors[:5],
        "error_count": len(errors),
    }


if __name__ == "__main__":
    result = asyncio.run(main(json.loads(sys.argv[1])))
    print(json.dumps(result), flush=True)
