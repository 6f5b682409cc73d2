"""config.py: the YAML file, its validation, and the env / flag overrides on top of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pploy.deploy.config import ENV_KEYS, Config, ConfigError, load_config


def write(tmp_path: Path, text: str | bytes, name: str = "pploy.yml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def load(tmp_path: Path, text: str, **kwargs) -> Config:
    kwargs.setdefault("environ", {})
    return load_config(write(tmp_path, text), **kwargs)


def test_defaults_without_a_file() -> None:
    config = load_config(None, environ={})
    assert config.port == 9000
    assert config.host == "127.0.0.1"
    assert config.lock.gain_minutes == 20 and config.lock.extend_minutes == 10
    assert config.job.keep_logs == 50 and config.job.timeout_minutes == 120
    assert config.git.commits == 20 and config.git.shallow is True
    assert config.auth.mode == "standalone"
    assert config.users == [] and config.webhooks == []


def test_a_full_file_is_read(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
host: 0.0.0.0
port: 9100
workdir: /srv/pploy
public_url: https://deploy.example.com
users: [alice, bob]
lock: {gain_minutes: 30, extend_minutes: 5}
job: {keep_logs: 7, cancel_grace_seconds: [1, 2]}
git: {shallow: false, commits: 40}
auth: {mode: proxy, header: X-User, trusted_proxies: [10.0.0.0/8]}
webhooks:
  - url: https://hooks.slack.com/services/x
    format: slack
    events: [job.finished]
    templates: {job.finished: "{user} {status}"}
log_level: debug
""",
    )
    assert (config.host, config.port, str(config.workdir)) == ("0.0.0.0", 9100, "/srv/pploy")
    assert config.users == ["alice", "bob"]
    assert config.lock.gain_minutes == 30 and config.lock.extend_minutes == 5
    assert config.job.keep_logs == 7 and config.job.cancel_grace_seconds == [1, 2]
    assert config.git.shallow is False and config.git.commits == 40
    assert config.auth.mode == "proxy" and config.auth.trusted_proxies == ["10.0.0.0/8"]
    hook = config.webhooks[0]
    assert hook.format == "slack" and hook.events == ["job.finished"]
    assert hook.templates == {"job.finished": "{user} {status}"}


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "").port == 9000
    assert load(tmp_path, "# only a comment\n").port == 9000


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("prot: 9000", "prot"),
        ("lock: {gain_minute: 5}", "lock.gain_minute"),
        ("lock: {gain_minutes: 0}", "lock.gain_minutes"),
        ("lock: {gain_minutes: -1}", "lock.gain_minutes"),
        ("lock: {gain_minutes: soon}", "lock.gain_minutes"),
        ("lock: {gain_minutes: .inf}", "lock.gain_minutes"),
        ("lock: {extend_minutes: .nan}", "lock.extend_minutes"),
        ("lock: 5", "lock"),
        ("port: 70000", "port"),
        ("port: nine", "port"),
        ("job: {keep_logs: 0}", "job.keep_logs"),
        ("job: {cancel_grace_seconds: [1]}", "job.cancel_grace_seconds"),
        ("job: {cancel_grace_seconds: [1, -1]}", "job.cancel_grace_seconds"),
        ("git: {commits: 0}", "git.commits"),
        ("auth: {mode: oauth}", "auth.mode"),
        ("auth: {trusted_proxies: [not-an-ip]}", "auth.trusted_proxies"),
        ("auth: {trusted_proxies: [10.0.0.0/33]}", "auth.trusted_proxies"),
        ("webhooks: [{url: ftp://x}]", "webhooks[0].url"),
        ("webhooks: [{url: 'https://ok'}, {url: 'javascript:x'}]", "webhooks[1].url"),
        ("webhooks: [{url: 'https://ok', format: xml}]", "webhooks[0].format"),
        ("webhooks: [{url: 'https://ok', events: [lock.gained, deploy]}]", "webhooks[0].events[1]"),
        ("webhooks: [{url: 'https://ok', retries: 9}]", "webhooks[0].retries"),
        ("webhooks: [{format: json}]", "webhooks[0].url"),
        ("users: [alice, alice]", "users"),
        ("users: ['-rf']", "users"),
        ("users: alice", "users"),
        ("log_level: loud", "log_level"),
    ],
)
def test_bad_values_name_the_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert f"{path}: {key}:" in message, message


def test_unknown_keys_are_called_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.hedaer: unknown key"):
        load(tmp_path, "auth: {hedaer: X-User}")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "port: x\nlock: {gain_minutes: 0}\nnope: 1\n")
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert any(": port:" in line for line in lines)
    assert any(": lock.gain_minutes:" in line for line in lines)
    assert any(": nope: unknown key" in line for line in lines)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("port: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("just a string", "top level must be a mapping"),
        ("port: 2001-13-45", "not valid YAML"),  # PyYAML raises a bare ValueError here
        ("port: !!int abc", "not valid YAML"),
        ("port: !!python/object:os.system x", "not valid YAML"),
        (b"port: \xff\xfe\n", "not UTF-8"),
        ("users: &x [*x]", "users"),
        ("lock: &x {gain_minutes: *x}", "lock.gain_minutes"),
    ],
)
def test_broken_files_are_config_errors(tmp_path: Path, content: str | bytes, fragment: str):
    with pytest.raises(ConfigError, match=fragment):
        load_config(write(tmp_path, content), environ={})


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yml", environ={})


