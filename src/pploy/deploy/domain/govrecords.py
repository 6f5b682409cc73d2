"""The records of deploy governance (issue 25), as both store engines return them: audit
events, ad-hoc freezes and the people waiting in a lock's queue."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


def decode_json(value: Any) -> Any:
    """A JSON column as read: text from SQLite, already decoded from PostgreSQL's jsonb."""
    return json.loads(value) if isinstance(value, str | bytes) else value


@dataclass(frozen=True)
class AuditEvent:
    """One line of the audit trail: who did what, when, where. Never deleted."""

    id: int
    at: float
    user: str | None
    kind: str
    project: str | None
    env: str | None
    job: int | None
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditEvent:
        fields = dict(row)
        fields["detail"] = decode_json(fields["detail"]) or {}
        return cls(**fields)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["id"]
        return out


@dataclass(frozen=True)
class AdHocFreeze:
    """A freeze an admin started through the API (configured ones live in the config)."""

    id: int
    name: str
    envs: list[str]
    projects: list[str]
    starts_at: float
    until: float
    reason: str
    created_by: str
    ended_at: float | None
    ended_by: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AdHocFreeze:
        fields = dict(row)
        fields["envs"] = decode_json(fields["envs"])
        fields["projects"] = decode_json(fields["projects"])
        return cls(**fields)


@dataclass(frozen=True)
class QueuedUser:
    """Someone waiting for a project's lock, first come first served."""

    project: str
    user: str
    since: float

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "since": self.since}
