"""The audit log (issue 25, interface 5) through ``pploy serve`` started from a config file, on
SQLite and on a real PostgreSQL: what happened, who did it, oldest first, for admins only."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from tests.deploy.govserver import Served
from tests.deploy.support import Fifo, make_remote, read_until
from tests.postgres import pg_database, pg_server  # noqa: F401

pytestmark = pytest.mark.slow  # `pploy serve` from a config file per test

ADMINS = "auth:\n  names_are_self_chosen: true\npermissions:\n  admins: [alice]\n"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    database = request.getfixturevalue("pg_database") if request.param == "postgresql" else None
    pploy = Served(tmp_path, ADMINS, database)
    await pploy.start()
    yield pploy
    await pploy.close()


async def test_audit_log_records_who_did_what_oldest_first(served: Served, tmp_path: Path):
    name = await served.add_project(make_remote(tmp_path))
    assert (await served.lock(name, "gain"))[0] == 200
    assert (await served.lock(name, "extend"))[0] == 200
    assert (await served.lock(name, "release"))[0] == 200
    token = await served.ok("POST", "/api/tokens", "alice", {"name": "ci"})
    await served.ok("DELETE", f"/api/tokens/{token['id']}", "alice")
    assert (await served.lock(name, "gain", "bob"))[0] == 200
    job = await served.ok("POST", f"/api/projects/{name}/deploy", "bob", {"env": "staging"})
    record = await served.wait_job(job["job"]["id"])
    assert record["status"] == "succeeded"

    events = (await served.ok("GET", "/api/audit"))["events"]
    seen = [(e["kind"], e["user"]) for e in events]
    assert seen == [
        ("project.added", "alice"),
        ("lock.gained", "alice"),
        ("lock.extended", "alice"),
        ("lock.released", "alice"),
        ("token.created", "alice"),
        ("token.revoked", "alice"),
        ("lock.gained", "bob"),
        ("job.started", "bob"),
        ("job.finished", "bob"),
    ], seen
    assert set(events[0]) == {"at", "user", "kind", "project", "env", "job", "detail"}
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    started = events[7]
    assert started["project"] == name and started["env"] == "staging"
    assert started["job"] == record["id"] and started["detail"]["kind"] == "deploy"
    assert events[0]["detail"]["url"] == str(tmp_path / "testploy.git")
    assert events[4]["detail"]["name"] == "ci"
    assert token["token"] not in json.dumps(events)  # never the secret

    # ?kind= (exact, prefix, several), ?since= (epoch or ISO 8601)
    only = (await served.ok("GET", "/api/audit?kind=token.created"))["events"]
    assert [e["kind"] for e in only] == ["token.created"]
    locks = (await served.ok("GET", "/api/audit?kind=lock.*"))["events"]
    assert [e["kind"] for e in locks] == ["lock.gained", "lock.extended", "lock.released",
                                          "lock.gained"]  # fmt: skip
    both = (await served.ok("GET", "/api/audit?kind=project.added,job.finished"))["events"]
    assert [e["kind"] for e in both] == ["project.added", "job.finished"]
    later = (await served.ok("GET", f"/api/audit?since={events[6]['at']}"))["events"]
    assert [e["kind"] for e in later] == ["lock.gained", "job.started", "job.finished"]
    between = (events[5]["at"] + events[6]["at"]) / 2  # requests apart: microseconds suffice
    iso = datetime.fromtimestamp(between, UTC).isoformat()
    assert (await served.ok("GET", "/api/audit?since=" + iso.replace("+", "%2B")))[
        "events"
    ] == later
    status, body = await served.api("GET", "/api/audit?since=yesterday")
    assert status == 400 and "since" in body["error"]
    status, body = await served.api("GET", "/api/audit?kind=drop%20table")
    assert status == 400 and "kind" in body["error"]

    # ?format=jsonl: one JSON object a line, the same events
    async with served.client("alice").get(served.base + "/api/audit?format=jsonl") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/x-ndjson"
        lines = (await resp.text()).splitlines()
    assert [json.loads(line) for line in lines] == events


async def test_the_audit_log_is_for_admins_only(served: Served, tmp_path: Path):
    """The attack: a non-admin reads the audit log, by session, by token, in any format."""
    await served.add_project(make_remote(tmp_path))
    for query in ("", "?format=jsonl", "?kind=token.*", "?since=0"):
        status, body = await served.api("GET", "/api/audit" + query, "bob")
        assert status == 403, (query, status, body)
        assert "admins" in body["error"]
    token = (await served.ok("POST", "/api/tokens", "bob", {"name": "bob-ci"}))["token"]
    async with aiohttp.ClientSession() as bare:
        headers = {"Authorization": f"Bearer {token}"}
        async with bare.get(served.base + "/api/audit", headers=headers) as resp:
            assert resp.status == 403
            assert "events" not in await resp.json()
    # The admin's own view lists bob's token event: bob's reading attempt left nothing behind.
    kinds = [e["kind"] for e in (await served.ok("GET", "/api/audit"))["events"]]
    assert kinds == ["project.added", "token.created"]


async def test_the_audit_log_survives_a_restart(served: Served, tmp_path: Path):
    name = await served.add_project(make_remote(tmp_path))
    await served.lock(name, "gain")
    before = (await served.ok("GET", "/api/audit"))["events"]
    await served.restart()
    after = (await served.ok("GET", "/api/audit"))["events"]
    assert after == before and len(after) == 2


async def test_a_cancelled_job_names_who_cancelled_it(served: Served, tmp_path: Path):
    fifo = Fifo(tmp_path / "go")
    script = f"#!/bin/sh\necho started\n{fifo.script_open()}\n{fifo.wait_cmd}\necho never\n"
    name = await served.add_project(make_remote(tmp_path, deploy_script=script))
    await served.lock(name, "gain", "bob")
    job = await served.ok("POST", f"/api/projects/{name}/deploy", "bob", {"env": "staging"})
    job_id = job["job"]["id"]
    async with served.client("bob").get(f"{served.base}/api/jobs/{job_id}/log?follow=1") as r:
        await read_until(r, b"started")
        await served.ok("POST", f"/api/jobs/{job_id}/cancel", "bob")
        await r.read()
    fifo.close()
    assert (await served.wait_job(job_id))["status"] == "cancelled"
    events = (await served.ok("GET", "/api/audit?kind=job.cancelled"))["events"]
    assert [(e["kind"], e["user"], e["job"], e["detail"]["user"]) for e in events] == [
        ("job.cancelled", "bob", job_id, "bob")
    ]


async def test_removing_a_project_is_audited(served: Served, tmp_path: Path):
    name = await served.add_project(make_remote(tmp_path))
    await served.lock(name, "gain")
    await served.ok("DELETE", f"/api/projects/{name}")
    events = (await served.ok("GET", "/api/audit?kind=project.*"))["events"]
    assert [(e["kind"], e["user"], e["project"]) for e in events] == [
        ("project.added", "alice", name),
        ("project.removed", "alice", name),
    ]
