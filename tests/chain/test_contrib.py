"""What ships in contrib/ and `pploy nginx-config`, `pploy up`, `pploy doctor` help: the files
agree with each other and with the code that reads them."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pploy.chain.nginx import NginxOptions, render
from pploy.cli import build_parser
from pploy.deploy.config import load_config as load_pploy_config
from pploy.gate.config import load_config as load_gate_config

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib"


def pploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pploy", *args], capture_output=True, text=True, timeout=30
    )


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(CONTRIB / "systemd" / name)
    return parser


def test_contrib_nginx_config_is_the_rendered_template() -> None:
    assert (CONTRIB / "nginx" / "pploy.conf").read_text() == render(NginxOptions())
    assert pploy("nginx-config").stdout == render(NginxOptions())


def test_contrib_configs_load_and_point_at_each_other() -> None:
    pploy_conf = load_pploy_config(CONTRIB / "config" / "pploy.yml", environ={})
    gate_conf = load_gate_config(CONTRIB / "config" / "gate.yml")
    assert pploy_conf.auth.mode == "gate"
    # gate proxies to pploy's address, pploy fetches gate's keys from gate's address.
    dest = urlsplit(gate_conf.proxy[0].dest)
    assert (dest.hostname, dest.port) == (pploy_conf.host, pploy_conf.port)
    jwks = urlsplit(pploy_conf.auth.gate_jwks_url or "")
    assert f"{jwks.hostname}:{jwks.port}" == gate_conf.address
    assert pploy_conf.auth.gate_audience == gate_conf.proxy[0].assertion_audience
    # nginx proxies to gate, and gate believes nginx's forwarding headers.
    assert NginxOptions().upstream == gate_conf.address
    assert "127.0.0.1/32" in gate_conf.trusted_proxies
    assert gate_conf.auth.session.secure is True


@pytest.mark.parametrize(
    ("name", "command", "config"),
    [("pploy.service", "serve", "pploy.yml"), ("pploy-gate.service", "gate", "gate.yml")],
)
def test_systemd_units_run_the_real_commands(name: str, command: str, config: str) -> None:
    service = unit(name)["Service"]
    for key in ("ExecStart", "ExecStartPre"):
        argv = shlex.split(service[key])
        assert Path(argv[0]).name == "pploy"
        args = build_parser().parse_args(argv[1:])
        assert args.command == command
        assert args.config == f"/etc/pploy/{config}"
    assert "--check-config" in service["ExecStartPre"]
    assert unit(name)["Install"]["WantedBy"] == "multi-user.target"


def test_pploy_unit_lets_running_deploys_finish() -> None:
    service = unit("pploy.service")["Service"]
    conf = load_pploy_config(CONTRIB / "config" / "pploy.yml", environ={})
    # SIGTERM to pploy only: the deploy scripts are pploy's to stop, after its grace.
    assert service["KillMode"] == "mixed"
    grace = conf.job.shutdown_grace_seconds + sum(conf.job.cancel_grace_seconds)
    assert int(service["TimeoutStopSec"]) > grace
    assert service["StateDirectory"] == "pploy" and str(conf.workdir) == "/var/lib/pploy"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--server-name", "evil.com; include /etc/passwd"], "--server-name"),
        (["--allow", "office"], "--allow"),
        (["--cert", "relative/cert.pem"], "--cert"),
        (["--listen", "443 ssl; x"], "ADDRESS:PORT"),
        (["--read-timeout", "forever"], "--read-timeout"),
        (["--upstream", "gate"], "--upstream"),
    ],
)
def test_nginx_config_refuses_bad_options(args: list[str], message: str) -> None:
    result = pploy("nginx-config", *args)
    assert result.returncode == 2
    assert message in result.stderr and not result.stdout


def test_nginx_config_fills_in_the_options(tmp_path: Path) -> None:
    out = tmp_path / "site.conf"
    result = pploy(
        "nginx-config",
        "--server-name", "deploy.corp.example", "--server-name", "pploy.corp.example",
        "--listen", "8443", "--no-http-redirect", "--upstream", "127.0.0.1:19999",
        "--cert", "/etc/ssl/deploy.pem", "--key", "/etc/ssl/deploy.key",
        "--allow", "192.0.2.0/24", "--htpasswd", "/etc/nginx/pploy.htpasswd",
        "--read-timeout", "2h", "-o", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "server_name deploy.corp.example pploy.corp.example;" in text
    assert "listen 8443 ssl http2;" in text and "listen 80" not in text
    assert "proxy_pass http://127.0.0.1:19999;" in text
    assert "ssl_certificate     /etc/ssl/deploy.pem;" in text
    assert "satisfy any;" in text and "allow 192.0.2.0/24;" in text
    assert 'proxy_set_header Authorization "";' in text
    assert "proxy_read_timeout 2h;" in text


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("up", ["--workdir", "--port", "--tls", "9999", "XDG_DATA_HOME", "Ctrl-C"]),
        ("nginx-config", ["--server-name", "--cert", "--allow", "--htpasswd", "X-Accel-Buffering"]),
        ("doctor", ["--json", "--cookie", "streaming", "buffered", "broken", "exit status"]),
    ],
)
def test_help_is_complete(command: str, words: list[str]) -> None:
    result = pploy(command, "--help")
    assert result.returncode == 0
    for word in words:
        assert word in result.stdout, (word, result.stdout)
    assert command in pploy("--help").stdout
