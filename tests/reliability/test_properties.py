"""Property-based tests (hypothesis) for what users and config files hand pploy and gate: the
project-name, ref and URL validators, both redirect validators and gate's config loader. The
properties are the security ones: whatever is accepted is one safe path segment, never an
option to git, never a way off-site; whatever is refused is refused with the validator's own
error, never a crash. (pploy's config loader has its own fuzz tests in tests/deploy.)"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pploy.deploy.domain import names
from pploy.deploy.web.pages import safe_next
from pploy.gate.config import ConfigError, load_config, parse_config
from pploy.redirects import safe_return_path

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text biased towards the characters that matter here.
TRICKY = st.text(
    alphabet=st.sampled_from(list("/\\.-_:@?#%&=~^[]* \t\n\r\x00\x7fab09AZ") + ["é", "\u2028"]),
    max_size=40,
)
ANY_TEXT = st.one_of(TRICKY, st.text(max_size=60))


@FAST
@given(ANY_TEXT)
def test_an_accepted_project_name_is_one_safe_path_segment(name):
    try:
        names.project_name(name)
    except names.InvalidName:
        return
    base = Path("/srv/pploy/projects")
    assert (base / name).parent == base
    assert posixpath.normpath(f"/srv/pploy/projects/{name}") == f"/srv/pploy/projects/{name}"
    assert not name.startswith((".", "-")) and "/" not in name and "\\" not in name
    assert not name.endswith(".git") and name.isascii()


@FAST
@given(ANY_TEXT)
def test_a_project_name_from_any_url_is_safe_or_refused(url):
    try:
        name = names.project_name_from_url(url)
    except names.InvalidName:
        return
    assert names.project_name(name) == name


@FAST
@given(ANY_TEXT)
def test_an_accepted_ref_is_never_an_option_nor_a_revision_expression(ref):
    try:
        names.ref_name(ref)
    except names.InvalidName as exc:
        assert repr(ref)[:20].strip("'\"")[:5] in str(exc) or len(ref) > 255 or not ref
        return
    assert not ref.startswith("-")
    # Revision suffixes (`~N`, `^N`) are allowed at the end only, as go-pploy allowed them.
    base = re.sub(r"(?:[~^][0-9]*)+$", "", ref)
    assert ".." not in ref and "@{" not in ref and not any(c in base for c in " ~^:?*[\\")
    assert all(ord(c) >= 0x20 and ord(c) != 0x7F for c in ref)


@FAST
@given(ANY_TEXT)
def test_an_accepted_repository_url_is_never_an_option_nor_a_remote_helper(url):
    try:
        names.repository_url(url)
    except names.InvalidName:
        return
    assert not url.startswith("-") and url == url.strip()
    assert "::" not in url.split("/", 1)[0]
    if "://" in url:
        assert urlsplit(url).scheme.lower() in {"https", "http", "ssh", "git", "file"}


def stays_on_site(target: str) -> bool:
    for base in ("https://pploy.example/", "https://pploy.example/a/b"):
        joined = urlsplit(urljoin(base, target))
        if joined.netloc != "pploy.example" or joined.scheme != "https":
            return False
    # Browsers also read a backslash as a slash and drop tabs and newlines in URLs.
    cleaned = target.replace("\\", "/")
    for c in "\t\n\r":
        cleaned = cleaned.replace(c, "")
    return urlsplit(urljoin("https://pploy.example/", cleaned)).netloc == "pploy.example"


@FAST
@given(st.one_of(ANY_TEXT, st.builds(lambda s: "/" + s, ANY_TEXT)))
def test_redirect_targets_never_leave_the_site(target):
    for validator in (safe_return_path, safe_next):
        result = validator(target)
        assert isinstance(result, str) and result.startswith("/"), (validator, result)
        assert stays_on_site(result), (validator.__name__, target, result)


@FAST
@given(st.one_of(st.integers(), st.none(), st.lists(st.text(max_size=5)), st.binary(max_size=20)))
def test_redirect_validators_take_any_type(value):
    assert safe_return_path(value).startswith("/")
    assert safe_next(value) == "/"


YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
              st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(
            ["address", "auth", "session", "key", "info", "service", "proxy", "path", "dest",
             "htdocs", "restrictions", "paths", "login", "upstream", "idle_timeout", "ssl",
             "cert", "metrics", "access_log", "format", "client_id", "issuer", "x"]),
            children, max_size=5),
    ),
    max_leaves=20,
)  # fmt: skip


@FAST
@given(YAML_VALUES)
def test_gate_config_loader_raises_only_config_errors(data):
    try:
        parse_config(data, Path("/nonexistent"))
    except ConfigError as exc:
        assert str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                 YAML_VALUES.map(lambda v: yaml.safe_dump(v).encode())))  # fmt: skip
def test_gate_config_files_of_any_bytes_raise_only_config_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("gatecfg") / "config.yml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc)
