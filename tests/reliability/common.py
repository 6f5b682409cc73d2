"""Shared pieces for the reliability suite: load sizes, SSE parsing, resource counts."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

# CI runs a reduced form of the load and volume cases; PPLOY_FULL_LOAD=1 runs the full ones.
FULL_LOAD = os.environ.get("PPLOY_FULL_LOAD") == "1"


def scaled(reduced: int, full: int) -> int:
    return full if FULL_LOAD else reduced


async def sse_events(content: Any) -> AsyncIterator[dict[str, Any]]:
    """Parse a text/event-stream body into dicts (comments come as ``{"comment": ...}``)."""
    event: dict[str, Any] = {}
    async for raw in content:
        line = raw.decode().rstrip("\n")
        if line == "":
            if event:
                yield event
                event = {}
            continue
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        event[key] = event[key] + "\n" + value if key in event else value
    if event:
        yield event


async def read_sse_log(
    content: Any, until_status: bool = True, timeout: float = 30
) -> tuple[str, list[int], dict[str, Any] | None]:
    """Read an SSE stream to its status event: (text of log events, their ids, status)."""
    text: list[str] = []
    ids: list[int] = []
    status = None

    async def run() -> None:
        nonlocal status
        async for event in sse_events(content):
            if event.get("event") == "log":
                text.append(json.loads(event["data"]))
                ids.append(int(event["id"]))
            elif event.get("event") == "status":
                status = json.loads(event["data"])
                if until_status:
                    return

    await asyncio.wait_for(run(), timeout)
    return "".join(text), ids, status


def open_fds(pid: int | None = None) -> int:
    return len(os.listdir(f"/proc/{pid or os.getpid()}/fd"))


def child_pids(pid: int | None = None) -> set[int]:
    """Live (non-zombie) descendants of ``pid``, from /proc."""
    root = pid or os.getpid()
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] in ("Z", "X"):
            continue
        parents[int(entry)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found
