"""The route inventory (issue 21): every state-changing route of the real application — every
method but GET/HEAD/OPTIONS, and every command a WebSocket takes — goes through
:mod:`pploy.deploy.actions`, where the rules are decided, and is attacked here.

``ROUTES`` is the registry: route -> the action it must go through, a hostile request (from
someone the rules refuse: it must be refused and change nothing) and a legitimate one (it must
succeed, and pploy's log line must name that action). :func:`problems` lists the router's routes
and reports any route missing from the registry, any entry the router no longer has, any
WebSocket whose commands are unknown or not actions, and any exemption the code does not
declare. A new route therefore fails here until it has an action and an attack; one that
changes state without an action is refused at run time by the middleware (a 500 and an
``action.missing`` log line), which ``test_an_unguarded_route_fails_the_inventory`` proves
with a deliberately unguarded route."""

from __future__ import annotations

import ast
import functools
import inspect
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from pploy.deploy import actions
from pploy.deploy.app import SERVICES, create_app
from pploy.deploy.config import load_config
from pploy.deploy.web import middleware, streams
from pploy.deploy.web.security import SAFE_METHODS
from tests.deploy.support import Fifo, Pploy, make_remote, start_pploy

PROJECT = "testploy"
FREEZE = {
    "name": "incident",
    "envs": ["production"],
    "until": "2099-01-01T00:00:00Z",
    "reason": "outage",
}
APPROVALS = [{"project": "*", "env": "approved", "approvers": ["carol"]}]
RULES = {
    "admins": ["alice"],
    "deploy": [{"project": "*", "env": "production", "users": ["alice"]}],
}
# Routes that change only the caller's own cookies: declared with middleware.no_action.
EXEMPT = {("POST", "/login"), ("POST", "/logout")}
# WebSocket routes and the commands they take (each command an action). The stream test's
# socket (read by `pploy doctor`) only drains what the client sends: it takes no command.
WEBSOCKETS: dict[str, Any] = {"/api/jobs/{job_id}/ws": streams.COMMANDS, "/api/stream-test/ws": {}}


@dataclass
class Call:
    """One request: who sends it and how (``token``: with the sender's API token)."""

    method: str
    path: str
    user: str
    json: Any = None
    form: dict[str, str] | None = None
    params: dict[str, str] | None = None
    token: bool = False
    command: dict[str, Any] | None = None  # a WebSocket command


@dataclass
class Case:
    action: str
    hostile: Call
    refused: tuple[int, ...]  # the hostile call's status (forms: 303 with the refusal)
    legit: Call
    ok: int
    running: bool = False  # needs a running job ({job_id})
    needs: list[str] = field(default_factory=list)


def api(method: str, path: str, bob: Any, alice: Any, *, refused: tuple[int, ...], ok: int,
        action: str, running: bool = False, token: bool = False) -> Case:  # fmt: skip
    return Case(
        action, Call(method, path, "bob", json=bob, token=token), refused,
        Call(method, path, "alice", json=alice), ok, running,
    )  # fmt: skip


def form(path: str, bob: dict[str, str], alice: dict[str, str], *, refused: tuple[int, ...],
         ok: int, action: str, running: bool = False, token: bool = False) -> Case:  # fmt: skip
    return Case(
        action, Call("POST", path, "bob", form=bob, token=token), refused,
        Call("POST", path, "alice", form=alice), ok, running,
    )  # fmt: skip


def query(path: str, bob: dict[str, str], alice: dict[str, str], *, refused: tuple[int, ...],
          ok: int, action: str) -> Case:  # fmt: skip
    return Case(
        action, Call("POST", path, "bob", params=bob), refused,
        Call("POST", path, "alice", params=alice), ok,
    )  # fmt: skip


