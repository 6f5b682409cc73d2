"""Fault injection with real parts: a ledger of what deploy scripts really did, a TCP relay that
can go silent or reset, PostgreSQL stopped and restarted, /ping watched throughout.

Ground truth comes from outside pploy (see /work/shared/design.md, "Fault injection"): judge a
job by what its script wrote to its ledger, not by what pploy recorded.

- :func:`ledger_script` — a deploy script that appends ``START``/``TICK``/``SIG``/``END`` lines
  to a ledger file, and :func:`read_ledger` / :func:`overlaps` to judge them.
- :class:`TcpRelay` — a relay between pploy and PostgreSQL (or anything) with three modes:
  ``forward``; ``blackhole`` (a dead route: both sockets stay open, no byte moves either way,
  the held bytes flow again on ``forward`` as TCP retransmissions would); ``reset`` (every
  connection and every new one is reset).
- :func:`pg_halt`, :func:`pg_resume`, :func:`pg_restart` — PostgreSQL stopped the way
  ``pg_ctl stop -m fast`` does (SIGINT) and started again on the same data and port; use the
  ``private_pg_server`` fixture (tests/postgres.py) for a server a test may stop.
- :class:`PingWatch` — asks ``/ping`` over and over from a thread of its own (the test's event
  loop may be busy) and keeps every answer's latency, so a test asserts on each one.
- :func:`write_config` and :class:`PployProcess` — ``pploy serve --config FILE`` as a real
  process, its output in a file.
"""

from __future__ import annotations

import http.client
import selectors
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from bench.postgres import PostgresServer
from tests.deploy.test_server_process import Server
from tests.helpers import free_port

# The environment variable naming the ledger file (pploy passes its environment to scripts);
# ledger_script also bakes a default path in, so a script works without it.
LEDGER_VAR = "PPLOY_TEST_LEDGER"


# -- the ledger ------------------------------------------------------------------------


def ledger_script(
    ledger: Path | None = None,
    *,
    ticks: int = 70,
    interval: float = 0.05,
    line_bytes: int = 200,
    exit_code: int = 0,
    gate: Path | None = None,
    gate_at: int = 0,
) -> str:
    """A deploy script (``/bin/sh``) that writes its own ledger, one line per event:

    ``START <job> <time>`` when it starts, ``TICK <job> <n> <time>`` after each output line,
    ``SIG <job> <name> <time>`` when it gets SIGINT/SIGTERM/SIGHUP (then exits 128+n), and
    ``END <job> <exit code> <time>`` as it exits normally. ``<job>`` is ``$PPLOY_JOB_ID`` (the
    tag pploy gives a job's processes), or ``pid<pid>`` outside pploy; ``<time>`` is the Unix
    time with nanoseconds. The ledger file is ``$PPLOY_TEST_LEDGER``, else ``ledger``.

    The output is ``ticks`` lines of exactly ``line_bytes`` bytes each (newline included; a pty
    makes it ``\\r\\n``), one every ``interval`` seconds: 70 × 200 B over 3.5 s by default,
    about the 14 KB of the issue's measurement.

    With ``gate`` (a fifo, tests/deploy/support.Fifo), the script waits there after line
    ``gate_at`` until the test releases it: a fault can be injected at a known point of the
    output, and output then written while the fault lasts."""
    default = shlex.quote(str(ledger)) if ledger is not None else '""'
    filler = "x" * max(0, line_bytes - len("tick 0000 ") - 1)
    wait = ""
    if gate is not None:
        fifo = shlex.quote(str(gate))
        wait = f"if [ $n -eq {gate_at} ]; then exec 3< {fifo}; read _ <&3; fi"
    return f"""#!/bin/sh
L="${{{LEDGER_VAR}:-{default}}}"
J="${{PPLOY_JOB_ID:-pid$$}}"
now() {{ date +%s.%N; }}
note() {{ [ -n "$L" ] && echo "$*" >> "$L"; }}
for s in HUP:1 INT:2 TERM:15; do
  trap "note SIG $J ${{s%:*}} \\$(now); exit $((128 + ${{s#*:}}))" "${{s%:*}}"
done
note START "$J" "$(now)"
n=0
while [ $n -lt {ticks} ]; do
  n=$((n + 1))
  printf 'tick %04d {filler}\\n' $n
  note TICK "$J" $n "$(now)"
  {wait}
  sleep {interval}
done
note END "$J" {exit_code} "$(now)"
exit {exit_code}
"""


