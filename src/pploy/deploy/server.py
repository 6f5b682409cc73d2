"""``pploy serve``'s life on its socket: serve until SIGTERM or SIGINT, then stop taking work.
By default (``job.on_shutdown: leave``) running jobs are left to their runners (runner.py) and
pploy exits within a few seconds; the next pploy on the workdir follows them again. With
``cancel``, a shutdown grace follows during which pploy keeps listening, so that running jobs'
log streams keep flowing and a new request that would start work is answered ``503 shutting
down`` rather than refused by a closed port; then the jobs still running are cancelled and the
server stops."""

from __future__ import annotations

import asyncio
import signal
import socket

from aiohttp import web

from pploy import log
from pploy.deploy.services import SERVICES

# After the grace: how long open responses (log streams of jobs now ended) may take to finish.
CLOSE_TIMEOUT = 10.0
# With job.on_shutdown: leave, the jobs go on and so would their log streams: those are cut
# after this (their viewers resume by offset from the next pploy).
LEAVE_CLOSE_TIMEOUT = 2.0
# How long a client connection may go without a complete request head, from its opening or
# its previous response (slowloris; idle keep-alive): web.run_app's default, which AppRunner
# leaves at 3,630 s. A request being answered (a followed log) is never cut by it.
HEAD_TIMEOUT = 75.0


async def drain(app: web.Application) -> None:
    """Take no new work, wait ``job.shutdown_grace_seconds`` for running jobs, then cancel
    what is left (the app's on_shutdown then finds nothing to do)."""
    svc = app[SERVICES]
    await svc.jobs.shutdown(svc.config.job.shutdown_grace_seconds)


async def serve(
    app: web.Application,
    sock: socket.socket,
    metrics_sock: socket.socket | None = None,
    head_timeout: float = HEAD_TIMEOUT,
) -> None:
    """Serve ``app`` on ``sock`` (and ``/metrics`` alone on ``metrics_sock``) until the first
    SIGTERM or SIGINT, then drain and stop. ``head_timeout``: see HEAD_TIMEOUT."""
    leave = app[SERVICES].config.job.on_shutdown == "leave"
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=LEAVE_CLOSE_TIMEOUT if leave else CLOSE_TIMEOUT,
        keepalive_timeout=head_timeout,
    )
    await runner.setup()
    metrics_runner = None
    try:
        await web.SockSite(runner, sock).start()
        if metrics_sock is not None:
            from pploy.deploy.web import runtime

            metrics = runtime.metrics_app(app[SERVICES], app[runtime.COUNTERS])
            metrics_runner = web.AppRunner(metrics, access_log=None, keepalive_timeout=head_timeout)
            await metrics_runner.setup()
            await web.SockSite(metrics_runner, metrics_sock).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            log.event("pploy.signal", signal=sig.name, stopping=stop.is_set())
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        await stop.wait()
        await drain(app)
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
