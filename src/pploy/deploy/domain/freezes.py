"""Deploy freezes (issue 25, interface 3): calendar windows from the config and ad-hoc ones an
admin starts through the API (kept in the database, so they survive a restart and hold on
every instance sharing it).

A deploy to a frozen environment is refused (403) naming the freeze and when it ends. An admin
may override it with a reason, which the job record keeps (``freeze_override``) and the audit
log records (``freeze.overridden``); anyone else's override is refused. Checkouts are never
frozen: a freeze stops what reaches an environment, not the preparation of a fix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from pploy import log
from pploy.deploy.config import FREEZE_NAME, Config
from pploy.deploy.domain.errors import BadRequest, Conflict, NotFound, PployError
from pploy.deploy.domain.govrecords import AdHocFreeze
from pploy.deploy.domain.permissions import Caller, Permissions, Refused
from pploy.deploy.domain.records import Storage

MAX_REASON = 500
# A boundary's timer is set at most this far ahead and set again when it fires early: a
# wall clock that jumps (the timers run on the monotonic clock) delays an announcement by
# at most this long.
LONGEST_TIMER = 3600.0
RETRY_SECONDS = 10.0  # the database could not be asked at a boundary: ask again then
CONFIGURED_BY = "pploy"  # who started and ended a configured window, in its events


def when(ts: float) -> str:
    """A moment as people read it in a refusal: local time with its offset."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="minutes")


@dataclass(frozen=True)
class Freeze:
    name: str
    start: float
    end: float
    envs: list[str]
    projects: list[str]
    reason: str
    source: str  # "config" or "adhoc"
    by: str | None = None  # who started an ad-hoc one

    def active(self, now: float) -> bool:
        return self.start <= now < self.end

    def covers(self, project: str, env: str) -> bool:
        return any(fnmatchcase(env, p) for p in self.envs) and any(
            fnmatchcase(project, p) for p in self.projects
        )

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name, "start": when(self.start), "end": when(self.end),
            "envs": self.envs, "projects": self.projects, "reason": self.reason,
            "source": self.source, "by": self.by, "active": self.active(now),
        }  # fmt: skip

    @classmethod
    def adhoc(cls, record: AdHocFreeze) -> Freeze:
        return cls(
            record.name, record.starts_at, record.until, record.envs, record.projects,
            record.reason, "adhoc", record.created_by,
        )  # fmt: skip


def envs_text(envs: list[str]) -> str:
    return "all environments" if envs == ["*"] else ", ".join(envs)


