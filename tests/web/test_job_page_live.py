"""The real pploy in a real Chromium: a job page shows each line of a running deploy live, and the
pages carry a user from the picker through lock, checkout and deploy to the finished job.

The deploy script blocks on a fifo after each line, so when the test sees line N in the browser,
line N+1 cannot exist anywhere yet; the test releases the script only after that check.

pploy runs on the pytest-asyncio loop (``start_pploy``), so the browser is driven through
Playwright's async API on the same loop: one loop, one browser and one pploy per module.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import expect

from tests.browser import async_chromium, checked_context
from tests.deploy.support import Fifo, make_remote, start_pploy

# slow: chromium
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
RED = "rgb(255, 123, 114)"  # --ansi-1 of the log panel's theme


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    async with async_chromium() as b:
        yield b


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pploy(tmp_path_factory):
    server = await start_pploy(tmp_path_factory.mktemp("pploy") / "work")
    yield server
    await server.close()


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser, pploy):
    """A fresh browser profile (no cookies) whose pages fail the test on a JavaScript error."""
    async with checked_context(browser, viewport={"width": 1280, "height": 900}) as ctx:
        yield ctx


async def sign_in_by_cookie(context, pploy, user: str = "alice") -> None:
    await context.add_cookies([{"name": "user", "value": user, "url": pploy.base}])


def log_row(page, text: str):
    """The log panel's row whose whole text is ``text``."""
    return page.locator("#log .log-line").filter(
        has=page.locator(".log-text", has_text=re.compile(f"^{re.escape(text)}$"))
    )


# ---------------------------------------------------------------------------------------------
# A running deploy, line by line
# ---------------------------------------------------------------------------------------------


def gated_script(fifo: Fifo) -> str:
    return (
        "#!/bin/sh\n"
        "printf '\\033[31mline 1\\033[0m\\n'\n"
        f"{fifo.script_open()}\n"  # blocks until the test's first release opens the fifo
        f"{fifo.wait_cmd}\n"
        "printf 'line 2\\n'\n"
        f"{fifo.wait_cmd}\n"
        "printf 'line 3\\n'\n"
    )


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_job_page_shows_each_line_before_the_next_exists(pploy, context, tmp_path, transport):
    fifo = Fifo(tmp_path / "go")
    try:
        remote = make_remote(tmp_path, name=f"live-{transport}", deploy_script=gated_script(fifo))
        project = await pploy.add_project(remote)
        await pploy.gain(project)
        job = await pploy.deploy(project)

        await sign_in_by_cookie(context, pploy)
        page = await context.new_page()
        await page.goto(pploy.url(f"/jobs/{job}?transport={transport}"))
        log = page.locator("#log")
        await expect(log).to_have_attribute("data-transport-active", transport)
        await expect(page.locator("#job-status")).to_have_attribute("data-status", "running")
        await expect(page.locator("#cancel-form button")).to_be_enabled()  # alice holds the lock

        for n in (1, 2):
            row = log_row(page, f"line {n}")
            await expect(row).to_be_visible()
            # The script is blocked before the next line: nothing follows this row yet.
            last = await row.get_attribute("data-line")
            await expect(log).to_have_attribute("data-lines", last)
            await expect(log).not_to_contain_text(f"line {n + 1}")
            await expect(page.locator("#job-status")).to_have_attribute("data-status", "running")
            await expect(log).to_have_attribute("data-connection", "live")
            if n == 1:
                red = row.locator(".log-text span.ansi-fg-1")
                await expect(red).to_have_text("line 1")
                await expect(red).to_have_css("color", RED)
            await fifo.release()
        await expect(log_row(page, "line 3")).to_be_visible()

        status = page.locator("#job-status")
        await expect(status).to_have_attribute("data-status", "succeeded")
        await expect(status).to_have_text("succeeded")
        await expect(status).to_have_class(re.compile(r"\bstatus-succeeded\b"))
        await expect(log).to_have_attribute("data-connection", "ended")
        # The live sections refresh on the job's end: exit code shown, cancel button gone.
        await expect(page.locator("#job-meta")).to_contain_text("exit code 0")
        await expect(page.locator("#cancel-form")).to_have_count(0)
        await expect(page.locator("#job-duration")).to_have_text(re.compile(r"^\d+s$"))
        # The reset after line 1 really ended the colour: line 2 is plain text.
        assert await log_row(page, "line 2").locator(".log-text span").count() == 0

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / f"job-page-{transport}.png"), full_page=True)
    finally:
        fifo.close()


