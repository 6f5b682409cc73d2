"""i18n.py: Accept-Language negotiation and the translation tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pploy.deploy.web.i18n import JA, LANGUAGES, negotiate, translator


@pytest.mark.parametrize(
    ("header", "language"),
    [
        ("ja;q=0.9,en;q=0.8", "ja"),
        ("en-US,ja;q=0.5", "en"),
        ("ja", "ja"),
        ("ja-JP", "ja"),
        ("JA-jp", "ja"),
        ("en", "en"),
        ("en-GB,en;q=0.9", "en"),
        ("fr-FR,fr;q=0.9,ja;q=0.5", "ja"),  # the first language we have
        ("fr, ja;q=0.1", "ja"),
        ("en;q=0.1,ja;q=0.2", "ja"),
        ("en;q=0.5,ja;q=0.5", "en"),  # a tie goes to the earlier one
        ("ja;q=0.5,en;q=0.5", "ja"),
        ("ja ; q=0.9 , en ; q=0.8", "ja"),
        ("ja;q=0", "en"),  # q=0 means "not this one"
        ("en;q=0,ja;q=0", "en"),
        ("*", "en"),
        ("jav", "en"),  # Javanese is not Japanese
        ("ja;q=abc,en;q=0.1", "en"),  # an unreadable q counts as 0
        ("", "en"),
        (None, "en"),
        ("garbage", "en"),
        (";;;,,,==", "en"),
        ("\x00\xff☃", "en"),
        ("q=1;ja", "en"),
    ],
)
def test_negotiate(header: str | None, language: str) -> None:
    assert negotiate(header) == language


@given(st.text(max_size=60))
@settings(max_examples=200)
def test_negotiate_always_answers_a_language_we_have(header: str) -> None:
    assert negotiate(header) in LANGUAGES


def test_translator() -> None:
    ja, en = translator("ja"), translator("en")
    assert ja("Deploy") == "デプロイ"
    assert ja("Release") == "解放"
    assert en("Deploy") == "Deploy"
    assert ja("a string nobody translated") == "a string nobody translated"
    assert translator("xx")("Deploy") == "Deploy"


def test_every_string_the_templates_translate_has_japanese() -> None:
    templates = Path(__file__).resolve().parents[2] / "src/pploy/deploy/web/templates"
    text = "\n".join(p.read_text() for p in templates.glob("*.html"))
    used = set(re.findall(r"""\b_\(\s*(?:"([^"]+)"|'([^']+)')\s*\)""", text))
    strings = {a or b for a, b in used}
    assert len(strings) > 30  # the pattern still finds the templates' strings
    missing = sorted(s for s in strings if s not in JA)
    assert missing == [], missing


def test_every_job_status_has_japanese() -> None:
    from pploy.deploy.domain.records import FINAL_STATUSES

    for status in ("running", *FINAL_STATUSES):
        assert translator("ja")(status) != status, status


def test_translations_keep_placeholders() -> None:
    for key, value in JA.items():
        assert re.findall(r"\{\w*\}", key) == re.findall(r"\{\w*\}", value), key
