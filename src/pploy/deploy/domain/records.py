"""The records pploy keeps (locks, repositories, jobs, API tokens), the errors a database
raises for pploy to answer, and :class:`Storage`: what pploy asks of its database, whichever
engine holds it.

The domain (locks, tokens, projects) and the jobs are written against :class:`Storage`;
``deploy/storage/`` implements it once (:mod:`pploy.deploy.storage.sql`: every statement,
written for both engines), and the same store test suite runs against both engines:
:class:`~pploy.deploy.storage.sqlite.Store` on an embedded SQLite file (the default, one pploy
per workdir) and :class:`~pploy.deploy.storage.postgres.PgStore` on PostgreSQL
(``database: postgresql://…``), which several pploy instances share. Both are synchronous:
every call is one short statement, answered in well under a millisecond on a local file or a
nearby server. Locks are taken and changed by single conditional statements (never
read-then-write), and the database itself allows only one running job per project (a partial
unique index), so two instances can never both win.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pploy.deploy.domain.errors import Conflict, PployError, Unavailable
from pploy.deploy.domain.govrecords import AdHocFreeze, AuditEvent, QueuedUser, decode_json

if TYPE_CHECKING:
    from _typeshed import SupportsKeysAndGetItem

FINAL_STATUSES = (
    "succeeded", "failed", "cancelled", "interrupted", "timed_out", "rejected", "expired",
)  # fmt: skip


class StoreUnavailable(Unavailable):
    """pploy's database cannot be written (or read) now; retrying later may work."""


class StoreError(PployError):
    """The database refused a statement for a reason that is neither a duplicate row nor its
    being unavailable (a CHECK constraint, a bug): 500, logged with the driver's words."""

    status = 500


class JobAlreadyRunning(Conflict):
    """The database already holds a running job for the project (perhaps another pploy's)."""

    def __init__(self, project: str) -> None:
        super().__init__(f"a job is already running on {project}")


@dataclass(frozen=True)
class Lock:
    project: str
    user: str
    gained_at: float
    expires_at: float

    def seconds_left(self, now: float | None = None) -> float:
        return max(0.0, self.expires_at - (time.time() if now is None else now))

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        return {**asdict(self), "seconds_left": round(self.seconds_left(now), 1)}


@dataclass(frozen=True)
class Repository:
    """One addition of a project: removing it and adding a name again makes a new one, so each
    job record says which repository (and URL) it ran from."""

    id: int
    project: str
    url: str
    added_at: float
    removed_at: float | None
    removed_by: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JobRecord:
    id: int
    project: str
    kind: str
    env: str | None
    ref: str | None
    sha: str | None
    user: str
    started_at: float
    ended_at: float | None
    exit_code: int | None
    signal: int | None
    status: str
    cancelled_by: str | None
    message: str | None
    log_bytes: int
    repository: int | None = None  # the repositories row it ran from (None: before version 1)
    url: str | None = None  # that repository's URL, without any password
    token: str | None = None  # the name of the API token that started it (None: a session)
    instance: str | None = None  # the pploy instance that runs (ran) it
    heartbeat_at: float | None = None  # when that instance last said it still runs it
    approved_by: list[str] | None = None  # who approved it (config `approvals`)
    freeze_override: dict[str, str] | None = None  # {"freeze", "reason", "by"}
    lease_epoch: int = 0  # the runner's lease: every write for the job carries it
    lease_until: float | None = None  # when the lease expires unless renewed
    announced_at: float | None = None  # when its end was announced (job.finished), once
    cancel_requested_by: str | None = None  # who asked to cancel it (the runner looks)
    cancel_requested_at: float | None = None

    def __post_init__(self) -> None:
        for name in ("approved_by", "freeze_override"):  # JSON text in SQLite
            object.__setattr__(self, name, decode_json(getattr(self, name)))

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def duration(self) -> float:
        return (self.ended_at or time.time()) - self.started_at

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "duration": round(self.duration, 3)}


@dataclass(frozen=True)
class ApiToken:
    """An API token's record: never the token itself, only its SHA-256 (``digest``)."""

    id: int
    user: str
    email: str | None
    name: str
    digest: str
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    revoked_at: float | None

    @classmethod
    def from_row(cls, row: SupportsKeysAndGetItem[str, Any]) -> ApiToken:
        fields = dict(row)
        fields["digest"] = fields.pop("hash")
        return cls(**fields)

    def usable(self, now: float | None = None) -> bool:
        current = time.time() if now is None else now
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > current)

    def to_json(self) -> dict[str, Any]:
        """What the owner may see: everything but the digest."""
        out = asdict(self)
        del out["digest"]
        out["active"] = self.usable()
        return out


