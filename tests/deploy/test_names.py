"""names.py: project names, refs (cross-checked against real git) and repository URLs."""

from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pploy.deploy.domain import names
from pploy.deploy.domain.names import InvalidName

# -- project names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["testploy", "a", "my-app", "my_app", "app.v2", "A1", "9lives", "x" * 64]
)
def test_project_name_accepts_single_safe_segments(name: str) -> None:
    assert names.project_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "x/..",
        "a/b",
        "a\\b",
        ".git",
        "x.git",
        ".hidden",
        "-x",
        "_x",
        "a..b",
        "x.lock",
        "a b",
        "a\nb",
        "a\x00b",
        "ñame",
        "x" * 65,
        None,
        3,
    ],
)
def test_project_name_refuses_paths_options_and_oddities(name: object) -> None:
    with pytest.raises(InvalidName):
        names.project_name(name)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://github.com/pixiv/testploy.git", "testploy"),
        ("https://github.com/pixiv/testploy", "testploy"),
        ("https://github.com/pixiv/testploy.git/", "testploy"),
        ("https://github.com/pixiv/testploy//", "testploy"),
        ("git@github.com:pixiv/testploy.git", "testploy"),
        ("git@github.com:testploy.git", "testploy"),
        ("ssh://git@host:2222/org/app.git", "app"),
        ("file:///srv/git/app.git", "app"),
        ("/srv/git/app.git", "app"),
        ("/srv/git/app/", "app"),
    ],
)
def test_project_name_from_url(url: str, name: str) -> None:
    assert names.project_name_from_url(url) == name


@pytest.mark.parametrize(
    "url",
    [
        "https://h/.git",
        "https://h/x/..",
        "/srv/..",
        "git@h:..",
        "https://h/-x.git",
        "https://h/a%2Fb.git",
        "https://h/x.git?ref=1",
        "/srv/" + "x" * 65 + ".git",
    ],
)
def test_project_name_from_url_refuses_unsafe_tails(url: str) -> None:
    with pytest.raises(InvalidName):
        names.project_name_from_url(url)


@given(st.text(max_size=80))
@settings(max_examples=200)
def test_project_name_is_always_one_safe_segment(text: str) -> None:
    try:
        name = names.project_name(text)
    except InvalidName:
        return
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith((".", "-"))
    assert name not in (".", "..") and ".." not in name
    assert not name.endswith(".git")
    assert name.isascii() and name.isprintable() and 1 <= len(name) <= 64


# -- refs ----------------------------------------------------------------------------------------


REVISION_SUFFIX = re.compile(r"(?:[~^][0-9]{0,6})+$")


