"""Static files from ``htdocs``, after authentication like everything else.

Paths come from :mod:`pploy.gate.routing` already decoded and free of dot segments; here we
also refuse dotfiles, separators hidden in a segment, and anything (symlinks included) that
resolves outside the document root. Directories serve their ``index.html``; no listings.
"""

from __future__ import annotations

import os
from pathlib import Path

from aiohttp import web

from pploy.gate.routing import RequestPath, encode_path


class StaticFiles:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

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
            if not path.is_file():
                raise web.HTTPNotFound()
        if not path.is_file() or not os.access(path, os.R_OK):
            raise web.HTTPNotFound()
        response = web.FileResponse(path)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
