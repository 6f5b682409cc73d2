"""Job logs across pploy instances sharing a PostgreSQL database.

**Shipping.** The process writing a job's log file ships it to ``log_chunks`` with one
:class:`LogShipper` (a store, a job id, the file's path: usable from any process). The file is
the truth: the shipper reads it back from the offset the database last confirmed and stores
it in chunks at their byte offsets. A chunk lands only where the stored log ends
(:meth:`~pploy.deploy.storage.postgres.PgStore.append_log`), so chunks are idempotent and the stored
log is always a gap-free prefix of the file; after any database error the shipper asks where
the stored log ends and goes on from there. Once the database answers again, the stored log is
byte-identical to the file.

**Following.** Every other instance follows a job through one :class:`RemoteLog` per job,
shared by all its viewers there: a notification (``pploy_log``) makes it fetch the new chunks
once into its own memory tail, so a thousand viewers on an instance cost one query per chunk,
not a thousand. Offsets are the log's byte offsets on every instance, so SSE ids and WebSocket
resumes work whichever instance a viewer reaches next. The job's end record carries the log's
final length (``log_bytes``): a follower does not end before it holds that many bytes, so no
viewer sees the final status while part of the log is still on its way.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pploy import log
from pploy.deploy.domain.records import JobRecord, StoreUnavailable
from pploy.deploy.jobs.following import READ_CHUNK, LogBuffer
from pploy.deploy.storage.postgres import PgStore
from pploy.deploy.storage.sql import CANCEL_CHANNEL

# How much of a remote log one refresh fetches at a time.
FETCH_BYTES = 1 << 20
# The largest chunk one statement stores (a backlog after an outage goes in pieces this big).
CHUNK_BYTES = 256 * 1024
# After a database error the shipper tries again after this long, doubling up to the maximum.
RETRY_SECONDS = 0.25
MAX_RETRY_SECONDS = 2.0
# A viewer of a remote log whose database is not answering asks again this often.
READ_RETRY_SECONDS = 0.5


class Diverged(Exception):
    """The stored log holds bytes this file does not (another writer got there first)."""


class Fenced(Exception):
    """The job's lease moved on (it was declared lost): this shipper may store nothing more."""


