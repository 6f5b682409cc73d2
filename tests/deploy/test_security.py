"""security.py: Origin / Sec-Fetch-Site checks and the CSRF form token.

``check_origin`` is a pure function of the request's headers, so it is fed requests built by
aiohttp's ``make_mocked_request`` (only header parsing is exercised; no collaborator is faked).
The form token is checked through a real aiohttp server on loopback.
"""

from __future__ import annotations

import ssl

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from pploy.deploy.domain.errors import BadRequest, Forbidden, PployError
from pploy.deploy.web import security


def request(headers: dict[str, str], *, tls: bool = False, method: str = "POST") -> web.Request:
    return make_mocked_request(
        method, "/api/projects/app/lock", headers=headers,
        sslcontext=ssl.create_default_context() if tls else None,
    )  # fmt: skip


def allowed(headers: dict[str, str], public_url: str | None = None, trust: bool = False, **kw):
    try:
        security.check_origin(request(headers, **kw), public_url, trust)
    except Forbidden:
        return False
    return True


HOST = {"Host": "deploy.example.com:9000"}


def test_scripts_without_origin_pass() -> None:
    assert allowed({})
    assert allowed(HOST)


@pytest.mark.parametrize("site", ["same-origin", "none"])
def test_same_origin_fetch_metadata_passes(site: str) -> None:
    assert allowed({**HOST, "Sec-Fetch-Site": site})


@pytest.mark.parametrize("site", ["cross-site", "same-site", "something-new"])
def test_cross_site_fetch_metadata_is_refused(site: str) -> None:
    with pytest.raises(Forbidden, match="cross-site") as info:
        security.check_origin(request({**HOST, "Sec-Fetch-Site": site}), None, False)
    assert info.value.status == 403
    # ...even when the Origin looks right: the browser said it was cross-site.
    headers = {**HOST, "Sec-Fetch-Site": site, "Origin": "http://deploy.example.com:9000"}
    assert not allowed(headers)


@pytest.mark.parametrize(
    "origin",
    [
        "http://deploy.example.com:9000",
        "http://DEPLOY.example.com:9000",
    ],
)
def test_an_origin_matching_host_passes(origin: str) -> None:
    assert allowed({**HOST, "Origin": origin})


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example.com",
        "http://evil.example.com:9000",
        "http://deploy.example.com",  # another port is another origin
        "http://deploy.example.com:9001",
        "http://deploy.example.com.evil.com:9000",
        "http://evil.com/deploy.example.com:9000",
        "http://deploy.example.com:9000@evil.com",
        "null",
        "",
        "deploy.example.com:9000",
        "file://",
    ],
)
def test_foreign_or_opaque_origins_are_refused(origin: str) -> None:
    assert not allowed({**HOST, "Origin": origin})


def test_the_refusal_names_the_origin() -> None:
    with pytest.raises(Forbidden, match="http://evil.example.com"):
        security.check_origin(request({**HOST, "Origin": "http://evil.example.com"}), None, False)
    with pytest.raises(Forbidden, match="opaque"):
        security.check_origin(request({**HOST, "Origin": "null"}), None, False)


def test_default_ports_are_the_same_origin() -> None:
    assert allowed({"Host": "example.com:80", "Origin": "http://example.com"})
    assert allowed({"Host": "example.com", "Origin": "http://example.com:80"})
    assert allowed({"Host": "example.com:443", "Origin": "https://example.com"}, tls=True)
    assert allowed({"Host": "example.com", "Origin": "https://example.com:443"}, tls=True)
    assert not allowed({"Host": "example.com:443", "Origin": "https://example.com:8443"}, tls=True)
    # :80 is not the default for https
    assert not allowed({"Host": "example.com:80", "Origin": "https://example.com"}, tls=True)


def test_the_scheme_is_part_of_the_origin() -> None:
    """Same host and port over another scheme is another origin (a TLS page on :80, an
    http page where pploy is https)."""
    assert not allowed({"Host": "example.com:80", "Origin": "https://example.com:80"})
    assert not allowed({"Host": "example.com:8443", "Origin": "http://example.com:8443"}, tls=True)
    headers = {"Host": "10.0.0.5:9000", "Origin": "http://deploy.example.com"}
    assert not allowed(headers, public_url="https://deploy.example.com")
    forwarded = {**headers, "X-Forwarded-Host": "deploy.example.com", "X-Forwarded-Proto": "https"}
    assert not allowed(forwarded, trust=True)
    assert allowed({**forwarded, "Origin": "https://deploy.example.com"}, trust=True)


