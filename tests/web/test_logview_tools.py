"""Issue 15: the log viewer's tools in Chromium against the real pploy: copy all and select-all
give the whole log (not the rows in the DOM), http(s) URLs are links and nothing else is,
``::group::`` sections collapse, and "jump to first error" finds an off-screen error."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.live import LivePploy, printf, script

pytestmark = pytest.mark.slow  # chromium

MANY = 5000


def many_lines() -> str:
    return script(f"awk 'BEGIN {{ for (i = 1; i <= {MANY}; i++) print \"row \" i }}'")


def open_finished(page: Any, live: LivePploy, deploy_script: str) -> int:
    job = live.start_job(deploy_script)
    live.wait_job(job)
    page.goto(live.url(f"/jobs/{job}"))
    page.wait_for_selector("#log[data-connection=ended]")  # the whole log is in
    return job


def expected_text(live: LivePploy, job: int) -> list[str]:
    """The log's lines as the viewer shows them (pploy's own lines are bold cyan)."""
    raw = live.run(live.pploy.log(job)).decode()
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", raw).replace("\r", "").split("\n")


def test_copy_all_gives_the_whole_log(chromium: Any, live: LivePploy) -> None:
    context = chromium.new_context(permissions=["clipboard-read", "clipboard-write"])
    context.add_cookies([{"name": "user", "value": "alice", "url": live.base}])
    page = context.new_page()
    job = open_finished(page, live, many_lines())
    assert page.locator("#log .log-line").count() < 500
    page.click("#log-copy-all")
    page.wait_for_selector("#log-copy-all[data-copied=yes]")
    copied = page.evaluate("navigator.clipboard.readText()")
    lines = copied.split("\n")
    assert lines[1] == "row 1" and lines[MANY] == f"row {MANY}"
    assert lines == expected_text(live, job)
    context.close()


def test_select_all_then_copy_gives_the_whole_log(page: Any, live: LivePploy) -> None:
    job = open_finished(page, live, many_lines())
    page.evaluate(
        """() => window.addEventListener('copy', (e) => {
             window.copied = e.clipboardData.getData('text/plain');
           })"""
    )
    page.focus("#log")
    page.keyboard.press("Control+a")
    page.evaluate("document.execCommand('copy')")
    copied = page.evaluate("window.copied")
    assert copied.split("\n") == expected_text(live, job)
    # A click ends the whole-log selection: copying is the browser's own again.
    page.click("#log .log-line .log-text >> nth=0")
    page.evaluate("window.copied = null; document.execCommand('copy')")
    assert page.evaluate("window.copied") in ("", None)


def test_only_http_urls_become_links(page: Any, live: LivePploy) -> None:
    output = (
        "docs at https://example.com/a?b=1&c=2. and (http://example.org/x)\n"
        "javascript:alert(1) data:text/html,<script>alert(1)</script> ftp://example.com/\n"
        '<a href="https://evil.example/">x</a> https://q.example/"onmouseover=alert(1)\n'
        "https://\x1b[31mred.example/\x1b[0m split by colour\n"
    )
    open_finished(page, live, script(printf(output)))
    hrefs = page.eval_on_selector_all("#log a.log-url", "els => els.map(e => e.href)")
    assert hrefs[:3] == [
        "https://example.com/a?b=1&c=2",
        "http://example.org/x",
        "https://evil.example/",
    ]
    assert all(h.startswith(("http://", "https://")) for h in hrefs)
    assert hrefs[3] == "https://q.example/"  # the quote ends the URL: no attribute injection
    attrs = page.eval_on_selector_all(
        "#log a.log-url", "els => els.map(e => e.getAttributeNames().sort().join(','))"
    )
    assert set(attrs) == {"class,href,rel,target"}
    assert page.locator("#log a.log-url").first.get_attribute("rel") == (
        "noopener noreferrer nofollow"
    )
    assert page.locator("#log script, #log img, #log a:not(.log-url):not(.log-ln)").count() == 0
    assert "javascript:alert(1)" in page.inner_text("#log")


def test_groups_collapse_and_search_opens_them(page: Any, live: LivePploy) -> None:
    output = "before\n::group::Install packages\nstep one\nstep two\n::endgroup::\nafter\n"
    open_finished(page, live, script(printf(output)))
    toggle = page.locator("#log button.log-group-toggle")
    assert toggle.inner_text() == "▾ Install packages"
    assert "step two" in page.inner_text("#log")
    toggle.click()
    assert page.locator("#log button.log-group-toggle").inner_text() == "▸ Install packages"
    text = page.inner_text("#log")
    assert "step one" not in text and "step two" not in text
    assert "before" in text and "after" in text
    page.fill("#log-search", "step two")
    page.press("#log-search", "Enter")
    assert "step two" in page.inner_text("#log")
    assert page.locator("#log button.log-group-toggle").get_attribute("aria-expanded") == "true"


def test_jump_to_first_error(page: Any, live: LivePploy) -> None:
    deploy = script(
        f"awk 'BEGIN {{ for (i = 1; i <= {MANY}; i++) "
        'if (i == 3000) print "E: Error: disk on fire"; else print "row " i }\''
    )
    open_finished(page, live, deploy)
    button = page.locator("#log-first-error")
    button.click()
    assert button.get_attribute("data-line") == "3001"  # pploy's own first line comes first
    row = page.locator('#log .log-line[data-line="3001"]')
    assert "disk on fire" in row.inner_text()
    assert "log-line-selected" in row.get_attribute("class")
    assert row.is_visible()
    box = page.locator("#log").bounding_box()
    r = row.bounding_box()
    assert box["y"] <= r["y"] and r["y"] + r["height"] <= box["y"] + box["height"]


def test_timestamps_toggle_shows_when_lines_arrived(page: Any, live: LivePploy) -> None:
    """pploy records when output arrived beside the log; the toggle shows it per line without
    the log's bytes or the copied text changing."""
    job = open_finished(page, live, script("echo one", "sleep 1.3", "echo two", "echo three"))
    raw = live.run(live.pploy.log(job))
    assert b"one\r\ntwo\r\nthree" in raw or b"one\ntwo\nthree" in raw
    status, body = live.run(live.pploy.api("GET", f"/api/jobs/{job}/times"))
    assert status == 200
    pairs = body["lines"]

    def time_of(line: int) -> float:
        """The last recorded time at or before ``line`` (as the viewer reads them)."""
        return [t for n, t in pairs if n <= line][-1]

    assert 1.0 < time_of(3) - time_of(2) < 5  # "two" came 1.3 s after "one"
    assert time_of(4) == time_of(3)
    assert page.locator("#log .log-ts").count() == 0
    page.check("#log-times")
    page.wait_for_selector("#log .log-ts[data-ts]")
    stamps = page.eval_on_selector_all(
        "#log .log-line", "rows => rows.map(r => r.querySelector('.log-ts').dataset.ts || '')"
    )
    assert all(len(s) == 8 and s[2] == ":" for s in stamps[:4]), stamps
    assert stamps[1] != stamps[2]  # 1.3 s apart
    assert stamps[2] == stamps[3]  # "two" and "three" came together
    title = page.locator("#log .log-line >> nth=1").locator(".log-ts").get_attribute("title")
    assert "GMT" in title  # the zone is named on hover
    # The times are drawn by CSS: the text of the rows (what a copy takes) has none of them.
    assert stamps[1] not in page.inner_text('#log .log-line[data-line="2"]')
    page.uncheck("#log-times")
    assert page.locator("#log .log-ts").count() == 0


