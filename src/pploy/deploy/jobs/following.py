"""Following a job's log: the durable file plus the live edge in memory.

A job's output is appended to its log file as it arrives. Viewers follow by byte offset: a
viewer at the live edge is served from an in-memory tail, one catching up reads the file.
The job never waits for a viewer, and a slow viewer only holds the chunk it is sending, so
memory stays bounded whatever the viewers do. Every transport (raw, SSE, WebSocket) is a view
of :func:`follow`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READ_CHUNK = 64 * 1024
TRUNCATED_NOTICE = "\x1b[1;33m[pploy] the log reached its maximum size ({limit} bytes); output after this point is not kept (the job goes on)\x1b[0m\n"  # noqa: E501
# Room at the end of a full log kept for pploy's own lines (the notice above, who cancelled,
# the closing line with the job's status), so a log cut at its limit still says how it ended.
NOTE_RESERVE = 4096


def note_reserve(max_bytes: int) -> int:
    """The bytes of ``max_bytes`` kept for pploy's lines (a quarter of a small limit)."""
    return min(NOTE_RESERVE, max_bytes // 4)


class LogWriteError(Exception):
    """The log file could not be written (disk full, I/O error)."""


@dataclass
class FollowItem:
    """A piece of log (``data`` ending at byte ``offset``) or, last, the job's final status."""

    data: bytes
    offset: int
    status: dict[str, Any] | None = None


class LogBuffer:
    """One job's log: appended by the job, read by any number of followers."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 1 << 30,
        memory_bytes: int = 1 << 20,
        writable: bool = True,
    ) -> None:
        self.path = path
        # Called with (offset, bytes) after each write: with a shared database, this ships the
        # log to the other instances (see sharedlog.LogShipper).
        self.on_write: Callable[[int, bytes], None] | None = None
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes
        self.size = 0
        self.truncated = False
        self._last_byte = b"\n"
        self.status: dict[str, Any] | None = None
        self._tail = bytearray()
        self._tail_start = 0
        self._more = asyncio.Event()
        # Transports' encodings of recent pieces, shared by the viewers at the live edge:
        # they all read the same range after a wake-up, so it is encoded once, not per viewer.
        self.encoded: dict[tuple[str, int, int], bytes] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._tick_interval = float("inf")
        self._fd = -1
        if writable:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    @property
    def closed(self) -> bool:
        return self.status is not None

    def append(self, data: bytes) -> None:
        """Write the job's output to the file and the memory tail, then wake the followers.

        Output stops at ``max_bytes`` less the room kept for pploy's own lines (see
        :meth:`append_note`). Raises LogWriteError when the disk refuses it; the caller
        decides the job's fate."""
        if not data or self.closed or self.truncated:
            return
        room = self.max_bytes - note_reserve(self.max_bytes) - self.size
        if len(data) > room:
            self._write(data[: max(room, 0)])
            self.truncated = True
            self.append_note(TRUNCATED_NOTICE.format(limit=self.max_bytes).encode())
            return
        self._write(data)

    def append_note(self, line: bytes) -> None:
        """Write one of pploy's own lines: always at the start of a line, and into the room
        kept for them once the output has filled the log (cut only at ``max_bytes``)."""
        if not line or self.closed:
            return
        if self.size and self._last_byte != b"\n":
            line = b"\n" + line
        self._write(line[: max(self.max_bytes - self.size, 0)])

    def _write(self, data: bytes) -> None:
        start = self.size
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as exc:
                raise LogWriteError(f"cannot write the log {self.path}: {exc.strerror}") from exc
            self._keep(view[:written])
            view = view[written:]
        if data:
            self._last_byte = data[-1:]
            if self.on_write is not None:
                self.on_write(start, bytes(data))
            self._wake()

    def _keep(self, data: memoryview) -> None:
        self._tail += data
        self.size += len(data)
        excess = len(self._tail) - self.memory_bytes
        if excess > self.memory_bytes // 2:  # trim in large steps: amortised O(1) per byte
            del self._tail[:excess]
            self._tail_start += excess

    def _wake(self) -> None:
        self._more.set()
        self._more = asyncio.Event()

    def encode_once(self, key: tuple[str, int, int], encode: Callable[[], bytes]) -> bytes:
        """``encode()``'s result for ``key`` (transport, start, end), computed once."""
        found = self.encoded.get(key)
        if found is None:
            if len(self.encoded) >= 16:
                self.encoded.clear()
            found = self.encoded[key] = encode()
        return found

    def finish(self, status: dict[str, Any]) -> None:
        """Mark the end of the log with the job's final status; followers drain and stop."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.status = status
        if self._ticker is not None:
            self._ticker.cancel()
        self._wake()

    async def read(self, offset: int, limit: int = READ_CHUNK) -> bytes:
        """Up to ``limit`` bytes from ``offset``: from memory at the live edge, else the file."""
        if offset >= self.size:
            return b""
        if offset >= self._tail_start:
            start = offset - self._tail_start
            return bytes(self._tail[start : start + limit])
        end = min(self._tail_start, offset + limit)
        return await asyncio.to_thread(read_file_range, self.path, offset, end - offset)

    async def wait_beyond(self, offset: int, heartbeat: float | None = None) -> bool:
        """Wait until the log is longer than ``offset`` or finished (True), or, with
        ``heartbeat``, until the buffer's next heartbeat tick (False)."""
        while not (self.size > offset or self.closed):
            if heartbeat is not None:
                self._tick_every(heartbeat)
            await self._more.wait()
            if heartbeat is not None and not (self.size > offset or self.closed):
                return False
        return True

    def _tick_every(self, interval: float) -> None:
        """One heartbeat timer per job, not one per viewer: with 1,000 viewers, arming and
        cancelling a timer around every wait cost more than the waits themselves."""
        if self._ticker is not None and not self._ticker.done():
            if self._tick_interval <= interval:
                return
            self._ticker.cancel()
        self._tick_interval = interval
        self._ticker = asyncio.get_running_loop().create_task(self._tick(interval))

    async def _tick(self, interval: float) -> None:
        while not self.closed:
            await asyncio.sleep(interval)
            self._wake()