@pytest.mark.parametrize(
    ("text", "environ", "key"),
    [
        ("public_url: https://CHANGE-ME.example.com", {}, "public_url"),
        ("webhooks: [{url: 'https://ok'}, {url: 'https://h/CHANGE-ME'}]", {}, "webhooks[1].url"),
        ("users: [alice, CHANGE-ME]", {}, "users[1]"),
        ("port: 9000", {"PPLOY_PUBLIC_URL": "https://CHANGE-ME"}, "public_url"),
    ],
)
def test_placeholders_are_refused_naming_the_key(
    tmp_path: Path, text: str, environ: dict[str, str], key: str
) -> None:
    """A value still holding the shipped examples' CHANGE-ME never runs, from any source."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ)
    assert f"{path}: {key}: still holds the placeholder CHANGE-ME" in str(info.value)


# -- precedence: defaults < file < environment < flags -------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 9100\nusers: [alice]\nhost: 0.0.0.0\n")
    config = load_config(path, environ={"PPLOY_PORT": "9200", "PPLOY_USERS": " bob, carol ,,"})
    assert config.port == 9200
    assert config.users == ["bob", "carol"]
    assert config.host == "0.0.0.0"  # not overridden


def test_flags_override_the_environment_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 9100\nusers: [alice]\n")
    config = load_config(
        path,
        overrides={"port": 9300, "users": ["dave"], "host": None},
        environ={"PPLOY_PORT": "9200", "PPLOY_USERS": "bob", "PPLOY_HOST": "::1"},
    )
    assert config.port == 9300
    assert config.users == ["dave"]
    assert config.host == "::1"  # a None flag is "not given": the environment stands


def test_nested_environment_key_keeps_the_rest_of_the_section(tmp_path: Path) -> None:
    path = write(tmp_path, "auth: {mode: standalone, header: X-Who}\n")
    config = load_config(path, environ={"PPLOY_AUTH_MODE": "proxy"})
    assert config.auth.mode == "proxy" and config.auth.header == "X-Who"


def test_bad_environment_values_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"port:"):
        load_config(None, environ={"PPLOY_PORT": "ninety"})
    with pytest.raises(ConfigError, match=r"users:"):
        load_config(None, environ={"PPLOY_USERS": "alice,bad<name"})
    with pytest.raises(ConfigError, match=r"auth"):
        load_config(write(tmp_path, "auth: 3\n"), environ={"PPLOY_AUTH_MODE": "proxy"})


def test_the_real_environment_is_used_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_KEYS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PPLOY_PORT", "9444")
    assert load_config(None).port == 9444
    assert load_config(None, environ={}).port == 9000


# -- gate mode -----------------------------------------------------------------------------------


def test_gate_mode_needs_a_key_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.gate_jwks_url"):
        load(tmp_path, "auth: {mode: gate}")
    with pytest.raises(ConfigError, match=r"auth\.gate_jwks_url"):
        load_config(None, environ={"PPLOY_AUTH_MODE": "gate"})
    assert load(tmp_path, "auth: {mode: gate, gate_jwks_url: 'http://g/jwks'}").auth.mode == "gate"
    config = load(tmp_path, "auth: {mode: gate, gate_public_key_file: /etc/gate.pem}")
    assert config.auth.gate_public_key_file == "/etc/gate.pem"


# -- no input crashes the loader -----------------------------------------------------------------

KNOWN_KEYS = [
    "host", "port", "workdir", "public_url", "users", "lock", "job", "git", "auth", "webhooks",
    "log_level", "gain_minutes", "extend_minutes", "keep_logs", "cancel_grace_seconds", "mode",
    "trusted_proxies", "gate_jwks_url", "url", "format", "events", "templates", "retries",
    "timeout_seconds", "commits", "depth",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["slack", "json", "gate", "proxy", "10.0.0.0/8", "http://x", "job.finished"]),
)
KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8), st.integers(), st.booleans())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=8,
)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=6)
ENVIRONS = st.dictionaries(
    st.sampled_from(["PPLOY_PORT", "PPLOY_USERS", "PPLOY_AUTH_MODE", "PPLOY_HOST", "OTHER"]),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=10),
    max_size=3,
)


def _load_text(text: str | bytes, environ: dict[str, str]) -> Config | None:
    fd, name = tempfile.mkstemp(suffix=".yml")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        return load_config(name, environ=environ)
    except ConfigError:
        return None
    finally:
        os.unlink(name)


@given(DOCUMENTS, ENVIRONS)
@settings(max_examples=120, deadline=None)
def test_arbitrary_mappings_raise_only_config_errors(doc: dict, environ: dict[str, str]) -> None:
    config = _load_text(yaml.safe_dump(doc, allow_unicode=True), environ)
    if config is not None:
        assert isinstance(config, Config)
        assert 0 <= config.port <= 65535


@given(st.text(st.sampled_from(list("abc:-[]{}!&*|>'\" \n\t#0123456789.,?")), max_size=60))
@settings(max_examples=200, deadline=None)
def test_arbitrary_yamlish_text_raises_only_config_errors(text: str) -> None:
    _load_text(text, {})


@given(st.binary(max_size=40))
@settings(max_examples=100, deadline=None)
def test_arbitrary_bytes_raise_only_config_errors(data: bytes) -> None:
    _load_text(data, {})
