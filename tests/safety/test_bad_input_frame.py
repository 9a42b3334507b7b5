"""Bad input to the frame allocator, on both cursors: clear exception, frame unchanged.

test_frame_arrays.py pins a few shapes/dtypes; here hypothesis combines arbitrary shapes,
dtypes and alignments and checks each outcome against a model: which exception, or an
array of exactly the requested shape/dtype/alignment that does not overlap earlier data.
A refused request must leave the frame's counters and earlier arrays untouched.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from reference_cursor import CURSORS, frame_allocator

from coreallocs import InvalidAlignment, InvalidSize, OutOfMemory
from framealloc import FrameAllocator, FrameOverflow

FRAME = 64 * 1024

VALID_DTYPES = [None, "f8", "f4", "i2", "u1", "c16", "U3", "S5", "V0",
                [("x", "f4"), ("y", "i8")], np.dtype("i4").newbyteorder(">")]
OBJECT_DTYPES = ["O", [("a", "O")], [("x", "f8"), ("o", "O")]]
NONSENSE_DTYPES = ["foo", "f7", 5.5]

dims = st.one_of(st.integers(-3, 40), st.integers(-(2**70), 2**70),
                 st.integers(0, 40).map(np.int64), st.booleans(), st.floats(), st.text(max_size=1))
shapes = st.one_of(dims, st.lists(dims, max_size=3).map(tuple), st.lists(dims, max_size=3),
                   st.none(), st.just([[2, 3]]))
dtypes = st.sampled_from(VALID_DTYPES + OBJECT_DTYPES + NONSENSE_DTYPES)
aligns = st.one_of(st.integers(-2, 4097), st.sampled_from([1, 2, 64, 4096, 8192, 2**40]),
                   st.booleans(), st.floats(), st.just(np.int64(32)))


def shape_model(shape: Any) -> tuple[type[Exception] | None, tuple[int, ...]]:
    def is_int(d: Any) -> bool:
        return not isinstance(d, bool) and isinstance(d, int | np.integer)

    if is_int(shape):
        items = (int(shape),)
    elif isinstance(shape, tuple | list | str) and all(is_int(d) for d in shape):
        items = tuple(int(d) for d in shape)  # (any sequence of ints, even "" = no dims)
    else:
        return TypeError, ()
    if any(d < 0 for d in items) or math.prod(items) > 2**62:
        return InvalidSize, ()
    return None, items


def dtype_model(dtype: Any) -> type[Exception] | None:
    return TypeError if dtype in OBJECT_DTYPES or dtype in NONSENSE_DTYPES else None


def align_model(align: Any) -> type[Exception] | None:
    if isinstance(align, bool) or not isinstance(align, int | np.integer):
        return TypeError
    a = int(align)
    return InvalidAlignment if a <= 0 or a > 4096 or a & (a - 1) else None


HUGE = 2**62  # bytes: the largest request either layer (framealloc, numpy) may accept


def nominal_bytes(dims: tuple[int, ...], dt: np.dtype) -> int:
    """Bytes the shape describes ignoring zero dimensions (numpy's own size check)."""
    return math.prod(d for d in dims if d) * max(dt.itemsize, 1)


def frame_state(frames: FrameAllocator) -> tuple[int, int, int]:
    s = frames.stats
    return s.bytes_used, s.allocations, s.overflows


@pytest.mark.parametrize("cursor", CURSORS)
@pytest.mark.parametrize("zeros", [False, True], ids=["array", "zeros"])
@given(shape=shapes, dtype=dtypes, align=aligns)
def test_array_requests_against_the_model(cursor: str, zeros: bool, shape: Any, dtype: Any,
                                          align: Any) -> None:
    frames = frame_allocator(cursor, FRAME, prefault=False)
    sentinel = frames.array(100, np.uint8)
    sentinel[:] = np.arange(100, dtype=np.uint8)
    before = frame_state(frames)
    shape_error, dims_ = shape_model(shape)
    errors = {e for e in (shape_error, dtype_model(dtype), align_model(align)) if e}
    make = frames.zeros if zeros else frames.array
    if errors:
        with pytest.raises(tuple(errors)):
            make(shape, dtype, align)
        assert frame_state(frames) == before
    else:
        dt = np.dtype(np.float64 if dtype is None else dtype)
        nbytes = math.prod(dims_) * dt.itemsize
        if nominal_bytes(dims_, dt) > HUGE:  # no array this big can exist, even an empty one
            with pytest.raises((InvalidSize, ValueError)):
                make(shape, dtype, align)
            assert frame_state(frames)[:2] == before[:2]
        elif nbytes > FRAME:  # cannot fit: refused with the frame's figures
            with pytest.raises(FrameOverflow) as info:
                make(shape, dtype, align)
            assert info.value.requested == nbytes and info.value.capacity == FRAME
            assert frame_state(frames)[:2] == before[:2]
        else:
            try:
                arr = make(shape, dtype, align)
            except FrameOverflow:
                assert nbytes > FRAME // 2, "a request for half the frame or less must fit"
                assert frame_state(frames)[:2] == before[:2]
            else:
                assert arr.shape == dims_ and arr.dtype == dt and arr.flags.c_contiguous
                assert arr.flags.writeable
                if arr.nbytes:
                    assert arr.ctypes.data % max(int(align), 16) == 0
                    raw = arr.reshape(-1).view(np.uint8)
                    if zeros:
                        assert not raw.any()
                    raw[:] = 0xEE
    assert (sentinel == np.arange(100, dtype=np.uint8)).all()  # earlier data never touched


@pytest.mark.parametrize("cursor", CURSORS)
@given(shape=st.lists(st.integers(0, 2**40), min_size=1, max_size=4).map(tuple),
       dtype=st.sampled_from(["u1", "f8", "c16", "V4096"]))
def test_heap_policy_serves_anything_that_does_not_fit_and_counts_it(cursor: str,
                                                                   shape: tuple[int, ...],
                                                                   dtype: str) -> None:
    frames = frame_allocator(cursor, 4096, on_overflow="heap", prefault=False)
    dt = np.dtype(dtype)
    nbytes = math.prod(shape) * dt.itemsize
    if nominal_bytes(shape, dt) > HUGE:
        with pytest.raises((InvalidSize, ValueError)):
            frames.array(shape, dtype)
        assert frames.stats.allocations == 0
        return
    if nbytes > 1 << 40:  # more than this machine has: refused cleanly, nothing counted
        with pytest.raises(MemoryError):
            frames.array(shape, dtype)
        assert frames.stats.allocations == 0
        return
    assume(nbytes <= 1 << 22)  # (really allocating the middle range would cost memory)
    arr = frames.array(shape, dtype)
    assert arr.shape == shape and arr.nbytes == nbytes and arr.flags.writeable
    if nbytes > 4096:
        assert frames.stats.heap_fallbacks == 1 and frames.stats.heap_bytes == nbytes
    elif nbytes <= 2048:
        assert frames.stats.heap_fallbacks == 0


@pytest.mark.parametrize("cursor", CURSORS)
@given(size=st.one_of(st.integers(-(2**70), 2**70), st.integers(-2, 70000), st.booleans(),
                      st.floats(), st.none()),
       align=aligns)
def test_allocate_sizes_and_alignments(cursor: str, size: Any, align: Any) -> None:
    frames = frame_allocator(cursor, FRAME, prefault=False)
    before = frame_state(frames)
    errors = set()
    if isinstance(size, bool) or not isinstance(size, int):
        errors.add(TypeError)
    elif size <= 0 or size > 2**63 - 1:
        errors.add(InvalidSize)
    if align_model(align):
        errors.add(align_model(align))
    if errors:
        with pytest.raises(tuple(errors)):
            frames.allocate(size, align)
        assert frame_state(frames) == before
        return
    if size > FRAME:
        with pytest.raises(FrameOverflow):
            frames.allocate(size, align)
        assert frame_state(frames)[:2] == before[:2]
        return
    blk = frames.allocate(size, align)
    assert len(blk) == size and blk.address % int(align) == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"frame_size": 0}, InvalidSize),
        ({"frame_size": -1}, InvalidSize),
        ({"frame_size": 1.5}, TypeError),
        ({"frame_size": True}, TypeError),
        ({"frame_size": "1024"}, TypeError),
        ({"frame_size": 2**62}, OutOfMemory),  # refused by the system, before any prefault
        ({"buffers": 0}, InvalidSize),
        ({"buffers": None}, TypeError),
        ({"chunk_size": 0}, InvalidSize),
        ({"chunk_size": 2.0}, TypeError),
        ({"on_leak": "ignore"}, ValueError),
        ({"on_leak": None}, ValueError),
        ({"on_overflow": "grow"}, ValueError),
    ],
)
def test_constructor_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        FrameAllocator(**{"frame_size": 4096, **kwargs})


def test_persistent_area_bad_requests_take_nothing() -> None:
    frames = FrameAllocator(4096, prefault=False)
    area = frames.persistent
    for shape, dtype, error in [((2, -1), "f8", InvalidSize), ((2,), "O", TypeError),
                                ("3", "f8", TypeError), ((2**62, 4), "f8", InvalidSize)]:
        with pytest.raises(error):
            area.array(shape, dtype)
    bad_sizes = [(0, InvalidSize), (-4, InvalidSize), (2.5, TypeError), (2**64, InvalidSize)]
    for size, error in bad_sizes:
        with pytest.raises(error):
            area.allocate(size)
    assert area.in_use == 0 and area.stats.allocations == 0


@pytest.mark.parametrize("cursor", CURSORS)
def test_a_refused_heap_fallback_is_not_counted_as_served(cursor: str) -> None:
    frames = frame_allocator(cursor, 4096, on_overflow="heap", prefault=False)
    with pytest.raises(MemoryError):
        frames.array((2**41,), "u1")
    with pytest.raises(MemoryError):
        frames.allocate(2**41)
    s = frames.stats
    assert (s.heap_fallbacks, s.heap_bytes) == (0, 0)
