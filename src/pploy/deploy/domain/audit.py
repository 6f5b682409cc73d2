"""The audit trail (issue 25): every lock, job, approval, freeze, token and project event, kept
in the database (both engines) and never deleted by pploy.

It is a sink of the same events the webhooks get (``notify.Notifier.emit``): each event is
emitted once, from the one place it happens, and lands here as ``{"at", "user", "kind",
"project", "env", "job", "detail"}``. ``user`` is who acted (a payload's ``by``, else its
``user``); ``detail`` holds the payload's other facts, without the presentation fields
(links, texts) that only a chat message needs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pploy import log
from pploy.deploy.domain.errors import BadRequest
from pploy.deploy.domain.govrecords import AuditEvent
from pploy.deploy.domain.records import Storage, StoreUnavailable

AUDIT_KINDS = (
    "project.added", "project.removed",
    "lock.gained", "lock.extended", "lock.released", "lock.expired", "lock.queued",
    "lock.granted",
    "job.started", "job.finished", "job.cancelled", "job.awaiting_approval", "job.approved",
    "job.rejected", "job.expired",
    "freeze.started", "freeze.ended", "freeze.overridden",
    "token.created", "token.revoked",
)  # fmt: skip

# Payload fields for chat messages only: not facts worth keeping.
PRESENTATION = {
    "link", "expires_at_text", "env_text", "sha_short", "duration", "heartbeat_at", "instance",
    "log_bytes", "until_text",
}  # fmt: skip
MAX_EVENTS = 10000
KIND_FILTER = re.compile(r"[a-z_]+(\.[a-z_]+|\.\*)?")


def audit_fields(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The audit event's fields for a notification ``payload`` of ``kind``."""
    actor = "by" if payload.get("by") else "user"
    job_key = "id" if kind.startswith("job.") else "job"
    job = payload.get(job_key)
    used = {actor, "project", "env", job_key}
    detail = {
        key: value
        for key, value in payload.items()
        if key not in used and key not in PRESENTATION and value is not None
    }
    return {
        "user": payload.get(actor),
        "kind": kind,
        "project": payload.get("project"),
        "env": payload.get("env"),
        "job": job if isinstance(job, int) else None,
        "detail": detail,
    }


def parse_since(text: str) -> float:
    """``?since=``: seconds since the epoch, or an ISO 8601 time (with its offset; UTC if
    none)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"since must be seconds since the epoch or an ISO 8601 time, not {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.now().astimezone().tzinfo)
    return moment.timestamp()


def parse_kinds(values: list[str]) -> list[str]:
    """``?kind=`` (repeated or comma-separated): exact kinds or ``lock.*``."""
    kinds = [k.strip() for v in values for k in v.split(",") if k.strip()]
    for kind in kinds:
        if not KIND_FILTER.fullmatch(kind):
            raise BadRequest(
                f"kind must be an event kind such as lock.gained or lock.*, not {kind!r}"
            )
    return kinds


class Audit:
    """Writes and reads the audit trail."""

    def __init__(self, store: Storage, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def record(self, kind: str, payload: dict[str, Any]) -> None:
        """Keep one event (``Notifier``'s sink). A database that refuses it is logged as an
        error: the action it records has already happened."""
        try:
            self.store.add_audit(at=self.clock(), **audit_fields(kind, payload))
        except StoreUnavailable as exc:
            log.event("audit.lost", level="error", audit_kind=kind, error=exc.message)

    def events(
        self, since: float | None = None, kinds: list[str] | None = None, limit: int = MAX_EVENTS
    ) -> list[AuditEvent]:
        return self.store.list_audit(since, kinds or [], limit)
