"""Structured logging shared by pploy and gate: one line per event, key=value pairs.

A line looks like ``ts=2026-11-26T10:00:00.123Z level=info event=job.start job=3 project=app``.
Values with spaces or quotes are quoted, so lines stay machine-readable.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

_logger = logging.getLogger("pploy")
_NEEDS_QUOTES = re.compile(r'[ "=\n\r\t]')
# gate writes an access-log line per request: the formatting is kept cheap (one regex
# search per value, the date formatted once a second).
_stamp_second = -1
_stamp_text = ""


def _format_value(value: Any) -> str:
    text = value if type(value) is str else str(value)
    if not text or _NEEDS_QUOTES.search(text):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        return f'"{escaped}"'
    return text


def _timestamp(now: float) -> str:
    global _stamp_second, _stamp_text
    second = int(now)
    if second != _stamp_second:
        _stamp_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp_second = second
    return f"{_stamp_text}.{int(now % 1 * 1000):03d}Z"


def format_event(level: str, event: str, fields: dict[str, Any]) -> str:
    stamp = _timestamp(time.time())
    parts = [f"ts={stamp}", f"level={level}", f"event={_format_value(event)}"]
    parts += [f"{key}={_format_value(val)}" for key, val in fields.items() if val is not None]
    return " ".join(parts)


def event(name: str, level: str = "info", **fields: Any) -> None:
    """Log one event as a single key=value line."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    if _logger.isEnabledFor(lvl):
        _logger.log(lvl, format_event(level, name, fields))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is written, not when set up (so a
    replaced stderr, as under a test runner, is never written to after it was closed)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


LEVELS = ("debug", "info", "warning", "error")


def add_level_argument(parser: Any) -> None:
    """The ``--log-level`` option every long-running subcommand takes."""
    parser.add_argument(
        "--log-level",
        default="info",
        choices=LEVELS,
        help="lowest level of log lines written to stderr (default: info)",
    )


def setup(level: str = "info", stream: Any = None) -> None:
    """Send pploy's event lines to stderr (or ``stream``), unadorned."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.handlers[:] = [handler]
    _logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    _logger.propagate = False
