"""Jobs: checkouts and deploys, each run by a runner process of its own (runner.py).

A job is started by a request but never runs inside it, nor inside ``pploy serve``: serve
creates its record, hands it to a runner, and follows the runner's output over a unix socket
into a memory tail (follow.MirrorLog) that its viewers read; closing the tab, restarting or
killing serve neither stops nor orphans a deploy. On start, serve follows again the runners of
its workdir. One job per project at a time (the database's index says so). Each job's end is
announced (``job.finished``) once, by whoever claims it first (:meth:`Jobs.announce`): also a
job that ended while no serve followed it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pploy import log
from pploy.deploy.config import Config, ConfigError
from pploy.deploy.domain import git, names
from pploy.deploy.domain.errors import BadRequest, Conflict, NotFound, Unavailable
from pploy.deploy.domain.locks import Locks
from pploy.deploy.domain.projects import Project, Projects
from pploy.deploy.domain.records import JobAlreadyRunning, JobRecord, Storage, StoreUnavailable
from pploy.deploy.jobs.containment import CgroupContainment, ContainmentError, create_containment
from pploy.deploy.jobs.following import LogBuffer, MirrorLog, read_file_range
from pploy.deploy.jobs.latestlog import point_latest
from pploy.deploy.jobs.runner import (
    LOCK_KEEP_MARGIN,
    SHUTDOWN_USER,
    frame,
    job_file,
    note,
    read_fence,
    read_frame,
    run_dir,
    runner_alive,
    short_path,
    spawn_argv,
)
from pploy.deploy.jobs.runner import signal_name as signal_name
from pploy.deploy.jobs.terminal import JOB_TAG_VAR, kill_tagged
from pploy.deploy.jobs.workdir import hold_workdir

if TYPE_CHECKING:  # psycopg is imported only with a shared database
    from pploy.deploy.jobs.sharedlog import SharedLogs

# What a runner's end frame holds of the job's record.
END_FIELDS = (
    "sha", "status", "exit_code", "signal", "ended_at", "cancelled_by", "message", "log_bytes",
)  # fmt: skip

# The fence guard: how often serve looks, and how late past its fence a runner must be.
GUARD_INTERVAL = 0.5
GUARD_SLACK = 1.0
# How often pploy looks for ends nobody announced (job.finished): jobs that ended while no
# pploy followed them; and how long ago another instance's job must have ended (that
# instance, following it, usually announces it first).
ANNOUNCE_SECONDS = 2.0
ANNOUNCE_GRACE_SECONDS = 5.0

_note = note  # one of pploy's own lines (runner.note), for cluster.py


@dataclass
class RunningJob:
    """A job this pploy follows: its runner's output mirrored in ``buffer``."""

    record: JobRecord
    buffer: MirrorLog
    task: asyncio.Task[None] | None = None
    cancelled_by: str | None = None
    writer: asyncio.StreamWriter | None = None  # the runner's socket, while connected
    runner_pid: int | None = None


