"""Governance with two ``pploy serve`` instances (each its own config file and workdir, as on
two hosts) on one real PostgreSQL: the queue, freezes, approvals and the audit log are one."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.deploy.govserver import Served
from tests.deploy.support import make_remote, push_commit
from tests.postgres import pg_database, pg_server  # noqa: F401

pytestmark = pytest.mark.slow

CONFIG = (
    "auth:\n  names_are_self_chosen: true\npermissions:\n  admins: [alice]\n"
    "approvals:\n  - env: production\n    approvers: [bob]\n"
)


async def served_by(pploy: Served, name: str, timeout: float = 20) -> None:
    """Wait until ``pploy`` has its own clone of a project the other instance added."""
    deadline = time.monotonic() + timeout
    while (await pploy.api("GET", f"/api/projects/{name}"))[0] != 200:
        assert time.monotonic() < deadline, "the project never reached the other instance"
        await asyncio.sleep(0.05)


async def test_two_instances_share_the_queue_freezes_approvals_and_audit(
    tmp_path: Path,
    pg_database: str,  # noqa: F811
):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = await Served(tmp_path / "a", CONFIG, pg_database).start()
    b = await Served(tmp_path / "b", CONFIG, pg_database).start()
    try:
        script = '#!/bin/sh\necho "deploying $(git rev-parse HEAD)"\n'
        remote = make_remote(tmp_path, deploy_script=script)
        name = await a.add_project(remote)
        await served_by(b, name)
        # The queue: joined on B, granted when alice releases on A.
        assert (await a.lock(name, "gain", "alice"))[0] == 200
        assert (await b.lock(name, "queue", "carol"))[0] == 200
        lock = (await a.ok("GET", f"/api/projects/{name}"))["project"]["lock"]
        assert [q["user"] for q in lock["queue"]] == ["carol"]
        assert (await a.lock(name, "release", "alice"))[0] == 200
        lock = (await b.ok("GET", f"/api/projects/{name}"))["project"]["lock"]
        assert lock["user"] == "carol" and lock["queue"] == []
        assert (await b.lock(name, "release", "carol"))[0] == 200

        # A freeze started on A holds on B.
        until = (datetime.now().astimezone() + timedelta(hours=1)).isoformat()
        body = {"name": "incident", "envs": ["staging"], "until": until, "reason": "db"}
        await a.ok("POST", "/api/freezes", "alice", body)
        assert (await b.lock(name, "gain", "dave"))[0] == 200
        status, refusal = await b.api(
            "POST", f"/api/projects/{name}/deploy", "dave", {"env": "staging"}
        )
        assert status == 403 and "incident" in refusal["error"]
        await b.ok("DELETE", "/api/freezes/incident", "alice")
        assert (await b.lock(name, "release", "dave"))[0] == 200

        # A new commit checked out on A, asked for on A, approved on B: B runs that commit
        # (its own clone follows A's checkout first); approving again on A starts nothing.
        assert (await a.lock(name, "gain", "alice"))[0] == 200
        new = push_commit(remote, "second", {"two": "2\n"})
        checkout = await a.ok("POST", f"/api/projects/{name}/checkout", "alice", {"ref": "main"})
        assert (await a.wait_job(checkout["job"]["id"]))["status"] == "succeeded"
        job = (await a.ok("POST", f"/api/projects/{name}/deploy", "alice",
                          {"env": "production"}))["job"]  # fmt: skip
        assert job["status"] == "awaiting_approval" and job["sha"] == new
        assert [j["id"] for j in (await b.ok("GET", "/api/approvals", "bob"))["jobs"]] == [
            job["id"]
        ]
        await b.ok("POST", f"/api/jobs/{job['id']}/approve", "bob")
        status, again = await a.api("POST", f"/api/jobs/{job['id']}/approve", "bob")
        assert status == 409, again
        record = await b.wait_job(job["id"])
        assert record["status"] == "succeeded" and record["approved_by"] == ["bob"]
        assert (
            record["instance"]
            != (await a.ok("GET", f"/api/jobs/{checkout['job']['id']}"))["job"]["instance"]
        )  # it ran on B
        async with b.client("bob").get(f"{b.base}/api/jobs/{job['id']}/log") as resp:
            assert f"deploying {new}" in await resp.text()

        kinds = [e["kind"] for e in (await b.ok("GET", "/api/audit", "alice"))["events"]]
        for kind in ("lock.queued", "lock.granted", "freeze.started", "freeze.ended",
                     "job.awaiting_approval", "job.approved"):  # fmt: skip
            assert kinds.count(kind) == 1, (kind, kinds)
    finally:
        await a.close()
        await b.close()
