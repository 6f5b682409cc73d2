"""Hostile requests against a real pploy: every state-changing route, found from the router
itself (a route added later is tried too), refused for the logged-out, for a user who does not
hold the lock, without a CSRF token, from another origin and through WebSocket upgrades; huge
and numerous headers; malformed WebSocket frames. After each attack the state is unchanged
and the server answers.

Each test that tries to change state gets a server of its own (``world``), so an attack that
gets through fails its own test, not every test after it; the read-only probes (the route list,
headers on GET /api/status) share one (``shared_world``)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from pploy.deploy.web.security import SAFE_METHODS
from tests.deploy.support import Fifo, make_remote, start_pploy
from tests.reliability.rawhttp import (
    frame,
    raw_request,
    raw_websocket,
    read_close,
    status_of,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROJECT = "testploy"
# Routes anyone logged in may use whatever the lock: adding a project, logging in or out.
OPEN_TO_ALL = {("POST", "/api/projects"), ("POST", "/projects"), ("POST", "/login"),
               ("POST", "/logout"), ("POST", "/_create"), ("POST", "/_/create"),
               ("POST", "/api/tokens"), ("POST", "/tokens"),
               # freezes are admins' (permissions.admins), and with none configured everyone
               # is one: tests/deploy/test_freezes.py attacks them as a non-admin
               ("POST", "/api/freezes"), ("POST", "/freezes"), ("DELETE", "/api/freezes/{name}"),
               ("POST", "/freezes/{name}/end")}  # fmt: skip
# A user's own API tokens: another user's revoke finds nothing of theirs (404, or the form's
# redirect with the refusal) and changes nothing.
OWNER_ONLY = {("DELETE", "/api/tokens/{token_id}"), ("POST", "/tokens/{token_id}/revoke")}


@dataclass
class Route:
    method: str
    template: str
    path: str

    @property
    def api(self) -> bool:
        return self.template.startswith("/api/")

    @property
    def one_shot(self) -> bool:
        return self.template.startswith("/{project}/")

    @property
    def form(self) -> bool:
        return not self.api and not self.one_shot

    def fields(self) -> dict[str, str]:
        """The parameters a legitimate request to this route would carry."""
        tail = self.template.rsplit("/", 1)[-1]
        return {
            "lock": {"operation": "release"},
            "checkout": {"ref": "main"},
            "deploy": {"env": "staging"},
            "projects": {"url": "/nonexistent/x.git"},
            "login": {"user": "bob", "next": "/"},
        }.get(tail, {})


class World:
    def __init__(self, pploy, job: int, fifo: Fifo) -> None:
        self.pploy = pploy
        self.job = job
        self.fifo = fifo
        # alice's API token: every route that revokes one has a real one to aim at
        self.token_id = pploy.services.store.add_token(
            user="alice", email=None, name="hostile", digest="0" * 64, expires_at=None
        ).id
        self.routes = unsafe_routes(pploy.server.app, job, self.token_id)

    def snapshot(self) -> Any:
        svc = self.pploy.services
        lock = svc.locks.get(PROJECT)
        return (
            [(j.id, j.status, j.cancelled_by) for j in svc.store.list_jobs(limit=100)],
            (lock.user, lock.expires_at) if lock else None,
            [p.name for p in svc.projects.list()],
            sorted(svc.jobs.running),
            [(t.id, t.revoked_at) for t in svc.store.list_tokens("alice")],
        )

    async def token(self, user: str | None) -> str:
        async with self.pploy.client(user).get(self.pploy.url("/login")) as resp:
            page = await resp.text()
        return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)

    async def send(
        self, route: Route, user: str | None, *, token: str | None = None,
        headers: dict[str, str] | None = None, as_form: bool | None = None,
    ) -> tuple[int, str]:  # fmt: skip
        """Send ``route`` the way its legitimate client would (JSON for the API, a form for
        pages, the query string for the one-shot endpoints), from ``user``."""
        fields = route.fields()
        kwargs: dict[str, Any] = {"allow_redirects": False, "headers": headers or {}}
        url = self.pploy.url(route.path)
        form = route.form if as_form is None else as_form
        if route.one_shot and not as_form:
            kwargs["params"] = fields
        elif form:
            kwargs["data"] = {**fields, **({"csrf_token": token} if token else {})}
        else:
            kwargs["json"] = fields
        async with self.pploy.client(user).request(route.method, url, **kwargs) as resp:
            body = await resp.text()
            if resp.status == 303 and resp.cookies.get("flash"):
                body = resp.cookies["flash"].value
            return resp.status, body


def unsafe_routes(app, job: int, token_id: int) -> list[Route]:
    routes = []
    for resource in app.router.resources():
        template = resource.canonical
        for route in resource:
            if route.method in SAFE_METHODS or route.method == "*":
                continue
            path = (
                template.replace("{name}", PROJECT)
                .replace("{project}", PROJECT)
                .replace("{job_id}", str(job))
                .replace("{token_id}", str(token_id))
            )
            assert "{" not in path, f"the test does not know how to fill {template}"
            routes.append(Route(route.method, template, path))
    return routes


@asynccontextmanager
async def running_world(tmp: Path) -> AsyncIterator[World]:
    """A pploy with one project whose lock alice holds and whose deploy runs (blocked on a
    fifo) all along: every state-changing route then has something to change."""
    fifo = Fifo(tmp / "go")
    script = f"#!/bin/sh\necho running\n{fifo.script_open()}\n{fifo.wait_cmd}\n"
    pploy = await start_pploy(tmp / "work")
    try:
        await pploy.add_project(make_remote(tmp, PROJECT, deploy_script=script))
        await pploy.gain(PROJECT, "alice")
        job = await pploy.deploy(PROJECT)
        yield World(pploy, job, fifo)
        running = pploy.services.jobs.running.get(job)
        if running is not None and not running.cancelled_by:  # an attack may have cancelled it
            await fifo.release()
        await pploy.wait_job(job)
    finally:
        fifo.close()
        await pploy.close()


@pytest_asyncio.fixture(loop_scope="module")
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """A server of this test's own, for a test that tries to change state."""
    async with running_world(tmp_path) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """One server for the read-only probes."""
    async with running_world(tmp_path_factory.mktemp("hostile")) as running:
        yield running


