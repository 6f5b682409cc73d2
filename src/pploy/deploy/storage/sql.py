"""What pploy keeps in its database, written once for both engines.

:class:`SqlStore` implements :class:`~pploy.deploy.domain.records.Storage`: every statement
is here, once, in the SQL that SQLite and PostgreSQL share. An engine
(:class:`~pploy.deploy.storage.sqlite.Store`, :class:`~pploy.deploy.storage.postgres.PgStore`)
is a subclass that supplies only how a statement reaches its database — the **dialect
adapter** (:class:`Engine`):

- placeholders: statements are written with ``?`` (positional) or ``:name`` (named), SQLite's
  own; the PostgreSQL engine rewrites them to psycopg's ``%s`` / ``%(name)s`` once per
  statement text (cached);
- functions: ``pploy_now()`` (seconds since the epoch by the database's clock) and
  ``GREATEST(a, b)`` are PostgreSQL's; the SQLite engine registers both on its connection;
- values: JSON columns go through :meth:`Engine.json` (text in SQLite, ``jsonb`` in
  PostgreSQL); rows come back as dicts either way;
- errors: a unique index refusing a row is :class:`Duplicate`, a database that cannot answer
  is StoreUnavailable (503), any other refusal :class:`StoreError`, whichever driver raised it;
- transactions: :meth:`Engine.transaction` runs a function as one transaction that other
  writers wait for;
- schema: the migrations (:mod:`pploy.deploy.storage.migrations`) are one list for both, the
  engine supplies its column types.

Why not SQLAlchemy Core: see the README's Architecture section (measured with ``python -m
bench.storage``: 14× the cost of a lock read on SQLite, and PostgreSQL's worker thread and
circuit breaker would stay ours).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from pploy.deploy.domain.errors import Conflict, PployError
from pploy.deploy.domain.govrecords import AdHocFreeze, AuditEvent, QueuedUser
from pploy.deploy.domain.records import ApiToken, JobAlreadyRunning, JobRecord, Lock, Repository
from pploy.deploy.domain.records import StoreError as StoreError

# PostgreSQL's notification channels (no-ops on SQLite: one pploy per file, nobody to tell).
LOG_CHANNEL = "pploy_log"  # payload: "<job id>" — a chunk or the job's end landed
PROJECTS_CHANNEL = "pploy_projects"  # payload: the project name added or removed
CANCEL_CHANNEL = "pploy_cancel"  # payload: "<job id> <user>" — the lock holder cancelled it

# The ends of a job that ran, announced by job.finished (a rejected or expired request for
# approval has its own events), as spliced into the statements below.
RAN_ENDS = "('succeeded', 'failed', 'cancelled', 'interrupted', 'timed_out')"

Params = Sequence[Any] | Mapping[str, Any]
T = TypeVar("T")

# What of a job's record may change after it was created.
UPDATABLE_JOB_FIELDS = frozenset({
    "sha", "ended_at", "exit_code", "signal", "status", "cancelled_by", "message", "log_bytes",
})  # fmt: skip
# What approving, rejecting or expiring a job awaiting approval may set.
SETTLED_JOB_FIELDS = frozenset({
    "status", "approved_by", "started_at", "ended_at", "message", "instance", "freeze_override",
    "heartbeat_at",
})  # fmt: skip


class Duplicate(Exception):
    """A unique index refused a row (a second running job, a second current repository, a
    second freeze of one name): each engine raises it for its driver's unique violation, the
    store turns it into what it means."""


class Result:
    """A statement's rows (dicts), read in full, and how many rows it changed."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[dict[str, Any]], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> dict[str, Any] | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[dict[str, Any]]:
        return self.rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)


class Executor(Protocol):
    """Runs one statement (see the module docstring for its placeholders)."""

    def execute(self, sql: str, params: Params = ()) -> Result: ...


class Engine(Executor, Protocol):
    """What an engine supplies to :class:`SqlStore` and the migrations: the dialect adapter."""

    #: "sqlite" or "postgresql": which part of a migration is this engine's.
    dialect: str

    @property
    def types(self) -> Mapping[str, str]:
        """Column types of the migrations' scripts: ``{id}``, ``{real}``, ``{bigint}``,
        ``{json}``."""
        ...

    def transaction(self, fn: Callable[[Executor], T]) -> T: ...
    def json(self, value: Any) -> Any: ...
    def notify(self, channel: str, payload: str) -> None: ...


