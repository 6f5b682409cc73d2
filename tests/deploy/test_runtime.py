"""pploy serve about itself (issue 14): Prometheus ``/metrics`` (authenticated on the main
listener, open on ``metrics_address``), the runtime stats of ``/api/stats`` and go-pploy's
``/api/_stats``, and ``--pidfile`` — through a real server and the real command."""

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

from bench.procs import wait_port
from tests.deploy.support import Fifo, Pploy, make_remote, start_pploy
from tests.deploy.test_server_streams import gated_script
from tests.helpers import free_port

SAMPLE = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-z_]+="[^"\\]*",?)*\})? -?[0-9.e+-]+')


def parse(text: str) -> dict[str, float]:
    """Samples by ``name{labels}``; every line is a comment or a well-formed sample whose
    family was declared with ``# TYPE``."""
    declared, samples = set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
        elif not line.startswith("# HELP "):
            assert SAMPLE.fullmatch(line), line
            name, value = line.rsplit(" ", 1)
            assert name.split("{")[0] in declared, line
            samples[name] = float(value)
    return samples


async def metrics(pploy: Pploy) -> dict[str, float]:
    async with pploy.client().get(pploy.url("/metrics")) as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        return parse(await resp.text())


async def test_metrics_count_requests_jobs_and_open_streams(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "go")
    pploy = await start_pploy(tmp_path / "w")
    try:
        async with pploy.client(None).get(
            pploy.url("/metrics"), headers={"Accept": "application/json"}
        ) as resp:
            assert resp.status == 401  # the main listener's /metrics needs a user
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=gated_script(fifo, 1)))
        await pploy.gain(name)
        await pploy.api("GET", "/api/status")
        job = await pploy.deploy(name)
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/events")) as stream:
            await stream.content.readline()
            during = await metrics(pploy)
            assert during['pploy_open_streams{transport="sse"}'] == 1
            assert during["pploy_jobs_running"] == 1 and during["pploy_locks_held"] == 1
            await fifo.release()
            await stream.read()
        after = await metrics(pploy)
        assert after['pploy_open_streams{transport="sse"}'] == 0
        assert after['pploy_jobs_total{kind="deploy",status="succeeded"}'] == 1
        assert after["pploy_jobs_running"] == 0 and after["pploy_projects"] == 1
        key = 'pploy_http_requests_total{route="/api/status",method="GET",code="200"}'
        assert after[key] == 1
        assert after["process_resident_memory_bytes"] > 1e6
    finally:
        fifo.close()
        await pploy.close()


async def test_stats_like_go_pploys(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "w")
    try:
        for path in ("/api/stats", "/api/_stats"):
            async with pploy.client(None).get(pploy.url(path)) as resp:
                assert resp.status == 401, path
            status, body = await pploy.api("GET", path)
            assert status == 200
            assert body["pid"] == os.getpid() and body["jobs_running"] == 0
            assert body["rss_bytes"] > 0 and body["threads"] >= 1 and body["uptime_seconds"] >= 0
            assert set(body["open_streams"]) == {"sse", "websocket", "follow"}
    finally:
        await pploy.close()


def serve(tmp_path: Path, workdir: str, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    base = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
    return subprocess.Popen(
        [sys.executable, "-m", "pploy", "serve", "--users", "alice", "--workdir",
         str(tmp_path / workdir), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**base, **(env or {})}, text=True,
    )  # fmt: skip


@pytest.mark.slow  # three `pploy serve` processes
async def test_pidfile_and_the_separate_metrics_listener(tmp_path: Path) -> None:
    pidfile = tmp_path / "run/pploy.pid"
    pidfile.parent.mkdir()
    port, metrics_port = free_port(), free_port()
    proc = serve(
        tmp_path, "w", "--port", str(port), "--pidfile", str(pidfile),
        env={"PPLOY_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}"},
    )  # fmt: skip
    try:
        wait_port(metrics_port, proc)
        assert proc.stdout is not None
        while "metrics on" not in (line := proc.stdout.readline()):  # printed once all is set
            assert line, proc.stderr.read() if proc.stderr else ""
        assert pidfile.read_text() == f"{proc.pid}\n"
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                assert resp.status == 200  # no identity needed on the metrics listener
                assert parse(await resp.text())["pploy_jobs_running"] == 0
            async with client.get(f"http://127.0.0.1:{metrics_port}/api/status") as resp:
                assert resp.status == 404  # and nothing else is served there
            async with client.get(f"http://127.0.0.1:{port}/metrics", allow_redirects=False) as r:
                assert r.status == 303  # the main listener's: sign in first

        second = serve(tmp_path, "w2", "--port", str(free_port()), "--pidfile", str(pidfile))
        _, err = second.communicate(timeout=30)
        assert second.returncode == 1
        assert f"pidfile: {pidfile} names process {proc.pid}, which is running" in err
        assert pidfile.read_text() == f"{proc.pid}\n"

        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert not pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # A stale pidfile (its process gone) is replaced.
    pidfile.write_text("999999\n")
    again = serve(tmp_path, "w", "--port", str(port), "--pidfile", str(pidfile))
    try:
        wait_port(port, again)
        deadline = time.monotonic() + 10
        while pidfile.read_text() != f"{again.pid}\n" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert pidfile.read_text() == f"{again.pid}\n"
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(30)
    assert not pidfile.exists()
