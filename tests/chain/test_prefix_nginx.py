"""``pploy serve --prefix /deploy`` behind a stock nginx ``location /deploy/`` (issue 14): the
API, SSE and WebSocket streams line by line, the login redirect under the prefix, and a real
browser whose every request stays under ``/deploy/`` and succeeds."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from bench.procs import stop_process, tail, wait_port
from tests.chain.harness import Nginx
from tests.deploy.support import Fifo, make_remote
from tests.deploy.test_server_streams import LINES, gated_script, sse_events
from tests.helpers import CHROMIUM_ARGS, free_port, require_binary

pytestmark = pytest.mark.slow  # nginx and chromium

PREFIX = "/deploy"
# What an nginx user writes: the path passed on unchanged, the Host the browser used (pploy
# compares it with Origin), and the two headers any WebSocket proxying needs.
SITE = """\
map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
server {{
    listen 127.0.0.1:{port};
    location /deploy/ {{
        proxy_pass http://127.0.0.1:{upstream};
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
    }}
}}
"""


@dataclass
class Setup:
    url: str  # nginx, without the prefix
    fifo: Fifo
    remote: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    nginx_binary = require_binary("nginx")
    root = tmp_path_factory.mktemp("prefix")
    fifo = Fifo(root / "go")
    remote = make_remote(root, deploy_script=gated_script(fifo))
    port = free_port()
    conf = root / "pploy.yml"
    conf.write_text(json.dumps({"workdir": str(root / "work"), "users": ["alice", "bob"]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
    err = root / "pploy.err"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pploy", "serve", "--config", str(conf), "--port", str(port),
         "--prefix", PREFIX],
        stdout=subprocess.DEVNULL, stderr=open(err, "wb"), env=env,  # noqa: SIM115
    )  # fmt: skip
    nginx = None
    try:
        wait_port(port, proc, err)
        nginx_port = free_port()
        site = SITE.format(port=nginx_port, upstream=port)
        nginx = Nginx(nginx_binary, root / "nginx", site, nginx_port).start()
        yield Setup(f"http://127.0.0.1:{nginx_port}", fifo, remote)
    finally:
        fifo.close()
        if nginx is not None:
            nginx.stop()
        stop_process(proc)
        print(tail(err))


def session(user: str | None = "alice") -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        cookies={"user": user} if user else {}, timeout=aiohttp.ClientTimeout(total=30)
    )


async def api(client: aiohttp.ClientSession, method: str, url: str, body: object = None) -> dict:
    async with client.request(method, url, json=body) as resp:
        data = await resp.json()
        assert resp.status < 300, (url, resp.status, data)
        return data


async def ready_project(client: aiohttp.ClientSession, setup: Setup) -> str:
    """The project added (once) and its lock held by alice."""
    base = setup.url + PREFIX
    async with client.get(f"{base}/api/projects/testploy") as resp:
        if resp.status == 404:
            await api(client, "POST", f"{base}/api/projects", {"url": str(setup.remote)})
    await api(client, "POST", f"{base}/api/projects/testploy/lock", {"operation": "gain"})
    return "testploy"


async def test_api_and_sse_and_websocket_line_by_line_under_the_prefix(setup: Setup) -> None:
    base = setup.url + PREFIX
    async with session() as client:
        name = await ready_project(client, setup)
        status = await api(client, "GET", f"{base}/api/status")
        assert name in [p["name"] for p in status["projects"]]

        job = await api(client, "POST", f"{base}/api/projects/{name}/deploy", {"env": "staging"})
        text = ""
        async with client.get(f"{base}/api/jobs/{job['job']['id']}/events") as resp:
            assert resp.content_type == "text/event-stream"
            events = sse_events(resp.content)
            for i in range(1, LINES + 1):
                while f"line {i}" not in text:
                    event = await asyncio.wait_for(anext(events), 10)
                    text += json.loads(event["data"])
                assert f"line {i + 1}" not in text  # not written before the release
                await setup.fifo.release()
            async for event in events:
                if event["event"] == "status":
                    assert json.loads(event["data"])["status"] == "succeeded"
                    break

        job = await api(client, "POST", f"{base}/api/projects/{name}/deploy", {"env": "staging"})
        setup.fifo.close()  # the last job's reader is gone: reopen once this one's is there
        received = bytearray()
        async with client.ws_connect(f"{base}/api/jobs/{job['job']['id']}/ws") as ws:
            for i in range(1, LINES + 1):
                while f"line {i}".encode() not in received:
                    msg = await asyncio.wait_for(ws.receive(), 10)
                    assert msg.type == aiohttp.WSMsgType.BINARY, msg
                    received.extend(msg.data)
                assert f"line {i + 1}".encode() not in received
                await setup.fifo.release()
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    received.extend(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    assert json.loads(msg.data)["status"] == "succeeded"
        assert b"done" in received


async def test_anonymous_user_is_sent_to_the_login_under_the_prefix(setup: Setup) -> None:
    async with session(None) as client:
        url = f"{setup.url}{PREFIX}/projects/testploy"
        async with client.get(url, allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == f"{PREFIX}/login?next=/projects/testploy"
        async with client.get(f"{setup.url}{PREFIX}/login") as resp:
            assert resp.status == 200 and 'action="/deploy/login"' in await resp.text()


def test_browser_requests_all_stay_under_the_prefix(setup: Setup) -> None:
    chromium = require_binary("chromium")
    from playwright.sync_api import expect, sync_playwright

    async def a_job() -> int:
        async with session() as client:
            name = await ready_project(client, setup)
            base = setup.url + PREFIX
            body = await api(
                client, "POST", f"{base}/api/projects/{name}/deploy", {"env": "production"}
            )
            setup.fifo.close()  # reopened once this job's script reads it
            for _ in range(LINES):
                await setup.fifo.release()
            return int(body["job"]["id"])

    job_id = asyncio.run(a_job())
    requests: list[str] = []
    failures: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            # A live stream the page still holds is aborted when the test navigates on: that is
            # the browser leaving, not a failed request.
            page.on(
                "requestfailed",
                lambda r: (
                    "ERR_ABORTED" in (r.failure or "")
                    and "/events" in r.url
                    or failures.append(f"{r.url}: {r.failure}")
                ),
            )
            page.on(
                "response", lambda r: r.status >= 400 and failures.append(f"{r.url}: {r.status}")
            )
            page.on("websocket", lambda ws: requests.append(ws.url))
            page.goto(f"{setup.url}{PREFIX}/projects/testploy")  # → the login, under /deploy
            page.select_option("select[name=user]", "alice")
            # app.js submits the picker on change
            expect(page.locator("#lock-panel")).to_be_visible()
            page.goto(f"{setup.url}{PREFIX}/")
            page.click("a[href='/deploy/projects/testploy']")
            expect(page.locator("#lock-panel")).to_be_visible()
            page.click('#languages a[lang="ja"]')  # the switcher goes and comes back under it
            expect(page.locator("html")).to_have_attribute("lang", "ja")
            assert urlsplit(page.url).path == f"{PREFIX}/projects/testploy"
            page.click('#languages a[lang="en"]')
            expect(page.locator("html")).to_have_attribute("lang", "en")
            for transport in ("sse", "ws"):
                page.goto(f"{setup.url}{PREFIX}/jobs/{job_id}?transport={transport}")
                expect(page.locator("#log")).to_contain_text("done")
        finally:
            browser.close()
    paths = [urlsplit(u).path for u in requests]
    assert any(p.endswith("/events") for p in paths) and any(p.endswith("/ws") for p in paths)
    assert all(p.startswith(PREFIX + "/") for p in paths), paths
    assert not failures, failures
