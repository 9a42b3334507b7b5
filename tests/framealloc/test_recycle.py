"""The compiled cursor recycles array objects: reuse must be invisible to the user.

An array object is handed out again only when the cursor's table holds the sole
reference to it; it then points at fresh memory. These tests hold every way a user
can keep or alter an array and check that none of them sees recycled memory.
"""

from __future__ import annotations

import gc
import warnings
import weakref

import numpy as np
import pytest

from framealloc import FrameAllocator, FrameLeakError


def make(**kw: object) -> FrameAllocator:
    return FrameAllocator(1 << 20, prefault=False, **kw)


def addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_a_dropped_array_object_is_reused_with_fresh_memory() -> None:
    fa = make()
    first = fa.array(16)
    first_id, first_addr = id(first), addr(first)
    del first
    second = fa.array(16)
    assert id(second) == first_id  # the same object came back ...
    assert addr(second) != first_addr  # ... pointing at new memory
    assert fa._cursor.recycled == 1
    assert second.flags.writeable and second.flags.c_contiguous and second.base is not None


def test_a_held_array_is_never_reused() -> None:
    fa = make()
    held = [fa.array(16) for _ in range(20)]  # more than a bucket keeps
    held[0][:] = 7.0
    more = [fa.array(16) for _ in range(20)]
    ids = {id(a) for a in held}
    assert not ids & {id(a) for a in more}
    assert (held[0] == 7.0).all()
    assert len({addr(a) for a in held + more}) == 40


@pytest.mark.parametrize("keep", ["view", "memoryview", "slice_of_view", "ctypes", "iter"])
def test_what_derives_from_an_array_keeps_its_bytes(keep: str) -> None:
    fa = make()
    arr = fa.array(16)
    arr[:] = np.arange(16.0)
    if keep == "view":
        kept = arr[4:]
    elif keep == "memoryview":
        kept = memoryview(arr)
    elif keep == "slice_of_view":
        kept = arr[2:][2:]
    elif keep == "ctypes":
        kept = arr.ctypes
    else:
        kept = iter(arr)
    before = np.array(kept) if keep != "ctypes" and keep != "iter" else None
    del arr
    for _ in range(10):  # the old object (if free) is reused and overwritten
        fa.array(16)[:] = -1.0
    if keep in ("view", "slice_of_view"):
        assert np.array_equal(kept, before)
    elif keep == "memoryview":
        assert list(kept.cast("B").cast("d")) == list(before)
    elif keep == "ctypes":
        assert kept._arr[0] == 0.0  # the ctypes helper holds the array: not reused
    else:
        assert next(kept) == 0.0


def test_a_view_kept_past_its_frame_is_still_a_leak() -> None:
    fa = make()
    arr = fa.array(16)
    view = arr[1:]
    del arr
    fa.array(16)  # reuses the object; the view still references the chunk
    fa.swap()
    with pytest.raises(FrameLeakError):
        fa.swap()
    del view
    fa.swap()


def test_arrays_altered_in_place_are_not_reused_as_they_are() -> None:
    fa = make()
    a = fa.array(16)
    a.shape = (4, 4)
    b = fa.array(16)
    b.dtype = np.int64
    c = fa.array(16)
    c.flags.writeable = False
    d = fa.array(16)
    with warnings.catch_warnings():  # deprecated in numpy 2.4, still possible
        warnings.simplefilter("ignore", DeprecationWarning)
        d.strides = (0,)
    del a, b, c, d
    for _ in range(12):
        out = fa.array(16)
        assert out.shape == (16,) and out.dtype == np.float64 and out.strides == (8,)
        assert out.flags.writeable and out.flags.c_contiguous
        out[:] = 1.0
        del out


def test_weakly_referenced_arrays_are_never_reused() -> None:
    fa = make()
    arr = fa.array(16)
    arr[:] = 3.0
    ref = weakref.ref(arr)
    del arr
    fresh = fa.array(16)
    fresh[:] = 9.0
    alive = ref()
    assert alive is None or alive is not fresh  # evicted (dead) or left alone


def test_a_colliding_key_never_returns_another_shape_or_dtype() -> None:
    # many keys through the 64-bucket table: every request gets exactly its key
    fa = make()
    for round_ in range(3):
        for n in range(1, 200):
            for dt in ("u1", "i2", "f4", "f8"):
                out = fa.array(n, dt)
                assert out.shape == (n,) and out.dtype == np.dtype(dt), (round_, n, dt)
        fa.swap()


def test_tuple_shapes_and_batches() -> None:
    fa = make()
    shape = (100, 2)
    first = fa.array(shape)
    del first
    a, b, c = fa.arrays(3, shape, "f4")
    assert {x.shape for x in (a, b, c)} == {shape} and a.dtype == np.float32
    assert len({addr(x) for x in (a, b, c)}) == 3
    assert fa.arrays(0, 8) == ()
    with pytest.raises(TypeError):
        fa.arrays(1.5, 8)
    with pytest.raises(ValueError):
        fa.arrays(-1, 8)
    with pytest.raises(ValueError):  # InvalidSize
        fa.arrays(2**70, 8)
    with pytest.raises(TypeError):
        fa.arrays(True, 8)


def test_swap_unhooks_free_cached_arrays_so_they_are_not_leaks() -> None:
    fa = make()
    for _ in range(6):
        for _ in range(50):
            fa.array(16)
            fa.array((10, 3), np.int32)
        fa.swap()  # strict: would raise if the table kept the buffer exported
    assert fa._cursor.cached > 0


def test_release_cached_work_is_bounded_by_the_table_not_the_allocations() -> None:
    fa = FrameAllocator(8 << 20, prefault=False)
    unhooked = []
    for count in (10, 1000, 100_000):
        for i in range(count):
            fa.array(1 + i % 4)
        fa.swap()  # the next swap recycles the buffer those arrays came from
        unhooked.append(fa._cursor.release_cached((fa._index + 1) % fa.buffers))
    # the scan is over the fixed table (64 buckets x 8 ways), whatever the count
    assert unhooked[0] == unhooked[1] == unhooked[2] == 4


def test_mutating_the_memo_dtype_spec_is_not_remembered() -> None:
    fa = make()
    spec = [("x", "f4")]
    out = fa.array(4, spec)
    spec[0] = ("x", "f8")
    out2 = fa.array(4, spec)
    assert out.dtype.itemsize == 4 and out2.dtype.itemsize == 8


def test_close_and_drop_free_the_cached_arrays() -> None:
    fa = make()
    arr = fa.array(16)
    del arr
    assert fa._cursor.cached == 1
    fa.close()
    assert fa._cursor.cached == 0
    fa2 = make()
    fa2.array(16)
    probe = weakref.ref(fa2)
    del fa2
    gc.collect()
    assert probe() is None
