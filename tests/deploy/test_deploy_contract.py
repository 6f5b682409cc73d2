"""The ``.deploy`` contract as the Scala pploy and go-pploy ran it (issue 14), on real git
repositories and a real pploy: deploy scripts get pploy's environment (not the hardening of
pploy's own git commands), refs with revision suffixes check out, and
``<workdir>/logs/<project>.log`` follows the latest deploy's log."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.deploy.support import git, make_remote, push_commit, start_pploy

HARDENING = ("GIT_ASKPASS", "SSH_ASKPASS", "GIT_TERMINAL_PROMPT", "GIT_CONFIG_COUNT")
SHOW_ENV = (
    "#!/bin/sh\n"
    "for v in GIT_ASKPASS SSH_ASKPASS GIT_TERMINAL_PROMPT GIT_ALLOW_PROTOCOL GIT_CONFIG_COUNT "
    'LC_ALL FROM_PPLOY DEPLOY_USER; do eval "printf \'%s=[%s]\\n\' $v \\"\\${$v-unset}\\""; done\n'
)


def shown(log: bytes) -> dict[str, str]:
    """``NAME=[value]`` lines of a job's log."""
    found = {}
    for line in log.decode().splitlines():
        name, sep, rest = line.partition("=[")
        if sep and rest.endswith("]"):
            found[name.strip()] = rest[:-1]
    return found


async def test_scripts_get_pploys_environment_and_git_keeps_its_hardening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in HARDENING + ("GIT_ALLOW_PROTOCOL", "LC_ALL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FROM_PPLOY", "yes")
    monkeypatch.setenv("GIT_ALLOW_PROTOCOL", "https:ssh")  # the operator's own, passed on
    remote = make_remote(tmp_path, deploy_script=SHOW_ENV)
    pploy = await start_pploy(tmp_path / "w")
    try:
        name = await pploy.add_project(remote)
        # pploy's own git commands: a hook inside `git checkout` shows what they run with
        hook = tmp_path / "w/projects" / name / ".git/hooks/post-checkout"
        hook.write_text(SHOW_ENV)
        hook.chmod(0o755)
        await pploy.gain(name)
        job = await pploy.wait_job(await pploy.checkout(name, "main"))
        assert job["status"] == "succeeded"
        in_git = shown(await pploy.log(job["id"]))
        assert in_git["GIT_ASKPASS"] == "/bin/true" and in_git["GIT_TERMINAL_PROMPT"] == "0"
        assert in_git["LC_ALL"] == "C" and in_git["GIT_ALLOW_PROTOCOL"] == "unset"

        job = await pploy.wait_job(await pploy.deploy(name))
        in_script = shown(await pploy.log(job["id"]))
        assert in_script["FROM_PPLOY"] == "yes" and in_script["DEPLOY_USER"] == "alice"
        for var in HARDENING + ("LC_ALL",):
            assert in_script[var] == "unset", (var, in_script)
        assert in_script["GIT_ALLOW_PROTOCOL"] == "https:ssh"

        monkeypatch.setenv("LC_ALL", "C.UTF-8")  # pploy's own locale reaches the script
        job = await pploy.wait_job(await pploy.deploy(name))
        assert shown(await pploy.log(job["id"]))["LC_ALL"] == "C.UTF-8"
    finally:
        await pploy.close()


async def test_refs_with_revision_suffixes(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    first = git("rev-parse", "HEAD", cwd=tmp_path / "testploy-src").strip()
    second = push_commit(remote, "second", {"a.txt": "2\n"})
    third = push_commit(remote, "third", {"a.txt": "3\n"})
    pploy = await start_pploy(tmp_path / "w")
    clone = tmp_path / "w/projects/testploy"
    try:
        name = await pploy.add_project(remote)
        await pploy.gain(name)
        for ref, sha in (("origin/main~1", second), ("main~2", first), ("main", third),
                         ("HEAD^", second), ("HEAD~1", first)):  # fmt: skip
            job = await pploy.wait_job(await pploy.checkout(name, ref))
            assert job["status"] == "succeeded", (ref, await pploy.log(job["id"]))
            assert git("rev-parse", "HEAD", cwd=clone).strip() == sha, ref
        for ref in ("-c~1", "--upload-pack=x^", "~1", "main~x"):
            status, body = await pploy.api(
                "POST", f"/api/projects/{name}/checkout", json={"ref": ref}
            )
            assert status == 400 and "invalid ref" in body["error"], (ref, body)
    finally:
        await pploy.close()


async def test_latest_deploy_log_link(tmp_path: Path) -> None:
    pploy = await start_pploy(tmp_path / "w")
    link = tmp_path / "w/logs/testploy.log"
    try:
        name = await pploy.add_project(make_remote(tmp_path))
        await pploy.gain(name)
        first = await pploy.deploy(name)
        await pploy.wait_job(first)
        assert link.is_symlink() and os.readlink(link) == f"testploy/{first}.log"
        second = await pploy.deploy(name, "production")
        await pploy.wait_job(second)
        await pploy.wait_job(await pploy.checkout(name))  # a checkout is not a deploy
        assert os.readlink(link) == f"testploy/{second}.log"
        assert link.read_bytes() == await pploy.log(second)
        assert b"deployed production" in link.read_bytes()
    finally:
        await pploy.close()
