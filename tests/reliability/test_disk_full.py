"""The log disk fills up during a deploy: the job fails with a clear message, the server stays
up, and a project whose logs live elsewhere keeps working.

The full disk is a real 1 MiB tmpfs mounted over one project's log directory (root only; CI
runs as root)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.deploy.support import make_remote, start_pploy
from tests.helpers import skip_or_fail
from tests.reliability.common import read_sse_log


@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    mounted: list[str] = []

    def mount(path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
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
