"""Forwarding to upstreams: HTTP without buffering, and WebSockets with their close intact.

HTTP: each chunk the upstream sends is written to the client as soon as it arrives
(``iter_any``); there is no total timeout, only an idle one between reads; when the client goes
away (aiohttp cancels the handler), the upstream connection is closed at once.

Both open the upstream connection through one step (``connect``) that turns every failure into
the same answers (502/504 page, or a refused WebSocket's status); failures after the response
started are logged the same way and cut the client connection.

WebSocket: gate completes the upstream handshake first, so an upstream that refuses the upgrade
gets its status passed back and no tunnel is ever opened. A :class:`WebSocketBridge` then
relays messages both ways with two tasks reading with ``receive()`` (``async for`` would
swallow the CLOSE frame and its code), and the close code and reason are carried across; codes
that may not appear on the wire (1005, 1006, 1015) become 1000 or 1011.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol, TypeVar, cast

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.client_proto import ResponseHandler
from multidict import CIMultiDict
from yarl import URL

from pploy import log
from pploy.gate import requestkeys as keys
from pploy.gate.config import UpstreamConf
from pploy.gate.headers import response_head
from pploy.gate.incoming import Incoming
from pploy.gate.metrics import Metrics
from pploy.gate.pages import page
from pploy.gate.sweep import IdleSweep

CLOSE_TIMEOUT = 5.0

_Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
_Conn = TypeVar("_Conn", aiohttp.ClientResponse, aiohttp.ClientWebSocketResponse)


def wire_close_code(code: Any) -> int:
    """A close code that may be sent in a CLOSE frame (RFC 6455 §7.4)."""
    if not isinstance(code, int) or code in (0, 1005):
        return 1000
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return 1011


def _complete_small_body(upstream: aiohttp.ClientResponse, headers: CIMultiDict[str]) -> bool:
    length = headers.get("Content-Length", "")
    if not length.isdigit() or int(length) > 65536:
        return False
    if headers.get("Content-Type", "").lower().startswith("text/event-stream"):
        return False
    # End of body already seen, and nothing read yet: the whole body is in the buffer.
    return upstream.content.is_eof()


def _whole(
    upstream: aiohttp.ClientResponse, headers: CIMultiDict[str], body: bytes
) -> web.Response:
    response = web.Response(status=upstream.status, reason=upstream.reason, body=body)
    headers.popall("Content-Length", None)
    response.headers.extend(headers)
    return response


async def _request_body(request: web.Request) -> AsyncIterator[bytes]:
    """The client's body, passed on chunk by chunk (never read whole)."""
    async for chunk in request.content.iter_any():
        yield chunk


class Closable(Protocol):
    """A client connection gate can cut (a transport, or the fast path's connection)."""

    def close(self) -> None: ...


