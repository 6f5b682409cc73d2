"""Shared pieces for benchmarks: server processes (pploy, gate, nginx, a plain upstream), git
remotes, statistics, and readings of a process's CPU time and memory."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench.nginx import Nginx, make_certs, shipped_site
from bench.procs import free_port, stop_process, wait_port

REPO = Path(__file__).resolve().parents[1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM) so far."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (its threads included)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def summary(values: Sequence[float], digits: int = 3) -> dict[str, float | int]:
    """count, median, p99 and max of ``values`` (nearest-rank p99)."""
    if not values:
        return {"count": 0, "median": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * 99 // 100) - 1))]
    return {
        "count": len(ordered),
        "median": round(statistics.median(ordered), digits),
        "p99": round(p99, digits),
        "max": round(ordered[-1], digits),
    }


def median_of(runs: Sequence[dict], key: str) -> float:
    """The median over repetitions of one figure of each repetition's summary."""
    return statistics.median(run[key] for run in runs)


def _version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else None


def event_loop_name() -> str:
    """The event loop pploy and gate run on here: uvloop when it is installed, else asyncio."""
    from pploy import eventloop

    return eventloop.name()


def machine() -> dict[str, object]:
    import aiohttp as _aiohttp

    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu_model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
    nginx = _version(["nginx", "-v"])
    wrk = _version(["wrk", "-v"])
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "aiohttp": _aiohttp.__version__,
        "nginx": nginx.rpartition("/")[2] if nginx else None,
        "wrk": wrk.split()[1] if wrk else None,
        "event_loop": event_loop_name(),
        "platform": platform.platform(),
        "loadavg_at_start": loadavg(),
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
    """``pploy serve`` in its own process, as users run it (standalone mode, user alice: the
    same server is followed directly and through gate, which passes the ``user`` cookie on)."""

    def __init__(self, workdir: Path, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pploy", "serve", "--workdir", str(workdir), "--port",
             str(self.port), "--users", "alice", *(extra or [])],
            stdout=subprocess.DEVNULL, stderr=open(workdir / "pploy.err", "wb"),  # noqa: SIM115
            env=child_env(),
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

    async def job(self, http: aiohttp.ClientSession, job_id: int) -> dict:
        async with http.get(self.base + f"/api/jobs/{job_id}") as resp:
            return (await resp.json())["job"]

    async def wait_job(self, http: aiohttp.ClientSession, job_id: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            record = await self.job(http, job_id)
            if record["status"] != "running":
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout} s")
            await asyncio.sleep(0.05)

    async def cancel(self, http: aiohttp.ClientSession, job_id: int) -> None:
        async with http.post(self.base + f"/api/jobs/{job_id}/cancel", json={}) as resp:
            await resp.read()

    def log_path(self, project: str, job_id: int) -> Path:
        return self.workdir / "logs" / project / f"{job_id}.log"

    def stop(self) -> None:
        stop_process(self.proc)


# --- other servers ----------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
    if "PPLOY_EVENT_LOOP" in os.environ:
        env["PPLOY_EVENT_LOOP"] = os.environ["PPLOY_EVENT_LOOP"]
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


class Upstream:
    """``python -m bench.upstream``: the plain upstream, or a bare aiohttp proxy to one."""

    def __init__(self, root: Path, proxy_to: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        extra = ["--proxy-to", proxy_to] if proxy_to else []
        name = "bare-proxy" if proxy_to else "upstream"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.upstream", str(self.port), *extra],
            stdout=subprocess.DEVNULL,
            stderr=open(root / f"{name}-{self.port}.err", "wb"),  # noqa: SIM115
            env=child_env(),
        )
        wait_port(self.port, self.proc, timeout=30)

    def stop(self) -> None:
        stop_process(self.proc)


class GateProcess:
    """``pploy gate`` (dev login) proxying everything to ``dest``; ``cookie`` is a signed-in
    session (plus pploy's standalone ``user`` cookie, which gate passes on)."""

    def __init__(self, root: Path, dest: str, workers: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        extra = {"workers": workers} if workers is not None else {}
        config = root / f"gate-{self.port}.yml"
        config.write_text(
            json.dumps(
                {
                    "address": f"127.0.0.1:{self.port}",
                    "auth": {
                        "session": {"key": "bench-session-key-0123456789abcdef"},
                        "info": {"service": "dev"},
                    },
                    "htdocs": None,
                    "proxy": [{"path": "/", "dest": dest, "assertion_audience": "pploy"}],
                    "trusted_proxies": ["127.0.0.1/32"],
                    **extra,
                }
            )
        )
        # Default settings, access log included (to a file, as in production).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pploy", "gate", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(root / f"gate-{self.port}.log", "wb"),  # noqa: SIM115
            env=child_env(),
        )
        wait_port(self.port, self.proc, timeout=30)
        self.cookie = ""

    async def login(self) -> str:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            async with session.post(
                self.url + "/login", data={"user": "alice"}, allow_redirects=False
            ) as resp:
                assert resp.status == 303, resp.status
                morsel = resp.cookies["_gate_session"]
                self.cookie = f"_gate_session={morsel.value}; user=alice"
                return self.cookie

    def server_pids(self) -> list[int]:
        """The processes serving requests: the workers, or gate itself with one worker."""
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        return [int(c) for c in children] or [pid]

    def stop(self) -> None:
        stop_process(self.proc)


NGINX_PLAIN_SITE = """\
upstream bench_upstream {{
    server {upstream};
    keepalive 64;
}}
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://bench_upstream;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
}}
"""


class NginxProcess:
    """Debian's nginx on loopback (bench/nginx.py, which the chain tests use too): ``tls_to``
    puts the shipped TLS site config in front of that address; ``plain_to`` a plain HTTP
    keep-alive proxy."""

    def __init__(self, root: Path, *, tls_to: str | None = None, plain_to: str | None = None):
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        if tls_to:
            self.certs = make_certs(root / "certs")
            site = shipped_site(self.port, tls_to, self.certs)
            self.url = f"https://127.0.0.1:{self.port}"
        else:
            self.certs = None
            site = NGINX_PLAIN_SITE.format(upstream=plain_to, port=self.port)
            self.url = f"http://127.0.0.1:{self.port}"
        self.server = Nginx("nginx", root / f"nginx-{self.port}", site, self.port).start()
        assert self.server.proc is not None
        self.proc = self.server.proc

    def ssl_context(self):  # type: ignore[no-untyped-def]
        return self.certs.client_context() if self.certs else None

    def stop(self) -> None:
        self.server.stop()


def wrk(url: str, connections: int, seconds: float, cookie: str | None = None) -> dict:
    """Requests/s and latency percentiles from one wrk run."""
    threads = max(1, min(2, connections))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if cookie:
        cmd += ["-H", f"Cookie: {cookie}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps or "Non-2xx" in out:
        raise RuntimeError(f"wrk failed or saw errors:\n{out}")

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return round(float(match.group(1)) * scale, 3)

    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "socket_errors": errors.group(1) if errors else None,
    }
