"""The fast path's upstream side: raw keep-alive connections that relay one response at a time
straight to the client's transport.

Written by hand for speed (see :mod:`pploy.gate.fastpath` for why): responses are parsed with
httptools (llhttp, the parser Node.js uses), and each batch of bytes read from the upstream
leaves for the client in one write — the head and a small body together, a streamed body piece
by piece as it arrives, never held back. A body the upstream sized with ``Content-Length`` is
passed with that length; a chunked or close-delimited one is re-framed as chunked for the client.

What a relay decides about headers is :func:`pploy.gate.headers.response_headers` (hop-by-hop
headers dropped) and :func:`pploy.gate.headers.streamed` (``X-Accel-Buffering: no``), the same
functions the full server's proxy uses. A slow client pauses reading from the upstream (TCP
back-pressure all the way); the upstream's silence is timed by one sweep per pool
(``upstream.idle_timeout``), never while the client is the one holding things up.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import cast

import httptools
from multidict import CIMultiDict
from yarl import URL

from pploy.gate.config import UpstreamConf
from pploy.gate.headers import response_headers, streamed
from pploy.gate.metrics import Metrics

NO_BODY_STATUSES = frozenset({204, 304})
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


class Relay(asyncio.Protocol):
    """One connection to an upstream, relaying one response at a time to a client transport."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.uses = 0  # responses relayed (or being relayed) on this connection
        self._reset(None, False, "")

    def _reset(
        self,
        client: asyncio.Transport | None,
        head_only: bool,
        request_id: str,
        closing: bool = False,
    ) -> None:
        self.client = client
        self.closing = closing  # the client connection closes after this response
        self.head_only = head_only  # a response to HEAD: headers only, whatever they say
        self.request_id = request_id
        self.done: asyncio.Future[Result] | None = None
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.status = 0
        self.interim = False
        self.head_built = False
        self.head_sent = False  # the head left for the client
        self.chunked = False  # re-framing the body as chunked for the client
        self.until_close = False  # the upstream's body ends when it closes the connection
        self.complete = False
        self.keep_alive = False  # read when the response completes (llhttp resets it then)
        self.streaming = False
        self.received = False
        self.body_bytes = 0
        self.out: list[bytes] = []
        self.last = math.inf
        self.paused = False
        self.error: BaseException | None = None

    # --- the exchange ------------------------------------------------------------------------

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
        assert self.transport is not None and self.done is None
        self._reset(client, head_only, request_id, closing)
        self.done = asyncio.get_running_loop().create_future()
        self.last = self.pool.clock()
        self.uses += 1
        self.pool.active.add(self)
        self.transport.write(request)
        return self.done

    def _finish(self, outcome: Outcome) -> None:
        done = self.done
        self.pool.active.discard(self)
        if done is None or done.done():
            return
        if self.out and outcome is Outcome.OK and self.client is not None:
            self.client.write(b"".join(self.out))
        self.out.clear()
        if self.streaming:
            self.streaming = False
            self.pool.metrics.open_streams -= 1
        self.client = None
        reusable = (
            outcome is Outcome.OK
            and not self.head_only
            and not self.until_close
            and not self.closed
            and self.keep_alive
        )
        if reusable:
            if self.paused:  # the client's buffer filled with the last bytes: not our concern
                self.paused = False
                assert self.transport is not None
                self.transport.resume_reading()
            self.done = None
            self.pool.release(self)
        else:
            self.close()
        done.set_result(Result(outcome, self.status, self.body_bytes, self.error))

    def client_gone(self) -> None:
        """The client hung up: drop this connection (the upstream learns at once)."""
        self.close()
        self._finish(Outcome.CLIENT)

    def pause(self) -> None:
        """The client's transport is full: stop reading the upstream until it drains."""
        if self.transport is not None and not self.paused:
            self.paused = True
            self.last = math.inf  # waiting on the client is not the upstream's silence
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.last = self.pool.clock()
            self.transport.resume_reading()

    def timed_out(self) -> None:
        """Silent for ``upstream.idle_timeout`` (called by the pool's sweep)."""
        self.close()
        self._finish(Outcome.IDLE if self.head_sent else Outcome.TIMEOUT)

    def close(self) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.done is None or self.done.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted again
            return
        self.received = True
        self.last = self.pool.clock() if not self.paused else math.inf
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete:
                # More after the response's end (a second head nobody asked for): the
                # response is relayed up to its end, and this connection never used again.
                self.close()
                self._finish(Outcome.OK)
                return
            # Malformed, or an upgrade (101) gate never asked for: this connection is done.
            self.error = exc
            self.close()
            self._finish(Outcome.BROKEN if self.head_sent else Outcome.UNAVAILABLE)
            return
        if self.complete:
            self._finish(Outcome.OK)
        elif self.out and self.client is not None:
            self.client.write(b"".join(self.out))
            self.out.clear()
            self.head_sent = self.head_built

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.done is None or self.done.done():
            return
        self.error = exc or ConnectionResetError("the upstream closed the connection")
        if not self.received and self.uses > 1:
            self._finish(Outcome.RETRY)
        elif not self.head_sent:
            self._finish(Outcome.UNAVAILABLE)
        elif self.until_close and exc is None:
            if self.chunked:
                self.out.append(b"0\r\n\r\n")
            self._finish(Outcome.OK)
        else:
            self._finish(Outcome.BROKEN)

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Unasked("the upstream sent another response nobody asked for")

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # An interim response (103 Early Hints…): not passed on; the real one follows.
            self.interim = True
            self.raw_headers.clear()
            self.reason = b""
            return
        self.status = status
        upstream = CIMultiDict(
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for n, v in self.raw_headers
        )
        headers = response_headers(upstream)
        has_body = not self.head_only and status not in NO_BODY_STATUSES
        if has_body:
            if "Content-Length" not in headers:  # as the client will see it: re-framed
                self.chunked = True
                self.until_close = "chunked" not in upstream.get("Transfer-Encoding", "").lower()
                headers.popall("Content-Length", None)
                headers["Transfer-Encoding"] = "chunked"
            if streamed(headers):
                headers.setdefault("X-Accel-Buffering", "no")
                self.streaming = True
        headers["X-Request-Id"] = self.request_id
        if self.closing:
            headers["Connection"] = "close"
        reason = self.reason.decode("latin-1") or _phrase(status)
        self.out.append(head_bytes(f"HTTP/1.1 {status} {reason}", headers.items()))
        self.head_built = True
        if self.streaming:
            self.pool.metrics.open_streams += 1
        if self.head_only:
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.body_bytes += len(body)
        if self.chunked:
            self.out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.complete:
            return
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True


