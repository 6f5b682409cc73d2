"""Shared servers for the end-to-end chain tests: one nginx (shipped config, TLS) → gate →
pploy per pytest worker, plus nginx variants built from the same shipped config."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.chain.harness import Certs, Chain, Client, Nginx, make_certs, shipped_site
from tests.helpers import free_port, require_binary

USER = "alice"


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    return require_binary("nginx")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def nginx_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory, nginx_port: int) -> Iterator[Chain]:
    running = Chain(tmp_path_factory.mktemp("chain"), public_url=f"https://127.0.0.1:{nginx_port}")
    try:
        running.start()
    except BaseException:
        running.stop()
        raise
    yield running
    running.stop()


@pytest.fixture(scope="session")
def nginx(
    nginx_binary: str,
    tmp_path_factory: pytest.TempPathFactory,
    certs: Certs,
    chain: Chain,
    nginx_port: int,
) -> Iterator[Nginx]:
    """nginx with the shipped configuration, exactly as `pploy nginx-config` renders it."""
    site = shipped_site(nginx_port, f"127.0.0.1:{chain.gate_port}", certs)
    server = Nginx(nginx_binary, tmp_path_factory.mktemp("nginx"), site, nginx_port).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def make_nginx(
    nginx_binary: str, tmp_path_factory: pytest.TempPathFactory, certs: Certs, chain: Chain
) -> Iterator[Callable[[Callable[[str], str]], Nginx]]:
    """Start another nginx in front of the same gate, its shipped config changed by
    ``transform`` (one per variant; stopped at the end of the session)."""
    started: list[Nginx] = []

    def make(transform: Callable[[str], str]) -> Nginx:
        port = free_port()
        site = transform(shipped_site(port, f"127.0.0.1:{chain.gate_port}", certs))
        server = Nginx(nginx_binary, tmp_path_factory.mktemp("nginx-variant"), site, port)
        started.append(server.start())
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def session_cookie(nginx: Nginx, certs: Certs, chain: Chain) -> str:
    """alice's gate session, with the test project added to pploy through the chain."""

    async def setup() -> str:
        client = Client(nginx.url, certs)
        try:
            await client.login(USER)
            status = await client.api("GET", "/api/status")
            assert status["user"] == USER and status["auth_mode"] == "gate"
            if not any(p["name"] == "chainploy" for p in status["projects"]):
                await client.api("POST", "/api/projects", {"url": str(chain.remote)})
            return client.cookie
        finally:
            await client.close()

    return asyncio.run(setup())


@pytest_asyncio.fixture
async def client(nginx: Nginx, certs: Certs, session_cookie: str) -> AsyncIterator[Client]:
    """alice's HTTPS client at the nginx end."""
    c = Client(nginx.url, certs)
    c.cookie = session_cookie
    yield c
    await c.close()


@pytest.fixture
def artifacts() -> Path:
    path = Path(__file__).resolve().parents[2] / "artifacts"
    path.mkdir(exist_ok=True)
    return path
