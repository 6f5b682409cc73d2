"""Deploy governance at the moment a deploy starts (issue 25): a freeze override recorded on
the job, and (config ``approvals``) deploys that wait for another person's approval.

Called from :mod:`pploy.deploy.actions`, the one path every route's deploy takes."""

from __future__ import annotations

from pploy.deploy.services import Services
from pploy.deploy.store import JobRecord


def overridden(svc: Services, record: JobRecord, override: dict[str, str] | None) -> JobRecord:
    """Keep an admin's freeze override on the job's record and in the audit log."""
    if override is None:
        return record
    if record.status == "running":  # launched: the record's other fields are the job's own
        svc.store.settle_job(record.id, "running", freeze_override=override)
    svc.notifier.emit(
        "freeze.overridden",
        {**override, "project": record.project, "env": record.env, "job": record.id,
         "env_text": f" to {record.env}", "link": svc.link(f"/jobs/{record.id}")},
    )  # fmt: skip
    return svc.jobs.get(record.id)
