"""One pploy instance against two on one PostgreSQL server: requests/s and live viewers.

    python -m bench.scaling [--quick] [--json PATH]

For 1 and then 2 instances (each ``pploy serve`` its own process and workdir, on a fresh
database of one throwaway PostgreSQL server, bench.postgres): the project is added on the first
and fetched until every instance serves it; then

- requests/s: wrk on ``GET /api/projects/<name>`` (a store read, the clone's files, JSON) at
  every instance at once, the connections split evenly; the sum;
- viewers: a deploy started on the first instance prints a timed line every INTERVAL; SSE
  viewers (bench.loadgen processes) split evenly across the instances, so with two, half
  follow it through the database (log chunks + LISTEN/NOTIFY); lines received and latency.

Prints one JSON object. Everything (PostgreSQL, pploy, wrk, the viewers) shares this machine's
cores, so two instances cannot show two machines' capacity: see docs/scaling.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from bench.common import PployProcess, loadavg, machine, make_remote, wrk
from bench.fanout import read_json_line, start_loadgen, weighted_percentiles
from bench.postgres import PostgresServer, available
from bench.scripts import timed_lines

FULL = {"connections": 32, "wrk_seconds": 5, "viewers": 200, "lines": 200, "interval": 0.02}
QUICK = {"connections": 8, "wrk_seconds": 2, "viewers": 20, "lines": 40, "interval": 0.02}
COOKIE = "user=alice"


async def served(http: aiohttp.ClientSession, pploy: PployProcess, name: str) -> None:
    """Wait until ``pploy`` has cloned the project another instance added (503 until then)."""
    deadline = time.monotonic() + 60
    while True:
        async with http.get(pploy.base + f"/api/projects/{name}") as resp:
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pploy.base} never served {name}")
        await asyncio.sleep(0.1)


async def measure(count: int, root: Path, server: PostgresServer, sizes: dict) -> dict:
    """Both figures for ``count`` instances on a database of their own."""
    config = root / f"pploy-{count}.yml"
    config.write_text(f"database: {server.create_database(f'bench{count}')}\n")
    go = root / f"go-{count}"
    remote = make_remote(
        root / f"remote-{count}", timed_lines(str(go), sizes["lines"], sizes["interval"])
    )
    instances = [
        PployProcess(root / f"work-{count}-{i}", ["--config", str(config)]) for i in range(count)
    ]
    try:
        for pploy in instances:
            await pploy.ready()
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as http:
            name = await instances[0].prepare(http, remote)
            for pploy in instances:
                await served(http, pploy, name)
            runs = await asyncio.gather(
                *(
                    asyncio.to_thread(
                        wrk,
                        pploy.base + f"/api/projects/{name}",
                        max(1, sizes["connections"] // count),
                        sizes["wrk_seconds"],
                        COOKIE,
                    )  # fmt: skip
                    for pploy in instances
                )
            )
            job = await instances[0].deploy(http, name)
            each = sizes["viewers"] // count
            gens = [
                await start_loadgen(
                    {
                        "url": f"{pploy.base}/api/jobs/{job}/events",
                        "count": each,
                        "cookie": COOKIE,
                        "mode": "live",
                        "timeout": 120,
                    }
                )  # fmt: skip
                for pploy in instances
            ]
            for gen in gens:
                assert gen.stdout is not None
                ready = await asyncio.wait_for(gen.stdout.readline(), 120)
                assert ready.strip() == b"ready", ready
            started = time.monotonic()
            go.touch()
            results = await asyncio.gather(*(read_json_line(gen) for gen in gens))
            elapsed = time.monotonic() - started
            record = await instances[0].wait_job(http, job, 60)
    finally:
        for pploy in instances:
            pploy.stop()
    per_instance = []
    for pploy, result in zip(instances, results, strict=True):
        latencies: Counter[float] = Counter(
            {float(k): v for k, v in result["latency_ms_counts"].items()}
        )
        per_instance.append(
            {
                "viewers": result["viewers"],
                "viewers_with_every_line": sum(1 for n in result["lines"] if n >= sizes["lines"]),
                "errors": result["error_count"],
                "latency_ms": weighted_percentiles(latencies),
                "runs_the_job": pploy is instances[0],
            }
        )
    return {
        "instances": count,
        "requests_per_second": round(sum(run["rps"] for run in runs), 1),
        "requests": runs,
        "job_status": record["status"],
        "viewer_seconds": round(elapsed, 2),
        "viewers": per_instance,
    }


async def main(sizes: dict) -> dict:
    problem = available()
    if problem:
        raise SystemExit(problem)
    server = PostgresServer().start()
    root = Path(tempfile.mkdtemp(prefix="pploy-scaling-"))
    try:
        before = loadavg()
        results = [await measure(count, root, server, sizes) for count in (1, 2)]
        return {
            "benchmark": "scaling",
            "sizes": sizes,
            "machine": machine(),
            "loadavg_before": before,
            "loadavg_after": loadavg(),
            "results": results,
        }
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    output = asyncio.run(main(QUICK if args.quick else FULL))
    text = json.dumps(output, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
