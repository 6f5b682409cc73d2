"""What pploy asks of its database, whichever engine holds it, and how one is opened.

Two implementations keep this interface honest (the same test suite runs against both):
:class:`~pploy.deploy.store.Store` on an embedded SQLite file (the default, one pploy per
workdir) and :class:`~pploy.deploy.store_pg.PgStore` on PostgreSQL (``database:
postgresql://…``), which several pploy instances share. Both are synchronous: every call is
one short statement, answered in well under a millisecond on a local file or a nearby server.
Locks are taken and changed by single conditional statements (never read-then-write), and the
database itself allows only one running job per project (a partial unique index), so two
instances can never both win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pploy.deploy.store import JobRecord, Lock, Repository, Store


class Storage(Protocol):
    """Locks, repositories and job records (see the module docstring)."""

    #: True when other pploy instances may share this database (then logs, heartbeats and
    #: project additions travel through it too: see store_pg.PgStore).
    shared: bool

    def close(self) -> None: ...

    def add_repository(
        self, project: str, url: str, added_at: float | None = None
    ) -> Repository: ...
    def adopt_repository(self, project: str, url: str) -> Repository: ...
    def get_repository(self, repository_id: int) -> Repository | None: ...
    def current_repository(self, project: str) -> Repository | None: ...
    def current_repositories(self) -> list[Repository]: ...
    def remove_project(self, project: str, user: str) -> None: ...

    def get_lock(self, project: str, now: float | None = None) -> Lock | None: ...
    def put_lock(self, lock: Lock) -> None: ...
    def delete_lock(self, project: str) -> None: ...
    def gain_lock(self, project: str, user: str, now: float, seconds: float) -> Lock | None: ...
    def extend_lock(self, project: str, user: str, now: float, seconds: float) -> Lock | None: ...
    def release_lock(self, project: str, user: str, now: float) -> bool: ...
    def keep_lock_until(self, project: str, user: str, now: float, until: float) -> None: ...

    def create_job(
        self,
        *,
        project: str,
        kind: str,
        user: str,
        env: str | None = None,
        ref: str | None = None,
        sha: str | None = None,
        started_at: float | None = None,
        instance: str | None = None,
    ) -> JobRecord: ...
    def update_job(self, job_id: int, **fields: object) -> None: ...
    def get_job(self, job_id: int) -> JobRecord | None: ...
    def list_jobs(self, project: str | None = None, limit: int = 50) -> list[JobRecord]: ...
    def running_jobs(self, instance: str | None = None) -> list[JobRecord]: ...
    def last_successful_deploys(self, project: str) -> dict[str, JobRecord]: ...
    def last_job(self, project: str, kind: str | None = None) -> JobRecord | None: ...
    def job_ids_beyond(self, project: str, keep: int) -> list[int]: ...


def open_store(database: str | None, workdir: Path) -> Storage:
    """The store ``database`` names: a ``postgresql://`` URL, or None for ``<workdir>/pploy.db``."""
    if database:
        try:
            from pploy.deploy.store_pg import PgStore  # psycopg is needed only then
        except ImportError as exc:
            raise RuntimeError(
                f"database: a postgresql:// URL needs psycopg ({exc}): "
                "pip install 'pploy[postgres]'"
            ) from exc
        return PgStore(database)
    return Store(workdir / "pploy.db")
