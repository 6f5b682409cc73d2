"""gate's access log, one line per request, written in batches.

Handing each line to ``logging`` on its own (a LogRecord, a handler, one write and flush to
stderr) was a tenth of a small proxied request's cost. Lines are formatted at once (so they
carry the request's own time) but handed to the ``pploy`` logger together, as one record, at
most ``FLUSH_SECONDS`` later or when ``BATCH_LINES`` have gathered, and on stop; a crash can
lose at most that much, like nginx's ``access_log ... buffer=``. Nothing is formatted when the
log is off or the ``pploy`` logger does not write info lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from pploy import log

FLUSH_SECONDS = 0.05
BATCH_LINES = 256


class AccessLog:
    """Collects formatted access-log lines and writes them a batch at a time."""

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        return self.format != "off" and log._logger.isEnabledFor(logging.INFO)

    def add(self, fields: dict[str, Any]) -> None:
        """One request's line (``fields`` in order; None values left out)."""
        if self.format == "json":
            line = json.dumps({"event": "gate.access", **{k: v for k, v in fields.items() if v}})
        else:
            line = log.format_event("info", "gate.access", fields)
        self._lines.append(line)
        if len(self._lines) >= BATCH_LINES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Write what has gathered (also called on stop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            text = "\n".join(self._lines)
            self._lines.clear()
            log._logger.info(text)
