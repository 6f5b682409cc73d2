"""The one place that decides what a caller may do: every state change — adding or removing a
project, the lock, checkout, deploy, cancel, API tokens — is a function here taking the
:class:`~pploy.deploy.domain.permissions.Caller`, whatever the route (JSON API, HTML forms, one-shot
endpoints, WebSocket commands, the originals' URLs). Routes never call the state-changing
methods of ``svc.locks``, ``svc.jobs``, ``svc.projects`` or ``svc.tokens`` themselves.

Each action records on the request that it ran (:func:`taking`, set up by the middleware for
every request): a state-changing request that succeeds without one is refused as a bug by
:mod:`pploy.deploy.web.middleware`, and ``tests/deploy/test_route_inventory.py`` lists the router's
routes and fails on any that no action and no hostile test covers.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from pploy.deploy import governance
from pploy.deploy.domain.errors import BadRequest, NotFound
from pploy.deploy.domain.freezes import Freeze
from pploy.deploy.domain.names import without_secrets
from pploy.deploy.domain.permissions import Caller
from pploy.deploy.domain.projects import Project
from pploy.deploy.domain.records import ApiToken, JobRecord, Lock
from pploy.deploy.domain.tokens import NewToken
from pploy.deploy.services import Services

P = ParamSpec("P")
R = TypeVar("R")

# The actions the current request has entered (in order); None outside a request.
_TAKEN: ContextVar[list[str] | None] = ContextVar("pploy_actions_taken", default=None)
_ACTIONS: dict[str, Callable[..., Awaitable[object]]] = {}


@contextmanager
def taking() -> Iterator[list[str]]:
    """Collect the names of the actions entered inside the block (one request's, or one
    WebSocket command's)."""
    taken: list[str] = []
    reset = _TAKEN.set(taken)
    try:
        yield taken
    finally:
        _TAKEN.reset(reset)


def action(function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Mark ``function`` as an action: entering it is recorded before any rule is decided."""

    @functools.wraps(function)
    async def entered(*args: P.args, **kwargs: P.kwargs) -> R:
        taken = _TAKEN.get()
        if taken is not None:
            taken.append(function.__name__)
        return await function(*args, **kwargs)

    _ACTIONS[function.__name__] = entered
    return entered


def is_action(function: object) -> bool:
    """True for a function of this module marked with :func:`action`."""
    name = getattr(function, "__name__", "")
    return _ACTIONS.get(name) is function


def names() -> frozenset[str]:
    """Every action's name."""
    return frozenset(_ACTIONS)


# -- projects -----------------------------------------------------------------------------


@action
async def add_project(svc: Services, caller: Caller, url: str) -> Project:
    """Clone ``url`` as a new project, if ``caller`` may manage projects (checked first, so a
    refusal clones nothing)."""
    svc.permissions.manage_projects(caller, "add projects").require()
    project = await svc.projects.clone(url)
    added = {"project": project.name, "user": caller.user, "url": without_secrets(url)}
    svc.notifier.emit("project.added", added)
    return project


@action
async def remove_project(svc: Services, caller: Caller, name: str) -> None:
    """Remove a project: only an admin (``permissions.admins``) who holds its lock may, and not
    while a job runs. Its job records and logs stay (the audit trail)."""
    project = svc.projects.get(name)
    svc.permissions.manage_projects(caller, f"remove {project.name}").require()
    svc.locks.require_holder(project.name, caller.user)
    running = svc.jobs.running_record(name)
    if running:
        raise BadRequest(f"job #{running.id} is running on {name}; cancel it or wait", status=409)
    await svc.projects.remove(project.name, caller.user)
    svc.notifier.emit("project.removed", {"project": project.name, "user": caller.user})


# -- the lock and jobs --------------------------------------------------------------------


@action
async def apply_lock(
    svc: Services, caller: Caller, project: Project, operation: str
) -> Lock | None:
    """``gain``, ``extend`` or ``release`` ``project``'s lock as ``caller`` (a lock someone
    else holds is refused by the lock rules; releasing returns None)."""
    return svc.locks.apply(project.name, caller.user, operation)


@action
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


@action
async def start_checkout(svc: Services, caller: Caller, project: Project, ref: str) -> JobRecord:
    """Check ``ref`` out in ``project`` as ``caller`` (the token's name recorded, if any)."""
    return await svc.jobs.start_checkout(project, ref, caller.user, token=caller.token)


@action
async def cancel_job(svc: Services, caller: Caller, job_id: int) -> JobRecord:
    """Cancel job ``job_id``: only the holder of its project's lock may (the job records
    ``caller`` as who cancelled it)."""
    return svc.jobs.cancel(job_id, caller.user)


# -- API tokens ---------------------------------------------------------------------------


@action
async def create_token(svc: Services, caller: Caller, name: str, expires_days: object) -> NewToken:
    """A new API token for ``caller``, made with a signed-in session: a token never mints
    another (a leaked token that expires must not be able to make one that does not)."""
    svc.permissions.mint_tokens(caller).require()
    return svc.tokens.create(caller, name, expires_days)


@action
async def revoke_token(svc: Services, caller: Caller, token_id: int) -> ApiToken:
    """Revoke token ``token_id``: the caller's own, or anyone's for an admin
    (``permissions.admins``) — how an admin cuts off a person gate no longer lets in. For
    anyone else another user's token is as unknown as a missing one."""
    record = svc.store.get_token(token_id)
    if record is None or not svc.permissions.manage_tokens_of(caller, record.user).allowed:
        raise NotFound(f"you have no token #{token_id}")
    return svc.tokens.revoke(record.user, token_id)


def tokens_of(svc: Services, caller: Caller, user: str | None) -> list[ApiToken]:
    """The tokens of ``user`` (default: the caller's own); another user's only for an admin.
    A read: it changes nothing, so it is not recorded as an action."""
    owner = user or caller.user
    svc.permissions.manage_tokens_of(caller, owner).require()
    return svc.tokens.list(owner)


# -- approvals and freezes (docs/governance.md) -------------------------------------------


@action
async def approve_job(svc: Services, caller: Caller, job_id: int) -> JobRecord:
    """Approve a deploy awaiting approval: an approver other than its requester, for the
    commit checked out when it was requested; the deploy then starts."""
    return await governance.approve(svc, caller, job_id)


@action
async def reject_job(svc: Services, caller: Caller, job_id: int) -> JobRecord:
    """Reject a deploy awaiting approval (an approver or its requester): nothing runs."""
    return governance.reject(svc, caller, job_id)


@action
async def start_freeze(svc: Services, caller: Caller, body: dict[str, Any]) -> Freeze:
    """Start an ad-hoc freeze: admins only (``permissions.admins``; everyone when none)."""
    svc.permissions.manage_projects(caller, "start a freeze").require()
    return svc.freezes.start(caller, body)


@action
async def end_freeze(svc: Services, caller: Caller, name: str) -> Freeze:
    """End an ad-hoc freeze: admins only (``permissions.admins``; everyone when none)."""
    svc.permissions.manage_projects(caller, "end a freeze").require()
    return svc.freezes.end(caller, name)
