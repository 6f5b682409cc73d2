"""The JSON API: the same rules as the UI, errors as ``{"error": "..."}``."""

from __future__ import annotations

import asyncio

from aiohttp import web

from pploy.deploy import actions
from pploy.deploy.domain.errors import BadRequest
from pploy.deploy.jobs import timeline
from pploy.deploy.services import services
from pploy.deploy.web import views
from pploy.deploy.web.middleware import starts_work
from pploy.deploy.web.params import job_id, read_json, string_field
from pploy.deploy.web.requestkeys import CALLER, USER

routes = web.RouteTableDef()


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
@starts_work
async def add_project(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_json(request)
    project = await actions.add_project(svc, request[CALLER], string_field(body, "url"))
    return web.json_response({"project": await views.project_detail(svc, project)}, status=201)


@routes.get("/api/projects/{name}")
async def get_project(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    return web.json_response({"project": await views.project_detail(svc, project)})


@routes.delete("/api/projects/{name}")
async def remove_project(request: web.Request) -> web.Response:
    svc = services(request)
    await actions.remove_project(svc, request[CALLER], request.match_info["name"])
    return web.json_response({"removed": request.match_info["name"]})


@routes.post("/api/projects/{name}/lock")
async def lock(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    body = await read_json(request)
    operation = string_field(body, "operation")
    result = await actions.apply_lock(svc, request[CALLER], project, operation)
    return web.json_response({"lock": result.to_json() if result else None})


@routes.post("/api/projects/{name}/checkout")
@starts_work
async def checkout(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    body = await read_json(request)
    record = await actions.start_checkout(svc, request[CALLER], project, string_field(body, "ref"))
    return web.json_response({"job": record.to_json()}, status=202)


@routes.post("/api/projects/{name}/deploy")
@starts_work
async def deploy(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    body = await read_json(request)
    env, override = string_field(body, "env"), body.get("override_freeze")  # docs/governance.md
    record = await actions.start_deploy(svc, request[CALLER], project, env, override)
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


@routes.get("/api/jobs/{job_id}/times")
async def job_times(request: web.Request) -> web.Response:
    """When the job's output arrived, per line: ``{"lines": [[line, unix time], ...]}``."""
    svc = services(request)
    path = svc.jobs.log_path(svc.jobs.get(job_id(request)))
    lines = await asyncio.to_thread(timeline.line_times, path)
    return web.json_response({"lines": [[n, t] for n, t in lines]})


@routes.post("/api/jobs/{job_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    svc = services(request)
    await read_json(request)
    record = await actions.cancel_job(svc, request[CALLER], job_id(request))
    return web.json_response({"job": record.to_json()}, status=202)


@routes.get("/ping")
async def ping(request: web.Request) -> web.Response:
    return web.Response(text="pong\n")


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
