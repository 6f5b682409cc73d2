"""go-pploy's server side, on pploy: its JSON shapes, lock route and forms, and its web UI.

go-pploy's UI (the svelte frontend of edvakf/go-pploy, built unchanged) reaches its server
with relative URLs only (``./api/status/<project>``, ``./<project>/lock``,
``./assets/bundle.js``), so it works under any directory. With ``goploy_ui`` set (the built
``assets/`` directory), pploy serves it under :data:`UI` together with go-pploy's whole route
table there; no project name starts with ``_``, so nothing of pploy's is shadowed. go-pploy's
JSON routes and forms also answer at the root, where its scripts call them; pploy's own
``/api/...`` keep their shapes.

go-pploy's forms carry no CSRF token: they are accepted when the browser proves the request
same-origin (:func:`pploy.deploy.web.middleware.same_origin_form`), never otherwise. The user is
always the authenticated caller: a ``user`` field naming someone else is refused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from pploy.deploy import actions
from pploy.deploy.domain import git
from pploy.deploy.domain.errors import BadRequest, Forbidden, NotFound, PployError
from pploy.deploy.domain.projects import Project
from pploy.deploy.services import Services, services
from pploy.deploy.web.middleware import same_origin_form, starts_work
from pploy.deploy.web.rendering import FLASH_KIND, for_scripts, redirect_with_error
from pploy.deploy.web.requestkeys import CALLER, USER
from pploy.deploy.web.streams import one_shot_body, one_shot_checkout, one_shot_deploy

UI = "/_goploy"
FLASH = "flash"  # pploy's flash cookie (rendering.redirect_with_flash): go-pploy's "message"


def _under_ui(request: web.Request) -> bool:
    return request.path == UI or request.path.startswith(UI + "/")


def _page(request: web.Request, name: str | None) -> str:
    """Where a form sends the browser next: go-pploy's page of the project (or its front page)
    under the UI; from the root routes, pploy's own pages."""
    if _under_ui(request):
        return f"{UI}/{quote(name)}" if name else f"{UI}/"
    return f"/projects/{quote(name)}" if name else "/"


def _browser(request: web.Request) -> bool:
    """A browser's form post gets go-pploy's answer to a failure (back to the page, the
    message shown there); a script gets the error's status and text."""
    return "text/html" in request.headers.get("Accept", "")


def _time(timestamp: float) -> str:
    """A Unix time as Go's JSON wrote a ``time.Time`` (RFC 3339)."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _lock(svc: Services, name: str) -> dict[str, Any] | None:
    lock = svc.locks.get(name)
    return {"user": lock.user, "endTime": _time(lock.expires_at)} if lock else None


def _project(svc: Services, project: Project) -> dict[str, Any]:
    """go-pploy's ``Project`` as its project list had it (name and lock only)."""
    return {
        "lock": _lock(svc, project.name),
        "name": project.name,
        "deployEnvs": None,
        "readme": "",
        "defaultBranch": "",
    }


async def _full_project(svc: Services, project: Project) -> dict[str, Any]:
    """go-pploy's ``Project`` with its environments, readme (sanitised, as on pploy's page)
    and the default branch the checkout form proposes."""
    files = await project.read_files()
    return {
        **_project(svc, project),
        "deployEnvs": files.envs,
        "readme": files.readme or "",
        "defaultBranch": await git.default_branch(str(project.path)) or "",
    }


def _message(request: web.Request) -> str:
    """An error a form left for the next page (go-pploy's flash message)."""
    flash = request.cookies.get(FLASH)
    if not flash or request.cookies.get(FLASH_KIND) != "error":
        return ""
    return flash[:500]


async def status(request: web.Request) -> web.Response:
    """``GET /api/status/[<project>]``: ``{message, allProjects, currentProject, allUsers,
    currentUser}``; ``currentProject`` is null for a name that is no project. ``allUsers`` is
    the caller alone: nobody can lock as anyone else."""
    svc = services(request)
    current = None
    if name := request.match_info.get("name"):
        try:
            current = await _full_project(svc, svc.projects.get(name))
        except NotFound:
            current = None
    message = _message(request)
    response = web.json_response(
        {
            "message": message,
            "allProjects": [_project(svc, p) for p in svc.projects.list()],
            "currentProject": current,
            "allUsers": [request[USER]],
            "currentUser": request[USER],
        }
    )
    if message:  # shown once, as go-pploy's flash
        response.del_cookie(FLASH, path="/")
        response.del_cookie(FLASH_KIND, path="/")
    return response


def _full_refs(decoration: str) -> list[str]:
    """pploy's short ref names (``HEAD -> main``, ``origin/main``, ``tag: v1``) as go-pploy's
    ``git log --decorate=full`` listed them (``HEAD``, ``refs/heads/main``, …)."""
    refs = []
    for ref in decoration.split(" -> "):
        if ref == "HEAD" or ref.startswith("refs/"):
            refs.append(ref)
        elif ref.startswith("tag: "):
            refs.append("tag: refs/tags/" + ref.removeprefix("tag: "))
        elif ref.startswith("origin/"):  # pploy's clones have one remote, origin
            refs.append("refs/remotes/" + ref)
        else:
            refs.append("refs/heads/" + ref)
    return refs


def _commit(commit: git.Commit) -> dict[str, Any]:
    """go-pploy's ``Commit``."""
    name_status = [s + "\t" + "\t".join(p.split(" → ")) for s, p in commit.files]
    return {
        "hash": commit.sha,
        "time": commit.date,
        "author": commit.author,
        "otherRefs": [full for ref in commit.refs for full in _full_refs(ref)],
        "subject": commit.subject,
        "body": commit.body,
        "nameStatus": "\n".join(name_status),
    }


