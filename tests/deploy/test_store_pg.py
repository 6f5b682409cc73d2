"""What only the PostgreSQL store has: numbered migrations, log chunks by byte offset,
leases judged by the database's clock — on a real server. And the setting."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pploy.configfile import ConfigError
from pploy.deploy.config import load_config
from pploy.deploy.domain.errors import Conflict
from pploy.deploy.domain.records import StoreUnavailable
from pploy.deploy.storage.postgres import MIGRATIONS, PgStore
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
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    PgStore(pg_database).close()  # and again: nothing to do
    for store in stores:
        store.close()


def test_a_database_at_governance_s_migration_gets_the_leases(pg_database: str) -> None:  # noqa: F811
    """A database migrated by a pploy before the runners (up to migration 3, governance):
    migration 4 adds the leases; a job still running then gets one (60 s, by the database's
    clock) that no runner will renew, so it expires and is swept like any lost job."""
    PgStore(pg_database).close()
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("ALTER TABLE jobs DROP COLUMN lease_epoch, DROP COLUMN lease_until")
        conn.execute("DELETE FROM schema_migrations WHERE version = 4")
        conn.execute(
            'INSERT INTO jobs (project, kind, "user", started_at, status, approved_by) '
            "VALUES ('app', 'deploy', 'bob', 1.0, 'running', '[\"carol\"]')"
        )
    store = PgStore(pg_database)
    try:
        (job,) = store.running_jobs()
        assert job.approved_by == ["carol"] and job.lease_epoch == 0
        assert job.lease_until is not None and 50 < job.lease_until - time.time() < 70
        assert len(MIGRATIONS) == 4
    finally:
        store.close()


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
def test_one_current_repository_per_name(pg_database: str) -> None:  # noqa: F811
    store = PgStore(pg_database)
    store.add_repository("app", "/srv/git/app.git")
    with pytest.raises(Conflict, match="already exists"):
        PgStore(pg_database).add_repository("app", "/srv/git/other.git")
    store.remove_project("app", "alice")
    assert store.add_repository("app", "/srv/git/other.git").url == "/srv/git/other.git"
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
