"""The services one pploy runs with (store, projects, locks, jobs, notifier, auth,
templates), built once from the config and reached from a request with :func:`services`.

Route modules import this, never the wiring in :mod:`pploy.deploy.app`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
from aiohttp import web

from pploy.deploy.config import Config
from pploy.deploy.directory import Directory
from pploy.deploy.domain.audit import Audit
from pploy.deploy.domain.errors import NotFound
from pploy.deploy.domain.expiry import ExpiryWatch
from pploy.deploy.domain.freezes import Freezes
from pploy.deploy.domain.locks import Locks
from pploy.deploy.domain.permissions import Caller, Permissions
from pploy.deploy.domain.projects import Projects
from pploy.deploy.domain.records import JobRecord, Lock, Storage
from pploy.deploy.domain.tokens import Tokens
from pploy.deploy.jobs.running import Jobs
from pploy.deploy.notify import Notifier
from pploy.deploy.storage.opening import open_store
from pploy.deploy.web.auth import Authenticator

if TYPE_CHECKING:  # psycopg is imported only with a shared database
    from pploy.deploy.jobs.cluster import Cluster

TEMPLATES = Path(__file__).parent / "web" / "templates"


@dataclass
class Services:
    config: Config
    store: Storage
    projects: Projects
    locks: Locks
    jobs: Jobs
    notifier: Notifier
    auth: Authenticator
    templates: jinja2.Environment
    directory: Directory | None = None  # config `ldap`: its people and their groups
    expiry: ExpiryWatch | None = None  # notices locks running out (lock.expired)
    cluster: Cluster | None = None  # with a shared database (docs/scaling.md)
    permissions: Permissions = field(init=False)
    tokens: Tokens = field(init=False)
    audit: Audit = field(init=False)
    freezes: Freezes = field(init=False)
    # Deploys awaiting approval: when each expires (governance.py).
    approval_timers: dict[int, asyncio.TimerHandle] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Permission rules may name directory groups (config `ldap`): asked at each check.
        self.permissions = Permissions(self.config.permissions, groups_of=self.groups_of)
        self.audit = Audit(self.store)  # told of every event the webhooks are
        self.notifier.sinks.append(self.audit.record)
        self.tokens = Tokens(self.store, on_event=self.notifier.emit)
        self.freezes = Freezes(self.config, self.store, self.permissions, self.notifier.emit)

    def groups_of(self, caller: Caller) -> frozenset[str]:
        """The caller's directory groups (config `ldap`), for permission rules; empty without
        a directory. In gate mode found by the email gate vouched for (gate's user name is
        what the login provider lets people pick), elsewhere by the user name. Answered from
        the cached listing: never waits for the directory."""
        if self.directory is None:
            return frozenset()
        if self.auth.mode == "gate":
            return self.directory.groups_of_email(caller.email) if caller.email else frozenset()
        return self.directory.groups_of(caller.user)

    def job_payload(self, record: JobRecord) -> dict[str, object]:
        """A job's notification fields (webhooks and the audit log)."""
        return {
            **record.to_json(),
            "env_text": f" to {record.env}" if record.env else "",
            "sha_short": (record.sha or "")[:10],
            "link": self.link(f"/jobs/{record.id}"),
        }

    def link(self, path: str) -> str:
        """``path`` as an absolute link when public_url is set (for notifications)."""
        base = (self.config.public_url or "").rstrip("/")
        return base + path


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    """The services of the app serving ``request``."""
    return request.app[SERVICES]


def build_services(config: Config) -> Services:
    """Every service for ``config``, wired to each other (its workdir is created if missing)."""
    workdir = config.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    store = open_store(config.database, workdir)
    projects = Projects(workdir, git_config=config.git, store=store)
    notifier = Notifier(config.webhooks)

    def lock_payload(lock: Lock) -> dict[str, object]:
        return {
            "project": lock.project,
            "user": lock.user,
            "expires_at": lock.expires_at,
            "expires_at_text": time.strftime("%H:%M:%S", time.localtime(lock.expires_at)),
            "link": svc.link(f"/projects/{lock.project}"),
        }

    def lock_changed(event: str, lock: Lock) -> None:
        expiry.changed(event, lock)  # first: a lock that ran out is told before its successor
        notifier.emit(event, lock_payload(lock))

    def lock_queued(project: str, user: str, position: int) -> None:
        link = svc.link(f"/projects/{project}")
        notifier.emit("lock.queued", {"project": project, "user": user, "position": position,
                                      "link": link})  # fmt: skip

    def job_payload(record: JobRecord) -> dict[str, object]:
        return svc.job_payload(record)

    def job_finished(record: JobRecord) -> None:
        notifier.emit("job.finished", job_payload(record))
        if record.status == "cancelled" and record.cancelled_by:  # the audit trail's kind
            notifier.emit("job.cancelled", {**job_payload(record), "by": record.cancelled_by})

    def job_started(record: JobRecord) -> None:
        notifier.emit("job.started", job_payload(record))

    locks = Locks(
        store,
        gain_minutes=config.lock.gain_minutes,
        extend_minutes=config.lock.extend_minutes,
        on_change=lock_changed,
        on_queued=lock_queued,
    )

    def project_exists(name: str) -> bool:
        try:
            projects.get(name)
        except NotFound:
            return False
        return True

    expiry = ExpiryWatch(
        locks, lambda lock: notifier.emit("lock.expired", lock_payload(lock)), exists=project_exists
    )
    jobs = Jobs(config, store, projects, locks, on_finish=job_finished, on_start=job_started)
    directory = Directory(config.ldap) if config.ldap is not None else None
    auth = Authenticator(config.auth, config.users, directory)
    svc = Services(
        config, store, projects, locks, jobs, notifier, auth, build_templates(), directory, expiry
    )
    if store.shared:
        from pploy.deploy.jobs.cluster import Cluster
        from pploy.deploy.jobs.sharedlog import SharedLogs
        from pploy.deploy.storage.postgres import PgStore

        assert isinstance(store, PgStore)
        jobs.shared_logs = SharedLogs(store, jobs.final_status)
        svc.cluster = Cluster(store, jobs, projects, jobs.shared_logs)
    return svc


def build_templates() -> jinja2.Environment:
    """The page templates, autoescaped, with pploy's date and duration filters."""
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates.filters["datetime"] = lambda ts: (
        # With the zone: a bare time is ambiguous for a team across time zones.
        time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts)) if ts else ""
    )
    templates.filters["duration"] = format_duration
    templates.filters["isodate"] = lambda text: (
        text[:16].replace("T", " ") + (" " + text[19:].replace(":", "") if text[19:] else "")
    )  # git's ISO date keeps its offset: 2026-01-02 03:04 +0900
    return templates


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``1m15s``; ``None`` (still running) -> empty."""
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
