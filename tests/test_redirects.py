"""The project's one redirect validator (pploy.redirects) at pploy's call site: the user
picker's ``next``, through pploy's real login form, refuses every payload of the corpus and
keeps legitimate local paths with their queries. gate's call site: tests/gate/test_redirects.py."""

from __future__ import annotations

import re

import aiohttp

from pploy.redirects import safe_return_path
from tests.deploy.support import start_pploy
from tests.gate.test_redirects import payloads

GOOD = ["/", "/projects/demo", "/projects/demo?tab=jobs&env=staging", "/jobs/3/log?follow=1"]
CSRF = re.compile(r'name="(csrf_token)" value="([^"]+)"')


async def test_every_payload_through_pploys_login_form(tmp_path):
    pploy = await start_pploy(tmp_path / "work")
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
            async with client.get(pploy.url("/login")) as resp:
                field, token = CSRF.search(await resp.text()).groups()
            for target in [*payloads(), *GOOD]:
                async with client.post(
                    pploy.url("/login"),
                    data={"user": "alice", "next": target, field: token},
                    allow_redirects=False,
                ) as resp:
                    assert resp.status == 303, (target, await resp.text())
                    expected = target if target in GOOD else "/"
                    assert resp.headers["Location"] == expected, target
            # The picker page itself never carries an unsafe next into its form.
            for target in ("//evil.test", "/%09/evil.test", "/https://evil.test"):
                async with client.get(pploy.url("/login"), params={"next": target}) as resp:
                    assert 'name="next" value="/"' in await resp.text(), target
    finally:
        await pploy.close()


def test_gate_and_pploy_use_the_same_validator():
    from pploy.deploy.web import pages
    from pploy.gate import login

    assert pages.safe_next is safe_return_path
    assert login.safe_return_path is safe_return_path


DOT_SEGMENTS = [
    "/..",
    "/.",
    "/a/../b",
    "/a/./b",
    "/projects/demo/..",
    "/%2e%2e/projects",
    "/%2E/projects",
    "/a/%2e%2e/b?x=1",
    "/%252e%252e/projects",  # encoded twice
    "/a/.%2e/b",
    "/..?next=/",
]


def test_dot_segments_are_refused_in_every_encoding():
    """A browser resolves dot segments before it requests the path, so what is checked would
    not be what is visited: every spelling of ``.`` or ``..`` as a segment is refused, while a
    dot inside a segment (a file name, a version) is an ordinary path."""
    for target in DOT_SEGMENTS:
        assert safe_return_path(target) == "/", target
    for target in ("/projects/my.app", "/jobs/3/log.txt", "/a/...", "/a/.well-known", "/a?x=.."):
        assert safe_return_path(target) == target, target
