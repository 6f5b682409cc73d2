"""``pploy up``: the whole local stack in one command.

gate (with the ``dev`` login) listens on the port users open and proxies to pploy, which
listens on an internal loopback port and believes only gate's signed assertion
(``auth.mode: gate``). Both run in this process, in one event loop. The workdir (default
``$XDG_DATA_HOME/pploy`` or ``~/.local/share/pploy``) keeps pploy's projects, logs and
database, gate's session and signing keys and, with ``--tls``, a self-signed certificate, so a
second run picks up where the first stopped.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import ipaddress
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from pploy import eventloop, log

DEFAULT_PORT = 9999
HOST = "127.0.0.1"
SHUTDOWN_GRACE_SECONDS = 5.0
GATE_AUDIENCE = "pploy"  # pploy's auth.gate_audience = gate's assertion_audience on its route
LOOPBACK_PROXIES = ["127.0.0.0/8", "::1/128"]  # gate's trusted_proxies under `pploy up`


def default_workdir() -> Path:
    """``$XDG_DATA_HOME/pploy``, else ``~/.local/share/pploy``."""
    base = os.environ.get("XDG_DATA_HOME")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / "pploy"


class PortTaken(Exception):
    """The port users open is already in use."""


@dataclass
class StackFiles:
    """What the workdir holds besides pploy's own projects/, logs/ and pploy.db."""

    workdir: Path
    session_key: str
    assertion_key: Path
    assertion_public_key: Path
    cert: Path | None = None
    key: Path | None = None
    cert_created: bool = False


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def prepare_workdir(workdir: Path, tls: bool) -> StackFiles:
    """Create (first run) or reuse (later runs) gate's keys and, with ``tls``, a certificate."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    workdir.mkdir(parents=True, exist_ok=True)
    gate_dir = workdir / "gate"
    gate_dir.mkdir(mode=0o700, exist_ok=True)

    session_file = gate_dir / "session.key"
    if not session_file.exists():
        _write_private(session_file, secrets.token_urlsafe(32).encode())
    session_key = session_file.read_text().strip()

    private = gate_dir / "assertion-key.pem"
    public = gate_dir / "assertion-public.pem"
    if not private.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        _write_private(
            private,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    if not public.exists():
        loaded = serialization.load_pem_private_key(private.read_bytes(), password=None)
        public.write_bytes(
            loaded.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    files = StackFiles(workdir, session_key, private, public)
    if tls:
        files.cert, files.key = workdir / "tls" / "cert.pem", workdir / "tls" / "key.pem"
        files.cert_created = ensure_self_signed(files.cert, files.key)
    return files


def ensure_self_signed(cert_path: Path, key_path: Path, days: int = 365) -> bool:
    """A self-signed certificate for localhost, 127.0.0.1 and ::1; kept while valid for at
    least another day. Returns True when a new one was made."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    if cert_path.exists() and key_path.exists():
        try:
            current = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if current.not_valid_after_utc > now + datetime.timedelta(days=1):
                return False
        except ValueError:
            pass
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pploy up (self-signed)")])
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def pploy_config(files: StackFiles, public_url: str, log_level: str) -> Any:
    """pploy's configuration for the stack: gate mode, the workdir, an internal port."""
    from pploy.deploy.config import load_config

    return load_config(
        None,
        {
            "host": HOST,
            "port": 0,
            "workdir": str(files.workdir),
            "public_url": public_url,
            "auth.mode": "gate",
            "auth.gate_public_key_file": str(files.assertion_public_key),
            "auth.gate_audience": GATE_AUDIENCE,
            "job.shutdown_grace_seconds": SHUTDOWN_GRACE_SECONDS,
            # A stack to try pploy with: Ctrl-C stops its deploys too (not left to runners).
            "job.on_shutdown": "cancel",
            "log_level": log_level,
        },
        environ={},
    )


def gate_config(files: StackFiles, port: int, pploy_port: int, prefix: str = "") -> Any:
    """gate's configuration for the stack: dev login on loopback, everything (or everything
    under ``prefix``, stripped and sent on as ``X-Forwarded-Prefix``) to pploy."""
    from pploy.gate.config import parse_config

    data: dict[str, Any] = {
        "address": f"{HOST}:{port}",
        "auth": {
            "session": {"key": files.session_key},
            "info": {"service": "dev"},
            "assertion": {"key_file": str(files.assertion_key)},
        },
        # Only pploy's route gets the signed identity, minted for pploy's gate_audience.
        "proxy": [
            {
                "path": prefix or "/",
                "dest": f"http://{HOST}:{pploy_port}",
                "assertion_audience": GATE_AUDIENCE,
                "pass_bearer": True,  # pploy's API tokens: pploy authenticates them
                "strip_path": bool(prefix),
            }
        ],
        "htdocs": None,
        # gate listens on loopback only: a peer there is this machine, e.g. nginx terminating
        # TLS in front. Believe its X-Forwarded-Proto (a browser at https://… sends an https
        # Origin with its sign-in form); gate never takes the host from a proxy header.
        "trusted_proxies": LOOPBACK_PROXIES,
    }
    if files.cert and files.key:
        data["ssl"] = {"cert": str(files.cert), "key": str(files.key)}
    return parse_config(data, files.workdir / "gate")


