"""Issue 15: the index and project pages in Chromium against the real pploy: confirmation for
dangerous environments, history paging/filters/search, "Last deployed", lock countdown wording,
times with their zone, error flashes that keep the form, the language switcher, narrow screens,
and projects named after a ``…/app/.git`` folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import git, make_remote
from tests.web.live import LivePploy, script

pytestmark = pytest.mark.slow  # chromium

FAIL_IN_PRODUCTION = script('[ "$DEPLOY_ENV" = production ] && exit 3', "echo ok")


def deploy(live: LivePploy, project: str, env: str, user: str = "alice") -> dict[str, Any]:
    return live.wait_job(live.run(live.pploy.deploy(project, env, user)))


def test_dangerous_env_asks_naming_env_and_commit(page: Any, live: LivePploy) -> None:
    project = live.new_project(script("echo ok"))
    head = live.run(live.pploy.api("GET", f"/api/projects/{project}/commits"))[1]["head"]
    page.goto(live.url(f"/projects/{project}"))
    asked: list[str] = []

    def refuse(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", refuse)
    page.click('button[value="production"]')
    page.wait_for_timeout(300)
    assert len(asked) == 1
    assert "production" in asked[0] and head[:8] in asked[0]
    assert page.url.endswith(f"/projects/{project}")  # refused: nothing started
    assert live.run(live.pploy.api("GET", f"/api/projects/{project}/jobs"))[1]["jobs"] == []
    page.once("dialog", lambda dialog: dialog.accept())
    page.click('button[value="production"]')
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    # staging is not dangerous by default: no question.
    live.wait_job(int(page.url.rsplit("/", 1)[1]))
    page.goto(live.url(f"/projects/{project}"))
    page.on("dialog", lambda dialog: pytest.fail(f"asked: {dialog.message}"))
    page.click('button[value="staging"]')
    page.wait_for_url(re.compile(r"/jobs/\d+$"))


def test_history_paging_filters_search_and_last_deployed(page: Any, live: LivePploy) -> None:
    project = live.new_project(FAIL_IN_PRODUCTION)
    for _ in range(31):
        deploy(live, project, "staging")
    live.release_lock(project)
    live.run(live.pploy.gain(project, "bob"))
    deploy(live, project, "staging", "bob")
    failed = [deploy(live, project, "production", "bob") for _ in range(2)]
    assert {j["status"] for j in failed} == {"failed"}

    page.goto(live.url(f"/projects/{project}"))
    rows = page.locator("#history tr.job-row")
    assert rows.count() == 30
    assert "Page 1 of 2 · 34 jobs" in page.inner_text("#history-pager")
    page.click("#history-pager a[rel=next]")
    assert rows.count() == 4
    assert "Page 2 of 2" in page.inner_text("#history-pager")

    page.goto(live.url(f"/projects/{project}"))
    page.select_option("#history-filters select[name=status]", "failed")
    page.click("#history-filters button[type=submit]")
    assert rows.count() == 2
    assert set(page.locator("#history tr.job-row .col-env").all_inner_texts()) == {
        t
        for t in page.locator("#history tr.job-row .col-env").all_inner_texts()
        if t.startswith("production")
    }
    assert page.input_value("#history-filters select[name=status]") == "failed"  # kept
    page.goto(live.url(f"/projects/{project}?user=bob&kind=deploy&env=staging"))
    assert rows.count() == 1
    page.goto(live.url(f"/projects/{project}?q=bob"))
    assert rows.count() == 3
    page.goto(live.url(f"/projects/{project}?q=%25"))  # a LIKE wildcard is just a character
    assert rows.count() == 0
    page.goto(live.url(f"/projects/{project}?status=nonsense&page=-1"))
    assert rows.count() == 30  # unknown values are ignored, not errors

    # The index's "Last deployed" is the last successful deploy; the failed attempt after it
    # is shown as such.
    page.goto(live.url("/"))
    cell = page.locator(f'tr[data-project="{project}"] td.last-deployed')
    last_ok = deploy_ids = [j["id"] for j in failed]
    assert deploy_ids
    text = cell.inner_text()
    assert text.startswith("staging")
    assert f"#{last_ok[-1]} production" in text
    assert cell.locator(".failed-attempt .status-failed").count() == 1


def test_countdown_zone_language_switch(page: Any, live: LivePploy) -> None:
    project = live.new_project(script("echo ok"))
    job = deploy(live, project, "staging")
    page.goto(live.url(f"/projects/{project}"))
    countdown = page.locator("#lock-panel .countdown")
    assert re.fullmatch(r"(19|20) min left", countdown.inner_text()), countdown.inner_text()
    page.wait_for_timeout(1200)  # app.js keeps it in the same words
    assert re.fullmatch(r"(19|20) min left", countdown.inner_text())
    page.goto(live.url(f"/jobs/{job['id']}"))
    meta = page.inner_text("#job-meta")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z+\-0-9]{2,}", meta), meta

    page.click('#languages a[lang="ja"]')
    assert page.url.endswith(f"/jobs/{job['id']}")  # back where the reader was
    assert page.get_attribute("html", "lang") == "ja"
    page.goto(live.url(f"/projects/{project}"))  # remembered, whatever Accept-Language says
    assert page.get_attribute("html", "lang") == "ja"
    assert re.fullmatch(r"残り (19|20) 分", countdown.inner_text())
    page.click('#languages a[lang="en"]')
    assert page.get_attribute("html", "lang") == "en"
    # Only pploy's own paths: an absolute `next` is refused.
    page.goto(live.url("/language?set=ja&next=https://evil.example/"))
    assert page.url.startswith(live.base)


def test_errors_are_red_and_forms_keep_what_was_typed(page: Any, live: LivePploy) -> None:
    project = live.new_project(script("echo ok"))
    page.goto(live.url(f"/projects/{project}"))
    page.fill("#checkout-form input[name=ref]", "no..such")
    page.click("#checkout-form button[type=submit]")
    flash = page.locator("#flash")
    assert "flash-error" in flash.get_attribute("class")
    assert "ref" in flash.inner_text().lower()
    assert page.input_value("#checkout-form input[name=ref]") == "no..such"
    page.reload()  # once only
    assert page.locator("#flash").count() == 0
    assert page.input_value("#checkout-form input[name=ref]") != "no..such"

    page.goto(live.url("/"))
    page.fill("#add-project input[name=url]", "https://user:s3cret@nowhere.invalid/x/<b>.git")
    page.click("#add-project button[type=submit]")
    assert "flash-error" in page.get_attribute("#flash", "class")
    kept = page.input_value("#add-project input[name=url]")
    assert "s3cret" not in kept and "nowhere.invalid" in kept
    assert page.locator("#flash b").count() == 0


def test_dot_git_url_names_the_folder(page: Any, live: LivePploy, tmp_path: Path) -> None:
    remote = make_remote(tmp_path, name="folderapp")
    work = tmp_path / "checkout" / "webshop"
    git("clone", "-q", str(remote), str(work), cwd=tmp_path)
    page.goto(live.url("/"))
    page.fill("#add-project input[name=url]", str(work / ".git"))
    page.click("#add-project button[type=submit]")
    page.wait_for_url(re.compile(r"/projects/webshop$"))
    assert page.inner_text("nav strong") == "webshop"


def test_narrow_screen_keeps_the_status_column(chromium: Any, live: LivePploy) -> None:
    project = live.new_project(script("echo ok"))
    deploy(live, project, "staging")
    context = chromium.new_context(viewport={"width": 375, "height": 800})
    context.add_cookies([{"name": "user", "value": "alice", "url": live.base}])
    page = context.new_page()
    for path in ("/", f"/projects/{project}"):
        page.goto(live.url(path))
        badge = page.locator("table.jobs .col-status .status").first
        box = badge.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 375, (path, box)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375 + 1, path
    context.close()
