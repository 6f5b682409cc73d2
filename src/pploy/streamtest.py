"""Stream-test endpoints: a timestamped tick every 100 ms for 3 s, as chunked text, as
Server-Sent Events and over WebSocket. ``pploy doctor`` reads them to tell which hop of a
chain (nginx, gate, another proxy) holds a stream back.

Both pploy (``/api/stream-test``) and gate (``/.gate/stream-test``) mount them, behind their
own authentication. Query parameters, each clamped to sane bounds:

- ``interval`` seconds between ticks (0.01–5, default 0.1)
- ``duration`` seconds of ticking (0.1–60, default 3)
- ``heartbeat`` seconds of silence before a keep-alive (0 = none; 0.2–60, default 15):
  an SSE comment, a ``#`` line in the chunked text, a WebSocket ping
- ``pad`` extra bytes per tick (0–8192, default 0), to see buffers that flush by size

Every tick carries ``n`` (1, 2, …), ``t`` (the server's clock, Unix seconds) and ``e``
(seconds since the stream started), so a client can tell delay from arrival order alone.
The stream ends with a ``done`` marker; a stream without one was cut on the way.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from pploy import log

STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    # nginx buffers proxied responses (over TLS it holds the whole stream) unless told not to.
    "X-Accel-Buffering": "no",
}
ORIGIN_HEADER = "X-Stream-Test-Origin"

BOUNDS = {
    "interval": (0.01, 5.0, 0.1),
    "duration": (0.1, 60.0, 3.0),
    "heartbeat": (0.2, 60.0, 15.0),
}
MAX_PAD = 8192


@dataclass(frozen=True)
class TickParams:
    interval: float = 0.1
    duration: float = 3.0
    heartbeat: float | None = 15.0
    pad: int = 0

    @property
    def count(self) -> int:
        return max(1, round(self.duration / self.interval))

    def to_json(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "duration": self.duration,
            "heartbeat": self.heartbeat,
            "pad": self.pad,
            "count": self.count,
        }


def _number(request: web.Request, key: str) -> float | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{key} must be a number of seconds, not {raw!r}\n") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise web.HTTPBadRequest(text=f"{key} must be a finite number\n")
    return value


def parse_params(request: web.Request) -> TickParams:
    """The tick parameters from the query string, clamped to their bounds."""
    values: dict[str, float | None] = {}
    for key, (low, high, default) in BOUNDS.items():
        value = _number(request, key)
        if value is None:
            values[key] = default
        elif key == "heartbeat" and value <= 0:
            values[key] = None
        else:
            values[key] = min(high, max(low, value))
    pad = _number(request, "pad")
    interval = values["interval"]
    duration = values["duration"]
    assert interval is not None and duration is not None
    return TickParams(
        interval=interval,
        duration=duration,
        heartbeat=values["heartbeat"],
        pad=int(min(MAX_PAD, max(0, pad or 0))),
    )


def tick_payload(n: int, started: float, params: TickParams) -> dict[str, object]:
    now = time.time()
    payload: dict[str, object] = {"n": n, "t": round(now, 6), "e": round(now - started, 6)}
    if params.pad:
        payload["pad"] = "." * params.pad
    return payload


async def ticks(params: TickParams) -> AsyncIterator[tuple[str, dict[str, object] | None]]:
    """Yield ``("tick", payload)`` on schedule and ``("heartbeat", None)`` during silences
    longer than the heartbeat; ticks are scheduled from the start (no drift)."""
    started = time.time()
    loop = asyncio.get_running_loop()
    origin = loop.time()
    last_sent = origin
    for n in range(1, params.count + 1):
        due = origin + n * params.interval
        while True:
            now = loop.time()
            if params.heartbeat is not None and due - last_sent > params.heartbeat:
                await asyncio.sleep(max(0.0, last_sent + params.heartbeat - now))
                last_sent = loop.time()
                yield "heartbeat", None
                continue
            await asyncio.sleep(max(0.0, due - now))
            break
        last_sent = loop.time()
        yield "tick", tick_payload(n, started, params)


def _headers(origin: str, params: TickParams) -> dict[str, str]:
    return {
        **STREAM_HEADERS,
        ORIGIN_HEADER: origin,
        "X-Stream-Test-Params": json.dumps(params.to_json(), separators=(",", ":")),
    }


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def handlers(prefix: str, origin: str | None = None) -> dict[str, Handler]:
    """The three endpoints under ``prefix``, by path: ``{prefix}`` (chunked text),
    ``{prefix}/events`` (SSE) and ``{prefix}/ws`` (WebSocket).

    ``origin`` names the server in the ``X-Stream-Test-Origin`` response header (defaults to
    ``gate`` for a ``/.gate`` prefix, else ``pploy``), so a client sees which one answered.
    """
    prefix = "/" + prefix.strip("/")
    name = origin or ("gate" if prefix.startswith("/.gate") else "pploy")

    async def chunked(request: web.Request) -> web.StreamResponse:
        params = parse_params(request)
        response = web.StreamResponse(headers=_headers(name, params))
        response.content_type = "text/plain"
        response.charset = "utf-8"
        response.enable_chunked_encoding()
        await response.prepare(request)
        log.event("stream_test.start", transport="chunked", origin=name, **params.to_json())
        async for kind, payload in ticks(params):
            if kind == "heartbeat":
                await response.write(b"# heartbeat\n")
            else:
                await response.write(("tick " + json.dumps(payload) + "\n").encode())
        await response.write(b"done\n")
        await response.write_eof()
        return response

    async def events(request: web.Request) -> web.StreamResponse:
        params = parse_params(request)
        response = web.StreamResponse(headers=_headers(name, params))
        response.content_type = "text/event-stream"
        response.enable_chunked_encoding()
        await response.prepare(request)
        log.event("stream_test.start", transport="sse", origin=name, **params.to_json())
        await response.write(b"retry: 2000\n\n")
        async for kind, payload in ticks(params):
            if kind == "heartbeat":
                await response.write(b": heartbeat\n\n")
            else:
                assert payload is not None
                data = json.dumps(payload)
                await response.write(f"event: tick\nid: {payload['n']}\ndata: {data}\n\n".encode())
        await response.write(b"event: done\ndata: {}\n\n")
        await response.write_eof()
        return response

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        params = parse_params(request)
        # Pings on the heartbeat schedule (none with "heartbeat=0": real silence); sent by
        # hand so that a slow pong never closes the test stream.
        ws = web.WebSocketResponse()
        ws.headers.update(_headers(name, params))
        await ws.prepare(request)
        log.event("stream_test.start", transport="websocket", origin=name, **params.to_json())

        async def drain() -> None:
            while True:
                msg = await ws.receive()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    return
                if msg.type == WSMsgType.ERROR:
                    return

        reader = asyncio.create_task(drain())
        try:
            async for kind, payload in ticks(params):
                if reader.done() or ws.closed:
                    break
                if kind == "tick":
                    await ws.send_str(json.dumps(payload))
                else:
                    await ws.ping(b"heartbeat")
            else:
                await ws.send_str(json.dumps({"done": True}))
                await ws.close(code=1000, message=b"stream test done")
        except ConnectionResetError:
            pass
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if not ws.closed:
                await ws.close()
        return ws

    return {prefix: chunked, prefix + "/events": events, prefix + "/ws": websocket}


def add_routes(app: web.Application, prefix: str, origin: str | None = None) -> None:
    """Serve the stream-test endpoints under ``prefix`` on ``app`` (GET only), behind the
    app's middlewares (its authentication included)."""
    for path, handler in handlers(prefix, origin).items():
        app.router.add_get(path, handler)


GATE_PREFIX = "/.gate/stream-test"
_GATE_HANDLERS: dict[str, Handler] = {}


async def serve_gate(request: web.Request, path: str) -> web.StreamResponse | None:
    """For gate's dispatcher, after authentication: answer ``path`` if it is one of gate's
    stream-test endpoints (``/.gate/stream-test…``), else None."""
    if not path.startswith(GATE_PREFIX):
        return None
    if not _GATE_HANDLERS:
        _GATE_HANDLERS.update(handlers(GATE_PREFIX, "gate"))
    handler = _GATE_HANDLERS.get(path)
    if handler is None:
        return None
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET"])
    return await handler(request)
