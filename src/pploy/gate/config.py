"""gate's configuration: typester/gate's ``config.yml`` unchanged, plus documented extensions.

Validation errors name the key (``auth.info.client_id: …``) so a typo is found at
``--check-config`` time, not at the first login. See docs/gate.md for every key. Reading the file
and reporting errors is ``pploy.configfile``'s, shared with pploy (``ConfigError`` is re-exported).
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

# ConfigError is re-exported: callers catch it from here.
from pploy.configfile import ConfigError as ConfigError
from pploy.configfile import read_mapping, refuse_placeholders, validate
from pploy.gate import parity
from pploy.networks import check_networks

SERVICES = ("google", "github", "oidc", "dev")
DEFAULT_PATHS = {
    "login": "/login",
    "logout": "/logout",
    "callback": "/oauth2callback",
    "error": "/oauth2error",
}
IDENTITY_HEADER_DEFAULTS = {
    "user": "X-Forwarded-User",
    "email": "X-Forwarded-Email",
    "assertion": "X-Gate-Assertion",
}


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _duration(value: Any) -> Any:
    """Accept seconds as a number or ``30s``/``5m``/``12h``/``7d``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m or 12h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration like 30s, 5m or 12h")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]


def _string_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return value


StrList = Annotated[list[str], BeforeValidator(_string_list)]


class _Model(BaseModel):
    # Unknown keys are errors: a misspelt security setting must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SSLConf(_Model):
    cert: str | None = None
    key: str | None = None

    @model_validator(mode="after")
    def _both(self) -> SSLConf:
        if bool(self.cert) != bool(self.key):
            raise ValueError("ssl.cert and ssl.key must be given together")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.cert and self.key)


class SessionConf(_Model):
    key: str = Field(min_length=1)
    # Extension: previous keys still accepted for reading, so a key can be rotated.
    old_keys: StrList = []
    cookie_domain: str | None = None
    # Extensions.
    cookie_name: str = Field(default="_gate_session", pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    lifetime: Duration = 12 * 3600
    secure: bool | None = None


class InfoConf(_Model):
    service: str
    client_id: str | None = None
    client_secret: str | None = None
    redirect_url: str | None = None
    endpoint: str | None = None
    api_endpoint: str | None = None
    # Extensions.
    issuer: str | None = None
    scopes: StrList = []
    user_claim: str | None = None
    force: bool = False
    # Extension: also allow restrictions here, next to the provider they apply to.
    restrictions: StrList = []
    # Extension: how often a session's restrictions are re-checked with the provider from
    # the token stored in the session (GitHub organisations); 0 = on every request.
    recheck_interval: Duration = 300

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        if value not in SERVICES:
            raise ValueError(f"unknown service {value!r}; expected one of {', '.join(SERVICES)}")
        return value

    @model_validator(mode="after")
    def _required(self) -> InfoConf:
        if self.service != "dev":
            for key in ("client_id", "client_secret", "redirect_url"):
                if not getattr(self, key):
                    raise ValueError(f"auth.info.{key}: required for service {self.service}")
            _check_url("auth.info.redirect_url", self.redirect_url)
        if self.service == "oidc" and not self.issuer:
            raise ValueError("auth.info.issuer: required for service oidc")
        for key in ("endpoint", "api_endpoint", "issuer"):
            value = getattr(self, key)
            if value:
                _check_url(f"auth.info.{key}", value)
        return self


class AssertionConf(_Model):
    """Extension: the signed identity assertion sent upstream (to routes that ask for it)."""

    # Removed: one audience for every route let any app behind gate replay a visitor's token
    # to pploy. Kept as a field only to say where the setting went.
    audience: str | None = None
    lifetime: Duration = 60
    key_file: str | None = None
    extra_public_keys: StrList = []

    @field_validator("audience")
    @classmethod
    def _moved(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "moved: set `assertion_audience: "
                f"{value}` on the proxy entry (or entries) that should receive X-Gate-Assertion; "
                "entries without it get no assertion (docs/gate.md)"
            )
        return value


class AuthConf(_Model):
    session: SessionConf
    info: InfoConf
    # Extensions: ways in without OAuth (nginx's `satisfy any`).
    htpasswd: str | None = None
    allow_networks: StrList = []
    assertion: AssertionConf = AssertionConf()

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return check_networks(value)


class ProxyConf(_Model):
    path: str
    dest: str
    strip_path: bool = False
    host: str | None = None
    # Extension: send the client's Host upstream instead of the destination's.
    preserve_host: bool = False
    # Extension: send X-Gate-Assertion with this `aud` (only entries that set it get one).
    assertion_audience: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:/\-]{1,128}$")
    # Extension: requests with `Authorization: Bearer` pass without a session, with no identity
    # added; the upstream authenticates the token itself (pploy's API tokens).
    pass_bearer: bool = False

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with /")
        if any(part in (".", "..") for part in value.split("/")) or "?" in value or "#" in value:
            raise ValueError(f"{value!r} must be a plain path")
        return value

    @field_validator("dest")
    @classmethod
    def _dest(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} must be an http:// or https:// URL")
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r} must not have a query or fragment")
        return value


