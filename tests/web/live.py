"""A real pploy for the synchronous Playwright tests of the log viewer.

:func:`tests.deploy.support.start_pploy` runs on an event loop in a background thread, so a test
drives Chromium with Playwright's sync API while pploy serves real job pages, SSE and WebSocket
streams of real deploys. Each job is a real deploy script in its own bare git repository; a test
that needs to control when output appears gates the script on a :class:`Fifo`.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tests.deploy.support import Fifo, Pploy, make_remote, start_pploy

T = TypeVar("T")
REQUEST_LINE = re.compile(rb"(?:^|\r\n)((?:GET|POST|HEAD) \S+) HTTP/1\.[01]\r\n")
SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;_-=+/()[]")


def printf(data: bytes | str) -> str:
    """A shell line printing exactly ``data``: every byte outside a safe set as an octal escape,
    so no output byte is ever shell syntax."""
    raw = data.encode() if isinstance(data, str) else data
    return "printf '" + "".join(chr(b) if b in SAFE else f"\\{b:03o}" for b in raw) + "'"


def script(*steps: str) -> str:
    """A deploy script of shell lines (see :func:`printf`)."""
    return "#!/bin/sh\n" + "\n".join(steps) + "\n"


def pieces(*parts: bytes | str, gap: float = 0.15) -> list[str]:
    """Print each part as its own write, ``gap`` seconds apart: output that arrives over
    time. Nothing makes a viewer receive them apart (one that opens late gets them in one
    piece): a test that needs each part to arrive alone gates them on a fifo
    (``test_logview_browser.apart``)."""
    steps: list[str] = []
    for part in parts:
        if steps:
            steps.append(f"sleep {gap:g}")
        steps.append(printf(part))
    return steps


class LivePploy:
    """pploy on a background event loop, with blocking helpers for the test thread."""

    def __init__(self, root: Path, **settings: Any) -> None:
        self.root = root
        self.names = itertools.count(1)
        self.projects: dict[int, str] = {}  # job id -> its project
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.pploy: Pploy = self.run(start_pploy(root / "work", **settings))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on pploy's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def base(self) -> str:
        return self.pploy.base

    def url(self, path: str) -> str:
        return self.pploy.url(path)

    def new_project(self, deploy_script: str) -> str:
        """A new project whose deploy runs ``deploy_script``, locked by alice."""
        name = f"p{next(self.names)}"
        remote = make_remote(self.root / "remotes", name=name, deploy_script=deploy_script)

        async def go() -> str:
            project = await self.pploy.add_project(remote)
            await self.pploy.gain(project)
            return project

        return self.run(go())

    def start_job(self, deploy_script: str) -> int:
        """A deploy of a new project (see :meth:`new_project`) by alice."""
        project = self.new_project(deploy_script)
        job = self.run(self.pploy.deploy(project))
        self.projects[job] = project
        return job

    def project_of(self, job_id: int) -> str:
        return self.projects[job_id]

    def release_lock(self, project: str, user: str = "alice") -> None:
        status, body = self.run(
            self.pploy.api("POST", f"/api/projects/{project}/lock", user, {"operation": "release"})
        )
        assert status == 200, body

    def wait_job(self, job_id: int, timeout: float = 60) -> dict[str, Any]:
        """The job's record once it has ended."""
        return self.run(self.pploy.wait_job(job_id, timeout), timeout + 5)

    def cancel(self, job_id: int, user: str = "alice") -> None:
        status, body = self.run(self.pploy.api("POST", f"/api/jobs/{job_id}/cancel", user))
        assert status in (200, 202), body

    def release(self, fifo: Fifo) -> None:
        """Let a script blocked on ``fifo`` go on."""
        self.run(fifo.release())

    def close(self) -> None:
        self.run(self.pploy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


class Tap:
    """A TCP relay in front of pploy that notes each connection's request line and can cut
    every open connection at once, as a network drop does (no close frame: the browser sees
    WebSocket code 1006 and the viewer reconnects)."""

    def __init__(self, live: LivePploy) -> None:
        self.live = live
        self.requests: list[str] = []
        self.writers: set[asyncio.StreamWriter] = set()
        self.server = live.run(asyncio.start_server(self._relay, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        upstream = live.base.rsplit(":", 1)
        self.upstream = (upstream[0].removeprefix("http://"), int(upstream[1]))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def paths(self, needle: str) -> list[str]:
        """Request targets seen so far that contain ``needle``."""
        return [r.split(" ", 1)[1] for r in list(self.requests) if needle in r]

    def cut(self) -> None:
        """Abort every relayed connection."""

        async def abort() -> None:
            for writer in list(self.writers):
                writer.transport.abort()

        self.live.run(abort())

    def close(self) -> None:
        self.cut()
        self.server.close()
        self.live.run(self.server.wait_closed())

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, note: bool) -> None:
            try:
                while data := await src.read(65536):
                    if note:  # every request on a kept-alive connection, not just the first
                        self.requests += [m.decode() for m in REQUEST_LINE.findall(data)]
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.transport.abort()  # one side gone: drop the other without a clean close

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        self.writers -= {writer, up_writer}
