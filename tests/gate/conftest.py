"""Shared fixtures for gate's tests: real servers on loopback, free ports only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from pploy.gate.config import parse_config
from pploy.gate.server import GateServer

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
    async with client.post(
        f"{gate_url}/login", data={"user": user, "next": "/"}, allow_redirects=False
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
