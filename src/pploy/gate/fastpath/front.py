"""The fast path's client side: request heads off the socket, each admitted request through the
guards to a relay (:mod:`pploy.gate.fastpath.relay`), anything else handed to aiohttp's server.
The contract is in :mod:`pploy.gate.fastpath`.

One client connection's life (:class:`Stage`)::

    HEAD ──complete head, admitted──▶ EXCHANGE ──answered, keep-alive──▶ HEAD …
     │  └─ head_timeout ─▶ CLOSED        └──── closing, cut, client gone ──▶ CLOSED
     └── anything not ours ──▶ HANDED_OVER (aiohttp's server serves the connection from here)

Reading and writing may be paused besides (back-pressure), in any stage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import Enum
from typing import Any, cast

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from pploy import log
from pploy.gate import guards, requestlog
from pploy.gate import requestkeys as keys
from pploy.gate.core import Gate
from pploy.gate.endpoints import Endpoints
from pploy.gate.fastpath.relay import Origin, Outcome, Pool, Relay, Result
from pploy.gate.forwarding import upstream_request
from pploy.gate.headers import head_bytes
from pploy.gate.plan import Serve, plan
from pploy.gate.routing import BadPath, Route, parse_target
from pploy.gate.sweep import IdleSweep

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


class Stage(Enum):
    """Where one client connection is in its life (see the module's diagram)."""

    HEAD = "head"  # waiting for (the rest of) a request head, within head_timeout
    EXCHANGE = "exchange"  # a request is being answered
    HANDED_OVER = "handed_over"  # aiohttp's server owns the connection now
    CLOSED = "closed"


# Every move a client connection may make (anything else is a bug, and an AssertionError).
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.HEAD: frozenset({Stage.EXCHANGE, Stage.HANDED_OVER, Stage.CLOSED}),
    Stage.EXCHANGE: frozenset({Stage.HEAD, Stage.CLOSED}),
    Stage.HANDED_OVER: frozenset(),
    Stage.CLOSED: frozenset(),
}


