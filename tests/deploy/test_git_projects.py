"""git.py and projects.py against real repositories made with git in temporary directories."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path

import pytest

from pploy.deploy.config import GitConfig
from pploy.deploy.domain import git
from pploy.deploy.domain.errors import BadRequest, Conflict, NotFound
from pploy.deploy.domain.projects import DEFAULT_ENVS, Project, Projects

BASE_ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,  # no signing, hooks or aliases from whoever runs the tests
    "GIT_COMMITTER_NAME": "Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.com",
}


def sh_git(*args: str, cwd: Path, **env: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env={**BASE_ENV, **env}, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return result.stdout.strip()


def commit(work: Path, message: str, author: str, email: str, date: str) -> str:
    sh_git(
        "commit", "-q", "-m", message, cwd=work,
        GIT_AUTHOR_NAME=author, GIT_AUTHOR_EMAIL=email, GIT_AUTHOR_DATE=date,
        GIT_COMMITTER_DATE=date,
    )  # fmt: skip
    return sh_git("rev-parse", "HEAD", cwd=work)


class Remote:
    """A bare repository with a small history: the thing users add to pploy."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "testploy.git"
        self.url = self.bare.as_uri()  # file://…: shallow clones really are shallow
        work = root / "work"
        sh_git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        sh_git("init", "-q", "-b", "main", str(work), cwd=root)

        (work / ".deploy" / "bin").mkdir(parents=True)
        (work / ".deploy" / "config").mkdir()
        deploy = work / ".deploy" / "bin" / "deploy"
        deploy.write_text("#!/bin/sh\necho deploying $DEPLOY_ENV\n")
        deploy.chmod(0o755)
        (work / ".deploy" / "config" / "deploy_envs").write_text("staging\nproduction\n")
        (work / "README.md").write_text("# testploy\n")
        sh_git("add", "-A", cwd=work)
        self.c1 = commit(work, "Initial commit", "Alice", "alice@example.com",
                         "2024-01-02T03:04:05+09:00")  # fmt: skip

        (work / "app.py").write_text("print('hi')\n")
        (work / "docs").mkdir()
        (work / "docs" / "guide.md").write_text("A guide long enough to be seen as renamed.\n" * 5)
        (work / "README.md").write_text("# testploy\n\nMore.\n")
        sh_git("add", "-A", cwd=work)
        self.c2 = commit(
            work, "Add app and docs\n\nLonger explanation.\n\nSecond paragraph.",
            "Ümit Yılmaz", "umit@example.com", "2024-01-03T00:00:00+00:00",
        )  # fmt: skip
        sh_git("tag", "v1.0", cwd=work)

        sh_git("checkout", "-q", "-b", "feature", cwd=work)
        (work / "feature.txt").write_text("feature\n")
        sh_git("add", "-A", cwd=work)
        self.c3 = commit(work, "Feature work", "Bob", "bob@example.com",
                         "2024-01-04T00:00:00+00:00")  # fmt: skip

        sh_git("checkout", "-q", "main", cwd=work)
        sh_git("mv", "docs/guide.md", "docs/manual.md", cwd=work)
        sh_git("rm", "-q", "app.py", cwd=work)
        (work / "日本語.txt").write_text("こんにちは\n")
        sh_git("add", "-A", cwd=work)
        self.c4 = commit(work, "Rename the guide, drop app.py", "Alice", "alice@example.com",
                         "2024-01-05T00:00:00+00:00")  # fmt: skip
        sh_git(
            "merge", "-q", "--no-ff", "feature", "-m", "Merge branch 'feature'", cwd=work,
            GIT_AUTHOR_NAME="Carol", GIT_AUTHOR_EMAIL="carol@example.com",
            GIT_AUTHOR_DATE="2024-01-06T00:00:00+00:00",
            GIT_COMMITTER_DATE="2024-01-06T00:00:00+00:00",
        )  # fmt: skip
        self.merge = sh_git("rev-parse", "HEAD", cwd=work)
        sh_git("tag", "-a", "v2.0", "-m", "Release 2.0", cwd=work)
        sh_git("remote", "add", "origin", str(self.bare), cwd=work)
        sh_git("push", "-q", "origin", "main", "feature", "--tags", cwd=work)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Remote:
    return Remote(tmp_path_factory.mktemp("remote"))


@pytest.fixture
def projects(tmp_path: Path) -> Projects:
    return Projects(tmp_path / "work", git_config=GitConfig())