async def test_finished_job_page_replays_the_whole_log(pploy, context, tmp_path):
    remote = make_remote(
        tmp_path, name="replay", deploy_script="#!/bin/sh\nprintf 'a\\nb\\n'\nexit 3\n"
    )
    project = await pploy.add_project(remote)
    await pploy.gain(project)
    job = await pploy.deploy(project)
    assert (await pploy.wait_job(job))["status"] == "failed"

    await sign_in_by_cookie(context, pploy)
    page = await context.new_page()
    await page.goto(pploy.url(f"/jobs/{job}?transport=ws"))
    await expect(page.locator("#job-status")).to_have_attribute("data-status", "failed")
    await expect(page.locator("#log .log-text")).to_have_text(
        [
            "$ DEPLOY_ENV=staging DEPLOY_USER=alice .deploy/bin/deploy",
            "a",
            "b",
            "[pploy] deploy failed, exit code 3",
        ]
    )
    await expect(page.locator("#job-meta")).to_contain_text("exit code 3")
    await expect(page.locator("#cancel-form")).to_have_count(0)


# ---------------------------------------------------------------------------------------------
# The pages, as a person uses them
# ---------------------------------------------------------------------------------------------


async def finished(page, kind: str) -> str:
    """Wait on a job page until its job has ended; returns the final status."""
    await expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    await expect(page.locator("h1")).to_contain_text(kind)
    await page.wait_for_selector("body[data-job-status]:not([data-job-status=running])")
    return await page.locator("#job-status").get_attribute("data-status")


async def test_picker_lock_checkout_and_deploy_through_the_pages(pploy, context, tmp_path):
    remote = make_remote(tmp_path, name="uiflow")
    page = await context.new_page()

    # Not signed in: the picker, which then returns to the page asked for.
    await page.goto(pploy.url("/"))
    await expect(page).to_have_url(re.compile(r"/login\?next=(/|%2F)$"))
    await page.select_option("#user-picker", "alice")  # submits on change (app.js)
    await expect(page).to_have_url(pploy.url("/"))
    await expect(page.locator("#current-user")).to_have_text("alice")

    # Add the project through the form: lands on its page.
    await page.fill("#add-project input[name=url]", str(remote))
    await page.click("#add-project button[type=submit]")
    await expect(page).to_have_url(pploy.url("/projects/uiflow"))
    await expect(page.locator("#flash")).to_contain_text("added uiflow")

    # Nobody holds the lock: the forms are there but disabled.
    await expect(page.locator("#lock-holder-none")).to_be_visible()
    await expect(page.locator("#checkout-form button")).to_be_disabled()
    await expect(page.locator("#deploy-form button").first).to_be_disabled()

    await page.click("#gain-lock")
    await expect(page.locator("#lock-holder")).to_have_text("alice")
    countdown = page.locator("#lock-panel .countdown")
    # 20 minutes by default, said as a duration ("18:53" would read as a time of day); the
    # seconds ticking in the last minute are tested in test_logview_browser.
    await expect(countdown).to_have_text(re.compile(r"^(20|19) min left$"))

    ref = page.locator("#checkout-form input[name=ref]")
    await expect(ref).to_have_value("main")  # the default branch, prefilled
    await expect(ref).to_be_enabled()
    await page.click("#checkout-form button[type=submit]")
    assert await finished(page, "checkout") == "succeeded"
    await expect(page.locator("#log")).to_contain_text("main")

    await page.click("nav a[href='/projects/uiflow']")
    deploy = page.locator("#deploy-form button[value=staging]")
    await expect(deploy).to_be_enabled()
    await deploy.click()
    assert await finished(page, "deploy") == "succeeded"
    await expect(page.locator("#job-status")).to_have_text("succeeded")
    await expect(page.locator("#log")).to_contain_text("deployed staging")
    await expect(page.locator("#job-meta")).to_contain_text("exit code 0")

    # The project page now lists both jobs and the deployed commit.
    await page.click("nav a[href='/projects/uiflow']")
    await expect(page.locator("#history .job-row")).to_have_count(2)
    await expect(page.locator("tr[data-env=staging]")).to_contain_text("alice")


async def test_japanese_job_page_translates_the_final_status(pploy, browser, tmp_path):
    remote = make_remote(tmp_path, name="ja-job")
    project = await pploy.add_project(remote)
    await pploy.gain(project)
    job = await pploy.deploy(project)
    assert (await pploy.wait_job(job))["status"] == "succeeded"

    ctx = await browser.new_context(extra_http_headers={"Accept-Language": "ja"}, locale="ja-JP")
    try:
        await sign_in_by_cookie(ctx, pploy)
        page = await ctx.new_page()
        await page.goto(pploy.url(f"/jobs/{job}"))
        await expect(page.locator("html")).to_have_attribute("lang", "ja")
        status = page.locator("#job-status")
        await expect(status).to_have_attribute("data-status", "succeeded")
        await expect(status).to_have_text("成功")
        await expect(page.locator("#job-meta")).to_contain_text("終了コード 0")
        await expect(page.locator("#raw-log")).to_have_text("生ログ")
    finally:
        await ctx.close()
