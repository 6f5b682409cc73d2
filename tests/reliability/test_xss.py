"""Stored and reflected XSS: `<script>`, event handlers and `javascript:` in commit messages,
branch and tag names, author names, readme.html, the URL and ref fields (reflected in error
messages), project names and deploy output all render inert.

Two checks: the HTML pploy sends holds no active markup from the payloads (parsed, not
grepped), and a real Chromium that opens every page runs none of them (each payload would set
``window.__xss`` or open a dialog)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import quote

import pytest
import pytest_asyncio

from tests.deploy.support import GIT_ENV, git, make_remote, start_pploy
from tests.helpers import CHROMIUM_ARGS, require_binary

pytestmark = pytest.mark.asyncio(loop_scope="module")

JS = "window.__xss=1"
SCRIPT = f"<script>{JS}</script>"
IMG = f'"><img src=x onerror="{JS}">'
SVG = f"<svg/onload={JS}>"
LINK = f"javascript:{JS}"
PAYLOADS = [SCRIPT, IMG, SVG, LINK]
# git ref names allow < > " = ( ) but no spaces: these are real branch and tag names.
BRANCH = "xss/<svg/onload=window.__xss=1>"
TAG = "<script>window.__xss=1<"
README = (
    f'<p>readme</p>{SCRIPT}<a href="{LINK}">click</a>{IMG}'
    f'<iframe src="{LINK}"></iframe><form action="{LINK}"><button>go</button></form>'
    f'<a href="https://example.com/" onclick="{JS}">ok link</a>'
)
OUTPUT = (
    f"{SCRIPT}\\n{IMG}\\n{SVG}\\n"
    # an OSC 8 terminal hyperlink to javascript:, and ANSI around markup
    f"\\033]8;;{LINK}\\033\\\\osc link\\033]8;;\\033\\\\\\n"
    f"\\033[31m<b onmouseover={JS}>red</b>\\033[0m\\n"
)


class ActiveMarkup(HTMLParser):
    """Collects what would run: script bodies, event-handler attributes, javascript: URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            src = dict(attrs).get("src") or ""
            if not src.startswith("/static/"):
                self.found.append(f"<script src={src!r}>")
            self._in_script = True
        if tag in ("iframe", "object", "embed", "svg"):
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}={value!r}>")
            if name in ("href", "src", "action", "formaction") and value:
                if re.sub(r"[\s\x00-\x1f]", "", value).lower().startswith("javascript:"):
                    self.found.append(f"<{tag} {name}={value!r}>")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.found.append(f"inline script {data[:80]!r}")


def active_markup(page: str) -> list[str]:
    parser = ActiveMarkup()
    parser.feed(page)
    return parser.found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xss")
    script = f"#!/bin/sh\nprintf '{OUTPUT}'\n"
    remote = make_remote(
        tmp, "xssploy", deploy_script=script, files={".deploy/config/readme.html": README}
    )
    work = tmp / "push"
    git("clone", "-q", str(remote), str(work), cwd=tmp)
    (work / "file").write_text("x\n")
    git("add", "-A", cwd=work)
    env = {**GIT_ENV, "GIT_AUTHOR_NAME": f"Mallory {IMG}", "GIT_AUTHOR_EMAIL": "m@x.test"}
    import subprocess

    subprocess.run(
        ["git", "commit", "-q", "-m", f"subject {SCRIPT} {LINK}", "-m", f"body {IMG} {SVG}"],
        cwd=work, env=env, check=True,
    )  # fmt: skip
    git("branch", BRANCH, cwd=work)
    git("tag", TAG, cwd=work)
    git("push", "-q", "origin", "main", BRANCH, TAG, cwd=work)
    pploy = await start_pploy(tmp / "work")
    name = await pploy.add_project(remote)
    await pploy.gain(name)
    checkout = await pploy.checkout(name, TAG)
    assert (await pploy.wait_job(checkout))["status"] == "succeeded"
    deploy = await pploy.deploy(name)
    assert (await pploy.wait_job(deploy))["status"] == "succeeded"
    yield pploy, name, checkout, deploy
    await pploy.close()


