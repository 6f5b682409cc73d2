"""go-pploy's own web frontend, built unchanged from its source (tests/data/go-pploy, see its
README) with its npm packages, served by pploy (``goploy_ui``) and driven in Chromium end to
end: project list, adding a project, project page, lock gain/extend/release, recent commits,
checkout, deploy with the live log, previous logs, removal (issue 24).

The deploy script blocks on a fifo before each line, so when the browser shows a line in
go-pploy's log iframe the deploy is still running: the one-shot stream is live there (it
sends ``X-Content-Type-Options: nosniff``; without it Chromium holds a text/plain frame until
about 1 KB has arrived)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import expect

from tests.browser import async_chromium, checked_context
from tests.deploy.support import Fifo, make_remote, start_pploy
from tests.helpers import require_binary, skip_or_fail

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]  # npm build, chromium

SOURCE = Path(__file__).resolve().parents[1] / "data/go-pploy"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def build_frontend(out: Path) -> Path:
    """go-pploy's ``make`` frontend steps, unchanged, in a copy of the source: ``npm run
    build`` (rollup: svelte/ → assets/bundle.js, bundle.css), then bootstrap's and
    iziToast's ``dist/`` into assets/. Returns the built assets/ directory."""
    npm = require_binary("npm")
    if not (SOURCE / "node_modules/.bin/rollup").exists():
        skip_or_fail("go-pploy's npm packages are not installed (bash .ci/install)")
    build = out / "go-pploy"
    build.mkdir()
    for name in ("package.json", "rollup.config.js", "svelte", "assets"):
        source = SOURCE / name
        if source.is_dir():
            shutil.copytree(source, build / name)
        else:
            shutil.copy(source, build / name)
    (build / "node_modules").symlink_to(SOURCE / "node_modules")
    subprocess.run(
        [npm, "run", "build", "--silent"], cwd=build, check=True, capture_output=True, timeout=120
    )
    assets = build / "assets"
    shutil.copytree(SOURCE / "node_modules/bootstrap/dist", assets / "bootstrap")
    shutil.copytree(SOURCE / "node_modules/izitoast/dist", assets / "izitoast")
    return assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_frontend(tmp_path_factory.mktemp("build"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    async with async_chromium() as b:
        yield b


@pytest_asyncio.fixture(loop_scope="module")
async def pploy(tmp_path: Path, assets: Path):
    server = await start_pploy(tmp_path / "work", goploy_ui=str(assets))
    yield server
    await server.close()


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser, pploy):
    """A browser profile signed in the go-pploy way (its ``pploy_user`` cookie), whose pages
    fail the test on a JavaScript error."""
    async with checked_context(browser, viewport={"width": 1280, "height": 1000}) as ctx:
        await ctx.add_cookies([{"name": "pploy_user", "value": "alice", "url": pploy.base}])
        yield ctx


def deploy_script(fifo: Fifo) -> str:
    """Each line waits for the test's go, given once the browser shows the output before it:
    Chromium may hold back a chunk that arrives within a few milliseconds of the previous one
    until more data comes (measured here, nosniff or not), so lines are never sent in a burst."""
    return (
        "#!/bin/sh\n"
        f"{fifo.script_open()}\n"
        f"{fifo.wait_cmd}\n"
        "echo line 1 to $DEPLOY_ENV\n"
        f"{fifo.wait_cmd}\n"
        "echo line 2 by $DEPLOY_USER\n"
    )


def minutes_left(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+):(\d\d)\s*", text)
    assert match, text
    return int(match.group(1))


async def test_go_pploys_frontend_works_end_to_end(
    pploy, context, tmp_path: Path, assets: Path
) -> None:
    fifo = Fifo(tmp_path / "go")
    remote = make_remote(tmp_path / "remotes", deploy_script=deploy_script(fifo))
    page = await context.new_page()
    ui = pploy.url("/_goploy/")
    try:
        # The project list (empty) and go-pploy's "git clone" form
        await page.goto(ui)
        await expect(page.locator("h2")).to_have_text("Welcome to pploy")
        await page.fill("input[name=url]", str(remote))
        await page.click("button[type=submit]")
        await expect(page).to_have_url(pploy.url("/_goploy/testploy"))
        await expect(page.locator(".card-header")).to_have_text("testploy")
        await expect(page.locator("aside a.nav-link.active")).to_contain_text("testploy")

        # Recent commits, in go-pploy's commits frame
        commits = page.frame_locator("iframe[title='recent commits']")
        await expect(commits.locator("tr.subject")).to_have_text(["first commit"])
        await expect(commits.locator("span.ref", has_text="origin/main")).to_have_count(1)
        await expect(commits.locator("span.ref.head")).to_have_text("HEAD")

        # Lock: gain (alice is preselected), extend, release, gain again
        lock = page.locator("#lock-form")
        await expect(lock.locator("select[name=user]")).to_have_value("alice")
        await lock.locator("button[value=gain]").click()
        await expect(lock.locator(".badge-secondary")).to_have_text("alice")
        assert 18 <= minutes_left(await lock.locator(".time-left").inner_text()) <= 19
        await lock.locator("button[value=extend]").click()
        await expect(lock.locator(".time-left")).to_have_text(re.compile(r"^\s*29:"))
        await lock.locator("button[value=release]").click()
        await expect(lock.locator("select[name=user]")).to_be_visible()
        assert pploy.services.locks.get("testploy") is None
        await lock.locator("button[value=gain]").click()
        await expect(lock.locator(".badge-secondary")).to_have_text("alice")

        # Checkout of the prefilled default branch, its output in the command frame
        command = page.frame_locator("iframe[name='command-log-frame']")
        await expect(page.locator("input[name=ref]")).to_have_value("origin/main")
        await page.click("button.checkout-button")
        await expect(command.locator("body")).to_contain_text("origin/main")
        await expect(page.locator("iframe[name='command-log-frame']")).not_to_have_class(
            re.compile("loading")
        )
        [checkout] = pploy.services.store.list_jobs("testploy")
        assert (checkout.kind, checkout.status) == ("checkout", "succeeded")

        # Deploy: each line shows while the script still waits on the fifo for the next
        await page.click("button.deploy-button[value=staging]")
        await expect(command.locator("body")).to_contain_text(
            "DEPLOY_ENV=staging DEPLOY_USER=alice"
        )
        await fifo.release()
        await expect(command.locator("body")).to_contain_text("line 1 to staging")
        frame = page.locator("iframe[name='command-log-frame']")
        await expect(frame).to_have_class(re.compile("loading"))  # the response is not over
        assert "line 2" not in await command.locator("body").inner_text()
        await fifo.release()
        await expect(command.locator("body")).to_contain_text("line 2 by alice")
        await expect(frame).not_to_have_class(re.compile("loading"))
        fifo.close()
        deploy = pploy.services.store.list_jobs("testploy")[0]
        assert (deploy.kind, deploy.env, deploy.status) == ("deploy", "staging", "succeeded")

        # The previous log (the latest deploy's) on the reloaded page, and its full view
        await page.reload()
        previous = page.frame_locator("iframe[title='previous logs']")
        await expect(previous.locator("body")).to_contain_text("line 2 by alice")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "goploy-ui-project.png"), full_page=True)
        async with page.expect_popup() as popup_info:
            await page.click("a[href$='logs?full=1&generation=0']")
        popup = await popup_info.value
        await expect(popup.locator("body")).to_contain_text("line 1 to staging")
        await popup.close()

        # Remove: back to the empty list
        await page.click("form[action$='/remove'] button")
        await expect(page).to_have_url(ui)
        await expect(page.locator("h2")).to_have_text("Welcome to pploy")
        await expect(page.locator("aside a.nav-link")).to_have_count(0)
        assert pploy.services.projects.list() == []
    finally:
        fifo.close()
        await page.close()


