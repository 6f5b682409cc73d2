"""job.started, lock.expired, the job-kind filter and the datadog format, end to end: a real
pploy on loopback posting to real receivers (a generic one, and a stand-in for Datadog's
events API that answers as Datadog does)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pploy.deploy.config import ConfigError, load_config
from tests.deploy.support import Pploy, make_remote, start_pploy

API_KEY = "0123456789abcdef0123456789abcdef"


class Receiver:
    """Records every POST; answers as Datadog's ``POST /api/v1/events`` does: 403 without the
    right ``DD-API-KEY``, 400 without ``title`` and ``text``, else 202 with the event."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.server: TestServer | None = None

    async def generic(self, request: web.Request) -> web.Response:
        self.record(request, await request.json())
        return web.json_response({"ok": True})

    async def datadog(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.record(request, body)
        if request.headers.get("DD-API-KEY") != API_KEY:
            return web.json_response({"errors": ["Forbidden"]}, status=403)
        if not isinstance(body, dict) or not body.get("title") or not body.get("text"):
            return web.json_response({"errors": ["Event title and text are required"]}, status=400)
        return web.json_response({"status": "ok", "event": {"id": 1, **body}}, status=202)

    def record(self, request: web.Request, body: Any) -> None:
        self.posts.append({"path": request.path, "headers": dict(request.headers), "json": body})
        self.changed.set()

    def url(self, path: str = "") -> str:
        assert self.server is not None
        return str(self.server.make_url(path)).rstrip("/")

    def events(self, path: str = "/hook") -> list[str]:
        return [p["json"]["event"] for p in self.posts if p["path"] == path]

    async def wait_for(self, count: int, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while len(self.posts) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/api/v1/events", rec.datadog)
    app.router.add_post("/hook", rec.generic)
    rec.server = TestServer(app, host="127.0.0.1")
    await rec.server.start_server()
    yield rec
    await rec.server.close()


async def pploy_with(tmp_path: Path, **settings: Any) -> tuple[Pploy, str]:
    pploy = await start_pploy(
        tmp_path / "work", public_url="https://deploy.example.com", **settings
    )
    project = await pploy.add_project(make_remote(tmp_path))
    return pploy, project


async def test_datadog_events_reach_the_events_api(receiver: Receiver, tmp_path: Path):
    hook = {"format": "datadog", "url": receiver.url(), "api_key": API_KEY, "retries": 0}
    pploy, project = await pploy_with(tmp_path, webhooks=[hook])
    try:
        await pploy.gain(project)
        job = await pploy.deploy(project, "production")
        await pploy.wait_job(job)
        await receiver.wait_for(3)
        assert all(p["path"] == "/api/v1/events" for p in receiver.posts)
        assert all(p["headers"]["DD-API-KEY"] == API_KEY for p in receiver.posts)
        assert all(p["headers"]["Content-Type"] == "application/json" for p in receiver.posts)
        gained, started, finished = (p["json"] for p in sorted(receiver.posts, key=order))
        assert gained["title"].startswith(f"alice locked {project} until ")
        assert gained["tags"] == [f"project:{project}", "pploy_event:lock.gained"]
        assert gained["alert_type"] == "info" and gained["source_type_name"] == "pploy"
        assert started["title"].startswith(f"deploy of {project} to production by alice started")
        assert f"https://deploy.example.com/jobs/{job}" in started["text"]
        assert "env:production" in finished["tags"] and "kind:deploy" in finished["tags"]
        assert finished["alert_type"] == "success" and "succeeded" in finished["text"]
        # aggregated per project and user, as go-pploy did
        assert len({p["json"]["aggregation_key"] for p in receiver.posts}) == 1
        assert all(isinstance(p["json"]["date_happened"], int) for p in receiver.posts)
    finally:
        await pploy.close()


def order(post: dict[str, Any]) -> int:
    return ["lock.gained", "job.started", "job.finished"].index(
        next(t for t in post["json"]["tags"] if t.startswith("pploy_event:")).split(":")[1]
    )


async def test_a_wrong_datadog_key_is_logged_and_never_shown(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="pploy")
    hook = {"format": "datadog", "url": receiver.url(), "api_key": "not-the-key", "retries": 0}
    pploy, project = await pploy_with(tmp_path, webhooks=[hook])
    try:
        await pploy.gain(project)
        await receiver.wait_for(1)
        await pploy.services.notifier.close()
        assert "event=webhook.failed" in caplog.text and "HTTP 403" in caplog.text
        assert "not-the-key" not in caplog.text
    finally:
        await pploy.close()


async def test_job_started_and_the_kind_filter(receiver: Receiver, tmp_path: Path):
    everything = {"url": receiver.url("/hook")}
    deploys_only = {"url": receiver.url("/hook"), "kinds": ["deploy"], "events": ["job.started"]}
    pploy, project = await pploy_with(tmp_path, webhooks=[everything, deploys_only])
    try:
        await pploy.gain(project)
        await pploy.wait_job(await pploy.checkout(project))
        await pploy.wait_job(await pploy.deploy(project))
        # gained; checkout started+finished (first hook only); deploy started (both), finished
        await receiver.wait_for(6)
        await asyncio.sleep(0.2)  # nothing more may come
        kinds = [(p["json"]["event"], p["json"].get("kind")) for p in receiver.posts]
        assert sorted(kinds, key=str) == sorted(
            [
                ("lock.gained", None),
                ("job.started", "checkout"),
                ("job.finished", "checkout"),
                ("job.started", "deploy"),
                ("job.started", "deploy"),
                ("job.finished", "deploy"),
            ],
            key=str,
        )
        started = next(p["json"] for p in receiver.posts if p["json"]["event"] == "job.started")
        assert started["status"] == "running" and started["ended_at"] is None
    finally:
        await pploy.close()


@pytest.mark.slow  # waits for a lock to run out
async def test_a_lock_that_runs_out_is_reported_expired(receiver: Receiver, tmp_path: Path):
    hook = {"url": receiver.url("/hook"), "events": ["lock.expired", "lock.released"]}
    # a lock lasts 0.6 s; an extend adds 0.6 s
    settings = {"lock.gain_minutes": 0.01, "lock.extend_minutes": 0.01}
    pploy, project = await pploy_with(tmp_path, webhooks=[hook], **settings)
    try:
        await pploy.gain(project, "bob")
        status, _ = await pploy.api("POST", f"/api/projects/{project}/lock", "bob",
                                    {"operation": "extend"})  # fmt: skip
        assert status == 200
        await asyncio.sleep(0.8)  # past the first expiry, before the extended one
        assert receiver.posts == []
        await receiver.wait_for(1)
        expired = receiver.posts[0]["json"]
        assert expired["event"] == "lock.expired" and expired["user"] == "bob"
        assert expired["project"] == project
        # a released lock is not reported expired later
        await pploy.gain(project, "alice")
        status, _ = await pploy.api("POST", f"/api/projects/{project}/lock", "alice",
                                    {"operation": "release"})  # fmt: skip
        await asyncio.sleep(1.0)
        assert receiver.events() == ["lock.expired", "lock.released"]
        # a project removed by its holder takes its lock along: not reported expired
        await pploy.gain(project, "alice")
        status, _ = await pploy.api("DELETE", f"/api/projects/{project}", "alice")
        assert status == 200
        await asyncio.sleep(1.0)
        assert receiver.events() == ["lock.expired", "lock.released"]
    finally:
        await pploy.close()


async def test_without_public_url_pploy_warns_that_links_are_relative(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="pploy")
    pploy = await start_pploy(tmp_path / "a", webhooks=[{"url": receiver.url("/hook")}])
    await pploy.close()
    assert "event=webhook.relative_links" in caplog.text
    caplog.clear()
    pploy, _ = await pploy_with(tmp_path, webhooks=[{"url": receiver.url("/hook")}])
    await pploy.close()
    assert "relative_links" not in caplog.text


@pytest.mark.slow  # waits past a lock's end
async def test_a_lock_kept_by_a_running_job_is_not_reported_expired(
    receiver: Receiver, tmp_path: Path
):
    hook = {"url": receiver.url("/hook"), "events": ["lock.expired", "job.finished"]}
    pploy = await start_pploy(
        tmp_path / "work", public_url="https://deploy.example.com", webhooks=[hook],
        **{"lock.gain_minutes": 0.01},  # 0.6 s, less than the deploy takes
    )  # fmt: skip
    try:
        project = await pploy.add_project(
            make_remote(tmp_path, deploy_script="#!/bin/sh\nsleep 1.5\necho done\n")
        )
        await pploy.gain(project)
        job = await pploy.deploy(project)
        assert (await pploy.wait_job(job))["status"] == "succeeded"
        await receiver.wait_for(1)
        await asyncio.sleep(0.3)
        assert receiver.events() == ["job.finished"]
        assert pploy.services.locks.get(project) is not None  # the job kept it
    finally:
        await pploy.close()


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ({"format": "datadog"}, r"webhooks\[0\]\.api_key: required by the datadog format"),
        ({"url": "http://x/hook", "api_key": "k"}, r"webhooks\[0\]\.api_key: only the datadog"),
        ({"format": "json"}, r"webhooks\[0\]\.url: required"),
        (
            {"url": "http://x/", "kinds": ["release"]},
            r"webhooks\[0\]\.kinds\[0\]: Input should be .deploy. or .checkout.",
        ),
    ],
)
def test_webhook_settings_are_checked_naming_the_key(hook: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"webhooks": [hook]}, environ={})


def test_the_datadog_site_is_the_default_url():
    hook = {"format": "datadog", "api_key": "SECRET-KEY-123"}
    config = load_config(None, {"webhooks": [hook]}, environ={})
    assert config.webhooks[0].url == "https://api.datadoghq.com"
    assert "SECRET-KEY-123" not in repr(config)  # a config logged by mistake shows no key