class Storage(Protocol):
    """Locks, repositories and job records (see the module docstring)."""

    #: True when other pploy instances may share this database (then logs, leases and
    #: project additions travel through it too: see storage/postgres.py).
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
    def keep_lock_until(self, project: str, user: str, now: float, until: float) -> bool: ...

    def create_job(
        self, *, project: str, kind: str, user: str, env: str | None = None,
        ref: str | None = None, sha: str | None = None, started_at: float | None = None,
        token: str | None = None, instance: str | None = None, lease_seconds: float = 60.0,
    ) -> JobRecord: ...  # fmt: skip
    def update_job(self, job_id: int, **fields: object) -> None: ...

    # A running job's lease, held by its runner (jobs/runner.py): taken once, renewed; every
    # write for the job carries its epoch; declaring the job lost moves the lease to a new epoch.
    def take_lease(self, job_id: int, seconds: float) -> int | None: ...
    def renew_lease(self, job_id: int, epoch: int | None, seconds: float) -> bool: ...
    def write_job(self, job_id: int, epoch: int | None, **fields: object) -> bool: ...
    def interrupt_job(
        self, job_id: int, *, message: str, log_bytes: int, expired_only: bool = False
    ) -> bool: ...
    def expired_jobs(self) -> list[JobRecord]: ...
    # A finished job's end is announced (job.finished) once, by whoever claims it first; a
    # cancel is recorded in the job's row, where its runner finds it (jobs/runner.py).
    def announce_job(self, job_id: int) -> JobRecord | None: ...
    def unannounced_jobs(self, instance: str | None, grace: float) -> list[JobRecord]: ...
    def request_cancel(self, job_id: int, user: str) -> bool: ...
    def cancel_request(self, job_id: int) -> str | None: ...
    def get_job(self, job_id: int) -> JobRecord | None: ...
    def list_jobs(self, project: str | None = None, limit: int = 50) -> list[JobRecord]: ...
    def running_jobs(self, instance: str | None = None) -> list[JobRecord]: ...
    def last_successful_deploys(self, project: str) -> dict[str, JobRecord]: ...
    def last_job(self, project: str, kind: str | None = None) -> JobRecord | None: ...
    def find_jobs(
        self, project: str, filters: dict[str, str], query: str, limit: int, offset: int
    ) -> tuple[list[JobRecord], int]: ...
    def last_failed_deploy(self, project: str) -> JobRecord | None: ...
    def job_ids_beyond(self, project: str, keep: int) -> list[int]: ...
    def job_counts(self) -> dict[tuple[str, str], int]: ...

    def add_token(
        self, *, user: str, email: str | None, name: str, digest: str, expires_at: float | None
    ) -> ApiToken: ...
    def get_token(self, token_id: int) -> ApiToken | None: ...
    def token_by_hash(self, digest: str) -> ApiToken | None: ...
    def list_tokens(self, user: str) -> list[ApiToken]: ...
    def revoke_token(self, token_id: int) -> None: ...
    def token_used(self, token_id: int, when: float) -> None: ...

    # governance (issue 25)
    def add_audit(
        self, *, at: float, user: str | None, kind: str, project: str | None, env: str | None,
        job: int | None, detail: dict[str, Any],
    ) -> None: ...  # fmt: skip
    def list_audit(self, since: float | None, kinds: list[str], limit: int) -> list[AuditEvent]: ...
    def add_freeze(
        self, *, name: str, envs: list[str], projects: list[str], starts_at: float,
        until: float, reason: str, created_by: str,
    ) -> AdHocFreeze | None: ...  # fmt: skip
    def current_freezes(self, now: float) -> list[AdHocFreeze]: ...
    def claim_announcement(self, name: str, starts_at: float, kind: str, at: float) -> bool: ...
    def end_freeze(self, name: str, user: str, now: float) -> AdHocFreeze | None: ...
    def queue_for_lock(self, project: str, user: str, now: float) -> bool: ...
    def leave_lock_queue(self, project: str, user: str) -> bool: ...
    def lock_queue(self, project: str) -> list[QueuedUser]: ...
    def grant_next(self, project: str, now: float, seconds: float) -> Lock | None: ...
    def request_job(
        self, *, project: str, kind: str, user: str, env: str | None, sha: str | None,
        token: str | None, freeze_override: dict[str, str] | None,
    ) -> JobRecord: ...  # fmt: skip
    def settle_job(
        self, job_id: int, expect: str, *, lease_seconds: float | None = None, **fields: Any
    ) -> bool: ...
    def awaiting_jobs(self) -> list[JobRecord]: ...
