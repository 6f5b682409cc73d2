"""A raw HTTP/1.1 client for gate's wire-level tests: requests written by hand, responses
read and checked byte by byte (framing included), every wait bounded."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field

from tests.gate.upstream import Upstream

WAIT = 5.0  # the bound on every wait for gate: a hang fails the test instead of stalling it


@dataclass
class Reply:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)  # the chunked framing as received

    def header(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} more than once: {values}"
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):  # noqa: ANN201
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        tokens = {t.strip().lower() for v in self.all("Connection") for t in v.split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" not in tokens
        return "close" in tokens


async def read_head(reader: asyncio.StreamReader) -> Reply:
    """Status line and headers; the body is left in the reader."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    lines = raw.decode("latin-1").split("\r\n")[:-2]
    version, status, *reason = lines[0].split(" ", 2)
    assert version in ("HTTP/1.0", "HTTP/1.1"), lines[0]
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        assert sep and name == name.strip(), f"malformed response header line {line!r}"
        headers.append((name, value.strip()))
    return Reply(version, int(status), reason[0] if reason else "", headers)


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked body (b"" for the last one, trailers consumed)."""
    size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), WAIT)
    size = int(size_line.split(b";", 1)[0].strip(), 16)
    if size == 0:
        while await asyncio.wait_for(reader.readuntil(b"\r\n"), WAIT) != b"\r\n":
            pass  # trailer fields
        return b""
    data = await asyncio.wait_for(reader.readexactly(size + 2), WAIT)
    assert data.endswith(b"\r\n"), "chunk data not followed by CRLF"
    return data[:-2]


async def read_body(reader: asyncio.StreamReader, reply: Reply, method: str) -> Reply:
    if method == "HEAD" or reply.status in (204, 304) or 100 <= reply.status < 200:
        return reply
    te = ",".join(reply.all("Transfer-Encoding")).lower()
    if te:
        assert te.strip() == "chunked", te
        assert reply.header("Content-Length") is None, "both Content-Length and chunked"
        while chunk := await read_chunk(reader):
            reply.chunks.append(chunk)
        reply.body = b"".join(reply.chunks)
    elif (length := reply.header("Content-Length")) is not None:
        reply.body = await asyncio.wait_for(reader.readexactly(int(length)), WAIT)
    else:
        assert reply.closes or reply.version == "HTTP/1.0", "no framing on a kept connection"
        reply.body = await asyncio.wait_for(reader.read(), WAIT)
    return reply


async def read_reply(reader: asyncio.StreamReader, method: str = "GET") -> Reply:
    return await read_body(reader, await read_head(reader), method)


async def read_until_closed(reader: asyncio.StreamReader) -> Reply | None:
    """The next response, or None when the peer closed the connection instead."""
    try:
        return await read_reply(reader)
    except asyncio.IncompleteReadError as exc:
        assert exc.partial == b"", f"a partial response: {exc.partial!r}"
        return None


async def at_eof(reader: asyncio.StreamReader) -> bytes:
    """What is left until the peer closes (bounded): b"" when it closed with nothing more."""
    return await asyncio.wait_for(reader.read(), WAIT)


class Conn:
    """One raw TCP connection to gate; requests are written by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, gate, limit: int = 2**16) -> Conn:  # noqa: ANN001
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, limit=limit)
        return cls(reader, writer, f"127.0.0.1:{gate.port}")

    def head(
        self,
        method: str,
        path: str,
        cookie: str | None = None,
        extra: str = "",
        version: str = "HTTP/1.1",
        host: str | None = None,
    ) -> bytes:
        text = f"{method} {path} {version}\r\nHost: {host or self.host}\r\n"
        if cookie:
            text += f"Cookie: {cookie}\r\n"
        return (text + extra + "\r\n").encode("latin-1")

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def get(self, path: str, cookie: str | None, extra: str = "", method: str = "GET"):  # noqa: ANN201
        await self.send(self.head(method, path, cookie, extra))
        return await read_reply(self.reader, method)

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), WAIT)
        except (ConnectionError, TimeoutError):
            pass


def header_map(record: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in record["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def paths_seen(upstream: Upstream) -> list[str]:
    return [r.get("raw_path", "") for r in upstream.requests]


def metric(text: str, name: str) -> float | None:
    """The sum of a metric's samples over all label sets; None when it is not rendered."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)$", line)
        if match:
            total += float(match.group(1))
            found = True
    return total if found else None
