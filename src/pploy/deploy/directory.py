"""The deployers an LDAP directory lists (config ``ldap:``), for standalone mode.

pploy reads the whole list once per ``cache_minutes`` in the background and answers every
request from that copy, so a slow or unreachable directory never delays a page, and a
directory that goes down keeps the last list it gave (the error is logged). pploy starts even
when the directory cannot be reached: it then serves its static ``users`` until a refresh
succeeds.

Each refresh also reads the directory's groups, so :meth:`Directory.groups_of` answers without
a round trip. A user's groups are the ``cn`` of every ``groupOfNames`` (``member``) or
``groupOfUniqueNames`` (``uniqueMember``) under ``group_base_dn`` (default ``base_dn``) naming
the user's entry, plus the first value of every DN in the entry's ``memberOf`` (Active
Directory, or OpenLDAP's memberof overlay). Permission rules reach them through that one method,
or, in gate mode, through :meth:`Directory.groups_of_email`: gate's user name is whatever the
login provider lets a person pick (a GitHub login), so there the directory is asked about the
email gate vouched for, matched against ``mail_attribute``.

ldap3 is blocking: every call runs in a worker thread, bounded by ``timeout_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from pploy import log
from pploy.deploy.config import LdapConfig
from pploy.deploy.domain import names

GROUP_FILTER = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
PAGE_SIZE = 500  # entries per page: below slapd's default size limit (500 per request)
RETRY_SECONDS = 60.0  # after a failed refresh, try again this soon (or at cache_minutes)


class DirectoryError(Exception):
    """The directory could not be read (unreachable, refused the bind, bad search)."""


@dataclass(frozen=True)
class Listing:
    """One refresh's result: the user names, and each name's groups."""

    users: tuple[str, ...] = ()
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    # lowercased email (mail_attribute) -> the one person it belongs to; an email two entries
    # hold belongs to neither (it cannot vouch for either)
    by_email: dict[str, str] = field(default_factory=dict)
    skipped: int = 0  # entries whose name pploy refuses (see names.user_name)


def _normal_dn(dn: str) -> str:
    """``dn`` in one spelling (attribute types and values lowercased, no spaces around
    separators), so a group's ``member`` value matches the person's entry DN."""
    from ldap3.utils.dn import parse_dn

    try:
        parts = parse_dn(dn, strip=True)
        return "".join(f"{kind.lower()}={value.lower()}{sep}" for kind, value, sep in parts)
    except Exception:  # a value no parser accepts still compares with itself
        return dn.strip().lower()


def _first_rdn_value(dn: str) -> str | None:
    """``cn=ops\\,night,ou=g`` -> ``ops,night`` (a group's name, RFC 4514 escapes undone)."""
    from ldap3.utils.dn import parse_dn

    try:
        parts = parse_dn(dn, strip=True)
    except Exception:
        return None
    return _unescape(parts[0][1]) if parts else None


_ESCAPE = re.compile(rb"\\([0-9A-Fa-f]{2}|.)", re.DOTALL)


def _unescape(value: str) -> str:
    """Undo a DN value's escapes: ``\\,`` is ``,`` and ``\\e5`` one byte of UTF-8."""

    def one(match: re.Match[bytes]) -> bytes:
        text = match.group(1)
        return bytes.fromhex(text.decode()) if len(text) == 2 else text

    return _ESCAPE.sub(one, value.encode()).decode("utf-8", "replace")


def _values(attributes: dict[str, Any], key: str) -> list[str]:
    """An attribute's values as a list of strings, whatever case the server spelled it in."""
    for name, value in attributes.items():
        if name.lower() == key.lower():
            if isinstance(value, list | tuple):
                return [str(v) for v in value]
            return [str(value)] if value not in (None, "") else []
    return []


def read_listing(config: LdapConfig) -> Listing:
    """Read the people and groups from the directory (blocking: call it from a thread).
    Raises DirectoryError with the directory's reason."""
    import ldap3
    from ldap3.core.exceptions import LDAPException

    # ldap3 checks no certificate unless told to: the directory's certificate and name are
    # checked (against ca_file, or the system's CAs), for StartTLS and ldaps:// alike.
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=config.ca_file)
    # ldap3 refuses the "/" that ends a URL such as ldap://host:389/ (an empty DN part)
    server = ldap3.Server(
        config.url.rstrip("/"), connect_timeout=config.timeout_seconds, get_info=ldap3.NONE,
        tls=tls,
    )  # fmt: skip
    bind = ldap3.AUTO_BIND_TLS_BEFORE_BIND if config.start_tls else ldap3.AUTO_BIND_NO_TLS
    try:
        with ldap3.Connection(
            server,
            user=config.bind_dn,
            password=config.bind_password,
            auto_bind=bind,
            receive_timeout=config.timeout_seconds,
            raise_exceptions=True,
            read_only=True,
        ) as conn:
            people = conn.extend.standard.paged_search(
                config.base_dn, config.filter, ldap3.SUBTREE,
                attributes=[config.attribute, "memberOf", config.mail_attribute],
                paged_size=PAGE_SIZE, generator=False,
            )  # fmt: skip
            truncated = (conn.result or {}).get("description") == "sizeLimitExceeded"
            groups = conn.extend.standard.paged_search(
                config.group_base_dn or config.base_dn, GROUP_FILTER, ldap3.SUBTREE,
                attributes=["cn", "member", "uniqueMember"], paged_size=PAGE_SIZE, generator=False,
            )  # fmt: skip
    except LDAPException as exc:
        raise DirectoryError(f"{type(exc).__name__}: {exc}") from exc
    listing = _listing(config, list(people or []), list(groups or []))
    if truncated:  # the server's limit, not ours: say so, and use what it gave
        log.event(
            "ldap.truncated", level="warning", url=config.url, users=len(listing.users),
            problem="the directory stopped at its size limit: people past it cannot sign in; "
            "bind (ldap.bind_dn) as an account the limit does not apply to, or narrow "
            "ldap.filter",
        )  # fmt: skip
    return listing