HELD = (403, 409)  # a lock someone else holds
OTHER = {"url": "{other}"}
ROUTES: dict[tuple[str, ...], Case] = {
    ("POST", "/api/projects"): api(
        "POST", "/api/projects", OTHER, OTHER, refused=(403,), ok=201, action="add_project"),
    ("DELETE", "/api/projects/{name}"): api(
        "DELETE", "/api/projects/{name}", None, None, refused=(403,), ok=200,
        action="remove_project"),
    ("POST", "/api/projects/{name}/lock"): api(
        "POST", "/api/projects/{name}/lock", {"operation": "gain"}, {"operation": "extend"},
        refused=HELD, ok=200, action="apply_lock"),
    ("POST", "/api/projects/{name}/checkout"): api(
        "POST", "/api/projects/{name}/checkout", {"ref": "main"}, {"ref": "main"}, refused=HELD,
        ok=202, action="start_checkout"),
    ("POST", "/api/projects/{name}/deploy"): api(
        "POST", "/api/projects/{name}/deploy", {"env": "production"}, {"env": "production"},
        refused=(403,), ok=202, action="start_deploy"),
    ("POST", "/api/jobs/{job_id}/cancel"): api(
        "POST", "/api/jobs/{job_id}/cancel", {}, {}, refused=HELD, ok=202, action="cancel_job",
        running=True),
    ("POST", "/api/tokens"): api(
        "POST", "/api/tokens", {"name": "minted"}, {"name": "made"}, refused=(403,), ok=201,
        action="create_token", token=True),
    ("DELETE", "/api/tokens/{token_id}"): api(
        "DELETE", "/api/tokens/{token_id}", None, None, refused=(404,), ok=200,
        action="revoke_token"),
    ("POST", "/projects"): form(
        "/projects", OTHER, OTHER, refused=(403,), ok=303, action="add_project"),
    ("POST", "/projects/{name}/lock"): form(
        "/projects/{name}/lock", {"operation": "gain"}, {"operation": "extend"}, refused=(303,),
        ok=303, action="apply_lock"),
    ("POST", "/projects/{name}/checkout"): form(
        "/projects/{name}/checkout", {"ref": "main"}, {"ref": "main"}, refused=(303,), ok=303,
        action="start_checkout"),
    ("POST", "/projects/{name}/deploy"): form(
        "/projects/{name}/deploy", {"env": "production"}, {"env": "production"}, refused=(403,),
        ok=303, action="start_deploy"),
    ("POST", "/projects/{name}/remove"): form(
        "/projects/{name}/remove", {}, {}, refused=(403,), ok=303, action="remove_project"),
    ("POST", "/jobs/{job_id}/cancel"): form(
        "/jobs/{job_id}/cancel", {}, {}, refused=(303,), ok=303, action="cancel_job",
        running=True),
    ("POST", "/tokens"): form(
        "/tokens", {"name": "minted"}, {"name": "made"}, refused=(403,), ok=201,
        action="create_token", token=True),
    ("POST", "/tokens/{token_id}/revoke"): form(
        "/tokens/{token_id}/revoke", {}, {}, refused=(303,), ok=303, action="revoke_token"),
    ("POST", "/{project}/deploy"): query(
        "/{project}/deploy", {"env": "production"}, {"env": "production"}, refused=(403,),
        ok=200, action="start_deploy"),
    ("POST", "/{project}/checkout"): query(
        "/{project}/checkout", {"ref": "main"}, {"ref": "main"}, refused=HELD, ok=200,
        action="start_checkout"),
    ("POST", "/_create"): query(
        "/_create", OTHER, OTHER, refused=(403,), ok=303, action="add_project"),
    ("POST", "/_/create"): query(
        "/_/create", OTHER, OTHER, refused=(403,), ok=303, action="add_project"),
    ("POST", "/{project}/lock"): form(
        "/{project}/lock", {"operation": "gain"}, {"operation": "extend"}, refused=HELD,
        ok=302, action="apply_lock"),
    ("POST", "/{project}/remove"): form(
        "/{project}/remove", {}, {}, refused=(403,), ok=302, action="remove_project"),
    ("POST", "/_goploy/{project}/lock"): form(
        "/_goploy/{project}/lock", {"operation": "gain"}, {"operation": "extend"},
        refused=HELD, ok=302, action="apply_lock"),
    ("POST", "/_goploy/{project}/remove"): form(
        "/_goploy/{project}/remove", {}, {}, refused=(403,), ok=302, action="remove_project"),
    ("POST", "/_goploy/_create"): query(
        "/_goploy/_create", OTHER, OTHER, refused=(403,), ok=303, action="add_project"),
    ("POST", "/_goploy/{project}/deploy"): query(
        "/_goploy/{project}/deploy", {"env": "production"}, {"env": "production"},
        refused=(403,), ok=200, action="start_deploy"),
    ("POST", "/_goploy/{project}/checkout"): query(
        "/_goploy/{project}/checkout", {"ref": "main"}, {"ref": "main"}, refused=HELD, ok=200,
        action="start_checkout"),
    ("POST", "/api/freezes"): api(
        "POST", "/api/freezes", FREEZE, FREEZE, refused=(403,), ok=201,
        action="start_freeze"),
    ("DELETE", "/api/freezes/{name}"): Case(
        "end_freeze", Call("DELETE", "/api/freezes/frozen", "bob", json={}), (403,),
        Call("DELETE", "/api/freezes/frozen", "alice", json={}), 200, needs=["freeze"]),
    ("POST", "/freezes"): form(
        "/freezes", {"name": "incident", "hours": "2", "envs": "production", "reason": "outage"},
        {"name": "incident", "hours": "2", "envs": "production", "reason": "outage"},
        refused=(303,), ok=303, action="start_freeze"),
    ("POST", "/freezes/{name}/end"): Case(
        "end_freeze", Call("POST", "/freezes/frozen/end", "bob", form={}), (303,),
        Call("POST", "/freezes/frozen/end", "alice", form={}), 303, needs=["freeze"]),
    # A deploy to `approved` waits for carol's approval (APPROVALS); alice requested it.
    ("POST", "/api/jobs/{job_id}/approve"): Case(
        "approve_job", Call("POST", "/api/jobs/{job_id}/approve", "alice", json={}), (403,),
        Call("POST", "/api/jobs/{job_id}/approve", "carol", json={}), 200, needs=["awaiting"]),
    ("POST", "/api/jobs/{job_id}/reject"): Case(
        "reject_job", Call("POST", "/api/jobs/{job_id}/reject", "bob", json={}), (403,),
        Call("POST", "/api/jobs/{job_id}/reject", "alice", json={}), 200, needs=["awaiting"]),
    ("POST", "/jobs/{job_id}/approve"): Case(
        "approve_job", Call("POST", "/jobs/{job_id}/approve", "alice", form={}), (303,),
        Call("POST", "/jobs/{job_id}/approve", "carol", form={}), 303, needs=["awaiting"]),
    ("POST", "/jobs/{job_id}/reject"): Case(
        "reject_job", Call("POST", "/jobs/{job_id}/reject", "bob", form={}), (303,),
        Call("POST", "/jobs/{job_id}/reject", "alice", form={}), 303, needs=["awaiting"]),
    ("WS", "/api/jobs/{job_id}/ws", "cancel"): Case(
        "cancel_job",
        Call("GET", "/api/jobs/{job_id}/ws", "bob", command={"action": "cancel"}), HELD,
        Call("GET", "/api/jobs/{job_id}/ws", "alice", command={"action": "cancel"}), 0,
        running=True),
}  # fmt: skip


