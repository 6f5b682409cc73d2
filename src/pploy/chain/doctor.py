"""``pploy doctor URL``: find the hop that holds a stream back.

The doctor reads the stream-test endpoints (see :mod:`pploy.streamtest`) of the site at
URL over all three transports — chunked text, Server-Sent Events and WebSocket — from both
gate (``/.gate/stream-test``) and pploy (``/api/stream-test``) when both answer, notes when each
tick arrives and gives a verdict per transport:

- **streaming**: ticks arrive as they are sent;
- **buffered**: ticks arrive in batches (with the batch sizes and how long they were held);
- **broken**: no stream (handshake refused, authentication needed, HTTP error) or a stream cut
  before its end (at N s: likely a read timeout such as nginx's ``proxy_read_timeout``).

Comparing gate's endpoint with pploy's tells whether the trouble is in front of gate (nginx,
a load balancer) or between gate and pploy. The likely fix names the hop that answered, read
from the response headers.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from pploy import log

TRANSPORTS = ("chunked", "sse", "websocket")
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


@dataclass
class Tick:
    n: int
    at: float  # seconds from the request to its arrival at this client
    sent: float  # seconds from the stream's start to its sending, by the server's clock

    @property
    def lag(self) -> float:
        return self.at - self.sent


@dataclass
class Batch:
    at: float
    ticks: int
    bytes: int


@dataclass
class Probe:
    """One transport read from one endpoint, and what the doctor made of it."""

    endpoint: str  # gate | pploy | url
    transport: str
    url: str
    expected: int = 0
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ticks: list[Tick] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    done: bool = False
    ended_at: float | None = None
    close_code: int | None = None
    error: str | None = None
    verdict: str = "broken"
    detail: str = ""
    hop: str = ""
    fix: str | None = None
    available: bool = True

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ticks"] = [
            {"n": t.n, "at": round(t.at, 4), "sent": round(t.sent, 4)} for t in self.ticks
        ]
        data["batches"] = [
            {"at": round(b.at, 4), "ticks": b.ticks, "bytes": b.bytes} for b in self.batches
        ]
        if self.ended_at is not None:
            data["ended_at"] = round(self.ended_at, 4)
        return data


@dataclass
class Options:
    url: str
    cookies: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    interval: float = 0.1
    duration: float = 3.0
    heartbeat: float | None = None  # None: the server's default; 0: off
    timeout: float | None = None
    insecure: bool = False
    cafile: str | None = None
    endpoints: tuple[str, ...] = ("gate", "pploy")

    @property
    def expected(self) -> int:
        return max(1, round(self.duration / self.interval))

    @property
    def query(self) -> str:
        params: dict[str, str] = {
            "interval": f"{self.interval:g}",
            "duration": f"{self.duration:g}",
        }
        if self.heartbeat is not None:
            params["heartbeat"] = f"{self.heartbeat:g}"
        return urlencode(params)

    @property
    def read_timeout(self) -> float:
        return self.timeout if self.timeout is not None else self.duration + 15.0


# -- reading the streams ---------------------------------------------------------------------


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
            probe.error = await _http_error(response)
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
            probe.error = await _http_error(response)
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
    origin = f"{parts.scheme.replace('ws', 'http', 1)}://{parts.netloc}"
    try:
        ws = await session.ws_connect(
            probe.url, headers={"Origin": origin}, autoping=True, max_msg_size=1 << 20
        )
    except aiohttp.WSServerHandshakeError as exc:
        probe.status = exc.status
        if exc.headers:
            _keep_headers(probe, exc.headers)
        probe.error = f"WebSocket handshake refused: HTTP {exc.status} {exc.message}".strip()
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


async def _http_error(response: aiohttp.ClientResponse) -> str:
    location = response.headers.get("Location")
    if response.status in (301, 302, 303, 307, 308):
        return f"HTTP {response.status} redirect to {location} (a login page? pass --cookie)"
    if response.status in (401, 403):
        return f"HTTP {response.status}: authentication needed (pass --cookie NAME=VALUE)"
    body = (await response.content.read(300)).decode(errors="replace").strip()
    first = body.splitlines()[0][:120] if body else ""
    return f"HTTP {response.status}" + (f": {first}" if first else "")


READERS = {"chunked": _read_chunked, "sse": _read_sse, "websocket": _read_websocket}


async def run_probe(session: aiohttp.ClientSession, probe: Probe, options: Options) -> Probe:
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
        probe.error = f"cannot connect: {exc.os_error or exc}"
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError) as exc:
        probe.ended_at = time.perf_counter() - started
        probe.error = f"connection cut: {type(exc).__name__}"
    except aiohttp.ClientError as exc:
        probe.error = f"{type(exc).__name__}: {exc}"
    judge(probe, options)
    return probe


# -- verdicts -------------------------------------------------------------------------------


def front_hop(headers: dict[str, str]) -> str:
    """Who answered, from the response headers: nginx, gate/pploy directly, or another."""
    server = headers.get("Server", "")
    lowered = server.lower()
    if "X-Accel-Buffering" in headers and "nginx" not in lowered:
        # nginx never passes X-Accel-Buffering on; seeing it means no nginx in front.
        origin = headers.get("X-Stream-Test-Origin", "")
        return origin or "aiohttp"
    if lowered.startswith("nginx") or "openresty" in lowered:
        return "nginx"
    if "aiohttp" in lowered:
        return headers.get("X-Stream-Test-Origin") or "gate or pploy (aiohttp)"
    if server:
        return f"another proxy (Server: {server})"
    return "an unknown proxy"


FIXES = {
    ("nginx", "buffered"): (
        "nginx is buffering this response. pploy and gate send `X-Accel-Buffering: no` on "
        "every stream, which nginx obeys unless `proxy_ignore_headers` lists it or another "
        "proxy drops it: remove `X-Accel-Buffering` from `proxy_ignore_headers` (or set "
        "`proxy_buffering off;`) in this location. `pploy nginx-config` prints a known-good "
        "configuration."
    ),
    ("nginx", "websocket"): (
        "nginx did not pass the WebSocket upgrade on. In the location add "
        "`proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
        "proxy_set_header Connection $connection_upgrade;` with "
        "`map $http_upgrade $connection_upgrade { default upgrade; '' close; }` in `http {}`."
    ),
    ("nginx", "cut"): (
        "nginx closed the stream during a silence: `proxy_read_timeout` is shorter than the "
        "gap between two writes. Keep heartbeats on (pploy and gate send one at least every "
        "15 s) and set `proxy_read_timeout` well above them (the shipped config uses 3600s). "
        "WebSocket pings go hop by hop: between nginx and gate they are gate's "
        "(`upstream.websocket_heartbeat`, 30 s by default)."
    ),
    ("gate", "buffered"): (
        "gate answered and still batched the ticks: this is a gate bug (gate writes every "
        "upstream chunk at once); please report it with this output."
    ),
    ("other", "buffered"): (
        "a proxy in front buffers streamed responses: disable response buffering for this "
        "site (for a CDN, bypass its cache and buffering for /api/ and /.gate/), and make "
        "sure it passes `Cache-Control: no-transform` (no compression of streams)."
    ),
    ("other", "websocket"): (
        "a proxy in front does not pass WebSocket upgrades: enable WebSocket support "
        "(HTTP/1.1 to the upstream with the Upgrade and Connection headers)."
    ),
    ("other", "cut"): (
        "a proxy in front closed the stream during a silence: raise its read/idle timeout "
        "above pploy's 15 s heartbeat (and gate's upstream.idle_timeout if gate is the one)."
    ),
}


def _fix(hop: str, problem: str) -> str | None:
    key = "nginx" if hop == "nginx" else "gate" if hop == "gate" else "other"
    if key == "gate" and problem != "buffered":
        key = "other"
    return FIXES.get((key, problem))


def judge(probe: Probe, options: Options) -> None:
    """Set the verdict, the detail and the likely fix from what arrived and when."""
    probe.expected = options.expected
    probe.hop = front_hop(probe.headers) if probe.headers else ""
    if probe.status == 404 and probe.endpoint != "url":
        probe.available = False
        probe.verdict = "unavailable"
        probe.detail = "HTTP 404: this server has no stream-test endpoint here"
        return
    got = len(probe.ticks)
    if probe.error and not probe.ticks and probe.ended_at is None:
        probe.verdict = "broken"
        probe.detail = probe.error
        if probe.transport == "websocket" and probe.status in (200, 400, 426):
            # The upgrade never reached a WebSocket server: it answered plain HTTP.
            probe.fix = _fix(probe.hop, "websocket")
        return
    abnormal_close = probe.transport == "websocket" and probe.close_code not in (1000, None)
    if not probe.done or abnormal_close:
        when = probe.ended_at if probe.ended_at is not None else 0.0
        probe.verdict = "broken"
        probe.detail = f"connection cut at {when:.1f} s after {got} of {probe.expected} ticks"
        if abnormal_close:
            probe.detail += f" (WebSocket close code {probe.close_code})"
        if probe.error:
            probe.detail += f"; {probe.error}"
        largest_gap = _largest_silence(probe, options)
        probe.detail += (
            f" — likely a read timeout (nginx proxy_read_timeout, gate upstream.idle_timeout) "
            f"shorter than the longest silence ({largest_gap:.1f} s)"
        )
        probe.fix = _fix(probe.hop, "cut")
        return
    if got == 0:
        probe.verdict = "broken"
        probe.detail = "the stream ended without a single tick"
        return
    lags = [t.lag for t in probe.ticks]
    holds = [lag - min(lags) for lag in lags]
    held = max(holds)
    biggest = max(b.ticks for b in probe.batches)
    # Buffered: most ticks were held (a buffer), or some for very long. One network hiccup
    # delays a few ticks briefly and is not a verdict.
    typical_limit = max(0.25, 2.5 * options.interval)
    if statistics.median(holds) > typical_limit or held > max(1.0, 10 * options.interval):
        probe.verdict = "buffered"
        sizes = sorted(b.bytes for b in probe.batches)
        probe.detail = (
            f"{got} ticks arrived in {len(probe.batches)} batch"
            f"{'es' if len(probe.batches) != 1 else ''} (up to {biggest} ticks, "
            f"{_size(sizes[-1])} at once); ticks held up to {held:.2f} s"
        )
        if len(probe.batches) > 2 and sizes[0] > 0.8 * sizes[-1]:
            probe.detail += f" — batches of about {_size(sizes[len(sizes) // 2])}: a size buffer"
        probe.fix = _fix(probe.hop, "buffered")
        return
    probe.verdict = "streaming"
    gaps = [b.at - a.at for a, b in zip(probe.ticks, probe.ticks[1:], strict=False)]
    probe.detail = f"{got}/{probe.expected} ticks, each as sent (held at most {held * 1000:.0f} ms"
    if gaps:
        probe.detail += f", median gap {statistics.median(gaps) * 1000:.0f} ms"
    probe.detail += ")"


def _largest_silence(probe: Probe, options: Options) -> float:
    gaps = [options.interval]
    previous = 0.0
    for tick in probe.ticks:
        gaps.append(tick.at - previous)
        previous = tick.at
    if probe.ended_at is not None:
        gaps.append(probe.ended_at - previous)
    return max(gaps)


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


# -- the whole run --------------------------------------------------------------------------


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


def _ssl_context(options: Options) -> ssl.SSLContext | bool:
    if options.insecure:
        return False
    if options.cafile:
        return ssl.create_default_context(cafile=options.cafile)
    return True


async def diagnose(options: Options) -> dict[str, Any]:
    """Run every probe at once and return the report (see ``--json``)."""
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
    report = {
        "url": options.url,
        "params": {
            "interval": options.interval,
            "duration": options.duration,
            "heartbeat": options.heartbeat,
        },
        "probes": [p.to_json() for p in probes],
        "summary": summarise(probes),
    }
    report["ok"] = all(p.verdict == "streaming" for p in probes if p.available) and any(
        p.available for p in probes
    )
    for probe in probes:
        log.event(
            "doctor.probe", endpoint=probe.endpoint, transport=probe.transport,
            verdict=probe.verdict, hop=probe.hop, ticks=len(probe.ticks),
        )  # fmt: skip
    return report


def summarise(probes: list[Probe]) -> list[str]:
    """Where the trouble is, comparing gate's endpoint (nginx → gate) with pploy's
    (nginx → gate → pploy)."""
    lines = []
    by_key = {(p.endpoint, p.transport): p for p in probes}
    if not any(p.available for p in probes):
        return ["no stream-test endpoint answered: is this a pploy or gate URL?"]
    if any(p.status in (401, 403) or (p.status or 0) // 100 == 3 for p in probes):
        lines.append(
            "authentication needed: sign in with a browser, copy gate's session cookie "
            "(_gate_session unless auth.session.cookie_name says otherwise) and pass "
            "--cookie _gate_session=VALUE"
        )
    for transport in TRANSPORTS:
        gate = by_key.get(("gate", transport))
        pploy = by_key.get(("pploy", transport))
        refused = {401, 403, 301, 302, 303, 307, 308}
        if any(p is not None and p.status in refused for p in (gate, pploy)):
            continue
        if gate and pploy and gate.available and pploy.available:
            if gate.verdict == "streaming" and pploy.verdict != "streaming":
                lines.append(
                    f"{transport}: gate's own stream is fine but pploy's is {pploy.verdict}: "
                    "the trouble is between gate and pploy, or in a proxy rule for pploy's "
                    "paths only"
                )
            elif gate.verdict != "streaming" and pploy.verdict == gate.verdict:
                lines.append(
                    f"{transport}: {gate.verdict} at gate's endpoint too: the hop in front of "
                    f"gate ({gate.hop or 'unknown'}) is the one to fix"
                )
            elif gate.verdict != "streaming" and pploy.verdict == "streaming":
                lines.append(
                    f"{transport}: only gate's endpoint is {gate.verdict}: a proxy rule for "
                    "/.gate/ paths differs from the rest"
                )
    if all(p.verdict == "streaming" for p in probes if p.available):
        lines.append("every transport streams: ticks arrived as they were sent")
    return lines


# -- output ---------------------------------------------------------------------------------


def render_text(report: dict[str, Any]) -> str:
    out = [f"pploy doctor {report['url']}"]
    params = report["params"]
    heartbeat = params["heartbeat"]
    out.append(
        f"  ticks every {params['interval'] * 1000:.0f} ms for {params['duration']:g} s"
        + (
            ""
            if heartbeat is None
            else f", heartbeat {heartbeat:g} s"
            if heartbeat
            else ", heartbeat off"
        )
    )
    current = None
    for probe in report["probes"]:
        if probe["endpoint"] != current:
            current = probe["endpoint"]
            base = probe["url"].split("?")[0]
            out.append("")
            out.append(f"{current}  {base}")
        verdict = probe["verdict"].upper() if probe["verdict"] != "streaming" else "streaming"
        out.append(f"  {probe['transport']:<10} {verdict:<11} {probe['detail']}")
        if probe["hop"]:
            headers = ", ".join(
                f"{k}: {v}" for k, v in probe["headers"].items() if k in ("Server", "Via")
            )
            out.append(
                f"  {'':<10} answered by {probe['hop']}" + (f" ({headers})" if headers else "")
            )
        if probe["ticks"]:
            times = _arrivals([round(t["at"] * 1000) for t in probe["ticks"]])
            out.append(f"  {'':<10} arrivals (ms): {times}")
        if probe["fix"]:
            out.append(f"  {'':<10} likely fix: {probe['fix']}")
    out.append("")
    for line in report["summary"]:
        out.append(f"=> {line}")
    return "\n".join(out)


def _arrivals(ms: list[int]) -> str:
    """Arrival times in ms; a batch of ticks that came together shows as ``3024×30``."""
    parts: list[str] = []
    i = 0
    while i < len(ms):
        j = i
        while j + 1 < len(ms) and ms[j + 1] - ms[i] <= 1:
            j += 1
        parts.append(f"{ms[i]}" if j == i else f"{ms[i]}×{j - i + 1}")
        i = j + 1
    return " ".join(parts)


def parse_cookie(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--cookie wants NAME=VALUE, not {text!r}")
    return name.strip(), value.strip()


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--header wants 'Name: value', not {text!r}")
    return name.strip(), value.strip()
