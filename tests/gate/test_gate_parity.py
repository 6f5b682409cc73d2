"""The same config.yml means the same thing as under typester/gate: entry order, the `/prefix`
redirect, logout's `next`, `-conf` and ./config.yml, and the keys of gate's older versions and
forks (read, or refused with what to write instead). Through a real gate on loopback and the
real command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from pploy.gate.config import ConfigError, parse_config, warnings
from tests.gate.conftest import (
    LOGOUT_TOKEN,
    client_session,
    dev_config,
    dev_login,
    serving,
    start_gate,
)
from tests.gate.upstream import Upstream
from tests.helpers import DATA

REPO = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture
async def upstream():
    """One per test: these tests run on loops of their own, not the module's."""
    async with serving(Upstream()) as server:
        yield server


def pploy_gate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "pploy", "gate", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_the_first_listed_entry_wins_as_in_gate(upstream: Upstream):
    config = dev_config(
        proxy=[
            {"path": "/", "dest": upstream.url + "/root"},
            {"path": "/grafana", "dest": upstream.url + "/grafana"},  # never reached
            {"path": "/only", "dest": upstream.url + "/a", "host": "a.test"},
            {"path": "/only", "dest": upstream.url + "/b", "host": "b.test"},
        ],
        allowed_hosts=["a.test", "b.test", "c.test"],
    )
    running = await start_gate(config)
    try:
        async with client_session() as client:
            await dev_login(client, running.url, "alice@example.com")
            async with client.get(running.url + "/grafana/x") as resp:
                assert (await resp.json())["raw_path"] == "/root/grafana/x"
            # one path, two hosts: each host its own entry; but the `/` entry, listed first,
            # takes every request, as gate's route for / did
            async with client.get(running.url + "/only/x", headers={"Host": "b.test"}) as resp:
                assert (await resp.json())["raw_path"] == "/root/only/x"
    finally:
        await running.server.stop()


async def test_host_entries_of_one_path_and_the_host_only_case(upstream: Upstream):
    config = dev_config(
        proxy=[
            {"path": "/vh", "dest": upstream.url + "/a", "host": "a.test"},
            {"path": "/vh", "dest": upstream.url + "/any"},
            {"path": "/solo", "dest": upstream.url + "/solo", "host": "a.test"},
        ],
        allowed_hosts=["a.test", "c.test"],
    )
    running = await start_gate(config)
    try:
        async with client_session() as client:
            await dev_login(client, running.url, "alice@example.com")
            for host, expected in (("a.test", "/a/vh/x"), ("c.test", "/any/vh/x")):
                async with client.get(running.url + "/vh/x", headers={"Host": host}) as resp:
                    assert (await resp.json())["raw_path"] == expected
            # gate sent every host to a host entry alone for its path; pploy gate sends only
            # that host's (documented, and --check-config warns)
            async with client.get(running.url + "/solo/x", headers={"Host": "a.test"}) as resp:
                assert (await resp.json())["raw_path"] == "/solo/solo/x"
            async with client.get(running.url + "/solo/x", headers={"Host": "c.test"}) as resp:
                assert resp.status == 404
    finally:
        await running.server.stop()