def bind(port: int) -> socket.socket:
    """The listening socket for the port users open; PortTaken with a clear message."""
    try:
        return socket.create_server((HOST, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortTaken(
                f"port {port} on {HOST} is already in use (another `pploy up`?); "
                f"choose another with --port"
            ) from None
        if exc.errno == errno.EACCES:
            raise PortTaken(
                f"not allowed to listen on port {port}; choose one above 1023 with --port"
            ) from None
        raise


class Stack:
    """pploy and gate running in the current event loop."""

    def __init__(
        self, workdir: Path, port: int = DEFAULT_PORT, tls: bool = False, prefix: str = ""
    ) -> None:
        self.workdir = workdir
        self.prefix = prefix
        self.port = port
        self.tls = tls
        self.files: StackFiles | None = None
        self.url = ""
        self.pploy_url = ""
        self._pploy_runner: web.AppRunner | None = None
        self._gate: Any = None

    async def start(self, log_level: str = "info", gate_sock: socket.socket | None = None) -> str:
        """Start both servers; return the URL to open."""
        from pploy.deploy.app import SERVICES, create_app
        from pploy.deploy.demo import ensure_demo_project
        from pploy.gate.server import GateServer

        sock = gate_sock or bind(self.port)
        self.port = sock.getsockname()[1]
        self.files = prepare_workdir(self.workdir, self.tls)
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://{HOST}:{self.port}{self.prefix}/"
        config = pploy_config(self.files, self.url.rstrip("/"), log_level)

        app = create_app(config)

        async def add_demo(app: web.Application) -> None:
            await ensure_demo_project(app[SERVICES].projects, config.workdir)

        app.on_startup.append(add_demo)
        pploy_sock = socket.create_server((HOST, 0))
        pploy_port = pploy_sock.getsockname()[1]
        self.pploy_url = f"http://{HOST}:{pploy_port}/"
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS + 5,
        )
        try:
            await runner.setup()
            await web.SockSite(runner, pploy_sock).start()
            self._pploy_runner = runner
            self._gate = GateServer(gate_config(self.files, self.port, pploy_port, self.prefix))
            await self._gate.start(sock=sock)
        except BaseException:
            await self.stop()
            sock.close()
            raise
        log.event("up.start", url=self.url, pploy=self.pploy_url, workdir=str(self.workdir))
        return self.url

    async def stop(self) -> None:
        """gate first (no new requests), then pploy (running jobs get a short grace)."""
        if self._gate is not None:
            await self._gate.stop()
            self._gate = None
        if self._pploy_runner is not None:
            await self._pploy_runner.cleanup()
            self._pploy_runner = None
        log.event("up.stop", url=self.url)


def banner(stack: Stack) -> str:
    assert stack.files is not None
    lines = [
        "",
        f"  pploy is up: open {stack.url}",
        "  and sign in with any name (gate's dev login: anyone can be anyone; for trying only).",
        "  The demo project deploys to test, staging and production: gain its lock, check out",
        "  main, deploy, and watch the log flow.",
        "",
        f"  workdir  {stack.workdir} (kept: a second run picks up here)",
        f"  gate     {stack.url} -> pploy {stack.pploy_url} (loopback only)",
    ]
    if stack.tls and stack.files.cert:
        made = "generated" if stack.files.cert_created else "reused"
        lines.append(
            f"  TLS      self-signed certificate {made} at {stack.files.cert} "
            "(your browser will warn about it)"
        )
    lines += ["", "  Ctrl-C stops everything.", ""]
    return "\n".join(lines)


async def serve(workdir: Path, port: int, tls: bool, log_level: str, prefix: str = "") -> int:
    stack = Stack(workdir, port, tls, prefix)
    await stack.start(log_level)
    print(banner(stack), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            print("pploy up: stopping now", file=sys.stderr, flush=True)
            os._exit(130)
        print(
            f"\npploy up: {signame}: stopping (running jobs get {SHUTDOWN_GRACE_SECONDS:g} s; "
            "Ctrl-C again to quit at once)",
            file=sys.stderr,
            flush=True,
        )
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        await stop.wait()
    finally:
        await stack.stop()
    print("pploy up: stopped", flush=True)
    return 0


def run(
    workdir: Path | None, port: int, tls: bool, log_level: str = "info", prefix: str = ""
) -> int:
    """The ``pploy up`` command; returns the exit code."""
    from pploy.deploy.prefix import normalise

    log.setup(log_level)
    directory = (workdir or default_workdir()).expanduser().resolve()
    try:
        prefix = normalise(prefix, "--prefix")
    except ValueError as exc:
        print(f"pploy up: {exc}", file=sys.stderr)
        return 2
    try:
        return int(eventloop.run(serve(directory, port, tls, log_level, prefix)))
    except PortTaken as exc:
        print(f"pploy up: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from pploy.configfile import ConfigError
        from pploy.gate.server import StartupRefused

        if isinstance(exc, ConfigError | StartupRefused):
            print(f"pploy up: cannot start: {exc}", file=sys.stderr)
            return 2
        raise