def test_public_url_is_an_allowed_origin() -> None:
    headers = {"Host": "127.0.0.1:9000", "Origin": "https://deploy.example.com"}
    assert not allowed(headers)
    assert allowed(headers, public_url="https://deploy.example.com/")
    assert allowed(headers, public_url="https://deploy.example.com:443/pploy")
    assert not allowed(headers, public_url="https://deploy.example.com:8443/")
    assert not allowed(
        {"Host": "127.0.0.1:9000", "Origin": "https://evil.com"},
        public_url="https://deploy.example.com",
    )


def test_forwarded_host_counts_only_from_a_trusted_proxy() -> None:
    headers = {
        "Host": "127.0.0.1:9000",
        "X-Forwarded-Host": "deploy.example.com",
        "X-Forwarded-Proto": "https",
        "Origin": "https://deploy.example.com",
    }
    assert not allowed(headers, trust=False)
    assert allowed(headers, trust=True)
    # A forged forwarded host does not widen what a direct client may claim.
    forged = {**headers, "X-Forwarded-Host": "evil.com", "Origin": "https://evil.com"}
    assert not allowed(forged, trust=False)


def test_forwarded_headers_with_several_hops_use_the_first() -> None:
    headers = {
        "Host": "10.0.0.5:9000",
        "X-Forwarded-Host": "deploy.example.com:443, inner.local",
        "X-Forwarded-Proto": "https, http",
        "Origin": "https://deploy.example.com",
    }
    assert allowed(headers, trust=True)
    assert not allowed({**headers, "Origin": "http://inner.local"}, trust=True)


def test_forwarded_proto_decides_the_default_port() -> None:
    base = {"Host": "10.0.0.5:9000", "X-Forwarded-Host": "deploy.example.com:443"}
    assert allowed({**base, "X-Forwarded-Proto": "https", "Origin": "https://deploy.example.com"},
                   trust=True)  # fmt: skip
    assert not allowed({**base, "Origin": "http://deploy.example.com"}, trust=True)


def test_websocket_upgrades_are_checked_like_posts() -> None:
    headers = {**HOST, "Upgrade": "websocket", "Origin": "http://evil.example.com"}
    with pytest.raises(Forbidden):
        security.check_origin(request(headers, method="GET"), None, False)


# -- CSRF form token, through a real server ------------------------------------------------------


async def _token(req: web.Request) -> web.Response:
    return web.Response(text=security.csrf_token(req))


async def _submit(req: web.Request) -> web.Response:
    try:
        await security.check_form_token(req)
    except PployError as exc:
        return web.json_response({"error": exc.message}, status=exc.status)
    return web.Response(text="ok")


@pytest.fixture
async def client():
    app = web.Application()
    app.router.add_get("/token", _token)
    app.router.add_post("/submit", _submit)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def test_csrf_token_reuses_the_cookie_or_makes_a_new_one(client: TestClient) -> None:
    fresh = await (await client.get("/token")).text()
    assert len(fresh) >= 40
    other = await (await client.get("/token")).text()
    assert other != fresh
    kept = await (await client.get("/token", cookies={"csrf": "abc123"})).text()
    assert kept == "abc123"
    huge = await (await client.get("/token", cookies={"csrf": "x" * 101})).text()
    assert huge != "x" * 101 and len(huge) < 100


async def test_form_with_the_matching_token_passes(client: TestClient) -> None:
    resp = await client.post("/submit", data={"csrf_token": "tok"}, cookies={"csrf": "tok"})
    assert resp.status == 200


@pytest.mark.parametrize(
    ("data", "cookie"),
    [
        ({"csrf_token": "tok"}, None),
        ({}, "tok"),
        ({"csrf_token": "other"}, "tok"),
        ({"csrf_token": ""}, ""),
        ({"csrf_token": "tok "}, "tok"),
    ],
)
async def test_form_without_a_matching_token_is_forbidden(
    client: TestClient, data: dict[str, str], cookie: str | None
) -> None:
    cookies = {"csrf": cookie} if cookie is not None else None
    resp = await client.post("/submit", data=data, cookies=cookies)
    assert resp.status == Forbidden.status
    assert "CSRF" in (await resp.json())["error"]


async def test_form_must_be_a_form(client: TestClient) -> None:
    resp = await client.post("/submit", json={"csrf_token": "tok"}, cookies={"csrf": "tok"})
    assert resp.status == BadRequest.status
