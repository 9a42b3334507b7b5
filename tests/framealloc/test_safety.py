"""Safety: leak policies at swap(), stale handles, overflow policies, error types."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from reference_cursor import CURSORS, frame_allocator

from coreallocs.errors import (
    AllocatorError,
    ArenaOverflow,
    BufferStillExported,
    StaleHandle,
)
from framealloc import (
    FrameLeakError,
    FrameLeakWarning,
    FrameOverflow,
    StaleFrameError,
)


@pytest.fixture(params=CURSORS)
def cursor(request: pytest.FixtureRequest) -> str:
    return request.param


def test_error_hierarchy() -> None:
    assert issubclass(StaleFrameError, StaleHandle)
    assert issubclass(FrameLeakError, BufferStillExported)
    assert issubclass(FrameLeakError, BufferError)
    assert issubclass(FrameOverflow, ArenaOverflow)
    assert issubclass(FrameOverflow, MemoryError)
    for err in (StaleFrameError, FrameLeakError, FrameOverflow):
        assert issubclass(err, AllocatorError)


# -- strict ---------------------------------------------------------------------------
def test_strict_refuses_to_reset_under_a_live_array_and_changes_nothing(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16)
    kept = fa.array(50)
    kept[:] = 42.0
    fa.array(3)
    fa.swap()
    current = fa.array(5)
    current[:] = 1.0
    with pytest.raises(FrameLeakError) as info:
        fa.swap()
    err = info.value
    assert err.frame == 0
    assert len(err.leaks) == 1
    assert "arrays #0..#1 of frame 0" in str(err)
    assert "debug=True" in str(err)
    # nothing was reset: frame 1 goes on, frame 0's data is intact
    assert fa.frame == 1
    assert (kept == 42.0).all()
    assert (current == 1.0).all()
    more = fa.array(5)
    assert not np.shares_memory(more, current)
    del kept
    assert fa.swap() == 2


@pytest.mark.parametrize("derive", [
    lambda a: a[1:],
    lambda a: a.reshape(2, -1),
    lambda a: a.T,
    lambda a: a.view(np.int64),
    lambda a: memoryview(a),
    lambda a: np.asarray(a),
    lambda a: a[::2][1:],
])
def test_strict_sees_derived_views(cursor: str, derive: object) -> None:
    fa = frame_allocator(cursor, 1 << 16)
    view = derive(fa.array(8))  # type: ignore[operator]
    fa.swap()
    with pytest.raises(FrameLeakError):
        fa.swap()
    del view
    fa.swap()


def test_strict_sees_memoryviews_of_blocks(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16)
    mv = memoryview(fa.allocate(40))
    fa.swap()
    with pytest.raises(FrameLeakError, match="block of 40 B from allocate"):
        fa.swap()
    mv.release()
    fa.swap()


def test_strict_names_big_arrays_individually(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16, chunk_size=1024)
    fa.array(4)
    big = fa.array((30, 10), np.float32)  # 1200 B > chunk_size / 2: its own block
    fa.swap()
    expected = r"array #1 of frame 0 \(float32 array of shape \(30, 10\)"
    with pytest.raises(FrameLeakError, match=expected):
        fa.swap()
    del big


def test_debug_mode_names_each_array_and_where_it_was_allocated(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16, debug=True)
    fa.array(3)
    leaked = fa.zeros((2, 5), np.int32)  # this line must appear in the error
    fa.array(7)
    fa.swap()
    with pytest.raises(FrameLeakError) as info:
        fa.swap()
    text = str(info.value)
    assert len(info.value.leaks) == 1
    assert "array #1 of frame 0 (int32 array of shape (2, 5)" in text
    assert "framealloc/test_safety.py" in text and "leaked = fa.zeros" in text
    assert "allocator.py" not in text  # our own frames are left out
    del leaked


def test_leak_list_is_capped(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 20, debug=True)
    kept = [fa.array(2) for _ in range(25)]
    fa.swap()
    with pytest.raises(FrameLeakError) as info:
        fa.swap()
    assert len(info.value.leaks) == 25
    assert "and 15 more" in str(info.value)
    del kept


# -- warn / detach -------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["warn", "detach"])
def test_detaching_policies_keep_leaked_data_intact(cursor: str, policy: str) -> None:
    fa = frame_allocator(cursor, 1 << 16, on_leak=policy)  # type: ignore[arg-type]
    leaked = fa.array(64)
    leaked[:] = np.arange(64)
    fa.swap()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fa.swap()  # frame 2 takes buffer 0 on fresh memory
    kinds = [w.category for w in caught]
    assert kinds == ([FrameLeakWarning] if policy == "warn" else [])
    if policy == "warn":
        assert "arrays #0..#0" in str(caught[0].message) or "array #0" in str(caught[0].message)
    assert fa.leaks == 1 and fa.stats.leaks == 1
    # frames 2..9 scribble over their buffers: the leaked array never sees it
    for _ in range(8):
        fresh = fa.array(64)
        fresh[:] = -7.0
        assert not np.shares_memory(fresh, leaked)
        del fresh
        fa.swap()
    assert np.array_equal(leaked, np.arange(64))
    assert fa.leaks == 1


def test_warn_points_at_the_swap_call(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16, on_leak="warn")
    kept = fa.array(1)
    fa.swap()
    with pytest.warns(FrameLeakWarning) as record:
        fa.swap()
    assert record[0].filename == __file__
    del kept


def test_detach_counts_each_leaking_swap(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16, on_leak="detach")
    kept = []
    for _ in range(6):
        kept.append(fa.array(4))
        fa.swap()
    assert fa.leaks == 5  # the swaps into frames 2..6 found frames 0..4 still referenced


def test_detached_handles_still_go_stale(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16, on_leak="detach")
    blk = fa.allocate(16)
    mv = memoryview(blk)
    fa.swap()
    fa.swap()
    assert not blk.live
    with pytest.raises(StaleFrameError):
        blk.tobytes()
    mv[0] = 1  # the view keeps the detached memory alive and valid
    assert mv[0] == 1


# -- overflow ------------------------------------------------------------------------------
def test_overflow_raises_with_the_frame_usage(cursor: str) -> None:
    fa = frame_allocator(cursor, 4096, prefault=False)
    fa.array(100)
    with pytest.raises(FrameOverflow) as info:
        fa.array(1000)
    err = info.value
    assert err.frame == 0 and err.requested == 8000 and err.capacity == 4096
    assert err.allocations == 1 and err.used >= 800
    assert "does not fit" in str(err) and "on_overflow='heap'" in str(err)
    with pytest.raises(FrameOverflow):
        fa.allocate(5000)
    assert fa.overflows == 2 and fa.heap_fallbacks == 0
    small = fa.array(10)  # the frame still serves what fits
    assert small.shape == (10,)


def test_overflow_falls_back_to_the_heap_when_configured(cursor: str) -> None:
    fa = frame_allocator(cursor, 4096, on_overflow="heap")
    a = fa.array((100, 20), np.float32, align=64)
    assert a.shape == (100, 20) and a.ctypes.data % 64 == 0
    a[:] = 2.0
    blk = fa.allocate(10_000, align=256)
    assert blk.address % 256 == 0
    assert fa.stats.heap_fallbacks == 2 and fa.stats.overflows == 2
    assert fa.stats.heap_bytes == 8000 + 10_000
    fa.swap()
    assert blk.live
    fa.swap()
    assert not blk.live  # heap-fallback handles go stale with their frame
    with pytest.raises(StaleFrameError):
        blk.tobytes()
    assert (a == 2.0).all()  # a heap array is plain numpy memory


def test_a_heap_fallback_the_system_refuses_is_not_counted_as_served(cursor: str) -> None:
    fa = frame_allocator(cursor, 4096, on_overflow="heap", prefault=False)
    with pytest.raises(MemoryError):
        fa.array(1 << 50, np.uint8)  # 1 PiB: the heap says no
    with pytest.raises(MemoryError):
        fa.allocate(1 << 50)
    s = fa.stats
    assert (s.heap_fallbacks, s.heap_bytes, s.allocations) == (0, 0, 0)
    assert s.overflows == 2  # the requests did not fit; the errors reported them


def test_heap_fallback_blocks_are_checked_for_leaks(cursor: str) -> None:
    fa = frame_allocator(cursor, 1024, on_overflow="heap")
    mv = memoryview(fa.allocate(4000))
    fa.swap()
    with pytest.raises(FrameLeakError, match="heap-fallback block of 4000 B"):
        fa.swap()
    mv.release()
    fa.swap()
