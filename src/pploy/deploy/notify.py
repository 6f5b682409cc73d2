"""Webhooks: lock changes, started and finished jobs, as Slack incoming-webhook, generic JSON
or Datadog events (the events API go-pploy's ``-ddapikey`` posted to).

Sent in the background with a timeout and retries; a failing receiver is logged and never
fails or delays a deploy.
"""

from __future__ import annotations

import asyncio
import hashlib
import string
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from pploy import log
from pploy.deploy.config import WebhookConfig

DEFAULT_TEMPLATES = {
    "lock.gained": "{user} locked {project} until {expires_at_text}",
    "lock.extended": "{user} extended the lock on {project} until {expires_at_text}",
    "lock.released": "{user} released the lock on {project}",
    "lock.expired": "{user}'s lock on {project} expired",
    "job.started": "{kind} of {project}{env_text} by {user} started {link}",
    "job.finished": (
        "{kind} of {project}{env_text} by {user} {status} in {duration:.0f} s ({sha_short}) {link}"
    ),
    # deploy governance (issue 25)
    "lock.queued": "{user} is waiting for the lock on {project} (place {position})",
    "lock.granted": "{user} now holds the lock on {project} until {expires_at_text}",
    "job.cancelled": "{kind} of {project}{env_text} by {user} was cancelled by {by} {link}",
    "job.awaiting_approval": (
        "{user} asks for approval to deploy {project}{env_text} ({sha_short}) {link}"
    ),
    "job.approved": "{by} approved {user}'s deploy of {project}{env_text} {link}",
    "job.rejected": "{by} rejected {user}'s deploy of {project}{env_text} {link}",
    "job.expired": "{user}'s deploy of {project}{env_text} expired unapproved {link}",
    "freeze.started": "{by} froze {envs_text} until {until_text}: {reason}",
    "freeze.ended": "{by} ended the freeze {freeze}",
    "freeze.overridden": (
        "{by} overrode the freeze {freeze} to deploy {project}{env_text}: {reason} {link}"
    ),
    "project.added": "{user} added {project} from {url}",
    "project.removed": "{user} removed {project}",
    "token.created": "{user} created the API token {name}",
    "token.revoked": "{user} revoked the API token {name}",
}


def render_template(template: str, payload: dict[str, Any]) -> str:
    """Fill ``template`` from ``payload``; a field that cannot be filled (unknown, positional,
    a bad attribute or format spec) stays as written, and the other fields are still filled."""
    formatter = string.Formatter()
    try:
        pieces = list(formatter.parse(template))
    except ValueError:  # unbalanced braces: nothing to fill
        return template
    out = []
    for literal, field_name, spec, conversion in pieces:
        out.append(literal)
        if field_name is None:
            continue
        field = "{" + field_name + (f"!{conversion}" if conversion else "")
        field += (f":{spec}" if spec else "") + "}"
        try:
            out.append(formatter.vformat(field, (), payload))
        except (ValueError, IndexError, KeyError, AttributeError, TypeError):
            out.append(field)
    return "".join(out)


DATADOG_PATH = "/api/v1/events"
# Datadog's alert_type for a finished job's status; anything else is "info".
DATADOG_ALERT = {"succeeded": "success", "failed": "error", "timed_out": "error"}


def wants(hook: WebhookConfig, event: str, payload: dict[str, Any]) -> bool:
    """The hook asked for ``event`` and, for a job event, for the job's kind."""
    if event not in hook.events:
        return False
    return not event.startswith("job.") or payload.get("kind") in hook.kinds


def datadog_url(hook: WebhookConfig) -> str:
    """The events endpoint of the hook's site (``url`` may also name the endpoint itself)."""
    base = (hook.url or "").rstrip("/")
    return base if base.endswith(DATADOG_PATH) else base + DATADOG_PATH


def datadog_event(text: str, event: str, payload: dict[str, Any]) -> dict[str, Any]:
    """An event for Datadog's events API, tagged as go-pploy tagged them (``project:``,
    ``env:``) and aggregated per project and user, as go-pploy did."""
    project, user = str(payload.get("project", "")), str(payload.get("user", ""))
    tags = [f"project:{project}", f"pploy_event:{event}"]
    if payload.get("env"):
        tags.append(f"env:{payload['env']}")
    if payload.get("kind"):
        tags.append(f"kind:{payload['kind']}")
    body: dict[str, Any] = {
        "title": text,
        "text": text,
        "date_happened": int(time.time()),
        "aggregation_key": hashlib.sha256(f"{project}\0{user}".encode()).hexdigest()[:32],
        "alert_type": DATADOG_ALERT.get(str(payload.get("status")), "info")
        if event == "job.finished"
        else "info",
        "source_type_name": "pploy",
        "tags": tags,
    }
    return body


class Notifier:
    def __init__(self, hooks: list[WebhookConfig]) -> None:
        self.hooks = hooks
        # Also told of every event, first: the audit trail (audit.Audit.record).
        self.sinks: list[Callable[[str, dict[str, Any]], None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def warn_relative_links(self, public_url: str | None) -> bool:
        """At start: without public_url the links sent are paths, useless in a chat; say so."""
        if not self.hooks or public_url:
            return False
        log.event(
            "webhook.relative_links", level="warning",
            problem="public_url is not set: links in notifications will be relative "
            "(/projects/..., /jobs/...); set public_url to the URL users open",
        )  # fmt: skip
        return True

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        """Queue ``event`` for every hook that wants it; returns at once."""
        for sink in self.sinks:
            sink(event, payload)
        for hook in self.hooks:
            if wants(hook, event, payload):
                task = asyncio.get_running_loop().create_task(self._send(hook, event, payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def body(self, hook: WebhookConfig, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        if hook.format in ("slack", "datadog"):
            template = hook.templates.get(event, DEFAULT_TEMPLATES[event])
            text = render_template(template, payload)
            return (
                datadog_event(text, event, payload) if hook.format == "datadog" else {"text": text}
            )
        return {"event": event, **payload}

    async def _send(self, hook: WebhookConfig, event: str, payload: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = self.body(hook, event, payload)
        url, headers = hook.url or "", {}
        if hook.format == "datadog":
            url, headers = datadog_url(hook), {"DD-API-KEY": hook.api_key or ""}
        for attempt in range(hook.retries + 1):
            try:
                async with self._session.post(
                    url, json=body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=hook.timeout_seconds),
                ) as resp:  # fmt: skip
                    if resp.status < 300:
                        log.event("webhook.sent", hook=hook.url, webhook_event=event)
                        return
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__ + (f": {exc}" if str(exc) else "")
            log.event(
                "webhook.failed", level="warning", hook=hook.url, webhook_event=event,
                attempt=attempt + 1, problem=problem,
            )  # fmt: skip
            if attempt < hook.retries:
                await asyncio.sleep(min(2**attempt, 10))

    async def close(self, wait: float = 2.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=wait)
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()
