"""The test suite's own rules: a missing dependency skips locally and fails in CI; a job
runner left by a test does not outlive the session."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

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


def test_the_session_finds_the_runners_of_its_own_jobs_only(tmp_path: Path) -> None:
    """What the session's clean-up kills (tests/conftest.py): a process whose argv is a job
    runner's with a spec under the session's directory, no other."""
    import subprocess

    from tests.conftest import runners_under

    sleep = [sys.executable, "-c", "import time; time.sleep(60)", "_run-job"]
    ours = subprocess.Popen([*sleep, str(tmp_path / "run" / "job-1.json"), "3"])
    other = subprocess.Popen([*sleep, "/elsewhere/run/job-1.json", "3"])
    try:
        deadline = time.monotonic() + 10
        while not (found := runners_under(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.01)  # until the child has exec'd
        assert found == [ours.pid]
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()
