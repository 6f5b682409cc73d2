"""Repository content is untrusted: what a hostile repository commits, through the real server.

Each repository here is a bare git remote whose commit holds the attack (symlinks are committed
as git symlinks, the huge file as a blob); the attacker only adds it to pploy, as any user may.
"""

from __future__ import annotations

import asyncio
import os
import tracemalloc
from pathlib import Path

import aiohttp
import pytest

from pploy.deploy.domain import repofiles
from tests.deploy.support import git, start_pploy
from tests.deploy.test_server_process import Server, write_config

SECRET = "topsecret4242"  # a valid environment name, so a leaked deploy_envs would list it
README = ".deploy/config/readme.html"
ENVS = ".deploy/config/deploy_envs"
DEPLOY = "#!/bin/sh\necho deployed $DEPLOY_ENV\n"


def hostile_remote(
    root: Path, name: str, links: dict[str, str], files: dict[str, str] | None = None
) -> Path:
    """A bare repository ``root/<name>.git`` whose one commit holds ``links`` as symlinks."""
    work = root / f"{name}-src"
    (work / ".deploy/bin").mkdir(parents=True)
    (work / ".deploy/config").mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    for rel, text in {".deploy/bin/deploy": DEPLOY, **(files or {})}.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    for rel, target in links.items():
        path = work / rel
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif path.exists():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "innocent", cwd=work)
    bare = root / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    return bare


async def everything_shown(pploy, name: str) -> str:
    """The project page, the project API, its commits and the status API, concatenated."""
    texts = []
    for path in (
        f"/projects/{name}", f"/api/projects/{name}", f"/api/projects/{name}/commits",
        "/api/status", "/",
    ):  # fmt: skip
        async with pploy.client().get(pploy.url(path)) as resp:
            assert resp.status == 200, (path, resp.status)
            texts.append(await resp.text())
    return "\n".join(texts)


@pytest.fixture
def secrets_outside(tmp_path: Path) -> Path:
    """A secret file and a directory of secrets next to the workdir, as a deploy key would be."""
    (tmp_path / "secret.txt").write_text(f"{SECRET}\n<p>{SECRET}</p>\n")
    (tmp_path / "secret-dir").mkdir()
    (tmp_path / "secret-dir/readme.html").write_text(f"<p>{SECRET}</p>")
    (tmp_path / "secret-dir/deploy_envs").write_text(f"{SECRET}\n")
    return tmp_path / "secret.txt"


