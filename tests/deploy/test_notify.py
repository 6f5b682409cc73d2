"""notify.py against a real HTTP receiver on loopback (aiohttp), never a mocked client."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pploy.deploy.config import WebhookConfig
from pploy.deploy.notify import DEFAULT_TEMPLATES, Notifier, render_template


class Receiver:
    """A webhook endpoint: records every POST; its answers are scripted per test."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # answers to give, in order; then 200
        self.hang = False
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            {
                "path": request.path,
                "content_type": request.content_type,
                "json": await request.json(),
                "at": time.monotonic(),
            }
        )
        self.arrived.set()
        if self.hang:
            await self.release.wait()
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok")

    def url(self, path: str = "/hook") -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r["json"] for r in self.requests]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    rec.server = TestServer(app, host="127.0.0.1")  # a free port, chosen by the OS
    await rec.server.start_server()
    yield rec
    rec.release.set()
    await rec.server.close()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def events(self, name: str) -> list[str]:
        return [line for line in self.lines if f"event={name} " in line + " "]


@pytest.fixture
def logs() -> Iterator[Records]:
    logger = logging.getLogger("pploy")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def hook(url: str, **kwargs: Any) -> WebhookConfig:
    return WebhookConfig(url=url, **kwargs)


LOCK_PAYLOAD = {
    "project": "app",
    "user": "alice",
    "expires_at": 1_800_000_000.0,
    "expires_at_text": "12:20:00",
    "link": "https://deploy.example.com/projects/app",
}
GOVERNANCE_FIELDS = {
    "by": "bob", "position": 1, "freeze": "year-end", "reason": "incident 42",
    "envs_text": "production", "until_text": "2027-01-04 00:00 +0900", "url": "https://git/x.git",
    "name": "ci",
}  # fmt: skip
JOB_PAYLOAD = {
    "id": 7,
    "project": "app",
    "kind": "deploy",
    "env": "production",
    "user": "alice",
    "status": "succeeded",
    "exit_code": 0,
    "sha": "0123456789abcdef0123456789abcdef01234567",
    "duration": 42.4,
    "env_text": " to production",
    "sha_short": "0123456789",
    "link": "https://deploy.example.com/jobs/7",
}


async def test_slack_format_uses_the_default_templates(receiver: Receiver) -> None:
    notifier = Notifier([hook(receiver.url(), format="slack")])
    notifier.emit("lock.gained", LOCK_PAYLOAD)
    notifier.emit("job.finished", JOB_PAYLOAD)
    await notifier.close(wait=5)
    texts = sorted(b["text"] for b in receiver.bodies)
    assert texts == [
        "alice locked app until 12:20:00",
        "deploy of app to production by alice succeeded in 42 s (0123456789) "
        "https://deploy.example.com/jobs/7",
    ]
    assert all(set(b) == {"text"} for b in receiver.bodies)
    assert all(r["content_type"] == "application/json" for r in receiver.requests)


async def test_slack_templates_from_config_leave_unknown_fields_intact(receiver: Receiver):
    templates = {
        "lock.released": "{user} let go of {project} {mystery} {also.unknown} {0}",
        "lock.extended": "{user} {bad:.2f} {project} {user.nope} {expires_at:>9.1f}",
    }
    notifier = Notifier([hook(receiver.url(), format="slack", templates=templates)])
    notifier.emit("lock.released", LOCK_PAYLOAD)
    notifier.emit("lock.extended", LOCK_PAYLOAD)
    notifier.emit("lock.gained", LOCK_PAYLOAD)  # no template of its own: the default one
    await notifier.close(wait=5)
    assert sorted(b["text"] for b in receiver.bodies) == [
        "alice let go of app {mystery} {also.unknown} {0}",
        "alice locked app until 12:20:00",
        "alice {bad:.2f} app {user.nope} 1800000000.0",
    ]


def test_render_template() -> None:
    assert render_template("{user} on {project}", {"user": "a", "project": "p"}) == "a on p"
    assert render_template("{x} {y}", {"x": 1}) == "1 {y}"
    assert render_template("{duration:.0f} s", {"duration": 9.6}) == "10 s"
    assert render_template("{unclosed", {}) == "{unclosed"
    assert render_template("{x:.1f} {y:.1f}", {"y": 2}) == "{x:.1f} 2.0"
    assert render_template("{x!r} {z!r}", {"x": "a"}) == "'a' {z!r}"
    assert render_template("{x[0]} {x[9]}", {"x": "ab"}) == "a {x[9]}"
    assert render_template("{{literal}} {u}", {"u": "x"}) == "{literal} x"
    for event, template in DEFAULT_TEMPLATES.items():
        payload = LOCK_PAYLOAD if event.startswith("lock.") else JOB_PAYLOAD
        payload = {**payload, **GOVERNANCE_FIELDS}  # what the issue-25 kinds add
        assert "{" not in render_template(template, payload), event


