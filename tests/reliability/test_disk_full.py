"""The disk fills up during a deploy: the job fails with a clear message, the server stays up,
and everything works again once space is freed.

The full disk is a real small tmpfs, mounted over one project's log directory or over the
whole workdir (database included), and filled by the test (root only; CI runs as root)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess

import pytest

from tests.deploy.support import Fifo, make_remote, start_pploy
from tests.helpers import skip_or_fail
from tests.reliability.common import read_sse_log


@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    mounted: list[str] = []

    def mount(path, size: str = "1m") -> None:
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            skip_or_fail(f"cannot mount a tmpfs: {result.stderr.strip()}")
        mounted.append(str(path))

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", path], check=False)


async def test_a_full_log_disk_fails_the_job_and_nothing_else(tmp_path, tmpfs):
    # 3 MB of output (and a line after it) into a 1 MiB file system.
    script = "#!/bin/sh\necho start\nhead -c 3000000 /dev/zero | tr '\\0' 'x'\necho\necho end\n"
    full = make_remote(tmp_path, "full", deploy_script=script)
    other = make_remote(tmp_path, "other")
    pploy = await start_pploy(tmp_path / "work")
    try:
        for remote in (full, other):
            name = await pploy.add_project(remote)
            await pploy.gain(name)
        tmpfs(pploy.services.projects.log_dir("full"))
        job = await pploy.deploy("full")
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/events")) as resp:
            text, _, status = await read_sse_log(resp.content)
        record = await pploy.wait_job(job)
        assert record["status"] == "failed" == status["status"]
        assert "No space left on device" in record["message"]
        assert record["message"].startswith("cannot write the log ")
        assert text.startswith("\x1b[1;36m$ DEPLOY_ENV=staging") and "start" in text
        assert "end" not in text
        # The script was stopped, not left writing into the void.
        assert pploy.services.jobs.running_for("full") is None
        # The server is up, the other project deploys, its log is whole.
        async with pploy.client().get(pploy.url("/ping")) as resp:
            assert resp.status == 200
        job2 = await pploy.deploy("other")
        assert (await pploy.wait_job(job2))["status"] == "succeeded"
        assert b"deployed staging" in await pploy.log(job2)
        # The history and the job page show what happened.
        status_code, body = await pploy.api("GET", "/api/projects/full/jobs")
        assert body["jobs"][0]["message"] == record["message"]
        async with pploy.client().get(pploy.url(f"/jobs/{job}")) as resp:
            assert resp.status == 200
            assert "No space left on device" in await resp.text()
    finally:
        await pploy.close()


def fill(directory) -> int:
    """Write a file in ``directory`` until the file system refuses; its descriptor."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    for size in (1 << 16, 1 << 12, 1):
        while True:
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                break
    return fd


def stored_job(workdir, job: int) -> tuple[str, str | None]:
    db = sqlite3.connect(workdir / "pploy.db")
    try:
        return db.execute("SELECT status, message FROM jobs WHERE id = ?", (job,)).fetchone()
    finally:
        db.close()


async def test_a_full_workdir_ends_the_job_failed_answers_503_and_recovers(tmp_path, tmpfs):
    """The whole workdir (log and database) fills while a deploy runs: the job ends
    `failed`, "No space left on device" in its record, although the database refused the
    write (the end is kept in memory and written once space is freed); every store write
    meanwhile answers a JSON 503; once space is freed the record lands, the lock can be
    released and the next deploy succeeds."""
    fifo = Fifo(tmp_path / "go")
    script = (
        f"#!/bin/sh\necho start\n{fifo.script_open()}\n{fifo.wait_cmd}\n"
        "while :; do printf '%01000d\\n' 0; sleep 0.01; done\n"
    )
    remote = make_remote(tmp_path, deploy_script=script)
    workdir = tmp_path / "work"
    tmpfs(workdir, "2m")
    pploy = await start_pploy(workdir)
    filler = -1
    try:
        name = await pploy.add_project(remote)
        await pploy.gain(name)
        job = await pploy.deploy(name)
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/events")) as resp:
            seen = b""
            while b"start" not in seen:
                seen += await asyncio.wait_for(resp.content.readany(), 10)
            filler = fill(workdir)
            await fifo.release()
            _, _, status = await read_sse_log(resp.content)
        assert status["status"] == "failed", status
        assert "No space left on device" in status["message"]
        status_code, body = await pploy.api("GET", f"/api/jobs/{job}")
        assert body["job"]["status"] == "failed"
        assert "No space left on device" in body["job"]["message"]
        assert pploy.services.jobs.running_for(name) is None
        # The database really refused: the end is only in pploy's memory so far.
        assert stored_job(workdir, job)[0] == "running"
        # Store writes answer 503 with a JSON error, not a plain 500.
        for path, payload in (
            (f"/api/projects/{name}/lock", {"operation": "release"}),
            (f"/api/projects/{name}/deploy", {"env": "staging"}),
        ):
            async with pploy.client().post(pploy.url(path), json=payload) as resp:
                assert resp.status == 503, await resp.text()
                assert "disk is full" in (await resp.json())["error"]
        async with pploy.client().get(pploy.url("/ping")) as resp:
            assert resp.status == 200
        # Space is freed: the record lands by itself, locks and deploys work again.
        os.close(filler)
        filler = -1
        (workdir / "filler").unlink()
        for _ in range(100):
            if stored_job(workdir, job)[0] != "running":
                break
            await asyncio.sleep(0.1)
        stored_status, stored_message = stored_job(workdir, job)
        assert stored_status == "failed" and "No space left on device" in stored_message
        status_code, body = await pploy.api(
            "POST", f"/api/projects/{name}/lock", json={"operation": "release"}
        )
        assert status_code == 200, body
        await pploy.gain(name)
        script_ok = make_remote(tmp_path, "ok", deploy_script="#!/bin/sh\necho fine\n")
        name2 = await pploy.add_project(script_ok)
        await pploy.gain(name2)
        assert (await pploy.wait_job(await pploy.deploy(name2)))["status"] == "succeeded"
    finally:
        if filler >= 0:
            os.close(filler)
        fifo.close()
        await pploy.close()