async def test_the_router_has_the_routes_we_expect(shared_world):
    found = {(r.method, r.template) for r in shared_world.routes}
    expected = {
        ("POST", "/api/projects"), ("DELETE", "/api/projects/{name}"),
        ("POST", "/api/projects/{name}/lock"), ("POST", "/api/projects/{name}/checkout"),
        ("POST", "/api/projects/{name}/deploy"), ("POST", "/api/jobs/{job_id}/cancel"),
        ("POST", "/projects"), ("POST", "/login"), ("POST", "/logout"),
        ("POST", "/projects/{name}/lock"), ("POST", "/projects/{name}/checkout"),
        ("POST", "/projects/{name}/deploy"), ("POST", "/projects/{name}/remove"),
        ("POST", "/jobs/{job_id}/cancel"), ("POST", "/{project}/deploy"),
        ("POST", "/{project}/checkout"),
    }  # fmt: skip
    assert expected <= found, expected - found
    # A new state-changing route is covered by every test below automatically.
    assert len(found) >= len(expected)


async def test_logged_out_users_change_nothing(world):
    before = world.snapshot()
    token = await world.token(None)
    for route in world.routes:
        if route.template == "/login":
            continue
        status, body = await world.send(route, None, token=token)
        assert status == 401, (route, status, body)
        assert world.snapshot() == before, route


async def test_a_user_without_the_lock_changes_nothing(world):
    before = world.snapshot()
    token = await world.token("bob")
    for route in world.routes:
        if (route.method, route.template) in OPEN_TO_ALL:
            continue
        if (route.method, route.template) in OWNER_ONLY:
            status, body = await world.send(route, "bob", token=token)
            assert status in ((303,) if route.form else (404,)), (route, status, body)
            assert world.snapshot() == before, route
            continue
        operations = ["gain", "extend", "release"] if route.template.endswith("/lock") else [None]
        for op in operations:
            if op:
                route.fields = lambda op=op: {"operation": op}  # type: ignore[method-assign]
            status, body = await world.send(route, "bob", token=token)
            # Forms answer with a redirect carrying the refusal as a flash message.
            assert status in ((303,) if route.form else (403, 409)), (route, op, status, body)
            # (removing is refused first because alice's job is running)
            assert "alice" in body or "lock" in body or "running" in body, (route, op, body)
            assert world.snapshot() == before, (route, op)


