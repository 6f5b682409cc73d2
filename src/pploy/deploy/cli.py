"""``pploy serve``: run the deploy manager."""

from __future__ import annotations

import argparse
import re
import signal
import socket
import sys
from types import FrameType
from typing import Any

from aiohttp import web

from pploy import eventloop, log

# go-pploy's flags (Go's flag package: -name VALUE, -name=VALUE, also with two dashes).
# Those with an exact equivalent here are understood as it (-lock D: a lock of D, extended by
# D, as go-pploy's was); each other one is answered with the pploy setting that replaces it
# (docs/migrating.md), in one line.
GO_FLAGS_UNDERSTOOD = ("workdir", "port", "prefix", "pidfile")
_TEMPLATE = (
    "`templates: {KEY: …}` of a `webhooks:` entry with `format: FORMAT` in the --config file, "
    "written with {user}, {project}, {env} for Go's {{.User}}, {{.Project}}, {{.Env}}"
)


def _template(key: str, format: str) -> str:
    return _TEMPLATE.replace("KEY", key).replace("FORMAT", format)


# {value} and {minutes} are filled in from the flag's value.
GO_FLAGS_REPLACED = {
    "lock": "`lock: {gain_minutes: {minutes}, extend_minutes: {minutes}}` in the --config file "
    "(go-pploy's one duration did both)",
    "logmax": "`job: {keep_logs: {value}}` in the --config file (logs kept per project)",
    "webhook": "`webhooks: [{url: URL, format: slack}]` in the --config file",
    "lockgained": _template("lock.gained", "slack"),
    "lockreleased": _template("lock.released", "slack"),
    "lockextended": _template("lock.extended", "slack"),
    "deployed": _template("job.finished", "slack"),
    "ddapikey": "`webhooks: [{format: datadog, api_key: KEY}]` in the --config file",
    "ddappkey": "nothing: Datadog's events API needs only the API key "
    "(`webhooks: [{format: datadog, api_key: KEY}]` in the --config file)",
    "ddlockgained": _template("lock.gained", "datadog"),
    "ddlockreleased": _template("lock.released", "datadog"),
    "ddlockextended": _template("lock.extended", "datadog"),
    "dddeployed": _template("job.finished", "datadog"),
    "ldaphost": '`ldap: {url: "ldap://HOST:PORT", base_dn: DN}` in the --config file',
    "ldapport": '`ldap: {url: "ldap://HOST:{value}", base_dn: DN}` in the --config file',
    "ldapdn": '`ldap: {url: "ldap://HOST:PORT", base_dn: "{value}"}` in the --config file',
    "ldapttl": "`ldap: {…, cache_minutes: {minutes}}` in the --config file",
}
# Values that are secrets (a Slack hook URL is one) are never echoed back.
_SAFE_TO_ECHO = {"lock", "logmax", "ldapport", "ldapdn", "ldapttl"}
_GO_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def go_minutes(duration: str | None) -> str:
    """A Go duration (``10m``, ``1h30m``, ``90s``) in minutes, or ``N`` when it is not one."""
    match = _GO_DURATION.match(duration or "")
    if not duration or not match or not any(match.groups()):
        return "N"
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    return f"{hours * 60 + minutes + seconds / 60:g}"


class _GoFlag(argparse.Action):
    """A go-pploy flag pploy has no flag for: one line naming what replaces it, exit 2."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given = values if isinstance(values, str) else None
        if self.understood(namespace, given):
            return
        name = self.dest.removeprefix("go_")
        value = given if name in _SAFE_TO_ECHO else None
        replacement = (
            GO_FLAGS_REPLACED[name]
            .replace("{value}", value or "N")
            .replace("{minutes}", go_minutes(value))
        )
        parser.exit(2, f"pploy serve: {option_string} is go-pploy's flag; use {replacement}\n")

    def understood(self, namespace: argparse.Namespace, value: str | None) -> bool:
        """Whether pploy can take this value as it is (then it is stored in ``namespace``)."""
        return False


class _GoLock(_GoFlag):
    """go-pploy's ``-lock DURATION``: pploy's gain and extend minutes, both that long; a value
    that is not a duration is answered like any other go-pploy flag."""

    def understood(self, namespace: argparse.Namespace, value: str | None) -> bool:
        minutes = go_minutes(value)
        if minutes == "N":  # not a duration: say what to write instead
            return False
        namespace.go_lock_minutes = float(minutes)
        return True


def add_go_flags(parser: argparse.ArgumentParser) -> None:
    """go-pploy's single-dash flags, hidden from --help: the exact equivalents as aliases of
    pploy's own flags, the others answered with their replacement."""
    for name in GO_FLAGS_UNDERSTOOD:
        kind = int if name == "port" else str
        parser.add_argument(f"-{name}", dest=name, type=kind, help=argparse.SUPPRESS)
    for name in GO_FLAGS_REPLACED:
        parser.add_argument(
            f"-{name}", f"--{name}", dest=f"go_{name}", nargs="?",
            action=_GoLock if name == "lock" else _GoFlag, help=argparse.SUPPRESS,
        )  # fmt: skip
    parser.add_argument("-help", action="help", help=argparse.SUPPRESS)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "serve",
        help="run the deploy manager (web UI, JSON API, log streams)",
        description=(
            "Run pploy's deploy manager: projects, locks, jobs and their live logs. "
            "Settings come from --config, then PPLOY_* environment variables, then these flags."
        ),
        epilog=(
            "go-pploy's flags -workdir, -port, -prefix and -pidfile work as their -- forms, "
            "and -lock 10m sets lock.gain_minutes and lock.extend_minutes to 10; its other "
            "flags are answered with the setting that replaces them (docs/migrating.md)."
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
    add_go_flags(parser)
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
    minutes = getattr(args, "go_lock_minutes", None)
    if minutes is not None:  # go-pploy's -lock
        overrides["lock.gain_minutes"] = overrides["lock.extend_minutes"] = minutes
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
