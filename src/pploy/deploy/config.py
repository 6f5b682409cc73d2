"""pploy's configuration: one YAML file, validated by pydantic, overridden by env vars and flags.

Precedence, lowest first: defaults, the YAML file, ``PPLOY_*`` environment variables, command-line
flags. Unknown keys are errors, and every error names the key that is wrong. Reading the file and
reporting errors is ``pploy.configfile``'s, shared with gate (``ConfigError`` is re-exported here).
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

# ConfigError is re-exported: callers catch it from here.
from pploy.configfile import ConfigError as ConfigError
from pploy.configfile import read_mapping, refuse_placeholders, validate
from pploy.deploy import prefix as url_prefix
from pploy.deploy.domain import masking
from pploy.deploy.domain.names import InvalidName, user_name
from pploy.networks import check_networks

FREEZE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LockConfig(_Strict):
    gain_minutes: float = Field(20, gt=0, description="How long a newly gained lock lasts.")
    extend_minutes: float = Field(10, gt=0, description="How much an extend adds.")


class JobConfig(_Strict):
    timeout_minutes: float = Field(120, gt=0, description="A job running longer is cancelled.")
    cancel_grace_seconds: list[float] = Field(
        default=[5.0, 5.0],
        description="Waits after SIGINT and after SIGTERM before the next signal (then SIGKILL).",
    )
    shutdown_grace_seconds: float = Field(
        60,
        ge=0,
        description="With on_shutdown: cancel, how long pploy waits on SIGTERM for running jobs "
        "before cancelling them.",
    )
    on_shutdown: Literal["leave", "cancel"] = Field(
        "leave",
        description="On SIGTERM: leave running jobs to their runners (they go on, and the next "
        "pploy on this workdir takes them up again), or cancel them after shutdown_grace_seconds.",
    )
    lease_seconds: float = Field(
        60,
        gt=0,
        description="A running job's lease in the database, renewed by its runner: another "
        "instance may declare the job lost only once it has expired (docs/reliability.md).",
    )
    fence_seconds: float = Field(
        45,
        gt=0,
        description="With a shared database, a runner that could not renew its lease for this "
        "long stops its job (before the lease can expire). Smaller than lease_seconds.",
    )
    keep_logs: int = Field(50, ge=1, description="Jobs' logs kept per project; older ones deleted.")
    max_log_bytes: int = Field(
        1 << 30,
        ge=1024,
        description="A log stops growing past this size (the job goes on); its last 4 KiB "
        "are kept for pploy's own lines.",
    )
    containment: Literal["auto", "cgroup", "subreaper"] = Field(
        "auto",
        description="How every process of a job is found and ended: a cgroup v2 per job, or "
        "pploy as child subreaper tracking descendants; auto: cgroup where writable.",
    )
    pty_columns: int = Field(160, ge=20, le=1000)
    pty_rows: int = Field(50, ge=5, le=1000)
    mask_env: list[str] = Field(
        default_factory=list,
        description="Environment variables whose values never appear in job output (***).",
    )

    @field_validator("mask_env")
    @classmethod
    def _variable_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @field_validator("cancel_grace_seconds")
    @classmethod
    def _two_waits(cls, value: list[float]) -> list[float]:
        if len(value) != 2 or any(v < 0 for v in value):
            raise ValueError("must be two non-negative numbers: [after SIGINT, after SIGTERM]")
        return value

    @model_validator(mode="after")
    def _fence_before_expiry(self) -> JobConfig:
        if self.fence_seconds >= self.lease_seconds:
            raise ValueError("fence_seconds must be smaller than lease_seconds")
        return self


class GitConfig(_Strict):
    shallow: bool = Field(True, description="Clone with --depth (all branches).")
    depth: int = Field(50, ge=1)
    commits: int = Field(20, ge=1, le=500, description="Recent commits shown per project.")
    timeout_seconds: float = Field(300, gt=0, description="Limit for clone and git reads.")
    allowed_urls: list[str] = Field(
        default=["*"],
        description="URLs a project may be added from: fnmatch-style patterns (`*` matches any "
        "text, `/` included), e.g. `https://git.example.com/team/*`; `*` allows any URL.",
    )

    @field_validator("allowed_urls")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.strip() or pattern != pattern.strip():
                raise ValueError(f"{pattern!r}: a pattern must be non-empty, without spaces")
        return value


class AuthConfig(_Strict):
    mode: Literal["standalone", "proxy", "gate"] = Field(
        "standalone",
        description=(
            "standalone: pick a name from `users` (the `user` cookie); proxy: trust `header` "
            "from `trusted_proxies` only; gate: verify gate's signed X-Gate-Assertion."
        ),
    )
    header: str = Field("X-Forwarded-User", description="proxy mode: the header naming the user.")
    trusted_proxies: list[str] = Field(
        default=["127.0.0.1/32", "::1/128"],
        description="proxy mode: addresses (CIDR) whose identity header is believed.",
    )
    gate_jwks_url: str | None = Field(
        None, description="gate mode: where gate serves its public keys."
    )
    gate_public_key_file: str | None = Field(
        None, description="gate mode: a PEM public key or JWKS file instead of the URL."
    )
    gate_audience: str = Field("pploy", description="gate mode: the assertion's expected `aud`.")
    names_are_self_chosen: bool = Field(
        False,
        description="standalone mode: acknowledge that anyone picks any name, so `permissions` "
        "is advisory (required to use `permissions` in standalone mode).",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return check_networks(value)


WebhookEvent = Literal[
    "lock.gained", "lock.extended", "lock.released", "lock.expired", "job.started", "job.finished",
    # deploy governance (issue 25; audit.AUDIT_KINDS)
    "lock.queued", "lock.granted", "job.cancelled", "job.awaiting_approval", "job.approved",
    "job.rejected", "job.expired", "freeze.started", "freeze.ended", "freeze.overridden",
    "project.added", "project.removed", "token.created", "token.revoked",
]  # fmt: skip
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = typing.get_args(WebhookEvent)
# A hook without `events` gets the original six; the governance kinds are asked for by name.
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = WEBHOOK_EVENTS[:6]
DATADOG_SITE = "https://api.datadoghq.com"
# Go's text/template actions: {{.Field}}, {{ .Field }}, {{if …}}, {{- …}}, {{$x}}.
_GO_TEMPLATE = re.compile(r"\{\{-?\s*(\.|\$|(if|range|with|end|else|printf|template)\b)")
_GO_FIELD = re.compile(r"\{\{-?\s*\.([A-Za-z_]\w*)\s*-?\}\}")


class WebhookConfig(_Strict):
    url: str = Field(
        description="Where to POST; datadog format: the site (default api.datadoghq.com)."
    )
    format: Literal["slack", "json", "datadog"] = "json"
    events: list[WebhookEvent] = Field(default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS))
    kinds: list[Literal["deploy", "checkout"]] = Field(
        default=["deploy", "checkout"],
        description="job events: the kinds of job to notify about (e.g. [deploy]).",
    )
    templates: dict[str, str] = Field(
        default_factory=dict,
        description="slack and datadog formats: message text per event (Python format fields).",
    )
    api_key: str | None = Field(
        None,
        repr=False,
        validate_default=True,
        description="datadog format: the DD-API-KEY (a secret).",
    )
    timeout_seconds: float = Field(5, gt=0)
    retries: int = Field(1, ge=0, le=5)

    @model_validator(mode="before")
    @classmethod
    def _datadog_site(cls, data: Any) -> Any:
        """The datadog format needs no url: Datadog's US site is the default."""
        if isinstance(data, dict) and data.get("format") == "datadog" and "url" not in data:
            return {**data, "url": DATADOG_SITE}
        return data

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        datadog = info.data.get("format") == "datadog"
        if datadog and not value:
            raise ValueError("required by the datadog format (Datadog's API key)")
        if value and not datadog:
            raise ValueError("only the datadog format sends one")
        return value

    @field_validator("templates")
    @classmethod
    def _python_fields(cls, value: dict[str, str]) -> dict[str, str]:
        """go-pploy's templates were Go's (``{{.User}}``); here they would be sent literally."""
        for key, text in value.items():
            if _GO_TEMPLATE.search(text):
                fixed = _GO_FIELD.sub(lambda m: "{" + m.group(1).lower() + "}", text)
                raise ValueError(
                    f"{key}: {text!r} is Go template syntax (go-pploy's); pploy fills Python "
                    f"format fields: write {fixed!r}"
                )
        return value