class _Unasked(Exception):
    """Stops the parser at bytes after the end of the response asked for."""


def head_bytes(first_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A request or response head on the wire. A CR or LF inside a value would split it
    into headers (or messages) nobody wrote: ValueError, never sent."""
    lines = [first_line, *(f"{name}: {value}" for name, value in headers), "", ""]
    data = "\r\n".join(lines).encode("utf-8", "surrogateescape")
    breaks = len(lines) - 1
    if data.count(b"\n") != breaks or data.count(b"\r") != breaks:
        raise ValueError("a header value holds a line break")
    return data


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class Pool:
    """Idle upstream connections by origin (most recently used first), the relays in flight,
    and the sweep that enforces ``upstream.idle_timeout`` and the pool's keep-alive."""

    def __init__(self, conf: UpstreamConf, metrics: Metrics) -> None:
        self.conf = conf
        self.metrics = metrics
        self.idle: dict[Origin, list[Relay]] = {}
        self.active: set[Relay] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def clock(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._sweep())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for relays in list(self.idle.values()):
            for relay in list(relays):
                relay.close()
        for relay in list(self.active):
            relay.close()

    def acquire(self, origin: Origin) -> Relay | None:
        """The most recently used idle connection to ``origin``, or None."""
        relays = self.idle.get(origin)
        while relays:
            relay = relays.pop()
            if not relay.closed:
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
        relay.idle_since = self.clock()
        self.idle.setdefault(relay.origin, []).append(relay)

    def forget(self, relay: Relay) -> None:
        relays = self.idle.get(relay.origin)
        if relays and relay in relays:
            relays.remove(relay)

    async def _sweep(self) -> None:
        idle = self.conf.idle_timeout
        period = min(1.0, idle / 4) if idle else 1.0
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            if idle:
                for relay in [r for r in self.active if now - r.last > idle]:
                    relay.timed_out()
            for relays in self.idle.values():
                for relay in [r for r in relays if now - r.idle_since > POOL_KEEPALIVE]:
                    relay.close()
