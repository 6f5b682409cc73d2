"""Jobs, locks and their enforcement through a real pploy on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import aiohttp
import pytest
from aiohttp import web

from tests.deploy.support import Fifo, make_remote, push_commit, read_until, start_pploy
from tests.deploy.test_server_process import alive


async def test_lock_is_enforced_for_non_holders_on_every_route(tmp_path):
    fifo = Fifo(tmp_path / "go")
    script = f"#!/bin/sh\necho started\n{fifo.script_open()}\n{fifo.wait_cmd}\n"
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        # Nobody holds the lock: nobody may act.
        status, body = await pploy.api(
            "POST", f"/api/projects/{name}/deploy", "alice", {"env": "staging"}
        )
        assert status == 409 and "lock" in body["error"]
        await pploy.gain(name, "alice")
        # bob cannot take alice's lock; the message names her and the time left
        status, body = await pploy.api(
            "POST", f"/api/projects/{name}/lock", "bob", {"operation": "gain"}
        )
        assert status == 409
        assert "alice" in body["error"] and re.search(r"\d+ min", body["error"])
        for op in ("extend", "release"):
            status, body = await pploy.api(
                "POST", f"/api/projects/{name}/lock", "bob", {"operation": op}
            )
            assert status == 403, (op, body)
        # JSON API
        status, body = await pploy.api(
            "POST", f"/api/projects/{name}/checkout", "bob", {"ref": "main"}
        )
        assert status == 403 and "alice" in body["error"]
        status, body = await pploy.api(
            "POST", f"/api/projects/{name}/deploy", "bob", {"env": "staging"}
        )
        assert status == 403
        # one-shot script endpoint
        async with pploy.client("bob").post(pploy.url(f"/{name}/deploy?env=staging")) as resp:
            assert resp.status == 403
        # HTML form (with a valid CSRF token): refused, and no job starts
        bob = pploy.client("bob")
        async with bob.get(pploy.url(f"/projects/{name}")) as resp:
            page = await resp.text()
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        async with bob.post(
            pploy.url(f"/projects/{name}/deploy"),
            data={"csrf_token": token, "env": "staging"},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == f"/projects/{name}"
        assert pploy.services.store.list_jobs(name) == []
        # alice runs a job; bob cannot cancel it by API, form or WebSocket
        job = await pploy.deploy(name)
        status, body = await pploy.api("POST", f"/api/jobs/{job}/cancel", "bob")
        assert status == 403
        async with bob.ws_connect(pploy.url(f"/api/jobs/{job}/ws")) as ws:
            await ws.send_str(json.dumps({"action": "cancel"}))
            while True:
                msg = await asyncio.wait_for(ws.receive(), 10)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    reply = json.loads(msg.data)
                    break
        assert reply["status"] == 403 and "alice" in reply["error"]
        assert (await pploy.api("GET", f"/api/jobs/{job}"))[1]["job"]["status"] == "running"
        # a second job while one runs: 409 naming the running job
        status, body = await pploy.api(
            "POST", f"/api/projects/{name}/deploy", "alice", {"env": "staging"}
        )
        assert status == 409 and f"#{job}" in body["error"]
        # the holder may cancel through the WebSocket
        async with pploy.client("alice").ws_connect(pploy.url(f"/api/jobs/{job}/ws")) as ws:
            await ws.send_str(json.dumps({"action": "cancel"}))
            final = None
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT and "status" in json.loads(msg.data):
                    final = json.loads(msg.data)
        assert final["status"] == "cancelled" and final["cancelled_by"] == "alice"
    finally:
        fifo.close()
        await pploy.close()


def tree_script(ledger, up, body: str) -> str:
    """Shell lines running ``body`` in the background, a shell that ignores INT and TERM: it
    writes its pid to ``ledger`` once its traps are set and says so on the fifo ``up``, which
    the script waits for (``body`` may go on as it likes, still ignoring both)."""
    os.mkfifo(up)
    return (
        f"sh -c 'trap \"\" INT TERM; echo $$ >> {ledger}; echo up > {up}; {body}' &\n"
        f"read _ < {up}\n"
    )


def pids_alive_at_cancel(ledger, count: int) -> list[int]:
    """The pids the script wrote to ``ledger`` before its "ready" line, each checked alive:
    the test only cancels once it has seen that line, so the cancel meets all of them."""
    pids = [int(pid) for pid in ledger.read_text().split()] if ledger.exists() else []
    assert len(pids) == count and all(map(alive, pids)), (
        f"cancelling before the script is ready: {pids} of {count} processes up"
    )
    return pids


@pytest.mark.slow  # waits out the signal escalation
async def test_cancel_kills_the_whole_process_tree_and_records_who(tmp_path):
    pids = tmp_path / "pids"
    script = (
        "#!/bin/sh\n"
        "trap '' INT\n"  # ignores SIGINT: the escalation must go on to TERM/KILL
        f"sleep 300 & echo $! >> {pids}\n"
        + tree_script(pids, tmp_path / "up", "while :; do sleep 1; done")
        + f"echo $$ >> {pids}\n"
        "echo ready\n"
        "wait\n"
    )
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        job = await pploy.deploy(name)
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/log?follow=1")) as resp:
            seen = await read_until(resp, b"ready")
            tree = pids_alive_at_cancel(pids, 3)
            status, body = await pploy.api("POST", f"/api/jobs/{job}/cancel", "alice")
            assert status == 202, body
            seen.extend(await asyncio.wait_for(resp.content.read(), 20))
        record = (await pploy.api("GET", f"/api/jobs/{job}"))[1]["job"]
        assert record["status"] == "cancelled"
        assert record["cancelled_by"] == "alice"
        assert b"cancelled by alice" in seen
        assert [pid for pid in tree if alive(pid)] == [], "processes survived the cancel"
    finally:
        await pploy.close()


@pytest.mark.slow  # waits out the signal escalation
async def test_cancel_sends_sigint_then_sigterm_then_sigkill_in_that_order(tmp_path):
    """Observed from the script's own traps: it records each signal it gets (with the time)
    and ignores it; only SIGKILL, last, ends it."""
    seen_file = tmp_path / "signals"
    script = (
        "#!/bin/sh\n"
        f"trap 'echo INT $(date +%s.%N) >> {seen_file}' INT\n"
        f"trap 'echo TERM $(date +%s.%N) >> {seen_file}' TERM\n"
        f"echo READY $(date +%s.%N) >> {seen_file}\n"
        "echo ready\n"
        "while :; do sleep 0.05; done\n"
    )
    pploy = await start_pploy(tmp_path / "work", **{"job.cancel_grace_seconds": [1, 1]})
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        job = await pploy.deploy(name)
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/log?follow=1")) as resp:
            seen = await read_until(resp, b"ready")
            # Its traps are set and no signal has come yet: only now does the cancel go.
            ledger = seen_file.read_text().splitlines() if seen_file.exists() else []
            assert [line.split()[0] for line in ledger] == ["READY"], "cancelling too early"
            cancelled_at = time.time()
            status, body = await pploy.api("POST", f"/api/jobs/{job}/cancel", "alice")
            assert status == 202, body
            seen.extend(await asyncio.wait_for(resp.content.read(), 20))
        record = (await pploy.api("GET", f"/api/jobs/{job}"))[1]["job"]
        assert record["status"] == "cancelled"
        assert record["signal"] == signal.SIGKILL and b"killed by SIGKILL" in seen
        received = [line.split() for line in seen_file.read_text().splitlines()]
        assert [name for name, _ in received] == ["READY", "INT", "TERM"]
        int_at, term_at = (float(at) for _, at in received[1:])
        assert int_at - cancelled_at < 1  # SIGINT at once
        assert term_at - int_at >= 0.9  # SIGTERM one grace period (1 s) later
    finally:
        await pploy.close()


async def test_failed_and_missing_scripts_and_bad_input_run_nothing(tmp_path):
    marker = tmp_path / "ran"
    pploy = await start_pploy(tmp_path / "work")
    try:
        fail = await pploy.add_project(
            make_remote(tmp_path, "failing", "#!/bin/sh\necho oops >&2\nexit 3\n")
        )
        await pploy.gain(fail)
        job = await pploy.deploy(fail)
        record = await pploy.wait_job(job)
        assert (record["status"], record["exit_code"]) == ("failed", 3)
        assert b"oops" in await pploy.log(job)

        missing = await pploy.add_project(make_remote(tmp_path, "noscript", None))
        await pploy.gain(missing)
        status, body = await pploy.api(
            "POST", f"/api/projects/{missing}/deploy", "alice", {"env": "staging"}
        )
        assert status == 400 and ".deploy/bin/deploy is missing" in body["error"]
        async with pploy.client().get(pploy.url(f"/projects/{missing}")) as resp:
            assert resp.status == 200
            assert "is missing" in await resp.text()

        # URLs git would take as options, paths as names, and transports that run commands
        for url in (
            f"--upload-pack=touch {marker}",
            f"-u touch {marker}",
            f"ext::sh -c touch% {marker}",
            "../x",
            ".git",
        ):
            status, body = await pploy.api("POST", "/api/projects", "alice", {"url": url})
            assert status == 400, (url, body)
            assert body["error"]
        # refs that are options or not ref names
        for ref in (f"--upload-pack=touch {marker}", "-b", "a..b", "x y", "main~x", "@{-1}"):
            status, body = await pploy.api(
                "POST", f"/api/projects/{fail}/checkout", "alice", {"ref": ref}
            )
            assert status == 400 and "ref" in body["error"], (ref, body)
        # unknown env, bad JSON, wrong types
        status, body = await pploy.api(
            "POST", f"/api/projects/{fail}/deploy", "alice", {"env": "moon"}
        )
        assert status == 400 and "staging" in body["error"]
        status, body = await pploy.api("POST", f"/api/projects/{fail}/deploy", "alice", {"env": 3})
        assert status == 400
        async with pploy.client().post(
            pploy.url(f"/api/projects/{fail}/deploy"),
            data="{nope",
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 400 and "JSON" in (await resp.json())["error"]
        status, body = await pploy.api("GET", "/api/projects/..%2Fetc")
        assert status == 404
        status, body = await pploy.api("GET", "/api/jobs/abc")
        assert status == 400
        assert not marker.exists()
        assert len(pploy.services.store.list_jobs(fail)) == 1
        # duplicates
        status, body = await pploy.api(
            "POST", "/api/projects", "alice", {"url": str(tmp_path / "failing.git")}
        )
        assert status == 409
    finally:
        await pploy.close()


async def test_checkout_records_sha_and_shows_pending_commits(tmp_path):
    remote = make_remote(
        tmp_path,
        "app",
        "#!/bin/sh\necho env=$DEPLOY_ENV user=$DEPLOY_USER project=$DEPLOY_PROJECT term=$TERM\n",
    )
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(remote)
        await pploy.gain(name)
        first = await pploy.deploy(name, "production")
        record = await pploy.wait_job(first)
        assert record["status"] == "succeeded"
        assert b"env=production user=alice project=app term=xterm-256color" in await pploy.log(
            first
        )
        new_sha = push_commit(remote, "Add feature\n\nLonger body.", {"feature.txt": "x\n"})
        job = await pploy.checkout(name, "main")
        record = await pploy.wait_job(job)
        assert record["status"] == "succeeded", (await pploy.log(job)).decode()
        assert record["sha"] == new_sha
        log = (await pploy.log(job)).decode()
        for step in (
            "git fetch --prune",
            "git checkout -f",
            "git reset --hard",
            "git clean -fdx",
            "git submodule sync",
            "git submodule update --init --recursive",
        ):
            assert step in log
        status, view = await pploy.api("GET", f"/api/projects/{name}/commits")
        assert view["head"] == new_sha
        top = view["commits"][0]
        assert top["subject"] == "Add feature" and top["body"] == "Longer body."
        assert {"status": "A", "path": "feature.txt"} in top["files"]
        assert any("origin/main" in r for r in top["refs"])
        assert [c["sha"] for c in view["envs"]["production"]["pending"]] == [new_sha]
        assert view["envs"]["staging"]["last_deployed"] is None
        # a missing ref ends the checkout as failed with a message
        job = await pploy.checkout(name, "no-such-branch")
        record = await pploy.wait_job(job)
        assert record["status"] == "failed"
        assert "not a branch, tag or commit" in record["message"]
    finally:
        await pploy.close()


async def test_checkout_overwrite_is_used_instead_of_git(tmp_path):
    remote = make_remote(
        tmp_path,
        "custom",
        files={
            ".deploy/bin/checkout_overwrite": "#!/bin/sh\necho custom checkout of $DEPLOY_COMMIT\n"
        },
    )
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(remote)
        await pploy.gain(name)
        job = await pploy.checkout(name, "v1.2")
        assert (await pploy.wait_job(job))["status"] == "succeeded"
        log = await pploy.log(job)
        assert b"custom checkout of v1.2" in log and b"git fetch" not in log
    finally:
        await pploy.close()


async def test_lock_outlives_its_time_while_the_holders_job_runs_and_timeout(tmp_path):
    fifo = Fifo(tmp_path / "go")
    script = f"#!/bin/sh\necho started\n{fifo.script_open()}\n{fifo.wait_cmd}\necho finished\n"
    # 3 s: short, yet long enough for a loaded machine to start the deploy before it ends
    pploy = await start_pploy(tmp_path / "work", **{"lock.gain_minutes": 0.05})
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        job = await pploy.deploy(name)
        lock = pploy.services.locks.get(name)
        assert lock is not None and lock.seconds_left() > 60  # pushed out to cover the job
        await fifo.release()
        assert (await pploy.wait_job(job))["status"] == "succeeded"
    finally:
        fifo.close()
        await pploy.close()
    pploy = await start_pploy(tmp_path / "work2", **{"job.timeout_minutes": 0.01})  # 0.6 s
    try:
        name = await pploy.add_project(
            make_remote(tmp_path / "t", deploy_script="#!/bin/sh\nsleep 30\n")
        )
        await pploy.gain(name)
        started = time.monotonic()
        record = await pploy.wait_job(await pploy.deploy(name))
        assert record["status"] == "timed_out"
        assert time.monotonic() - started < 15
    finally:
        await pploy.close()


async def test_webhooks_on_lock_and_finished_job(tmp_path):
    received: asyncio.Queue = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put((request.path, await request.json()))
        return web.Response(status=500 if request.path == "/broken" else 200)

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    pploy = await start_pploy(
        tmp_path / "work",
        webhooks=[
            {
                "url": f"http://127.0.0.1:{port}/slack",
                "format": "slack",
                "templates": {"lock.gained": "{user} took {project} {unknown}"},
            },
            {"url": f"http://127.0.0.1:{port}/json", "events": ["job.finished"]},
            {"url": f"http://127.0.0.1:{port}/broken", "events": ["job.finished"], "retries": 0},
        ],
    )
    try:
        name = await pploy.add_project(make_remote(tmp_path))
        await pploy.gain(name)
        path, body = await asyncio.wait_for(received.get(), 10)
        assert path == "/slack" and body == {"text": f"alice took {name} {{unknown}}"}
        record = await pploy.wait_job(await pploy.deploy(name))
        assert record["status"] == "succeeded"  # the broken hook did not fail the deploy
        got = {}
        while len(got) < 3:
            path, body = await asyncio.wait_for(received.get(), 10)
            got[path] = body
        assert got["/json"]["event"] == "job.finished" and got["/json"]["status"] == "succeeded"
        assert got["/json"]["env"] == "staging" and got["/json"]["user"] == "alice"
        assert "succeeded" in got["/slack"]["text"]
    finally:
        await pploy.close()
        await runner.cleanup()


async def test_log_retention_keeps_history_and_removes_old_logs(tmp_path):
    pploy = await start_pploy(tmp_path / "work", **{"job.keep_logs": 2})
    try:
        name = await pploy.add_project(make_remote(tmp_path))
        await pploy.gain(name)
        jobs = [await pploy.wait_job(await pploy.deploy(name)) for _ in range(3)]
        async with pploy.client().get(pploy.url(f"/api/jobs/{jobs[0]['id']}/log?follow=1")) as resp:
            assert resp.status == 410
        assert (await pploy.log(jobs[2]["id"])).startswith(b"\x1b[1;36m$ DEPLOY_ENV")
        status, body = await pploy.api("GET", f"/api/projects/{name}/jobs")
        assert [j["id"] for j in body["jobs"]] == [j["id"] for j in reversed(jobs)]
        # removing the project deletes the clone, keeps the logs left and the records;
        # refused while bob holds the lock
        status, body = await pploy.api("DELETE", f"/api/projects/{name}", "bob")
        assert status == 403
        status, body = await pploy.api("DELETE", f"/api/projects/{name}", "alice")
        assert status == 200
        assert not (tmp_path / "work/projects" / name).exists()
        # (each log with its timestamps sidecar, see timeline.py; the oldest's went with it)
        assert sorted(p.name for p in (tmp_path / "work/logs" / name).iterdir()) == [
            f"{jobs[1]['id']}.log", f"{jobs[1]['id']}.times",
            f"{jobs[2]['id']}.log", f"{jobs[2]['id']}.times",
        ]  # fmt: skip
        status, body = await pploy.api("GET", f"/api/jobs/{jobs[0]['id']}")
        assert status == 200 and body["job"]["status"] == "succeeded"
    finally:
        await pploy.close()


async def test_authentication_and_csrf(tmp_path):
    pploy = await start_pploy(tmp_path / "work")
    try:
        anon = pploy.client(None)
        async with anon.get(pploy.url("/api/status")) as resp:
            assert resp.status == 401 and "error" in await resp.json()
        async with anon.get(
            pploy.url("/"), allow_redirects=False, headers={"Accept": "text/html"}
        ) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/login")
        async with pploy.client("mallory").get(pploy.url("/api/status")) as resp:
            assert resp.status == 401
        async with anon.ws_connect(pploy.url("/api/jobs/1/ws")):
            raise AssertionError("an anonymous WebSocket was accepted")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 401
    try:
        # picking a name sets the cookie; the next= target is kept same-site
        anon = pploy.client(None)
        async with anon.get(pploy.url("/login?next=//evil.com")) as resp:
            page = await resp.text()
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        assert 'name="next" value="/"' in page
        async with anon.post(
            pploy.url("/login"),
            data={"user": "bob", "next": "/\\evil.com", "csrf_token": token},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/"
        async with anon.get(pploy.url("/api/status")) as resp:
            assert (await resp.json())["user"] == "bob"
        # a form without the token, or with a wrong one, is refused
        async with anon.post(pploy.url("/projects"), data={"url": "/x"}) as resp:
            assert resp.status == 403
        async with anon.post(
            pploy.url("/projects"), data={"url": "/x", "csrf_token": "wrong"}
        ) as resp:
            assert resp.status == 403
        # a cross-site browser request is refused even with the cookie
        async with anon.post(
            pploy.url("/api/projects"),
            json={"url": "/x"},
            headers={"Origin": "https://evil.example"},
        ) as resp:
            assert resp.status == 403
        async with anon.post(
            pploy.url("/api/projects"), json={"url": "/x"}, headers={"Sec-Fetch-Site": "cross-site"}
        ) as resp:
            assert resp.status == 403
        async with anon.post(
            pploy.url("/api/projects"), data="url=/x", headers={"Content-Type": "text/plain"}
        ) as resp:
            assert resp.status == 400
        try:
            async with anon.ws_connect(pploy.url("/api/jobs/1/ws"), origin="https://evil.example"):
                raise AssertionError("cross-site WebSocket accepted")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 403
    finally:
        await pploy.close()


async def test_pages_render_and_escape(tmp_path):
    evil = "<script>alert(1)</script>"
    remote = make_remote(
        tmp_path,
        "webapp",
        f"#!/bin/sh\necho '{evil}'\n",
        files={
            ".deploy/config/readme.html": (
                f'<h3>Read me</h3>{evil}<a href="javascript:alert(1)">x</a>'
                "<img src=x onerror=alert(1)>"
            ),
            ".deploy/config/deploy_envs": "test\n\nstaging\nproduction\n",
        },
    )
    push_commit(remote, f"{evil} subject", {"a.txt": "1"})
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(remote)
        await pploy.gain(name)
        job = await pploy.wait_job(await pploy.deploy(name, "test"))
        client = pploy.client()
        for path in ("/", f"/projects/{name}", f"/jobs/{job['id']}"):
            async with client.get(pploy.url(path)) as resp:
                assert resp.status == 200, path
                html = await resp.text()
            assert (
                "<script>alert" not in html and "onerror" not in html and "javascript:" not in html
            )
        async with client.get(pploy.url(f"/projects/{name}")) as resp:
            html = await resp.text()
        assert "<h3>Read me</h3>" in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt; subject" in html
        assert html.count('type="submit" name="env"') == 3 and 'value="test"' in html
        async with client.get(pploy.url("/"), headers={"Accept-Language": "ja,en;q=0.5"}) as resp:
            assert "プロジェクト" in await resp.text()
        async with client.get(pploy.url("/jobs/99999")) as resp:
            assert resp.status == 404
    finally:
        await pploy.close()


async def test_proxy_mode_trusts_only_configured_proxies(tmp_path):
    pploy = await start_pploy(tmp_path / "work", **{"auth.mode": "proxy"})
    try:
        async with pploy.client(None).get(
            pploy.url("/api/status"), headers={"X-Forwarded-User": "carol"}
        ) as resp:
            assert (await resp.json())["user"] == "carol"
    finally:
        await pploy.close()
    pploy = await start_pploy(
        tmp_path / "work2", **{"auth.mode": "proxy", "auth.trusted_proxies": ["10.9.0.0/16"]}
    )
    try:
        async with pploy.client(None).get(
            pploy.url("/api/status"), headers={"X-Forwarded-User": "carol"}
        ) as resp:
            assert resp.status == 401
            assert "trusted" in (await resp.json())["error"]
    finally:
        await pploy.close()


@pytest.mark.slow  # waits out the signal escalation
async def test_signal_group_is_gone_after_cancel_even_if_leader_exits_first(tmp_path):
    # The leader exits on SIGINT at once but leaves a child that ignores INT and TERM.
    pids = tmp_path / "pids"
    script = (
        "#!/bin/sh\n"
        + tree_script(pids, tmp_path / "up", "exec sleep 300")
        + f"echo $$ >> {pids}\necho ready\nwait\n"
    )
    pploy = await start_pploy(tmp_path / "work")
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        job = await pploy.deploy(name)
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/log?follow=1")) as resp:
            await read_until(resp, b"ready")
            child, leader = pids_alive_at_cancel(pids, 2)
            await pploy.api("POST", f"/api/jobs/{job}/cancel", "alice")
            await asyncio.wait_for(resp.content.read(), 20)
        record = (await pploy.api("GET", f"/api/jobs/{job}"))[1]["job"]
        assert record["signal"] == signal.SIGINT  # the leader ended on the first signal...
        assert not alive(leader)
        assert not alive(child), "the child that ignored INT and TERM survived"  # ...KILL came
    finally:
        await pploy.close()


async def test_a_foreign_host_is_refused_dns_rebinding(tmp_path):
    pploy = await start_pploy(tmp_path / "work", allowed_hosts=["deploy.internal"])
    try:
        client = pploy.client("alice")
        async with client.get(
            pploy.url("/api/status"), headers={"Host": "evil.example:80"}
        ) as resp:
            assert resp.status == 400 and "allowed_hosts" in (await resp.json())["error"]
        for host in ("deploy.internal", "localhost:1234", "127.0.0.1"):
            async with client.get(pploy.url("/api/status"), headers={"Host": host}) as resp:
                assert resp.status == 200, host
    finally:
        await pploy.close()


async def test_gate_mode_takes_the_user_from_a_verified_assertion_only(tmp_path):
    from pploy.identity import AssertionSigner, Identity

    signer = AssertionSigner(audience="pploy")
    keys = tmp_path / "gate-jwks.json"
    keys.write_text(json.dumps(signer.jwks()))
    pploy = await start_pploy(
        tmp_path / "work", **{"auth.mode": "gate", "auth.gate_public_key_file": str(keys)}
    )
    try:
        anon = pploy.client(None)
        token = signer.sign(Identity("dana", "dana@example.com"))
        async with anon.get(pploy.url("/api/status"), headers={"X-Gate-Assertion": token}) as resp:
            assert resp.status == 200 and (await resp.json())["user"] == "dana"
        # no assertion, a plain identity header, a cookie name, or a forged token: refused
        for headers in (
            {},
            {"X-Forwarded-User": "dana"},
            {"Cookie": "user=alice"},
            {"X-Gate-Assertion": token[:-4] + "AAAA"},
            {"X-Gate-Assertion": AssertionSigner(audience="pploy").sign(Identity("eve", None))},
            {"X-Gate-Assertion": AssertionSigner(audience="other").sign(Identity("eve", None))},
        ):
            async with anon.get(pploy.url("/api/status"), headers=headers) as resp:
                assert resp.status == 401, headers
        # deploys are attributed to the assertion's user
        remote = make_remote(tmp_path)
        as_dana = {"X-Gate-Assertion": token}
        async with anon.post(
            pploy.url("/api/projects"), json={"url": str(remote)}, headers=as_dana
        ) as resp:
            name = (await resp.json())["project"]["name"]
        async with anon.post(
            pploy.url(f"/api/projects/{name}/lock"), json={"operation": "gain"}, headers=as_dana
        ) as resp:
            assert (await resp.json())["lock"]["user"] == "dana"
    finally:
        await pploy.close()


async def test_a_log_cut_at_its_limit_still_ends_with_the_closing_line(tmp_path):
    """The output fills `job.max_log_bytes` (cut in the middle of a line): the log holds no
    more than the limit, and still says it was cut and how the job ended, each on its own
    line; output after the limit is not kept."""
    script = "#!/bin/sh\nyes 0123456789 | tr -d '\\n' | head -c 100000\necho after-the-limit\n"
    pploy = await start_pploy(tmp_path / "work", **{"job.max_log_bytes": 4096})
    try:
        name = await pploy.add_project(make_remote(tmp_path, deploy_script=script))
        await pploy.gain(name)
        record = await pploy.wait_job(await pploy.deploy(name))
        assert record["status"] == "succeeded"
        log = await pploy.log(record["id"])
        assert len(log) <= 4096 and record["log_bytes"] == len(log)
        assert b"after-the-limit" not in log
        assert log.endswith(b"\x1b[1;36m[pploy] deploy succeeded, exit code 0\x1b[0m\n")
        *_, output, notice, closing = log.split(b"\n")[:-1]
        assert output and set(output) <= set(b"0123456789")  # the script's, cut mid-line
        assert notice.startswith(b"\x1b[1;33m[pploy] the log reached its maximum size (4096")
        assert closing == b"\x1b[1;36m[pploy] deploy succeeded, exit code 0\x1b[0m"
        assert log.endswith(b"\n")
    finally:
        await pploy.close()


async def test_pploys_lines_start_on_a_new_line_after_output_without_one(tmp_path):
    fifo = Fifo(tmp_path / "go")
    failing = "#!/bin/sh\nprintf 'no newline at the end'\nexit 3\n"
    waiting = f"#!/bin/sh\nprintf 'partial'\n{fifo.script_open()}\n{fifo.wait_cmd}\n"
    pploy = await start_pploy(tmp_path / "work")
    try:
        failer = await pploy.add_project(make_remote(tmp_path, "failer", deploy_script=failing))
        waiter = await pploy.add_project(make_remote(tmp_path, "waiter", deploy_script=waiting))
        for name in (failer, waiter):
            await pploy.gain(name)
        record = await pploy.wait_job(await pploy.deploy(failer))
        log = await pploy.log(record["id"])
        assert log.endswith(
            b"no newline at the end\n\x1b[1;36m[pploy] deploy failed, exit code 3\x1b[0m\n"
        )
        job = await pploy.deploy(waiter)
        async with pploy.client().get(pploy.url(f"/api/jobs/{job}/log?follow=1")) as resp:
            seen = await read_until(resp, b"partial")
            await pploy.api("POST", f"/api/jobs/{job}/cancel")
            seen.extend(await asyncio.wait_for(resp.content.read(), 20))
        assert b"partial\n\x1b[1;36m[pploy] cancelled by alice\x1b[0m\n" in seen
    finally:
        fifo.close()
        await pploy.close()
