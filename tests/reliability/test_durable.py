"""Durable job ends and cancels: what happens to a job no ``pploy serve`` follows.

- A job that ends while no pploy follows it (serve SIGTERMed or SIGKILLed, or the instance
  that runs it gone) gets its ``job.finished`` webhook exactly once: whoever claims its end
  first (one conditional UPDATE of ``jobs.announced_at``) sends it — the restarted pploy, or
  on PostgreSQL whichever instance looks first.
- A cancel is recorded in the job's row by the instance that got it; the runner looks for it
  itself, so it lands while the runner's own pploy is stopped.

Real parts throughout: ``pploy serve`` from config files as processes, a real git remote, a
deploy script that writes its own ledger (tests/reliability/faults.py) and waits on a fifo, a
real HTTP webhook receiver on loopback (tests/deploy/test_notify_events.py's), a real
PostgreSQL for two instances.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pploy.deploy.jobs.runner import runner_alive
from pploy.deploy.jobs.running import ANNOUNCE_SECONDS
from tests.deploy.support import Fifo, make_remote
from tests.deploy.test_notify_events import Receiver, receiver  # noqa: F401
from tests.deploy.test_server_process import kill_runner
from tests.postgres import pg_database, pg_server  # noqa: F401
from tests.reliability.faults import PployProcess, ledger_script, read_ledger
from tests.reliability.test_runner import until

pytestmark = pytest.mark.slow


def write_config(path: Path, hook: str, database: str | None = None, **job: object) -> Path:
    """``pploy serve``'s config: users alice and bob, short cancel graces (and ``job``
    settings), a webhook for job.finished (JSON) at ``hook``, default settings otherwise
    (jobs outlive serve)."""
    lines = ["users: [alice, bob]"]
    if database:
        lines.append(f"database: {database}")
    lines += [
        "job:",
        "  cancel_grace_seconds: [1, 1]",
        *(f"  {key}: {value}" for key, value in job.items()),
        "webhooks:",
        f"  - url: {hook}",
        "    events: [job.finished]",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def finished(receiver: Receiver) -> list[dict[str, Any]]:  # noqa: F811
    return [p["json"] for p in receiver.posts if p["json"].get("event") == "job.finished"]


def gated_script(ledger: Path, fifo: Fifo) -> str:
    """Writes START and a TICK, waits on ``fifo`` (forever unless released), a TICK, END."""
    return ledger_script(ledger, ticks=2, interval=0, gate=fifo.path, gate_at=1)


def script_state(ledger: Path) -> Any:
    (entry,) = read_ledger(ledger).values()
    return entry


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_job_that_ends_while_pploy_is_down_is_announced_once_after_the_restart(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    sig: int,
) -> None:
    fifo, ledger, workdir = Fifo(tmp_path / "go"), tmp_path / "ledger", tmp_path / "work"
    remote = make_remote(tmp_path, deploy_script=gated_script(ledger, fifo))
    config = write_config(tmp_path / "pploy.yml", receiver.url("/hook"))
    server = PployProcess(workdir, config)
    try:
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
            job = await server.start_deploy(http, remote)
            await until(lambda: read_ledger(ledger), what="the START")
            server.stop(sig)
            await fifo.release()  # the script ends while no pploy follows it
            await until(lambda: script_state(ledger).ended, what="the END")
            await until(lambda: not runner_alive(workdir, job), what="the runner's exit")
            assert finished(receiver) == []
            server = PployProcess(workdir, config)
            await server.ready(http)
            await receiver.wait_for(1)
            (body,) = finished(receiver)
            assert (body["id"], body["status"], body["exit_code"]) == (job, "succeeded", 0), body
            assert script_state(ledger).exit_code == 0
            await asyncio.sleep(ANNOUNCE_SECONDS * 1.5)  # its sweep has looked again
            out = server.stop(signal.SIGTERM)  # sends in flight are finished first
            assert "event=job.announced" in out
            # Started again: the end was announced, nothing more is sent.
            server = PployProcess(workdir, config)
            await server.ready(http)
            await asyncio.sleep(ANNOUNCE_SECONDS * 1.5)
            server.stop(signal.SIGTERM)
        assert len(finished(receiver)) == 1, finished(receiver)
    finally:
        fifo.close()
        server.stop(signal.SIGTERM)


async def kill_a_mid_deploy(
    http: aiohttp.ClientSession, a: PployProcess, b: PployProcess, remote: Path, ledger: Path
) -> int:
    """A deploy started on A, B up, the script running (its START in the ledger), then A
    SIGKILLed: the job's id."""
    job = await a.start_deploy(http, remote)
    await b.ready(http)
    await until(lambda: read_ledger(ledger), what="the START")
    a.stop(signal.SIGKILL)
    return job


async def only_b_announced(
    tmp_path: Path,
    config: Path,
    http: aiohttp.ClientSession,
    b: PployProcess,
    receiver: Receiver,  # noqa: F811
) -> None:
    """A restarted (its start looks for ends nobody announced, then its loop) sends nothing
    more: one job.finished in all, announced by B."""
    a = PployProcess(tmp_path / "a", config)
    try:
        await a.ready(http)
        await asyncio.sleep(ANNOUNCE_SECONDS * 1.5)  # nothing more may come: a round of each
    finally:
        out_a = a.stop(signal.SIGTERM)
    out_b = b.stop(signal.SIGTERM)
    assert len(finished(receiver)) == 1, finished(receiver)
    assert "event=job.announced" in out_b and "event=job.announced" not in out_a


