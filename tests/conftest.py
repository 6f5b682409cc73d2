import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Let tests import `tests.helpers` whatever the rootdir.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@pytest.fixture(autouse=True)
def _fresh_pploy_logger():
    """A test that runs a CLI in-process calls pploy.log.setup(), which stops propagation;
    put the logger back afterwards so the next test's caplog sees pploy's events."""
    logger = logging.getLogger("pploy")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


def runners_under(base: Path) -> list[int]:
    """Job runners (``pploy _run-job SPEC``) whose job spec lies under ``base``."""
    prefix = str(base).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # ended meanwhile
        if b"_run-job" in argv and any(arg.startswith(prefix) for arg in argv):
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def _no_runner_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Job runners outlive ``pploy serve`` by design (docs/reliability.md); a test that stops
    its pploy while a job still runs (a script waiting on a fifo, say) would leave its runner
    behind for good. At the end of the session (of each xdist worker) every runner of a job
    under this session's temporary directories is killed — its script dies with it
    (PR_SET_PDEATHSIG) — and named on stderr, so a test run leaves no process behind."""
    yield
    for pid in runners_under(tmp_path_factory.getbasetemp()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        sys.__stderr__.write(f"\nkilled job runner {pid}, left running by a test\n")
