"""Issue 15: behind gate (real ``pploy gate`` with its dev login, real ``pploy serve`` in gate
mode), gate's pages speak Japanese to a Japanese browser and pploy's pages carry a sign-out link
to gate's confirmation page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chain.harness import Chain

pytestmark = pytest.mark.slow  # chromium, two processes


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    running = Chain(tmp_path / "chain").start()
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("language", "sign_in", "warning", "sign_out", "question"),
    [
        ("en", "Sign in", "Development login", "Sign out", "Sign out of gate?"),
        ("ja", "ログイン", "開発用ログイン", "ログアウト", "gate からログアウトしますか？"),
    ],
)
def test_gate_login_in_the_readers_language_and_sign_out_link(
    chromium: Any, chain: Chain, language: str, sign_in: str, warning: str, sign_out: str,
    question: str,
) -> None:  # fmt: skip
    context = chromium.new_context(extra_http_headers={"Accept-Language": language})
    page = context.new_page()
    page.goto(chain.gate_url + "/")
    assert page.url.startswith(chain.gate_url + "/login")
    assert page.get_attribute("html", "lang") == language
    assert page.inner_text("h1") == sign_in
    assert warning in page.inner_text(".warn")
    page.fill("input[name=user]", "alice")
    page.click("button[type=submit]")
    page.wait_for_selector("#current-user")
    assert page.inner_text("#current-user") == "alice"
    link = page.locator("#sign-out")
    assert link.inner_text() == sign_out
    assert link.get_attribute("href") == "/logout"
    link.click()
    assert page.inner_text("p") == question
    page.click("button[type=submit]")
    assert page.get_attribute("html", "lang") == language
    context.close()
