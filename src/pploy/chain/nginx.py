"""``pploy nginx-config``: the shipped nginx site configuration, filled in.

The template (``templates/nginx-site.conf``) is the configuration users run: TLS, HTTP/1.1 to
gate, the WebSocket upgrade map, a read timeout above the heartbeats, and optionally an
office-network allowlist with basic auth as ``satisfy any`` (the password never passed on, an
API token's ``Authorization: Bearer`` passed on). ``contrib/nginx/pploy.conf`` is
this template rendered with the defaults.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

TEMPLATE = Path(__file__).parent / "templates" / "nginx-site.conf"
_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^_$")
_ADDRESS = re.compile(r"^((\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):)?\d{1,5}$")
_UPSTREAM = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$|^unix:/[^\s;{}]+$")
_DURATION = re.compile(r"^\d+(ms|s|m|h|d)?$")
_PATH = re.compile(r"^/[^\s;{}'\"$]*$")


class NginxConfigError(ValueError):
    """An option that would make a broken or unsafe configuration."""


@dataclass
class NginxOptions:
    server_names: list[str] = field(default_factory=lambda: ["deploy.example.com"])
    listen: list[str] = field(default_factory=lambda: ["443", "[::]:443"])
    http_listen: list[str] = field(default_factory=lambda: ["80", "[::]:80"])
    upstream: str = "127.0.0.1:9999"
    cert: str = "/etc/letsencrypt/live/deploy.example.com/fullchain.pem"
    key: str = "/etc/letsencrypt/live/deploy.example.com/privkey.pem"
    allow: list[str] = field(default_factory=list)
    htpasswd: str | None = None
    read_timeout: str = "3600s"
    http2: bool = True

    def validate(self) -> None:
        if not self.server_names:
            raise NginxConfigError("at least one --server-name is needed")
        for name in self.server_names:
            if not _NAME.match(name):
                raise NginxConfigError(f"--server-name {name!r} is not a host name")
        if not self.listen:
            raise NginxConfigError("at least one --listen address is needed")
        for address in [*self.listen, *self.http_listen]:
            if not _ADDRESS.match(address) or not 0 < int(address.rpartition(":")[2]) < 65536:
                raise NginxConfigError(f"{address!r} is not a port or ADDRESS:PORT")
        if not _UPSTREAM.match(self.upstream):
            raise NginxConfigError(f"--upstream {self.upstream!r} must be HOST:PORT or unix:/path")
        for key in ("cert", "key"):
            if not _PATH.match(getattr(self, key)):
                raise NginxConfigError(f"--{key} must be an absolute path without spaces or ;")
        if self.htpasswd is not None and not _PATH.match(self.htpasswd):
            raise NginxConfigError("--htpasswd must be an absolute path without spaces or ;")
        for network in self.allow:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise NginxConfigError(f"--allow {network!r} is not an IP network") from None
        if not _DURATION.match(self.read_timeout):
            raise NginxConfigError(f"--read-timeout {self.read_timeout!r} is not like 3600s or 1h")


def render(options: NginxOptions) -> str:
    """The site configuration for ``options`` (validated first)."""
    options.validate()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        autoescape=False,  # noqa: S701 - nginx configuration, not HTML; inputs are validated
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template(TEMPLATE.name).render(
        server_names=options.server_names,
        listen=options.listen,
        http_listen=options.http_listen,
        upstream=options.upstream,
        cert=options.cert,
        key=options.key,
        allow=[str(ipaddress.ip_network(n, strict=False)) for n in options.allow],
        htpasswd=options.htpasswd,
        read_timeout=options.read_timeout,
        http2=options.http2,
        redirect_port=redirect_port(options.listen),
    )


def redirect_port(listen: list[str]) -> str:
    """The ``:PORT`` the plain-HTTP redirect must name: the first HTTPS listen address's port,
    nothing for 443 (a browser adds no port to https:// URLs for it)."""
    port = int(listen[0].rpartition(":")[2])
    return "" if port == 443 else f":{port}"
