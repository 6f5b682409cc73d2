"""The browser side (static/logview.js, static/app.js) in a real Chromium.

A small aiohttp server runs in a background thread and speaks the job-log protocol of the real
server (SSE with byte-offset ids, WebSocket with binary frames and a final text status), but its
jobs are scripted by the tests: a test appends chunks to a job, waits for the browser to show
them, then appends more. Chunk boundaries are kept exactly (one WebSocket frame or one SSE event
per appended chunk), so tests can split UTF-8 characters and escape sequences on purpose.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from tests.helpers import require_binary

pytestmark = pytest.mark.slow  # chromium

STATIC = Path(__file__).resolve().parents[2] / "src" / "pploy" / "deploy" / "static"
HARNESS = (Path(__file__).resolve().parent / "harness.html").read_text()
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# ---------------------------------------------------------------------------------------------
# Scripted job server
# ---------------------------------------------------------------------------------------------


class Job:
    """A job log that grows when the test says so. Lives on the server thread's loop."""

    def __init__(self, chunks: list[bytes], status: dict | None, drop_ws_at: int | None):
        self.chunks: list[bytes] = list(chunks)
        self.status = status
        # Abort the first WebSocket abruptly once this many bytes have been sent.
        self.drop_ws_at = drop_ws_at
        self.connections: list[tuple[str, int]] = []  # (transport, start offset) per request
        self.changed = asyncio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def pieces_from(self, offset: int, index: int) -> tuple[list[tuple[int, bytes]], int]:
        """Chunks not yet sent (from chunk ``index``), cut to start at byte ``offset``."""
        out = []
        pos = sum(len(c) for c in self.chunks[:index])
        for chunk in self.chunks[index:]:
            end = pos + len(chunk)
            if end > offset:
                out.append((end, chunk[max(0, offset - pos) :]))
            pos = end
        return out, len(self.chunks)


