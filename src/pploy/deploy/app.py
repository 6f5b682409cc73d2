"""The pploy web application: services, middlewares and routes wired together.

Only the entry points (``pploy serve``, ``pploy up``, tests) import this module; route
modules import :mod:`~pploy.deploy.services`, :mod:`~pploy.deploy.web.rendering` and
:mod:`~pploy.deploy.web.params` instead."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from pploy import log, streamtest
from pploy.deploy import prefix
from pploy.deploy.config import Config
from pploy.deploy.services import SERVICES, Services, build_services
from pploy.deploy.web import api, govroutes, legacy, pages, runtime, streams, tokenroutes
from pploy.deploy.web.middleware import authenticate, request_context

__all__ = ["SERVICES", "Services", "create_app"]

STATIC = Path(__file__).parent / "web" / "static"
# How long a stopping pploy waits for ended jobs' logs to reach a shared database.
SHIP_DRAIN_SECONDS = 5.0


async def on_startup(app: web.Application) -> None:
    svc = app[SERVICES]
    interrupted = svc.jobs.recover()
    svc.notifier.warn_relative_links(svc.config.public_url)
    if svc.expiry is not None:
        svc.expiry.watch_existing([project.name for project in svc.projects.list()])
    if svc.directory is not None:  # a directory that is down is logged, never fatal
        await svc.directory.start()
    if svc.cluster is not None:
        await svc.cluster.start()
    if svc.jobs.shared_logs is not None:  # logs left short in the database by a stop
        svc.jobs.shared_logs.resume_shipping(svc.jobs.instance, svc.jobs.log_path)
    log.event(
        "pploy.start", workdir=str(svc.config.workdir), mode=svc.auth.mode,
        interrupted=len(interrupted),
    )  # fmt: skip


async def on_shutdown(app: web.Application) -> None:
    svc = app[SERVICES]
    await svc.jobs.shutdown(svc.config.job.shutdown_grace_seconds)


async def on_cleanup(app: web.Application) -> None:
    svc = app[SERVICES]
    if svc.expiry is not None:
        svc.expiry.close()
    await svc.notifier.close()
    if svc.directory is not None:
        await svc.directory.close()
    await svc.auth.close()
    if svc.cluster is not None:
        await svc.cluster.stop()
    if svc.jobs.shared_logs is not None:  # ended jobs' last log bytes, before the store closes
        await asyncio.to_thread(svc.jobs.shared_logs.drain, SHIP_DRAIN_SECONDS)
    svc.store.close()
    svc.jobs.close()


def create_app(config: Config) -> web.Application:
    """The aiohttp application for ``config`` (its workdir is created if missing), mounted
    under ``config.prefix`` when one is set."""
    svc = build_services(config)
    under = prefix.middleware(config.prefix, svc.auth.trusted_peer)
    counters = runtime.Counters()
    app = web.Application(
        middlewares=[under, runtime.counting(counters), request_context, authenticate],
        client_max_size=1 << 20,
    )
    app[SERVICES] = svc
    streams.add_routes(app)
    api.add_routes(app)
    tokenroutes.add_routes(app)
    govroutes.add_routes(app)  # audit log, freezes, approvals (issue 25)
    streamtest.add_routes(app, "/api/stream-test")  # read by `pploy doctor`
    pages.add_routes(app)
    runtime.add_routes(app, counters)  # /metrics, /api/stats
    app.router.add_static("/static/", STATIC, append_version=True)
    streams.add_one_shot_routes(app)  # last: /{project}/deploy must shadow no other route
    legacy.add_routes(app)  # the originals' /{project}… URLs, after everything of pploy's
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    root = prefix.mount(app, config.prefix)
    if root is not app:
        root[SERVICES] = svc  # for the run loop and start-up hooks added to the root
        root[runtime.COUNTERS] = counters
    return root
