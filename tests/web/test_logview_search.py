"""Issue 15: the log viewer's search box finds matches in the whole log, also in lines that are
not in the DOM (the viewer is virtualised, so the browser's own find cannot), in Chromium against
the real pploy."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.live import LivePploy, printf, script

pytestmark = pytest.mark.slow  # chromium

LINES = 30_000


def in_view(page: Any, text: str) -> bool:
    """Whether a rendered row holding ``text`` lies inside the log panel's visible box."""
    return page.evaluate(
        """(text) => {
          const log = document.getElementById('log');
          const box = log.getBoundingClientRect();
          for (const row of log.querySelectorAll('.log-line')) {
            if (!row.textContent.includes(text)) continue;
            const r = row.getBoundingClientRect();
            return r.top >= box.top && r.bottom <= box.bottom;
          }
          return false;
        }""",
        text,
    )


def numbered_log() -> str:
    """30,000 output lines; lines 21,000, 27,000 and 29,000 carry the word searched for."""
    return script(
        f"awk 'BEGIN {{ for (i = 1; i <= {LINES}; i++) "
        'if (i == 21000 || i == 27000 || i == 29000) print "output line " i " has the Needle"; '
        'else print "output line " i }\''
    )


@pytest.mark.timeout(120)
def test_enter_and_shift_enter_walk_the_whole_log(page: Any, live: LivePploy) -> None:
    job = live.start_job(numbered_log())
    live.wait_job(job)
    page.goto(live.url(f"/jobs/{job}"))
    page.wait_for_selector("#log[data-connection=ended]")  # the whole log is in
    assert int(page.get_attribute("#log", "data-lines")) > LINES
    assert page.locator("#log .log-line").count() < 1000  # virtualised: most rows are not there
    box = page.locator("input[type=search]#log-search")
    box.fill("needle")
    page.wait_for_function("document.getElementById('log').dataset.matches === '3'")
    assert page.inner_text("#log-search-count") == "3 matches"

    box.press("Enter")
    assert in_view(page, "output line 21000 has")
    assert page.inner_text("#log-search-count") == "1 / 3"
    current = page.locator("#log mark.log-match-current")
    assert current.inner_text() == "Needle"  # the text as it is, case kept
    assert "output line 21000 " in current.locator("xpath=ancestor::div[1]").inner_text()

    box.press("Enter")
    assert in_view(page, "output line 27000 has")
    assert not in_view(page, "output line 21000 has")
    assert page.inner_text("#log-search-count") == "2 / 3"

    box.press("Shift+Enter")
    assert in_view(page, "output line 21000 has")
    box.press("Shift+Enter")  # wraps round to the last match
    assert in_view(page, "output line 29000 has")
    assert page.inner_text("#log-search-count") == "3 / 3"
    box.press("Enter")  # and forwards round to the first
    assert in_view(page, "output line 21000 has")

    # The whole-log search is quick enough to run on every keystroke's pause.
    ms = page.evaluate(
        """() => {
          const view = document.getElementById('log').pployLog;
          const start = performance.now();
          view.search('needle', false);
          return performance.now() - start;
        }"""
    )
    print(f"\nsearching {LINES:,} lines: {ms:.1f} ms")
    assert ms < 1000, ms

    box.fill("no such text anywhere")
    page.wait_for_function("document.getElementById('log').dataset.matches === '0'")
    assert page.inner_text("#log-search-count") == "no matches"
    assert page.locator("#log mark").count() == 0


def test_match_across_colours_and_hostile_text_stays_text(page: Any, live: LivePploy) -> None:
    """A match spanning two colour runs is highlighted across both; output that looks like
    markup is searched and shown as text, never parsed."""
    job = live.start_job(
        script(printf("plain \x1b[31mred<b>x</b>\x1b[0m<img src=x onerror=alert(1)>\n"))
    )
    live.wait_job(job)
    page.goto(live.url(f"/jobs/{job}"))
    page.wait_for_selector("#log[data-connection=ended]")  # the whole log is in
    box = page.locator("#log-search")
    box.fill("n red<b>")
    box.press("Enter")
    marks = page.locator("#log mark.log-match-current")
    assert marks.count() == 2  # one per run the match covers
    assert "".join(marks.all_inner_texts()) == "n red<b>"
    assert page.locator("#log b, #log img").count() == 0
    box.fill("<img src=x onerror=alert(1)>")
    box.press("Enter")
    assert page.inner_text("#log-search-count") == "1 / 1"
    assert page.locator("#log img").count() == 0