async def test_on_postgresql_the_end_of_a_job_whose_instance_is_down_is_announced_once(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    pg_database: str,  # noqa: F811
) -> None:
    """Two instances: A runs a deploy and is SIGKILLed; the job ends while A is down; B (which
    never followed it) announces it once the grace for another's job has passed; A,
    restarted, sends nothing more: one job.finished in all."""
    fifo, ledger = Fifo(tmp_path / "go"), tmp_path / "ledger"
    remote = make_remote(tmp_path, deploy_script=gated_script(ledger, fifo))
    config = write_config(tmp_path / "pploy.yml", receiver.url("/hook"), pg_database)
    a = PployProcess(tmp_path / "a", config)
    b = PployProcess(tmp_path / "b", config)
    try:
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
            job = await kill_a_mid_deploy(http, a, b, remote, ledger)
            await fifo.release()
            await until(lambda: script_state(ledger).ended, what="the END")
            await until(lambda: not runner_alive(tmp_path / "a", job), what="the runner's exit")
            await receiver.wait_for(1, timeout=20)
            (body,) = finished(receiver)
            assert (body["id"], body["status"], body["exit_code"]) == (job, "succeeded", 0), body
            await only_b_announced(tmp_path, config, http, b, receiver)
    finally:
        fifo.close()
        a.stop()
        b.stop()


async def test_a_job_declared_lost_by_the_lease_sweep_is_announced_once(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    pg_database: str,  # noqa: F811
) -> None:
    """Two instances: A and then the runner of its deploy SIGKILLed (nothing records the end);
    B's lease sweep declares the job interrupted once the lease (8 s) has expired, and B
    announces it; A, restarted, sends nothing more: one job.finished, ``interrupted``."""
    fifo, ledger = Fifo(tmp_path / "go"), tmp_path / "ledger"
    remote = make_remote(tmp_path, deploy_script=gated_script(ledger, fifo))
    config = write_config(
        tmp_path / "pploy.yml", receiver.url("/hook"), pg_database,
        lease_seconds=8, fence_seconds=3,
    )  # fmt: skip
    a = PployProcess(tmp_path / "a", config)
    b = PployProcess(tmp_path / "b", config)
    try:
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
            job = await kill_a_mid_deploy(http, a, b, remote, ledger)
            kill_runner(tmp_path / "a", job)
            await receiver.wait_for(1, timeout=40)
            (body,) = finished(receiver)
            assert (body["id"], body["status"]) == (job, "interrupted"), body
            assert "lease expired" in body["message"]
            await only_b_announced(tmp_path, config, http, b, receiver)
        assert not script_state(ledger).ended  # SIGKILLed with its runner: no END, no SIG
    finally:
        fifo.close()
        a.stop()
        b.stop()


async def test_a_cancel_through_another_instance_lands_while_the_runner_s_instance_is_stopped(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    pg_database: str,  # noqa: F811
) -> None:
    """A runs a deploy (a script waiting forever) and is SIGSTOPped: its pploy_cancel listener
    hears nothing. Bob, who does not hold the lock, is refused through B and nothing is
    recorded; alice's cancel through B is recorded in the job's row, the runner finds it,
    the script gets SIGINT (its ledger says so), the job is cancelled by alice. One
    job.finished in all, also once A is resumed."""
    ledger = tmp_path / "ledger"  # a TICK every 0.1 s for a minute, unless stopped
    remote = make_remote(tmp_path, deploy_script=ledger_script(ledger, ticks=600, interval=0.1))
    config = write_config(tmp_path / "pploy.yml", receiver.url("/hook"), pg_database)
    a = PployProcess(tmp_path / "a", config)
    b = PployProcess(tmp_path / "b", config)
    try:
        async with (
            aiohttp.ClientSession(cookies={"user": "alice"}) as http,
            aiohttp.ClientSession(cookies={"user": "bob"}) as bob,
        ):
            job = await a.start_deploy(http, remote)
            await b.ready(http)
            await until(lambda: read_ledger(ledger), what="the START")
            a.proc.send_signal(signal.SIGSTOP)
            try:
                async with bob.post(b.base + f"/api/jobs/{job}/cancel", json={}) as resp:
                    assert resp.status == 403, await resp.text()
                    assert "locked by alice" in (await resp.json())["error"]
                async with http.get(b.base + f"/api/jobs/{job}") as resp:
                    record = (await resp.json())["job"]
                assert (record["status"], record["cancel_requested_by"]) == ("running", None)
                async with http.post(b.base + f"/api/jobs/{job}/cancel", json={}) as resp:
                    assert resp.status == 202, await resp.text()
                await until(lambda: script_state(ledger).ended, 15, "the script stopped")
                state = script_state(ledger)
                assert (state.signal, state.exit_code) == ("INT", 130)
                assert len(state.ticks) < 600  # stopped, not finished
                async with http.get(b.base + f"/api/jobs/{job}/log?follow=1") as resp:
                    log = await asyncio.wait_for(resp.read(), 20)
                async with http.get(b.base + f"/api/jobs/{job}") as resp:
                    record = (await resp.json())["job"]
                assert (record["status"], record["cancelled_by"]) == ("cancelled", "alice")
                assert record["cancel_requested_by"] == "alice"
                assert b"cancelled by alice" in log
                await receiver.wait_for(1, timeout=20)  # B's: A is still stopped
            finally:
                a.proc.send_signal(signal.SIGCONT)
            await a.ready(http)
            await asyncio.sleep(ANNOUNCE_SECONDS * 1.5)
        a.stop(signal.SIGTERM)
        b.stop(signal.SIGTERM)
        (body,) = finished(receiver)
        assert (body["id"], body["status"], body["cancelled_by"]) == (job, "cancelled", "alice")
    finally:
        a.proc.send_signal(signal.SIGCONT)
        a.stop()
        b.stop()
