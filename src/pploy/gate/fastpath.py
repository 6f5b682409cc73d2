"""gate's fast path: plain proxied requests answered without aiohttp's server and client.

Why: profiled under load (bench/README.md), aiohttp's server and client were over half of
gate's CPU per small proxied request, and gate needed twice the CPU of Go's
``httputil.ReverseProxy``. This front end parses request heads with httptools (llhttp, the
parser Node.js uses), hands each admitted request to a raw keep-alive upstream connection
(:mod:`pploy.gate.relay`) and lets the response flow from the upstream socket to the client's
with nothing in between. No library offers such a hop on asyncio, so it is written by hand —
but it decides nothing by itself: the guards (:mod:`pploy.gate.guards`), the routes, the upstream
headers (:func:`pploy.gate.forwarding.upstream_headers`), the response headers, the pages and the
request log (:mod:`pploy.gate.requestlog`) are the full server's own code.

What it serves: HTTP/1.1 requests without a body (no ``Transfer-Encoding``, ``Content-Length``
absent or 0), no ``Upgrade`` or ``Expect``, whose path is a proxy route to an ``http://``
upstream — after the Host guard, identity, restrictions, exactly as the full server orders them;
it answers their refusals too. Anything else is *handed over*: the connection, with every byte
received so far from the start of that request, goes to aiohttp's server, which serves it from
then on — gate's own endpoints (login, logout, metrics, JWKS, stream test), htdocs, 404s and
slash redirects, WebSockets, request bodies, ``https://`` upstreams, HTTP/1.0, and every head
that is unusual in any way (a parse error, a bare CR or LF, a folded line, a duplicated Host or
``Content-Length``, a line over 8190 bytes, a head over 16 KiB), so aiohttp's answers to
malformed input stay the only ones. Request framing cannot differ between the two: a request
the fast path serves ends exactly at its head's first empty line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from pploy import log
from pploy.gate import guards, requestlog
from pploy.gate import requestkeys as keys
from pploy.gate.core import Gate
from pploy.gate.endpoints import Endpoints
from pploy.gate.forwarding import upstream_headers
from pploy.gate.plan import Serve, plan
from pploy.gate.relay import Origin, Outcome, Pool, Relay, Result, head_bytes
from pploy.gate.routing import BadPath, Route, encode_path, parse_target

# aiohttp refuses these when sent twice; such a request is handed to it to refuse.
SINGLETON_HEADERS = frozenset(
    {
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "server",
        "transfer-encoding",
        "user-agent",
    }
)
MAX_HEAD = 16 * 1024
MAX_LINE = 8190  # aiohttp's limit for one request or header line
# Pipelined bytes kept while a request is being answered before the client is paused.
MAX_PENDING = 256 * 1024
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
# Methods whose request gets an explicit empty body (aiohttp's client sends the same).
EMPTY_BODY = frozenset({"POST", "PUT", "PATCH"})
GUARDS = (guards.host, *guards.BEFORE_PROXY)
# Requests for these are handed over as reason "route"; for gate's own endpoints, "endpoint".
ROUTE_REASONS = frozenset({Serve.SLASH_REDIRECT, Serve.STATIC, Serve.NOT_FOUND})


class FastRequest(dict[Any, Any]):
    """A request head the fast path parsed: what gate's rules read
    (:class:`pploy.gate.incoming.Incoming`), and, as a mapping, what they store on it."""

    __slots__ = (
        "method",
        "raw_path",
        "host",
        "headers",
        "remote",
        "secure",
        "keep_alive",
        "route",
        "origin",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
        remote: str | None,
        secure: bool,
        keep_alive: bool,
    ) -> None:
        super().__init__()
        self.method = method
        self.raw_path = raw_path
        self.host: str = headers.get("Host", "")
        self.headers = headers
        self.remote = remote
        self.secure = secure
        self.keep_alive = keep_alive
        self.route: Route | None = None
        self.origin: Origin | None = None


class _Head:
    """httptools callbacks for one request head."""

    __slots__ = ("url", "headers", "messages", "parser", "keep_alive", "version", "method")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.messages = 0
        self.parser: httptools.HttpRequestParser | None = None
        self.keep_alive = False
        self.version = ""
        self.method = b""

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        # Read now: llhttp forgets them once the message is complete.
        parser = self.parser
        assert parser is not None
        self.keep_alive = parser.should_keep_alive()
        self.version = parser.get_http_version()
        self.method = parser.get_method()

    def on_message_complete(self) -> None:
        self.messages += 1


class FastPath:
    """The fast path of one gate process: its rules, its upstream pool, its connections."""

    def __init__(
        self,
        gate: Gate,
        endpoints: Endpoints,
        full_server: Callable[[], asyncio.Protocol],
        idle_timeout: float,
    ) -> None:
        """``full_server``: aiohttp's protocol factory, to hand connections to;
        ``idle_timeout``: how long a client connection may go without a complete request
        head, from its opening or the end of its previous response (``head_timeout``)."""
        self.gate = gate
        self.idle_timeout = idle_timeout
        self.endpoints = endpoints
        self.static = gate.static is not None
        self.full_server = full_server
        self.pool = Pool(gate.config.upstream, gate.metrics)
        self.connections: set[FrontConnection] = set()
        self.origins: dict[str, Origin | None] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def protocol(self) -> FrontConnection:
        """The protocol factory for the listening socket."""
        return FrontConnection(self)

    def start(self) -> None:
        self.pool.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self, grace: float) -> None:
        """Stop: idle connections now, requests in progress after ``grace`` seconds."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        deadline = time.monotonic() + grace
        while any(c.task is not None for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close(abort=True)  # a stream never ends by itself, nor drains to a stuck client
        await self.pool.close()

    async def _sweep(self) -> None:
        """Close client connections without a complete request head for ``idle_timeout``
        since their opening or their last response, idle or in the middle of a head: bytes
        trickling in buy no time (slowloris), as on aiohttp's server."""
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout / 4))
            now = time.monotonic()
            for conn in [
                c for c in self.connections if c.task is None and now - c.last > self.idle_timeout
            ]:
                conn.close()

    # --- which requests are ours -------------------------------------------------------------

    def origin_of(self, route: Route) -> Origin | None:
        """The upstream origin of a route the fast path can reach (plain http), else None."""
        known = self.origins.get(route.dest_origin, False)
        if known is False:
            dest = route.dest_origin
            known = self.origins[dest] = Origin.parse(dest) if dest.startswith("http://") else None
        return known  # type: ignore[return-value]

    def admit(self, conn: FrontConnection, head: bytes) -> FastRequest | str:
        """The parsed request if the fast path serves it, else why it is handed over. Pure:
        no guard runs and nothing is logged here."""
        if len(head) > MAX_HEAD:
            return "large"
        lines = head.count(b"\r\n")
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            return "framing"  # a bare CR or LF: parsers disagree about those
        if b"\r\n " in head or b"\r\n\t" in head:
            return "framing"  # an obsolete folded header line
        sink = conn.sink
        sink.messages = 0
        try:
            conn.parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            return "upgrade"
        except httptools.HttpParserError:
            return "parse"
        if sink.messages != 1:
            return "body"  # the head announced a body (or held more than one request)
        if sink.version != "1.1":
            return "version"
        url = sink.url
        if not url.startswith(b"/"):
            return "target"
        headers: CIMultiDict[str] = CIMultiDict()
        seen: set[str] = set()
        for raw_name, raw_value in sink.headers:
            if len(raw_name) + len(raw_value) + 2 > MAX_LINE:
                return "large"
            name = raw_name.decode("utf-8", "surrogateescape")
            lower = name.lower()
            if lower in SINGLETON_HEADERS:
                if lower in seen:
                    return "duplicate"
                seen.add(lower)
            elif lower in ("upgrade", "expect"):
                return lower
            headers.add(name, raw_value.decode("utf-8", "surrogateescape"))
        if len(url) > MAX_LINE:
            return "large"
        if "host" not in seen:
            return "host"
        raw_path = url.decode("utf-8", "surrogateescape")
        try:
            target = parse_target(raw_path)
        except BadPath:
            return "target"
        request = FastRequest(
            sink.method.decode("ascii"),
            raw_path,
            CIMultiDictProxy(headers),
            conn.remote,
            conn.secure,
            sink.keep_alive,
        )
        serving = plan(
            self.gate.router, self.endpoints, self.static, request.host, target, websocket=False
        )
        route = serving.route
        if serving.serve is not Serve.PROXY or route is None:
            return "route" if serving.serve in ROUTE_REASONS else "endpoint"
        origin = self.origin_of(route)
        if origin is None:
            return "scheme"
        request[keys.TARGET] = target
        request[keys.PLAN] = serving
        request.route = route
        request.origin = origin
        return request

    # --- one request -------------------------------------------------------------------------

    async def exchange(self, conn: FrontConnection, request: FastRequest) -> None:
        """Guards, then the upstream; one request-log line whatever happens."""
        gate = self.gate
        request_id = requestlog.request_id(gate, request)
        started = time.monotonic()
        status, size, keep = 500, 0, request.keep_alive
        try:
            for guard in GUARDS:
                refused = await guard(gate, request)
                if refused is not None:
                    status, size = conn.respond(refused, request)
                    return
            status, size, keep = await self._forward(conn, request)
        except asyncio.CancelledError:
            status = request.get(keys.SENT_STATUS, 499)
            request[keys.ABORTED] = True
            keep = False
            raise
        except Exception as exc:  # a bug: answer like aiohttp would, and say so in the log
            log.event(
                "gate.fast_path.error",
                level="error",
                error=f"{type(exc).__name__}: {exc}",
                rid=request_id,
            )
            keep = False
            if request.get(keys.SENT_STATUS) is None:
                failure = web.Response(status=500, text="server error\n")
                status, size = conn.respond(failure, request)
        finally:
            gate.metrics.fast_path_requests += 1
            requestlog.finish(gate, request, status, size, time.monotonic() - started)
            conn.exchange_done(keep)

    async def _forward(self, conn: FrontConnection, request: FastRequest) -> tuple[int, int, bool]:
        """Send the request upstream and relay the answer: (status, body bytes, keep-alive)."""
        gate = self.gate
        route, origin = request.route, request.origin
        assert route is not None and origin is not None
        conf = route.conf
        request[keys.ROUTE] = route.label  # from here on, as the full server labels it
        headers = upstream_headers(
            gate,
            request,
            request[keys.PRINCIPAL],
            host=request.host if conf.preserve_host and request.host else None,
            websocket=False,
            audience=conf.assertion_audience,
            stripped=encode_path(route.prefix, False) if conf.strip_path else None,
        )
        path = route.upstream_url(request[keys.TARGET])[len(route.dest_origin) :]
        pairs = list(headers.items())
        if "Host" not in headers:
            pairs.insert(0, ("Host", origin.host_header))
        if request.method in EMPTY_BODY and "Content-Length" not in headers:
            pairs.append(("Content-Length", "0"))
        try:
            data = head_bytes(f"{request.method} {path} HTTP/1.1", pairs)
        except ValueError as exc:  # a CR or LF inside a value gate added
            page = gate.upstream.unavailable(request, route.label, exc)
            return *conn.respond(page, request), False
        head_only = request.method == "HEAD"
        for attempt in (1, 2):
            relay = self.pool.acquire(origin)
            if relay is None:
                try:
                    relay = await self.pool.connect(origin)
                except (TimeoutError, OSError) as exc:
                    page = gate.upstream.unavailable(request, route.label, exc)
                    return *conn.respond(page, request), request.keep_alive
            if conn.closed:
                self.pool.release(relay)
                raise asyncio.CancelledError
            result = await conn.relay_through(relay, data, head_only, request)
            if result.outcome is Outcome.RETRY and attempt == 1 and request.method in IDEMPOTENT:
                continue  # the pooled connection had been closed by the upstream meanwhile
            break
        outcome, status, size = result.outcome, result.status, result.body_bytes
        if outcome is Outcome.OK:
            request[keys.SENT_STATUS] = status
            return status, size, request.keep_alive
        if outcome is Outcome.CLIENT:
            request[keys.ABORTED] = True
            return (status or 499), size, False
        error = result.error or TimeoutError("the upstream was silent for upstream.idle_timeout")
        if outcome in (Outcome.UNAVAILABLE, Outcome.RETRY, Outcome.TIMEOUT):
            if outcome is Outcome.TIMEOUT:
                error = TimeoutError("the upstream sent no response within upstream.idle_timeout")
            page = gate.upstream.unavailable(request, route.label, error)
            return *conn.respond(page, request), request.keep_alive  # as the full server does
        # Headers are gone already: cut the client so a truncated body is never taken whole.
        kind = "idle_timeout" if outcome is Outcome.IDLE else "broken"
        gate.upstream.failed(request, route.label, kind, error)
        conn.close()
        return status, size, False


