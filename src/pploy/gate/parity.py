"""typester/gate's configuration as its users wrote it: keys from gate's older versions and forks
read into today's keys (or refused with what to write instead), and the warnings that tell a
gate user where pploy gate would treat the same file differently.

Works on the parsed YAML and on plain tuples, so that :mod:`pploy.gate.config` can use it
before validation without an import cycle.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit


class LegacyKeyError(ValueError):
    """A key from an older gate or a fork that has no safe meaning here; says what to write."""


def _pop_mapping(data: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        data.pop(key, None)
        return None
    if not isinstance(value, dict):
        raise LegacyKeyError(f"{where}{key}: must be a mapping")
    return dict(data.pop(key))


def _restrictions(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value or [])


def translate(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``data`` with legacy keys rewritten, and one note per key rewritten (shown as warnings
    so the file can be updated). Raises LegacyKeyError for a key with no safe meaning."""
    data = dict(data)
    notes: list[str] = []
    # gate v0.1: `domain: example.com`; early README: `conditions: [...]`
    for old in ("domain", "conditions"):
        if old in data:
            data["restrictions"] = _restrictions(data.get("restrictions")) + _restrictions(
                data.pop(old)
            )
            notes.append(f"{old}: read as restrictions (gate's later name); write `restrictions:`")
    auth = data.get("auth")
    if not isinstance(auth, dict):
        return data, notes
    auth = dict(auth)
    data["auth"] = auth
    google = _pop_mapping(auth, "google", "auth.")
    if google is not None:
        if "info" in auth:
            raise LegacyKeyError(
                "auth.google: gate v0.1's key, and auth.info is set too; keep only auth.info"
            )
        auth["info"] = {"service": "google", **google}
        notes.append("auth.google: read as auth.info with service: google; write auth.info")
    info = auth.get("info")
    if isinstance(info, dict):
        info = dict(info)
        auth["info"] = info
        if info.get("service") == "nothing":
            raise LegacyKeyError(
                "auth.info.service: `nothing` (gate's undocumented mode without login) is not "
                "supported; write `service: dev` for a local login form (loopback only), or "
                "admit addresses without login with `auth.allow_networks: [CIDR, ...]`"
            )
        if "insecure" in info:
            if info.pop("insecure"):
                raise LegacyKeyError(
                    "auth.info.insecure: pploy gate always verifies the provider's TLS "
                    "certificate; remove the key and make the provider's CA trusted instead "
                    "(SSL_CERT_FILE=/path/to/ca.pem in gate's environment)"
                )
            notes.append("auth.info.insecure: false is the only behaviour; remove the key")
    header = _pop_mapping(auth, "header", "auth.")
    if header is not None:
        user_key = header.pop("user_key", None)
        if header:
            raise LegacyKeyError(
                f"auth.header.{sorted(header)[0]}: unknown; the identity headers sent upstream "
                "are set with identity_headers.user, identity_headers.email (docs/gate.md)"
            )
        if user_key is not None:
            identity = dict(data.get("identity_headers") or {})
            identity.setdefault("user", user_key)
            data["identity_headers"] = identity
            notes.append(
                "auth.header.user_key: read as identity_headers.user (the header naming the "
                "user upstream); write identity_headers.user"
            )
    session = auth.get("session")
    if isinstance(session, dict) and "cookie" in session:
        session = dict(session)
        auth["session"] = session
        cookie = _pop_mapping(session, "cookie", "auth.session.") or {}
        renames = {"domain": "cookie_domain", "name": "cookie_name", "secure": "secure",
                   "max_age": "lifetime"}  # fmt: skip
        for key, value in cookie.items():
            if key in renames:
                session.setdefault(renames[key], value)
                notes.append(
                    f"auth.session.cookie.{key}: read as auth.session.{renames[key]}; write that"
                )
            elif key == "path" and value in ("/", None):
                notes.append("auth.session.cookie.path: gate's cookie is always at /; remove it")
            elif key in ("http_only", "httponly") and value:
                notes.append(f"auth.session.cookie.{key}: always on; remove it")
            else:
                raise LegacyKeyError(
                    f"auth.session.cookie.{key}: not supported (the session cookie is always "
                    "HttpOnly, SameSite=Lax, at path /); use auth.session.cookie_domain, "
                    "cookie_name, secure or lifetime"
                )
    return data, notes


def _segments(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split("/") if part)


def proxy_warnings(entries: list[tuple[str, str | None, str]]) -> list[str]:
    """Where the proxy list (``(path, host, dest)`` per entry, in order) means something else
    than a gate user expects: entries never reached, host-only paths, paths in ``dest``."""
    out = []
    seen: list[tuple[int, tuple[str, ...], str | None]] = []
    for index, (path, host, dest) in enumerate(entries):
        prefix, host = _segments(path), (host.lower() if host else None)
        for earlier, earlier_prefix, earlier_host in seen:
            if earlier_prefix == prefix and earlier_host != host:
                continue  # one path, several hosts: gate's virtual hosts, each entry used
            if prefix[: len(earlier_prefix)] == earlier_prefix and earlier_host in (None, host):
                out.append(
                    f"proxy[{index}] ({host or ''}{path}) is never used: proxy[{earlier}] is "
                    "listed first and matches all its requests (the first matching entry wins, "
                    "as in typester/gate); list the more specific entry first"
                )
                break
        seen.append((index, prefix, host))
        dest_path = urlsplit(dest).path
        if dest_path not in ("", "/"):
            out.append(
                f"proxy[{index}].dest has a path ({dest_path}): typester/gate ignored it and "
                f"forwarded to the server's root; pploy gate forwards under {dest_path}"
            )
    by_path: dict[tuple[str, ...], list[tuple[int, str | None]]] = {}
    for index, (path, host, _) in enumerate(entries):
        by_path.setdefault(_segments(path), []).append((index, host))
    for prefix, group in by_path.items():
        if all(host for _, host in group):
            index, host = group[0]
            out.append(
                f"proxy[{index}]: host {host} is the only kind of entry for /{'/'.join(prefix)}: "
                "typester/gate sent every host's requests for that path to it; pploy gate sends "
                "only that host's (add an entry without host for the others)"
            )
    return out