async def commits(request: web.Request) -> web.Response:
    """``GET /api/commits/<project>``: go-pploy's list of recent commits; a failure is
    go-pploy's ``{message}`` with its status."""
    svc = services(request)
    try:
        project = svc.projects.get(request.match_info["name"])
        found = await git.recent_commits(str(project.path), svc.config.git.commits)
    except PployError as exc:
        return web.json_response({"message": exc.message}, status=exc.status)
    except git.GitError as exc:
        return web.json_response({"message": str(exc)}, status=500)
    return web.json_response([_commit(c) for c in found])


def _field(request: web.Request, body: Any, key: str) -> str | None:
    value = request.query.get(key, body.get(key))
    return value if isinstance(value, str) and value else None


@for_scripts
@same_origin_form
async def lock(request: web.Request) -> web.Response:
    """``POST /<project>/lock`` with ``operation=gain|extend|release`` (and go-pploy's
    ``user``, which must be the caller), then back to the project."""
    svc = services(request)
    project = svc.projects.get(request.match_info["project"])
    body = await one_shot_body(request)
    operation = _field(request, body, "operation")
    named = _field(request, body, "user")
    caller = request[CALLER]
    try:
        if not operation:
            raise BadRequest("'operation' is required: gain, extend or release")
        if named is not None and named != caller.user:
            raise Forbidden(
                f"you are signed in as {caller.user}, but the form names {named}: pploy locks "
                f"only as the signed-in user (sign in as {named} to act as them)"
            )
        await actions.apply_lock(svc, caller, project, operation)
    except PployError as exc:
        if _browser(request):
            raise redirect_with_error(_page(request, project.name), exc.message) from None
        raise
    raise web.HTTPFound(_page(request, project.name))


@for_scripts
@starts_work
@same_origin_form
async def create(request: web.Request) -> web.Response:
    """go-pploy's ``POST /_create`` (the Scala ``/_/create``) with ``url``: clone it, then
    the new project's page."""
    svc = services(request)
    body = await one_shot_body(request)
    url = _field(request, body, "url")
    try:
        if not url:
            raise BadRequest("'url' is required (query string, JSON or form field)")
        project = await actions.add_project(svc, request[CALLER], url)
    except PployError as exc:
        if _browser(request):
            raise redirect_with_error(_page(request, None), exc.message) from None
        raise
    raise web.HTTPSeeOther(_page(request, project.name))


@for_scripts
@same_origin_form
async def remove(request: web.Request) -> web.Response:
    """``POST /<project>/remove``: as pploy's removal (an admin holding the lock, no job
    running), then the front page."""
    svc = services(request)
    name = svc.projects.get(request.match_info["project"]).name
    await one_shot_body(request)  # a form needs the token or a same-origin proof
    try:
        await actions.remove_project(svc, request[CALLER], name)
    except PployError as exc:
        if _browser(request):
            raise redirect_with_error(_page(request, name), exc.message) from None
        raise
    raise web.HTTPFound(_page(request, None))


async def logs(request: web.Request) -> web.StreamResponse:
    """``GET /<project>/logs``: the latest deploy's log (``generation=N``: the N-th deploy
    before it; checkouts do not count), as go-pploy; none (yet): 200 and nothing, as go-pploy.
    The originals' ``full=1`` is the default here (logs are never cut)."""
    svc = services(request)
    name = svc.projects.get(request.match_info["name"]).name
    generation = request.query.get("generation", "0") or "0"
    if not generation.isdigit() or int(generation) > 1000:
        raise BadRequest("generation must be a number from 0 to 1000")
    deploys, _ = svc.store.find_jobs(name, {"kind": "deploy"}, "", 1, int(generation))
    if not deploys:
        return web.Response(text="", content_type="text/plain", charset="utf-8")
    raise web.HTTPFound(f"/api/jobs/{deploys[0].id}/log")


async def index(request: web.Request) -> web.StreamResponse:
    """go-pploy's page, at ``UI/`` and ``UI/<project>`` (it reads the project from its URL)."""
    directory = services(request).config.goploy_ui
    assert directory is not None  # the route exists only with goploy_ui set
    return web.FileResponse(directory / "index.html", headers={"Cache-Control": "no-cache"})


async def to_index(request: web.Request) -> web.Response:
    """``UI`` without the slash, and go-pploy's ``GET /<project>/lock``: the page."""
    raise web.HTTPFound(_page(request, request.match_info.get("name")))


def add_routes(app: web.Application, ui: Path | None) -> None:
    """go-pploy's routes at the root, and with ``ui`` (its built assets) all of them under
    :data:`UI` as well. Registered before the old ``/<project>`` page redirects."""
    router = app.router
    for base in ("", UI) if ui else ("",):
        router.add_get(base + "/api/status/", status)
        router.add_get(base + "/api/status/{name}", status)
        router.add_get(base + "/api/commits/{name}", commits)
        router.add_post(base + "/_create", create)
        router.add_post(base + "/{project}/lock", lock)
        router.add_post(base + "/{project}/remove", remove)
        router.add_get(base + "/{name}/logs", logs)
    if ui:
        router.add_post(UI + "/{project}/deploy", one_shot_deploy)
        router.add_post(UI + "/{project}/checkout", one_shot_checkout)
        router.add_static(UI + "/assets/", ui)
        router.add_get(UI, to_index)
        router.add_get(UI + "/", index)
        router.add_get(UI + "/{name}", index)
        router.add_get(UI + "/{name}/lock", to_index)
