"""``head_timeout``: a request head must be complete within it, counted from the connection's
opening or its previous response, on both front ends (issue 21: one byte every 20 s used to
keep a fast-path connection open for ever). Through ``pploy gate`` run from a config file."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.gate.conftest import client_session, dev_config, dev_login, gate_command
from tests.gate.upstream import Upstream
from tests.gate.wire import Conn, read_reply

pytestmark = pytest.mark.slow  # `pploy gate` processes, a byte at a time up to the head timeout

TIMEOUT = 1.0  # the configured head_timeout ("1s" in the file)
DRIP = 0.2  # a byte this often: far more often than the timeout


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "aiohttp"])
async def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_timeout(tmp_path, fast_path):
    upstream = Upstream()
    await upstream.start()
    config = {
        **dev_config(proxy=[{"path": "/", "dest": upstream.url}]),
        "fast_path": fast_path,
        "head_timeout": "1s",
    }
    try:
        async with gate_command(config, tmp_path) as gate, client_session() as browser:
            await dev_login(browser, gate.url, "alice")
            cookie = "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar)
            # A head that arrives in pieces but in time is served.
            conn = await Conn.open(gate)
            try:
                head = conn.head("GET", "/in-pieces", cookie)
                for piece in (head[:10], head[10:30]):
                    await conn.send(piece)
                    await asyncio.sleep(DRIP)
                await conn.send(head[30:])
                assert (await read_reply(conn.reader)).status == 200
                # ...and the kept connection's next head gets the same time, from here.
                started = time.monotonic()
                closed = asyncio.ensure_future(conn.reader.read())
                for byte in head[:-2]:  # never complete
                    if closed.done() or time.monotonic() - started > TIMEOUT + 2:
                        break
                    await conn.send(bytes([byte]))
                    await asyncio.wait([closed], timeout=DRIP)
                assert closed.done(), "a byte now and then kept the connection open"
                assert await closed == b""
                elapsed = time.monotonic() - started
                assert TIMEOUT - 0.1 < elapsed < TIMEOUT + 1.0, elapsed
            finally:
                await conn.close()
            assert [r["raw_path"] for r in upstream.requests] == ["/in-pieces"]
    finally:
        await upstream.stop()
