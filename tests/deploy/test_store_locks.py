"""storage/sqlite.py and domain/locks.py on a real SQLite file, with time supplied by a
hand-driven clock."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from pploy.deploy.domain.errors import BadRequest, Conflict, Forbidden
from pploy.deploy.domain.locks import Locks, describe_left
from pploy.deploy.domain.records import JobAlreadyRunning, Lock, Storage, StoreError
from pploy.deploy.storage import migrations
from pploy.deploy.storage.postgres import PgStore
from pploy.deploy.storage.sql import SqlStore
from pploy.deploy.storage.sqlite import Store
from tests.postgres import pg_database, pg_server  # noqa: F401

T0 = 1_800_000_000.0


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "pploy.db"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, db_path: Path) -> Iterator[Storage]:
    """The same suite against each engine (storage.Storage): SQLite in a file, PostgreSQL on
    a real server (one per session, a database per test)."""
    if request.param == "sqlite":
        s: Storage = Store(db_path)
    else:
        s = PgStore(request.getfixturevalue("pg_database"))
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def events() -> list[tuple[str, Lock]]:
    return []


@pytest.fixture
def locks(store: Store, clock: Clock, events: list[tuple[str, Lock]]) -> Locks:
    return Locks(
        store,
        gain_minutes=20,
        extend_minutes=10,
        clock=clock,
        on_change=lambda event, lock: events.append((event, lock)),
    )


# -- locks ---------------------------------------------------------------------------------------


def test_gain_gives_the_lock_for_gain_minutes(locks: Locks, clock: Clock, events) -> None:
    lock = locks.gain("app", "alice")
    assert lock == Lock("app", "alice", T0, T0 + 20 * 60)
    assert locks.get("app") == lock
    assert lock.seconds_left(T0 + 60) == 19 * 60
    assert lock.to_json(T0)["seconds_left"] == 1200.0
    assert events == [("lock.gained", lock)]


def test_locks_are_per_project(locks: Locks) -> None:
    locks.gain("app", "alice")
    locks.gain("web", "bob")
    assert locks.get("app").user == "alice"
    assert locks.get("web").user == "bob"
    assert locks.get("other") is None


def test_an_expired_lock_disappears_on_read(locks: Locks, store: Store, clock: Clock) -> None:
    locks.gain("app", "alice")
    clock.advance(20 * 60 - 1)
    assert locks.get("app") is not None
    clock.advance(1)
    assert locks.get("app") is None
    # ...and it is gone from the file, not just hidden.
    assert store.get_lock("app", now=T0) is None  # even read as of before it expired


def test_someone_elses_lock_is_a_conflict_naming_holder_and_time_left(
    locks: Locks, clock: Clock, events
) -> None:
    locks.gain("app", "alice")
    clock.advance(5 * 60 + 30)
    with pytest.raises(Conflict) as info:
        locks.gain("app", "bob")
    assert info.value.status == 409
    assert "alice" in info.value.message
    assert "14 min 30 s" in info.value.message
    assert locks.get("app").user == "alice"
    assert [e for e, _ in events] == ["lock.gained"]


def test_an_expired_lock_can_be_taken_by_someone_else(locks: Locks, clock: Clock) -> None:
    locks.gain("app", "alice")
    clock.advance(20 * 60)
    lock = locks.gain("app", "bob")
    assert (lock.user, lock.gained_at, lock.expires_at) == ("bob", clock.now, clock.now + 1200)


def test_holder_regain_renews(locks: Locks, clock: Clock) -> None:
    first = locks.gain("app", "alice")
    clock.advance(15 * 60)
    again = locks.gain("app", "alice")
    assert again.gained_at == first.gained_at
    assert again.expires_at == clock.now + 20 * 60


def test_holder_regain_never_shortens_an_extended_lock(locks: Locks, clock: Clock) -> None:
    locks.gain("app", "alice")
    for _ in range(3):
        locks.extend("app", "alice")
    assert locks.get("app").expires_at == T0 + 50 * 60
    clock.advance(60)
    assert locks.gain("app", "alice").expires_at == T0 + 50 * 60


def test_extend_adds_extend_minutes(locks: Locks, clock: Clock, events) -> None:
    locks.gain("app", "alice")
    clock.advance(19 * 60)
    lock = locks.extend("app", "alice")
    assert lock.expires_at == T0 + 30 * 60 and lock.gained_at == T0
    assert locks.get("app") == lock
    assert [e for e, _ in events] == ["lock.gained", "lock.extended"]


def test_release_frees_the_project(locks: Locks, events) -> None:
    lock = locks.gain("app", "alice")
    locks.release("app", "alice")
    assert locks.get("app") is None
    assert events[-1] == ("lock.released", lock)
    assert locks.gain("app", "bob").user == "bob"


@pytest.mark.parametrize("operation", ["extend", "release"])
def test_non_holder_extend_or_release_is_forbidden(locks: Locks, clock: Clock, operation) -> None:
    locks.gain("app", "alice")
    clock.advance(61)
    with pytest.raises(Forbidden) as info:
        locks.apply("app", "bob", operation)
    assert info.value.status == 403
    assert "alice" in info.value.message and "18 min 59 s" in info.value.message
    assert locks.get("app").expires_at == T0 + 1200  # untouched


@pytest.mark.parametrize("operation", ["extend", "release"])
def test_extend_or_release_with_nobody_holding_is_a_conflict(
    locks: Locks, clock: Clock, operation
) -> None:
    with pytest.raises(Conflict, match="hold the lock"):
        locks.apply("app", "alice", operation)
    locks.gain("app", "alice")
    clock.advance(20 * 60)  # expired: same as nobody
    with pytest.raises(Conflict, match="hold the lock"):
        locks.apply("app", "alice", operation)


def test_require_holder(locks: Locks) -> None:
    with pytest.raises(Conflict):
        locks.require_holder("app", "alice")
    lock = locks.gain("app", "alice")
    assert locks.require_holder("app", "alice") == lock
    with pytest.raises(Forbidden):
        locks.require_holder("app", "bob")


def test_apply_dispatches_and_refuses_unknown_operations(locks: Locks) -> None:
    assert locks.apply("app", "alice", "gain").user == "alice"
    assert locks.apply("app", "alice", "extend").expires_at == T0 + 30 * 60
    assert locks.apply("app", "alice", "release") is None
    assert locks.get("app") is None
    with pytest.raises(BadRequest, match="gain, extend, release"):
        locks.apply("app", "alice", "steal")


def test_keep_until_lengthens_only_the_holders_lock(locks: Locks, clock: Clock, events) -> None:
    locks.gain("app", "alice")
    n_events = len(events)
    locks.keep_until("app", "alice", T0 + 3600)
    assert locks.get("app").expires_at == T0 + 3600
    locks.keep_until("app", "alice", T0 + 60)  # never shortens
    assert locks.get("app").expires_at == T0 + 3600
    locks.keep_until("app", "bob", T0 + 7200)  # not bob's lock
    assert locks.get("app") == Lock("app", "alice", T0, T0 + 3600)
    locks.keep_until("web", "alice", T0 + 7200)  # no lock there: nothing is created
    assert locks.get("web") is None
    clock.advance(3599)
    assert locks.get("app").user == "alice"
    assert len(events) == n_events


def test_describe_left() -> None:
    assert describe_left(0) == "0 s"
    assert describe_left(59.9) == "59 s"
    assert describe_left(60) == "1 min 00 s"
    assert describe_left(20 * 60 - 1) == "19 min 59 s"


def test_locks_survive_a_restart(db_path: Path, clock: Clock) -> None:
    first = Store(db_path)
    Locks(first, clock=clock).gain("app", "alice")
    first.close()
    second = Store(db_path)
    try:
        again = Locks(second, clock=clock)
        assert again.get("app") == Lock("app", "alice", T0, T0 + 1200)
        with pytest.raises(Conflict, match="alice"):
            again.gain("app", "bob")
        clock.advance(1200)
        assert again.get("app") is None
    finally:
        second.close()


def test_two_stores_on_one_file_see_each_others_writes(db_path: Path, clock: Clock) -> None:
    a, b = Store(db_path), Store(db_path)
    try:
        Locks(a, clock=clock).gain("app", "alice")
        with pytest.raises(Conflict):
            Locks(b, clock=clock).gain("app", "bob")
    finally:
        a.close()
        b.close()


def test_the_file_is_a_real_sqlite_database_in_wal_mode(db_path: Path) -> None:
    store = Store(db_path)
    store.put_lock(Lock("app", "alice", T0, T0 + 10))
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("SELECT project, user FROM locks").fetchall() == [("app", "alice")]
    finally:
        other.close()
        store.close()


# -- jobs ----------------------------------------------------------------------------------------


def finish(store: Store, job_id: int, status: str, at: float, **extra) -> None:
    store.update_job(job_id, status=status, ended_at=at, **extra)


def test_create_and_update_a_job(store: Store) -> None:
    job = store.create_job(project="app", kind="deploy", user="alice", env="staging", started_at=T0)
    assert job.status == "running" and job.running
    assert (job.project, job.kind, job.user, job.env, job.started_at) == (
        "app", "deploy", "alice", "staging", T0,
    )  # fmt: skip
    assert job.ended_at is None and job.exit_code is None and job.sha is None
    finish(store, job.id, "failed", T0 + 12.5, exit_code=3, sha="a" * 40, log_bytes=42)
    done = store.get_job(job.id)
    assert (done.status, done.exit_code, done.sha, done.log_bytes) == ("failed", 3, "a" * 40, 42)
    assert not done.running
    assert done.duration == 12.5
    assert done.to_json()["duration"] == 12.5
    assert store.get_job(job.id + 1000) is None


def test_update_job_refuses_unknown_fields(store: Store) -> None:
    job = store.create_job(project="app", kind="checkout", user="alice", ref="main")
    with pytest.raises(ValueError, match="project"):
        store.update_job(job.id, project="other")
    with pytest.raises(ValueError):
        store.update_job(job.id, **{"status = 'x', user": "mallory"})
    assert store.get_job(job.id).user == "alice"
    store.update_job(job.id)  # nothing to do is fine


def test_kind_is_checked_by_the_database(store: Store) -> None:
    with pytest.raises(StoreError, match="refused") as raised:
        store.create_job(project="app", kind="rm -rf", user="alice")
    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError | psycopg.IntegrityError)
    assert raised.value.status == 500


def test_listing_jobs(store: Store) -> None:
    ids = []
    for p in ["app", "web", "app", "app"]:
        ids.append(store.create_job(project=p, kind="deploy", user="u", env="staging").id)
        if p == "app" and len(ids) < 4:
            finish(store, ids[-1], "succeeded", T0)
    assert [j.id for j in store.list_jobs()] == ids[::-1]
    assert [j.id for j in store.list_jobs("app")] == [ids[3], ids[2], ids[0]]
    assert [j.id for j in store.list_jobs("app", limit=2)] == [ids[3], ids[2]]
    assert [j.id for j in store.running_jobs()] == [ids[1], ids[3]]
    assert store.last_job("app").id == ids[3]
    assert store.last_job("nope") is None


def test_last_job_of_a_kind(store: Store) -> None:
    c = store.create_job(project="app", kind="checkout", user="u", ref="main")
    finish(store, c.id, "succeeded", T0)
    d = store.create_job(project="app", kind="deploy", user="u", env="staging")
    assert store.last_job("app", "checkout").id == c.id
    assert store.last_job("app", "deploy").id == d.id
    assert store.last_job("app").id == d.id


def test_last_successful_deploys_per_env(store: Store) -> None:
    def deploy(env: str, status: str, project: str = "app", kind: str = "deploy") -> int:
        job = store.create_job(project=project, kind=kind, user="u", env=env)
        if status != "running":
            finish(store, job.id, status, T0)
        return job.id

    s1 = deploy("staging", "succeeded")
    s2 = deploy("staging", "succeeded")
    deploy("staging", "failed")
    p1 = deploy("production", "succeeded")
    deploy("production", "cancelled")
    deploy("qa", "failed")
    deploy("staging", "succeeded", project="web")
    deploy("staging", "succeeded", kind="checkout")
    deploy("staging", "running")

    best = store.last_successful_deploys("app")
    assert set(best) == {"staging", "production"}
    assert best["staging"].id == s2 != s1
    assert best["production"].id == p1
    assert store.last_successful_deploys("nothing") == {}


def test_job_ids_beyond_retention(store: Store) -> None:
    ids = []
    for _ in range(6):
        job = store.create_job(project="app", kind="deploy", user="u", env="staging")
        finish(store, job.id, "succeeded", T0)
        ids.append(job.id)
    store.create_job(project="web", kind="deploy", user="u", env="staging")
    assert store.job_ids_beyond("app", 6) == []
    assert sorted(store.job_ids_beyond("app", 4)) == ids[:2]
    assert sorted(store.job_ids_beyond("app", 1)) == ids[:5]
    assert store.job_ids_beyond("web", 0) == []  # running: its log is being written


def test_running_jobs_are_never_beyond_retention(store: Store) -> None:
    newer = []
    for _ in range(3):
        job = store.create_job(project="app", kind="deploy", user="u", env="staging")
        finish(store, job.id, "failed", T0)
        newer.append(job.id)
    running = store.create_job(project="app", kind="deploy", user="u", env="staging")
    assert store.job_ids_beyond("app", 3) == [newer[0]]
    assert running.id not in store.job_ids_beyond("app", 0)


def test_jobs_survive_a_restart(db_path: Path) -> None:
    first = Store(db_path)
    job = first.create_job(project="app", kind="deploy", user="alice", env="production")
    finish(first, job.id, "succeeded", T0 + 5, exit_code=0)
    running = first.create_job(project="app", kind="checkout", user="alice", ref="main")
    first.close()
    second = Store(db_path)
    try:
        assert second.get_job(job.id).status == "succeeded"
        assert [j.id for j in second.running_jobs()] == [running.id]
        assert second.last_successful_deploys("app")["production"].id == job.id
        # Ids keep counting up after a restart (AUTOINCREMENT), so logs are never reused.
        assert second.create_job(project="web", kind="deploy", user="u").id > running.id
    finally:
        second.close()


def test_removing_a_project_keeps_its_jobs_and_frees_its_lock(store: Store, clock: Clock) -> None:
    locks = Locks(store, clock=clock)
    first = store.add_repository("app", "https://git.example.com/team/app.git")
    locks.gain("app", "alice")
    locks.gain("web", "bob")
    old = store.create_job(project="app", kind="deploy", user="alice", env="staging")
    keep = store.create_job(project="web", kind="deploy", user="bob", env="staging")
    assert (old.repository, old.url) == (first.id, "https://git.example.com/team/app.git")
    assert keep.repository is None  # web's clone was never recorded

    store.remove_project("app", "alice")
    assert locks.get("app") is None and locks.get("web").user == "bob"
    assert store.get_job(old.id) == old and [j.id for j in store.list_jobs("app")] == [old.id]
    assert store.current_repository("app") is None
    assert [r.project for r in store.current_repositories()] == []
    removed = store.get_repository(first.id)
    assert removed.removed_by == "alice" and removed.removed_at is not None

    finish(store, old.id, "cancelled", T0)
    old = store.get_job(old.id)
    second = store.add_repository("app", "https://evil.example/app.git")
    assert [r.id for r in store.current_repositories()] == [second.id]
    new = store.create_job(project="app", kind="deploy", user="bob", env="staging")
    assert new.repository == second.id != first.id and new.url == "https://evil.example/app.git"
    assert store.get_job(old.id).url == "https://git.example.com/team/app.git"


# The schema as pploy wrote it before repositories were recorded (user_version 0).
SCHEMA_V0 = """
CREATE TABLE locks (
    project TEXT PRIMARY KEY, user TEXT NOT NULL, gained_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE jobs (
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
    log_bytes    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_project ON jobs (project, id);
CREATE INDEX jobs_status ON jobs (status);
"""


def test_a_database_of_the_previous_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "pploy.db"
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(SCHEMA_V0)
    old.execute(
        "INSERT INTO jobs (project, kind, env, sha, user, started_at, ended_at, exit_code, "
        "status, log_bytes) VALUES ('app', 'deploy', 'staging', 'abc', 'alice', 1.0, 2.0, 0, "
        "'succeeded', 12)"
    )
    old.execute("INSERT INTO locks VALUES ('app', 'alice', 1.0, 9e9)")
    for _ in range(2):  # a crash's leftovers: two "running" on one project (ids 2, 3)
        old.execute(
            "INSERT INTO jobs (project, kind, user, started_at, status) "
            "VALUES ('web', 'deploy', 'bob', 1.0, 'running')"
        )
    old.commit()
    old.close()

    store = Store(path)
    try:
        job = store.get_job(1)
        assert (job.project, job.status, job.log_bytes, job.repository, job.url) == (
            "app",
            "succeeded",
            12,
            None,
            None,
        )
        assert store.get_lock("app").user == "alice"
        assert migrations.applied(store) == list(range(1, migrations.VERSION + 1))
        # Version 3 allows one running job per project: the older leftover is interrupted.
        assert [store.get_job(i).status for i in (2, 3)] == ["interrupted", "running"]
        repository = store.adopt_repository("app", "/srv/git/app.git")
        assert store.get_job(1).repository == repository.id
        assert store.get_job(1).url == "/srv/git/app.git"
        assert store.create_job(project="app", kind="checkout", user="bob").id == 4
        with pytest.raises(JobAlreadyRunning):
            store.create_job(project="web", kind="checkout", user="bob")
    finally:
        store.close()
    Store(path).close()  # opening a migrated database again changes nothing
    again = sqlite3.connect(path)
    columns = [r[1] for r in again.execute("PRAGMA table_info(jobs)")][-12:]
    assert columns == [
        "repository", "url", "token", "instance", "heartbeat_at", "approved_by",
        "freeze_override", "lease_epoch", "lease_until", "announced_at", "cancel_requested_by",
        "cancel_requested_at",
    ]  # fmt: skip
    again.close()


def test_a_database_of_schema_4_gets_the_leases(tmp_path: Path) -> None:
    """Governance's schema (version 4, before the runners' leases): the lease columns are
    added, the jobs and their approvals stay."""
    path = tmp_path / "pploy.db"
    Store(path).close()
    old = sqlite3.connect(path)
    old.execute("ALTER TABLE jobs DROP COLUMN lease_until")
    old.execute("ALTER TABLE jobs DROP COLUMN lease_epoch")
    old.execute(
        "INSERT INTO jobs (project, kind, user, started_at, status, approved_by) "
        "VALUES ('app', 'deploy', 'bob', 1.0, 'succeeded', '[\"carol\"]')"
    )
    old.execute("PRAGMA user_version = 4")  # how a pploy before the migration runner counted
    old.execute("DROP TABLE pploy_migrations")
    old.commit()
    old.close()
    store = Store(path)
    try:
        assert migrations.applied(store) == list(range(1, migrations.VERSION + 1))
        job = store.get_job(1)
        assert (job.status, job.approved_by, job.lease_epoch) == ("succeeded", ["carol"], 0)
        running = store.create_job(project="web", kind="deploy", user="bob", lease_seconds=30)
        assert store.take_lease(running.id, 30) == 1
    finally:
        store.close()


# -- several pploys on one database -------------------------------------------------------------


def another(store: Storage, db_path: Path) -> Storage:
    """A second connection to ``store``'s database, as another pploy instance has."""
    return Store(db_path) if isinstance(store, Store) else PgStore(store.url)


def test_racing_gains_from_many_connections_have_one_winner(store: Storage, db_path: Path) -> None:
    """Each user gains from a connection of their own, all at once: one lock, one winner
    (a read-then-write would let several read "free" and all write)."""
    stores = [another(store, db_path) for _ in range(12)]
    barrier = threading.Barrier(len(stores))

    def gain(index: int) -> Lock | None:
        barrier.wait()
        return stores[index].gain_lock("app", f"user{index}", T0, 600)

    try:
        for attempt in range(5):
            project_results = []
            with ThreadPoolExecutor(len(stores)) as pool:
                project_results = list(pool.map(gain, range(len(stores))))
            winners = [lock for lock in project_results if lock is not None]
            assert len(winners) == 1, (attempt, winners)
            assert store.get_lock("app", T0).user == winners[0].user
            store.delete_lock("app")
    finally:
        for s in stores:
            s.close()


def test_one_running_job_per_project_across_connections(store: Storage, db_path: Path) -> None:
    other = another(store, db_path)
    try:
        job = store.create_job(project="app", kind="deploy", user="alice", env="staging")
        with pytest.raises(JobAlreadyRunning, match="already running on app"):
            other.create_job(project="app", kind="checkout", user="bob", ref="main")
        assert other.create_job(project="web", kind="deploy", user="bob").running
        finish(store, job.id, "succeeded", T0)
        assert other.create_job(project="app", kind="checkout", user="bob").running
    finally:
        other.close()


def test_a_finished_job_is_announced_once_whoever_claims_it(store: Storage, db_path: Path):
    """The end of a job that ran is claimed for job.finished by one conditional UPDATE: of
    twelve connections claiming at once, one gets the record; nothing running, awaiting
    approval or rejected is ever claimed; another instance's end only after the grace."""
    job = store.create_job(
        project="app", kind="deploy", user="alice", instance="a", lease_seconds=30
    )
    assert store.announce_job(job.id) is None  # running: nothing to announce yet
    assert store.unannounced_jobs("a", 0) == []
    waiting = store.request_job(project="web", kind="deploy", user="bob", env="production",
                                sha=None, token=None, freeze_override=None)  # fmt: skip
    assert store.settle_job(waiting.id, "awaiting_approval", status="rejected", ended_at=T0)
    store.update_job(job.id, status="failed", exit_code=3, ended_at=time.time())
    assert [j.id for j in store.unannounced_jobs("a", 60)] == [job.id]  # its own instance's
    assert store.unannounced_jobs("b", 60) == []  # another's: not yet (it follows it)
    assert [j.id for j in store.unannounced_jobs("b", 0)] == [job.id]
    stores = [another(store, db_path) for _ in range(12)]
    barrier = threading.Barrier(len(stores))

    def claim(s: Storage):  # noqa: ANN202
        barrier.wait()
        return s.announce_job(job.id)

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            claims = list(pool.map(claim, stores))
    finally:
        for s in stores:
            s.close()
    (won,) = [c for c in claims if c is not None]
    assert (won.id, won.status, won.exit_code) == (job.id, "failed", 3)
    assert won.announced_at is not None
    assert store.announce_job(job.id) is None
    assert store.announce_job(waiting.id) is None  # rejected: its own event, never this
    assert store.unannounced_jobs("a", 0) == []


def test_a_cancel_is_recorded_in_the_row_first_asker_kept(store: Storage) -> None:
    """A cancel recorded by any instance, for the job's runner to find: who asked first (and
    when) stays; nothing is recorded for, or found on, a job that has ended."""
    job = store.create_job(project="app", kind="deploy", user="alice", lease_seconds=30)
    assert store.cancel_request(job.id) is None
    before = time.time()
    assert store.request_cancel(job.id, "alice")
    assert not store.request_cancel(job.id, "bob")  # the first stays
    assert store.cancel_request(job.id) == "alice"
    record = store.get_job(job.id)
    assert record.cancel_requested_by == "alice"
    assert before - 1 <= record.cancel_requested_at <= time.time() + 1
    store.update_job(job.id, status="cancelled", cancelled_by="alice", ended_at=time.time())
    assert store.cancel_request(job.id) is None
    other = store.create_job(project="app", kind="deploy", user="alice", lease_seconds=30)
    store.update_job(other.id, status="succeeded", ended_at=time.time())
    assert not store.request_cancel(other.id, "alice")
    assert store.get_job(other.id).cancel_requested_by is None
    assert store.cancel_request(999) is None


def test_lock_changes_need_the_holder_in_the_statement_itself(store: Storage) -> None:
    """extend, release and keep act only on the named user's unexpired lock."""
    assert store.gain_lock("app", "alice", T0, 600).expires_at == T0 + 600
    assert store.gain_lock("app", "bob", T0 + 1, 600) is None
    assert store.extend_lock("app", "bob", T0 + 1, 60) is None
    assert store.release_lock("app", "bob", T0 + 1) is False
    store.keep_lock_until("app", "bob", T0 + 1, T0 + 9999)
    assert store.get_lock("app", T0 + 1).expires_at == T0 + 600
    store.keep_lock_until("app", "alice", T0 + 1, T0 + 900)
    assert store.extend_lock("app", "alice", T0 + 2, 60).expires_at == T0 + 960
    assert store.gain_lock("app", "alice", T0 + 3, 600).expires_at == T0 + 960  # never shorter
    assert store.extend_lock("app", "alice", T0 + 961, 60) is None  # expired
    regained = store.gain_lock("app", "bob", T0 + 961, 600)
    assert (regained.user, regained.gained_at) == ("bob", T0 + 961)
    assert store.release_lock("app", "bob", T0 + 962) is True
    assert store.get_lock("app", T0 + 962) is None


def test_tokens_are_kept_as_digests_revoked_once_and_named_on_jobs(store: Storage) -> None:
    """API tokens on either engine: found by digest only, listed per owner, revoked once (a
    second revoke keeps the first time), and a job records the token's name."""
    made = store.add_token(
        user="alice", email="alice@example.com", name="ci", digest="d" * 64, expires_at=None
    )
    store.add_token(user="bob", email=None, name="b", digest="e" * 64, expires_at=T0)
    assert store.token_by_hash("d" * 64) == made and store.token_by_hash("f" * 64) is None
    assert [t.name for t in store.list_tokens("alice")] == ["ci"]
    assert "digest" not in made.to_json() and made.usable()
    store.token_used(made.id, T0 + 5)
    store.revoke_token(made.id)
    revoked = store.get_token(made.id)
    assert revoked is not None and revoked.last_used_at == T0 + 5 and not revoked.usable()
    store.revoke_token(made.id)
    assert store.get_token(made.id).revoked_at == revoked.revoked_at
    job = store.create_job(project="app", kind="deploy", user="alice", env="staging", token="ci")
    assert store.get_job(job.id).token == "ci"


def test_history_search_filters_pages_and_failed_attempts_on_either_engine(
    store: Storage,
) -> None:
    """The project page's history (find_jobs) and the index's failed attempt
    (last_failed_deploy) mean the same on SQLite and PostgreSQL: the search ignores case and
    takes ``%`` and ``_`` literally; filters are exact; pages are newest first."""
    ids = []
    for n, (env, status, message) in enumerate(
        [
            ("staging", "succeeded", "Shipped 50% of it"),
            ("production", "succeeded", None),
            ("production", "failed", "exit 1"),
            ("staging", "failed", "a_b"),
        ]
    ):
        job = store.create_job(
            project="app", kind="deploy", user="Alice" if n % 2 else "bob", env=env
        )
        store.update_job(job.id, status=status, message=message, ended_at=T0 + n)
        ids.append(job.id)
    store.create_job(project="other", kind="deploy", user="bob", env="staging")

    def found(filters: dict[str, str], query: str = "", limit: int = 10, offset: int = 0):
        jobs, total = store.find_jobs("app", filters, query, limit, offset)
        return [j.id for j in jobs], total

    assert found({}) == (ids[::-1], 4)
    assert found({}, limit=3, offset=3) == ([ids[0]], 4)
    assert found({"env": "production", "status": "failed"}) == ([ids[2]], 1)
    assert found({"user": "Alice"}) == ([ids[3], ids[1]], 2)
    assert found({}, "alice") == ([ids[3], ids[1]], 2)  # case ignored
    assert found({}, "50%") == ([ids[0]], 1)
    assert found({}, "%") == ([ids[0]], 1)  # literal, not a wildcard
    assert found({}, "a_b") == ([ids[3]], 1)
    assert found({}, "_") == ([ids[3]], 1)
    assert found({}, "'; DROP TABLE jobs; --") == ([], 0)
    failed = store.last_failed_deploy("app")
    assert failed is not None and failed.id == ids[3]  # newer than the last success
    assert store.last_failed_deploy("other") is None  # running is not failed


# -- one storage layer: the statements and the migrations are the same on both engines -----------


def test_one_current_repository_per_name(store: Storage, db_path: Path) -> None:
    store.add_repository("app", "/srv/git/app.git")
    other = another(store, db_path)
    try:
        with pytest.raises(Conflict, match="already exists"):
            other.add_repository("app", "/srv/git/other.git")
    finally:
        other.close()
    store.remove_project("app", "alice")
    assert store.add_repository("app", "/srv/git/other.git").url == "/srv/git/other.git"


def schema(store: SqlStore) -> list[tuple[object, ...]]:
    """Every table's columns (name, type, nullability, default) and every index, as the
    database itself describes them."""
    if isinstance(store, Store):
        rows = store.execute(
            'SELECT m.name AS t, p.name AS c, p.type, p."notnull", p.dflt_value '
            "FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table' "
            "ORDER BY m.name, p.cid"
        ).fetchall()
        rows += store.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name"
        ).fetchall()
    else:
        rows = store.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = current_schema() "
            "ORDER BY table_name, ordinal_position"
        ).fetchall()
        rows += store.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "ORDER BY indexname"
        ).fetchall()
    return [tuple(row.values()) for row in rows]


