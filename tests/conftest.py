import logging
import sys
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
