"""Trust boundaries of a real pploy on loopback (issue 10): the host a trusted proxy forwards,
Origin schemes, the user names gate's assertion carries, a repeated identity header, and the
CSRF token on the one-shot deploy/checkout endpoints.

Each attack is sent the way it arrives: through aiohttp's client to a running server, with
the state compared before and after."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from pploy.identity import AssertionSigner, Identity
from tests.deploy.support import Pploy, make_remote, start_pploy


def snapshot(pploy: Pploy) -> Any:
    svc = pploy.services
    return (
        [(j.id, j.status) for j in svc.store.list_jobs(limit=100)],
        [(lock.project, lock.user) for p in svc.projects.list() if (lock := svc.locks.get(p.name))],
        [p.name for p in svc.projects.list()],
    )


async def gate_mode(tmp_path: Path, **settings: Any) -> tuple[Pploy, AssertionSigner]:
    """pploy in gate mode trusting a signer of our own, as gate's assertions would reach it."""
    signer = AssertionSigner(audience="pploy")
    keys = tmp_path / "gate-jwks.json"
    keys.write_text(json.dumps(signer.jwks()))
    pploy = await start_pploy(
        tmp_path / "work",
        **{"auth.mode": "gate", "auth.gate_public_key_file": str(keys), **settings},
    )
    return pploy, signer


async def post(
    pploy: Pploy, path: str, headers: Any, **kwargs: Any
) -> tuple[int, dict[str, Any] | str]:
    async with pploy.client(None).post(
        pploy.url(path), headers=headers, allow_redirects=False, **kwargs
    ) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


# -- the forwarded host and the Origin's scheme ----------------------------------------------


async def test_a_rebound_host_forwarded_by_a_trusted_proxy_is_refused(tmp_path: Path) -> None:
    """DNS rebinding through gate: the page's host reaches pploy as X-Forwarded-Host from a
    trusted peer, with an Origin that matches it. pploy applies its allowlist to that host."""
    pploy, signer = await gate_mode(tmp_path, allowed_hosts=["deploy.internal"])
    try:
        dana = {"X-Gate-Assertion": signer.sign(Identity("dana", None))}
        name = "testploy"
        status, body = await post(
            pploy, "/api/projects", dana, json={"url": str(make_remote(tmp_path, name))}
        )
        assert status == 201, body
        before = snapshot(pploy)
        port = pploy.server.port
        for host in (f"evil.test:{port}", "evil.test", f"localhost.evil.test:{port}"):
            for proto in ("http", "https"):
                rebound = {
                    **dana,
                    "X-Forwarded-Host": host,
                    "X-Forwarded-Proto": proto,
                    "Origin": f"{proto}://{host}",
                }
                status, body = await post(
                    pploy, f"/api/projects/{name}/lock", rebound, json={"operation": "gain"}
                )
                assert status == 400, (host, body)
                assert body == {
                    "error": f"this pploy does not serve the host {host!r}; "
                    "add it to allowed_hosts (or set public_url)"
                }
                async with pploy.client(None).get(
                    pploy.url(f"/api/projects/{name}"), headers=rebound
                ) as resp:
                    assert resp.status == 400  # reads too: the page must not read state
        assert snapshot(pploy) == before
        # A served forwarded host works, and its Origin (scheme included) is accepted.
        served = {
            **dana,
            "X-Forwarded-Host": "deploy.internal",
            "X-Forwarded-Proto": "https",
            "Origin": "https://deploy.internal",
        }
        status, body = await post(
            pploy, f"/api/projects/{name}/lock", served, json={"operation": "gain"}
        )
        assert status == 200 and body["lock"]["user"] == "dana", body
    finally:
        await pploy.close()