class JobServer:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.submissions: list[dict] = []  # form posts received by the app.js page
        self.app_version = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    # --- called from the test thread ----------------------------------------------------------

    def call(self, fn, *args):
        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def add_job(self, job_id, chunks=(), status=None, drop_ws_at=None) -> Job:
        chunks = [c.encode() if isinstance(c, str) else c for c in chunks]
        return self.call(self._add_job, job_id, chunks, status, drop_ws_at)

    def append(self, job_id, data) -> None:
        data = data.encode() if isinstance(data, str) else data
        self.call(self._append, job_id, data)

    def end(self, job_id, status: dict) -> None:
        self.call(self._end, job_id, status)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # --- server thread ------------------------------------------------------------------------

    def _add_job(self, job_id, chunks, status, drop_ws_at):
        job = self.jobs[str(job_id)] = Job(chunks, status, drop_ws_at)
        return job

    def _append(self, job_id, data):
        job = self.jobs[str(job_id)]
        job.chunks.append(data)
        job.notify()

    def _end(self, job_id, status):
        job = self.jobs[str(job_id)]
        job.status = status
        job.notify()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/job/{id}", self.job_page)
        app.router.add_get("/api/jobs/{id}/events", self.events)
        app.router.add_get("/api/jobs/{id}/ws", self.websocket)
        app.router.add_get("/app", self.app_page)
        app.router.add_post("/submit", self.submit)
        app.router.add_static("/static", STATIC)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)  # a free port: safe under pytest -n
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def job_page(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        html = HARNESS.replace("{job_id}", job_id)
        html = html.replace("{transport}", request.query.get("t", "sse"))
        html = html.replace("{started_at}", request.query.get("started", str(time.time())))
        return web.Response(text=html, content_type="text/html")

    async def events(self, request: web.Request) -> web.StreamResponse:
        job = self.jobs[request.match_info["id"]]
        offset = int(request.headers.get("Last-Event-ID") or request.query.get("offset", "0"))
        job.connections.append(("sse", offset))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b": ping\n\n")
        decoder = codecs.getincrementaldecoder("utf-8")()
        index = 0
        while True:
            changed = job.changed
            pieces, index = job.pieces_from(offset, index)
            for end, data in pieces:
                text = json.dumps(decoder.decode(data))
                await resp.write(f"event: log\nid: {end}\ndata: {text}\n\n".encode())
                offset = end
            if job.status is not None:
                await resp.write(f"event: status\ndata: {json.dumps(job.status)}\n\n".encode())
                return resp
            await changed.wait()

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        job = self.jobs[request.match_info["id"]]
        offset = int(request.query.get("offset", "0"))
        job.connections.append(("ws", offset))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        index = 0
        while True:
            changed = job.changed
            pieces, index = job.pieces_from(offset, index)
            for end, data in pieces:
                await ws.send_bytes(data)
                offset = end
                if job.drop_ws_at is not None and offset >= job.drop_ws_at:
                    job.drop_ws_at = None
                    # An abnormal end (no close frame): the browser sees code 1006.
                    request.transport.abort()
                    return ws
            if job.status is not None:
                await ws.send_str(json.dumps(job.status))
                await ws.close(code=1000)
                return ws
            await changed.wait()

    # --- app.js page --------------------------------------------------------------------------

    async def app_page(self, request: web.Request) -> web.Response:
        v = self.app_version
        now = time.time()
        html = f"""<!doctype html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="/static/style.css">
<script src="/static/app.js" defer></script></head><body>
<span class="countdown" id="cd-short" data-expires-at="{now + 65.5}"></span>
<span class="countdown" id="cd-long" data-expires-at="{now + 3725.5}"></span>
<span class="countdown" id="cd-past" data-expires-at="{now - 5}"
  data-expired-text="abgelaufen"></span>
<span class="countdown" id="cd-default" data-expires-at="{now - 5}"></span>
<section id="lock" data-live><p id="lock-text">lock v{v}</p>
  <span class="countdown" id="cd-live" data-expires-at="{now + 125.5}"></span></section>
<section id="note" data-live><p id="note-text">note v{v}</p>
  <form><input id="note-input" name="note" value=""></form></section>
<form id="danger" method="post" action="/submit" data-confirm="Really deploy?">
  <input type="hidden" name="what" value="deploy"><button id="danger-go">Deploy</button></form>
<form id="pick" method="post" action="/submit">
  <select id="user-picker" name="user"><option>alice</option><option>bob</option></select>
  <button>Switch</button></form>
</body></html>"""
        return web.Response(text=html, content_type="text/html")

    async def submit(self, request: web.Request) -> web.Response:
        self.submissions.append(dict(await request.post()))
        return web.Response(text="<p id='done'>submitted</p>", content_type="text/html")


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    srv = JobServer()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    require_binary("chromium")
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


_ids = iter(range(1, 1_000_000))


def new_id() -> str:
    return f"j{next(_ids)}"


def ok(status="succeeded", code=0) -> dict:
    return {
        "status": status,
        "exit_code": code,
        "signal": None,
        "ended_at": time.time(),
        "cancelled_by": None,
    }


def open_job(page, server, job_id, transport="sse", hash_="", started=None):
    query = f"?t={transport}" + (f"&started={started}" if started else "")
    page.goto(server.url(f"/job/{job_id}{query}{hash_}"))


def wait_ended(page) -> None:
    page.wait_for_selector("body[data-job-status]:not([data-job-status=running])")


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


