"""Operations that span several services, shared by the JSON API and the HTML pages."""

from __future__ import annotations

from pploy.deploy.errors import BadRequest
from pploy.deploy.services import Services


async def remove_project(svc: Services, name: str, user: str) -> None:
    """Remove a project: only its lock holder may, and not while a job runs. Its job records
    and logs stay (the audit trail)."""
    project = svc.projects.get(name)
    svc.locks.require_holder(project.name, user)
    running = svc.jobs.running_record(name)
    if running:
        raise BadRequest(f"job #{running.id} is running on {name}; cancel it or wait", status=409)
    await svc.projects.remove(project.name, user)
