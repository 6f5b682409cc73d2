"""Restrictions re-checked during a session, from the provider token kept in it.

GitHub organisation membership can change after login; typester/gate refused a removed user at
the next request. Asking GitHub on every request is slow and rate-limited, so each session is
re-checked at most every ``auth.info.recheck_interval`` (login counts as a check). Concurrent
requests of one session share one check. The verdict is remembered per cookie value in memory:
a restarted gate checks each session once more, which is only one API call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pploy.gate.providers import Provider
from pploy.gate.session import Session

CACHE_SIZE = 4096


@dataclass(frozen=True)
class Verdict:
    """``reason`` is None when the session may go on; else why it ends."""

    reason: str | None


ADMITTED = Verdict(None)


class Rechecker:
    """Decides whether a session still passes the provider's restrictions."""

    def __init__(self, provider: Provider, interval: float) -> None:
        self.provider = provider
        self.interval = interval
        self._checked: dict[str, float] = {}
        self._ended: dict[str, str] = {}
        self._inflight: dict[str, asyncio.Future[Verdict]] = {}

    async def verdict(self, cookie: str, session: Session, now: float) -> Verdict:
        """ADMITTED, or the reason this session ends. Raises LoginFailed when the provider
        cannot answer (the session is kept and checked again at the next request)."""
        if not self.provider.rechecks:
            return ADMITTED
        if cookie in self._ended:
            return Verdict(self._ended[cookie])
        if not session.token:
            return Verdict("this session predates membership re-checks; sign in again")
        last = max(session.issued, self._checked.get(cookie, 0.0))
        if 0 <= now - last < self.interval:
            return ADMITTED
        running = self._inflight.get(cookie)
        if running is None:
            running = asyncio.ensure_future(self._check(cookie, session.token, now))
            self._inflight[cookie] = running
            running.add_done_callback(lambda _: self._inflight.pop(cookie, None))
        return await asyncio.shield(running)

    async def _check(self, cookie: str, token: str, now: float) -> Verdict:
        reason = await self.provider.recheck(token)
        for table in (self._checked, self._ended):
            if len(table) >= CACHE_SIZE:
                table.clear()
        if reason is None:
            self._checked[cookie] = now
            return ADMITTED
        self._ended[cookie] = reason
        return Verdict(reason)
