"""Following a job's log to the terminal: raw bytes (colours survive), resumed from the exact
byte offset after a dropped connection, so nothing is lost or printed twice."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from pploy.client.api import Api, ApiError

# Statuses after which reconnecting may help (a proxy or pploy restarting, a gateway timeout).
RETRYABLE = {502, 503, 504}


class Follower:
    """Follows job ``job_id`` from ``offset``, writing every byte once to ``out``."""

    def __init__(
        self,
        api: Api,
        job_id: int,
        out: BinaryIO,
        *,
        offset: int = 0,
        give_up_after: float = 120.0,
        read_timeout: float = 300.0,
        say: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.api = api
        self.job_id = job_id
        self.out = out
        self.offset = offset
        self.give_up_after = give_up_after
        self.read_timeout = read_timeout
        self.say = say
        self.reconnects = 0

    def job(self) -> dict[str, Any]:
        return self.api.call("GET", f"/api/jobs/{self.job_id}")["job"]  # type: ignore[no-any-return]

    def _read_once(self) -> None:
        path = f"/api/jobs/{self.job_id}/log?follow=1&offset={self.offset}"
        with self.api.stream(path, timeout=self.read_timeout) as resp:
            while chunk := resp.read1(65536):
                self.out.write(chunk)
                self.out.flush()
                self.offset += len(chunk)  # only what was written: the resume point

    def run(self) -> dict[str, Any]:
        """Follow to the job's end; its final record. Connection failures are retried (from the
        byte reached) for ``give_up_after`` seconds of failing in a row."""
        failing_since: float | None = None
        delay = 0.2
        while True:
            try:
                self._read_once()
                record = self.job()
                if record["status"] != "running":
                    return record
                # The stream ended but the job runs on: a proxy closed it. Go on from here.
                failing_since = None
            except ApiError as exc:
                if exc.status not in RETRYABLE:
                    raise
                problem = f"HTTP {exc.status}"
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                continue
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > self.give_up_after:
                raise ConnectionError(
                    f"lost the log of job #{self.job_id} at byte {self.offset} and could not "
                    f"reconnect for {self.give_up_after:.0f} s ({problem})"
                )
            self.reconnects += 1
            self.say(f"connection lost at byte {self.offset} ({problem}); resuming")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
