"""`pploy doctor` against real chains: the good one, and nginx broken in each way users
break it (buffering forced on for a route, WebSocket headers missing, a short read timeout)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from pploy.chain.doctor import Options, diagnose
from tests.chain.harness import Certs, Nginx, edit, location_block

pytestmark = pytest.mark.slow  # nginx


def brief(report: dict[str, Any]) -> str:
    return "\n".join(
        f"{p['endpoint']} {p['transport']}: {p['verdict']} {p['detail']}" for p in report["probes"]
    )


def verdicts(report: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(p["endpoint"], p["transport"]): p["verdict"] for p in report["probes"]}


def probe(report: dict[str, Any], endpoint: str, transport: str) -> dict[str, Any]:
    return next(
        p for p in report["probes"] if p["endpoint"] == endpoint and p["transport"] == transport
    )


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    """``pploy doctor`` as its users run it: the real command, in a process of its own."""
    command = [sys.executable, "-m", "pploy", "doctor", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def options(server: Nginx, certs: Certs, cookie: str, **kwargs: Any) -> Options:
    name, _, value = cookie.partition("=")
    return Options(url=server.url + "/", cookies={name: value}, cafile=str(certs.cafile), **kwargs)


def test_good_chain_streams_everywhere_cli(nginx: Nginx, certs: Certs, session_cookie: str) -> None:
    result = doctor(
        nginx.url + "/", "--json", "--cacert", str(certs.cafile), "--cookie", session_cookie
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert set(verdicts(report).values()) == {"streaming"}
    assert len(report["probes"]) == 6
    for p in report["probes"]:
        assert p["hop"] == "nginx"
        assert len(p["ticks"]) == p["expected"] == 30
        assert [t["n"] for t in p["ticks"]] == list(range(1, 31))
        assert len(p["batches"]) >= 15  # ticks came one by one, not in lumps


def test_good_chain_text_report(nginx: Nginx, certs: Certs, session_cookie: str) -> None:
    result = doctor(
        nginx.url + "/", "--duration", "0.5", "--cacert", str(certs.cafile),
        "--cookie", session_cookie,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("streaming") >= 6
    assert "arrivals (ms):" in out
    assert "answered by nginx" in out


async def test_without_a_session_doctor_says_to_log_in(nginx: Nginx, certs: Certs) -> None:
    report = await diagnose(Options(url=nginx.url + "/", cafile=str(certs.cafile), duration=0.3))
    assert report["ok"] is False
    assert set(verdicts(report).values()) == {"broken"}
    assert {p["status"] for p in report["probes"]} == {401}
    assert any("--cookie" in line for line in report["summary"])


@pytest.fixture(scope="module")
def buffering_nginx(make_nginx: Callable[[Callable[[str], str]], Nginx]) -> Nginx:
    """pploy's stream-test route with buffering forced on and the upstream's opt-out ignored."""

    def transform(site: str) -> str:
        block = location_block(site)
        forced = block.replace("location / {", "location /api/stream-test {").replace(
            "        proxy_pass",
            "        proxy_buffering on;\n"
            "        proxy_ignore_headers X-Accel-Buffering;\n"
            "        proxy_pass",
        )
        return edit(site, block, block + "\n" + forced)

    return make_nginx(transform)


async def test_buffering_forced_on_for_a_route(
    buffering_nginx: Nginx, certs: Certs, session_cookie: str
) -> None:
    report = await diagnose(options(buffering_nginx, certs, session_cookie))
    found = verdicts(report)
    assert found[("pploy", "chunked")] == "buffered"
    assert found[("pploy", "sse")] == "buffered"
    # The WebSocket tunnel is not buffered, and gate's own endpoint takes another route.
    assert found[("pploy", "websocket")] == "streaming"
    assert found[("gate", "chunked")] == found[("gate", "sse")] == "streaming"
    chunked = probe(report, "pploy", "chunked")
    assert chunked["hop"] == "nginx"
    assert "proxy_ignore_headers" in chunked["fix"]
    assert "held up to" in chunked["detail"]
    assert len(chunked["batches"]) < 5  # the 30 ticks came in a few lumps
    assert report["ok"] is False
    assert any("between gate and pploy" in line for line in report["summary"])


@pytest.fixture(scope="module")
def no_websocket_nginx(make_nginx: Callable[[Callable[[str], str]], Nginx]) -> Nginx:
    def transform(site: str) -> str:
        site = edit(site, "        proxy_set_header Upgrade $http_upgrade;\n", "")
        return edit(site, "        proxy_set_header Connection $connection_upgrade;\n", "")

    return make_nginx(transform)


async def test_websocket_headers_missing(
    no_websocket_nginx: Nginx, certs: Certs, session_cookie: str
) -> None:
    report = await diagnose(options(no_websocket_nginx, certs, session_cookie, duration=1))
    found = verdicts(report)
    for endpoint in ("gate", "pploy"):
        assert found[(endpoint, "websocket")] == "broken"
        assert found[(endpoint, "chunked")] == found[(endpoint, "sse")] == "streaming"
        ws = probe(report, endpoint, "websocket")
        assert "handshake refused" in ws["detail"]
        assert ws["hop"] == "nginx"
        assert "proxy_set_header Upgrade" in ws["fix"]
    assert any("in front of gate (nginx)" in line for line in report["summary"])


@pytest.fixture(scope="module")
def short_timeout_nginx(make_nginx: Callable[[Callable[[str], str]], Nginx]) -> Nginx:
    def transform(site: str) -> str:
        return edit(site, "proxy_read_timeout 3600s;", "proxy_read_timeout 1s;")

    return make_nginx(transform)


async def test_short_read_timeout_cuts_silent_streams(
    short_timeout_nginx: Nginx, certs: Certs, session_cookie: str
) -> None:
    # A tick every 1.5 s and no heartbeat: nginx gives up after 1 s of silence.
    report = await diagnose(
        options(short_timeout_nginx, certs, session_cookie, interval=1.5, duration=3, heartbeat=0)
    )
    for p in report["probes"]:
        assert p["verdict"] == "broken", p
        assert "connection cut at" in p["detail"]
        assert 0.8 <= p["ended_at"] < 1.5 + 1.0, p  # cut by the 1 s timeout, before tick 1
        assert not p["ticks"]
        assert "proxy_read_timeout" in p["fix"]


async def test_heartbeats_keep_streams_alive_through_a_short_read_timeout(
    short_timeout_nginx: Nginx, certs: Certs, session_cookie: str
) -> None:
    report = await diagnose(
        options(short_timeout_nginx, certs, session_cookie, interval=1.5, duration=3, heartbeat=0.4)
    )
    found = verdicts(report)
    # The server's heartbeat (SSE comment, `#` line, WebSocket ping) keeps each stream alive.
    for key, verdict in found.items():
        if key != ("pploy", "websocket"):
            assert verdict == "streaming", brief(report)
    # WebSocket pings go hop by hop: pploy's stop at gate, and between nginx and gate only
    # gate's own pings (upstream.websocket_heartbeat, 30 s) would pass, so this leg is cut.
    ws = probe(report, "pploy", "websocket")
    assert ws["verdict"] == "broken", brief(report)
    assert "websocket_heartbeat" in ws["fix"]


def test_a_name_that_does_not_resolve_is_said_so_and_no_hop_is_blamed() -> None:
    # `.invalid` never resolves (RFC 6761): no DNS server needed to fail.
    result = doctor("https://pploy-doctor.invalid/", "--duration", "0.3")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert out.count("BROKEN      the name pploy-doctor.invalid does not resolve (DNS: ") == 6
    assert "=> the name pploy-doctor.invalid does not resolve" in out
    assert "check the host name in the URL" in out
    assert "hop in front of gate" not in out and "cannot connect" not in out, out


async def test_a_host_override_with_the_cookie_is_not_told_to_authenticate(
    nginx: Nginx, certs: Certs, session_cookie: str
) -> None:
    """`-H 'Host: …'` (the name users type, the URL an address) with the session cookie: the
    WebSocket Origin follows the Host, and nothing says "authentication needed"."""
    host = f"localhost:{nginx.port}"
    report = await diagnose(
        options(nginx, certs, session_cookie, headers={"Host": host}, duration=0.5)
    )
    assert report["ok"] is True, brief(report)
    assert set(verdicts(report).values()) == {"streaming"}, brief(report)
    assert not any("authentication" in line for line in report["summary"]), report["summary"]


async def test_a_refused_cookie_is_not_told_to_pass_a_cookie(nginx: Nginx, certs: Certs) -> None:
    report = await diagnose(options(nginx, certs, "_gate_session=expired-or-forged", duration=0.3))
    assert report["ok"] is False
    assert {p["status"] for p in report["probes"]} == {401}
    for p in report["probes"]:
        assert "authentication needed" not in p["detail"], p["detail"]
        assert "with a cookie passed" in p["detail"], p["detail"]
    summary = "\n".join(report["summary"])
    assert "refused with a cookie passed" in summary and "fresh cookie" in summary
    assert "pass --cookie" not in summary and "authentication needed" not in summary
