"""Fixtures of the synchronous log-viewer browser tests: one real pploy and one Chromium per
module, and a fresh signed-in browser context per test that fails the test on a JavaScript error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import CHROMIUM_ARGS, require_binary
from tests.web.live import LivePploy


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePploy]:
    """A real pploy shared by a module's tests; each test deploys its own project."""
    server = LivePploy(tmp_path_factory.mktemp("pploy"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any, live: LivePploy) -> Iterator[Any]:
    """A page signed in as alice (pploy's standalone user cookie)."""
    context = chromium.new_context(viewport={"width": 1000, "height": 800})
    context.add_cookies([{"name": "user", "value": "alice", "url": live.base}])
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors: {errors}"