@pytest.fixture(scope="module")
def cloned(remote: Remote, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """One clone shared by the read-only tests."""
    root = tmp_path_factory.mktemp("shared")
    return asyncio.run(Projects(root, git_config=GitConfig()).clone(remote.url))


def contents(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# -- clone ---------------------------------------------------------------------------------------


async def test_clone_names_the_project_after_the_url(remote: Remote, projects: Projects):
    project = await projects.clone(remote.url)
    assert project.name == "testploy"
    assert project.path == projects.root / "testploy"
    assert (project.path / ".deploy" / "bin" / "deploy").is_file()
    assert await git.head_sha(str(project.path)) == remote.merge
    assert [p.name for p in projects.list()] == ["testploy"]
    assert projects.get("testploy") == project
    assert contents(projects.root) == ["testploy"]  # no staging directory left behind


async def test_clone_is_shallow_and_sees_every_branch(remote: Remote, tmp_path: Path) -> None:
    projects = Projects(tmp_path, git_config=GitConfig(depth=1))
    project = await projects.clone(remote.url)
    path = project.path
    assert (path / ".git" / "shallow").is_file()
    assert sh_git("rev-list", "--count", "HEAD", cwd=path) == "1"
    branches = sh_git("branch", "-r", "--format=%(refname:short)", cwd=path).split()
    assert {"origin/main", "origin/feature"} <= set(branches)
    assert sh_git("rev-parse", "origin/feature", cwd=path) == remote.c3


async def test_clone_can_be_full(remote: Remote, tmp_path: Path) -> None:
    projects = Projects(tmp_path, git_config=GitConfig(shallow=False))
    project = await projects.clone(remote.url)
    assert not (project.path / ".git" / "shallow").exists()
    assert sh_git("rev-list", "--count", "--all", cwd=project.path) == "5"


async def test_clone_by_absolute_path(remote: Remote, projects: Projects) -> None:
    project = await projects.clone(str(remote.bare))
    assert project.name == "testploy"
    assert await git.head_sha(str(project.path)) == remote.merge


async def test_a_duplicate_is_refused(remote: Remote, projects: Projects) -> None:
    project = await projects.clone(remote.url)
    marker = project.path / "local-marker"
    marker.write_text("still here")
    with pytest.raises(Conflict, match="testploy") as info:
        await projects.clone(str(remote.bare))  # same name from another spelling of the URL
    assert info.value.status == 409
    assert marker.read_text() == "still here"
    assert contents(projects.root) == ["testploy"]


async def test_two_clones_of_one_name_at_once_make_one_project(
    remote: Remote, projects: Projects
) -> None:
    results = await asyncio.gather(
        projects.clone(remote.url), projects.clone(str(remote.bare)), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "Project"]
    assert contents(projects.root) == ["testploy"]


@pytest.mark.parametrize(
    "url",
    [
        "--upload-pack=touch {marker}",
        "-oProxyCommand=touch {marker}",
        "ext::sh -c touch% {marker}",
        "ext::sh -c 'touch {marker}'",
        "fd::3",
        "relative/repo.git",
        "{bare}/..",
        "/.git",  # names nothing (``{bare_parent}/.git`` is named after its folder now)
        "file:///",
        "git@-oProxyCommand=touch:{marker}",
        " {bare}",
        "{bare}\n--upload-pack=touch {marker}",
        "",
    ],
)
async def test_bad_urls_are_refused_before_git_runs(
    remote: Remote, projects: Projects, tmp_path: Path, url: str
) -> None:
    marker = tmp_path / "pwned"
    url = url.format(marker=marker, bare=remote.bare, bare_parent=remote.bare.parent)
    before = contents(projects.root)
    with pytest.raises(BadRequest) as info:
        await projects.clone(url)
    assert info.value.status == 400
    assert contents(projects.root) == before == []
    assert not marker.exists()
    assert "git clone failed" not in info.value.message  # refused by us, not by git


async def test_a_failing_clone_leaves_nothing_behind(projects: Projects, tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="git clone failed"):
        await projects.clone(str(tmp_path / "no-such-repo.git"))
    assert contents(projects.root) == []
    with pytest.raises(NotFound):
        projects.get("no-such-repo")


async def test_git_itself_refuses_remote_helpers(tmp_path: Path) -> None:
    """Defence in depth: even a URL that slipped past names.py cannot run a command."""
    marker = tmp_path / "pwned"
    with pytest.raises(git.GitError):
        await git.run_git("ls-remote", f"ext::sh -c touch% {marker}", cwd=str(tmp_path))
    assert not marker.exists()


async def test_remove_deletes_the_clone_and_keeps_its_logs(
    remote: Remote, projects: Projects
) -> None:
    await projects.clone(remote.url)
    logs = projects.log_dir("testploy")
    logs.mkdir()
    (logs / "1.log").write_text("output")
    await projects.remove("testploy", "alice")
    assert contents(projects.root) == [] and (logs / "1.log").read_text() == "output"
    with pytest.raises(NotFound):
        projects.get("testploy")
    with pytest.raises(NotFound):
        await projects.remove("testploy", "alice")


@pytest.mark.parametrize("name", ["../work", "..", ".git", "a/b", "", "-x", "projects"])
def test_get_refuses_names_that_are_not_projects(projects: Projects, name: str) -> None:
    with pytest.raises(NotFound):
        projects.get(name)


def test_list_ignores_what_is_not_a_project(projects: Projects) -> None:
    (projects.root / "plain-dir").mkdir()
    (projects.root / ".clone-123" / ".git").mkdir(parents=True)
    (projects.root / "stray-file").write_text("x")
    (projects.root / "ok" / ".git").mkdir(parents=True)
    assert [p.name for p in projects.list()] == ["ok"]


# -- commits -------------------------------------------------------------------------------------


async def test_recent_commits_follow_the_first_parent(remote: Remote, cloned: Project) -> None:
    commits = await git.recent_commits(str(cloned.path), 20)
    assert [c.sha for c in commits] == [remote.merge, remote.c4, remote.c2, remote.c1]
    merge, c4, c2, c1 = commits

    assert merge.subject == "Merge branch 'feature'"
    assert (merge.author, merge.email) == ("Carol", "carol@example.com")
    assert merge.files == [("A", "feature.txt")]  # against the first parent only
    assert {"HEAD -> main", "origin/main", "origin/HEAD", "tag: v2.0"} <= set(merge.refs)

    assert c4.subject == "Rename the guide, drop app.py" and c4.body == ""
    assert sorted(c4.files) == [
        ("A", "日本語.txt"),
        ("D", "app.py"),
        ("R100", "docs/guide.md → docs/manual.md"),
    ]
    assert c4.refs == []

    assert (c2.author, c2.email) == ("Ümit Yılmaz", "umit@example.com")
    assert c2.date == "2024-01-03T00:00:00+00:00"
    assert c2.subject == "Add app and docs"
    assert c2.body == "Longer explanation.\n\nSecond paragraph."
    assert sorted(c2.files) == [("A", "app.py"), ("A", "docs/guide.md"), ("M", "README.md")]
    assert c2.refs == ["tag: v1.0"]

    assert c1.date == "2024-01-02T03:04:05+09:00"
    assert sorted(p for _, p in c1.files) == [
        ".deploy/bin/deploy", ".deploy/config/deploy_envs", "README.md",
    ]  # fmt: skip
    assert c1.short == remote.c1[:10]
    assert c1.to_json()["files"][0].keys() == {"status", "path"}


async def test_recent_commits_limit_and_revision(remote: Remote, cloned: Project) -> None:
    path = str(cloned.path)
    assert [c.sha for c in await git.recent_commits(path, 2)] == [remote.merge, remote.c4]
    feature = await git.recent_commits(path, 20, "origin/feature")
    assert [c.sha for c in feature] == [remote.c3, remote.c2, remote.c1]
    assert "origin/feature" in feature[0].refs
    between = await git.recent_commits(path, 20, f"{remote.c2}..HEAD")
    assert [c.sha for c in between] == [remote.merge, remote.c4]


async def test_recent_commits_refuse_an_option_as_revision(cloned: Project, tmp_path: Path):
    marker = tmp_path / "out"
    with pytest.raises(git.GitError):
        await git.recent_commits(str(cloned.path), 5, f"--output={marker}")
    assert not marker.exists()


def test_parse_log_skips_garbage() -> None:
    assert git.parse_log("") == []
    assert git.parse_log("no records here") == []
    assert git.parse_log(git.RECORD + "too" + git.FIELD + "few") == []


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("main", "merge"),
        ("feature", "c3"),
        ("v1.0", "c2"),
        ("v2.0", "merge"),  # an annotated tag: the commit, not the tag object
        ("HEAD", "merge"),
        ("origin/feature", "c3"),
        ("c1", "c1"),
        ("c1_short", "c1"),
        ("nope", None),
        ("0" * 40, None),
        ("--all", None),
        ("v1.0~1", "c1"),
    ],
)
async def test_resolve_commit(remote: Remote, cloned: Project, ref: str, expected: str | None):
    if ref == "c1":
        ref = remote.c1
    elif ref == "c1_short":
        ref = remote.c1[:7]
    want = getattr(remote, expected) if expected else None
    assert await git.resolve_commit(str(cloned.path), ref) == want


