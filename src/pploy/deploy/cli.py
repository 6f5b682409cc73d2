"""``pploy serve``: run the deploy manager."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from types import FrameType

from aiohttp import web

from pploy import eventloop, log


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the deploy manager (web UI, JSON API, log streams)",
        description=(
            "Run pploy's deploy manager: projects, locks, jobs and their live logs. "
            "Settings come from --config, then PPLOY_* environment variables, then these flags."
        ),
    )
    parser.add_argument("--config", metavar="FILE", help="YAML configuration file")
    parser.add_argument("--workdir", metavar="DIR", help="projects, logs and database live here")
    parser.add_argument("--host", metavar="H", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", metavar="P", type=int, help="port to listen on (default 9000)")
    parser.add_argument(
        "--users", metavar="A,B", help="standalone mode: comma-separated deployer names"
    )
    parser.add_argument(
        "--prefix", metavar="PATH", help="serve under this path, e.g. /deploy (default: the root)"
    )
    parser.add_argument("--pidfile", metavar="FILE", help="write pploy's process id to FILE")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="add a demo project to the workdir (and users alice, bob if none are configured)",
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pploy.deploy.config import ConfigError, load_config

    overrides = {
        "workdir": args.workdir,
        "host": args.host,
        "port": args.port,
        "prefix": args.prefix,
        "pidfile": args.pidfile,
    }
    if args.users:
        overrides["users"] = [u.strip() for u in args.users.split(",") if u.strip()]
    try:
        config = load_config(args.config, overrides)
        if args.demo and not config.users:
            from pploy.deploy.demo import DEMO_USERS

            config = load_config(args.config, {**overrides, "users": DEMO_USERS})
        if config.auth.mode == "standalone" and not config.users and config.ldap is None:
            raise ConfigError(
                "users: standalone mode needs at least one deployer (users: [alice, bob], "
                "--users alice,bob or PPLOY_USERS), an ldap directory, or set auth.mode"
            )
    except ConfigError as exc:
        print(f"pploy: configuration error:\n{exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"configuration OK (auth mode {config.auth.mode}, workdir {config.workdir})")
        return 0
    log.setup(config.log_level)
    return serve(config, demo=args.demo)


def serve(config: object, demo: bool = False) -> int:
    from pploy.deploy.app import SERVICES, create_app
    from pploy.deploy.config import Config, ConfigError

    assert isinstance(config, Config)
    try:
        sock = socket.create_server((config.host, config.port), reuse_port=False)
    except OSError as exc:
        print(
            f"pploy: cannot listen on {config.host}:{config.port}: {exc.strerror} "
            "(choose another with --port)",
            file=sys.stderr,
        )
        return 1
    try:
        app = create_app(config)
    except ConfigError as exc:  # e.g. the workdir is in use by another pploy
        print(f"pploy: cannot start: {exc}", file=sys.stderr)
        sock.close()
        return 1
    if demo:
        from pploy.deploy.demo import ensure_demo_project

        async def add_demo(app: web.Application) -> None:
            await ensure_demo_project(app[SERVICES].projects, config.workdir)

        app.on_startup.append(add_demo)
    from pploy.deploy.web import runtime

    # Until the server's own handler takes over, SIGTERM stops pploy through the `finally`
    # below, which removes the pidfile: installed before the pidfile is written, so no signal
    # can leave a stale one behind.
    previous = signal.signal(signal.SIGTERM, _stop_while_starting)
    try:
        return _serve_with_pidfile(config, app, sock)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping anyway: nothing may cut this
        if config.pidfile:
            runtime.remove_pidfile(config.pidfile)  # only if it still names this process
        signal.signal(signal.SIGTERM, previous)


def _stop_while_starting(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _serve_with_pidfile(config: object, app: web.Application, sock: socket.socket) -> int:
    from pploy.deploy import server
    from pploy.deploy.config import Config, ConfigError
    from pploy.deploy.web import runtime

    assert isinstance(config, Config)
    metrics_sock = None
    try:
        if config.metrics_address:
            metrics_host, _, metrics_port = config.metrics_address.rpartition(":")
            try:
                metrics_sock = socket.create_server((metrics_host.strip("[]"), int(metrics_port)))
            except OSError as exc:
                raise ConfigError(
                    f"metrics_address: cannot listen on {config.metrics_address}: {exc.strerror}"
                ) from None
        if config.pidfile:
            runtime.write_pidfile(config.pidfile)
    except ConfigError as exc:
        print(f"pploy: cannot start: {exc}", file=sys.stderr)
        sock.close()
        return 1
    host, port = sock.getsockname()[:2]
    where = f"http://{host}:{port}{config.prefix}/"
    print(f"pploy: serving on {where} (workdir {config.workdir})", flush=True)
    if metrics_sock is not None:
        print(f"pploy: metrics on http://{config.metrics_address}/metrics", flush=True)
    eventloop.run(server.serve(app, sock, metrics_sock))  # uvloop with the `speed` extra
    return 0
