"""Viewers in their own process, so the load does not share the benchmark's event loop.

    python -m bench.loadgen CONFIG_JSON

CONFIG_JSON: {"url", "count", "cookie", "mode": "live" | "backlog", "lines", "timeout"}.
Prints ``ready`` once every viewer has its response headers (live mode), then one JSON line
with the results.

The viewers are bare asyncio protocols (a GET, the status line, chunked decoding, a pattern
scan): a thousand of them must not cost more CPU than the server they measure, and aiohttp's
client spends a task wake-up and several buffer copies per chunk. The deploy scripts print
lines ``L <n> <CLOCK_MONOTONIC ns>`` (live) or ``B <n> ...`` (backlog); every transport
carries them recognisably (raw text as is, SSE as JSON strings with the newline escaped as
``\\n``), so a viewer matches the pattern on the decoded body.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

# A complete line: the number, the stamp, then its newline (raw or JSON-escaped).
LIVE = re.compile(rb"L (\d+) (\d+)(?:\\n|\\r|\r|\n)")
BACKLOG = re.compile(rb"B (\d+)(?:[ \\\r\n])")


def scan(pattern: re.Pattern[bytes], buffer: bytes) -> tuple[list[re.Match[bytes]], bytes]:
    """Complete matches in ``buffer`` and what is left to keep for the next chunk."""
    matches = list(pattern.finditer(buffer))
    rest = buffer[matches[-1].end() :] if matches else buffer
    return matches, rest[-256:]


class Dechunker:
    """HTTP/1.1 chunked transfer decoding, incremental."""

    def __init__(self) -> None:
        self.raw = b""
        self.left = 0  # bytes of the current chunk still to come
        self.crlf = 0  # bytes of the CRLF after a chunk still to skip
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        buf = self.raw + data if self.raw else data
        pos, end = 0, len(buf)
        out = []
        while pos < end and not self.finished:
            if self.left:
                take = min(self.left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self.left -= take
                if not self.left:
                    self.crlf = 2
            elif self.crlf:
                step = min(self.crlf, end - pos)
                pos += step
                self.crlf -= step
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";")[0], 16)
                pos = eol + 2
                if size == 0:
                    self.finished = True
                else:
                    self.left = size
        self.raw = buf[pos:]
        return b"".join(out)


class Viewer(asyncio.Protocol):
    """One GET; the body is handed to ``on_body`` as it arrives."""

    def __init__(self, request: bytes, on_body, on_headers) -> None:  # type: ignore[no-untyped-def]
        self.request = request
        self.on_body = on_body
        self.on_headers = on_headers
        self.head = b""
        self.status = 0
        self.body: Dechunker | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.body is None:
            self.head += data
            cut = self.head.find(b"\r\n\r\n")
            if cut < 0:
                return
            head, data = self.head[:cut], self.head[cut + 4 :]
            self.status = int(head.split(b" ", 2)[1])
            self.body = Dechunker()
            self.on_headers(self.status)
            if self.status != 200 or b"chunked" not in head.lower():
                self.finish()
                return
        payload = self.body.feed(data)
        if payload and self.on_body(payload) is False:
            self.finish()
        elif self.body.finished:
            self.finish()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self.status)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.status)


def build_request(url: str, cookie: str | None) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Accept: text/event-stream",
    ]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return parts.hostname or "127.0.0.1", parts.port or 80, request


async def live_viewer(conf: dict, state: dict, connected: asyncio.Event) -> dict:
    host, port, request = build_request(conf["url"], conf.get("cookie"))
    seen = 0
    last = -1
    latencies: Counter[float] = state["latencies"]
    buffer = b""

    def headers(_status: int) -> None:
        state["ready"] += 1
        if state["ready"] >= conf["count"]:
            connected.set()

    def body(data: bytes) -> bool:
        nonlocal buffer, seen, last
        now = time.monotonic_ns()
        matches, buffer = scan(LIVE, buffer + data)
        for m in matches:
            n = int(m.group(1))
            if n > last:  # lines come in order; count each once
                seen += 1
                last = n
            latencies[round((now - int(m.group(2))) / 1e6, 1)] += 1
        return b"event: status" not in data

    loop = asyncio.get_running_loop()
    _, viewer = await loop.create_connection(lambda: Viewer(request, body, headers), host, port)
    status = await viewer.done
    return {"status": status, "lines": seen}


async def backlog_viewer(conf: dict) -> dict:
    host, port, request = build_request(conf["url"], conf.get("cookie"))
    marker = b"B %06d" % (conf["lines"] - 1)
    tail = b""
    started = time.monotonic()
    finished: list[float] = []

    def body(data: bytes) -> bool:
        nonlocal tail
        if marker in tail + data[: len(marker)] or marker in data:
            finished.append(time.monotonic() - started)
            return False
        tail = data[-len(marker) :]
        return True

    loop = asyncio.get_running_loop()
    _, viewer = await loop.create_connection(
        lambda: Viewer(request, body, lambda _s: None), host, port
    )
    status = await viewer.done
    return {"status": status, "seconds": finished[0] if finished else None}


async def main(conf: dict) -> dict:
    timeout = conf.get("timeout", 120)
    if conf["mode"] == "backlog":
        results = await asyncio.wait_for(
            asyncio.gather(
                *(backlog_viewer(conf) for _ in range(conf["count"])), return_exceptions=True
            ),
            timeout,
        )
        times = [r["seconds"] for r in results if isinstance(r, dict) and r["seconds"]]
        return {"viewers": conf["count"], "completed": len(times), "seconds": times}
    connected = asyncio.Event()
    state: dict = {"ready": 0, "latencies": Counter()}
    tasks = [asyncio.create_task(live_viewer(conf, state, connected)) for _ in range(conf["count"])]
    waiter = asyncio.create_task(connected.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    print("ready", flush=True)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout)
    waiter.cancel()
    lines: list[int] = []
    errors: list[str] = []
    for r in results:
        if isinstance(r, BaseException):
            errors.append(f"{type(r).__name__}: {r}")
            lines.append(0)
        else:
            lines.append(r["lines"])
            if r["status"] != 200:
                errors.append(f"HTTP {r['status']}")
    return {
        "viewers": conf["count"],
        "lines": lines,
        "latency_ms_counts": {str(k): v for k, v in state["latencies"].items()},
        "errors": errors[:5],
        "error_count": len(errors),
    }


if __name__ == "__main__":
    result = asyncio.run(main(json.loads(sys.argv[1])))
    print(json.dumps(result), flush=True)
