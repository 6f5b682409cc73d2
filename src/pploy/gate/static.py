"""Static files from an explicitly configured ``htdocs``, after authentication like everything
else.

Paths come from :mod:`pploy.gate.routing` already decoded and free of dot segments; here we
also refuse dotfiles, separators hidden in a segment, anything (symlinks included) that
resolves outside the document root, anything that is not a regular file, and every file gate
itself reads (its configuration, keys, certificates, htpasswd) by path and by inode, so no
symlink or hard link inside the root can publish them. Directories serve their
``index.html``; no listings.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from pploy.gate.routing import RequestPath, encode_path


class StaticFiles:
    def __init__(self, root: Path, never_serve: Sequence[Path] = ()) -> None:
        self.root = root.resolve()
        self.never_serve = list(never_serve)

    def _secret(self, real: Path, info: os.stat_result) -> bool:
        """Whether ``real`` is one of the files gate reads (checked at each request, so a key
        replaced on disk stays protected)."""
        for path in self.never_serve:
            try:
                other = os.stat(path)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                return True
            if path.resolve() == real:
                return True
        return False

    def _resolve(self, target: RequestPath) -> Path | None:
        parts = []
        for segment in target.segments:
            try:
                name = segment.decode("utf-8")
            except UnicodeDecodeError:
                return None
            if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
                return None
            parts.append(name)
        candidate = self.root.joinpath(*parts)
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if real != self.root and self.root not in real.parents:
            return None
        return real

    async def handle(self, request: web.Request, target: RequestPath) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        path = self._resolve(target)
        if path is None:
            raise web.HTTPNotFound()
        if path.is_dir():
            if target.segments and not target.trailing_slash:
                location = encode_path(target.segments, True)
                raise web.HTTPMovedPermanently(
                    location + (f"?{target.query}" if target.query else "")
                )
            path = path / "index.html"
        try:
            real = path.resolve(strict=True)
            info = real.stat()
        except (OSError, RuntimeError):
            raise web.HTTPNotFound() from None
        inside = real == self.root or self.root in real.parents
        if not inside or not stat.S_ISREG(info.st_mode) or self._secret(real, info):
            raise web.HTTPNotFound()
        if not os.access(real, os.R_OK):
            raise web.HTTPNotFound()
        path = real
        response = web.FileResponse(path)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
