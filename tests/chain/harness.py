"""Real parts for the end-to-end chain: nginx (TLS, the shipped config) → gate → pploy.

nginx runs unprivileged-style on loopback with its own prefix, pid, logs and temp paths in a
temp dir; gate and pploy run as the commands users run (`pploy gate`, `pploy serve`) with
config files. Everything listens on free loopback ports so `pytest -n 2` workers never meet.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import trustme

from pploy.chain.nginx import NginxOptions, render
from tests.helpers import free_port, tail, wait_port

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Chain Test",
    "GIT_AUTHOR_EMAIL": "chain@example.com",
    "GIT_COMMITTER_NAME": "Chain Test",
    "GIT_COMMITTER_EMAIL": "chain@example.com",
}

# The deploy script of the test project: line N, then it waits until the test has seen
# line N and writes to the fifo named after the environment. Without a fifo it runs through.
DEPLOY_SCRIPT = r"""#!/bin/sh
fifo="{fifo_dir}/$DEPLOY_ENV"
printf '\033[1;34m==> deploying %s to %s as %s\033[0m\n' \
  "$DEPLOY_PROJECT" "$DEPLOY_ENV" "$DEPLOY_USER"
i=1
while [ $i -le {lines} ]; do
  printf '\033[32mline %d\033[0m of the deploy\n' "$i"
  # A read that meets EOF without a line (it opened the fifo just before the test's write
  # end closed) is not a release: wait again.
  if [ -p "$fifo" ]; then until read _ < "$fifo"; do :; done; fi
  i=$((i + 1))
done
printf 'warning: on stderr\n' >&2
printf '\033[1;32mdeployed\033[0m\n'
"""

ENVS = ["chunked", "sse", "ws", "reconnect", "test", "staging", "production"]


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 10
) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)


def make_project(
    root: Path, fifo_dir: Path, lines: int = 3, script_text: str | None = None
) -> Path:
    """A bare repository whose deploy script is fifo-synchronised (see DEPLOY_SCRIPT), or
    runs ``script_text`` (``{fifo_dir}`` filled in)."""
    work = root / "chainploy-src"
    (work / ".deploy/bin").mkdir(parents=True)
    (work / ".deploy/config").mkdir(parents=True)
    script = work / ".deploy/bin/deploy"
    text = script_text or DEPLOY_SCRIPT.replace("{lines}", str(lines))
    script.write_text(text.replace("{fifo_dir}", str(fifo_dir)))
    script.chmod(0o755)
    (work / ".deploy/config/deploy_envs").write_text("\n".join(ENVS) + "\n")
    (work / "README").write_text("chain test project\n")
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "chain test project", cwd=work)
    bare = root / "chainploy.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    return bare


# -- TLS --------------------------------------------------------------------------------------


@dataclass
class Certs:
    cafile: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))


def make_certs(root: Path) -> Certs:
    root.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    certs = Certs(root / "ca.pem", root / "cert.pem", root / "key.pem")
    ca.cert_pem.write_to_path(str(certs.cafile))
    certs.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(certs.key))
    return certs


# -- nginx ------------------------------------------------------------------------------------

MAIN_CONF = """\
{user}
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp/client_body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    include {root}/site.conf;
}}
"""


def shipped_site(port: int, upstream: str, certs: Certs, **overrides: Any) -> str:
    """The shipped nginx site config, rendered by `pploy nginx-config`'s code for a test."""
    options = NginxOptions(
        server_names=["localhost"],
        listen=[f"127.0.0.1:{port}"],
        http_listen=[],
        upstream=upstream,
        cert=str(certs.cert),
        key=str(certs.key),
        **overrides,
    )
    return render(options)


def edit(text: str, old: str, new: str) -> str:
    """Replace exactly one occurrence (a test config edit that silently missed would hide a
    broken test)."""
    assert text.count(old) == 1, f"expected one {old!r} in the nginx config"
    return text.replace(old, new)


def location_block(text: str) -> str:
    match = re.search(r"^    location / \{\n.*?^    \}\n", text, re.S | re.M)
    assert match, "no `location /` block in the nginx config"
    return match.group(0)


class Nginx:
    """Debian's nginx on a loopback port with a temp prefix and the given site config."""

    def __init__(self, binary: str, root: Path, site: str, port: int) -> None:
        self.binary = binary
        self.root = root
        self.site = site
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        (self.root / "site.conf").write_text(self.site)
        # As root, nginx would switch its workers to `nobody`, who cannot read the temp dir.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.root / "nginx.conf"
        conf.write_text(MAIN_CONF.format(root=self.root, user=user))
        log = self.root / "error.log"
        check = subprocess.run(
            [self.binary, "-t", "-p", str(self.root), "-c", str(conf), "-e", str(log)],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}\n{self.site}"
        self.proc = subprocess.Popen(
            [
                self.binary,
                "-p",
                str(self.root),
                "-c",
                str(conf),
                "-e",
                str(log),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "stderr.log", "wb"),  # noqa: SIM115
        )
        wait_port(self.port, self.proc, log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGQUIT)


# -- gate + pploy -----------------------------------------------------------------------------