def test_every_step_finds_its_work_done_on_a_database_from_before_the_runner(
    store: SqlStore, db_path: Path
) -> None:
    """A database without ``pploy_migrations`` (written before the one migration runner, by
    either engine's own numbering) gets every step again: each must find done what is done,
    change no record and leave the schema as it was."""
    store.add_repository("app", "/srv/git/app.git")
    job = store.create_job(project="app", kind="deploy", user="alice", env="production")
    store.update_job(job.id, status="succeeded", ended_at=T0)
    store.announce_job(job.id)  # as it is by the time step 8 exists (it marks ended jobs)
    running = store.create_job(project="app", kind="checkout", user="bob", lease_seconds=30)
    store.add_token(user="alice", email=None, name="ci", digest="d1", expires_at=None)
    store.add_freeze(name="f", envs=["production"], projects=[], starts_at=T0, until=9e9,
                     reason="r", created_by="root")  # fmt: skip
    store.add_audit(at=T0, user="alice", kind="lock.gained", project="app", env=None, job=None,
                    detail={"x": 1})  # fmt: skip
    before = (schema(store), store.list_jobs(), store.list_tokens("alice"))
    store.execute("DROP TABLE pploy_migrations")
    again = another(store, db_path)
    try:
        assert migrations.applied(again) == list(range(1, migrations.VERSION + 1))
        assert (schema(again), again.list_jobs(), again.list_tokens("alice")) == before
        assert again.get_job(running.id).lease_until == running.lease_until
        assert [f.name for f in again.current_freezes(T0)] == ["f"]
        assert again.list_audit(None, [], 10)[0].detail == {"x": 1}
    finally:
        again.close()


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_a_database_at_step_7_gains_step_8_and_announces_nothing_old(
    engine: str, db_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 8 (durable ends and cancels) on a database written by the steps before it: every
    job that had ended counts as announced (an upgrade sends no flood of job.finished); a job
    still running is announced once it ends; cancels can be recorded."""

    def open_store() -> SqlStore:
        if engine == "sqlite":
            return Store(db_path)
        return PgStore(request.getfixturevalue("pg_database"))

    with monkeypatch.context() as patch:
        patch.setattr(migrations, "STEPS", migrations.STEPS[:7])
        old = open_store()
    url = getattr(old, "url", None)
    try:
        assert migrations.applied(old) == list(range(1, 8))
        ended = []
        for status in ("succeeded", "failed", "interrupted"):
            job = old.execute(
                'INSERT INTO jobs (project, kind, "user", started_at, ended_at, status) '
                "VALUES ('app', 'deploy', 'alice', 1.0, 2.0, ?) RETURNING id",
                (status,),
            ).fetchone()
            ended.append(job["id"])
        running = old.create_job(project="app", kind="deploy", user="bob", lease_seconds=30)
    finally:
        old.close()
    store = Store(db_path) if engine == "sqlite" else PgStore(url)
    try:
        assert migrations.applied(store)[:8] == list(range(1, 9))
        assert [store.get_job(i).announced_at for i in ended] == [2.0, 2.0, 2.0]
        assert store.unannounced_jobs(None, 0) == []
        assert [store.announce_job(i) for i in ended] == [None, None, None]
        assert store.request_cancel(running.id, "bob")
        assert store.cancel_request(running.id) == "bob"
        store.update_job(running.id, status="cancelled", ended_at=time.time(), cancelled_by="bob")
        assert [j.id for j in store.unannounced_jobs(None, 0)] == [running.id]
        assert store.announce_job(running.id).status == "cancelled"
        assert store.announce_job(running.id) is None
    finally:
        store.close()


def test_a_sqlite_file_with_two_current_repositories_of_a_name_keeps_the_newest(
    db_path: Path,
) -> None:
    """Before the index of step 7 nothing in an SQLite file kept a name to one current
    repository: the older is marked removed (by "pploy", when it was added), then the index
    holds."""
    Store(db_path).close()
    old = sqlite3.connect(db_path)
    old.execute("DROP INDEX repositories_current")
    old.execute("DELETE FROM pploy_migrations WHERE version >= 7")  # 7 and what came after
    for url in ("/git/one", "/git/two"):
        old.execute(
            "INSERT INTO repositories (project, url, added_at) VALUES ('app', ?, 5.0)", (url,)
        )
    old.commit()
    old.close()
    store = Store(db_path)
    try:
        assert store.current_repository("app").url == "/git/two"
        first = store.get_repository(1)
        assert (first.removed_at, first.removed_by) == (5.0, "pploy")
        with pytest.raises(Conflict):
            store.add_repository("app", "/git/three")
    finally:
        store.close()


def test_placeholders_reach_postgresql_as_psycopg_s_and_casts_stay() -> None:
    """The statements are written once, with SQLite's placeholders; PostgreSQL's are made from
    them. A literal % survives, :: casts are not taken for names, and :name inside a word
    (a time like 12:30 would be in a literal, never in a statement) is left."""
    from pploy.deploy.storage.postgres import to_psycopg

    assert to_psycopg("SELECT * FROM t WHERE a = ? AND b = ?") == (
        "SELECT * FROM t WHERE a = %s AND b = %s"
    )
    assert to_psycopg("SELECT :job, (:epoch::integer IS NULL), :job") == (
        "SELECT %(job)s, (%(epoch)s::integer IS NULL), %(job)s"
    )
    assert to_psycopg("SELECT '50%' LIKE ?") == "SELECT '50%%' LIKE %s"
