"""Adversarial use of every public framealloc type: copies, pickles, skipped __init__,
subclasses, weak references, mutable dtype arguments, subarray dtypes, re-entrancy.

Cases that could crash the interpreter run in a child interpreter, so that a crash
fails the test instead of killing pytest.
"""

from __future__ import annotations

import copy
import math
import pickle
import subprocess
import sys
import textwrap
import weakref
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference_cursor import CURSORS, frame_allocator

import framealloc
from coreallocs import InvalidSize
from framealloc import (
    FixedStepClock,
    FrameAllocator,
    FrameObjects,
    GameLoop,
    LoopStats,
    ManualClock,
    PersistentArea,
)
from framealloc._ccursor import CCursor


def run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


class Rec:
    __slots__ = ("a",)


def owners() -> dict[str, Any]:
    """One live instance of every public type that owns memory or state."""
    fa = FrameAllocator(4096, prefault=False)
    loop = GameLoop(lambda dt, f: None, allocator=fa, clock=FixedStepClock(1 / 60))
    return {"FrameAllocator": fa, "PersistentArea": PersistentArea(), "GameLoop": loop,
            "Frame": loop.frame, "FrameObjects": fa.objects(Rec), "FrameGC": loop.gc,
            "CCursor": fa._cursor, "FrameBuffer": fa._buffers[0],
            "RecordCore": fa.objects(Rec)._core}


@pytest.mark.parametrize("name", sorted(owners()))
@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_owners_refuse_copy_deepcopy_and_pickle(name: str, how: str) -> None:
    obj = owners()[name]
    do = {"copy": copy.copy, "deepcopy": copy.deepcopy, "pickle": pickle.dumps}[how]
    with pytest.raises(TypeError):
        do(obj)


def test_a_refused_copy_leaves_the_original_frame_alone() -> None:
    fa = FrameAllocator(4096, prefault=False)
    a = fa.array(4)
    a[:] = 7
    with pytest.raises(TypeError):
        copy.copy(fa).swap()
    assert fa.frame == 0 and (a == 7).all()


def test_value_types_copy_and_pickle_as_independent_values() -> None:
    fa = FrameAllocator(4096, prefault=False)
    fa.array(3)
    snap = fa.stats
    assert pickle.loads(pickle.dumps(snap)) == snap == copy.deepcopy(snap)
    stats = LoopStats(8)
    stats.record(0.001, 10, 1, 1)
    for clone in (copy.copy(stats), copy.deepcopy(stats), pickle.loads(pickle.dumps(stats))):
        clone.record(0.5, 1, 1, 1)
        clone.gc.collections[0] += 5
        assert stats.frames == 1 and stats.series("frame_time").tolist() == [0.001]
        assert stats.gc.collections == [0, 0, 0]
    clock = ManualClock()
    other = copy.copy(clock)
    other.advance(1.0)
    assert clock() == 0.0
    err = framealloc.FrameOverflow("x", frame=3, requested=5)
    back = pickle.loads(pickle.dumps(err))
    assert (back.frame, back.requested) == (3, 5)


def test_methods_of_uninitialised_objects_raise_instead_of_crashing() -> None:
    proc = run_child("""
        import numpy as np
        import framealloc
        from framealloc._ccursor import CCursor
        calls = [
            (framealloc.FrameAllocator, ["swap", "close", "report"], ["array", "zeros"]),
            (framealloc.PersistentArea, ["report"], ["array", "allocate"]),
            (framealloc.GameLoop, ["step", "run", "freeze"], []),
            (framealloc.FrameObjects, ["end_frame"], ["new"]),
            (framealloc.FrameGC, ["begin", "end"], ["slack"]),
            (framealloc.LoopStats, ["summary", "report"], ["percentile"]),
        ]
        for cls, plain, with_arg in calls:
            obj = cls.__new__(cls)
            for name in plain + with_arg:
                try:
                    getattr(obj, name)(*([1] if name in with_arg else []))
                except Exception:
                    pass
        for args in [(), (None,)]:
            try:
                cur = CCursor.__new__(CCursor, *args)
                cur.array(4)
            except Exception:
                pass
        print("survived")
    """)
    assert proc.returncode == 0 and "survived" in proc.stdout, proc.stderr


def test_subclasses_keep_their_overrides_and_cursor_is_final() -> None:
    class Counting(FrameAllocator):
        calls = 0

        def array(self, shape: Any, dtype: Any = None, align: int = 16) -> np.ndarray:
            Counting.calls += 1
            return super().array(shape, dtype, align)

    fa = Counting(4096, prefault=False)
    assert fa.array(4).shape == (4,) and Counting.calls == 1
    with pytest.raises(TypeError):
        type("Sub", (CCursor,), {})


