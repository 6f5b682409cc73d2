"""Configured freeze windows announce themselves (docs/governance.md): ``pploy serve`` started
from a config file sends ``freeze.started`` when a window enters force and ``freeze.ended``
when it leaves it, to a real local webhook receiver and the audit log — once, however many
instances share a PostgreSQL database and however often they restart; a window in force at
start is announced then, one that started and ended while pploy was down never is."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.govserver import Served
from tests.deploy.test_notify import Receiver, receiver  # noqa: F401
from tests.postgres import pg_database, pg_server  # noqa: F401

pytestmark = pytest.mark.slow  # `pploy serve` from a config file

# Seconds from writing the config to the window's start: more than a loaded machine takes to
# start the servers, so the start is announced by the running servers' timers.
LEAD = 12.0
LENGTH = 2.0
OVERNIGHT = LENGTH + 4.0  # "overnight" ends this long after "soon" starts


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def windows_config(receiver: Receiver, overnight: bool = False) -> tuple[str, datetime]:  # noqa: F811
    """Three windows: one starting soon for LENGTH seconds, one in force since an hour ago,
    one that started and ended yesterday (with ``overnight``, a fourth in force since an hour
    ago ending OVERNIGHT seconds after "soon" starts); a JSON and a Slack hook for the freeze
    kinds."""
    now = datetime.now().astimezone()
    soon = now + timedelta(seconds=LEAD)
    extra = (
        f"  - name: overnight\n    start: {iso(now - timedelta(hours=1))}\n"
        f"    end: {iso(soon + timedelta(seconds=OVERNIGHT))}\n"
    )
    config = f"""\
freezes:
  - name: soon
    start: {iso(soon)}
    end: {iso(soon + timedelta(seconds=LENGTH))}
    envs: [production]
    projects: ["web-*"]
    reason: release day
  - name: ongoing
    start: {iso(now - timedelta(hours=1))}
    end: {iso(now + timedelta(days=1))}
  - name: past
    start: {iso(now - timedelta(days=2))}
    end: {iso(now - timedelta(days=1))}
{extra if overnight else ""}webhooks:
  - url: {receiver.url("/json")}
    events: [freeze.started, freeze.ended]
  - url: {receiver.url("/slack")}
    format: slack
    events: [freeze.started, freeze.ended]
"""
    return config, soon


async def freeze_events(served: Served) -> list[tuple[str, str | None, Any]]:
    events = (await served.ok("GET", "/api/audit?kind=freeze.*"))["events"]
    return [(e["kind"], e["user"], e["detail"]["freeze"]) for e in events]


async def event_for(receiver: Receiver, kind: str, freeze: str, timeout: float) -> dict[str, Any]:  # noqa: F811
    """The generic JSON hook's ``kind`` event of ``freeze`` (waits for it, without polling)."""
    while True:
        for body in receiver.bodies:
            if body.get("event") == kind and body.get("freeze") == freeze:
                return body
        receiver.arrived.clear()
        await asyncio.wait_for(receiver.arrived.wait(), timeout)


async def until_received(receiver: Receiver, count: int, path: str, timeout: float) -> None:  # noqa: F811
    """Wait (without polling) until ``path`` has received ``count`` webhooks."""
    while len([r for r in receiver.requests if r["path"] == path]) < count:
        receiver.arrived.clear()
        await asyncio.wait_for(receiver.arrived.wait(), timeout)


def boundaries(output: str) -> list[tuple[str, str, str]]:
    """The boundaries a server's log says it handled: (freeze, kind, claimed)."""
    return re.findall(r"event=freeze\.boundary freeze=(\S+) kind=(\S+) claimed=(\S+)", output)


