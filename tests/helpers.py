import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

# One copy of the process helpers, the benchmarks'; re-exported for the tests.
from bench.procs import free_port, tail, wait_port  # noqa: F401

# Data the tests read (third-party corpora and samples, with their licence notes in README.md):
# inside the repository, so a clone of the project alone runs every test.
DATA = Path(__file__).resolve().parent / "data"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the calling test because something it needs is missing (a binary, root, node
    modules). CI sets PPLOY_REQUIRE_ALL=1, which turns the skip into a failure: there a missing
    dependency must not leave part of the suite silently unrun. The one place this rule lives."""
    if os.environ.get("PPLOY_REQUIRE_ALL") == "1":
        pytest.fail(f"{reason} (PPLOY_REQUIRE_ALL=1 turns this skip into a failure)")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """Return the path of ``name``, or skip (fail under PPLOY_REQUIRE_ALL=1) if not installed."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed")
    return path


# How the browser tests launch Debian's chromium (headless, as root in CI: no sandbox; nothing
# that phones home or updates itself mid-test). Its path comes from require_binary("chromium").
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
