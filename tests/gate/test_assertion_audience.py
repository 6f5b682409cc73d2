"""X-Gate-Assertion goes only to routes that ask for it (``assertion_audience``), minted for
that audience; pploy refuses a token minted for another app behind the same gate (issue 10:
any upstream could replay a visitor's token to pploy and deploy as them)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.jwk import ECKey

from pploy.gate.config import ConfigError, parse_config
from tests.deploy.support import start_pploy
from tests.gate.conftest import client_session, dev_config, dev_login, start_gate
from tests.gate.upstream import Upstream


def _claims(token: str, key: ECKey) -> dict:
    return dict(jwt.decode(token, key, algorithms=["ES256"]).claims)


async def test_only_routes_with_an_audience_get_an_assertion_and_pploy_refuses_others(tmp_path):
    private = tmp_path / "assertion.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = tmp_path / "assertion-public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    pploy = await start_pploy(
        tmp_path / "work",
        **{"auth.mode": "gate", "auth.gate_public_key_file": str(public)},
    )
    other = Upstream()
    await other.start()
    config = dev_config(
        proxy=[
            {"path": "/wiki", "dest": other.url, "strip_path": True},
            {"path": "/grafana", "dest": other.url, "assertion_audience": "grafana"},
            {"path": "/", "dest": pploy.base, "assertion_audience": "pploy"},  # last: first wins
        ]
    )
    config["auth"]["assertion"] = {"key_file": str(private)}
    gate = await start_gate(config)
    verify_key = ECKey.import_key(public.read_bytes())
    try:
        async with client_session() as client:
            await dev_login(client, gate.url, "alice")
            # pploy's route: the assertion is there, for pploy, and pploy believes it.
            async with client.get(gate.url + "/api/status") as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["user"] == "alice"
            # A route without assertion_audience gets the plain headers but no token at all.
            async with client.get(gate.url + "/wiki/page") as resp:
                wiki = {k.lower(): v for k, v in (await resp.json())["headers"]}
            assert wiki["x-forwarded-user"] == "alice"
            assert "x-gate-assertion" not in wiki
            # Another app's route gets a token minted for it...
            async with client.get(gate.url + "/grafana/x") as resp:
                grafana = {k.lower(): v for k, v in (await resp.json())["headers"]}
            token = grafana["x-gate-assertion"]
            assert _claims(token, verify_key)["aud"] == "grafana"
        # ...which that app, turned hostile, replays to pploy: refused.
        anon = pploy.client(None)
        for path in ("/api/status", "/api/projects"):
            async with anon.get(pploy.url(path), headers={"X-Gate-Assertion": token}) as resp:
                assert resp.status == 401, path
        async with anon.post(
            pploy.url("/api/projects"),
            json={"url": "https://example.invalid/x.git"},
            headers={"X-Gate-Assertion": token},
        ) as resp:
            assert resp.status == 401
    finally:
        await gate.server.stop()
        await other.stop()
        await pploy.close()


def test_the_old_global_audience_key_says_where_it_went():
    data = dev_config()
    data["auth"]["assertion"] = {"audience": "pploy"}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    message = str(err.value)
    assert message.startswith("auth.assertion.audience:")
    assert "assertion_audience: pploy" in message and "proxy entry" in message


@pytest.mark.parametrize("bad", ["", "two words", "a\nb"])
def test_assertion_audience_must_be_a_plain_name(bad):
    data = dev_config(
        proxy=[{"path": "/", "dest": "http://127.0.0.1:1", "assertion_audience": bad}]
    )
    with pytest.raises(ConfigError, match=r"proxy\[0\]\.assertion_audience"):
        parse_config(data)
