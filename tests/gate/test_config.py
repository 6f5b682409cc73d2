"""Configuration: typester/gate's sample accepted unchanged; errors name the key."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
import yaml

from pploy.cli import main
from pploy.gate.config import ConfigError, load_config, parse_address, parse_config
from tests.gate.conftest import REPO
from tests.helpers import DATA

SAMPLE = DATA / "gate-config_sample.yml"


def write(tmp_path, data) -> str:
    path = tmp_path / "gate.yml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def base(**extra):
    data = {
        "address": "127.0.0.1:9999",
        "auth": {
            "session": {"key": "k" * 32},
            "info": {
                "service": "google",
                "client_id": "id",
                "client_secret": "secret",
                "redirect_url": "https://gate.example.com/oauth2callback",
            },
        },
        "htdocs": None,
    }
    data.update(extra)
    return data


def test_sample_config_is_accepted_unchanged(capsys):
    assert main(["gate", "--config", str(SAMPLE), "--check-config"]) == 0
    assert "configuration OK" in capsys.readouterr().out
    config = load_config(SAMPLE)
    assert config.listen == (None, 9999)
    assert [p.path for p in config.proxy] == ["/elasticsearch", "/influxdb"]
    assert all(p.strip_path for p in config.proxy)
    assert config.paths.login == "/login" and config.paths.callback == "/oauth2callback"
    assert config.secure_cookies  # the redirect URL is https


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["auth"]["info"].pop("client_id"),
            "auth.info.client_id: required for service google",
        ),
        (lambda d: d["auth"]["info"].update(clientid="x"), "auth.info.clientid: unknown key"),
        (
            lambda d: d["auth"]["info"].update(service="facebook"),
            "auth.info.service: unknown service",
        ),
        (lambda d: d["auth"]["session"].pop("key"), "auth.session.key: required key is missing"),
        (lambda d: d.pop("address"), "address: required key is missing"),
        (lambda d: d.update(address="nowhere"), "address: 'nowhere' must be host:port"),
        (lambda d: d.update(proxy=[{"path": "/a", "dest": "ftp://x"}]), "proxy[0].dest:"),
        (lambda d: d.update(proxy=[{"path": "a", "dest": "http://x"}]), "proxy[0].path:"),
        (lambda d: d.update(proxy=[{"path": "/a/../b", "dest": "http://x"}]), "proxy[0].path:"),
        (lambda d: d["auth"].update(allow_networks=["10.0.0.0/33"]), "auth.allow_networks:"),
        (lambda d: d["auth"]["session"].update(lifetime="forever"), "auth.session.lifetime:"),
        (lambda d: d.update(ssl={"cert": "a.pem"}), "ssl.cert and ssl.key must be given together"),
        (
            lambda d: d["auth"]["info"].update(service="oidc"),
            "auth.info.issuer: required for service oidc",
        ),
        (lambda d: d.update(paths={"login": "login"}), "paths.login: 'login' must be"),
        (lambda d: d.update(upstream={"idle_timeout": -1}), "upstream.idle_timeout:"),
    ],
)
def test_errors_name_the_key(mutate, expected):
    data = base()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d["auth"]["session"].update(key="CHANGE-ME: run secrets.token_urlsafe"),
         "auth.session.key"),
        (lambda d: d["auth"]["session"].update(old_keys=["ok" * 16, "CHANGE-ME"]),
         "auth.session.old_keys[1]"),
        (lambda d: d["auth"]["info"].update(client_secret="CHANGE-ME"), "auth.info.client_secret"),
        (lambda d: d.update(proxy=[{"path": "/", "dest": "http://CHANGE-ME:80"}]), "proxy[0].dest"),
    ],
)  # fmt: skip
def test_placeholders_are_refused_naming_the_key(mutate, key, tmp_path, capsys):
    data = base()
    mutate(data)
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: still holds the placeholder"):
        parse_config(data)
    path = write(tmp_path, data)
    assert main(["gate", "--config", path, "--check-config"]) == 2
    assert f"{path}: {key}: still holds the placeholder CHANGE-ME" in capsys.readouterr().err


def test_check_config_reports_errors_and_exits_2(tmp_path, capsys):
    data = base()
    data["auth"]["info"]["client_secret"] = ""
    assert main(["gate", "--config", write(tmp_path, data), "--check-config"]) == 2
    assert "auth.info.client_secret: required" in capsys.readouterr().err


def test_bad_yaml_and_missing_file(tmp_path, capsys):
    assert main(["gate", "--config", write(tmp_path, "address: [unclosed"), "--check-config"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["gate", "--config", str(tmp_path / "nope.yml"), "--check-config"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_named_files_must_exist(tmp_path, capsys):
    data = base(ssl={"cert": "missing.crt", "key": "missing.key"}, htdocs="nodir")
    data["auth"]["htpasswd"] = "missing.htpasswd"
    assert main(["gate", "--config", write(tmp_path, data), "--check-config"]) == 2
    err = capsys.readouterr().err
    for key in ("ssl.cert", "ssl.key", "auth.htpasswd", "htdocs"):
        assert key in err


def test_dev_service_refuses_non_loopback_unless_forced(tmp_path, capsys):
    data = base(address=":9999")
    data["auth"]["info"] = {"service": "dev"}
    assert main(["gate", "--config", write(tmp_path, data), "--check-config"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    data["auth"]["info"]["force"] = True
    assert main(["gate", "--config", write(tmp_path, data), "--check-config"]) == 0
    assert "anyone can log in as anyone" in capsys.readouterr().err
    data = base(address="127.0.0.1:9999")
    data["auth"]["info"] = {"service": "dev"}
    assert main(["gate", "--config", write(tmp_path, data), "--check-config"]) == 0


def test_extensions_parse():
    data = base(
        upstream={"connect_timeout": "2s", "idle_timeout": "10m"},
        access_log={"format": "json"},
        metrics={"address": "127.0.0.1:9100"},
        identity_headers={"user": "X-User", "email": "", "strip": ["X-Employee"]},
        trusted_proxies=["127.0.0.1/32"],
        restrictions="example.com",
    )
    data["auth"]["session"]["lifetime"] = "8h"
    data["auth"]["allow_networks"] = ["192.0.2.0/24"]
    config = parse_config(data)
    assert config.upstream.idle_timeout == 600 and config.upstream.connect_timeout == 2
    assert config.auth.session.lifetime == 8 * 3600
    assert config.all_restrictions == ["example.com"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [(":9999", (None, 9999)), ("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:8080", ("::1", 8080))],
)
def test_parse_address(text, expected):
    assert parse_address(text) == expected


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit):
        main(["gate", "--help"])
    out = capsys.readouterr().out
    for word in ("--config", "--check-config", "--log-level", "/ping", "jwks.json"):
        assert word in out


@pytest.mark.slow  # a `pploy gate` process
def test_cli_runs_and_stops_cleanly(tmp_path):
    """The real command: starts, answers /ping, exits 0 on SIGTERM."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = {
        "address": f"127.0.0.1:{port}",
        "auth": {"session": {"key": "k" * 32}, "info": {"service": "dev"}},
        "htdocs": None,
    }
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pploy", "gate", "--config", write(tmp_path, data)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "event=gate.start" in line:
                break
        else:
            pytest.fail("gate did not start")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_key_defaults_to_the_cores_and_refuses_zero():
    base = {"address": "127.0.0.1:1", "auth": {"session": {"key": "k"}, "info": {"service": "dev"}}}
    assert parse_config(base).worker_count() == (os.cpu_count() or 1)
    assert parse_config({**base, "workers": 3}).worker_count() == 3
    with pytest.raises(ConfigError, match="workers"):
        parse_config({**base, "workers": 0})
