"""``pploy gate`` as several worker processes sharing one port (``workers: N``).

Sessions are stateless sealed cookies and the login state travels in a cookie too, so any
worker can serve any request: each worker is a whole gate listening on the same address with
``SO_REUSEPORT``, and the kernel spreads new connections over them. The parent process serves
nothing: it forks the workers before any event loop exists, waits until every one listens,
starts a new one if one dies, and on SIGTERM or SIGINT passes SIGTERM to each and waits while
each stops gracefully (``SHUTDOWN_GRACE``). On SIGHUP it reads the configuration again and
replaces the workers one at a time, each new one listening before an old one stops.

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
from pploy.gate.server import SHUTDOWN_GRACE, GateServer, StartupRefused, startup_problems

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
        os.write(ready_fd, f"{os.getpid()}\n".encode())  # one short write: atomic on a pipe

    return run_one(
        config, reuse_port=True, metrics_dir=metrics_dir, on_ready=ready,
        assertion_key=assertion_key,
    )  # fmt: skip


def run_one(config: GateConfig, **options: Any) -> int:
    """Serve ``config`` in this process until stopped (``options`` as :func:`serve` takes
    them); the exit status, with the reason on stderr when gate cannot start."""
    try:
        return int(eventloop.run(serve(config, **options)))
    except StartupRefused as exc:
        print(f"gate refuses to start:\n{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gate cannot listen on {config.address}: {exc}", file=sys.stderr)
        return 1


class Supervisor:
    """The parent: forks ``count`` workers, keeps them running, stops them all on a signal."""

    def __init__(
        self,
        config: GateConfig,
        count: int,
        reload: Callable[[], tuple[GateConfig, int]] | None = None,
    ) -> None:
        """``reload``: reads the configuration again on SIGHUP (and the worker count)."""
        self.config = config
        self.count = count
        self.reload = reload
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="pploy-gate-metrics-"))
        self.children: dict[int, float] = {}  # pid -> when it was started
        self.ready: set[int] = set()  # workers that have said they listen
        self.retiring: set[int] = set()  # sent SIGTERM on purpose: not to be replaced
        self.probation: set[int] = set()  # new workers of a reload, not replaced if they fail
        self.stopping = False
        self.reload_requested = False
        self._ready_r, self._ready_w = os.pipe()
        self._ready_buffer = b""
        # Upstreams verify assertions against the JWKS of whichever worker they ask: without
        # a key file, every worker must sign with the same generated key.
        self.assertion_key = (
            None if config.auth.assertion.key_file else ECKey.generate_key("P-256", auto_kid=True)
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

    def _on_hangup(self, _signum: int, _frame: object) -> None:
        self.reload_requested = True

    def _read_ready(self, timeout: float) -> None:
        """Collect the pids of workers that report listening (waits up to ``timeout``)."""
        readable, _, _ = select.select([self._ready_r], [], [], timeout)
        if not readable:
            return
        self._ready_buffer += os.read(self._ready_r, 4096)
        *lines, self._ready_buffer = self._ready_buffer.split(b"\n")
        self.ready.update(int(line) for line in lines if line.strip().isdigit())

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
            self.ready.discard(pid)
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
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready.issuperset(self.children):
            if self.stopping:
                return 0
            for _pid, code, _lived in self._reap():
                return code or 1
            if time.monotonic() > deadline:
                log.event(
                    "gate.workers.timeout", level="error", ready=len(self.ready), workers=self.count
                )
                return 1
            self._read_ready(0.1)
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
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
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

    def _tick(self, timeout: float) -> None:
        """Collect readiness; replace a worker that died unexpectedly (not one retired on
        purpose, nor a reload's new worker that failed to start)."""
        self._read_ready(timeout)
        for pid, code, lived in self._reap():
            if pid in self.retiring:
                self.retiring.discard(pid)
                continue
            log.event("gate.worker.exit", level="error", pid=pid, status=code)
            if pid in self.probation:
                self.probation.discard(pid)
                continue
            if self.stopping:
                continue
            if lived < RESTART_DELAY:
                time.sleep(RESTART_DELAY)
            self._spawn()

    def _watch(self) -> None:
        """Until SIGTERM/SIGINT: replace workers that die; on SIGHUP, restart them in turn."""
        while not self.stopping:
            self._tick(0.1)
            if self.reload_requested:
                self.reload_requested = False
                self._rolling_restart()

    def _rolling_restart(self) -> None:
        """Read the configuration again and replace the workers one at a time: each new
        worker listens (SO_REUSEPORT) before an old one is stopped gracefully, so the address
        never goes away. A configuration that does not load, or a new worker that does not
        start, leaves the old workers serving."""
        if self.reload is None:
            return
        try:
            config, count = self.reload()
        except Exception as exc:  # a bad file must never take the running gate down
            log.event("gate.reload.refused", level="error", reason=str(exc))
            return
        problems = startup_problems(config)
        if problems:
            log.event("gate.reload.refused", level="error", reason="; ".join(problems))
            return
        old_config, old_key = self.config, self.assertion_key
        self.config = config
        if config.auth.assertion.key_file:
            self.assertion_key = None
        elif self.assertion_key is None:
            self.assertion_key = ECKey.generate_key("P-256", auto_kid=True)
        old = sorted(self.children)
        log.event("gate.reload", workers=count, replacing=old)
        for index in range(max(count, len(old))):
            if index < count:
                pid = self._spawn()
                self.probation.add(pid)
                deadline = time.monotonic() + START_TIMEOUT
                while pid in self.children and pid not in self.ready and not self.stopping:
                    if time.monotonic() > deadline:
                        os.kill(pid, signal.SIGKILL)
                    self._tick(0.1)
                self.probation.discard(pid)
                if pid not in self.ready:
                    log.event("gate.reload.failed", level="error", pid=pid)
                    self.config, self.assertion_key = old_config, old_key
                    return
            if index < len(old) and old[index] in self.children:
                self.retiring.add(old[index])
                with contextlib.suppress(ProcessLookupError):
                    os.kill(old[index], signal.SIGTERM)
        self.count = count


def run_workers(
    config: GateConfig, count: int, reload: Callable[[], tuple[GateConfig, int]] | None = None
) -> int:
    """``pploy gate`` with ``count`` worker processes; returns the exit status."""
    return Supervisor(config, count, reload).run()
