"""Raw sockets for requests no well-behaved client would send."""

from __future__ import annotations

import asyncio
import base64
import os
import struct


async def raw_request(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` as is; return what the server answers before it closes (or the first
    response head, whichever comes first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        return head
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def status_of(head: bytes) -> int:
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


async def raw_websocket(
    port: int, path: str, headers: dict[str, str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a WebSocket by hand (so the test can then send frames a client library refuses)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert status_of(head) == 101, head
    return reader, writer


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0,
          length: int | None = None) -> bytes:  # fmt: skip
    """A WebSocket frame; ``length`` lies about the payload size when given."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    if n < 126:
        head = struct.pack("!BB", first, (0x80 if mask else 0) | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    stream = (key * (len(payload) // 4 + 1))[: len(payload)]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(
        len(payload), "big"
    )
    return head + key + masked


async def read_close(reader: asyncio.StreamReader, timeout: float = 10) -> int | str | None:
    """Read server frames until a CLOSE (its code), a text frame (``"text"``: the server took
    the frame as a message and answered it) or the end of the connection (None)."""

    async def run() -> int | str | None:
        while True:
            try:
                b1, b2 = await reader.readexactly(2)
            except (asyncio.IncompleteReadError, ConnectionResetError):
                return None
            n = b2 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            try:
                payload = await reader.readexactly(n)
            except (asyncio.IncompleteReadError, ConnectionResetError):
                return None
            if b1 & 0x0F == 0x1:
                return "text"
            if b1 & 0x0F == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    return await asyncio.wait_for(run(), timeout)