def test_weak_references_are_supported_or_cleanly_refused() -> None:
    fa = FrameAllocator(4096, prefault=False)
    ref = weakref.ref(fa)
    assert ref() is fa
    with pytest.raises(TypeError):
        weakref.ref(fa._cursor)
    loop = GameLoop(lambda dt, f: None, allocator=fa)
    with pytest.raises(TypeError):
        weakref.ref(loop.frame)


def test_double_init_is_refused() -> None:
    loop = GameLoop(lambda dt, f: None)
    with pytest.raises(TypeError):
        loop.__init__(lambda dt, f: None)  # type: ignore[misc]


# -- dtypes ---------------------------------------------------------------------------
def test_the_33_dimension_subarray_dtype_is_refused_without_crashing() -> None:
    proc = run_child("""
        import numpy as np
        from coreallocs import InvalidSize
        import framealloc
        fa = framealloc.FrameAllocator(1 << 16)
        for dt in [np.dtype(("u1", (1,) * 32)), np.dtype(("f8", (1,) * 30))]:
            for make in (fa.array, fa.zeros, lambda s, d: fa.arrays(2, s, d),
                         fa.persistent.array):
                try:
                    make((1, 1, 1), dt)
                except InvalidSize:
                    pass
                else:
                    raise SystemExit("accepted")
        a = fa.array(2, np.dtype(("u1", (1,) * 31)))
        assert a.shape == (2,) + (1,) * 31 and a.dtype == np.uint8
        print("survived")
    """)
    assert proc.returncode == 0 and "survived" in proc.stdout, proc.stderr


@pytest.mark.parametrize("cursor", CURSORS)
def test_subarray_dtypes_make_the_array_numpy_would(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16, prefault=False)
    for shape, dt in [(3, ("f4", (2,))), ((2, 2), ("i2", (3, 1))), (0, ("u1", (4,))),
                      ((), ("f8", (2, 2)))]:
        want = np.empty(shape, dt)
        for got in (fa.array(shape, dt), fa.zeros(shape, dt), fa.persistent.array(shape, dt)):
            assert got.shape == want.shape and got.dtype == want.dtype
    # numpy keeps a zero-size subarray as a V0 dtype; framealloc expands it like any
    # other (same bytes: none)
    for got in (fa.array(5, ("u1", (0,))), fa.persistent.array(5, ("u1", (0,)))):
        assert got.shape == (5, 0) and got.nbytes == 0


@pytest.mark.parametrize("cursor", CURSORS)
def test_a_dtype_class_that_changes_is_never_served_stale(cursor: str) -> None:
    fa = frame_allocator(cursor, 1 << 16, prefault=False)

    class Vec:
        dtype = np.dtype("f4")

    for _ in range(3):  # the second and third calls would hit any memo
        assert fa.array(4, Vec).dtype == np.float32
        assert fa.array((2, 2), Vec).dtype == np.float32
    Vec.dtype = np.dtype("i2")
    for _ in range(3):
        assert fa.array(4, Vec).dtype == np.int16
        assert fa.array((2, 2), Vec).dtype == np.int16
        assert fa.persistent.array(4, Vec).dtype == np.int16

    class Shifty:  # an instance whose dtype attribute is computed afresh each time
        n = 0

        @property
        def dtype(self) -> np.dtype:
            Shifty.n += 1
            return np.dtype("f8" if Shifty.n % 2 else "u1")

    s = Shifty()
    kinds = {fa.array(4, s).dtype for _ in range(4)}
    assert kinds == {np.dtype("f8"), np.dtype("u1")}
    Vec.dtype = np.dtype("O")
    with pytest.raises(TypeError):
        fa.array(4, Vec)


def test_reentrant_use_from_dtype_and_index_hooks_stays_consistent() -> None:
    proc = run_child("""
        import gc
        import numpy as np
        import framealloc
        fa = framealloc.FrameAllocator(1 << 16, on_leak="detach")
        made = []
        class Sneaky:
            @property
            def dtype(self):
                made.append(fa.array(3))      # re-enters the cursor mid-request
                made.append(fa.array((2, 2), "f4"))
                return np.dtype("f8")
        class Shape(list):
            def __iter__(self):
                fa.swap()                     # a swap in the middle of a request
                return super().__iter__()
        class Evil:
            def __del__(self):
                try:
                    fa.array(5); fa.array((1, 2)); fa.swap()
                except Exception:
                    pass
        for i in range(300):
            a = fa.array(8, Sneaky())
            a[:] = i
            b = fa.array(Shape([4, 2]))
            b[:] = -i
            x = [Evil()]; x.append(x); del x
            if i % 7 == 0:
                gc.collect()
            assert (a == i).all() and (b == -i).all()
            made.clear()
        print("survived")
    """)
    assert proc.returncode == 0 and "survived" in proc.stdout, proc.stderr