def _source(handler: Any) -> str:
    while isinstance(handler, functools.partial):
        handler = handler.func
    try:
        return inspect.getsource(inspect.unwrap(handler))
    except (OSError, TypeError):
        return ""


def inventory(app: web.Application) -> dict[tuple[str, ...], Any]:
    """The application's state-changing routes, from its router: route key -> handler."""
    found: dict[tuple[str, ...], Any] = {}
    for route in app.router.routes():
        template = route.resource.canonical if route.resource is not None else "?"
        if route.method not in SAFE_METHODS:
            found[(route.method, template)] = route.handler
        elif route.method == "GET" and "WebSocketResponse(" in _source(route.handler):
            for command in WEBSOCKETS.get(template, {"<undeclared commands>": None}):
                found[("WS", template, command)] = route.handler
    return found


def problems(app: web.Application) -> list[str]:
    """Why the application's routes fail the inventory (empty: they pass)."""
    found = inventory(app)
    wrong = []
    for key, handler in sorted(found.items()):
        if key[:2] in EXEMPT and len(key) == 2:
            if not middleware.exempt_reason(handler):
                wrong.append(f"{key}: listed as exempt but not marked middleware.no_action")
        elif key not in ROUTES:
            wrong.append(f"{key}: a state-changing route with no action and hostile test here")
        elif ROUTES[key].action not in actions.names():
            wrong.append(f"{key}: {ROUTES[key].action} is not an action")
        elif middleware.exempt_reason(handler):
            wrong.append(f"{key}: marked no_action but it must decide rules")
    for template, commands in WEBSOCKETS.items():
        for name, run in commands.items():
            if not actions.is_action(run):
                wrong.append(f"WS {template} {name}: not an action of pploy.deploy.actions")
    for key in ROUTES.keys() - found.keys():
        wrong.append(f"{key}: in the registry but not in the router")
    for key in EXEMPT - {k[:2] for k in found}:
        wrong.append(f"{key}: exempt but not in the router")
    return wrong


