"""Issue 15: the per-line timestamps kept beside a job's log (``<job>.times``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pploy.deploy.jobs import timeline
from pploy.deploy.jobs.timeline import TimelineWriter, line_times, times_path


def write_log(tmp_path: Path, pieces: list[tuple[bytes, float]]) -> Path:
    """A log made of ``pieces`` with a real writer noting each one's arrival."""
    log_path = tmp_path / "7.log"
    writer = TimelineWriter(times_path(log_path))
    data = b""
    for piece, when in pieces:
        writer.note(len(data), when)
        data += piece
    writer.close()
    log_path.write_bytes(data)
    return log_path


@pytest.mark.parametrize("chunk", [timeline.CHUNK, 3])  # entries across read boundaries too
def test_lines_get_the_time_their_output_arrived(
    tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timeline, "CHUNK", chunk)
    log_path = write_log(
        tmp_path,
        [(b"a\nb\n", 100.0), (b"c", 101.0), (b"c\nd\n", 102.5), (b"e\n", 102.55)],
    )
    assert log_path.read_bytes() == b"a\nb\ncc\nd\ne\n"  # the log's bytes are untouched
    # "cc" began at 101.0, "d" at 102.5 (in the piece "c\nd\n"); 102.55 came within MIN_GAP
    # of 102.5, so "e" is not told apart from "d".
    assert line_times(log_path) == [(1, 100.0), (3, 101.0), (4, 102.5)]


def test_no_sidecar_no_times_and_torn_lines_skipped(tmp_path: Path) -> None:
    log_path = tmp_path / "1.log"
    log_path.write_bytes(b"x\ny\n")
    assert line_times(log_path) == []
    times_path(log_path).write_bytes(b"0 5.0\nnot a line\n2 6.5\n4 7")
    assert line_times(log_path) == [(1, 5.0), (2, 6.5), (3, 7.0)]  # 4 = at the end: line 3
