"""Hostile input at pploy's edge (issue 11): malformed JSON bodies on every route that reads
one, and projects whose names start like a public path. Each against a real server."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from pploy.deploy.web.security import SAFE_METHODS
from tests.deploy.support import Fifo, Pploy, make_remote, start_pploy
from tests.reliability.rawhttp import raw_request, status_of

MALFORMED = [
    ("100,000 [", b"[" * 100_000),
    ("100,000 nested objects", b'{"a":' * 100_000),
    ("a 5,000-digit integer", b'{"url": ' + b"7" * 5000 + b', "env": "staging"}'),
    (
        "a lone surrogate",
        b'{"url": "\\ud800", "env": "\\ud800", "ref": "\\ud800", "operation": "x"}',
    ),
    ("a lone surrogate as a key", b'{"\\udc00": 1}'),
    ("invalid UTF-8", b'{"url": "\xff\xfe\xc3\x28"}'),
    ("a UTF-16 body", '{"env": "staging"}'.encode("utf-16")),
    ("NaN", b'{"env": NaN}'),
    ("a list", b'["env", "staging"]'),
    ("a string", b'"staging"'),
    ("null", b"null"),
    ("truncated", b'{"env": "stag'),
    ("trailing garbage", b'{"env": "staging"} x'),
]


@pytest.fixture
async def pploy(tmp_path: Path):
    server = await start_pploy(tmp_path / "work")
    name = await server.add_project(make_remote(tmp_path))
    await server.gain(name)
    yield server
    await server.close()


def json_routes(pploy: Pploy) -> list[str]:
    """Every state-changing route that takes a JSON body, from the router itself."""
    paths = []
    for resource in pploy.server.app.router.resources():
        template = resource.canonical
        if not (template.startswith("/api/") or template.startswith("/{project}/")):
            continue
        for route in resource:
            if route.method in SAFE_METHODS or route.method in ("*", "DELETE"):
                continue
            paths.append(
                template.replace("{name}", "testploy")
                .replace("{project}", "testploy")
                .replace("{job_id}", "1")
            )
    return paths


@pytest.mark.parametrize(("case", "body"), MALFORMED, ids=[case for case, _ in MALFORMED])
async def test_malformed_json_bodies_get_400_with_a_json_error(
    pploy: Pploy, case: str, body: bytes
) -> None:
    paths = json_routes(pploy)
    assert len(paths) >= 7, paths  # projects, lock, checkout, deploy, cancel, two one-shots
    for path in paths:
        async with pploy.client("alice").post(
            pploy.url(path),
            data=body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        ) as resp:
            assert resp.status == 400, (case, path, resp.status, await resp.text())
            answer = await resp.json()
            assert set(answer) == {"error"} and "body" in answer["error"], (case, path, answer)
    assert [p.name for p in pploy.services.projects.list()] == ["testploy"]
    assert pploy.services.store.list_jobs() == []
    async with pploy.client().get(pploy.url("/api/status")) as resp:
        assert resp.status == 200  # still serving


async def test_websocket_commands_go_through_the_same_parser(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "go")
    script = f"#!/bin/sh\necho running\n{fifo.script_open()}\n{fifo.wait_cmd}\n"
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        job = await pploy.deploy(name)  # runs until released: the socket stays open
        async with pploy.client("bob").ws_connect(pploy.url(f"/api/jobs/{job}/ws")) as ws:
            for command in ("[" * 60_000, '{"action": "\\ud800"}', "1" * 5000, "[]"):
                await ws.send_str(command)
                while (msg := await ws.receive(timeout=10)).type != aiohttp.WSMsgType.TEXT:
                    assert msg.type == aiohttp.WSMsgType.BINARY, msg  # log bytes
                assert json.loads(msg.data) == {"error": "commands are JSON objects"}, command
        assert pploy.services.jobs.get(job).status == "running"
        await fifo.release()
        assert (await pploy.wait_job(job))["status"] == "succeeded"
    finally:
        fifo.close()
        await pploy.close()


# -- public paths are whole paths ------------------------------------------------------------

LOOKALIKES = ["pingtest", "ping", "login-svc", "login", "static-site", "favicon.ico-x", "static"]


@pytest.fixture
async def lookalikes(tmp_path: Path):
    """Projects named like public paths, each locked by alice."""
    server = await start_pploy(tmp_path / "work")
    for name in LOOKALIKES:
        await server.add_project(make_remote(tmp_path, name))
        await server.gain(name)
    yield server
    await server.close()


@pytest.mark.parametrize("kind", ["deploy", "checkout"])
async def test_projects_named_like_public_paths_still_need_an_identity(
    lookalikes: Pploy, kind: str
) -> None:
    pploy = lookalikes
    params = {"env": "staging"} if kind == "deploy" else {"ref": "main"}
    for name in LOOKALIKES:
        async with pploy.client(None).post(
            pploy.url(f"/{name}/{kind}"), params=params, headers={"Accept": "application/json"}
        ) as resp:
            body = await resp.text()
            assert resp.status == 401, (name, resp.status, body)
            # the refusal tells an anonymous caller nothing about the lock
            assert "alice" not in body and not re.search(r"\d+ ?(min|s\b)", body), body
    assert pploy.services.store.list_jobs() == []


@pytest.mark.parametrize(
    "path",
    [
        "/static/../pingtest/deploy",
        "/static/%2e%2e/pingtest/deploy",
        "/static/..%2fpingtest/deploy",
        "//pingtest/deploy",
        "/ping/../pingtest/deploy",
    ],
)
async def test_dot_segments_do_not_borrow_a_public_prefix(lookalikes: Pploy, path: str) -> None:
    port = lookalikes.server.port
    request = (
        f"POST {path}?env=staging HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode()
    status = status_of(await raw_request(port, request))
    assert status in (401, 404), (path, status)
    assert lookalikes.services.store.list_jobs() == []


async def test_public_paths_stay_public(lookalikes: Pploy) -> None:
    anon = lookalikes.client(None)
    for path in ("/ping", "/login", "/static/style.css", "/static/logview.js"):
        async with anon.get(lookalikes.url(path), allow_redirects=False) as resp:
            assert resp.status in (200, 303), path  # /login redirects only outside standalone


# -- store errors ----------------------------------------------------------------------------


async def test_a_store_error_is_a_json_503_and_pploy_recovers(tmp_path: Path, caplog) -> None:
    """Another process holds pploy.db's write lock (a backup tool, a second pploy, an admin's
    sqlite3 shell): a write fails with sqlite's "database is locked"; the answer is JSON 503
    naming the database (the reason as a flash message for a browser form), logged; once
    released, all works."""
    pploy = await start_pploy(tmp_path / "work")
    other = sqlite3.connect(tmp_path / "work" / "pploy.db", isolation_level=None)
    try:
        name = await pploy.add_project(make_remote(tmp_path))
        # Fail fast instead of after the shipped 5 s busy wait (same error, same path).
        pploy.services.store.db.execute("PRAGMA busy_timeout=50")
        other.execute("BEGIN EXCLUSIVE")
        status, body = await pploy.api(
            "POST", f"/api/projects/{name}/lock", "alice", {"operation": "gain"}
        )
        assert status == 503, body
        assert body == {"error": "pploy's database is unavailable: database is locked"}
        async with pploy.client("alice").post(
            pploy.url(f"/projects/{name}/lock"),
            data={"operation": "gain", "csrf_token": "t"},
            cookies={"csrf": "t"},
            headers={"Accept": "text/html"},
            allow_redirects=False,
        ) as resp:
            # A browser's form goes back to the project page with the reason as the flash.
            assert resp.status == 303, resp.status
            assert "database is locked" in resp.cookies["flash"].value
        assert "event=store.error" in caplog.text and "database is locked" in caplog.text
        other.execute("ROLLBACK")
        await pploy.gain(name)  # recovered: no restart needed
        assert pploy.services.locks.get(name).user == "alice"
    finally:
        other.close()
        await pploy.close()
