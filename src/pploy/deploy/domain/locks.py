"""Project locks: one user holds a project for a while; only the holder may act on it."""

from __future__ import annotations

import time
from collections.abc import Callable

from pploy.deploy.domain.errors import BadRequest, Conflict, Forbidden
from pploy.deploy.domain.govrecords import QueuedUser
from pploy.deploy.domain.records import Lock, Storage

OPERATIONS = ("gain", "extend", "release", "queue", "leave")


def describe_left(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class Locks:
    """Gain, extend and release, with expiry checked on every read (see Store.get_lock).

    Each change is one conditional statement in the store (gain_lock, extend_lock, ...): with
    several pploys on one database, a read followed by a write could let two users both win."""

    def __init__(
        self,
        store: Storage,
        *,
        gain_minutes: float = 20,
        extend_minutes: float = 10,
        on_change: Callable[[str, Lock], None] | None = None,
        clock: Callable[[], float] = time.time,
        on_queued: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.gain_seconds = gain_minutes * 60
        self.extend_seconds = extend_minutes * 60
        self.on_change = on_change
        self.clock = clock
        self.on_queued = on_queued  # (project, user, place): lock.queued

    def get(self, project: str) -> Lock | None:
        lock = self.store.get_lock(project, self.clock())
        return lock if lock is not None else self._grant_next(project)

    def apply(self, project: str, user: str, operation: str) -> Lock | None:
        if operation == "gain":
            return self.gain(project, user)
        if operation == "extend":
            return self.extend(project, user)
        if operation == "release":
            self.release(project, user)
            return None
        if operation == "queue":
            return self.queue(project, user)
        if operation == "leave":
            self.store.leave_lock_queue(project, user)
            return self.get(project)
        raise BadRequest(f"operation must be one of {', '.join(OPERATIONS)}")

    def gain(self, project: str, user: str) -> Lock:
        """Take the lock; fails if someone else holds it. The holder gaining again renews it."""
        self.get(project)  # a free lock goes to the first in its queue, not to whoever asks
        for _ in range(3):  # the holder may release between the two statements: try again
            now = self.clock()
            lock = self.store.gain_lock(project, user, now, self.gain_seconds)
            if lock is not None:
                self.store.leave_lock_queue(project, user)
                self._changed("lock.gained", lock)
                return lock
            current = self.store.get_lock(project, now)
            if current is not None:
                raise Conflict(
                    f"{project} is locked by {current.user} for another "
                    f"{describe_left(current.seconds_left(now))}"
                )
        raise Conflict(f"{project}'s lock is changing hands; try again")

    def extend(self, project: str, user: str) -> Lock:
        self.require_holder(project, user)
        lock = self.store.extend_lock(project, user, self.clock(), self.extend_seconds)
        if lock is None:  # it expired or changed hands since: say how it is now
            self.require_holder(project, user)
            raise Conflict(f"you must hold the lock on {project} first")
        self._changed("lock.extended", lock)
        return lock

    def release(self, project: str, user: str) -> None:
        current = self.require_holder(project, user)
        if not self.store.release_lock(project, user, self.clock()):
            self.require_holder(project, user)
            raise Conflict(f"you must hold the lock on {project} first")
        self._changed("lock.released", current)
        self._grant_next(project)

    def require_holder(self, project: str, user: str) -> Lock:
        """The lock if ``user`` holds it; otherwise a 403 (someone else) or 409 (nobody)."""
        now = self.clock()
        current = self.store.get_lock(project, now)
        if current is None:
            raise Conflict(f"you must hold the lock on {project} first")
        if current.user != user:
            raise Forbidden(
                f"{project} is locked by {current.user} for another "
                f"{describe_left(current.seconds_left(now))}; only the holder can do this"
            )
        return current

    def keep_until(self, project: str, user: str, until: float) -> None:
        """Make sure the holder's lock lasts at least until ``until`` (a job is running)."""
        self.store.keep_lock_until(project, user, self.clock(), until)

    def hold_until(self, project: str, user: str, until: float) -> Lock | None:
        """Make sure the holder's lock lasts at least until ``until`` (never shortened), and
        say so (``lock.extended``) when that lengthened it: a deploy awaiting approval keeps
        its requester's lock. The lock as it is now; None when ``user`` does not hold it."""
        lengthened = self.store.keep_lock_until(project, user, self.clock(), until)
        lock = self.store.get_lock(project, self.clock())
        if lock is None or lock.user != user:
            return None
        if lengthened:
            self._changed("lock.extended", lock)
        return lock

    def queue(self, project: str, user: str) -> Lock:
        """Wait in line for the lock (FIFO; queueing again keeps the place); a free lock is
        simply gained. The holder cannot queue for their own lock (409)."""
        lock = self.get(project)
        if lock is None:
            return self.gain(project, user)
        if lock.user == user:
            raise Conflict(f"you hold the lock on {project}; only others can queue for it")
        if self.store.queue_for_lock(project, user, self.clock()) and self.on_queued:
            place = [q.user for q in self.store.lock_queue(project)].index(user) + 1
            self.on_queued(project, user, place)
        return self.get(project) or lock

    def queue_of(self, project: str) -> list[QueuedUser]:
        """Who waits for the lock, first first."""
        return self.store.lock_queue(project)

    def _grant_next(self, project: str) -> Lock | None:
        """Give a free lock to the first in the queue (lock.granted); None if nobody waits."""
        if not self.store.lock_queue(project):
            return None
        lock = self.store.grant_next(project, self.clock(), self.gain_seconds)
        if lock is not None:
            self._changed("lock.granted", lock)
        return lock

    def _changed(self, event: str, lock: Lock) -> None:
        if self.on_change:
            self.on_change(event, lock)