class LdapConfig(_Strict):
    """standalone mode: the people of an LDAP directory, as deployers besides ``users``."""

    url: str = Field(description="ldap:// or ldaps:// URL of the directory.")
    base_dn: str = Field(description="Where people (and groups) are searched.")
    filter: str = Field("(cn=*)", description="Which entries under base_dn are deployers.")
    attribute: str = Field("cn", description="The attribute whose value is the user name.")
    mail_attribute: str = Field(
        "mail",
        description="The attribute holding a person's email: gate mode finds a user's groups "
        "by the email gate vouched for, not by gate's user name.",
    )
    group_base_dn: str | None = Field(
        None, description="Where groups are searched (default: base_dn)."
    )
    bind_dn: str | None = Field(None, description="Bind as this DN (anonymous when unset).")
    bind_password: str | None = Field(None, repr=False, description="bind_dn's password.")
    start_tls: bool = Field(False, description="Upgrade an ldap:// connection with StartTLS.")
    ca_file: str | None = Field(
        None, description="PEM CA certificates the directory's TLS certificate is checked "
        "against (StartTLS, ldaps://); default: the system's.",
    )  # fmt: skip
    cache_minutes: float = Field(10, gt=0, description="How long the list is kept before refresh.")
    timeout_seconds: float = Field(5, gt=0, description="Connect and answer limit per refresh.")

    @field_validator("url")
    @classmethod
    def _ldap_url(cls, value: str) -> str:
        if not value.startswith(("ldap://", "ldaps://")):
            raise ValueError("must be an ldap:// or ldaps:// URL")
        return value


