"""Secret masking (issue 25, interface 4): the streaming filter on its own, then through
``pploy serve`` started from a config file (SQLite and a real PostgreSQL), with a deploy script
that writes a secret in pieces, pausing between them on a fifo, inside colour codes, and with
``::add-mask::``: the secret is in no live stream, log file, stored log or notification."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from pathlib import Path

import aiohttp
import pytest

from pploy.deploy.config import ConfigError, load_config
from pploy.deploy.domain.masking import Masker
from tests.deploy.govserver import Served
from tests.deploy.support import Fifo, make_remote
from tests.deploy.test_notify import Receiver, receiver  # noqa: F401
from tests.postgres import pg_database, pg_server  # noqa: F401

SECRET = "s3cr3t-Value-42"


def masked(values: list[str], chunks: list[bytes]) -> bytes:
    masker = Masker(values)
    return b"".join(masker.feed(c) for c in chunks) + masker.flush()


def test_a_value_is_masked_whole_in_pieces_and_inside_colour_codes() -> None:
    s = SECRET.encode()
    assert masked([SECRET], [b"a " + s + b" b\n"]) == b"a *** b\n"
    assert masked([SECRET], [b"a s3c", b"r3t-Va", b"lue-42 b\n"]) == b"a *** b\n"
    assert masked([SECRET], [b"a s3c", b"r3t-Vx\n"]) == b"a s3cr3t-Vx\n"  # not the value
    assert masked([SECRET], [b"\x1b[31m" + s + b"\x1b[0m\n"]) == b"\x1b[31m***\x1b[0m\n"
    # Colour codes inside the value (even cut in two between writes): the colours stay.
    split = [b"s3cr3t\x1b[1;3", b"1m-Value\x1b[0m-42!\n"]
    assert masked([SECRET], split) == b"***\x1b[1;31m\x1b[0m!\n"
    # The longest value wins where two start at one place; a possible longer one waits.
    assert masked(["abcd", "abcdefgh"], [b"xxabcd", b"efgh abcd\n"]) == b"xx*** ***\n"


def test_add_mask_lines_mask_their_value_from_then_on() -> None:
    out = masked([], [b"one\n::add-m", b"ask::tok-", b"12345\r\nuse tok-1", b"2345 now\n"])
    assert out == b"one\n::add-mask::***\r\nuse *** now\n"
    # Only at the start of a line; a short value is hidden but masks nothing else.
    assert masked([], [b"say ::add-mask::abcdef\nabcdef\n"]) == b"say ::add-mask::abcdef\nabcdef\n"
    assert masked([], [b"::add-mask::ab\nab\n"]) == b"::add-mask::***\nab\n"


def test_only_a_possible_partial_match_is_held_back() -> None:
    masker = Masker([SECRET])
    assert masker.feed(b"line one\nnext s3cr") == b"line one\nnext "
    assert masker.pending == b"s3cr"
    assert masker.feed(b"ew\n") == b"s3crew\n" and masker.pending == b""
    assert masker.feed(b"plain text with no s") == b"plain text with no "
    assert masker.flush() == b"s"
    assert Masker().feed(b"no secrets at all: s3cr") == b"no secrets at all: s3cr"


def test_any_split_of_the_output_masks_the_same() -> None:
    rng = random.Random(25)
    text = (
        b"start " + SECRET.encode() + b" mid \x1b[32m" + SECRET[:5].encode() + b"\x1b[0m"
        + SECRET[5:].encode() + b"\n::add-mask::other-secret\nother-secret end s3cr3\n"
    )  # fmt: skip
    whole = masked([SECRET], [text])
    assert SECRET.encode() not in whole and b"other-secret" not in whole
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 12)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert masked([SECRET], pieces) == whole, pieces


@pytest.mark.slow  # a `pploy serve` process
def test_a_short_value_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "pploy.yml"
    path.write_text("job:\n  mask_env: [DEPLOY_TOKEN]\n")
    with pytest.raises(ConfigError, match=r"job\.mask_env: the value of DEPLOY_TOKEN is shorter"):
        load_config(path, environ={"DEPLOY_TOKEN": "abc"})
    assert load_config(path, environ={"DEPLOY_TOKEN": "abcd"}).job.mask_env == ["DEPLOY_TOKEN"]
    path.write_text("job:\n  mask_env: ['not a name']\n")
    with pytest.raises(ConfigError, match=r"job\.mask_env"):
        load_config(path, environ={})
    # Through `pploy serve --check-config`, as an operator meets it.
    import subprocess

    env = {**os.environ, "DEPLOY_TOKEN": "ab"}
    path.write_text("job:\n  mask_env: [DEPLOY_TOKEN]\n")
    run = subprocess.run(
        [sys.executable, "-m", "pploy", "serve", "--config", str(path), "--check-config"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert run.returncode != 0 and "job.mask_env" in run.stdout + run.stderr


SCRIPT = """#!/bin/sh
echo "plain $DEPLOY_SECRET plain"
printf 'partial: s3cr3t-'
{open}
{wait}
printf 'Value-42 after\\n'
printf '\\033[31m%s\\033[0m\\n' "$DEPLOY_SECRET"
printf 's3cr3t\\033[1;33m-Val'
{wait}
printf 'ue\\033[0m-42 coloured\\n'
echo "::add-mask::run-time-token-77"
echo "token run-time-token-77 used"
echo "finished"
"""


@pytest.mark.slow  # `pploy serve` from a config file
@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
async def test_a_secret_split_across_writes_never_leaves_pploy(
    tmp_path: Path,
    engine: str,
    receiver: Receiver,  # noqa: F811
    request: pytest.FixtureRequest,
):
    database = request.getfixturevalue("pg_database") if engine == "postgresql" else None
    fifo = Fifo(tmp_path / "go")
    script = SCRIPT.format(open=fifo.script_open(), wait=fifo.wait_cmd)
    remote = make_remote(tmp_path, deploy_script=script)
    hook = f"webhooks:\n  - url: {receiver.url()}\n"
    env = {**os.environ, "DEPLOY_SECRET": SECRET}
    served = Served(tmp_path, hook, database, env, job="  mask_env: [DEPLOY_SECRET]\n")
    await served.start()
    try:
        name = await served.add_project(remote)
        assert (await served.lock(name, "gain"))[0] == 200
        job = await served.ok("POST", f"/api/projects/{name}/deploy", json={"env": "staging"})
        job_id = job["job"]["id"]
        live = bytearray()
        sse = bytearray()

        async def follow_sse() -> None:
            url = f"{served.base}/api/jobs/{job_id}/events"
            async with served.client("bob").get(url) as resp:
                async for chunk in resp.content.iter_any():
                    sse.extend(chunk)

        sse_task = asyncio.create_task(follow_sse())
        url = f"{served.base}/api/jobs/{job_id}/log?follow=1"
        async with served.client("alice").get(url) as resp:

            async def until(marker: bytes) -> None:
                while marker not in live:
                    live.extend(await asyncio.wait_for(resp.content.readany(), 20))

            # The script wrote "partial: s3cr3t-" and waits: the text before the partial
            # match is live at once, the partial match is held back.
            await until(b"partial: ")
            assert b"s3cr3t" not in live
            await fifo.release()
            await until(b"after")
            await until(b"\x1b[31m***")  # the value in colour, masked; its next split held
            await fifo.release()
            await until(b"finished")
            live.extend(await asyncio.wait_for(resp.read(), 20))
        await asyncio.wait_for(sse_task, 20)
        record = await served.wait_job(job_id)
        assert record["status"] == "succeeded"
        stored = (await served.api("GET", f"/api/jobs/{job_id}/log"))[1]
        on_disk = (served.workdir / "logs" / name / f"{job_id}.log").read_bytes()
        for text in (bytes(live), bytes(sse), stored.encode(), on_disk):
            assert SECRET.encode() not in text and b"s3cr3t" not in text
            assert b"run-time-token-77" not in text
        text = on_disk.decode()
        assert "plain *** plain" in text and "partial: *** after" in text
        assert "\x1b[31m***\x1b[0m" in text and "***\x1b[1;33m\x1b[0m coloured" in text
        assert "::add-mask::***" in text and "token *** used" in text
        if database:  # the shared store's copy of the log
            import psycopg

            with psycopg.connect(database) as conn:
                rows = conn.execute(
                    "SELECT data FROM log_chunks WHERE job_id = %s ORDER BY start", (job_id,)
                ).fetchall()
            shared = b"".join(bytes(r[0]) for r in rows)
            assert b"partial: *** after" in shared and b"s3cr3t" not in shared
        while not any(b.get("event") == "job.finished" for b in receiver.bodies):
            receiver.arrived.clear()
            await asyncio.wait_for(receiver.arrived.wait(), 20)
        assert SECRET not in str(receiver.bodies)
    finally:
        fifo.close()
        await served.close()


@pytest.mark.slow  # `pploy serve` from a config file
async def test_the_websocket_stream_is_masked_too(tmp_path: Path):
    remote = make_remote(
        tmp_path, deploy_script='#!/bin/sh\nprintf "ws s3cr"\nprintf "3t-Value-42 end\\n"\n'
    )
    env = {**os.environ, "DEPLOY_SECRET": SECRET}
    served = Served(tmp_path, env=env, job="  mask_env: [DEPLOY_SECRET]\n")
    await served.start()
    try:
        name = await served.add_project(remote)
        await served.lock(name, "gain")
        job = await served.ok("POST", f"/api/projects/{name}/deploy", json={"env": "staging"})
        await served.wait_job(job["job"]["id"])
        got = bytearray()
        url = f"{served.base}/api/jobs/{job['job']['id']}/ws"
        async with served.client("alice").ws_connect(url, origin=served.base) as ws:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    got.extend(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    got.extend(msg.data.encode())
        assert b"ws *** end" in got and b"s3cr" not in got
    finally:
        await served.close()
