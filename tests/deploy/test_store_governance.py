"""The governance records of store.py and store_pg.py (issue 25), the same suite on SQLite and a
real PostgreSQL: lock queues and their one-transaction grant, ad-hoc freezes, the audit trail,
jobs awaiting approval and their one-statement settlement."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pploy.deploy.domain.records import JobAlreadyRunning, Lock, Storage
from tests.deploy.test_store_locks import T0, another, db_path, store  # noqa: F401
from tests.postgres import pg_database, pg_server  # noqa: F401


def test_the_queue_is_fifo_and_keeps_places(store: Storage) -> None:  # noqa: F811
    assert store.queue_for_lock("app", "bob", T0)
    assert store.queue_for_lock("app", "carol", T0 + 1)
    assert not store.queue_for_lock("app", "bob", T0 + 2)  # already there: place kept
    assert store.queue_for_lock("web", "dave", T0)
    assert [(q.user, q.since) for q in store.lock_queue("app")] == [("bob", T0), ("carol", T0 + 1)]
    assert store.leave_lock_queue("app", "bob") and not store.leave_lock_queue("app", "bob")
    assert [q.user for q in store.lock_queue("app")] == ["carol"]
    store.remove_project("app", "alice")
    assert store.lock_queue("app") == [] and [q.user for q in store.lock_queue("web")] == ["dave"]


def test_grant_next_gives_a_free_lock_to_the_first_in_line(store: Storage) -> None:  # noqa: F811
    assert store.grant_next("app", T0, 600) is None  # nobody waits
    store.gain_lock("app", "alice", T0, 600)
    store.queue_for_lock("app", "bob", T0)
    store.queue_for_lock("app", "carol", T0)
    assert store.grant_next("app", T0 + 1, 600) is None  # held: nothing changes
    assert [q.user for q in store.lock_queue("app")] == ["bob", "carol"]
    granted = store.grant_next("app", T0 + 600, 600)  # alice's ran out
    assert granted == Lock("app", "bob", T0 + 600, T0 + 1200)
    assert store.get_lock("app", T0 + 601) == granted
    assert [q.user for q in store.lock_queue("app")] == ["carol"]
    assert store.release_lock("app", "bob", T0 + 700)
    assert store.grant_next("app", T0 + 700, 600).user == "carol"
    assert store.lock_queue("app") == []


def test_racing_grants_give_the_lock_once(store: Storage, db_path: Path) -> None:  # noqa: F811
    """Instances granting at the same moment (each noticed the release): one grant, and the
    second in line stays in line."""
    stores = [another(store, db_path) for _ in range(8)]
    barrier = threading.Barrier(len(stores))

    def grant(index: int) -> Lock | None:
        barrier.wait()
        return stores[index].grant_next("app", T0, 600)

    try:
        for attempt in range(3):
            store.queue_for_lock("app", "bob", T0)
            store.queue_for_lock("app", "carol", T0)
            with ThreadPoolExecutor(len(stores)) as pool:
                results = list(pool.map(grant, range(len(stores))))
            granted = [lock for lock in results if lock is not None]
            assert [lock.user for lock in granted] == ["bob"], (attempt, granted)
            assert [q.user for q in store.lock_queue("app")] == ["carol"]
            store.delete_lock("app")
            store.leave_lock_queue("app", "carol")
    finally:
        for s in stores:
            s.close()


def test_ad_hoc_freezes(store: Storage) -> None:  # noqa: F811
    fields = {"envs": ["production"], "projects": ["*"], "reason": "db", "created_by": "alice"}
    freeze = store.add_freeze(name="incident", starts_at=T0, until=T0 + 60, **fields)
    assert freeze is not None and freeze.envs == ["production"] and freeze.until == T0 + 60
    assert store.add_freeze(name="incident", starts_at=T0 + 1, until=T0 + 90, **fields) is None
    assert [f.name for f in store.current_freezes(T0 + 30)] == ["incident"]
    assert store.current_freezes(T0 + 60) == []  # ended by its time
    # Its time passed: the name is free again.
    again = store.add_freeze(name="incident", starts_at=T0 + 61, until=T0 + 120, **fields)
    assert again is not None and again.id != freeze.id
    ended = store.end_freeze("incident", "bob", T0 + 70)
    assert ended is not None and ended.ended_by == "bob" and ended.ended_at == T0 + 70
    assert store.end_freeze("incident", "bob", T0 + 71) is None
    assert store.current_freezes(T0 + 71) == []


def test_a_configured_windows_announcements_are_claimed_once(
    store: Storage,  # noqa: F811
    db_path: Path,  # noqa: F811
) -> None:
    """Each (window, start, kind) is claimed by one caller only, another instance included;
    an end only after its start; another start of the same name is another window."""
    other = another(store, db_path)
    try:
        # Started and ended unannounced (pploy was down): its end is not claimed either.
        assert not store.claim_announcement("past", T0 - 99, "freeze.ended", T0)
        assert store.claim_announcement("year-end", T0, "freeze.started", T0)
        assert not other.claim_announcement("year-end", T0, "freeze.started", T0 + 1)
        assert not store.claim_announcement("year-end", T0, "freeze.started", T0 + 2)
        assert other.claim_announcement("year-end", T0 + 365, "freeze.started", T0 + 365)
        assert other.claim_announcement("year-end", T0, "freeze.ended", T0 + 9)
        assert not store.claim_announcement("year-end", T0, "freeze.ended", T0 + 10)
        assert not store.claim_announcement("past", T0 - 99, "freeze.ended", T0)
    finally:
        other.close()


def test_keeping_a_lock_says_whether_it_lengthened_it(store: Storage) -> None:  # noqa: F811
    store.gain_lock("app", "alice", T0, 600)
    assert store.keep_lock_until("app", "alice", T0 + 1, T0 + 900)
    assert not store.keep_lock_until("app", "alice", T0 + 1, T0 + 800)  # never shorter
    assert not store.keep_lock_until("app", "bob", T0 + 1, T0 + 9999)  # not the holder
    assert not store.keep_lock_until("app", "alice", T0 + 901, T0 + 9999)  # expired
    assert store.get_lock("app", T0 + 2).expires_at == T0 + 900


def test_the_audit_trail_filters_and_keeps_order(store: Storage) -> None:  # noqa: F811
    for i, kind in enumerate(["lock.gained", "job.started", "lock.released", "lockout.x"]):
        store.add_audit(at=T0 + i, user="alice", kind=kind, project="app", env=None,
                        job=i or None, detail={"n": i, "why": "é"})  # fmt: skip
    every = store.list_audit(None, [], 100)
    assert [e.kind for e in every] == ["lock.gained", "job.started", "lock.released", "lockout.x"]
    assert every[1].job == 1 and every[0].job is None and every[3].detail == {"n": 3, "why": "é"}
    assert [e.kind for e in store.list_audit(None, ["lock.*"], 100)] == [
        "lock.gained", "lock.released"
    ]  # fmt: skip
    assert [e.kind for e in store.list_audit(T0 + 1, ["lock.*", "job.started"], 100)] == [
        "job.started", "lock.released"
    ]  # fmt: skip
    assert len(store.list_audit(None, [], 2)) == 2


def test_a_job_awaiting_approval_settles_once(store: Storage) -> None:  # noqa: F811
    request = {"project": "app", "kind": "deploy", "user": "alice", "env": "production",
               "sha": "a" * 40, "token": None}  # fmt: skip
    job = store.request_job(**request, freeze_override={"freeze": "f", "reason": "r", "by": "a"})
    assert job.status == "awaiting_approval" and not job.running
    assert job.freeze_override == {"freeze": "f", "reason": "r", "by": "a"}
    with pytest.raises(JobAlreadyRunning):
        store.request_job(**request, freeze_override=None)  # one waits per project
    assert [j.id for j in store.awaiting_jobs()] == [job.id]
    running = store.create_job(project="app", kind="checkout", user="alice")
    with pytest.raises(JobAlreadyRunning):  # a second running job
        store.settle_job(job.id, "awaiting_approval", status="running", approved_by=["bob"])
    store.update_job(running.id, status="succeeded", ended_at=T0)
    assert store.settle_job(job.id, "awaiting_approval", status="running", approved_by=["bob"])
    assert not store.settle_job(job.id, "awaiting_approval", status="running")  # only once
    started = store.get_job(job.id)
    assert started.running and started.approved_by == ["bob"]
    assert store.awaiting_jobs() == []
    assert ("deploy", "awaiting_approval") not in store.job_counts()
