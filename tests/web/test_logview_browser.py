"""The browser side (static/logview.js, static/app.js) in a real Chromium against the real pploy.

One pploy per module (:class:`tests.web.live.LivePploy`) serves the real job pages and the real
SSE and WebSocket streams; each test deploys a project of its own whose deploy script prints
what the test needs. Scripts block on a fifo where the test must see output before more exists:
a test that splits UTF-8 characters and escape sequences across chunks releases each part only
once the viewer has received the one before (:func:`apart`). :class:`tests.web.live.Tap`
relays a connection when a test must cut it or see which offset the viewer resumed from.
"""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import Fifo
from tests.web.live import LivePploy, Tap, pieces, printf, script

pytestmark = pytest.mark.slow  # chromium

ENDED = "body[data-job-status]:not([data-job-status=running])"

# Resolves once the log panel's scroll position has stopped changing (wheel scrolling animates).
SCROLL_SETTLED = """() => new Promise(resolve => {
  const log = document.getElementById('log');
  let last = -1, same = 0;
  (function check() {
    if (log.scrollTop === last) { if (++same >= 5) return resolve(true); }
    else { same = 0; last = log.scrollTop; }
    requestAnimationFrame(check);
  })();
})"""

AT_BOTTOM = """() => {
  const log = document.getElementById('log');
  return log.scrollHeight - log.scrollTop - log.clientHeight < 2;
}"""

ON_END = "document.addEventListener('pploy:job-ended', e => { window.__ended = e.detail; })"


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Fifo]:
    gate = Fifo(tmp_path / "go")
    yield gate
    gate.close()


@pytest.fixture
def tap(live: LivePploy) -> Iterator[Tap]:
    relay = Tap(live)
    yield relay
    relay.close()


def open_job(page: Any, live: LivePploy | Tap, job: int, transport: str = "sse", hash_="") -> None:
    page.goto(live.url(f"/jobs/{job}?transport={transport}{hash_}"))


def wait_ended(page: Any) -> None:
    page.wait_for_selector(ENDED)


def line_texts(page: Any) -> list[str]:
    return page.eval_on_selector_all(".log-line .log-text", "els => els.map(e => e.textContent)")


def output(page: Any) -> list[str]:
    """The script's lines: the rendered lines without pploy's first line (the command it runs)
    and its closing notes (``[pploy] ...``)."""
    texts = line_texts(page)
    assert texts and texts[0].startswith("$ "), texts[:1]
    texts = texts[1:]
    while texts and texts[-1].startswith("[pploy]"):
        texts.pop()
    return texts


def released(fifo: Fifo, *steps: str) -> list[str]:
    """Shell lines: open ``fifo``, then wait for the test's release before each step."""
    out = [fifo.script_open()]
    for step in steps:
        out += [fifo.wait_cmd, step]
    return out


