"""PostgreSQL persistence, shared by several pploy instances (``database: postgresql://…``).

The same records and the same conditional statements as the SQLite store (see
:mod:`pploy.deploy.storage`), on one synchronous psycopg connection in autocommit: each call
is one statement (a lock change, a job row, a log chunk), so the event loop waits for one round
trip to a nearby server and never for a transaction held open across an ``await``.

Besides the SQLite store's tables it holds what instances share: log chunks (``log_chunks``,
keyed by job and byte offset, announced on the ``pploy_log`` channel), jobs' leases, and
notices of added or removed projects (``pploy_projects``).

Schema changes are numbered SQL scripts in :data:`MIGRATIONS`, applied in order on start under
an advisory lock (instances starting together take turns) and recorded in
``schema_migrations``. A list of scripts, not Alembic: pploy has no ORM and no models to diff,
its statements are hand-written, and a dozen lines of runner keep the dependency list short.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import dict_row

from pploy.deploy.errors import Conflict
from pploy.deploy.store import (
    ApiToken,
    JobAlreadyRunning,
    JobRecord,
    Lock,
    Repository,
    StoreUnavailable,
    job_assignments,
)

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
    # 3: jobs' leases, held by their runners (runner.py), judged by the database's clock.
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


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Apply the scripts of MIGRATIONS not applied yet, each in its own transaction; returns
    the schema version reached."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
        version = int(row.fetchone()["v"])  # type: ignore[index]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute(script)  # type: ignore[arg-type]
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
    return len(MIGRATIONS)


class PgStore:
    """Locks, repositories, jobs, their leases and log chunks in PostgreSQL."""

    shared = True

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        migrate(self.conn)

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The connection, opened again after one was lost (a server restart)."""
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(
                    self.url, autocommit=True, row_factory=dict_row, connect_timeout=5
                )
            except psycopg.Error as exc:
                raise StoreUnavailable(f"pploy's database cannot be reached: {exc}") from exc
        return self._conn

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor[Any]:
        """Run one statement; a lost server or a full disk is StoreUnavailable (503)."""
        try:
            return self.conn.execute(sql, params)  # type: ignore[arg-type]
        except UNAVAILABLE as exc:
            if self._conn is not None and self._conn.broken:
                self._conn.close()
            raise StoreUnavailable(f"pploy's database cannot be written: {exc}") from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

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
        """As :meth:`pploy.deploy.store.Store.find_jobs` (``ILIKE``: SQLite's ``LIKE`` ignores
        case, PostgreSQL's does not). Values are bound, never spliced."""
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
            "SELECT kind, status, COUNT(*) AS n FROM jobs WHERE status != 'running' "
            "GROUP BY kind, status"
        ).fetchall()
        return {(row["kind"], row["status"]): row["n"] for row in rows}

    # -- API tokens (only their SHA-256 is stored; see pploy.deploy.tokens) --------------

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

    def append_log(self, job_id: int, start: int, data: bytes, epoch: int | None = None) -> None:
        """Store one chunk of a job's log at byte ``start`` and announce it; with ``epoch``,
        only while the job's lease is that epoch's (a fenced-out runner writes nothing)."""
        self.execute(
            "WITH c AS (INSERT INTO log_chunks (job_id, start, data) SELECT %s, %s, %s WHERE "
            "%s::integer IS NULL OR EXISTS (SELECT 1 FROM jobs WHERE id = %s AND lease_epoch = "
            "%s) ON CONFLICT DO NOTHING RETURNING job_id) SELECT pg_notify(%s, %s) FROM c",
            (job_id, start, data, epoch, job_id, epoch, LOG_CHANNEL, str(job_id)),
        )

    # -- leases (runner.py), judged by the database's clock (pploy_now()) ---------------

    def take_lease(self, job_id: int, seconds: float) -> int | None:
        """As :meth:`pploy.deploy.store.Store.take_lease`."""
        row = self.execute(
            "UPDATE jobs SET lease_epoch = 1, lease_until = pploy_now() + %s WHERE id = %s "
            "AND status = 'running' AND lease_epoch = 0 AND lease_until > pploy_now() "
            "RETURNING lease_epoch",
            (seconds, job_id),
        ).fetchone()
        return int(row["lease_epoch"]) if row else None

    def renew_lease(self, job_id: int, epoch: int | None, seconds: float) -> bool:
        """As :meth:`pploy.deploy.store.Store.renew_lease`."""
        row = self.execute(
            "UPDATE jobs SET lease_until = pploy_now() + %s WHERE id = %s AND status = "
            "'running' AND lease_epoch = %s AND lease_until > pploy_now() RETURNING id",
            (seconds, job_id, epoch),
        ).fetchone()
        return row is not None

    def write_job(self, job_id: int, epoch: int | None, **fields: Any) -> bool:
        """As :meth:`pploy.deploy.store.Store.write_job` (viewers elsewhere learn an end)."""
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
        """As :meth:`pploy.deploy.store.Store.interrupt_job`, expiry by the database's clock."""
        row = self.execute(
            "UPDATE jobs SET status = 'interrupted', ended_at = pploy_now(), message = %s, "
            "log_bytes = %s, lease_epoch = lease_epoch + 1 WHERE id = %s "
            "AND status = 'running' AND (NOT %s OR lease_until < pploy_now()) RETURNING id",
            (message, log_bytes, job_id, expired_only),
        ).fetchone()
        if row is not None:
            self.notify(LOG_CHANNEL, str(job_id))
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
            "SELECT COALESCE(MAX(start + length(data)), 0) AS e FROM log_chunks WHERE job_id = %s",
            (job_id,),
        ).fetchone()
        return int(row["e"]) if row else 0

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
