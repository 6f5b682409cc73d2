"""The Scala pploy's and go-pploy's URLs and habits on a real pploy (issues 14 and 24): old page
URLs redirect; go-pploy's JSON routes answer go-pploy's shapes (its models/ and web/server.go)
while pploy's own ``/api/...`` keep theirs; its lock route, forms and ``/<project>/logs`` work
as go-pploy's did; its forms need pploy's CSRF token unless the browser proves them
same-origin; go-pploy's ``pploy_user`` cookie signs its user in."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.deploy.support import Pploy, make_remote, push_commit, start_pploy

# go-pploy's JSON field names (web/server.go getStatusAPI, models/project, locks, gitutil)
STATUS_KEYS = {"message", "allProjects", "currentProject", "allUsers", "currentUser"}
PROJECT_KEYS = {"lock", "name", "deployEnvs", "readme", "defaultBranch"}
LOCK_KEYS = {"user", "endTime"}
COMMIT_KEYS = {"hash", "time", "author", "otherRefs", "subject", "body", "nameStatus"}


async def get(pploy: Pploy, path: str, **kwargs: Any) -> tuple[int, str, str]:
    async with pploy.client().get(pploy.url(path), allow_redirects=False, **kwargs) as resp:
        return resp.status, resp.headers.get("Location", ""), await resp.text()


async def post(pploy: Pploy, path: str, user: str = "alice", **kwargs: Any) -> tuple[int, str, str]:
    async with pploy.client(user).post(pploy.url(path), allow_redirects=False, **kwargs) as resp:
        return resp.status, resp.headers.get("Location", ""), await resp.text()


async def test_old_page_urls_redirect(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "w")
    try:
        name = await pploy.add_project(make_remote(tmp_path))
        for old in (f"/{name}", f"/{name}/lock", f"/{name}/commits"):
            assert (await get(pploy, old))[:2] == (302, f"/projects/{name}"), old
        status, _, body = await get(pploy, "/nosuch")
        assert status == 404 and "nosuch" in body
        assert (await get(pploy, "/favicon.ico"))[0] == 404  # no project: nothing to redirect to
        assert (await get(pploy, "/ping"))[:3] == (200, "", "pong\n")  # pploy's own routes win
        assert (await get(pploy, "/login"))[0] == 200
        assert (await get(pploy, "/_goploy/"))[0] == 404  # go-pploy's UI only when configured
    finally:
        await pploy.close()


async def test_go_pploy_json_routes_answer_go_pploys_shapes(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "w")
    try:
        hostile = '<p>hi</p><script>alert(1)</script><img src="x" onerror="alert(2)">'
        remote = make_remote(
            tmp_path,
            files={
                ".deploy/config/deploy_envs": "test\nstaging\n",
                ".deploy/config/readme.html": hostile,
            },
        )
        name = await pploy.add_project(remote)
        push_commit(remote, "second commit", {"app.txt": "v2\n"})
        await pploy.gain(name)
        await pploy.wait_job(await pploy.checkout(name, "origin/main"))

        status, body = await pploy.api("GET", "/api/status/")
        assert status == 200 and set(body) == STATUS_KEYS
        assert body["message"] == "" and body["currentProject"] is None
        assert body["currentUser"] == "alice" and body["allUsers"] == ["alice"]
        [listed] = body["allProjects"]
        assert set(listed) == PROJECT_KEYS and listed["name"] == name
        assert set(listed["lock"]) == LOCK_KEYS and listed["lock"]["user"] == "alice"
        end = datetime.fromisoformat(listed["lock"]["endTime"])  # RFC 3339, as Go wrote it
        assert 19 * 60 < end.timestamp() - datetime.now().timestamp() <= 20 * 60

        status, body = await pploy.api("GET", f"/api/status/{name}")
        current = body["currentProject"]
        assert status == 200 and set(current) == PROJECT_KEYS
        assert current["deployEnvs"] == ["test", "staging"]
        assert current["defaultBranch"] == "main"
        # go-pploy's UI puts the readme in the page as HTML: pploy's sanitised one, inert
        readme = current["readme"]
        assert "<p>hi</p>" in readme and "script" not in readme and "onerror" not in readme
        status, body = await pploy.api("GET", "/api/status/nosuch")
        assert status == 200 and body["currentProject"] is None  # go-pploy's welcome page

        status, commits = await pploy.api("GET", f"/api/commits/{name}")
        assert status == 200 and [c["subject"] for c in commits] == [
            "second commit",
            "first commit",
        ]
        newest = commits[0]
        assert set(newest) == COMMIT_KEYS and len(newest["hash"]) == 40
        assert newest["nameStatus"] == "A\tapp.txt" and newest["author"] == "Tess Ter"
        datetime.fromisoformat(newest["time"])
        # go-pploy's `git log --decorate=full` names: its UI matches these prefixes
        assert {"HEAD", "refs/remotes/origin/main", "refs/remotes/origin/HEAD"} <= set(
            newest["otherRefs"]
        ), newest["otherRefs"]
        assert (await pploy.api("GET", "/api/commits/nosuch"))[1] == {
            "message": "no project named 'nosuch'"
        }

        # pploy's own routes keep their shapes
        status, body = await pploy.api("GET", "/api/status")
        assert status == 200 and {"user", "auth_mode", "projects", "jobs"} <= set(body)
        status, body = await pploy.api("GET", f"/api/projects/{name}/commits")
        assert status == 200 and "head" in body and "commits" in body
    finally:
        await pploy.close()


async def test_logs_mean_the_latest_deploy_and_nothing_yet_is_empty(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "w")
    try:
        name = await pploy.add_project(make_remote(tmp_path))
        assert (await get(pploy, f"/{name}/logs"))[:3] == (200, "", "")  # as go-pploy
        await pploy.gain(name)
        await pploy.wait_job(await pploy.checkout(name))
        assert (await get(pploy, f"/{name}/logs"))[:3] == (200, "", "")  # a checkout: no deploy
        first = await pploy.deploy(name)
        await pploy.wait_job(first)
        await pploy.wait_job(await pploy.checkout(name))  # a newer checkout does not count
        assert (await get(pploy, f"/{name}/logs"))[:2] == (302, f"/api/jobs/{first}/log")
        second = await pploy.deploy(name, "production")
        await pploy.wait_job(second)
        assert (await get(pploy, f"/{name}/logs"))[1] == f"/api/jobs/{second}/log"
        assert (await get(pploy, f"/{name}/logs?generation=1"))[1] == f"/api/jobs/{first}/log"
        assert (await get(pploy, f"/{name}/logs?generation=2"))[:3] == (200, "", "")
        assert (await get(pploy, f"/{name}/logs?generation=x"))[0] == 400
        async with pploy.client().get(pploy.url(f"/{name}/logs?full=1")) as resp:
            assert resp.status == 200 and b"deployed production" in await resp.read()
        assert (await get(pploy, "/nosuch/logs"))[0] == 404
    finally:
        await pploy.close()


async def test_go_pploys_lock_route(tmp_path: Path) -> None:
    """``POST /<project>/lock`` with ``operation`` (and go-pploy's ``user``): a script's
    query string, a proven same-origin form; the user is always the caller."""
    pploy = await start_pploy(tmp_path / "w")
    try:
        name = await pploy.add_project(make_remote(tmp_path))
        lock = pploy.services.locks

        # A form naming someone else changes nothing: pploy acts as the signed-in user only
        status, _, text = await post(pploy, f"/{name}/lock?user=bob&operation=gain")
        assert status == 403 and text.startswith("error: you are signed in as alice, but the")
        assert lock.get(name) is None

        status, location, _ = await post(pploy, f"/{name}/lock?user=alice&operation=gain")
        assert (status, location) == (302, f"/projects/{name}")
        held = lock.get(name)
        assert held is not None and held.user == "alice"
        await post(pploy, f"/{name}/lock?operation=extend")  # `user` may be left out
        extended = lock.get(name)
        assert extended is not None and extended.expires_at > held.expires_at

        # Someone else's gain, or their form naming the holder, change nothing: the status and
        # the reason for a script
        status, _, text = await post(pploy, f"/{name}/lock?user=bob&operation=gain", "bob")
        assert status == 409 and "locked by alice" in text
        status, _, text = await post(pploy, f"/{name}/lock?user=alice&operation=release", "bob")
        assert status == 403 and "signed in as bob, but the form names alice" in text
        assert lock.get(name) == extended
        status, _, text = await post(pploy, f"/{name}/lock?operation=steal")
        assert status == 400 and "gain, extend, release" in text
        assert (await post(pploy, "/nosuch/lock?operation=gain"))[0] == 404

        # go-pploy's UI: a same-origin form; a failure goes back to the page with the message,
        # which go-pploy's status API shows once
        origin = {"Origin": pploy.base, "Accept": "text/html"}
        status, location, _ = await post(
            pploy, f"/_goploy/{name}/lock", "bob", data={"user": "bob", "operation": "gain"},
            headers=origin,
        )  # fmt: skip
        assert (status, location) == (404, "")  # no UI configured: no /_goploy/ routes
        status, location, _ = await post(
            pploy, f"/{name}/lock", "bob", data={"user": "bob", "operation": "gain"},
            headers=origin,
        )  # fmt: skip
        assert (status, location) == (303, f"/projects/{name}")
        status, body = await pploy.api("GET", f"/api/status/{name}", "bob")
        assert body["message"].startswith(f"{name} is locked by alice")
        assert (await pploy.api("GET", f"/api/status/{name}", "bob"))[1]["message"] == ""
        status, _, _ = await post(
            pploy, f"/{name}/lock", data={"user": "alice", "operation": "release"}, headers=origin
        )
        assert status == 302 and lock.get(name) is None
    finally:
        await pploy.close()


async def test_create_and_one_shot_deploy_with_target(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "w")
    try:
        remote = make_remote(tmp_path)
        # A script (no body, the URL in the query) as go-pploy's users posted it
        async with pploy.client().post(
            pploy.url("/_create"), params={"url": str(remote)}, allow_redirects=False
        ) as resp:
            assert (resp.status, resp.headers["Location"]) == (303, "/projects/testploy")
        assert [p.name for p in pploy.services.projects.list()] == ["testploy"]

        await pploy.gain("testploy")
        async with pploy.client().post(
            pploy.url("/testploy/deploy"), params={"target": "production"}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["X-Content-Type-Options"] == "nosniff"  # live in an iframe
            assert b"deployed production" in await resp.read()
        async with pploy.client().post(pploy.url("/testploy/deploy"), json={"target": "x"}) as resp:
            assert resp.status == 400 and "unknown environment" in await resp.text()
    finally:
        await pploy.close()


FOREIGN = "http://evil.example"
REFUSED_HEADERS = {
    "a cross-site Origin": {"Origin": FOREIGN},
    "Sec-Fetch-Site: cross-site": {"Sec-Fetch-Site": "cross-site"},
    "Sec-Fetch-Site: same-site": {"Sec-Fetch-Site": "same-site"},
    "an opaque Origin": {"Origin": "null"},
    "neither header": {},
    "a typed URL (Sec-Fetch-Site: none)": {"Sec-Fetch-Site": "none"},
}


async def test_go_pploy_forms_without_the_token_need_a_same_origin_proof(tmp_path: Path) -> None:
    """An attacker's page posts go-pploy's forms to a signed-in user's pploy: every one is
    refused and changes nothing, whatever the browser says about where it came from, unless
    it proves the form same-origin. pploy's own forms still need the token."""
    ui = tmp_path / "assets"  # go-pploy's UI routes exist too: under /_goploy/
    ui.mkdir()
    (ui / "index.html").write_text("<!DOCTYPE html>")
    (ui / "bundle.js").write_text("")
    pploy = await start_pploy(tmp_path / "w", goploy_ui=str(ui))
    try:
        name = await pploy.add_project(make_remote(tmp_path))
        other = str(make_remote(tmp_path, "other"))
        svc = pploy.services

        def state() -> tuple[Any, ...]:
            projects = [p.name for p in svc.projects.list()]
            return projects, svc.locks.get(name), [j.id for j in svc.store.list_jobs()]

        forms = [
            (base + path, form)
            for base in ("", "/_goploy")
            for path, form in [
                ("/_create", {"url": other}),
                (f"/{name}/lock", {"user": "alice", "operation": "gain"}),
            ]
        ]
        before = state()
        for headers_name, headers in REFUSED_HEADERS.items():
            for path, form in forms:
                status, _, text = await post(pploy, path, data=form, headers=headers)
                assert status == 403, (headers_name, path, status, text)
            assert state() == before, headers_name

        # The lock held, the job and removal forms are refused the same way
        await pploy.gain(name)
        before = state()
        forms = [
            (base + path, form)
            for base in ("", "/_goploy")
            for path, form in [
                (f"/{name}/checkout", {"ref": "main"}),
                (f"/{name}/deploy", {"target": "staging"}),
                (f"/{name}/remove", {}),
                (f"/{name}/lock", {"user": "alice", "operation": "release"}),
            ]
        ]
        for headers_name, headers in REFUSED_HEADERS.items():
            for path, form in forms:
                status, _, text = await post(pploy, path, data=form, headers=headers)
                assert status == 403, (headers_name, path, status, text)
            assert state() == before, headers_name

        # pploy's own form is not go-pploy's: a same-origin proof does not replace its token
        status, _, text = await post(
            pploy, f"/projects/{name}/lock", data={"operation": "release"},
            headers={"Origin": pploy.base, "Sec-Fetch-Site": "same-origin"},
        )  # fmt: skip
        assert status == 403 and "CSRF token" in text and state() == before

        # The same forms from pploy's own origin are accepted: by Origin, or by Sec-Fetch-Site
        same = {"Origin": pploy.base}
        status, _, text = await post(
            pploy, f"/{name}/deploy", data={"target": "staging"}, headers=same
        )
        assert status == 200 and "deployed staging" in text
        status, _, text = await post(
            pploy, f"/{name}/checkout", data={"ref": "main"},
            headers={"Sec-Fetch-Site": "same-origin"},
        )  # fmt: skip
        assert status == 200
        status, location, _ = await post(pploy, f"/_goploy/{name}/remove", data={}, headers=same)
        assert (status, location) == (302, "/_goploy/")
        assert [p.name for p in svc.projects.list()] == []
        status, location, _ = await post(pploy, "/_create", data={"url": other}, headers=same)
        assert (status, location) == (303, "/projects/other")
    finally:
        await pploy.close()


async def test_go_pploy_user_cookie_signs_in(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "w")
    try:
        async with aiohttp.ClientSession(cookies={"pploy_user": "bob"}) as client:
            async with client.get(pploy.url("/api/status")) as resp:
                assert resp.status == 200 and (await resp.json())["user"] == "bob"
        async with aiohttp.ClientSession(cookies={"pploy_user": "mallory"}) as client:
            async with client.get(pploy.url("/api/status")) as resp:
                assert resp.status == 401  # still only the configured users
    finally:
        await pploy.close()


async def test_change_user_signs_a_go_pploy_user_out_also_under_a_prefix(tmp_path: Path) -> None:
    """go-pploy set `pploy_user` at path `/` whatever its prefix; pploy under /deploy cannot
    delete it, so "Change user" must make pploy ignore it."""
    pploy = await start_pploy(tmp_path / "w", prefix="/deploy")
    try:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as client:
            jar.update_cookies({"pploy_user": "bob"})  # path /, as go-pploy set it
            async with client.get(pploy.url("/deploy/api/status")) as resp:
                assert (await resp.json())["user"] == "bob"
            async with client.get(pploy.url("/deploy/")) as resp:
                html = await resp.text()
            token = re.search(r'name="csrf_token" value="([^"]+)"', html)
            assert token
            async with client.post(
                pploy.url("/deploy/logout"), data={"csrf_token": token.group(1)},
                allow_redirects=False,
            ) as resp:  # fmt: skip
                assert resp.headers["Location"] == "/deploy/login"
            async with client.get(pploy.url("/deploy/api/status")) as resp:
                assert resp.status == 401
    finally:
        await pploy.close()


async def test_go_pploys_ui_routes_and_files_also_under_a_prefix(tmp_path: Path) -> None:
    """``goploy_ui``: go-pploy's page, files and routes under ``<prefix>/_goploy/``, its
    redirects kept there (its UI uses relative URLs only, as under go-pploy's -prefix)."""
    ui = tmp_path / "assets"
    (ui / "izitoast/js").mkdir(parents=True)
    (ui / "index.html").write_text("<!DOCTYPE html><title>go-pploy</title>")
    (ui / "bundle.js").write_text("var app;")
    (ui / "izitoast/js/iziToast.js").write_text("var iziToast;")
    pploy = await start_pploy(tmp_path / "w", prefix="/deploy", goploy_ui=str(ui))
    try:
        async with pploy.client().post(
            pploy.url("/deploy/api/projects"), json={"url": str(make_remote(tmp_path))}
        ) as resp:
            assert resp.status == 201
            name = (await resp.json())["project"]["name"]
        for path in ("/deploy/_goploy/", f"/deploy/_goploy/{name}", "/deploy/_goploy/nosuch"):
            status, _, body = await get(pploy, path)
            assert status == 200 and "<title>go-pploy</title>" in body, path
        assert await get(pploy, "/deploy/_goploy") == (302, "/deploy/_goploy/", "302: Found")
        assert (await get(pploy, f"/deploy/_goploy/{name}/lock"))[1] == f"/deploy/_goploy/{name}"
        assert (await get(pploy, "/deploy/_goploy/assets/izitoast/js/iziToast.js"))[0] == 200
        assert (await get(pploy, "/deploy/_goploy/assets/../../pploy.db"))[0] == 404
        async with pploy.client().get(pploy.url(f"/deploy/_goploy/api/status/{name}")) as resp:
            assert (await resp.json())["currentProject"]["name"] == name
        same = {"Origin": pploy.base, "Accept": "text/html"}
        status, location, _ = await post(
            pploy, f"/deploy/_goploy/{name}/lock", data={"operation": "gain"}, headers=same
        )
        assert (status, location) == (302, f"/deploy/_goploy/{name}")
        held = pploy.services.locks.get(name)
        assert held is not None and held.user == "alice"
        status, location, _ = await post(
            pploy, f"/deploy/_goploy/{name}/lock", "bob", data={"operation": "gain"}, headers=same
        )
        assert (status, location) == (303, f"/deploy/_goploy/{name}")  # with go-pploy's message
    finally:
        await pploy.close()


@pytest.mark.slow  # `pploy serve` processes
def test_goploy_ui_must_be_a_built_frontend(tmp_path: Path) -> None:
    """A ``goploy_ui`` that is not go-pploy's built assets/ (the source directory, a typo) is
    a configuration error naming the key and what is missing, through the real CLI."""
    config = tmp_path / "pploy.yml"
    source = tmp_path / "go-pploy/assets"  # go-pploy's checkout before `npm run build`
    source.mkdir(parents=True)
    (source / "index.html").write_text("<!DOCTYPE html>")
    config.write_text(f"users: [alice]\ngoploy_ui: {source}\n")
    run = [sys.executable, "-m", "pploy", "serve", "--config", str(config), "--check-config"]
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 2
    assert "goploy_ui" in result.stderr and "(no bundle.js)" in result.stderr
    (source / "bundle.js").write_text("")
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 0 and "configuration OK" in result.stdout
