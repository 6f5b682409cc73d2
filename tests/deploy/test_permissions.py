"""Permissions (issue 13): who may add/remove projects and deploy where, decided by
pploy.deploy.domain.permissions and enforced by a real pploy on every route, refusals changing
nothing."""

from __future__ import annotations

import pytest
from yarl import URL

from pploy.deploy.config import ConfigError, PermissionsConfig, load_config
from pploy.deploy.domain.permissions import Caller, Permissions
from tests.deploy.support import make_remote, start_pploy

# The issue's example, as the configuration file would hold it.
RULES = {
    "admins": ["alice"],
    "deploy": [{"project": "*", "env": "production", "users": ["alice"]}],
}


def rules(data: dict) -> Permissions:
    return Permissions(PermissionsConfig.model_validate(data))


def test_entries_are_names_exact_emails_domains_and_groups() -> None:
    perms = rules(
        {
            "deploy": [
                {
                    "env": "production",
                    "users": ["alice", "carol@example.com", "@ops.example", "sre"],
                }
            ]
        }
    )
    allowed = [
        Caller("alice"),
        Caller("x", "Carol@Example.com"),
        Caller("y", "dan@ops.example"),
    ]
    refused = [
        Caller("bob"),
        Caller("bob", "bob@example.com"),
        Caller("eve", "eve@evilops.example"),  # not the domain, only ends like it
        Caller("eve", "eve@ops.example.evil"),
        Caller("@ops.example"),  # a name is not an email
        # nor is a name spelled like one (a provider lets people choose their login)
        Caller("carol@example.com"),
        Caller("carol@example.com", "mallory@example.org"),
    ]
    for caller in allowed:
        assert perms.deploy(caller, "app", "production").allowed, caller
    for caller in refused:
        decision = perms.deploy(caller, "app", "production")
        assert not decision.allowed, caller
        assert "production" in decision.reason and "rule 1" in decision.reason
    # Groups come from the directory's hook; none by default.
    assert not perms.deploy(Caller("frank"), "app", "production").allowed
    perms.groups_of = lambda caller: {"sre"} if caller.user == "frank" else set()
    assert perms.deploy(Caller("frank"), "app", "production").allowed
    # Other environments match no rule: everyone.
    assert perms.deploy(Caller("bob"), "app", "staging").allowed


def test_first_matching_rule_decides_and_empty_means_everyone() -> None:
    perms = rules(
        {
            "deploy": [
                {"project": "web-*", "env": "production", "users": ["bob"]},
                {"project": "*", "env": "prod*", "users": ["alice"]},
            ]
        }
    )
    assert perms.deploy(Caller("bob"), "web-front", "production").allowed
    assert not perms.deploy(Caller("alice"), "web-front", "production").allowed
    assert perms.deploy(Caller("alice"), "api", "production").allowed
    assert not perms.deploy(Caller("bob"), "api", "production").allowed
    everyone = rules({})
    assert everyone.manage_projects(Caller("anyone")).allowed
    assert everyone.deploy(Caller("anyone"), "api", "production").allowed
    admins = rules(RULES)
    assert admins.manage_projects(Caller("alice")).allowed
    refusal = admins.manage_projects(Caller("bob"), "add projects")
    assert not refusal.allowed and "bob may not add projects" in refusal.reason


def test_config_names_the_bad_key() -> None:
    with pytest.raises(ConfigError, match=r"permissions\.deploy\[0\]\.users"):
        load_config(None, {"permissions": {"deploy": [{"env": "production"}]}}, environ={})
    with pytest.raises(ConfigError, match="permissions.admin"):
        load_config(None, {"permissions": {"admin": ["alice"]}}, environ={})


