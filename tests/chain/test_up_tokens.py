"""Issue 13's "done when", under `pploy up` as the README starts it: alice makes an API token
with her gate session; a client with no cookies adds a project, gains the lock, checks out,
deploys and follows the log through gate as alice; the token is nowhere in the workdir in
clear; revoked and garbage tokens get 401 JSON."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.chain.test_up import Up, login
from tests.deploy.support import make_remote
from tests.helpers import free_port

pytestmark = pytest.mark.slow  # the whole stack as processes

SCRIPT = (
    '#!/bin/sh\nprintf \'\\033[35mdeploying %s as %s\\033[0m\\n\' "$DEPLOY_ENV" "$DEPLOY_USER"\n'
)


async def run_client(url: str, token: str, *args: str) -> tuple[int, bytes, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
    env.update(PPLOY_URL=url, PPLOY_TOKEN=token)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pploy", "client", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out, err.decode()


def files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                pass
    return found


async def test_a_token_drives_the_whole_stack_through_gate(tmp_path: Path) -> None:
    workdir = tmp_path / "stack"
    remote = make_remote(tmp_path, name="webapp", deploy_script=SCRIPT)
    up = Up("--workdir", str(workdir), "--port", str(free_port()))
    try:
        url = up.url()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            cookie = {"Cookie": await login(session, url, "alice")}
            async with session.post(
                url + "api/tokens", json={"name": "ci"}, headers=cookie
            ) as resp:
                assert resp.status == 201, await resp.text()
                made = await resp.json()
            token = made["token"]
            # The tokens page works through gate too (the UI's way to make one).
            async with session.get(url + "tokens", headers=cookie) as resp:
                assert resp.status == 200 and "ci" in await resp.text()

            # No cookies from here on: the token is all the client has.
            code, out, err = await run_client(url, token, "add", str(remote))
            assert code == 0 and out == b"added webapp\n", err
            code, out, err = await run_client(url, token, "lock", "webapp", "gain")
            assert code == 0 and b"locked by alice" in out, err
            code, out, err = await run_client(url, token, "checkout", "webapp", "main")
            assert code == 0, err
            code, out, err = await run_client(url, token, "deploy", "webapp", "staging")
            assert code == 0, err
            assert b"\x1b[35mdeploying staging as alice\x1b[0m" in out

            auth = {"Authorization": f"Bearer {token}"}
            async with session.get(url + "api/projects/webapp/jobs", headers=auth) as resp:
                jobs = (await resp.json())["jobs"]
            assert [(j["kind"], j["user"], j["token"], j["status"]) for j in jobs] == [
                ("deploy", "alice", "ci", "succeeded"),
                ("checkout", "alice", "ci", "succeeded"),
            ]
            # A session on the same request does not change who the token is.
            dora = {"Cookie": await login(session, url, "dora")}
            async with session.get(url + "api/status", headers={**auth, **dora}) as resp:
                assert (await resp.json())["user"] == "alice"

            # Stored hashed: the token is nowhere in the workdir in clear.
            assert files_containing(workdir, token.encode()) == []
            assert files_containing(workdir, token.removeprefix("pploy_").encode()) == []

            # Garbage and revoked tokens: 401 JSON, also where a browser would get a login.
            for headers in (
                {"Authorization": "Bearer pploy_garbage"},
                {"Authorization": "Bearer x"},
            ):
                for path, accept in (("api/status", "*/*"), ("", "text/html")):
                    async with session.get(
                        url + path, headers={**headers, "Accept": accept}, allow_redirects=False
                    ) as resp:
                        assert resp.status == 401, (path, await resp.text())
                        assert resp.content_type == "application/json"
            async with session.delete(url + f"api/tokens/{made['id']}", headers=cookie) as resp:
                assert resp.status == 200, await resp.text()
            async with session.get(url + "api/status", headers=auth) as resp:
                assert resp.status == 401 and "revoked" in (await resp.json())["error"]
            code, out, err = await run_client(url, token, "status")
            assert code == 3 and "HTTP 401" in err and "revoked" in err
        assert up.interrupt() == 0, up.stderr[-3000:]
    finally:
        up.kill()
