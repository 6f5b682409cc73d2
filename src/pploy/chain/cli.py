"""``pploy up``, ``pploy nginx-config`` and ``pploy doctor``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from pploy import log

UP_DESCRIPTION = """\
Run the whole local stack: gate (with the dev login: any name, no password) on the port you
open, in front of pploy (which believes only gate's signed assertion) on an internal loopback
port, with a demo project whose deploy script prints coloured, progressing output for about
15 s to test, staging or production. Prints the one URL to open; Ctrl-C stops everything.
"""

UP_EPILOG = """\
The workdir keeps pploy's projects, job logs and database, gate's session and signing keys,
and the --tls certificate, so a second run reuses them. Default workdir: $XDG_DATA_HOME/pploy,
else ~/.local/share/pploy.

examples:
  pploy up                          http://127.0.0.1:9999/
  pploy up --port 8443 --tls        https://127.0.0.1:8443/ (self-signed certificate)
  pploy up --workdir /tmp/try       a throw-away stack

Behind your own TLS proxy on this machine (e.g. `pploy nginx-config --upstream
127.0.0.1:9999`) it works as it is: gate listens on loopback and believes a loopback peer's
X-Forwarded-Proto (never a host from a header), so browsers at https://... can sign in.
"""

NGINX_DESCRIPTION = """\
Print the shipped nginx site configuration for pploy behind gate, filled in: TLS, HTTP/1.1
to gate, the WebSocket upgrade map, a read timeout above the stream heartbeats, and
optionally an office-network allowlist with basic auth for everyone else (`satisfy any`):
the password stays at nginx, an API token (`Authorization: Bearer`) is passed on.
Streams need no `proxy_buffering off`: pploy and gate send `X-Accel-Buffering: no` on them.
Put the output in nginx's http context (e.g. /etc/nginx/sites-enabled/pploy.conf).
"""

NGINX_EPILOG = """\
example:
  pploy nginx-config --server-name deploy.example.com \\
      --cert /etc/letsencrypt/live/deploy.example.com/fullchain.pem \\
      --key /etc/letsencrypt/live/deploy.example.com/privkey.pem \\
      --allow 192.0.2.0/24 --htpasswd /etc/nginx/pploy.htpasswd \\
      > /etc/nginx/sites-enabled/pploy.conf
  nginx -t && systemctl reload nginx
"""

DOCTOR_DESCRIPTION = """\
Find the hop that buffers or breaks live logs. Reads the stream-test endpoints of the site at
URL — gate's /.gate/stream-test and pploy's /api/stream-test, a timestamped tick every 100 ms
for 3 s — as chunked text, Server-Sent Events and WebSocket, all at once, and prints when each
tick arrived and a verdict per transport: streaming; buffered (ticks held and delivered in
batches, with their sizes); or broken (handshake refused, authentication needed, connection
cut at N s). Then the likely fix for the hop that answered (nginx, gate, another proxy).
"""

DOCTOR_EPILOG = """\
The endpoints are authenticated like the rest of the site: pass gate's session cookie (copy
it from your browser) with --cookie, or a header with --header.

exit status: 0 every transport streams, 1 something is buffered or broken, 2 bad usage.