@dataclass
class Chain:
    """pploy (`pploy serve`, auth.mode gate) behind gate (`pploy gate`, dev login)."""

    root: Path
    gate_port: int = 0
    pploy_port: int = 0
    public_url: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    fifo_dir: Path = Path()
    remote: Path = Path()
    deploy_script: str | None = None  # see make_project
    assertion_key: Path | None = None  # gate's signing key (PEM); generated by gate if None

    @property
    def gate_url(self) -> str:
        return f"http://127.0.0.1:{self.gate_port}"

    @property
    def pploy_url(self) -> str:
        return f"http://127.0.0.1:{self.pploy_port}"

    def start(self) -> Chain:
        self.root.mkdir(parents=True, exist_ok=True)
        self.fifo_dir = self.root / "fifos"
        self.fifo_dir.mkdir()
        self.remote = make_project(self.root, self.fifo_dir, script_text=self.deploy_script)
        self.gate_port = free_port()
        pploy_conf = self.root / "pploy.yml"
        pploy_conf.write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "port": 0,
                    "workdir": str(self.root / "pploy-work"),
                    "public_url": self.public_url or None,
                    "auth": {
                        "mode": "gate",
                        "gate_jwks_url": f"{self.gate_url}/.well-known/gate/jwks.json",
                    },
                    "job": {"shutdown_grace_seconds": 2, "cancel_grace_seconds": [1, 1]},
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
        out = self.root / "pploy.out"
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pploy", "serve", "--config", str(pploy_conf)],
                stdout=open(out, "wb"),  # noqa: SIM115
                stderr=open(self.root / "pploy.err", "wb"),  # noqa: SIM115
                env=env,
            )
        )
        self.pploy_port = self._announced_port(out, self.procs[-1])
        gate_conf = self.root / "gate.yml"
        gate_conf.write_text(
            json.dumps(
                {
                    "address": f"127.0.0.1:{self.gate_port}",
                    "auth": {
                        "session": {"key": secrets.token_urlsafe(32), "secure": True},
                        "info": {"service": "dev"},
                        "assertion": (
                            {"key_file": str(self.assertion_key)} if self.assertion_key else {}
                        ),
                    },
                    "proxy": [{"path": "/", "dest": self.pploy_url, "assertion_audience": "pploy"}],
                    "htdocs": None,
                    "trusted_proxies": ["127.0.0.1/32"],
                }
            )
        )
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pploy", "gate", "--config", str(gate_conf)],
                stdout=open(self.root / "gate.out", "wb"),  # noqa: SIM115
                stderr=open(self.root / "gate.err", "wb"),  # noqa: SIM115
                env=env,
            )
        )
        wait_port(self.gate_port, self.procs[-1], self.root / "gate.err")
        return self

    def _announced_port(self, out: Path, proc: subprocess.Popen[bytes]) -> int:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            match = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", out.read_text())
            if match:
                port = int(match.group(1))
                wait_port(port, proc, self.root / "pploy.err")
                return port
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"pploy did not start:\n{tail(self.root / 'pploy.err')}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)

    def fifo(self, env: str) -> Path:
        path = self.fifo_dir / env
        if not path.exists():
            os.mkfifo(path)
        return path

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{tail(self.root / name)}" for name in ("pploy.err", "gate.err")
        )


async def release(fifo: Path, timeout: float = 15) -> None:
    """Let the deploy script go on past its `read _ < fifo` (it must be waiting there or
    about to: the test has just seen the line it printed before)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.005)  # the script has not opened the fifo yet
            continue
        try:
            os.write(fd, b"\n")
        finally:
            os.close(fd)
        return


# -- a client at the nginx end ----------------------------------------------------------------


class Client:
    """An HTTPS client at the nginx end with gate's session cookie."""

    def __init__(self, base: str, certs: Certs) -> None:
        self.base = base
        self.certs = certs
        self.cookie = ""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=certs.client_context(), limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=30),
        )

    async def close(self) -> None:
        await self.session.close()

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": self.cookie} if self.cookie else {}

    async def login(self, user: str) -> str:
        """Sign in with gate's dev login form; keep and return the session cookie."""
        async with self.session.post(
            self.base + "/login", data={"user": user, "next": "/"}, allow_redirects=False
        ) as resp:
            assert resp.status == 303, await resp.text()
            morsel = resp.cookies.get("_gate_session")
            assert morsel is not None, resp.headers
            assert morsel["secure"], "behind TLS gate's session cookie must be Secure"
            self.cookie = f"_gate_session={morsel.value}"
            return morsel.value

    async def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self.session.request(
            method, self.base + path, json=body, headers=self.headers, allow_redirects=False
        ) as resp:
            data = await resp.json(content_type=None)
            assert resp.status < 300, f"{method} {path}: {resp.status} {data}"
            return data

    def get(self, path: str, **kwargs: Any) -> Any:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.session.get(self.base + path, headers=headers, allow_redirects=False, **kwargs)

    async def ws(self, path: str) -> aiohttp.ClientWebSocketResponse:
        url = self.base.replace("https://", "wss://") + path
        return await self.session.ws_connect(
            url, headers={**self.headers, "Origin": self.base}, max_msg_size=1 << 22
        )

    async def wait_job(self, job_id: int, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = (await self.api("GET", f"/api/jobs/{job_id}"))["job"]
            if job["status"] != "running" or time.monotonic() > deadline:
                return job
            await asyncio.sleep(0.05)


class TextStream:
    """Accumulates a streamed body; waits for a marker with a deadline."""

    def __init__(self) -> None:
        self.data = b""
        self.changed = asyncio.Event()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        self.changed.set()

    async def wait_for(self, marker: bytes, timeout: float = 10) -> None:
        async def until() -> None:
            while marker not in self.data:
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{marker!r} did not arrive within {timeout} s; got {self.data[-300:]!r}"
            ) from None
