"""pploy's schema, as one list of numbered steps applied in order by one runner, on either
engine.

Each step is a tuple of operations: a statement for both engines (column types written as
``{id}``, ``{real}``, ``{bigint}``, ``{json}``, which the engine fills in), a column to add where
it is missing (:class:`AddColumn`), or a statement for one engine only (:class:`Only`). The
steps applied are recorded in ``pploy_migrations``; the runner applies the rest in one
transaction that other starting instances wait for (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL:
an advisory lock), so instances starting together take turns and none sees half a schema.

Steps 1–7 can run over a schema that already has what they make (``IF NOT EXISTS``, a column
added only where missing, data fixes that find nothing the second time): that is how a
database written before this runner is taken up. SQLite counted its schema in ``PRAGMA
user_version`` (0–5) and PostgreSQL in ``schema_migrations`` (1–4), in different orders, and
an older pploy created missing tables on every start; a database without ``pploy_migrations``
therefore gets every step, each finding done what was done. A step added later runs once, in
order, like any migration.

A list of steps, not Alembic: there are no models to diff, the statements are hand-written
(:mod:`pploy.deploy.storage.sql`), and this runner is a screenful.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from pploy.deploy.storage.sql import Executor


@dataclass(frozen=True)
class AddColumn:
    """``ALTER TABLE table ADD COLUMN column type``, where the column is missing."""

    table: str
    column: str
    type: str


@dataclass(frozen=True)
class Only:
    """A statement for one engine: ``dialect`` is "sqlite" or "postgresql"."""

    dialect: str
    sql: str


Operation = str | AddColumn | Only


class MigratingEngine(Protocol):
    """What the runner asks of an engine besides running statements."""

    dialect: str

    @property
    def types(self) -> Mapping[str, str]: ...

    def add_column(self, tx: Executor, table: str, column: str, type_sql: str) -> None:
        """Add ``column`` to ``table`` unless it has it."""
        ...


STEPS: tuple[tuple[Operation, ...], ...] = (
    # 1: the first schema: locks and jobs.
    (
        'CREATE TABLE IF NOT EXISTS locks (project TEXT PRIMARY KEY, "user" TEXT NOT NULL, '
        "gained_at {real} NOT NULL, expires_at {real} NOT NULL)",
        "CREATE TABLE IF NOT EXISTS jobs (id {id}, project TEXT NOT NULL, "
        "kind TEXT NOT NULL CHECK (kind IN ('checkout', 'deploy')), env TEXT, ref TEXT, "
        'sha TEXT, "user" TEXT NOT NULL, started_at {real} NOT NULL, ended_at {real}, '
        "exit_code INTEGER, signal INTEGER, status TEXT NOT NULL, cancelled_by TEXT, "
        "message TEXT, log_bytes {bigint} NOT NULL DEFAULT 0)",
        "CREATE INDEX IF NOT EXISTS jobs_project ON jobs (project, id)",
        "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status)",
    ),
    # 2: repositories: each job says which addition of its project (and URL) it ran from.
    (
        "CREATE TABLE IF NOT EXISTS repositories (id {id}, project TEXT NOT NULL, "
        "url TEXT NOT NULL, added_at {real} NOT NULL, removed_at {real}, removed_by TEXT)",
        "CREATE INDEX IF NOT EXISTS repositories_project ON repositories (project, id)",
        AddColumn("jobs", "repository", "{bigint}"),
        AddColumn("jobs", "url", "TEXT"),
    ),
    # 3: API tokens (only their SHA-256) and the token a job was started with.
    (
        'CREATE TABLE IF NOT EXISTS tokens (id {id}, "user" TEXT NOT NULL, email TEXT, '
        "name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, created_at {real} NOT NULL, "
        "expires_at {real}, last_used_at {real}, revoked_at {real})",
        'CREATE INDEX IF NOT EXISTS tokens_user ON tokens ("user", id)',
        AddColumn("jobs", "token", "TEXT"),
    ),
    # 4: instances: who runs a job; at most one running job per project (only the newest of
    # a crash's leftovers stays running); PostgreSQL's clock and shared log chunks.
    (
        AddColumn("jobs", "instance", "TEXT"),
        AddColumn("jobs", "heartbeat_at", "{real}"),
        "UPDATE jobs SET status = 'interrupted' WHERE status = 'running' AND id NOT IN "
        "(SELECT MAX(id) FROM jobs WHERE status = 'running' GROUP BY project)",
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_running ON jobs (project) "
        "WHERE status = 'running'",
        Only(
            "postgresql",
            "CREATE OR REPLACE FUNCTION pploy_now() RETURNS DOUBLE PRECISION LANGUAGE sql "
            "VOLATILE AS 'SELECT extract(epoch FROM clock_timestamp())::double precision'",
        ),
        Only(
            "postgresql",
            "CREATE TABLE IF NOT EXISTS log_chunks (job_id BIGINT NOT NULL REFERENCES jobs (id) "
            "ON DELETE CASCADE, start BIGINT NOT NULL, data BYTEA NOT NULL, "
            "PRIMARY KEY (job_id, start))",
        ),
    ),
    # 5: governance (issue 25): the audit trail, ad-hoc freezes, lock queues, approvals.
    (
        'CREATE TABLE IF NOT EXISTS audit (id {id}, at {real} NOT NULL, "user" TEXT, '
        "kind TEXT NOT NULL, project TEXT, env TEXT, job {bigint}, "
        "detail {json} NOT NULL DEFAULT '{{}}')",
        "CREATE INDEX IF NOT EXISTS audit_at ON audit (at, id)",
        "CREATE TABLE IF NOT EXISTS freezes (id {id}, name TEXT NOT NULL, envs {json} NOT NULL, "
        "projects {json} NOT NULL, starts_at {real} NOT NULL, until {real} NOT NULL, "
        "reason TEXT NOT NULL, created_by TEXT NOT NULL, ended_at {real}, ended_by TEXT)",
        "CREATE UNIQUE INDEX IF NOT EXISTS freezes_current ON freezes (name) "
        "WHERE ended_at IS NULL",
        "CREATE TABLE IF NOT EXISTS lock_queue (id {id}, project TEXT NOT NULL, "
        '"user" TEXT NOT NULL, since {real} NOT NULL, UNIQUE (project, "user"))',
        AddColumn("jobs", "approved_by", "{json}"),
        AddColumn("jobs", "freeze_override", "{json}"),
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_awaiting ON jobs (project) "
        "WHERE status = 'awaiting_approval'",
    ),
    # 6: jobs' leases, held by their runners (jobs/runner.py), judged by the database's clock;
    # a job still running then gets one (60 s) that no runner renews, so it is swept as lost.
    (
        AddColumn("jobs", "lease_epoch", "INTEGER NOT NULL DEFAULT 0"),
        AddColumn("jobs", "lease_until", "{real}"),
        "UPDATE jobs SET lease_until = pploy_now() + 60 "
        "WHERE status = 'running' AND lease_until IS NULL",
    ),
    # 7: one current repository per project name (PostgreSQL had this index from its first
    # migration; an older SQLite file may hold two, the older is marked removed).
    (
        "UPDATE repositories SET removed_at = added_at, removed_by = 'pploy' "
        "WHERE removed_at IS NULL AND id NOT IN "
        "(SELECT MAX(id) FROM repositories WHERE removed_at IS NULL GROUP BY project)",
        "CREATE UNIQUE INDEX IF NOT EXISTS repositories_current ON repositories (project) "
        "WHERE removed_at IS NULL",
    ),
    # 8: durable ends and cancels. ``announced_at``: the job.finished of a job that ran was
    # sent (claimed by one conditional UPDATE: whichever instance wins sends it); every job
    # ended before this step counts as announced, so an upgrade sends nothing old.
    # ``cancel_requested_by``/``_at``: a cancel recorded in the row by whichever instance got
    # it, which the job's runner looks for itself (jobs/runner.py).
    (
        AddColumn("jobs", "announced_at", "{real}"),
        AddColumn("jobs", "cancel_requested_by", "TEXT"),
        AddColumn("jobs", "cancel_requested_at", "{real}"),
        "UPDATE jobs SET announced_at = COALESCE(ended_at, pploy_now()) "
        "WHERE announced_at IS NULL AND status NOT IN ('running', 'awaiting_approval')",
        "CREATE INDEX IF NOT EXISTS jobs_unannounced ON jobs (id) WHERE announced_at IS NULL",
    ),
    # 9: configured freeze windows announced (freeze.started / freeze.ended): one row per
    # window and kind, claimed by the one instance that sends it (docs/governance.md).
    (
        "CREATE TABLE IF NOT EXISTS freeze_announcements (name TEXT NOT NULL, "
        "starts_at {real} NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('freeze.started', "
        "'freeze.ended')), at {real} NOT NULL, PRIMARY KEY (name, starts_at, kind))",
    ),
)

VERSION = len(STEPS)


def migrate(tx: Executor, engine: MigratingEngine) -> int:
    """Apply the steps the database has not had, inside the caller's (exclusive) transaction;
    returns the version reached (:data:`VERSION`)."""
    tx.execute(
        "CREATE TABLE IF NOT EXISTS pploy_migrations "
        f"(version INTEGER PRIMARY KEY, applied_at {engine.types['real']} NOT NULL)"
    )
    row = tx.execute("SELECT COALESCE(MAX(version), 0) AS v FROM pploy_migrations").fetchone()
    version = int(row["v"]) if row else 0
    for number, step in enumerate(STEPS[version:], start=version + 1):
        for operation in step:
            if isinstance(operation, AddColumn):
                type_sql = operation.type.format_map(engine.types)
                engine.add_column(tx, operation.table, operation.column, type_sql)
            elif isinstance(operation, Only):
                if operation.dialect == engine.dialect:
                    tx.execute(operation.sql)
            else:
                tx.execute(operation.format_map(engine.types))
        tx.execute(
            "INSERT INTO pploy_migrations (version, applied_at) VALUES (?, ?)",
            (number, time.time()),
        )
    return VERSION


def applied(store: Executor) -> list[int]:
    """The steps recorded as applied, in order."""
    rows = store.execute("SELECT version FROM pploy_migrations ORDER BY version")
    return [int(row["version"]) for row in rows]
