"""`pploy client queue|approve|reject|freezes` (issue 25) as a terminal or CI step runs them: a
subprocess with PPLOY_URL and PPLOY_TOKEN against ``pploy serve`` started from a config file."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.client.test_client import run_client
from tests.deploy.govserver import Served
from tests.deploy.support import make_remote

pytestmark = pytest.mark.slow  # `pploy serve` and a dozen `pploy client` processes

CONFIG = """\
auth:
  names_are_self_chosen: true
permissions:
  admins: [alice]
approvals:
  - env: production
    approvers: [alice, bob]
"""


async def test_queue_approve_reject_and_freezes_from_the_command_line(tmp_path: Path):
    served = Served(tmp_path, CONFIG)
    await served.start()
    try:
        name = await served.add_project(
            make_remote(tmp_path, deploy_script="#!/bin/sh\necho deployed $DEPLOY_ENV\n")
        )
        alice = (await served.ok("POST", "/api/tokens", "alice", {"name": "ci"}))["token"]
        bob = (await served.ok("POST", "/api/tokens", "bob", {"name": "ci"}))["token"]
        url = served.base

        assert (await run_client(url, alice, "lock", name, "gain"))[0] == 0
        code, out, err = await run_client(url, bob, "queue", name)
        assert code == 0 and b"locked by alice" in out and b"waiting: bob" in out, err
        code, out, err = await run_client(url, alice, "queue", name)
        assert code == 3 and "you hold the lock" in err

        code, out, err = await run_client(url, alice, "deploy", name, "production")
        assert code == 0 and "awaits approval" in err, err
        job = int(out)
        code, out, err = await run_client(url, alice, "approve", str(job))
        assert code == 3 and "self-approval" in err, err  # the attack, from the CLI
        code, out, err = await run_client(url, bob, "approve", str(job), "--follow")
        assert code == 0 and b"deployed production" in out, err

        code, out, err = await run_client(url, alice, "deploy", name, "production")
        second = int(out)
        code, out, err = await run_client(url, bob, "reject", str(second))
        assert code == 0 and out.decode().strip() == f"job #{second} rejected"

        until = (datetime.now().astimezone() + timedelta(hours=1)).isoformat(timespec="seconds")
        start = ("freezes", "start", "incident", "--until", until, "--reason", "db down",
                 "--env", "staging")  # fmt: skip
        code, out, err = await run_client(url, bob, *start)
        assert code == 3 and "admins" in err  # not an admin
        code, out, err = await run_client(url, alice, *start)
        assert code == 0 and b"incident [IN FORCE]" in out and b"envs=staging" in out, err
        code, out, err = await run_client(url, alice, "deploy", name, "staging")
        assert code == 3 and "frozen by 'incident'" in err
        code, out, err = await run_client(
            url, alice, "deploy", name, "staging", "--override-freeze", "hotfix for the db"
        )
        assert code == 0 and b"deployed staging" in out, err
        code, out, err = await run_client(url, alice, "freezes", "end", "incident")
        assert code == 0 and b"incident" not in out
        code, out, err = await run_client(url, bob, "queue", name, "--leave")
        assert code == 0 and b"waiting: nobody" in out
    finally:
        await served.close()
