"""The LDAP user list (config ``ldap``) end to end: a real slapd started by the tests, a real
pploy on loopback, people signing in through the login form and the ``user`` cookie."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pploy.deploy.config import ConfigError, load_config
from pploy.deploy.domain.permissions import Caller
from tests.deploy.slapd import (
    GROUPS,
    PEOPLE,
    READER_DN,
    READER_PASSWORD,
    ROOT_DN,
    ROOT_PASSWORD,
    Slapd,
)
from tests.deploy.support import Pploy, make_remote, start_pploy
from tests.helpers import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd"), tls=True)
    server.start()
    yield server
    server.stop()


def ldap_settings(url: str, **extra: Any) -> dict[str, Any]:
    return {"url": url, "base_dn": PEOPLE, "group_base_dn": GROUPS, **extra}


async def sign_in(pploy: Pploy, name: str) -> tuple[int, str | None]:
    """Pick ``name`` on the login form as a browser would; the status and the user
    /api/status then reports for that browser."""
    browser = pploy.client(None)
    browser.cookie_jar.clear()
    async with browser.get(pploy.url("/login")) as resp:
        page = await resp.text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    async with browser.post(
        pploy.url("/login"), data={"user": name, "next": "/", "csrf_token": token},
        allow_redirects=False,
    ) as resp:  # fmt: skip
        status = resp.status
    async with browser.get(pploy.url("/api/status")) as resp:
        user = (await resp.json())["user"] if resp.status == 200 else None
    return status, user


async def offered(pploy: Pploy) -> list[str]:
    async with pploy.client(None).get(pploy.url("/login")) as resp:
        return re.findall(r'<option value="([^"]+)">', await resp.text())


async def test_directory_people_sign_in_beside_the_static_users(slapd: Slapd, tmp_path: Path):
    pploy = await start_pploy(tmp_path / "work", ldap=ldap_settings(slapd.url))
    try:
        # static users first, then the directory's others (alice is both: listed once)
        assert await offered(pploy) == ["alice", "bob", "carol", "dave"]
        assert await sign_in(pploy, "carol") == (303, "carol")
        assert await sign_in(pploy, "dave") == (303, "dave")
        assert await sign_in(pploy, "bob") == (303, "bob")
        async with pploy.client("carol").get(pploy.url("/api/status")) as resp:
            assert (await resp.json())["user"] == "carol"
    finally:
        await pploy.close()


async def test_strangers_and_refused_names_cannot_sign_in(slapd: Slapd, tmp_path: Path):
    pploy = await start_pploy(tmp_path / "work", ldap=ldap_settings(slapd.url))
    try:
        for stranger in ("mallory", "eve\x07bell", "eve", "Carol", "cn=carol"):
            status, user = await sign_in(pploy, stranger)
            assert (status, user) == (400, None), stranger
        async with pploy.client("mallory").get(pploy.url("/api/status")) as resp:
            assert resp.status == 401
        # the entry whose cn holds a control character is never offered
        assert not any("eve" in name for name in await offered(pploy))
    finally:
        await pploy.close()


async def test_groups_come_from_group_of_names(slapd: Slapd, tmp_path: Path):
    pploy = await start_pploy(tmp_path / "work", ldap=ldap_settings(slapd.url))
    try:
        directory = pploy.services.directory
        assert directory is not None
        assert directory.groups_of("carol") == {"deployers"}
        # named by a DN spelled with other case and spacing than the entry's own
        assert directory.groups_of("dave") == {"deployers", "admins"}
        assert directory.groups_of("alice") == frozenset()
        assert directory.groups_of("mallory") == frozenset()
        # the hook permission rules call
        assert pploy.services.groups_of(Caller("dave")) == {"deployers", "admins"}
    finally:
        await pploy.close()


async def test_a_bind_dn_is_used_and_a_wrong_password_is_logged_not_shown(
    slapd: Slapd, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="pploy")
    good = ldap_settings(slapd.url, bind_dn=ROOT_DN, bind_password=ROOT_PASSWORD)
    pploy = await start_pploy(tmp_path / "good", ldap=good)
    try:
        assert await sign_in(pploy, "carol") == (303, "carol")
    finally:
        await pploy.close()
    bad = ldap_settings(slapd.url, bind_dn=ROOT_DN, bind_password="wrong-password-123")
    pploy = await start_pploy(tmp_path / "bad", ldap=bad)
    try:
        assert await sign_in(pploy, "carol") == (400, None)
        assert await sign_in(pploy, "bob") == (303, "bob")
        failed = [r.getMessage() for r in caplog.records if "event=ldap.failed" in r.getMessage()]
        assert failed and "invalidCredentials" in failed[-1]
        assert "wrong-password-123" not in caplog.text
    finally:
        await pploy.close()


async def test_start_tls_checks_the_directorys_certificate(
    slapd: Slapd, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="pploy")
    assert slapd.ca_file is not None
    trusted = ldap_settings(slapd.url, start_tls=True, ca_file=str(slapd.ca_file))
    pploy = await start_pploy(tmp_path / "trusted", ldap=trusted)
    try:
        assert await sign_in(pploy, "carol") == (303, "carol")
    finally:
        await pploy.close()
    # the same directory, its CA not trusted (the system's CAs): refused, logged, no list
    pploy = await start_pploy(tmp_path / "untrusted", ldap=ldap_settings(slapd.url, start_tls=True))
    try:
        assert await sign_in(pploy, "carol") == (400, None)
        failed = [r.getMessage() for r in caplog.records if "event=ldap.failed" in r.getMessage()]
        assert failed and "certificate" in failed[-1].lower()
    finally:
        await pploy.close()


async def test_the_cached_list_survives_the_directory_going_down(
    slapd: Slapd, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="pploy")
    # refreshed every 0.3 s, so the test sees several refreshes fail while the directory is down
    pploy = await start_pploy(tmp_path / "work", ldap=ldap_settings(slapd.url, cache_minutes=0.005))
    try:
        assert await sign_in(pploy, "carol") == (303, "carol")
        slapd.stop()
        for _ in range(100):
            if sum("event=ldap.failed" in r.getMessage() for r in caplog.records) >= 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no failed refresh was logged with the directory down")
        assert await sign_in(pploy, "carol") == (303, "carol")
        assert await offered(pploy) == ["alice", "bob", "carol", "dave"]
    finally:
        slapd.start()  # the session's other tests need it
        await pploy.close()


async def test_pploy_starts_with_the_directory_down_and_picks_it_up_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="pploy")
    port = free_port()
    url = f"ldap://127.0.0.1:{port}/"
    pploy = await start_pploy(tmp_path / "work", ldap=ldap_settings(url, cache_minutes=0.005))
    late = Slapd(tmp_path / "slapd", port=port)
    try:
        assert "event=ldap.failed" in caplog.text
        assert await offered(pploy) == ["alice", "bob"]
        assert await sign_in(pploy, "bob") == (303, "bob")
        assert await sign_in(pploy, "carol") == (400, None)
        late.start()
        for _ in range(100):
            if "carol" in await offered(pploy):
                break
            await asyncio.sleep(0.1)
        assert await sign_in(pploy, "carol") == (303, "carol")
    finally:
        late.stop()
        await pploy.close()


def test_config_names_the_wrong_ldap_key() -> None:
    with pytest.raises(ConfigError, match=r"ldap\.url"):
        load_config(None, {"ldap": {"url": "http://x", "base_dn": PEOPLE}}, environ={})
    with pytest.raises(ConfigError, match=r"ldap\.base_dn"):
        load_config(None, {"ldap": {"url": "ldap://x"}}, environ={})
    config = load_config(None, {"ldap": {"url": "ldap://x/", "base_dn": PEOPLE}}, environ={})
    assert config.ldap is not None
    assert (config.ldap.filter, config.ldap.attribute, config.ldap.cache_minutes) == (
        "(cn=*)", "cn", 10,
    )  # fmt: skip


def test_standalone_mode_may_have_only_a_directory(tmp_path: Path) -> None:
    config = tmp_path / "pploy.yml"
    config.write_text(f"ldap:\n  url: ldap://127.0.0.1:1/\n  base_dn: {PEOPLE}\n")
    check = [sys.executable, "-m", "pploy", "serve", "--config", str(config), "--check-config"]
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(check, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config.write_text("log_level: info\n")
    result = subprocess.run(check, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 2 and "an ldap directory" in result.stderr


def test_member_of_values_are_groups_too() -> None:
    """Active Directory (and OpenLDAP's memberof overlay) list a person's groups on the
    person's entry; read as ldap3 returns them (the slapd above has no such overlay)."""
    from pploy.deploy.config import LdapConfig
    from pploy.deploy.directory import _listing

    config = LdapConfig(url="ldap://x", base_dn=PEOPLE, attribute="sAMAccountName")
    people = [
        {
            "type": "searchResEntry",
            "dn": "CN=Taro,OU=People,DC=corp",
            "attributes": {
                "sAMAccountName": "taro",
                "memberOf": [
                    "CN=Deployers,OU=Groups,DC=corp",
                    "cn=ops\\,night,ou=g,dc=corp",
                    "cn=\\e9\\96\\8b\\e7\\99\\ba,ou=g,dc=corp",  # 開発, hex-escaped
                ],
            },
        },
        {"type": "searchResRef", "uri": ["ldap://elsewhere/"]},
        {"type": "searchResEntry", "dn": "CN=NoName,DC=corp", "attributes": {}},
    ]
    listing = _listing(config, people, [])
    assert listing.users == ("taro",)
    assert listing.groups["taro"] == {"Deployers", "ops,night", "開発"}


async def test_gate_mode_finds_groups_by_the_vouched_email_not_the_chosen_name(
    slapd: Slapd, tmp_path: Path
):
    """gate's user name is what the provider lets a person pick (a GitHub login): someone who
    signs up as ``dave`` gains nothing of the directory's dave. Groups follow the email gate
    vouched for, matched against the entry's ``mail`` (case aside); a token keeps its maker's."""
    import json

    from pploy.identity import AssertionSigner, Identity

    signer = AssertionSigner()
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(signer.jwks()))
    rules = {
        "admins": ["admins"],
        "deploy": [{"env": "production", "users": ["deployers"]}],
    }
    pploy = await start_pploy(
        tmp_path / "work", ldap=ldap_settings(slapd.url), permissions=rules,
        **{"auth.mode": "gate", "auth.gate_public_key_file": str(keys)},
    )  # fmt: skip
    remote = str(make_remote(tmp_path))

    async def as_(identity: Identity, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"X-Gate-Assertion": signer.sign(identity)}
        async with pploy.client(None).request(
            method, pploy.url(path), json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    try:
        impostor = Identity("dave", "mallory@example.org")  # dave's name, not dave's email
        unverified = Identity("dave", None)
        for who in (impostor, unverified):
            status, body = await as_(who, "POST", "/api/projects", {"url": remote})
            assert status == 403 and "admins" in body["error"], (who, body)
        assert not (tmp_path / "work/projects/testploy").exists()
        dave = Identity("dave-gh", "dave@example.com")  # the directory's Dave@Example.com
        status, body = await as_(dave, "POST", "/api/projects", {"url": remote})
        assert status == 201, body
        carol = Identity("c4rol", "carol@example.com")  # in deployers, not in admins
        status, body = await as_(carol, "DELETE", "/api/projects/testploy")
        assert status == 403 and "admins" in body["error"]
        status, body = await as_(
            carol, "POST", "/api/projects/testploy/lock", {"operation": "gain"}
        )
        assert status == 200, body
        status, body = await as_(impostor, "POST", "/api/projects/testploy/deploy",
                                 {"env": "production"})  # fmt: skip
        assert status == 403 and "deployers" in body["error"], body
        status, made = await as_(carol, "POST", "/api/tokens", {"name": "ci"})
        assert status == 201
        async with pploy.client(None).post(
            pploy.url("/api/projects/testploy/deploy"), json={"env": "production"},
            headers={"Authorization": f"Bearer {made['token']}"},
        ) as resp:  # fmt: skip
            assert resp.status == 202, await resp.text()
            job = (await resp.json())["job"]
        url = pploy.url(f"/api/jobs/{job['id']}/log?follow=1")
        async with pploy.client(None).get(
            url, headers={"Authorization": f"Bearer {made['token']}"}
        ) as resp:
            assert b"deployed production" in await resp.read()
    finally:
        await pploy.close()


def test_an_email_two_entries_hold_vouches_for_neither() -> None:
    from pploy.deploy.config import LdapConfig
    from pploy.deploy.directory import Directory, _listing

    config = LdapConfig(url="ldap://x", base_dn=PEOPLE, attribute="uid")
    people = [
        {"type": "searchResEntry", "dn": f"uid={uid},{PEOPLE}",
         "attributes": {"uid": uid, "mail": mail, "memberOf": [f"cn={uid}s,{GROUPS}"]}}
        for uid, mail in (("ann", "shared@example.com"), ("ben", "Shared@example.com"),
                          ("cat", ["cat@example.com", "cat@old.example.com"]))
    ]  # fmt: skip
    directory = Directory(config)
    directory.listing = _listing(config, people, [])
    assert directory.groups_of("ann") == {"anns"}
    assert directory.groups_of_email("shared@example.com") == frozenset()
    assert directory.groups_of_email("CAT@old.example.com") == {"cats"}


async def test_a_directory_larger_than_slapds_size_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """slapd answers an anonymous search with at most 500 entries, paged or not: pploy says so
    (and uses them). The reader account gets 500 a search but any number paged: pploy pages
    through all."""
    from pploy.deploy.config import LdapConfig
    from pploy.deploy.directory import Directory

    caplog.set_level(logging.INFO, logger="pploy")
    big = Slapd(tmp_path / "slapd", crowd=1200)
    big.start()
    try:
        anonymous = Directory(LdapConfig(url=big.url, base_dn=PEOPLE, group_base_dn=GROUPS))
        assert await anonymous.refresh()
        assert len(anonymous.users) < 1203 and "event=ldap.truncated" in caplog.text
        caplog.clear()
        bound = Directory(
            LdapConfig(
                url=big.url, base_dn=PEOPLE, group_base_dn=GROUPS, bind_dn=READER_DN,
                bind_password=READER_PASSWORD,
            )
        )  # fmt: skip
        started = time.monotonic()
        assert await bound.refresh()
        elapsed = time.monotonic() - started
        assert len(bound.users) == 1200 + 3  # and carol, dave, alice
        assert bound.knows("p1199") and bound.groups_of("dave") == {"deployers", "admins"}
        assert "ldap.truncated" not in caplog.text
        print(f"read 1203 people and 2 groups in {elapsed * 1000:.0f} ms")
    finally:
        big.stop()
