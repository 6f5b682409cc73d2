"""Routes of deploy governance (issue 25): the audit log, freezes, approvals, and their
pages. The rules themselves live in :mod:`audit`, :mod:`freezes` and :mod:`governance`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from pploy.deploy import actions, governance
from pploy.deploy.domain.audit import MAX_EVENTS, parse_kinds, parse_since
from pploy.deploy.domain.errors import BadRequest, PployError
from pploy.deploy.domain.permissions import Caller
from pploy.deploy.domain.records import JobRecord
from pploy.deploy.services import SERVICES, Services, services
from pploy.deploy.web import security
from pploy.deploy.web.params import job_id, read_json
from pploy.deploy.web.rendering import redirect_with_error, redirect_with_flash, render
from pploy.deploy.web.requestkeys import CALLER

routes = web.RouteTableDef()
PAGE_EVENTS = 500  # the audit page shows the newest; the API exports them all


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
    freeze = await actions.start_freeze(svc, request[CALLER], body)
    return web.json_response({"freeze": freeze.to_json(svc.freezes.clock())}, status=201)


@routes.delete("/api/freezes/{name}")
async def end_freeze(request: web.Request) -> web.Response:
    svc = services(request)
    freeze = await actions.end_freeze(svc, request[CALLER], request.match_info["name"])
    return web.json_response({"freeze": freeze.to_json(svc.freezes.clock())})


@routes.post("/api/jobs/{job_id}/approve")
async def approve(request: web.Request) -> web.Response:
    svc = services(request)
    await read_json(request)
    record = await actions.approve_job(svc, request[CALLER], job_id(request))
    return web.json_response({"job": record.to_json()})


@routes.post("/api/jobs/{job_id}/reject")
async def reject(request: web.Request) -> web.Response:
    svc = services(request)
    await read_json(request)
    record = await actions.reject_job(svc, request[CALLER], job_id(request))
    return web.json_response({"job": record.to_json()})


@routes.get("/api/approvals")
async def approvals(request: web.Request) -> web.Response:
    """The deploys awaiting the caller's approval."""
    svc = services(request)
    waiting = governance.awaiting_for(svc, request[CALLER])
    return web.json_response({"jobs": [record.to_json() for record in waiting]})


# -- pages -------------------------------------------------------------------------------


async def _form(request: web.Request) -> dict[str, str]:
    await security.check_form_token(request)
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}


@routes.get("/approvals")
async def approvals_page(request: web.Request) -> web.Response:
    svc = services(request)
    return render(request, "approvals.html", jobs=governance.awaiting_for(svc, request[CALLER]))


@routes.post("/jobs/{job_id}/approve")
async def approve_form(request: web.Request) -> web.Response:
    return await _decide(request, actions.approve_job)


@routes.post("/jobs/{job_id}/reject")
async def reject_form(request: web.Request) -> web.Response:
    return await _decide(request, actions.reject_job)


async def _decide(
    request: web.Request, decide: Callable[[Services, Caller, int], Awaitable[JobRecord]]
) -> web.Response:
    """An Approve or Reject button: back to the job's page, with the refusal if any."""
    svc = services(request)
    number = job_id(request)
    await _form(request)
    try:
        await decide(svc, request[CALLER], number)
    except PployError as exc:
        raise redirect_with_error(f"/jobs/{number}", exc.message) from None
    raise web.HTTPSeeOther(f"/jobs/{number}")


@routes.get("/audit")
async def audit_page(request: web.Request) -> web.Response:
    svc = services(request)
    require_admin(svc, request[CALLER], "read the audit log")
    kind = request.query.get("kind", "").strip()
    events = svc.audit.events(None, parse_kinds([kind]) if kind else [], MAX_EVENTS)
    newest = [event.to_json() for event in reversed(events[-PAGE_EVENTS:])]
    return render(request, "audit.html", events=newest, kind=kind)


@routes.get("/freezes")
async def freezes_page(request: web.Request) -> web.Response:
    svc = services(request)
    is_admin = svc.permissions.manage_projects(request[CALLER]).allowed
    return render(request, "freezes.html", freezes=svc.freezes.all(), is_admin=is_admin)


@routes.post("/freezes")
async def start_freeze_form(request: web.Request) -> web.Response:
    svc = services(request)
    form = await _form(request)
    hours = form.get("hours", "")
    envs = [e.strip() for e in form.get("envs", "").split(",") if e.strip()]
    try:
        if not hours.isdigit() or not 1 <= int(hours) <= 8760:
            raise BadRequest("hours must be a number from 1 to 8760")
        body = {"name": form.get("name", "").strip(), "reason": form.get("reason", ""),
                "until": svc.freezes.clock() + int(hours) * 3600, "envs": envs or None}  # fmt: skip
        freeze = await actions.start_freeze(svc, request[CALLER], body)
    except PployError as exc:
        raise redirect_with_error("/freezes", exc.message) from None
    raise redirect_with_flash("/freezes", f"freeze {freeze.name} started")


@routes.post("/freezes/{name}/end")
async def end_freeze_form(request: web.Request) -> web.Response:
    svc = services(request)
    await _form(request)
    try:
        freeze = await actions.end_freeze(svc, request[CALLER], request.match_info["name"])
    except PployError as exc:
        raise redirect_with_error("/freezes", exc.message) from None
    raise redirect_with_flash("/freezes", f"freeze {freeze.name} ended")


async def resume(app: web.Application) -> None:
    governance.resume(app[SERVICES])  # approvals expire, configured freezes are announced


async def stop(app: web.Application) -> None:
    governance.stop(app[SERVICES])


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
    svc = app[SERVICES]
    # What every page may show: the freeze banner, a waiting job's approvers.
    svc.templates.globals["active_freezes"] = svc.freezes.active
    svc.templates.globals["approval_rule"] = lambda job: governance.approval_rule(
        svc, job.project, job.env
    )
    app.on_startup.append(resume)
    app.on_cleanup.append(stop)