async def test_a_configured_window_is_announced_when_it_starts_and_ends(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
):
    # "overnight" is in force at start and ends while pploy is stopped.
    config, soon = windows_config(receiver, overnight=True)
    served = Served(tmp_path, config)
    await served.start()
    try:
        # At start: the windows in force are announced; the past one is not; "soon" not yet.
        assert datetime.now().astimezone() < soon, "the server took too long to start"
        assert await freeze_events(served) == [
            ("freeze.started", "pploy", "ongoing"), ("freeze.started", "pploy", "overnight"),
        ]  # fmt: skip
        started = await event_for(receiver, "freeze.started", "ongoing", 20)
        assert started["by"] == "pploy" and started["envs_text"] == "all environments"

        started = await event_for(receiver, "freeze.started", "soon", LEAD + 20)
        assert datetime.now().astimezone() >= soon  # by the timer, at the window's start
        assert {k: started[k] for k in started if k not in ("until", "until_text")} == {
            "event": "freeze.started", "by": "pploy", "freeze": "soon", "envs": ["production"],
            "projects": ["web-*"], "reason": "release day", "source": "config",
            "envs_text": "production",
        }  # fmt: skip
        assert started["until"] == pytest.approx((soon.timestamp() + LENGTH), abs=0.001)
        assert started["until_text"].startswith(soon.strftime("%Y-%m-%dT%H:%M"))
        ended = await event_for(receiver, "freeze.ended", "soon", LENGTH + 20)
        assert ended == {
            "event": "freeze.ended", "by": "pploy", "freeze": "soon", "reason": "release day",
            "source": "config",
        }  # fmt: skip
        await until_received(receiver, 4, "/slack", 20)
        texts = [r["json"]["text"] for r in receiver.requests if r["path"] == "/slack"]
        assert "pploy ended the freeze soon" in texts, texts
        assert any(t.startswith("pploy froze production until ") and t.endswith(": release day")
                   for t in texts), texts  # fmt: skip
        audit = (await served.ok("GET", "/api/audit?kind=freeze.*"))["events"]
        assert audit[-1]["kind"] == "freeze.ended" and audit[-1]["detail"] == {
            "freeze": "soon", "reason": "release day", "source": "config",
        }  # fmt: skip
        assert audit[-2]["detail"]["envs"] == ["production"]

        # "overnight" ends while pploy is stopped: its end is announced when pploy is back
        # (its start was); then a restart announces nothing again.
        assert ("overnight", "freeze.ended") not in [b[:2] for b in boundaries(served.stop())]
        await asyncio.sleep(max(0.0, soon.timestamp() + OVERNIGHT + 0.2 - time.time()))
        await served.start()
        await served.restart()
        assert await freeze_events(served) == [
            ("freeze.started", "pploy", "ongoing"),
            ("freeze.started", "pploy", "overnight"),
            ("freeze.started", "pploy", "soon"),
            ("freeze.ended", "pploy", "soon"),
            ("freeze.ended", "pploy", "overnight"),
        ]
        output = served.stop()
        assert sorted(boundaries(output)) == [
            ("ongoing", "freeze.started", "False"), ("overnight", "freeze.ended", "False"),
            ("past", "freeze.ended", "False"), ("soon", "freeze.ended", "False"),
        ], output  # fmt: skip
    finally:
        await served.close()


async def test_two_instances_on_postgresql_announce_each_boundary_once(
    tmp_path: Path,
    pg_database: str,  # noqa: F811
    receiver: Receiver,  # noqa: F811
):
    config, soon = windows_config(receiver)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Served(tmp_path / "a", config, pg_database)
    b = Served(tmp_path / "b", config, pg_database)
    try:
        await a.start()
        await b.start()
        assert datetime.now().astimezone() < soon, "the servers took too long to start"
        await until_received(receiver, 3, "/json", LEAD + LENGTH + 20)
        # Both instances' timers are due by now: a request to each is served after them.
        await a.ok("GET", "/api/freezes")
        await b.ok("GET", "/api/freezes")
        assert await freeze_events(b) == [
            ("freeze.started", "pploy", "ongoing"),
            ("freeze.started", "pploy", "soon"),
            ("freeze.ended", "pploy", "soon"),
        ]
        handled = boundaries(a.stop()) + boundaries(b.stop())  # their hooks sent, too
        for boundary in [("ongoing", "freeze.started"), ("soon", "freeze.started"),
                         ("soon", "freeze.ended")]:  # fmt: skip
            # both instances tried, one claimed it
            claims = sorted(c for f, k, c in handled if (f, k) == boundary)
            assert claims == ["False", "True"], (boundary, handled)
        sent = [(b["event"], b["freeze"]) for b in receiver.bodies if "event" in b]
        assert sorted(sent) == [
            ("freeze.ended", "soon"), ("freeze.started", "ongoing"), ("freeze.started", "soon"),
        ]  # fmt: skip
        assert len([b for b in receiver.bodies if "text" in b]) == 3  # Slack's, once each too
    finally:
        await a.close()
        await b.close()
