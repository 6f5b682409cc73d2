"""Shared pieces for benchmarks: a pploy server process, git remotes, RSS readings."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def machine() -> dict[str, object]:
    import aiohttp as _aiohttp

    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "aiohttp": _aiohttp.__version__,
        "platform": platform.platform(),
    }


def make_remote(root: Path, script: str, name: str = "bench") -> Path:
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@example.com",
               GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@example.com")  # fmt: skip
    work = root / f"{name}-src"
    (work / ".deploy/bin").mkdir(parents=True)
    deploy = work / ".deploy/bin/deploy"
    deploy.write_text(script)
    deploy.chmod(0o755)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=work, env=env, check=True)
    bare = root / f"{name}.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True, env=env)
    return bare


class PployProcess:
    """``pploy serve`` in its own process, as users run it."""

    def __init__(self, workdir: Path, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pploy", "serve", "--workdir", str(workdir), "--port",
             str(self.port), "--users", "alice", *(extra or [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    async def ready(self) -> None:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(self.base + "/ping") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        raise RuntimeError("pploy did not start")

    async def prepare(self, http: aiohttp.ClientSession, remote: Path) -> str:
        async with http.post(self.base + "/api/projects", json={"url": str(remote)}) as resp:
            name = (await resp.json())["project"]["name"]
        async with http.post(
            self.base + f"/api/projects/{name}/lock", json={"operation": "gain"}
        ) as resp:
            assert resp.status == 200
        return name

    async def deploy(self, http: aiohttp.ClientSession, name: str) -> int:
        async with http.post(
            self.base + f"/api/projects/{name}/deploy", json={"env": "staging"}
        ) as resp:
            body = await resp.json()
            assert resp.status == 202, body
            return body["job"]["id"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