class DeployRule(_Strict):
    project: str = Field("*", description="Project names it covers (fnmatch pattern; `*` all).")
    env: str = Field("*", description="Environments it covers (fnmatch pattern; `*` all).")
    users: list[str] = Field(
        description="Who may deploy there: user names, exact emails, `@domain`, or groups."
    )


class FreezeConfig(_Strict):
    """A calendar freeze: no deploys to its envs of its projects between start and end."""

    name: str = Field(description="Named in the refusal, the banner and the audit log.")
    start: AwareDatetime = Field(
        description="ISO 8601 with its offset, e.g. 2026-12-28T00:00:00+09:00."
    )
    end: AwareDatetime = Field(description="When deploys may run again (same form).")
    envs: list[str] = Field(
        default=["*"], description="Environments frozen (fnmatch); omitted: all."
    )
    projects: list[str] = Field(
        default=["*"], description="Projects frozen (fnmatch); omitted: all."
    )
    reason: str = Field("", description="Shown in the refusal and the banner.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not FREEZE_NAME.fullmatch(value):
            raise ValueError(f"{value!r}: 1-64 letters, digits, '.', '_' or '-'")
        return value

    @model_validator(mode="after")
    def _order(self) -> FreezeConfig:
        if self.end <= self.start:
            raise ValueError(f"freeze {self.name!r}: end must be after start")
        return self


class ApprovalRule(_Strict):
    """Deploys matching project and env wait for one of ``approvers`` (not the requester)."""

    project: str = Field("*", description="Project names it covers (fnmatch pattern).")
    env: str = Field("*", description="Environments it covers (fnmatch pattern).")
    approvers: list[str] = Field(
        min_length=1,
        description="Who may approve: user names, exact emails, `@domain`, or groups.",
    )


class PermissionsConfig(_Strict):
    admins: list[str] = Field(
        default_factory=list,
        description="Who may add and remove projects (same entries as `users`); empty: everyone.",
    )
    deploy: list[DeployRule] = Field(
        default_factory=list,
        description="Who may deploy where; the first rule matching project and env decides; "
        "no matching rule: everyone.",
    )


class Config(_Strict):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(9000, ge=0, le=65535)
    workdir: Path = Field(
        Path("./pploy-work"),
        description="Holds projects/, logs/ and pploy.db; relative to the directory pploy "
        "starts in, made absolute at load.",
        validate_default=True,
    )
    public_url: str | None = Field(
        None, description="The URL users open (links in notifications; origin checks)."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names served besides IP literals, localhost, this machine's names "
        "and public_url's host (guards against DNS rebinding).",
    )
    users: list[str] = Field(default_factory=list, description="standalone mode: the deployers.")
    ldap: LdapConfig | None = Field(
        None, description="standalone mode: an LDAP directory whose people are deployers too."
    )
    lock: LockConfig = Field(default_factory=LockConfig)
    job: JobConfig = Field(default_factory=JobConfig)
    git: GitConfig = Field(default_factory=GitConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    permissions: PermissionsConfig = Field(default_factory=PermissionsConfig)
    prefix: str = Field(
        "",
        description="Serve under this path (e.g. /deploy, go-pploy's -prefix): requests arrive "
        "with it, and every link, redirect and cookie carries it.",
    )

    pidfile: Path | None = Field(
        None, description="Write pploy's process id here while it runs (--pidfile)."
    )
    metrics_address: str | None = Field(
        None,
        description="host:port of a separate listener serving /metrics without "
        "authentication (for Prometheus); /metrics on the main listener needs a signed-in user.",
    )

    goploy_ui: Path | None = Field(
        None,
        description="go-pploy's built web frontend (its assets/ directory: index.html, "
        "bundle.js, …), served at /_goploy/ (docs/migrating.md).",
    )

    @field_validator("goploy_ui")
    @classmethod
    def _goploy_ui(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        path = Path(os.path.abspath(os.path.expanduser(value)))
        missing = [f for f in ("index.html", "bundle.js") if not (path / f).is_file()]
        if missing:
            raise ValueError(
                f"{str(path)!r} is not go-pploy's built assets/ directory (no {', '.join(missing)})"
            )
        return path

    @field_validator("metrics_address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:9102)")
        return value

    @field_validator("pidfile")
    @classmethod
    def _absolute_pidfile(cls, value: Path | None) -> Path | None:
        return Path(os.path.abspath(os.path.expanduser(value))) if value is not None else None

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return url_prefix.normalise(value, "")  # pydantic names the key

    database: str | None = Field(
        None,
        description="A postgresql:// URL: keep projects, locks, jobs and logs there, shared "
        "with other pploy instances (docs/scaling.md); unset: SQLite in <workdir>/pploy.db.",
    )

    @field_validator("database")
    @classmethod
    def _postgresql_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (leave it unset for SQLite)")
        return value or None

    freezes: list[FreezeConfig] = Field(
        default_factory=list, description="Calendar freezes (docs/governance.md)."
    )
    approvals: list[ApprovalRule] = Field(
        default_factory=list,
        description="Deploys that need another person's approval first; the first matching "
        "rule decides (docs/governance.md).",
    )
    approval_timeout: float = Field(
        3600, gt=0, description="Seconds a deploy waits for approval before it expires."
    )

    @field_validator("freezes")
    @classmethod
    def _unique_freezes(cls, value: list[FreezeConfig]) -> list[FreezeConfig]:
        names = [freeze.name for freeze in value]
        if len(set(names)) != len(names):
            raise ValueError("freeze names must be unique")
        return value

    dangerous_envs: list[str] = Field(
        default_factory=lambda: ["production"],
        description="Environments whose deploy button asks for confirmation first.",
    )

    @field_validator("workdir")
    @classmethod
    def _absolute_workdir(cls, value: Path) -> Path:
        """Resolved once, here: jobs run in ``<workdir>/projects/<name>``, so a relative path
        (the default ``./pploy-work``) would point somewhere else from there."""
        return Path(os.path.abspath(os.path.expanduser(value)))

    @field_validator("users")
    @classmethod
    def _user_names(cls, value: list[str]) -> list[str]:
        for name in value:
            try:
                user_name(name)  # the one rule for names, from any source
            except InvalidName as exc:
                raise ValueError(str(exc)) from None
        if len(set(value)) != len(value):
            raise ValueError("names must be unique")
        return value


# Environment variables that override file values: PPLOY_<KEY>.
ENV_KEYS = {
    "PPLOY_HOST": "host",
    "PPLOY_PORT": "port",
    "PPLOY_WORKDIR": "workdir",
    "PPLOY_PUBLIC_URL": "public_url",
    "PPLOY_USERS": "users",
    "PPLOY_AUTH_MODE": "auth.mode",
    "PPLOY_LOG_LEVEL": "log_level",
    "PPLOY_PREFIX": "prefix",
    "PPLOY_PIDFILE": "pidfile",
    "PPLOY_METRICS_ADDRESS": "metrics_address",
    "PPLOY_DATABASE": "database",
    "PPLOY_GOPLOY_UI": "goploy_ui",
}


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {key} must be a mapping")
    node[last] = value


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Build the configuration from a file, the environment and flag overrides (dotted keys)."""
    source = str(path) if path is not None else "config"
    data = read_mapping(path) if path is not None else {}
    env = os.environ if environ is None else environ
    for var, key in ENV_KEYS.items():
        if var in env:
            value: Any = env[var]
            if key == "users":
                value = [u.strip() for u in value.split(",") if u.strip()]
            _set_dotted(data, key, value)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
    refuse_placeholders(data, source)
    config = validate(Config, data, source, docs="docs/configuration.md")
    short = masking.short_values(config.job.mask_env, env)
    if short:  # masking them would hide ordinary text, not only the secret
        raise ConfigError(
            f"{source}: job.mask_env: the value of {', '.join(short)} is shorter than "
            f"{masking.MIN_LENGTH} characters: too short to mask"
        )
    if config.auth.mode == "gate" and not (
        config.auth.gate_jwks_url or config.auth.gate_public_key_file
    ):
        raise ConfigError(
            f"{source}: auth.gate_jwks_url: required in gate mode (or auth.gate_public_key_file)"
        )
    permissions = config.permissions
    if (
        config.auth.mode == "standalone"
        and (permissions.admins or permissions.deploy)
        and not config.auth.names_are_self_chosen
    ):
        raise ConfigError(
            f"{source}: permissions: in standalone mode anyone picks any name from the list, so "
            "these rules only advise: anyone may sign in as an admin. Use auth.mode gate or "
            "proxy to enforce them, or set auth.names_are_self_chosen: true to keep them as "
            "advice"
        )
    return config