async def test_a_forwarded_host_from_an_untrusted_peer_is_not_believed(tmp_path: Path) -> None:
    """Outside trusted_proxies X-Forwarded-Host widens nothing (and narrows nothing)."""
    pploy = await start_pploy(
        tmp_path / "work",
        **{"auth.mode": "proxy", "auth.trusted_proxies": ["127.0.0.1/32"]},
    )
    try:
        carol = {"X-Forwarded-User": "carol", "X-Forwarded-Host": "evil.test"}
        async with pploy.client(None).get(pploy.url("/api/status"), headers=carol) as resp:
            assert resp.status == 400  # from the trusted peer: the forwarded host is checked
    finally:
        await pploy.close()
    pploy = await start_pploy(tmp_path / "work2")  # standalone: nothing forwarded is believed
    try:
        headers = {"X-Forwarded-Host": "evil.test", "Origin": "http://evil.test"}
        async with pploy.client("alice").get(pploy.url("/api/status"), headers=headers) as resp:
            assert resp.status == 200
        status, body = await pploy_post_lock(pploy, headers)
        assert status == 403 and "cross-site" in body["error"]
    finally:
        await pploy.close()


async def pploy_post_lock(pploy: Pploy, headers: dict[str, str]) -> tuple[int, Any]:
    async with pploy.client("alice").post(
        pploy.url("/api/projects/none/lock"), json={"operation": "gain"}, headers=headers
    ) as resp:
        return resp.status, await resp.json()


async def test_an_origin_with_another_scheme_is_another_site(tmp_path: Path) -> None:
    """``https://127.0.0.1:PORT`` is not pploy's origin when pploy is served over http on
    that port; the answer says what to do when a TLS proxy is in front."""
    pploy = await start_pploy(tmp_path / "work")
    try:
        port = pploy.server.port
        status, body = await pploy_post_lock(pploy, {"Origin": f"https://127.0.0.1:{port}"})
        assert status == 403 and "public_url" in body["error"], body
        status, body = await pploy_post_lock(pploy, {"Origin": f"http://127.0.0.1:{port}"})
        assert status == 404, body  # same origin: through to the handler (no such project)
    finally:
        await pploy.close()


# -- who the request names -------------------------------------------------------------------


@pytest.mark.parametrize(
    "user",
    ["dana\n", " dana", "dana ", "da\x00na", "dana\r\nX-Admin: 1", "da\tna", "", "x" * 200],
    ids=lambda user: repr(user)[:16],
)
async def test_gate_mode_refuses_a_signed_but_malformed_user_name(
    tmp_path: Path, user: str
) -> None:
    pploy, signer = await gate_mode(tmp_path)
    try:
        token = signer.sign(Identity(user, None))
        status, body = await post(
            pploy,
            "/api/projects",
            {"X-Gate-Assertion": token},
            json={"url": str(make_remote(tmp_path))},
        )
        assert status == 401, body
        assert "X-Gate-Assertion" in body["error"], body
        assert pploy.services.projects.list() == []
    finally:
        await pploy.close()


async def test_proxy_mode_refuses_an_identity_header_sent_twice(tmp_path: Path) -> None:
    """A proxy that appends its header after the client's must not let the client's win."""
    pploy = await start_pploy(tmp_path / "work", **{"auth.mode": "proxy"})
    try:
        for pair in (("mallory", "carol"), ("carol", "carol")):
            headers = CIMultiDict([("X-Forwarded-User", pair[0]), ("X-Forwarded-User", pair[1])])
            async with pploy.client(None).get(pploy.url("/api/status"), headers=headers) as resp:
                assert resp.status == 401
                assert "X-Forwarded-User was sent 2 times" in (await resp.json())["error"]
        async with pploy.client(None).get(
            pploy.url("/api/status"), headers={"X-Forwarded-User": "carol"}
        ) as resp:
            assert (await resp.json())["user"] == "carol"
    finally:
        await pploy.close()


async def test_gate_mode_refuses_an_assertion_sent_twice(tmp_path: Path) -> None:
    pploy, signer = await gate_mode(tmp_path)
    try:
        headers = CIMultiDict(
            [
                ("X-Gate-Assertion", signer.sign(Identity("mallory", None))),
                ("X-Gate-Assertion", signer.sign(Identity("dana", None))),
            ]
        )
        async with pploy.client(None).get(pploy.url("/api/status"), headers=headers) as resp:
            assert resp.status == 401
    finally:
        await pploy.close()


# -- one-shot endpoints and the CSRF token ---------------------------------------------------


async def csrf_token(pploy: Pploy, user: str) -> str:
    async with pploy.client(user).get(pploy.url("/")) as resp:
        page = await resp.text()
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match
    return match.group(1)