def goploy_ui(tmp: Path) -> str:
    """A directory that passes for go-pploy's built frontend: with it configured, pploy also
    serves go-pploy's routes under /_goploy/, so the inventory and the attacks cover those."""
    ui = tmp / "goploy-ui"
    ui.mkdir(exist_ok=True)
    for name in ("index.html", "bundle.js"):
        (ui / name).write_text("")
    return str(ui)


def test_every_state_changing_route_is_in_the_registry(tmp_path: Path) -> None:
    config = load_config(
        None,
        {"workdir": str(tmp_path / "work"), "users": ["alice"], "goploy_ui": goploy_ui(tmp_path)},
        {},
    )
    app = create_app(config)
    assert problems(app) == []
    assert len(inventory(app)) == len(ROUTES) + len(EXEMPT)
    # every action of the layer is reached by some route
    assert {case.action for case in ROUTES.values()} == actions.names()


# What changes state on the services: only pploy.deploy.actions may call these.
STATE_CHANGING = {
    "locks": {"apply", "gain", "extend", "release", "keep_until"},
    "jobs": {"start_deploy", "start_checkout", "cancel", "cancel_running"},
    "projects": {"clone", "clone_recorded", "remove"},
    "tokens": {"create", "revoke"},
    "store": {"add_token", "revoke_token", "remove_project"},
}
# Every module of deploy/web/ (route modules and what serves them): a new one is checked too.
WEB = Path(actions.__file__).parent / "web"


