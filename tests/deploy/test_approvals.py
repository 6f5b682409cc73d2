"""Approvals (issue 25, interface 2) through ``pploy serve`` started from a config file, on
SQLite and a real PostgreSQL: a deploy to a covered env waits; another approver starts it; the
requester's own approval, a non-approver's, and an approval after the checkout changed are
refused; rejected and expired requests run nothing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.govserver import Served
from tests.deploy.support import make_remote, push_commit
from tests.deploy.test_notify import Receiver, receiver  # noqa: F401
from tests.postgres import pg_database, pg_server  # noqa: F401

pytestmark = pytest.mark.slow  # `pploy serve` from a config file per test

RULES = """\
approvals:
  - project: "*"
    env: production
    approvers: [bob, carol, alice]
"""


def hook(receiver: Receiver) -> str:  # noqa: F811
    return (
        f"webhooks:\n  - url: {receiver.url()}\n    events: [job.awaiting_approval, "
        "job.approved, job.rejected, job.expired]\n"
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def database(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg_database") if request.param == "postgresql" else None


@pytest.fixture
async def served(
    tmp_path: Path,
    database: str | None,
    receiver: Receiver,  # noqa: F811
) -> AsyncIterator[Served]:
    pploy = Served(tmp_path, RULES + "approval_timeout: 3600\n" + hook(receiver), database)
    await pploy.start()
    yield pploy
    await pploy.close()


def remote_with_marker(tmp_path: Path) -> tuple[Path, Path]:
    ran = tmp_path / "ran"
    script = f'#!/bin/sh\necho "$DEPLOY_ENV by $DEPLOY_USER" >> {ran}\necho deployed\n'
    return make_remote(tmp_path, deploy_script=script), ran


async def locked_project(served: Served, tmp_path: Path) -> tuple[str, Path, Path]:
    """A project whose deploy notes each run in a file (``ran``), its lock held by alice."""
    remote, ran = remote_with_marker(tmp_path)
    name = await served.add_project(remote)
    assert (await served.lock(name, "gain"))[0] == 200
    return name, remote, ran


async def next_event(receiver: Receiver, event: str, timeout: float = 20) -> dict[str, Any]:  # noqa: F811
    """The first webhook body of ``event`` (waits for it; no sleeping)."""
    while True:
        for body in receiver.bodies:
            if body.get("event") == event:
                receiver.requests = [r for r in receiver.requests if r["json"] is not body]
                return body
        receiver.arrived.clear()
        await asyncio.wait_for(receiver.arrived.wait(), timeout)


async def request_deploy(served: Served, name: str, user: str = "alice") -> dict[str, Any]:
    status, body = await served.api(
        "POST", f"/api/projects/{name}/deploy", user, {"env": "production"}
    )
    assert status == 202, body
    assert body["job"]["status"] == "awaiting_approval", body
    return body["job"]


async def test_another_approver_starts_the_deploy_and_nobody_approves_their_own(
    served: Served,
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
):
    name, _, ran = await locked_project(served, tmp_path)
    job = await request_deploy(served, name)
    asked = await next_event(receiver, "job.awaiting_approval")
    assert asked["user"] == "alice" and asked["id"] == job["id"]
    assert asked["approvers"] == "bob, carol, alice" and asked["env"] == "production"
    assert not ran.exists()  # nothing runs yet
    assert [j["id"] for j in (await served.ok("GET", "/api/approvals", "bob"))["jobs"]] == [
        job["id"]
    ]
    assert (await served.ok("GET", "/api/approvals", "alice"))["jobs"] == []  # her own
    assert (await served.ok("GET", "/api/approvals", "dave"))["jobs"] == []
    # A second request while one waits is refused.
    status, body = await served.api(
        "POST", f"/api/projects/{name}/deploy", "alice", {"env": "production"}
    )
    assert status == 409 and "awaits approval" in body["error"]

    # The attacks: the requester approves her own deploy (she is an approver too), and
    # someone who is not an approver approves it.
    status, body = await served.api("POST", f"/api/jobs/{job['id']}/approve", "alice")
    assert status == 403 and "self-approval" in body["error"], body
    status, body = await served.api("POST", f"/api/jobs/{job['id']}/approve", "dave")
    assert status == 403 and "may not approve" in body["error"], body
    status, body = await served.api("POST", f"/api/jobs/{job['id']}/reject", "dave")
    assert status == 403, body
    assert not ran.exists()
    assert (await served.ok("GET", f"/api/jobs/{job['id']}"))["job"]["status"] == (
        "awaiting_approval"
    )

    status, body = await served.api("POST", f"/api/jobs/{job['id']}/approve", "bob")
    assert status == 200, body
    record = await served.wait_job(job["id"])
    assert record["status"] == "succeeded" and record["approved_by"] == ["bob"]
    assert ran.read_text() == "production by alice\n"
    approved = await next_event(receiver, "job.approved")
    assert approved["by"] == "bob" and approved["user"] == "alice"
    status, body = await served.api("POST", f"/api/jobs/{job['id']}/approve", "carol")
    assert status == 409 and "succeeded" in body["error"]  # approving twice starts nothing
    # Staging is not covered: it runs at once.
    status, body = await served.api(
        "POST", f"/api/projects/{name}/deploy", "alice", {"env": "staging"}
    )
    assert status == 202 and body["job"]["status"] == "running"
    await served.wait_job(body["job"]["id"])

    audit = (await served.ok("GET", "/api/audit?kind=job.*"))["events"]
    assert [(e["kind"], e["user"], e["job"]) for e in audit][:4] == [
        ("job.awaiting_approval", "alice", job["id"]),
        ("job.started", "alice", job["id"]),
        ("job.approved", "bob", job["id"]),
        ("job.finished", "alice", job["id"]),
    ]


async def test_rejection_and_an_approval_after_the_checkout_changed(
    served: Served,
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
):
    name, remote, ran = await locked_project(served, tmp_path)
    first = await request_deploy(served, name)
    await served.ok("POST", f"/api/jobs/{first['id']}/reject", "alice")  # the requester
    record = (await served.ok("GET", f"/api/jobs/{first['id']}"))["job"]
    assert record["status"] == "rejected" and record["message"] == "rejected by alice"
    assert (await next_event(receiver, "job.rejected"))["by"] == "alice"

    second = await request_deploy(served, name)
    # The attack: the holder checks out another commit after asking; the approval was for
    # the commit checked out at the request.
    push_commit(remote, "second", {"file": "2\n"})
    checkout = await served.ok("POST", f"/api/projects/{name}/checkout", "alice", {"ref": "main"})
    assert (await served.wait_job(checkout["job"]["id"]))["status"] == "succeeded"
    status, body = await served.api("POST", f"/api/jobs/{second['id']}/approve", "bob")
    assert status == 409 and "checkout" in body["error"] and "changed" in body["error"], body
    assert (await served.ok("GET", f"/api/jobs/{second['id']}"))["job"]["status"] == (
        "awaiting_approval"
    )
    await served.ok("POST", f"/api/jobs/{second['id']}/reject", "carol")
    # The one-shot endpoint (scripts following the output) says the deploy waits.
    async with served.client("alice").post(f"{served.base}/{name}/deploy?env=production") as r:
        text = await r.text()
        assert r.status == 202 and re.fullmatch(r"job #\d+ awaits approval\n", text), text
    assert not ran.exists()


async def test_a_request_nobody_approves_expires(
    tmp_path: Path,
    database: str | None,
    receiver: Receiver,  # noqa: F811
):
    served = Served(tmp_path, RULES + "approval_timeout: 1\n" + hook(receiver), database)
    await served.start()
    try:
        name, _, ran = await locked_project(served, tmp_path)
        job = await request_deploy(served, name)
        expired = await next_event(receiver, "job.expired")  # pploy's own timer
        assert expired["id"] == job["id"] and expired["status"] == "expired"
        record = (await served.ok("GET", f"/api/jobs/{job['id']}"))["job"]
        assert record["status"] == "expired" and "not approved within 1 s" in record["message"]
        status, body = await served.api("POST", f"/api/jobs/{job['id']}/approve", "bob")
        assert status == 409 and "expired" in body["error"]
        assert not ran.exists()
    finally:
        await served.close()


async def test_a_freeze_that_started_since_the_request_holds(served: Served, tmp_path: Path):
    name, _, ran = await locked_project(served, tmp_path)
    job = await request_deploy(served, name)
    until = (datetime.now().astimezone() + timedelta(hours=1)).isoformat()
    freeze = {"name": "incident", "envs": ["production"], "until": until, "reason": "db"}
    await served.ok("POST", "/api/freezes", "carol", freeze)  # no admins configured: anyone
    status, body = await served.api("POST", f"/api/jobs/{job['id']}/approve", "bob")
    assert status == 403 and "frozen by 'incident'" in body["error"], body
    await served.ok("DELETE", "/api/freezes/incident", "carol")
    await served.ok("POST", f"/api/jobs/{job['id']}/approve", "bob")
    assert (await served.wait_job(job["id"]))["status"] == "succeeded"
    assert ran.read_text() == "production by alice\n"
