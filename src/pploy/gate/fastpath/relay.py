"""The fast path's upstream side: raw keep-alive connections that relay one response at a time
straight to the client's transport.

Responses are parsed with httptools (llhttp, the parser Node.js uses), and each batch of
bytes read from the upstream leaves for the client in one write — the head and a small body
together, a streamed body piece by piece as it arrives, never held back. A body the upstream
sized with ``Content-Length`` is passed with that length; a chunked or close-delimited one is
re-framed as chunked for the client. What the head becomes is
:func:`pploy.gate.headers.response_head`, the full server's own rule.

One connection's life (:class:`Phase`)::

    IDLE ──start──▶ AWAITING_HEAD ──head──▶ HEAD_READY ──written──▶ RELAYING ──end──▶ COMPLETE
      ▲              │   (1xx: stays)          │ (HEAD: straight to COMPLETE)            │
      └──────────────┴── reusable: back to the pool ◀───────────────────────────────────┘
    any phase ──close / error / unasked bytes──▶ CLOSED

Bytes arriving while IDLE, or after COMPLETE within the same read (a second head nobody asked
for), are never relayed: the connection is closed and never used again. What one response
carries (its client, framing, counters) is a fresh :class:`_Response` per exchange.

A slow client pauses reading from the upstream (TCP back-pressure all the way); the upstream's
silence is timed by the pool's sweep (``upstream.idle_timeout``), never while the client is
the one holding things up.
"""

from __future__ import annotations

import asyncio
import http
from dataclasses import dataclass
from enum import Enum
from typing import cast

import httptools
from multidict import CIMultiDict
from yarl import URL

from pploy.gate.config import UpstreamConf
from pploy.gate.headers import head_bytes, response_head
from pploy.gate.metrics import Metrics
from pploy.gate.sweep import IdleSweep

# An idle pooled connection is closed after this long (aiohttp's connector default).
POOL_KEEPALIVE = 15.0


class Outcome(Enum):
    """How one relayed response ended."""

    OK = "ok"  # the whole response reached the client's transport
    RETRY = "retry"  # a reused connection died before any byte came back: safe to retry
    UNAVAILABLE = "unavailable"  # nothing sent to the client: answer 502
    TIMEOUT = "timeout"  # the upstream was silent before its headers: answer 504
    BROKEN = "broken"  # the upstream failed after the head was sent: cut the client
    IDLE = "idle"  # the upstream fell silent mid-body (upstream.idle_timeout): cut the client
    CLIENT = "client"  # the client went away


class Phase(Enum):
    """Where one upstream connection is in its life (see the module's diagram)."""

    IDLE = "idle"  # open, no request outstanding (in the pool, or just connected)
    AWAITING_HEAD = "awaiting_head"  # request sent; no final response head yet
    HEAD_READY = "head_ready"  # the client's head is built, not yet written
    RELAYING = "relaying"  # the head left for the client; the body follows
    COMPLETE = "complete"  # the response ended; the exchange finishes
    CLOSED = "closed"


# Every move a connection may make (anything else is a bug, and an AssertionError).
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.AWAITING_HEAD, Phase.CLOSED}),
    Phase.AWAITING_HEAD: frozenset({Phase.HEAD_READY, Phase.COMPLETE, Phase.CLOSED}),
    Phase.HEAD_READY: frozenset({Phase.RELAYING, Phase.COMPLETE, Phase.CLOSED}),
    Phase.RELAYING: frozenset({Phase.COMPLETE, Phase.CLOSED}),
    Phase.COMPLETE: frozenset({Phase.IDLE, Phase.CLOSED}),
    Phase.CLOSED: frozenset({Phase.CLOSED}),
}


@dataclass(frozen=True)
class Result:
    """What a relayed response came to. Read from here, never from the relay afterwards: a
    reusable connection serves the next request as soon as this one is complete."""

    outcome: Outcome
    status: int  # 0 when no head came
    body_bytes: int
    error: BaseException | None


@dataclass(frozen=True)
class Origin:
    """Where an upstream is: the pool's key, and the Host header a request to it carries."""

    host: str
    port: int
    host_header: str

    @classmethod
    def parse(cls, origin: str) -> Origin:
        url = URL(origin)
        assert url.host is not None and url.port is not None, origin
        return cls(url.host, url.port, url.host_port_subcomponent or url.host)


class _Unasked(Exception):
    """Stops the parser at bytes after the end of the response asked for."""


