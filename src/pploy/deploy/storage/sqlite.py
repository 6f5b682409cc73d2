"""SQLite persistence for locks and job history (standard library sqlite3, WAL).

Every call is a short statement on one connection owned by the event loop's thread; SQLite
answers in microseconds, so there is no thread pool and no ORM.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from pploy.deploy.domain.govrecords import AdHocFreeze, AuditEvent, QueuedUser

# The records live in the domain; imported from here by code written before the move.
from pploy.deploy.domain.records import (
    ApiToken,
    JobAlreadyRunning,
    JobRecord,
    Lock,
    Repository,
    StoreUnavailable,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS locks (
    project    TEXT PRIMARY KEY,
    user       TEXT NOT NULL,
    gained_at  REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    project      TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('checkout', 'deploy')),
    env          TEXT,
    ref          TEXT,
    sha          TEXT,
    user         TEXT NOT NULL,
    started_at   REAL NOT NULL,
    ended_at     REAL,
    exit_code    INTEGER,
    signal       INTEGER,
    status       TEXT NOT NULL,
    cancelled_by TEXT,
    message      TEXT,
    log_bytes    INTEGER NOT NULL DEFAULT 0,
    repository   INTEGER,
    url          TEXT,
    token        TEXT,
    instance     TEXT,
    heartbeat_at REAL,
    approved_by  TEXT,
    freeze_override TEXT,
    lease_epoch  INTEGER NOT NULL DEFAULT 0,
    lease_until  REAL
);
CREATE INDEX IF NOT EXISTS jobs_project ON jobs (project, id);
CREATE TABLE IF NOT EXISTS repositories (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    project    TEXT NOT NULL,
    url        TEXT NOT NULL,
    added_at   REAL NOT NULL,
    removed_at REAL,
    removed_by TEXT
);
CREATE INDEX IF NOT EXISTS repositories_project ON repositories (project, id);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user         TEXT NOT NULL,
    email        TEXT,
    name         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    created_at   REAL NOT NULL,
    expires_at   REAL,
    last_used_at REAL,
    revoked_at   REAL
);
CREATE INDEX IF NOT EXISTS tokens_user ON tokens (user, id);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_running ON jobs (project) WHERE status = 'running';
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_awaiting ON jobs (project)
    WHERE status = 'awaiting_approval';
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      REAL NOT NULL,
    user    TEXT,
    kind    TEXT NOT NULL,
    project TEXT,
    env     TEXT,
    job     INTEGER,
    detail  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at, id);
CREATE TABLE IF NOT EXISTS freezes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL,
    envs       TEXT NOT NULL,
    projects   TEXT NOT NULL,
    starts_at  REAL NOT NULL,
    until      REAL NOT NULL,
    reason     TEXT NOT NULL,
    created_by TEXT NOT NULL,
    ended_at   REAL,
    ended_by   TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS freezes_current ON freezes (name) WHERE ended_at IS NULL;
CREATE TABLE IF NOT EXISTS lock_queue (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    user    TEXT NOT NULL,
    since   REAL NOT NULL,
    UNIQUE (project, user)
);
"""

# PRAGMA user_version: 0 = the first schema (jobs without repository/url), 1 = with them,
# 2 = API tokens (the tokens table, jobs.token), 3 = jobs.instance and heartbeat_at, and at
# most one running job per project (an index), 4 = governance (the audit, freezes and
# lock_queue tables, jobs.approved_by and freeze_override), 5 = jobs' leases (lease_epoch,
# lease_until: the job runner's, see jobs/runner.py).
SCHEMA_VERSION = 5

# What of a job's record may change after it was created.
UPDATABLE_JOB_FIELDS = frozenset({
    "sha", "ended_at", "exit_code", "signal", "status", "cancelled_by", "message", "log_bytes",
})  # fmt: skip


def job_assignments(fields: dict[str, Any], mark: str) -> str:
    """``a = ?, b = ?`` for an UPDATE of ``fields`` (``mark``: the engine's placeholder);
    ValueError for a field that may not change."""
    unknown = set(fields) - UPDATABLE_JOB_FIELDS
    if unknown:
        raise ValueError(f"cannot update job fields {sorted(unknown)}")
    return ", ".join(f"{key} = {mark}" for key in fields)


