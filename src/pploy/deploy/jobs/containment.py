"""Containment: every process a job starts can be found and ended, wherever it went.

A deploy script can leave its process group and session (``setsid``), clear its environment
(``env -i``, as ``sudo``, ``systemd-run`` and daemonisers do) and outlive its parent. Neither
the group nor the ``PPLOY_JOB_ID`` environment tag then finds it. Two mechanisms do:

- **cgroup** (used when a cgroup v2 hierarchy is writable, e.g. pploy runs as root, or under
  systemd with ``Delegate=yes``): each job gets ``<pploy's cgroup>/pploy-<workdir hash>/job-<id>``.
  The job's first process moves itself there before it runs anything (so nothing it starts
  can be outside), and ending the job writes ``cgroup.kill``: every process in it, however it
  detached, is SIGKILLed by the kernel. The directory survives the death of the job's runner,
  so ``pploy serve`` finds the leftovers of a job whose runner died.
- **subreaper** (otherwise): the job's runner (runner.py) marks itself a child subreaper
  (``PR_SET_CHILD_SUBREAPER``), so orphans of its job are re-parented to it rather than to
  init; a tracker walks /proc while the job runs and records every descendant (pid and start
  time, also in ``<workdir>/run/job-<id>.pids``, from which ``pploy serve`` ends the leftovers
  of a job whose runner died). A process that escapes and exits its parent between two looks
  (250 ms) is found only if it keeps the environment tag.

Which one is used is logged once at start (``event=jobs.containment mode=...``).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pploy import log

PR_SET_CHILD_SUBREAPER = 36
TRACK_INTERVAL = 0.25
IDLE_REAP_INTERVAL = 2.0


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` on pure-v2 hosts,
    ``/sys/fs/cgroup/unified`` on hybrid ones), or None."""
    try:
        with open(mountinfo) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
            return Path(fields[0].split()[4])
    return None


def own_cgroup(proc_cgroup: str = "/proc/self/cgroup") -> str | None:
    """pploy's own cgroup v2 path (the ``0::`` line), e.g. ``/system.slice/pploy.service``."""
    try:
        with open(proc_cgroup) as fh:
            for line in fh:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def process_start(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): a pid plus this names one process,
    even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_table() -> dict[int, tuple[int, str, int]]:
    """Every process, from /proc: pid -> (parent pid, state, session id)."""
    table = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry)] = (int(fields[1]), fields[0], int(fields[3]))
    return table


class Containment:
    """Puts each job's processes where they can all be ended; see the module docstring."""

    mode = "none"

    def preexec(self, job_id: int) -> Callable[[], None] | None:
        """What the job's first process runs before ``exec`` (None: nothing)."""
        return None

    def started(self, job_id: int, pid: int) -> None:
        """The job's step ``pid`` is running."""

    async def kill(self, job_id: int) -> int:
        """SIGKILL every process the job started that is still alive; how many were."""
        return 0

    def finished(self, job_id: int) -> None:
        """The job ended; forget it (a daemon it left on purpose keeps running)."""

    def recover(self, job_ids: Iterable[int]) -> int:
        """After a crash: kill what the jobs a crash left running still have; how many."""
        return 0

    def close(self) -> None:
        """pploy stops: remove what is empty."""


