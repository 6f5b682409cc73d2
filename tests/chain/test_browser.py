"""A real browser (Debian's chromium) through nginx (TLS) and gate to pploy: sign in with the
dev login form, gain the lock, check out, deploy to staging, and watch the log flow — the
first lines while the deploy still runs, colours rendered, the final status — over SSE, then
over WebSocket (`?transport=ws`). Screenshots go to artifacts/."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.chain.harness import Certs, Chain, Client, Nginx, release_sync
from tests.helpers import CHROMIUM_ARGS, require_binary

pytestmark = pytest.mark.slow  # chromium through nginx

BROWSER_USER = "carol"
TIMEOUT_MS = 20_000


@pytest.fixture
def free_lock(nginx: Nginx, certs: Certs, session_cookie: str) -> None:
    """The API tests' user lets go of the project's lock, so the browser's user can take it."""

    async def release() -> None:
        client = Client(nginx.url, certs)
        client.cookie = session_cookie
        try:
            status = await client.api("GET", "/api/projects/chainploy")
            lock = status["project"].get("lock")
            if lock and lock["user"] != BROWSER_USER:
                await client.api("POST", "/api/projects/chainploy/lock", {"operation": "release"})
        finally:
            await client.close()

    asyncio.run(release())


def test_browser_deploys_and_watches_the_log_flow(
    nginx: Nginx, chain: Chain, certs: Certs, free_lock: None, artifacts: Path
) -> None:
    chromium = require_binary("chromium")
    from playwright.sync_api import expect, sync_playwright

    fifo = chain.fifo("staging")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1280, "height": 900}
        )
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        try:
            # Not signed in: gate sends the browser to its dev login form.
            page.goto(nginx.url + "/projects/chainploy")
            expect(page).to_have_url(re.compile(r"/login\?next="))
            page.fill("input[name=user]", BROWSER_USER)
            page.click("button[type=submit]")
            expect(page).to_have_url(re.compile(r"/projects/chainploy$"))

            for transport in ("sse", "ws"):
                sockets.clear()
                run_flow(page, expect, nginx, fifo, transport, artifacts)
                ws_used = [u for u in sockets if "/api/jobs/" in u]
                assert bool(ws_used) == (transport == "ws"), sockets

            # Leave the lock free for whoever comes next.
            page.goto(nginx.url + "/projects/chainploy")
            page.click("#lock-panel button[value=release]")
            expect(page.locator("#lock-holder-none")).to_be_visible()
        finally:
            context.close()
            browser.close()


def run_flow(page, expect, nginx: Nginx, fifo: Path, transport: str, artifacts: Path) -> None:  # type: ignore[no-untyped-def]
    page.goto(nginx.url + "/projects/chainploy")
    if page.locator("#gain-lock").count():
        page.click("#gain-lock")
    expect(page.locator("#lock-holder")).to_have_text(BROWSER_USER)

    # Check out the default branch (prefilled) and wait for the checkout job to succeed.
    expect(page.locator("#checkout-form input[name=ref]")).to_have_value("main")
    page.click("#checkout-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    expect(page.locator("#job-status")).to_have_attribute("data-status", "succeeded")

    # Deploy to staging; the job page opens while the script waits after its first line.
    page.goto(nginx.url + "/projects/chainploy")
    deploy_button = page.locator("#deploy-form button[value=staging]")
    expect(deploy_button).to_be_enabled()
    deploy_button.click()
    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    if transport == "ws":
        page.goto(page.url + "?transport=ws")
    page.evaluate(
        "window.__ended = null;"
        "document.addEventListener('pploy:job-ended', e => { window.__ended = e.detail; });"
    )
    log = page.locator("#log")
    for n in (1, 2, 3):
        line = log.locator(".log-text", has_text=f"line {n} of the deploy")
        expect(line).to_be_visible()
        # The deploy is still running: the script waits for us before its next line.
        expect(page.locator("#job-status")).to_have_attribute("data-status", "running")
        assert log.locator(".log-text", has_text=f"line {n + 1} of the deploy").count() == 0, (
            log.inner_text()
        )
        if n == 1:
            # Colours: `\e[32m` rendered as the palette's green, not as text.
            green = log.locator(".ansi-fg-2", has_text="line 1")
            expect(green).to_have_count(1)
            colour = green.evaluate("el => getComputedStyle(el).color")
            plain = log.locator(".log-text").first.evaluate("el => getComputedStyle(el).color")
            assert colour != plain, (colour, plain)
            assert "\x1b" not in log.inner_text() and "[32m" not in log.inner_text()
            page.screenshot(path=str(artifacts / f"chain-{transport}-running.png"))
        release_sync(fifo)
    expect(log.locator(".log-text", has_text="deployed")).to_be_visible()
    expect(page.locator("#job-status")).to_have_attribute("data-status", "succeeded")
    page.wait_for_function("window.__ended !== null")
    assert page.evaluate("window.__ended.status") == "succeeded"
    page.screenshot(path=str(artifacts / f"chain-{transport}-final.png"), full_page=True)