def git_accepts(ref: str) -> bool:
    """What real git says about ``ref`` as a one-level-allowed ref name, followed by revision
    suffixes (``~N``, ``^N``), which pploy accepts as the originals did (issue 14)."""
    assert not ref.startswith("-")  # git would parse it as an option
    suffix = REVISION_SUFFIX.search(ref)
    if suffix and suffix.start() > 0:
        ref = ref[: suffix.start()]
    result = subprocess.run(
        ["git", "check-ref-format", "--allow-onelevel", ref], capture_output=True, check=False
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def ours_accepts(ref: str) -> bool:
    try:
        assert names.ref_name(ref) == ref
    except InvalidName:
        return False
    return True


HAND_PICKED = [
    "main",
    "feature/x",
    "release/2024.01",
    "v1.0.0",
    "deadbeef",
    "HEAD",
    "a@b",
    "a@",
    "{",
    "日本語",
    "ブランチ/機能",
    "é",
    "a\u0080b",  # C1 control: git checks bytes, and these bytes are above 0x7f
    "a..b",
    "a@{1}",
    "@{u}",
    "@",
    "x.lock",
    "a/x.lock",
    "x.lock/a",
    ".hidden",
    "a/.b",
    "a//b",
    "/a",
    "a/",
    "a.",
    "a/.",
    "a b",
    "a~1",
    "a^",
    "origin/master~1",
    "HEAD^",
    "HEAD~2^2",
    "a~1x",
    "~1",
    "a..b~1",
    "a:b",
    "a?",
    "a*",
    "a[",
    "a\\b",
    "a\tb",
    "a\nb",
    "a\x7fb",
    "a\x01b",
    "\x1b[31m",
    ".",
    "..",
    "a.lock.b",
    "a.b",
    "a-b",
    "a/b-c",
    "a./b",
]


@pytest.mark.parametrize("ref", HAND_PICKED)
def test_ref_name_agrees_with_git_on_hand_picked_cases(ref: str) -> None:
    assert ours_accepts(ref) == git_accepts(ref), ref


@pytest.mark.parametrize(
    "ref", ["-b", "--upload-pack=x", "--upload-pack=touch /tmp/x", "-", "-x/y"]
)
def test_ref_name_refuses_anything_that_looks_like_an_option(ref: str) -> None:
    with pytest.raises(InvalidName, match="starts with '-'"):
        names.ref_name(ref)


@pytest.mark.parametrize("ref", ["", None, 5, "a" * 256])
def test_ref_name_refuses_empty_non_strings_and_very_long(ref: object) -> None:
    with pytest.raises(InvalidName):
        names.ref_name(ref)  # type: ignore[arg-type]


def test_ref_name_error_message_quotes_the_ref_and_reason() -> None:
    with pytest.raises(InvalidName) as info:
        names.ref_name("a..b")
    assert "'a..b'" in str(info.value) and ".." in str(info.value)


# Characters that matter to git's rules, plus a little of everything else (no NUL: argv cannot
# carry it, and no surrogates: they cannot be encoded).
REF_ALPHABET = st.one_of(
    st.sampled_from(list("ab/.@{}-~^:?*[\\ \t\x7f\x01lock")),
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
)
REF_TEXT = st.text(REF_ALPHABET, min_size=1, max_size=24)


@given(REF_TEXT)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example("a.lock")
@example("a/b.lock/c")
@example("a@{")
@example("ab//")
def test_ref_name_never_accepts_what_git_refuses(ref: str) -> None:
    ours = ours_accepts(ref)
    if ref.startswith("-"):
        assert not ours  # the one place we are stricter than git: options are not refs
        return
    assert ours == git_accepts(ref), ref


@given(st.lists(st.sampled_from(["a", "b", ".", "/", "@", "{", "lock", "-", "x.lock"]), max_size=8))
@settings(max_examples=200, deadline=None)
def test_ref_name_agrees_with_git_on_structured_refs(parts: list[str]) -> None:
    ref = "".join(parts)
    if not ref or ref.startswith("-"):
        assert not ours_accepts(ref)
        return
    assert ours_accepts(ref) == git_accepts(ref), ref


# -- repository URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://h/x.git",
        "https://github.com/pixiv/testploy.git",
        "http://h:8080/x",
        "ssh://git@host/org/repo.git",
        "ssh://git@host:2222/org/repo.git",
        "git://host/repo.git",
        "git@host:org/repo.git",
        "deploy.bot@git.example.com:org/repo.git",
        "file:///x",
        "file:///srv/git/app.git",
        "/abs/path",
        "/abs/path/repo.git",
    ],
)
def test_repository_url_accepts_ordinary_remotes(url: str) -> None:
    assert names.repository_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "--upload-pack=touch /tmp/pwned",
        "--upload-pack=x",
        "-oProxyCommand=touch /tmp/pwned",
        "-u",
        "ext::sh -c touch% /tmp/pwned",
        "ext::sh -c 'touch /tmp/pwned'",
        "fd::3",
        "fd::3/x",
        "EXT::sh",
        "ssh://-oProxyCommand=touch%20x/repo",
        "ssh://git@-oProxyCommand=x/repo",
        "git@-oProxyCommand:repo",
        "ftp://h/x.git",
        "javascript:alert(1)",
        "https:///x.git",
        "relative/path",
        "repo.git",
        "./repo",
        "../repo",
        " https://h/x.git",
        "https://h/x.git ",
        "https://h/x.git\n",
        "https://h/x\n.git",
        "https://h/x\x00.git",
        "https://h/x\t.git",
        "https://h/x\r.git",
        "/abs/path\x1b[2J",
        "/abs/path\x7f",
        None,
    ],
)
def test_repository_url_refuses_options_helpers_and_oddities(url: object) -> None:
    with pytest.raises(InvalidName):
        names.repository_url(url)  # type: ignore[arg-type]