examples:
  pploy doctor https://deploy.example.com/ --cookie _gate_session=...
  pploy doctor https://127.0.0.1:9999/ -k --cookie _gate_session=... --json
  pploy doctor https://deploy.example.com/ --cookie ... --interval 20 --duration 70
      (a silence of 20 s between ticks, heartbeats on: survives nginx's proxy_read_timeout?)
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``up``, ``nginx-config`` and ``doctor``."""
    _register_up(subparsers)
    _register_nginx(subparsers)
    _register_doctor(subparsers)


def _register_up(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from pploy.chain.up import DEFAULT_PORT

    parser = subparsers.add_parser(
        "up",
        help="run gate + pploy + a demo project locally: one command, one URL",
        description=UP_DESCRIPTION,
        epilog=UP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workdir", metavar="DIR", type=Path, help="where the stack keeps its state"
    )
    parser.add_argument(
        "--port",
        metavar="P",
        type=int,
        default=DEFAULT_PORT,
        help=f"the port to open in the browser (gate listens here; default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a self-signed certificate generated into the workdir",
    )
    parser.add_argument(
        "--prefix",
        metavar="PATH",
        default="",
        help="serve pploy under this path, e.g. /deploy (gate strips it and sends "
        "X-Forwarded-Prefix)",
    )
    log.add_level_argument(parser)
    parser.set_defaults(func=_run_up)


def _run_up(args: argparse.Namespace) -> int:
    from pploy.chain.up import run

    if not 0 < args.port < 65536:
        print(f"pploy up: --port {args.port} is not a port number", file=sys.stderr)
        return 2
    return run(args.workdir, args.port, args.tls, args.log_level, args.prefix)


def _register_nginx(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from pploy.chain.nginx import NginxOptions

    defaults = NginxOptions()
    parser = subparsers.add_parser(
        "nginx-config",
        help="print the nginx configuration for gate + pploy, filled in",
        description=NGINX_DESCRIPTION,
        epilog=NGINX_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--server-name",
        action="append",
        metavar="HOST",
        help=f"host name users open (repeatable; default {defaults.server_names[0]})",
    )
    parser.add_argument(
        "--listen",
        action="append",
        metavar="[ADDR:]PORT",
        help="HTTPS listen address (repeatable; default 443 and [::]:443); the plain-HTTP "
        "redirect names the first one's port unless it is 443",
    )
    parser.add_argument(
        "--http-listen",
        action="append",
        metavar="[ADDR:]PORT",
        help="plain-HTTP address that redirects to HTTPS (repeatable; default 80 and [::]:80)",
    )
    parser.add_argument(
        "--no-http-redirect", action="store_true", help="no plain-HTTP server block at all"
    )
    parser.add_argument(
        "--upstream",
        metavar="HOST:PORT",
        default=defaults.upstream,
        help=f"where gate listens (default {defaults.upstream})",
    )
    parser.add_argument("--cert", metavar="FILE", default=defaults.cert, help="TLS certificate")
    parser.add_argument("--key", metavar="FILE", default=defaults.key, help="its private key")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="office network let in without the password (repeatable; with --htpasswd this "
        "is `satisfy any`, alone it admits these networks only)",
    )
    parser.add_argument(
        "--htpasswd", metavar="FILE", help="basic-auth password file for everyone else"
    )
    parser.add_argument(
        "--read-timeout",
        default=defaults.read_timeout,
        metavar="DURATION",
        help=f"proxy_read_timeout, the longest silence (default {defaults.read_timeout})",
    )
    parser.add_argument("--no-http2", action="store_true", help="HTTP/1.1 only on the TLS port")
    parser.add_argument(
        "--output", "-o", metavar="FILE", help="write to FILE instead of standard output"
    )
    parser.set_defaults(func=_run_nginx)


def _run_nginx(args: argparse.Namespace) -> int:
    from pploy.chain.nginx import NginxConfigError, NginxOptions, render

    defaults = NginxOptions()
    options = NginxOptions(
        server_names=args.server_name or defaults.server_names,
        listen=args.listen or defaults.listen,
        http_listen=[] if args.no_http_redirect else (args.http_listen or defaults.http_listen),
        upstream=args.upstream,
        cert=args.cert,
        key=args.key,
        allow=args.allow,
        htpasswd=args.htpasswd,
        read_timeout=args.read_timeout,
        http2=not args.no_http2,
    )
    try:
        text = render(options)
    except NginxConfigError as exc:
        print(f"pploy nginx-config: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _register_doctor(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "doctor",
        help="find the hop (nginx, gate, a proxy) that buffers or cuts live logs",
        description=DOCTOR_DESCRIPTION,
        epilog=DOCTOR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", metavar="URL", help="the site users open (or a stream-test URL)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--cookie",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a cookie to send, e.g. gate's session (repeatable)",
    )
    parser.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header to send, e.g. 'Authorization: Basic …' (repeatable)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.1,
        metavar="S",
        help="seconds between ticks (default 0.1; the server allows 0.01-5)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds of ticking (default 3; the server allows up to 60)",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        metavar="S",
        help="keep-alive after S seconds of silence (0 = none; default the server's 15 s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="give up on a stream silent this long (default duration + 15 s)",
    )
    parser.add_argument(
        "--only",
        choices=["gate", "pploy"],
        help="read only gate's or only pploy's endpoints (default both)",
    )
    parser.add_argument(
        "--insecure", "-k", action="store_true", help="do not verify the TLS certificate"
    )
    parser.add_argument("--cacert", metavar="FILE", help="trust this CA (PEM) for TLS")
    parser.set_defaults(func=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    from pploy.chain.doctor import Options, diagnose, parse_cookie, parse_header, plan, render_text

    try:
        cookies = dict(parse_cookie(c) for c in args.cookie)
        headers = dict(parse_header(h) for h in args.header)
        if args.interval <= 0 or args.duration <= 0:
            raise ValueError("--interval and --duration must be positive")
        options = Options(
            url=args.url,
            cookies=cookies,
            headers=headers,
            interval=args.interval,
            duration=args.duration,
            heartbeat=args.heartbeat,
            timeout=args.timeout,
            insecure=args.insecure,
            cafile=args.cacert,
            endpoints=(args.only,) if args.only else ("gate", "pploy"),
        )
        plan(options)
    except ValueError as exc:
        print(f"pploy doctor: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(diagnose(options))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
    return 0 if report["ok"] else 1
