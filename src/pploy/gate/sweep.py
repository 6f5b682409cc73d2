"""One way gate times out what waits: a sweep about once a second, not a timer per wait.

A timer re-armed on every chunk cost 8% of gate's time with hundreds of live viewers. Each
waiting thing instead records when its wait started (one clock read, :meth:`IdleSweep.touch`)
and one task per sweep expires those that waited longer than the limit. gate has four: an
upstream silent while streaming (``upstream.idle_timeout``, both front ends), an idle pooled
upstream connection (the fast path's pool keep-alive), and a client connection without a
complete request head (``head_timeout``, the fast path; aiohttp's server keeps its own).
Waiting on a slow client is never counted: the owner :meth:`hold` s an item meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class IdleSweep(Generic[T]):
    """Expires items that waited longer than ``limit`` seconds (0: never), checked every
    ``min(1, limit / 4)`` seconds; ``expire`` is called once per expired item, which is
    forgotten first."""

    def __init__(self, limit: float, expire: Callable[[T], None]) -> None:
        self.limit = limit
        self.expire = expire
        self.since: dict[T, float] = {}
        # The event loop's clock (monotonic), once started.
        self.clock: Callable[[], float] = _not_started
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.clock = loop.time
        if self.limit:
            self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def touch(self, item: T) -> None:
        """``item`` (re)starts waiting now."""
        self.since[item] = self.clock()

    def hold(self, item: T) -> None:
        """``item`` waits on someone else for now (a slow client): not expired until the
        next :meth:`touch`."""
        self.since[item] = math.inf

    def forget(self, item: T) -> None:
        """``item`` no longer waits (done, or waiting on someone else)."""
        self.since.pop(item, None)

    async def _run(self) -> None:
        limit = self.limit
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            now = self.clock()
            for item in [i for i, since in self.since.items() if now - since > limit]:
                del self.since[item]
                self.expire(item)


def _not_started() -> float:
    raise RuntimeError("IdleSweep.start() was not called")
