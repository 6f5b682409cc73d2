"""PostgreSQL persistence, shared by several pploy instances (``database: postgresql://…``).

The same records and the same conditional statements as the SQLite store (see
:mod:`pploy.deploy.storage.opening`), on one psycopg connection in autocommit: each call is one
statement (a lock change, a job row, a log chunk), never a transaction held open across an
``await``.

The Storage interface is synchronous and called from the event loop, so a database that stops
answering must not stop the loop. Every statement runs on the store's own worker thread, which
owns the connection; the caller waits at most :data:`CALL_SECONDS`. A call that waits longer
gets StoreUnavailable (503) at once, its stuck statement is aborted (its socket shut down), and
the **circuit breaker** opens: every call fails fast with StoreUnavailable while a background
probe reconnects; the first probe that gets an answer closes it. The connection itself has a
connect timeout, TCP keepalives, ``tcp_user_timeout`` and a ``statement_timeout`` (see
:func:`connection_options`), so a dead route is also noticed by the kernel and a runaway
statement by the server. docs/scaling.md, "Database access", says why this shape.

Besides the SQLite store's tables it holds what instances share: log chunks (``log_chunks``,
keyed by job and byte offset, announced on the ``pploy_log`` channel), jobs' leases, and
notices of added or removed projects (``pploy_projects``).

Schema changes are numbered SQL scripts in :data:`MIGRATIONS`, applied in order on start under
an advisory lock (instances starting together take turns) and recorded in
``schema_migrations``. A list of scripts, not Alembic: pploy has no ORM and no models to diff,
its statements are hand-written, and a dozen lines of runner keep the dependency list short.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pploy import log
from pploy.deploy.domain.errors import Conflict
from pploy.deploy.domain.govrecords import AdHocFreeze, AuditEvent, QueuedUser
from pploy.deploy.domain.records import (
    ApiToken,
    JobAlreadyRunning,
    JobRecord,
    Lock,
    Repository,
    StoreUnavailable,
)
from pploy.deploy.storage.sqlite import audit_filter, job_assignments

LOG_CHANNEL = "pploy_log"  # payload: "<job id>" — a chunk or the job's end landed
PROJECTS_CHANNEL = "pploy_projects"  # payload: the project name added or removed
CANCEL_CHANNEL = "pploy_cancel"  # payload: "<job id> <user>" — the lock holder cancelled it
MIGRATION_LOCK = 0x70706C6F79  # pg_advisory_xact_lock key: "pploy"

MIGRATIONS: list[str] = [
    # 1: what the SQLite store holds, plus job heartbeats and log chunks.
    """
    CREATE TABLE repositories (
        id         BIGSERIAL PRIMARY KEY,
        project    TEXT NOT NULL,
        url        TEXT NOT NULL,
        added_at   DOUBLE PRECISION NOT NULL,
        removed_at DOUBLE PRECISION,
        removed_by TEXT
    );
    CREATE INDEX repositories_project ON repositories (project, id);
    CREATE UNIQUE INDEX repositories_current ON repositories (project) WHERE removed_at IS NULL;
    CREATE TABLE locks (
        project    TEXT PRIMARY KEY,
        "user"     TEXT NOT NULL,
        gained_at  DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE jobs (
        id           BIGSERIAL PRIMARY KEY,
        project      TEXT NOT NULL,
        kind         TEXT NOT NULL CHECK (kind IN ('checkout', 'deploy')),
        env          TEXT,
        ref          TEXT,
        sha          TEXT,
        "user"       TEXT NOT NULL,
        started_at   DOUBLE PRECISION NOT NULL,
        ended_at     DOUBLE PRECISION,
        exit_code    INTEGER,
        signal       INTEGER,
        status       TEXT NOT NULL,
        cancelled_by TEXT,
        message      TEXT,
        log_bytes    BIGINT NOT NULL DEFAULT 0,
        repository   BIGINT REFERENCES repositories (id),
        url          TEXT,
        instance     TEXT,
        heartbeat_at DOUBLE PRECISION
    );
    CREATE INDEX jobs_project ON jobs (project, id);
    CREATE INDEX jobs_status ON jobs (status);
    CREATE UNIQUE INDEX jobs_one_running ON jobs (project) WHERE status = 'running';
    CREATE FUNCTION pploy_now() RETURNS DOUBLE PRECISION LANGUAGE sql VOLATILE
        AS 'SELECT extract(epoch FROM clock_timestamp())::double precision';
    CREATE TABLE log_chunks (
        job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        start  BIGINT NOT NULL,
        data   BYTEA NOT NULL,
        PRIMARY KEY (job_id, start)
    );
    """,
    # 2: API tokens (only their SHA-256) and the token a job was started with.
    """
    CREATE TABLE tokens (
        id           BIGSERIAL PRIMARY KEY,
        "user"       TEXT NOT NULL,
        email        TEXT,
        name         TEXT NOT NULL,
        hash         TEXT NOT NULL UNIQUE,
        created_at   DOUBLE PRECISION NOT NULL,
        expires_at   DOUBLE PRECISION,
        last_used_at DOUBLE PRECISION,
        revoked_at   DOUBLE PRECISION
    );
    CREATE INDEX tokens_user ON tokens ("user", id);
    ALTER TABLE jobs ADD COLUMN token TEXT;
    """,
    # 3: governance (issue 25): the audit trail, ad-hoc freezes, lock queues, approvals.
    """
    CREATE TABLE audit (
        id      BIGSERIAL PRIMARY KEY,
        at      DOUBLE PRECISION NOT NULL,
        "user"  TEXT,
        kind    TEXT NOT NULL,
        project TEXT,
        env     TEXT,
        job     BIGINT,
        detail  JSONB NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_at ON audit (at, id);
    CREATE TABLE freezes (
        id         BIGSERIAL PRIMARY KEY,
        name       TEXT NOT NULL,
        envs       JSONB NOT NULL,
        projects   JSONB NOT NULL,
        starts_at  DOUBLE PRECISION NOT NULL,
        until      DOUBLE PRECISION NOT NULL,
        reason     TEXT NOT NULL,
        created_by TEXT NOT NULL,
        ended_at   DOUBLE PRECISION,
        ended_by   TEXT
    );
    CREATE UNIQUE INDEX freezes_current ON freezes (name) WHERE ended_at IS NULL;
    CREATE TABLE lock_queue (
        id      BIGSERIAL PRIMARY KEY,
        project TEXT NOT NULL,
        "user"  TEXT NOT NULL,
        since   DOUBLE PRECISION NOT NULL,
        UNIQUE (project, "user")
    );
    ALTER TABLE jobs ADD COLUMN approved_by JSONB;
    ALTER TABLE jobs ADD COLUMN freeze_override JSONB;
    CREATE UNIQUE INDEX jobs_one_awaiting ON jobs (project) WHERE status = 'awaiting_approval';
    """,
    # 4: jobs' leases, held by their runners (jobs/runner.py), judged by the database's clock.
    """
    ALTER TABLE jobs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN lease_until DOUBLE PRECISION;
    UPDATE jobs SET lease_until = pploy_now() + 60 WHERE status = 'running';
    """,
]

# Errors that mean the server, not the statement, failed: 503, try again later.
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


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Apply the scripts of MIGRATIONS not applied yet, each in its own transaction; returns
    the schema version reached."""
    with conn.transaction():
        conn.execute("SET LOCAL statement_timeout = 0")  # a migration may take its time
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
        version = int(row.fetchone()["v"])  # type: ignore[index]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute(script)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
    return len(MIGRATIONS)


class Result:
    """What a statement returned, read in full on the worker thread (no cursor crosses
    threads): ``fetchone``, ``fetchall`` and ``rowcount`` as on a psycopg cursor."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


T = TypeVar("T")


class PgStore:
    """Locks, repositories, jobs, their leases and log chunks in PostgreSQL."""

    shared = True

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
            self.run(migrate, wait=OPEN_SECONDS)
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

    def execute(self, sql: str, params: Any = ()) -> Result:
        """Run one statement; a lost, silent or full server is StoreUnavailable (503)."""

        def statement(conn: psycopg.Connection[Any]) -> Result:
            cur = conn.execute(sql, params)
            rows = cur.fetchall() if cur.description is not None else []
            return Result(rows, cur.rowcount)

        return self.run(statement)

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
        self.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    # -- repositories ----------------------------------------------------------

    def add_repository(self, project: str, url: str, added_at: float | None = None) -> Repository:
        try:
            row = self.execute(
                "INSERT INTO repositories (project, url, added_at) VALUES (%s, %s, %s) RETURNING *",
                (project, url, time.time() if added_at is None else added_at),
            ).fetchone()
        except pgerrors.UniqueViolation as exc:
            raise Conflict(f"a project named {project!r} already exists") from exc
        self.notify(PROJECTS_CHANNEL, project)
        assert row is not None  # INSERT ... RETURNING
        return Repository(**row)

    def adopt_repository(self, project: str, url: str) -> Repository:
        repository = self.add_repository(project, url, added_at=0.0)
        self.execute(
            "UPDATE jobs SET repository = %s, url = %s WHERE project = %s AND repository IS NULL",
            (repository.id, url, project),
        )
        return repository

    def get_repository(self, repository_id: int) -> Repository | None:
        row = self.execute("SELECT * FROM repositories WHERE id = %s", (repository_id,)).fetchone()
        return Repository(**row) if row else None

    def current_repository(self, project: str) -> Repository | None:
        row = self.execute(
            "SELECT * FROM repositories WHERE project = %s AND removed_at IS NULL "
            "ORDER BY id DESC LIMIT 1",
            (project,),
        ).fetchone()
        return Repository(**row) if row else None

    def current_repositories(self) -> list[Repository]:
        """Every project's current repository (what every instance should have cloned)."""
        rows = self.execute(
            "SELECT DISTINCT ON (project) * FROM repositories WHERE removed_at IS NULL "
            "ORDER BY project, id DESC"
        ).fetchall()
        return [Repository(**row) for row in rows]

    def remove_project(self, project: str, user: str) -> None:
        self.execute(
            "UPDATE repositories SET removed_at = %s, removed_by = %s "
            "WHERE project = %s AND removed_at IS NULL",
            (time.time(), user, project),
        )
        self.execute("DELETE FROM locks WHERE project = %s", (project,))
        self.execute("DELETE FROM lock_queue WHERE project = %s", (project,))
        self.notify(PROJECTS_CHANNEL, project)

    # -- locks ---------------------------------------------------------------

    def get_lock(self, project: str, now: float | None = None) -> Lock | None:
        now = time.time() if now is None else now
        row = self.execute("SELECT * FROM locks WHERE project = %s", (project,)).fetchone()
        if row is None:
            return None
        if row["expires_at"] <= now:
            try:
                self.execute(
                    "DELETE FROM locks WHERE project = %s AND expires_at <= %s", (project, now)
                )
            except StoreUnavailable:
                pass  # tidying only: the lock is expired whether or not its row is gone
            return None
        return Lock(**row)

    def put_lock(self, lock: Lock) -> None:
        self.execute(
            'INSERT INTO locks (project, "user", gained_at, expires_at) VALUES (%s, %s, %s, %s) '
            'ON CONFLICT (project) DO UPDATE SET "user" = excluded."user", '
            "gained_at = excluded.gained_at, expires_at = excluded.expires_at",
            (lock.project, lock.user, lock.gained_at, lock.expires_at),
        )

    def delete_lock(self, project: str) -> None:
        self.execute("DELETE FROM locks WHERE project = %s", (project,))

    def gain_lock(self, project: str, user: str, now: float, seconds: float) -> Lock | None:
        row = self.execute(
            'INSERT INTO locks AS l (project, "user", gained_at, expires_at) '
            "VALUES (%(p)s, %(u)s, %(now)s, %(until)s) "
            'ON CONFLICT (project) DO UPDATE SET "user" = excluded."user", '
            "gained_at = CASE WHEN l.expires_at > %(now)s THEN l.gained_at ELSE %(now)s END, "
            "expires_at = CASE WHEN l.expires_at > %(now)s THEN GREATEST(l.expires_at, %(until)s) "
            'ELSE %(until)s END WHERE l."user" = excluded."user" OR l.expires_at <= %(now)s '
            "RETURNING *",
            {"p": project, "u": user, "now": now, "until": now + seconds},
        ).fetchone()
        return Lock(**row) if row else None

    def extend_lock(self, project: str, user: str, now: float, seconds: float) -> Lock | None:
        row = self.execute(
            'UPDATE locks SET expires_at = expires_at + %s WHERE project = %s AND "user" = %s '
            "AND expires_at > %s RETURNING *",
            (seconds, project, user, now),
        ).fetchone()
        return Lock(**row) if row else None

    def release_lock(self, project: str, user: str, now: float) -> bool:
        cur = self.execute(
            'DELETE FROM locks WHERE project = %s AND "user" = %s AND expires_at > %s',
            (project, user, now),
        )
        return cur.rowcount > 0

    def keep_lock_until(self, project: str, user: str, now: float, until: float) -> None:
        self.execute(
            'UPDATE locks SET expires_at = %s WHERE project = %s AND "user" = %s '
            "AND expires_at > %s AND expires_at < %s",
            (until, project, user, now, until),
        )

    # -- jobs ----------------------------------------------------------------

    def create_job(
        self,
        *,
        project: str,
        kind: str,
        user: str,
        env: str | None = None,
        ref: str | None = None,
        sha: str | None = None,
        started_at: float | None = None,
        token: str | None = None,
        instance: str | None = None,
        lease_seconds: float = 60.0,
    ) -> JobRecord:
        current = self.current_repository(project)
        try:
            row = self.execute(
                'INSERT INTO jobs (project, kind, env, ref, sha, "user", started_at, status, '
                "repository, url, token, instance, heartbeat_at, lease_until) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, 'running', %s, %s, %s, %s, pploy_now(), "
                "pploy_now() + %s) RETURNING *",
                (
                    project, kind, env, ref, sha, user, started_at or time.time(),
                    current.id if current else None, current.url if current else None, token,
                    instance, lease_seconds,
                ),
            ).fetchone()  # fmt: skip
        except pgerrors.UniqueViolation as exc:
            raise JobAlreadyRunning(project) from exc
        assert row is not None  # INSERT ... RETURNING
        return JobRecord(**row)

    def update_job(self, job_id: int, **fields: Any) -> None:
        assignments = job_assignments(fields, "%s")
        if not fields:
            return
        # An end is recorded once: not over an ``interrupted`` another instance declared.
        running = " AND status = 'running'" if "status" in fields else ""
        self.execute(
            f"UPDATE jobs SET {assignments} WHERE id = %s{running}",  # noqa: S608
            (*fields.values(), job_id),
        )
        if "status" in fields:
            self.notify(LOG_CHANNEL, str(job_id))  # viewers elsewhere learn the end

    def get_job(self, job_id: int) -> JobRecord | None:
        row = self.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        return JobRecord(**row) if row else None

    def list_jobs(self, project: str | None = None, limit: int = 50) -> list[JobRecord]:
        if project is None:
            rows = self.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT %s", (limit,))
        else:
            rows = self.execute(
                "SELECT * FROM jobs WHERE project = %s ORDER BY id DESC LIMIT %s", (project, limit)
            )
        return [JobRecord(**row) for row in rows.fetchall()]

    def running_jobs(self, instance: str | None = None) -> list[JobRecord]:
        """Jobs recorded as running, by ``instance`` only when it is given."""
        if instance is None:
            rows = self.execute("SELECT * FROM jobs WHERE status = 'running' ORDER BY id")
        else:
            rows = self.execute(
                "SELECT * FROM jobs WHERE status = 'running' AND instance = %s ORDER BY id",
                (instance,),
            )
        return [JobRecord(**row) for row in rows.fetchall()]

    def last_successful_deploys(self, project: str) -> dict[str, JobRecord]:
        rows = self.execute(
            "SELECT * FROM jobs WHERE id IN (SELECT MAX(id) FROM jobs WHERE project = %s "
            "AND kind = 'deploy' AND status = 'succeeded' GROUP BY env)",
            (project,),
        )
        return {row["env"]: JobRecord(**row) for row in rows.fetchall()}

    def last_job(self, project: str, kind: str | None = None) -> JobRecord | None:
        if kind:
            row = self.execute(
                "SELECT * FROM jobs WHERE project = %s AND kind = %s ORDER BY id DESC LIMIT 1",
                (project, kind),
            ).fetchone()
        else:
            row = self.execute(
                "SELECT * FROM jobs WHERE project = %s ORDER BY id DESC LIMIT 1", (project,)
            ).fetchone()
        return JobRecord(**row) if row else None

    def find_jobs(
        self, project: str, filters: dict[str, str], query: str, limit: int, offset: int
    ) -> tuple[list[JobRecord], int]:
        """As :meth:`pploy.deploy.storage.sqlite.Store.find_jobs` (``ILIKE``: SQLite's ``LIKE``
        ignores case, PostgreSQL's does not). Values are bound, never spliced."""
        where = ["project = %s"]
        params: list[Any] = [project]
        for column in ("env", "kind", "status", "user"):
            if filters.get(column):
                where.append(f'"{column}" = %s')
                params.append(filters[column])
        if query:
            escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(
                "(" + " OR ".join(
                    f"COALESCE({c}, '') ILIKE %s ESCAPE '\\'"
                    for c in ("ref", "sha", '"user"', "env", "message")
                ) + ")"
            )  # fmt: skip
            params += [f"%{escaped}%"] * 5
        condition = " AND ".join(where)
        counted = self.execute(
            f"SELECT COUNT(*) AS n FROM jobs WHERE {condition}",  # noqa: S608
            params,
        ).fetchone()
        total = counted["n"] if counted else 0
        rows = self.execute(
            f"SELECT * FROM jobs WHERE {condition} ORDER BY id DESC LIMIT %s OFFSET %s",  # noqa: S608
            (*params, limit, offset),
        )
        return [JobRecord(**row) for row in rows.fetchall()], total

    def last_failed_deploy(self, project: str) -> JobRecord | None:
        row = self.execute(
            "SELECT * FROM jobs WHERE project = %s AND kind = 'deploy' AND status NOT IN "
            "('succeeded', 'running') AND id > COALESCE((SELECT MAX(id) FROM jobs WHERE "
            "project = %s AND kind = 'deploy' AND status = 'succeeded'), 0) "
            "ORDER BY id DESC LIMIT 1",
            (project, project),
        ).fetchone()
        return JobRecord(**row) if row else None

    def job_ids_beyond(self, project: str, keep: int) -> list[int]:
        rows = self.execute(
            "SELECT id FROM jobs WHERE project = %s AND status != 'running' AND id NOT IN "
            "(SELECT id FROM jobs WHERE project = %s ORDER BY id DESC LIMIT %s)",
            (project, project, keep),
        )
        return [row["id"] for row in rows.fetchall()]

    # -- what instances share ---------------------------------------------------

    def job_counts(self) -> dict[tuple[str, str], int]:
        """Finished jobs ever recorded, by ``(kind, status)`` (Prometheus counters)."""
        rows = self.execute(
            "SELECT kind, status, COUNT(*) AS n FROM jobs "
            "WHERE status NOT IN ('running', 'awaiting_approval') "
            "GROUP BY kind, status"
        ).fetchall()
        return {(row["kind"], row["status"]): row["n"] for row in rows}

    # -- API tokens (only their SHA-256 is stored; see pploy.deploy.domain.tokens) --------------

    def add_token(
        self, *, user: str, email: str | None, name: str, digest: str, expires_at: float | None
    ) -> ApiToken:
        row = self.execute(
            'INSERT INTO tokens ("user", email, name, hash, created_at, expires_at) '
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
            (user, email, name, digest, time.time(), expires_at),
        ).fetchone()
        assert row is not None  # INSERT ... RETURNING
        return ApiToken.from_row(row)

    def get_token(self, token_id: int) -> ApiToken | None:
        row = self.execute("SELECT * FROM tokens WHERE id = %s", (token_id,)).fetchone()
        return ApiToken.from_row(row) if row else None

    def token_by_hash(self, digest: str) -> ApiToken | None:
        row = self.execute("SELECT * FROM tokens WHERE hash = %s", (digest,)).fetchone()
        return ApiToken.from_row(row) if row else None

    def list_tokens(self, user: str) -> list[ApiToken]:
        rows = self.execute('SELECT * FROM tokens WHERE "user" = %s ORDER BY id', (user,))
        return [ApiToken.from_row(row) for row in rows.fetchall()]

    def revoke_token(self, token_id: int) -> None:
        self.execute(
            "UPDATE tokens SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
            (time.time(), token_id),
        )

    def token_used(self, token_id: int, when: float) -> None:
        self.execute("UPDATE tokens SET last_used_at = %s WHERE id = %s", (when, token_id))

    # -- leases (runner.py), judged by the database's clock (pploy_now()) ---------------

    def take_lease(self, job_id: int, seconds: float) -> int | None:
        """As :meth:`pploy.deploy.storage.sqlite.Store.take_lease`."""
        row = self.execute(
            "UPDATE jobs SET lease_epoch = 1, lease_until = pploy_now() + %s WHERE id = %s "
            "AND status = 'running' AND lease_epoch = 0 AND lease_until > pploy_now() "
            "RETURNING lease_epoch",
            (seconds, job_id),
        ).fetchone()
        return int(row["lease_epoch"]) if row else None

    def renew_lease(self, job_id: int, epoch: int | None, seconds: float) -> bool:
        """As :meth:`pploy.deploy.storage.sqlite.Store.renew_lease`."""
        row = self.execute(
            "UPDATE jobs SET lease_until = pploy_now() + %s WHERE id = %s AND status = "
            "'running' AND lease_epoch = %s AND lease_until > pploy_now() RETURNING id",
            (seconds, job_id, epoch),
        ).fetchone()
        return row is not None

    def write_job(self, job_id: int, epoch: int | None, **fields: Any) -> bool:
        """As :meth:`~pploy.deploy.storage.sqlite.Store.write_job` (others learn an end)."""
        if not fields:
            raise ValueError("nothing to write")
        assignments = job_assignments(fields, "%s")
        row = self.execute(
            f"UPDATE jobs SET {assignments} WHERE id = %s AND status = 'running' "  # noqa: S608
            "AND lease_epoch = %s RETURNING id",
            (*fields.values(), job_id, epoch),
        ).fetchone()
        if row is not None and "status" in fields:
            self.notify(LOG_CHANNEL, str(job_id))
        return row is not None

    def interrupt_job(
        self, job_id: int, *, message: str, log_bytes: int, expired_only: bool = False
    ) -> bool:
        """As :meth:`~pploy.deploy.storage.sqlite.Store.interrupt_job`, by the database's clock."""
        row = self.execute(
            "UPDATE jobs SET status = 'interrupted', ended_at = pploy_now(), message = %s, "
            "log_bytes = %s, lease_epoch = lease_epoch + 1 WHERE id = %s "
            "AND status = 'running' AND (NOT %s OR lease_until < pploy_now()) RETURNING id",
            (message, log_bytes, job_id, expired_only),
        ).fetchone()
        if row is not None:
            self.notify(LOG_CHANNEL, str(job_id))
        return row is not None

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
            "SELECT %(job)s, %(start)s, %(data)s WHERE %(start)s = COALESCE((SELECT start + "
            "length(data) FROM log_chunks WHERE job_id = %(job)s ORDER BY start DESC LIMIT 1), 0) "
            "AND (%(epoch)s::integer IS NULL OR EXISTS (SELECT 1 FROM jobs WHERE id = %(job)s "
            "AND (lease_epoch = %(epoch)s OR (status = 'interrupted' "
            "AND lease_epoch = %(epoch)s + 1)))) "
            "ON CONFLICT DO NOTHING RETURNING job_id), "
            "b AS (UPDATE jobs SET log_bytes = %(start)s + length(%(data)s) WHERE id = %(job)s "
            "AND status <> 'running' AND log_bytes < %(start)s + length(%(data)s) "
            "AND EXISTS (SELECT 1 FROM c)) "
            "SELECT pg_notify(%(channel)s, %(id)s) FROM c",
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

    def expired_jobs(self) -> list[JobRecord]:
        """Running jobs whose lease has expired, by the database's clock."""
        rows = self.execute(
            "SELECT * FROM jobs WHERE status = 'running' AND lease_until < pploy_now() ORDER BY id"
        ).fetchall()
        return [JobRecord(**row) for row in rows]

    def log_end(self, job_id: int) -> int:
        """The byte offset where the job's stored log ends."""
        row = self.execute(
            "SELECT start + length(data) AS e FROM log_chunks WHERE job_id = %s "
            "ORDER BY start DESC LIMIT 1",
            (job_id,),
        ).fetchone()
        return int(row["e"]) if row else 0

    def short_logs(self, instance: str, limit: int = 100) -> list[JobRecord]:
        """Ended jobs of ``instance`` whose stored log is shorter than their recorded length
        (its process stopped before shipping the last bytes): the newest ``limit``."""
        rows = self.execute(
            "SELECT * FROM jobs j WHERE instance = %s AND status != 'running' AND log_bytes > "
            "COALESCE((SELECT start + length(data) FROM log_chunks c WHERE c.job_id = j.id "
            "ORDER BY start DESC LIMIT 1), 0) ORDER BY id DESC LIMIT %s",
            (instance, limit),
        ).fetchall()
        return [JobRecord(**row) for row in rows]

    def read_log(self, job_id: int, offset: int, limit: int) -> bytes:
        """Up to ``limit`` stored bytes of the job's log from ``offset``."""
        rows = self.execute(
            "SELECT start, data FROM log_chunks WHERE job_id = %s AND start + length(data) > %s "
            "AND start < %s ORDER BY start",
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
            self.execute("DELETE FROM log_chunks WHERE job_id = ANY(%s)", (job_ids,))

    # -- governance (issue 25): the audit trail, ad-hoc freezes, lock queues, approvals ------

    def add_audit(
        self, *, at: float, user: str | None, kind: str, project: str | None, env: str | None,
        job: int | None, detail: dict[str, Any],
    ) -> None:  # fmt: skip
        self.execute(
            'INSERT INTO audit (at, "user", kind, project, env, job, detail) '
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (at, user, kind, project, env, job, Jsonb(detail)),
        )

    def list_audit(self, since: float | None, kinds: list[str], limit: int) -> list[AuditEvent]:
        where, params = audit_filter(since, kinds, "%s")
        rows = self.execute(
            f"SELECT * FROM audit WHERE {where} ORDER BY at, id LIMIT %s",  # noqa: S608
            (*params, limit),
        ).fetchall()
        return [AuditEvent.from_row(row) for row in rows]

    def add_freeze(
        self, *, name: str, envs: list[str], projects: list[str], starts_at: float,
        until: float, reason: str, created_by: str,
    ) -> AdHocFreeze | None:  # fmt: skip
        self.execute(
            "UPDATE freezes SET ended_at = until WHERE ended_at IS NULL AND until <= %s",
            (starts_at,),
        )
        try:
            row = self.execute(
                "INSERT INTO freezes (name, envs, projects, starts_at, until, reason, created_by) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
                (name, Jsonb(envs), Jsonb(projects), starts_at, until, reason, created_by),
            ).fetchone()
        except pgerrors.UniqueViolation:
            return None
        return AdHocFreeze.from_row(row) if row else None

    def current_freezes(self, now: float) -> list[AdHocFreeze]:
        rows = self.execute(
            "SELECT * FROM freezes WHERE ended_at IS NULL AND until > %s ORDER BY id", (now,)
        ).fetchall()
        return [AdHocFreeze.from_row(row) for row in rows]

    def end_freeze(self, name: str, user: str, now: float) -> AdHocFreeze | None:
        row = self.execute(
            "UPDATE freezes SET ended_at = %s, ended_by = %s WHERE name = %s "
            "AND ended_at IS NULL AND until > %s RETURNING *",
            (now, user, name, now),
        ).fetchone()
        return AdHocFreeze.from_row(row) if row else None

    def queue_for_lock(self, project: str, user: str, now: float) -> bool:
        cur = self.execute(
            'INSERT INTO lock_queue (project, "user", since) VALUES (%s, %s, %s) '
            'ON CONFLICT (project, "user") DO NOTHING',
            (project, user, now),
        )
        return cur.rowcount > 0

    def leave_lock_queue(self, project: str, user: str) -> bool:
        cur = self.execute(
            'DELETE FROM lock_queue WHERE project = %s AND "user" = %s', (project, user)
        )
        return cur.rowcount > 0

    def lock_queue(self, project: str) -> list[QueuedUser]:
        rows = self.execute(
            'SELECT project, "user", since FROM lock_queue WHERE project = %s ORDER BY id',
            (project,),
        ).fetchall()
        return [QueuedUser(**row) for row in rows]

    def grant_next(self, project: str, now: float, seconds: float) -> Lock | None:
        """See Store.grant_next. Two instances granting at once serialise on the lock's row:
        the second finds it held and grants nothing."""

        def grant(conn: psycopg.Connection[Any]) -> Lock | None:
            with conn.transaction():
                row = conn.execute(
                    'SELECT "user" FROM lock_queue WHERE project = %s ORDER BY id LIMIT 1',
                    (project,),
                ).fetchone()
                if row is None:
                    return None
                granted = conn.execute(
                    'INSERT INTO locks AS l (project, "user", gained_at, expires_at) '
                    "VALUES (%(p)s, %(u)s, %(now)s, %(until)s) ON CONFLICT (project) DO UPDATE "
                    'SET "user" = excluded."user", gained_at = %(now)s, expires_at = %(until)s '
                    "WHERE l.expires_at <= %(now)s RETURNING *",
                    {"p": project, "u": row["user"], "now": now, "until": now + seconds},
                ).fetchone()
                if granted is None:
                    return None
                conn.execute(
                    'DELETE FROM lock_queue WHERE project = %s AND "user" = %s',
                    (project, row["user"]),
                )
                return Lock(**granted)

        return self.run(grant)

    def request_job(
        self, *, project: str, kind: str, user: str, env: str | None, sha: str | None,
        token: str | None, freeze_override: dict[str, str] | None,
    ) -> JobRecord:  # fmt: skip
        current = self.current_repository(project)
        try:
            row = self.execute(
                'INSERT INTO jobs (project, kind, env, sha, "user", started_at, status, '
                "repository, url, token, freeze_override) "
                "VALUES (%s, %s, %s, %s, %s, %s, 'awaiting_approval', %s, %s, %s, %s) "
                "RETURNING *",
                (
                    project, kind, env, sha, user, time.time(),
                    current.id if current else None, current.url if current else None, token,
                    Jsonb(freeze_override) if freeze_override else None,
                ),
            ).fetchone()  # fmt: skip
        except pgerrors.UniqueViolation as exc:
            raise JobAlreadyRunning(project) from exc
        assert row is not None  # INSERT ... RETURNING
        return JobRecord(**row)

    def settle_job(
        self, job_id: int, expect: str, *, lease_seconds: float | None = None, **fields: Any
    ) -> bool:
        """See Store.settle_job; the lease's expiry by the database's clock."""
        allowed = {"status", "approved_by", "started_at", "ended_at", "message", "instance",
                   "freeze_override", "heartbeat_at"}  # fmt: skip
        if set(fields) - allowed:
            raise ValueError(f"cannot settle job fields {sorted(set(fields) - allowed)}")
        values = [Jsonb(v) if isinstance(v, list | dict) else v for v in fields.values()]
        assignments = ", ".join(f"{key} = %s" for key in fields)
        if lease_seconds is not None:  # a job turning running: a lease for its runner to take
            assignments += ", lease_epoch = 0, lease_until = pploy_now() + %s"
            values.append(lease_seconds)
        try:
            cur = self.execute(
                f"UPDATE jobs SET {assignments} WHERE id = %s AND status = %s",  # noqa: S608
                (*values, job_id, expect),
            )
        except pgerrors.UniqueViolation as exc:
            raise JobAlreadyRunning("the project") from exc
        return cur.rowcount > 0

    def awaiting_jobs(self) -> list[JobRecord]:
        rows = self.execute(
            "SELECT * FROM jobs WHERE status = 'awaiting_approval' ORDER BY id"
        ).fetchall()
        return [JobRecord(**row) for row in rows]
