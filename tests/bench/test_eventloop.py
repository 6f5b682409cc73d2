"""pploy.eventloop: uvloop only when installed and not switched off."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from pploy import eventloop


def test_asyncio_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPLOY_EVENT_LOOP", "asyncio")
    assert eventloop.loop_factory() is None
    assert eventloop.name() == "asyncio"

    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(main()).startswith("asyncio")


def test_default_follows_what_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PPLOY_EVENT_LOOP", raising=False)
    installed = importlib.util.find_spec("uvloop") is not None
    assert eventloop.name() == ("uvloop" if installed else "asyncio")
    loop = eventloop.new_event_loop()
    try:
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()
