"""Real parts for deploy tests: git remotes, a running pploy on loopback, fifos."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from pploy.deploy.app import SERVICES, Services, create_app
from pploy.deploy.config import load_config

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Tess Ter",
    "GIT_AUTHOR_EMAIL": "tess@example.com",
    "GIT_COMMITTER_NAME": "Tess Ter",
    "GIT_COMMITTER_EMAIL": "tess@example.com",
}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout


def make_remote(
    root: Path,
    name: str = "testploy",
    deploy_script: str | None = "#!/bin/sh\necho deployed $DEPLOY_ENV\n",
    files: dict[str, str] | None = None,
) -> Path:
    """A bare repository ``root/<name>.git`` with one commit holding ``.deploy/``."""
    work = root / f"{name}-src"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    if deploy_script is not None:
        script = work / ".deploy/bin/deploy"
        script.parent.mkdir(parents=True)
        script.write_text(deploy_script)
        script.chmod(0o755)
    for rel, text in (files or {}).items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if rel.startswith(".deploy/bin/"):
            path.chmod(0o755)
    (work / "README").write_text("hello\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "first commit", cwd=work)
    bare = root / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    return bare


def push_commit(bare: Path, message: str, files: dict[str, str]) -> str:
    """Add a commit to ``bare``'s main branch; returns its SHA."""
    work = bare.parent / f"push-{os.urandom(4).hex()}"
    git("clone", "-q", str(bare), str(work), cwd=bare.parent)
    for rel, text in files.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if rel.startswith(".deploy/bin/"):
            path.chmod(0o755)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work).strip()


class Pploy:
    """A pploy server on a free loopback port with clients for each user."""

    def __init__(self, server: TestServer, services: Services) -> None:
        self.server = server
        self.services = services
        self.sessions: dict[str, aiohttp.ClientSession] = {}

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def url(self, path: str) -> str:
        return self.base + path

    def client(self, user: str | None = "alice") -> aiohttp.ClientSession:
        key = user or ""
        if key not in self.sessions:
            cookies = {"user": user} if user else {}
            self.sessions[key] = aiohttp.ClientSession(
                cookies=cookies,
                cookie_jar=aiohttp.CookieJar(unsafe=True),  # keep cookies set by 127.0.0.1
                timeout=aiohttp.ClientTimeout(total=60),
            )
        return self.sessions[key]

    async def api(
        self, method: str, path: str, user: str | None = "alice", json: Any = None
    ) -> tuple[int, Any]:
        async with self.client(user).request(method, self.url(path), json=json) as resp:
            return resp.status, await resp.json()

    async def add_project(self, url: Path | str, user: str = "alice") -> str:
        status, body = await self.api("POST", "/api/projects", user, {"url": str(url)})
        assert status == 201, body
        return body["project"]["name"]

    async def gain(self, project: str, user: str = "alice") -> None:
        status, body = await self.api(
            "POST", f"/api/projects/{project}/lock", user, {"operation": "gain"}
        )
        assert status == 200, body

    async def deploy(self, project: str, env: str = "staging", user: str = "alice") -> int:
        status, body = await self.api("POST", f"/api/projects/{project}/deploy", user, {"env": env})
        assert status == 202, body
        return body["job"]["id"]

    async def checkout(self, project: str, ref: str = "main", user: str = "alice") -> int:
        status, body = await self.api(
            "POST", f"/api/projects/{project}/checkout", user, {"ref": ref}
        )
        assert status == 202, body
        return body["job"]["id"]

    async def wait_job(self, job_id: int, timeout: float = 30) -> dict[str, Any]:
        """Wait for the job's end by following its log (no polling)."""
        async with self.client().get(self.url(f"/api/jobs/{job_id}/log?follow=1")) as resp:
            assert resp.status == 200
            await asyncio.wait_for(resp.read(), timeout)
        status, body = await self.api("GET", f"/api/jobs/{job_id}")
        return body["job"]

    async def log(self, job_id: int) -> bytes:
        async with self.client().get(self.url(f"/api/jobs/{job_id}/log")) as resp:
            return await resp.read()

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()
        await self.server.close()


async def read_until(
    resp: aiohttp.ClientResponse, marker: bytes, seen: bytearray | None = None, timeout: float = 10
) -> bytearray:
    """Read a followed stream until ``marker`` has come (appending to ``seen``, if given);
    returns what was read. A stream that ends first fails the test."""
    seen = bytearray() if seen is None else seen
    while marker not in seen:
        chunk = await asyncio.wait_for(resp.content.readany(), timeout)
        assert chunk, f"the stream ended before {marker!r}: {bytes(seen)!r}"
        seen.extend(chunk)
    return seen


async def start_pploy(workdir: Path, **settings: Any) -> Pploy:
    overrides = {
        "workdir": str(workdir),
        "users": ["alice", "bob"],
        "job.shutdown_grace_seconds": 2,
        # A test's pploy cancels what it leaves running (runners outlive it otherwise).
        "job.on_shutdown": "cancel",
        "job.cancel_grace_seconds": [1, 1],
        **settings,
    }
    config = load_config(None, overrides, environ={})
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1", handler_cancellation=True)
    await server.start_server()
    return Pploy(server, app[SERVICES])


class Fifo:
    """A named pipe a deploy script blocks on until the test says go.

    The script opens it once (``Fifo.open_cmd``, a shell line) and then waits with
    ``Fifo.wait_cmd`` for each go. The test keeps its writing end open between releases:
    closing it would hand the next read an end-of-file instead of a wait.
    """

    wait_cmd = "read _ <&3"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        os.mkfifo(path)

    def script_open(self) -> str:
        return f'exec 3< "{self.path}"'

    async def release(self, timeout: float = 10) -> None:
        """Let the script's next wait return (opening the pipe once the script has)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:  # ENXIO: the script has not opened it yet
                if exc.errno != errno.ENXIO or loop.time() > deadline:
                    raise
                await asyncio.sleep(0.01)
        os.write(self.fd, b"go\n")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
