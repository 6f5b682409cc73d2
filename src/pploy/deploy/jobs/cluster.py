"""What one pploy instance does for the others sharing its PostgreSQL database.

- Listens (one extra connection, ``LISTEN``) on ``pploy_log``, to bring its followers of other
  instances' jobs up (sharedlog.SharedLogs); on ``pploy_projects``, to clone projects added
  elsewhere and drop those removed elsewhere; on ``pploy_cancel``, to cancel a job it runs
  that the lock holder cancelled through another instance (the fast path: the cancel is
  also recorded in the job's row, which the job's runner reads itself).
- Every SWEEP_SECONDS, declares ``interrupted`` the running jobs whose lease has expired by the
  database's clock (their runner died, or lost the database for longer than job.lease_seconds:
  it has stopped its job by then, at job.fence_seconds), keeping their locks and logs. The
  lease moves to a new epoch, so a late runner writes nothing more for the job (runner.py)
  but the rest of its log file, at the stored end (PgStore.append_log).
"""

from __future__ import annotations

import asyncio
import contextlib

import psycopg

from pploy import log
from pploy.deploy.domain.projects import Projects
from pploy.deploy.domain.records import StoreUnavailable
from pploy.deploy.jobs.running import Jobs
from pploy.deploy.jobs.sharedlog import SharedLogs
from pploy.deploy.storage.postgres import PgStore
from pploy.deploy.storage.sql import CANCEL_CHANNEL, LOG_CHANNEL, PROJECTS_CHANNEL

SWEEP_SECONDS = 5.0
RECONNECT_SECONDS = 1.0
# The message of a job declared lost because its lease expired.
EXPIRED_MESSAGE = "its lease expired: its runner stopped renewing it"


class Cluster:
    """The listener and the lease-expiry sweep of one instance (started, stopped with the app)."""

    def __init__(self, store: PgStore, jobs: Jobs, projects: Projects, logs: SharedLogs) -> None:
        self.store = store
        self.jobs = jobs
        self.projects = projects
        self.logs = logs
        self.tasks: list[asyncio.Task[None]] = []
        self._cloning: dict[str, asyncio.Task[None]] = {}
        projects.on_missing = self.want_clone

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._listen()), loop.create_task(self._sweep())]
        await self.sync_projects()

    async def stop(self) -> None:
        for task in [*self.tasks, *self._cloning.values()]:
            task.cancel()
        for task in [*self.tasks, *self._cloning.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- notifications -------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    autocommit=True, **self.store.options
                ) as conn:
                    await conn.execute(f"LISTEN {LOG_CHANNEL}")
                    await conn.execute(f"LISTEN {PROJECTS_CHANNEL}")
                    await conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                    self.logs.refresh_all()  # what was announced while not listening
                    await self.sync_projects()
                    async for note in conn.notifies():
                        self._dispatch(note.channel, note.payload)
            except (psycopg.Error, OSError, StoreUnavailable) as exc:
                log.event("cluster.listen_failed", level="warning", error=str(exc))
            await asyncio.sleep(RECONNECT_SECONDS)

    def _dispatch(self, channel: str, payload: str) -> None:
        try:
            if channel == LOG_CHANNEL and payload.isdigit():
                self.logs.announce(int(payload))
            elif channel == PROJECTS_CHANNEL:
                asyncio.get_running_loop().create_task(self.sync_projects())
            elif channel == CANCEL_CHANNEL:
                job_id, _, user = payload.partition(" ")
                job = self.jobs.running.get(int(job_id)) if job_id.isdigit() else None
                if job is not None and user:
                    self.jobs.cancel_running(job, user)
        except StoreUnavailable as exc:
            log.event("cluster.dispatch_failed", level="warning", error=exc.message)

    # -- projects -----------------------------------------------------------------

    async def sync_projects(self) -> None:
        """Clone what the store names and this workdir lacks; drop clones of removed ones
        (not while a job of this instance runs on one)."""
        try:
            current = {repo.project: repo.id for repo in self.store.current_repositories()}
        except StoreUnavailable:
            return
        here = {project.name for project in self.projects.local()}
        for name in sorted(set(current) - here):
            self.want_clone(name)
        for name in sorted(here):
            if self.jobs.running_for(name) is not None or name in self._cloning:
                continue
            if name not in current:
                await self.projects.drop_clone(name)
                log.event("cluster.project_dropped", project=name)
            elif self.projects.cloned_for(name) not in (None, current[name]):
                self.want_clone(name)  # removed and added again elsewhere: a new clone

    def want_clone(self, name: str) -> None:
        """Clone ``name`` here soon (once: a clone under way is not started again)."""
        task = self._cloning.get(name)
        if task is None or task.done():
            self._cloning[name] = asyncio.get_running_loop().create_task(self._clone(name))

    async def _clone(self, name: str) -> None:
        repo = self.store.current_repository(name)
        if repo is None or self.projects.cloning(name):  # under way here already
            return
        if (self.projects.root / name / ".git").exists():
            if self.projects.cloned_for(name) in (None, repo.id) or self.jobs.running_for(name):
                return
            await self.projects.drop_clone(name)  # of a repository since removed
        try:
            await self.projects.clone_recorded(name, repo.url, repo.id)
            log.event("cluster.project_cloned", project=name)
        except Exception as exc:  # a clone that fails is tried again on the next request
            log.event("cluster.clone_failed", level="error", project=name, error=str(exc))

    # -- leases --------------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                self.sweep()
                self.logs.refresh_all()
            except StoreUnavailable as exc:
                log.event("cluster.sweep_failed", level="warning", error=exc.message)

    def sweep(self) -> list[int]:
        """Declare interrupted the running jobs whose lease has expired (their locks and logs
        stay), with the reason in the record's message and ``log_bytes`` what is stored now.
        Nothing is written into the stored log: its runner may be alive, cut off, with bytes
        still to ship (its own closing line among them); those land later at the stored end
        (PgStore.append_log's rule for the lost epoch), so the stored log ends byte-identical
        to the runner's file."""
        done = []
        for record in self.store.expired_jobs():
            end = self.store.log_end(record.id)
            if not self.store.interrupt_job(
                record.id, message=EXPIRED_MESSAGE, log_bytes=end, expired_only=True
            ):
                continue  # renewed, ended, or declared by another instance meanwhile
            done.append(record.id)
            log.event("job.interrupted", level="warning", job=record.id,
                      project=record.project, instance=record.instance)  # fmt: skip
        return done
