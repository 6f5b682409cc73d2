"""What pploy serve tells operators about itself: Prometheus ``/metrics``, the runtime
stats of ``/api/stats`` (go-pploy's ``/api/_stats``), and the ``--pidfile``.

``/metrics`` on pploy's own listener is authenticated like every other page (it names
projects and users' activity); ``metrics_address`` serves it on a separate listener without
authentication, for a Prometheus that cannot sign in — bind that to loopback or an internal
network."""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import resource
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler as Next

import pploy
from pploy import promtext
from pploy.configfile import ConfigError
from pploy.deploy.services import SERVICES, Services, services

STARTED = time.time()
# Routes whose requests are streams (counted while open), by their pattern.
STREAM_ROUTES = {
    "/api/jobs/{job_id}/events": "sse",
    "/api/jobs/{job_id}/ws": "websocket",
    "/api/jobs/{job_id}/log": "follow",  # only with ?follow=1
}


class Counters:
    """Requests answered and streams open, kept in memory since start."""

    def __init__(self) -> None:
        self.requests: dict[promtext.LabelKey, int] = defaultdict(int)
        self.open_streams: dict[str, int] = dict.fromkeys(STREAM_ROUTES.values(), 0)


COUNTERS: web.AppKey[Counters] = web.AppKey("pploy_counters", Counters)


def _route(request: web.Request) -> str:
    """The route's pattern (bounded), never the request's path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def counting(counters: Counters) -> Any:
    """Middleware: count every answer by route, method and status; streams while open."""

    @web.middleware
    async def count(request: web.Request, handler: Next) -> web.StreamResponse:
        route = _route(request)
        stream = STREAM_ROUTES.get(route)
        if stream == "follow" and request.query.get("follow") not in ("1", "true", "yes"):
            stream = None
        if stream:
            counters.open_streams[stream] += 1
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if stream:
                counters.open_streams[stream] -= 1
            method = request.method if request.method in _METHODS else "other"
            counters.requests[(("route", route), ("method", method), ("code", str(status)))] += 1

    return count


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _process() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        rss = usage.ru_maxrss * 1024
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    return {
        "rss_bytes": rss,
        "max_rss_bytes": usage.ru_maxrss * 1024,
        "cpu_user_seconds": round(usage.ru_utime, 3),
        "cpu_system_seconds": round(usage.ru_stime, 3),
        "open_fds": fds,
    }


def _locks_held(svc: Services) -> int:
    return sum(1 for p in svc.projects.list() if svc.locks.get(p.name) is not None)


def render_metrics(svc: Services, counters: Counters) -> str:
    """Every metric of pploy serve, in the text exposition format."""
    process = _process()
    lines: list[str] = []
    lines += promtext.family(
        "pploy_http_requests_total", "counter", "Requests answered, by route, method and status.",
        sorted(counters.requests.items()),
    )  # fmt: skip
    lines += promtext.family(
        "pploy_open_streams", "gauge", "Log streams being served now, by transport.",
        [((("transport", k),), v) for k, v in sorted(counters.open_streams.items())],
    )  # fmt: skip
    lines += promtext.family(
        "pploy_jobs_total", "counter", "Finished jobs ever recorded, by kind and status.",
        [((("kind", k), ("status", s)), n) for (k, s), n in sorted(svc.store.job_counts().items())],
    )  # fmt: skip
    lines += promtext.family(
        "pploy_jobs_running", "gauge", "Jobs running now.", [((), len(svc.jobs.running))]
    )
    lines += promtext.family(
        "pploy_projects", "gauge", "Projects cloned.", [((), len(svc.projects.list()))]
    )
    lines += promtext.family(
        "pploy_locks_held", "gauge", "Locks held now.", [((), _locks_held(svc))]
    )
    lines += promtext.family(
        "pploy_accepting_work", "gauge", "0 during the shutdown grace, else 1.",
        [((), int(svc.jobs.accepting))],
    )  # fmt: skip
    lines += promtext.family(
        "process_start_time_seconds", "gauge", "When pploy started (Unix time).", [((), STARTED)]
    )
    lines += promtext.family(
        "process_resident_memory_bytes", "gauge", "Resident memory.", [((), process["rss_bytes"])]
    )
    lines += promtext.family(
        "process_cpu_seconds_total", "counter", "CPU time used.",
        [((), process["cpu_user_seconds"] + process["cpu_system_seconds"])],
    )  # fmt: skip
    lines += promtext.family(
        "process_open_fds", "gauge", "Open file descriptors.", [((), process["open_fds"])]
    )
    return "\n".join(lines) + "\n"


def stats(svc: Services, counters: Counters) -> dict[str, Any]:
    """Runtime figures in the spirit of go-pploy's ``/api/_stats`` (its Go runtime stats),
    for this Python process."""
    return {
        "time": round(time.time(), 3),
        "pid": os.getpid(),
        "pploy_version": pploy.__version__,
        "python_version": platform.python_version(),
        "uptime_seconds": round(time.time() - STARTED, 3),
        "threads": threading.active_count(),
        "asyncio_tasks": len(asyncio.all_tasks()),
        "gc_collections": [generation["collections"] for generation in gc.get_stats()],
        **_process(),
        "jobs_running": len(svc.jobs.running),
        "open_streams": dict(counters.open_streams),
        "requests": sum(counters.requests.values()),
        "accepting_work": svc.jobs.accepting,
    }


async def metrics_handler(request: web.Request) -> web.Response:
    text = render_metrics(services(request), request.app[COUNTERS])
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "no-store"})  # fmt: skip


async def stats_handler(request: web.Request) -> web.Response:
    return web.json_response(stats(services(request), request.app[COUNTERS]))


def add_routes(app: web.Application, counters: Counters) -> None:
    """``/metrics`` and ``/api/stats`` (``/api/_stats``: go-pploy's path), authenticated."""
    app[COUNTERS] = counters
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/stats", stats_handler)
    app.router.add_get("/api/_stats", stats_handler)


def metrics_app(svc: Services, counters: Counters) -> web.Application:
    """The separate, unauthenticated listener of ``metrics_address``: ``/metrics`` only."""
    app = web.Application()
    app[SERVICES] = svc
    app[COUNTERS] = counters
    app.router.add_get("/metrics", metrics_handler)
    return app


# -- pidfile ----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_pidfile(path: Path) -> None:
    """Write this process's id to ``path`` (atomically); ConfigError when it names another
    live process (a second pploy with the same pidfile), a stale one is replaced."""
    try:
        old = int(path.read_text().strip() or "0")
    except FileNotFoundError:
        old = 0
    except (OSError, ValueError) as exc:
        raise ConfigError(f"pidfile: cannot use {path}: {exc}") from None
    if old and old != os.getpid() and _alive(old):
        raise ConfigError(f"pidfile: {path} names process {old}, which is running")
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        temp.write_text(f"{os.getpid()}\n")
        os.replace(temp, path)
    except OSError as exc:
        raise ConfigError(f"pidfile: cannot write {path}: {exc.strerror}") from None


def remove_pidfile(path: Path) -> None:
    """Remove ``path`` if it still names this process."""
    try:
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
