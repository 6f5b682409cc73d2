"""The `pploy` command: one entry point, one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import sys

from pploy import __version__
from pploy.chain import cli as chain_cli
from pploy.client import cli as client_cli
from pploy.deploy import cli as deploy_cli
from pploy.gate import cli as gate_cli

# Plain imports (tests/test_architecture.py sees them). Order is the order shown in --help.
SUBCOMMAND_MODULES = [deploy_cli, gate_cli, chain_cli, client_cli]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pploy",
        description=(
            "Deploy lock manager whose deploy logs stream live to every viewer, "
            "with its own authenticating proxy (gate)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"pploy {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_run-job"]:  # hidden, started by `pploy serve`: no other imports
        from pploy.deploy.jobs.runner import main as run_job

        return run_job(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
