"""`pploy up` behind nginx with TLS, as `pploy nginx-config` generates it for the documented
"office network + password" set-up (`--allow 127.0.0.1/32 --htpasswd FILE`): a real Chromium
signs in (gate, on loopback, believes the loopback proxy's `X-Forwarded-Proto`); API tokens
work from the allowed network with `pploy client` and the documented curl calls; a sign-in gate
refuses as cross-site says what it saw and which setting fixes it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.chain.harness import Certs, Nginx, shipped_site
from tests.chain.test_api_docs import command_blocks
from tests.chain.test_up import Up, login
from tests.helpers import CHROMIUM_ARGS, free_port, require_binary

pytestmark = pytest.mark.slow  # pploy up, nginx and chromium as processes

OFFICE_USER, OFFICE_PASSWORD = "ops", "office-secret"


def office_site(port: int, upstream: str, certs: Certs, htpasswd: Path) -> str:
    """`pploy nginx-config … --allow 127.0.0.1/32 --htpasswd FILE`, through the CLI's code."""
    return shipped_site(port, upstream, certs, allow=["127.0.0.1/32"], htpasswd=str(htpasswd))


@dataclass
class Stack:
    up: Up
    nginx: Nginx
    certs: Certs

    @property
    def url(self) -> str:
        return f"https://localhost:{self.nginx.port}/"


@pytest.fixture(scope="module")
def stack(
    nginx_binary: str, certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("up-behind-nginx")
    up = Up("--workdir", str(root / "stack"), "--port", str(free_port()))
    nginx = None
    try:
        gate = up.url().removeprefix("http://").rstrip("/")
        htpasswd = root / "htpasswd"
        htpasswd.write_text(f"{OFFICE_USER}:{{PLAIN}}{OFFICE_PASSWORD}\n")
        port = free_port()
        nginx = Nginx(nginx_binary, root / "nginx", office_site(port, gate, certs, htpasswd), port)
        nginx.start()
        yield Stack(up, nginx, certs)
    finally:
        if nginx is not None:
            nginx.stop()
        up.kill()


def test_chromium_signs_in_through_tls_nginx(stack: Stack, artifacts: Path) -> None:
    chromium = require_binary("chromium")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        page.set_default_timeout(20_000)
        try:
            page.goto(stack.url + "projects/demo")
            expect(page).to_have_url(re.compile(r"/login\?next="))
            page.fill("input[name=user]", "erin")
            page.click("button[type=submit]")
            # Signed in (the browser sent Origin: https://localhost:PORT, and gate knew it
            # serves https through the loopback proxy), and back on the page asked for.
            expect(page).to_have_url(re.compile(r"^https://localhost:\d+/projects/demo$"))
            expect(page.get_by_text("erin").first).to_be_visible()
            # And pploy's own forms work there too: the lock, taken and given back.
            page.click("#gain-lock")
            expect(page.locator("#lock-holder")).to_have_text("erin")
            page.click("#lock-panel button[value=release]")
            expect(page.locator("#lock-holder-none")).to_be_visible()
            page.screenshot(path=str(artifacts / "up-behind-nginx-signed-in.png"))
        finally:
            context.close()
            browser.close()


def test_cross_site_refusal_says_what_gate_saw_and_what_fixes_it(stack: Stack) -> None:
    async def main() -> None:
        base = stack.up.url()  # gate itself, plain HTTP on loopback
        async with aiohttp.ClientSession() as session:
            # A TLS front gate is not told about: Origin https, gate sees plain http.
            async with session.post(
                base + "login",
                data={"user": "mallory"},
                headers={"Origin": base.replace("http://", "https://").rstrip("/")},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 403
                text = await resp.text()
            https_origin = base.replace("http://", "https://").rstrip("/")
            assert "Cross-site sign-in is not allowed" in text
            assert f"Origin {https_origin}" in text
            assert f"gate serves {base.rstrip('/')}" in text
            assert "trusted_proxies" in text
            assert "_gate_session" not in resp.headers.get("Set-Cookie", "")

            # Another site's form is refused, whatever the loopback proxy claims for Host:
            # the scheme is believed from a loopback peer, never the host.
            async with session.post(
                base + "login",
                data={"user": "mallory"},
                headers={
                    "Origin": "https://evil.example",
                    "X-Forwarded-Proto": "https",
                    "X-Forwarded-Host": "evil.example",
                },
                allow_redirects=False,
            ) as resp:
                assert resp.status == 403
                assert "Origin https://evil.example" in await resp.text()
                assert "_gate_session" not in resp.headers.get("Set-Cookie", "")

    asyncio.run(main())


async def office_token(stack: Stack) -> str:
    """alice's API token, made with her session through nginx from the office network."""
    ssl = stack.certs.client_context()
    connector = aiohttp.TCPConnector(ssl=ssl)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        cookie = {"Cookie": await login(session, stack.url, "alice")}
        async with session.post(stack.url + "api/tokens", json={"name": "ci"}, headers=cookie) as r:
            assert r.status == 201, await r.text()
            return str((await r.json())["token"])


def test_tokens_pass_from_the_office_network(stack: Stack, tmp_path: Path) -> None:
    curl = require_binary("curl")
    token = asyncio.run(office_token(stack))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
    env.update(PPLOY_URL=stack.url, PPLOY_TOKEN=token, SSL_CERT_FILE=str(stack.certs.cafile))
    client = subprocess.run(
        [sys.executable, "-m", "pploy", "client", "status"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert client.returncode == 0, client.stderr
    assert "signed in as alice" in client.stdout and "demo:" in client.stdout

    # docs/api.md's curl calls with a token, as written, from the office network (127.0.0.1):
    # no password needed. (Not the block that makes a token with pploy up's own address.)
    blocks = [
        b.text for b in command_blocks()
        if b.document == "docs/api.md" and "$PPLOY_TOKEN" in b.text and "curl" in b.text
        and "cookies.txt" not in b.text and "127.0.0.1" not in b.text
    ]  # fmt: skip
    assert len(blocks) >= 3
    got = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(blocks)],
        env={**env, "PPLOY_URL": stack.url.rstrip("/"), "CURL_CA_BUNDLE": str(stack.certs.cafile)},
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert got.returncode == 0, (got.stdout[-3000:], got.stderr[-3000:])
    assert '"user": "alice"' in got.stdout  # status
    assert "git checkout" in got.stdout  # the checkout's log, followed
    assert "Deploying demo to staging as alice" in got.stdout  # the one-shot deploy
    assert "\nsucceeded\n" in got.stdout and '"lock": null' in got.stdout

    # From outside it (127.0.0.2) nginx wants the office password first, token or not; with
    # the password the request reaches gate, which sees no credential at all (not alice).
    outside = [curl, "--interface", "127.0.0.2", "--cacert", str(stack.certs.cafile), "-s"]
    for extra in ([], ["-H", f"Authorization: Bearer {token}"]):
        got = subprocess.run(
            [*outside, "-o", "/dev/null", "-w", "%{http_code} %header{www-authenticate}",
             *extra, stack.url + "api/status"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert got.stdout == '401 Basic realm="pploy"', (extra, got.stdout, got.stderr)
    got = subprocess.run(
        [*outside, "-u", f"{OFFICE_USER}:{OFFICE_PASSWORD}", "-w", " %{http_code}",
         stack.url + "api/status"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert got.stdout == '{"error": "unauthenticated", "login": "/login"} 401', got.stdout
