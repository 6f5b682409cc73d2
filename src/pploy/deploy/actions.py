"""Operations that span several services, shared by the JSON API and the HTML pages."""

from __future__ import annotations

from pploy.deploy import governance, names
from pploy.deploy.errors import BadRequest
from pploy.deploy.permissions import Caller
from pploy.deploy.projects import Project
from pploy.deploy.services import Services
from pploy.deploy.store import JobRecord


async def remove_project(svc: Services, name: str, user: str, caller: Caller | None = None) -> None:
    """Remove a project: only an admin (``permissions.admins``) who holds its lock may, and not
    while a job runs. Its job records and logs stay (the audit trail)."""
    project = svc.projects.get(name)
    svc.permissions.manage_projects(caller or Caller(user), f"remove {project.name}").require()
    svc.locks.require_holder(project.name, user)
    running = svc.jobs.running_record(name)
    if running:
        raise BadRequest(f"job #{running.id} is running on {name}; cancel it or wait", status=409)
    await svc.projects.remove(project.name, user)
    svc.notifier.emit("project.removed", {"project": project.name, "user": user})


async def add_project(svc: Services, caller: Caller, url: str) -> Project:
    """Clone ``url`` as a new project, if ``caller`` may manage projects (checked first, so a
    refusal clones nothing)."""
    svc.permissions.manage_projects(caller, "add projects").require()
    project = await svc.projects.clone(url)
    added = {"project": project.name, "user": caller.user, "url": names.without_secrets(url)}
    svc.notifier.emit("project.added", added)
    return project


async def start_deploy(
    svc: Services, caller: Caller, project: Project, env: str, override_freeze: object = None
) -> JobRecord:
    """Deploy ``project`` to ``env`` as ``caller``: the permission rules first (a refusal
    touches no lock and starts nothing), then freezes (an admin's ``override_freeze`` reason
    is recorded), then the lock and job rules; the token's name, if one was used, goes into
    the job record."""
    svc.permissions.deploy(caller, project.name, env).require()
    override = svc.freezes.check_deploy(caller, project.name, env, override_freeze)
    if governance.approval_rule(svc, project.name, env):  # waits for another person's approval
        return await governance.request_approval(svc, caller, project, env, override)
    record = await svc.jobs.start_deploy(project, env, caller.user, token=caller.token)
    return governance.overridden(svc, record, override)


async def start_checkout(svc: Services, caller: Caller, project: Project, ref: str) -> JobRecord:
    """Check ``ref`` out in ``project`` as ``caller`` (the token's name recorded, if any)."""
    return await svc.jobs.start_checkout(project, ref, caller.user, token=caller.token)
