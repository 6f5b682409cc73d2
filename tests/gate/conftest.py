"""Shared fixtures for gate's tests: real servers on loopback, free ports only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import pytest_asyncio

from pploy.gate.config import parse_config
from pploy.gate.server import GateServer
from tests.gate.upstream import Upstream

REPO = Path(__file__).resolve().parents[2]
SESSION_KEY = "test-session-key-0123456789abcdef"


def free_socket() -> socket.socket:
    """A listening-ready socket on a free loopback port (no port is ever guessed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def dev_config(**overrides: Any) -> dict[str, Any]:
    """A dev-login gate config (as parsed YAML), for tests that need a session quickly."""
    config: dict[str, Any] = {
        "address": "127.0.0.1:0",
        "auth": {"session": {"key": SESSION_KEY}, "info": {"service": "dev"}},
        "htdocs": None,
        "proxy": [],
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def _fill_port(value: Any, port: int) -> Any:
    """Replace ``{port}`` in string values: the redirect URL must name gate's own port."""
    if isinstance(value, str):
        return value.replace("{port}", str(port))
    if isinstance(value, dict):
        return {k: _fill_port(v, port) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_port(v, port) for v in value]
    return value


class _Server(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


S = TypeVar("S", bound=_Server)


@contextlib.asynccontextmanager
async def serving(server: S) -> AsyncIterator[S]:
    """A test upstream (``tests/gate/upstream.py``'s or a module's own) running while inside."""
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream() -> AsyncIterator[Upstream]:
    """The aiohttp upstream behind a module's proxy routes, one per module on the module's
    loop; a module that wants another upstream defines its own ``upstream`` fixture."""
    async with serving(Upstream()) as server:
        yield server


class RunningGate:
    def __init__(self, server: GateServer, url: str, port: int) -> None:
        self.server = server
        self.url = url
        self.port = port

    @property
    def gate(self):  # noqa: ANN201
        return self.server.gate


async def start_gate(config: dict[str, Any], base_dir: Path | None = None) -> RunningGate:
    sock = free_socket()
    port = sock.getsockname()[1]
    parsed = parse_config(_fill_port(config, port), base_dir or REPO)
    server = GateServer(parsed)
    await server.start(sock=sock)
    return RunningGate(server, f"http://127.0.0.1:{port}", port)


def client_session(**kwargs: Any) -> aiohttp.ClientSession:
    """A browser-like client: keeps cookies for IP hosts, follows no redirects by itself."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kwargs)


async def dev_login(client: aiohttp.ClientSession, gate_url: str, user: str = "alice") -> None:
    """Sign in with the dev form, on a connection of its own: the form's POST is answered by
    aiohttp's server, which then keeps that connection; closed after it, the session's next
    requests start on fresh connections, which the fast path serves (when it is on)."""
    async with client.post(
        f"{gate_url}/login",
        data={"user": user, "next": "/"},
        headers={"Connection": "close"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303, await resp.text()


LOGOUT_TOKEN = re.compile(r'name="token" value="([0-9a-f]+)"')


async def gate_logout(client: aiohttp.ClientSession, gate_url: str) -> None:
    """Sign out the way a browser does: GET the confirmation page, POST its form."""
    async with client.get(f"{gate_url}/logout") as resp:
        assert resp.status == 200
        match = LOGOUT_TOKEN.search(await resp.text())
    assert match, "the logout page has no form token"
    async with client.post(
        f"{gate_url}/logout", data={"token": match.group(1)}, headers={"Origin": gate_url}
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert "signed out" in (await resp.text()).lower()


async def collect(iterator: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in iterator])


@contextlib.contextmanager
def pploy_log() -> Iterator[tuple[list[str], asyncio.Event]]:
    """Every line the ``pploy`` logger writes (info and up) while inside, and an event set on
    each record (access-log lines arrive in batches: one record, one line per request)."""
    lines: list[str] = []
    arrived = asyncio.Event()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.extend(record.getMessage().splitlines())
            arrived.set()

    logger = logging.getLogger("pploy")
    handler, previous = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines, arrived
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


class GateProcess:
    """``pploy gate`` run as its users run it: a config file on disk, the real command."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])


@contextlib.asynccontextmanager
async def gate_command(config: dict[str, Any], directory: Path) -> AsyncIterator[GateProcess]:
    """Write ``config`` (its ``address`` chosen here, on a free loopback port) to
    ``directory/gate.yml`` and run ``pploy gate --config`` on it with one worker, until gate
    logs that it listens; stopped with SIGTERM at the end."""
    import os
    import sys

    import yaml

    probe = free_socket()
    port = probe.getsockname()[1]
    probe.close()
    path = directory / "gate.yml"
    path.write_text(yaml.safe_dump({**_fill_port(config, port), "address": f"127.0.0.1:{port}"}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pploy", "gate", "--config", str(path), "--workers", "1",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )  # fmt: skip
    assert proc.stderr is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        seen = []
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            seen.append(line)
            if not line:
                raise AssertionError("pploy gate did not start:\n" + "".join(seen))
            if "event=gate.start" in line:
                break
        # Keep draining its log, or a full pipe would stall gate.
        drain = asyncio.create_task(proc.stderr.read())
        yield GateProcess(proc, f"http://127.0.0.1:{port}")
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
        if drain is not None:
            await drain