def apart(
    page: Any, live: LivePploy, job: int, fifo: Fifo, parts: list[bytes], transport: str
) -> None:
    """Let ``job``'s script of ``released(fifo, *map(printf, parts))`` print its parts one by
    one, each once the viewer has received every byte before it: each part reaches the browser
    as a chunk of its own. (The viewer's offset counts the bytes received over a WebSocket; over
    SSE it is the last event id, which stops short of a split character pploy holds back.)"""
    offset = "document.getElementById('log').pployLog.offset"
    page.wait_for_function(f"{offset} > 0")  # pploy's command line; the script waits
    start = page.evaluate(offset)
    assert start == len(live.run(live.pploy.log(job)))
    sent = b""
    for n, part in enumerate(parts, 1):
        live.release(fifo)
        sent += part
        whole = codecs.getincrementaldecoder("utf-8")().decode(sent).encode()
        expected = start + (len(whole) if transport == "sse" else len(sent))
        # (after the last part the script ends: pploy's closing line follows at once)
        page.wait_for_function(f"{offset} {'===' if n < len(parts) else '>='} {expected}")


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def test_sgr_colours_and_attributes_render_as_styled_spans(page, live):
    job = live.start_job(
        script(
            *pieces(
                "plain \x1b[31mred\x1b[0m \x1b[1;92mbold-bright-green\x1b[0m\r\n",
                "\x1b[38;5;208m256-orange\x1b[0m "
                "\x1b[38;2;10;20;30;48;2;200;201;202mtruecolor\x1b[m\r\n",
                "\x1b[2mdim\x1b[22m \x1b[3mitalic\x1b[23m \x1b[4munder\x1b[24m \x1b[7minverse"
                "\x1b[27m \x1b[44mbluebg\x1b[49m after\r\n",
            )
        )
    )
    open_job(page, live, job)
    wait_ended(page)
    assert output(page) == [
        "plain red bold-bright-green",
        "256-orange truecolor",
        "dim italic under inverse bluebg after",
    ]

    def style(text: str) -> dict:
        return page.evaluate(
            """text => {
              const span = [...document.querySelectorAll('#log .log-text span')]
                .find(s => s.textContent === text);
              const cs = getComputedStyle(span);
              return {cls: span.className, color: cs.color, bg: cs.backgroundColor,
                      weight: cs.fontWeight, style: cs.fontStyle, deco: cs.textDecorationLine,
                      opacity: cs.opacity};
            }""",
            text,
        )

    assert style("red")["cls"] == "ansi-fg-1"
    assert style("red")["color"] == "rgb(255, 123, 114)"  # --ansi-1 of the dark theme
    bright = style("bold-bright-green")
    assert bright["cls"] == "ansi-fg-10 ansi-bold" and bright["weight"] == "700"
    assert style("256-orange")["color"] == "rgb(255, 135, 0)"  # xterm colour 208
    true = style("truecolor")
    assert true["color"] == "rgb(10, 20, 30)" and true["bg"] == "rgb(200, 201, 202)"
    assert float(style("dim")["opacity"]) < 1
    assert style("italic")["style"] == "italic"
    assert style("under")["deco"] == "underline"
    inverse = style("inverse")  # default colours swapped: panel background on panel text colour
    assert inverse["color"] == "rgb(13, 17, 23)" and inverse["bg"] == "rgb(209, 215, 224)"
    assert style("bluebg")["bg"] == "rgb(88, 166, 255)"
    # Reset really resets: the text after the last SGR is a bare text node, not a span.
    last = "document.querySelector('#log .log-line[data-line=\"4\"] .log-text').lastChild"
    assert page.evaluate(last + ".nodeType") == 3
    assert page.evaluate(last + ".textContent") == " after"


