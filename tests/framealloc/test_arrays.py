"""Frame arrays: shapes, dtypes, alignment of every address, no overlap, argument checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference_cursor import CURSORS, PyCursor, frame_allocator

from coreallocs.errors import InvalidAlignment, InvalidSize
from framealloc import FrameAllocator
from framealloc._ccursor import CCursor


@pytest.fixture(params=CURSORS)
def cursor(request: pytest.FixtureRequest) -> str:
    return request.param


DTYPES = ["f8", "f4", "i1", "u2", "i4", "c16", "?", "f2", "S3", "V5",
          [("x", "f4"), ("y", "f4"), ("tag", "u1")], np.dtype("f8").newbyteorder(">")]
SHAPES = st.one_of(
    st.integers(0, 300),
    st.lists(st.integers(0, 12), min_size=0, max_size=4).map(tuple),
)
ALIGNS = st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128, 4096])


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def span(a: np.ndarray) -> tuple[int, int]:
    return address(a), address(a) + a.nbytes


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_array_has_the_requested_shape_and_dtype(cursor: str, dtype: object) -> None:
    fa = frame_allocator(cursor, 1 << 16)
    for shape in (5, (5,), (2, 3), (2, 1, 4), ()):
        a = fa.array(shape, dtype)
        expected = np.empty(shape, dtype)
        assert a.shape == expected.shape and a.dtype == expected.dtype
        assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
        assert not a.flags.owndata  # frame memory, not a numpy heap block
        z = fa.zeros(shape, dtype)
        assert z.tobytes() == bytes(z.nbytes)


def test_default_dtype_is_float64(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16)
    assert fa.array(3).dtype == np.float64
    assert fa.zeros((2, 2)).dtype == np.float64
    assert fa.array(3, np.float32).dtype == np.float32
    assert fa.array(3, "i2").dtype == np.int16


@given(sizes=st.lists(st.tuples(SHAPES, st.sampled_from(["f8", "f4", "u1", "c16", "V3"]),
                                ALIGNS), min_size=1, max_size=40),
       cursor=st.sampled_from(CURSORS))
def test_every_address_is_aligned_and_arrays_never_overlap(
    sizes: list[tuple[object, str, int]], cursor: str
) -> None:
    fa = frame_allocator(cursor, 1 << 20, chunk_size=4096)
    spans = []
    for shape, dtype, align in sizes:
        a = fa.array(shape, dtype, align=align)
        assert a.shape == np.empty(shape).shape  # type: ignore[call-overload]
        if a.nbytes:
            assert address(a) % max(align, 16) == 0
            spans.append(span(a))
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start


@given(sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=30), align=ALIGNS)
def test_every_block_address_is_aligned(sizes: list[int], align: int) -> None:
    fa = FrameAllocator(1 << 20)
    spans = []
    for n in sizes:
        blk = fa.allocate(n, align)
        assert blk.address % align == 0 and len(blk) == n
        spans.append((blk.address, blk.address + n))
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start


@given(frames=st.lists(st.lists(st.integers(0, 500), max_size=12), min_size=3, max_size=8),
       cursor=st.sampled_from(CURSORS))
def test_data_of_the_current_and_previous_frame_stays_intact(
    frames: list[list[int]], cursor: str
) -> None:
    """Fill every array with a value unique to it; after each allocation and each swap,
    every array of the current and previous frame still holds its value."""
    fa = frame_allocator(cursor, 1 << 18, chunk_size=2048)
    previous: list[tuple[np.ndarray, float]] = []
    stamp = 0.0
    for sizes in frames:
        current: list[tuple[np.ndarray, float]] = []
        for n in sizes:
            stamp += 1.0
            a = fa.array(n)
            a[:] = stamp
            current.append((a, stamp))
            for arr, value in previous + current:
                assert (arr == value).all()
        previous = current
        a = arr = None  # type: ignore[assignment]  # only `previous` may reference frame memory
        fa.swap()  # frees the frame before `previous`: nothing references it any more


def test_zero_size_arrays_take_no_frame_memory(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16)
    for shape in (0, (0,), (3, 0), (0, 5, 2)):
        a = fa.array(shape)
        assert a.size == 0 and a.shape == np.empty(shape).shape
    assert fa.bytes_used == 0 and fa.allocations == 4


def test_big_arrays_get_their_own_block(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 20, chunk_size=4096)
    small = fa.array(4)
    big = fa.array(1000)  # 8000 B > 2048
    big[:] = 5.0
    small2 = fa.array(4)
    assert (big == 5.0).all() and big.flags.c_contiguous
    assert not np.shares_memory(big, small) and not np.shares_memory(big, small2)
    # the small ones still come from the same chunk, one after the other
    assert address(small2) - address(small) == 32


@pytest.mark.parametrize("shape", [-1, (2, -3), (-2, -3)])
def test_negative_dimensions_raise_invalid_size(cursor: str, shape: object) -> None:
    fa = frame_allocator(cursor, 1 << 16)
    with pytest.raises(InvalidSize):
        fa.array(shape)
    assert fa.allocations == 0


@pytest.mark.parametrize("shape", [2.5, "3", None, (2, 1.5), True, (True, 2), object()])
def test_non_integer_shapes_raise_type_error(cursor: str, shape: object) -> None:
    fa = frame_allocator(cursor, 1 << 16)
    with pytest.raises(TypeError):
        fa.array(shape)


def test_numpy_integers_are_accepted_as_dimensions(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16)
    assert fa.array(np.int64(4)).shape == (4,)
    assert fa.array((np.int32(2), 3)).shape == (2, 3)
    assert fa.array([2, 2]).shape == (2, 2)


@pytest.mark.parametrize("shape", [(1 << 40, 1 << 40), 1 << 70, (1 << 30, 1 << 30),
                                   (0, 1 << 30, 1 << 30), (1 << 62, 0), 1 << 60])
def test_requests_above_2_62_bytes_raise_invalid_size(cursor: str, shape: object) -> None:
    """Counting only non-zero dimensions, as numpy does: it refuses those shapes even empty."""
    fa = frame_allocator(cursor, 1 << 16, on_overflow="heap")
    with pytest.raises(InvalidSize, match="too large"):
        fa.array(shape)
    with pytest.raises(InvalidSize):
        fa.persistent.array(shape)
    assert (fa.allocations, fa.overflows, fa.heap_fallbacks) == (0, 0, 0)


@pytest.mark.parametrize("align", [0, 3, 24, 8192, -16])
def test_bad_alignments_raise(cursor: str, align: int) -> None:
    fa = frame_allocator(cursor, 1 << 16)
    with pytest.raises(InvalidAlignment):
        fa.array(4, align=align)
    with pytest.raises(InvalidAlignment):
        fa.allocate(4, align)


def test_alignment_must_be_an_integer(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16)
    for align in (16.0, "16", True):
        with pytest.raises(TypeError):
            fa.array(4, align=align)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [object, "O", [("a", "f8"), ("b", "O")]], ids=str)
def test_object_dtypes_are_refused(cursor: str, dtype: object) -> None:
    fa = frame_allocator(cursor, 1 << 16)
    with pytest.raises(TypeError, match="Python object references"):
        fa.array(3, dtype)
    with pytest.raises(TypeError):
        fa.persistent.array(3, dtype)


def test_cursor_refuses_chunks_that_break_its_rules() -> None:
    cursor = CCursor(lambda *a: None)
    base = np.zeros(1 << 12, np.uint8)
    off = -address(base) % 64
    with pytest.raises(ValueError):
        cursor.attach(base[off + 1 : off + 1 + 128])  # misaligned
    with pytest.raises(ValueError):
        cursor.attach(base[off : off + 100])  # length not a multiple of 64
    with pytest.raises(ValueError):
        cursor.attach(base[off : off + 256].view(np.float64))  # not uint8
    with pytest.raises(ValueError):
        cursor.attach(base[off : off + 512 : 2])  # not contiguous
    ro = base[off : off + 128]
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        cursor.attach(ro)
    # a refill that attaches nothing must not let the cursor write out of bounds
    for make in (PyCursor, CCursor):
        cursor = make(lambda *a: None)
        with pytest.raises((RuntimeError, TypeError, ValueError)):
            cursor.array(4)