# clone: tmp/work/projects/evil/.deploy/config/readme.html -> five levels up is tmp/
ESCAPES = {
    "readme-to-etc-passwd": ({README: "/etc/passwd"}, "root:x:0:0"),
    "readme-to-secret": ({README: "{secret}"}, SECRET),
    "readme-relative-escape": ({README: "../../../../../secret.txt"}, SECRET),
    "readme-chain": ({README: "../../hop1", "hop1": "hop2", "hop2": "{secret}"}, SECRET),
    "envs-to-secret": ({ENVS: "{secret}"}, SECRET),
    "envs-relative-escape": ({ENVS: "../../../../../secret.txt"}, SECRET),
    "envs-chain": ({ENVS: "../../hop1", "hop1": "hop2", "hop2": "{secret}"}, SECRET),
    "config-dir-symlink": ({".deploy/config": "{secret_dir}"}, SECRET),
    "envs-to-dev-zero": ({ENVS: "/dev/zero"}, "\x00"),
    "readme-into-dot-git": ({README: "../../.git/config"}, "[remote"),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
async def test_symlinks_expose_nothing_outside_the_clone(tmp_path, secrets_outside, case):
    links, leak = ESCAPES[case]
    links = {
        rel: target.format(secret=secrets_outside, secret_dir=tmp_path / "secret-dir")
        for rel, target in links.items()
    }
    remote = hostile_remote(tmp_path, "evil", links)
    pploy = await start_pploy(tmp_path / "work")
    try:
        await pploy.add_project(remote)
        shown = await everything_shown(pploy, "evil")
        assert leak not in shown
        assert SECRET not in shown
        # …and the page says why instead of showing nothing
        assert "symlink" in shown
        status, body = await pploy.api("GET", "/api/projects/evil")
        project = body["project"]
        if "envs" in case or "config-dir" in case:
            assert project["envs"] == []
            assert "leads outside the repository" in project["deploy_problem"]
            await pploy.gain("evil")
            status, body = await pploy.api(
                "POST", "/api/projects/evil/deploy", json={"env": "staging"}
            )
            assert status == 400 and "deploy_envs" in body["error"], body
        else:
            assert project["readme_problem"].startswith(README)
            assert project["deploy_problem"] is None
    finally:
        await pploy.close()


async def test_symlinks_inside_the_clone_still_work(tmp_path):
    """A repository may point its files at other files of its own: those are followed."""
    remote = hostile_remote(
        tmp_path, "fine",
        {README: "../../docs/readme.html", ENVS: "../../envs.txt",
         ".deploy/bin/deploy": "../../scripts/deploy.sh"},
        {"docs/readme.html": "<p>Hello from docs</p>", "envs.txt": "qa\n",
         "scripts/deploy.sh": DEPLOY},
    )  # fmt: skip
    pploy = await start_pploy(tmp_path / "work")
    try:
        await pploy.add_project(remote)
        async with pploy.client().get(pploy.url("/projects/fine")) as resp:
            assert "Hello from docs" in await resp.text()
        status, body = await pploy.api("GET", "/api/projects/fine")
        assert body["project"]["envs"] == ["qa"] and body["project"]["deploy_problem"] is None
        await pploy.gain("fine")
        job = await pploy.wait_job(await pploy.deploy("fine", "qa"))
        assert job["status"] == "succeeded"
        assert b"deployed qa" in await pploy.log(job["id"])
    finally:
        await pploy.close()


async def test_scripts_leading_outside_the_clone_are_refused(tmp_path):
    """``.deploy/bin/deploy -> /usr/bin/touch`` would run a program of the machine, not of the
    repository: refused with a message, nothing runs."""
    marker = tmp_path / "ran"
    outside = tmp_path / "outside.sh"
    outside.write_text(f"#!/bin/sh\ntouch {marker}\n")
    outside.chmod(0o755)
    remote = hostile_remote(
        tmp_path, "evil",
        {".deploy/bin/deploy": str(outside), ".deploy/bin/checkout_overwrite": str(outside)},
    )  # fmt: skip
    pploy = await start_pploy(tmp_path / "work")
    try:
        await pploy.add_project(remote)
        await pploy.gain("evil")
        status, body = await pploy.api("GET", "/api/projects/evil")
        assert "outside the repository" in body["project"]["deploy_problem"]
        assert "outside the repository" in body["project"]["checkout_problem"]
        assert body["project"]["checkout_overwrite"] is False
        status, body = await pploy.api("POST", "/api/projects/evil/deploy", json={"env": "staging"})
        assert status == 400 and ".deploy/bin/deploy is a symlink" in body["error"], body
        status, body = await pploy.api("POST", "/api/projects/evil/checkout", json={"ref": "main"})
        assert status == 400, body
        assert ".deploy/bin/checkout_overwrite is a symlink" in body["error"]
        assert "only scripts inside the clone" in body["error"]
        async with pploy.client().get(pploy.url("/projects/evil")) as resp:
            page = await resp.text()
        assert 'id="deploy-problem"' in page and 'id="checkout-problem"' in page
        assert not marker.exists()
        assert pploy.services.store.list_jobs("evil") == []
    finally:
        await pploy.close()


async def test_a_huge_deploy_envs_is_refused_with_a_message(tmp_path):
    remote = hostile_remote(
        tmp_path, "huge", {}, {ENVS: "staging\n" + "x" * (8 << 20), README: "<p>" + "y" * 300_000}
    )
    pploy = await start_pploy(tmp_path / "work")
    try:
        await pploy.add_project(remote)
        status, body = await pploy.api("GET", "/api/projects/huge")
        project = body["project"]
        assert project["envs"] == []
        assert project["deploy_problem"].startswith(f"{ENVS} is larger than 64 KiB")
        assert project["readme_problem"] == f"{README} is larger than 256 KiB"
        async with pploy.client().get(pploy.url("/projects/huge")) as resp:
            page = await resp.text()
        assert "larger than 64 KiB" in page and "larger than 256 KiB" in page
        assert "yyyy" not in page
    finally:
        await pploy.close()


def test_reading_a_huge_file_allocates_only_the_limit(tmp_path):
    """The cap holds on memory, not only on what is shown: a 32 MB file costs no 32 MB."""
    (tmp_path / "big").write_bytes(b"a\n" * (16 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(repofiles.RefusedFile, match="larger than 64 KiB"):
            repofiles.read_file(tmp_path, "big", 64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_a_fifo_or_a_socket_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # no writer: a blocking open would wait forever
    with pytest.raises(repofiles.RefusedFile, match="fifo is not a regular file"):
        repofiles.read_file(tmp_path, "fifo", 1024)
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(repofiles.RefusedFile, match="sock is not a regular file"):
            repofiles.read_file(tmp_path, "sock", 1024)
    os.symlink("loop", tmp_path / "loop")
    with pytest.raises(repofiles.RefusedFile, match="loop"):
        repofiles.read_file(tmp_path, "loop", 1024)
    assert repofiles.read_file(tmp_path, "missing", 1024) is None


def test_a_symlink_swapped_in_after_the_check_is_not_followed(tmp_path, monkeypatch):
    """The real-path check and the open are two steps; a symlink that appears between them
    (a checkout racing the read) makes the open fail (O_NOFOLLOW on every component)."""
    (tmp_path / "secret").write_text(SECRET)
    clone = tmp_path / "clone"
    (clone / "conf").mkdir(parents=True)
    (clone / "conf/readme.html").write_text("fine")
    checked = repofiles.inside_parts

    def check_then_swap(root: Path, rel: str) -> list[str] | None:
        parts = checked(root, rel)
        (clone / "conf/readme.html").unlink()
        (clone / "conf").rmdir()
        os.symlink(tmp_path, clone / "conf")
        (tmp_path / "readme.html").write_text(SECRET)
        return parts

    monkeypatch.setattr(repofiles, "inside_parts", check_then_swap)
    with pytest.raises(repofiles.RefusedFile, match="symlink"):
        repofiles.read_file(clone, "conf/readme.html", 1024)


@pytest.mark.slow  # a `pploy serve` process
async def test_a_fifo_left_by_a_deploy_does_not_stall_pploy(tmp_path):
    """A deploy script replaces deploy_envs with a FIFO. Reading it waits for data that never
    comes (the test holds its writing end and writes nothing); on the event loop that froze
    every request. Through a real ``pploy serve`` process (a frozen server cannot freeze the
    test): once the server is either done with the page or holding the FIFO open, another
    request is sent, and must be answered; the page must answer with a message."""
    script = f"#!/bin/sh\nset -e\nmkdir -p .deploy/config\nmkfifo {ENVS}\necho made a fifo\n"
    remote = hostile_remote(tmp_path, "testploy", {}, {".deploy/bin/deploy": script})
    server = Server(tmp_path / "work", write_config(tmp_path / "pploy.yml"))
    fifo = tmp_path / "work/projects/testploy" / ENVS
    writer: int | None = None
    try:
        async with aiohttp.ClientSession(
            cookies={"user": "alice"}, timeout=aiohttp.ClientTimeout(total=10)
        ) as http:
            job = await server.start_deploy(http, remote)
            async with http.get(f"{server.base}/api/jobs/{job}/log?follow=1") as resp:
                assert b"made a fifo" in await resp.read()
            assert fifo.is_fifo()
            writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer that never writes

            async def get(path: str) -> tuple[int, str]:
                async with http.get(server.base + path) as resp:
                    return resp.status, await resp.text()

            page = asyncio.ensure_future(get("/projects/testploy"))
            deadline = asyncio.get_running_loop().time() + 10
            while not page.done() and not _holds_open(server.proc.pid, fifo):
                assert asyncio.get_running_loop().time() < deadline, "the page never started"
                await asyncio.sleep(0.01)
            assert await get("/ping") == (200, "pong\n")
            status, html = await page
            assert status == 200 and "deploy_envs is not a regular file" in html
            status, body = await get("/api/projects/testploy")
            assert "not a regular file" in body and '"envs": []' in body
    finally:
        if writer is not None:
            os.close(writer)  # a reader stuck on the FIFO (the bug) gets its end of file
        server.stop()


def _holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open right now."""
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:
            continue
    return False


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow  # a `pploy serve` process, 8 MB of envs
async def test_a_huge_deploy_envs_does_not_grow_pploys_memory(tmp_path):
    """Through a real ``pploy serve``: showing a project whose deploy_envs is 8 MB of lines,
    five times, leaves pploy's peak memory (VmHWM) where it was."""
    lines = "".join(f"env{i}\n" for i in range(1_000_000))  # ~7.9 MB of valid names
    remote = hostile_remote(tmp_path, "testploy", {}, {ENVS: lines})
    server = Server(tmp_path / "work", write_config(tmp_path / "pploy.yml"))
    try:
        async with aiohttp.ClientSession(
            cookies={"user": "alice"}, timeout=aiohttp.ClientTimeout(total=30)
        ) as http:
            await server.ready(http)
            async with http.post(server.base + "/api/projects", json={"url": str(remote)}) as r:
                assert r.status == 201
            before = _peak_rss_kib(server.proc.pid)
            for _ in range(5):
                async with http.get(server.base + "/projects/testploy") as resp:
                    assert "larger than 64 KiB" in await resp.text()
            grown = _peak_rss_kib(server.proc.pid) - before
        assert grown < 8 * 1024, f"peak RSS grew by {grown} KiB"
    finally:
        server.stop()


async def test_a_huge_commit_message_is_cut_off_with_a_message(tmp_path):
    """Commit messages are repository content too: a 6 MB message makes git's output stop at
    4 MiB (git is killed), and the page says so instead of holding it all."""
    remote = hostile_remote(tmp_path, "testploy", {})
    work = tmp_path / "push"
    git("clone", "-q", str(remote), str(work), cwd=tmp_path)
    (work / "msg").write_text("subject\n\n" + "z" * (6 << 20))
    git("commit", "-q", "--allow-empty", "-F", "msg", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    pploy = await start_pploy(tmp_path / "work")
    try:
        await pploy.add_project(remote)
        status, body = await pploy.api("GET", "/api/projects/testploy/commits")
        assert status == 200 and body["commits"] == []
        assert body["error"] == "git log printed more than 4 MiB; stopped"
        async with pploy.client().get(pploy.url("/projects/testploy")) as resp:
            page = await resp.text()
        assert resp.status == 200 and "printed more than 4 MiB" in page and len(page) < 1 << 20
    finally:
        await pploy.close()


def test_a_symlink_to_a_directory_of_the_clone_is_not_a_file(tmp_path):
    (tmp_path / "conf").mkdir()
    os.symlink("..", tmp_path / "conf/up")
    os.symlink(".", tmp_path / "conf/here")
    for rel in ("conf/up", "conf/here", "conf"):
        with pytest.raises(repofiles.RefusedFile, match=f"^{rel} is not a regular file$"):
            repofiles.read_file(tmp_path, rel, 1024)


async def test_a_submodule_cannot_pull_in_a_repository_of_this_machine(tmp_path):
    """A repository whose .gitmodules names ``file://`` another repository on pploy's machine
    (another project's clone, a private mirror): the checkout's ``git submodule update`` is
    refused by git (``protocol.file.allow=user``), nothing of it lands in the clone."""
    private = tmp_path / "private-src"
    private.mkdir()
    git("init", "-q", "-b", "main", cwd=private)
    (private / "readme.html").write_text(f"<p>{SECRET}</p>")
    git("add", "-A", cwd=private)
    git("commit", "-q", "-m", "private", cwd=private)
    remote = hostile_remote(tmp_path, "testploy", {README: "../../sub/readme.html"})
    work = tmp_path / "push"
    git("clone", "-q", str(remote), str(work), cwd=tmp_path)
    git(
        "-c", "protocol.file.allow=always", "submodule", "add", "-q", private.as_uri(), "sub",
        cwd=work,
    )  # fmt: skip
    git("commit", "-q", "-m", "add a submodule", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    pploy = await start_pploy(tmp_path / "work")
    try:
        await pploy.add_project(remote)
        await pploy.gain("testploy")
        job = await pploy.wait_job(await pploy.checkout("testploy", "main"))
        log = await pploy.log(job["id"])
        assert job["status"] == "failed" and b"transport 'file' not allowed" in log, log
        assert not (tmp_path / "work/projects/testploy/sub/readme.html").exists()
        assert SECRET not in await everything_shown(pploy, "testploy")
    finally:
        await pploy.close()
