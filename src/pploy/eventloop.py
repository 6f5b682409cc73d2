"""The event loop pploy and gate run on: uvloop when it is installed (a default dependency
wherever it builds: not on Windows or PyPy), else asyncio's own. ``PPLOY_EVENT_LOOP=asyncio``
keeps asyncio's loop even with uvloop installed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when it is installed and not switched off, else None."""
    if os.environ.get("PPLOY_EVENT_LOOP", "auto").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def name() -> str:
    return "uvloop" if loop_factory() is not None else "asyncio"


def new_event_loop() -> asyncio.AbstractEventLoop:
    factory = loop_factory()
    return factory() if factory is not None else asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
