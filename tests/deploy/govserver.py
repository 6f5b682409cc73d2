"""``pploy serve`` from a config file, for the governance tests (issue 25): a real process on
loopback, one cookie session per user, on SQLite or a real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.deploy.test_server_process import Server

BASE_CONFIG = """\
users: [alice, bob, carol, dave]
job:
  shutdown_grace_seconds: 1
  cancel_grace_seconds: [1, 1]
{job}"""


class Served:
    """A ``pploy serve`` process with ``extra`` YAML appended to the base config."""

    def __init__(
        self,
        root: Path,
        extra: str = "",
        database: str | None = None,
        env: dict[str, str] | None = None,
        job: str = "",
    ) -> None:
        self.root = root
        self.env = env  # the server's whole environment (None: the test's)
        self.config = root / "pploy.yml"
        text = BASE_CONFIG.format(job=job) + extra  # job: more lines of the job section
        if database:
            text += f"database: {database}\n"
        self.config.write_text(text)
        self.workdir = root / "work"
        self.server: Server | None = None
        self.sessions: dict[str, aiohttp.ClientSession] = {}

    @property
    def base(self) -> str:
        assert self.server is not None
        return self.server.base

    async def start(self) -> Served:
        self.server = Server(self.workdir, self.config, env=self.env)
        await self.server.ready(self.client("alice"))
        return self

    def stop(self) -> str:
        assert self.server is not None
        return self.server.stop(None if self.server.proc.poll() is not None else 15)

    async def restart(self) -> None:
        self.stop()
        await self.start()

    def client(self, user: str) -> aiohttp.ClientSession:
        if user not in self.sessions:
            self.sessions[user] = aiohttp.ClientSession(
                cookies={"user": user}, timeout=aiohttp.ClientTimeout(total=60)
            )
        return self.sessions[user]

    async def api(
        self, method: str, path: str, user: str = "alice", json: Any = None
    ) -> tuple[int, Any]:
        async with self.client(user).request(method, self.base + path, json=json) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def ok(self, method: str, path: str, user: str = "alice", json: Any = None) -> Any:
        status, body = await self.api(method, path, user, json)
        assert status in (200, 201, 202), (status, body)
        return body

    async def add_project(self, remote: Path, user: str = "alice") -> str:
        body = await self.ok("POST", "/api/projects", user, {"url": str(remote)})
        return body["project"]["name"]

    async def lock(self, project: str, operation: str, user: str = "alice") -> tuple[int, Any]:
        return await self.api(
            "POST", f"/api/projects/{project}/lock", user, {"operation": operation}
        )

    async def wait_job(self, job_id: int, timeout: float = 30) -> dict[str, Any]:
        """Follow the job's log to its end (no polling), then its record."""
        async with self.client("alice").get(f"{self.base}/api/jobs/{job_id}/log?follow=1") as r:
            assert r.status == 200
            await asyncio.wait_for(r.read(), timeout)
        return (await self.ok("GET", f"/api/jobs/{job_id}"))["job"]

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()
        if self.server is not None and self.server.proc.poll() is None:
            self.stop()
