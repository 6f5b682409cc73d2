"""The test suite's own rules: a missing dependency skips locally and fails in CI."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers import require_binary, skip_or_fail


def outcome(call: Callable[[], object]) -> BaseException | None:
    """What ``call`` raised (skip and fail are BaseExceptions, so catch those too)."""
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the exception is the result under test
        return exc
    return None


def test_missing_dependency_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PPLOY_REQUIRE_ALL", raising=False)
    raised = outcome(lambda: skip_or_fail("no frobnicator"))
    assert isinstance(raised, pytest.skip.Exception), raised
    assert "no frobnicator" in str(raised)


def test_missing_dependency_fails_under_require_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPLOY_REQUIRE_ALL", "1")
    raised = outcome(lambda: skip_or_fail("no frobnicator"))
    assert isinstance(raised, pytest.fail.Exception), raised
    assert "no frobnicator" in str(raised) and "PPLOY_REQUIRE_ALL=1" in str(raised)


def test_require_binary_finds_or_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPLOY_REQUIRE_ALL", "1")
    assert require_binary("sh").endswith("/sh")
    raised = outcome(lambda: require_binary("pploy-no-such-binary"))
    assert isinstance(raised, pytest.fail.Exception), raised
    assert "pploy-no-such-binary is not installed" in str(raised)
