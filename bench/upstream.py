"""The plain upstream the proxy benchmarks put behind gate, nginx and a bare aiohttp proxy.

    python -m bench.upstream PORT                  # the upstream itself
    python -m bench.upstream PORT --proxy-to URL   # a bare aiohttp proxy (the floor for gate)

Routes: ``/small`` (a few bytes), ``/bytes?n=N`` (N bytes, Content-Length, 64 KiB writes),
``/echo`` (a WebSocket that sends every message back).
"""

from __future__ import annotations

import argparse
import logging

import aiohttp
from aiohttp import web

CHUNK = b"x" * 65536


async def small(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def many_bytes(request: web.Request) -> web.StreamResponse:
    total = int(request.query.get("n", "1000000"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = total
    await response.prepare(request)
    left = total
    while left > 0:
        piece = CHUNK if left >= len(CHUNK) else CHUNK[:left]
        await response.write(piece)
        left -= len(piece)
    await response.write_eof()
    return response


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=1 << 22)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def upstream_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/bytes", many_bytes)
    app.router.add_get("/echo", echo)
    return app


def bare_proxy_app(target: str) -> web.Application:
    """The least an aiohttp reverse proxy does: one client session, stream the body back.
    No authentication, header cleaning or logging: what gate costs on top of aiohttp."""
    state: dict[str, aiohttp.ClientSession] = {}

    async def start(_app: web.Application) -> None:
        state["http"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
        )

    async def stop(_app: web.Application) -> None:
        await state["http"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        async with state["http"].get(target + request.path_qs) as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--proxy-to", help="run a bare proxy to this base URL instead")
    args = parser.parse_args()
    # wrk hangs up mid-request when its time is up; that is not worth a traceback.
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    app = bare_proxy_app(args.proxy_to) if args.proxy_to else upstream_app()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
