"""Removing and re-adding projects keeps the audit trail; git.allowed_urls limits what is added.

Through a real pploy on loopback, with bare git repositories as remotes.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

from tests.deploy.support import make_remote, start_pploy


async def form_post(pploy, user: str, path: str, fields: dict[str, str]) -> tuple[int, str]:
    """Post an HTML form as the browser would (token from the page), without following the
    redirect; returns the status and the flash message (or the body)."""
    client = pploy.client(user)
    async with client.get(pploy.url("/")) as resp:
        token = re.search(r'name="csrf_token" value="([^"]+)"', await resp.text()).group(1)
    async with client.post(
        pploy.url(path), data={**fields, "csrf_token": token}, allow_redirects=False
    ) as resp:
        flash = resp.cookies.get("flash")
        return resp.status, unquote(flash.value).strip('"') if flash else await resp.text()


async def test_removing_needs_the_lock_on_the_api_and_the_form(tmp_path):
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(make_remote(tmp_path))
        # Nobody holds the lock: nobody may remove (409), on the API or through the form.
        status, body = await pploy.api("DELETE", f"/api/projects/{name}", "alice")
        assert status == 409 and "hold the lock on testploy" in body["error"], body
        status, flash = await form_post(pploy, "alice", f"/projects/{name}/remove", {})
        assert status == 303 and "hold the lock on testploy" in flash, flash
        # bob holds it: alice is refused (403 naming bob), bob may.
        await pploy.gain(name, "bob")
        status, body = await pploy.api("DELETE", f"/api/projects/{name}", "alice")
        assert status == 403 and "locked by bob" in body["error"], body
        status, flash = await form_post(pploy, "alice", f"/projects/{name}/remove", {})
        assert status == 303 and "locked by bob" in flash, flash
        status, _ = await pploy.api("GET", f"/api/projects/{name}")
        assert status == 200
        status, flash = await form_post(pploy, "bob", f"/projects/{name}/remove", {})
        assert (status, flash) == (303, "removed testploy")
        status, _ = await pploy.api("GET", f"/api/projects/{name}")
        assert status == 404
        assert pploy.services.locks.get(name) is None
    finally:
        await pploy.close()


async def test_history_survives_removal_and_belongs_to_the_old_url(tmp_path):
    """alice deploys from one repository and removes it; bob adds another repository under the
    same name. The old job stays readable by id (record, page, log) and the new project's page
    and API mark it as run from the earlier repository."""
    pploy = await start_pploy(tmp_path / "work")
    try:
        first = make_remote(tmp_path / "a")
        await pploy.add_project(first)
        await pploy.gain("testploy")
        old = await pploy.wait_job(await pploy.deploy("testploy"))
        assert old["status"] == "succeeded" and old["url"] == str(first)
        status, body = await pploy.api("DELETE", "/api/projects/testploy")
        assert (status, body) == (200, {"removed": "testploy"})

        status, body = await pploy.api("GET", f"/api/jobs/{old['id']}")
        assert status == 200 and body["job"] == {**old, "duration": body["job"]["duration"]}
        assert b"deployed staging" in await pploy.log(old["id"])
        async with pploy.client().get(pploy.url(f"/jobs/{old['id']}")) as resp:
            page = await resp.text()
        assert resp.status == 200 and str(first) in page and "removed by" in page
        assert "log of this job was removed" not in page

        second = make_remote(tmp_path / "b", deploy_script="#!/bin/sh\necho other\n")
        await pploy.add_project(second, "bob")
        await pploy.gain("testploy", "bob")
        new = await pploy.wait_job(await pploy.deploy("testploy", user="bob"))
        status, body = await pploy.api("GET", "/api/projects/testploy")
        current = body["project"]["repository"]
        assert current["url"] == str(second) and new["repository"] == current["id"]
        status, body = await pploy.api("GET", "/api/projects/testploy/jobs")
        by_id = {job["id"]: job for job in body["jobs"]}
        assert by_id[old["id"]]["url"] == str(first)
        assert by_id[old["id"]]["repository"] != current["id"]

        async with pploy.client().get(pploy.url("/projects/testploy")) as resp:
            page = await resp.text()
        assert f'id="repository-url">{second}<' in page
        rows = dict(re.findall(r'data-job-id="(\d+)">(.*?)</tr>', page, re.S))
        assert "earlier repository" in rows[str(old["id"])] and str(first) in rows[str(old["id"])]
        assert "earlier repository" not in rows[str(new["id"])]
    finally:
        await pploy.close()


async def test_allowed_urls_refuses_other_repositories(tmp_path):
    allowed = tmp_path / "allowed"
    make_remote(tmp_path / "other", "evil")
    pploy = await start_pploy(tmp_path / "work", **{"git.allowed_urls": [f"{allowed}/*"]})
    try:
        await pploy.add_project(make_remote(allowed))
        for url in (
            tmp_path / "other/evil.git",
            f"{allowed}/../other/evil.git",  # normalised by git to a path the pattern refuses
            f"{allowed}/%2e%2e/other/evil.git",
            (tmp_path / "other/evil.git").as_uri(),
            f"file://{allowed}/../other/evil.git",
        ):
            status, body = await pploy.api("POST", "/api/projects", json={"url": str(url)})
            assert status == 400, (url, body)
            assert "git.allowed_urls" in body["error"] and str(allowed) in body["error"], body
        status, flash = await form_post(
            pploy, "alice", "/projects", {"url": str(tmp_path / "other/evil.git")}
        )
        assert status == 303 and "is not allowed here: git.allowed_urls" in flash, flash
        status, body = await pploy.api("GET", "/api/projects/evil")
        assert status == 404
        assert not (tmp_path / "work/projects/evil").exists()
    finally:
        await pploy.close()


async def test_an_allowed_server_cannot_redirect_the_clone_elsewhere(tmp_path):
    """An allowed git server answers with a redirect to an internal service: with a restricted
    git.allowed_urls, git does not follow it (the internal service sees no request)."""
    hits: list[str] = []

    async def internal(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        return web.Response(status=404)

    inner = web.Application()
    inner.router.add_get("/{tail:.*}", internal)
    inner_runner = web.AppRunner(inner)
    await inner_runner.setup()
    inner_site = web.TCPSite(inner_runner, "127.0.0.1", 0)
    await inner_site.start()
    inner_port = inner_site._server.sockets[0].getsockname()[1]

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{inner_port}/latest/meta-data{request.path_qs}")

    outer = web.Application()
    outer.router.add_get("/{tail:.*}", redirect)
    outer_runner = web.AppRunner(outer)
    await outer_runner.setup()
    outer_site = web.TCPSite(outer_runner, "127.0.0.1", 0)
    await outer_site.start()
    outer_port = outer_site._server.sockets[0].getsockname()[1]

    pploy = await start_pploy(
        tmp_path / "work", **{"git.allowed_urls": [f"http://127.0.0.1:{outer_port}/*"]}
    )
    try:
        status, body = await pploy.api(
            "POST", "/api/projects", json={"url": f"http://127.0.0.1:{outer_port}/team/app.git"}
        )
        assert status == 400 and "git clone failed" in body["error"], body
        assert hits == []
    finally:
        await pploy.close()
        await outer_runner.cleanup()
        await inner_runner.cleanup()


async def test_a_pploy_db_from_before_is_migrated_and_its_clones_adopted(tmp_path):
    """A workdir of the previous pploy (jobs without repository, a clone): the new pploy
    records the clone's URL and gives it the old jobs, so they are not shown as foreign."""
    import sqlite3

    from tests.deploy.test_store_locks import SCHEMA_V0

    remote = make_remote(tmp_path)
    work = tmp_path / "work"
    (work / "projects").mkdir(parents=True)
    from tests.deploy.support import git

    git("clone", "-q", str(remote), str(work / "projects/testploy"), cwd=tmp_path)
    db = sqlite3.connect(work / "pploy.db")
    db.executescript(SCHEMA_V0)
    db.execute(
        "INSERT INTO jobs (project, kind, env, user, started_at, ended_at, status) "
        "VALUES ('testploy', 'deploy', 'staging', 'alice', 1.0, 2.0, 'succeeded')"
    )
    db.commit()
    db.close()
    pploy = await start_pploy(work)
    try:
        status, body = await pploy.api("GET", "/api/projects/testploy/jobs")
        assert body["jobs"][0]["url"] == str(remote)
        status, body = await pploy.api("GET", "/api/projects/testploy")
        assert body["project"]["repository"]["url"] == str(remote)
        async with pploy.client().get(pploy.url("/projects/testploy")) as resp:
            assert "earlier repository" not in await resp.text()
    finally:
        await pploy.close()


