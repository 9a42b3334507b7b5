"""LoopStats: ring buffer of per-frame figures, percentiles, report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from framealloc import LoopStats


@given(times=st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=200),
       history=st.integers(1, 64))
def test_keeps_the_last_history_frames_oldest_first(times: list[float], history: int) -> None:
    stats = LoopStats(history)
    for i, t in enumerate(times):
        stats.record(t, nbytes=i, allocations=2 * i, updates=1)
    kept = times[-history:]
    assert list(stats.series("frame_time")) == kept
    assert list(stats.series("bytes")) == list(range(len(times)))[-history:]
    assert stats.frames == len(times) and stats.updates == len(times)
    assert stats.high_water == len(times) - 1
    assert stats.percentile(99) == pytest.approx(float(np.percentile(kept, 99)))


def test_summary_in_milliseconds_and_report() -> None:
    stats = LoopStats(10)
    for t in (0.001, 0.002, 0.003, 0.004):
        stats.record(t, 100, 3, 1)
    stats.dropped_updates = 2
    stats.finish()
    s = stats.summary()
    assert s["frame_ms_p50"] == pytest.approx(2.5)
    assert s["frame_ms_max"] == pytest.approx(4.0)
    assert s["bytes_per_frame"] == 100 and s["allocations_per_frame"] == 3
    assert s["dropped_updates"] == 2
    lines = stats.report().splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert any(line.split() == ["frame_ms_p50", "2.500"] for line in lines)


def test_empty_stats_give_nan_not_errors() -> None:
    stats = LoopStats()
    assert math.isnan(stats.percentile(50))
    assert math.isnan(stats.summary()["frame_ms_p99"])
    assert "frames" in stats.report()


def test_history_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LoopStats(0)
