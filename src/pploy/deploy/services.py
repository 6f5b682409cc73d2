"""The services one pploy runs with (store, projects, locks, jobs, notifier, auth,
templates), built once from the config and reached from a request with :func:`services`.

Route modules import this, never the wiring in :mod:`pploy.deploy.app`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jinja2
from aiohttp import web

from pploy.deploy.auth import Authenticator
from pploy.deploy.config import Config
from pploy.deploy.jobs import Jobs
from pploy.deploy.locks import Locks
from pploy.deploy.notify import Notifier
from pploy.deploy.projects import Projects
from pploy.deploy.store import JobRecord, Lock, Store

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Services:
    config: Config
    store: Store
    projects: Projects
    locks: Locks
    jobs: Jobs
    notifier: Notifier
    auth: Authenticator
    templates: jinja2.Environment

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
    store = Store(workdir / "pploy.db")
    projects = Projects(workdir, git_config=config.git, store=store)
    notifier = Notifier(config.webhooks)

    def lock_changed(event: str, lock: Lock) -> None:
        notifier.emit(
            event,
            {
                "project": lock.project,
                "user": lock.user,
                "expires_at": lock.expires_at,
                "expires_at_text": time.strftime("%H:%M:%S", time.localtime(lock.expires_at)),
                "link": svc.link(f"/projects/{lock.project}"),
            },
        )

    def job_finished(record: JobRecord) -> None:
        notifier.emit(
            "job.finished",
            {
                **record.to_json(),
                "env_text": f" to {record.env}" if record.env else "",
                "sha_short": (record.sha or "")[:10],
                "link": svc.link(f"/jobs/{record.id}"),
            },
        )

    locks = Locks(
        store,
        gain_minutes=config.lock.gain_minutes,
        extend_minutes=config.lock.extend_minutes,
        on_change=lock_changed,
    )
    jobs = Jobs(config, store, projects, locks, on_finish=job_finished)
    auth = Authenticator(config.auth, config.users)
    svc = Services(config, store, projects, locks, jobs, notifier, auth, build_templates())
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
