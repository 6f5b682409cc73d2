"""Issue 13 in a real browser: the pages show what a user may not do (disabled, with the
reason), and the API tokens page makes a token that works, shown once, then revokes it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.web.live import LivePploy

pytestmark = pytest.mark.slow  # Chromium

RULES = {
    "admins": ["alice"],
    "deploy": [{"project": "*", "env": "production", "users": ["alice"]}],
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePploy]:
    server = LivePploy(
        tmp_path_factory.mktemp("pploy"), permissions=RULES, **{"auth.names_are_self_chosen": True}
    )
    yield server
    server.close()


def signed_in(chromium: Any, live: LivePploy, user: str) -> Any:
    context = chromium.new_context()
    context.add_cookies([{"name": "user", "value": user, "url": live.base}])
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def status_with(live: LivePploy, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        live.url("/api/status"), headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback test URL
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_bob_sees_production_and_admin_actions_disabled_with_the_reason(
    chromium: Any, live: LivePploy
) -> None:
    name = live.new_project("#!/bin/sh\necho hi\n")  # added and locked by alice
    live.run(
        live.pploy.api("POST", f"/api/projects/{name}/lock", "alice", {"operation": "release"})
    )
    live.run(live.pploy.gain(name, "bob"))
    page = signed_in(chromium, live, "bob")
    try:
        page.goto(live.url(f"/projects/{name}"))
        production = page.locator("button.env-production")
        staging = page.locator("button.env-staging")
        assert production.is_disabled() and staging.is_enabled()
        reason = production.get_attribute("title") or ""
        assert f"bob may not deploy {name} to production" in reason
        assert page.locator(".deploy-refused[data-env=production]").inner_text() == reason
        remove = page.locator("button.danger", has_text="Remove project")
        assert remove.is_disabled() and "only the admins" in (remove.get_attribute("title") or "")
        page.goto(live.url("/"))
        assert page.locator("#add-project button").is_disabled()
        assert "bob may not add projects" in page.locator("#add-refused").inner_text()
        # What bob may do still works from the page: a staging deploy.
        page.goto(live.url(f"/projects/{name}"))
        staging.click()
        page.wait_for_url("**/jobs/*")
    finally:
        page.context.close()


def test_the_tokens_page_makes_a_working_token_once_and_revokes_it(
    chromium: Any, live: LivePploy
) -> None:
    page = signed_in(chromium, live, "alice")
    try:
        page.goto(live.url("/"))
        page.click("#tokens-link")
        page.fill("#create-token input[name=name]", "laptop")
        page.click("#create-token button")
        token = page.locator("#new-token-value").inner_text()
        assert token.startswith("pploy_")
        status, body = status_with(live, token)
        assert status == 200 and body["user"] == "alice"
        page.goto(live.url("/tokens"))
        assert token not in page.content() and "laptop" in page.content()
        page.locator("tr", has_text="laptop").locator("button", has_text="Revoke").click()
        assert "revoked token 'laptop'" in page.locator("#flash").inner_text()
        status, body = status_with(live, token)
        assert status == 401 and "revoked" in body["error"]
    finally:
        page.context.close()
