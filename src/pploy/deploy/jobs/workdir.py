"""One pploy per workdir: an exclusive lock on ``<workdir>/pploy.lock`` for pploy's lifetime.

Two servers on one workdir would each take the other's running jobs for a crash's leftovers
(recovery kills them) and both accept a deploy of the same project. The second refuses to
start instead, naming the workdir and the holder's PID. The lock is a ``flock``: the kernel
drops it when the holder exits, however it exits (SIGKILL included), so a stale lock file
never blocks a restart. The descriptor is close-on-exec, so a job's processes, which may
outlive pploy, never hold it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pploy.deploy.config import ConfigError

LOCK_FILE = "pploy.lock"


class WorkdirInUse(ConfigError):
    """Another pploy holds the workdir."""


class WorkdirLock:
    """The held lock; ``release`` (or the process's exit) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = -1


def hold_workdir(workdir: Path) -> WorkdirLock:
    """Take ``workdir``'s lock and write our PID into it; WorkdirInUse when another pploy
    (``pploy serve`` or ``pploy up``) has it."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise WorkdirInUse(
            f"workdir {workdir} is in use by another pploy (PID {holder}); stop it, or give "
            "this one another workdir (--workdir)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # a full disk: the lock holds all the same, only the PID is not shown
    return WorkdirLock(path, fd)