async def test_default_branch_and_head(remote: Remote, cloned: Project, tmp_path: Path) -> None:
    assert await git.default_branch(str(cloned.path)) == "main"
    assert await git.head_sha(str(cloned.path)) == remote.merge
    assert await git.default_branch(str(tmp_path)) is None
    assert await git.head_sha(str(tmp_path)) is None


# -- the .deploy/ contract -----------------------------------------------------------------------


@pytest.fixture
def bare_project(tmp_path: Path) -> Project:
    path = tmp_path / "app"
    (path / ".deploy" / "bin").mkdir(parents=True)
    (path / ".deploy" / "config").mkdir()
    return Project("app", path)


def write_envs(project: Project, text: str) -> None:
    (project.path / ".deploy" / "config" / "deploy_envs").write_text(text)


def test_deploy_envs_default(bare_project: Project, cloned: Project) -> None:
    assert bare_project.deploy_envs() == list(DEFAULT_ENVS) == ["staging", "production"]
    assert cloned.deploy_envs() == ["staging", "production"]


@pytest.mark.parametrize(
    ("text", "envs"),
    [
        ("qa\nstaging\nproduction\n", ["qa", "staging", "production"]),
        ("\n\n  qa  \n\n# comment\n   # indented comment\nlive\n", ["qa", "live"]),
        ("qa\r\nlive\r\n", ["qa", "live"]),
        ("qa\n../etc\n-rf\na b\n.hidden\nx/y\nlive", ["qa", "live"]),
        ("qa\nqa\nlive\nqa\n", ["qa", "live"]),
        ("\n\n# nothing but comments\n", ["staging", "production"]),
        ("../x\n-y\n", ["staging", "production"]),
        ("", ["staging", "production"]),
    ],
)
def test_deploy_envs_from_the_file(bare_project: Project, text: str, envs: list[str]) -> None:
    write_envs(bare_project, text)
    assert bare_project.deploy_envs() == envs


