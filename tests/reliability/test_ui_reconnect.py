"""gate restarted while a person watches a deploy's job page: the browser UI (logview.js in a
real Chromium) sees its stream end, reconnects by itself once gate is back, and shows the lines
printed meanwhile exactly once, then the rest and the final status.

The deploy script blocks on a fifo after each line, so the test decides when each line exists:
line 2 is printed while gate is down, line 3 only after the page has caught up with line 2.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import async_playwright, expect

from tests.deploy.support import Fifo, make_remote, start_pploy
from tests.gate.conftest import dev_config
from tests.helpers import CHROMIUM_ARGS, require_binary
from tests.reliability.test_gate_faults import RestartableGate

pytestmark = pytest.mark.slow  # chromium

# Waits end as soon as their condition holds; the margin is for a loaded 2-core CI machine.
# The slowest legitimate wait is a reconnect: EventSource retries every 2 s (the server's
# `retry:`), the WebSocket viewer backs off 0.5 s, 1 s, 2 s, 4 s ... while gate is down.
T = 20_000  # ms
SGR = re.compile(r"\x1b\[[0-9;]*m")  # the only escapes in this log (pploy's own notes)


async def wait_for_log(buffer, text: bytes, timeout: float = 20) -> None:
    """Wait (on pploy's own log buffer, no polling) until the job's log holds ``text``."""
    async with asyncio.timeout(timeout):
        while text not in await buffer.read(0, 1 << 20):
            await buffer.wait_beyond(buffer.size)


def log_row(page, text: str):
    """The log panel's row whose whole text is ``text``."""
    return page.locator("#log .log-line").filter(
        has=page.locator(".log-text", has_text=re.compile(f"^{re.escape(text)}$"))
    )


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_job_page_reconnects_after_a_gate_restart_and_resumes(tmp_path, transport):
    chromium = require_binary("chromium")
    fifo = Fifo(tmp_path / "go")
    script = (
        "#!/bin/sh\necho 'line 1 before the restart'\n"
        f"{fifo.script_open()}\n{fifo.wait_cmd}\n"
        f"echo 'line 2 while gate is down'\n{fifo.wait_cmd}\necho 'line 3 after'\n"
    )
    pploy = await start_pploy(tmp_path / "work", **{"auth.mode": "proxy"})
    # A fixed session key (dev_config's): the browser's cookie is still good after the restart.
    gate = RestartableGate(
        dev_config(proxy=[{"path": "/", "dest": pploy.base, "strip_path": False}])
    )
    await gate.start()
    errors: list[str] = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context(viewport={"width": 1280, "height": 900})
                context.set_default_timeout(T)
                context.on("weberror", lambda err: errors.append(str(err.error)))
                api = context.request  # shares the browser profile's cookies

                login = await api.post(
                    f"{gate.url}/login", form={"user": "alice", "next": "/"}, max_redirects=0
                )
                assert login.status == 303, await login.text()

                async def post(path: str, body: dict) -> dict:
                    resp = await api.post(gate.url + path, data=body, headers={"Origin": gate.url})
                    assert resp.status < 300, await resp.text()
                    return await resp.json()

                remote = make_remote(tmp_path, deploy_script=script)
                await post("/api/projects", {"url": str(remote)})
                await post("/api/projects/testploy/lock", {"operation": "gain"})
                job = (await post("/api/projects/testploy/deploy", {"env": "staging"}))["job"]["id"]
                buffer = pploy.services.jobs.live_buffer(job)
                assert buffer is not None

                async def page_shows_the_whole_log() -> None:
                    """The rendered rows are the log's lines (as text): none lost, none twice."""
                    resp = await api.get(f"{gate.url}/api/jobs/{job}/log")
                    assert resp.status == 200
                    lines = SGR.sub("", await resp.text()).splitlines()
                    await expect(page.locator("#log .log-text")).to_have_text(lines, timeout=T)

                page = await context.new_page()
                await page.goto(f"{gate.url}/jobs/{job}?transport={transport}")
                log = page.locator("#log")
                status = page.locator("#job-status")
                await expect(log).to_have_attribute("data-transport-active", transport, timeout=T)
                await expect(log_row(page, "line 1 before the restart")).to_be_visible(timeout=T)
                await expect(log).to_have_attribute("data-connection", "live", timeout=T)
                await page_shows_the_whole_log()

                await gate.stop()
                # The viewer noticed: its stream ended and it is trying again.
                await page.wait_for_function(
                    "document.getElementById('log').dataset.connection !== 'live'", timeout=T
                )
                state = await log.get_attribute("data-connection")
                assert state in ("reconnecting", "connecting"), state

                await fifo.release()  # the deploy prints line 2 while gate is down
                await wait_for_log(buffer, b"line 2 while gate is down")
                await expect(log).not_to_contain_text("line 2", timeout=T)
                await gate.start()

                # Back by itself, on the same page: line 2 once, nothing lost or repeated.
                await expect(log).to_have_attribute("data-connection", "live", timeout=T)
                await expect(log_row(page, "line 2 while gate is down")).to_have_count(1, timeout=T)
                await page_shows_the_whole_log()
                await expect(status).to_have_attribute("data-status", "running", timeout=T)

                await fifo.release()
                await expect(log_row(page, "line 3 after")).to_have_count(1, timeout=T)
                await expect(status).to_have_attribute("data-status", "succeeded", timeout=T)
                await expect(log).to_have_attribute("data-connection", "ended", timeout=T)
                await page_shows_the_whole_log()
                await context.close()
            finally:
                await browser.close()
        assert not errors, f"JavaScript errors: {errors}"
    finally:
        fifo.close()
        await gate.stop()
        await pploy.close()