async def test_forms_without_the_right_csrf_token_are_refused(world):
    before = world.snapshot()
    alice = await world.token("alice")
    bob = await world.token("bob")
    for route in world.routes:
        if not route.form:
            continue
        for token in (None, "", "wrong", bob if bob != alice else "x" + bob):
            status, body = await world.send(route, "alice", token=token)
            assert status == 403 and "CSRF" in body, (route, token, status, body)
        assert world.snapshot() == before, route


async def test_one_shot_routes_posted_as_forms_need_the_csrf_token(world):
    """A foreign page's form to ``/{project}/deploy`` carries alice's cookie: like every other
    form it needs her token (a script's bodyless POST is covered by the Origin check)."""
    before = world.snapshot()
    bob = await world.token("bob")
    for route in world.routes:
        if not route.one_shot:
            continue
        for token in (None, "", "wrong", bob):
            status, body = await world.send(route, "alice", token=token, as_form=True)
            assert status == 403 and "CSRF" in body, (route, token, status, body)
        assert world.snapshot() == before, route


async def test_api_routes_refuse_what_a_cross_site_form_can_send(world):
    """A foreign page can post a form (urlencoded, multipart, text/plain) but not JSON."""
    before = world.snapshot()
    for route in world.routes:
        if not route.api or route.method != "POST":  # forms can only GET and POST
            continue
        for content_type in (
            "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain",
        ):  # fmt: skip
            url = world.pploy.url(route.path)
            async with world.pploy.client("alice").request(
                route.method, url, data=json.dumps(route.fields()),
                headers={"Content-Type": content_type},
            ) as resp:  # fmt: skip
                assert resp.status in (400, 415), (route, content_type, resp.status)
        assert world.snapshot() == before, route


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1.evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        # X-Forwarded-Host is not believed from an untrusted peer (standalone mode)
        {"Origin": "http://evil.example", "X-Forwarded-Host": "evil.example"},
    ],
)
async def test_cross_origin_requests_are_refused_on_every_route(world, headers):
    before = world.snapshot()
    token = await world.token("alice")
    for route in world.routes:
        status, body = await world.send(route, "alice", token=token, headers=headers)
        assert status == 403 and "cross-site" in body, (route, headers, status, body)
        assert world.snapshot() == before, route


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "localhost.evil.example"])
async def test_a_spoofed_host_is_refused_on_every_route(world, host):
    before = world.snapshot()
    token = await world.token("alice")
    for route in world.routes:
        status, body = await world.send(route, "alice", token=token, headers={"Host": host})
        assert status == 400 and "does not serve the host" in body, (route, status, body)
    async with world.pploy.client("alice").get(
        world.pploy.url(f"/api/jobs/{world.job}/log"), headers={"Host": host}
    ) as resp:
        assert resp.status == 400  # reads too: a rebound page must not read logs either
    assert world.snapshot() == before


async def test_websocket_upgrades_change_nothing(world):
    before = world.snapshot()
    pploy = world.pploy
    # An upgrade on a state-changing path is not a way in (a GET there reads at most).
    for route in world.routes:
        for user in (None, "bob", "alice"):
            try:
                async with pploy.client(user).ws_connect(pploy.url(route.path)):
                    raise AssertionError(f"{route} accepted a WebSocket")
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status != 101, route
            assert world.snapshot() == before, (route, user)
    ws_url = pploy.url(f"/api/jobs/{world.job}/ws")
    for user, headers, code in [
        (None, {}, 401),
        ("alice", {"Origin": "http://evil.example"}, 403),
        ("alice", {"Origin": "null"}, 403),
        ("bob", {"Origin": "https://evil.example"}, 403),
    ]:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            async with pploy.client(user).ws_connect(ws_url, headers=headers):
                pass
        assert info.value.status == code, (user, headers)
    # Commands over an accepted socket: only the holder's cancel would act.
    async with pploy.client("bob").ws_connect(ws_url) as ws:
        for command in (
            {"action": "cancel"}, {"action": "deploy", "env": "production"},
            {"action": "release"}, ["cancel"], "cancel",
        ):  # fmt: skip
            await ws.send_str(json.dumps(command))
            while True:
                msg = await asyncio.wait_for(ws.receive(), 10)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    assert "error" in json.loads(msg.data), (command, msg.data)
                    break
        await ws.send_str("{not json")
        while (msg := await asyncio.wait_for(ws.receive(), 10)).type != aiohttp.WSMsgType.TEXT:
            pass
        assert "error" in json.loads(msg.data)
    assert world.snapshot() == before