def parse_until(value: object, now: float) -> float:
    """``until``: an ISO 8601 time with its offset, or seconds since the epoch; in the future."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        until = float(value)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"until must be an ISO 8601 time, not {value!r}") from None
        if moment.tzinfo is None:
            raise BadRequest(f"until must carry its offset (e.g. +09:00 or Z): {value!r}")
        until = moment.timestamp()
    else:
        raise BadRequest("until is required: an ISO 8601 time such as 2027-01-04T00:00:00+09:00")
    if until <= now:
        raise BadRequest(f"until ({when(until)}) has already passed")
    return until


def patterns(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if value is None:
        return ["*"]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v.strip() and len(v) <= 200 for v in value)
    ):
        raise BadRequest(f"{key} must be a non-empty list of names or patterns (omit it: all)")
    return value


class Freezes:
    def __init__(
        self,
        config: Config,
        store: Storage,
        permissions: Permissions,
        emit: Callable[[str, dict[str, Any]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.configured = [
            Freeze(
                f.name,
                f.start.timestamp(),
                f.end.timestamp(),
                f.envs,
                f.projects,
                f.reason,
                "config",
            )  # fmt: skip
            for f in config.freezes
        ]
        self.store = store
        self.permissions = permissions
        self.emit = emit
        self.clock = clock
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._claimed: set[tuple[str, float, str]] = set()  # (name, start, kind) asked

    def all(self) -> list[Freeze]:
        """The configured freezes (past, current and coming) and the ad-hoc ones in force."""
        adhoc = [Freeze.adhoc(r) for r in self.store.current_freezes(self.clock())]
        return self.configured + adhoc

    def active(self) -> list[Freeze]:
        now = self.clock()
        return [f for f in self.all() if f.active(now)]

    def blocking(self, project: str, env: str) -> Freeze | None:
        """The freeze in force over ``env`` of ``project`` that ends last, if any."""
        covering = [f for f in self.active() if f.covers(project, env)]
        return max(covering, key=lambda f: f.end, default=None)

    def check_deploy(
        self, caller: Caller, project: str, env: str, override: object = None
    ) -> dict[str, str] | None:
        """Nothing when no freeze covers the deploy; the override to record when an admin
        gave a reason; otherwise the 403 naming the freeze and when it ends."""
        freeze = self.blocking(project, env)
        if freeze is None:
            return None
        refusal = f"{env} of {project} is frozen by {freeze.name!r} until {when(freeze.end)}" + (
            f" ({freeze.reason})" if freeze.reason else ""
        )
        if override is None or override == "":
            raise Refused(refusal + "; an admin may override it with a reason (override_freeze)")
        if not isinstance(override, str) or not override.strip() or len(override) > MAX_REASON:
            raise BadRequest(f"override_freeze must be the reason, 1 to {MAX_REASON} characters")
        admin = self.permissions.manage_projects(caller, f"override the freeze {freeze.name!r}")
        if not admin.allowed:
            raise Refused(f"{refusal}; {admin.reason}")
        return {"freeze": freeze.name, "reason": override.strip(), "by": caller.user}

    def start(self, caller: Caller, body: dict[str, Any]) -> Freeze:
        """An ad-hoc freeze from now until ``until`` (who may: actions.start_freeze decides)."""
        now = self.clock()
        name = body.get("name")
        if not isinstance(name, str) or not FREEZE_NAME.fullmatch(name):
            raise BadRequest("name is required: 1-64 letters, digits, '.', '_' or '-'")
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise BadRequest(f"reason is required: 1 to {MAX_REASON} characters")
        until = parse_until(body.get("until"), now)
        envs, projects = patterns(body, "envs"), patterns(body, "projects")
        if any(f.name == name for f in self.configured):
            raise Conflict(f"{name!r} is a configured freeze; choose another name")
        record = self.store.add_freeze(
            name=name, envs=envs, projects=projects, starts_at=now, until=until,
            reason=reason.strip(), created_by=caller.user,
        )  # fmt: skip
        if record is None:
            raise Conflict(f"a freeze named {name!r} is already in force")
        freeze = Freeze.adhoc(record)
        self._announce_start(freeze, caller.user)
        return freeze

    def end(self, caller: Caller, name: str) -> Freeze:
        if any(f.name == name for f in self.configured):
            raise Conflict(f"{name!r} is configured in pploy's config file: end it there")
        record = self.store.end_freeze(name, caller.user, self.clock())
        if record is None:
            raise NotFound(f"no ad-hoc freeze named {name!r} is in force")
        freeze = Freeze.adhoc(record)
        self._announce_end(freeze, caller.user)
        return freeze

    def _announce_start(self, freeze: Freeze, by: str) -> None:
        self.emit("freeze.started", {
            "by": by, "freeze": freeze.name, "envs": freeze.envs, "projects": freeze.projects,
            "until": freeze.end, "reason": freeze.reason, "source": freeze.source,
            "until_text": when(freeze.end), "envs_text": envs_text(freeze.envs),
        })  # fmt: skip

    def _announce_end(self, freeze: Freeze, by: str) -> None:
        self.emit("freeze.ended", {
            "by": by, "freeze": freeze.name, "reason": freeze.reason, "source": freeze.source,
        })  # fmt: skip

    # -- configured windows entering and leaving force -------------------------------------
    # One timer per configured window, set for its next boundary (start, then end). At a
    # boundary, each instance claims the announcement in the database (one row per window,
    # start and kind): the one that claims it sends it, so it is sent once however many
    # instances share the database and however often they restart. A window found in force
    # at start is announced then, unless it was already; one that started and ended while no
    # pploy ran is not announced at all (its end is claimed only after its start).

    def watch(self) -> None:
        """Set the timers of the configured windows (at start; announces those in force)."""
        for freeze in self.configured:
            self._boundary(freeze)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _boundary(self, freeze: Freeze) -> None:
        """Announce what is due of ``freeze`` now, then set the timer for its next boundary."""
        self._timers.pop(freeze.name, None)
        now = self.clock()
        try:
            if freeze.start <= now < freeze.end:
                if self._claim(freeze, "freeze.started", now):
                    self._announce_start(freeze, CONFIGURED_BY)
            elif now >= freeze.end:
                if self._claim(freeze, "freeze.ended", now):
                    self._announce_end(freeze, CONFIGURED_BY)
                return  # over: nothing more to announce
        except PployError as exc:  # the database is away: ask again soon
            log.event(
                "freeze.announce_failed", level="error", freeze=freeze.name, error=exc.message
            )
            self._set_timer(freeze, now + RETRY_SECONDS)
            return
        self._set_timer(freeze, freeze.start if now < freeze.start else freeze.end)

    def _claim(self, freeze: Freeze, kind: str, now: float) -> bool:
        """Claim the announcement once per process (a timer may fire a moment early and
        find the window still in force: it is not claimed again)."""
        key = (freeze.name, freeze.start, kind)
        if key in self._claimed:
            return False
        claimed = self.store.claim_announcement(freeze.name, freeze.start, kind, now)
        self._claimed.add(key)
        log.event("freeze.boundary", freeze=freeze.name, kind=kind, claimed=claimed)
        return claimed

    def _set_timer(self, freeze: Freeze, at: float) -> None:
        delay = min(max(0.0, at - self.clock()), LONGEST_TIMER)
        self._timers[freeze.name] = asyncio.get_running_loop().call_later(
            delay, self._boundary, freeze
        )
