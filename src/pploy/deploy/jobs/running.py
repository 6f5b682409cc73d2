"""Jobs: checkouts and deploys running in the background under a pty.

A job is started by a request but never runs inside it: closing the tab neither stops nor
orphans a deploy. Its output goes to its log (see follow.LogBuffer), its record to SQLite.
One job per project at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pploy import log
from pploy.deploy.config import Config
from pploy.deploy.domain import git, masking, names
from pploy.deploy.domain.errors import BadRequest, Conflict, NotFound, Unavailable
from pploy.deploy.domain.locks import Locks
from pploy.deploy.domain.masking import Masker
from pploy.deploy.domain.projects import Project, Projects
from pploy.deploy.domain.records import JobAlreadyRunning, JobRecord, Storage, StoreUnavailable
from pploy.deploy.jobs.containment import create_containment
from pploy.deploy.jobs.following import LogBuffer, LogWriteError
from pploy.deploy.jobs.latestlog import point_latest
from pploy.deploy.jobs.terminal import JOB_TAG_VAR, PtyProcess, kill_tagged
from pploy.deploy.jobs.timeline import TimelineWriter, times_path
from pploy.deploy.jobs.workdir import hold_workdir

if TYPE_CHECKING:  # psycopg is imported only with a shared database
    from pploy.deploy.jobs.sharedlog import SharedLogs

# How long before expiry a running job's lock is pushed further out, and by how much.
LOCK_KEEP_MARGIN = 120.0
# How often a job end the database refused (a full disk) is tried again.
SAVE_RETRY_SECONDS = 1.0


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _note(text: str) -> bytes:
    """A line pploy itself writes into a log, set apart in bold cyan."""
    return f"\x1b[1;36m{text}\x1b[0m\n".encode()


@dataclass
class RunningJob:
    record: JobRecord
    buffer: LogBuffer
    task: asyncio.Task[None] | None = None
    process: PtyProcess | None = None
    cancelled_by: str | None = None
    timed_out: bool = False
    failure: str | None = None
    message: str | None = None
    stopping: asyncio.Task[str] | None = None
    watchers: list[Callable[[], None]] = field(default_factory=list)
    timeline: TimelineWriter | None = None  # when each piece of output arrived (timeline.py)
    masker: Masker | None = None  # job.mask_env and ::add-mask:: (masking.py)


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
        # Ends of jobs the database refused (a full disk), written by _save_later.
        self._unsaved: dict[int, dict[str, Any]] = {}
        self._retrier: asyncio.Task[None] | None = None
        self.accepting = True
        # Job ids repeat across workdirs; the tag that marks a job's processes must not.
        self._tag_prefix = hashlib.sha256(str(config.workdir.resolve()).encode()).hexdigest()[:12]
        # This pploy among those sharing a database: the same after a restart (its workdir),
        # so that it recovers its own jobs and no other's.
        self.instance = f"{socket.gethostname()}-{self._tag_prefix}"
        # With a shared database: logs shipped to and followed from other instances.
        self.shared_logs: SharedLogs | None = None
        # Where every process of a job ends up, so that cancel, timeout and recovery end all.
        try:
            self.containment = create_containment(config.workdir, config.job.containment)
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
        steps: list[tuple[list[str], dict, str]] = []
        wanted = self._checked_out_elsewhere(project.name, sha)
        if wanted:  # another instance's checkout: this clone follows it first
            sha = wanted
            steps += self._follow_steps(wanted)
        record = self._create_job(
            project=project.name, kind="deploy", env=env, user=user, sha=sha, ref=None,
            token=token,
        )
        env_vars = {"DEPLOY_ENV": env, "DEPLOY_USER": user}
        echo = f"$ DEPLOY_ENV={env} DEPLOY_USER={user} .deploy/bin/deploy"  # as the README says
        steps.append(([str(project.deploy_script)], env_vars, echo))
        self._launch(record, project, steps)
        return record

    @staticmethod
    def _follow_steps(sha: str) -> list[tuple[list[str], dict, str]]:
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
        it), then it runs as any deploy, on the approved commit (this clone, at ``head``,
        follows it first when another instance checked it out)."""
        project = self.projects.get(record.project)
        self._check_can_start(project, record.user)
        now = time.time()
        if not self.store.settle_job(
            record.id, "awaiting_approval", status="running", approved_by=approved_by,
            started_at=now, instance=self.instance, heartbeat_at=now,
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
        try:
            return self.store.create_job(**fields, instance=self.instance)
        except JobAlreadyRunning:
            if not self._unsaved:
                raise
        for job_id, saved in list(self._unsaved.items()):
            self.store.update_job(job_id, **saved)  # StoreUnavailable: still full
            del self._unsaved[job_id]
        return self.store.create_job(**fields, instance=self.instance)

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
        self, record: JobRecord, project: Project, steps: list[tuple[list[str], dict, str]] | None
    ) -> None:
        buffer = LogBuffer(self.log_path(record), max_bytes=self.config.job.max_log_bytes)
        if record.kind == "deploy":
            point_latest(self.log_path(record), record.project)  # go-pploy's logs/<p>.log
        if self.shared_logs is not None:
            buffer.on_write = self.shared_logs.ship(record.id, buffer.path)
        job = RunningJob(record, buffer, timeline=TimelineWriter(times_path(buffer.path)))
        job.masker = masking.for_env(self.config.job.mask_env, os.environ)
        self.running[record.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job, project, steps))
        log.event(
            "job.start", job=record.id, project=record.project, kind=record.kind,
            env=record.env, ref=record.ref, user=record.user,
        )  # fmt: skip
        if self.on_start:
            self.on_start(record)

    # -- run -----------------------------------------------------------------

    def _child_env(
        self, job: RunningJob, project: Project, extra: dict[str, str], hardened: bool
    ) -> dict[str, str]:
        """The environment of a job's process. pploy's own git commands (``hardened``) get
        git's hardening (no prompts, safe transports, C locale); the repository's scripts get
        pploy's environment as it is, as the originals ran them: git inside a deploy script
        behaves as it does in the shell pploy was started from."""
        base = git.git_env() if hardened else dict(os.environ)
        return (
            base
            | {
                "TERM": "xterm-256color",
                "DEPLOY_PROJECT": project.name,
                JOB_TAG_VAR: self.job_tag(job.record.id),
                "COLUMNS": str(self.config.job.pty_columns),
                "LINES": str(self.config.job.pty_rows),
            }
            | extra
        )

    def _write(self, job: RunningJob, data: bytes, note: bool = False) -> None:
        """Output (``note``: one of pploy's own lines) into the job's log."""
        if job.failure:
            return
        if job.timeline:
            job.timeline.note(job.buffer.size, time.time())
        try:
            if note:
                job.buffer.append(job.masker.flush() if job.masker else b"")  # held output first
                job.buffer.append_note(data)
            else:
                job.buffer.append(job.masker.feed(data) if job.masker else data)  # no secrets
        except LogWriteError as exc:
            job.failure = str(exc)
            log.event("job.log_write_failed", level="error", job=job.record.id, error=str(exc))
            self._stop(job)

    def _say(self, job: RunningJob, text: str) -> None:
        """One of pploy's own lines in the job's log (see follow.LogBuffer.append_note)."""
        self._write(job, _note(text), note=True)

    async def _run_step(
        self,
        job: RunningJob,
        project: Project,
        argv: Sequence[str],
        extra: dict[str, str],
        hardened: bool = False,
    ) -> int:
        job.stopping = None
        job.process = await PtyProcess.start(
            argv,
            cwd=str(project.path),
            env=self._child_env(job, project, extra, hardened),
            on_output=lambda data: self._write(job, data),
            columns=self.config.job.pty_columns,
            rows=self.config.job.pty_rows,
            preexec=self.containment.preexec(job.record.id),
        )
        self.containment.started(job.record.id, job.process.pid)
        if self._stopped(job):
            self._stop(job)
        try:
            return await job.process.wait()
        finally:
            if job.stopping is not None:
                await asyncio.shield(job.stopping)
                killed = await self._kill_leftovers(job.record.id)
                if killed:
                    self._say(job, f"[pploy] killed {killed} process(es) left behind")

    async def _kill_leftovers(self, job_id: int) -> int:
        """End what the job started that left its process group: everything in its cgroup
        (or tracked by the subreaper), then whatever still carries the job's tag."""
        killed = await self.containment.kill(job_id)
        return killed + kill_tagged(self.job_tag(job_id))

    async def _run(
        self, job: RunningJob, project: Project, steps: list[tuple[list[str], dict, str]] | None
    ) -> None:
        record = job.record
        keeper = asyncio.get_running_loop().create_task(self._keep_lock(job))
        timeout = asyncio.get_running_loop().call_later(
            self.config.job.timeout_minutes * 60, self._time_out, job
        )
        exit_code: int | None = None
        sig: int | None = None
        status = "failed"
        message: str | None = None
        try:
            returncode = await self._run_steps(job, project, steps)
            if returncode is None:
                message = job.failure or job.message
                exit_code = 1
            elif returncode < 0:
                sig = -returncode
            else:
                exit_code = returncode
            if job.failure:
                status, message = "failed", job.failure
            elif job.timed_out:
                status = "timed_out"
            elif job.cancelled_by:
                status = "cancelled"
            elif returncode == 0:
                status = "succeeded"
        except Exception as exc:  # a bug or OS error must still close the job cleanly
            message = f"{type(exc).__name__}: {exc}"
            log.event("job.error", level="error", job=record.id, error=message)
            self._say(job, f"[pploy] job failed to run: {message}")
        finally:
            timeout.cancel()
            keeper.cancel()
            if job.process:
                job.process.close()
            self.containment.finished(record.id)
        try:
            await self._record_end(job, project, status, exit_code, sig, message)
        finally:
            # Whatever failed above, viewers must see an end and the project must be free.
            if not job.buffer.closed:
                job.buffer.finish(
                    {"id": record.id, "status": status, "exit_code": exit_code, "message": message}
                )
            if job.timeline:
                job.timeline.close()
            if self.shared_logs is not None:  # the log is complete: ship what is left
                self.shared_logs.finish_shipping(record.id)
            self.running.pop(record.id, None)

    async def _record_end(
        self,
        job: RunningJob,
        project: Project,
        status: str,
        exit_code: int | None,
        sig: int | None,
        message: str | None,
    ) -> None:
        record = job.record
        fields: dict[str, Any] = {}
        if record.kind == "checkout" and status == "succeeded":
            fields["sha"] = await git.head_sha(str(project.path))
        summary = f"[pploy] {record.kind} {status}"
        if job.cancelled_by:
            summary += f" (cancelled by {job.cancelled_by})"
        if job.timed_out:
            summary += f" (timed out after {self.config.job.timeout_minutes:g} min)"
        if exit_code is not None:
            summary += f", exit code {exit_code}"
        if sig is not None:
            summary += f", killed by {signal_name(sig)}"
        if message:
            summary += f": {message}"
        self._say(job, summary)
        fields |= {
            "status": status, "exit_code": exit_code, "signal": sig, "ended_at": time.time(),
            "cancelled_by": job.cancelled_by, "message": message, "log_bytes": job.buffer.size,
        }  # fmt: skip
        final = self._save_end(record, fields)
        job.buffer.finish(self.final_status(final))
        self.running.pop(record.id, None)
        log.event(
            "job.end", job=record.id, project=record.project, status=status,
            exit_code=exit_code, signal=sig, seconds=round(final.duration, 3),
        )  # fmt: skip
        self._prune_logs(record.project)
        if self.on_finish:
            self.on_finish(final)

    def _save_end(self, record: JobRecord, fields: dict[str, Any]) -> JobRecord:
        """Record how a job ended. When the database cannot take it (a full disk), the end is
        kept in memory — served by :meth:`get` — and written as soon as it can be."""
        try:
            self.store.update_job(record.id, **fields)
        except StoreUnavailable as exc:
            self._unsaved[record.id] = fields
            log.event("job.record_failed", level="error", job=record.id, error=exc.message)
            if self._retrier is None or self._retrier.done():
                self._retrier = asyncio.get_running_loop().create_task(self._save_later())
            return replace(record, **fields)
        return self.get(record.id)

    async def _save_later(self) -> None:
        """Retry the ends the database refused until every one has landed."""
        while self._unsaved:
            await asyncio.sleep(SAVE_RETRY_SECONDS)
            for job_id, fields in list(self._unsaved.items()):
                try:
                    self.store.update_job(job_id, **fields)
                except StoreUnavailable:
                    break  # still full: try again later
                del self._unsaved[job_id]
                log.event("job.recorded", job=job_id, status=fields.get("status"))

    async def _run_steps(
        self, job: RunningJob, project: Project, steps: list[tuple[list[str], dict, str]] | None
    ) -> int | None:
        """Run the job's commands in order; stop at the first failure. None = could not run."""
        if steps is None:  # a checkout: fetch, then resolve the ref, then the rest
            if project.checkout_script:
                steps = [(
                    [str(project.checkout_script)], {"DEPLOY_COMMIT": job.record.ref or ""},
                    f"$ DEPLOY_COMMIT={job.record.ref} .deploy/bin/checkout_overwrite",
                )]  # fmt: skip
            else:
                return await self._default_checkout(job, project)
        returncode = 0
        for argv, extra, echo in steps:
            if echo:
                self._say(job, echo)
            returncode = await self._run_step(job, project, argv, extra)
            if returncode != 0 or job.cancelled_by or job.timed_out or job.failure:
                break
        return returncode

    async def _default_checkout(self, job: RunningJob, project: Project) -> int | None:
        ref = job.record.ref or ""
        fetch = ["git", "fetch", "--prune", "--tags", "--force", "origin"]
        rc = await self._echo_and_run(job, project, fetch)
        if rc != 0 or self._stopped(job):
            return rc
        sha = await git.resolve_commit(str(project.path), ref)
        if sha is None:
            job.message = f"{ref!r} is not a branch, tag or commit of origin"
            self._say(job, f"[pploy] {job.message}")
            return None
        try:
            self.store.update_job(job.record.id, sha=sha)
        except StoreUnavailable:
            pass  # recorded again at the end (HEAD of a succeeded checkout)
        self._say(job, f"[pploy] {ref} is {sha}")
        for argv in (
            ["git", "checkout", "-f", "--detach", sha],
            ["git", "reset", "--hard", sha],
            ["git", "clean", "-fdx"],
            ["git", "submodule", "sync", "--recursive"],
            ["git", "submodule", "update", "--init", "--recursive"],
        ):
            rc = await self._echo_and_run(job, project, argv)
            if rc != 0 or self._stopped(job):
                return rc
        return 0

    async def _echo_and_run(self, job: RunningJob, project: Project, argv: list[str]) -> int:
        self._say(job, "$ " + " ".join(argv))
        extra = {"DEPLOY_COMMIT": job.record.ref or ""}
        return await self._run_step(job, project, argv, extra, hardened=True)

    @staticmethod
    def _stopped(job: RunningJob) -> bool:
        return bool(job.cancelled_by or job.timed_out or job.failure)

    async def _keep_lock(self, job: RunningJob) -> None:
        """While the job runs, its user's lock never gets within LOCK_KEEP_MARGIN of expiring."""
        while True:
            try:
                self.locks.keep_until(
                    job.record.project, job.record.user, time.time() + LOCK_KEEP_MARGIN
                )
            except StoreUnavailable as exc:  # a full disk: try again sooner
                log.event("job.lock_keep_failed", level="error", job=job.record.id,
                          error=exc.message)  # fmt: skip
                await asyncio.sleep(SAVE_RETRY_SECONDS)
                continue
            await asyncio.sleep(LOCK_KEEP_MARGIN / 4)

    # -- stop ----------------------------------------------------------------

    def cancel(self, job_id: int, user: str) -> JobRecord:
        """Cancel a running job; only the project's lock holder may."""
        record = self.get(job_id)
        job = self.running.get(job_id)
        if job is None and record.running and self.shared_logs is not None:
            # Run by another instance: it cancels it when told (cluster.Cluster listens).
            self.locks.require_holder(record.project, user)
            self.shared_logs.request_cancel(job_id, user)
            return record
        if job is None:
            raise Conflict(f"job #{job_id} is not running (it is {record.status})")
        self.locks.require_holder(record.project, user)
        self.cancel_running(job, user)
        return record

    def cancel_running(self, job: RunningJob, user: str) -> None:
        """Stop a job this instance runs, recording who cancelled it."""
        job_id = job.record.id
        if not job.cancelled_by:
            job.cancelled_by = user
            self._say(job, f"[pploy] cancelled by {user}")
            log.event("job.cancel", job=job_id, user=user)
        self._stop(job)

    def abandon(self, job_id: int, reason: str) -> None:
        """Stop a job this instance can no longer vouch for (cluster.Cluster: the shared
        database holds it as interrupted, or cannot be reached): its project may already have
        a newer job elsewhere."""
        job = self.running.get(job_id)
        if job is None or job.cancelled_by:
            return
        job.cancelled_by = "pploy (cut off from the database)"
        self._say(job, f"[pploy] stopped: {reason}")
        log.event("job.abandoned", level="error", job=job_id, reason=reason)
        self._stop(job)

    def _time_out(self, job: RunningJob) -> None:
        job.timed_out = True
        self._say(job, "[pploy] timed out")
        self._stop(job)

    def _stop(self, job: RunningJob) -> None:
        """Signal the running step's process group (INT, TERM, KILL), once."""
        if job.process is None or job.stopping is not None:
            return
        if job.process.proc.returncode is not None and not job.process.group_alive():
            return
        job.stopping = asyncio.get_running_loop().create_task(
            job.process.terminate_group(self.config.job.cancel_grace_seconds)
        )

    # -- lifecycle -----------------------------------------------------------

    def recover(self) -> list[int]:
        """Mark jobs a crash left ``running`` as interrupted, keeping their logs, and kill
        every process they still have (their cgroups, tracked pids and tags)."""
        ids = []
        records = self.store.running_jobs(self.instance)
        swept: list[int] = []
        if self.shared_logs is not None:  # declared interrupted by others while this was away
            swept = self.shared_logs.store.swept_jobs(self.instance)
        left = self.containment.recover([record.id for record in records] + swept)
        for job_id in swept:
            left += kill_tagged(self.job_tag(job_id))
        if left:
            log.event("job.orphans_killed", level="warning", jobs=len(records), count=left)
        for record in records:
            path = self.log_path(record)
            size = path.stat().st_size if path.exists() else 0
            if path.exists():
                try:
                    with open(path, "rb+") as fh:
                        fh.seek(-1 if size else 0, os.SEEK_END)
                        newline = b"" if fh.read(1) in (b"\n", b"") else b"\n"
                        note = _note("[pploy] interrupted: pploy stopped while this job ran")
                        fh.write(newline + note)
                except OSError as exc:  # a full disk must not keep pploy from starting
                    log.event("job.log_write_failed", level="error", job=record.id,
                              error=exc.strerror)  # fmt: skip
                size = path.stat().st_size
            if self.shared_logs is not None:
                try:
                    size = self.shared_logs.append_note(
                        record.id, _note("[pploy] interrupted: pploy stopped while this job ran")
                    )
                except StoreUnavailable:
                    pass
            killed = kill_tagged(self.job_tag(record.id))
            if killed:
                log.event("job.orphans_killed", level="warning", job=record.id, count=killed)
            self._save_end(record, {
                "status": "interrupted", "ended_at": time.time(), "log_bytes": size,
                "message": "pploy stopped while this job ran",
            })  # fmt: skip
            ids.append(record.id)
            log.event("job.interrupted", level="warning", job=record.id, project=record.project)
        return ids

    async def shutdown(self, grace: float) -> None:
        """Take no new jobs; wait up to ``grace`` seconds for running ones, then cancel them."""
        self.accepting = False
        tasks = [job.task for job in self.running.values() if job.task]
        if not tasks:
            return
        log.event("shutdown.waiting", jobs=len(tasks), grace=grace)
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            for job in list(self.running.values()):
                if not job.cancelled_by:
                    job.cancelled_by = "pploy (shutdown)"
                    self._say(job, "[pploy] cancelled: pploy is shutting down")
                self._stop(job)
            await asyncio.wait(pending, timeout=sum(self.config.job.cancel_grace_seconds) + 10)

    def close(self) -> None:
        """pploy stops: remove the containment it set up (what is empty of it), free the
        workdir. Ends the database still refuses are lost: the next start finds those jobs
        ``running`` and marks them interrupted."""
        if self._retrier is not None:
            self._retrier.cancel()
        if self._unsaved:
            log.event("job.record_lost", level="error", jobs=sorted(self._unsaved))
        self.containment.close()
        self.workdir_lock.release()

    def _prune_logs(self, project: str) -> None:
        ids = self.store.job_ids_beyond(project, self.config.job.keep_logs)
        if self.shared_logs is not None:
            self.shared_logs.prune(ids)
        for job_id in ids:
            path = self.projects.log_dir(project) / f"{job_id}.log"
            for old in (path, times_path(path)):
                try:
                    old.unlink()
                except FileNotFoundError:
                    pass
