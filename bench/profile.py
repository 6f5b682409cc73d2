"""Where gate's time goes on a small logged-in GET: py-spy samples gate (one worker, default
settings, access log on) while wrk runs 50 connections through it, and each sample is put in
one bucket by the innermost frame that names one (the table in bench/README.md).

    pip install py-spy     # a sampling profiler; no change to gate, no slowdown worth noting
    python -m bench.profile [--seconds 8] [--py-spy PATH] [--raw FILE]

Prints a Markdown table (share of samples per bucket) and the top leaf frames. It needs
ptrace rights over its own children (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import GateProcess, Upstream, loadavg, wrk

# (bucket, substrings of a frame "function (file:line)"); the innermost matching frame wins.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("access log (format, batch)", ("finish", "requestlog.py", "accesslog.py")),
    ("metrics", ("gate/metrics.py",)),
    (
        "session cookie (Cookie parse, cache lookup, expiry and policy check)",
        ("gate/auth.py", "parse_cookie_header", "BaseRequest.cookies", "gate/session.py"),
    ),
    ("header filtering (to the upstream and back)", ("upstream_headers", "gate/headers.py")),
    ("identity assertion (cached token)", ("token_for", "identity.py")),
    (
        "gate's own dispatch: path parsing, Host guard, routing, guards, request id",
        (
            "gate/routing.py",
            "gate/guards.py",
            "gate/app.py",
            "gate/forwarding.py",
            "gate/proxy.py",
            "gate/core.py",
        ),
    ),  # fmt: skip
    (
        "fast path: request heads (httptools), admission, one task per request",
        ("FrontConnection", "FastPath.admit", "gate/fastpath.py"),
    ),
    ("fast path: upstream relay (httptools response parsing, pool)", ("gate/relay.py",)),
    ("upstream keep-alive pool (aiohttp connector)", ("connector.py",)),
    (
        "upstream request and response parsing (aiohttp client)",
        (
            "aiohttp/client.py",
            "client_reqrep.py",
            "client_proto.py",
            "client_middleware",
            "aiohttp/streams.py",
        ),
    ),  # fmt: skip
    ("response to the client (prepare, headers, body)", ("web_response.py", "http_writer.py")),
    (
        "request parsing and server protocol (aiohttp server)",
        (
            "web_protocol.py",
            "http_parser.py",
            "web_request.py",
            "web_app.py",
            "web_urldispatcher",
            "web_middlewares",
        ),
    ),  # fmt: skip
]
SEND = (
    "_write (aiohttp/http_writer",
    "_writelines (aiohttp/http_writer",
    "selector_events.py",
    # The fast path's writes: uvloop's transport.write is C, so py-spy shows the calling line.
    "Relay._finish (",
    "Relay.start (",
)
SEND_BUCKET = "socket send() calls (to the client and to the upstream)"
LOOP_BUCKET = "event loop (epoll, socket reads, callbacks)"


def classify(raw: str) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Buckets and leaf frames of py-spy's raw (collapsed) output, and the sample count."""
    buckets: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        leaves[leaf] += n
        if any(key in leaf for key in SEND):
            buckets[SEND_BUCKET] += n
            continue
        if leaf.startswith("Runner.run") or "select" in leaf.lower():
            buckets[LOOP_BUCKET] += n
            continue
        chosen = "other"
        for frame in reversed(frames):
            hit = next((name for name, keys in BUCKETS if any(k in frame for k in keys)), None)
            if hit is not None:
                chosen = hit
                break
        buckets[chosen] += n
    return buckets, leaves, total


def table(buckets: collections.Counter[str], leaves: collections.Counter[str], total: int) -> str:
    out = ["| where | share of gate's samples |", "|---|---|"]
    out += [f"| {name} | {100 * n / total:.1f}% |" for name, n in buckets.most_common()]
    out += ["", "Top leaf frames:", ""]
    out += [f"- {100 * n / total:.1f}% `{name}`" for name, n in leaves.most_common(10)]
    return "\n".join(out)


async def sample(
    seconds: float, py_spy: str, raw_out: Path | None
) -> tuple[collections.Counter[str], collections.Counter[str], int, str]:
    """Buckets, leaf frames, sample count, and a one-line description of the run."""
    with tempfile.TemporaryDirectory(prefix="pploy-profile-") as tmp:
        root = Path(tmp)
        upstream = Upstream(root)
        gate = GateProcess(root / "gate", upstream.url, workers=1)
        try:
            cookie = await gate.login()
            await asyncio.to_thread(wrk, gate.url + "/small", 50, 1, cookie)  # warm-up
            raw = root / "gate.raw"
            spy = subprocess.Popen(
                [py_spy, "record", "-p", str(gate.server_pids()[0]), "-d", str(int(seconds) + 1),
                 "-r", "200", "-f", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            load = loadavg()
            result = await asyncio.to_thread(wrk, gate.url + "/small", 50, int(seconds), cookie)
            spy.wait(seconds + 30)
            text = raw.read_text()
            if raw_out is not None:
                raw_out.write_text(text)
        finally:
            gate.stop()
            upstream.stop()
    buckets, leaves, total = classify(text)
    from pploy import eventloop

    head = (
        f"gate, 1 worker, {eventloop.name()}, wrk -t2 -c50 {seconds:g} s: "
        f"{result.get('rps', 0):.0f} req/s under py-spy; {total} samples; "
        f"load average {load}"
    )
    return buckets, leaves, total, head


async def profile(seconds: float, py_spy: str, raw_out: Path | None) -> str:
    buckets, leaves, total, head = await sample(seconds, py_spy, raw_out)
    return head + "\n\n" + table(buckets, leaves, total)


async def run(ctx) -> dict:  # type: ignore[no-untyped-def]
    """As a section of ``python -m bench run``: one row per bucket (skipped, with a note,
    where py-spy is not installed)."""
    py_spy = shutil.which("py-spy")
    seconds = 2 if ctx.quick else 8
    if py_spy is None:
        note = "py-spy is not installed (pip install py-spy): no profile in this run."
        return {"sizes": {"seconds": seconds}, "rows": [], "skipped": True, "note": note}
    buckets, leaves, total, head = await sample(seconds, py_spy, None)
    rows = [
        {"case": name, "metric": "share of gate's samples", "value": round(100 * n / total, 1),
         "unit": "%"}
        for name, n in buckets.most_common()
    ]  # fmt: skip
    top = "; ".join(f"{100 * n / total:.1f}% `{name}`" for name, n in leaves.most_common(6))
    return {
        "sizes": {"seconds": seconds, "connections": 50},
        "rows": rows,
        "samples": total,
        "note": f"{head}. Top leaf frames: {top}. Each sample goes to the bucket of its "
        "innermost frame that names one (`bench/profile.py`); uvloop's socket writes are C, so "
        "py-spy shows them as the Python line that calls them (counted as send() calls).",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy's path")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here")
    args = parser.parse_args(argv)
    if not args.py_spy or not os.access(args.py_spy, os.X_OK):
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    print(asyncio.run(profile(args.seconds, args.py_spy, args.raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
