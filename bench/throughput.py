"""Throughput: a deploy writes 50 MB as fast as it can; pploy's job wall time and the bytes/s a
following viewer receives, against ``script -qfc '<same command>' /dev/null > /dev/null`` (the
same pty work without pploy) in the same run. The log must hold the output byte for byte.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from pathlib import Path

import aiohttp

from bench.common import PployProcess, make_remote

NAME = "throughput"
COMMANDS = {
    "seq": "seq 1 100000000 | head -c {n}",
    "yes_head": "yes 'deploy output: step done, moving on to the next one' | head -c {n}",
    "many_short_lines": "yes | head -c {n}",
}
TARGET_RATIO = 0.8


def script_seconds(command: str) -> float:
    started = time.perf_counter()
    subprocess.run(["script", "-qfc", command, "/dev/null"], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


async def pploy_once(
    pploy: PployProcess, http: aiohttp.ClientSession, project: str
) -> dict[str, float]:
    started = time.perf_counter()
    job = await pploy.deploy(http, project)
    received = 0
    async with http.get(pploy.base + f"/api/jobs/{job}/log?follow=1") as resp:
        async for chunk in resp.content.iter_any():
            received += len(chunk)
    wall = time.perf_counter() - started
    record = await pploy.wait_job(http, job, 60)
    return {
        "job": job,
        "status": record["status"],
        "job_seconds": record["ended_at"] - record["started_at"],
        "viewer_seconds": wall,
        "viewer_bytes": received,
    }


async def one_command(root: Path, name: str, command: str, reps: int) -> dict:
    remote = make_remote(root, f"#!/bin/sh\n{command}\n", name=name)
    pploy = PployProcess(root / f"pploy-{name}")
    expected = subprocess.run(["sh", "-c", command], capture_output=True, check=True).stdout
    runs = []
    baselines = []
    try:
        await pploy.ready()
        async with aiohttp.ClientSession(
            cookies={"user": "alice"}, timeout=aiohttp.ClientTimeout()
        ) as http:
            project = await pploy.prepare(http, remote)
            for _ in range(reps):  # interleaved, so both see the same moments of load
                baselines.append(await asyncio.to_thread(script_seconds, command))
                run = await pploy_once(pploy, http, project)
                data = pploy.log_path(project, run["job"]).read_bytes()
                run["log_byte_exact"] = expected in data and len(data) - len(expected) < 4096
                runs.append(run)
    finally:
        pploy.stop()
    base = statistics.median(baselines)
    job = statistics.median(r["job_seconds"] for r in runs)
    viewer = statistics.median(r["viewer_seconds"] for r in runs)
    nbytes = len(expected)
    return {
        "command": command,
        "bytes": nbytes,
        "script_seconds": round(base, 3),
        "script_seconds_runs": [round(b, 3) for b in baselines],
        "job_seconds": round(job, 3),
        "viewer_seconds": round(viewer, 3),
        "script_mb_s": round(nbytes / base / 1e6, 1),
        "job_mb_s": round(nbytes / job / 1e6, 1),
        "viewer_mb_s": round(nbytes / viewer / 1e6, 1),
        "job_ratio": round(base / job, 3),
        "viewer_ratio": round(base / viewer, 3),
        "log_byte_exact": all(r["log_byte_exact"] for r in runs),
        "statuses": sorted({r["status"] for r in runs}),
        "runs": [{k: v for k, v in r.items() if k != "job"} for r in runs],
    }


async def run(ctx) -> dict:  # type: ignore[no-untyped-def]
    nbytes = 1_000_000 if ctx.quick else 50_000_000
    reps = 1 if ctx.quick else 3
    results = {}
    rows = []
    for name, template in COMMANDS.items():
        result = await one_command(ctx.tmp, name, template.format(n=nbytes), reps)
        results[name] = result
        for what, label in (("job", "job wall time"), ("viewer", "following viewer")):
            ratio = result[f"{what}_ratio"]
            rows.append(
                {
                    "case": f"{name} ({what})",
                    "metric": label,
                    "value": f"{result[f'{what}_seconds']} s, {result[f'{what}_mb_s']} MB/s",
                    "baseline": f"{result['script_seconds']} s, {result['script_mb_s']} MB/s",
                    "baseline_label": "script -qfc",
                    "ratio": ratio,
                    "extra": "log byte-exact" if result["log_byte_exact"] else "LOG DIFFERS",
                    "target": f"≥ {TARGET_RATIO}× script, byte-exact",
                    "met": ratio >= TARGET_RATIO and result["log_byte_exact"],
                }
            )
    return {
        "sizes": {"bytes": nbytes, "repetitions": reps},
        "commands": results,
        "rows": rows,
        "note": "Ratio = script's seconds / pploy's seconds (above 1: pploy faster). The "
        "viewer follows the raw chunked log straight from pploy while the job runs.",
    }