class PathsConf(_Model):
    login: str = DEFAULT_PATHS["login"]
    logout: str = DEFAULT_PATHS["logout"]
    callback: str = DEFAULT_PATHS["callback"]
    error: str = DEFAULT_PATHS["error"]

    @model_validator(mode="after")
    def _absolute(self) -> PathsConf:
        for key in DEFAULT_PATHS:
            value = getattr(self, key)
            if not value.startswith("/") or "?" in value or "#" in value:
                raise ValueError(f"paths.{key}: {value!r} must be a plain absolute path")
        return self


class UpstreamConf(_Model):
    """Extension: how gate talks to upstreams."""

    connect_timeout: Duration = 5
    # Longest silence while reading a response (there is no total timeout).
    idle_timeout: Duration = 300
    websocket_heartbeat: Duration = 30
    websocket_max_message: int = Field(default=16 * 1024 * 1024, ge=1024)


def _log_format(value: Any) -> Any:
    # YAML 1.1 reads an unquoted `off` as false.
    if value is False:
        return "off"
    if value is True:
        return "kv"
    return value


class AccessLogConf(_Model):
    """Extension: access log format (`kv` key=value lines, `json`, or `off`)."""

    format: Annotated[Literal["kv", "json", "off"], BeforeValidator(_log_format)] = "kv"


class MetricsConf(_Model):
    """Extension: Prometheus metrics on their own address, or at a path behind auth."""

    address: str | None = None
    path: str | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r} must start with /")
        return value


class IdentityHeadersConf(_Model):
    """Extension: names of the identity headers sent upstream (empty string = don't send)."""

    user: str = IDENTITY_HEADER_DEFAULTS["user"]
    email: str = IDENTITY_HEADER_DEFAULTS["email"]
    assertion: str = IDENTITY_HEADER_DEFAULTS["assertion"]
    # More client-sent header names to strip, on top of the built-in list.
    strip: StrList = []