def test_carriage_return_progress_collapses_to_last_frame(page, live, fifo):
    frames = "".join(f"\rDownloading {p:3d}%" for p in range(0, 101, 5))
    parts = [
        "start\r\n",
        frames[: len(frames) // 2],
        frames[len(frames) // 2 :] + "\r\n",
        "long line that gets\rshort\x1b[K\r\n",  # erase-to-end clears the tail
        "abcdef\rXY\r\n",  # without an erase, a terminal keeps the tail
        "line\r",
        "\nsplit crlf\r\n",  # \r and \n in different chunks are still one line end
        "a\r\n\r\nb\r\n",  # a real empty line stays
    ]
    job = live.start_job(script(*released(fifo, *map(printf, parts))))
    open_job(page, live, job)
    apart(page, live, job, fifo, [part.encode() for part in parts], "sse")
    wait_ended(page)
    assert output(page) == [
        "start",
        "Downloading 100%",
        "short",
        "XYcdef",
        "line",
        "split crlf",
        "a",
        "",
        "b",
    ]
    assert "Downloading  50%" not in page.inner_text("#log")


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_chunks_splitting_utf8_and_escape_sequences(page, live, fifo, transport):
    # Received apart: inside "é" (c3 a9), inside "€" (e2 82 ac), and inside ESC[32m. pploy's SSE
    # holds a split character back (ids are byte offsets); its WebSocket sends the bytes as read.
    parts = [b"caf\xc3", b"\xa9 \xe2\x82", b"\xac \x1b[3", b"2mgreen\x1b", b"[0m done\r\n"]
    job = live.start_job(script(*released(fifo, *map(printf, parts))))
    open_job(page, live, job, transport)
    apart(page, live, job, fifo, parts, transport)
    wait_ended(page)
    assert output(page) == ["café € green done"]
    assert page.inner_text("#log .ansi-fg-2") == "green"


def test_output_is_inert_text_never_html(page, live):
    evil = (
        "<script>window.__pwned = 1</script>"
        '<img src="x" onerror="window.__pwned = 2">'
        "\x1b[31m<b onmouseover=alert(1)>red</b>\x1b[0m\r\n"
    )
    job = live.start_job(script(printf(evil)))
    open_job(page, live, job)
    wait_ended(page)
    assert output(page) == [
        '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'
        "<b onmouseover=alert(1)>red</b>"
    ]
    assert page.evaluate("document.querySelectorAll('#log script, #log img, #log b').length") == 0
    assert page.evaluate("window.__pwned") is None


def test_absurd_cursor_moves_are_clamped(page, live):
    """ESC[999999999C (cursor right) and ESC[999999999A (up) from hostile output: a terminal
    stops at its edge; the viewer must not pad a line with a billion spaces."""
    hostile = "a\x1b[999999999Cb\r\nc\x1b[999999999A\x1b[999999999Bd\r\n"
    job = live.start_job(script(printf(hostile)))
    open_job(page, live, job)
    wait_ended(page)
    lines = output(page)
    assert lines[0] == "a" + " " * 1000 + "b"
    assert lines[1] == "cd"


# ---------------------------------------------------------------------------------------------
# Navigation: line links, #L hash, follow
# ---------------------------------------------------------------------------------------------


def test_line_number_links_highlight_and_update_hash(page, live):
    # Line 1 of the panel is pploy's command line: the script's "line 7" is line 8.
    job = live.start_job(script(printf("".join(f"line {i}\r\n" for i in range(1, 21)))))
    open_job(page, live, job)
    wait_ended(page)
    link = page.locator('#log a.log-ln[href="#L8"]')
    assert link.get_attribute("data-n") == "8"
    link.click()
    assert page.evaluate("location.hash") == "#L8"
    selected = page.locator("#log .log-line-selected")
    assert selected.count() == 1
    assert selected.get_attribute("data-line") == "8"
    assert selected.locator(".log-text").inner_text() == "line 7"
    # Line numbers are drawn by CSS: copying the log text never copies them.
    assert page.locator('#log .log-line[data-line="2"]').inner_text().strip() == "line 1"


def test_hash_on_load_scrolls_to_line_and_highlights(page, live):
    job = live.start_job(script("seq 1 3000 | sed 's/^/row /'"))
    live.wait_job(job)
    open_job(page, live, job, hash_="#L1235")
    wait_ended(page)
    row = page.locator('#log .log-line[data-line="1235"]')
    row.wait_for()
    assert "log-line-selected" in row.get_attribute("class")
    assert row.locator(".log-text").inner_text() == "row 1234"
    # It is inside the visible part of the panel, and following stopped at it.
    visible = page.evaluate(
        """() => {
          const log = document.getElementById('log').getBoundingClientRect();
          const r = document.querySelector('#log .log-line[data-line="1235"]')
            .getBoundingClientRect();
          return r.top >= log.top && r.bottom <= log.bottom;
        }"""
    )
    assert visible
    assert not page.is_checked("#log-follow")


def test_follow_toggle_tracks_user_scrolling(page, live, fifo):
    job = live.start_job(
        script(
            "seq 1 200 | sed 's/^/first /'",
            *released(
                fifo,
                "seq 1 100 | sed 's/^/second /'",
                "seq 1 100 | sed 's/^/third /'",
                "true",
            ),
        )
    )
    open_job(page, live, job)
    page.wait_for_selector("text=first 200")
    assert page.is_checked("#log-follow")
    page.wait_for_function(AT_BOTTOM)

    # Scrolling up by hand turns follow off; new output then does not move the view.
    page.hover("#log")
    page.mouse.wheel(0, -600)
    page.wait_for_function("!document.getElementById('log-follow').checked")
    page.evaluate(SCROLL_SETTLED)
    top_before = page.evaluate("document.getElementById('log').scrollTop")
    live.release(fifo)
    page.wait_for_function("document.getElementById('log').dataset.lines === '301'")
    assert page.evaluate("document.getElementById('log').scrollTop") == top_before

    # Scrolling to the bottom turns it back on, and it keeps up with new output.
    page.mouse.wheel(0, 100_000)
    page.wait_for_function("document.getElementById('log-follow').checked")
    live.release(fifo)
    page.wait_for_selector("text=third 100")
    page.wait_for_function(AT_BOTTOM)

    # The checkbox drives it too.
    page.uncheck("#log-follow")
    page.evaluate("document.getElementById('log').scrollTop = 0")
    page.wait_for_selector("text=first 1")
    page.check("#log-follow")
    page.wait_for_function(AT_BOTTOM)
    live.release(fifo)
    wait_ended(page)


def test_streams_line_by_line(page, live, fifo):
    """Line 2 is only printed once the browser shows line 1: nothing is held back."""
    job = live.start_job(script(*released(fifo, *(printf(f"step {i}\n") for i in range(1, 6)))))
    open_job(page, live, job)
    for i in range(1, 6):
        live.release(fifo)
        page.wait_for_selector(f"#log .log-text:text-is('step {i}')")
        assert f"step {i + 1}" not in page.inner_text("#log")
    wait_ended(page)
    assert output(page) == [f"step {i}" for i in range(1, 6)]


# ---------------------------------------------------------------------------------------------
# Big logs
# ---------------------------------------------------------------------------------------------


def test_100k_line_log_is_virtualised(page, live):
    # ~4.6 MB, replayed from the log file from offset 0 once the job has ended.
    job = live.start_job(
        script(
            'awk \'BEGIN { x = sprintf("%40s", ""); gsub(/ /, "x", x);'
            " for (i = 1; i <= 100000; i++)"
            ' printf "line %d \\033[32mok\\033[0m %s\\r\\n", i, substr(x, 1, i % 40) }\''
        )
    )
    live.wait_job(job)
    started = time.monotonic()
    open_job(page, live, job)
    wait_ended(page)
    elapsed = time.monotonic() - started
    assert page.get_attribute("#log", "data-lines") == "100002"  # with pploy's first and last
    rows = page.evaluate("document.querySelectorAll('#log .log-line').length")
    assert 0 < rows < 500, rows
    assert elapsed < 20, elapsed
    # Following: the end is on screen.
    page.wait_for_selector("#log .log-line[data-line='100002']")

    # The page stays responsive while scrolled around: top, then back to the end by keyboard.
    page.evaluate("document.getElementById('log').scrollTop = 0")
    page.wait_for_selector("#log .log-line[data-line='1']")
    assert page.evaluate("document.querySelectorAll('#log .log-line').length") < 500
    page.focus("#log")
    page.keyboard.press("End")
    last = page.locator("#log .log-line[data-line='100001'] .log-text")
    last.wait_for()
    assert last.inner_text() == "line 100000 ok "
    assert page.evaluate("document.querySelectorAll('#log .log-line').length") < 500


def test_long_line_is_capped_with_an_expander(page, live):
    """A 250,000-character line shows its first 10,000 characters (styles kept across the cap)
    and an expander that shows 100,000 more per click, with a link to the raw log."""
    body = "\x1b[33m" + "y" * 9_995 + "\x1b[34m" + "z" * 240_005 + "\x1b[0m"
    job = live.start_job(script(printf(body + "\r\nnext\r\n")))
    open_job(page, live, job)
    wait_ended(page)
    row = page.locator('#log .log-line[data-line="2"]')
    text = row.locator(".log-text")
    assert len(text.inner_text()) == 10_000
    assert page.inner_text("#log .ansi-fg-3") == "y" * 9_995
    assert page.inner_text("#log .ansi-fg-4") == "z" * 5  # the blue run, cut at the cap
    more = row.locator(".log-more")
    assert "240,000 more characters" in more.inner_text()
    assert more.locator("a.log-raw").get_attribute("href") == f"/api/jobs/{job}/log"
    # The expander is not part of the line's text (never copied).
    assert (
        page.evaluate("getComputedStyle(document.querySelector('#log .log-more')).userSelect")
        == "none"
    )

    # "copy line" puts the whole line on the clipboard, not just what is shown.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.base)
    more.locator("button.log-copy").click()
    page.wait_for_selector("#log button.log-copy[data-copied=yes]")
    assert page.evaluate("navigator.clipboard.readText()") == "y" * 9_995 + "z" * 240_005

    more.locator("button.log-expand").click()
    page.wait_for_function(
        "document.querySelector('#log .log-line[data-line=\"2\"] .log-text')"
        ".textContent.length === 110000"
    )
    assert "140,000 more characters" in row.locator(".log-more").inner_text()
    for _ in range(2):
        row.locator("button.log-expand").click()
    page.wait_for_function(
        "document.querySelector('#log .log-line[data-line=\"2\"] .log-text')"
        ".textContent.length === 250000"
    )
    assert row.locator(".log-more").count() == 0
    assert page.locator('#log .log-line[data-line="3"] .log-text').inner_text() == "next"


def test_long_line_expander_speaks_the_page_language(chromium, live):
    job = live.start_job(script(printf("x" * 12_345 + "\r\n")))
    context = chromium.new_context(extra_http_headers={"Accept-Language": "ja"}, locale="ja-JP")
    context.add_cookies([{"name": "user", "value": "alice", "url": live.base}])
    pg = context.new_page()
    open_job(pg, live, job)
    wait_ended(pg)
    more = pg.locator('#log .log-line[data-line="2"] .log-more')
    assert more.locator("button.log-expand").inner_text() == "さらに 2,345 文字を表示"
    assert "… あと 2,345 文字" in more.inner_text()
    assert more.locator("a.log-raw").inner_text() == "生ログ"
    context.close()


# ---------------------------------------------------------------------------------------------
# Transports and status
# ---------------------------------------------------------------------------------------------


def test_ws_transport_binary_frames_status_and_close(page, live, tap):
    # Bare \n line ends too (a pty with -onlcr, or a script writing to a file it tails).
    job = live.start_job(script(*pieces(b"hello ", b"over ws\n", b"bye\n"), "exit 3"))
    page.add_init_script(ON_END)
    open_job(page, tap, job, "ws")
    wait_ended(page)
    assert output(page) == ["hello over ws", "bye"]
    record = live.wait_job(job)
    ended = page.evaluate("window.__ended")
    assert (
        (ended["status"], ended["exit_code"])
        == ("failed", 3)
        == (
            record["status"],
            record["exit_code"],
        )
    )
    badge = page.locator("#job-status")
    assert badge.get_attribute("data-status") == "failed"
    assert "status-failed" in badge.get_attribute("class").split()
    assert page.get_attribute("body", "data-job-status") == "failed"
    assert page.get_attribute("#log", "data-connection") == "ended"
    assert tap.paths(f"/api/jobs/{job}/") == [f"/api/jobs/{job}/ws?offset=0"]


def test_transport_query_picks_the_transport(page, live, tap):
    job = live.start_job(script(printf("via ws\r\n")))
    page.goto(tap.url(f"/jobs/{job}?transport=ws"))
    wait_ended(page)
    assert output(page) == ["via ws"]
    assert page.get_attribute("#log", "data-transport-active") == "ws"
    assert tap.paths(f"/api/jobs/{job}/") == [f"/api/jobs/{job}/ws?offset=0"]


def test_sse_status_event_ends_stream_and_updates_page(page, live, tap):
    job = live.start_job(script(printf("building\r\n"), "sleep 600"))
    page.add_init_script(ON_END)
    open_job(page, tap, job, "sse")
    page.wait_for_selector("text=building")
    assert page.get_attribute("#job-status", "data-status") == "running"
    assert page.is_visible("#cancel-form")
    assert re.fullmatch(r"\d+s", page.inner_text("#job-duration"))

    live.cancel(job)
    wait_ended(page)
    record = live.wait_job(job)
    ended = page.evaluate("window.__ended")
    assert (ended["status"], ended["cancelled_by"]) == ("cancelled", "alice")
    assert ended["ended_at"] == record["ended_at"]
    assert output(page)[0] == "building"
    badge = page.locator("#job-status")
    assert badge.get_attribute("data-status") == "cancelled"
    assert "status-cancelled" in badge.get_attribute("class")
    assert "status-running" not in badge.get_attribute("class")
    assert page.get_attribute("body", "data-job-status") == "cancelled"
    assert page.is_hidden("#cancel-form")  # app.js: a finished job cannot be cancelled
    # The EventSource was closed by the viewer (else it would reconnect after the server's close).
    assert page.evaluate("document.getElementById('log').pployLog.source.readyState") == 2
    assert tap.paths(f"/api/jobs/{job}/events") == [f"/api/jobs/{job}/events?offset=0"]
    # The duration stopped at ended_at.
    assert page.get_attribute("#job-duration", "data-ended-at") == str(record["ended_at"])
    frozen = page.inner_text("#job-duration")
    time.sleep(1.2)
    assert page.inner_text("#job-duration") == frozen


def test_ws_dropped_mid_character_resumes_from_offset_without_duplicates(page, live, tap, fifo):
    job = live.start_job(
        script(printf(b"one\r\ntwo \xe2\x82"), *released(fifo, printf(b"\xac three\r\nfour\r\n")))
    )
    open_job(page, tap, job, "ws")
    # "two " is on screen, the first two bytes of "€" are held by the decoder: cut now.
    page.wait_for_selector("#log .log-text:text-is('two ')")
    received = page.evaluate("document.getElementById('log').pployLog.offset")
    tap.cut()
    page.wait_for_function(
        "document.getElementById('log').dataset.connection === 'live' &&"
        f" document.getElementById('log').pployLog.offset === {received}"
    )
    live.release(fifo)
    wait_ended(page)
    assert output(page) == ["one", "two € three", "four"]
    assert tap.paths(f"/api/jobs/{job}/ws") == [
        f"/api/jobs/{job}/ws?offset=0",
        f"/api/jobs/{job}/ws?offset={received}",
    ]
    log = live.run(live.pploy.log(job))
    assert log[:received].endswith(b"two \xe2\x82")  # the cut really fell inside the character


def test_ws_streams_live_then_reconnects(page, live, tap, fifo):
    """A drop while the job is still running: live output continues after the reconnect."""
    job = live.start_job(script(printf("before\r\n"), *released(fifo, printf("after\r\n"))))
    open_job(page, tap, job, "ws")
    page.wait_for_selector("text=before")
    page.wait_for_function("document.getElementById('log').dataset.connection === 'live'")
    tap.cut()
    page.wait_for_function("document.getElementById('log').dataset.connection === 'reconnecting'")
    page.wait_for_function("document.getElementById('log').dataset.connection === 'live'")
    live.release(fifo)
    page.wait_for_selector("text=after")
    wait_ended(page)
    assert output(page) == ["before", "after"]
    offsets = [p.split("offset=")[1] for p in tap.paths(f"/api/jobs/{job}/ws")]
    assert offsets[0] == "0" and len(offsets) == 2 and int(offsets[1]) > len("before\r\n")


# ---------------------------------------------------------------------------------------------
# app.js on pploy's pages
# ---------------------------------------------------------------------------------------------


def test_lock_countdown_ticks_and_expires(chromium, tmp_path):
    """A 15-second lock (lock.gain_minutes = 0.25): the project page counts it down, then shows
    "expired"."""
    quick = LivePploy(tmp_path, **{"lock.gain_minutes": 0.25})
    try:
        project = quick.new_project(script("true"))
        context = chromium.new_context()
        context.add_cookies([{"name": "user", "value": "alice", "url": quick.base}])
        pg = context.new_page()
        pg.goto(quick.url(f"/projects/{project}"))
        countdown = pg.locator("#lock-panel .countdown")
        shown = "document.querySelector('#lock-panel .countdown').textContent"
        pg.wait_for_function(f"/^(\\d|1[0-5]) s left$/.test({shown})")
        before = countdown.inner_text()
        pg.wait_for_function(f"{shown} !== '{before}'")  # it ticks
        # Keep the panel: app.js's live refresh would replace it with "Not locked" as soon as the
        # server has expired the lock, racing the countdown's last tick.
        pg.route(quick.url(f"/projects/{project}"), lambda route: route.abort())
        pg.wait_for_selector("#lock-panel .countdown.countdown-expired", timeout=25_000)
        assert countdown.inner_text() == "expired"
        context.close()
    finally:
        quick.close()


def test_live_sections_refresh_but_not_while_typing(page, live):
    job = live.start_job(script("true"))
    live.wait_job(job)
    project = live.project_of(job)
    page.goto(live.url(f"/projects/{project}"))
    assert page.locator("#lock-holder").inner_text() == "alice"
    field = page.locator("#checkout-form input[name=ref]")
    field.fill("half-typed")  # focus stays in the actions section's input
    live.release_lock(project)
    page.evaluate("document.dispatchEvent(new CustomEvent('pploy:job-ended'))")
    page.wait_for_selector("#lock-holder-none")
    # Same refresh: the section being typed in was left alone.
    assert field.input_value() == "half-typed"
    assert field.is_enabled()
    # Once the user leaves the field, the next refresh updates that section too.
    page.evaluate("document.activeElement.blur()")
    page.evaluate("document.dispatchEvent(new CustomEvent('pploy:job-ended'))")
    page.wait_for_function(
        "document.querySelector('#checkout-form input[name=ref]').disabled === true"
    )


def test_confirm_form_cancels_only_when_accepted(page, live):
    job = live.start_job(script(printf("waiting\r\n"), "sleep 600"))
    open_job(page, live, job)
    page.wait_for_selector("text=waiting")
    page.once("dialog", lambda d: d.dismiss())
    page.click("#cancel-form button")
    # Dismissed: still on the page, nothing posted, the job runs on.
    assert page.get_attribute("#job-status", "data-status") == "running"
    messages = []

    def accept(dialog):
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("#cancel-form button")
    assert live.wait_job(job)["status"] == "cancelled"
    assert messages == ["Cancel this job?"]


def test_user_picker_submits_on_change(chromium, live):
    context = chromium.new_context()
    pg = context.new_page()
    pg.goto(live.url("/"))
    pg.select_option("#user-picker", "bob")
    pg.wait_for_selector("#user-picker", state="detached")
    assert any(c["name"] == "user" and c["value"] == "bob" for c in context.cookies())
    context.close()