def direct_calls(source: str) -> list[str]:
    """``<...>.locks.apply(...)`` and the like in ``source``: a service's state-changing
    method called past the actions layer."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and node.func.attr in STATE_CHANGING.get(
                owner.attr, ()
            ):
                found.append(f"line {node.lineno}: .{owner.attr}.{node.func.attr}()")
    return found


def test_route_modules_change_nothing_past_the_actions_layer() -> None:
    modules = sorted(WEB.glob("*.py"))
    assert {"api", "pages", "streams", "tokenroutes", "legacy", "runtime"} <= {
        m.stem for m in modules
    }
    for module in modules:
        assert direct_calls(module.read_text()) == [], module.name
    assert direct_calls(Path(actions.__file__).read_text())  # the check sees real calls
    assert direct_calls(inspect.getsource(unguarded)) == ["line 4: .locks.apply()"]


async def unguarded(request: web.Request) -> web.Response:
    """A route as someone might add it: straight to the lock, past the actions layer."""
    svc = request.app[SERVICES]
    svc.locks.apply(request.match_info["name"], "mallory", "gain")
    return web.json_response({"ok": True})


async def unguarded_socket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    return ws


async def test_an_unguarded_route_fails_the_inventory(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pploy")
    config = load_config(None, {"workdir": str(tmp_path / "work"), "users": ["alice"]}, {})
    app = create_app(config)
    app.router.add_post("/api/projects/{name}/sneak", unguarded)
    app.router.add_get("/api/jobs/{job_id}/sneaky-ws", unguarded_socket)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    pploy = Pploy(server, app[SERVICES])
    try:
        found = problems(pploy.server.app)
        assert any("/api/projects/{name}/sneak'" in p and "no action" in p for p in found), found
        assert any("sneaky-ws" in p for p in found), found
        await pploy.add_project(make_remote(tmp_path))
        status, body = await pploy.api("POST", f"/api/projects/{PROJECT}/sneak", "alice", {})
        assert status == 500 and "actions layer" in body["error"], body
        assert "action.missing" in caplog.text and "/api/projects/{name}/sneak" in caplog.text
    finally:
        await pploy.close()


class World:
    """A pploy with the rules above, testploy's lock held by alice, and tokens for both."""

    def __init__(self, pploy: Pploy, tmp: Path, fifo: Fifo) -> None:
        self.pploy = pploy
        self.tmp = tmp
        self.fifo = fifo
        self.other = str(make_remote(tmp, "other"))
        self.job: int | None = None
        self.tokens: dict[str, tuple[int, str]] = {}

    async def csrf(self, user: str) -> str:
        session = self.pploy.client(user)
        async with session.get(self.pploy.url("/tokens")) as resp:
            assert resp.status == 200
        cookie = session.cookie_jar.filter_cookies(URL(self.pploy.url("/"))).get("csrf")
        assert cookie is not None
        return cookie.value

    def fill(self, text: str) -> str:
        return (
            text.replace("{name}", PROJECT).replace("{project}", PROJECT)
            .replace("{job_id}", str(self.job)).replace("{token_id}", str(self.tokens["alice"][0]))
            .replace("{other}", self.other)
        )  # fmt: skip

    def snapshot(self) -> Any:
        svc = self.pploy.services
        lock = svc.locks.get(PROJECT)
        return (
            [(j.id, j.status, j.cancelled_by) for j in svc.store.list_jobs(limit=100)],
            (lock.user, lock.expires_at) if lock else None,
            sorted(p.name for p in svc.projects.list()),
            sorted((self.tmp / "work/projects").iterdir()),
            sorted((j, job.cancelled_by) for j, job in svc.jobs.running.items()),
            [(t.user, t.id, t.revoked_at) for u in ("alice", "bob")
             for t in svc.store.list_tokens(u)],
            sorted((f.name, f.end) for f in svc.freezes.all()),
        )  # fmt: skip

    async def send(self, call: Call) -> tuple[int, str]:
        session = self.pploy.client(None if call.token else call.user)
        headers = {"Accept": "application/json"} if call.json is not None else {}
        if call.token:
            headers["Authorization"] = f"Bearer {self.tokens[call.user][1]}"
        url = self.pploy.url(self.fill(call.path))
        if call.command is not None:
            async with session.ws_connect(url, headers=headers) as ws:
                await ws.send_str(json.dumps(call.command))
                while True:
                    msg = await ws.receive(timeout=10)
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        reply = json.loads(msg.data)
                        return reply.get("status", 0), msg.data
        kwargs: dict[str, Any] = {"allow_redirects": False, "headers": headers}
        if call.json is not None:
            kwargs["json"] = {
                k: self.fill(v) if isinstance(v, str) else v for k, v in call.json.items()
            }
        if call.form is not None:
            token = await self.csrf(call.user) if not call.token else ""
            kwargs["data"] = {**{k: self.fill(v) for k, v in call.form.items()},
                              "csrf_token": token}  # fmt: skip
        if call.params is not None:
            kwargs["params"] = {k: self.fill(v) for k, v in call.params.items()}
        async with session.request(call.method, url, **kwargs) as resp:
            body = await resp.text()
            if resp.status == 303 and resp.cookies.get("flash"):
                body = resp.cookies["flash"].value
            return resp.status, body


