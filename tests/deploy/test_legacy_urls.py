"""The Scala pploy's and go-pploy's URLs and habits on a real pploy (issue 14): old page URLs
redirect, old JSON endpoints answer, ``POST /_create`` creates, one-shot deploys take
``target``, and go-pploy's ``pploy_user`` cookie signs its user in."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from tests.deploy.support import Pploy, make_remote, start_pploy


async def get(pploy: Pploy, path: str, **kwargs: object) -> tuple[int, str, str]:
    async with pploy.client().get(pploy.url(path), allow_redirects=False, **kwargs) as resp:
        return resp.status, resp.headers.get("Location", ""), await resp.text()


async def test_old_page_urls_redirect_and_old_api_answers(tmp_path: Path) -> None:
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

        status, body = await pploy.api("GET", f"/api/status/{name}")
        assert status == 200 and body["project"]["name"] == name
        status, body = await pploy.api("GET", "/api/status/")
        assert status == 200 and [p["name"] for p in body["projects"]] == [name]
        status, body = await pploy.api("GET", f"/api/commits/{name}")
        expected = await pploy.api("GET", f"/api/projects/{name}/commits")
        assert (status, body) == expected and status == 200

        # /<project>/logs: the latest job's log, generation=N the N-th before it
        assert (await get(pploy, f"/{name}/logs"))[0] == 404  # no job yet
        await pploy.gain(name)
        first = await pploy.checkout(name)
        await pploy.wait_job(first)
        second = await pploy.deploy(name)
        await pploy.wait_job(second)
        assert (await get(pploy, f"/{name}/logs"))[:2] == (302, f"/api/jobs/{second}/log")
        assert (await get(pploy, f"/{name}/logs?generation=1"))[1] == f"/api/jobs/{first}/log"
        assert (await get(pploy, f"/{name}/logs?generation=2"))[0] == 404
        async with pploy.client().get(pploy.url(f"/{name}/logs")) as resp:
            assert resp.status == 200 and b"deployed staging" in await resp.read()
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
        # A foreign page's form without the token is refused, and creates nothing
        async with pploy.client().post(
            pploy.url("/_/create"), data={"url": str(make_remote(tmp_path, "other"))}
        ) as resp:
            assert resp.status == 403
        assert [p.name for p in pploy.services.projects.list()] == ["testploy"]

        await pploy.gain("testploy")
        async with pploy.client().post(
            pploy.url("/testploy/deploy"), params={"target": "production"}
        ) as resp:
            assert resp.status == 200
            assert b"deployed production" in await resp.read()
        async with pploy.client().post(pploy.url("/testploy/deploy"), json={"target": "x"}) as resp:
            assert resp.status == 400 and "unknown environment" in await resp.text()
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