def pages(name: str, checkout: int, deploy: int) -> list[str]:
    return [
        "/",
        f"/projects/{name}",
        f"/jobs/{checkout}",
        f"/jobs/{deploy}",
        f"/jobs/{deploy}?transport=ws",
        # reflected: unknown project, a bad job id, a bad transport, the login page's next
        "/projects/" + quote(SCRIPT, safe=""),
        "/jobs/" + quote(SCRIPT, safe=""),
        f"/jobs/{deploy}?transport=" + quote(IMG, safe=""),
        "/login?next=" + quote(LINK, safe=""),
        "/login?next=" + quote("/" + IMG, safe=""),
    ]


async def test_the_payloads_are_really_there(site):
    """Guard against a vacuous pass: each payload reached the page, as text."""
    pploy, name, _, deploy = site
    async with pploy.client().get(pploy.url(f"/projects/{name}")) as resp:
        page = await resp.text()
    assert "subject &lt;script&gt;" in page  # the commit subject, escaped
    assert "Mallory" in page and "&lt;img src=x onerror=" in page  # the author
    assert "xss/&lt;svg/onload=" in page or "&lt;svg/onload" in page  # the branch
    assert "&lt;script&gt;window.__xss=1&lt;" in page  # the tag
    assert "readme" in page and "ok link" in page  # the sanitised readme kept its text
    raw = await pploy.log(deploy)
    assert SCRIPT.encode() in raw and b"]8;;javascript:" in raw  # the log keeps the bytes


async def test_no_page_carries_active_markup(site):
    pploy, name, checkout, deploy = site
    for path in pages(name, checkout, deploy):
        async with pploy.client().get(pploy.url(path)) as resp:
            page = await resp.text()
        assert active_markup(page) == [], path
    # Reflected through forms: the URL field and the ref field come back in messages.
    client = pploy.client()
    async with client.get(pploy.url(f"/projects/{name}")) as resp:
        token = re.search(r'name="csrf_token" value="([^"]+)"', await resp.text()).group(1)
    for path, data in [
        ("/projects", {"url": f"/tmp/{SCRIPT}.git"}),
        ("/projects", {"url": f"{LINK}//{IMG}"}),
        (f"/projects/{name}/checkout", {"ref": IMG}),
        (f"/projects/{name}/deploy", {"env": SCRIPT}),
        (f"/projects/{name}/lock", {"operation": SVG}),
    ]:
        async with client.post(pploy.url(path), data={**data, "csrf_token": token}) as resp:
            page = await resp.text()  # the redirect target, with the flash message
        assert active_markup(page) == [], (path, data)
        assert "&lt;" in page or "invalid" in page.lower(), (path, page[:300])


@pytest.mark.slow  # chromium
async def test_chromium_runs_none_of_it(site):
    chromium = require_binary("chromium")
    from playwright.async_api import async_playwright

    pploy, name, checkout, deploy = site
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            host = pploy.base.split("//", 1)[1].split(":")[0]
            await context.add_cookies([{"name": "user", "value": "alice", "domain": host,
                                        "path": "/"}])  # fmt: skip
            page = await context.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            for path in pages(name, checkout, deploy):
                await page.goto(pploy.url(path))
                if path.startswith(f"/jobs/{deploy}"):
                    # the log is rendered by script: wait for its last line to be drawn
                    await page.get_by_text("deploy succeeded").first.wait_for(timeout=15_000)
                    await page.get_by_text("osc link").first.wait_for(timeout=15_000)
                elif path == f"/jobs/{checkout}":
                    await page.get_by_text("checkout succeeded").first.wait_for(timeout=15_000)
                    for link in await page.locator("#log a, .log a").all():
                        href = (await link.get_attribute("href")) or ""
                        assert not href.lower().startswith("javascript:"), href
                # hover and click whatever could carry a handler
                for selector in ("b", "a", "img", "svg"):
                    for element in (await page.locator(selector).all())[:20]:
                        if await element.is_visible():
                            await element.hover(timeout=2000)
                assert await page.evaluate("window.__xss") is None, path
            assert dialogs == []
            await context.close()
        finally:
            await browser.close()
