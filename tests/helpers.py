import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest

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


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def wait_port(
    port: int,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    timeout: float = 15,
) -> None:
    """Wait until something listens on ``port``; fail early (with ``log``'s tail) if ``proc``
    exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            detail = f":\n{tail(log)}" if log is not None else ""
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}{detail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    detail = f":\n{tail(log)}" if log is not None else ""
    raise RuntimeError(f"nothing listens on {port} after {timeout} s{detail}")
