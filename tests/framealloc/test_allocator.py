"""FrameAllocator: double-buffer semantics, O(1) swap, stats, lifecycle."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest
from reference_cursor import CURSORS, frame_allocator

from coreallocs.errors import AllocatorClosed, InvalidSize, StaleHandle
from framealloc import FrameAllocator, StaleFrameError


@pytest.fixture(params=CURSORS)
def cursor(request: pytest.FixtureRequest) -> str:
    return request.param


def make(cursor: str, frame_size: int = 1 << 16, **kw: object) -> FrameAllocator:
    return frame_allocator(cursor, frame_size, **kw)  # type: ignore[arg-type]


# -- double buffering -------------------------------------------------------------
def test_frame_k_data_is_readable_in_k_plus_1(cursor: str) -> None:
    fa = make(cursor)
    a = fa.array(100)
    a[:] = np.arange(100)
    blk = fa.allocate(64)
    blk.view()[:] = bytes(range(64))
    fa.swap()
    # frame 1 allocates as much again: it must not land on frame 0's memory
    b = fa.array(100)
    b[:] = -1.0
    other = fa.allocate(64)
    other.view()[:] = b"\xff" * 64
    assert np.array_equal(a, np.arange(100))
    assert blk.tobytes() == bytes(range(64))
    assert blk.live


def test_frame_k_handles_are_stale_in_k_plus_2(cursor: str) -> None:
    fa = make(cursor)
    blk = fa.allocate(32)
    fa.swap()
    assert blk.live
    fa.swap()
    assert not blk.live
    with pytest.raises(StaleFrameError):
        blk.tobytes()
    with pytest.raises(StaleFrameError):
        memoryview(blk)
    with pytest.raises(StaleHandle):  # the core's category, for generic handlers
        len(blk)


def test_frame_k_arrays_survive_exactly_until_frame_k_plus_2(cursor: str) -> None:
    fa = make(cursor)
    a = fa.array(8)
    a[:] = 7.0
    fa.swap()  # frame 1: still fine
    assert (a == 7.0).all()
    del a  # dropped before frame 2 reuses the buffer: no leak
    fa.swap()
    assert fa.frame == 2
    assert fa.leaks == 0


@pytest.mark.parametrize("buffers", [1, 2, 3, 4])
def test_n_buffers_keep_a_frame_for_n_minus_1_more_frames(cursor: str, buffers: int) -> None:
    fa = make(cursor, buffers=buffers)
    blk = fa.allocate(16)
    for _ in range(buffers - 1):
        fa.swap()
        assert blk.live
    fa.swap()
    assert not blk.live


def test_buffers_rotate_and_frames_count(cursor: str) -> None:
    fa = make(cursor, buffers=3)
    owners = []
    for k in range(7):
        assert fa.frame == k
        owners.append(fa.allocate(8).owner.name)
        assert fa.swap() == k + 1
    assert owners == ["frame[0]", "frame[1]", "frame[2]"] * 2 + ["frame[0]"]


def test_swap_reuses_the_memory_of_the_recycled_buffer(cursor: str) -> None:
    fa = make(cursor, prefault=False)
    first = fa.allocate(64).address
    fa.swap()
    fa.swap()
    assert fa.allocate(64).address == first  # bump pointer back at the start


# -- O(1) reset --------------------------------------------------------------------
def _calls_during(fn: object) -> int:
    """Python and C function calls made while running fn() (a work counter, not a timer).

    The cyclic GC is run first and kept off meanwhile: an automatic collection during
    fn() would run finalizers of unrelated objects (left by earlier tests) and count
    their calls as fn()'s work.
    """
    calls = 0

    def profiler(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    sys.setprofile(profiler)
    try:
        fn()  # type: ignore[operator]
    finally:
        sys.setprofile(None)
        if was_enabled:
            gc.enable()
    return calls


@pytest.mark.parametrize("kind", ["arrays", "blocks"])
def test_swap_work_does_not_depend_on_the_number_of_allocations(cursor: str, kind: str) -> None:
    fa = make(cursor, frame_size=4 << 20)
    work = {}
    for count in (10, 1000, 20000):
        for _ in range(2):  # fill both buffers with `count` allocations
            for _ in range(count):
                if kind == "arrays":
                    fa.array(16)
                else:
                    fa.allocate(16)
            assert fa.allocations == count
            fa.swap()
        for _ in range(count):
            fa.array(16) if kind == "arrays" else fa.allocate(16)
        work[count] = _calls_during(fa.swap)
    assert work[10] == work[1000] == work[20000], work


def test_generation_advances_once_per_reset(cursor: str) -> None:
    fa = make(cursor, buffers=2, prefault=False)
    for _ in range(1000):
        fa.array(4)
    fa.swap()
    fa.swap()
    gens = [b.arena.generation for b in fa._buffers]
    assert gens == [1, 1]


# -- figures -------------------------------------------------------------------------
def test_bytes_and_allocations_per_frame(cursor: str) -> None:
    fa = make(cursor)
    assert (fa.bytes_used, fa.allocations) == (0, 0)
    fa.array(16)  # 128 B
    fa.array(3, np.float32)  # 12 B, padded to 16
    fa.allocate(100)
    s = fa.stats
    assert s.allocations == 3
    assert 128 + 16 + 100 <= s.bytes_used <= 128 + 16 + 100 + 64  # + block alignment padding
    used = s.bytes_used
    fa.swap()
    s = fa.stats
    assert (s.bytes_used, s.allocations) == (0, 0)
    assert (s.last_frame_bytes, s.last_frame_allocations) == (used, 3)
    assert s.high_water == used
    assert s.total_allocations == 3
    fa.array(1)
    assert fa.stats.total_allocations == 4


def test_high_water_is_the_largest_frame(cursor: str) -> None:
    fa = make(cursor, frame_size=1 << 20)
    sizes = [10, 5000, 300, 20]
    used = []
    for n in sizes:
        fa.array(n)
        used.append(fa.bytes_used)
        fa.swap()
    assert fa.stats.high_water == max(used)
    assert used[1] >= 5000 * 8


def test_report_mentions_frames_and_buffers(cursor: str) -> None:
    fa = make(cursor)
    fa.array(10)
    text = fa.report()
    assert "frame[0]" in text and "frame[1]" in text and "persistent" in text
    assert "1 allocations" in text


# -- lifecycle and arguments -------------------------------------------------------------
def test_closed_allocator_refuses_everything(cursor: str) -> None:
    fa = make(cursor)
    kept = fa.array(4)
    kept[:] = 3.0
    with fa:
        pass
    assert fa.closed
    with pytest.raises(AllocatorClosed):
        fa.array(4)
    with pytest.raises(AllocatorClosed):
        fa.allocate(4)
    with pytest.raises(AllocatorClosed):
        fa.swap()
    assert (kept == 3.0).all()  # memory of live arrays stays valid
    assert fa.persistent.array(3).shape == (3,)


@pytest.mark.parametrize("bad", [0, -5])
def test_rejects_non_positive_sizes(bad: int) -> None:
    with pytest.raises(InvalidSize):
        FrameAllocator(bad)
    with pytest.raises(InvalidSize):
        FrameAllocator(1024, buffers=bad)
    with pytest.raises(InvalidSize):
        FrameAllocator(1024, chunk_size=bad)


def test_rejects_unknown_policies() -> None:
    with pytest.raises(ValueError, match="on_leak"):
        FrameAllocator(1024, on_leak="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_overflow"):
        FrameAllocator(1024, on_overflow="drop")  # type: ignore[arg-type]


def test_dropping_the_allocator_frees_it_without_the_cyclic_gc(cursor: str) -> None:
    import gc
    import weakref

    gc.disable()
    try:
        fa = make(cursor)
        fa.array(4)
        array_method = fa.array
        ref = weakref.ref(fa)
        del fa
        assert ref() is None  # no reference cycle: freed by refcounting alone
        with pytest.raises(AllocatorClosed, match="is gone"):
            array_method(10_000)  # the cursor outlived its allocator: refuses, no crash
    finally:
        gc.enable()


def test_copy_and_empty_like_live_in_the_frame(cursor: str) -> None:
    fa = make(cursor)
    src = np.arange(12, dtype=np.int16).reshape(3, 4)
    c = fa.copy(src)
    e = fa.empty_like(src)
    assert np.array_equal(c, src) and c.dtype == np.int16
    assert e.shape == (3, 4) and e.dtype == np.int16
    assert fa.allocations == 2
    assert not np.shares_memory(c, src)