def line_texts(page) -> list[str]:
    return page.eval_on_selector_all(".log-line .log-text", "els => els.map(e => e.textContent)")


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def test_sgr_colours_and_attributes_render_as_styled_spans(page, server):
    job = new_id()
    server.add_job(
        job,
        [
            "plain \x1b[31mred\x1b[0m \x1b[1;92mbold-bright-green\x1b[0m\r\n",
            "\x1b[38;5;208m256-orange\x1b[0m "
            "\x1b[38;2;10;20;30;48;2;200;201;202mtruecolor\x1b[m\r\n",
            "\x1b[2mdim\x1b[22m \x1b[3mitalic\x1b[23m \x1b[4munder\x1b[24m \x1b[7minverse\x1b[27m"
            " \x1b[44mbluebg\x1b[49m after\r\n",
        ],
        ok(),
    )
    open_job(page, server, job)
    wait_ended(page)
    assert line_texts(page) == [
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
    assert (
        page.evaluate(
            "[...document.querySelectorAll('#log .log-line')][2].querySelector('.log-text')"
            ".lastChild.nodeType"
        )
        == 3
    )


def test_carriage_return_progress_collapses_to_last_frame(page, server):
    job = new_id()
    frames = "".join(f"\rDownloading {p:3d}%" for p in range(0, 101, 5))
    server.add_job(
        job,
        [
            "start\r\n",
            frames[: len(frames) // 2],
            frames[len(frames) // 2 :] + "\r\n",
            "long line that gets\rshort\x1b[K\r\n",  # erase-to-end clears the tail
            "abcdef\rXY\r\n",  # without an erase, a terminal keeps the tail
            "line\r",
            "\nsplit crlf\r\n",  # \r and \n in different chunks are still one line end
            "a\r\n\r\nb\r\n",  # a real empty line stays
        ],
        ok(),
    )
    open_job(page, server, job)
    wait_ended(page)
    assert line_texts(page) == [
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
def test_chunks_splitting_utf8_and_escape_sequences(page, server, transport):
    job = new_id()
    if transport == "ws":
        # Byte-level splits: inside "é" (c3 a9), inside "€" (e2 82 ac), and inside ESC[32m.
        chunks = [b"caf\xc3", b"\xa9 \xe2\x82", b"\xac \x1b[3", b"2mgreen\x1b", b"[0m done\r\n"]
    else:
        # SSE carries text, so only escape sequences (and \r\n) can be split.
        chunks = ["café € \x1b", "[3", "2mgreen\x1b[", "0m done\r", "\n"]
    server.add_job(job, chunks, ok())
    open_job(page, server, job, transport)
    wait_ended(page)
    assert line_texts(page) == ["café € green done"]
    assert page.inner_text("#log .ansi-fg-2") == "green"


def test_output_is_inert_text_never_html(page, server):
    job = new_id()
    evil = (
        "<script>window.__pwned = 1</script>"
        '<img src="x" onerror="window.__pwned = 2">'
        "\x1b[31m<b onmouseover=alert(1)>red</b>\x1b[0m\r\n"
    )
    server.add_job(job, [evil], ok())
    open_job(page, server, job)
    wait_ended(page)
    assert line_texts(page) == [
        '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'
        "<b onmouseover=alert(1)>red</b>"
    ]
    assert page.evaluate("document.querySelectorAll('#log script, #log img, #log b').length") == 0
    assert page.evaluate("window.__pwned") is None


# ---------------------------------------------------------------------------------------------
# Navigation: line links, #L hash, follow
# ---------------------------------------------------------------------------------------------


def test_line_number_links_highlight_and_update_hash(page, server):
    job = new_id()
    server.add_job(job, ["".join(f"line {i}\r\n" for i in range(1, 21))], ok())
    open_job(page, server, job)
    wait_ended(page)
    link = page.locator('#log a.log-ln[href="#L7"]')
    assert link.get_attribute("data-n") == "7"
    link.click()
    assert page.evaluate("location.hash") == "#L7"
    selected = page.locator("#log .log-line-selected")
    assert selected.count() == 1
    assert selected.get_attribute("data-line") == "7"
    assert selected.locator(".log-text").inner_text() == "line 7"
    # Line numbers are drawn by CSS: copying the log text never copies them.
    assert page.locator("#log .log-line").first.inner_text().strip() == "line 1"


def test_hash_on_load_scrolls_to_line_and_highlights(page, server):
    job = new_id()
    server.add_job(job, ["".join(f"row {i}\r\n" for i in range(1, 3001))], ok())
    open_job(page, server, job, hash_="#L1234")
    wait_ended(page)
    row = page.locator('#log .log-line[data-line="1234"]')
    row.wait_for()
    assert "log-line-selected" in row.get_attribute("class")
    assert row.locator(".log-text").inner_text() == "row 1234"
    # It is inside the visible part of the panel, and following stopped at it.
    visible = page.evaluate(
        """() => {
          const log = document.getElementById('log').getBoundingClientRect();
          const r = document.querySelector('#log .log-line[data-line="1234"]')
            .getBoundingClientRect();
          return r.top >= log.top && r.bottom <= log.bottom;
        }"""
    )
    assert visible
    assert not page.is_checked("#log-follow")


def test_follow_toggle_tracks_user_scrolling(page, server):
    job = new_id()
    server.add_job(job, ["".join(f"first {i}\r\n" for i in range(1, 201))])
    open_job(page, server, job)
    page.wait_for_selector("text=first 200")
    assert page.is_checked("#log-follow")
    page.wait_for_function(AT_BOTTOM)

    # Scrolling up by hand turns follow off; new output then does not move the view.
    page.hover("#log")
    page.mouse.wheel(0, -600)
    page.wait_for_function("!document.getElementById('log-follow').checked")
    page.evaluate(SCROLL_SETTLED)
    top_before = page.evaluate("document.getElementById('log').scrollTop")
    server.append(job, "".join(f"second {i}\r\n" for i in range(1, 101)))
    page.wait_for_function("document.getElementById('log').dataset.lines === '300'")
    assert page.evaluate("document.getElementById('log').scrollTop") == top_before

    # Scrolling to the bottom turns it back on, and it keeps up with new output.
    page.mouse.wheel(0, 100_000)
    page.wait_for_function("document.getElementById('log-follow').checked")
    server.append(job, "".join(f"third {i}\r\n" for i in range(1, 101)))
    page.wait_for_selector("text=third 100")
    page.wait_for_function(AT_BOTTOM)

    # The checkbox drives it too.
    page.uncheck("#log-follow")
    page.evaluate("document.getElementById('log').scrollTop = 0")
    page.wait_for_selector("text=first 1")
    page.check("#log-follow")
    page.wait_for_function(AT_BOTTOM)
    server.end(job, ok())
    wait_ended(page)


def test_streams_line_by_line(page, server):
    """Line 2 is only sent once the browser shows line 1: nothing is held back."""
    job = new_id()
    server.add_job(job)
    open_job(page, server, job)
    for i in range(1, 6):
        server.append(job, f"step {i}\r\n")
        page.wait_for_selector(f"#log .log-text:text-is('step {i}')")
        assert f"step {i + 1}" not in page.inner_text("#log")
    server.end(job, ok())
    wait_ended(page)


# ---------------------------------------------------------------------------------------------
# Big logs
# ---------------------------------------------------------------------------------------------


def test_100k_line_log_is_virtualised(page, server):
    job = new_id()
    lines = [f"line {i} \x1b[32mok\x1b[0m {'x' * (i % 40)}\r\n" for i in range(1, 100_001)]
    # ~4.6 MB in 1000-line events, as a server replaying a file from offset 0 would send it.
    chunks = ["".join(lines[i : i + 1000]) for i in range(0, len(lines), 1000)]
    server.add_job(job, chunks, ok())
    started = time.monotonic()
    open_job(page, server, job)
    wait_ended(page)
    elapsed = time.monotonic() - started
    assert page.get_attribute("#log", "data-lines") == "100000"
    rows = page.evaluate("document.querySelectorAll('#log .log-line').length")
    assert 0 < rows < 500, rows
    assert elapsed < 20, elapsed
    # Following: the end is on screen.
    page.wait_for_selector("#log .log-line[data-line='100000']")

    # The page stays responsive while scrolled around: top, then back to the end by keyboard.
    page.evaluate("document.getElementById('log').scrollTop = 0")
    page.wait_for_selector("#log .log-line[data-line='1']")
    assert page.evaluate("document.querySelectorAll('#log .log-line').length") < 500
    page.focus("#log")
    page.keyboard.press("End")
    last = page.locator("#log .log-line[data-line='100000'] .log-text")
    last.wait_for()
    assert last.inner_text().startswith("line 100000 ok")
    assert page.evaluate("document.querySelectorAll('#log .log-line').length") < 500


# ---------------------------------------------------------------------------------------------
# Transports and status
# ---------------------------------------------------------------------------------------------


def test_ws_transport_binary_frames_status_and_close(page, server):
    job = new_id()
    status = ok("failed", 3)
    # Bare \n line ends too: the real server's pty does no \n -> \r\n translation.
    server.add_job(job, [b"hello ", b"over ws\n", b"bye\n"], status)
    page.add_init_script(
        "document.addEventListener('pploy:job-ended', e => { window.__ended = e.detail; })"
    )
    open_job(page, server, job, "ws")
    wait_ended(page)
    assert line_texts(page) == ["hello over ws", "bye"]
    assert page.evaluate("window.__ended") == status
    badge = page.locator("#job-status")
    assert badge.inner_text() == "failed"
    assert badge.get_attribute("data-status") == "failed"
    assert badge.get_attribute("class").split() == ["status", "status-failed"]
    assert page.get_attribute("body", "data-job-status") == "failed"
    assert page.get_attribute("#log", "data-connection") == "ended"
    assert server.jobs[job].connections == [("ws", 0)]


def test_transport_query_overrides_data_attribute(page, server):
    job = new_id()
    server.add_job(job, ["via ws\r\n"], ok())
    page.goto(server.url(f"/job/{job}?t=sse&transport=ws"))
    wait_ended(page)
    assert line_texts(page) == ["via ws"]
    assert server.jobs[job].connections == [("ws", 0)]


def test_sse_status_event_ends_stream_and_updates_page(page, server):
    job = new_id()
    server.add_job(job, ["building\r\n"])
    page.add_init_script(
        "document.addEventListener('pploy:job-ended', e => { window.__ended = e.detail; })"
    )
    open_job(page, server, job, "sse", started=time.time() - 65)
    page.wait_for_selector("text=building")
    assert page.inner_text("#job-status") == "running"
    assert page.is_visible("#cancel-form")
    assert re.fullmatch(r"1m0[5-9]s", page.inner_text("#job-duration"))

    status = {
        "status": "cancelled",
        "exit_code": None,
        "signal": 15,
        "ended_at": time.time(),
        "cancelled_by": "alice",
    }
    server.append(job, "cancelling\r\n")
    server.end(job, status)
    wait_ended(page)
    assert page.evaluate("window.__ended") == status
    assert line_texts(page) == ["building", "cancelling"]
    badge = page.locator("#job-status")
    assert (badge.inner_text(), badge.get_attribute("data-status")) == ("cancelled", "cancelled")
    assert "status-cancelled" in badge.get_attribute("class")
    assert "status-running" not in badge.get_attribute("class")
    assert page.get_attribute("body", "data-job-status") == "cancelled"
    assert page.is_hidden("#cancel-form")  # app.js: a finished job cannot be cancelled
    # The EventSource was closed by the viewer (else it would reconnect after the server's close).
    assert page.evaluate("document.getElementById('log').pployLog.source.readyState") == 2
    assert server.jobs[job].connections == [("sse", 0)]
    # The duration stopped at ended_at.
    assert page.get_attribute("#job-duration", "data-ended-at") == str(status["ended_at"])
    assert re.fullmatch(r"1m0[5-9]s", page.inner_text("#job-duration"))


def test_ws_dropped_mid_stream_resumes_from_offset_without_duplicates(page, server):
    job = new_id()
    first = b"one\r\ntwo \xe2\x82"  # the drop happens inside "€"
    second = b"\xac three\r\n"
    # The socket is aborted right after `first`; the rest arrives on the next connection.
    server.add_job(job, [first, second, b"four\r\n"], ok(), drop_ws_at=len(first))
    open_job(page, server, job, "ws")
    wait_ended(page)
    assert line_texts(page) == ["one", "two € three", "four"]
    assert server.jobs[job].connections == [("ws", 0), ("ws", len(first))]


def test_ws_streams_live_then_reconnects(page, server):
    """A drop while the job is still running: live output continues after the reconnect."""
    job = new_id()
    server.add_job(job, [b"before\r\n"], drop_ws_at=len(b"before\r\n"))
    open_job(page, server, job, "ws")
    page.wait_for_selector("text=before")
    page.wait_for_function("document.getElementById('log').dataset.connection === 'live'")
    server.append(job, b"after\r\n")
    page.wait_for_selector("text=after")
    server.end(job, ok())
    wait_ended(page)
    assert line_texts(page) == ["before", "after"]
    assert [c[1] for c in server.jobs[job].connections] == [0, len(b"before\r\n")]


# ---------------------------------------------------------------------------------------------
# app.js
# ---------------------------------------------------------------------------------------------


def test_countdowns(page, server):
    page.goto(server.url("/app"))
    page.wait_for_function("document.getElementById('cd-short').textContent !== ''")
    assert re.fullmatch(r"1:0[4-6]", page.inner_text("#cd-short"))
    assert re.fullmatch(r"1:02:0[4-6]", page.inner_text("#cd-long"))
    assert page.inner_text("#cd-past") == "abgelaufen"
    assert page.inner_text("#cd-default") == "expired"
    assert "countdown-expired" in page.get_attribute("#cd-default", "class")
    # It ticks.
    before = page.inner_text("#cd-short")
    page.wait_for_function(f"document.getElementById('cd-short').textContent !== '{before}'")


def test_live_sections_refresh_but_not_while_typing(page, server):
    server.app_version = 1
    page.goto(server.url("/app"))
    page.wait_for_selector("text=lock v1")
    page.fill("#note-input", "half-typed")  # focus stays in the note section's input
    server.app_version = 2
    page.evaluate("document.dispatchEvent(new CustomEvent('pploy:job-ended'))")
    page.wait_for_selector("text=lock v2")
    # Same refresh: the section being typed in was left alone.
    assert page.inner_text("#note-text") == "note v1"
    assert page.input_value("#note-input") == "half-typed"
    # The swapped-in countdown runs.
    page.wait_for_function("/^2:0\\d$/.test(document.getElementById('cd-live').textContent)")
    # Once the user leaves the field, the next refresh updates that section too.
    page.evaluate("document.activeElement.blur()")
    page.evaluate("document.dispatchEvent(new CustomEvent('pploy:job-ended'))")
    page.wait_for_selector("text=note v2")


def test_confirm_forms_and_user_picker(page, server):
    server.submissions.clear()
    page.goto(server.url("/app"))
    page.once("dialog", lambda d: d.dismiss())
    page.click("#danger-go")
    # Dismissed: still on the page, nothing posted. A second, accepted attempt posts.
    assert page.locator("#danger-go").count() == 1
    messages = []

    def accept(dialog):
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("#danger-go")
    page.wait_for_selector("#done")
    assert messages == ["Really deploy?"]
    assert server.submissions == [{"what": "deploy"}]

    page.goto(server.url("/app"))
    page.select_option("#user-picker", "bob")
    page.wait_for_selector("#done")
    assert server.submissions[-1] == {"user": "bob"}
