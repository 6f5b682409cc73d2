"""Issue 25 in a real browser, in English and Japanese, against ``pploy serve`` started from a
config file: the freeze banner, a production deploy that waits for approval (the requester's
Approve disabled; another approver approves from their list), the lock queue's join button and
its list, and the audit page for admins (403 for others)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import make_remote
from tests.helpers import free_port, wait_port

pytestmark = pytest.mark.slow  # Chromium


class Pploy:
    """``pploy serve`` from a config file, with a cookie-authenticated JSON client."""

    def __init__(self, root: Path) -> None:
        now = datetime.now().astimezone()
        config = root / "pploy.yml"
        config.write_text(
            "users: [alice, bob, carol]\n"
            "job:\n  shutdown_grace_seconds: 1\n  cancel_grace_seconds: [1, 1]\n"
            "auth:\n  names_are_self_chosen: true\npermissions:\n  admins: [alice]\n"
            "approvals:\n  - env: production\n    approvers: [alice, bob]\n"
            "freezes:\n  - name: qa-freeze\n"
            f"    start: {(now - timedelta(hours=1)).isoformat(timespec='seconds')}\n"
            f"    end: {(now + timedelta(hours=5)).isoformat(timespec='seconds')}\n"
            "    envs: [qa]\n    reason: quarterly audit\n"
        )
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pploy", "serve", "--config", str(config),
             "--workdir", str(root / "work"), "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port, self.proc, timeout=30)

    def api(self, method: str, path: str, user: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.base + path, method=method, data=json.dumps(body).encode() if body else None,
            headers={"Cookie": f"user={user}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def pploy(tmp_path: Path) -> Iterator[Pploy]:
    server = Pploy(tmp_path)
    yield server
    server.stop()


def browser(chromium: Any, pploy: Pploy, user: str, language: str) -> Any:
    context = chromium.new_context(extra_http_headers={"Accept-Language": language})
    context.add_cookies([{"name": "user", "value": user, "url": pploy.base}])
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("dialog", lambda dialog: dialog.accept())  # the production deploy's confirmation
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    return page


WORDS = {
    "en": {"banner": "Deploy freeze", "approve": "Approve", "queue": "Wait in line",
           "audit": "Audit log", "status": "awaiting_approval"},
    "ja": {"banner": "デプロイ凍結", "approve": "承認する", "queue": "順番待ちする",
           "audit": "監査ログ", "status": "承認待ち"},
}  # fmt: skip


@pytest.mark.parametrize("language", ["en", "ja"])
def test_governance_pages(chromium: Any, pploy: Pploy, tmp_path: Path, language: str) -> None:
    words = WORDS[language]
    remote = make_remote(tmp_path, deploy_script="#!/bin/sh\necho shipped $DEPLOY_ENV\n")
    name = pploy.api("POST", "/api/projects", "alice", {"url": str(remote)})["project"]["name"]
    alice = browser(chromium, pploy, "alice", language)
    bob = browser(chromium, pploy, "bob", language)

    alice.goto(f"{pploy.base}/projects/{name}")
    banner = alice.locator(".freeze-banner")
    assert words["banner"] in banner.inner_text() and "qa-freeze" in banner.inner_text()
    assert "quarterly audit" in banner.inner_text()
    alice.click("#gain-lock")
    alice.wait_for_selector("#lock-holder")
    alice.click("button[name=env][value=production]")
    alice.wait_for_selector("#approval-panel")
    assert alice.inner_text("#job-status") == words["status"]
    assert alice.locator("#approve").is_disabled()  # no approving one's own deploy
    assert alice.locator("#nothing-ran").is_visible()
    job_url = alice.url

    # bob finds it in his list, approves it, and it runs.
    bob.goto(f"{pploy.base}/approvals")
    bob.click("#approval-list a")
    assert bob.url == job_url
    assert bob.locator("#approve").inner_text() == words["approve"]
    bob.click("#approve")
    bob.wait_for_selector("#approved-by")
    assert "bob" in bob.inner_text("#approved-by")
    bob.wait_for_selector("#job-status[data-status=succeeded]")

    # bob waits in line for alice's lock; alice's release hands it to him.
    bob.goto(f"{pploy.base}/projects/{name}")
    assert bob.locator("#join-queue").inner_text() == words["queue"]
    bob.click("#join-queue")
    bob.wait_for_selector("#lock-queue li[data-user=bob]")
    assert bob.locator("#leave-queue").is_visible()
    alice.goto(f"{pploy.base}/projects/{name}")
    alice.click("button[name=operation][value=release]")
    bob.goto(f"{pploy.base}/projects/{name}")
    assert bob.inner_text("#lock-holder") == "bob"

    # The audit page: alice (admin) sees what happened; bob is refused.
    alice.goto(f"{pploy.base}/audit")
    assert alice.inner_text("h2") == words["audit"]
    kinds = alice.locator("#audit-list tr[data-kind]").evaluate_all(
        "rows => rows.map(r => r.dataset.kind)"
    )
    for kind in ("job.awaiting_approval", "job.approved", "lock.queued", "lock.granted"):
        assert kind in kinds, kinds
    response = bob.goto(f"{pploy.base}/audit")
    assert response is not None and response.status == 403

    # An admin freezes production from the freezes page; the banner says so; she ends it.
    alice.goto(f"{pploy.base}/freezes")
    alice.fill("#start-freeze input[name=name]", "incident-7")
    alice.fill("#start-freeze input[name=envs]", "production")
    alice.fill("#start-freeze input[name=hours]", "2")
    alice.fill("#start-freeze input[name=reason]", "database failover")
    alice.click("#start-freeze button[type=submit]")
    alice.wait_for_selector(".freeze-banner[data-freeze=incident-7]")
    assert "database failover" in alice.inner_text(".freeze-banner[data-freeze=incident-7]")
    bob.goto(f"{pploy.base}/freezes")
    assert bob.locator("#start-freeze").count() == 0  # not an admin: no form, no End
    assert bob.locator("tr[data-freeze=incident-7] button").count() == 0
    assert bob.locator(".freeze-banner[data-freeze=incident-7]").is_visible()
    alice.click("tr[data-freeze=incident-7] button")
    alice.wait_for_selector("tr[data-freeze=incident-7]", state="detached")
    assert alice.locator(".freeze-banner[data-freeze=incident-7]").count() == 0
    assert not alice.errors and not bob.errors, (alice.errors, bob.errors)
    alice.context.close()
    bob.context.close()