@pytest.mark.slow  # a `pploy gate` process
def test_check_config_warns_about_what_gate_users_would_not_expect(tmp_path: Path):
    config = dev_config(
        proxy=[
            {"path": "/", "dest": "http://127.0.0.1:9000"},
            {"path": "/grafana", "dest": "http://127.0.0.1:3000"},
            {"path": "/api", "dest": "http://127.0.0.1:9200/v1", "host": "a.test"},
        ]
    )
    found = warnings(parse_config(config, tmp_path))
    assert any(w.startswith("proxy[1] (/grafana) is never used: proxy[0]") for w in found)
    assert any(w.startswith("proxy[2] (a.test/api) is never used") for w in found)
    assert any("proxy[2].dest has a path (/v1)" in w for w in found)
    assert any("proxy[2]: host a.test is the only kind of entry for /api" in w for w in found)
    # the same entries in the order that works: no order warning
    config["proxy"] = [config["proxy"][1], config["proxy"][0]]
    assert not any("never used" in w for w in warnings(parse_config(config, tmp_path)))
    # and through the command line
    (tmp_path / "config.yml").write_text(yaml.safe_dump(dev_config(proxy=config["proxy"][::-1])))
    result = pploy_gate("--check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning: proxy[1] (/grafana) is never used" in result.stderr


@pytest.mark.slow  # `pploy gate` processes
def test_conf_flag_and_config_yml_in_the_current_directory(tmp_path: Path):
    result = pploy_gate("--check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "./config.yml does not exist" in result.stderr and "-conf FILE" in result.stderr
    sample = (DATA / "gate-config_sample.yml").read_text()
    (tmp_path / "config.yml").write_text(sample)
    result = pploy_gate("--check-config", cwd=tmp_path)
    assert result.returncode == 0 and "config.yml: configuration OK" in result.stdout
    (tmp_path / "other.yml").write_text(sample)
    (tmp_path / "config.yml").write_text("address: [broken\n")
    result = pploy_gate("-conf", "other.yml", "--check-config", cwd=tmp_path)
    assert result.returncode == 0 and "other.yml: configuration OK" in result.stdout


async def test_prefix_redirect_is_gates_302_and_logout_keeps_next(upstream: Upstream):
    config = dev_config(proxy=[{"path": "/app", "dest": upstream.url}])
    running = await start_gate(config)
    try:
        async with client_session() as client:
            await dev_login(client, running.url, "alice@example.com")
            async with client.get(running.url + "/app?x=1", allow_redirects=False) as resp:
                assert resp.status == 302 and resp.headers["Location"] == "/app/?x=1"
            # GET /logout?next= asks first (no sign-out by link), then lands on next
            async with client.get(running.url + "/logout?next=/app/bye") as resp:
                page = await resp.text()
            assert 'name="next" value="/app/bye"' in page
            token = LOGOUT_TOKEN.search(page).group(1)
            async with client.get(running.url + "/app/", allow_redirects=False) as resp:
                assert resp.status == 200  # still signed in
            async with client.post(
                running.url + "/logout", data={"token": token, "next": "/app/bye"},
                headers={"Origin": running.url}, allow_redirects=False,
            ) as resp:  # fmt: skip
                assert resp.status == 303 and resp.headers["Location"] == "/app/bye"
            async with client.get(
                running.url + "/app/", allow_redirects=False, headers={"Accept": "text/html"}
            ) as resp:
                assert resp.status in (302, 303)  # signed out: sent to the login page
            # a next pointing elsewhere is dropped, never followed
            async with client.get(running.url + "/logout?next=//evil.example/") as resp:
                assert "evil" not in await resp.text()
    finally:
        await running.server.stop()


def legacy(**top: Any) -> dict[str, Any]:
    base = dev_config()
    base.update(top)
    return base


def test_keys_of_older_gates_and_forks_are_read(tmp_path: Path):
    # gate v0.1: auth.google and domain
    v01 = {
        "address": ":9999",
        "auth": {
            "session": {"key": "k" * 32},
            "google": {
                "client_id": "id",
                "client_secret": "secret",
                "redirect_url": "https://gate.example.com/oauth2callback",
            },
        },
        "domain": "example.com",
        "htdocs": None,
    }
    config = parse_config(v01, tmp_path)
    assert config.auth.info.service == "google" and config.auth.info.client_id == "id"
    assert config.restrictions == ["example.com"]
    assert any("auth.google: read as auth.info" in w for w in warnings(config))
    # forks: auth.header.user_key, auth.session.cookie.*, auth.info.insecure: false
    fork = dev_config()
    fork["auth"]["header"] = {"user_key": "X-Gate-User"}
    fork["auth"]["session"]["cookie"] = {"domain": "example.com", "max_age": 3600, "path": "/"}
    fork["auth"]["info"]["insecure"] = False
    config = parse_config(fork, tmp_path)
    assert config.identity_headers.user == "X-Gate-User"
    assert config.auth.session.cookie_domain == "example.com"
    assert config.auth.session.lifetime == 3600
    notes = "\n".join(warnings(config))
    assert "auth.header.user_key: read as identity_headers.user" in notes
    assert "auth.session.cookie.max_age: read as auth.session.lifetime" in notes


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["auth"]["info"].update(service="nothing"), r"service: dev"),
        (lambda c: c["auth"]["info"].update(insecure=True), r"SSL_CERT_FILE"),
        (lambda c: c["auth"].update(header={"email_key": "X"}), r"identity_headers\.email"),
        (lambda c: c["auth"]["session"].update(cookie={"same_site": "None"}), r"cookie_domain"),
        (lambda c: c["auth"].update(google={"client_id": "x"}), r"keep only auth\.info"),
    ],
)
def test_keys_without_a_safe_meaning_are_refused_saying_what_to_write(change, message):
    config = dev_config()
    change(config)
    with pytest.raises(ConfigError, match=message):
        parse_config(config, REPO)


def test_gates_own_sample_config_is_accepted_unchanged(tmp_path: Path):
    data = yaml.safe_load((DATA / "gate-config_sample.yml").read_text())
    config = parse_config(data, tmp_path)
    assert [p.path for p in config.proxy] == ["/elasticsearch", "/influxdb"]
    assert not any("never used" in w or "dest has a path" in w for w in warnings(config))


async def test_htdocs_left_empty_serves_no_files(tmp_path: Path):
    """gate served the current directory for `htdocs:` left empty; pploy gate serves nothing."""
    (tmp_path / "notes.txt").write_text("private")
    for text in ("htdocs:\n", 'htdocs: ""\n'):
        config = {**dev_config(), **yaml.safe_load(text)}
        assert parse_config(config, tmp_path).htdocs is None
        running = await start_gate(config, base_dir=tmp_path)
        try:
            async with client_session() as client:
                await dev_login(client, running.url, "alice@example.com")
                async with client.get(running.url + "/notes.txt") as resp:
                    assert resp.status == 404
        finally:
            await running.server.stop()