class CgroupContainment(Containment):
    """One cgroup v2 per job under ``base``."""

    mode = "cgroup"

    def __init__(self, base: Path) -> None:
        self.base = base

    @classmethod
    def create(cls, workdir: Path) -> CgroupContainment:
        """Make ``pploy-<workdir hash>`` under pploy's own cgroup and check that a process can
        be moved into a child of it; OSError when the machine does not allow it."""
        mount = cgroup2_mount()
        own = own_cgroup()
        if mount is None or own is None:
            raise OSError(errno.ENOENT, "no cgroup v2 hierarchy is mounted")
        digest = hashlib.sha256(str(workdir).encode()).hexdigest()[:12]
        base = mount / own.lstrip("/") / f"pploy-{digest}"
        base.mkdir(exist_ok=True)
        self = cls(base)
        probe = base / "probe"
        probe.mkdir(exist_ok=True)
        try:
            # The same mechanism a job uses (a write to cgroup.procs before exec); a refused
            # write fails the run with SubprocessError.
            subprocess.run(
                ["/bin/sh", "-c", ":"], preexec_fn=self.preexec_for(probe), check=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except (subprocess.SubprocessError, OSError) as exc:
            _rmdir(probe)
            _rmdir(base)
            raise OSError(errno.EPERM, f"cannot move a process into {probe}: {exc}") from None
        _rmdir(probe)
        return self

    def job_dir(self, job_id: int) -> Path:
        return self.base / f"job-{job_id}"

    @staticmethod
    def _enter(path: Path) -> None:
        """Move the calling process into the cgroup at ``path`` ("0" means the writer)."""
        fd = os.open(path / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def preexec(self, job_id: int) -> Callable[[], None]:
        path = self.job_dir(job_id)
        path.mkdir(parents=True, exist_ok=True)
        return self.preexec_for(path)

    def preexec_for(self, path: Path) -> Callable[[], None]:
        enter = self._enter
        return lambda: enter(path)

    def pids(self, job_id: int) -> list[int]:
        return [int(p) for p in _read(self.job_dir(job_id) / "cgroup.procs").split()]

    def _kill_now(self, job_id: int) -> int:
        path = self.job_dir(job_id)
        pids = self.pids(job_id)
        if not pids:
            return 0
        try:
            (path / "cgroup.kill").write_text("1")  # Linux 5.14+: the kernel kills them all
        except OSError:
            for pid in pids:  # older kernels: one by one, until the cgroup is empty
                _sigkill(pid)
        return len(pids)

    async def kill(self, job_id: int) -> int:
        count = self._kill_now(job_id)
        for _ in range(100):  # SIGKILL is asynchronous: wait until they are really gone
            if not self.pids(job_id):
                break
            self._kill_now(job_id)
            await asyncio.sleep(0.02)
        return count

    def finished(self, job_id: int) -> None:
        _rmdir(self.job_dir(job_id))  # fails, harmlessly, while a daemon it left lives

    def recover(self, job_ids: Iterable[int]) -> int:
        count = 0
        ids = list(job_ids)
        for job_id in ids:
            count += self._kill_now(job_id)
        for _ in range(100):  # wait until they are gone
            if not any(self.pids(job_id) for job_id in ids):
                break
            time.sleep(0.02)
        # Only these jobs' cgroups: another job's runner may be about to enter its own.
        for job_id in ids:
            _rmdir(self.job_dir(job_id))
        return count

    def _sweep(self) -> None:
        """Remove the cgroups of jobs that have nothing left."""
        try:
            children = list(self.base.glob("job-*"))
        except OSError:
            return
        for child in children:
            _rmdir(child)

    def close(self) -> None:
        # A process killed just now may be listed for a moment longer: retry briefly (the
        # cgroups of live daemons a deploy left on purpose stay).
        deadline = time.monotonic() + 0.5
        while True:
            self._sweep()
            if not any(self.base.glob("job-*")) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        _rmdir(self.base)


class SubreaperContainment(Containment):
    """pploy as child subreaper plus a /proc tracker of each job's descendants."""

    mode = "subreaper"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.leaders: dict[int, set[int]] = {}
        self.tracked: dict[int, dict[int, int]] = {}  # job -> pid -> start time
        # Processes of finished jobs (daemons a deploy started on purpose): never another's.
        self.released: dict[int, int] = {}
        self._tracker: asyncio.Task[None] | None = None

    @classmethod
    def create(cls, workdir: Path, reaper: bool = True) -> SubreaperContainment:
        """``reaper``: this process becomes the subreaper (a job's runner); without it, the
        object only ends what the runners' pid lists name (``pploy serve``'s recovery)."""
        if reaper:
            _set_subreaper(True)
        run_dir = workdir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(run_dir)

    def started(self, job_id: int, pid: int) -> None:
        self.leaders.setdefault(job_id, set()).add(pid)
        self._remember(job_id, [pid])
        if self._tracker is None or self._tracker.done():
            self._tracker = asyncio.get_running_loop().create_task(self._track())

    def _remember(self, job_id: int, pids: Iterable[int]) -> None:
        known = self.tracked.setdefault(job_id, {})
        new = False
        for pid in pids:
            start = process_start(pid)
            if start is not None and known.get(pid) != start:
                known[pid] = start
                new = True
        if new:
            text = "".join(f"{pid} {start}\n" for pid, start in known.items())
            try:
                (self.run_dir / f"job-{job_id}.pids").write_text(text)
            except OSError:
                pass  # the in-memory list still serves; recovery falls back on the tag

    def look(self) -> None:
        """Record every current descendant of each job's known processes, and reap the
        job's orphans that died (pploy adopted them, so it must collect their status)."""
        table = process_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        me, my_session = os.getpid(), os.getsid(0)
        leaders = {pid for pids in self.leaders.values() for pid in pids}
        claimed = {pid for known in self.tracked.values() for pid in known}
        for pid in children.get(me, []):
            # Adopted processes that died: not a leader (asyncio waits for those) nor one of
            # pploy's own children (git, in pploy's session, also awaited by asyncio).
            ppid, state, session = table[pid]
            if state == "Z" and pid not in leaders and session != my_session:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        # Adopted before a look saw it: not pploy's own child (those share its session) and
        # not a job's leader. With one job running, it is that job's.
        self.released = {
            pid: start for pid, start in self.released.items()
            if pid in table and table[pid][1] != "Z"
        }  # fmt: skip
        orphans = [
            pid for pid in children.get(me, [])
            if pid not in claimed and pid not in leaders and pid not in self.released
            and table[pid][2] != my_session
        ]  # fmt: skip
        for job_id, known in self.tracked.items():
            todo = [pid for pid in known if pid in table]
            found: list[int] = []
            while todo:
                pid = todo.pop()
                for child in children.get(pid, []):
                    if child not in known and child not in found:
                        found.append(child)
                        todo.append(child)
            if len(self.tracked) == 1:
                found += orphans
            self._remember(job_id, found)

    async def _track(self) -> None:
        """Look often while jobs run; now and then otherwise, to reap adopted daemons."""
        while True:
            self.look()
            await asyncio.sleep(TRACK_INTERVAL if self.tracked else IDLE_REAP_INTERVAL)

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.cancel()
        try:
            _set_subreaper(False)  # pploy is done; orphans go to init again
        except OSError:
            pass

    def _alive(self, job_id: int) -> list[int]:
        return [pid for pid, start in self.tracked.get(job_id, {}).items()
                if process_start(pid) == start]  # fmt: skip

    async def kill(self, job_id: int) -> int:
        self.look()
        count = 0
        for _ in range(100):
            alive = self._alive(job_id)
            if not alive:
                break
            for pid in alive:
                count += _sigkill(pid)
            await asyncio.sleep(0.02)
            self.look()
        return count

    def finished(self, job_id: int) -> None:
        self.look()
        self.leaders.pop(job_id, None)
        self.released.update(self.tracked.pop(job_id, {}))
        _unlink(self.run_dir / f"job-{job_id}.pids")

    def recover(self, job_ids: Iterable[int]) -> int:
        count = 0
        for job_id in job_ids:
            path = self.run_dir / f"job-{job_id}.pids"
            for line in _read(path).splitlines():
                pid, start = (int(x) for x in line.split())
                if process_start(pid) == start:
                    count += _sigkill(pid)
            _unlink(path)
        return count


class ContainmentError(Exception):
    """The containment the configuration asks for is not available (a configuration error:
    jobs.py raises it as one)."""


def create_containment(workdir: Path, mode: str = "auto", reaper: bool = True) -> Containment:
    """The containment ``mode`` asks for (``auto``: cgroup where the machine allows it,
    else subreaper), logged once at start. ``reaper``: see SubreaperContainment.create."""
    reason = "job.containment is subreaper"
    if mode in ("auto", "cgroup"):
        try:
            cgroup = CgroupContainment.create(workdir)
        except OSError as exc:
            reason = f"cgroup v2 not usable: {exc.strerror or exc}"
            if mode == "cgroup":
                raise ContainmentError(f"job.containment is cgroup, but {reason}") from None
        else:
            log.event("jobs.containment", mode="cgroup", path=str(cgroup.base))
            return cgroup
    try:
        found = SubreaperContainment.create(workdir, reaper)
    except OSError as exc:
        log.event(
            "jobs.containment", level="warning", mode="none",
            reason=f"{reason}; subreaper: {exc.strerror or exc}",
        )  # fmt: skip
        return Containment()
    log.event("jobs.containment", level="warning" if mode == "auto" else "info",
              mode="subreaper", reason=reason)  # fmt: skip
    return found


def _set_subreaper(on: bool) -> None:
    """Make this process the child subreaper of its descendants (or stop being it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _sigkill(pid: int) -> int:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return 0
    return 1
