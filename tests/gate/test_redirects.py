"""Open redirects after login: all 559 payloads of the oauth2-proxy corpus are refused or
neutralised, by the validator and through gate's real login endpoint."""

from __future__ import annotations

import re
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import pytest_asyncio

from pploy.redirects import safe_return_path
from tests.gate.conftest import client_session, dev_config, start_gate
from tests.helpers import DATA

MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")

BASE = "https://gate.test/"


def payloads() -> list[str]:
    text = (DATA / "openredirects.txt").read_text(encoding="utf-8")
    # One payload per line; the first is the empty string. Only the final newline ends nothing.
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def browser_resolve(location: str) -> str:
    """Resolve a Location value the lenient way browsers do (WHATWG URL parsing)."""
    loc = location.strip("".join(chr(c) for c in range(0x21)))
    loc = re.sub(r"[\t\n\r]", "", loc).replace("\\", "/")
    return urljoin(BASE, loc)


def assert_same_origin(location: str) -> None:
    for candidate in (location, unquote(location), unquote(unquote(location))):
        resolved = urlsplit(browser_resolve(candidate))
        assert (resolved.scheme, resolved.netloc) == ("https", "gate.test"), (location, candidate)
    assert location.startswith("/") and not location.startswith(("//", "/\\"))


def test_corpus_is_complete():
    assert len(payloads()) == 559


@pytest.mark.parametrize("payload", payloads())
def test_validator_refuses_or_neutralises(payload):
    result = safe_return_path(payload)
    assert result == "/"  # every payload refused, none merely neutralised
    assert_same_origin(result)


@pytest.mark.parametrize(
    "good",
    [
        "/",
        "/deploy/app",
        "/deploy/app?env=staging&x=%2Fy",
        "/a/b/",
        "/%E3%81%82",
        "/projects/demo?tab=jobs&since=2026-12-01T10:00",
        "/jobs/12/log?follow=1#end",
    ],
)
def test_ordinary_paths_survive(good):
    assert safe_return_path(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "//evil.test",
        "/\\evil.test",
        "/%09/evil.test",
        "/%5Cevil.test",
        "https://evil.test",
        "javascript:alert(1)",
        "/%2F%2Fevil.test",
        "/%252F%252Fevil.test",
        "\t/x",
        None,
        42,
        "",
        "/" + "a" * 3000,
        "/%ff%fe",
    ],
)
def test_bad_values(bad):
    assert safe_return_path(bad) == "/"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gate():
    running = await start_gate(dev_config())
    yield running
    await running.server.stop()


@MODULE_LOOP
async def test_every_payload_through_the_login_endpoint(gate):
    async with client_session() as client:
        for payload in payloads():
            async with client.post(
                gate.url + "/login",
                data={"user": "alice", "next": payload},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303, payload
                assert resp.headers["Location"] == "/", payload


@MODULE_LOOP
async def test_redirect_to_login_keeps_a_safe_next(gate):
    async with client_session() as client:
        async with client.get(
            gate.url + "/login", params={"next": "//evil.test/x"}, allow_redirects=False
        ) as resp:
            text = await resp.text()
        assert 'name="next" value="/"' in text