# -- fuzzing --------------------------------------------------------------------------
SUBARRAY_DTYPES = [np.dtype(("u1", (1,) * k)) for k in (1, 8, 31, 32)] + [
    np.dtype(("f8", (2, 3))), np.dtype(("i4", (0,))), np.dtype(("V3", (2**20,)))]
DTYPES = [None, "f8", "u1", "V0", np.float32, float, int, bool, "O", "f7", np.int64(3),
          [("x", "f4"), ("y", ("u1", (3,)))], *SUBARRAY_DTYPES]
dims = st.one_of(st.integers(-2, 5), st.integers(-(2**64), 2**64), st.integers(0, 4).map(np.int32),
                 st.integers(0, 2**63 - 1).map(np.uint64), st.floats(), st.none(), st.booleans())
shapes = st.one_of(dims, st.lists(dims, max_size=34).map(tuple), st.lists(st.just(1), max_size=40))


def expected_outcome(shape: Any, dtype: Any) -> tuple[type[Exception] | None, Any]:
    try:
        dt = np.dtype(np.float64 if dtype is None else dtype)
        if dt.hasobject:
            return TypeError, None
    except TypeError:
        return TypeError, None
    items = shape if isinstance(shape, tuple | list) else (shape,)
    if any(isinstance(d, bool) or not isinstance(d, int | np.integer) for d in items):
        return TypeError, None
    dims_ = tuple(int(d) for d in items) + tuple(dt.shape)
    if any(d < 0 for d in dims_):
        return InvalidSize, None
    base = dt.base
    if math.prod(d for d in dims_ if d) * max(base.itemsize, 1) > 2**62 or len(dims_) > 32:
        return InvalidSize, None
    return None, (dims_, base)


@pytest.mark.parametrize("cursor", CURSORS)
@given(shape=shapes, dtype=st.sampled_from(DTYPES),
       align=st.one_of(st.sampled_from([16, 1, 64, 4096]), st.integers(-3, 9000),
                       st.just(np.int8(8)), st.floats()),
       count=st.one_of(st.integers(-2, 3), st.just(np.int16(2)), st.just(2.0)))
def test_fuzzed_requests_raise_cleanly_or_return_the_right_array(cursor: str, shape: Any,
                                                                 dtype: Any, align: Any,
                                                                 count: Any) -> None:
    fa = frame_allocator(cursor, 1 << 16, prefault=False, on_overflow="heap")
    error, want = expected_outcome(shape, dtype)

    def int_like(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, int | np.integer)

    count_ok = int_like(count) and 0 <= int(count) <= 2**30
    align_ok = int_like(align) and 0 < int(align) <= 4096 and not int(align) & (int(align) - 1)
    try:
        out = fa.arrays(count, shape, dtype, align)
    except (TypeError, ValueError, MemoryError) as exc:  # (InvalidSize, InvalidAlignment too)
        assert error is not None or not count_ok or not align_ok or isinstance(exc, MemoryError)
        return
    assert error is None and count_ok and align_ok, "accepted a request that should raise"
    dims_, base = want
    assert len(out) == int(count)
    for arr in out:
        assert arr.shape == dims_ and arr.dtype == base and arr.flags.c_contiguous
        if arr.nbytes:
            arr.reshape(-1).view(np.uint8)[:] = 0xAB


def test_object_records_pool_refuses_bad_classes_in_a_child() -> None:
    proc = run_child("""
        import framealloc
        for cls in (int, object, type, type("A", (), {"__slots__": ()})):
            try:
                framealloc.FrameObjects(cls)
            except TypeError:
                pass
        class R:
            __slots__ = ("a",)
        pool = framealloc.FrameObjects(R)
        try:
            pool.new(**{"__class__": int})
        except (AttributeError, TypeError):
            pass
        print("survived")
    """)
    assert proc.returncode == 0 and "survived" in proc.stdout, proc.stderr
    assert FrameObjects(Rec).slots == ("a",)
