"""gate's faults: restarted while viewers follow a deploy through it (they resume by offset with
nothing lost or repeated), and the OpenID provider going away (new logins get a clear error
page, existing sessions keep working)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import pytest

from pploy.gate.config import parse_config
from pploy.gate.server import GateServer
from tests.deploy.support import Fifo, make_remote, start_pploy
from tests.gate.conftest import REPO, client_session, dev_config, dev_login
from tests.reliability.common import sse_events


class RestartableGate:
    """gate in this loop, stopped and started again on the same port (a restart)."""

    def __init__(self, config: dict) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.config = config
        self.server: GateServer | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.server = GateServer(parse_config(self.config, REPO))
        await self.server.start(sock=sock)

    async def stop(self) -> None:
        if self.server:
            await self.server.stop()
            self.server = None


@pytest.mark.slow  # gate restarts with viewers attached
async def test_gate_restart_while_viewers_follow_loses_and_repeats_nothing(tmp_path):
    fifo = Fifo(tmp_path / "go")
    script = (
        f"#!/bin/sh\necho 'line 1 before the restart'\n{fifo.script_open()}\n{fifo.wait_cmd}\n"
        f"echo 'line 2 while gate is down'\n{fifo.wait_cmd}\necho 'line 3 after'\n"
    )
    pploy = await start_pploy(tmp_path / "work", **{"auth.mode": "proxy"})
    gate = RestartableGate(
        dev_config(proxy=[{"path": "/", "dest": pploy.base, "strip_path": False}])
    )
    await gate.start()
    try:
        async with client_session() as client:
            await dev_login(client, gate.url, "alice")
            headers = {"Origin": gate.url}

            async def post(path: str, body: dict) -> dict:
                async with client.post(gate.url + path, json=body, headers=headers) as resp:
                    assert resp.status < 300, await resp.text()
                    return await resp.json()

            await post("/api/projects", {"url": str(make_remote(tmp_path, deploy_script=script))})
            await post("/api/projects/testploy/lock", {"operation": "gain"})
            job = (await post("/api/projects/testploy/deploy", {"env": "staging"}))["job"]["id"]

            texts: list[str] = []
            ids: list[int] = []
            ws_bytes = bytearray()
            events_url = f"{gate.url}/api/jobs/{job}/events"

            async def follow_sse(
                last_id: int | None, until: str, connected: asyncio.Event | None = None
            ) -> str | None:
                """One EventSource connection: read until ``until`` (or the status)."""
                extra = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
                async with client.get(events_url, headers=extra) as resp:
                    assert resp.status == 200
                    if connected:
                        connected.set()
                    async for event in sse_events(resp.content):
                        if event.get("event") == "log":
                            texts.append(json.loads(event["data"]))
                            ids.append(int(event["id"]))
                            if until in texts[-1]:
                                return None
                        elif event.get("event") == "status":
                            return json.loads(event["data"])["status"]
                return "ended"

            # A WebSocket viewer too: it must see a close when gate goes, not hang.
            ws = await client.ws_connect(f"{gate.url}/api/jobs/{job}/ws", headers=headers)
            await asyncio.wait_for(follow_sse(None, "line 1"), 10)
            while b"line 1" not in ws_bytes:
                msg = await asyncio.wait_for(ws.receive(), 10)
                ws_bytes += msg.data

            # The SSE connection is open (reading), as a browser's would be, when gate stops.
            connected = asyncio.Event()
            sse = asyncio.create_task(follow_sse(ids[-1], "never printed", connected))
            await asyncio.wait_for(connected.wait(), 10)
            started = time.monotonic()
            await gate.stop()
            stop_seconds = time.monotonic() - started
            assert stop_seconds < 8, f"gate took {stop_seconds:.1f} s to stop with open streams"
            try:
                outcome = await asyncio.wait_for(sse, 10)
            except aiohttp.ClientError:
                outcome = "ended"
            assert outcome == "ended"  # the viewer saw its stream end
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.ERROR), msg  # fmt: skip
            await ws.close()

            await fifo.release()  # the deploy prints line 2 while gate is down
            await gate.start()
            # The browser's EventSource reconnects with the last id it saw.
            assert await asyncio.wait_for(follow_sse(ids[-1], "line 2"), 10) is None
            await fifo.release()
            status = await asyncio.wait_for(follow_sse(ids[-1], "never printed"), 10)
            assert status == "succeeded"
            # The WebSocket viewer resumes at the byte offset it had.
            async with client.ws_connect(
                f"{gate.url}/api/jobs/{job}/ws?offset={len(ws_bytes)}", headers=headers
            ) as ws2:
                async for msg in ws2:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        ws_bytes += msg.data
        jobs = pploy.services.jobs
        raw = jobs.log_path(jobs.get(job)).read_bytes()
        assert "".join(texts) == raw.decode()  # nothing lost, nothing twice
        assert ids == sorted(set(ids)) and ids[-1] == len(raw)
        assert bytes(ws_bytes) == raw
    finally:
        fifo.close()
        await gate.stop()
        await pploy.close()
