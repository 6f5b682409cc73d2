"""Log shipping that resumes (sharedlog.LogShipper) and remote followers that wait for every
byte (sharedlog.RemoteLog), on a real PostgreSQL, failures made by a real TCP relay."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pploy.deploy.jobs.following import follow
from pploy.deploy.jobs.sharedlog import Diverged, LogShipper, SharedLogs
from pploy.deploy.storage.postgres import PgStore
from tests.postgres import pg_database, pg_server  # noqa: F401
from tests.reliability.faults import TcpRelay

pytestmark = pytest.mark.slow


def stored(store: PgStore, job: int) -> bytes:
    return store.read_log(job, 0, 1 << 30)


def write(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


@dataclass
class Job:
    """A job of a real database: its store, id and (empty) log file."""

    store: PgStore
    id: int
    path: Path
    url: str


@pytest.fixture
def job(tmp_path: Path, pg_database: str) -> Iterator[Job]:  # noqa: F811
    store = PgStore(pg_database)
    record = store.create_job(project="app", kind="deploy", user="alice")
    path = tmp_path / "job.log"
    path.touch()
    yield Job(store, record.id, path, pg_database)
    store.close()


def test_the_shipper_ends_byte_identical_through_resets_and_a_silent_database(job: Job) -> None:
    admin, path = job.store, job.path
    with TcpRelay.to_database(job.url) as relay:
        store = PgStore(relay.url(job.url))
        shipper = LogShipper(store, job.id, path).start()
        try:
            expected = bytearray()
            for n, fault in enumerate(["reset", "blackhole", None, "reset", "blackhole", None] * 2):
                piece = os.urandom(3000 + n * 977)  # not text: any byte must survive
                write(path, piece)
                expected += piece
                shipper.wake()
                if fault == "reset":
                    relay.reset()
                elif fault == "blackhole":
                    relay.blackhole()
                time.sleep(0.3)
                # Whatever happens, what is stored is a prefix of the file: never a gap.
                assert bytes(expected).startswith(stored(admin, job.id))
                relay.forward()
            shipper.finish()
            assert shipper.wait(30), "the shipper did not catch up"
            assert stored(admin, job.id) == bytes(expected) == path.read_bytes()
            assert shipper.done.is_set()
        finally:
            shipper.stop()
            store.close()


def test_a_chunk_that_lands_after_its_statement_gave_up_is_stored_once(job: Job) -> None:
    write(job.path, b"a" * 100)
    shipper = LogShipper(job.store, job.id, job.path)
    assert shipper.ship() == 100
    write(job.path, b"b" * 200)
    # The chunk the shipper sent at 100 lands late, after its caller gave up on it (a
    # blackholed statement delivered once the route healed): another connection plays it.
    other = PgStore(job.url)
    assert other.append_log(job.id, 100, b"b" * 50)
    assert not other.append_log(job.id, 100, b"b" * 80)  # and again: refused
    other.close()
    assert shipper.ship() == 300
    assert stored(job.store, job.id) == job.path.read_bytes()


def test_the_shipper_never_garbles_a_log_another_instance_closed(job: Job) -> None:
    write(job.path, b"line one\n")
    shipper = LogShipper(job.store, job.id, job.path)
    shipper.ship()
    # Cut off for long, this instance's job was declared interrupted elsewhere: the closing
    # note went to the stored log's end. Then this instance's output arrives.
    note = b"[pploy] interrupted: instance a stopped answering\n"
    SharedLogs(job.store, lambda record: {}).append_note(job.id, note)
    write(job.path, b"line two, written while cut off\n")
    with pytest.raises(Diverged):
        shipper.ship()
    assert shipper.diverged
    assert stored(job.store, job.id) == b"line one\n" + note


async def test_a_remote_follower_does_not_end_before_every_byte_the_end_record_counts(
    tmp_path: Path,
    pg_database: str,  # noqa: F811
) -> None:
    store = PgStore(pg_database)
    record = store.create_job(project="app", kind="deploy", user="alice")
    path = tmp_path / "job.log"
    text = b"".join(b"line %03d\n" % n for n in range(300))
    write(path, text[:1000])
    shipper = LogShipper(store, record.id, path)
    shipper.ship()
    logs = SharedLogs(store, lambda r: {"status": r.status, "log_bytes": r.log_bytes})
    remote = logs.open(record)
    assert remote is not None
    received = bytearray()
    statuses = []

    async def view() -> None:
        async for item in follow(remote, path, 0):
            if item is not None and item.status is not None:
                statuses.append((len(received), item.status))
            elif item is not None:
                received.extend(item.data)

    viewer = asyncio.create_task(view())
    # The job ends while the database still lacks its last bytes (the shipper is behind).
    write(path, text[1000:])
    store.update_job(record.id, status="succeeded", exit_code=0, log_bytes=len(text))
    logs.announce(record.id)
    await asyncio.sleep(0.3)
    assert not viewer.done(), f"the viewer ended at {len(received)} of {len(text)} bytes"
    assert not statuses
    shipper.ship()  # the rest lands: its notification brings the follower up
    logs.announce(record.id)
    await asyncio.wait_for(viewer, 10)
    assert bytes(received) == text
    assert statuses == [(len(text), {"status": "succeeded", "log_bytes": len(text)})]
    # A viewer arriving later, on a finished job whose stored log is short, waits too.
    other = store.create_job(project="other", kind="deploy", user="alice")
    store.append_log(other.id, 0, b"half")
    store.update_job(other.id, status="failed", exit_code=1, log_bytes=8)
    late = logs.open(store.get_job(other.id))  # type: ignore[arg-type]
    assert late is not None and not late.closed
    store.append_log(other.id, 4, b"done")
    logs.announce(other.id)
    assert late.closed and late.size == 8
    store.close()


def test_a_stopping_pploy_waits_for_ended_jobs_last_bytes(job: Job) -> None:
    write(job.path, b"output\n")
    with TcpRelay.to_database(job.url) as relay:
        store = PgStore(relay.url(job.url))
        logs = SharedLogs(store, lambda record: {})
        shipper = logs.ship(job.id, job.path)
        try:
            relay.blackhole()
            write(job.path, b"the job's last line\n")
            logs.finish_shipping(job.id)  # the job ended while the database is silent
            started = time.monotonic()
            assert not logs.drain(0.5)  # bounded: a silent database does not hold pploy
            assert time.monotonic() - started < 1.5
            relay.forward()
            assert logs.drain(15)
            assert stored(job.store, job.id) == job.path.read_bytes()
            logs.finish_shipping(job.id + 1)  # no such shipper: nothing happens
            assert job.id not in logs.shippers  # done shippers are forgotten
        finally:
            shipper.stop()
            store.close()


def test_logs_left_short_by_a_stop_are_shipped_on_the_next_start(
    tmp_path: Path,
    pg_database: str,  # noqa: F811
) -> None:
    store = PgStore(pg_database)
    record = store.create_job(project="app", kind="deploy", user="alice", instance="here")
    other = store.create_job(project="two", kind="deploy", user="alice", instance="elsewhere")
    path = tmp_path / f"{record.id}.log"
    write(path, b"a" * 5000)
    LogShipper(store, record.id, path).ship()
    write(path, b"b" * 3000)  # written, the end recorded, then pploy stopped: never shipped
    for job in (record.id, other.id):
        store.update_job(job, status="succeeded", exit_code=0, log_bytes=8000)
    logs = SharedLogs(store, lambda r: {})
    assert [r.id for r in store.short_logs("here")] == [record.id]
    assert logs.resume_shipping("here", lambda r: tmp_path / f"{r.id}.log") == 1
    assert logs.drain(15)
    assert stored(store, record.id) == path.read_bytes()
    assert store.short_logs("here") == []
    store.close()


def test_a_job_whose_runner_died_is_closed_with_its_unshipped_bytes(job: Job) -> None:
    """The runner died with bytes not yet stored; its instance writes the closing note into
    the file and closes the stored log from it: byte-identical, note included. Where another
    instance closed the stored log first, only the note is added there."""
    store, path = job.store, job.path
    write(path, b"shipped\n")
    assert store.append_log(job.id, 0, b"shipped\n", epoch=0)
    note = b"\x1b[1;36m[pploy] interrupted: its runner died\x1b[0m\n"
    write(path, b"never shipped\n" + note)
    logs = SharedLogs(store, lambda record: {})
    assert logs.close_log(job.id, path, note) == path.stat().st_size
    assert stored(store, job.id) == path.read_bytes()
    other = store.create_job(project="web", kind="deploy", user="alice")
    theirs = b"their line\n"
    assert store.append_log(other.id, 0, theirs)
    mine = path.with_name("other.log")
    mine.write_bytes(b"my line\n" + note)
    assert logs.close_log(other.id, mine, note) == len(theirs + note)
    assert stored(store, other.id) == theirs + note