@dataclass
class LedgerEntry:
    """What one script (one job) did, from its ledger lines."""

    job: str
    start: float | None = None
    end: float | None = None  # END or SIG time: when the script stopped
    exit_code: int | None = None  # END's code; 128 + n after SIG
    signal: str | None = None
    ticks: list[float] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.end is not None


def read_ledger(path: Path) -> dict[str, LedgerEntry]:
    """The ledger's entries by job, in order of their START."""
    entries: dict[str, LedgerEntry] = {}
    if not path.exists():
        return entries
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        kind, job = parts[0], parts[1]
        entry = entries.setdefault(job, LedgerEntry(job))
        when = float(parts[-1])
        if kind == "START":
            entry.start = when
        elif kind == "TICK":
            entry.ticks.append(when)
        elif kind == "SIG":
            entry.signal, entry.end = parts[2], when
            entry.exit_code = 128 + {"HUP": 1, "INT": 2, "TERM": 15}.get(parts[2], 0)
        elif kind == "END":
            entry.exit_code, entry.end = int(parts[2]), when
    return entries


def overlaps(entries: dict[str, LedgerEntry], now: float | None = None) -> list[tuple[str, str]]:
    """Pairs of jobs whose scripts were alive at the same moment (a script still running
    counts as alive until ``now``): for one project this must be empty."""
    spans = [
        (e.start, e.end if e.end is not None else (now or time.time()), e.job)
        for e in entries.values()
        if e.start is not None
    ]
    spans.sort()
    found = []
    for i, (start, end, job) in enumerate(spans):
        for other_start, _, other in spans[i + 1 :]:
            if other_start < end:
                found.append((job, other))
    return found


# -- a TCP relay that can fail ------------------------------------------------------------


