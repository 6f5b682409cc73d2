"""Operations that span several services, shared by the JSON API and the HTML pages."""

from __future__ import annotations

from pploy.deploy.errors import BadRequest, Forbidden
from pploy.deploy.services import Services


async def remove_project(svc: Services, name: str, user: str) -> None:
    """Remove a project unless a job runs or someone else holds its lock."""
    project = svc.projects.get(name)
    running = svc.jobs.running_for(name)
    if running:
        raise BadRequest(
            f"job #{running.record.id} is running on {name}; cancel it or wait", status=409
        )
    lock = svc.locks.get(name)
    if lock and lock.user != user:
        raise Forbidden(f"{name} is locked by {lock.user}; only they can remove it now")
    await svc.projects.remove(project.name)
    svc.store.delete_project(project.name)