class FrontConnection(asyncio.Protocol):
    """One client connection, until it closes or is handed over to aiohttp's server."""

    def __init__(self, fast: FastPath) -> None:
        self.fast = fast
        self.sink = _Head()
        self.parser = httptools.HttpRequestParser(self.sink)
        self.sink.parser = self.parser
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.secure = False
        self.task: asyncio.Task[None] | None = None
        self.relay: Relay | None = None
        self.closed = False
        self.reading_paused = False
        self.writing_paused = False
        self.last = time.monotonic()  # the start of the wait for a complete head

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) and peer else None
        self.secure = transport.get_extra_info("sslcontext") is not None
        self.fast.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None:
            self._next()
        elif len(self.buffer) > MAX_PENDING and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> None:
        """The client stopped sending: it has left (aiohttp's server reads EOF the same way,
        cancelling what it was doing for the client). The transport closes."""
        self.closed = True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.fast.connections.discard(self)
        relay = self.relay
        if relay is not None:
            # Only while the relay still works for this client: once its response is
            # complete, the connection may already serve another client's request.
            if relay.client is self.transport:
                relay.client_gone()
        elif self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.relay is not None and self.relay.client is self.transport:
            self.relay.pause()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.relay is not None and self.relay.client is self.transport:
            self.relay.resume()

    # --- requests, one at a time -------------------------------------------------------------

    def _next(self) -> None:
        """Start on the next complete head in the buffer (if any)."""
        buffer = self.buffer
        if self.closed:
            return
        if not buffer:
            return
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD or b"\n\n" in buffer:
                self.handover("framing" if len(buffer) <= MAX_HEAD else "large")
            return
        head = bytes(buffer[: end + 4])
        admitted = self.fast.admit(self, head)
        if isinstance(admitted, str):
            self.handover(admitted)
            return
        del buffer[: end + 4]
        self.task = asyncio.get_running_loop().create_task(self.fast.exchange(self, admitted))

    def exchange_done(self, keep_alive: bool) -> None:
        self.task = None
        self.relay = None
        self.last = time.monotonic()
        if not keep_alive or self.closed:
            self.close()
            return
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        self._next()

    async def relay_through(
        self, relay: Relay, data: bytes, head_only: bool, request: FastRequest
    ) -> Result:
        """The upstream's response, relayed to this client (back-pressure both ways)."""
        assert self.transport is not None
        self.relay = relay
        done = relay.start(
            self.transport,
            data,
            head_only=head_only,
            request_id=request[keys.REQUEST_ID],
            closing=not request.keep_alive,
        )
        if self.writing_paused:
            relay.pause()
        try:
            return await done
        finally:
            self.relay = None

    def respond(self, response: web.StreamResponse, request: FastRequest) -> tuple[int, int]:
        """Write one of gate's own answers (a refusal, an error page): (status, body bytes)."""
        assert isinstance(response, web.Response)
        body = response.body if isinstance(response.body, bytes) else b""
        headers = CIMultiDict(response.headers)
        headers.setdefault("X-Request-Id", request[keys.REQUEST_ID])
        headers["Content-Length"] = str(len(body))
        for morsel in response.cookies.values():
            headers.add("Set-Cookie", morsel.output(header="")[1:])
        if not request.keep_alive:
            headers["Connection"] = "close"
        out = head_bytes(f"HTTP/1.1 {response.status} {response.reason}", headers.items())
        if request.method != "HEAD":
            out += body
        if self.transport is not None and not self.closed:
            self.transport.write(out)
        request[keys.SENT_STATUS] = response.status
        return response.status, len(body)

    def handover(self, reason: str) -> None:
        """From here on aiohttp's server serves this connection, starting with the bytes of
        the request the fast path did not take."""
        transport = self.transport
        if transport is None or self.closed:
            return
        self.fast.gate.metrics.handover(reason)
        self.fast.connections.discard(self)
        self.closed = True  # for this protocol: the connection lives on under aiohttp
        handler = self.fast.full_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        data, self.buffer = bytes(self.buffer), bytearray()
        if data:
            handler.data_received(data)
        if self.reading_paused:
            transport.resume_reading()

    def close(self, abort: bool = False) -> None:
        """Close the client connection (what was written is still sent), or ``abort`` it."""
        if self.transport is not None:
            if abort:
                self.transport.abort()
            elif not self.transport.is_closing():
                self.transport.close()
        self.closed = True
        self.fast.connections.discard(self)
