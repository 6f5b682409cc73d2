"""Chromium for the browser tests whose pploy runs on the pytest-asyncio loop: Playwright's async
API on that same loop, with the settings every such test wants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from playwright.async_api import Browser, BrowserContext, async_playwright, expect

from tests.helpers import CHROMIUM_ARGS, require_binary

TIMEOUT_MS = 15_000  # every wait for the page: expect()'s assertions and the page's actions


@asynccontextmanager
async def async_chromium() -> AsyncIterator[Browser]:
    """Debian's chromium, headless; skips (fails under PPLOY_REQUIRE_ALL=1) without it."""
    chromium = require_binary("chromium")
    expect.set_options(timeout=TIMEOUT_MS)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@asynccontextmanager
async def checked_context(browser: Browser, **options: Any) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile (``options`` as Playwright's ``new_context`` takes them) whose
    pages fail the test on a JavaScript error, checked when the context is left."""
    context = await browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    context.on("weberror", lambda err: errors.append(str(err.error)))
    yield context
    await context.close()
    assert not errors, f"JavaScript errors: {errors}"