async def test_json_format_sends_the_event_and_payload(receiver: Receiver) -> None:
    notifier = Notifier([hook(receiver.url("/generic"))])
    notifier.emit("job.finished", JOB_PAYLOAD)
    await notifier.close(wait=5)
    assert len(receiver.requests) == 1
    assert receiver.requests[0]["path"] == "/generic"
    assert receiver.bodies[0] == {"event": "job.finished", **JOB_PAYLOAD}


async def test_each_hook_gets_only_the_events_it_asked_for(receiver: Receiver) -> None:
    notifier = Notifier(
        [
            hook(receiver.url("/jobs"), events=["job.finished"]),
            hook(receiver.url("/locks"), events=["lock.gained", "lock.released"]),
        ]
    )
    for event in ["lock.gained", "lock.extended", "lock.released"]:
        notifier.emit(event, LOCK_PAYLOAD)
    notifier.emit("job.finished", JOB_PAYLOAD)
    await notifier.close(wait=5)
    got = sorted((r["path"], r["json"]["event"]) for r in receiver.requests)
    assert got == [
        ("/jobs", "job.finished"),
        ("/locks", "lock.gained"),
        ("/locks", "lock.released"),
    ]


async def test_a_500_is_retried(receiver: Receiver, logs: Records) -> None:
    receiver.statuses = [500]
    notifier = Notifier([hook(receiver.url(), retries=1)])
    notifier.emit("lock.gained", LOCK_PAYLOAD)
    await notifier.close(wait=5)
    assert len(receiver.requests) == 2
    assert receiver.bodies[0] == receiver.bodies[1]
    assert len(logs.events("webhook.failed")) == 1 and "HTTP 500" in logs.lines[0]
    assert len(logs.events("webhook.sent")) == 1


async def test_no_retries_means_one_attempt(receiver: Receiver, logs: Records) -> None:
    receiver.statuses = [503, 503]
    notifier = Notifier([hook(receiver.url(), retries=0)])
    notifier.emit("lock.gained", LOCK_PAYLOAD)
    await notifier.close(wait=5)
    assert len(receiver.requests) == 1
    assert len(logs.events("webhook.failed")) == 1 and not logs.events("webhook.sent")


async def test_emit_returns_at_once_and_a_hanging_receiver_only_times_out(
    receiver: Receiver, logs: Records
) -> None:
    receiver.hang = True
    notifier = Notifier([hook(receiver.url(), timeout_seconds=0.3, retries=0)])
    assert not inspect.iscoroutinefunction(notifier.emit)
    started = time.monotonic()
    result = notifier.emit("lock.gained", LOCK_PAYLOAD)
    assert result is None
    assert time.monotonic() - started < 0.05
    # emit did not await anything: no request can have been sent yet.
    assert receiver.requests == []
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    # The caller's loop stays free while the receiver hangs.
    await asyncio.sleep(0)
    started = time.monotonic()
    await notifier.close(wait=5)  # returns when the send gives up, not after `wait`
    elapsed = time.monotonic() - started
    assert elapsed < 2
    assert len(receiver.requests) == 1
    failures = logs.events("webhook.failed")
    assert len(failures) == 1 and "TimeoutError" in failures[0]


async def test_close_waits_only_briefly_for_a_slow_receiver(receiver: Receiver) -> None:
    receiver.hang = True
    notifier = Notifier([hook(receiver.url(), timeout_seconds=60, retries=0)])
    notifier.emit("job.finished", JOB_PAYLOAD)
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    tasks = set(notifier._tasks)
    assert len(tasks) == 1
    started = time.monotonic()
    await notifier.close(wait=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2
    await asyncio.sleep(0)
    assert all(t.done() for t in tasks)


async def test_close_waits_for_sends_in_flight(receiver: Receiver) -> None:
    receiver.hang = True
    notifier = Notifier([hook(receiver.url(), timeout_seconds=10)])
    notifier.emit("lock.gained", LOCK_PAYLOAD)
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    asyncio.get_running_loop().call_later(0.2, receiver.release.set)
    await notifier.close(wait=5)
    assert len(receiver.requests) == 1 and not notifier._tasks


async def test_an_unreachable_receiver_never_raises_into_the_caller(logs: Records) -> None:
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/hook"))
    await server.close()  # nothing listens there now
    notifier = Notifier([hook(url, retries=0, timeout_seconds=2)])
    notifier.emit("lock.released", LOCK_PAYLOAD)
    await notifier.close(wait=5)
    failures = logs.events("webhook.failed")
    assert len(failures) == 1 and "Client" in failures[0]


async def test_no_hooks_means_nothing_happens() -> None:
    notifier = Notifier([])
    notifier.emit("lock.gained", LOCK_PAYLOAD)
    assert not notifier._tasks
    await notifier.close()