class Jobs:
    def __init__(
        self,
        config: Config,
        store: Storage,
        projects: Projects,
        locks: Locks,
        on_finish: Callable[[JobRecord], None] | None = None,
        on_start: Callable[[JobRecord], None] | None = None,
    ) -> None:
        # First: a second pploy on this workdir must stop here, before its recovery would
        # take the first one's running jobs for a crash's leftovers.
        self.workdir_lock = hold_workdir(config.workdir)
        self.config = config
        self.store = store
        self.projects = projects
        self.locks = locks
        self.on_finish = on_finish
        self.on_start = on_start
        self.running: dict[int, RunningJob] = {}
        # Ends the runners told of that the database has not taken yet (a full disk): shown
        # by get() until it has (the runners keep trying), and written first by _create_job.
        self._unsaved: dict[int, dict[str, Any]] = {}
        self._unsaved_epochs: dict[int, int | None] = {}
        self.accepting = True
        self._guard: asyncio.Task[None] | None = None  # _guard_fences, with a shared database
        self._announcer: asyncio.Task[None] | None = None  # _announce_ended, every few seconds
        # Job ids repeat across workdirs; the tag that marks a job's processes must not.
        self._tag_prefix = hashlib.sha256(str(config.workdir.resolve()).encode()).hexdigest()[:12]
        # This pploy among those sharing a database: the same after a restart (its workdir),
        # so that it recovers its own jobs and no other's.
        self.instance = f"{socket.gethostname()}-{self._tag_prefix}"
        # With a shared database: logs shipped to and followed from other instances.
        self.shared_logs: SharedLogs | None = None
        # Where every process of a job ends up, so that cancel, timeout and recovery end all.
        # (The runners contain the jobs; serve only ends what a dead runner's job left.)
        try:
            self.containment = create_containment(
                config.workdir, config.job.containment, reaper=False
            )
        except ContainmentError as exc:
            self.workdir_lock.release()
            raise ConfigError(str(exc)) from None
        except BaseException:
            self.workdir_lock.release()
            raise

    def job_tag(self, job_id: int) -> str:
        return f"{self._tag_prefix}-{job_id}"

    # -- queries -------------------------------------------------------------

    def running_for(self, project: str) -> RunningJob | None:
        for job in self.running.values():
            if job.record.project == project:
                return job
        return None

    def running_record(self, project: str) -> JobRecord | None:
        """The project's running job, here or (with a shared database) on another instance."""
        job = self.running_for(project)
        if job is not None:
            return job.record
        if self.shared_logs is None:
            return None
        last = self.store.last_job(project)
        return last if last is not None and last.running else None

    def get(self, job_id: int) -> JobRecord:
        record = self.store.get_job(job_id)
        if record is None:
            raise NotFound(f"no job {job_id}")
        unsaved = self._unsaved.get(job_id)
        if unsaved and not record.running:  # landed
            self._unsaved.pop(job_id, None)
            self._unsaved_epochs.pop(job_id, None)
            return record
        return replace(record, **unsaved) if unsaved else record

    def log_path(self, record: JobRecord) -> Path:
        return self.projects.log_dir(record.project) / f"{record.id}.log"

    def live_buffer(self, job_id: int) -> LogBuffer | None:
        job = self.running.get(job_id)
        return job.buffer if job else None

    def remote_log(self, record: JobRecord) -> LogBuffer | None:
        """With a shared database, the log of a job another instance runs (or ran: its file
        is there, not here), read from the database; None otherwise."""
        if self.shared_logs is None or record.id in self.running:
            return None
        if not record.running and self.log_path(record).exists():
            return None
        return self.shared_logs.open(record)

    @staticmethod
    def final_status(record: JobRecord) -> dict[str, Any]:
        return {
            "id": record.id,
            "status": record.status,
            "exit_code": record.exit_code,
            "signal": record.signal,
            "ended_at": record.ended_at,
            "cancelled_by": record.cancelled_by,
            "message": record.message,
        }

    # -- start ---------------------------------------------------------------

    def _check_can_start(self, project: Project, user: str) -> None:
        if not self.accepting:
            raise Unavailable("pploy is shutting down and takes no new jobs")
        self.locks.require_holder(project.name, user)
        running = self.running_for(project.name)
        if running:
            raise Conflict(
                f"{running.record.kind} job #{running.record.id} by {running.record.user} "
                f"is still running on {project.name}"
            )

    async def deploy_commit(self, project: Project, env: str, user: str) -> str | None:
        """The commit a deploy of ``project`` to ``env`` by ``user`` would ship, once the rules
        every deploy passes hold (a known env, a deploy script, the lock, no job running)."""
        try:
            names.env_name(env)
        except names.InvalidName as exc:
            raise BadRequest(str(exc)) from exc
        self._check_can_start(project, user)
        problem = await asyncio.to_thread(project.deploy_problem)  # reads the clone: off the loop
        if problem:
            raise BadRequest(problem)
        envs = await asyncio.to_thread(project.deploy_envs)
        if env not in envs:
            raise BadRequest(f"unknown environment {env!r}; {project.name} has {', '.join(envs)}")
        sha = await git.head_sha(str(project.path))
        self._check_can_start(project, user)  # again: the await above let others in
        return sha

    async def start_deploy(
        self, project: Project, env: str, user: str, token: str | None = None
    ) -> JobRecord:
        sha = await self.deploy_commit(project, env, user)
        steps: list[tuple[list[str], dict[str, str], str]] = []
        wanted = self._checked_out_elsewhere(project.name, sha)
        if wanted:  # another instance's checkout: this clone follows it first
            sha = wanted
            steps += self._follow_steps(wanted)
        record = self._create_job(
            project=project.name, kind="deploy", env=env, user=user, sha=sha, ref=None,
            token=token,
        )  # fmt: skip
        env_vars = {"DEPLOY_ENV": env, "DEPLOY_USER": user}
        echo = f"$ DEPLOY_ENV={env} DEPLOY_USER={user} .deploy/bin/deploy"  # as the README says
        steps.append(([str(project.deploy_script)], env_vars, echo))
        self._launch(record, project, steps)
        return record

    @staticmethod
    def _follow_steps(sha: str) -> list[tuple[list[str], dict[str, str], str]]:
        """Commands that bring this clone to ``sha`` (another instance checked it out)."""
        return [
            (argv, {}, "$ " + " ".join(argv))
            for argv in (
                ["git", "fetch", "--prune", "--tags", "--force", "origin"],
                ["git", "checkout", "-f", "--detach", sha],
            )
        ]

    def shipped_commit(self, project: str, head: str | None) -> str | None:
        """The commit a deploy ships, given this clone's ``head``: with a shared database, the
        one the project's last checkout (on any instance) left."""
        return self._checked_out_elsewhere(project, head) or head

    def launch_approved(
        self, record: JobRecord, approved_by: list[str], head: str | None
    ) -> JobRecord:
        """Run a deploy that waited for approval (config ``approvals``; governance.approve
        checked the approver, the commit and the lock): its record turns from
        ``awaiting_approval`` to ``running`` in one statement (two approvers cannot both start
        it), with a fresh lease for its runner to take (``lease_seconds``), then it runs as any
        deploy, on the approved commit (this clone, at ``head``, follows it first when another
        instance checked it out)."""
        project = self.projects.get(record.project)
        self._check_can_start(project, record.user)
        now = time.time()
        if not self.store.settle_job(
            record.id, "awaiting_approval", status="running", approved_by=approved_by,
            started_at=now, instance=self.instance, heartbeat_at=now,
            lease_seconds=self.config.job.lease_seconds,
        ):  # fmt: skip
            raise Conflict(f"job #{record.id} is no longer awaiting approval")
        record = self.get(record.id)
        env_vars = {"DEPLOY_ENV": record.env or "", "DEPLOY_USER": record.user}
        echo = f"$ DEPLOY_ENV={record.env} DEPLOY_USER={record.user} .deploy/bin/deploy"
        steps = self._follow_steps(record.sha) if record.sha and record.sha != head else []
        self._launch(record, project, [*steps, ([str(project.deploy_script)], env_vars, echo)])
        return record

    async def start_checkout(
        self, project: Project, ref: str, user: str, token: str | None = None
    ) -> JobRecord:
        try:
            names.ref_name(ref)
        except names.InvalidName as exc:
            raise BadRequest(str(exc)) from exc
        self._check_can_start(project, user)
        problem = project.checkout_problem()
        if problem:
            raise BadRequest(problem)
        record = self._create_job(
            project=project.name, kind="checkout", ref=ref, user=user, token=token
        )
        self._launch(record, project, None)
        return record

    def _create_job(self, **fields: Any) -> JobRecord:
        """The job's record, by this instance. The database allows one running job per
        project; when the one it still holds has in fact ended here (an end the database
        refused, kept in memory), that end is written first: the answer is then the real
        cause (503, a full disk) rather than a conflict with a finished job."""
        lease = self.config.job.lease_seconds
        try:
            return self.store.create_job(**fields, instance=self.instance, lease_seconds=lease)
        except JobAlreadyRunning:
            if not self._unsaved:
                raise
        for job_id, saved in list(self._unsaved.items()):
            # StoreUnavailable: still full
            self.store.write_job(job_id, self._unsaved_epochs.get(job_id), **saved)
            del self._unsaved[job_id]
        return self.store.create_job(**fields, instance=self.instance, lease_seconds=lease)

    def _checked_out_elsewhere(self, project: str, head: str | None) -> str | None:
        """With a shared database, the commit the project's last checkout (on any instance)
        left, when this clone's HEAD is another; None otherwise."""
        if self.shared_logs is None:
            return None
        checkout = self.store.last_job(project, "checkout")
        if checkout and checkout.status == "succeeded" and checkout.sha and checkout.sha != head:
            return checkout.sha
        return None

    def _launch(
        self,
        record: JobRecord,
        project: Project,
        steps: list[tuple[list[str], dict[str, str], str]] | None,
    ) -> None:
        """Hand the job to a runner of its own (runner.py) and follow it."""
        if record.kind == "deploy":
            point_latest(self.log_path(record), record.project)  # go-pploy's logs/<p>.log
        if steps is None and project.checkout_script:
            steps = [(
                [str(project.checkout_script)], {"DEPLOY_COMMIT": record.ref or ""},
                f"$ DEPLOY_COMMIT={record.ref} .deploy/bin/checkout_overwrite",
            )]  # fmt: skip
        try:  # at once: the runner keeps it from now on, once it has started
            self.locks.keep_until(record.project, record.user, time.time() + LOCK_KEEP_MARGIN)
        except StoreUnavailable:
            pass
        job = RunningJob(record, MirrorLog(self.log_path(record)))
        self.running[record.id] = job
        job.task = asyncio.get_running_loop().create_task(
            self._spawn_and_follow(job, self._spec(record, project, steps))
        )
        log.event(
            "job.start", job=record.id, project=record.project, kind=record.kind,
            env=record.env, ref=record.ref, user=record.user,
        )  # fmt: skip
        if self.on_start:
            self.on_start(record)

    def _spec(
        self,
        record: JobRecord,
        project: Project,
        steps: list[tuple[list[str], dict[str, str], str]] | None,
    ) -> dict[str, Any]:
        """Everything the runner needs, so that it reads no configuration of its own."""
        job = self.config.job
        containment: dict[str, Any] = {"containment": self.containment.mode}
        if isinstance(self.containment, CgroupContainment):
            containment["cgroup_base"] = str(self.containment.base)
        return {
            "workdir": str(self.config.workdir),
            "database": self.config.database,
            "job": record.id,
            "project": record.project,
            "kind": record.kind,
            "user": record.user,
            "ref": record.ref,
            "cwd": str(project.path),
            "log": str(self.log_path(record)),
            "steps": steps,
            "tag": self.job_tag(record.id),
            "env": {
                "TERM": "xterm-256color",
                "DEPLOY_PROJECT": project.name,
                JOB_TAG_VAR: self.job_tag(record.id),
                "COLUMNS": str(job.pty_columns),
                "LINES": str(job.pty_rows),
            },
            "timeout_seconds": job.timeout_minutes * 60,
            "cancel_grace_seconds": list(job.cancel_grace_seconds),
            "max_log_bytes": job.max_log_bytes,
            "mask_env": list(job.mask_env),  # names only: the runner reads the values
            "keep_logs": job.keep_logs,
            "pty_columns": job.pty_columns,
            "pty_rows": job.pty_rows,
            "lease_seconds": job.lease_seconds,
            "fence_seconds": job.fence_seconds,
            **containment,
        }

    async def _spawn_and_follow(self, job: RunningJob, spec: dict[str, Any]) -> None:
        """Start the runner fully detached and follow it. The runner forks once more and its
        first process exits at once: it is no child of pploy's (a restart or a crash of pploy
        is nothing to it). Its lock is taken here, before it starts, and handed to it, so that
        it counts as alive from the first moment (runner_alive)."""
        job_id = job.record.id
        workdir = self.config.workdir
        run_dir(workdir).mkdir(mode=0o700, parents=True, exist_ok=True)
        spec_file = job_file(workdir, job_id, "json")
        lock_fd = -1
        try:
            os.chmod(run_dir(workdir), 0o700)  # sockets and specs (a database URL) are pploy's
            fd = os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(spec))
            lock_fd = os.open(
                job_file(workdir, job_id, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            with open(job_file(workdir, job_id, "out"), "ab") as out:
                proc = subprocess.Popen(
                    [*spawn_argv(spec_file), str(lock_fd)],
                    cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True, pass_fds=(lock_fd,),
                )  # fmt: skip
        except OSError as exc:
            if lock_fd >= 0:
                os.close(lock_fd)
            log.event("job.spawn_failed", level="error", job=job_id, error=str(exc))
            self._end_lost(job, f"its runner could not be started: {exc}")
            return
        os.close(lock_fd)  # the runner holds it now
        job.runner_pid = proc.pid
        await asyncio.to_thread(proc.wait)  # the first process exits once it has forked
        await self._follow(job)

    async def _follow(self, job: RunningJob) -> None:
        """Follow the runner's socket: the log from our offset, then live, then the end; a
        connection lost (a follower that lagged is dropped) is made again from our offset.
        When the runner is gone without an end, the job is lost (:meth:`_lost`)."""
        job_id = job.record.id
        path = job_file(self.config.workdir, job_id, "sock")
        while True:
            try:
                with short_path(path) as name:
                    reader, writer = await asyncio.open_unix_connection(name)
            except OSError:
                if not runner_alive(self.config.workdir, job_id):
                    break
                await asyncio.sleep(0.02)  # the runner is starting
                continue
            job.writer = writer
            try:
                writer.write(frame(b"O", str(job.buffer.size).encode()))
                if job.cancelled_by:
                    writer.write(frame(b"C", json.dumps({"user": job.cancelled_by}).encode()))
                while True:
                    kind, payload = await read_frame(reader)
                    if kind == b"D":
                        job.buffer.feed(payload)
                    elif kind in (b"E", b"U"):
                        self._ended(job, json.loads(payload))
                        return
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                pass
            finally:
                job.writer = None
                writer.close()
            if not runner_alive(self.config.workdir, job_id):
                break
            await asyncio.sleep(0.02)
        await self._lost(job)

    def _ended(self, job: RunningJob, end: dict[str, Any]) -> None:
        """The runner says how the job ended (``saved`` False: the database has not taken it
        yet; the runner keeps trying, and until then :meth:`get` shows this end)."""
        record = job.record
        fields = {key: end[key] for key in END_FIELDS if key in end}
        if not end.get("saved", True):
            self._unsaved[record.id] = fields
            self._unsaved_epochs[record.id] = end.get("epoch")
        try:
            final = self.get(record.id)
        except StoreUnavailable:
            final = replace(record, **fields)
        if final.running:  # recorded by nobody (fenced out): what the runner saw
            final = replace(final, **fields)
        if job.buffer.size < (final.log_bytes or 0):
            self._catch_up(job)
        job.buffer.finish(self.final_status(final))
        self.running.pop(record.id, None)
        log.event(
            "job.end", job=record.id, project=record.project, status=final.status,
            exit_code=final.exit_code, signal=final.signal, seconds=round(final.duration, 3),
        )  # fmt: skip
        self.announce(record.id)

    def _catch_up(self, job: RunningJob) -> None:
        """Feed the mirror what the log file holds beyond it (the runner is gone: what it
        wrote last was never sent, e.g. to a follower it had dropped for lagging)."""
        path = self.log_path(job.record)
        while data := read_file_range(path, job.buffer.size, 1 << 20):
            job.buffer.feed(data)

    async def _lost(self, job: RunningJob) -> None:
        """The runner is gone without telling the end: recorded by it after all, or it died
        (killed, or its machine's pploy user's processes were); then its job's processes are
        ended and the job is recorded ``interrupted``."""
        record = job.record
        try:
            current = self.store.get_job(record.id)
        except StoreUnavailable:
            current = None
        if current is not None and not current.running:
            self._catch_up(job)
            job.buffer.finish(self.final_status(current))
            self.running.pop(record.id, None)
            self.announce(record.id)
            return
        await asyncio.to_thread(self._end_leftovers, record.id)
        self._end_lost(job, "its runner died")

    def _end_leftovers(self, job_id: int) -> int:
        """SIGKILL what a job whose runner is dead left: its cgroup (or the pids its runner
        tracked), then whatever carries its tag; its run files go."""
        killed = self.containment.recover([job_id]) + kill_tagged(self.job_tag(job_id))
        if killed:
            log.event("job.orphans_killed", level="warning", job=job_id, count=killed)
        for suffix in ("sock", "json", "fence", "lock", "pids"):
            try:
                job_file(self.config.workdir, job_id, suffix).unlink()
            except FileNotFoundError:
                pass
        return killed

    def _end_lost(self, job: RunningJob, reason: str) -> None:
        record = self._interrupt(job.record, reason)
        self._catch_up(job)  # what the runner wrote last, and the note
        job.buffer.finish(self.final_status(record))
        self.running.pop(job.record.id, None)
        self.announce(record.id)

    # -- announcing ends ---------------------------------------------------------

    def announce(self, job_id: int) -> bool:
        """Send the job's end (``on_finish``: job.finished) if this pploy is the first to
        claim it (storage: ``announce_job``); a database that cannot answer now leaves it to
        :meth:`announce_ended`. True when sent here."""
        try:
            record = self.store.announce_job(job_id)
        except StoreUnavailable:
            return False
        if record is None:  # sent by another, or its end is not recorded yet
            return False
        log.event("job.announced", job=job_id, status=record.status)
        if self.on_finish:
            self.on_finish(record)
        return True

    def announce_ended(self) -> list[int]:
        """Announce the ends nobody announced: jobs that ended while no pploy followed them
        (this one was down, their instance is gone), or whose end landed late (a full disk).
        Another instance's job only ANNOUNCE_GRACE_SECONDS after its end (that instance,
        following it, comes first). Returns the ids sent here."""
        grace = ANNOUNCE_GRACE_SECONDS if self.store.shared else 0.0
        try:
            found = self.store.unannounced_jobs(self.instance, grace)
        except StoreUnavailable:
            return []
        return [record.id for record in found if self.announce(record.id)]

    async def _announce_ended(self) -> None:
        while True:
            await asyncio.sleep(ANNOUNCE_SECONDS)
            try:
                self.announce_ended()
            except Exception as exc:  # a refused statement: logged, looked at again later
                log.event("job.announce_failed", level="error", error=str(exc))

    def _interrupt(self, record: JobRecord, reason: str) -> JobRecord:
        """Close the log of a job nobody runs any more with a note, and record it
        ``interrupted`` (moving its lease on, so nothing late is written for it)."""
        line = _note(f"[pploy] interrupted: {reason}")
        path = self.log_path(record)
        size = 0
        try:
            size = path.stat().st_size
            with open(path, "rb+") as fh:
                fh.seek(-1 if size else 0, os.SEEK_END)
                newline = b"" if fh.read(1) in (b"\n", b"") else b"\n"
                fh.write(newline + line)
            size = path.stat().st_size
        except FileNotFoundError:
            pass
        except OSError as exc:  # a full disk must not keep pploy from going on
            log.event("job.log_write_failed", level="error", job=record.id, error=exc.strerror)
        if self.shared_logs is not None:
            try:
                size = self.shared_logs.close_log(record.id, path, line)
            except StoreUnavailable:
                pass
        fields: dict[str, Any] = {
            "status": "interrupted", "ended_at": time.time(), "log_bytes": size, "message": reason,
        }  # fmt: skip
        try:
            self.store.interrupt_job(record.id, message=reason, log_bytes=size)
        except StoreUnavailable as exc:
            log.event("job.record_failed", level="error", job=record.id, error=exc.message)
        log.event("job.interrupted", level="warning", job=record.id, project=record.project,
                  reason=reason)  # fmt: skip
        try:
            found = self.store.get_job(record.id)
        except StoreUnavailable:
            found = None
        return found if found is not None and not found.running else replace(record, **fields)

    # -- stop ----------------------------------------------------------------

    def cancel(self, job_id: int, user: str) -> JobRecord:
        """Cancel a running job; only the project's lock holder may."""
        record = self.get(job_id)
        job = self.running.get(job_id)
        if job is None and record.running and self.shared_logs is not None:
            # Run by another instance: recorded in the job's row, which its runner reads
            # itself (so the cancel lands while that instance is down), and that instance is
            # told at once (cluster.Cluster listens).
            self.locks.require_holder(record.project, user)
            self.store.request_cancel(job_id, user)
            self.shared_logs.request_cancel(job_id, user)
            return record
        if job is None:
            raise Conflict(f"job #{job_id} is not running (it is {record.status})")
        self.locks.require_holder(record.project, user)
        try:  # the fallback; the runner's socket is the fast path
            self.store.request_cancel(job_id, user)
        except StoreUnavailable as exc:
            log.event("job.cancel_record_failed", level="warning", job=job_id, error=exc.message)
        self.cancel_running(job, user)
        return record

    def cancel_running(self, job: RunningJob, user: str) -> None:
        """Stop a job this instance follows: its runner is told (who cancelled is recorded)."""
        if job.cancelled_by:
            return
        job.cancelled_by = user
        log.event("job.cancel", job=job.record.id, user=user)
        if job.writer is not None and not job.writer.is_closing():
            job.writer.write(frame(b"C", json.dumps({"user": user}).encode()))
        # else: sent as soon as the connection is made (_follow)

    # -- lifecycle -----------------------------------------------------------

    def recover(self) -> list[int]:
        """At start: follow again the jobs whose runners still run (they show ``running``,
        viewers resume by offset, cancel works); record ``interrupted`` those whose runner is
        gone, ending what they left; end what runners of jobs no longer running (declared
        lost by another instance) left. Returns the ids of the jobs interrupted."""
        workdir = self.config.workdir
        interrupted = []
        records = self.store.running_jobs(self.instance)
        loop = asyncio.get_running_loop()
        for record in records:
            if runner_alive(workdir, record.id):
                path = self.log_path(record)
                size = path.stat().st_size if path.exists() else 0
                job = RunningJob(record, MirrorLog(path, size))
                self.running[record.id] = job
                job.task = loop.create_task(self._follow(job))
                log.event("job.reattached", job=record.id, project=record.project, offset=size)
                continue
            self._end_leftovers(record.id)
            self._interrupt(record, "its runner stopped while pploy was away")
            interrupted.append(record.id)
        for job_id in self._stray_runs(set(self.running)):
            self._end_leftovers(job_id)
        self.announce_ended()  # what ended while this pploy was away (interrupted above too)
        self._announcer = loop.create_task(self._announce_ended())
        if self.store.shared:
            self._guard = loop.create_task(self._guard_fences())
        return interrupted

    async def _guard_fences(self) -> None:
        """The second guard of the fence (with a shared database): a runner still alive
        GUARD_SLACK seconds past its fence deadline (it was stopped, or is stuck) has its
        job's tree and itself SIGKILLed here; following it then records the job lost."""
        job = self.config.job
        slack = min(GUARD_SLACK, (job.lease_seconds - job.fence_seconds) / 3)
        while True:
            await asyncio.sleep(GUARD_INTERVAL)
            now = time.time()
            for job_id in list(self.running):
                fence = read_fence(self.config.workdir, job_id)
                if fence is None or now < fence + slack:
                    continue
                if not runner_alive(self.config.workdir, job_id):
                    continue
                log.event("job.fence_enforced", level="error", job=job_id, fence=fence)
                await asyncio.to_thread(self._kill_runner, job_id)

    def _kill_runner(self, job_id: int) -> None:
        """SIGKILL a job's tree, then its runner (the pid it wrote into its lock)."""
        self.containment.recover([job_id])
        kill_tagged(self.job_tag(job_id))
        try:
            pid = int(job_file(self.config.workdir, job_id, "lock").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    def _stray_runs(self, following: set[int]) -> list[int]:
        """Jobs with run files but no live runner, that this pploy does not follow."""
        found = set()
        try:
            names = os.listdir(run_dir(self.config.workdir))
        except FileNotFoundError:
            return []
        for name in names:
            stem = name.split(".", 1)[0]
            if stem.startswith("job-") and stem[4:].isdigit():
                found.add(int(stem[4:]))
        return [
            job_id for job_id in sorted(found - following)
            if not runner_alive(self.config.workdir, job_id)
        ]  # fmt: skip

    async def shutdown(self, grace: float) -> None:
        """Take no new jobs. With ``job.on_shutdown: leave`` (the default), running jobs go on
        under their runners; with ``cancel``, wait up to ``grace`` seconds for them, then
        cancel them and wait for their ends."""
        self.accepting = False
        tasks = [job.task for job in self.running.values() if job.task]
        if not tasks:
            return
        if self.config.job.on_shutdown == "leave":
            log.event("shutdown.leaving_jobs", jobs=sorted(self.running))
            return
        log.event("shutdown.waiting", jobs=len(tasks), grace=grace)
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            for job in list(self.running.values()):
                self.cancel_running(job, SHUTDOWN_USER)
            await asyncio.wait(pending, timeout=sum(self.config.job.cancel_grace_seconds) + 10)

    def close(self) -> None:
        """pploy stops: stop following (runners go on), remove the containment it set up when
        no job runs, free the workdir."""
        for job in self.running.values():
            if job.task is not None:
                job.task.cancel()
        for task in (self._guard, self._announcer):
            if task is not None:
                task.cancel()
        if not self.running:
            self.containment.close()
        self.workdir_lock.release()