def test_deploy_envs_survive_binary_garbage(bare_project: Project) -> None:
    (bare_project.path / ".deploy" / "config" / "deploy_envs").write_bytes(b"\xff\xfe\x00\nqa\n")
    assert bare_project.deploy_envs() == ["qa"]


def test_deploy_problem(bare_project: Project, cloned: Project) -> None:
    assert cloned.deploy_problem() is None
    script = bare_project.deploy_script
    assert "missing" in bare_project.deploy_problem()
    script.mkdir()
    assert "not a regular file" in bare_project.deploy_problem()
    script.rmdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    assert "not executable" in bare_project.deploy_problem()
    script.chmod(0o755)
    assert bare_project.deploy_problem() is None


def test_checkout_script_only_when_executable(bare_project: Project) -> None:
    script = bare_project.path / ".deploy" / "bin" / "checkout_overwrite"
    assert bare_project.checkout_script is None
    script.write_text("#!/bin/sh\n")
    assert bare_project.checkout_script is None
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    assert bare_project.checkout_script == script


def write_readme(project: Project, html: str) -> None:
    (project.path / ".deploy" / "config" / "readme.html").write_text(html)


def test_readme_is_none_without_a_file(bare_project: Project) -> None:
    assert bare_project.readme_and_problem()[0] is None


def test_readme_keeps_markup_and_drops_scripts(bare_project: Project) -> None:
    write_readme(
        bare_project,
        """<h1>Deploying <em>testploy</em></h1>
<p>Run <code>deploy</code> after <strong>checkout</strong>.</p>
<ul><li>staging first</li><li>then production</li></ul>
<a href="https://wiki.example.com/testploy">wiki</a>
<script>alert('x')</script>
<img src="x.png" alt="diagram" onerror="alert(1)">
<a href="javascript:alert(2)">click</a>
<a href="JaVaScRiPt:alert(3)">click too</a>
<p onclick="alert(4)" style="background:url(javascript:alert(5))">para</p>
<iframe src="https://evil.example.com"></iframe>
<form action="https://evil.example.com"><input name="x"></form>
<style>body { display: none }</style>
""",
    )
    html = bare_project.readme_and_problem()[0]
    assert html is not None
    for kept in [
        "<h1>Deploying <em>testploy</em></h1>",
        "<code>deploy</code>",
        "<strong>checkout</strong>",
        "<li>staging first</li>",
        'href="https://wiki.example.com/testploy"',
        'alt="diagram"',
        ">para</p>",
    ]:
        assert kept in html, kept
    lowered = html.lower()
    for dropped in [
        "<script", "alert(", "onerror", "onclick", "javascript:", "<iframe", "<form",
        "<input", "<style", "display: none",
    ]:  # fmt: skip
        assert dropped not in lowered, dropped
    assert 'rel="noopener noreferrer nofollow"' in html


def test_readme_of_the_clone(cloned: Project) -> None:
    assert cloned.readme_and_problem()[0] is None  # the test repository has none
