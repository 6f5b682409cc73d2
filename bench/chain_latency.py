"""Per-line latency of a deploy log at the client end, for each transport (chunked, SSE,
WebSocket), through nginx (TLS, the shipped config) + gate + pploy, through gate + pploy, and
straight to pploy.

The deploy script stamps every line with the time it writes it (same machine clock as the
client) and prints one every ``--interval`` seconds; the script first waits on a fifo until the
viewer is connected, so every line is measured live, never from the backlog. Each route and
transport gets its own deploy, one at a time. The client is aiohttp (the browser's stand-in).

Prints one JSON document (progress on stderr). Usage:

    python bench/chain_latency.py [--lines 200] [--interval 0.02] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine  # noqa: E402
from tests.chain.harness import (  # noqa: E402
    Chain,
    Client,
    Nginx,
    free_port,
    make_certs,
    release,
    shipped_site,
)

SCRIPT = """#!/usr/bin/env python3
import os, sys, time
fifo = "{fifo_dir}/" + os.environ["DEPLOY_ENV"]
if os.path.exists(fifo):
    with open(fifo) as f:
        f.read()  # the viewer is connected
for i in range(1, LINES + 1):
    sys.stdout.write("line %d %.6f\\n" % (i, time.time()))
    sys.stdout.flush()
    time.sleep(INTERVAL)
"""
TRANSPORTS = ("chunked", "sse", "websocket")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LineClock:
    """Turns streamed text into per-line latencies (arrival time minus the line's stamp)."""

    def __init__(self) -> None:
        self.pending = ""
        self.latencies: list[float] = []

    def feed(self, text: str) -> None:
        now = time.time()
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            parts = line.strip().split(" ")
            if len(parts) == 3 and parts[0].endswith("line"):
                self.latencies.append(now - float(parts[2]))


async def watch(
    session: aiohttp.ClientSession,
    base: str,
    headers: dict[str, str],
    transport: str,
    job_id: int,
    ready: asyncio.Event,
) -> list[float]:
    clock = LineClock()
    if transport == "websocket":
        url = base.replace("http", "ws", 1) + f"/api/jobs/{job_id}/ws"
        origin = base
        async with session.ws_connect(url, headers={**headers, "Origin": origin}) as ws:
            ready.set()
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    clock.feed(msg.data.decode(errors="replace"))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    break
        return clock.latencies
    path = (
        f"/api/jobs/{job_id}/log?follow=1"
        if transport == "chunked"
        else (f"/api/jobs/{job_id}/events")
    )
    async with session.get(base + path, headers=headers) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        ready.set()
        pending = ""
        async for chunk in resp.content.iter_any():
            if transport == "chunked":
                clock.feed(chunk.decode(errors="replace"))
                continue
            pending += chunk.decode(errors="replace")
            *events, pending = pending.split("\n\n")
            for event in events:
                kind = data = None
                for line in event.split("\n"):
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data = line[5:].strip()
                if kind == "log" and data:
                    clock.feed(json.loads(data))
                elif kind == "status":
                    return clock.latencies
    return clock.latencies


def summary(latencies: list[float]) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in latencies)
    if not ms:
        return {"lines": 0}
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return {
        "lines": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(ms[-1], 3),
    }


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from pploy.identity import AssertionSigner, Identity, load_private_key

    key_file = root / "assertion.pem"
    key_file.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    script = SCRIPT.replace("LINES", str(args.lines)).replace("INTERVAL", repr(args.interval))
    nginx_binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    nginx_port = free_port()
    chain = Chain(
        root / "chain",
        public_url=f"https://127.0.0.1:{nginx_port}",
        deploy_script=script,
        assertion_key=key_file,
    )
    chain.start()
    nginx = None
    certs = make_certs(root / "certs")
    try:
        if nginx_binary:
            site = shipped_site(nginx_port, f"127.0.0.1:{chain.gate_port}", certs)
            nginx = Nginx(nginx_binary, root / "nginx", site, nginx_port).start()
        else:
            log("nginx not found: measuring gate + pploy and pploy only")
        # Sign in through gate (for the gate and nginx routes); sign our own assertion with
        # gate's key for the direct route (pploy believes nothing else in gate mode).
        admin = Client(chain.gate_url, certs)
        await admin.login("bench")
        await admin.api("POST", "/api/projects", {"url": str(chain.remote)})
        await admin.api("POST", "/api/projects/chainploy/lock", {"operation": "gain"})
        signer = AssertionSigner(audience="pploy", key=load_private_key(key_file), lifetime=600)

        routes: dict[str, tuple[str, dict[str, str], Any]] = {
            "direct (pploy)": (chain.pploy_url, {}, None),
            "gate + pploy": (chain.gate_url, {"Cookie": admin.cookie}, None),
        }
        if nginx is not None:
            routes["nginx (TLS) + gate + pploy"] = (
                nginx.url,
                {"Cookie": admin.cookie},
                certs.client_context(),
            )
        results: dict[str, dict[str, Any]] = {}
        fifo = chain.fifo("test")
        for route, (base, headers, ssl_context) in routes.items():
            results[route] = {}
            for transport in TRANSPORTS:
                if route.startswith("direct"):
                    headers = {"X-Gate-Assertion": signer.sign(Identity(user="bench", email=None))}
                job = (await admin.api("POST", "/api/projects/chainploy/deploy", {"env": "test"}))[
                    "job"
                ]
                ready = asyncio.Event()
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=ssl_context if ssl_context else False),
                    cookie_jar=aiohttp.DummyCookieJar(),
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
                ) as session:
                    viewer = asyncio.create_task(
                        watch(session, base, headers, transport, job["id"], ready)
                    )
                    await asyncio.wait_for(ready.wait(), 15)
                    await release(fifo)
                    latencies = await asyncio.wait_for(viewer, args.lines * args.interval + 60)
                await admin.wait_job(job["id"], timeout=60)
                results[route][transport] = summary(latencies)
                log(f"{route:28} {transport:9} {results[route][transport]}")
        await admin.close()
    finally:
        if nginx is not None:
            nginx.stop()
        chain.stop()
    return {
        "benchmark": "per-line deploy log latency at the client end",
        "lines_per_run": args.lines,
        "interval_s": args.interval,
        "client": "aiohttp (one viewer per run), same machine",
        "machine": machine(),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200, help="lines per deploy (default 200)")
    parser.add_argument(
        "--interval", type=float, default=0.02, help="seconds between lines (default 0.02)"
    )
    parser.add_argument("--out", metavar="FILE", help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pploy-chain-bench-") as tmp:
        report = asyncio.run(run(args, Path(tmp)))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
