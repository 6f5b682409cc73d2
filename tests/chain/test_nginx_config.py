"""`pploy nginx-config`'s output in a real nginx (TLS): what reaches the upstream of the
office-network + password set-up (a bearer token yes, the office password never, whatever its
spelling), and the plain-HTTP redirect keeping a non-443 HTTPS port."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from pploy.chain.nginx import NginxOptions, render
from tests.chain.harness import Certs, Nginx, RecordingUpstream
from tests.helpers import free_port

pytestmark = pytest.mark.slow  # nginx

USER, PASSWORD = "ops", "office-secret"
OFFICE, OUTSIDE = "127.0.0.1", "127.0.0.2"


def basic(user: str, password: str, scheme: str = "Basic") -> str:
    return f"{scheme} {base64.b64encode(f'{user}:{password}'.encode()).decode()}"


@pytest.fixture
def office_nginx(
    nginx_binary: str, certs: Certs, tmp_path: Path
) -> Iterator[tuple[Nginx, RecordingUpstream]]:
    upstream = RecordingUpstream()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    port = free_port()
    # The documented command: `--allow OFFICE --htpasswd FILE`, rendered by the CLI.
    args = [
        "nginx-config", "--server-name", "localhost", "--listen", f"127.0.0.1:{port}",
        "--no-http-redirect", "--upstream", f"127.0.0.1:{upstream.port}",
        "--cert", str(certs.cert), "--key", str(certs.key),
        "--allow", f"{OFFICE}/32", "--htpasswd", str(htpasswd),
    ]  # fmt: skip
    site = subprocess.run(
        [sys.executable, "-m", "pploy", *args], capture_output=True, text=True, check=True
    ).stdout
    server = Nginx(nginx_binary, tmp_path / "nginx", site, port).start()
    yield server, upstream
    server.stop()
    upstream.stop()


async def get(
    nginx: Nginx, upstream: RecordingUpstream, certs: Certs, source: str,
    headers: list[tuple[str, str]],
) -> tuple[int, str | None]:  # fmt: skip
    """GET through nginx from the loopback address ``source``: the status and, when the
    request reached the upstream, the Authorization it saw ("-" when it did not reach it)."""
    before = len(upstream.seen)
    connector = aiohttp.TCPConnector(ssl=certs.client_context(), local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(nginx.url + "/api/status", headers=headers) as resp:
            await resp.read()
            if len(upstream.seen) == before:
                return resp.status, "-"
            assert len(upstream.seen) == before + 1
            return resp.status, upstream.seen[-1].get("Authorization")


async def test_a_bearer_token_passes_and_the_office_password_never_does(
    office_nginx: tuple[Nginx, RecordingUpstream], certs: Certs
) -> None:
    nginx, upstream = office_nginx
    token = "pploy_" + "t" * 43
    good, bad = basic(USER, PASSWORD), basic(USER, "wrong")
    cases = [
        # From the office network: no password needed; a token goes on as it is.
        (OFFICE, [], 200, None),
        (OFFICE, [("Authorization", f"Bearer {token}")], 200, f"Bearer {token}"),
        (OFFICE, [("Authorization", f"bearer {token}")], 200, f"bearer {token}"),
        # The office password (a browser that has it cached sends it everywhere) stops at
        # nginx, in any spelling.
        (OFFICE, [("Authorization", good)], 200, None),
        (OFFICE, [("Authorization", basic(USER, PASSWORD, "basic"))], 200, None),
        (OFFICE, [("Authorization", basic(USER, PASSWORD, "BASIC"))], 200, None),
        (OFFICE, [("Authorization", "Digest username=ops")], 200, None),
        (OFFICE, [("Authorization", "Bearer")], 200, None),
        # A second Authorization header to smuggle one past the map: nginx refuses both.
        (OFFICE, [("Authorization", good), ("Authorization", f"Bearer {token}")], 400, "-"),
        # From outside: the password first (a token alone does not replace it); with it,
        # the upstream sees no credential.
        (OUTSIDE, [], 401, "-"),
        (OUTSIDE, [("Authorization", f"Bearer {token}")], 401, "-"),
        (OUTSIDE, [("Authorization", bad)], 401, "-"),
        (OUTSIDE, [("Authorization", good)], 200, None),
    ]
    for source, headers, status, seen in cases:
        got = await get(nginx, upstream, certs, source, headers)
        assert got == (status, seen), (source, headers, got)
    sent = [h.get("Authorization", "") for h in upstream.seen]
    assert not any(s.lower().startswith("basic") for s in sent), sent


async def test_the_http_redirect_keeps_a_non_443_port(
    nginx_binary: str, certs: Certs, tmp_path: Path
) -> None:
    port, http_port = free_port(), free_port()
    options = NginxOptions(
        server_names=["localhost"],
        listen=[f"127.0.0.1:{port}"],
        http_listen=[f"127.0.0.1:{http_port}"],
        cert=str(certs.cert),
        key=str(certs.key),
    )
    server = Nginx(nginx_binary, tmp_path / "nginx", render(options), port).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"http://localhost:{http_port}/projects/demo?x=1", allow_redirects=False
            ) as resp:
                assert resp.status == 301
                assert resp.headers["Location"] == f"https://localhost:{port}/projects/demo?x=1"
    finally:
        server.stop()
    # On 443 the URL names no port.
    default = render(NginxOptions())
    assert "return 301 https://$host$request_uri;" in default
