"""Line latency per hop: arrival − write time of each line of a deploy that prints a line every
20 ms, on chunked, SSE and WebSocket, at the pty itself (the floor), pploy direct, through gate,
and through nginx (TLS, the shipped config) + gate.

One path at a time, its three viewers follow the same job at once, each in a process of its
own (as three browsers would: none waits behind another's parsing or TLS), and the floor (the
same script under a pty, read with blocking reads by a process of its own) runs at the same
moment: each path's added latency is against the floor measured beside it. Lines carry their
CLOCK_MONOTONIC write time, which every process on the machine shares.

    python -m bench.latency floor SCRIPT      # the floor reader (used by the benchmark)
    python -m bench.latency viewer CONF_JSON  # one viewer (used by the benchmark)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import termios
import time
from pathlib import Path

import aiohttp

from bench.common import GateProcess, NginxProcess, PployProcess, child_env, make_remote, summary
from bench.loadgen import LIVE, scan
from bench.scripts import timed_lines

NAME = "latency"
TRANSPORTS = {
    "chunked": "/api/jobs/{job}/log?follow=1",
    "sse": "/api/jobs/{job}/events",
    "ws": "/api/jobs/{job}/ws",
}
TARGET_ADDED_P99_MS = 5.0


def floor_main(script: str) -> None:
    """Run ``script`` under a pty and time each line with blocking reads of the master."""
    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    proc = subprocess.Popen(
        [script], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    latencies: list[float] = []
    buffer = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the script and everything it started closed the pty
            break
        if not data:
            break
        now = time.monotonic_ns()
        matches, buffer = scan(LIVE, buffer + data)
        latencies += [(now - int(m.group(2))) / 1e6 for m in matches]
    proc.wait()
    print(json.dumps(latencies), flush=True)


async def viewer(
    http: aiohttp.ClientSession,
    url: str,
    transport: str,
    headers: dict[str, str],
    ssl_context: object,
    connected: asyncio.Event,
) -> list[float]:
    latencies: list[float] = []
    buffer = b""

    def take(data: bytes) -> None:
        nonlocal buffer
        now = time.monotonic_ns()
        matches, buffer = scan(LIVE, buffer + data)
        latencies.extend((now - int(m.group(2))) / 1e6 for m in matches)

    kwargs = {"ssl": ssl_context} if ssl_context is not None else {}
    try:
        if transport == "ws":
            ws_url = url.replace("http", "ws", 1)
            async with http.ws_connect(ws_url, headers=headers, **kwargs) as ws:
                connected.set()
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        take(msg.data)
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        break  # the final status
            return latencies
        async with http.get(url, headers=headers, **kwargs) as resp:
            assert resp.status == 200, f"{url}: {resp.status}"
            connected.set()
            async for chunk in resp.content.iter_any():
                take(chunk)
                if transport == "sse" and b"event: status" in chunk:
                    break
        return latencies
    finally:
        connected.set()


async def viewer_main(conf: dict) -> None:
    """One viewer in its own process: ``ready`` once connected, then the latencies as JSON."""
    import ssl

    context = ssl.create_default_context(cafile=conf["cafile"]) if conf.get("cafile") else None
    connected = asyncio.Event()

    async def announce() -> None:
        await connected.wait()
        print("ready", flush=True)

    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(), cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        announcer = asyncio.create_task(announce())
        latencies = await viewer(
            http, conf["url"], conf["transport"], conf["headers"], context, connected
        )
        await announcer
    print(json.dumps(latencies), flush=True)


async def one_run(
    root: Path,
    pploy: PployProcess,
    http: aiohttp.ClientSession,
    project: str,
    paths: dict[str, tuple[str, dict[str, str], object]],
    go: Path,
    script: Path,
    lines: int,
    interval: float,
) -> dict[str, list[float]]:
    go.unlink(missing_ok=True)
    floor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.latency", "floor", str(script),
        stdout=subprocess.PIPE, env=child_env(),
    )  # fmt: skip
    job = await pploy.deploy(http, project)
    viewers: dict[str, asyncio.subprocess.Process] = {}
    for path, (base, headers, cafile) in paths.items():
        for transport, template in TRANSPORTS.items():
            conf = {
                "url": base + template.format(job=job),
                "transport": transport,
                "headers": headers,
                "cafile": cafile,
            }
            viewers[f"{path}/{transport}"] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.latency", "viewer", json.dumps(conf),
                stdout=subprocess.PIPE, env=child_env(),
            )  # fmt: skip
    for key, proc in viewers.items():
        assert proc.stdout is not None
        ready = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert ready.strip() == b"ready", (key, ready)
    await asyncio.sleep(0.2)  # let every stream settle at the live edge
    go.touch()
    timeout = lines * interval + 30
    results = {"pty_floor": []}
    stdout, _ = await asyncio.wait_for(floor.communicate(), timeout)
    results["pty_floor"] = json.loads(stdout)
    for key, proc in viewers.items():
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout)
        results[key] = json.loads(stdout)
    await pploy.wait_job(http, job, 30)
    return results


async def run(ctx) -> dict:  # type: ignore[no-untyped-def]
    lines = 25 if ctx.quick else 500
    interval = 0.02
    reps = 1 if ctx.quick else 3
    root = ctx.tmp / NAME
    root.mkdir()
    go = root / "go"
    remote = make_remote(root, timed_lines(str(go), lines, interval), name="latency")
    script = root / "floor-script"
    script.write_text(timed_lines(str(go), lines, interval))
    script.chmod(0o755)
    pploy = PployProcess(root / "pploy")
    gate = nginx = None
    try:
        await pploy.ready()
        gate = GateProcess(root / "gate", pploy.base)
        await gate.login()
        nginx = NginxProcess(root / "nginx", tls_to=f"127.0.0.1:{gate.port}")
        paths = {
            "pploy": (pploy.base, {"Cookie": "user=alice"}, None),
            "gate": (gate.url, {"Cookie": gate.cookie}, None),
            "nginx_tls_gate": (nginx.url, {"Cookie": gate.cookie}, str(nginx.certs.cafile)),
        }
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            cookies={"user": "alice"}, connector=connector, timeout=aiohttp.ClientTimeout()
        ) as http:
            project = await pploy.prepare(http, remote)
            # One path at a time (its three transports together), each with its own floor
            # measured at the same moment: the floor is the baseline of that path's run.
            runs = []
            for _ in range(reps):
                rep: dict[str, list[float]] = {}
                for name, path in paths.items():
                    one = await one_run(
                        root, pploy, http, project, {name: path}, go, script, lines, interval
                    )
                    rep[f"pty_floor@{name}"] = one.pop("pty_floor")
                    rep.update(one)
                rep["pty_floor"] = [
                    x for k, v in rep.items() if k.startswith("pty_floor@") for x in v
                ]
                runs.append(rep)
    finally:
        for server in (nginx, gate, pploy):
            if server is not None:
                server.stop()

    keys = ["pty_floor"] + [k for k in runs[0] if not k.startswith("pty_floor")]
    per_key = {}
    for key in keys:
        summaries = [summary(run[key]) for run in runs]
        per_key[key] = {
            "lines_expected": lines * (len(paths) if key == "pty_floor" else 1),
            "lines_received_min": min(s["count"] for s in summaries),
            "median_ms": round(sorted(s["median"] for s in summaries)[len(summaries) // 2], 3),
            "p99_ms": round(sorted(s["p99"] for s in summaries)[len(summaries) // 2], 3),
            "max_ms": max(s["max"] for s in summaries),
            "runs": summaries,
        }
    floor = per_key["pty_floor"]
    rows = [
        {
            "case": "pty floor (reader on the pty master)",
            "metric": "median / p99 / max",
            "value": f"{floor['median_ms']} / {floor['p99_ms']} / {floor['max_ms']}",
            "unit": "ms",
        }
    ]
    for key in keys[1:]:
        figures = per_key[key]
        # The floor measured alongside this path, per repetition, then the median.
        path = key.split("/")[0]
        floor_p99 = sorted(summary(run[f"pty_floor@{path}"])["p99"] for run in runs)[len(runs) // 2]
        added = round(figures["p99_ms"] - floor_p99, 3)
        figures["added_p99_ms"] = added
        figures["floor_p99_ms"] = floor_p99
        row = {
            "case": key,
            "metric": "median / p99 / max",
            "value": f"{figures['median_ms']} / {figures['p99_ms']} / {figures['max_ms']}",
            "unit": "ms",
            "baseline": floor_p99,
            "baseline_label": "floor p99 in the same run",
            "ratio": round(figures["p99_ms"] / floor_p99, 2) if floor_p99 else None,
            "extra": f"p99 +{added} ms over the floor; {figures['lines_received_min']}/{lines}"
            " lines",
        }
        if key.startswith("nginx_tls_gate"):
            row["target"] = f"added p99 ≤ {TARGET_ADDED_P99_MS} ms"
            row["met"] = added <= TARGET_ADDED_P99_MS and figures["lines_received_min"] == lines
        rows.append(row)
    return {
        "sizes": {"lines": lines, "interval_ms": interval * 1000, "repetitions": reps},
        "paths": per_key,
        "rows": rows,
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "floor":
        floor_main(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "viewer":
        asyncio.run(viewer_main(json.loads(sys.argv[2])))
    else:
        sys.exit(__doc__)
