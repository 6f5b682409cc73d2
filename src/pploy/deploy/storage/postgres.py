"""The PostgreSQL engine, shared by several pploy instances (``database: postgresql://…``).

Only the dialect adapter and what instances share live here; every statement the two engines
have in common is in :mod:`pploy.deploy.storage.sql`. One psycopg connection in autocommit:
each call is one statement (a lock change, a job row, a log chunk), never a transaction held
open across an ``await``. Statements are written with SQLite's placeholders and rewritten to
psycopg's once per statement text (:func:`to_psycopg`).

The Storage interface is synchronous and called from the event loop, so a database that stops
answering must not stop the loop. Every statement runs on the store's own worker thread, which
owns the connection; the caller waits at most :data:`CALL_SECONDS`. A call that waits longer
gets StoreUnavailable (503) at once, its stuck statement is aborted (its socket shut down), and
the **circuit breaker** opens: every call fails fast with StoreUnavailable while a background
probe reconnects; the first probe that gets an answer closes it. The connection itself has a
connect timeout, TCP keepalives, ``tcp_user_timeout`` and a ``statement_timeout`` (see
:func:`connection_options`), so a dead route is also noticed by the kernel and a runaway
statement by the server. docs/scaling.md, "Database access", says why this shape.

Besides what the SQLite store holds it keeps what instances share: log chunks (``log_chunks``,
keyed by job and byte offset, announced on the ``pploy_log`` channel), and notices of added or
removed projects (``pploy_projects``). The schema is :mod:`pploy.deploy.storage.migrations`'
steps, applied on start under an advisory lock (instances starting together take turns).
"""

from __future__ import annotations

import functools
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pploy import log
from pploy.deploy.domain.records import JobRecord, StoreError, StoreUnavailable
from pploy.deploy.storage import migrations
from pploy.deploy.storage.sql import (
    LOG_CHANNEL,
    Duplicate,
    Executor,
    Params,
    Result,
    SqlStore,
)

MIGRATION_LOCK = 0x70706C6F79  # pg_advisory_xact_lock key: "pploy"

UNAVAILABLE = (psycopg.OperationalError, pgerrors.DiskFull, pgerrors.AdminShutdown)

# Leases and their checks use the database's clock (pploy_now(), seconds since the epoch):
# one clock for every instance, whatever their own say.

# -- how long anything may take (docs/scaling.md, "Database access") ---------------------
# The longest a caller (the event loop above all) waits for one statement, connecting
# included, before it gets StoreUnavailable and the breaker opens. A statement here takes
# about 0.2 ms; a second is thousands of those, and short enough that /ping stays well under
# 2 s while the first call that meets a dead database waits.
CALL_SECONDS = 1.0
# While the breaker is open, a probe (connect if needed, then SELECT 1) this often ...
PROBE_INTERVAL = 0.25
# ... each given this long before its socket is shut down and the next probe tried.
PROBE_SECONDS = 5.0
# Opening the store (connect and migrations, before pploy serves): one bound for all of it.
OPEN_SECONDS = 20.0
# libpq connection settings pploy sets unless the URL sets them: a connection attempt gives
# up after CONNECT_TIMEOUT s; an idle connection whose peer vanished is noticed by keepalives
# (5 s idle, then 3 probes 2 s apart); sent bytes unacknowledged for TCP_USER_TIMEOUT ms fail
# the connection (instead of ~15 minutes of retransmissions); the server ends a statement
# after STATEMENT_TIMEOUT ms (migrations lift it).
CONNECT_TIMEOUT = 3
TCP_USER_TIMEOUT = 5000
STATEMENT_TIMEOUT = 5000
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


def connection_options(url: str) -> dict[str, Any]:
    """libpq settings for ``url``: its own, plus pploy's timeouts where it sets none."""
    params: dict[str, Any] = conninfo_to_dict(url)
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    params.setdefault("tcp_user_timeout", TCP_USER_TIMEOUT)
    for key, value in KEEPALIVES.items():
        params.setdefault(key, value)
    options = str(params.get("options") or "")
    if "statement_timeout" not in options:
        params["options"] = f"{options} -c statement_timeout={STATEMENT_TIMEOUT}".strip()
    return params


