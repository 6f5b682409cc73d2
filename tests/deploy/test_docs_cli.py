"""The docs and --help stay in step with the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from pploy.deploy.config import Config

ROOT = Path(__file__).resolve().parents[2]


def dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += dotted_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_every_config_key_is_documented():
    text = (ROOT / "docs/configuration.md").read_text()
    missing = [key for key in dotted_keys(Config) if f"`{key}`" not in text]
    assert missing == []


def test_every_webhook_key_is_documented():
    from pploy.deploy.config import WebhookConfig

    text = (ROOT / "docs/configuration.md").read_text()
    assert [k for k in WebhookConfig.model_fields if f"`{k}`" not in text] == []


@pytest.mark.slow  # a `pploy` process per subcommand
def test_help_of_every_subcommand(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pploy", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("serve", "gate", "up", "nginx-config", "doctor", "client"):
        assert command in out
        sub = subprocess.run(
            [sys.executable, "-m", "pploy", command, "--help"], capture_output=True, text=True
        )
        assert sub.returncode == 0 and "usage: pploy " + command in sub.stdout


@pytest.mark.slow  # `pploy serve` processes
def test_serve_check_config_names_the_bad_key(tmp_path):
    bad = tmp_path / "pploy.yml"
    bad.write_text("users: [alice]\nlock:\n  gain_minutes: -1\n  colour: red\n")
    result = subprocess.run(
        [sys.executable, "-m", "pploy", "serve", "--config", str(bad), "--check-config"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "lock.gain_minutes" in result.stderr and "lock.colour: unknown key" in result.stderr
    good = tmp_path / "ok.yml"
    good.write_text("users: [alice]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pploy", "serve", "--config", str(good), "--check-config"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0 and "configuration OK" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "pploy", "serve", "--check-config"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2 and "users" in result.stderr


@pytest.mark.slow  # a `pploy serve` process
def test_serve_reports_a_taken_port(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "pploy", "serve", "--users", "a", "--workdir",
             str(tmp_path), "--port", str(port)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
