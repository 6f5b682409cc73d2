"""Deploy freezes (issue 25, interface 3) through ``pploy serve`` started from a config file:
calendar freezes from the config, ad-hoc ones through the API (kept across a restart, on both
engines), the admin's audited override and the refusal of anyone else's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from pploy.deploy.config import ConfigError, load_config
from tests.deploy.govserver import Served
from tests.deploy.support import make_remote
from tests.postgres import pg_database, pg_server  # noqa: F401


def iso(delta: timedelta) -> str:
    return (datetime.now().astimezone() + delta).isoformat(timespec="seconds")


def freezes_config() -> str:
    return f"""\
auth:
  names_are_self_chosen: true
permissions:
  admins: [alice]
freezes:
  - name: year-end
    start: {iso(timedelta(hours=-1))}
    end: {iso(timedelta(days=1))}
    envs: [production]
    reason: holidays
  - name: next-month
    start: {iso(timedelta(days=30))}
    end: {iso(timedelta(days=31))}
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    database = request.getfixturevalue("pg_database") if request.param == "postgresql" else None
    pploy = Served(tmp_path, freezes_config(), database)
    await pploy.start()
    yield pploy
    await pploy.close()


async def deploy(served: Served, name: str, user: str, env: str, **extra: str):  # type: ignore[no-untyped-def]
    return await served.api("POST", f"/api/projects/{name}/deploy", user, {"env": env, **extra})


@pytest.mark.slow  # `pploy serve` from a config file
async def test_a_configured_freeze_refuses_deploys_and_only_an_admin_overrides_it(
    served: Served, tmp_path: Path
):
    name = await served.add_project(make_remote(tmp_path))
    assert (await served.lock(name, "gain", "bob"))[0] == 200
    status, body = await deploy(served, name, "bob", "production")
    assert status == 403, body
    assert "frozen by 'year-end' until" in body["error"] and "holidays" in body["error"]
    assert iso(timedelta(days=1))[:10] in body["error"]  # when it ends
    # The attack: a non-admin overrides the freeze.
    status, body = await deploy(served, name, "bob", "production", override_freeze="urgent!")
    assert status == 403, body
    assert "admins" in body["error"] and "year-end" in body["error"]
    jobs = (await served.ok("GET", f"/api/projects/{name}/jobs"))["jobs"]
    assert jobs == []  # nothing ran
    # Other environments and checkouts are not frozen.
    job = await served.ok("POST", f"/api/projects/{name}/checkout", "bob", {"ref": "main"})
    assert (await served.wait_job(job["job"]["id"]))["status"] == "succeeded"
    staged = (await deploy(served, name, "bob", "staging"))[1]["job"]
    assert (await served.wait_job(staged["id"]))["status"] == "succeeded"
    # An admin holding the lock overrides it with a reason: the record keeps who and why.
    assert (await served.lock(name, "release", "bob"))[0] == 200
    assert (await served.lock(name, "gain", "alice"))[0] == 200
    status, body = await deploy(served, name, "alice", "production", override_freeze="  ")
    assert status == 400 and "override_freeze" in body["error"]
    status, body = await deploy(
        served, name, "alice", "production", override_freeze="fix for incident 42"
    )
    assert status == 202, body
    record = await served.wait_job(body["job"]["id"])
    assert record["status"] == "succeeded"
    assert record["freeze_override"] == {
        "freeze": "year-end", "reason": "fix for incident 42", "by": "alice"
    }  # fmt: skip
    audit = (await served.ok("GET", "/api/audit?kind=freeze.*"))["events"]
    assert [(e["kind"], e["user"], e["job"], e["env"]) for e in audit] == [
        ("freeze.started", "pploy", None, None),  # year-end was in force when pploy started
        ("freeze.overridden", "alice", record["id"], "production"),
    ]
    assert audit[1]["detail"] == {"freeze": "year-end", "reason": "fix for incident 42"}

    listed = (await served.ok("GET", "/api/freezes", "bob"))["freezes"]
    assert [(f["name"], f["active"], f["source"]) for f in listed] == [
        ("year-end", True, "config"), ("next-month", False, "config")
    ]  # fmt: skip
    assert listed[0]["envs"] == ["production"] and listed[1]["envs"] == ["*"]


@pytest.mark.slow  # `pploy serve` from a config file, restarted
async def test_ad_hoc_freezes_are_for_admins_and_survive_a_restart(served: Served, tmp_path: Path):
    name = await served.add_project(make_remote(tmp_path))
    incident = {"name": "incident", "envs": ["staging"], "until": iso(timedelta(hours=2)),
                "reason": "database is down"}  # fmt: skip
    status, body = await served.api("POST", "/api/freezes", "bob", incident)
    assert status == 403 and "admins" in body["error"], body
    for bad, word in (
        ({**incident, "until": iso(timedelta(hours=-1))}, "passed"),
        ({**incident, "until": "2027-01-04T00:00:00"}, "offset"),
        ({**incident, "name": "../x"}, "name"),
        ({**incident, "reason": ""}, "reason"),
        ({**incident, "envs": "staging"}, "envs"),
        ({**incident, "name": "year-end"}, "configured"),
    ):
        status, body = await served.api("POST", "/api/freezes", "alice", bad)
        assert status in (400, 409) and word in body["error"], (bad, body)
    status, body = await served.api("POST", "/api/freezes", "alice", incident)
    assert status == 201, body
    assert body["freeze"]["active"] and body["freeze"]["by"] == "alice"
    status, body = await served.api("POST", "/api/freezes", "alice", incident)
    assert status == 409, body  # one in force by that name

    await served.restart()
    assert (await served.lock(name, "gain", "bob"))[0] == 200
    status, body = await deploy(served, name, "bob", "staging")
    assert status == 403 and "'incident'" in body["error"] and "database is down" in body["error"]
    listed = {f["name"]: f for f in (await served.ok("GET", "/api/freezes", "bob"))["freezes"]}
    assert listed["incident"]["active"] and listed["incident"]["source"] == "adhoc"
    status, body = await served.api("DELETE", "/api/freezes/incident", "bob")
    assert status == 403, body
    status, body = await served.api("DELETE", "/api/freezes/year-end", "alice")
    assert status == 409 and "config" in body["error"]
    await served.ok("DELETE", "/api/freezes/incident", "alice")
    status, body = await served.api("DELETE", "/api/freezes/incident", "alice")
    assert status == 404, body
    status, body = await deploy(served, name, "bob", "staging")
    assert status == 202, body
    await served.wait_job(body["job"]["id"])
    kinds = [(e["kind"], e["user"]) for e in
             (await served.ok("GET", "/api/audit?kind=freeze.*"))["events"]]  # fmt: skip
    # year-end, in force at the first start, announced then and not again after the restart
    assert kinds == [
        ("freeze.started", "pploy"), ("freeze.started", "alice"), ("freeze.ended", "alice")
    ]  # fmt: skip


def test_freeze_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "pploy.yml"
    path.write_text(
        "freezes:\n  - name: x\n    start: 2027-01-02T00:00:00+09:00\n"
        "    end: 2027-01-01T00:00:00+09:00\n"
    )
    with pytest.raises(ConfigError, match=r"freezes\[0\].*end must be after start"):
        load_config(path, environ={})
    path.write_text(
        "freezes:\n  - name: x\n    start: 2027-01-01T00:00:00\n    end: 2027-01-02T00:00:00\n"
    )
    with pytest.raises(ConfigError, match=r"freezes\[0\]\.start: Input should have timezone info"):
        load_config(path, environ={})
