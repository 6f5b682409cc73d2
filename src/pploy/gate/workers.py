"""``pploy gate`` as several worker processes sharing one port (``workers: N``).

Sessions are stateless sealed cookies and the login state travels in a cookie too, so any
worker can serve any request: each worker is a whole gate listening on the same address with
``SO_REUSEPORT``, and the kernel spreads new connections over them. The parent process serves
nothing: it forks the workers before any event loop exists, waits until every one listens,
starts a new one if one dies, and on SIGTERM or SIGINT passes SIGTERM to each and waits while
each stops gracefully (``SHUTDOWN_GRACE``).

Without ``auth.assertion.key_file``, the parent generates the assertion signing key once, so
every worker signs with it and publishes the same JWKS.

Metrics are added up across workers: each worker writes a snapshot of its figures to a
private directory (mode 0700) every ``METRICS_INTERVAL`` seconds and when it stops, and a
scrape answered by any worker adds the other workers' latest snapshots to its own live
figures. A worker that dies keeps its last counters in the sum (counters never go back) with
its gauges set to zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

from pploy import eventloop, log
from pploy.gate.config import GateConfig
from pploy.gate.metrics import Metrics
from pploy.gate.server import SHUTDOWN_GRACE, GateServer, StartupRefused

METRICS_INTERVAL = 0.5
# How long every worker gets to start listening before the parent gives up.
START_TIMEOUT = 60.0
# A worker that dies sooner than this after starting is restarted only after this delay, so
# a worker that cannot run does not turn into a fork loop.
RESTART_DELAY = 1.0


class MetricsShare:
    """One worker's side of the metrics sum: write own snapshot, read everyone else's."""

    def __init__(self, directory: Path, metrics: Metrics) -> None:
        self.directory = directory
        self.metrics = metrics
        self.path = directory / f"{os.getpid()}.json"

    def write(self) -> None:
        """Replace this worker's snapshot atomically (a reader never sees half a file)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.metrics.snapshot()))
        os.replace(tmp, self.path)

    def peers(self) -> list[dict[str, Any]]:
        """The other workers' latest snapshots (a missing or unreadable one is skipped)."""
        found = []
        for path in self.directory.glob("*.json"):
            if path == self.path:
                continue
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(path.read_text()))
        return found

    async def run(self) -> None:
        while True:
            self.write()
            await asyncio.sleep(METRICS_INTERVAL)


async def serve(
    config: GateConfig,
    *,
    reuse_port: bool = False,
    metrics_dir: Path | None = None,
    on_ready: Callable[[], None] | None = None,
    assertion_key: ECKey | None = None,
) -> int:
    """Run one gate in this process until SIGTERM or SIGINT, then stop it gracefully."""
    server = GateServer(config, reuse_port=reuse_port, assertion_key=assertion_key)
    await server.start()
    share: MetricsShare | None = None
    writer: asyncio.Task[None] | None = None
    if metrics_dir is not None and server.gate is not None:
        share = MetricsShare(metrics_dir, server.gate.metrics)
        server.gate.metrics.peers = share.peers
        writer = asyncio.create_task(share.run())
    if on_ready is not None:
        on_ready()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.event("gate.stop", pid=os.getpid())
        await server.stop()
        if writer is not None:
            writer.cancel()
        if share is not None:
            with contextlib.suppress(OSError):
                share.write()  # the final counts; its streams are closed, its gauges zero
    return 0


def _worker(
    config: GateConfig, metrics_dir: Path, ready_fd: int, assertion_key: ECKey | None
) -> int:
    """The body of a forked worker; returns its exit status."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    def ready() -> None:
        os.write(ready_fd, b"1")

    try:
        return int(
            eventloop.run(
                serve(
                    config,
                    reuse_port=True,
                    metrics_dir=metrics_dir,
                    on_ready=ready,
                    assertion_key=assertion_key,
                )
            )
        )
    except StartupRefused as exc:
        print(f"gate refuses to start:\n{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gate cannot listen on {config.address}: {exc}", file=sys.stderr)
        return 1


class Supervisor:
    """The parent: forks ``count`` workers, keeps them running, stops them all on a signal."""

    def __init__(self, config: GateConfig, count: int) -> None:
        self.config = config
        self.count = count
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="pploy-gate-metrics-"))
        self.children: dict[int, float] = {}  # pid -> when it was started
        self.stopping = False
        self._ready_r, self._ready_w = os.pipe()
        # Upstreams verify assertions against the JWKS of whichever worker they ask: without
        # a key file, every worker must sign with the same generated key.
        self.assertion_key = (
            None
            if config.auth.assertion.key_file
            else ECKey.generate_key("P-256", auto_kid=True)
        )

    def _spawn(self) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(self._ready_r)
                code = _worker(self.config, self.metrics_dir, self._ready_w, self.assertion_key)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = time.monotonic()
        return pid

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _reap(self) -> list[tuple[int, int, float]]:
        """Workers that have exited since the last call: pid, exit status, seconds lived."""
        gone = []
        for pid, started in list(self.children.items()):
            with contextlib.suppress(ChildProcessError):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
                lived = time.monotonic() - started
                gone.append((pid, os.waitstatus_to_exitcode(status), lived))
            self.children.pop(pid, None)
            self._zero_gauges(pid)
        return gone

    def _zero_gauges(self, pid: int) -> None:
        """A dead worker's streams are gone: keep its counters in the sum, not its gauges."""
        path = self.metrics_dir / f"{pid}.json"
        with contextlib.suppress(OSError, ValueError):
            snapshot = json.loads(path.read_text())
            snapshot["open_streams"] = snapshot["open_websockets"] = 0
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(snapshot))
            os.replace(tmp, path)

    def _wait_ready(self) -> int:
        """0 once every worker listens; else the exit status of the first that failed."""
        ready = 0
        deadline = time.monotonic() + START_TIMEOUT
        while ready < self.count:
            if self.stopping:
                return 0
            for _pid, code, _lived in self._reap():
                return code or 1
            if time.monotonic() > deadline:
                log.event("gate.workers.timeout", level="error", ready=ready, workers=self.count)
                return 1
            readable, _, _ = select.select([self._ready_r], [], [], 0.1)
            if readable:
                ready += len(os.read(self._ready_r, self.count))
        return 0

    def _stop_all(self, grace: float) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.children:
            self._reap()
            time.sleep(0.01)

    def run(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        code = 0
        try:
            for _ in range(self.count):
                self._spawn()
            code = self._wait_ready()
            if code == 0 and not self.stopping:
                log.event("gate.workers", workers=self.count, pids=sorted(self.children))
                self._watch()
        finally:
            self._stop_all(SHUTDOWN_GRACE + 10.0)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            os.close(self._ready_r)
            os.close(self._ready_w)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return code

    def _watch(self) -> None:
        """Until a signal: start a new worker for each one that dies."""
        while not self.stopping:
            time.sleep(0.1)
            for pid, code, lived in self._reap():
                log.event("gate.worker.exit", level="error", pid=pid, status=code)
                if self.stopping:
                    break
                if lived < RESTART_DELAY:
                    time.sleep(RESTART_DELAY)
                self._spawn()
            # Drain readiness bytes of restarted workers.
            while select.select([self._ready_r], [], [], 0)[0]:
                os.read(self._ready_r, 64)


def run_workers(config: GateConfig, count: int) -> int:
    """``pploy gate`` with ``count`` worker processes; returns the exit status."""
    return Supervisor(config, count).run()
