"""The doctor's measurements: read each stream-test endpoint over each transport and note
when every tick arrives, in how many network reads, and how the stream ended.

Only network I/O and bookkeeping live here; what the observations mean is
:mod:`pploy.chain.doctor.verdict`'s business.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from pploy.chain.doctor.model import TRANSPORTS, Batch, Options, Probe, Tick

GATE_PATH = "/.gate/stream-test"
PPLOY_PATH = "/api/stream-test"
SUFFIX = {"chunked": "", "sse": "/events", "websocket": "/ws"}
SHOWN_HEADERS = (
    "Server",
    "Via",
    "Content-Type",
    "Content-Encoding",
    "Content-Length",
    "Transfer-Encoding",
    "X-Accel-Buffering",
    "X-Stream-Test-Origin",
    "Cache-Control",
)


def plan(options: Options) -> list[Probe]:
    """The probes to run: every transport at gate's and pploy's endpoints under URL, or at
    URL itself when it names a stream-test endpoint."""
    parts = urlsplit(options.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{options.url!r} is not an http:// or https:// URL")
    path = parts.path.rstrip("/")
    bases: list[tuple[str, str]] = []
    if path.endswith("stream-test"):
        bases.append(("url", path))
    else:
        if "gate" in options.endpoints:
            bases.append(("gate", GATE_PATH))
        if "pploy" in options.endpoints:
            bases.append(("pploy", path + PPLOY_PATH))
    probes = []
    for endpoint, base in bases:
        for transport in TRANSPORTS:
            scheme = parts.scheme
            if transport == "websocket":
                scheme = "wss" if scheme == "https" else "ws"
            url = urlunsplit((scheme, parts.netloc, base + SUFFIX[transport], options.query, ""))
            probes.append(Probe(endpoint=endpoint, transport=transport, url=url))
    return probes


async def measure(options: Options) -> list[Probe]:
    """Run every planned probe at once over one client session; the probes come back with
    their observations filled in and no verdict yet."""
    probes = plan(options)
    connector = aiohttp.TCPConnector(ssl=_ssl_context(options), limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=options.read_timeout)
    headers = {"User-Agent": "pploy-doctor", **options.headers}
    if options.cookies:
        # Sent as a header: a cookie jar would refuse cookies for IP-address hosts.
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in options.cookies.items())
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers=headers,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
    ) as session:
        await asyncio.gather(*(run_probe(session, p, options) for p in probes))
    return probes


async def run_probe(session: aiohttp.ClientSession, probe: Probe, options: Options) -> Probe:
    """Read one probe's stream to its end (or failure), recording the failure as text."""
    started = time.perf_counter()
    try:
        await asyncio.wait_for(
            READERS[probe.transport](session, probe, options),
            options.read_timeout + options.duration,
        )
    except TimeoutError:
        probe.error = f"no end of stream within {options.read_timeout + options.duration:g} s"
        probe.ended_at = time.perf_counter() - started
    except aiohttp.ClientConnectorCertificateError as exc:
        probe.error = f"TLS certificate not trusted: {exc.certificate_error} (--cacert or -k)"
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, socket.gaierror):
            host = urlsplit(probe.url).hostname
            probe.error = f"the name {host} does not resolve (DNS: {exc.os_error.strerror})"
            probe.unresolved = True
        else:
            probe.error = f"cannot connect: {exc.os_error or exc}"
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError) as exc:
        probe.ended_at = time.perf_counter() - started
        probe.error = f"connection cut: {type(exc).__name__}"
    except aiohttp.ClientError as exc:
        probe.error = f"{type(exc).__name__}: {exc}"
    return probe


def _ssl_context(options: Options) -> ssl.SSLContext | bool:
    if options.insecure:
        return False
    if options.cafile:
        return ssl.create_default_context(cafile=options.cafile)
    return True


class _Clock:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def _parse_tick(text: str) -> tuple[int, float] | None:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or "n" not in payload or "e" not in payload:
        return None
    try:
        return int(payload["n"]), float(payload["e"])
    except (TypeError, ValueError):
        return None


def _record(probe: Probe, at: float, size: int, found: list[tuple[int, float]]) -> None:
    """Note one read from the network: ``size`` bytes carrying the ticks ``found``."""
    for n, sent in found:
        probe.ticks.append(Tick(n=n, at=at, sent=sent))
    if found:
        probe.batches.append(Batch(at=at, ticks=len(found), bytes=size))


def _keep_headers(probe: Probe, headers: Any) -> None:
    for name in SHOWN_HEADERS:
        value = headers.get(name)
        if value is not None:
            probe.headers[name] = value


