"""``pploy gate``: run the authenticating proxy, or just check its configuration."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pploy import log
from pploy.gate.config import ConfigError, GateConfig, load_config, warnings
from pploy.gate.server import startup_problems
from pploy.gate.workers import run_one, run_workers

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
  pploy gate --config gate.yml --workers 1      one process (default: `workers:`, else
                                                one worker process per CPU core)

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
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes sharing the port (overrides the `workers` key; "
        "default: one per CPU core)",
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
    if args.workers is not None and args.workers < 1:
        print("--workers: must be at least 1", file=sys.stderr)
        return 2
    count = args.workers if args.workers is not None else config.worker_count()
    problems = startup_problems(config)
    if problems:
        print("gate refuses to start:\n" + "\n".join(problems), file=sys.stderr)
        return 2
    if sys.platform.startswith("linux"):
        # Also with one worker: the parent restarts a worker that dies and handles SIGHUP.

        def reload() -> tuple[GateConfig, int]:
            fresh = load_config(args.config)
            return fresh, args.workers if args.workers is not None else fresh.worker_count()

        return run_workers(config, count, reload)
    if count > 1:
        print(
            "workers: more than one worker needs Linux (SO_REUSEPORT spreading connections "
            "over processes); set workers: 1",
            file=sys.stderr,
        )
        return 2
    return run_one(config)
