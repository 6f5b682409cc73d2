"""The JSON API: the same rules as the UI, errors as ``{"error": "..."}``."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from pploy.deploy import views
from pploy.deploy.app import services
from pploy.deploy.errors import BadRequest
from pploy.deploy.requestkeys import USER

routes = web.RouteTableDef()


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; an empty body is an empty object."""
    if not request.can_read_body:
        return {}
    if request.content_type != "application/json":
        raise BadRequest("send the body as application/json")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def string_field(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key!r} is required and must be a non-empty string")
    return value


def job_id(request: web.Request) -> int:
    raw = request.match_info["job_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"job id must be a number, not {raw!r}")
    return int(raw)


@routes.get("/api/status")
async def status(request: web.Request) -> web.Response:
    svc = services(request)
    return web.json_response(
        {
            "user": request[USER],
            "auth_mode": svc.auth.mode,
            "projects": [views.project_summary(svc, p) for p in svc.projects.list()],
            "jobs": [j.to_json() for j in svc.store.list_jobs(limit=20)],
        }
    )


@routes.post("/api/projects")
async def add_project(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_json(request)
    project = await svc.projects.clone(string_field(body, "url"))
    return web.json_response({"project": await views.project_detail(svc, project)}, status=201)


@routes.get("/api/projects/{name}")
async def get_project(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    return web.json_response({"project": await views.project_detail(svc, project)})


@routes.delete("/api/projects/{name}")
async def remove_project(request: web.Request) -> web.Response:
    svc = services(request)
    await remove(svc, request.match_info["name"], request[USER])
    return web.json_response({"removed": request.match_info["name"]})


async def remove(svc: Any, name: str, user: str) -> None:
    """Remove a project: only its lock holder may, and not while a job runs. Its job records
    and logs stay (the audit trail)."""
    project = svc.projects.get(name)
    svc.locks.require_holder(project.name, user)
    running = svc.jobs.running_for(name)
    if running:
        raise BadRequest(
            f"job #{running.record.id} is running on {name}; cancel it or wait", status=409
        )
    await svc.projects.remove(project.name, user)


@routes.post("/api/projects/{name}/lock")
async def lock(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    body = await read_json(request)
    result = svc.locks.apply(project.name, request[USER], string_field(body, "operation"))
    return web.json_response({"lock": result.to_json() if result else None})


@routes.post("/api/projects/{name}/checkout")
async def checkout(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    body = await read_json(request)
    record = await svc.jobs.start_checkout(project, string_field(body, "ref"), request[USER])
    return web.json_response({"job": record.to_json()}, status=202)


@routes.post("/api/projects/{name}/deploy")
async def deploy(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    body = await read_json(request)
    record = await svc.jobs.start_deploy(project, string_field(body, "env"), request[USER])
    return web.json_response({"job": record.to_json()}, status=202)


@routes.get("/api/projects/{name}/commits")
async def commits(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    return web.json_response(await views.commits_view(svc, project))


@routes.get("/api/projects/{name}/jobs")
async def project_jobs(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    limit = request.query.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise BadRequest("limit must be a number from 1 to 1000")
    jobs = svc.store.list_jobs(project.name, int(limit))
    return web.json_response({"jobs": [j.to_json() for j in jobs]})


@routes.get("/api/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    svc = services(request)
    return web.json_response({"job": svc.jobs.get(job_id(request)).to_json()})


@routes.post("/api/jobs/{job_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    svc = services(request)
    await read_json(request)
    record = svc.jobs.cancel(job_id(request), request[USER])
    return web.json_response({"job": record.to_json()}, status=202)


@routes.get("/ping")
async def ping(request: web.Request) -> web.Response:
    return web.Response(text="pong\n")


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
