"""``pploy gate``: run the authenticating proxy, or just check its configuration."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from pploy import eventloop, log
from pploy.gate.config import ConfigError, GateConfig, load_config, warnings
from pploy.gate.server import GateServer, StartupRefused, startup_problems

DESCRIPTION = """\
Run gate, the authenticating reverse proxy: users sign in with Google, GitHub (or GitHub
Enterprise), any OpenID Connect provider, or a local dev form; every request (WebSocket
upgrades included) is authenticated, then proxied without buffering, or served from htdocs.
Reads typester/gate's config.yml unchanged; see docs/gate.md for every key and extension.
"""

DEFAULT_CONFIG = "config.yml"  # typester/gate's default, in the current directory

EPILOG = """\
examples:
  pploy gate --config gate.yml                  run
  pploy gate --config gate.yml --check-config   validate and exit (0 = fine)
  pploy gate -conf config.yml                   typester/gate's spelling
  pploy gate                                    reads ./config.yml, as typester/gate did

endpoints without authentication: /ping (health), /.well-known/gate/jwks.json (public keys
of the X-Gate-Assertion header sent upstream), and the login/callback/logout paths.
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "gate",
        help="run gate, the authenticating reverse proxy",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        "-c",
        "-conf",  # typester/gate's spelling
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"gate's config.yml (YAML); default ./{DEFAULT_CONFIG}, as typester/gate "
        "(also spelt -conf FILE)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration (keys, values, named files) and exit",
    )
    log.add_level_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    log.setup(args.log_level)
    if args.config == DEFAULT_CONFIG and not Path(DEFAULT_CONFIG).exists():
        print(
            f"pploy gate: no configuration: ./{DEFAULT_CONFIG} does not exist in "
            f"{Path.cwd()} (name one with --config FILE or -conf FILE)",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if args.check_config:
        problems = startup_problems(config)
        for warning in warnings(config):
            print(f"warning: {warning}", file=sys.stderr)
        if problems:
            print(f"{args.config}: invalid configuration:", file=sys.stderr)
            for problem in problems:
                print(problem, file=sys.stderr)
            return 2
        print(f"{args.config}: configuration OK")
        return 0
    try:
        return eventloop.run(_serve(config))
    except StartupRefused as exc:
        print(f"gate refuses to start:\n{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gate cannot listen on {config.address}: {exc}", file=sys.stderr)
        return 1


async def _serve(config: GateConfig) -> int:
    server = GateServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.event("gate.stop")
        await server.stop()
    return 0
