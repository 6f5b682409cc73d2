"""docs/migrating.md walks a user of each original through every flag and key (issue 14):
the lists below are go-pploy's flags (its main.go) and the Scala pploy's settings (its
README and conf/application.conf), so a section that forgets one fails here."""

from __future__ import annotations

from pathlib import Path

from pploy.deploy.config import Config

DOC = Path(__file__).resolve().parents[2] / "docs/migrating.md"
GO_PPLOY_FLAGS = [
    "-workdir", "-port", "-prefix", "-pidfile", "-lock", "-logmax", "-webhook", "-lockgained",
    "-lockreleased", "-lockextended", "-deployed", "-ddapikey", "-ddappkey", "-ldaphost",
    "-ldapport", "-ldapdn", "-ldapttl",
]  # fmt: skip
SCALA_KEYS = [
    "pploy.dir", "pploy.users", "pploy.lock.gainMinutes", "pploy.lock.extendMinutes",
    "pploy.commits.length", "pploy.commitlogs.lines", "pploy.ldap.url", "pploy.slack.endpoint",
    "pploy.idobata.endpoint", "application.secret", "application.langs",
]  # fmt: skip


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_every_go_pploy_flag_is_walked_through() -> None:
    text = section("From go-pploy")
    assert [f for f in GO_PPLOY_FLAGS if f"`{f}" not in text] == []


def test_every_scala_pploy_key_is_walked_through() -> None:
    text = section("From the Scala pploy")
    assert [k for k in SCALA_KEYS if f"`{k}" not in text] == []


def test_the_pploy_keys_it_names_exist() -> None:
    text = DOC.read_text()
    for key in ("workdir", "port", "prefix", "pidfile", "users", "public_url", "allowed_hosts"):
        assert key in Config.model_fields and f"`{key}" in text, key
