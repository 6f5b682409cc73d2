"""The job runner: one small supervisor process per job, so that a job outlives ``pploy serve``.

``pploy serve`` writes the job's spec to ``<workdir>/run/job-<id>.json`` and starts
``pploy _run-job <spec>`` detached (its own session; stdout and stderr to
``run/job-<id>.out``). The runner, not serve, then owns everything of the job:

- the pty and the script (``terminal.PtyProcess``; the script's first process gets
  ``PR_SET_PDEATHSIG``, so the runner's death kills it), its containment (the job's cgroup, or
  the runner as child subreaper tracking the job's descendants), timeout and cancel
  (INT → TERM → KILL, then everything left in the cgroup or carrying the job's tag);
- the log file and its timeline, the lock kept alive while the job runs, the end record;
- the job's **lease** in the database (``take_lease``/``renew_lease``): with a shared database
  (PostgreSQL, several instances), the runner stops its job once its *wall-clock* fence deadline
  (``job.fence_seconds`` after the last renewal began) has passed — checked before every write
  and on every wake-up, so time the process spent stopped counts — which is before the lease
  (``job.lease_seconds``) can expire and another instance may declare the job lost. Every write
  for the job carries the lease's epoch; a stale one is refused by the database, but for the
  rest of the log file of the epoch that was lost, at the stored end: fenced, the runner keeps
  shipping it (its closing lines included) for FENCED_SHIP_SECONDS.

While it lives the runner holds ``run/job-<id>.lock`` (a ``flock``: the kernel drops it when
the runner dies, however it dies), which is how serve tells a live runner from a dead one, and
listens on ``run/job-<id>.sock``, where serve follows the log: it sends the byte offset it has
and gets the log from there, then each chunk as it is written, then the job's end. A follower
that lags more than :data:`MAX_BACKLOG` bytes is dropped (it reconnects from its offset), so a
stopped or slow serve never slows the job. Serve sends cancels on the same socket; a cancel
recorded in the job's row (by whichever instance got it) the runner finds itself, every
CANCEL_POLL_SECONDS, so it lands while its own serve is down or stopped.

Frames are ``<type:1><length:4, big-endian><payload>``: from serve ``O`` (offset, ASCII) and
``C`` (cancel, JSON ``{"user": …}``); from the runner ``D`` (log bytes) and ``E`` (the job's end,
JSON). This module is imported by the runner process, so it keeps its imports light (no aiohttp,
no configuration parsing).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import fcntl
import json
import os
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pploy import eventloop, log
from pploy.deploy.domain import git, masking
from pploy.deploy.domain.records import Storage, StoreUnavailable
from pploy.deploy.jobs.containment import (
    CgroupContainment,
    Containment,
    SubreaperContainment,
)
from pploy.deploy.jobs.following import LogBuffer, LogWriteError, read_file_range
from pploy.deploy.jobs.terminal import PtyProcess, kill_tagged
from pploy.deploy.jobs.timeline import TimelineWriter, times_path
from pploy.deploy.storage.opening import open_store

if TYPE_CHECKING:  # psycopg is imported only with a shared database
    from pploy.deploy.jobs.sharedlog import LogShipper

RUN_DIR = "run"
HEADER = struct.Struct(">cI")
# A follower further behind than this is dropped; it reconnects from its offset (file first).
MAX_BACKLOG = 8 << 20
# How long before expiry a running job's lock is pushed further out, and by how much.
LOCK_KEEP_MARGIN = 120.0
# How often a write the database refused (a full disk, an outage) is tried again.
RETRY_SECONDS = 1.0
# How often the runner looks in the job's row for a cancel (recorded by whichever instance
# the lock holder asked: it lands while this runner's own pploy is down or stopped).
CANCEL_POLL_SECONDS = 1.0
# After the end: how long the runner waits for its followers to read the end frame.
LINGER_SECONDS = 2.0
# A fenced runner (its script already stopped) keeps shipping the rest of its log file — its
# closing line included — for this long, so a database back by then holds it byte-identical.
FENCED_SHIP_SECONDS = 60.0
PR_SET_PDEATHSIG = 1
# Who cancels the jobs of a pploy stopping with job.on_shutdown: cancel.
SHUTDOWN_USER = "pploy (shutdown)"


def run_dir(workdir: Path) -> Path:
    return workdir / RUN_DIR


def job_file(workdir: Path, job_id: int, suffix: str) -> Path:
    """``<workdir>/run/job-<id>.<suffix>``: json (spec), sock, lock, out, fence."""
    return run_dir(workdir) / f"job-{job_id}.{suffix}"


@contextmanager
def short_path(path: Path) -> Iterator[str]:
    """``path`` as a name short enough for a unix socket (108 bytes): through an open
    descriptor of its directory (``/proc/self/fd/N/name``)."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def runner_alive(workdir: Path, job_id: int) -> bool:
    """True while the job's runner lives (it holds ``job-<id>.lock``)."""
    try:
        fd = os.open(job_file(workdir, job_id, "lock"), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_fence(workdir: Path, job_id: int) -> float | None:
    """The wall-clock time by which the runner will have stopped its job unless it renews its
    lease (None: no fence, e.g. SQLite; not written yet; or the runner has fenced itself and
    its job's tree is gone: it only ships the rest of its log)."""
    try:
        return float(job_file(workdir, job_id, "fence").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One frame; IncompleteReadError at the end of the stream."""
    kind, length = HEADER.unpack(await reader.readexactly(HEADER.size))
    return kind, await reader.readexactly(length) if length else b""


def note(text: str) -> bytes:
    """A line pploy itself writes into a log, set apart in bold cyan."""
    return f"\x1b[1;36m{text}\x1b[0m\n".encode()


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _pdeathsig_preexec(then: Callable[[], None] | None, parent: int) -> Callable[[], None]:
    """The script's first process: SIGKILL when the runner dies, then the containment's step."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the runner died before the line above took effect
            os._exit(1)
        if then is not None:
            then()

    return preexec


class Follower:
    """A connected serve: gets the log from its offset, then live, then the end."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def send(self, kind: bytes, payload: bytes) -> bool:
        """Queue a frame; False (and the connection closed) when the follower lags too far."""
        if self.writer.is_closing():
            return False
        if self.writer.transport.get_write_buffer_size() > MAX_BACKLOG:
            self.writer.close()
            return False
        self.writer.writelines([HEADER.pack(kind, len(payload)), payload])
        return True


class Runner:
    """Runs one job from its spec (see the module docstring)."""

    def __init__(self, spec: dict[str, Any], lock_fd: int) -> None:
        self.spec = spec
        self.lock_fd = lock_fd  # job-<id>.lock, locked by serve and handed over
        self.workdir = Path(spec["workdir"])
        self.job_id: int = spec["job"]
        self.project: str = spec["project"]
        self.kind: str = spec["kind"]
        self.user: str = spec["user"]
        self.ref: str | None = spec.get("ref")
        self.cwd: str = spec["cwd"]
        self.log_path = Path(spec["log"])
        self.store: Storage | None = None
        self.shared = False
        self.epoch: int | None = None
        self.fence_at = float("inf")  # wall clock; inf: no self-fence (one instance)
        self.fenced = False
        self.db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pploy-db")
        self.followers: list[Follower] = []
        self.process: PtyProcess | None = None
        self.stopping: asyncio.Task[str] | None = None
        self.cancelled_by: str | None = None
        self.timed_out = False
        self.failure: str | None = None
        self.message: str | None = None
        self.end: dict[str, Any] | None = None
        self.buffer = LogBuffer(self.log_path, max_bytes=spec["max_log_bytes"], memory_bytes=0)
        self.buffer.on_write = self._on_write
        self.timeline = TimelineWriter(times_path(self.log_path))
        # job.mask_env's values (as the script gets them: this process's environment) and
        # ::add-mask::: masked before anything is written, so no secret reaches the log file,
        # a follower, the stored log or a notification (domain/masking.py).
        self.masker = masking.for_env(spec.get("mask_env", ()), os.environ)
        self.shipper: LogShipper | None = None
        self.containment = self._containment()

    def _containment(self) -> Containment:
        mode = self.spec.get("containment")
        if mode == "cgroup":
            return CgroupContainment(Path(self.spec["cgroup_base"]))
        if mode == "subreaper":
            try:
                return SubreaperContainment.create(self.workdir)
            except OSError as exc:
                log.event("runner.subreaper_failed", level="warning", error=str(exc))
        return Containment()

    # -- the database, off the loop -------------------------------------------------

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A store call in the runner's one database thread: the loop (pty, fence, followers)
        never waits for the database."""
        return await asyncio.get_running_loop().run_in_executor(
            self.db, lambda: fn(*args, **kwargs)
        )

    # -- output -----------------------------------------------------------------------

    def _on_write(self, start: int, data: bytes) -> None:
        for follower in list(self.followers):
            if not follower.send(b"D", data):
                self.followers.remove(follower)
        if self.shipper is not None:
            self.shipper.wake()

    def check_fence(self) -> bool:
        """True once the fence deadline has passed (then the job is stopped, once): checked
        before every write and on every wake-up, so time spent stopped counts."""
        if not self.fenced and time.time() >= self.fence_at:
            self.fenced = True
            self.failure = "stopped: its lease could not be renewed in time (job.fence_seconds)"
            log.event("runner.fenced", level="error", job=self.job_id)
            self._write(note(f"[pploy] {self.failure}"), is_note=True, force=True)
            self._stop(fast=True)
        return self.fenced

    def _write(self, data: bytes, is_note: bool = False, force: bool = False) -> None:
        if not force and self.check_fence():
            return
        if self.failure and not force:
            return
        self.timeline.note(self.buffer.size, time.time())
        try:
            if is_note:
                self.buffer.append(self.masker.flush())  # held-back output first
                self.buffer.append_note(data)
            else:
                self.buffer.append(self.masker.feed(data))  # no secrets
        except LogWriteError as exc:
            if not self.failure:
                self.failure = str(exc)
            log.event("job.log_write_failed", level="error", job=self.job_id, error=str(exc))
            self._stop()

    def say(self, text: str) -> None:
        self._write(note(text), is_note=True, force=True)

    # -- followers --------------------------------------------------------------------

    async def _serve_follower(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        follower = Follower(writer)
        try:
            kind, payload = await read_frame(reader)
            if kind != b"O":
                return
            offset = max(0, int(payload or b"0"))
            # Nothing awaits between reading the backlog and joining the live followers.
            size = self.buffer.size
            while offset < size:
                data = read_file_range(self.log_path, offset, min(size - offset, 1 << 20))
                if not data:
                    break
                follower.send(b"D", data)
                offset += len(data)
            if self.end is not None:
                follower.send(b"E", json.dumps(self.end).encode())
            else:
                self.followers.append(follower)
            while True:
                kind, payload = await read_frame(reader)
                if kind == b"C":
                    self.cancel(json.loads(payload).get("user") or "pploy")
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            if follower in self.followers:
                self.followers.remove(follower)
            writer.close()

    # -- the job ----------------------------------------------------------------------

    def cancel(self, user: str) -> None:
        if not self.cancelled_by and self.end is None:
            self.cancelled_by = user
            shutdown = user == SHUTDOWN_USER
            self.say(
                "[pploy] cancelled: pploy is shutting down"
                if shutdown
                else f"[pploy] cancelled by {user}"
            )
            log.event("job.cancel", job=self.job_id, user=user)
        self._stop()

    def _time_out(self) -> None:
        self.timed_out = True
        self.say("[pploy] timed out")
        self._stop()

    def _stopped(self) -> bool:
        return bool(self.cancelled_by or self.timed_out or self.failure)

    def _stop(self, fast: bool = False) -> None:
        """Signal the running step's process group (INT, TERM, KILL), once."""
        process = self.process
        if process is None:
            return
        if fast:  # fenced: no grace, the lease is running out
            process.signal_group(signal.SIGKILL)
            asyncio.get_running_loop().create_task(self._kill_leftovers())
            return
        if self.stopping is not None:
            return
        if process.proc.returncode is not None and not process.group_alive():
            return
        waits = self.spec["cancel_grace_seconds"]
        self.stopping = asyncio.get_running_loop().create_task(process.terminate_group(waits))

    async def _kill_leftovers(self) -> int:
        killed = await self.containment.kill(self.job_id)
        return killed + kill_tagged(self.spec["tag"])

    def _child_env(self, extra: dict[str, str], hardened: bool) -> dict[str, str]:
        base = git.git_env() if hardened else dict(os.environ)
        env: dict[str, str] = self.spec["env"]
        return base | env | extra

    async def _run_step(self, argv: Sequence[str], extra: dict[str, str], hardened: bool) -> int:
        self.stopping = None
        preexec = _pdeathsig_preexec(self.containment.preexec(self.job_id), os.getpid())
        self.process = await PtyProcess.start(
            argv,
            cwd=self.cwd,
            env=self._child_env(extra, hardened),
            on_output=self._write,
            columns=self.spec["pty_columns"],
            rows=self.spec["pty_rows"],
            preexec=preexec,
        )
        self.containment.started(self.job_id, self.process.pid)
        if self._stopped():
            self._stop(fast=self.fenced)
        try:
            return await self.process.wait()
        finally:
            if self.stopping is not None or self.fenced:
                if self.stopping is not None:
                    await asyncio.shield(self.stopping)
                killed = await self._kill_leftovers()
                if killed:
                    self.say(f"[pploy] killed {killed} process(es) left behind")

    async def _run_steps(self) -> int | None:
        steps = self.spec.get("steps")
        if steps is None:
            return await self._default_checkout()
        returncode = 0
        for argv, extra, echo in steps:
            if echo:
                self.say(echo)
            returncode = await self._run_step(argv, extra, hardened=False)
            if returncode != 0 or self._stopped():
                break
        return returncode

    async def _default_checkout(self) -> int | None:
        ref = self.ref or ""
        extra = {"DEPLOY_COMMIT": ref}
        fetch = ["git", "fetch", "--prune", "--tags", "--force", "origin"]
        self.say("$ " + " ".join(fetch))
        rc = await self._run_step(fetch, extra, hardened=True)
        if rc != 0 or self._stopped():
            return rc
        sha = await git.resolve_commit(self.cwd, ref)
        if sha is None:
            self.message = f"{ref!r} is not a branch, tag or commit of origin"
            self.say(f"[pploy] {self.message}")
            return None
        await self._record({"sha": sha})
        self.say(f"[pploy] {ref} is {sha}")
        for argv in (
            ["git", "checkout", "-f", "--detach", sha],
            ["git", "reset", "--hard", sha],
            ["git", "clean", "-fdx"],
            ["git", "submodule", "sync", "--recursive"],
            ["git", "submodule", "update", "--init", "--recursive"],
        ):
            self.say("$ " + " ".join(argv))
            rc = await self._run_step(argv, extra, hardened=True)
            if rc != 0 or self._stopped():
                return rc
        return 0

    async def _record(self, fields: dict[str, Any]) -> bool:
        """One fenced write of the job's record; False when the database refused it."""
        assert self.store is not None
        try:
            return bool(await self.call(self.store.write_job, self.job_id, self.epoch, **fields))
        except StoreUnavailable:
            return False

    async def _keep_lock(self) -> None:
        """While the job runs, its user's lock never gets within LOCK_KEEP_MARGIN of expiring."""
        assert self.store is not None
        while True:
            now = time.time()
            try:
                await self.call(
                    self.store.keep_lock_until, self.project, self.user, now, now + LOCK_KEEP_MARGIN
                )
            except StoreUnavailable as exc:
                log.event("job.lock_keep_failed", level="error", job=self.job_id, error=exc.message)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            await asyncio.sleep(LOCK_KEEP_MARGIN / 4)

    async def _watch_cancel(self) -> None:
        """Every CANCEL_POLL_SECONDS, look for a cancel recorded in the job's row (the
        durable path; serve's socket is the fast one) and cancel for whoever asked."""
        assert self.store is not None
        while self.end is None and not self._stopped():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            try:
                user = await self.call(self.store.cancel_request, self.job_id)
            except StoreUnavailable:
                continue
            if user and self.end is None and not self._stopped():
                log.event("runner.cancel_found", job=self.job_id, user=user)
                self.cancel(user)

    async def _keep_lease(self) -> None:
        """Renew the lease every lease/6 seconds (every RETRY_SECONDS after a failure); each
        success moves the fence deadline to fence_seconds after the renewal *began*."""
        assert self.store is not None
        ttl, fence = self.spec["lease_seconds"], self.spec["fence_seconds"]
        while True:
            began = time.time()
            try:
                ok = await self.call(self.store.renew_lease, self.job_id, self.epoch, ttl)
            except StoreUnavailable as exc:
                log.event(
                    "runner.renew_failed", level="warning", job=self.job_id, error=exc.message
                )
                ok = None
            if ok is False:  # the database says the lease is gone: another took over
                self.fence_at = 0.0
            elif ok and self.shared:
                self._set_fence(began + fence)
            self.check_fence()
            await asyncio.sleep(ttl / 6 if ok else RETRY_SECONDS)

    def _set_fence(self, when: float) -> None:
        self.fence_at = when
        if self.fenced:  # its tree is gone (see _drop_fence): nothing for serve to guard
            return
        path = job_file(self.workdir, self.job_id, "fence")
        try:
            temp = path.with_suffix(".fence-new")
            temp.write_text(f"{when:.3f}\n")
            os.replace(temp, path)
        except OSError:
            pass

    def _drop_fence(self) -> None:
        """Fenced, with the job's tree gone: the fence file goes, so serve's guard (running.py
        _guard_fences) leaves this runner alone while it ships the rest of its log."""
        with contextlib.suppress(OSError):
            job_file(self.workdir, self.job_id, "fence").unlink()

    async def _watch_fence(self) -> None:
        """Wake every 0.2 s to check the fence: the first thing done after a stop (SIGCONT)."""
        while not self.check_fence():
            await asyncio.sleep(0.2)

    async def run(self) -> int:
        os.set_inheritable(self.lock_fd, False)  # the script must not hold it
        os.ftruncate(self.lock_fd, 0)
        os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode(), 0)
        server = None
        saved = False
        try:
            self.store = await self.call(open_store, self.spec.get("database"), self.workdir)
            self.shared = bool(self.store.shared)
            self.epoch = await self.call(
                self.store.take_lease, self.job_id, self.spec["lease_seconds"]
            )
            if self.epoch is None:
                log.event("runner.no_lease", level="error", job=self.job_id)
                return 1
            if self.shared:
                self._set_fence(time.time() + self.spec["fence_seconds"])
            sock = job_file(self.workdir, self.job_id, "sock")
            with short_path(sock) as name:
                try:
                    os.unlink(name)
                except FileNotFoundError:
                    pass
                server = await asyncio.start_unix_server(self._serve_follower, path=name)
            os.chmod(sock, 0o600)
            saved = await self._run_job()
        finally:
            if server is not None:
                server.close()
            self._cleanup(saved)
        return 0

    async def _run_job(self) -> bool:
        """Run the job to its end; True when the end was recorded."""
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._keep_lock()),
            loop.create_task(self._keep_lease()),
            loop.create_task(self._watch_cancel()),
        ]
        if self.shared:
            tasks.append(loop.create_task(self._watch_fence()))
        if self.shared:  # the one shipper (sharedlog.LogShipper), fenced by the lease's epoch
            from pploy.deploy.jobs.sharedlog import LogShipper

            store: Any = self.store  # a PgStore: shared
            self.shipper = LogShipper(store, self.job_id, self.log_path, epoch=self.epoch)
            self.shipper.start()
        timeout = loop.call_later(self.spec["timeout_seconds"], self._time_out)
        log.event("runner.start", job=self.job_id, pid=os.getpid(), epoch=self.epoch)
        exit_code: int | None = None
        sig: int | None = None
        status = "failed"
        message: str | None = None
        try:
            returncode = await self._run_steps()
            if returncode is None:
                message = self.failure or self.message
                exit_code = 1
            elif returncode < 0:
                sig = -returncode
            else:
                exit_code = returncode
            if self.fenced:
                status, message = "interrupted", self.failure
            elif self.failure:
                status, message = "failed", self.failure
            elif self.timed_out:
                status = "timed_out"
            elif self.cancelled_by:
                status = "cancelled"
            elif returncode == 0:
                status = "succeeded"
        except Exception as exc:  # a bug or OS error must still close the job cleanly
            message = f"{type(exc).__name__}: {exc}"
            log.event("job.error", level="error", job=self.job_id, error=message)
            self.say(f"[pploy] job failed to run: {message}")
        finally:
            timeout.cancel()
            if self.process:
                self.process.close()
            self.containment.finished(self.job_id)
        if self.fenced:
            self._drop_fence()
        fields: dict[str, Any] = {}
        if self.kind == "checkout" and status == "succeeded":
            fields["sha"] = await git.head_sha(self.cwd)
        summary = f"[pploy] {self.kind} {status}"
        if self.cancelled_by:
            summary += f" (cancelled by {self.cancelled_by})"
        if self.timed_out:
            summary += f" (timed out after {self.spec['timeout_seconds'] / 60:g} min)"
        if exit_code is not None:
            summary += f", exit code {exit_code}"
        if sig is not None:
            summary += f", killed by {signal_name(sig)}"
        if message:
            summary += f": {message}"
        self.say(summary)
        self.timeline.close()
        fields |= {
            "status": status, "exit_code": exit_code, "signal": sig, "ended_at": time.time(),
            "cancelled_by": self.cancelled_by, "message": message, "log_bytes": self.buffer.size,
        }  # fmt: skip
        self.end = {"id": self.job_id, **fields}
        if self.shipper is not None:  # every byte stored before the end is: viewers elsewhere
            # Fenced: the script is stopped; the rest of the file still ships (the job is
            # declared lost elsewhere meanwhile: its lost epoch's chunks land at the end).
            self.shipper.finish(self.buffer.size)
            give_up = float("inf")
            while not await asyncio.to_thread(self.shipper.wait, 0.2):
                if self.shipper.done.is_set():
                    break
                if self.check_fence():
                    if give_up == float("inf"):  # fenced now or before: its note ships too
                        self._drop_fence()
                        self.shipper.finish(self.buffer.size)
                        fields["log_bytes"] = self.buffer.size
                        self.end = {"id": self.job_id, **fields}
                        give_up = time.monotonic() + FENCED_SHIP_SECONDS
                    elif time.monotonic() >= give_up:
                        break
        saved = await self._save_end(fields)
        for task in tasks:
            task.cancel()
        if self.shipper is not None:
            self.shipper.stop()
        if saved:  # before the end is told: who sees the end sees the old logs gone
            await self._prune_logs()
        self.buffer.finish(self.end)
        payload = json.dumps({**self.end, "saved": saved, "epoch": self.epoch}).encode()
        for follower in self.followers:
            follower.send(b"E", payload)
        log.event("job.end", job=self.job_id, project=self.project, status=status,
                  exit_code=exit_code, signal=sig, saved=saved)  # fmt: skip
        deadline = loop.time() + LINGER_SECONDS
        while any(not f.writer.is_closing() for f in self.followers) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return saved

    async def _save_end(self, fields: dict[str, Any]) -> bool:
        """Record the end, fenced by the lease's epoch. A database that refuses it (a full disk,
        an outage) is asked again every RETRY_SECONDS; with a shared database only until the
        fence (after it, the end is no longer this runner's to write). False: not recorded."""
        assert self.store is not None
        announced = False
        while True:
            # With a shared database, a call stuck on a dead route is given up at the fence
            # (the runner then exits: main's os._exit leaves the stuck thread behind).
            wait = max(RETRY_SECONDS, self.fence_at - time.time()) if self.shared else None
            try:
                return bool(
                    await asyncio.wait_for(
                        self.call(self.store.write_job, self.job_id, self.epoch, **fields), wait
                    )
                )
            except StoreUnavailable as exc:
                log.event("job.record_failed", level="error", job=self.job_id, error=exc.message)
            except TimeoutError:
                log.event("job.record_failed", level="error", job=self.job_id, error="timeout")
            if not announced:  # followers show the end now; the record lands later
                announced = True
                payload = json.dumps(
                    {**(self.end or {}), "saved": False, "epoch": self.epoch}
                ).encode()
                for follower in self.followers:
                    follower.send(b"U", payload)
            if self.shared and time.time() >= self.fence_at:
                return False
            await asyncio.sleep(RETRY_SECONDS)

    async def _prune_logs(self) -> None:
        assert self.store is not None
        try:
            ids = await self.call(self.store.job_ids_beyond, self.project, self.spec["keep_logs"])
            if self.shared and ids:
                await self.call(self.store.delete_logs, ids)  # type: ignore[attr-defined]
        except StoreUnavailable:
            return
        for job_id in ids:
            path = self.log_path.parent / f"{job_id}.log"
            for old in (path, times_path(path)):
                try:
                    old.unlink()
                except FileNotFoundError:
                    pass

    def _cleanup(self, saved: bool = False) -> None:
        if isinstance(self.containment, SubreaperContainment):  # not the cgroups: shared
            self.containment.close()
        # The lock goes too: serve then finds no runner, and the end in the database. The
        # runner's own output is kept when its end could not be recorded.
        for suffix in ("sock", "json", "fence", "lock", *(("out",) if saved else ())):
            try:
                job_file(self.workdir, self.job_id, suffix).unlink()
            except FileNotFoundError:
                pass
        if self.store is not None:
            with contextlib.suppress(Exception):  # closing on the way out
                self.store.close()
        self.db.shutdown(wait=False)


