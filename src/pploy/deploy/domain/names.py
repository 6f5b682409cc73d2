"""Validators for everything a user names: projects, refs, repository URLs, users, envs.

Each returns the value or raises ``InvalidName`` with a message fit to show the user. They run
before anything touches the disk or starts a process, so a bad name never runs a command.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fnmatch import fnmatchcase
from urllib.parse import urlsplit, urlunsplit

PROJECT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
USER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
ENV_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SCP_LIKE_RE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9][A-Za-z0-9.-]*:[^\s]+")
_URL_SCHEMES = {"https", "http", "ssh", "git", "file"}
MAX_REF_LENGTH = 255


class InvalidName(ValueError):
    """A user-supplied name that pploy refuses, with the reason."""


def project_name(name: str) -> str:
    """A project name must be one safe path segment (no `/`, no leading dot, not `.git`)."""
    if not isinstance(name, str) or not PROJECT_NAME_RE.fullmatch(name):
        raise InvalidName(
            f"invalid project name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name.endswith((".git", ".lock")) or ".." in name:
        raise InvalidName(f"invalid project name {name!r}")
    return name


# A revision suffix as the originals passed refs to git: `origin/master~1`, `HEAD^`, `v2^2~3`.
_REVISION_SUFFIX_RE = re.compile(r"(?:[~^][0-9]{0,6})+\Z")


def ref_name(ref: str) -> str:
    """A branch, tag or commit as git would accept it, optionally followed by ``~N``/``^N``
    revision suffixes (``origin/master~1``, ``HEAD^``), and never something that looks like an
    option. The name implements the rules of ``git check-ref-format`` (one-level names
    allowed)."""
    if not isinstance(ref, str) or not ref:
        raise InvalidName("a ref is required")
    suffix = _REVISION_SUFFIX_RE.search(ref)
    if suffix and suffix.start() > 0 and len(ref) <= MAX_REF_LENGTH:
        try:
            ref_name(ref[: suffix.start()])
        except InvalidName as exc:
            raise InvalidName(f"{exc} (in {ref!r})") from None
        return ref
    problem = None
    if len(ref) > MAX_REF_LENGTH:
        problem = "is too long"
    elif ref.startswith("-"):
        problem = "starts with '-'"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in ref):
        problem = "contains a control character"
    elif any(c in ref for c in " ~^:?*[\\"):
        problem = "contains one of space ~ ^ : ? * [ \\"
    elif ".." in ref or "@{" in ref or ref == "@":
        problem = "contains '..' or '@{'"
    elif ref.startswith("/") or ref.endswith(("/", ".")) or "//" in ref:
        problem = "has an empty path component or ends with '/' or '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in ref.split("/")):
        problem = "has a component starting with '.' or ending with '.lock'"
    if problem:
        raise InvalidName(f"invalid ref {ref!r}: it {problem}")
    return ref


def repository_url(url: str) -> str:
    """A clone URL: a URL with a known scheme, scp-like ``user@host:path``, or an absolute path.

    Anything starting with ``-`` (an option to git) or using another transport (``ext::`` runs
    commands) is refused.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidName("a repository URL is required")
    if url != url.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise InvalidName("the repository URL contains whitespace or control characters")
    if url.startswith("-"):
        raise InvalidName(f"invalid repository URL {url!r}: it starts with '-'")
    if "::" in url.split("/", 1)[0]:
        raise InvalidName(f"invalid repository URL {url!r}: remote helpers are not allowed")
    if url.startswith("/"):
        return url
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme.lower() not in _URL_SCHEMES:
            raise InvalidName(
                f"invalid repository URL {url!r}: scheme must be one of "
                + ", ".join(sorted(_URL_SCHEMES))
            )
        if parts.scheme.lower() != "file" and not parts.hostname:
            raise InvalidName(f"invalid repository URL {url!r}: no host")
        if parts.hostname and parts.hostname.startswith("-"):
            raise InvalidName(f"invalid repository URL {url!r}: host starts with '-'")
        return url
    if _SCP_LIKE_RE.fullmatch(url):
        return url
    raise InvalidName(
        f"invalid repository URL {url!r}: use https://, ssh://, git://, file://, "
        "user@host:path or an absolute path"
    )


ANY_URL = "*"
_DOT_SEGMENT_RE = re.compile(r"(^|[/:])\.\.?(/|$)")


def url_allowed(url: str, patterns: Sequence[str]) -> bool:
    """Whether ``url`` matches one of ``patterns`` (``git.allowed_urls``, fnmatch-style: ``*``
    matches any text, ``/`` included; case-sensitive). ``*`` alone allows every URL.

    Against any other list, a URL with a ``.``/``..`` path segment, a percent-encoded dot or a
    backslash is refused: git (and curl) would normalise it to a path the pattern did not allow
    (``https://git.example.com/team/../internal/x``).
    """
    if ANY_URL in patterns:
        return True
    if _DOT_SEGMENT_RE.search(url) or "%2e" in url.lower() or "\\" in url:
        return False
    return any(fnmatchcase(url, pattern) for pattern in patterns)


def without_secrets(url: str) -> str:
    """``url`` fit to store and show: a password, or an http(s) user name (often a token),
    becomes ``***``."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, has_password, _ = userinfo.partition(":")
    if parts.scheme.lower() in ("http", "https"):
        user = "***"
    elif has_password:
        user = f"{user}:***"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def project_name_from_url(url: str) -> str:
    """``…/testploy.git`` → ``testploy``, validated as a project name; ``…/app/.git`` (a
    working tree's repository) → ``app``, the folder's name."""
    url = url.rstrip("/")
    if url.endswith("/.git"):
        folder = url[: -len("/.git")].rstrip("/")
        scheme, has_scheme, rest = folder.partition("://")
        is_host = bool(has_scheme) and "/" not in rest  # https://h/.git: no folder to name
        if folder and not is_host and not folder.endswith(":"):
            url = folder
    tail = url.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    if tail.endswith(".git"):
        tail = tail[:-4]
    return project_name(tail)


MAX_USER_NAME = 64
# Never in a user name: markup and path or quoting characters, whatever the directory holds.
_USER_NAME_FORBIDDEN = frozenset('<>"\\/`')


def user_name(name: str) -> str:
    """A person's name as directories hold them ("Taro Yamada", "山田", "O'Brien",
    "alice@example.com"): printable characters only — no control or format characters
    (bidirectional overrides, zero-width spaces), no line separators, no whitespace but
    single spaces between words — starting with a letter or digit, at most 64 characters,
    and none of ``< > " \\ / ` ``. The name goes into cookies (percent-encoded), headers,
    ``DEPLOY_USER``, logs and the audit trail, where each of those could forge something."""
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= MAX_USER_NAME
        or not name.isprintable()  # Cc, Cf, Zl, Zp, and every space but U+0020
        or not name[0].isalnum()
        or name != name.strip()
        or "  " in name
        or _USER_NAME_FORBIDDEN.intersection(name)
    ):
        raise InvalidName(
            f"invalid user name {name!r} (letters, digits, single spaces and punctuation "
            'other than < > " \\ / `; at most 64 characters; starting with a letter or digit)'
        )
    return name


def env_name(name: str) -> str:
    if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
        raise InvalidName(f"invalid environment name {name!r}")
    return name
