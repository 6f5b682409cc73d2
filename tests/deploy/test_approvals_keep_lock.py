"""A deploy awaiting approval keeps its requester's lock (docs/governance.md): through ``pploy
serve`` started from a config file with a lock shorter than the approval timeout, an approval
that comes after the lock would have run out still starts the deploy; a rejected request
leaves the lock to its requester until the request would have expired; a request nobody
approves runs out together with the lock, which then is free."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.govserver import Served
from tests.deploy.test_approvals import (  # noqa: F401
    RULES,
    database,
    locked_project,
    next_event,
    request_deploy,
)
from tests.deploy.test_notify import Receiver, receiver  # noqa: F401
from tests.postgres import pg_database, pg_server  # noqa: F401

pytestmark = pytest.mark.slow  # `pploy serve` from a config file

GAIN = 1.5  # seconds a gained lock lasts
TIMEOUT = 4.0  # seconds a request waits for approval


@pytest.fixture
async def served(
    tmp_path: Path,
    database: str | None,  # noqa: F811
    receiver: Receiver,  # noqa: F811
) -> AsyncIterator[Served]:
    hook = (
        f"webhooks:\n  - url: {receiver.url()}\n    events: [lock.extended, lock.expired, "
        "job.awaiting_approval, job.approved, job.rejected, job.expired]\n"
    )
    config = f"lock:\n  gain_minutes: {GAIN / 60}\n{RULES}approval_timeout: {TIMEOUT}\n{hook}"
    pploy = Served(tmp_path, config, database)
    await pploy.start()
    yield pploy
    await pploy.close()


async def lock_of(served: Served, name: str) -> dict[str, Any] | None:
    return (await served.ok("GET", f"/api/projects/{name}"))["project"]["lock"]


async def test_an_approval_after_the_lock_would_have_run_out_starts_the_deploy(
    served: Served,
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
):
    name, _, ran = await locked_project(served, tmp_path)
    gained = await lock_of(served, name)
    assert gained is not None
    job = await request_deploy(served, name)
    # Someone waits in line meanwhile: the lock is not theirs when its own time is up.
    assert (await served.lock(name, "queue", "dave"))[0] == 200
    await asyncio.sleep(max(0.0, gained["expires_at"] + 0.5 - time.time()))  # its own time
    status, body = await served.api("POST", f"/api/jobs/{job['id']}/approve", "bob")
    assert status == 200, body
    # It was kept as long as the request could wait, and the webhooks were told.
    deadline = job["started_at"] + TIMEOUT
    extended = await next_event(receiver, "lock.extended")
    assert extended["user"] == "alice"
    assert extended["expires_at"] == pytest.approx(deadline, abs=0.001)
    assert (await served.wait_job(job["id"]))["status"] == "succeeded"
    assert ran.read_text() == "production by alice\n"
    assert (await served.lock(name, "release", "alice"))[0] == 200
    lock = await lock_of(served, name)
    assert lock is not None and lock["user"] == "dave"  # the line goes on as before

    audit = (await served.ok("GET", "/api/audit?kind=lock.extended,job.*"))["events"]
    assert [(e["kind"], e["user"]) for e in audit][:3] == [
        ("lock.extended", "alice"), ("job.awaiting_approval", "alice"), ("job.started", "alice"),
    ]  # fmt: skip


async def test_a_rejected_request_leaves_the_lock_until_the_request_would_have_expired(
    served: Served,
    tmp_path: Path,
):
    name, _, _ = await locked_project(served, tmp_path)
    job = await request_deploy(served, name)
    await served.ok("POST", f"/api/jobs/{job['id']}/reject", "bob")
    lock = await lock_of(served, name)
    assert lock is not None and lock["user"] == "alice"
    assert lock["expires_at"] == pytest.approx(job["started_at"] + TIMEOUT, abs=0.001)
    # The requester may ask again at once, on the lock she still holds.
    again = await request_deploy(served, name)
    await served.ok("POST", f"/api/jobs/{again['id']}/reject", "alice")


async def test_a_request_nobody_approves_runs_out_with_the_lock(
    served: Served,
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
):
    name, _, ran = await locked_project(served, tmp_path)
    job = await request_deploy(served, name)
    expired = await next_event(receiver, "lock.expired", timeout=TIMEOUT + 20)
    assert expired["user"] == "alice" and time.time() >= job["started_at"] + TIMEOUT
    assert (await next_event(receiver, "job.expired"))["id"] == job["id"]
    assert await lock_of(served, name) is None
    assert (await served.lock(name, "gain", "bob"))[0] == 200  # free for the next person
    status, body = await served.api("POST", f"/api/jobs/{job['id']}/approve", "carol")
    assert status == 409 and "expired" in body["error"]
    assert not ran.exists()