def spawn_argv(spec_path: Path) -> list[str]:
    """The command serve starts a runner with."""
    return [sys.executable, "-m", "pploy", "_run-job", str(spec_path)]


def main(argv: list[str]) -> int:
    """``pploy _run-job SPEC LOCK_FD`` (hidden: started by ``pploy serve``, one per job)."""
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: pploy _run-job SPEC LOCK_FD (started by pploy serve)", file=sys.stderr)
        return 2
    try:
        spec = json.loads(Path(argv[0]).read_text())
        lock_fd = int(argv[1])
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours: handed over locked
    except (OSError, ValueError) as exc:
        print(f"pploy _run-job: cannot start from {argv[0]}: {exc}", file=sys.stderr)
        return 2
    # Fork once more: serve waits only for this first process, and the runner is no child of
    # serve's (init, or the nearest subreaper, adopts it).
    if os.fork() > 0:
        os._exit(0)
    log.setup(os.environ.get("PPLOY_LOG_LEVEL", "info"))
    # Serve's terminal signals are not the job's: the runner is in a session of its own, and
    # ends only when its job does (a cancel comes through its socket).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    code = 1
    try:
        code = int(eventloop.run(Runner(spec, lock_fd).run()))
    finally:
        # Not the interpreter's exit: it would join the database thread, which may be stuck
        # on a dead connection. The log file is written; only stdio needs flushing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