async def test_issue_rules_enforced_on_every_route(tmp_path) -> None:
    pploy = await start_pploy(
        tmp_path / "work", permissions=RULES, **{"auth.names_are_self_chosen": True}
    )
    remote = make_remote(tmp_path)
    other = make_remote(tmp_path, name="other")
    try:
        # Only admins add: bob is refused on the API, the form and nothing is cloned.
        status, body = await pploy.api("POST", "/api/projects", "bob", {"url": str(other)})
        assert status == 403, body
        assert "bob may not add projects" in body["error"] and "admins" in body["error"]
        bob = pploy.client("bob")
        async with bob.get(pploy.url("/")) as resp:
            page = await resp.text()
            assert 'id="add-refused"' in page and "bob may not add projects" in page
        token = bob.cookie_jar.filter_cookies(URL(pploy.url("/"))).get("csrf")
        assert token is not None
        form = {"url": str(other), "csrf_token": token.value}
        async with bob.post(pploy.url("/projects"), data=form, allow_redirects=False) as resp:
            assert resp.status == 403
            assert "bob may not add projects" in await resp.text()
        assert not (tmp_path / "work/projects/other").exists()
        name = await pploy.add_project(remote, "alice")

        # bob deploys to staging...
        await pploy.gain(name, "bob")
        lock_before = pploy.services.locks.get(name)
        job = await pploy.deploy(name, "staging", "bob")
        assert (await pploy.wait_job(job))["status"] == "succeeded"
        # ...but not to production, on any route, and the refusal changes nothing.
        jobs_before = len(pploy.services.store.list_jobs(name))
        status, body = await pploy.api(
            "POST", f"/api/projects/{name}/deploy", "bob", {"env": "production"}
        )
        assert status == 403, body
        assert "bob may not deploy testploy to production" in body["error"]
        async with bob.post(
            pploy.url(f"/{name}/deploy?env=production"), headers={"Accept": "*/*"}
        ) as resp:
            assert resp.status == 403
            assert "text/html" not in resp.headers["Content-Type"]
            assert "may not deploy" in await resp.text()
        form = {"env": "production", "csrf_token": token.value}
        async with bob.post(
            pploy.url(f"/projects/{name}/deploy"), data=form, allow_redirects=False
        ) as resp:
            assert resp.status == 403
        async with bob.get(pploy.url(f"/projects/{name}")) as resp:
            page = await resp.text()
        assert 'class="muted deploy-refused" data-env="production"' in page
        lock_after = pploy.services.locks.get(name)
        assert lock_after is not None and lock_after.user == "bob"
        assert lock_after.expires_at == lock_before.expires_at  # type: ignore[union-attr]
        assert len(pploy.services.store.list_jobs(name)) == jobs_before + 0

        # Only admins remove, even holding the lock.
        status, body = await pploy.api("DELETE", f"/api/projects/{name}", "bob")
        assert status == 403 and "bob may not remove testploy" in body["error"]
        async with bob.post(
            pploy.url(f"/projects/{name}/remove"), data={"csrf_token": token.value},
            allow_redirects=False,
        ) as resp:  # fmt: skip
            assert resp.status == 403
        assert (tmp_path / "work/projects" / name).is_dir()
        assert pploy.services.locks.get(name).user == "bob"  # type: ignore[union-attr]

        # alice deploys to production.
        status, _ = await pploy.api(
            "POST", f"/api/projects/{name}/lock", "bob", {"operation": "release"}
        )
        assert status == 200
        await pploy.gain(name, "alice")
        job = await pploy.deploy(name, "production", "alice")
        assert (await pploy.wait_job(job))["status"] == "succeeded"
        assert b"deployed production" in await pploy.log(job)
        status, body = await pploy.api("DELETE", f"/api/projects/{name}", "alice")
        assert status == 200, body
    finally:
        await pploy.close()


async def test_emails_and_domains_come_from_gates_assertion_and_the_tokens_owner(tmp_path) -> None:
    """In gate mode the rules see the email gate signed; a token made by that session keeps it."""
    from pploy.identity import AssertionSigner, Identity

    signer = AssertionSigner()
    keys = tmp_path / "jwks.json"
    keys.write_text(__import__("json").dumps(signer.jwks()))
    rules = {
        "admins": ["@example.com"],
        "deploy": [{"env": "production", "users": ["carol@example.com"]}],
    }
    pploy = await start_pploy(
        tmp_path / "work",
        permissions=rules,
        **{"auth.mode": "gate", "auth.gate_public_key_file": str(keys)},
    )

    async def as_(user: str, email: str | None, method: str, path: str, body=None):  # type: ignore[no-untyped-def]
        headers = {"X-Gate-Assertion": signer.sign(Identity(user, email))}
        async with pploy.client(None).request(
            method, pploy.url(path), json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def finish(job_id: int, headers: dict[str, str]) -> None:
        url = pploy.url(f"/api/jobs/{job_id}/log?follow=1")
        async with pploy.client(None).get(url, headers=headers) as resp:
            assert resp.status == 200
            await resp.read()

    try:
        remote = str(make_remote(tmp_path))
        status, body = await as_(
            "mallory", "mallory@example.org", "POST", "/api/projects", {"url": remote}
        )
        assert status == 403 and "admins" in body["error"]
        status, body = await as_(
            "carol", "carol@example.com", "POST", "/api/projects", {"url": remote}
        )
        assert status == 201, body
        for user, email in (("carol", "carol@example.com"), ("dave", "dave@example.com")):
            status, body = await as_(
                user, email, "POST", "/api/projects/testploy/lock", {"operation": "gain"}
            )
            assert status == 200, body
            status, body = await as_(
                user, email, "POST", "/api/projects/testploy/deploy", {"env": "production"}
            )
            assert status == (202 if user == "carol" else 403), body
            if user == "carol":
                await finish(
                    body["job"]["id"], {"X-Gate-Assertion": signer.sign(Identity(user, email))}
                )
            status, body = await as_(
                user, email, "POST", "/api/projects/testploy/lock", {"operation": "release"}
            )
            assert status == 200, body
        # A provider lets people pick their login: one named like carol's email is not carol.
        status, body = await as_(
            "carol@example.com", "mallory@example.org", "POST", "/api/projects/testploy/deploy",
            {"env": "production"},
        )  # fmt: skip
        assert status == 403 and "may not deploy" in body["error"], body
        # A token carries its owner's email: carol's token may deploy to production too.
        status, made = await as_(
            "carol", "carol@example.com", "POST", "/api/tokens", {"name": "ci"}
        )
        assert status == 201 and made["email"] == "carol@example.com"
        bearer = {"Authorization": f"Bearer {made['token']}"}
        anon = pploy.client(None)
        async with anon.post(
            pploy.url("/api/projects/testploy/lock"), json={"operation": "gain"}, headers=bearer
        ) as resp:
            assert resp.status == 200
        async with anon.post(
            pploy.url("/api/projects/testploy/deploy"), json={"env": "production"}, headers=bearer
        ) as resp:
            assert resp.status == 202, await resp.text()
            job = (await resp.json())["job"]
        assert (job["user"], job["token"]) == ("carol", "ci")
        await finish(job["id"], bearer)
    finally:
        await pploy.close()
