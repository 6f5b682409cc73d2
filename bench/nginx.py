"""nginx on loopback for the benchmarks and the end-to-end tests: Debian's nginx with its own
prefix, pid, logs and temp paths in a temp dir, serving the shipped TLS site config (rendered by
`pploy nginx-config`'s code) with a throwaway certificate authority."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from bench.procs import stop_process, wait_port
from pploy.chain.nginx import NginxOptions, render

# -- TLS --------------------------------------------------------------------------------------


@dataclass
class Certs:
    cafile: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))


def make_certs(root: Path) -> Certs:
    root.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    certs = Certs(root / "ca.pem", root / "cert.pem", root / "key.pem")
    ca.cert_pem.write_to_path(str(certs.cafile))
    certs.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(certs.key))
    return certs


# -- nginx ------------------------------------------------------------------------------------

MAIN_CONF = """\
{user}
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp/client_body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    include {root}/site.conf;
}}
"""


def shipped_site(port: int, upstream: str, certs: Certs, **overrides: Any) -> str:
    """The shipped nginx site config, rendered by `pploy nginx-config`'s code for a test."""
    options = NginxOptions(
        server_names=["localhost"],
        listen=[f"127.0.0.1:{port}"],
        http_listen=[],
        upstream=upstream,
        cert=str(certs.cert),
        key=str(certs.key),
        **overrides,
    )
    return render(options)


class Nginx:
    """Debian's nginx on a loopback port with a temp prefix and the given site config."""

    def __init__(self, binary: str, root: Path, site: str, port: int) -> None:
        self.binary = binary
        self.root = root
        self.site = site
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        (self.root / "site.conf").write_text(self.site)
        # As root, nginx would switch its workers to `nobody`, who cannot read the temp dir.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.root / "nginx.conf"
        conf.write_text(MAIN_CONF.format(root=self.root, user=user))
        log = self.root / "error.log"
        check = subprocess.run(
            [self.binary, "-t", "-p", str(self.root), "-c", str(conf), "-e", str(log)],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}\n{self.site}"
        self.proc = subprocess.Popen(
            [
                self.binary,
                "-p",
                str(self.root),
                "-c",
                str(conf),
                "-e",
                str(log),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "stderr.log", "wb"),  # noqa: SIM115
        )
        wait_port(self.port, self.proc, log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGQUIT)