class GateConfig(_Model):
    address: str
    ssl: SSLConf = SSLConf()
    auth: AuthConf
    restrictions: StrList = []
    proxy: list[ProxyConf] = []
    # typester/gate served the config's directory by default; here no htdocs = no files
    # (`htdocs:` left empty, or "", means the same: see _no_htdocs).
    htdocs: str | None = None
    paths: PathsConf = PathsConf()
    # Extensions.
    upstream: UpstreamConf = UpstreamConf()
    access_log: AccessLogConf = AccessLogConf()
    metrics: MetricsConf = MetricsConf()
    identity_headers: IdentityHeadersConf = IdentityHeadersConf()
    trusted_proxies: StrList = []
    allowed_hosts: StrList = []
    # Processes serving the port together (SO_REUSEPORT); None: one per CPU core.
    workers: int | None = Field(default=None, ge=1, le=256)
    # Plain proxied requests served by gate's own lean front end (pploy.gate.fastpath);
    # false: aiohttp's server answers everything.
    fast_path: bool = True
    # How long a client connection may go without a complete request head, counted from its
    # opening or the end of its previous response: idle keep-alive connections and heads sent
    # a byte at a time (slowloris) alike. aiohttp's server's own rule, on both front ends.
    head_timeout: Annotated[float, BeforeValidator(_duration), Field(gt=0)] = 75

    # Where the file was, to resolve relative paths (htdocs, ssl, htpasswd, key files).
    base_dir: Path = Path(".")
    # The file itself (never served as a static file); None when not loaded from a file.
    config_file: Path | None = None
    # Keys of older gates and forks read into today's (see parity.translate): shown as warnings.
    legacy_notes: list[str] = []

    @field_validator("proxy", mode="before")
    @classmethod
    def _proxy_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("htdocs")
    @classmethod
    def _no_htdocs(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted(cls, value: list[str]) -> list[str]:
        return check_networks(value)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    def serves_host(self, host: str) -> bool:
        """Whether ``host`` (no port) is a name this gate is meant to answer: an IP literal,
        localhost, the redirect URL's host, a proxy entry's host, under the cookie domain, or
        in ``allowed_hosts``. A DNS-rebinding page's own name is none of these."""
        host = host.lower().rstrip(".").strip("[]")
        if not host:
            return False
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            pass
        names = {"localhost", *(h.lower() for h in self.allowed_hosts)}
        names |= {p.host.lower() for p in self.proxy if p.host}
        redirect = urlsplit(self.auth.info.redirect_url or "").hostname
        if redirect:
            names.add(redirect.lower())
        if host in names:
            return True
        domain = (self.auth.session.cookie_domain or "").lower().lstrip(".")
        return bool(domain) and (host == domain or host.endswith("." + domain))

    def worker_count(self) -> int:
        """How many worker processes ``pploy gate`` runs: ``workers``, by default one per core
        on Linux (where SO_REUSEPORT spreads connections over them), one elsewhere."""
        if self.workers is not None:
            return self.workers
        return max(1, os.cpu_count() or 1) if sys.platform.startswith("linux") else 1

    def files_read(self) -> list[Path]:
        """Every file gate reads: the configuration and each key, certificate and password
        file it names. None of them may ever be served from htdocs."""
        names = [self.ssl.cert, self.ssl.key, self.auth.htpasswd, self.auth.assertion.key_file]
        names += self.auth.assertion.extra_public_keys
        files = [self.resolve(n) for n in names if n]
        return [self.config_file, *files] if self.config_file else files

    @property
    def all_restrictions(self) -> list[str]:
        return [*self.restrictions, *self.auth.info.restrictions]

    def resolve(self, path: str) -> Path:
        """A path from the file, relative to the file's directory."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.base_dir / candidate)

    @property
    def listen(self) -> tuple[str | None, int]:
        return parse_address(self.address)

    @property
    def secure_cookies(self) -> bool:
        if self.auth.session.secure is not None:
            return self.auth.session.secure
        redirect = self.auth.info.redirect_url or ""
        return self.ssl.enabled or redirect.startswith("https://")


def parse_address(value: str) -> tuple[str | None, int]:
    """Go-style ``host:port``; ``:9999`` means every interface."""
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} must be host:port or :port")
    host = host.strip("[]")
    return (host or None), int(port)


def is_loopback_address(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(key: str, value: str | None) -> None:
    parts = urlsplit(value or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key}: {value!r} must be an http:// or https:// URL")


def parse_config(
    data: Any,
    base_dir: Path = Path("."),
    config_file: Path | None = None,
    source: str | None = None,
) -> GateConfig:
    """Validate parsed YAML as gate's configuration; relative paths resolve against ``base_dir``.
    ``config_file`` is the file itself (gate never serves it); ``source`` prefixes every error."""
    if isinstance(data, dict):
        refuse_placeholders(data, source)
        for internal in ("base_dir", "config_file", "legacy_notes"):
            if internal in data:
                raise ConfigError(f"{source + ': ' if source else ''}{internal}: unknown key")
        try:
            data, notes = parity.translate(data)
        except parity.LegacyKeyError as exc:
            raise ConfigError(f"{source + ': ' if source else ''}{exc}") from None
        data = {**data, "base_dir": base_dir, "config_file": config_file, "legacy_notes": notes}
    return validate(GateConfig, data, source, docs="docs/gate.md")


def load_config(path: str | Path) -> GateConfig:
    file = Path(path)
    data = read_mapping(file)
    return parse_config(data, file.resolve().parent, file.resolve(), str(file))


def check_files(config: GateConfig) -> list[str]:
    """Problems with files the configuration names (checked at start and by --check-config)."""
    problems = []
    if config.ssl.enabled:
        for key in ("cert", "key"):
            file = config.resolve(getattr(config.ssl, key))
            if not file.is_file():
                problems.append(f"ssl.{key}: {file} does not exist")
    if config.auth.htpasswd and not config.resolve(config.auth.htpasswd).is_file():
        problems.append(f"auth.htpasswd: {config.resolve(config.auth.htpasswd)} does not exist")
    if config.auth.assertion.key_file:
        file = config.resolve(config.auth.assertion.key_file)
        if not file.is_file():
            problems.append(f"auth.assertion.key_file: {file} does not exist")
    for i, key_path in enumerate(config.auth.assertion.extra_public_keys):
        if not config.resolve(key_path).is_file():
            problems.append(f"auth.assertion.extra_public_keys[{i}]: {key_path} does not exist")
    if config.htdocs and not config.resolve(config.htdocs).is_dir():
        problems.append(f"htdocs: {config.resolve(config.htdocs)} is not a directory")
    if config.metrics.address:
        try:
            parse_address(config.metrics.address)
        except ValueError as exc:
            problems.append(f"metrics.address: {exc}")
    return problems


def warnings(config: GateConfig) -> list[str]:
    """Things that work but deserve a loud line in the log."""
    out = list(config.legacy_notes)
    out += parity.proxy_warnings([(p.path, p.host, p.dest) for p in config.proxy])
    if len(config.auth.session.key) < 16:
        out.append(
            "auth.session.key is short; use 32+ random characters "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    if config.auth.info.service in ("google", "oidc", "dev", "github") and not (
        config.all_restrictions
    ):
        if config.auth.info.service != "dev":
            out.append(
                "no restrictions: any account the provider authenticates is let in "
                "(set `restrictions`)"
            )
    if config.auth.info.service == "dev":
        out.append("auth.info.service is dev: anyone can log in as anyone; never use in production")
    if config.auth.allow_networks and not config.trusted_proxies:
        host, _ = config.listen
        if is_loopback_address(host):
            out.append(
                "auth.allow_networks on a loopback address without trusted_proxies: behind a "
                "local reverse proxy every client looks like the proxy's address"
            )
    if config.htdocs:
        root = config.resolve(config.htdocs).resolve()
        for file in config.files_read():
            real = file.resolve()
            if real == root or root in real.parents:
                out.append(
                    f"htdocs: {root} contains {real}, which gate reads; gate never serves it, "
                    "but keep secrets out of the document root (set htdocs to a folder of "
                    "its own, or null)"
                )
    return out
