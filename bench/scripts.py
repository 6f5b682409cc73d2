"""Deploy scripts the benchmarks run (written into the benchmark project's git repository)."""

from __future__ import annotations

import sys

# Waits for the benchmark's go file (so every viewer is connected before the first line), then
# prints `L <n> <CLOCK_MONOTONIC ns at the write>` every INTERVAL seconds, on a fixed schedule.
TIMED_LINES = """\
#!{python}
import os, time
go, lines, interval = {go!r}, {lines}, {interval}
deadline = time.monotonic() + 120
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.002)
start = time.monotonic()
for i in range(lines):
    delay = start + i * interval - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    os.write(1, b"L %d %d\\n" % (i, time.monotonic_ns()))
"""

# Prints LINES backlog lines as fast as it can, then waits for the stop file.
BACKLOG = """\
#!{python}
import os, sys, time
stop, lines = {stop!r}, {lines}
out = sys.stdout
for i in range(lines):
    out.write("B %06d backlog line of a long deploy, padded to a typical length\\n" % i)
out.flush()
deadline = time.monotonic() + 300
while not os.path.exists(stop) and time.monotonic() < deadline:
    time.sleep(0.01)
"""


def timed_lines(go: str, lines: int, interval: float) -> str:
    return TIMED_LINES.format(python=sys.executable, go=go, lines=lines, interval=interval)


def backlog(stop: str, lines: int) -> str:
    return BACKLOG.format(python=sys.executable, stop=stop, lines=lines)