def big_headers_cases() -> list[tuple[str, bytes]]:
    def request(*headers: str) -> bytes:
        lines = ["GET /api/status HTTP/1.1", "Host: 127.0.0.1", "Cookie: user=alice", *headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    return [
        ("one 100 KB header", request("X-Big: " + "a" * 100_000)),
        ("one 16 KB header", request("X-Big: " + "a" * 16_000)),
        ("500 headers", request(*(f"X-H{i}: {i}" for i in range(500)))),
        ("64 KB cookie", request("Cookie: " + "c=" + "x" * 65_000)),
        ("1000 cookies", request("Cookie: " + "; ".join(f"c{i}=v{i}" for i in range(1000)))),
        ("100 Cookie headers", request(*(f"Cookie: c{i}={'v' * 70}" for i in range(100)))),
        ("100 KB request line", ("GET /" + "a" * 100_000 + " HTTP/1.1\r\n\r\n").encode()),
        ("a header without a colon", request("no colon here")),
        ("NUL in a header", request("X-Nul: a\x00b")),
        ("obsolete line folding", request("X-Fold: a", " continued")),
    ]


@pytest.mark.parametrize(("case", "data"), big_headers_cases(), ids=lambda v: str(v)[:30])
async def test_huge_numerous_and_broken_headers_get_a_4xx(shared_world, case, data):
    world = shared_world
    port = world.pploy.server.port
    head = await raw_request(port, data)
    status = status_of(head)
    if case in ("100 Cookie headers", "1000 cookies"):
        assert status in (200, 400, 431), (case, head[:200])
    else:
        assert 400 <= status < 500, (case, head[:200])
    async with world.pploy.client().get(world.pploy.url("/ping")) as resp:
        assert resp.status == 200
    assert world.pploy.services.jobs.running  # alice's deploy is untouched


MALFORMED = [
    # aiohttp does not insist on masking (RFC 6455 says it should): the frame is read as an
    # ordinary command and answered with an error, which is harmless.
    ("unmasked client frame", frame(0x1, b"{}", mask=False), (1002, None, "text")),
    ("reserved opcode", frame(0x3, b"x"), (1002, None)),
    ("reserved bits without an extension", frame(0x1, b"{}", rsv=0b100), (1002, None)),
    ("text that is not UTF-8", frame(0x1, b"\xff\xfe\xc3\x28"), (1007, None)),
    ("a message over the size limit", frame(0x2, b"x" * 100_000), (1009, None)),
    ("a length of 2**62", frame(0x2, b"", length=1 << 62), (1009, 1002, None)),
    ("a fragmented ping", frame(0x9, b"x", fin=False), (1002, None)),
    ("a continuation with no start", frame(0x0, b"x"), (1002, None)),
    ("a close with a reserved code", frame(0x8, b"\x03\xed"), (1002, 1000, None)),
    ("a 200-byte ping", frame(0x9, b"x" * 200), (1002, None)),
]


@pytest.mark.parametrize(("case", "data", "codes"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_websocket_frames_close_the_socket_only(world, case, data, codes):
    port = world.pploy.server.port
    reader, writer = await raw_websocket(
        port, f"/api/jobs/{world.job}/ws", {"Cookie": "user=alice"}
    )
    try:
        writer.write(data)
        await writer.drain()
        code = await read_close(reader)
        assert code in codes, (case, code)
    finally:
        writer.close()
    async with world.pploy.client().get(world.pploy.url("/ping")) as resp:
        assert resp.status == 200
    record = world.pploy.services.jobs.get(world.job)
    assert record.status == "running"  # the viewer's garbage never touched the job