async def test_a_refused_lock_shows_go_pploys_message(pploy, context, tmp_path: Path) -> None:
    """bob holds the lock: alice's "Start deploying" comes back with the reason in go-pploy's
    toast, and nothing changes."""
    name = await pploy.add_project(make_remote(tmp_path / "remotes"))
    await pploy.gain(name, "bob")
    page = await context.new_page()
    try:
        await page.goto(pploy.url(f"/_goploy/{name}"))
        await expect(page.locator("#lock-form .badge-secondary")).to_have_text("bob")
        await expect(page.locator("#lock-form button")).to_have_count(0)  # go-pploy's own UI
        # go-pploy's form is a same-origin form post: send one as its page would
        await page.evaluate(
            """name => {
                const form = document.createElement('form');
                form.method = 'POST';
                form.action = './' + name + '/lock';
                for (const [k, v] of [['user', 'alice'], ['operation', 'gain']]) {
                    const input = document.createElement('input');
                    input.name = k; input.value = v; form.appendChild(input);
                }
                document.body.appendChild(form);
                form.submit();
            }""",
            name,
        )
        await expect(page.locator(".iziToast-message")).to_contain_text(f"{name} is locked by bob")
        lock = pploy.services.locks.get(name)
        assert lock is not None and lock.user == "bob"
    finally:
        await page.close()
