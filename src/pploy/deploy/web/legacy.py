"""The URLs of the Scala pploy and go-pploy, so bookmarks, scripts and habits keep working.

Pages the originals served at ``/<project>…`` redirect to pploy's own; their JSON endpoints
answer with pploy's JSON (go-pploy's ``/api/status/<project>`` is ``/api/projects/<name>``);
their project creation (``POST /_create``, the Scala ``/_/create``) creates. The one-shot
``POST /<project>/deploy`` and ``/checkout`` stay in :mod:`pploy.deploy.web.streams`. These routes
are registered after every other one: a route of pploy's own always wins.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from pploy.deploy import actions
from pploy.deploy.domain.errors import BadRequest, NotFound
from pploy.deploy.services import services
from pploy.deploy.web import api
from pploy.deploy.web.middleware import starts_work
from pploy.deploy.web.requestkeys import CALLER
from pploy.deploy.web.streams import one_shot_params


def _project_page(name: str) -> str:
    return f"/projects/{quote(name)}"


def _existing(request: web.Request) -> str:
    """The project named in the path; 404 for anything else (``/favicon.ico`` included)."""
    return services(request).projects.get(request.match_info["name"]).name


async def project_page(request: web.Request) -> web.Response:
    """``/<project>`` and ``/<project>/lock`` (GET), ``/<project>/commits``: the project page."""
    raise web.HTTPFound(_project_page(_existing(request)))


async def project_logs(request: web.Request) -> web.Response:
    """``/<project>/logs``: the latest job's log (``generation=N``: the N-th before it), as
    plain text; the originals' ``full=1`` is the default here (logs are never cut)."""
    svc = services(request)
    name = _existing(request)
    generation = request.query.get("generation", "0")
    if not generation.isdigit() or int(generation) > 1000:
        raise BadRequest("generation must be a number from 0 to 1000")
    jobs = svc.store.list_jobs(name, int(generation) + 1)
    if len(jobs) <= int(generation):
        raise NotFound(f"{name} has no job {generation} before its latest")
    raise web.HTTPFound(f"/api/jobs/{jobs[int(generation)].id}/log")


@starts_work
async def create_project(request: web.Request) -> web.Response:
    """go-pploy's ``POST /_create`` (the Scala ``/_/create``): ``url`` as a form field (with
    the CSRF token), JSON or the query string; then the new project's page."""
    url = await one_shot_params(request, "url")
    project = await actions.add_project(services(request), request[CALLER], url)
    raise web.HTTPSeeOther(_project_page(project.name))


def add_routes(app: web.Application) -> None:
    """Registered last, after the one-shot routes."""
    router = app.router
    router.add_get("/api/status/", api.status)
    router.add_get("/api/status/{name}", api.get_project)
    router.add_get("/api/commits/{name}", api.commits)
    router.add_post("/_create", create_project)
    router.add_post("/_/create", create_project)
    router.add_get("/{name}", project_page)
    router.add_get("/{name}/lock", project_page)
    router.add_get("/{name}/commits", project_page)
    router.add_get("/{name}/logs", project_logs)
