"""The access log is written in batches: every request still gets its line, lines written
shortly before a stop are not lost, and nothing is formatted when the log is off."""

from __future__ import annotations

import pytest

from tests.gate.conftest import client_session, dev_config, pploy_log, start_gate


@pytest.fixture
def lines():
    with pploy_log() as (collected, _arrived):
        yield collected


@pytest.mark.parametrize("fmt", ["kv", "json"])
async def test_lines_of_the_last_requests_are_written_at_stop(lines, fmt):
    gate = await start_gate(dev_config(access_log={"format": fmt}))
    try:
        async with client_session() as client:
            for _ in range(5):
                async with client.get(gate.url + "/ping") as resp:
                    assert resp.status == 200
    finally:
        await gate.server.stop()  # at once: sooner than the 50 ms batch
    access = [line for line in lines if "gate.access" in line]
    assert len(access) == 5, lines
    assert all("/ping" in line for line in access)


async def test_off_means_no_line(lines):
    gate = await start_gate(dev_config(access_log={"format": "off"}))
    try:
        async with client_session() as client:
            async with client.get(gate.url + "/ping") as resp:
                assert resp.status == 200
    finally:
        await gate.server.stop()
    assert not [line for line in lines if "gate.access" in line]
