"""Deploy governance at the moment a deploy starts (issue 25): a freeze override recorded on
the job, and (config ``approvals``) deploys that wait for another person's approval.

Called from :mod:`pploy.deploy.actions`, the one path every route's deploy takes."""

from __future__ import annotations

import asyncio
import time
from fnmatch import fnmatchcase

from pploy import log
from pploy.deploy.config import ApprovalRule
from pploy.deploy.domain import git
from pploy.deploy.domain.errors import Conflict, Forbidden, PployError
from pploy.deploy.domain.permissions import Caller, Refused, matches
from pploy.deploy.domain.projects import Project
from pploy.deploy.domain.records import JobAlreadyRunning, JobRecord, StoreUnavailable
from pploy.deploy.services import Services

AWAITING = "awaiting_approval"


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


# -- approvals (issue 25, interface 2) ---------------------------------------------------------


def approval_rule(svc: Services, project: str, env: str | None) -> tuple[int, ApprovalRule] | None:
    """The first ``approvals`` rule covering ``project`` and ``env`` (numbered from 1)."""
    for number, rule in enumerate(svc.config.approvals, 1):
        if fnmatchcase(project, rule.project) and fnmatchcase(env or "", rule.env):
            return number, rule
    return None


def may_approve(svc: Services, caller: Caller, record: JobRecord) -> bool:
    """``caller`` is one of the approvers the job's rule names (the requester included)."""
    found = approval_rule(svc, record.project, record.env)
    return found is not None and any(
        matches(entry, caller, svc.groups_of) for entry in found[1].approvers
    )


async def request_approval(
    svc: Services, caller: Caller, project: Project, env: str, override: dict[str, str] | None
) -> JobRecord:
    """A deploy that waits for approval: the rules every deploy passes checked now (the lock
    holder, a known environment, a deploy script, no job running), the commit checked out now
    recorded, nothing run; the requester's lock kept at least until the request expires."""
    head = await svc.jobs.deploy_commit(project, env, caller.user)
    sha = svc.jobs.shipped_commit(project.name, head)
    try:
        record = svc.store.request_job(
            project=project.name, kind="deploy", user=caller.user, env=env, sha=sha,
            token=caller.token, freeze_override=override,
        )  # fmt: skip
    except JobAlreadyRunning:
        raise Conflict(
            f"a deploy of {project.name} already awaits approval; approve, reject or wait for it"
        ) from None
    # While it waits, the requester's lock does not run out before the request does.
    svc.locks.hold_until(project.name, caller.user, record.started_at + svc.config.approval_timeout)
    schedule_expiry(svc, record)
    found = approval_rule(svc, project.name, env)
    approvers = ", ".join(found[1].approvers) if found else ""
    svc.notifier.emit("job.awaiting_approval", {**svc.job_payload(record), "approvers": approvers})
    overridden(svc, record, override)
    return record


def _awaiting(svc: Services, job_id: int) -> JobRecord:
    record = svc.jobs.get(job_id)
    if record.status == AWAITING and expired(svc, record):
        record = svc.jobs.get(job_id)
    if record.status != AWAITING:
        raise Conflict(f"job #{job_id} is {record.status}, not awaiting approval")
    return record