def job_assignments(fields: Mapping[str, Any], allowed: frozenset[str]) -> str:
    """``a = ?, b = ?`` for an UPDATE of ``fields``; ValueError for a field not ``allowed``
    (field names are spliced into the statement, so only known names ever are)."""
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"cannot update job fields {sorted(unknown)}")
    return ", ".join(f"{key} = ?" for key in fields)


def audit_filter(since: float | None, kinds: list[str]) -> tuple[str, list[Any]]:
    """The WHERE clause of an audit query: from ``since`` on, any of ``kinds`` (exact, or
    ``prefix.*``)."""
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    if since is not None:
        where.append("at >= ?")
        params.append(since)
    if kinds:
        alternatives = []
        for kind in kinds:
            if kind.endswith(".*"):
                alternatives.append("kind LIKE ?")
                params.append(kind[:-1] + "%")  # kinds are checked: [a-z.]
            else:
                alternatives.append("kind = ?")
                params.append(kind)
        where.append("(" + " OR ".join(alternatives) + ")")
    return " AND ".join(where), params


def _jobs(result: Result) -> list[JobRecord]:
    return [JobRecord(**row) for row in result]


def _job(result: Result) -> JobRecord | None:
    row = result.fetchone()
    return JobRecord(**row) if row else None


class SqlStore:
    """Locks, repositories, jobs, tokens and governance records, by statements both engines
    run. Subclasses supply :class:`Engine`'s methods."""

    shared = False  # True: other pploy instances share the database (PostgreSQL)

    # -- the engine's part (see Engine) ----------------------------------------------

    dialect: str
    types: Mapping[str, str]

    def execute(self, sql: str, params: Params = ()) -> Result:
        raise NotImplementedError

    def transaction(self, fn: Callable[[Executor], T]) -> T:
        raise NotImplementedError

    def json(self, value: Any) -> Any:
        raise NotImplementedError

    def notify(self, channel: str, payload: str) -> None:
        """Tell the other instances (PostgreSQL's NOTIFY); nothing to do alone."""

    def close(self) -> None:
        raise NotImplementedError

    # -- repositories ----------------------------------------------------------

    def add_repository(self, project: str, url: str, added_at: float | None = None) -> Repository:
        """Record that ``project`` now is a clone of ``url`` (a password-free URL); Conflict
        when the name has a current repository already (an index says: one per name)."""
        try:
            row = self.execute(
                "INSERT INTO repositories (project, url, added_at) VALUES (?, ?, ?) RETURNING *",
                (project, url, time.time() if added_at is None else added_at),
            ).fetchone()
        except Duplicate as exc:
            raise Conflict(f"a project named {project!r} already exists") from exc
        self.notify(PROJECTS_CHANNEL, project)
        assert row is not None  # INSERT ... RETURNING
        return Repository(**row)

    def adopt_repository(self, project: str, url: str) -> Repository:
        """A clone made before repositories were recorded: record it, and give it the jobs
        that name no repository (until then removing a project deleted its jobs, so they are
        this clone's)."""
        repository = self.add_repository(project, url, added_at=0.0)
        self.execute(
            "UPDATE jobs SET repository = ?, url = ? WHERE project = ? AND repository IS NULL",
            (repository.id, url, project),
        )
        return repository

    def get_repository(self, repository_id: int) -> Repository | None:
        row = self.execute("SELECT * FROM repositories WHERE id = ?", (repository_id,)).fetchone()
        return Repository(**row) if row else None

    def current_repository(self, project: str) -> Repository | None:
        row = self.execute(
            "SELECT * FROM repositories WHERE project = ? AND removed_at IS NULL "
            "ORDER BY id DESC LIMIT 1",
            (project,),
        ).fetchone()
        return Repository(**row) if row else None

    def current_repositories(self) -> list[Repository]:
        """Every project's current repository (what a workdir should have cloned)."""
        rows = self.execute(
            "SELECT * FROM repositories WHERE id IN (SELECT MAX(id) FROM repositories "
            "WHERE removed_at IS NULL GROUP BY project) ORDER BY project"
        )
        return [Repository(**row) for row in rows]

    def remove_project(self, project: str, user: str) -> None:
        """The project's clone is gone: its repository is marked removed (by whom, when) and its
        lock and queue released. Its job records stay: they are the audit trail."""
        self.execute(
            "UPDATE repositories SET removed_at = ?, removed_by = ? "
            "WHERE project = ? AND removed_at IS NULL",
            (time.time(), user, project),
        )
        self.execute("DELETE FROM locks WHERE project = ?", (project,))
        self.execute("DELETE FROM lock_queue WHERE project = ?", (project,))
        self.notify(PROJECTS_CHANNEL, project)

    # -- locks ---------------------------------------------------------------
    # Each change is one statement that checks and writes together, so two pploys sharing a
    # database can never both win.

    def get_lock(self, project: str, now: float | None = None) -> Lock | None:
        """The project's lock, or None when there is none or it has expired (expiry is checked
        here, on every read, so no background sweeper is needed)."""
        now = time.time() if now is None else now
        row = self.execute("SELECT * FROM locks WHERE project = ?", (project,)).fetchone()
        if row is None:
            return None
        if row["expires_at"] <= now:
            try:
                self.execute(
                    "DELETE FROM locks WHERE project = ? AND expires_at <= ?", (project, now)
                )
            except PployError:
                pass  # tidying only: the lock is expired whether or not its row is gone
            return None
        return Lock(**row)

    def put_lock(self, lock: Lock) -> None:
        self.execute(
            'INSERT INTO locks (project, "user", gained_at, expires_at) VALUES (?, ?, ?, ?) '
            'ON CONFLICT (project) DO UPDATE SET "user" = excluded."user", '
            "gained_at = excluded.gained_at, expires_at = excluded.expires_at",
            (lock.project, lock.user, lock.gained_at, lock.expires_at),
        )

    def delete_lock(self, project: str) -> None:
        self.execute("DELETE FROM locks WHERE project = ?", (project,))

    def gain_lock(self, project: str, user: str, now: float, seconds: float) -> Lock | None:
        """The lock for ``user`` (new, or theirs renewed, never shortened); None when someone
        else holds it."""
        row = self.execute(
            'INSERT INTO locks AS l (project, "user", gained_at, expires_at) '
            "VALUES (:p, :u, :now, :until) "
            'ON CONFLICT (project) DO UPDATE SET "user" = excluded."user", '
            "gained_at = CASE WHEN l.expires_at > :now THEN l.gained_at ELSE :now END, "
            "expires_at = CASE WHEN l.expires_at > :now THEN GREATEST(l.expires_at, :until) "
            'ELSE :until END WHERE l."user" = excluded."user" OR l.expires_at <= :now '
            "RETURNING *",
            {"p": project, "u": user, "now": now, "until": now + seconds},
        ).fetchone()
        return Lock(**row) if row else None

    def extend_lock(self, project: str, user: str, now: float, seconds: float) -> Lock | None:
        """The holder's lock ``seconds`` longer; None when ``user`` does not hold it."""
        row = self.execute(
            'UPDATE locks SET expires_at = expires_at + ? WHERE project = ? AND "user" = ? '
            "AND expires_at > ? RETURNING *",
            (seconds, project, user, now),
        ).fetchone()
        return Lock(**row) if row else None

    def release_lock(self, project: str, user: str, now: float) -> bool:
        """Free the project if ``user`` holds it; False otherwise."""
        cur = self.execute(
            'DELETE FROM locks WHERE project = ? AND "user" = ? AND expires_at > ?',
            (project, user, now),
        )
        return cur.rowcount > 0

    def keep_lock_until(self, project: str, user: str, now: float, until: float) -> bool:
        """Lengthen (never shorten) the holder's lock to ``until`` (a running deploy's, a
        deploy's awaiting approval); True when it was lengthened."""
        cur = self.execute(
            'UPDATE locks SET expires_at = ? WHERE project = ? AND "user" = ? '
            "AND expires_at > ? AND expires_at < ?",
            (until, project, user, now, until),
        )
        return cur.rowcount > 0

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
        try:
            row = self.execute(
                'INSERT INTO jobs (project, kind, env, ref, sha, "user", started_at, status, '
                "repository, url, token, instance, heartbeat_at, lease_until) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, pploy_now(), "
                "pploy_now() + ?) RETURNING *",
                (
                    project, kind, env, ref, sha, user, started_at or time.time(),
                    current.id if current else None, current.url if current else None, token,
                    instance, lease_seconds,
                ),
            ).fetchone()  # fmt: skip
        except Duplicate as exc:
            raise JobAlreadyRunning(project) from exc
        assert row is not None  # INSERT ... RETURNING
        return JobRecord(**row)

    def update_job(self, job_id: int, **fields: Any) -> None:
        """Change a job's record; an end (``status``) is recorded once, never over an end
        recorded already (an ``interrupted`` another instance declared)."""
        assignments = job_assignments(fields, UPDATABLE_JOB_FIELDS)
        if not fields:
            return
        running = " AND status = 'running'" if "status" in fields else ""
        self.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?{running}",  # noqa: S608
            (*fields.values(), job_id),
        )
        if "status" in fields:
            self.notify(LOG_CHANNEL, str(job_id))  # viewers elsewhere learn the end

    # A running job's lease, held by its runner (jobs/runner.py), judged by the database's
    # clock (pploy_now()): one clock for every instance, whatever their own say.

    def take_lease(self, job_id: int, seconds: float) -> int | None:
        """The job's runner takes its lease (epoch 0 → 1); None when the job is no longer
        running or its lease was taken or has expired."""
        row = self.execute(
            "UPDATE jobs SET lease_epoch = 1, lease_until = pploy_now() + ? WHERE id = ? "
            "AND status = 'running' AND lease_epoch = 0 AND lease_until > pploy_now() "
            "RETURNING lease_epoch",
            (seconds, job_id),
        ).fetchone()
        return int(row["lease_epoch"]) if row else None

    def renew_lease(self, job_id: int, epoch: int | None, seconds: float) -> bool:
        """Push the lease ``seconds`` further; False when it is no longer ``epoch``'s (the
        job was declared lost, or has ended) or has already expired."""
        cur = self.execute(
            "UPDATE jobs SET lease_until = pploy_now() + ? WHERE id = ? AND status = 'running' "
            "AND lease_epoch = ? AND lease_until > pploy_now()",
            (seconds, job_id, epoch),
        )
        return cur.rowcount > 0

    def write_job(self, job_id: int, epoch: int | None, **fields: Any) -> bool:
        """``update_job`` for the holder of the lease ``epoch`` of a running job: False (and
        nothing written) when the lease is another's or the job has ended."""
        if not fields:
            raise ValueError("nothing to write")
        assignments = job_assignments(fields, UPDATABLE_JOB_FIELDS)
        cur = self.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND status = 'running' "  # noqa: S608
            "AND lease_epoch = ?",
            (*fields.values(), job_id, epoch),
        )
        if cur.rowcount > 0 and "status" in fields:
            self.notify(LOG_CHANNEL, str(job_id))
        return cur.rowcount > 0

    def interrupt_job(
        self, job_id: int, *, message: str, log_bytes: int, expired_only: bool = False
    ) -> bool:
        """Declare a running job ``interrupted`` (its lock and log stay) and move its lease to
        a new epoch, so its runner's late writes are refused; with ``expired_only``, only
        once its lease has expired. False when it was not (ended, renewed, or done by
        another)."""
        cur = self.execute(
            "UPDATE jobs SET status = 'interrupted', ended_at = pploy_now(), message = ?, "
            "log_bytes = ?, lease_epoch = lease_epoch + 1 WHERE id = ? AND status = 'running' "
            "AND (NOT ? OR lease_until < pploy_now())",
            (message, log_bytes, job_id, expired_only),
        )
        if cur.rowcount > 0:
            self.notify(LOG_CHANNEL, str(job_id))
        return cur.rowcount > 0

    def expired_jobs(self) -> list[JobRecord]:
        """Running jobs whose lease has expired."""
        return _jobs(
            self.execute(
                "SELECT * FROM jobs WHERE status = 'running' AND lease_until < pploy_now() "
                "ORDER BY id"
            )
        )

    # A job's end is announced (job.finished) exactly once: whoever claims it first — the
    # instance following its runner, or, when nobody did (pploy down, the instance gone),
    # the next to look — sends it.

    def announce_job(self, job_id: int) -> JobRecord | None:
        """Claim the announcement of a job's recorded end: its record, to the first caller
        only; None when it is running, was announced, or is no job that ran."""
        return _job(
            self.execute(
                "UPDATE jobs SET announced_at = pploy_now() WHERE id = ? "  # noqa: S608
                f"AND announced_at IS NULL AND status IN {RAN_ENDS} RETURNING *",
                (job_id,),
            )
        )

    def unannounced_jobs(self, instance: str | None, grace: float) -> list[JobRecord]:
        """Jobs whose end is recorded but not announced: ``instance``'s, and anyone's that
        ended ``grace`` seconds ago or more (by the database's clock), oldest first. A read
        only: each is then claimed with :meth:`announce_job`."""
        return _jobs(
            self.execute(
                "SELECT * FROM jobs WHERE announced_at IS NULL "  # noqa: S608
                f"AND status IN {RAN_ENDS} AND (instance = ? "
                "OR COALESCE(ended_at, 0) <= pploy_now() - ?) ORDER BY id",
                (instance or "", grace),
            )
        )

    # A cancel is recorded in the job's row by whichever instance the lock holder asked; the
    # job's runner looks for it itself, so it lands while the runner's own pploy is down.

    def request_cancel(self, job_id: int, user: str) -> bool:
        """Record that ``user`` asked to cancel a running job (who asked first stays); False
        when the job is not running or a cancel is recorded already."""
        cur = self.execute(
            "UPDATE jobs SET cancel_requested_by = ?, cancel_requested_at = pploy_now() "
            "WHERE id = ? AND status = 'running' AND cancel_requested_by IS NULL",
            (user, job_id),
        )
        return cur.rowcount > 0

    def cancel_request(self, job_id: int) -> str | None:
        """Who asked to cancel the running job ``job_id`` (None: nobody, or it has ended)."""
        row = self.execute(
            "SELECT cancel_requested_by FROM jobs WHERE id = ? AND status = 'running'",
            (job_id,),
        ).fetchone()
        return row["cancel_requested_by"] if row else None

    def get_job(self, job_id: int) -> JobRecord | None:
        return _job(self.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)))

    def list_jobs(self, project: str | None = None, limit: int = 50) -> list[JobRecord]:
        if project is None:
            return _jobs(self.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)))
        return _jobs(
            self.execute(
                "SELECT * FROM jobs WHERE project = ? ORDER BY id DESC LIMIT ?", (project, limit)
            )
        )

    def running_jobs(self, instance: str | None = None) -> list[JobRecord]:
        """Jobs recorded as running: by ``instance`` on a shared database, by anyone when
        it is not given or nobody shares the database (one pploy per file)."""
        if instance is None or not self.shared:
            return _jobs(self.execute("SELECT * FROM jobs WHERE status = 'running' ORDER BY id"))
        return _jobs(
            self.execute(
                "SELECT * FROM jobs WHERE status = 'running' AND instance = ? ORDER BY id",
                (instance,),
            )
        )

    def last_successful_deploys(self, project: str) -> dict[str, JobRecord]:
        """Per environment, the newest deploy that succeeded."""
        rows = self.execute(
            "SELECT * FROM jobs WHERE id IN (SELECT MAX(id) FROM jobs WHERE project = ? "
            "AND kind = 'deploy' AND status = 'succeeded' GROUP BY env)",
            (project,),
        )
        return {row["env"]: JobRecord(**row) for row in rows}

    def last_job(self, project: str, kind: str | None = None) -> JobRecord | None:
        if kind:
            return _job(
                self.execute(
                    "SELECT * FROM jobs WHERE project = ? AND kind = ? ORDER BY id DESC LIMIT 1",
                    (project, kind),
                )
            )
        return _job(
            self.execute(
                "SELECT * FROM jobs WHERE project = ? ORDER BY id DESC LIMIT 1", (project,)
            )
        )

    def find_jobs(
        self, project: str, filters: dict[str, str], query: str, limit: int, offset: int
    ) -> tuple[list[JobRecord], int]:
        """One page of a project's jobs, newest first, and how many match in all. ``filters``
        maps env/kind/status/user to an exact value; ``query`` is found (case-insensitively:
        ``lower()`` on both sides, as SQLite's LIKE ignores ASCII case and PostgreSQL's does
        not) in the ref, commit, user, environment or message. Values are bound, never
        spliced."""
        where = ["project = ?"]
        params: list[Any] = [project]
        for column in ("env", "kind", "status", "user"):
            if filters.get(column):
                where.append(f'"{column}" = ?')
                params.append(filters[column])
        if query:
            escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(
                "(" + " OR ".join(
                    f"lower(COALESCE({c}, '')) LIKE lower(?) ESCAPE '\\'"
                    for c in ("ref", "sha", '"user"', "env", "message")
                ) + ")"
            )  # fmt: skip
            params += [f"%{escaped}%"] * 5
        condition = " AND ".join(where)
        counted = self.execute(
            f"SELECT COUNT(*) AS n FROM jobs WHERE {condition}",  # noqa: S608
            params,
        ).fetchone()
        total = int(counted["n"]) if counted else 0
        rows = self.execute(
            f"SELECT * FROM jobs WHERE {condition} ORDER BY id DESC LIMIT ? OFFSET ?",  # noqa: S608
            (*params, limit, offset),
        )
        return _jobs(rows), total

    def last_failed_deploy(self, project: str) -> JobRecord | None:
        """The newest finished deploy of a project that did not succeed, if it is newer than
        its last successful deploy (a failed attempt the index shows beside the success)."""
        return _job(
            self.execute(
                "SELECT * FROM jobs WHERE project = ? AND kind = 'deploy' AND status NOT IN "
                "('succeeded', 'running') AND id > COALESCE((SELECT MAX(id) FROM jobs WHERE "
                "project = ? AND kind = 'deploy' AND status = 'succeeded'), 0) "
                "ORDER BY id DESC LIMIT 1",
                (project, project),
            )
        )

    def job_ids_beyond(self, project: str, keep: int) -> list[int]:
        """Finished jobs of a project older than the newest ``keep`` (their logs may go)."""
        rows = self.execute(
            "SELECT id FROM jobs WHERE project = ? AND status != 'running' AND id NOT IN "
            "(SELECT id FROM jobs WHERE project = ? ORDER BY id DESC LIMIT ?)",
            (project, project, keep),
        )
        return [int(row["id"]) for row in rows]

    def job_counts(self) -> dict[tuple[str, str], int]:
        """Finished jobs ever recorded, by ``(kind, status)`` (records are never deleted, so
        these only grow: Prometheus counters)."""
        rows = self.execute(
            "SELECT kind, status, COUNT(*) AS n FROM jobs "
            "WHERE status NOT IN ('running', 'awaiting_approval') GROUP BY kind, status"
        )
        return {(row["kind"], row["status"]): int(row["n"]) for row in rows}

    # -- API tokens (only their SHA-256 is stored; see pploy.deploy.domain.tokens) ------------

    def add_token(
        self, *, user: str, email: str | None, name: str, digest: str, expires_at: float | None
    ) -> ApiToken:
        row = self.execute(
            'INSERT INTO tokens ("user", email, name, hash, created_at, expires_at) '
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
            (user, email, name, digest, time.time(), expires_at),
        ).fetchone()
        assert row is not None  # INSERT ... RETURNING
        return ApiToken.from_row(row)

    def get_token(self, token_id: int) -> ApiToken | None:
        row = self.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return ApiToken.from_row(row) if row else None

    def token_by_hash(self, digest: str) -> ApiToken | None:
        row = self.execute("SELECT * FROM tokens WHERE hash = ?", (digest,)).fetchone()
        return ApiToken.from_row(row) if row else None

    def list_tokens(self, user: str) -> list[ApiToken]:
        rows = self.execute('SELECT * FROM tokens WHERE "user" = ? ORDER BY id', (user,))
        return [ApiToken.from_row(row) for row in rows]

    def revoke_token(self, token_id: int) -> None:
        self.execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), token_id),
        )

    def token_used(self, token_id: int, when: float) -> None:
        self.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (when, token_id))

    # -- governance (issue 25): the audit trail, ad-hoc freezes, lock queues, approvals ------

    def add_audit(
        self, *, at: float, user: str | None, kind: str, project: str | None, env: str | None,
        job: int | None, detail: dict[str, Any],
    ) -> None:  # fmt: skip
        self.execute(
            'INSERT INTO audit (at, "user", kind, project, env, job, detail) '
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, user, kind, project, env, job, self.json(detail)),
        )

    def list_audit(self, since: float | None, kinds: list[str], limit: int) -> list[AuditEvent]:
        """Audit events, oldest first, from ``since`` on; ``kinds``: exact kinds or
        ``prefix.*``, any of them (empty: all)."""
        where, params = audit_filter(since, kinds)
        rows = self.execute(
            f"SELECT * FROM audit WHERE {where} ORDER BY at, id LIMIT ?",  # noqa: S608
            (*params, limit),
        )
        return [AuditEvent.from_row(row) for row in rows]

    def add_freeze(
        self, *, name: str, envs: list[str], projects: list[str], starts_at: float,
        until: float, reason: str, created_by: str,
    ) -> AdHocFreeze | None:  # fmt: skip
        """A new ad-hoc freeze; None when one of that name is in force."""
        self.execute(
            "UPDATE freezes SET ended_at = until WHERE ended_at IS NULL AND until <= ?",
            (starts_at,),
        )
        try:
            row = self.execute(
                "INSERT INTO freezes (name, envs, projects, starts_at, until, reason, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (name, self.json(envs), self.json(projects), starts_at, until, reason,
                 created_by),
            ).fetchone()  # fmt: skip
        except Duplicate:
            return None
        return AdHocFreeze.from_row(row) if row else None

    def current_freezes(self, now: float) -> list[AdHocFreeze]:
        """Ad-hoc freezes not ended and not past their end."""
        rows = self.execute(
            "SELECT * FROM freezes WHERE ended_at IS NULL AND until > ? ORDER BY id", (now,)
        )
        return [AdHocFreeze.from_row(row) for row in rows]

    def end_freeze(self, name: str, user: str, now: float) -> AdHocFreeze | None:
        """End the ad-hoc freeze ``name`` in force; None when there is none."""
        row = self.execute(
            "UPDATE freezes SET ended_at = ?, ended_by = ? WHERE name = ? AND ended_at IS NULL "
            "AND until > ? RETURNING *",
            (now, user, name, now),
        ).fetchone()
        return AdHocFreeze.from_row(row) if row else None

    def claim_announcement(self, name: str, starts_at: float, kind: str, at: float) -> bool:
        """Claim sending ``kind`` (``freeze.started``/``freeze.ended``) for the configured
        freeze window ``name`` starting at ``starts_at``: True for the first claim only, across
        instances and restarts. An end is claimed only once the window's start was (a window
        that started and ended unannounced stays unannounced)."""
        cur = self.execute(
            "INSERT INTO freeze_announcements (name, starts_at, kind, at) "
            "SELECT :name, :starts_at, :kind, :at WHERE :kind = 'freeze.started' OR EXISTS "
            "(SELECT 1 FROM freeze_announcements WHERE name = :name AND starts_at = :starts_at "
            "AND kind = 'freeze.started') ON CONFLICT (name, starts_at, kind) DO NOTHING",
            {"name": name, "starts_at": starts_at, "kind": kind, "at": at},
        )
        return cur.rowcount > 0

    def queue_for_lock(self, project: str, user: str, now: float) -> bool:
        """Put ``user`` at the end of the project's lock queue; False when already there (the
        place is kept)."""
        cur = self.execute(
            'INSERT INTO lock_queue (project, "user", since) VALUES (?, ?, ?) '
            'ON CONFLICT (project, "user") DO NOTHING',
            (project, user, now),
        )
        return cur.rowcount > 0

    def leave_lock_queue(self, project: str, user: str) -> bool:
        cur = self.execute(
            'DELETE FROM lock_queue WHERE project = ? AND "user" = ?', (project, user)
        )
        return cur.rowcount > 0

    def lock_queue(self, project: str) -> list[QueuedUser]:
        rows = self.execute(
            'SELECT project, "user", since FROM lock_queue WHERE project = ? ORDER BY id',
            (project,),
        )
        return [QueuedUser(**row) for row in rows]

    def grant_next(self, project: str, now: float, seconds: float) -> Lock | None:
        """Give the free lock to the first in its queue (who leaves it), in one transaction;
        None when the lock is held or nobody waits. Two instances granting at once take turns
        on the lock's row: the second finds it held and grants nothing."""

        def grant(tx: Executor) -> Lock | None:
            row = tx.execute(
                'SELECT "user" FROM lock_queue WHERE project = ? ORDER BY id LIMIT 1', (project,)
            ).fetchone()
            if row is None:
                return None
            granted = tx.execute(
                'INSERT INTO locks AS l (project, "user", gained_at, expires_at) '
                "VALUES (:p, :u, :now, :until) ON CONFLICT (project) DO UPDATE "
                'SET "user" = excluded."user", gained_at = :now, expires_at = :until '
                "WHERE l.expires_at <= :now RETURNING *",
                {"p": project, "u": row["user"], "now": now, "until": now + seconds},
            ).fetchone()
            if granted is None:
                return None
            tx.execute(
                'DELETE FROM lock_queue WHERE project = ? AND "user" = ?', (project, row["user"])
            )
            return Lock(**granted)

        return self.transaction(grant)

    def request_job(
        self, *, project: str, kind: str, user: str, env: str | None, sha: str | None,
        token: str | None, freeze_override: dict[str, str] | None,
    ) -> JobRecord:  # fmt: skip
        """A job awaiting approval (config ``approvals``): nothing runs until it is approved.
        JobAlreadyRunning when the project has one waiting already."""
        current = self.current_repository(project)
        try:
            row = self.execute(
                'INSERT INTO jobs (project, kind, env, sha, "user", started_at, status, '
                "repository, url, token, freeze_override) "
                "VALUES (?, ?, ?, ?, ?, ?, 'awaiting_approval', ?, ?, ?, ?) RETURNING *",
                (
                    project, kind, env, sha, user, time.time(),
                    current.id if current else None, current.url if current else None, token,
                    self.json(freeze_override) if freeze_override else None,
                ),
            ).fetchone()  # fmt: skip
        except Duplicate as exc:
            raise JobAlreadyRunning(project) from exc
        assert row is not None  # INSERT ... RETURNING
        return JobRecord(**row)

    def settle_job(
        self, job_id: int, expect: str, *, lease_seconds: float | None = None, **fields: Any
    ) -> bool:
        """Move a job from status ``expect`` (one statement: two approvers cannot both start
        it); False when it is no longer in ``expect``. JobAlreadyRunning when it would
        become the project's second running job. ``lease_seconds``: the job turns running,
        with a lease that long for its runner to take (see take_lease)."""
        assignments = job_assignments(fields, SETTLED_JOB_FIELDS)
        values = [self.json(v) if isinstance(v, list | dict) else v for v in fields.values()]
        if lease_seconds is not None:
            assignments += ", lease_epoch = 0, lease_until = pploy_now() + ?"
            values.append(lease_seconds)
        try:
            cur = self.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND status = ?",  # noqa: S608
                (*values, job_id, expect),
            )
        except Duplicate as exc:
            raise JobAlreadyRunning(str(fields.get("project", "the project"))) from exc
        return cur.rowcount > 0

    def awaiting_jobs(self) -> list[JobRecord]:
        return _jobs(
            self.execute("SELECT * FROM jobs WHERE status = 'awaiting_approval' ORDER BY id")
        )