@pytest.fixture
async def locked(tmp_path: Path):
    """A standalone pploy with alice holding testploy's lock (her deploy would run)."""
    pploy = await start_pploy(tmp_path / "work")
    name = await pploy.add_project(make_remote(tmp_path))
    await pploy.gain(name)
    yield pploy, name
    await pploy.close()


CROSS_SITE_BODIES = [
    # what a foreign page's <form action="http://pploy/testploy/deploy?env=staging"> sends
    (
        "urlencoded, empty",
        {"data": b"", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
    ),
    ("urlencoded field", {"data": {"env": "staging"}}),
    ("urlencoded, wrong token", {"data": {"env": "staging", "csrf_token": "guess"}}),
    ("multipart", {"data": aiohttp.FormData({"env": "staging"}, default_to_multipart=True)}),
    ("text/plain", {"data": "env=staging", "headers": {"Content-Type": "text/plain"}}),
]


@pytest.mark.parametrize("kind", ["deploy", "checkout"])
@pytest.mark.parametrize(("case", "request_args"), CROSS_SITE_BODIES, ids=lambda v: str(v)[:20])
async def test_one_shot_forms_without_the_csrf_token_change_nothing(
    locked: tuple[Pploy, str], kind: str, case: str, request_args: dict[str, Any]
) -> None:
    """The browser sends alice's cookie and no Origin (an old browser, or one told not to):
    only the token tells her own form from a foreign page's."""
    pploy, name = locked
    before = snapshot(pploy)
    params = {"env": "staging"} if kind == "deploy" else {"ref": "main"}
    async with pploy.client("alice").post(
        pploy.url(f"/{name}/{kind}"), params=params, **request_args
    ) as resp:
        answer = await resp.text()
        assert resp.status in (403, 415), (case, resp.status, answer)
        assert "CSRF" in answer, answer
    assert snapshot(pploy) == before
    assert not pploy.services.jobs.running


async def test_one_shot_with_the_token_or_as_a_script_still_works(
    locked: tuple[Pploy, str],
) -> None:
    pploy, name = locked
    alice = pploy.client("alice")
    # docs/api.md: curl -N -X POST -b user=alice 'http://…/myapp/deploy?env=staging'
    async with alice.post(pploy.url(f"/{name}/deploy"), params={"env": "staging"}) as resp:
        assert resp.status == 200 and b"deployed staging" in await resp.read()
    async with alice.post(pploy.url(f"/{name}/deploy"), json={"env": "production"}) as resp:
        assert resp.status == 200 and b"deployed production" in await resp.read()
    token = await csrf_token(pploy, "alice")
    async with alice.post(
        pploy.url(f"/{name}/deploy"), data={"env": "staging", "csrf_token": token}
    ) as resp:
        assert resp.status == 200 and b"deployed staging" in await resp.read()
    statuses = [j.status for j in pploy.services.store.list_jobs(name)]
    assert statuses == ["succeeded"] * 3


def documented_one_shot_commands() -> list[list[str]]:
    """The curl commands of docs/api.md's one-shot section, as argument lists."""
    text = (Path(__file__).resolve().parents[2] / "docs/api.md").read_text()
    section = text.split("## One-shot endpoints", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.startswith("curl ")]


async def test_the_documented_curl_commands_work_and_a_curl_form_is_refused(
    locked: tuple[Pploy, str],
) -> None:
    pploy, name = locked
    lock, *commands = documented_one_shot_commands()
    assert "/api/projects/myapp/lock" in lock[-1], lock  # the block takes the lock first
    assert len(commands) == 2, commands
    for argv in commands:
        argv = [
            arg.replace("http://127.0.0.1:9000", pploy.base).replace("/myapp/", f"/{name}/")
            for arg in argv
        ]
        result = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, timeout=60
        )
        assert "deployed staging" in result.stdout, (argv, result.stdout, result.stderr)
    form = ["curl", "-sS", "-b", "user=alice", "-d", "env=staging", pploy.url(f"/{name}/deploy")]
    result = await asyncio.to_thread(subprocess.run, form, capture_output=True, text=True)
    assert "CSRF" in result.stdout and "deployed" not in result.stdout, result.stdout
    assert [j.status for j in pploy.services.store.list_jobs(name)] == ["succeeded"] * 2