class FastPath:
    """The fast path of one gate process: its rules, its upstream pool, its connections."""

    def __init__(
        self,
        gate: Gate,
        endpoints: Endpoints,
        full_server: Callable[[], asyncio.Protocol],
        head_timeout: float,
    ) -> None:
        """``full_server``: aiohttp's protocol factory, to hand connections to;
        ``head_timeout``: how long a client connection may go without a complete request
        head, from its opening or the end of its previous response."""
        self.gate = gate
        self.endpoints = endpoints
        self.static = gate.static is not None
        self.full_server = full_server
        self.pool = Pool(gate.config.upstream, gate.metrics)
        self.connections: set[FrontConnection] = set()
        # Connections in Stage.HEAD, timed: bytes trickling in buy no time (slowloris).
        self.heads: IdleSweep[FrontConnection] = IdleSweep(head_timeout, FrontConnection.close)
        self.origins: dict[str, Origin | None] = {}

    def protocol(self) -> FrontConnection:
        """The protocol factory for the listening socket."""
        return FrontConnection(self)

    def start(self) -> None:
        self.pool.start()
        self.heads.start()

    async def close(self, grace: float) -> None:
        """Stop: idle connections now, requests in progress after ``grace`` seconds."""
        await self.heads.stop()
        for conn in list(self.connections):
            if conn.stage is Stage.HEAD:
                conn.close()
        deadline = time.monotonic() + grace
        busy = Stage.EXCHANGE
        while any(c.stage is busy for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close(abort=True)  # a stream never ends by itself, nor drains to a stuck client
        await self.pool.close()

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
        keep = request.keep_alive
        with requestlog.Exchange(gate, request) as record:
            try:
                for guard in GUARDS:
                    refused = await guard(gate, request)
                    if refused is not None:
                        record.status, record.size = conn.respond(refused, request)
                        return
                record.status, record.size, keep = await self._forward(conn, request)
            except asyncio.CancelledError:
                keep = False
                raise
            except Exception as exc:  # a bug: answer like aiohttp would, and say so in the log
                log.event(
                    "gate.fast_path.error",
                    level="error",
                    error=f"{type(exc).__name__}: {exc}",
                    rid=record.id,
                )
                keep = False
                if request.get(keys.SENT_STATUS) is None:
                    failure = web.Response(status=500, text="server error\n")
                    record.status, record.size = conn.respond(failure, request)
            finally:
                gate.metrics.fast_path_requests += 1
                conn.exchange_done(keep)

    async def _forward(self, conn: FrontConnection, request: FastRequest) -> tuple[int, int, bool]:
        """Send the request upstream and relay the answer: (status, body bytes, keep-alive)."""
        gate = self.gate
        route, origin = request.route, request.origin
        assert route is not None and origin is not None
        url, headers = upstream_request(gate, request, route, websocket=False)
        path = url[len(route.dest_origin) :]
        pairs = list(headers.items())
        if "Host" not in headers:
            pairs.insert(0, ("Host", origin.host_header))
        if request.method in EMPTY_BODY and "Content-Length" not in headers:
            pairs.append(("Content-Length", "0"))  # as aiohttp's client sends it
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
        error = result.error
        if outcome is Outcome.TIMEOUT:
            error = TimeoutError("the upstream sent no response within upstream.idle_timeout")
        elif outcome is Outcome.IDLE:
            error = TimeoutError("the upstream was silent for upstream.idle_timeout")
        started = outcome in (Outcome.BROKEN, Outcome.IDLE)
        answer = gate.upstream.failure(
            request,
            route.label,
            error or ConnectionResetError("the upstream failed"),
            started=started,
            idle=outcome is Outcome.IDLE,
            client=conn,
        )
        if answer is not None:  # as the full server does
            return *conn.respond(answer, request), request.keep_alive
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
        self.stage = Stage.HEAD
        self.task: asyncio.Task[None] | None = None  # in Stage.EXCHANGE
        self.relay: Relay | None = None  # while the exchange relays a response
        self.reading_paused = False
        self.writing_paused = False

    def _to(self, stage: Stage) -> None:
        assert stage in TRANSITIONS[self.stage], f"{self.stage} -> {stage}"
        self.stage = stage

    @property
    def closed(self) -> bool:
        """This protocol no longer serves the connection (closed, or aiohttp's server does)."""
        return self.stage is Stage.CLOSED or self.stage is Stage.HANDED_OVER

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) and peer else None
        self.secure = transport.get_extra_info("sslcontext") is not None
        self.fast.connections.add(self)
        self.fast.heads.touch(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.stage is Stage.HEAD:
            self._next()
        elif len(self.buffer) > MAX_PENDING and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> None:
        """The client stopped sending: it has left (aiohttp's server reads EOF the same way,
        cancelling what it was doing for the client). The transport closes."""
        self._end()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._end()
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
        """In Stage.HEAD: start on the next complete head in the buffer (if any)."""
        buffer = self.buffer
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
        self._to(Stage.EXCHANGE)
        self.fast.heads.forget(self)
        self.task = asyncio.get_running_loop().create_task(self.fast.exchange(self, admitted))

    def exchange_done(self, keep_alive: bool) -> None:
        """Stage.EXCHANGE is over: back to Stage.HEAD for the next request, or closed."""
        self.task = None
        self.relay = None
        if not keep_alive or self.stage is not Stage.EXCHANGE:
            self.close()
            return
        self._to(Stage.HEAD)
        self.fast.heads.touch(self)
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
        self._end(Stage.HANDED_OVER)  # the connection lives on under aiohttp
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
        self._end()

    def _end(self, stage: Stage = Stage.CLOSED) -> None:
        """This protocol is done with the connection: ``stage`` CLOSED or HANDED_OVER."""
        if not self.closed:
            self._to(stage)
        self.fast.connections.discard(self)
        self.fast.heads.forget(self)
