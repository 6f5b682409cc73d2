"""The governance kinds (issue 25) as Slack, generic JSON and Datadog webhooks, from ``pploy
serve`` started from a config file: each kind its default text, filled in; hooks that do not
list them keep getting only the original six."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.deploy.govserver import Served
from tests.deploy.support import make_remote
from tests.deploy.test_notify import Receiver, receiver  # noqa: F401

pytestmark = pytest.mark.slow  # `pploy serve` from a config file

KINDS = [
    "lock.queued", "lock.granted", "job.awaiting_approval", "job.approved", "freeze.started",
    "freeze.ended", "token.created", "project.added",
]  # fmt: skip


async def test_new_kinds_reach_slack_json_and_datadog(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
):
    events = ", ".join(KINDS)
    config = (
        "approvals:\n  - env: production\n    approvers: [bob]\n"
        f"webhooks:\n  - url: {receiver.url('/slack')}\n    format: slack\n    events: [{events}]\n"
        f"  - url: {receiver.url('/json')}\n    events: [{events}]\n"
        f"  - url: {receiver.url('/dd')}\n    format: datadog\n    api_key: k\n"
        f"    events: [{events}]\n"
        f"  - url: {receiver.url('/old')}\n"  # no events: the original six only
    )
    served = Served(tmp_path, config)
    await served.start()
    try:
        name = await served.add_project(make_remote(tmp_path))
        await served.ok("POST", "/api/tokens", "alice", {"name": "ci"})
        await served.lock(name, "gain", "alice")
        await served.lock(name, "queue", "bob")
        await served.lock(name, "release", "alice")  # granted to bob
        await served.lock(name, "release", "bob")
        await served.lock(name, "gain", "alice")
        job = (
            await served.ok("POST", f"/api/projects/{name}/deploy", "alice", {"env": "production"})
        )["job"]
        await served.ok("POST", f"/api/jobs/{job['id']}/approve", "bob")
        await served.wait_job(job["id"])
        until = (datetime.now().astimezone() + timedelta(hours=1)).isoformat()
        await served.ok("POST", "/api/freezes", "alice",
                        {"name": "incident", "until": until, "reason": "db down"})  # fmt: skip
        await served.ok("DELETE", "/api/freezes/incident", "alice")
        want = 3 * len(KINDS)
        while len([r for r in receiver.requests if r["path"] != "/old"]) < want:
            receiver.arrived.clear()
            await asyncio.wait_for(receiver.arrived.wait(), 20)
        by_path: dict[str, list] = {}
        for request in receiver.requests:
            by_path.setdefault(request["path"], []).append(request["json"])
        texts = {b["text"] for b in by_path["/slack"]}
        assert texts >= {
            f"bob is waiting for the lock on {name} (place 1)",
            f"alice added {name} from {tmp_path / 'testploy.git'}",
            "alice created the API token ci",
            "alice ended the freeze incident",
        }, texts
        assert any(t.startswith(f"bob now holds the lock on {name} until ") for t in texts)
        assert any(t.startswith(f"alice asks for approval to deploy {name} to production (")
                   for t in texts)  # fmt: skip
        assert any(t.startswith(f"bob approved alice's deploy of {name} to production")
                   for t in texts)  # fmt: skip
        assert any(t.startswith("alice froze all environments until ") and t.endswith(": db down")
                   for t in texts)  # fmt: skip
        assert not any("{" in t for t in texts), texts
        assert sorted(b["event"] for b in by_path["/json"]) == sorted(KINDS)
        tags = {t for b in by_path["/dd/api/v1/events"] for t in b["tags"]}
        assert {f"pploy_event:{k}" for k in KINDS} <= tags
        old = {b["event"] for b in by_path.get("/old", [])}
        # lock.extended: the approval request kept alice's lock (docs/governance.md)
        original = {"lock.gained", "lock.extended", "lock.released", "job.started", "job.finished"}
        assert old <= original, old
    finally:
        await served.close()
