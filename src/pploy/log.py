"""Structured logging shared by pploy and gate: one line per event, key=value pairs.

A line looks like ``ts=2026-11-26T10:00:00.123Z level=info event=job.start job=3 project=app``.
Values with spaces or quotes are quoted, so lines stay machine-readable.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

_logger = logging.getLogger("pploy")


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\r\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        return f'"{escaped}"'
    return text


def format_event(level: str, event: str, fields: dict[str, Any]) -> str:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    parts = [f"ts={stamp}", f"level={level}", f"event={_format_value(event)}"]
    parts += [f"{key}={_format_value(val)}" for key, val in fields.items() if val is not None]
    return " ".join(parts)


def event(name: str, level: str = "info", **fields: Any) -> None:
    """Log one event as a single key=value line."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    if _logger.isEnabledFor(lvl):
        _logger.log(lvl, format_event(level, name, fields))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is written, not when set up (so a
    replaced stderr, as under a test runner, is never written to after it was closed)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup(level: str = "info", stream: Any = None) -> None:
    """Send pploy's event lines to stderr (or ``stream``), unadorned."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.handlers[:] = [handler]
    _logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    _logger.propagate = False
