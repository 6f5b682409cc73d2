"""What one pploy instance does for the others sharing its PostgreSQL database.

- Listens (one extra connection, ``LISTEN``) on ``pploy_log``, to bring its followers of other
  instances' jobs up (sharedlog.SharedLogs); on ``pploy_projects``, to clone projects added
  elsewhere and drop those removed elsewhere; on ``pploy_cancel``, to cancel a job it runs
  that the lock holder cancelled through another instance.
- Every HEARTBEAT_SECONDS, heartbeats the jobs it runs; a job the database no longer holds as
  running (another instance declared it interrupted: this one was cut off too long) is
  cancelled here, so it never runs on beside a newer one.
- On the same beat, declares ``interrupted`` the running jobs of any instance silent for
  SILENT_SECONDS (it died, or lost the database), keeping their locks and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import psycopg

from pploy import log
from pploy.deploy.domain.projects import Projects
from pploy.deploy.domain.records import StoreUnavailable
from pploy.deploy.jobs.running import Jobs, _note
from pploy.deploy.jobs.sharedlog import SharedLogs
from pploy.deploy.storage.postgres import (
    CANCEL_CHANNEL,
    LOG_CHANNEL,
    PROJECTS_CHANNEL,
    SILENT_MESSAGE,
    PgStore,
)

HEARTBEAT_SECONDS = 5.0
# A job whose instance has not heartbeat for this long is interrupted: with the beat above, an
# instance's death is noticed within SILENT_SECONDS + HEARTBEAT_SECONDS (25 s < 30 s).
SILENT_SECONDS = 20.0
RECONNECT_SECONDS = 1.0


class Cluster:
    """The listener and the heartbeat of one instance (started and stopped with the app)."""

    def __init__(self, store: PgStore, jobs: Jobs, projects: Projects, logs: SharedLogs) -> None:
        self.store = store
        self.jobs = jobs
        self.projects = projects
        self.logs = logs
        self.tasks: list[asyncio.Task[None]] = []
        self._cloning: dict[str, asyncio.Task[None]] = {}
        self._last_beat = time.monotonic()
        projects.on_missing = self.want_clone

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._listen()), loop.create_task(self._beat())]
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

    # -- heartbeats ----------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            self.beat()

    def beat(self) -> None:
        """One heartbeat: ours, then the sweep of silent instances' jobs."""
        mine = [job_id for job_id, job in self.jobs.running.items() if job.task is not None]
        try:
            alive = set(self.store.heartbeat(self.jobs.instance, mine))
            self._last_beat = time.monotonic()
        except StoreUnavailable as exc:
            log.event("cluster.heartbeat_failed", level="error", error=exc.message)
            if time.monotonic() - self._last_beat > SILENT_SECONDS - HEARTBEAT_SECONDS:
                # Cut off long enough that others will declare these jobs interrupted: stop
                # them here rather than let them run on beside a newer job.
                alive = set()
            else:
                return
        for job_id in mine:
            if job_id not in alive:
                self.jobs.abandon(job_id, "another instance declared it interrupted")
        try:
            self.interrupt_silent()
            self.logs.refresh_all()
        except StoreUnavailable as exc:
            log.event("cluster.sweep_failed", level="warning", error=exc.message)

    def interrupt_silent(self) -> list[int]:
        """Declare interrupted the jobs of instances silent for SILENT_SECONDS (their locks
        and logs stay); the log gets a closing line first."""
        done = []
        for record in self.store.silent_jobs(SILENT_SECONDS):
            line = _note(f"[pploy] interrupted: instance {record.instance} stopped answering")
            end = self.logs.append_note(record.id, line)
            if self.store.interrupt_if_silent(record.id, SILENT_SECONDS, end, SILENT_MESSAGE):
                done.append(record.id)
                log.event("job.interrupted", level="warning", job=record.id,
                          project=record.project, instance=record.instance)  # fmt: skip
        return done
