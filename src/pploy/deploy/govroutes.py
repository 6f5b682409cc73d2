"""Routes of deploy governance (issue 25): the audit log, freezes, approvals, and their
pages. The rules themselves live in :mod:`audit`, :mod:`freezes` and :mod:`approvals`."""

from __future__ import annotations

import json

from aiohttp import web

from pploy.deploy import governance
from pploy.deploy.audit import MAX_EVENTS, parse_kinds, parse_since
from pploy.deploy.errors import BadRequest
from pploy.deploy.params import job_id, read_json
from pploy.deploy.permissions import Caller
from pploy.deploy.requestkeys import CALLER
from pploy.deploy.services import SERVICES, Services, services

routes = web.RouteTableDef()


def require_admin(svc: Services, caller: Caller, action: str) -> None:
    """Only ``permissions.admins`` (everyone when none are configured) may ``action``."""
    svc.permissions.manage_projects(caller, action).require()


@routes.get("/api/audit")
async def audit_log(request: web.Request) -> web.StreamResponse:
    """``{"events": [...]}`` oldest first; ``?since=``, ``?kind=``, ``?limit=``,
    ``?format=jsonl`` (one event a line, ``application/x-ndjson``). Admins only."""
    svc = services(request)
    require_admin(svc, request[CALLER], "read the audit log")
    query = request.query
    since = parse_since(query["since"]) if query.get("since") else None
    kinds = parse_kinds(query.getall("kind", []))
    limit = query.get("limit", str(MAX_EVENTS))
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_EVENTS:
        raise BadRequest(f"limit must be a number from 1 to {MAX_EVENTS}")
    fmt = query.get("format", "json")
    if fmt not in ("json", "jsonl"):
        raise BadRequest("format must be json or jsonl")
    events = [event.to_json() for event in svc.audit.events(since, kinds, int(limit))]
    if fmt == "jsonl":
        body = "".join(json.dumps(event) + "\n" for event in events)
        return web.Response(text=body, content_type="application/x-ndjson")
    return web.json_response({"events": events})


@routes.get("/api/freezes")
async def list_freezes(request: web.Request) -> web.Response:
    """Configured freezes (past, current, coming) and ad-hoc ones in force, with ``active``."""
    svc = services(request)
    now = svc.freezes.clock()
    return web.json_response({"freezes": [f.to_json(now) for f in svc.freezes.all()]})


@routes.post("/api/freezes")
async def start_freeze(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_json(request)
    require_admin(svc, request[CALLER], "start a freeze")
    freeze = svc.freezes.start(request[CALLER], body)
    return web.json_response({"freeze": freeze.to_json(svc.freezes.clock())}, status=201)


@routes.delete("/api/freezes/{name}")
async def end_freeze(request: web.Request) -> web.Response:
    svc = services(request)
    require_admin(svc, request[CALLER], "end a freeze")
    freeze = svc.freezes.end(request[CALLER], request.match_info["name"])
    return web.json_response({"freeze": freeze.to_json(svc.freezes.clock())})


@routes.post("/api/jobs/{job_id}/approve")
async def approve(request: web.Request) -> web.Response:
    svc = services(request)
    await read_json(request)
    record = await governance.approve(svc, request[CALLER], job_id(request))
    return web.json_response({"job": record.to_json()})


@routes.post("/api/jobs/{job_id}/reject")
async def reject(request: web.Request) -> web.Response:
    svc = services(request)
    await read_json(request)
    record = governance.reject(svc, request[CALLER], job_id(request))
    return web.json_response({"job": record.to_json()})


@routes.get("/api/approvals")
async def approvals(request: web.Request) -> web.Response:
    """The deploys awaiting the caller's approval."""
    svc = services(request)
    waiting = governance.awaiting_for(svc, request[CALLER])
    return web.json_response({"jobs": [record.to_json() for record in waiting]})


async def resume(app: web.Application) -> None:
    governance.resume(app[SERVICES])  # deploys awaiting approval expire on time


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
    app.on_startup.append(resume)
