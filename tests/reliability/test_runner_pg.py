"""Two pploy instances on one real PostgreSQL: a deploy never runs twice at once (issue 23).

The ground truth is a ledger the deploy script itself appends: ``START <PPLOY_JOB_ID> <time>
<pid>``, ``TICK …``, ``END …``. Before it writes START, the script looks for an earlier START
whose process is still alive and writes ``OVERLAP`` if there is one: two deploy scripts of one
project alive at once (a zombie counts as gone), whatever pploy records. Leases are short
here (``job.lease_seconds: 8``, ``job.fence_seconds: 3``) so that pauses longer than a lease
take seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bench import postgres
from bench.procs import stop_process
from pploy.deploy.storage.postgres import PgStore
from pploy.deploy.storage.sqlite import Store
from tests.deploy.support import Pploy, make_remote, start_pploy
from tests.deploy.test_cluster import served
from tests.deploy.test_server_process import Server, alive, runner_pid
from tests.helpers import skip_or_fail
from tests.postgres import pg_database, pg_server  # noqa: F401
from tests.reliability.test_runner import entries, until

pytestmark = pytest.mark.slow

LEASE = {"job.lease_seconds": 8, "job.fence_seconds": 3}


def ticking_script(ledger: Path, ticks: int) -> str:
    """A deploy of ``ticks`` × 0.2 s that keeps the ledger (see the module docstring)."""
    return (
        "#!/bin/sh\n"
        f'L="{ledger}"\ntouch "$L"\n'
        "while read kind id t pid; do\n"
        '  [ "$kind" = START ] || continue\n'
        "  state=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -c1)\n"
        '  if [ -n "$state" ] && [ "$state" != Z ]; then\n'
        '    echo "OVERLAP $PPLOY_JOB_ID $id" >> "$L"\n  fi\ndone < "$L"\n'
        'echo "START $PPLOY_JOB_ID $(date +%s.%N) $$" >> "$L"\n'
        f"i=0\nwhile [ $i -lt {ticks} ]; do\n"
        '  echo "tick $i"\n  echo "TICK $PPLOY_JOB_ID $(date +%s.%N)" >> "$L"\n'
        "  sleep 0.2\n  i=$((i + 1))\ndone\n"
        'echo "END $PPLOY_JOB_ID $(date +%s.%N)" >> "$L"\n'
    )


def job_of(line: str) -> int:
    """The pploy job id in a ledger line (PPLOY_JOB_ID is ``<workdir hash>-<job id>``)."""
    return int(line.split()[1].rsplit("-", 1)[1])


def script_pid(ledger: Path, job: int) -> int:
    (line,) = [line for line in entries(ledger, "START") if job_of(line) == job]
    return int(line.split()[3])


async def refused_meanwhile(b, project: str, until_done) -> int:  # noqa: ANN001
    """Ask ``b`` for a deploy of ``project`` every 0.3 s until ``until_done()``: each must be
    refused (409: a job is running). Returns how many were asked."""
    asked = 0
    while not until_done():
        status, body = await b.api(
            "POST", f"/api/projects/{project}/deploy", json={"env": "staging"}
        )
        assert status == 409, body
        asked += 1
        await asyncio.sleep(0.3)
    return asked


def config_file(tmp_path: Path, database: str) -> Path:
    path = tmp_path / "pploy.yml"
    path.write_text(
        f"users: [alice, bob]\ndatabase: {database}\n"
        "job:\n  lease_seconds: 8\n  fence_seconds: 3\n  on_shutdown: cancel\n"
    )
    return path


@dataclass
class Running:
    """Instance A (a ``pploy serve`` process) running a ticking deploy, job ``first``, whose
    START is in the ledger; instance B (a pploy in this process) sees the project too."""

    ledger: Path
    a: Server
    b: Pploy
    http: aiohttp.ClientSession  # alice's
    first: int


@asynccontextmanager
async def deploy_running_on_a(tmp_path: Path, database: str, ticks: int) -> AsyncIterator[Running]:
    """Two instances on ``database`` and a deploy of ``ticks`` × 0.2 s started on A; both
    instances are stopped at the end."""
    ledger = tmp_path / "ledger"
    remote = make_remote(tmp_path, deploy_script=ticking_script(ledger, ticks))
    a = Server(tmp_path / "a", config_file(tmp_path, database))
    b = await start_pploy(tmp_path / "b", database=database, **LEASE)
    try:
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
            first = await a.start_deploy(http, remote)
            await served(b, "testploy")
            await until(lambda: entries(ledger, "START"), what="the first START")
            yield Running(ledger, a, b, http, first)
    finally:
        a.stop()
        await b.close()


async def test_pausing_or_killing_the_instance_that_runs_a_deploy_never_runs_two(
    tmp_path: Path,
    pg_database: str,  # noqa: F811
) -> None:
    async with deploy_running_on_a(tmp_path, pg_database, ticks=130) as run:  # ~26 s
        a, b, ledger = run.a, run.b, run.ledger
        # 1. A paused (SIGSTOP) for twice the lease while its deploy runs.
        a.proc.send_signal(signal.SIGSTOP)
        paused = time.monotonic()
        try:
            await refused_meanwhile(b, "testploy", lambda: time.monotonic() - paused > 16)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        await until(lambda: entries(ledger, "END"), 30, "the first END")
        record = await b.wait_job(run.first)
        assert (record["status"], record["exit_code"]) == ("succeeded", 0), record
        # 2. A killed (SIGKILL) while its second deploy runs: the runner carries on.
        async with run.http.post(
            a.base + "/api/projects/testploy/deploy", json={"env": "staging"}
        ) as resp:
            assert resp.status == 202, await resp.text()
            second = (await resp.json())["job"]["id"]
        await until(lambda: len(entries(ledger, "START")) == 2, what="the second START")
        a.stop(signal.SIGKILL)
        await refused_meanwhile(b, "testploy", lambda: len(entries(ledger, "END")) == 2)
        record = await b.wait_job(second)
        assert (record["status"], record["exit_code"]) == ("succeeded", 0), record
        assert b"tick 129" in await b.log(second)
        # 3. After the fault, a new deploy succeeds.
        third = await b.deploy("testploy")
        record = await b.wait_job(third, timeout=60)
        assert (record["status"], record["exit_code"]) == ("succeeded", 0), record
        assert entries(ledger, "OVERLAP") == []
        assert len(entries(ledger, "START")) == len(entries(ledger, "END")) == 3


async def test_a_paused_runner_is_fenced_before_its_lease_expires(
    tmp_path: Path,
    pg_database: str,  # noqa: F811
) -> None:
    """The runner itself stopped (SIGSTOP) for longer than the lease: its job's tree is
    SIGKILLed before the lease can expire (pploy serve's guard of the fence), the job is
    recorded interrupted, and only then can another instance start a deploy."""
    async with deploy_running_on_a(tmp_path, pg_database, ticks=150) as run:  # ~30 s
        a, b, ledger, first = run.a, run.b, run.ledger, run.first
        runner = runner_pid(tmp_path / "a", first)
        script = script_pid(ledger, first)
        os.kill(runner, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            while True:  # B may start a deploy only once the script is gone
                status, body = await b.api(
                    "POST", "/api/projects/testploy/deploy", json={"env": "staging"}
                )
                if status == 202:
                    second = body["job"]["id"]
                    break
                assert status == 409, body
                assert time.monotonic() - stopped < 30, "never freed"
                await asyncio.sleep(0.2)
            assert not alive(script), "a second deploy started beside the first"
        finally:
            if alive(runner):
                os.kill(runner, signal.SIGCONT)
        assert time.monotonic() - stopped > 3  # not before the fence
        async with run.http.get(a.base + f"/api/jobs/{first}") as resp:
            record = (await resp.json())["job"]
        assert record["status"] == "interrupted", record
        assert entries(ledger, "END") == []  # the script never finished: as recorded
        # The stored log is closed with pploy's note on both instances.
        assert b"interrupted" in await b.log(first)
        record = await b.wait_job(second, timeout=60)
        assert (record["status"], record["exit_code"]) == ("succeeded", 0), record
        assert entries(ledger, "OVERLAP") == []


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_leases_fence_stale_writes(tmp_path: Path, engine: str, request) -> None:  # noqa: ANN001
    """A lease is taken once, renewed by its epoch only, declared lost only once expired; then
    every write of the old epoch is refused but the rest of its log, at the stored end."""
    if engine == "sqlite":
        store: Store | PgStore = Store(tmp_path / "pploy.db")
    else:
        store = PgStore(request.getfixturevalue("pg_database"))
    try:
        job = store.create_job(project="p", kind="deploy", user="alice", lease_seconds=0.5)
        assert store.take_lease(job.id, 0.5) == 1
        assert store.take_lease(job.id, 0.5) is None  # once
        assert store.renew_lease(job.id, 1, 0.5)
        assert not store.renew_lease(job.id, 2, 0.5)  # not its epoch
        assert store.write_job(job.id, 1, sha="abc")
        assert not store.interrupt_job(job.id, message="m", log_bytes=0, expired_only=True)
        deadline = time.monotonic() + 5
        while not store.expired_jobs():  # the lease runs out (0.5 s)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert store.interrupt_job(job.id, message="lost", log_bytes=3, expired_only=True)
        assert not store.interrupt_job(job.id, message="again", log_bytes=3, expired_only=True)
        assert not store.renew_lease(job.id, 1, 0.5)  # the late runner learns it
        assert not store.write_job(job.id, 1, status="succeeded", exit_code=0)  # refused
        record = store.get_job(job.id)
        assert record is not None
        assert (record.status, record.message, record.lease_epoch) == ("interrupted", "lost", 2)
        if isinstance(store, PgStore):
            # The lost epoch's log bytes only finish the stored log, at its end (the rest
            # of its runner's file): tests/deploy/test_store_pg.py::
            # test_a_lost_epoch_may_only_finish_the_stored_log_at_its_end.
            assert not store.append_log(job.id, 3, b"gap", epoch=1)
            assert store.append_log(job.id, 0, b"old", epoch=1)  # a fenced-out runner's rest
            assert not store.append_log(job.id, 0, b"new", epoch=2)  # never over it
            assert store.read_log(job.id, 0, 10) == b"old"
    finally:
        store.close()


class RestartablePostgres(postgres.PostgresServer):
    """bench.postgres's server, stopped (a fast shutdown) and started again on its data."""

    def down(self) -> None:
        assert self.proc is not None
        stop_process(self.proc, signal.SIGINT)

    def up(self) -> None:
        self.start_existing()

    def start_existing(self) -> None:
        data = self.root / "data"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(postgres.BIN / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-h", "127.0.0.1", "-k", str(self.root), "-c", "fsync=off"],
                stdout=out, stderr=subprocess.STDOUT, user="postgres", group="postgres",
                extra_groups=[], start_new_session=True,
            )  # fmt: skip


async def test_a_database_outage_shorter_than_the_fence_kills_nothing(tmp_path: Path) -> None:
    """PostgreSQL stopped for a third of the lease (the defaults' 20 s of 60, scaled to 4 s of
    12) while a deploy runs: nobody can take over, so nothing is killed; the deploy ends
    ``succeeded`` as its ledger says, and the log stored in the database — read through the
    other instance — is byte-identical to the runner's file."""
    problem = postgres.available()
    if problem:
        skip_or_fail(problem)
    server = RestartablePostgres().start()
    try:
        database = server.create_database("outage")
        ledger = tmp_path / "ledger"
        remote = make_remote(tmp_path, deploy_script=ticking_script(ledger, ticks=70))  # ~14 s
        config = tmp_path / "pploy.yml"
        config.write_text(
            f"users: [alice, bob]\ndatabase: {database}\n"
            "job:\n  lease_seconds: 12\n  fence_seconds: 9\n  on_shutdown: cancel\n"
        )
        a = Server(tmp_path / "a", config)
        b = await start_pploy(
            tmp_path / "b", database=database, **{"job.lease_seconds": 12, "job.fence_seconds": 9}
        )
        try:
            async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
                job = await a.start_deploy(http, remote)
                await served(b, "testploy")
                await until(lambda: len(entries(ledger, "TICK")) >= 5, what="some ticks")
                server.down()
                await asyncio.sleep(4)  # the outage itself
                server.up()
                await until(lambda: entries(ledger, "END"), 30, "the END")
                record = await b.wait_job(job, timeout=60)
                assert (record["status"], record["exit_code"]) == ("succeeded", 0), record
                async with http.get(a.base + f"/api/jobs/{job}/log") as resp:
                    local = await resp.read()
            assert await b.log(job) == local  # B reads the stored copy: every byte, once
            assert b"tick 69" in local
            next_job = await b.deploy("testploy")
            record = await b.wait_job(next_job, timeout=60)
            assert (record["status"], record["exit_code"]) == ("succeeded", 0), record
            assert entries(ledger, "OVERLAP") == []
        finally:
            a.stop()
            await b.close()
    finally:
        server.stop()
