"""People's names as directories hold them ("Taro Yamada", "山田", LDAP cn values) through a
real pploy (issue 14): the standalone picker and its cookie, the proxy header (raw UTF-8),
gate's signed assertion, ``DEPLOY_USER`` and pploy's log lines; control characters are still
refused at each door."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from pploy import log
from pploy.deploy.config import ConfigError, load_config
from pploy.identity import Identity
from tests.deploy.support import Pploy, make_remote, start_pploy
from tests.deploy.test_server_trust import gate_mode

TARO, YAMADA = "Taro Yamada", "山田"
SCRIPT = '#!/bin/sh\nprintf "deployed by [%s]\\n" "$DEPLOY_USER"\n'


def test_config_users_take_such_names_and_refuse_control_characters() -> None:
    config = load_config(None, {"users": [TARO, YAMADA]}, environ={})
    assert config.users == [TARO, YAMADA]
    for bad in ("Taro\x07", "Taro\nYamada", "\u202eadmin", " Taro"):
        with pytest.raises(ConfigError, match="users"):
            load_config(None, {"users": [bad]}, environ={})


async def sign_in(pploy: Pploy, name: str) -> None:
    """Through the picker form, as a browser does (no preset cookie)."""
    client = pploy.client(None)
    async with client.get(pploy.url("/login")) as resp:
        html = await resp.text()
    assert f'value="{name}"' in html
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token
    async with client.post(
        pploy.url("/login"), data={"user": name, "csrf_token": token.group(1)},
        allow_redirects=False,
    ) as resp:  # fmt: skip
        assert resp.status == 303, await resp.text()
        raw = resp.headers["Set-Cookie"]
    value = re.match(r"user=([^;]*);", raw)
    assert value and value.group(1).isascii() and " " not in value.group(1), raw
    assert unquote(value.group(1)) == name


async def test_standalone_names_with_spaces_and_kanji_deploy(tmp_path: Path) -> None:
    stream = io.StringIO()
    log.setup("info", stream=stream)
    pploy = await start_pploy(tmp_path / "w", users=[TARO, YAMADA])
    try:
        for name in (TARO, YAMADA):
            await sign_in(pploy, name)
            async with pploy.client(None).get(pploy.url("/api/status")) as resp:
                assert (await resp.json())["user"] == name
            pploy.client(None).cookie_jar.clear()
        # The cookie as the form set it signs YAMADA in; DEPLOY_USER and the log carry it.
        await sign_in(pploy, YAMADA)
        anon = pploy.client(None)
        name = "testploy"
        async with anon.post(
            pploy.url("/api/projects"),
            json={"url": str(make_remote(tmp_path, deploy_script=SCRIPT))},
        ) as resp:
            assert resp.status == 201
        async with anon.post(
            pploy.url(f"/api/projects/{name}/lock"), json={"operation": "gain"}
        ) as resp:
            assert (await resp.json())["lock"]["user"] == YAMADA
        async with anon.post(pploy.url(f"/{name}/deploy"), params={"env": "staging"}) as resp:
            assert "deployed by [山田]" in (await resp.read()).decode()
        assert pploy.services.store.list_jobs(name)[0].user == YAMADA
    finally:
        await pploy.close()
        log.setup("info")
    lines = [line for line in stream.getvalue().splitlines() if "event=lock.gained" in line
             or "event=job.start" in line]  # fmt: skip
    assert lines and all("user=山田" in line for line in lines), lines
    assert 'user="Taro Yamada"' in stream.getvalue()  # quoted: the line stays one field each


async def raw_status(pploy: Pploy, user: str) -> int:
    """The status of ``GET /api/status`` with ``user`` as raw UTF-8 header bytes (aiohttp's
    client refuses to send control characters; an attacker's client does not)."""
    reader, writer = await asyncio.open_connection(pploy.server.host, pploy.server.port)
    writer.write(
        b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + b"X-Forwarded-User: "
        + user.encode()
        + b"\r\n\r\n"
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


async def test_proxy_header_in_utf8_and_control_characters_refused(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "w", **{"auth.mode": "proxy"})
    try:
        for name in (TARO, YAMADA):
            headers = {"X-Forwarded-User": name}
            async with pploy.client(None).get(pploy.url("/api/status"), headers=headers) as resp:
                assert (await resp.json())["user"] == name
        for bad in ("Taro\x01", "山田\x7f", "Taro\u2028Yamada"):
            assert await raw_status(pploy, bad) in (400, 401), bad  # the parser or pploy
        assert await raw_status(pploy, YAMADA) == 200  # the raw path itself works
    finally:
        await pploy.close()


async def test_gate_assertion_carries_such_names(tmp_path: Path) -> None:
    pploy, signer = await gate_mode(tmp_path)
    try:
        for name, status in ((YAMADA, 200), (TARO, 200), ("Taro\x00", 401), ("\u202eadmin", 401)):
            headers = {"X-Gate-Assertion": signer.sign(Identity(name, None))}
            async with pploy.client(None).get(pploy.url("/api/status"), headers=headers) as resp:
                assert resp.status == status, name
                if status == 200:
                    assert (await resp.json())["user"] == name
    finally:
        await pploy.close()