class _Upstream(ResponseHandler):
    """aiohttp's client protocol, but one that hangs up on bytes received while it sits idle
    in the pool: a late response nobody asked for (whole or in part) would otherwise be read
    by the next request on this connection as its own answer."""

    pooled = False

    def data_received(self, data: bytes) -> None:
        if self.pooled and data:
            self.force_close()
            if self.transport is not None:
                self.transport.close()
            return
        super().data_received(data)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector with :class:`_Upstream` connections, marked while in the pool; one
    that received anything meanwhile is closed, never handed to the next request. (aiohttp's
    own internals: pinned below aiohttp 4 by the dependency's bound.)"""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        factory = functools.partial(_Upstream, loop=self._loop)
        self._factory = cast("functools.partial[ResponseHandler]", factory)

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        protocol.pooled = True
        super()._release(key, protocol, should_close=should_close)

    async def _get(self, key: Any, traces: Any) -> Any:
        while True:
            connection = await super()._get(key, traces)
            protocol = connection.protocol if connection is not None else None
            if protocol is None or not protocol.should_close:
                if isinstance(protocol, _Upstream):
                    protocol.pooled = False
                return connection
            connection.close()  # type: ignore[union-attr]


class UpstreamProxy:
    """Holds the client session used for every upstream; one per gate process."""

    def __init__(self, conf: UpstreamConf, metrics: Metrics) -> None:
        self.conf = conf
        self.metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        # upstream.idle_timeout while streaming: an expired upstream is closed, and its
        # stream ends as an idle timeout.
        self.expired: set[aiohttp.ClientResponse] = set()
        self.sweep: IdleSweep[aiohttp.ClientResponse] = IdleSweep(conf.idle_timeout, self._expire)

    def _expire(self, upstream: aiohttp.ClientResponse) -> None:
        self.expired.add(upstream)
        upstream.close()

    async def start(self) -> None:
        # limit=0: no pool cap, or 100 long streams would block every other request.
        connector = _Connector(limit=0, limit_per_host=0, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None,
            sock_connect=self.conf.connect_timeout,
            sock_read=self.conf.idle_timeout or None,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        self.sweep.start()

    async def close(self) -> None:
        await self.sweep.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "UpstreamProxy.start() was not called"
        return self._session

    # --- failures, written once for HTTP and WebSocket ------------------------------------

    def failed(self, request: Incoming, route: str, kind: str, exc: BaseException) -> None:
        """Count and log an upstream failure (before or after the response started)."""
        self.metrics.upstream_error(route, kind)
        log.event(
            "gate.upstream.error",
            level="warning",
            route=route,
            kind=kind,
            error=f"{type(exc).__name__}: {exc}",
            rid=request.get(keys.REQUEST_ID),
        )

    def unavailable(self, request: Incoming, route: str, exc: BaseException) -> web.Response:
        """Nothing sent to the client yet: a 502 page (504 on a timeout)."""
        timeout = isinstance(exc, asyncio.TimeoutError)
        self.failed(request, route, "timeout" if timeout else "connect", exc)
        status = 504 if timeout else 502
        return page(
            status,
            "Upstream unavailable" if status == 502 else "Upstream timed out",
            message="The application behind gate is not answering. Try again shortly.",
            request_id=request.get(keys.REQUEST_ID),
        )

    def failure(
        self,
        request: Incoming,
        route: str,
        exc: BaseException,
        *,
        started: bool,
        idle: bool = False,
        client: Closable | None = None,
    ) -> web.Response | None:
        """An upstream failure, decided here for both front ends. Before the response's head
        left (not ``started``): the answer to send instead, a 502 page (504 on a timeout).
        After: counted as ``idle_timeout`` (``idle``: the upstream fell silent) or ``broken``,
        logged, and the ``client``'s connection cut so a truncated body is never mistaken for
        a complete one; None."""
        if not started:
            return self.unavailable(request, route, exc)
        self.failed(request, route, "idle_timeout" if idle else "broken", exc)
        if client is not None:
            client.close()
        return None

    def _refused(
        self, request: web.Request, route: str, exc: aiohttp.WSServerHandshakeError
    ) -> web.Response:
        """The upstream said no to a WebSocket (401, 403, 404…): say the same, open nothing."""
        self.metrics.upstream_error(route, "ws_refused")
        log.event(
            "gate.ws.refused",
            level="warning",
            route=route,
            status=exc.status,
            rid=request.get(keys.REQUEST_ID),
        )
        passed = {
            name: exc.headers[name]
            for name in ("WWW-Authenticate", "Location", "Retry-After")
            if exc.headers and name in exc.headers
        }
        return web.Response(
            status=exc.status if 300 <= exc.status <= 599 else 502,
            text=f"upstream refused the WebSocket: {exc.message}\n",
            headers=passed,
        )

    async def connect(
        self, request: web.Request, route: str, opening: Awaitable[_Conn]
    ) -> _Conn | web.Response:
        """The upstream connection step of both kinds: the opened connection, or the answer
        the client gets instead (502/504 page, or a refused WebSocket's status)."""
        try:
            return await opening
        except aiohttp.WSServerHandshakeError as exc:
            return self._refused(request, route, exc)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return self.unavailable(request, route, exc)

    # --- HTTP -------------------------------------------------------------------------------

    async def http(
        self, request: web.Request, url: str, headers: CIMultiDict[str], route: str
    ) -> web.StreamResponse:
        body = _request_body(request) if request.body_exists else None
        upstream = await self.connect(
            request,
            route,
            self.session.request(
                request.method,
                URL(url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
            ),
        )
        if isinstance(upstream, web.Response):
            return upstream
        finished = False
        try:
            out_headers, has_body, streaming = response_head(
                upstream.headers,
                upstream.status,
                head_only=request.method == "HEAD",
                request_id=request.get(keys.REQUEST_ID),
            )
            if has_body and _complete_small_body(upstream, out_headers):
                # The whole (small, sized) body has already arrived: send it with the headers
                # in one write. Nothing waits for this; it only coalesces what is here.
                try:
                    body_bytes = upstream.content.read_nowait()
                except aiohttp.ClientPayloadError as exc:
                    return self.unavailable(request, route, exc)
                if len(body_bytes) != int(out_headers["Content-Length"]):
                    return self.unavailable(request, route, ValueError("truncated body"))
                finished = True
                return _whole(upstream, out_headers, body_bytes)
            response = await self._stream(
                request, route, upstream, out_headers, has_body, streaming
            )
            finished = True
            return response
        finally:
            if finished:
                upstream.release()
            else:
                # Client gone, or upstream broken: drop the upstream connection now.
                upstream.close()

    async def _stream(
        self,
        request: web.Request,
        route: str,
        upstream: aiohttp.ClientResponse,
        out_headers: CIMultiDict[str],
        has_body: bool,
        streaming: bool,
    ) -> web.StreamResponse:
        """Each chunk to the client as soon as it arrives."""
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(out_headers)
        await response.prepare(request)
        request[keys.SENT_STATUS] = response.status
        sweep = self.sweep if has_body and self.sweep.limit else None
        if sweep is not None:
            # From here the sweep keeps the idle timeout, not a timer re-armed per chunk.
            connection = upstream.connection
            if connection is not None and connection.protocol is not None:
                connection.protocol.read_timeout = None
                connection.protocol.start_timeout()  # with no timeout: cancels the armed timer
            sweep.touch(upstream)
        if streaming:
            self.metrics.open_streams += 1
        sent = 0
        try:
            if sweep is not None:
                async for chunk in upstream.content.iter_any():
                    sweep.hold(upstream)  # writing to the client: not upstream silence
                    await response.write(chunk)
                    sent += len(chunk)
                    sweep.touch(upstream)
                if upstream in self.expired:
                    raise TimeoutError("the upstream was silent for upstream.idle_timeout")
            elif has_body:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                    sent += len(chunk)
            await response.write_eof()
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            # aiohttp's read timeout is a TimeoutError (and a ClientConnectionError).
            idle = isinstance(exc, TimeoutError) or upstream in self.expired
            self.failure(request, route, exc, started=True, idle=idle, client=request.transport)
            raise
        finally:
            request[keys.BODY_BYTES] = sent
            if streaming:
                self.metrics.open_streams -= 1
            if sweep is not None:
                sweep.forget(upstream)
                self.expired.discard(upstream)
        return response

    # --- WebSocket --------------------------------------------------------------------------

    async def websocket(
        self, request: web.Request, url: str, headers: CIMultiDict[str], route: str
    ) -> web.StreamResponse:
        protocols = [
            p.strip()
            for value in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in value.split(",")
            if p.strip()
        ]
        heartbeat = self.conf.websocket_heartbeat or None
        upstream = await self.connect(
            request,
            route,
            self.session.ws_connect(
                URL(url, encoded=True),
                headers=headers,
                protocols=protocols,
                autoclose=False,
                autoping=True,
                heartbeat=heartbeat,
                max_msg_size=self.conf.websocket_max_message,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
            ),
        )
        if isinstance(upstream, web.Response):
            return upstream
        client = web.WebSocketResponse(
            protocols=[upstream.protocol] if upstream.protocol else (),
            autoclose=False,
            autoping=True,
            heartbeat=heartbeat,
            max_msg_size=self.conf.websocket_max_message,
            timeout=CLOSE_TIMEOUT,
        )
        try:
            await client.prepare(request)
        except BaseException:
            await upstream.close(code=1011)
            raise
        request[keys.SENT_STATUS] = 101
        self.metrics.open_websockets += 1
        try:
            await WebSocketBridge(client, upstream, route, request.get(keys.REQUEST_ID)).run()
        finally:
            self.metrics.open_websockets -= 1
        return client


class WebSocketBridge:
    """Relays messages both ways between an accepted client socket and its upstream, then
    carries the first close (code and reason) to the other side and closes both."""

    def __init__(
        self,
        client: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        route: str,
        request_id: str | None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.route = route
        self.request_id = request_id

    async def run(self) -> None:
        client, upstream = self.client, self.upstream
        to_upstream = asyncio.create_task(_pump(client, upstream))
        to_client = asyncio.create_task(_pump(upstream, client))
        try:
            done, _ = await asyncio.wait(
                {to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED
            )
            first = to_client if to_client in done else to_upstream
            code, reason = first.result()
            for task in (to_upstream, to_client):
                task.cancel()
            await asyncio.gather(to_upstream, to_client, return_exceptions=True)
            source: _Socket = upstream if first is to_client else client
            other: _Socket = client if first is to_client else upstream
            wire = wire_close_code(code)
            message = reason.encode("utf-8")[:123] if wire == code else b""
            log.event(
                "gate.ws.close",
                route=self.route,
                by="upstream" if source is upstream else "client",
                code=code,
                sent=wire,
                rid=self.request_id,
            )
            # Shielded: the client hanging up right after its CLOSE must not cut our reply
            # to the upstream short.
            await asyncio.shield(
                asyncio.gather(_close(other, wire, message), _close(source, wire, message))
            )
        finally:
            for task in (to_upstream, to_client):
                task.cancel()
            if not upstream.closed:
                # The client left without a close (or the handler was cancelled).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(upstream.close(code=1001), CLOSE_TIMEOUT)


async def _close(ws: _Socket, code: int, message: bytes) -> None:
    if ws.closed:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=code, message=message), CLOSE_TIMEOUT)


async def _pump(source: _Socket, sink: _Socket) -> tuple[int, str]:
    """Relay messages until the source closes; return its close code and reason."""
    while True:
        msg = await source.receive()
        try:
            if msg.type == WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif msg.type == WSMsgType.CLOSE:
                return msg.data, msg.extra or ""
            elif msg.type == WSMsgType.ERROR:
                code = getattr(msg.data, "code", 1011)
                return (code if isinstance(code, int) else 1011), ""
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED):
                # The peer vanished without a CLOSE frame: abnormal closure.
                return 1006, ""
        except (ConnectionError, RuntimeError):
            # The sink is gone; whoever pumps the other way will see why.
            return 1011, ""
