"""``<workdir>/logs/<project>.log``: where go-pploy kept a project's latest deploy log, kept
pointing (a relative symlink) at the latest deploy's ``<project>/<job>.log``, for the tools
that read the originals' layout (``tail -f``, log shippers)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pploy import log


def point_latest(log_path: Path, project: str) -> None:
    """Make ``<logs>/<project>.log`` point at ``log_path`` (``<logs>/<project>/<job>.log``).

    Replaced atomically (a new link renamed over the old one, never followed). Where the name
    is taken by something else — a directory of a project named ``<project>.log`` — it is
    left alone and logged: the link is a convenience, never a reason for a deploy to fail."""
    logs = log_path.parent.parent
    link = logs / f"{project}.log"
    if link.is_dir() and not link.is_symlink():
        log.event("latest_log.skipped", level="warning", path=str(link), reason="a directory")
        return
    temp = logs / f".{project}.log.{secrets.token_hex(4)}"
    try:
        os.symlink(os.path.join(project, log_path.name), temp)
        os.replace(temp, link)
    except OSError as exc:
        log.event("latest_log.failed", level="warning", path=str(link), error=str(exc))
        try:
            temp.unlink()
        except OSError:
            pass
