"""The URLs of the Scala pploy and go-pploy, so bookmarks, scripts and habits keep working.

Pages the originals served at ``/<project>…`` redirect to pploy's own; go-pploy's JSON
endpoints, lock route, forms and ``/<project>/logs`` (and its web UI, when ``goploy_ui`` is
set) are :mod:`pploy.deploy.web.goploy`'s; the Scala ``POST /_/create`` is go-pploy's
``/_create``. The one-shot ``POST /<project>/deploy`` and ``/checkout`` stay in
:mod:`pploy.deploy.web.streams`. These routes are registered after every other one: a route of
pploy's own always wins.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from pploy.deploy.services import SERVICES, services
from pploy.deploy.web import goploy


async def project_page(request: web.Request) -> web.Response:
    """``/<project>`` and ``/<project>/lock`` (GET), ``/<project>/commits``: the project page;
    404 for anything that is no project (``/favicon.ico`` included)."""
    name = services(request).projects.get(request.match_info["name"]).name
    raise web.HTTPFound(f"/projects/{quote(name)}")


def add_routes(app: web.Application) -> None:
    """Registered last, after the one-shot routes."""
    goploy.add_routes(app, app[SERVICES].config.goploy_ui)
    router = app.router
    router.add_post("/_/create", goploy.create)
    router.add_get("/{name}", project_page)
    router.add_get("/{name}/lock", project_page)
    router.add_get("/{name}/commits", project_page)
