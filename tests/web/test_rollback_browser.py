"""Issue 15: checking out an older commit than the one deployed is a rollback, not "up to date".

A real bare repository with two commits: deploy the newer one to production, check out the older
one; the API's ``rollback`` lists exactly the newer commit, and the project page says so in
English and Japanese (Chromium against the real pploy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import git, make_remote, push_commit
from tests.web.live import LivePploy

pytestmark = pytest.mark.slow  # chromium


def deployed_then_older(live: LivePploy, root: Path, name: str) -> tuple[str, str, str]:
    """A project whose production runs the newer of two commits while the older is checked
    out: (project, older sha, newer sha)."""
    remote = make_remote(root, name=name)
    older = git("rev-parse", "main", cwd=remote).strip()
    newer = push_commit(remote, "Add the new feature", {"feature.txt": "x\n"})
    pp = live.pploy

    async def go() -> str:
        project = await pp.add_project(remote)
        await pp.gain(project)
        job = await pp.checkout(project, "main")
        assert (await pp.wait_job(job))["status"] == "succeeded"
        job = await pp.deploy(project, "production")
        assert (await pp.wait_job(job))["status"] == "succeeded"
        job = await pp.checkout(project, older)
        assert (await pp.wait_job(job))["status"] == "succeeded"
        return project

    return live.run(go()), older, newer


def test_older_checkout_is_a_rollback_in_api_and_page(
    chromium: Any, live: LivePploy, tmp_path: Path
) -> None:
    project, older, newer = deployed_then_older(live, tmp_path, "rollme")
    status, view = live.run(live.pploy.api("GET", f"/api/projects/{project}/commits"))
    assert status == 200
    assert view["head"] == older
    production = view["envs"]["production"]
    assert production["last_deployed"]["sha"] == newer
    assert [c["sha"] for c in production["rollback"]] == [newer]
    assert production["rollback"][0]["subject"] == "Add the new feature"
    assert production["pending"] == []
    # Never deployed: nothing to compare with.
    assert view["envs"]["staging"]["rollback"] is None

    for language, word, undo in (
        ("en", "rollback", "deploying now undoes 1 commit(s)"),
        ("ja", "巻き戻し", "今デプロイすると 1 件のコミットを取り消します"),
    ):
        context = chromium.new_context(extra_http_headers={"Accept-Language": language})
        context.add_cookies([{"name": "user", "value": "alice", "url": live.base}])
        page = context.new_page()
        page.goto(live.url(f"/projects/{project}"))
        row = page.locator('tr[data-env="production"]')
        assert row.locator(".rollback-badge").inner_text() == word
        assert undo in row.inner_text()
        assert "up to date" not in row.inner_text() and "最新" not in row.inner_text()
        row.locator("details.rollback summary").click()
        assert newer[:8] in row.locator("details.rollback li").inner_text()
        assert "Add the new feature" in row.locator("details.rollback").inner_text()
        context.close()


def test_same_commit_is_up_to_date(live: LivePploy, tmp_path: Path) -> None:
    """The other side: once the deployed commit is checked out again, nothing is pending or
    undone."""
    project, older, newer = deployed_then_older(live, tmp_path, "samecommit")
    pp = live.pploy

    async def back() -> None:
        job = await pp.checkout(project, newer)
        assert (await pp.wait_job(job))["status"] == "succeeded"

    live.run(back())
    _, view = live.run(pp.api("GET", f"/api/projects/{project}/commits"))
    assert view["envs"]["production"]["rollback"] == []
    assert view["envs"]["production"]["pending"] == []