class LogShipper:
    """Ships one job's log file into the database, byte-identical, whatever the database does.

    Make one when the job starts (``LogShipper(store, job_id, path).start()``), call it — or
    :meth:`wake` — after each write (it is a ``LogBuffer.on_write``), and :meth:`finish` when
    the log is complete; :meth:`wait` then says when every byte is stored. Its thread reads the
    file, never the writer's memory, so nothing a failed statement carried is lost: the next
    attempt reads the same bytes again from the last confirmed offset. A database that fails
    is retried (RETRY_SECONDS, doubling to MAX_RETRY_SECONDS) until it answers or :meth:`stop`.

    If the stored log holds bytes beyond what this shipper confirmed that differ from the
    file (another instance closed the log while this one was cut off), shipping stops:
    the stored log is never garbled by two writers (``diverged``). With ``epoch`` (the job
    runner's lease, jobs/runner.py) every chunk lands only while the lease is still that
    epoch's, or, once another instance has declared the job lost from that epoch, at the
    stored end (the rest of the file); refused otherwise, shipping stops (``Fenced``).
    """

    def __init__(
        self, store: PgStore, job_id: int, path: Path, *, epoch: int | None = None
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.path = path
        self.epoch = epoch  # the runner's lease: every chunk carries it (None: no lease)
        self.shipped = 0  # bytes the database holds, as far as this shipper knows
        self.diverged = False
        self.done = threading.Event()  # set when shipping ended (all shipped, stopped, failed)
        self._known = False  # ``shipped`` confirmed by the database since the last error
        self._final: int | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LogShipper:
        self._thread = threading.Thread(
            target=self._run, name=f"pploy-ship-{self.job_id}", daemon=True
        )
        self._thread.start()
        return self

    def __call__(self, start: int, data: bytes) -> None:
        """LogBuffer.on_write: the file grew."""
        self._wake.set()

    def wake(self) -> None:
        """The file grew: ship soon."""
        self._wake.set()

    def finish(self, size: int | None = None) -> None:
        """The log is complete at ``size`` bytes (the file's size by default): ship up to
        there, then end."""
        self._final = size if size is not None else self._file_size()
        self._wake.set()

    def stop(self) -> None:
        """End shipping now, whatever is left."""
        self._stop.set()
        self._wake.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until shipping ended; True when every byte up to :meth:`finish`'s size is
        stored."""
        self.done.wait(timeout)
        return self.complete

    @property
    def finishing(self) -> bool:
        """:meth:`finish` was called: the log is complete, the rest is on its way."""
        return self._final is not None

    @property
    def complete(self) -> bool:
        return self._final is not None and self._known and self.shipped >= self._final

    def _file_size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def ship(self) -> int:
        """One pass on the calling thread: store what the file holds beyond the stored log
        (up to :meth:`finish`'s size); returns the stored length. Raises StoreUnavailable
        (the next pass starts from where the database says) or Diverged."""
        try:
            if not self._known:
                self._sync()
            with open(self.path, "rb") as fh:
                while not self._stop.is_set():
                    limit = CHUNK_BYTES
                    if self._final is not None:
                        limit = min(limit, self._final - self.shipped)
                    data = os.pread(fh.fileno(), limit, self.shipped) if limit > 0 else b""
                    if not data:
                        break
                    if self.store.append_log(self.job_id, self.shipped, data, epoch=self.epoch):
                        self.shipped += len(data)
                        continue
                    # Refused: something landed there first (a late chunk of ours, a note),
                    # or the lease is no longer this epoch's (nothing moved: Fenced).
                    before = self.shipped
                    self._sync()
                    if self.shipped == before and self.epoch is not None:
                        raise Fenced(f"job {self.job_id}'s lease is no longer epoch {self.epoch}")
        except StoreUnavailable:
            self._known = False
            raise
        return self.shipped

    def _sync(self) -> None:
        """Learn where the stored log ends; what it holds beyond what this shipper confirmed
        must be this file's bytes (a chunk that landed after its statement timed out)."""
        end = self.store.log_end(self.job_id)
        offset = self.shipped if end >= self.shipped else end
        while offset < end:
            theirs = self.store.read_log(self.job_id, offset, min(end - offset, CHUNK_BYTES))
            with open(self.path, "rb") as fh:
                ours = os.pread(fh.fileno(), len(theirs), offset)
            if not theirs or theirs != ours:
                self.diverged = True
                raise Diverged(f"the stored log of job {self.job_id} differs at byte {offset}")
            offset += len(theirs)
        self.shipped = end
        self._known = True

    def _run(self) -> None:
        delay = RETRY_SECONDS
        failing = False
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    self.ship()
                except StoreUnavailable as exc:
                    if not failing:
                        log.event("job.log_ship_failed", level="warning", job=self.job_id,
                                  offset=self.shipped, error=exc.message)  # fmt: skip
                    failing = True
                    self._stop.wait(delay)
                    delay = min(delay * 2, MAX_RETRY_SECONDS)
                    continue
                if failing:
                    log.event("job.log_ship_resumed", job=self.job_id, offset=self.shipped)
                failing, delay = False, RETRY_SECONDS
                if self.complete:
                    return
                self._wake.wait()
        except (Diverged, Fenced) as exc:
            log.event("job.log_ship_stopped", level="error", job=self.job_id, error=str(exc))
        except OSError as exc:  # the file is gone (the job's logs were pruned)
            log.event("job.log_ship_stopped", level="error", job=self.job_id, error=str(exc))
        finally:
            self.done.set()


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
        try:
            return self.store.read_log(self.job_id, offset, min(limit, self._tail_start - offset))
        except StoreUnavailable:  # the viewer waits at its offset: the stream stays open
            await asyncio.sleep(READ_RETRY_SECONDS)
            return b""

    def refresh(self, record: JobRecord | None, final_status: dict[str, Any] | None) -> None:
        """Take the chunks stored beyond what is held; when ``record`` has ended and every
        byte of its log (``log_bytes``) is held, finish with ``final_status``."""
        while True:
            data = self.store.read_log(self.job_id, self.size, FETCH_BYTES)
            if not data:
                break
            self._keep(memoryview(data))
            self._wake()
        if record is not None and not record.running and not self.closed:
            if self.size >= (record.log_bytes or 0):
                self.finish(final_status or {})


class SharedLogs:
    """Shipping the logs of this instance's jobs, and following other instances' jobs."""

    def __init__(self, store: PgStore, final_status: Callable[[JobRecord], dict[str, Any]]) -> None:
        self.store = store
        self.final_status = final_status
        self.following: dict[int, RemoteLog] = {}
        self.shippers: dict[int, LogShipper] = {}

    def ship(self, job_id: int, path: Path) -> LogShipper:
        """Start shipping the log file of a job this instance runs; the shipper is its
        LogBuffer.on_write. :meth:`finish_shipping` at the job's end."""
        shipper = self.shippers[job_id] = LogShipper(self.store, job_id, path).start()
        return shipper

    def finish_shipping(self, job_id: int) -> None:
        """The job's log is complete: its shipper stores the rest (retrying until the
        database takes it) and ends."""
        shipper = self.shippers.get(job_id)
        if shipper is not None:
            shipper.finish()
        for job, one in list(self.shippers.items()):
            if one.done.is_set():
                del self.shippers[job]

    def resume_shipping(self, instance: str, path_of: Callable[[JobRecord], Path]) -> int:
        """Ship the rest of the logs this instance left short in the database (it stopped
        right after their jobs ended); returns how many are under way."""
        started = 0
        for record in self.store.short_logs(instance):
            path = path_of(record)
            if record.id in self.shippers or not path.exists():
                continue
            shipper = self.shippers[record.id] = LogShipper(self.store, record.id, path)
            shipper.finish(record.log_bytes)
            shipper.start()
            started += 1
        if started:
            log.event("job.log_ship_restarted", jobs=started)
        return started

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the shippers of ended jobs to store their last
        bytes (pploy is stopping); True when none is left behind."""
        deadline = time.monotonic() + timeout
        for shipper in list(self.shippers.values()):
            if shipper.finishing:
                shipper.wait(max(0.0, deadline - time.monotonic()))
        left = [job for job, one in self.shippers.items() if one.finishing and not one.complete]
        if left:
            log.event("job.log_ship_unfinished", level="error", jobs=left)
        return not left

    def close_log(self, job_id: int, path: Path, line: bytes) -> int:
        """A job whose runner died is closed with ``line`` (already written at the end of its
        file ``path``, on this instance): the file is shipped from the stored end, so the
        stored log ends byte-identical to it, the runner's unshipped last bytes included.
        When the stored log is not a prefix of the file (another instance closed it first),
        ``line`` is added at its end instead. Returns the stored log's new end."""
        if path.exists():
            try:
                return LogShipper(self.store, job_id, path).ship()
            except Diverged:
                pass
            except OSError:  # unreadable now: the note alone
                pass
        return self.append_note(job_id, line)

    def append_note(self, job_id: int, line: bytes) -> int:
        """Add one of pploy's lines at the end of a stored log; returns the new end."""
        for _ in range(20):  # the log may grow between the two statements: go again
            end = self.store.log_end(job_id)
            if self.store.append_log(job_id, end, line):
                return end + len(line)
        raise StoreUnavailable(f"the stored log of job {job_id} kept growing")

    def open(self, record: JobRecord) -> RemoteLog | None:
        """The log of a job this instance does not run: shared by every viewer while the job
        runs or its last bytes are on their way, a fresh finished one otherwise; None when
        nothing of it is stored."""
        found = self.following.get(record.id)
        if found is not None:
            return found
        remote = RemoteLog(self.store, record.id)
        if record.running or 0 < remote.size < record.log_bytes:
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
