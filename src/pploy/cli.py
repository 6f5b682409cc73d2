"""The `pploy` command: one entry point, one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pploy import __version__

# Order is the order shown in --help.
SUBCOMMAND_MODULES = [
    "pploy.deploy.cli",
    "pploy.gate.cli",
    "pploy.chain.cli",
    "pploy.client.cli",
]


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
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_run-job"]:  # hidden, started by `pploy serve`: no other imports
        from pploy.deploy.runner import main as run_job

        return run_job(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
