"""What only the PostgreSQL store has: migrations under an advisory lock (and a database of
the numbering before the one migration runner), log chunks by byte offset, leases judged by
the database's clock — on a real server. And the setting."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pploy.configfile import ConfigError
from pploy.deploy.config import load_config
from pploy.deploy.domain.errors import Conflict
from pploy.deploy.domain.records import StoreUnavailable
from pploy.deploy.storage import migrations
from pploy.deploy.storage.postgres import PgStore
from tests.postgres import pg_database, pg_server  # noqa: F401


def test_the_database_setting_comes_from_the_file_or_the_environment(tmp_path) -> None:
    assert load_config(None, environ={}).database is None  # SQLite by default
    url = "postgresql://pploy@db.example/pploy"
    assert load_config(None, environ={"PPLOY_DATABASE": url}).database == url
    with pytest.raises(ConfigError, match="database"):
        load_config(None, {"database": "mysql://db/pploy"}, environ={})


@pytest.mark.slow
def test_migrations_run_once_even_when_instances_start_together(pg_database: str) -> None:  # noqa: F811
    stores: list[PgStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(PgStore(pg_database))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with psycopg.connect(pg_database) as conn:
        rows = conn.execute("SELECT version FROM pploy_migrations ORDER BY version")
        versions = [row[0] for row in rows]
    assert versions == list(range(1, migrations.VERSION + 1))
    PgStore(pg_database).close()  # and again: nothing to do
    for store in stores:
        store.close()


def test_a_database_at_governance_s_migration_gets_the_leases(pg_database: str) -> None:  # noqa: F811
    """A database migrated by a pploy before the runners and before the one migration runner
    (``schema_migrations`` up to 3, governance, as those pploys wrote it): every step runs,
    finding done what was done; the leases are added and a job still running gets one (60 s,
    by the database's clock) that no runner will renew, so it expires and is swept like any
    lost job. The jobs, their approvals and the old bookkeeping stay."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
        for number, script in enumerate(OLD_MIGRATIONS[:3], start=1):
            conn.execute(script)
            conn.execute("INSERT INTO schema_migrations VALUES (%s)", (number,))
        conn.execute(
            "INSERT INTO repositories (project, url, added_at) VALUES ('app', '/git/app', 1)"
        )
        conn.execute(
            'INSERT INTO jobs (project, kind, "user", started_at, status, approved_by, '
            "repository) VALUES ('app', 'deploy', 'bob', 1.0, 'running', '[\"carol\"]', 1)"
        )
    store = PgStore(pg_database)
    try:
        (job,) = store.running_jobs()
        assert job.approved_by == ["carol"] and job.lease_epoch == 0 and job.repository == 1
        assert job.lease_until is not None and 50 < job.lease_until - time.time() < 70
        assert migrations.applied(store) == list(range(1, migrations.VERSION + 1))
        assert store.current_repository("app").url == "/git/app"
        token = store.add_token(user="bob", email=None, name="ci", digest="d", expires_at=None)
        assert store.token_by_hash("d") == token
        with pytest.raises(Conflict):
            store.add_repository("app", "/git/other")  # the old unique index still holds
    finally:
        store.close()
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone() == (3,)


# The first three migrations as pploy's PostgreSQL store applied them before the one migration
# runner (a frozen copy: the schema such a database has, not code to keep in step).
OLD_MIGRATIONS = [
    """
    CREATE TABLE repositories (id BIGSERIAL PRIMARY KEY, project TEXT NOT NULL,
        url TEXT NOT NULL, added_at DOUBLE PRECISION NOT NULL, removed_at DOUBLE PRECISION,
        removed_by TEXT);
    CREATE INDEX repositories_project ON repositories (project, id);
    CREATE UNIQUE INDEX repositories_current ON repositories (project) WHERE removed_at IS NULL;
    CREATE TABLE locks (project TEXT PRIMARY KEY, "user" TEXT NOT NULL,
        gained_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE jobs (id BIGSERIAL PRIMARY KEY, project TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('checkout', 'deploy')), env TEXT, ref TEXT, sha TEXT,
        "user" TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION, exit_code INTEGER, signal INTEGER, status TEXT NOT NULL,
        cancelled_by TEXT, message TEXT, log_bytes BIGINT NOT NULL DEFAULT 0,
        repository BIGINT REFERENCES repositories (id), url TEXT, instance TEXT,
        heartbeat_at DOUBLE PRECISION);
    CREATE INDEX jobs_project ON jobs (project, id);
    CREATE INDEX jobs_status ON jobs (status);
    CREATE UNIQUE INDEX jobs_one_running ON jobs (project) WHERE status = 'running';
    CREATE FUNCTION pploy_now() RETURNS DOUBLE PRECISION LANGUAGE sql VOLATILE
        AS 'SELECT extract(epoch FROM clock_timestamp())::double precision';
    CREATE TABLE log_chunks (job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        start BIGINT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (job_id, start));
    """,
    """
    CREATE TABLE tokens (id BIGSERIAL PRIMARY KEY, "user" TEXT NOT NULL, email TEXT,
        name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION, last_used_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION);
    CREATE INDEX tokens_user ON tokens ("user", id);
    ALTER TABLE jobs ADD COLUMN token TEXT;
    """,
    """
    CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, "user" TEXT,
        kind TEXT NOT NULL, project TEXT, env TEXT, job BIGINT,
        detail JSONB NOT NULL DEFAULT '{}');
    CREATE INDEX audit_at ON audit (at, id);
    CREATE TABLE freezes (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, envs JSONB NOT NULL,
        projects JSONB NOT NULL, starts_at DOUBLE PRECISION NOT NULL,
        until DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL, created_by TEXT NOT NULL,
        ended_at DOUBLE PRECISION, ended_by TEXT);
    CREATE UNIQUE INDEX freezes_current ON freezes (name) WHERE ended_at IS NULL;
    CREATE TABLE lock_queue (id BIGSERIAL PRIMARY KEY, project TEXT NOT NULL,
        "user" TEXT NOT NULL, since DOUBLE PRECISION NOT NULL, UNIQUE (project, "user"));
    ALTER TABLE jobs ADD COLUMN approved_by JSONB;
    ALTER TABLE jobs ADD COLUMN freeze_override JSONB;
    CREATE UNIQUE INDEX jobs_one_awaiting ON jobs (project) WHERE status = 'awaiting_approval';
    """,
]


@pytest.mark.slow
def test_log_chunks_are_read_by_byte_offset(pg_database: str) -> None:  # noqa: F811
    store = PgStore(pg_database)
    job = store.create_job(project="app", kind="deploy", user="alice").id
    text = b"first line\nsecond \xc3\xa9 line\nthird\n"
    for start, end in ((0, 11), (11, 26), (26, len(text))):
        assert store.append_log(job, start, text[start:end])
    assert not store.append_log(job, 11, b"a replay at a stored offset is ignored")
    assert not store.append_log(job, 0, text)  # a resend from the start, whole: ignored too
    assert store.log_end(job) == len(text)
    assert store.read_log(job, 0, 1000) == text
    assert store.read_log(job, 5, 10) == text[5:15]  # across a chunk boundary
    assert store.read_log(job, len(text), 10) == b""
    # A piece beyond the end (one before it never landed) is refused: no gap is ever stored.
    assert not store.append_log(job, len(text) + 5, b"after a gap")
    assert store.read_log(job, 20, 1000) == text[20:]
    store.delete_logs([job])
    assert store.log_end(job) == 0
    store.close()


@pytest.mark.slow
def test_expired_leases_are_interrupted_once_and_renewed_ones_never(pg_database: str) -> None:  # noqa: F811
    store = PgStore(pg_database)
    renewed = store.create_job(project="app", kind="deploy", user="alice", lease_seconds=1.0)
    expired = store.create_job(project="web", kind="deploy", user="bob", lease_seconds=1.0)
    assert store.take_lease(renewed.id, 1.0) == store.take_lease(expired.id, 1.0) == 1
    time.sleep(0.6)
    assert store.renew_lease(renewed.id, 1, 1.0)
    time.sleep(0.6)  # by the database's clock: expired's lease has run out, renewed's not
    assert [job.id for job in store.expired_jobs()] == [expired.id]
    assert store.interrupt_job(expired.id, message="lost", log_bytes=42, expired_only=True)
    assert not store.interrupt_job(expired.id, message="lost", log_bytes=42, expired_only=True)
    assert not store.interrupt_job(renewed.id, message="lost", log_bytes=0, expired_only=True)
    record = store.get_job(expired.id)
    assert (record.status, record.log_bytes, record.message) == ("interrupted", 42, "lost")
    # Its runner comes back and records an end: refused, the interruption stays.
    assert not store.write_job(expired.id, 1, status="succeeded", exit_code=0)
    assert store.get_job(expired.id).status == "interrupted"
    assert not store.renew_lease(expired.id, 1, 1.0)  # it learns it no longer runs it
    # Its log: the current epoch's chunk lands at the stored end, and only there (the lost
    # epoch's rule: test_a_lost_epoch_may_only_finish_the_stored_log_at_its_end).
    assert not store.append_log(expired.id, 5, b"a gap\n", epoch=2)
    assert store.append_log(expired.id, 0, b"note\n", epoch=2)
    assert store.append_log(renewed.id, 0, b"live\n", epoch=1)
    store.close()


@pytest.mark.slow
def test_a_lost_epoch_may_only_finish_the_stored_log_at_its_end(pg_database: str) -> None:  # noqa: F811
    """A runner cut off from the database past its lease ships the rest of its file once it
    is back: a chunk of the epoch that was lost lands only at the stored end of a job declared
    interrupted, extending its log_bytes; never elsewhere, never while the job runs under a
    newer epoch, never from an older epoch, never onto a job that ended otherwise, and its
    end record is refused."""
    store = PgStore(pg_database)
    job = store.create_job(project="app", kind="deploy", user="alice", lease_seconds=0.5)
    assert store.take_lease(job.id, 0.5) == 1
    assert store.append_log(job.id, 0, b"one\n", epoch=1)
    # While it runs under epoch 1, an older epoch's chunk is refused, even at the end.
    assert not store.append_log(job.id, 4, b"older\n", epoch=0)
    time.sleep(0.7)  # the lease expires by the database's clock: the job is declared lost
    assert store.interrupt_job(job.id, message="lost", log_bytes=4, expired_only=True)
    assert store.get_job(job.id).lease_epoch == 2
    # The lost epoch (1): refused at a gap, at a stored offset, and from an older epoch.
    assert not store.append_log(job.id, 9, b"gap\n", epoch=1)
    assert not store.append_log(job.id, 0, b"two\n", epoch=1)
    assert not store.append_log(job.id, 4, b"older than the lost\n", epoch=0)
    assert store.read_log(job.id, 0, 100) == b"one\n"
    # ...accepted exactly at the stored end: the log ends as the runner's file does.
    assert store.append_log(job.id, 4, b"two\n", epoch=1)
    assert store.append_log(job.id, 8, b"[pploy] stopped\n", epoch=1)
    assert store.read_log(job.id, 0, 100) == b"one\ntwo\n[pploy] stopped\n"
    record = store.get_job(job.id)
    assert (record.status, record.log_bytes, record.message) == ("interrupted", 24, "lost")
    # Log bytes only: its end record stays refused.
    assert not store.write_job(job.id, 1, status="succeeded", exit_code=0)
    assert store.get_job(job.id).status == "interrupted"
    # A job that ended by its own runner's record takes no chunk from an earlier epoch.
    done = store.create_job(project="web", kind="deploy", user="bob", lease_seconds=5.0)
    assert store.take_lease(done.id, 5.0) == 1
    assert store.write_job(done.id, 1, status="failed", exit_code=1, log_bytes=0)
    assert not store.append_log(done.id, 0, b"late\n", epoch=0)
    assert store.log_end(done.id) == 0
    store.close()


@pytest.mark.slow
def test_a_lost_server_is_a_503_and_the_next_statement_reconnects(pg_database: str) -> None:  # noqa: F811
    store = PgStore(pg_database)
    with psycopg.connect(pg_database, autocommit=True) as admin:
        pid = store.backend_pid()
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreUnavailable, match="database"):
        store.get_lock("app")
    assert store.get_lock("app") is None  # a new connection
    store.close()
