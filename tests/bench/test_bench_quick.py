"""`python -m bench run --quick` keeps working: every benchmark runs (tiny sizes) and reports
numbers. Nothing here is about speed."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import BENCHMARKS
from tests.helpers import require_binary

pytestmark = pytest.mark.slow  # every benchmark

REPO = Path(__file__).resolve().parents[2]


def has_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return math.isfinite(value)
    return isinstance(value, str) and re.search(r"\d", value) is not None


@pytest.mark.timeout(600)
def test_quick_run_reports_every_benchmark(tmp_path: Path) -> None:
    for binary in ("nginx", "wrk", "curl", "script"):
        require_binary(binary)
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--quick", "--json", str(out_json),
         "--markdown", str(out_md)],
        cwd=REPO, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out_json.read_text())
    assert results["quick"] is True
    machine = results["machine"]
    for key in ("cores", "memory_gib", "python", "aiohttp", "nginx", "event_loop"):
        assert machine[key], key
    assert set(results["benchmarks"]) == set(BENCHMARKS)
    for name, result in results["benchmarks"].items():
        assert result["ok"], (name, result.get("error"))
        if name == "profile" and result.get("skipped"):
            # The profile needs py-spy, a developer's tool that is not a test dependency.
            assert shutil.which("py-spy") is None and "py-spy" in result["note"]
            continue
        assert result["rows"], name
        for row in result["rows"]:
            assert has_number(row["value"]), (name, row)
            if row.get("baseline") is not None:
                assert has_number(row["baseline"]), (name, row)
    # The byte-exact log and the every-line checks hold even at tiny sizes.
    throughput = results["benchmarks"]["throughput"]["commands"]
    assert all(c["log_byte_exact"] for c in throughput.values())
    fanout = results["benchmarks"]["fanout"]
    for phase in ("direct", "gate"):
        assert fanout[phase]["viewers_with_every_line"] == fanout[phase]["viewers"]
    latency = results["benchmarks"]["latency"]["paths"]
    short = {
        k: p["runs"] for k, p in latency.items() if p["lines_received_min"] != p["lines_expected"]
    }
    assert short == {}
    text = out_md.read_text()
    for title in ("Line latency", "Throughput", "Fan-out", "Proxy overhead", "WebSocket"):
        assert title in text


def test_the_storage_benchmark_reports_pploy_s_store_beside_sqlite3(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python -m bench.storage --quick``: the baseline and pploy's read, as JSON; SQLAlchemy
    measured or the reason it was not."""
    from bench import storage

    assert storage.main(["--quick"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["calls"] == 1000
    assert result["sqlite3_us"] > 0 and result["pploy_store_us"] > 0
    ratio = result["pploy_store_us"] / result["sqlite3_us"]
    assert abs(result["pploy_store_ratio"] - ratio) < 0.05
    assert isinstance(result["sqlalchemy"], dict | str)