def test_wrap_lines_keeps_rows_apart_and_search_working(page: Any, live: LivePploy) -> None:
    """Wrapped, a long line takes the rows it needs (no overlap, no sideways scrolling) and
    the virtualised panel still brings a far match into view."""
    deploy = script(
        'awk \'BEGIN { for (i = 1; i <= 3000; i++) { s = ""; '
        'for (j = 0; j < (i % 7) * 40; j++) s = s "w"; '
        'if (i == 2500) print "far line " s " target"; else print "line " i " " s } }\''
    )
    open_finished(page, live, deploy)
    log = page.locator("#log")
    assert page.evaluate(
        "(() => { const l = document.getElementById('log'); "
        "return l.scrollWidth > l.clientWidth; })()"
    )
    page.check("#log-wrap")
    assert "log-wrap" in log.get_attribute("class")
    assert page.evaluate(
        "(() => { const l = document.getElementById('log'); "
        "return l.scrollWidth <= l.clientWidth; })()"
    )
    gaps = page.evaluate(
        """() => {
          const rows = Array.from(document.querySelectorAll('#log .log-line'));
          const out = [];
          for (let k = 1; k < rows.length; k++) {
            const a = rows[k - 1].getBoundingClientRect();
            const b = rows[k].getBoundingClientRect();
            const text = rows[k - 1].querySelector('.log-text');
            out.push([b.top - a.bottom, text.scrollHeight - text.clientHeight]);
          }
          return out;
        }"""
    )
    assert gaps and all(abs(gap) < 1 and hidden <= 1 for gap, hidden in gaps), gaps[:5]
    tall = page.evaluate(
        "Math.max(...Array.from(document.querySelectorAll('#log .log-line'))"
        ".map(r => r.getBoundingClientRect().height))"
    )
    assert tall >= 40  # a 240-character line wraps onto more than one row
    page.fill("#log-search", "target")
    page.press("#log-search", "Enter")
    row = page.locator('#log .log-line[data-line="2501"]')
    box, r = log.bounding_box(), row.bounding_box()
    assert box["y"] <= r["y"] and r["y"] + r["height"] <= box["y"] + box["height"]
    page.uncheck("#log-wrap")
    assert page.evaluate(
        "(() => { const l = document.getElementById('log'); "
        "return l.scrollWidth > l.clientWidth; })()"
    )
