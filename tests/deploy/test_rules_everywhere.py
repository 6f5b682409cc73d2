"""Issue 21, pploy's side: the rules hold on every path to an action. Attacks through a real
``pploy serve`` started from a config file (the old create URLs, standalone ``permissions``,
a signal while the pidfile is written) and through a real pploy on loopback (an admin cutting
off another user's API tokens)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pploy.identity import AssertionSigner, Identity
from tests.deploy.support import make_remote, start_pploy
from tests.deploy.test_server_process import Server
from tests.helpers import free_port


def gate_config(tmp_path: Path, signer: AssertionSigner, extra: str = "") -> Path:
    """A gate-mode config file whose admins are alice and carol@example.com (gate's keys in a
    file)."""
    keys = tmp_path / "gate-jwks.json"
    keys.write_text(json.dumps(signer.jwks()))
    config = tmp_path / "pploy.yml"
    config.write_text(
        textwrap.dedent(
            f"""\
            auth:
              mode: gate
              gate_public_key_file: {keys}
            permissions:
              admins: [alice, carol@example.com]
            """
        )
        + extra
    )
    return config


@pytest.mark.slow  # `pploy serve` from a config file
async def test_a_non_admin_adds_nothing_through_the_old_create_urls(tmp_path: Path) -> None:
    """The High finding: bob, not an admin, posts a repository to go-pploy's ``/_create?url=``
    with his API token and to the Scala ``/_/create`` with his (gate) session: 403 naming the
    admins rule, nothing cloned. alice, an admin, still creates through the same URL."""
    signer = AssertionSigner()
    remote = make_remote(tmp_path, "payload")
    server = Server(tmp_path / "work", gate_config(tmp_path, signer))
    bob = {"X-Gate-Assertion": signer.sign(Identity("bob", "bob@example.com"))}
    alice = {"X-Gate-Assertion": signer.sign(Identity("alice", "alice@example.com"))}
    impostor = {
        "X-Gate-Assertion": signer.sign(Identity("carol@example.com", "mallory@example.org"))
    }
    try:
        async with aiohttp.ClientSession() as http:
            await server.ready(http)
            async with http.post(
                server.base + "/api/tokens", json={"name": "ci"}, headers=bob
            ) as resp:
                assert resp.status == 201, await resp.text()
                token = (await resp.json())["token"]
            bearer = {"Authorization": f"Bearer {token}"}
            attacks: list[tuple[str, dict[str, Any]]] = [
                ("/_create", {"params": {"url": str(remote)}, "headers": bearer}),
                ("/_create", {"json": {"url": str(remote)}, "headers": bearer}),
                ("/_/create", {"params": {"url": str(remote)}, "headers": bob}),
                ("/_/create", {"json": {"url": str(remote)}, "headers": bob}),
                # a provider lets anyone pick the login "carol@example.com": a name, not carol
                ("/_create", {"params": {"url": str(remote)}, "headers": impostor}),
            ]
            for path, how in attacks:
                async with http.post(server.base + path, allow_redirects=False, **how) as resp:
                    body = await resp.text()
                    assert resp.status == 403, (path, how, resp.status, body)
                    assert "may not add projects" in body and "admins" in body, body
                async with http.get(server.base + "/api/status", headers=alice) as resp:
                    assert (await resp.json())["projects"] == [], path
                assert not (tmp_path / "work/projects/payload").exists(), path
            async with http.post(
                server.base + "/_create", params={"url": str(remote)}, headers=alice,
                allow_redirects=False,
            ) as resp:  # fmt: skip
                assert resp.status == 303, await resp.text()
                assert resp.headers["Location"] == "/projects/payload"
            assert (tmp_path / "work/projects/payload/.deploy/bin/deploy").is_file()
    finally:
        out = server.stop(signal.SIGTERM)
    assert "action.missing" not in out


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pploy", "serve", "--config", str(config), "--check-config"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.slow  # `pploy serve` processes
def test_standalone_permissions_are_refused_unless_declared_advisory(tmp_path: Path) -> None:
    """In standalone mode anyone picks any name (alice, the admin, too): pploy refuses to start
    with ``permissions`` there, and ``--check-config`` says why and names the key that keeps
    them as advice; with the key, or in gate mode, they are accepted."""
    config = tmp_path / "pploy.yml"
    base = f"workdir: {tmp_path / 'work'}\nusers: [alice, bob]\n"
    for rules in (
        "permissions:\n  admins: [alice]\n",
        "permissions:\n  deploy:\n    - {env: production, users: [alice]}\n",
    ):
        config.write_text(base + rules)
        checked = check_config(config)
        assert checked.returncode == 2, checked
        assert "standalone mode anyone picks any name" in checked.stderr
        assert "auth.names_are_self_chosen: true" in checked.stderr
        port = free_port()
        started = subprocess.run(
            [sys.executable, "-m", "pploy", "serve", "--config", str(config), "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert started.returncode == 2 and "auth.names_are_self_chosen" in started.stderr
        config.write_text(base + rules + "auth:\n  names_are_self_chosen: true\n")
        checked = check_config(config)
        assert checked.returncode == 0, checked.stderr
    config.write_text(base)  # no permissions: nothing to acknowledge
    assert check_config(config).returncode == 0
    signer = AssertionSigner()
    assert check_config(gate_config(tmp_path, signer)).returncode == 0


async def test_an_admin_lists_and_revokes_another_users_tokens(tmp_path: Path) -> None:
    """Someone gate no longer lets in keeps working through their API tokens: an admin finds
    them (``GET /api/tokens?user=``, the tokens page) and revokes them (API and form); a
    non-admin can do neither to another user, and with no admins configured nobody can."""
    signer = AssertionSigner()
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(signer.jwks()))
    pploy = await start_pploy(
        tmp_path / "work", permissions={"admins": ["@ops.example.com"]},
        **{"auth.mode": "gate", "auth.gate_public_key_file": str(keys)},
    )  # fmt: skip
    people = {
        "admin": Identity("root", "root@ops.example.com"),
        "bob": Identity("bob", "bob@example.com"),
        "carol": Identity("carol", "carol@example.com"),
    }

    def as_(who: str) -> dict[str, str]:
        return {"X-Gate-Assertion": signer.sign(people[who])}

    http = pploy.client(None)

    async def call(method: str, path: str, who: str | None, **kw: Any) -> tuple[int, Any]:
        headers = kw.pop("headers", None) or (as_(who) if who else {})
        async with http.request(
            method, pploy.url(path), headers=headers, allow_redirects=False, **kw
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    try:
        made = {}
        for name in ("ci", "laptop"):
            status, body = await call("POST", "/api/tokens", "bob", json={"name": name})
            assert status == 201, body
            made[name] = body
        bob_token = {"Authorization": f"Bearer {made['ci']['token']}"}
        status, _ = await call("GET", "/api/status", None, headers=bob_token)
        assert status == 200

        # carol (not an admin) sees and revokes nothing of bob's, on the API and the page
        status, body = await call("GET", "/api/tokens?user=bob", "carol")
        assert status == 403 and "carol may not manage bob's API tokens" in body["error"]
        status, body = await call("DELETE", f"/api/tokens/{made['ci']['id']}", "carol")
        assert status == 404, body
        status, page = await call("GET", "/tokens?user=bob", "carol")
        assert status == 403
        status, page = await call("GET", "/tokens", "carol")
        assert 'id="tokens-of-user"' not in page
        # bob's own token cannot reach beyond bob either
        status, body = await call("GET", "/api/tokens?user=carol", None, headers=bob_token)
        assert status == 403

        # the admin (by email domain) lists bob's tokens and revokes one on the API...
        status, body = await call("GET", "/api/tokens?user=bob", "admin")
        assert status == 200 and sorted(t["name"] for t in body["tokens"]) == ["ci", "laptop"]
        assert all("token" not in t for t in body["tokens"])  # never the secret
        status, body = await call("DELETE", f"/api/tokens/{made['ci']['id']}", "admin")
        assert status == 200 and body["token"]["revoked_at"], body
        status, body = await call("GET", "/api/status", None, headers=bob_token)
        assert status == 401 and "revoked" in body["error"]
        # ...and the other on the tokens page, as a browser would
        status, page = await call("GET", "/tokens?user=bob", "admin")
        assert status == 200 and 'id="tokens-owner"' in page and "laptop" in page
        assert 'id="tokens-of-user"' in page  # the admin's form to look someone up
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        action = f"/tokens/{made['laptop']['id']}/revoke?user=bob"
        assert action in page
        async with http.post(
            pploy.url(action), data={"csrf_token": csrf}, headers=as_("admin"),
            allow_redirects=False,
        ) as resp:  # fmt: skip
            assert resp.status == 303 and resp.headers["Location"] == "/tokens?user=bob"
            assert "revoked bob's token" in resp.cookies["flash"].value
        tokens = pploy.services.store.list_tokens("bob")
        assert all(t.revoked_at for t in tokens) and len(tokens) == 2
    finally:
        await pploy.close()

    # Without admins, another user's tokens are nobody's business.
    pploy = await start_pploy(
        tmp_path / "work2", **{"auth.mode": "gate", "auth.gate_public_key_file": str(keys)}
    )
    http = pploy.client(None)
    try:
        status, body = await call("POST", "/api/tokens", "bob", json={"name": "ci"})
        assert status == 201
        status, body = await call("DELETE", f"/api/tokens/{body['id']}", "admin")
        assert status == 404
        status, body = await call("GET", "/api/tokens?user=bob", "admin")
        assert status == 403 and "none configured" in body["error"]
    finally:
        await pploy.close()


# Runs `pploy serve` as the CLI does, with one change: SIGTERM arrives the moment the pidfile
# is written (os.replace returns), the window in which pploy used to have no handler yet.
SIGNAL_AFTER_PIDFILE = """
import os, signal, sys
from pploy import cli
from pploy.deploy.web import runtime

write = runtime.write_pidfile

def write_then_signal(path):
    write(path)
    os.kill(os.getpid(), signal.SIGTERM)

runtime.write_pidfile = write_then_signal
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow  # a `pploy serve` process
def test_sigterm_right_after_the_pidfile_is_written_leaves_no_pidfile(tmp_path: Path) -> None:
    config = tmp_path / "pploy.yml"
    config.write_text("users: [alice]\n")
    pidfile = tmp_path / "pploy.pid"
    argv = [sys.executable, "-c", SIGNAL_AFTER_PIDFILE, "serve", "--config", str(config),
            "--workdir", str(tmp_path / "work"), "--port", str(free_port()),
            "--pidfile", str(pidfile)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert not pidfile.exists(), "a SIGTERM right after writing the pidfile left it behind"
    assert "serving on" not in done.stdout  # stopped before serving
