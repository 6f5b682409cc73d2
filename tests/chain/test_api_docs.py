"""docs/api.md's curl examples, run as written against the stack the README starts
(`pploy up`), with the token made the way the docs say (a signed-in session)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.chain.test_up import Up, login
from tests.helpers import free_port, require_binary

pytestmark = pytest.mark.slow  # the whole stack as processes

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- These commands are run as written by tests/chain/test_api_docs.py"


def documented_commands() -> str:
    text = (ROOT / "docs/api.md").read_text()
    after = text.split(MARKER, 1)[1]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match, "the tested block follows the marker"
    return match.group(1)


async def test_the_curl_examples_work_against_pploy_up(tmp_path: Path) -> None:
    require_binary("curl")
    commands = documented_commands()
    assert "$PPLOY_TOKEN" in commands and "/demo/deploy" in commands
    up = Up("--workdir", str(tmp_path / "stack"), "--port", str(free_port()))
    try:
        url = up.url()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            cookie = {"Cookie": await login(session, url, "alice")}
            async with session.post(url + "api/tokens", json={"name": "docs"}, headers=cookie) as r:
                assert r.status == 201, await r.text()
                token = (await r.json())["token"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
        env.update(PPLOY_URL=url.rstrip("/"), PPLOY_TOKEN=token)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", commands],
            env=env, capture_output=True, timeout=120,
        )  # fmt: skip
        out = result.stdout.decode(errors="replace")
        assert result.returncode == 0, (out[-3000:], result.stderr.decode()[-3000:])
        assert '"user": "alice"' in out  # status
        assert "git checkout" in out  # the checkout's log, followed
        assert "Deploying demo to staging as alice" in out  # the one-shot deploy's output
        assert '"lock": null' in out  # released
        assert '"name": "docs"' in out and token not in out  # tokens listed without secrets
        assert up.interrupt() == 0
    finally:
        up.kill()
