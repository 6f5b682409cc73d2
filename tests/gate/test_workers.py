"""``pploy gate`` with several worker processes on one port: every worker serves, a session
minted by one is accepted by the others, metrics are the sum over all workers, a worker that
dies is replaced, and SIGTERM stops them all. Real processes, real sockets on loopback."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.gate.conftest import REPO, SESSION_KEY
from tests.helpers import free_port, tail, wait_port

WORKERS = 2
CONNECTIONS = 24


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _established(pid: int, port: int) -> int:
    """Established TCP connections to ``port`` whose socket this process holds."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rpartition(":")[2], 16)
        if local_port == port and fields[3] == "01":
            inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match and match.group(1) in inodes:
            held += 1
    return held


async def _upstream() -> tuple[web.AppRunner, int]:
    """Answers with the user gate vouched for."""

    async def whoami(request: web.Request) -> web.Response:
        if request.path.startswith("/echo/"):
            return web.Response(text=request.path)
        return web.Response(text=request.headers.get("X-Forwarded-User", "-"))

    app = web.Application()
    app.router.add_get("/{tail:.*}", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


class WorkersGate:
    def __init__(self, tmp: Path, upstream_port: int) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "address": f"127.0.0.1:{self.port}",
            "auth": {"session": {"key": SESSION_KEY}, "info": {"service": "dev"}},
            "htdocs": None,
            "proxy": [{"path": "/", "dest": f"http://127.0.0.1:{upstream_port}"}],
            "metrics": {"address": f"127.0.0.1:{self.metrics_port}"},
            "workers": WORKERS,
        }
        path = tmp / "gate.yml"
        path.write_text(yaml.safe_dump(config))
        self.config_path = path
        self.log = tmp / "gate.log"
        env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pploy", "gate", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),  # noqa: SIM115
            env=env,
        )
        wait_port(self.port, self.proc, self.log, timeout=30)
        deadline = time.monotonic() + 30
        while "gate.workers" not in self.log.read_text():
            assert self.proc.poll() is None, tail(self.log)
            assert time.monotonic() < deadline, tail(self.log)
            time.sleep(0.05)

    def workers(self) -> list[int]:
        return _children(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
async def stack(tmp_path):
    runner, upstream_port = await _upstream()
    gate = WorkersGate(tmp_path, upstream_port)
    try:
        yield gate
    finally:
        pids = gate.workers() if gate.proc.poll() is None else []
        gate.stop()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        await runner.cleanup()


async def _session_cookie(url: str) -> str:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async with client.post(
            f"{url}/login", data={"user": "alice"}, allow_redirects=False
        ) as resp:
            assert resp.status == 303, await resp.text()
            return f"_gate_session={resp.cookies['_gate_session'].value}"


async def _metric(port: int, route_code: str) -> int:
    """``gate_requests_total`` for one route and status, from a fresh connection."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    total = 0
    for line in text.splitlines():
        if line.startswith("gate_requests_total{") and route_code in line:
            total += int(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow  # `pploy gate` worker processes
async def test_workers_share_the_port_sessions_and_metrics(stack):
    workers = stack.workers()
    assert len(workers) == WORKERS and all(_alive(p) for p in workers)
    cookie = await _session_cookie(stack.url)  # minted by one worker
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as client:

        async def one() -> tuple[int, str]:
            async with client.get(f"{stack.url}/who", headers={"Cookie": cookie}) as resp:
                return resp.status, await resp.text()

        answers = await asyncio.gather(*(one() for _ in range(CONNECTIONS)))
        assert answers == [(200, "alice")] * CONNECTIONS
        # The connections are still open (keep-alive): each worker holds some of them, so
        # each worker accepted the session another one minted.
        held = {pid: _established(pid, stack.port) for pid in workers}
        assert sum(held.values()) == CONNECTIONS, held
        assert all(count > 0 for count in held.values()), held

        # Every worker publishes the same assertion key (generated once, by the parent), or
        # an upstream would reject assertions signed by the workers it did not ask.
        async def jwks() -> list[str]:
            async with client.get(f"{stack.url}/.well-known/gate/jwks.json") as resp:
                return [key["kid"] for key in (await resp.json())["keys"]]

        kids = await asyncio.gather(*(jwks() for _ in range(CONNECTIONS)))
        assert len({tuple(k) for k in kids}) == 1 and len(kids[0]) == 1, kids

    # Whichever worker answers the scrape, it reports every worker's requests (the proxied
    # ones and the JWKS ones: 2 x CONNECTIONS answered 200).
    label = 'code="200"'
    expected = 2 * CONNECTIONS
    deadline = time.monotonic() + 10
    seen: list[int] = []
    while time.monotonic() < deadline:
        seen = [await _metric(stack.metrics_port, label) for _ in range(6)]
        if seen == [expected] * 6:
            break
        await asyncio.sleep(0.2)
    assert seen == [expected] * 6, seen


@pytest.mark.slow  # `pploy gate` worker processes
async def test_a_dead_worker_is_replaced_and_sigterm_stops_all(stack):
    workers = stack.workers()
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = stack.workers()
        if len(now) == WORKERS and workers[0] not in now:
            break
        await asyncio.sleep(0.1)
    replaced = stack.workers()
    assert len(replaced) == WORKERS and workers[0] not in replaced, tail(stack.log)
    cookie = await _session_cookie(stack.url)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        for _ in range(6):
            async with client.get(f"{stack.url}/x", headers={"Cookie": cookie}) as resp:
                assert (resp.status, await resp.text()) == (200, "alice")

    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(20) == 0, tail(stack.log)
    for pid in replaced:
        assert not _alive(pid), pid
    with pytest.raises(RuntimeError, match="nothing listens"):
        wait_port(stack.port, timeout=0.5)
    assert stack.log.read_text().count("gate.stop") == WORKERS, tail(stack.log)


@pytest.mark.slow  # `pploy gate` worker processes
async def test_sighup_restarts_workers_in_turn_with_the_new_configuration(stack):
    workers = stack.workers()
    cookie = await _session_cookie(stack.url)

    async def get(host: str | None = None) -> int:
        headers = {"Cookie": cookie, **({"Host": host} if host else {})}
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as client:
            async with client.get(f"{stack.url}/x", headers=headers) as resp:
                return resp.status

    assert await get("deploy.example.test") == 421
    config = yaml.safe_load(stack.config_path.read_text())
    config["allowed_hosts"] = ["deploy.example.test"]
    stack.config_path.write_text(yaml.safe_dump(config))
    stack.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = stack.workers()
        if len(now) == WORKERS and not set(now) & set(workers):
            break
        await asyncio.sleep(0.1)
    now = stack.workers()
    assert len(now) == WORKERS and not set(now) & set(workers), (workers, now, tail(stack.log))
    assert "gate.reload " in stack.log.read_text()
    for _ in range(6):  # the new rule, on every worker; the old session still admitted
        assert await get("deploy.example.test") == 200
        assert await get() == 200

    # A configuration that does not load leaves the running workers alone.
    stack.config_path.write_text("address: [not, an, address\n")
    stack.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "gate.reload.refused" not in stack.log.read_text():
        assert time.monotonic() < deadline, tail(stack.log)
        await asyncio.sleep(0.1)
    assert stack.workers() == now
    assert await get() == 200


def _config_file(tmp: Path, **extra) -> Path:
    path = tmp / "gate.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "address": f"127.0.0.1:{free_port()}",
                "auth": {"session": {"key": SESSION_KEY}, "info": {"service": "dev"}},
                **extra,
            }
        )
    )
    return path


def test_worker_count_must_be_positive_and_needs_linux(tmp_path, capsys, monkeypatch):
    from pploy.cli import main

    path = _config_file(tmp_path)
    assert main(["gate", "--config", str(path), "--workers", "0"]) == 2
    assert "--workers: must be at least 1" in capsys.readouterr().err
    monkeypatch.setattr(sys, "platform", "darwin")
    assert main(["gate", "--config", str(_config_file(tmp_path, workers=2))]) == 2
    assert "more than one worker needs Linux" in capsys.readouterr().err


@pytest.mark.slow  # `pploy gate` worker processes
async def test_many_kept_connections_each_get_their_own_answer_and_status(stack):
    """The fast path on uvloop, in worker processes, with upstream connections pooled and
    reused between clients the moment a response completes: every client gets the answer to
    its own request, and every request is counted with the status it was sent (reading a
    reused connection's state once logged status 0 for some of them)."""
    cookie = await _session_cookie(stack.url)
    clients, rounds = 40, 15

    async def one(index: int, client: aiohttp.ClientSession) -> list[str]:
        seen = []
        for n in range(rounds):
            async with client.get(f"{stack.url}/echo/{index}/{n}") as resp:
                assert resp.status == 200
                seen.append(await resp.text())
        return seen

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), headers={"Cookie": cookie}
    ) as client:
        results = await asyncio.gather(*(one(i, client) for i in range(clients)))
    for index, seen in enumerate(results):
        assert seen == [f"/echo/{index}/{n}" for n in range(rounds)]
    deadline = time.monotonic() + 10
    while True:
        ok = await _metric(stack.metrics_port, 'route="/",method="GET",code="200"')
        if ok >= clients * rounds or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert ok == clients * rounds
    for code in ('code="0"', 'code="499"', 'code="502"'):
        assert await _metric(stack.metrics_port, code) == 0, code
