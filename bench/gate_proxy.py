"""Benchmark gate's proxy: small-GET throughput and per-chunk streaming latency, gate vs direct.

Runs a tiny aiohttp upstream and gate (dev login, one session cookie) in their own processes on
loopback, then measures:

- requests/s for small GETs with wrk (if installed) or a multi-process aiohttp load generator;
- per-chunk latency of a drip stream: the upstream stamps each chunk with its send time, the
  client subtracts it from the receive time (same machine clock), through gate and direct.

Prints one JSON document. Usage: python bench/gate_proxy.py [--duration 5] [--connections 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- upstream (own process) -----------------------------------------------------------------


def run_upstream(port: int) -> None:
    import logging

    # wrk hangs up mid-request when its time is up; that is not worth a traceback.
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)

    async def small(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def drip(request: web.Request) -> web.StreamResponse:
        count = int(request.query.get("n", "200"))
        interval = float(request.query.get("ms", "10")) / 1000
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        for _ in range(count):
            await asyncio.sleep(interval)
            await response.write(f"{time.time_ns()}\n".encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/drip", drip)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def wait_http(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.1)


# --- load generation ------------------------------------------------------------------------


def wrk_rps(url: str, cookie: str | None, connections: int, duration: int) -> float:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    if cookie:
        cmd += ["-H", f"Cookie: {cookie}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match or "Non-2xx" in out:
        raise RuntimeError(f"wrk failed or saw errors:\n{out}")
    return float(match.group(1))


def _load_worker(url: str, cookie: str | None, connections: int, duration: float, queue) -> None:
    async def main() -> int:
        done = 0
        deadline = time.monotonic() + duration
        headers = {"Cookie": cookie} if cookie else {}
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def one() -> None:
                nonlocal done
                while time.monotonic() < deadline:
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status == 200:
                            done += 1

            await asyncio.gather(*(one() for _ in range(connections)))
        return done

    queue.put(asyncio.run(main()))


def python_rps(url: str, cookie: str | None, connections: int, duration: int) -> float:
    procs = 2
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(
            target=_load_worker, args=(url, cookie, connections // procs, duration, queue)
        )
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    total = sum(queue.get() for _ in workers)
    for w in workers:
        w.join()
    return total / duration


# --- drip latency ---------------------------------------------------------------------------


async def drip_latencies(url: str, cookie: str | None) -> list[float]:
    latencies: list[float] = []
    headers = {"Cookie": cookie} if cookie else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(url) as resp:
            assert resp.status == 200, resp.status
            buffer = b""
            async for chunk in resp.content.iter_any():
                received = time.time_ns()
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                latencies += [(received - int(line)) / 1e6 for line in lines if line]
    return latencies


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"median": round(statistics.median(ordered), 3), "p99": round(p99, 3)}


# --- orchestration --------------------------------------------------------------------------


async def login_cookie(gate_url: str) -> str:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(
            gate_url + "/login", data={"user": "bench"}, allow_redirects=False
        ) as resp:
            assert resp.status == 303, resp.status
            morsel = resp.cookies["_gate_session"]
            return f"_gate_session={morsel.value}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per throughput run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--chunks", type=int, default=200, help="chunks in the drip stream")
    parser.add_argument("--interval-ms", type=float, default=10)
    parser.add_argument("--python-load", action="store_true", help="use Python even if wrk exists")
    args = parser.parse_args()

    up_port, gate_port = free_port(), free_port()
    upstream = multiprocessing.Process(target=run_upstream, args=(up_port,), daemon=True)
    upstream.start()
    tmp = tempfile.TemporaryDirectory()
    config = Path(tmp.name) / "gate.yml"
    config.write_text(
        json.dumps(
            {
                "address": f"127.0.0.1:{gate_port}",
                "auth": {
                    "session": {"key": "bench-key-0123456789abcdef"},
                    "info": {"service": "dev"},
                },
                "htdocs": None,
                "proxy": [{"path": "/", "dest": f"http://127.0.0.1:{up_port}"}],
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    # Default settings, access log included (written to /dev/null, as a busy disk would not be).
    gate = subprocess.Popen(
        [sys.executable, "-m", "pploy", "gate", "--config", str(config)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        direct = f"http://127.0.0.1:{up_port}"
        via = f"http://127.0.0.1:{gate_port}"
        asyncio.run(wait_http(direct + "/small"))
        asyncio.run(wait_http(via + "/ping"))
        cookie = asyncio.run(login_cookie(via))

        use_wrk = shutil.which("wrk") and not args.python_load
        measure = wrk_rps if use_wrk else python_rps
        # Warm up both paths, then measure.
        measure(direct + "/small", None, args.connections, 1)
        direct_rps = measure(direct + "/small", None, args.connections, args.duration)
        measure(via + "/small", cookie, args.connections, 1)
        gate_rps = measure(via + "/small", cookie, args.connections, args.duration)

        query = f"/drip?n={args.chunks}&ms={args.interval_ms}"
        direct_lat = asyncio.run(drip_latencies(direct + query, None))
        gate_lat = asyncio.run(drip_latencies(via + query, cookie))
        direct_s, gate_s = summary(direct_lat), summary(gate_lat)
        result = {
            "small_get": {
                "tool": "wrk" if use_wrk else "python-aiohttp (2 processes)",
                "connections": args.connections,
                "duration_s": args.duration,
                "direct_rps": round(direct_rps, 1),
                "gate_rps": round(gate_rps, 1),
                "gate_vs_direct": round(gate_rps / direct_rps, 3),
            },
            "drip": {
                "chunks": len(gate_lat),
                "interval_ms": args.interval_ms,
                "direct_ms": direct_s,
                "gate_ms": gate_s,
                "added_ms": {
                    "median": round(gate_s["median"] - direct_s["median"], 3),
                    "p99": round(gate_s["p99"] - direct_s["p99"], 3),
                },
            },
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        }
        print(json.dumps(result, indent=2))
    finally:
        gate.terminate()
        gate.wait(10)
        upstream.terminate()
        upstream.join(5)
        tmp.cleanup()


if __name__ == "__main__":
    main()
