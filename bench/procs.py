"""Local servers on loopback, as processes: a free port, waiting until one listens, stopping
one, the tail of its log. The benchmarks' own; the tests import them from here too (one copy),
since the package itself needs none of them."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log, for an error message about the process writing it."""
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


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 10) -> None:
    """Send ``sig``, then SIGKILL if the process has not exited after ``wait`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
