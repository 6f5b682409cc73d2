"""The lock queue (issue 25, interface 1) through ``pploy serve`` started from a config file,
on SQLite and a real PostgreSQL: FIFO, places kept, the holder refused, and the first in line
becomes the holder at once when the lock is released or runs out (``lock.granted``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.govserver import Served
from tests.deploy.support import make_remote
from tests.deploy.test_notify import Receiver, receiver  # noqa: F401
from tests.postgres import pg_database, pg_server  # noqa: F401

pytestmark = pytest.mark.slow  # `pploy serve` from a config file per test, a lock running out


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def database(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg_database") if request.param == "postgresql" else None


@pytest.fixture
async def served(tmp_path: Path, database: str | None) -> AsyncIterator[Served]:
    pploy = Served(tmp_path, "", database)
    await pploy.start()
    yield pploy
    await pploy.close()


async def lock_of(served: Served, name: str) -> dict[str, Any]:
    return (await served.ok("GET", f"/api/projects/{name}", "dave"))["project"]["lock"]


async def test_queue_is_first_come_first_served(served: Served, tmp_path: Path):
    name = await served.add_project(make_remote(tmp_path))
    assert (await served.lock(name, "gain", "alice"))[0] == 200
    assert (await lock_of(served, name))["queue"] == []
    for user in ("bob", "carol", "bob"):  # bob again: keeps his place
        status, body = await served.lock(name, "queue", user)
        assert status in (200, 202), body
        assert body["lock"]["user"] == "alice"
    queue = (await lock_of(served, name))["queue"]
    assert [q["user"] for q in queue] == ["bob", "carol"]
    assert queue[0]["since"] <= queue[1]["since"]
    status, body = await served.lock(name, "queue", "alice")  # the holder
    assert status == 409 and "you hold the lock" in body["error"], body
    status, body = await served.lock(name, "gain", "carol")  # no jumping the queue
    assert status == 409, body
    assert (await served.lock(name, "leave", "dave"))[0] == 200  # not queued: nothing to do
    assert (await served.lock(name, "leave", "carol"))[0] == 200
    assert (await served.lock(name, "queue", "carol"))[0] == 200
    assert (await served.lock(name, "queue", "dave"))[0] == 200
    assert [q["user"] for q in (await lock_of(served, name))["queue"]] == ["bob", "carol", "dave"]

    # Released: the first in line holds it at once, with the normal duration.
    assert (await served.lock(name, "release", "alice"))[0] == 200
    lock = await lock_of(served, name)
    assert lock["user"] == "bob" and 1190 < lock["seconds_left"] <= 1200
    assert [q["user"] for q in lock["queue"]] == ["carol", "dave"]
    assert (await served.lock(name, "leave", "dave"))[0] == 200
    assert (await served.lock(name, "release", "bob"))[0] == 200
    lock = await lock_of(served, name)
    assert lock["user"] == "carol" and lock["queue"] == []
    assert (await served.lock(name, "release", "carol"))[0] == 200
    assert await lock_of(served, name) is None
    # A free lock is simply gained by queueing.
    status, body = await served.lock(name, "queue", "dave")
    assert status == 200 and body["lock"]["user"] == "dave"

    events = (await served.ok("GET", "/api/audit?kind=lock.*"))["events"]
    assert [(e["kind"], e["user"]) for e in events] == [
        ("lock.gained", "alice"), ("lock.queued", "bob"), ("lock.queued", "carol"),
        ("lock.queued", "carol"), ("lock.queued", "dave"), ("lock.released", "alice"),
        ("lock.granted", "bob"), ("lock.released", "bob"), ("lock.granted", "carol"),
        ("lock.released", "carol"), ("lock.gained", "dave"),
    ]  # fmt: skip
    assert events[4]["detail"]["position"] == 3


async def next_post(receiver: Receiver, timeout: float = 30) -> dict[str, Any]:  # noqa: F811
    """The next webhook body pploy sends (waits for it to arrive; no sleeping)."""
    seen = len(receiver.requests)
    while len(receiver.requests) == seen:
        receiver.arrived.clear()
        await asyncio.wait_for(receiver.arrived.wait(), timeout)
    return receiver.requests[seen]["json"]


async def test_an_expired_lock_goes_to_the_first_in_line(
    tmp_path: Path,
    database: str | None,
    receiver: Receiver,  # noqa: F811
):
    hook = (
        f"lock:\n  gain_minutes: 0.04\nwebhooks:\n  - url: {receiver.url()}\n"
        "    events: [lock.expired, lock.granted, lock.queued]\n"
    )
    served = Served(tmp_path, hook, database)
    await served.start()
    try:
        name = await served.add_project(make_remote(tmp_path))
        assert (await served.lock(name, "gain", "alice"))[0] == 200
        assert (await served.lock(name, "queue", "bob"))[0] == 200
        queued = await next_post(receiver)
        assert queued["event"] == "lock.queued" and queued["user"] == "bob"
        # Nobody asks: pploy's own timer notices alice's lock running out (2.4 s).
        expired = await next_post(receiver)
        assert (expired["event"], expired["user"]) == ("lock.expired", "alice")
        granted = await next_post(receiver)
        assert (granted["event"], granted["user"], granted["project"]) == (
            "lock.granted", "bob", name
        )  # fmt: skip
        lock = await lock_of(served, name)
        assert lock["user"] == "bob" and lock["queue"] == []
        assert granted["expires_at"] == lock["expires_at"]
        # bob's lock, granted by the timer, is watched in turn (and alice's expiry told once).
        again = await next_post(receiver)
        assert (again["event"], again["user"]) == ("lock.expired", "bob")
        assert await lock_of(served, name) is None
    finally:
        await served.close()