class TcpRelay:
    """A TCP relay on 127.0.0.1 to ``target``, in one thread, with modes to fail on demand.

    - ``forward``: bytes flow both ways as they arrive.
    - ``blackhole``: nothing is read or written and nothing is closed, on every connection,
      old or new (new ones are accepted and held): what a dead route looks like to both
      ends. The bytes each end sent wait in the relay's sockets and flow on ``forward``,
      as TCP would deliver them once the route heals.
    - ``reset``: every open connection is reset (RST) now, and so is each new one.

    Use as a context manager or call :meth:`close`. ``port`` is where to connect;
    ``url(database_url)`` rewrites a PostgreSQL URL to go through the relay."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.mode = "forward"
        self.accepted = 0
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._applied = threading.Condition()
        self._wanted = self._done = 0  # mode switches asked for, and applied
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="tcp-relay", daemon=True)
        self._thread.start()

    @classmethod
    def to_database(cls, database_url: str) -> TcpRelay:
        """A relay to the PostgreSQL server of ``database_url`` (loopback); connect through
        ``relay.url(database_url)``."""
        params = conninfo_to_dict(database_url)
        return cls((str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)))

    def url(self, database_url: str) -> str:
        """``database_url`` with its host and port replaced by the relay's."""
        host, port = self.target
        return database_url.replace(f"@{host}:{port}/", f"@127.0.0.1:{self.port}/")

    def forward(self) -> None:
        self._set("forward")

    def blackhole(self) -> None:
        self._set("blackhole")

    def reset(self) -> None:
        self._set("reset")

    def _set(self, mode: str) -> None:
        """Switch modes; returns once the relay thread has applied it (a connection reset
        is reset, a blackholed one no longer read)."""
        with self._applied:
            self.mode = mode
            self._wanted += 1
            self._wake_w.send(b"!")
            if not self._applied.wait_for(lambda: self._done >= self._wanted, timeout=5):
                raise RuntimeError(f"the relay did not switch to {mode}")

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._wake_w.send(b"!")
        self._thread.join(5)
        for sock in list(self._pairs):
            sock.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    @staticmethod
    def _rst(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _drop(self, sock: socket.socket, rst: bool = False) -> None:
        peer = self._pairs.pop(sock, None)
        for one in (sock, peer):
            if one is None:
                continue
            self._pairs.pop(one, None)
            try:
                self._selector.unregister(one)
            except (KeyError, ValueError):
                pass
            if rst:
                self._rst(one)
            else:
                one.close()

    def _arm(self) -> None:
        """Watch the connections for bytes only while forwarding."""
        for sock in self._pairs:
            registered = sock in self._selector.get_map()
            if self.mode == "forward" and not registered:
                self._selector.register(sock, selectors.EVENT_READ)
            elif self.mode != "forward" and registered:
                self._selector.unregister(sock)

    def _loop(self) -> None:
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        while not self._closed:
            with self._applied:
                mode, wanted = self.mode, self._wanted
            if mode == "reset":
                for sock in list(self._pairs):
                    if sock in self._pairs:
                        self._drop(sock, rst=True)
            self._arm()
            with self._applied:
                self._done = wanted
                self._applied.notify_all()
            for key, _ in self._selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_r:
                    sock.recv(4096)
                    break  # a new mode: apply it before anything else
                if sock is self.listener:
                    self._accept(self.mode)
                elif sock in self._pairs and self.mode == "forward":
                    self._pump(sock)
        for sock in list(self._pairs):
            self._drop(sock)

    def _accept(self, mode: str) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        client.setblocking(True)
        self.accepted += 1
        if mode == "reset":
            self._rst(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._rst(client)  # nothing there: refuse as the target would
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pairs[client] = upstream
        self._pairs[upstream] = client

    def _pump(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        peer = self._pairs.get(sock)
        if not data or peer is None:
            self._drop(sock)
            return
        try:
            peer.sendall(data)
        except OSError:
            self._drop(sock)


# -- PostgreSQL stopped and started -------------------------------------------------------


def pg_halt(server: PostgresServer) -> float:
    """Fast shutdown (SIGINT to the postmaster, as ``pg_ctl stop -m fast``); returns when it
    has exited, with the time it took."""
    started = time.monotonic()
    server.halt()
    return time.monotonic() - started


def pg_resume(server: PostgresServer) -> float:
    """Start the halted server again (same data, same port); returns once it accepts
    connections, with the time it took."""
    started = time.monotonic()
    server.resume()
    return time.monotonic() - started


def pg_restart(server: PostgresServer) -> float:
    """:func:`pg_halt` then :func:`pg_resume`: returns how long the database was gone."""
    return pg_halt(server) + pg_resume(server)


# -- /ping, watched throughout --------------------------------------------------------------


class PingWatch:
    """``GET /ping`` on ``port`` every ``interval`` seconds from a thread of its own, each
    on a new connection with ``timeout``; ``latencies`` holds every answer's time (a request
    that failed or timed out counts as ``timeout``), ``failures`` what went wrong.

    ``with PingWatch(port) as watch: …`` then ``watch.worst()``."""

    def __init__(self, port: int, *, interval: float = 0.1, timeout: float = 5.0) -> None:
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ping-watch", daemon=True)

    def __enter__(self) -> PingWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 1)

    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                conn.request("GET", "/ping")
                response = conn.getresponse()
                body = response.read()
                conn.close()
                if response.status != 200 or body != b"pong\n":
                    self.failures.append(f"{response.status} {body!r}")
                self.latencies.append(time.monotonic() - started)
            except OSError as exc:
                self.failures.append(repr(exc))
                self.latencies.append(max(self.timeout, time.monotonic() - started))
            self._stop.wait(self.interval)


# -- pploy serve as a process ---------------------------------------------------------------


def write_config(path: Path, database: str, **extra: str) -> Path:
    """A ``pploy serve`` config file: users alice and bob, short job graces, ``database``."""
    lines = [
        "users: [alice, bob]",
        f"database: {database}",
        "job:",
        "  shutdown_grace_seconds: 1",
        "  cancel_grace_seconds: [1, 1]",
        *(f"{key}: {value}" for key, value in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class PployProcess(Server):
    """``pploy serve --config FILE --workdir DIR --port P`` as a process whose output goes to
    ``<workdir>.out`` (a pipe nobody reads fills after ~300 log lines and then blocks pploy
    on its next log line: a long fault test would measure that, not pploy). Otherwise as
    tests/deploy's Server: ``.proc``, ``.base``, ``.port``, ``await .ready(session)``,
    ``await .start_deploy(session, remote)``, ``.stop(signal)`` returns the output."""

    def __init__(self, workdir: Path, config: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.output = workdir.with_name(workdir.name + ".out")
        argv = [sys.executable, "-m", "pploy", "serve", "--config", str(config), "--workdir",
                str(workdir), "--port", str(self.port)]  # fmt: skip
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        # What Server.ready reads when pploy fails to start: the output so far.
        self.proc.stdout = open(self.output, "rb")  # noqa: SIM115 (closed by stop)

    def stop(self, sig: int | None = signal.SIGKILL) -> str:
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.output.read_text(errors="replace")
