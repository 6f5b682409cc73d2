import os
import shutil

import pytest

# CI sets PPLOY_REQUIRE_ALL=1: a test that would skip for a missing binary fails instead.
REQUIRE_ALL = os.environ.get("PPLOY_REQUIRE_ALL") == "1"


def require_binary(name: str) -> str:
    """Return the path of ``name`` or skip the test (fail under PPLOY_REQUIRE_ALL=1)."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed"
    if REQUIRE_ALL:
        pytest.fail(message + " (PPLOY_REQUIRE_ALL=1 turns this skip into a failure)")
    pytest.skip(message)