def test_urls_are_stored_and_shown_without_passwords(tmp_path: Path) -> None:
    from pploy.deploy.domain.names import without_secrets

    assert (
        without_secrets("https://ghp_token@github.com/a/b.git") == "https://***@github.com/a/b.git"
    )
    assert without_secrets("https://u:pw@h.example/x") == "https://***@h.example/x"
    assert without_secrets("ssh://git:pw@h.example/x") == "ssh://git:***@h.example/x"
    assert without_secrets("ssh://git@h.example/x") == "ssh://git@h.example/x"
    assert without_secrets("git@h.example:x.git") == "git@h.example:x.git"


async def test_a_clone_url_with_a_token_is_never_shown(tmp_path):
    pploy = await start_pploy(tmp_path / "work", **{"git.allowed_urls": ["https://allowed/*"]})
    try:
        status, body = await pploy.api(
            "POST", "/api/projects", json={"url": "https://ghp_s3cret@internal.example/x.git"}
        )
        assert status == 400 and "s3cret" not in body["error"], body
        assert "https://***@internal.example/x.git" in body["error"]
    finally:
        await pploy.close()


def test_allowed_urls_setting_is_checked(tmp_path: Path) -> None:
    import pytest

    from pploy.deploy.config import ConfigError, load_config

    assert load_config(None, environ={}).git.allowed_urls == ["*"]
    for bad in ('[""]', '[" https://x/*"]', '"https://git.example.com/*"'):
        path = tmp_path / "pploy.yml"
        path.write_text(f"git:\n  allowed_urls: {bad}\n")
        with pytest.raises(ConfigError, match=r"pploy.yml: git.allowed_urls"):
            load_config(path, environ={})
