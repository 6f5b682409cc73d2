"""A real aiohttp upstream for proxy tests, with hooks the tests use to synchronise.

Streaming endpoints wait for the test to acknowledge each chunk before writing the next, so a
test proves a chunk crossed gate before the upstream produced the following one.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import WSMsgType, web


class RawUpstream:
    """An upstream on a bare asyncio server, for bytes aiohttp's server would never write: a
    subclass's ``handle`` answers each connection by hand."""

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = await asyncio.start_server(self.handle, sock=sock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class Upstream:
    def __init__(self) -> None:
        self.acks: asyncio.Queue[int] = asyncio.Queue()
        self.requests: list[dict[str, Any]] = []
        self.cancelled = asyncio.Event()
        self.hang_started = asyncio.Event()
        self.ws_closes: asyncio.Queue[tuple[int | None, str]] = asyncio.Queue()
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.port = 0

    def reset(self) -> None:
        self.acks = asyncio.Queue()
        self.cancelled = asyncio.Event()
        self.hang_started = asyncio.Event()
        self.ws_closes = asyncio.Queue()
        self.requests.clear()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/drip", self.drip)
        app.router.add_get("/sse", self.sse)
        app.router.add_get("/sized-drip", self.sized_drip)
        app.router.add_get("/hang", self.hang)
        app.router.add_get("/ws", self.ws_echo)
        app.router.add_get("/ws-bye", self.ws_bye)
        app.router.add_get("/ws-refuse", self.ws_refuse)
        app.router.add_post("/upload", self.upload)
        app.router.add_get("/fixed", self.fixed)
        app.router.add_get("/gzip", self.gzip)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        # handler_cancellation so /hang learns at once that gate hung up.
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self.runner, sock).start()
        self.url = f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def echo(self, request: web.Request) -> web.Response:
        record = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": (await request.read()).decode("utf-8", "replace"),
        }
        self.requests.append(record)
        return web.json_response(
            record,
            headers={
                "Connection": "keep-alive, X-Secret-Hop",
                "X-Secret-Hop": "1",
                "Keep-Alive": "timeout=5",
            },
        )

    async def drip(self, request: web.Request) -> web.StreamResponse:
        count = int(request.query.get("n", "5"))
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        for i in range(count):
            await response.write(f"line {i}\n".encode())
            # Wait until the test has seen this line through gate.
            got = await asyncio.wait_for(self.acks.get(), 10)
            assert got == i
        await response.write_eof()
        return response

    async def sized_drip(self, request: web.Request) -> web.StreamResponse:
        """A response with Content-Length whose body still arrives in pieces."""
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.content_length = 14
        await response.prepare(request)
        await response.write(b"part 0\n")
        assert await asyncio.wait_for(self.acks.get(), 10) == 0
        await response.write(b"part 1\n")
        await response.write_eof()
        return response

    async def sse(self, request: web.Request) -> web.StreamResponse:
        count = int(request.query.get("n", "4"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for i in range(count):
            await response.write(f"id: {i}\ndata: event {i}\n\n".encode())
            got = await asyncio.wait_for(self.acks.get(), 10)
            assert got == i
        return response

    async def hang(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first\n")
        self.hang_started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return response

    async def upload(self, request: web.Request) -> web.Response:
        total = 0
        chunks = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            chunks += 1
        return web.json_response({"bytes": total, "chunks": chunks})

    async def fixed(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1000, content_type="application/octet-stream")

    async def gzip(self, request: web.Request) -> web.Response:
        import gzip

        return web.Response(
            body=gzip.compress(b"hello " * 100),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    async def ws_echo(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False, protocols=("chat", "other"))
        await ws.prepare(request)
        self.requests.append({"headers": [[k, v] for k, v in request.headers.items()]})
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close-me":
                    await ws.close(code=4001, message=b"bye")
                    break
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(b"echo:" + msg.data)
            elif msg.type == WSMsgType.CLOSE:
                await self.ws_closes.put((msg.data, msg.extra or ""))
                await ws.close(code=msg.data or 1000)
                break
            else:
                await self.ws_closes.put((None, msg.type.name))
                break
        return ws

    async def ws_bye(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello")
        await ws.close(code=4001, message=b"bye")
        return ws

    async def ws_refuse(self, request: web.Request) -> web.Response:
        return web.Response(status=403, text="no websockets for you")