def _listing(
    config: LdapConfig, people: list[dict[str, Any]], groups: list[dict[str, Any]]
) -> Listing:
    """The names (validated by names.user_name; others skipped) and groups in two searches'
    entries."""
    users: list[str] = []
    by_dn: dict[str, str] = {}
    member_of: dict[str, set[str]] = {}
    emails: dict[str, set[str]] = {}
    skipped = 0
    for entry in people:
        if entry.get("type") != "searchResEntry":
            continue
        attributes = entry.get("attributes") or {}
        values = _values(attributes, config.attribute)
        if not values:
            continue
        try:
            name = names.user_name(values[0])
        except names.InvalidName:
            skipped += 1
            continue
        if name not in member_of:
            users.append(name)
            member_of[name] = set()
        by_dn[_normal_dn(entry["dn"])] = name
        for mail in _values(attributes, config.mail_attribute):
            emails.setdefault(mail.strip().lower(), set()).add(name)
        for dn in _values(attributes, "memberOf"):
            group = _first_rdn_value(dn)
            if group:
                member_of[name].add(group)
    for entry in groups:
        if entry.get("type") != "searchResEntry":
            continue
        attributes = entry.get("attributes") or {}
        group_names = _values(attributes, "cn")
        if not group_names:
            continue
        for member in _values(attributes, "member") + _values(attributes, "uniqueMember"):
            found = by_dn.get(_normal_dn(member))
            if found is not None:
                member_of[found].add(group_names[0])
    return Listing(
        users=tuple(users),
        groups={name: frozenset(found_groups) for name, found_groups in member_of.items()},
        skipped=skipped,
        by_email={mail: next(iter(owners)) for mail, owners in emails.items() if len(owners) == 1},
    )


class Directory:
    """The last list the directory gave, refreshed in the background."""

    def __init__(self, config: LdapConfig) -> None:
        self.config = config
        self.listing = Listing()
        self.refreshed_at: float | None = None  # time.time() of the last good refresh
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def users(self) -> tuple[str, ...]:
        return self.listing.users

    def knows(self, name: str) -> bool:
        return name in self.listing.groups

    def groups_of(self, name: str) -> frozenset[str]:
        """The groups the directory puts ``name`` in (empty for a name it does not list).
        This is the hook permission rules use; it never waits for the directory."""
        return self.listing.groups.get(name, frozenset())

    def groups_of_email(self, email: str) -> frozenset[str]:
        """The groups of the one person whose ``mail_attribute`` is ``email`` (compared
        without regard to case); empty when nobody or more than one entry holds it."""
        name = self.listing.by_email.get(email.strip().lower())
        return self.groups_of(name) if name is not None else frozenset()

    async def refresh(self) -> bool:
        """Read the directory once; on failure keep the last list and log why. True on success."""
        started = time.monotonic()
        try:
            listing = await asyncio.to_thread(read_listing, self.config)
        except Exception as exc:  # DirectoryError, or anything else: the loop must live on
            if not isinstance(exc, DirectoryError):
                exc = DirectoryError(f"{type(exc).__name__}: {exc}")
            self.last_error = str(exc)
            log.event(
                "ldap.failed", level="warning", url=self.config.url, problem=str(exc),
                kept_users=len(self.listing.users),
            )  # fmt: skip
            return False
        self.listing, self.refreshed_at, self.last_error = listing, time.time(), None
        log.event(
            "ldap.refreshed", url=self.config.url, users=len(listing.users),
            skipped=listing.skipped, seconds=round(time.monotonic() - started, 3),
        )  # fmt: skip
        return True

    async def start(self) -> None:
        """Read the list once (a failure is logged, never raised), then keep it fresh."""
        ok = await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._keep_fresh(ok))

    async def _keep_fresh(self, ok: bool) -> None:
        period = self.config.cache_minutes * 60
        while True:
            await asyncio.sleep(period if ok else min(period, RETRY_SECONDS))
            ok = await self.refresh()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