@given(st.text(max_size=60))
@settings(max_examples=200)
def test_accepted_urls_are_never_options_or_remote_helpers(text: str) -> None:
    try:
        url = names.repository_url(text)
    except InvalidName:
        return
    assert not url.startswith("-")
    assert url == url.strip()
    assert all(ord(c) >= 0x20 and ord(c) != 0x7F for c in url)
    assert "::" not in url.split("/", 1)[0]


# -- users and envs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["alice", "bob.smith", "carol@example.com", "d+e", "E_1", "Taro Yamada", "山田", "O'Brien"],
)
def test_user_name_accepts(name: str) -> None:
    assert names.user_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-alice", " a", "a ", "a  b", "a\tb", "a\u00a0b", "a\u3000b", "a\u202eb", "a\u200bb",
     "a\u2028b", "a/b", "<script>", 'a"b', "a\\b", "a\nb", "a\x00b", "a\x7fb", "x" * 65],
)  # fmt: skip
def test_user_name_refuses(name: str) -> None:
    with pytest.raises(InvalidName):
        names.user_name(name)


@pytest.mark.parametrize("name", ["staging", "production", "qa-1", "eu.west_2"])
def test_env_name_accepts(name: str) -> None:
    assert names.env_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "../x", "a b", "a/b", ".hidden", "a;rm -rf /"])
def test_env_name_refuses(name: str) -> None:
    with pytest.raises(InvalidName):
        names.env_name(name)


# -- git.allowed_urls ----------------------------------------------------------------------------

ALLOWED = "https://git.example.com/team/"


def _normalised_path(url: str) -> str:
    """The path a server is asked for after RFC 3986 dot-segment removal, as curl does it."""
    from urllib.parse import unquote, urlsplit

    out: list[str] = []
    for segment in unquote(urlsplit(url).path).replace("\\", "/").split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    return "/".join(out)


@given(
    st.lists(st.sampled_from(["a", "b.git", ".", "..", "%2e%2E", "%2E", "x\\..", ""]), max_size=6)
)
@settings(max_examples=400)
def test_an_allowed_url_stays_under_its_pattern_after_normalisation(segments: list[str]) -> None:
    url = ALLOWED + "/".join(segments)
    if names.url_allowed(url, [ALLOWED + "*"]):
        assert _normalised_path(url).startswith("/team/"), url


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://git.example.com/team/app.git", True),
        ("https://git.example.com/team/sub/app.git", True),  # `*` crosses `/`
        ("https://git.example.com/team/a..b.git", True),  # dots inside a name are fine
        ("https://git.example.com/teamx/app.git", False),
        ("https://git.example.com/Team/app.git", False),  # case-sensitive
        ("https://git.example.com.evil.net/team/app.git", False),
        ("https://evil.net/https://git.example.com/team/x", False),
        ("https://git.example.com/team/../admin/app.git", False),
        ("https://git.example.com/team/./app.git", False),
        ("https://git.example.com/team/%2e%2e/admin", False),
        ("https://git.example.com/team/..\\admin", False),
        ("git@git.example.com:team/app.git", True),
        ("git@git.example.com:../etc/app.git", False),
        ("/srv/git/app.git", True),
        ("/srv/git/../../etc/app.git", False),
        ("file:///srv/git/app.git", False),  # file:// is not the same text as /srv/git
    ],
)
def test_allowed_urls_patterns(url: str, allowed: bool) -> None:
    patterns = [ALLOWED + "*", "git@git.example.com:team/*", "/srv/git/*"]
    assert names.url_allowed(url, patterns) is allowed
    assert names.url_allowed(url, ["*"]) is True  # the default allows any URL
    assert names.url_allowed(url, []) is False


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://h/org/app/.git", "app"),
        ("/srv/app/.git/", "app"),
        ("file:///srv/app/.git", "app"),
        ("git@h:org/app/.git", "app"),
    ],
)
def test_a_dot_git_folder_is_named_after_its_parent(url: str, name: str) -> None:
    """Issue 15: ``…/app/.git`` (a working tree's repository) is the project ``app``."""
    assert names.project_name_from_url(url) == name