async def approve(svc: Services, caller: Caller, job_id: int) -> JobRecord:
    """Start a waiting deploy: by an approver other than the requester, for the commit that was
    checked out at the request, while the requester still holds the lock."""
    record = _awaiting(svc, job_id)
    if caller.user == record.user:
        raise Forbidden(
            f"{caller.user} requested job #{job_id}: another approver must approve it "
            "(self-approval is not allowed)"
        )
    found = approval_rule(svc, record.project, record.env)
    if found is None:
        raise Conflict(
            f"no approvals rule covers {record.project} to {record.env} any more: reject "
            "this request and deploy again"
        )
    number, rule = found
    if not may_approve(svc, caller, record):
        raise Forbidden(
            f"{caller.user} may not approve deploys of {record.project} to {record.env}: "
            f"approvals rule {number} allows only {', '.join(rule.approvers)}"
        )
    project = svc.projects.get(record.project)
    head = await git.head_sha(str(project.path))
    current = svc.jobs.shipped_commit(record.project, head)
    if current != record.sha:
        raise Conflict(
            f"the checkout of {record.project} changed since the request ({(record.sha or '')[:10]}"
            f" then, {(current or 'none')[:10]} now): an approval is for the commit checked out at "
            "the request; reject it and deploy again"
        )
    try:
        svc.locks.require_holder(record.project, record.user)
    except PployError as exc:
        raise Conflict(
            f"{record.user} no longer holds the lock on {record.project}: {exc}"
        ) from None
    freeze = svc.freezes.blocking(record.project, record.env or "")
    if freeze is not None and (record.freeze_override or {}).get("freeze") != freeze.name:
        raise Refused(
            f"{record.env} of {record.project} is frozen by {freeze.name!r} since the request"
        )
    started = svc.jobs.launch_approved(record, [caller.user], head)
    cancel_expiry(svc, job_id)
    svc.notifier.emit("job.approved", {**svc.job_payload(started), "by": caller.user})
    return started


def reject(svc: Services, caller: Caller, job_id: int) -> JobRecord:
    """Refuse a waiting deploy (an approver or the requester): nothing runs."""
    record = _awaiting(svc, job_id)
    if caller.user != record.user and not may_approve(svc, caller, record):
        raise Forbidden(
            f"{caller.user} may not reject job #{job_id}: only its approvers or {record.user}"
        )
    if not svc.store.settle_job(
        job_id, AWAITING, status="rejected", ended_at=time.time(),
        message=f"rejected by {caller.user}",
    ):  # fmt: skip
        raise Conflict(f"job #{job_id} is no longer awaiting approval")
    cancel_expiry(svc, job_id)
    rejected = svc.jobs.get(job_id)
    svc.notifier.emit("job.rejected", {**svc.job_payload(rejected), "by": caller.user})
    return rejected


def awaiting_for(svc: Services, caller: Caller) -> list[JobRecord]:
    """Deploys waiting for ``caller``'s approval (not their own)."""
    waiting = [r for r in svc.store.awaiting_jobs() if not expired(svc, r)]
    return [r for r in waiting if r.user != caller.user and may_approve(svc, caller, r)]


def expired(svc: Services, record: JobRecord) -> bool:
    """Mark a waiting job ``expired`` once approval_timeout has passed; True if it has."""
    if time.time() < record.started_at + svc.config.approval_timeout:
        return False
    timeout = svc.config.approval_timeout
    try:
        done = svc.store.settle_job(
            record.id, AWAITING, status="expired", ended_at=time.time(),
            message=f"not approved within {timeout:g} s",
        )  # fmt: skip
    except StoreUnavailable as exc:
        log.event("approval.expire_failed", level="error", job=record.id, error=exc.message)
        return True
    cancel_expiry(svc, record.id)
    if done:
        svc.notifier.emit("job.expired", svc.job_payload(svc.jobs.get(record.id)))
    return True


def schedule_expiry(svc: Services, record: JobRecord) -> None:
    delay = max(0.0, record.started_at + svc.config.approval_timeout - time.time())
    cancel_expiry(svc, record.id)
    svc.approval_timers[record.id] = asyncio.get_running_loop().call_later(
        delay + 0.01, expired, svc, record
    )


def cancel_expiry(svc: Services, job_id: int) -> None:
    timer = svc.approval_timers.pop(job_id, None)
    if timer is not None:
        timer.cancel()


def resume(svc: Services) -> None:
    """At start: the deploys still waiting get their expiry timers back; the configured freeze
    windows get theirs (freeze.started / freeze.ended)."""
    for record in svc.store.awaiting_jobs():
        schedule_expiry(svc, record)
    svc.freezes.watch()


def stop(svc: Services) -> None:
    """At the end: no timer of governance's fires any more."""
    for job_id in list(svc.approval_timers):
        cancel_expiry(svc, job_id)
    svc.freezes.close()
