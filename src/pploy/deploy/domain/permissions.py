"""Who may do what: the ``permissions`` rules of the configuration, decided in one place.

Two questions, asked by every route that adds or removes projects or starts a deploy (JSON API,
HTML forms, one-shot endpoints): may this caller manage projects (``admins``), and may this
caller deploy ``project`` to ``env`` (``deploy`` rules, the first matching rule decides)? An
entry of a ``users`` list names a user (``alice``), an exact email (``alice@example.com``), a
whole email domain (``@example.com``; emails come from gate's signed assertion or from the
token's owner), or a group the directory puts the user in (``groups_of``: none until an LDAP
directory is configured). Empty or absent rules allow everyone, as pploy always did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from pploy.deploy.domain.errors import Forbidden

if TYPE_CHECKING:
    from pploy.deploy.config import PermissionsConfig

GroupsOf = Callable[["Caller"], Iterable[str]]


def no_groups(caller: Caller) -> Iterable[str]:
    """The default ``groups_of``: without a directory nobody is in any group."""
    return ()


class Refused(Forbidden):
    """A permission rule refused the request: always a 403 naming what and why, also for
    HTML forms (which show other refusals as a message on the next page)."""


@dataclass(frozen=True)
class Caller:
    """Who makes a request: the user, the email gate (or the token's owner) vouched for, and
    the name of the API token used, if any (recorded on the jobs it starts)."""

    user: str
    email: str | None = None
    token: str | None = None
    token_id: int | None = None


@dataclass(frozen=True)
class Decision:
    """An answer with its reason: shown on a disabled button and in a 403."""

    allowed: bool
    reason: str

    def require(self) -> None:
        """Raise the 403 that names what is refused and why."""
        if not self.allowed:
            raise Refused(self.reason)


def matches(entry: str, caller: Caller, groups_of: GroupsOf = no_groups) -> bool:
    """True when ``entry`` (a name, an exact email, ``@domain`` or a group) covers ``caller``.

    Emails compare case-insensitively (their domain is, and providers differ on the local
    part); names and groups exactly, as the rest of pploy does."""
    email = (caller.email or "").lower()
    if entry.startswith("@"):
        return bool(email) and email.endswith(entry.lower()) and email.count("@") == 1
    if "@" in entry:  # an email: only an email gate or the token vouched for, never a name
        return bool(email) and email == entry.lower()
    if caller.user == entry:
        return True
    return entry in set(groups_of(caller))


class Permissions:
    """The configured rules, asked per caller; ``groups_of`` is the directory's hook."""

    def __init__(self, config: PermissionsConfig, groups_of: GroupsOf = no_groups) -> None:
        self.config = config
        self.groups_of = groups_of

    def _covered(self, users: Iterable[str], caller: Caller) -> bool:
        return any(matches(entry, caller, self.groups_of) for entry in users)

    def manage_projects(self, caller: Caller, action: str = "add or remove projects") -> Decision:
        """May ``caller`` add or remove projects? Everyone, unless ``admins`` lists people."""
        admins = self.config.admins
        if not admins or self._covered(admins, caller):
            return Decision(True, "")
        return Decision(
            False,
            f"{caller.user} may not {action}: only the admins in permissions.admins may "
            f"({', '.join(admins)})",
        )

    def mint_tokens(self, caller: Caller) -> Decision:
        """May ``caller`` make an API token? Only with a signed-in session: a token never
        mints another (a leaked token that expires must not make one that does not)."""
        if caller.token is None:
            return Decision(True, "")
        return Decision(
            False,
            "API tokens are made with a signed-in session, not with another API token "
            f"(this request used {caller.token!r})",
        )

    def manage_tokens_of(self, caller: Caller, owner: str) -> Decision:
        """May ``caller`` list and revoke ``owner``'s API tokens? Their own, always; anyone's
        for an admin listed in ``admins`` (an empty list makes nobody an admin here: everyone
        revoking everyone's tokens is no default)."""
        if owner == caller.user:
            return Decision(True, "")
        admins = self.config.admins
        if admins and self._covered(admins, caller):
            return Decision(True, "")
        return Decision(
            False,
            f"{caller.user} may not manage {owner}'s API tokens: only the admins in "
            f"permissions.admins may ({', '.join(admins) or 'none configured'})",
        )

    def deploy(self, caller: Caller, project: str, env: str) -> Decision:
        """May ``caller`` deploy ``project`` to ``env``? The first rule whose project and env
        patterns match decides; no matching rule allows everyone."""
        for number, rule in enumerate(self.config.deploy, 1):
            if fnmatchcase(project, rule.project) and fnmatchcase(env, rule.env):
                if self._covered(rule.users, caller):
                    return Decision(True, "")
                return Decision(
                    False,
                    f"{caller.user} may not deploy {project} to {env}: permissions.deploy "
                    f"rule {number} (project {rule.project!r}, env {rule.env!r}) allows only "
                    f"{', '.join(rule.users) or 'nobody'}",
                )
        return Decision(True, "")
