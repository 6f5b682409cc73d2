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


def filled(name: str, directory: Path) -> Path:
    """contrib/config/NAME with its CHANGE-ME placeholders replaced, as an operator would."""
    path = directory / name
    text = (CONTRIB / "config" / name).read_text()
    path.write_text(text.replace("CHANGE-ME", "deploy"))
    return path


@pytest.fixture(scope="module")
def filled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("etc-pploy")
    for name in ("pploy.yml", "gate.yml"):
        filled(name, directory)
    return directory


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(CONTRIB / "systemd" / name)
    return parser


def test_contrib_nginx_config_is_the_rendered_template() -> None:
    assert (CONTRIB / "nginx" / "pploy.conf").read_text() == render(NginxOptions())
    assert pploy("nginx-config").stdout == render(NginxOptions())


def test_contrib_configs_load_and_point_at_each_other(filled_dir: Path) -> None:
    pploy_conf = load_pploy_config(filled_dir / "pploy.yml", environ={})
    gate_conf = load_gate_config(filled_dir / "gate.yml")
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
    # The OAuth callback is on the URL users open.
    public = urlsplit(pploy_conf.public_url or "")
    assert (gate_conf.auth.info.redirect_url or "").startswith(f"https://{public.netloc}/")


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


def test_pploy_unit_lets_running_deploys_finish(filled_dir: Path) -> None:
    service = unit("pploy.service")["Service"]
    conf = load_pploy_config(filled_dir / "pploy.yml", environ={})
    # Signals to pploy only: the jobs' runners outlive a restart (mixed would SIGKILL them).
    assert service["KillMode"] == "process"
    assert service["Delegate"] == "yes"
    grace = conf.job.shutdown_grace_seconds + sum(conf.job.cancel_grace_seconds)
    assert int(service["TimeoutStopSec"]) > grace
    assert service["StateDirectory"] == "pploy" and str(conf.workdir) == "/var/lib/pploy"


SHIPPED_PLACEHOLDERS = {
    "pploy.yml": ["public_url"],
    "gate.yml": [
        "auth.session.key",
        "auth.info.client_id",
        "auth.info.client_secret",
        "auth.info.redirect_url",
    ],
}


@pytest.mark.slow  # a `pploy` process each
@pytest.mark.parametrize("check", [True, False], ids=["check-config", "start"])
@pytest.mark.parametrize("name", sorted(SHIPPED_PLACEHOLDERS))
def test_shipped_configs_are_refused_until_every_placeholder_is_replaced(
    name: str, check: bool, tmp_path: Path
) -> None:
    """contrib/config/*.yml as shipped: `--check-config` and a plain start both exit 2, naming
    each key that still holds CHANGE-ME (a placeholder session key or client secret must never
    run). Filled in, the same file passes --check-config."""
    command = "serve" if name == "pploy.yml" else "gate"
    extra = ["--check-config"] if check else []
    # Plain start: if the placeholder were accepted the server would run until the timeout.
    result = pploy(command, "--config", str(CONTRIB / "config" / name), *extra)
    assert result.returncode == 2, result.stdout + result.stderr
    for key in SHIPPED_PLACEHOLDERS[name]:
        assert f"{key}: still holds the placeholder CHANGE-ME" in result.stderr, result.stderr
    assert not result.stdout
    if check:
        result = pploy(command, "--config", str(filled(name, tmp_path)), "--check-config")
        assert result.returncode == 0, result.stderr
        assert "configuration OK" in result.stdout


@pytest.mark.slow  # a `pploy` process each
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


@pytest.mark.slow  # a `pploy` process
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
    assert "proxy_set_header Authorization $pploy_upstream_authorization;" in text
    assert "return 301" not in text  # --no-http-redirect
    assert "proxy_read_timeout 2h;" in text


@pytest.mark.slow  # a `pploy` process each
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