class MirrorLog(LogBuffer):
    """A job's log as its runner (runner.py, another process) writes it: the file is the
    runner's; this holds the live edge in memory, fed with each chunk the runner sends
    (:meth:`feed`), and serves older bytes from the file. ``start``: the offset the mirror
    begins at (the file's size when ``pploy serve`` attached to a running job)."""

    def __init__(self, path: Path, start: int = 0, *, memory_bytes: int = 1 << 20) -> None:
        super().__init__(path, memory_bytes=memory_bytes, writable=False)
        self.size = self._tail_start = start

    def append(self, data: bytes) -> None:
        raise RuntimeError("a mirrored log is written by its runner")

    def append_note(self, line: bytes) -> None:
        raise RuntimeError("a mirrored log is written by its runner")

    def feed(self, data: bytes) -> None:
        """Bytes the runner wrote at offset ``size``: into memory, then wake the followers."""
        if data and not self.closed:
            self._keep(memoryview(data))
            self._last_byte = data[-1:]
            self._wake()


def read_file_range(path: Path, offset: int, length: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)
    except FileNotFoundError:
        return b""


async def follow(
    buffer: LogBuffer | None,
    path: Path,
    offset: int = 0,
    *,
    final_status: dict[str, Any] | None = None,
    heartbeat: float | None = None,
) -> AsyncGenerator[FollowItem | None, None]:
    """Yield the log from ``offset`` to its end, then the final status.

    ``buffer`` is the live job's buffer, or None for a finished job (``path`` and
    ``final_status`` describe it). With ``heartbeat``, None is yielded after that many seconds
    without output, so a transport can keep an idle connection alive.
    """
    offset = max(0, offset)
    if buffer is None:
        while True:
            data = await asyncio.to_thread(read_file_range, path, offset, READ_CHUNK)
            if not data:
                break
            offset += len(data)
            yield FollowItem(data, offset)
        yield FollowItem(b"", offset, final_status or {})
        return
    while True:
        data = await buffer.read(offset)
        if data:
            offset += len(data)
            yield FollowItem(data, offset)
            continue
        if buffer.closed and offset >= buffer.size:
            yield FollowItem(b"", offset, buffer.status)
            return
        if not await buffer.wait_beyond(offset, heartbeat):
            yield None
