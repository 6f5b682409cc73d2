"""What the JSON API and the HTML pages both show: one place builds each view of the state."""

from __future__ import annotations

import asyncio
from typing import Any

from pploy.deploy.domain import git
from pploy.deploy.domain.projects import Project, RepoFiles
from pploy.deploy.services import Services


def project_summary(svc: Services, project: Project) -> dict[str, Any]:
    lock = svc.locks.get(project.name)
    running = svc.jobs.running_record(project.name)
    last = svc.store.last_job(project.name)
    last_deploy = svc.store.last_job(project.name, "deploy")
    # "Last deployed" means the last successful deploy, as on the project page; a failed attempt
    # after it is shown as such beside it.
    deployed = svc.store.last_successful_deploys(project.name).values()
    succeeded = max(deployed, key=lambda job: job.id, default=None)
    failed = svc.store.last_failed_deploy(project.name)
    return {
        "name": project.name,
        "lock": {**lock.to_json(), "queue": [q.to_json() for q in svc.locks.queue_of(project.name)]}
        if lock
        else None,
        "running_job": running.to_json() if running else None,
        "last_job": last.to_json() if last else None,
        "last_deploy": last_deploy.to_json() if last_deploy else None,
        "last_successful_deploy": succeeded.to_json() if succeeded else None,
        "last_failed_deploy": failed.to_json() if failed else None,
    }


async def project_detail(
    svc: Services, project: Project, files: RepoFiles | None = None
) -> dict[str, Any]:
    """The summary plus what the clone's ``.deploy/`` says, read off the event loop with every
    repository file bounded and kept inside the clone (see repofiles)."""
    files = files or await project.read_files()
    deployed = svc.store.last_successful_deploys(project.name)
    repository = svc.store.current_repository(project.name)
    return {
        **project_summary(svc, project),
        "repository": repository.to_json() if repository else None,
        "envs": files.envs,
        "deploy_problem": files.deploy_problem,
        "checkout_overwrite": files.checkout_overwrite,
        "checkout_problem": files.checkout_problem,
        "readme_problem": files.readme_problem,
        "last_deployed": {env: job.to_json() for env, job in deployed.items()},
    }


async def commits_between(path: str, base: str, tip: str) -> list[dict[str, Any]] | None:
    """The commits reachable from ``tip`` but not from ``base`` (newest first, at most 100), or
    None when git cannot tell (a commit missing from the clone)."""
    if base == tip:
        return []
    try:
        return [c.to_json() for c in await git.recent_commits(path, 100, f"{base}..{tip}")]
    except (git.GitError, TimeoutError):
        return None


async def commits_view(svc: Services, project: Project) -> dict[str, Any]:
    """Recent commits, HEAD, and per environment the last successful deploy, the commits
    between it and HEAD that deploying now would ship (``pending``) and the deployed commits
    HEAD lacks, which deploying now would undo (``rollback``): both None when that commit is not
    in the clone. Without ``rollback`` an older checkout would read as "up to date"."""
    path = str(project.path)
    head = await git.head_sha(path)
    commits = []
    error = None
    try:
        commits = await git.recent_commits(path, svc.config.git.commits)
    except git.GitError as exc:
        error = str(exc)
    envs: dict[str, Any] = {}
    deployed = svc.store.last_successful_deploys(project.name)
    for env in await asyncio.to_thread(project.deploy_envs):
        job = deployed.get(env)
        pending: list[dict[str, Any]] | None = []
        rollback: list[dict[str, Any]] | None = []
        if job is None or not job.sha:
            pending = rollback = None
        elif head:
            pending = await commits_between(path, job.sha, head)
            rollback = await commits_between(path, head, job.sha)
        envs[env] = {
            "last_deployed": job.to_json() if job else None,
            "pending": pending,
            "rollback": rollback,
        }
    return {
        "head": head,
        "default_branch": await git.default_branch(path),
        "commits": [c.to_json() for c in commits],
        "envs": envs,
        "error": error,
    }