# SQLite result codes (the low byte of an extended code) that mean the storage, not the
# statement, failed: a full disk, an I/O error, a file that cannot be opened, a lock held
# too long. They are the machine's state, so the answer is 503, not a plain 500.
STORAGE_FAILURES = {
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_BUSY,
}  # fmt: skip


class _GuardedConnection(sqlite3.Connection):
    """A connection whose storage failures raise StoreUnavailable (503 to the user)."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in STORAGE_FAILURES:
                raise StoreUnavailable(f"pploy's database is unavailable: {exc}") from exc
            raise


class Store:
    """Locks and jobs in one SQLite file."""

    shared = False  # one pploy per file (the workdir lock): nothing travels through it

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, factory=_GuardedConnection
        )
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._migrate()
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        """Bring a pploy.db written by an older pploy to SCHEMA_VERSION, in one transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            columns = {row["name"] for row in self.db.execute("PRAGMA table_info(jobs)")}
            if version < 1 and columns and "repository" not in columns:
                self.db.execute("ALTER TABLE jobs ADD COLUMN repository INTEGER")
                self.db.execute("ALTER TABLE jobs ADD COLUMN url TEXT")
            if version < 2 and columns and "token" not in columns:
                self.db.execute("ALTER TABLE jobs ADD COLUMN token TEXT")
            if version < 3 and columns and "instance" not in columns:
                self.db.execute("ALTER TABLE jobs ADD COLUMN instance TEXT")
                self.db.execute("ALTER TABLE jobs ADD COLUMN heartbeat_at REAL")
                # Only the newest running job of a project can stay running (the new index).
                self.db.execute(
                    "UPDATE jobs SET status = 'interrupted' WHERE status = 'running' AND id NOT IN"
                    " (SELECT MAX(id) FROM jobs WHERE status = 'running' GROUP BY project)"
                )
            if version < 4 and columns and "approved_by" not in columns:
                self.db.execute("ALTER TABLE jobs ADD COLUMN approved_by TEXT")
                self.db.execute("ALTER TABLE jobs ADD COLUMN freeze_override TEXT")
            if version < 5 and columns and "lease_epoch" not in columns:
                self.db.execute(
                    "ALTER TABLE jobs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0"
                )
                self.db.execute("ALTER TABLE jobs ADD COLUMN lease_until REAL")
            if version < SCHEMA_VERSION:
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- repositories ----------------------------------------------------------

    def add_repository(self, project: str, url: str, added_at: float | None = None) -> Repository:
        """Record that ``project`` now is a clone of ``url`` (a password-free URL)."""
        cur = self.db.execute(
            "INSERT INTO repositories (project, url, added_at) VALUES (?, ?, ?)",
            (project, url, time.time() if added_at is None else added_at),
        )
        repository = self.get_repository(int(cur.lastrowid or 0))
        assert repository is not None
        return repository

    def adopt_repository(self, project: str, url: str) -> Repository:
        """A clone made before repositories were recorded: record it, and give it the jobs
        that name no repository (until then removing a project deleted its jobs, so they are
        this clone's)."""
        repository = self.add_repository(project, url, added_at=0.0)
        self.db.execute(
            "UPDATE jobs SET repository = ?, url = ? WHERE project = ? AND repository IS NULL",
            (repository.id, url, project),
        )
        return repository

    def get_repository(self, repository_id: int) -> Repository | None:
        row = self.db.execute(
            "SELECT * FROM repositories WHERE id = ?", (repository_id,)
        ).fetchone()
        return Repository(**dict(row)) if row else None

    def current_repository(self, project: str) -> Repository | None:
        row = self.db.execute(
            "SELECT * FROM repositories WHERE project = ? AND removed_at IS NULL "
            "ORDER BY id DESC LIMIT 1",
            (project,),
        ).fetchone()
        return Repository(**dict(row)) if row else None

    def current_repositories(self) -> list[Repository]:
        """Every project's current repository (what a workdir should have cloned)."""
        rows = self.db.execute(
            "SELECT * FROM repositories WHERE id IN (SELECT MAX(id) FROM repositories "
            "WHERE removed_at IS NULL GROUP BY project) ORDER BY project"
        )
        return [Repository(**dict(row)) for row in rows]

    def remove_project(self, project: str, user: str) -> None:
        """The project's clone is gone: its repository is marked removed (by whom, when) and its
        lock released. Its job records stay: they are the audit trail."""
        self.db.execute(
            "UPDATE repositories SET removed_at = ?, removed_by = ? "
            "WHERE project = ? AND removed_at IS NULL",
            (time.time(), user, project),
        )
        self.db.execute("DELETE FROM locks WHERE project = ?", (project,))
        self.db.execute("DELETE FROM lock_queue WHERE project = ?", (project,))

    # -- locks ---------------------------------------------------------------

    def get_lock(self, project: str, now: float | None = None) -> Lock | None:
        """The project's lock, or None when there is none or it has expired (expiry is checked
        here, on every read, so no background sweeper is needed)."""
        now = time.time() if now is None else now
        row = self.db.execute("SELECT * FROM locks WHERE project = ?", (project,)).fetchone()
        if row is None:
            return None
        if row["expires_at"] <= now:
            try:
                self.db.execute(
                    "DELETE FROM locks WHERE project = ? AND expires_at <= ?", (project, now)
                )
            except StoreUnavailable:
                pass  # tidying only: the lock is expired whether or not its row is gone
            return None
        return Lock(**dict(row))

    def put_lock(self, lock: Lock) -> None:
        self.db.execute(
            "INSERT INTO locks (project, user, gained_at, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (project) DO UPDATE SET user = excluded.user, "
            "gained_at = excluded.gained_at, expires_at = excluded.expires_at",
            (lock.project, lock.user, lock.gained_at, lock.expires_at),
        )

    def delete_lock(self, project: str) -> None:
        self.db.execute("DELETE FROM locks WHERE project = ?", (project,))

    # Each of these is one statement that checks and writes together, so two pploys sharing a
    # database can never both win (see storage.Storage).

    def gain_lock(self, project: str, user: str, now: float, seconds: float) -> Lock | None:
        """The lock for ``user`` (new, or theirs renewed, never shortened); None when someone
        else holds it."""
        row = self.db.execute(
            "INSERT INTO locks (project, user, gained_at, expires_at) VALUES (?1, ?2, ?3, ?4) "
            "ON CONFLICT (project) DO UPDATE SET user = excluded.user, "
            "gained_at = CASE WHEN locks.expires_at > ?3 THEN locks.gained_at ELSE ?3 END, "
            "expires_at = CASE WHEN locks.expires_at > ?3 THEN MAX(locks.expires_at, ?4) "
            "ELSE ?4 END WHERE locks.user = excluded.user OR locks.expires_at <= ?3 RETURNING *",
            (project, user, now, now + seconds),
        ).fetchone()
        return Lock(**dict(row)) if row else None

    def extend_lock(self, project: str, user: str, now: float, seconds: float) -> Lock | None:
        """``user``'s unexpired lock made ``seconds`` longer; None when they hold none."""
        row = self.db.execute(
            "UPDATE locks SET expires_at = expires_at + ? WHERE project = ? AND user = ? "
            "AND expires_at > ? RETURNING *",
            (seconds, project, user, now),
        ).fetchone()
        return Lock(**dict(row)) if row else None

    def release_lock(self, project: str, user: str, now: float) -> bool:
        """Delete ``user``'s unexpired lock; False when they hold none."""
        cur = self.db.execute(
            "DELETE FROM locks WHERE project = ? AND user = ? AND expires_at > ?",
            (project, user, now),
        )
        return cur.rowcount > 0

    def keep_lock_until(self, project: str, user: str, now: float, until: float) -> None:
        """``user``'s unexpired lock lasts at least until ``until`` (a job of theirs runs)."""
        self.db.execute(
            "UPDATE locks SET expires_at = ? WHERE project = ? AND user = ? AND expires_at > ? "
            "AND expires_at < ?",
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
        """A new running job; JobAlreadyRunning when the project has one (the index says).
        Its lease (epoch 0, until its runner takes it) lasts ``lease_seconds``."""
        current = self.current_repository(project)
        started = started_at or time.time()
        try:
            cur = self.db.execute(
                "INSERT INTO jobs (project, kind, env, ref, sha, user, started_at, status, "
                "repository, url, token, instance, heartbeat_at, lease_until) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (
                    project, kind, env, ref, sha, user, started,
                    current.id if current else None, current.url if current else None,
                    token, instance, started, time.time() + lease_seconds,
                ),
            )  # fmt: skip
        except sqlite3.IntegrityError as exc:
            if "jobs.project" in str(exc):
                raise JobAlreadyRunning(project) from exc
            raise
        job = self.get_job(int(cur.lastrowid or 0))
        assert job is not None
        return job

    def update_job(self, job_id: int, **fields: Any) -> None:
        assignments = job_assignments(fields, "?")
        if not fields:
            return
        self.db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))  # noqa: S608

    # -- leases (runner.py): one clock here, this machine's ----------------------------

    def take_lease(self, job_id: int, seconds: float) -> int | None:
        """The job's runner takes its lease (epoch 0 → 1); None when the job is no longer
        running or its lease was taken or has expired."""
        now = time.time()
        row = self.db.execute(
            "UPDATE jobs SET lease_epoch = 1, lease_until = ? WHERE id = ? AND status = "
            "'running' AND lease_epoch = 0 AND lease_until > ? RETURNING lease_epoch",
            (now + seconds, job_id, now),
        ).fetchone()
        return int(row[0]) if row else None

    def renew_lease(self, job_id: int, epoch: int | None, seconds: float) -> bool:
        """Push the lease ``seconds`` further; False when it is no longer ``epoch``'s (the
        job was declared lost, or has ended) or has already expired."""
        now = time.time()
        cur = self.db.execute(
            "UPDATE jobs SET lease_until = ? WHERE id = ? AND status = 'running' "
            "AND lease_epoch = ? AND lease_until > ?",
            (now + seconds, job_id, epoch, now),
        )
        return cur.rowcount > 0

    def write_job(self, job_id: int, epoch: int | None, **fields: Any) -> bool:
        """``update_job`` for the holder of the lease ``epoch`` of a running job: False (and
        nothing written) when the lease is another's or the job has ended."""
        if not fields:
            raise ValueError("nothing to write")
        assignments = job_assignments(fields, "?")
        cur = self.db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND status = 'running' "  # noqa: S608
            "AND lease_epoch = ?",
            (*fields.values(), job_id, epoch),
        )
        return cur.rowcount > 0

    def interrupt_job(
        self, job_id: int, *, message: str, log_bytes: int, expired_only: bool = False
    ) -> bool:
        """Declare a running job ``interrupted`` (its lock and log stay) and move its lease to
        a new epoch, so its runner's late writes are refused; with ``expired_only``, only
        once its lease has expired. False when it was not (ended, renewed, or done by
        another)."""
        now = time.time()
        cur = self.db.execute(
            "UPDATE jobs SET status = 'interrupted', ended_at = ?, message = ?, log_bytes = ?, "
            "lease_epoch = lease_epoch + 1 WHERE id = ? AND status = 'running' "
            "AND (NOT ? OR lease_until < ?)",
            (now, message, log_bytes, job_id, expired_only, now),
        )
        return cur.rowcount > 0

    def expired_jobs(self) -> list[JobRecord]:
        """Running jobs whose lease has expired."""
        rows = self.db.execute(
            "SELECT * FROM jobs WHERE status = 'running' AND lease_until < ? ORDER BY id",
            (time.time(),),
        )
        return [JobRecord(**dict(row)) for row in rows]

    def get_job(self, job_id: int) -> JobRecord | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord(**dict(row)) if row else None

    def list_jobs(self, project: str | None = None, limit: int = 50) -> list[JobRecord]:
        if project is None:
            rows = self.db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self.db.execute(
                "SELECT * FROM jobs WHERE project = ? ORDER BY id DESC LIMIT ?", (project, limit)
            )
        return [JobRecord(**dict(row)) for row in rows]

    def running_jobs(self, instance: str | None = None) -> list[JobRecord]:
        """Jobs recorded as running (by ``instance``, or by anyone: one pploy per file)."""
        rows = self.db.execute("SELECT * FROM jobs WHERE status = 'running' ORDER BY id")
        return [JobRecord(**dict(row)) for row in rows]

    def last_successful_deploys(self, project: str) -> dict[str, JobRecord]:
        """Per environment, the newest deploy that succeeded."""
        rows = self.db.execute(
            "SELECT * FROM jobs WHERE id IN (SELECT MAX(id) FROM jobs WHERE project = ? "
            "AND kind = 'deploy' AND status = 'succeeded' GROUP BY env)",
            (project,),
        )
        return {row["env"]: JobRecord(**dict(row)) for row in rows}

    def last_job(self, project: str, kind: str | None = None) -> JobRecord | None:
        if kind:
            row = self.db.execute(
                "SELECT * FROM jobs WHERE project = ? AND kind = ? ORDER BY id DESC LIMIT 1",
                (project, kind),
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT * FROM jobs WHERE project = ? ORDER BY id DESC LIMIT 1", (project,)
            ).fetchone()
        return JobRecord(**dict(row)) if row else None

    def find_jobs(
        self, project: str, filters: dict[str, str], query: str, limit: int, offset: int
    ) -> tuple[list[JobRecord], int]:
        """One page of a project's jobs, newest first, and how many match in all. ``filters``
        maps env/kind/status/user to an exact value; ``query`` is found (case-insensitively)
        in the ref, commit, user, environment or message. Values are bound, never spliced."""
        where = ["project = ?"]
        params: list[Any] = [project]
        for column in ("env", "kind", "status", "user"):
            if filters.get(column):
                where.append(f"{column} = ?")
                params.append(filters[column])
        if query:
            escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = f"%{escaped}%"
            where.append(
                "(" + " OR ".join(
                    f"COALESCE({c}, '') LIKE ? ESCAPE '\\'"
                    for c in ("ref", "sha", "user", "env", "message")
                ) + ")"
            )  # fmt: skip
            params += [pattern] * 5
        condition = " AND ".join(where)
        count = f"SELECT COUNT(*) AS n FROM jobs WHERE {condition}"  # noqa: S608
        total = self.db.execute(count, params).fetchone()["n"]
        rows = self.db.execute(
            f"SELECT * FROM jobs WHERE {condition} ORDER BY id DESC LIMIT ? OFFSET ?",  # noqa: S608
            (*params, limit, offset),
        )
        return [JobRecord(**dict(row)) for row in rows], total

    def last_failed_deploy(self, project: str) -> JobRecord | None:
        """The newest finished deploy of a project that did not succeed, if it is newer than
        its last successful deploy (a failed attempt the index shows beside the success)."""
        row = self.db.execute(
            "SELECT * FROM jobs WHERE project = ? AND kind = 'deploy' AND status NOT IN "
            "('succeeded', 'running') AND id > COALESCE((SELECT MAX(id) FROM jobs WHERE "
            "project = ? AND kind = 'deploy' AND status = 'succeeded'), 0) "
            "ORDER BY id DESC LIMIT 1",
            (project, project),
        ).fetchone()
        return JobRecord(**dict(row)) if row else None

    def job_ids_beyond(self, project: str, keep: int) -> list[int]:
        """Finished jobs of a project older than the newest ``keep`` (their logs may go)."""
        rows = self.db.execute(
            "SELECT id FROM jobs WHERE project = ? AND status != 'running' AND id NOT IN "
            "(SELECT id FROM jobs WHERE project = ? ORDER BY id DESC LIMIT ?)",
            (project, project, keep),
        )
        return [row["id"] for row in rows]

    # -- API tokens (only their SHA-256 is stored; see pploy.deploy.domain.tokens) ------------

    def add_token(
        self, *, user: str, email: str | None, name: str, digest: str, expires_at: float | None
    ) -> ApiToken:
        cur = self.db.execute(
            "INSERT INTO tokens (user, email, name, hash, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (user, email, name, digest, time.time(), expires_at),
        )
        token = self.get_token(int(cur.lastrowid or 0))
        assert token is not None
        return token

    def get_token(self, token_id: int) -> ApiToken | None:
        row = self.db.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return ApiToken.from_row(row) if row else None

    def token_by_hash(self, digest: str) -> ApiToken | None:
        row = self.db.execute("SELECT * FROM tokens WHERE hash = ?", (digest,)).fetchone()
        return ApiToken.from_row(row) if row else None

    def list_tokens(self, user: str) -> list[ApiToken]:
        rows = self.db.execute("SELECT * FROM tokens WHERE user = ? ORDER BY id", (user,))
        return [ApiToken.from_row(row) for row in rows]

    def revoke_token(self, token_id: int) -> None:
        self.db.execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), token_id),
        )

    def token_used(self, token_id: int, when: float) -> None:
        self.db.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (when, token_id))

    def job_counts(self) -> dict[tuple[str, str], int]:
        """Finished jobs ever recorded, by ``(kind, status)`` (records are never deleted, so
        these only grow: Prometheus counters)."""
        rows = self.db.execute(
            "SELECT kind, status, COUNT(*) AS n FROM jobs "
            "WHERE status NOT IN ('running', 'awaiting_approval') "
            "GROUP BY kind, status"
        )
        return {(row["kind"], row["status"]): row["n"] for row in rows}

    # -- governance (issue 25): the audit trail, ad-hoc freezes, lock queues, approvals ------

    def add_audit(
        self, *, at: float, user: str | None, kind: str, project: str | None, env: str | None,
        job: int | None, detail: dict[str, Any],
    ) -> None:  # fmt: skip
        self.db.execute(
            "INSERT INTO audit (at, user, kind, project, env, job, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, user, kind, project, env, job, json.dumps(detail)),
        )

    def list_audit(self, since: float | None, kinds: list[str], limit: int) -> list[AuditEvent]:
        """Audit events, oldest first, from ``since`` on; ``kinds``: exact kinds or
        ``prefix.*``, any of them (empty: all)."""
        where, params = audit_filter(since, kinds, "?")
        rows = self.db.execute(
            f"SELECT * FROM audit WHERE {where} ORDER BY at, id LIMIT ?",  # noqa: S608
            (*params, limit),
        )
        return [AuditEvent.from_row(row) for row in rows]

    def add_freeze(
        self, *, name: str, envs: list[str], projects: list[str], starts_at: float,
        until: float, reason: str, created_by: str,
    ) -> AdHocFreeze | None:  # fmt: skip
        """A new ad-hoc freeze; None when one of that name is in force."""
        self.db.execute(
            "UPDATE freezes SET ended_at = until WHERE ended_at IS NULL AND until <= ?",
            (starts_at,),
        )
        try:
            cur = self.db.execute(
                "INSERT INTO freezes (name, envs, projects, starts_at, until, reason, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, json.dumps(envs), json.dumps(projects), starts_at, until, reason,
                 created_by),
            )  # fmt: skip
        except sqlite3.IntegrityError:
            return None
        row = self.db.execute("SELECT * FROM freezes WHERE id = ?", (cur.lastrowid,)).fetchone()
        return AdHocFreeze.from_row(row)

    def current_freezes(self, now: float) -> list[AdHocFreeze]:
        """Ad-hoc freezes not ended and not past their end."""
        rows = self.db.execute(
            "SELECT * FROM freezes WHERE ended_at IS NULL AND until > ? ORDER BY id", (now,)
        )
        return [AdHocFreeze.from_row(row) for row in rows]

    def end_freeze(self, name: str, user: str, now: float) -> AdHocFreeze | None:
        """End the ad-hoc freeze ``name`` in force; None when there is none."""
        row = self.db.execute(
            "UPDATE freezes SET ended_at = ?, ended_by = ? WHERE name = ? AND ended_at IS NULL "
            "AND until > ? RETURNING *",
            (now, user, name, now),
        ).fetchone()
        return AdHocFreeze.from_row(row) if row else None

    def queue_for_lock(self, project: str, user: str, now: float) -> bool:
        """Put ``user`` at the end of the project's lock queue; False when already there (the
        place is kept)."""
        cur = self.db.execute(
            "INSERT INTO lock_queue (project, user, since) VALUES (?, ?, ?) "
            "ON CONFLICT (project, user) DO NOTHING",
            (project, user, now),
        )
        return cur.rowcount > 0

    def leave_lock_queue(self, project: str, user: str) -> bool:
        cur = self.db.execute(
            "DELETE FROM lock_queue WHERE project = ? AND user = ?", (project, user)
        )
        return cur.rowcount > 0

    def lock_queue(self, project: str) -> list[QueuedUser]:
        rows = self.db.execute(
            "SELECT project, user, since FROM lock_queue WHERE project = ? ORDER BY id",
            (project,),
        )
        return [QueuedUser(**dict(row)) for row in rows]

    def grant_next(self, project: str, now: float, seconds: float) -> Lock | None:
        """Give the free lock to the first in its queue (who leaves it), in one transaction;
        None when the lock is held or nobody waits."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute(
                "SELECT user FROM lock_queue WHERE project = ? ORDER BY id LIMIT 1", (project,)
            ).fetchone()
            lock = None
            if row is not None:
                granted = self.db.execute(
                    "INSERT INTO locks (project, user, gained_at, expires_at) "
                    "VALUES (?1, ?2, ?3, ?4) ON CONFLICT (project) DO UPDATE SET "
                    "user = excluded.user, gained_at = ?3, expires_at = ?4 "
                    "WHERE locks.expires_at <= ?3 RETURNING *",
                    (project, row["user"], now, now + seconds),
                ).fetchone()
                if granted is not None:
                    self.db.execute(
                        "DELETE FROM lock_queue WHERE project = ? AND user = ?",
                        (project, row["user"]),
                    )
                    lock = Lock(**dict(granted))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return lock

    def request_job(
        self, *, project: str, kind: str, user: str, env: str | None, sha: str | None,
        token: str | None, freeze_override: dict[str, str] | None,
    ) -> JobRecord:  # fmt: skip
        """A job awaiting approval (config ``approvals``): nothing runs until it is approved.
        JobAlreadyRunning when the project has one waiting already."""
        current = self.current_repository(project)
        try:
            cur = self.db.execute(
                "INSERT INTO jobs (project, kind, env, sha, user, started_at, status, "
                "repository, url, token, freeze_override) "
                "VALUES (?, ?, ?, ?, ?, ?, 'awaiting_approval', ?, ?, ?, ?)",
                (
                    project, kind, env, sha, user, time.time(),
                    current.id if current else None, current.url if current else None, token,
                    json.dumps(freeze_override) if freeze_override else None,
                ),
            )  # fmt: skip
        except sqlite3.IntegrityError as exc:
            raise JobAlreadyRunning(project) from exc
        job = self.get_job(int(cur.lastrowid or 0))
        assert job is not None
        return job

    def settle_job(
        self, job_id: int, expect: str, *, lease_seconds: float | None = None, **fields: Any
    ) -> bool:
        """Move a job from status ``expect`` (one statement: two approvers cannot both start
        it); False when it is no longer in ``expect``. JobAlreadyRunning when it would
        become the project's second running job. ``lease_seconds``: the job turns running,
        with a lease that long for its runner to take (see take_lease)."""
        allowed = {"status", "approved_by", "started_at", "ended_at", "message", "instance",
                   "freeze_override", "heartbeat_at"}  # fmt: skip
        if set(fields) - allowed:
            raise ValueError(f"cannot settle job fields {sorted(set(fields) - allowed)}")
        values = [json.dumps(v) if isinstance(v, list | dict) else v for v in fields.values()]
        assignments = ", ".join(f"{key} = ?" for key in fields)
        if lease_seconds is not None:
            assignments += ", lease_epoch = 0, lease_until = ?"
            values.append(time.time() + lease_seconds)
        try:
            cur = self.db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND status = ?",  # noqa: S608
                (*values, job_id, expect),
            )
        except sqlite3.IntegrityError as exc:
            raise JobAlreadyRunning(str(fields.get("project", "the project"))) from exc
        return cur.rowcount > 0

    def awaiting_jobs(self) -> list[JobRecord]:
        rows = self.db.execute("SELECT * FROM jobs WHERE status = 'awaiting_approval' ORDER BY id")
        return [JobRecord(**dict(row)) for row in rows]


def audit_filter(since: float | None, kinds: list[str], mark: str) -> tuple[str, list[Any]]:
    """The WHERE clause of an audit query (both engines; ``mark`` is the placeholder)."""
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    if since is not None:
        where.append(f"at >= {mark}")
        params.append(since)
    if kinds:
        alternatives = []
        for kind in kinds:
            if kind.endswith(".*"):
                alternatives.append(f"kind LIKE {mark}")
                params.append(kind[:-1] + "%")  # kinds are checked: [a-z.]
            else:
                alternatives.append(f"kind = {mark}")
                params.append(kind)
        where.append("(" + " OR ".join(alternatives) + ")")
    return " AND ".join(where), params
