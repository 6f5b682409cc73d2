"""Server-rendered HTML pages and their forms (each form CSRF-checked, then redirected)."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from pploy.deploy import actions
from pploy.deploy.domain import names
from pploy.deploy.domain.errors import BadRequest, PployError
from pploy.deploy.domain.permissions import Refused
from pploy.deploy.services import services
from pploy.deploy.web import history, i18n, security, views
from pploy.deploy.web.auth import GO_PPLOY_COOKIE, USER_COOKIE, cookie_value
from pploy.deploy.web.middleware import no_action, starts_work
from pploy.deploy.web.params import job_id
from pploy.deploy.web.rendering import (
    LANGUAGE_COOKIE,
    redirect_with_error,
    redirect_with_flash,
    render,
)
from pploy.deploy.web.requestkeys import CALLER
from pploy.redirects import safe_return_path as safe_next  # the project's one validator

routes = web.RouteTableDef()


async def form_field(request: web.Request, key: str) -> str:
    await security.check_form_token(request)
    value = (await request.post()).get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{key} is required")
    return value.strip()


def project_url(name: str) -> str:
    return f"/projects/{quote(name)}"


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    svc = services(request)
    projects = [views.project_summary(svc, p) for p in svc.projects.list()]
    return render(
        request, "index.html", projects=projects, jobs=svc.store.list_jobs(limit=20),
        may_add=svc.permissions.manage_projects(request[CALLER], "add projects"),
    )  # fmt: skip


@routes.post("/projects")
@starts_work
async def add_project(request: web.Request) -> web.Response:
    svc = services(request)
    url = await form_field(request, "url")
    try:
        project = await actions.add_project(svc, request[CALLER], url)
    except Refused:
        raise  # a permission refusal is a 403, not a message on the next page
    except PployError as exc:
        # Kept without its secrets: the typed URL travels back in a cookie.
        raise redirect_with_error("/", exc.message, {"url": names.without_secrets(url)}) from None
    raise redirect_with_flash(project_url(project.name), f"added {project.name}")


@routes.get("/login")
async def login_page(request: web.Request) -> web.Response:
    svc = services(request)
    if not svc.auth.picks_name:
        raise web.HTTPSeeOther("/")
    return render(
        request, "login.html", users=svc.auth.deployers(), next=safe_next(request.query.get("next"))
    )


@routes.post("/login")
@no_action("standalone mode: the caller picks their own name (a cookie of their own)")
async def login(request: web.Request) -> web.Response:
    svc = services(request)
    if not svc.auth.picks_name:
        raise web.HTTPSeeOther("/")
    name = await form_field(request, "user")
    if not svc.auth.knows(name):
        raise BadRequest(f"{name!r} is not one of the configured users")
    target = safe_next((await request.post()).get("next"))
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        USER_COOKIE, cookie_value(names.user_name(name)), path="/", max_age=365 * 86400,
        httponly=True, samesite="Lax", secure=request.secure,
    )  # fmt: skip
    raise response


@routes.post("/logout")
@no_action("clears the caller's own cookies")
async def logout(request: web.Request) -> web.Response:
    await security.check_form_token(request)
    response = web.HTTPSeeOther("/login")
    # Emptied, not deleted: go-pploy's `pploy_user` may sit at a path pploy cannot clear
    # (`/` under a prefix), and an empty `user` makes pploy ignore it.
    response.set_cookie(
        USER_COOKIE, "", path="/", max_age=365 * 86400, httponly=True, samesite="Lax",
        secure=request.secure,
    )  # fmt: skip
    response.del_cookie(GO_PPLOY_COOKIE, path="/")
    raise response


@routes.get("/projects/{name}")
async def project_page(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    files = await project.read_files()
    detail = await views.project_detail(svc, project, files)
    commits = await views.commits_view(svc, project)
    return render(
        request,
        "project.html",
        project=detail,
        commits=commits,
        readme=files.readme,
        may_deploy={
            env: svc.permissions.deploy(request[CALLER], project.name, env)
            for env in detail["envs"]
        },
        may_remove=svc.permissions.manage_projects(request[CALLER], f"remove {project.name}"),
        history=history.history_view(svc.store, project.name, request.query),
    )


@routes.post("/projects/{name}/lock")
async def lock(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    operation = await form_field(request, "operation")
    try:
        await actions.apply_lock(svc, request[CALLER], project, operation)
    except PployError as exc:
        raise redirect_with_error(project_url(project.name), exc.message) from None
    raise web.HTTPSeeOther(project_url(project.name))


@routes.post("/projects/{name}/checkout")
@starts_work
async def checkout(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    ref = await form_field(request, "ref")
    try:
        record = await actions.start_checkout(svc, request[CALLER], project, ref)
    except PployError as exc:
        raise redirect_with_error(project_url(project.name), exc.message, {"ref": ref}) from None
    raise web.HTTPSeeOther(f"/jobs/{record.id}")


@routes.post("/projects/{name}/deploy")
@starts_work
async def deploy(request: web.Request) -> web.Response:
    svc = services(request)
    project = svc.projects.get(request.match_info["name"])
    env = await form_field(request, "env")
    override = (await request.post()).get("override_freeze") or None  # docs/governance.md
    try:
        record = await actions.start_deploy(svc, request[CALLER], project, env, override)
    except Refused:
        raise  # a permission refusal is a 403, not a message on the next page
    except PployError as exc:
        raise redirect_with_error(project_url(project.name), exc.message) from None
    raise web.HTTPSeeOther(f"/jobs/{record.id}")


@routes.post("/projects/{name}/remove")
async def remove(request: web.Request) -> web.Response:
    svc = services(request)
    name = request.match_info["name"]
    await security.check_form_token(request)
    try:
        await actions.remove_project(svc, request[CALLER], name)
    except Refused:
        raise  # a permission refusal is a 403, not a message on the next page
    except PployError as exc:
        raise redirect_with_error(project_url(name), exc.message) from None
    raise redirect_with_flash("/", f"removed {name}")


@routes.get("/jobs/{job_id}")
async def job_page(request: web.Request) -> web.Response:
    svc = services(request)
    record = svc.jobs.get(job_id(request))
    path = svc.jobs.log_path(record)
    transport = request.query.get("transport", "sse")
    if transport not in ("sse", "ws"):
        transport = "sse"
    lock = svc.locks.get(record.project)
    return render(
        request,
        "job.html",
        job=record,
        lock=lock,
        transport=transport,
        log_removed=not path.exists() and record.log_bytes > 0,
        repository=svc.store.get_repository(record.repository) if record.repository else None,
    )


@routes.post("/jobs/{job_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    svc = services(request)
    record = svc.jobs.get(job_id(request))
    await security.check_form_token(request)
    try:
        await actions.cancel_job(svc, request[CALLER], record.id)
    except PployError as exc:
        raise redirect_with_error(f"/jobs/{record.id}", exc.message) from None
    raise web.HTTPSeeOther(f"/jobs/{record.id}")


@routes.get("/language")
async def set_language(request: web.Request) -> web.Response:
    """The language switcher: remember the choice in a cookie, go back where the reader was."""
    language = request.query.get("set", "")
    response = web.HTTPSeeOther(safe_next(request.query.get("next")))
    if language in i18n.LANGUAGES:
        response.set_cookie(
            LANGUAGE_COOKIE, language, path="/", max_age=365 * 86400, samesite="Lax",
            secure=request.secure,
        )  # fmt: skip
    raise response


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
