"""When each piece of a job's output arrived, kept beside the log without changing its bytes.

The job appends ``<offset> <unix time>`` lines to ``<job>.times`` next to ``<job>.log``: the log
offset a piece of output starts at and when it arrived. A new entry is written only when at least
:data:`MIN_GAP` seconds passed since the last, so a flood of tiny writes costs a few lines per
second. The job page's timestamp toggle reads it per line (:func:`line_times`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pploy import log

MIN_GAP = 0.1  # seconds between entries
MAX_ENTRIES = 1_000_000  # what line_times reads at most (a sidecar of a job that ran for days)
CHUNK = 1 << 20


def times_path(log_path: Path) -> Path:
    """The sidecar of ``<job>.log``: ``<job>.times``."""
    return log_path.with_suffix(".times")


class TimelineWriter:
    """Appends (offset, time) entries for one running job. A failing disk never fails the job:
    the first error is logged and the timeline stops (the log itself is what matters)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = float("-inf")
        self.fd: int | None = None
        self.failed = False

    def note(self, offset: int, when: float) -> None:
        """Output starting at byte ``offset`` of the log arrived at ``when``."""
        if self.failed or when - self.last < MIN_GAP:
            return
        self.last = when
        try:
            if self.fd is None:
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                self.fd = os.open(self.path, flags, 0o640)
            os.write(self.fd, f"{offset} {when:.3f}\n".encode())
        except OSError as exc:
            self.failed = True
            log.event("job.timeline_write_failed", level="warning", path=str(self.path),
                      error=exc.strerror)  # fmt: skip

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_entries(path: Path) -> list[tuple[int, float]]:
    """The sidecar's entries in order; malformed lines (a torn last write) are skipped."""
    entries: list[tuple[int, float]] = []
    try:
        with path.open("rb") as fh:
            for raw in fh:
                if len(entries) >= MAX_ENTRIES:
                    break
                parts = raw.split()
                if len(parts) == 2 and parts[0].isdigit():
                    try:
                        entries.append((int(parts[0]), float(parts[1])))
                    except ValueError:
                        continue
    except FileNotFoundError:
        return []
    return entries


def line_times(log_path: Path) -> list[tuple[int, float]]:
    """``(line, time)`` pairs, line 1-based, meaning: lines from this one on (until the next pair)
    began in output that arrived at that time. A line's time is that of the piece holding its
    first byte. Lines are counted by newlines in the log, as the viewer counts them. Reads the
    log in chunks: call it in a thread for big logs."""
    entries = read_entries(times_path(log_path))
    if not entries:
        return []
    out: list[tuple[int, float]] = []
    newlines = 0  # newlines before `pos`
    pos = 0
    before = b"\n"  # the byte before `pos` (the start of the log starts a line)
    index = 0
    try:
        with log_path.open("rb") as fh:
            while index < len(entries):
                chunk = fh.read(CHUNK)
                end = pos + len(chunk)
                while index < len(entries) and (entries[index][0] < end or not chunk):
                    offset, when = entries[index]
                    at = min(max(0, offset - pos), len(chunk))
                    line = newlines + chunk.count(b"\n", 0, at) + 1
                    previous = chunk[at - 1 : at] if at else before
                    if previous != b"\n":
                        line += 1  # mid-line: the first line starting in this piece is the next
                    if out and out[-1][0] == line:
                        out[-1] = (line, when)  # the later piece holds that line's start
                    else:
                        out.append((line, when))
                    index += 1
                if not chunk:
                    break
                newlines += chunk.count(b"\n")
                before = chunk[-1:]
                pos = end
    except FileNotFoundError:
        return []
    return out