async def _read_chunked(session: aiohttp.ClientSession, probe: Probe, options: Options) -> None:
    clock = _Clock()
    async with session.get(probe.url, allow_redirects=False) as response:
        probe.status = response.status
        _keep_headers(probe, response.headers)
        if response.status != 200:
            probe.error = await _http_error(response, options.credentials)
            return
        pending = b""
        async for data in response.content.iter_any():
            at = clock()
            pending += data
            *lines, pending = pending.split(b"\n")
            found = []
            for line in lines:
                text = line.decode(errors="replace").strip()
                if text.startswith("tick "):
                    tick = _parse_tick(text[5:])
                    if tick:
                        found.append(tick)
                elif text == "done":
                    probe.done = True
            _record(probe, at, len(data), found)
        probe.ended_at = clock()


async def _read_sse(session: aiohttp.ClientSession, probe: Probe, options: Options) -> None:
    clock = _Clock()
    headers = {"Accept": "text/event-stream"}
    async with session.get(probe.url, allow_redirects=False, headers=headers) as response:
        probe.status = response.status
        _keep_headers(probe, response.headers)
        if response.status != 200:
            probe.error = await _http_error(response, options.credentials)
            return
        pending = ""
        async for data in response.content.iter_any():
            at = clock()
            pending += data.decode(errors="replace").replace("\r\n", "\n")
            *blocks, pending = pending.split("\n\n")
            found = []
            for block in blocks:
                event, lines = "message", []
                for line in block.split("\n"):
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        lines.append(line[5:].lstrip(" "))
                if event == "tick":
                    tick = _parse_tick("\n".join(lines))
                    if tick:
                        found.append(tick)
                elif event == "done":
                    probe.done = True
            _record(probe, at, len(data), found)
        probe.ended_at = clock()


async def _read_websocket(session: aiohttp.ClientSession, probe: Probe, options: Options) -> None:
    clock = _Clock()
    parts = urlsplit(probe.url)
    # A browser's Origin names the host it is on: the Host a --header sets, if one does.
    origin = f"{parts.scheme.replace('ws', 'http', 1)}://{options.host_header or parts.netloc}"
    try:
        ws = await session.ws_connect(
            probe.url, headers={"Origin": origin}, autoping=True, max_msg_size=1 << 20
        )
    except aiohttp.WSServerHandshakeError as exc:
        probe.status = exc.status
        if exc.headers:
            _keep_headers(probe, exc.headers)
        probe.error = f"WebSocket handshake refused: HTTP {exc.status} {exc.message}".strip()
        if exc.status in (401, 403) and options.credentials:
            probe.error += f" (with {options.credentials} passed)"
        return
    probe.status = 101
    _keep_headers(probe, ws._response.headers)
    try:
        while True:
            msg = await ws.receive(timeout=options.read_timeout)
            at = clock()
            if msg.type == aiohttp.WSMsgType.TEXT:
                if '"done"' in msg.data:
                    probe.done = True
                    continue
                tick = _parse_tick(msg.data)
                _record(probe, at, len(msg.data), [tick] if tick else [])
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                probe.close_code = int(msg.data)  # the code the server sent
                break
            elif msg.type == aiohttp.WSMsgType.CLOSED:
                break
            elif msg.type == aiohttp.WSMsgType.ERROR:
                probe.error = f"WebSocket error: {ws.exception()}"
                break
        probe.ended_at = clock()
    finally:
        await ws.close()
        if probe.close_code is None:
            probe.close_code = ws.close_code or 1006


async def _http_error(response: aiohttp.ClientResponse, credentials: str | None) -> str:
    location = response.headers.get("Location")
    if response.status in (301, 302, 303, 307, 308):
        return f"HTTP {response.status} redirect to {location} (a login page? pass --cookie)"
    body = (await response.content.read(300)).decode(errors="replace").strip()
    first = body.splitlines()[0][:120] if body else ""
    if response.status in (401, 403):
        if not credentials:
            return f"HTTP {response.status}: authentication needed (pass --cookie NAME=VALUE)"
        return f"HTTP {response.status} with {credentials} passed" + (f": {first}" if first else "")
    return f"HTTP {response.status}" + (f": {first}" if first else "")


Reader = Callable[[aiohttp.ClientSession, Probe, Options], Awaitable[None]]
READERS: dict[str, Reader] = {
    "chunked": _read_chunked,
    "sse": _read_sse,
    "websocket": _read_websocket,
}