class _Response:
    """One exchange's response: who gets it, how it is framed, what has come of it."""

    __slots__ = (
        "client",
        "head_only",
        "closing",
        "request_id",
        "done",
        "raw_headers",
        "reason",
        "status",
        "chunked",
        "until_close",
        "keep_alive",
        "streaming",
        "received",
        "body_bytes",
        "out",
        "error",
    )

    def __init__(
        self,
        client: asyncio.Transport,
        done: asyncio.Future[Result],
        *,
        head_only: bool,
        closing: bool,
        request_id: str,
    ) -> None:
        self.client: asyncio.Transport | None = client
        self.done = done
        self.head_only = head_only  # a response to HEAD: headers only, whatever they say
        self.closing = closing  # the client connection closes after this response
        self.request_id = request_id
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.status = 0
        self.chunked = False  # re-framing the body as chunked for the client
        self.until_close = False  # the upstream's body ends when it closes the connection
        self.keep_alive = False  # read when the response completes (llhttp resets it then)
        self.streaming = False  # counted in gate_open_streams
        self.received = False  # any byte came back
        self.body_bytes = 0
        self.out: list[bytes] = []  # for the client, written at the end of each read
        self.error: BaseException | None = None


class Relay(asyncio.Protocol):
    """One connection to an upstream, relaying one response at a time to a client transport."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.phase = Phase.IDLE
        self.response: _Response | None = None
        self.paused = False  # reading paused: the client's transport is full
        self.uses = 0  # responses relayed (or being relayed) on this connection

    def _to(self, phase: Phase) -> None:
        assert phase in TRANSITIONS[self.phase], f"{self.phase} -> {phase}"
        self.phase = phase

    # --- the exchange ------------------------------------------------------------------------

    @property
    def client(self) -> asyncio.Transport | None:
        """The client transport this connection relays to now, if any."""
        response = self.response
        return response.client if response is not None else None

    def start(
        self,
        client: asyncio.Transport,
        request: bytes,
        *,
        head_only: bool,
        request_id: str,
        closing: bool,
    ) -> asyncio.Future[Result]:
        """Send ``request`` and relay its response to ``client``; the future resolves when the
        response has ended one way or another. ``closing``: tell the client that its
        connection closes after this response."""
        assert self.transport is not None and self.phase is Phase.IDLE, self.phase
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.response = _Response(
            client, done, head_only=head_only, closing=closing, request_id=request_id
        )
        self._to(Phase.AWAITING_HEAD)
        self.uses += 1
        self.pool.active.touch(self)
        self.transport.write(request)
        return done

    def _finish(self, outcome: Outcome) -> None:
        """The exchange is over: back to the pool (IDLE) when reusable, else CLOSED."""
        response = self.response
        self.pool.active.forget(self)
        if response is None:
            return
        self.response = None
        if response.out and outcome is Outcome.OK and response.client is not None:
            response.client.write(b"".join(response.out))
        if response.streaming:
            self.pool.metrics.open_streams -= 1
        reusable = (
            outcome is Outcome.OK
            and self.phase is Phase.COMPLETE
            and not response.head_only
            and not response.until_close
            and response.keep_alive
        )
        if reusable:
            if self.paused:  # the client's buffer filled with the last bytes: not our concern
                self.paused = False
                assert self.transport is not None
                self.transport.resume_reading()
            self._to(Phase.IDLE)
            self.pool.release(self)
        else:
            self.close()
        if not response.done.done():
            response.done.set_result(
                Result(outcome, response.status, response.body_bytes, response.error)
            )

    def client_gone(self) -> None:
        """The client hung up: drop this connection (the upstream learns at once)."""
        self.close()
        self._finish(Outcome.CLIENT)

    def pause(self) -> None:
        """The client's transport is full: stop reading the upstream until it drains."""
        if self.transport is not None and not self.paused:
            self.paused = True
            self.pool.active.hold(self)  # waiting on the client is not the upstream's silence
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            if self.response is not None:
                self.pool.active.touch(self)
            self.transport.resume_reading()

    def timed_out(self) -> None:
        """Silent for ``upstream.idle_timeout`` (called by the pool's sweep)."""
        started = self.phase in (Phase.HEAD_READY, Phase.RELAYING)
        self.close()
        self._finish(Outcome.IDLE if started else Outcome.TIMEOUT)

    def close(self) -> None:
        self._to(Phase.CLOSED)
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            self.close()  # bytes nobody asked for: this connection cannot be trusted again
            return
        response.received = True
        if not self.paused:
            self.pool.active.touch(self)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.phase is Phase.COMPLETE:
                # More after the response's end (a second head nobody asked for): the
                # response is relayed up to its end, and this connection never used again.
                response.keep_alive = False
                self._finish(Outcome.OK)
                return
            # Malformed, or an upgrade (101) gate never asked for: this connection is done.
            response.error = exc
            started = self.phase is Phase.RELAYING
            self.close()
            self._finish(Outcome.BROKEN if started else Outcome.UNAVAILABLE)
            return
        if self.phase is Phase.COMPLETE:
            self._finish(Outcome.OK)
        elif response.out and response.client is not None:
            response.client.write(b"".join(response.out))
            response.out.clear()
            if self.phase is Phase.HEAD_READY:
                self._to(Phase.RELAYING)

    def connection_lost(self, exc: BaseException | None) -> None:
        phase = self.phase
        self.pool.forget(self)
        response = self.response
        if response is None:
            self._to(Phase.CLOSED)
            return
        response.error = exc or ConnectionResetError("the upstream closed the connection")
        if phase is Phase.AWAITING_HEAD and not response.received and self.uses > 1:
            self._finish(Outcome.RETRY)
        elif phase in (Phase.AWAITING_HEAD, Phase.HEAD_READY):
            self._finish(Outcome.UNAVAILABLE)
        elif phase is Phase.RELAYING and response.until_close and exc is None:
            if response.chunked:
                response.out.append(b"0\r\n\r\n")
            self._to(Phase.COMPLETE)
            self._finish(Outcome.OK)
        else:
            self._finish(Outcome.BROKEN)

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.phase is Phase.COMPLETE:
            raise _Unasked("the upstream sent another response nobody asked for")

    def on_status(self, reason: bytes) -> None:
        assert self.response is not None
        self.response.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # An interim response (103 Early Hints…): not passed on; the real one follows.
            response.raw_headers.clear()
            response.reason = b""
            return
        response.status = status
        upstream = CIMultiDict(
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for n, v in response.raw_headers
        )
        headers, has_body, streaming = response_head(
            upstream, status, head_only=response.head_only, request_id=response.request_id
        )
        if has_body and "Content-Length" not in headers:  # as the client will see it
            response.chunked = True
            te = upstream.get("Transfer-Encoding", "").lower()
            response.until_close = "chunked" not in te
            headers["Transfer-Encoding"] = "chunked"
        if response.closing:
            headers["Connection"] = "close"
        reason = response.reason.decode("latin-1") or _phrase(status)
        response.out.append(head_bytes(f"HTTP/1.1 {status} {reason}", headers.items()))
        if streaming:
            response.streaming = True
            self.pool.metrics.open_streams += 1
        self._to(Phase.COMPLETE if response.head_only else Phase.HEAD_READY)

    def on_body(self, body: bytes) -> None:
        response = self.response
        assert response is not None
        if self.phase is Phase.COMPLETE:
            return  # a HEAD response's announced body: not relayed
        response.body_bytes += len(body)
        if response.chunked:
            response.out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            response.out.append(body)

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        if self.phase is Phase.AWAITING_HEAD:
            return  # the end of an interim response
        if self.phase is Phase.COMPLETE:
            return
        if response.chunked:
            response.out.append(b"0\r\n\r\n")
        response.keep_alive = self.parser.should_keep_alive()
        self._to(Phase.COMPLETE)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class Pool:
    """Idle upstream connections by origin (most recently used first), the relays in flight,
    and the two sweeps: ``upstream.idle_timeout`` for relays in flight, the pool's keep-alive
    for idle ones."""

    def __init__(self, conf: UpstreamConf, metrics: Metrics) -> None:
        self.conf = conf
        self.metrics = metrics
        self.idle: dict[Origin, list[Relay]] = {}
        self.active: IdleSweep[Relay] = IdleSweep(conf.idle_timeout, Relay.timed_out)
        self.keepalive: IdleSweep[Relay] = IdleSweep(POOL_KEEPALIVE, Relay.close)

    def start(self) -> None:
        self.active.start()
        self.keepalive.start()

    async def close(self) -> None:
        await self.active.stop()
        await self.keepalive.stop()
        for relays in list(self.idle.values()):
            for relay in list(relays):
                relay.close()
        for relay in list(self.active.since):
            relay.close()

    def acquire(self, origin: Origin) -> Relay | None:
        """The most recently used idle connection to ``origin``, or None."""
        relays = self.idle.get(origin)
        while relays:
            relay = relays.pop()
            self.keepalive.forget(relay)
            if relay.phase is Phase.IDLE:
                return relay
        return None

    async def connect(self, origin: Origin) -> Relay:
        """A new connection (``upstream.connect_timeout``: TimeoutError; refused: OSError)."""
        loop = asyncio.get_running_loop()
        _, relay = await asyncio.wait_for(
            loop.create_connection(lambda: Relay(self, origin), origin.host, origin.port),
            self.conf.connect_timeout or None,
        )
        return relay

    def release(self, relay: Relay) -> None:
        self.keepalive.touch(relay)
        self.idle.setdefault(relay.origin, []).append(relay)

    def forget(self, relay: Relay) -> None:
        self.keepalive.forget(relay)
        relays = self.idle.get(relay.origin)
        if relays and relay in relays:
            relays.remove(relay)
