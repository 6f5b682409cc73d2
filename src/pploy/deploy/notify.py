"""Webhooks: lock changes and finished jobs, as Slack incoming-webhook or generic JSON.

Sent in the background with a timeout and retries; a failing receiver is logged and never
fails or delays a deploy.
"""

from __future__ import annotations

import asyncio
import string
from typing import Any

import aiohttp

from pploy import log
from pploy.deploy.config import WebhookConfig

DEFAULT_TEMPLATES = {
    "lock.gained": "{user} locked {project} until {expires_at_text}",
    "lock.extended": "{user} extended the lock on {project} until {expires_at_text}",
    "lock.released": "{user} released the lock on {project}",
    "job.finished": (
        "{kind} of {project}{env_text} by {user} {status} in {duration:.0f} s ({sha_short}) {link}"
    ),
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


class Notifier:
    def __init__(self, hooks: list[WebhookConfig]) -> None:
        self.hooks = hooks
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        """Queue ``event`` for every hook that wants it; returns at once."""
        for hook in self.hooks:
            if event in hook.events:
                task = asyncio.get_running_loop().create_task(self._send(hook, event, payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def body(self, hook: WebhookConfig, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        if hook.format == "slack":
            template = hook.templates.get(event, DEFAULT_TEMPLATES[event])
            return {"text": render_template(template, payload)}
        return {"event": event, **payload}

    async def _send(self, hook: WebhookConfig, event: str, payload: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = self.body(hook, event, payload)
        for attempt in range(hook.retries + 1):
            try:
                async with self._session.post(
                    hook.url, json=body, timeout=aiohttp.ClientTimeout(total=hook.timeout_seconds)
                ) as resp:
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
