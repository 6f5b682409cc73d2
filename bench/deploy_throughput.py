"""pploy's own overhead on a deploy's output: throughput against `script`, and server memory
with many SSE viewers on one live job.

    python -m bench.deploy_throughput [--mb 50] [--viewers 200] [--quick]

Prints JSON. Throughput is compared, in the same run, with
``script -qfc '<same command>' /dev/null > /dev/null`` (the same pty work without pploy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import PployProcess, machine, make_remote, rss_kib

COMMANDS = {
    "yes_short_lines": "yes 'deploy output line' | head -c {n}",
    "seq": "seq 1 100000000 | head -c {n}",
    "long_lines": "head -c {n} /dev/zero | tr '\\0' x | fold -w 4000",
}


def baseline_seconds(command: str) -> float:
    started = time.perf_counter()
    subprocess.run(["script", "-qfc", command, "/dev/null"], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


async def throughput(root: Path, name: str, command: str, nbytes: int) -> dict[str, object]:
    remote = make_remote(root, f"#!/bin/sh\n{command}\n", name=name)
    server = PployProcess(root / f"work-{name}")
    await server.ready()
    try:
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
            project = await server.prepare(http, remote)
            started = time.perf_counter()
            job = await server.deploy(http, project)
            received = 0
            first_byte = None
            async with http.get(server.base + f"/api/jobs/{job}/log?follow=1") as resp:
                async for chunk in resp.content.iter_any():
                    if first_byte is None:
                        first_byte = time.perf_counter()
                    received += len(chunk)
            wall = time.perf_counter() - started
            async with http.get(server.base + f"/api/jobs/{job}") as resp:
                record = (await resp.json())["job"]
            job_seconds = record["ended_at"] - record["started_at"]
            log_path = root / f"work-{name}/logs/{project}/{job}.log"
            data = log_path.read_bytes()
            expected = subprocess.run(["sh", "-c", command], capture_output=True).stdout
            exact = expected in data
            nbytes = len(expected)
    finally:
        server.stop()
    base = statistics.median(baseline_seconds(command) for _ in range(3))
    return {
        "command": command,
        "bytes": nbytes,
        "baseline_script_seconds": round(base, 3),
        "pploy_job_seconds": round(job_seconds, 3),
        "viewer_wall_seconds": round(wall, 3),
        "viewer_bytes_per_second": round(received / wall),
        "baseline_bytes_per_second": round(nbytes / base),
        "ratio_vs_script": round(base / wall, 3),
        "log_byte_exact": exact,
        "status": record["status"],
    }


async def viewers_memory(root: Path, viewers: int, seconds: float) -> dict[str, object]:
    lines = int(seconds * 100)
    script = (
        "#!/bin/sh\ni=0\n"
        f"while [ $i -lt {lines} ]; do\n"
        '  echo "line $i $(date +%s%N)"; i=$((i+1)); sleep 0.01\n'
        "done\n"
    )
    remote = make_remote(root, script, name="viewers")
    server = PployProcess(root / "work-viewers")
    await server.ready()
    try:
        idle = rss_kib(server.proc.pid)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(cookies={"user": "alice"}, connector=connector) as http:
            project = await server.prepare(http, remote)
            job = await server.deploy(http, project)
            peak = idle
            complete = 0

            async def viewer() -> int:
                got = 0
                async with http.get(server.base + f"/api/jobs/{job}/events") as resp:
                    async for line in resp.content:
                        if line.startswith(b"data: ") and b"line" in line:
                            got += line.count(b"\\n")
                        if line.startswith(b"event: status"):
                            break
                return got

            tasks = [asyncio.create_task(viewer()) for _ in range(viewers)]
            while not all(t.done() for t in tasks):
                peak = max(peak, rss_kib(server.proc.pid))
                await asyncio.sleep(0.1)
            counts = [t.result() for t in tasks]
            complete = sum(1 for c in counts if c >= lines)
        after = rss_kib(server.proc.pid)
    finally:
        server.stop()
    return {
        "viewers": viewers,
        "lines": lines,
        "viewers_with_every_line": complete,
        "rss_idle_mib": round(idle / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.viewers, args.seconds = 1, 10, 1
    nbytes = int(args.mb * 1_000_000)
    results: dict[str, object] = {"machine": machine(), "throughput": [], "viewers": None}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, template in COMMANDS.items():
            results["throughput"].append(  # type: ignore[union-attr]
                await throughput(root, name, template.format(n=nbytes), nbytes)
            )
        results["viewers"] = await viewers_memory(root, args.viewers, args.seconds)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
