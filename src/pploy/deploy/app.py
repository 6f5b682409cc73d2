"""The pploy web application: services, middlewares and routes wired together."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from pploy import log
from pploy.deploy import i18n, security
from pploy.deploy.auth import Authenticator
from pploy.deploy.config import Config
from pploy.deploy.errors import BadRequest, PployError, Unauthorized
from pploy.deploy.jobs import Jobs
from pploy.deploy.locks import Locks
from pploy.deploy.notify import Notifier
from pploy.deploy.projects import Projects
from pploy.deploy.requestkeys import NEW_CSRF_TOKEN, REQUEST_ID, USER
from pploy.deploy.store import JobRecord, Lock, Store

HERE = Path(__file__).parent
PUBLIC_PREFIXES = ("/static/", "/ping", "/login", "/favicon.ico")


@dataclass
class Services:
    config: Config
    store: Store
    projects: Projects
    locks: Locks
    jobs: Jobs
    notifier: Notifier
    auth: Authenticator
    templates: jinja2.Environment

    def link(self, path: str) -> str:
        base = (self.config.public_url or "").rstrip("/")
        return base + path


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def build_services(config: Config) -> Services:
    workdir = config.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    store = Store(workdir / "pploy.db")
    projects = Projects(workdir, git_config=config.git)
    notifier = Notifier(config.webhooks)

    def lock_changed(event: str, lock: Lock) -> None:
        notifier.emit(
            event,
            {
                "project": lock.project,
                "user": lock.user,
                "expires_at": lock.expires_at,
                "expires_at_text": time.strftime("%H:%M:%S", time.localtime(lock.expires_at)),
                "link": svc.link(f"/projects/{lock.project}"),
            },
        )

    def job_finished(record: JobRecord) -> None:
        notifier.emit(
            "job.finished",
            {
                **record.to_json(),
                "env_text": f" to {record.env}" if record.env else "",
                "sha_short": (record.sha or "")[:10],
                "link": svc.link(f"/jobs/{record.id}"),
            },
        )

    locks = Locks(
        store,
        gain_minutes=config.lock.gain_minutes,
        extend_minutes=config.lock.extend_minutes,
        on_change=lock_changed,
    )
    jobs = Jobs(config, store, projects, locks, on_finish=job_finished)
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates.filters["datetime"] = lambda ts: (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""
    )
    templates.filters["duration"] = format_duration
    templates.filters["isodate"] = lambda text: text[:16].replace("T", " ")
    auth = Authenticator(config.auth, config.users)
    svc = Services(config, store, projects, locks, jobs, notifier, auth, templates)
    return svc


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def wants_json(request: web.Request) -> bool:
    if request.path.startswith("/api/"):
        return True
    accept = request.headers.get("Accept", "")
    return "text/html" not in accept and "application/json" in accept


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    svc = services(request)
    language = i18n.negotiate(request.headers.get("Accept-Language"))
    flash = request.cookies.get("flash")
    html = svc.templates.get_template(template).render(
        _=i18n.translator(language),
        lang=language,
        user=request.get(USER),
        picks_name=svc.auth.picks_name,
        csrf_token=security.csrf_token(request),
        csrf_field=security.CSRF_FIELD,
        flash=flash[:500] if flash else None,
        request_path=request.path_qs,
        now=time.time(),
        **context,
    )
    response = web.Response(text=html, status=status, content_type="text/html")
    if flash:
        response.del_cookie("flash", path="/")
    return response


def redirect_with_flash(location: str, message: str | None = None) -> web.HTTPSeeOther:
    response = web.HTTPSeeOther(location)
    if message:
        response.set_cookie("flash", message[:500], path="/", httponly=True, samesite="Lax")
    return response


@web.middleware
async def request_context(request: web.Request, handler: Any) -> web.StreamResponse:
    """Request id, access log line, errors rendered as JSON or HTML, and the CSRF cookie."""
    request_id = request.headers.get("X-Request-Id", "")[:64] or secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except PployError as exc:
            response = error_response(request, exc.status, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(request, exc.status, exc.reason)
        status = response.status
        if not response.prepared:
            response.headers.setdefault("X-Request-Id", request_id)
            new_token = request.get(NEW_CSRF_TOKEN)
            if new_token:
                response.set_cookie(
                    security.CSRF_COOKIE, new_token, path="/", httponly=True, samesite="Lax",
                    secure=request.secure,
                )  # fmt: skip
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        log.event(
            "http.request", request_id=request_id, method=request.method, path=request.path,
            status=status, user=request.get(USER), remote=request.remote,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )  # fmt: skip


def error_response(request: web.Request, status: int, message: str) -> web.Response:
    if wants_json(request):
        return web.json_response({"error": message}, status=status)
    return render(request, "error.html", status=status, message=message, status_code=status)


@web.middleware
async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
    svc = services(request)
    if request.path != "/ping" and not security.host_allowed(
        request, svc.config.public_url, svc.config.allowed_hosts
    ):
        raise BadRequest(
            f"this pploy does not serve the host {request.host!r}; "
            "add it to allowed_hosts (or set public_url)"
        )
    public = request.path.startswith(PUBLIC_PREFIXES)
    try:
        request[USER] = await svc.auth.identify(request)
    except Unauthorized:
        if not public:
            raise
        request[USER] = None
    if request[USER] is None and not public:
        if svc.auth.picks_name and not wants_json(request) and request.method == "GET":
            raise web.HTTPSeeOther("/login?" + _next_query(request.path_qs))
        raise Unauthorized(
            "choose who you are first (the `user` cookie)"
            if svc.auth.picks_name
            else "not authenticated"
        )
    if request.method not in security.SAFE_METHODS or request.headers.get("Upgrade"):
        trust = svc.auth.mode != "standalone" and svc.auth.trusted_peer(request)
        security.check_origin(request, svc.config.public_url, trust)
    return await handler(request)


def _next_query(path: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"next": path})


async def on_startup(app: web.Application) -> None:
    svc = app[SERVICES]
    interrupted = svc.jobs.recover()
    log.event(
        "pploy.start", workdir=str(svc.config.workdir), mode=svc.auth.mode,
        interrupted=len(interrupted),
    )  # fmt: skip


async def on_shutdown(app: web.Application) -> None:
    svc = app[SERVICES]
    await svc.jobs.shutdown(svc.config.job.shutdown_grace_seconds)


async def on_cleanup(app: web.Application) -> None:
    svc = app[SERVICES]
    await svc.notifier.close()
    await svc.auth.close()
    svc.store.close()
    svc.jobs.close()


def create_app(config: Config) -> web.Application:
    """The aiohttp application for ``config`` (its workdir is created if missing)."""
    from pploy.deploy import api, pages, streams

    app = web.Application(middlewares=[request_context, authenticate], client_max_size=1 << 20)
    app[SERVICES] = build_services(config)
    streams.add_routes(app)
    api.add_routes(app)
    from pploy.chain import streamtest  # stream-test endpoints for `pploy doctor`

    streamtest.add_routes(app, "/api/stream-test")
    pages.add_routes(app)
    app.router.add_static("/static/", HERE / "static", append_version=True)
    streams.add_one_shot_routes(app)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
