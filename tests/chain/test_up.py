"""`pploy up`: one command brings gate + pploy + the demo project up; Ctrl-C stops it all;
a second run reuses the workdir; a taken port is a clear message; --tls serves HTTPS with a
self-signed certificate it made."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import free_port

pytestmark = pytest.mark.slow  # the whole stack as processes

URL_LINE = re.compile(r"pploy is up: open (\S+)")


class Up:
    """`pploy up` as a user runs it, its output collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pploy", "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**base, **(env or {})},
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _collect(stream, into: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            into.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def url(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = URL_LINE.search(self.stdout)
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no URL printed:\n{self.stdout}\n{self.stderr[-3000:]}")

    def interrupt(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        for thread in self._threads:
            thread.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is under ``directory`` (a deploy left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(directory)):
            found.append(int(entry.name))
    return found


async def login(session: aiohttp.ClientSession, url: str, user: str) -> str:
    async with session.post(url + "login", data={"user": user}, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
        return f"_gate_session={resp.cookies['_gate_session'].value}"


async def test_up_runs_the_stack_stops_cleanly_and_reuses_its_workdir(tmp_path: Path) -> None:
    workdir = tmp_path / "stack"
    port = free_port()
    up = Up("--workdir", str(workdir), "--port", str(port))
    try:
        url = up.url()
        assert url == f"http://127.0.0.1:{port}/"
        assert "dev login" in up.stdout and str(workdir) in up.stdout
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            # Nothing without signing in: gate is in front of everything.
            async with session.get(url + "api/status") as resp:
                assert resp.status == 401
            cookie = await login(session, url, "dora")
            headers = {"Cookie": cookie}
            async with session.get(url + "api/status", headers=headers) as resp:
                status = await resp.json()
            assert status["user"] == "dora" and status["auth_mode"] == "gate"
            assert [p["name"] for p in status["projects"]] == ["demo"]
            async with session.get(url + "api/projects/demo", headers=headers) as resp:
                project = (await resp.json())["project"]
            assert project["envs"] == ["test", "staging", "production"]

            # A deploy of the demo, watched live, still running when Ctrl-C comes.
            async with session.post(
                url + "api/projects/demo/lock", json={"operation": "gain"}, headers=headers
            ) as resp:
                assert resp.status == 200, await resp.text()
            async with session.post(
                url + "api/projects/demo/deploy", json={"env": "staging"}, headers=headers
            ) as resp:
                assert resp.status == 202, await resp.text()
                job_id = (await resp.json())["job"]["id"]
            async with session.get(
                url + f"api/jobs/{job_id}/log?follow=1", headers=headers
            ) as resp:
                seen = b""
                async for chunk in resp.content.iter_any():
                    seen += chunk
                    if b"--> build" in seen:
                        break
            assert b"\x1b[1;34m==> Deploying demo to staging as dora" in seen

        started = time.monotonic()
        assert up.interrupt() == 0, up.stderr[-3000:]
        assert time.monotonic() - started < 15
        assert "pploy up: stopped" in up.stdout
        assert not processes_in(workdir), "the deploy outlived `pploy up`"
    finally:
        up.kill()

    # Second run, same workdir: same demo project, the job history, and the same session key
    # (dora's cookie from the first run still works).
    again = Up("--workdir", str(workdir), "--port", str(port))
    try:
        url = again.url()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            async with session.get(url + "api/status", headers={"Cookie": cookie}) as resp:
                assert resp.status == 200
                status = await resp.json()
        assert [p["name"] for p in status["projects"]] == ["demo"]
        job = next(j for j in status["jobs"] if j["id"] == job_id)
        assert job["status"] in ("cancelled", "interrupted"), job
        assert again.interrupt() == 0
    finally:
        again.kill()


def test_up_says_clearly_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "pploy", "up", "--workdir", str(tmp_path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


async def test_up_tls_generates_a_certificate_once_under_the_data_dir(tmp_path: Path) -> None:
    data_home = tmp_path / "data"
    port = free_port()
    env = {"XDG_DATA_HOME": str(data_home)}
    cert = data_home / "pploy" / "tls" / "cert.pem"
    for run, word in ((1, "generated"), (2, "reused")):
        up = Up("--tls", "--port", str(port), env=env)
        try:
            url = up.url()
            assert url == f"https://127.0.0.1:{port}/"
            assert f"self-signed certificate {word} at {cert}" in up.stdout, up.stdout
            assert oct((data_home / "pploy" / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
            context = ssl.create_default_context(cafile=str(cert))
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context), cookie_jar=aiohttp.DummyCookieJar()
            ) as session:
                async with session.post(
                    url + "login", data={"user": "erin"}, allow_redirects=False
                ) as resp:
                    assert resp.status == 303
                    morsel = resp.cookies["_gate_session"]
                    assert morsel["secure"]
                async with session.get(
                    url + "api/status", headers={"Cookie": f"_gate_session={morsel.value}"}
                ) as resp:
                    assert (await resp.json())["user"] == "erin"
            assert up.interrupt() == 0
        finally:
            up.kill()


async def test_a_dns_rebinding_page_cannot_drive_pploy_up(tmp_path: Path) -> None:
    """A page at http://evil.test:PORT whose name the attacker re-points to 127.0.0.1: the
    browser sends evil.test as Host, a matching Origin and Sec-Fetch-Site: same-origin. It
    must not sign in, add a repository, take a lock or deploy (issue 10)."""
    port = free_port()
    up = Up("--workdir", str(tmp_path / "stack"), "--port", str(port))
    try:
        url = up.url()
        evil = f"evil.test:{port}"
        hostile = {"Host": evil, "Origin": f"http://{evil}", "Sec-Fetch-Site": "same-origin"}
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            async with session.post(
                url + "login", data={"user": "mallory"}, headers=hostile, allow_redirects=False
            ) as resp:
                assert resp.status == 421, await resp.text()
                assert "_gate_session" not in resp.cookies
            # Even a session cookie (the browser would not send it to evil.test) is no help.
            cookie = await login(session, url, "dora")
            attempts = [
                ("GET", "", None),
                ("POST", "projects", {"url": "https://example.invalid/evil.git"}),
                ("POST", "api/projects", {"url": "https://example.invalid/evil.git"}),
                ("POST", "api/projects/demo/lock", {"operation": "gain"}),
                ("POST", "api/projects/demo/deploy", {"env": "staging"}),
            ]
            for method, path, body in attempts:
                async with session.request(
                    method, url + path, json=body, headers={**hostile, "Cookie": cookie}
                ) as resp:
                    assert resp.status == 421, (path, resp.status)
            async with session.get(url + "api/status", headers={"Cookie": cookie}) as resp:
                status = await resp.json()
        assert [p["name"] for p in status["projects"]] == ["demo"]
        assert status["jobs"] == []
        assert all(not p.get("lock") for p in status["projects"]), status["projects"]
        assert up.interrupt() == 0
    finally:
        up.kill()


async def test_up_with_a_prefix_serves_pploy_under_it(tmp_path: Path) -> None:
    """`pploy up --prefix /deploy`: gate strips the prefix and sends X-Forwarded-Prefix, and
    pploy's pages link, post and stream under it."""
    port = free_port()
    up = Up("--workdir", str(tmp_path / "stack"), "--port", str(port), "--prefix", "/deploy/")
    try:
        url = up.url()
        assert url == f"http://127.0.0.1:{port}/deploy/"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            cookie = await login(session, f"http://127.0.0.1:{port}/", "dora")
            headers = {"Cookie": cookie}
            async with session.get(url + "api/status", headers=headers) as resp:
                assert [p["name"] for p in (await resp.json())["projects"]] == ["demo"]
            async with session.get(url + "projects/demo", headers=headers) as resp:
                html = await resp.text()
            # gate's own sign-out page is gate's, at the host's root: the one link outside
            sign_out = re.findall(r'<a href="([^"]*)" id="sign-out"', html)
            assert sign_out == ["/logout"], sign_out
            async with session.get(f"http://127.0.0.1:{port}/logout", headers=headers) as resp:
                assert resp.status == 200 and "Sign out of gate?" in await resp.text()
            html = html.replace('<a href="/logout" id="sign-out"', "")
            found = re.findall(r'(?:href|action|src|data-[a-z-]+-url)="(/[^"]*)"', html)
            assert found and all(link.startswith("/deploy/") for link in found), found
        assert up.interrupt() == 0
    finally:
        up.kill()