async def world(
    tmp: Path, running: bool, needs: tuple[str, ...] | list[str] = ()
) -> AsyncIterator[World]:
    fifo = Fifo(tmp / "go")
    script = (
        '#!/bin/sh\necho deployed $DEPLOY_ENV\nif [ "$DEPLOY_ENV" = staging ]; then\n'
        f"{fifo.script_open()}\n{fifo.wait_cmd}\nfi\n"
    )
    pploy = await start_pploy(
        tmp / "work",
        users=["alice", "bob", "carol"],
        permissions=RULES,
        approvals=APPROVALS,
        goploy_ui=goploy_ui(tmp),
        **{"auth.names_are_self_chosen": True},
    )
    try:
        here = World(pploy, tmp, fifo)
        envs = {".deploy/config/deploy_envs": "staging\nproduction\napproved\n"}
        await pploy.add_project(make_remote(tmp, PROJECT, deploy_script=script, files=envs))
        for user in ("alice", "bob"):
            status, made = await pploy.api("POST", "/api/tokens", user, {"name": "ci"})
            assert status == 201
            here.tokens[user] = (made["id"], made["token"])
        await pploy.gain(PROJECT, "alice")
        if running:
            here.job = await pploy.deploy(PROJECT, "staging", "alice")
        if "awaiting" in needs:  # a deploy waiting for carol's approval
            status, body = await pploy.api(
                "POST", f"/api/projects/{PROJECT}/deploy", "alice", {"env": "approved"}
            )
            assert status == 202 and body["job"]["status"] == "awaiting_approval", body
            here.job = body["job"]["id"]
        if "freeze" in needs:  # an ad-hoc freeze in force
            frozen = {"name": "frozen", "until": "2099-01-01T00:00:00Z", "reason": "incident"}
            status, body = await pploy.api("POST", "/api/freezes", "alice", frozen)
            assert status == 201, body
        yield here
    finally:
        fifo.close()
        await pploy.close()


def action_logged(caplog: Any, call: Call, world: World) -> list[str]:
    """The actions pploy's log names for requests to ``call``'s path."""
    path = URL(world.fill(call.path)).path
    if call.command is not None:
        lines = [r.getMessage() for r in caplog.records if "event=ws.command" in r.getMessage()]
    else:
        lines = [
            r.getMessage() for r in caplog.records
            if "event=http.request" in r.getMessage() and f"path={path} " in r.getMessage()
        ]  # fmt: skip
    return [m.group(1) for line in lines if (m := re.search(r" action=(\S+)", line))]


@pytest.mark.parametrize("key", list(ROUTES), ids=lambda key: " ".join(key))
async def test_each_route_refuses_its_attacker_and_goes_through_its_action(
    key: tuple[str, ...], tmp_path: Path, caplog: Any
) -> None:
    case = ROUTES[key]
    caplog.set_level(logging.INFO, logger="pploy")
    async for here in world(tmp_path, case.running, case.needs):
        before = here.snapshot()
        caplog.clear()
        status, body = await here.send(case.hostile)
        assert status in case.refused, (key, status, body)
        assert "bob" in body or "alice" in body or "token" in body, (key, body)
        assert here.snapshot() == before, key
        assert action_logged(caplog, case.hostile, here) == [case.action], key
        caplog.clear()
        status, body = await here.send(case.legit)
        assert status == case.ok, (key, status, body)
        assert here.snapshot() != before, key
        assert action_logged(caplog, case.legit, here) == [case.action], key
        assert "action.missing" not in caplog.text
