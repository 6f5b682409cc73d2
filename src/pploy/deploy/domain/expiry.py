"""``lock.expired``: tell the webhooks when a lock runs out rather than being released.

Locks expire lazily (``Store.get_lock`` treats a lock past its time as gone), so nothing in
pploy notices the moment one runs out. This watcher keeps a timer per held lock, set from the
lock events and from the locks found at start; when the timer fires and the store no longer
holds the lock (or holds it for someone else), the lock has expired. A lock extended meanwhile
(``extend``, or a running job keeping it) only moves the timer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pploy.deploy.domain.locks import Locks
from pploy.deploy.domain.records import Lock


class ExpiryWatch:
    def __init__(
        self,
        locks: Locks,
        on_expired: Callable[[Lock], None],
        clock: Callable[[], float] = time.time,
        exists: Callable[[str], bool] = lambda project: True,
    ) -> None:
        self.locks = locks
        self.on_expired = on_expired
        self.clock = clock
        self.exists = exists  # a removed project's lock went with it: not an expiry
        self.held: dict[str, Lock] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def changed(self, event: str, lock: Lock) -> None:
        """Follow a lock event (``Locks``' on_change)."""
        if event == "lock.released":
            self._forget(lock.project)
            return
        previous = self.held.get(lock.project)
        if previous is not None and previous.user != lock.user:
            # someone else could only gain it because the previous holder's lock had run out
            # before this watcher's timer came round
            self.on_expired(previous)
        self._watch(lock)

    def watch_existing(self, project_names: list[str]) -> None:
        """Start watching the locks held when pploy starts."""
        for name in project_names:
            lock = self.locks.get(name)
            if lock is not None:
                self._watch(lock)

    def _watch(self, lock: Lock) -> None:
        self._forget(lock.project)
        self.held[lock.project] = lock
        delay = max(0.0, lock.expires_at - self.clock())
        self._timers[lock.project] = asyncio.get_running_loop().call_later(
            delay, self._due, lock.project
        )

    def _forget(self, project: str) -> None:
        self.held.pop(project, None)
        timer = self._timers.pop(project, None)
        if timer is not None:
            timer.cancel()

    def _due(self, project: str) -> None:
        self._timers.pop(project, None)
        known = self.held.get(project)
        if known is None:
            return
        current = self.locks.get(project)
        if self.held.get(project) is not known:
            return  # reading it gave it to the first in its queue: changed() said so
        if current is not None and current.user == known.user:
            self._watch(current)  # extended since (by the holder or a running job)
            return
        self.held.pop(project, None)
        if current is None and not self.exists(project):
            return
        self.on_expired(known)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
