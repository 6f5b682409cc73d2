"""pploy under a path prefix (issue 14): ``prefix: /deploy`` (requests arrive with it) and a
trusted proxy's ``X-Forwarded-Prefix`` (requests arrive without it), through a real server.

The nginx + chromium end-to-end check is tests/chain/test_prefix_nginx.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from yarl import URL

from pploy.deploy.config import ConfigError, load_config
from tests.deploy.support import Pploy, make_remote, start_pploy

LINK_RE = re.compile(r'(?:href|action|src|data-[a-z-]+-url)="([^"#?][^"]*)"')


def links(html: str) -> list[str]:
    """Every URL attribute of a page that is a path (not a fragment or a query)."""
    return LINK_RE.findall(html)


async def page(pploy: Pploy, path: str, user: str | None = "alice", **headers: str) -> str:
    async with pploy.client(user).get(pploy.url(path), headers=headers) as resp:
        assert resp.status == 200, (path, resp.status)
        return await resp.text()


def test_prefix_is_normalised_and_checked() -> None:
    assert load_config(None, {"prefix": "/deploy/"}, environ={}).prefix == "/deploy"
    assert load_config(None, {"prefix": "deploy"}, environ={}).prefix == "/deploy"
    assert load_config(None, {"prefix": "/"}, environ={}).prefix == ""
    assert load_config(None, None, environ={"PPLOY_PREFIX": "/a/b"}).prefix == "/a/b"
    for bad in ("/de ploy", "/a/../b", '/x"onload', "/%2e", "/a//b"):
        with pytest.raises(ConfigError, match="prefix"):
            load_config(None, {"prefix": bad}, environ={})


async def test_configured_prefix_links_redirects_and_cookies(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "w", prefix="/deploy")
    try:
        async with pploy.client().get(pploy.url("/api/status")) as resp:
            assert resp.status == 404  # nothing is served outside the prefix
        raw = URL(pploy.url("/deplo%79/api/status"), encoded=True)
        async with pploy.client().get(raw) as resp:
            assert resp.status == 404  # the prefix is matched as sent, never decoded
        anon = pploy.client(None)
        async with anon.post(pploy.url("/deploy/api/projects"), json={"url": "x"}) as resp:
            assert resp.status == 401
        status, body = await pploy.api(
            "POST", "/deploy/api/projects", json={"url": str(make_remote(tmp_path, "demo"))}
        )
        assert status == 201, body
        for path in ("/", "/deploy"):
            async with anon.get(pploy.url(path), allow_redirects=False) as resp:
                assert (resp.status, resp.headers["Location"]) == (302, "/deploy/")
        async with anon.get(pploy.url("/deploy/projects/demo"), allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/deploy/login?next=/projects/demo"
        login = await page(pploy, "/deploy/login?next=/projects/demo", user=None)
        token = re.search(r'name="csrf_token" value="([^"]+)"', login)
        assert token, login
        async with anon.post(
            pploy.url("/deploy/login"),
            data={"user": "bob", "next": "/projects/demo", "csrf_token": token.group(1)},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303, await resp.text()
            assert resp.headers["Location"] == "/deploy/projects/demo"
            cookie_paths = {m.key: m["path"] for m in resp.cookies.values()}
            assert cookie_paths["user"] == "/deploy/"
        for path in ("/deploy/", "/deploy/projects/demo"):
            found = links(await page(pploy, path))
            assert found and all(link.startswith("/deploy/") for link in found), found
        status, body = await pploy.api("GET", "/deploy/api/status")
        assert status == 200 and [p["name"] for p in body["projects"]] == ["demo"]
        async with pploy.client().get(pploy.url("/deploy/static/app.js")) as resp:
            assert resp.status == 200
    finally:
        await pploy.close()


async def test_forwarded_prefix_from_a_trusted_proxy(tmp_path: Path) -> None:
    """gate with ``strip_path: yes``: the path arrives without the prefix, the header names
    it, and pploy hands out URLs under it."""
    pploy = await start_pploy(tmp_path / "w")
    try:
        html = await page(pploy, "/", **{"X-Forwarded-Prefix": "/deploy/"})
        found = links(html)
        assert found and all(link.startswith("/deploy/") for link in found), found
        assert 'data-base="/deploy"' in html
        async with pploy.client(None).get(
            pploy.url("/projects/x"),
            headers={"X-Forwarded-Prefix": "/deploy"},
            allow_redirects=False,
        ) as resp:
            assert resp.headers["Location"] == "/deploy/login?next=/projects/x"
        async with pploy.client().get(
            pploy.url("/"), headers={"X-Forwarded-Prefix": '/x"><script>'}
        ) as resp:
            assert resp.status == 400
            assert "X-Forwarded-Prefix" in await resp.text()
    finally:
        await pploy.close()


async def test_forwarded_prefix_from_anyone_else_is_ignored(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "w", **{"auth.trusted_proxies": ["192.0.2.0/24"]})
    try:
        html = await page(pploy, "/", **{"X-Forwarded-Prefix": "/evil"})
        assert "/evil" not in html
        assert all(not link.startswith("/evil") for link in links(html))
    finally:
        await pploy.close()
