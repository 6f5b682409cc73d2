"""Job logs across pploy instances sharing a PostgreSQL database.

The instance running a job writes its log file and memory tail as always (its own viewers read
those, see :mod:`pploy.deploy.jobs.following`) and ships every piece, as written, to
``log_chunks`` at its byte offset, announcing it on the ``pploy_log`` channel. Every other
instance follows a job through one :class:`RemoteLog` per job, shared by all its viewers there:
a notification makes it fetch the new chunks once into its own memory tail, so a thousand
viewers on an instance cost one query per chunk, not a thousand. Offsets are the log's byte
offsets on every instance, so SSE ids and WebSocket resumes work whichever instance a viewer
reaches next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pploy import log
from pploy.deploy.domain.records import JobRecord, StoreUnavailable
from pploy.deploy.jobs.following import READ_CHUNK, LogBuffer
from pploy.deploy.storage.postgres import CANCEL_CHANNEL, PgStore

# How much of a remote log one refresh fetches at a time.
FETCH_BYTES = 1 << 20


class RemoteLog(LogBuffer):
    """A job's log as another instance writes it: read from the database, live edge in memory.

    It is a LogBuffer without a file (so :func:`follow.follow` serves it like a local one);
    :meth:`refresh` is its only writer."""

    def __init__(self, store: PgStore, job_id: int, *, memory_bytes: int = 1 << 20) -> None:
        # Not LogBuffer.__init__: that opens the log file for writing, which is elsewhere.
        self.store = store
        self.job_id = job_id
        self.path = Path("/nonexistent")
        self.on_write = None
        self.max_bytes = 1 << 62
        self.memory_bytes = memory_bytes
        self.truncated = False
        self._last_byte = b"\n"
        self.status: dict[str, Any] | None = None
        self._tail = bytearray()
        self.size = self._tail_start = store.log_end(job_id)
        self._more = asyncio.Event()
        self.encoded: dict[tuple[str, int, int], bytes] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._tick_interval = float("inf")
        self._fd = -1

    def append(self, data: bytes) -> None:
        raise RuntimeError("a remote log is written by the instance running its job")

    async def read(self, offset: int, limit: int = READ_CHUNK) -> bytes:
        if offset >= self._tail_start:
            return await super().read(offset, limit)
        return self.store.read_log(self.job_id, offset, min(limit, self._tail_start - offset))

    def refresh(self, record: JobRecord | None, final_status: dict[str, Any] | None) -> None:
        """Take the chunks stored beyond what is held; when ``record`` has ended, take the
        last ones and finish with ``final_status``."""
        while True:
            data = self.store.read_log(self.job_id, self.size, FETCH_BYTES)
            if not data:
                break
            self._keep(memoryview(data))
            self._wake()
        if record is not None and not record.running and not self.closed:
            self.finish(final_status or {})


class SharedLogs:
    """Shipping the logs of this instance's jobs, and following other instances' jobs."""

    def __init__(self, store: PgStore, final_status: Callable[[JobRecord], dict[str, Any]]) -> None:
        self.store = store
        self.final_status = final_status
        self.following: dict[int, RemoteLog] = {}
        self.gaps: set[int] = set()

    def shipper(self, job_id: int) -> Callable[[int, bytes], None]:
        """The LogBuffer.on_write of a job this instance runs: store each piece at its offset.

        A piece the database refuses is logged and left out (the log file has it; viewers on
        other instances stop at the gap until the job ends): the job goes on."""

        def ship(start: int, data: bytes) -> None:
            if job_id in self.gaps:
                return
            try:
                self.store.append_log(job_id, start, data)
            except StoreUnavailable as exc:
                self.gaps.add(job_id)
                log.event("job.log_ship_failed", level="error", job=job_id, error=exc.message)

        return ship

    def append_note(self, job_id: int, line: bytes) -> int:
        """Add one of pploy's lines at the end of a stored log; returns the new end."""
        end = self.store.log_end(job_id)
        self.store.append_log(job_id, end, line)
        return end + len(line)

    def open(self, record: JobRecord) -> RemoteLog | None:
        """The log of a job this instance does not run: shared by every viewer while the job
        runs, a fresh finished one otherwise; None when nothing of it is stored."""
        found = self.following.get(record.id)
        if found is not None:
            return found
        remote = RemoteLog(self.store, record.id)
        if record.running:
            self.following[record.id] = remote
            return remote
        if remote.size == 0 and record.log_bytes:
            return None  # pruned (only the newest logs are kept) or never shipped
        remote.finish(self.final_status(record))
        return remote

    def announce(self, job_id: int) -> None:
        """A chunk or the end of ``job_id`` landed (a notification): bring its follower up."""
        remote = self.following.get(job_id)
        if remote is None:
            return
        record = self.store.get_job(job_id)
        remote.refresh(record, self.final_status(record) if record else None)
        if remote.closed or record is None:
            self.following.pop(job_id, None)

    def refresh_all(self) -> None:
        """Every follower brought up (after notifications may have been missed)."""
        for job_id in list(self.following):
            self.announce(job_id)

    def request_cancel(self, job_id: int, user: str) -> None:
        """Ask the instance running ``job_id`` to cancel it for ``user`` (the lock holder,
        checked here): it listens on CANCEL_CHANNEL."""
        self.store.notify(CANCEL_CHANNEL, f"{job_id} {user}")

    def prune(self, job_ids: list[int]) -> None:
        self.store.delete_logs(job_ids)