def where(url: str) -> str:
    """``host:port/dbname`` of ``url``, for messages (never the user or a password)."""
    params = conninfo_to_dict(url)
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"


def first_line(exc: BaseException) -> str:
    """psycopg's message without libpq's hints on further lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=1024)
def to_psycopg(sql: str) -> str:
    """A statement written with SQLite's placeholders (``?``, ``:name``) in psycopg's
    (``%s``, ``%(name)s``); a literal ``%`` doubled, PostgreSQL's ``::type`` casts left alone."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%")).replace("?", "%s")


def _statement(conn: psycopg.Connection[Any], sql: str, params: Params) -> Result:
    """One statement on ``conn`` (the worker's thread); a unique index refusing a row is
    Duplicate, any other refusal StoreError (losing the server is handled by the caller)."""
    try:
        cursor = conn.execute(to_psycopg(sql), params)
        rows = cursor.fetchall() if cursor.description is not None else []
        return Result(rows, cursor.rowcount)
    except pgerrors.UniqueViolation as exc:
        raise Duplicate(first_line(exc)) from exc
    except UNAVAILABLE:
        raise
    except psycopg.Error as exc:
        raise StoreError(f"pploy's database refused a statement: {first_line(exc)}") from exc


class _Transaction:
    """The Executor a transaction's function is given: statements on the worker's connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Params = ()) -> Result:
        return _statement(self.conn, sql, params)


T = TypeVar("T")


class PgStore(SqlStore):
    """pploy's records, jobs' leases and log chunks in PostgreSQL."""

    shared = True
    dialect = "postgresql"
    types: Mapping[str, str] = {
        "id": "BIGSERIAL PRIMARY KEY",
        "real": "DOUBLE PRECISION",
        "bigint": "BIGINT",
        "json": "JSONB",
    }

    def __init__(self, url: str, *, call_seconds: float = CALL_SECONDS) -> None:
        self.url = url
        self.call_seconds = call_seconds
        # libpq settings with pploy's timeouts: for any other connection to this database too.
        self.options = connection_options(url)
        self._conn: psycopg.Connection[Any] | None = None
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._closed = False
        self._broken_since: float | None = None  # the breaker: open since then
        self._reason = ""
        self._lock = threading.Lock()
        self._prober: threading.Thread | None = None
        self._opened = False  # until then a silent database fails the start, nothing more
        self._worker = threading.Thread(target=self._work, name="pploy-db", daemon=True)
        self._worker.start()
        try:
            self.run(self._migrate, wait=OPEN_SECONDS)
        except BaseException:
            self.close()
            raise
        self._opened = True

    # -- the worker thread and the breaker --------------------------------------------

    @property
    def available(self) -> bool:
        """False while the breaker is open (the database stopped answering)."""
        return self._broken_since is None

    def run(self, fn: Callable[[psycopg.Connection[Any]], T], *, wait: float | None = None) -> T:
        """``fn(connection)`` on the worker thread, waiting at most ``wait`` seconds
        (CALL_SECONDS): a lost or silent database is StoreUnavailable, and silence opens the
        breaker. For statements that need a transaction (``with conn.transaction(): …``);
        one statement is :meth:`execute`."""
        if self._closed:
            raise StoreUnavailable("pploy's database connection is closed")
        if self._broken_since is not None:
            raise StoreUnavailable(
                f"pploy's database ({where(self.url)}) is not answering: {self._reason}"
            )
        future: Future[T] = Future()
        self._jobs.put((fn, future))
        limit = self.call_seconds if wait is None else wait
        try:
            return future.result(timeout=limit)
        except FutureTimeout:
            if not future.cancel():  # running: unblock the worker from its silent socket
                self._abort()
            self._trip(f"no answer within {limit:g} s")
            raise StoreUnavailable(
                f"pploy's database ({where(self.url)}) did not answer within {limit:g} s"
            ) from None

    def execute(self, sql: str, params: Params = ()) -> Result:
        """Run one statement; a lost, silent or full server is StoreUnavailable (503)."""
        return self.run(lambda conn: _statement(conn, sql, params))

    def transaction(self, fn: Callable[[Executor], T]) -> T:
        """``fn`` as one transaction on the worker's connection (rolled back if it raises)."""

        def whole(conn: psycopg.Connection[Any]) -> T:
            with conn.transaction():
                return fn(_Transaction(conn))

        return self.run(whole)

    def json(self, value: Any) -> Any:
        return Jsonb(value)

    def _work(self) -> None:
        """The worker: owns the connection, runs the queued calls one at a time."""
        while True:
            item = self._jobs.get()
            if item is None:
                break
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up before it started: never run it late
            try:
                future.set_result(self._call(fn))
            except BaseException as exc:
                future.set_exception(exc)
        if self._conn is not None:
            self._conn.close()

    def _call(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        if self._conn is None or self._conn.closed:
            self._conn = None
            try:
                self._conn = psycopg.connect(autocommit=True, row_factory=dict_row, **self.options)
            except psycopg.Error as exc:
                raise StoreUnavailable(
                    f"pploy's database ({where(self.url)}) cannot be reached: {first_line(exc)}"
                ) from exc
        try:
            return fn(self._conn)
        except UNAVAILABLE as exc:
            if self._conn.broken or isinstance(exc, pgerrors.AdminShutdown):
                self._conn.close()
            raise StoreUnavailable(
                f"pploy's database ({where(self.url)}) cannot be written: {first_line(exc)}"
            ) from exc

    def _abort(self) -> None:
        """Shut down the socket of the connection the worker is stuck on (called from
        another thread): its statement fails at once instead of when TCP gives up."""
        conn = self._conn
        if conn is None or conn.closed:
            return  # connecting: connect_timeout bounds that
        try:
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.Error):
            pass  # closed meanwhile

    def _trip(self, reason: str) -> None:
        """Open the breaker (once) and start the probe that will close it."""
        with self._lock:
            if self._broken_since is not None or self._closed or not self._opened:
                return
            self._broken_since = time.time()
            self._reason = reason
            self._prober = threading.Thread(target=self._probe, name="pploy-db-probe", daemon=True)
            self._prober.start()
        log.event("database.unavailable", level="error", database=where(self.url), error=reason)

    def _probe(self) -> None:
        """Until the database answers (or the store closes): connect if needed, SELECT 1."""
        started = self._broken_since or time.time()
        while not self._closed:
            time.sleep(PROBE_INTERVAL)
            future: Future[Any] = Future()
            self._jobs.put((lambda conn: conn.execute("SELECT 1").fetchone(), future))
            try:
                future.result(timeout=PROBE_SECONDS)
            except FutureTimeout:
                if not future.cancel():
                    self._abort()
                continue
            except Exception as exc:  # refused, reset, starting up: the next probe
                self._reason = first_line(exc.__cause__ or exc)
                continue
            with self._lock:
                self._broken_since = None
            log.event("database.available", database=where(self.url),
                      seconds=round(time.time() - started, 1))  # fmt: skip
            return

    def close(self) -> None:
        """Stop the worker (a statement stuck on a silent database is aborted)."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._worker.join(self.call_seconds)
        if self._worker.is_alive():
            self._abort()
            self._worker.join(self.call_seconds)

    def backend_pid(self) -> int:
        """The server process of this store's connection (tests end it to play a crash)."""
        return int(self.run(lambda conn: conn.info.backend_pid))

    def notify(self, channel: str, payload: str) -> None:
        self.execute("SELECT pg_notify(?, ?)", (channel, payload))

    # -- the schema (storage/migrations.py) ------------------------------------------

    def _migrate(self, conn: psycopg.Connection[Any]) -> int:
        """The migrations in one transaction, under an advisory lock (instances starting
        together take turns), with no statement timeout (a migration may take its time)."""
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            return migrations.migrate(_Transaction(conn), self)

    def add_column(self, tx: Executor, table: str, column: str, type_sql: str) -> None:
        tx.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {type_sql}")

    # -- log chunks: what instances share ----------------------------------------------

    def append_log(self, job_id: int, start: int, data: bytes, epoch: int | None = None) -> bool:
        """Store one chunk of a job's log at byte ``start`` and announce it, only when the
        stored log ends exactly there: the stored log is always one gap-free prefix, and a
        chunk sent twice (a retry, a statement that landed after its caller gave up) lands
        once. With ``epoch``, only while the job's lease is still that epoch's, or — the late
        tail of a runner that was cut off — when the job has been declared ``interrupted`` and
        the lease moved on from exactly that epoch (the lost one, never an older one): the
        stored log then ends byte-identical to the runner's file. Log bytes only: the end
        record is never a stale writer's (write_job). A chunk that lands on an ended job
        extends its ``log_bytes``. False when it did not land (see sharedlog.LogShipper)."""
        row = self.execute(
            "WITH c AS (INSERT INTO log_chunks (job_id, start, data) "
            "SELECT :job, :start, :data WHERE :start = COALESCE((SELECT start + "
            "length(data) FROM log_chunks WHERE job_id = :job ORDER BY start DESC LIMIT 1), 0) "
            "AND (:epoch::integer IS NULL OR EXISTS (SELECT 1 FROM jobs WHERE id = :job "
            "AND (lease_epoch = :epoch OR (status = 'interrupted' "
            "AND lease_epoch = :epoch + 1)))) "
            "ON CONFLICT DO NOTHING RETURNING job_id), "
            "b AS (UPDATE jobs SET log_bytes = :start + length(:data) WHERE id = :job "
            "AND status <> 'running' AND log_bytes < :start + length(:data) "
            "AND EXISTS (SELECT 1 FROM c)) "
            "SELECT pg_notify(:channel, :id) FROM c",
            {
                "job": job_id,
                "start": start,
                "data": data,
                "epoch": epoch,
                "channel": LOG_CHANNEL,
                "id": str(job_id),
            },
        ).fetchone()
        return row is not None

    def log_end(self, job_id: int) -> int:
        """The byte offset where the job's stored log ends."""
        row = self.execute(
            "SELECT start + length(data) AS e FROM log_chunks WHERE job_id = ? "
            "ORDER BY start DESC LIMIT 1",
            (job_id,),
        ).fetchone()
        return int(row["e"]) if row else 0

    def short_logs(self, instance: str, limit: int = 100) -> list[JobRecord]:
        """Ended jobs of ``instance`` whose stored log is shorter than their recorded length
        (its process stopped before shipping the last bytes): the newest ``limit``."""
        rows = self.execute(
            "SELECT * FROM jobs j WHERE instance = ? AND status != 'running' AND log_bytes > "
            "COALESCE((SELECT start + length(data) FROM log_chunks c WHERE c.job_id = j.id "
            "ORDER BY start DESC LIMIT 1), 0) ORDER BY id DESC LIMIT ?",
            (instance, limit),
        ).fetchall()
        return [JobRecord(**row) for row in rows]

    def read_log(self, job_id: int, offset: int, limit: int) -> bytes:
        """Up to ``limit`` stored bytes of the job's log from ``offset``."""
        rows = self.execute(
            "SELECT start, data FROM log_chunks WHERE job_id = ? AND start + length(data) > ? "
            "AND start < ? ORDER BY start",
            (job_id, offset, offset + limit),
        ).fetchall()
        out = bytearray()
        for row in rows:
            data = bytes(row["data"])
            begin = max(0, offset + len(out) - row["start"])
            if row["start"] > offset + len(out):
                break  # a gap (a chunk that failed to land): stop before it
            out += data[begin:]
        return bytes(out[:limit])

    def delete_logs(self, job_ids: list[int]) -> None:
        if job_ids:
            self.execute("DELETE FROM log_chunks WHERE job_id = ANY(?)", (job_ids,))
