"""Bad input at every public entry point of the core: a specific exception, state unchanged.

The unit tests (test_pool/test_slab/test_arena) pin a few values per argument; here
hypothesis throws arbitrary objects (huge/negative ints, floats, strings, bools, numpy
scalars, objects with ``__index__``) at every size/alignment parameter and checks the
exception against a model of the rules, then checks the allocator did not change.
Then: size x count overflow, wrong types of the other arguments, copies/pickles of
handles, closing with live blocks, failed buffer exports. docs/safety.md lists the
resulting "misuse -> exception" table.
"""

from __future__ import annotations

import copy
import gc
import os
import pickle
import struct
from collections.abc import Callable
from functools import partial
from typing import Any

import capi_demo
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coreallocs import (
    AllocatorClosed,
    Arena,
    ArenaOverflow,
    Block,
    BlocksStillLive,
    BufferStillExported,
    ForeignBlock,
    InvalidAlignment,
    InvalidMark,
    InvalidSize,
    OutOfMemory,
    Pool,
    SizeTooLarge,
    SlabAllocator,
    StaleHandle,
    UseAfterRelease,
)

MAX_SSIZE = 2**63 - 1


class Indexable:
    """An int-like object (``operator.index`` works), as numpy scalars are."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Indexable({self.value})"


ints = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-4, max_value=9000),
    st.sampled_from([0, 1, MAX_SSIZE, MAX_SSIZE + 1, 2**64 - 1, 2**64, 4096, 8192, 2**32]),
)
junk = st.one_of(
    ints,
    ints.map(Indexable),
    st.integers(min_value=-128, max_value=127).map(np.int8),
    st.integers(min_value=0, max_value=2**64 - 1).map(np.uint64),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.just(object()),
)


def as_int(value: Any) -> int | None:
    """The integer the core should see, or None when the value is not an integer."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return None
    return value.__index__()


def size_error(value: Any) -> type[Exception] | None:
    """The documented rule for every size/count argument."""
    n = as_int(value)
    if n is None:
        return TypeError
    if n <= 0 or n > MAX_SSIZE:
        return InvalidSize
    return None


def align_error(value: Any) -> type[Exception] | None:
    """The documented rule for every alignment: a power of two in 1..4096."""
    n = as_int(value)
    if n is None:
        return TypeError
    if n <= 0 or n > 4096 or n & (n - 1):
        return InvalidAlignment
    return None


def raises_exactly(expected: type[Exception], action: Callable[[], Any]) -> Exception:
    """`action` raises `expected` itself (not a sibling), with a message naming the problem."""
    with pytest.raises(expected) as info:
        action()
    assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"
    assert str(info.value)
    return info.value


def state(allocator: Any) -> tuple[Any, ...]:
    s = allocator.stats
    return (s.in_use, s.allocations, s.releases, s.capacity, s.bytes_requested)


# -- sizes and alignments, every entry point ---------------------------------------------------

@given(size=junk)
def test_slab_allocate_validates_size_and_changes_nothing_on_error(size: Any) -> None:
    slab = SlabAllocator(8, 4096, 4)
    before = state(slab)
    error = size_error(size)
    n = as_int(size)
    if error is None and n is not None and n > 4096:
        error = SizeTooLarge
    for call in (slab.allocate, slab.try_allocate):
        if error is not None:
            raises_exactly(error, lambda call=call: call(size))
            continue
        assert n is not None
        blk = call(size)
        assert len(blk) == n and blk.reserved == max(8, 1 << (n - 1).bit_length())
        blk.release()
    after = state(slab)
    if error is not None:
        assert after == before
    else:
        assert after[0] == 0 and after[1] == before[1] + 2


@given(size=junk)
def test_size_class_validates_like_allocate(size: Any) -> None:
    slab = SlabAllocator(16, 1024)
    error = size_error(size)
    if error is not None:
        raises_exactly(error, lambda: slab.size_class(size))
        return
    n = as_int(size)
    assert n is not None
    expected = max(16, 1 << (n - 1).bit_length()) if n <= 1024 else None
    assert slab.size_class(size) == expected


@given(size=junk, align=junk)
def test_arena_allocate_validates_size_and_alignment(size: Any, align: Any) -> None:
    arena = Arena(4096)
    arena.allocate(3)  # an unaligned offset, so that alignment matters
    before = (arena.used, arena.stats.allocations, arena.live_handles)
    errors = {e for e in (size_error(size), align_error(align)) if e is not None}
    for call, raises in ((arena.allocate, True), (arena.try_allocate, False)):
        if errors:
            with pytest.raises(tuple(errors)) as info:
                call(size, align)
            assert type(info.value) in errors
            continue
        n, a = as_int(size), as_int(align)
        assert n is not None and a is not None
        start = -(-arena.used // a) * a
        if start + n > 4096:
            if raises:
                raises_exactly(ArenaOverflow, lambda call=call: call(size, align))
            else:
                assert call(size, align) is None
            continue
        blk = call(size, align)
        assert len(blk) == n and blk.address % a == 0 and blk.offset == start
    if errors:
        assert (arena.used, arena.stats.allocations, arena.live_handles) == before


@given(block_size=junk, capacity=junk, align=junk)
def test_pool_constructor_validates_every_argument(block_size: Any, capacity: Any,
                                                   align: Any) -> None:
    errors = {e for e in (size_error(block_size), size_error(capacity), align_error(align))
              if e is not None}
    bs, cap, al = as_int(block_size), as_int(capacity), as_int(align)
    if not errors and (bs > 0xFFFFFFF0 or cap > 0xFFFFFFF0):  # type: ignore[operator]
        errors = {InvalidSize}
    if errors:
        with pytest.raises(tuple(errors)) as info:
            Pool(block_size, capacity, align=align)
        assert type(info.value) in errors
        return
    assert bs is not None and cap is not None and al is not None
    stride = -(-bs // al) * al
    if stride * cap > (2**64 - 1) // 4:
        raises_exactly(InvalidSize, lambda: Pool(block_size, capacity, align=align))
    elif stride * cap > 2**47:  # beyond any user address space: refused, not crashed
        raises_exactly(OutOfMemory, lambda: Pool(block_size, capacity, align=align))
    elif stride * cap <= 2**24:
        pool = Pool(block_size, capacity, align=align)
        assert (pool.block_size, pool.stride, pool.capacity) == (bs, stride, cap)
        blk = pool.allocate()
        assert len(blk) == bs and blk.address % al == 0


@given(min_size=junk, max_size=junk, align=junk,
       per_class=junk.filter(lambda v: not isinstance(v, list)))  # lists: test_class_capacities
def test_slab_constructor_validates_every_argument(min_size: Any, max_size: Any,
                                                   per_class: Any, align: Any) -> None:
    errors = {e for e in (size_error(min_size), size_error(max_size), size_error(per_class),
                          align_error(align)) if e is not None}
    lo, hi, per = as_int(min_size), as_int(max_size), as_int(per_class)
    if lo is not None and hi is not None and (lo & (lo - 1) or hi & (hi - 1) or lo > hi
                                              or hi > 2**30):
        errors.add(InvalidSize)  # the class range is checked before blocks_per_class
    if not errors:
        assert lo is not None and hi is not None and per is not None
        if per > 0xFFFFFFF0 or per * hi > (2**64 - 1) // 4:
            errors = {InvalidSize}
    if errors:
        with pytest.raises(tuple(errors)) as info:
            SlabAllocator(min_size, max_size, per_class, align=align)
        assert type(info.value) in errors
        return
    slab = SlabAllocator(min_size, max_size, per_class, align=align)
    assert slab.class_sizes[0] == lo and slab.class_sizes[-1] == hi
    assert slab.in_use == 0 and slab.stats.capacity == 0  # classes are lazy: nothing reserved


@given(capacity=junk)
def test_arena_constructor_validates_capacity(capacity: Any) -> None:
    error = size_error(capacity)
    if error is not None:
        raises_exactly(error, lambda: Arena(capacity))
        return
    n = as_int(capacity)
    assert n is not None
    if n > 2**47:
        raises_exactly(OutOfMemory, lambda: Arena(capacity))
    elif n <= 2**24:
        assert Arena(capacity).capacity == n


def test_index_errors_of_user_objects_propagate_unchanged() -> None:
    class Broken:
        def __index__(self) -> int:
            raise RuntimeError("broken __index__")

    pool = Pool(8, 1)
    with pytest.raises(RuntimeError, match="broken"):
        SlabAllocator().allocate(Broken())
    with pytest.raises(RuntimeError, match="broken"):
        Arena(64).allocate(8, align=Broken())
    assert pool.in_use == 0


# -- size x count overflow ---------------------------------------------------------------------

@given(shift_size=st.integers(0, 32), shift_count=st.integers(0, 32), extra=st.integers(0, 7))
def test_pool_size_times_capacity_overflow_is_refused(shift_size: int, shift_count: int,
                                                      extra: int) -> None:
    block_size = (1 << shift_size) + extra
    capacity = 1 << shift_count
    if block_size > 0xFFFFFFF0 or capacity > 0xFFFFFFF0:
        raises_exactly(InvalidSize, lambda: Pool(block_size, capacity))
        return
    stride = -(-block_size // 8) * 8
    total = stride * capacity
    if total > (2**64 - 1) // 4:
        error = raises_exactly(InvalidSize, lambda: Pool(block_size, capacity))
        assert "overflow" in str(error)
    elif total > 2**47:
        raises_exactly(OutOfMemory, lambda: Pool(block_size, capacity))
    # (feasible sizes are exercised elsewhere; reserving them here would cost real memory)


def test_slab_blocks_per_class_times_max_size_overflow() -> None:
    error = raises_exactly(InvalidSize,
                           lambda: SlabAllocator(max_size=2**30, blocks_per_class=2**32))
    assert "overflow" in str(error) or "blocks_per_class" in str(error)
    raises_exactly(InvalidSize, lambda: SlabAllocator(max_size=2**30, blocks_per_class=2**33))


def test_unreservable_class_raises_out_of_memory_and_other_classes_still_work() -> None:
    slab = SlabAllocator(max_size=2**30, blocks_per_class=2**20)  # 2**50 bytes for the top class
    raises_exactly(OutOfMemory, lambda: slab.allocate(2**30))
    raises_exactly(OutOfMemory, lambda: slab.try_allocate(2**30))
    blk = slab.allocate(100)
    memoryview(blk)[:] = b"\x07" * 100
    assert blk.tobytes() == b"\x07" * 100
    blk.release()
    assert slab.in_use == 0


def test_arena_request_near_the_address_space_limit_overflows_cleanly() -> None:
    arena = Arena(256)
    arena.allocate(10)
    for size in (2**62, MAX_SSIZE, 2**63 - 4096):
        raises_exactly(ArenaOverflow, lambda size=size: arena.allocate(size, align=4096))
        assert arena.try_allocate(size, align=4096) is None
    assert arena.used == 10 and arena.stats.failures == 6


# -- wrong types and values of the other arguments ---------------------------------------------

@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: Pool(8, 1, name=5), TypeError),
        (lambda: SlabAllocator(fallback=None), ValueError),
        (lambda: SlabAllocator(fallback=1), TypeError),
        (lambda: SlabAllocator(fallback="SYSTEM"), ValueError),
        (lambda: SlabAllocator(name=b"slab"), TypeError),
        (lambda: Arena(64, name=1.5), TypeError),
        (lambda: Arena(64, stale_error=KeyError), TypeError),
        (lambda: Arena(64, stale_error=StaleHandle("instance, not class")), TypeError),
        (lambda: Arena(64).reset(on_exported=None), ValueError),
        (lambda: Arena(64).reset(on_exported=1), TypeError),
        (lambda: Arena(64).rewind(None), TypeError),
        (lambda: Arena(64).rewind("mark"), TypeError),
        (lambda: Arena(64).rewind(Arena(64).mark()), InvalidMark),
    ],
)
def test_other_arguments(make: Callable[[], Any], error: type[Exception]) -> None:
    raises_exactly(error, make)


@pytest.mark.parametrize("intruder", [None, 7, "block", b"\0" * 8, bytearray(8), memoryview(b"x")])
def test_release_of_non_blocks_is_foreign(intruder: Any) -> None:
    for allocator in (Pool(8, 2), SlabAllocator()):
        raises_exactly(ForeignBlock, lambda allocator=allocator: allocator.release(intruder))
        assert allocator.in_use == 0


def test_release_of_another_allocators_block_is_foreign_and_harmless() -> None:
    pool, other_pool, slab, arena = Pool(64, 2), Pool(64, 2), SlabAllocator(), Arena(256)
    blocks = [other_pool.allocate(), slab.allocate(64), arena.allocate(64)]
    for blk in blocks:
        memoryview(blk)[:] = b"\x5a" * 64
    for target in (pool, slab):
        for blk in blocks:
            if blk.owner is target:
                continue
            raises_exactly(ForeignBlock, lambda t=target, b=blk: t.release(b))
    assert all(b.live and b.tobytes() == b"\x5a" * 64 for b in blocks)
    assert (pool.in_use, other_pool.in_use, slab.in_use) == (0, 1, 1)


# -- handles cannot be duplicated --------------------------------------------------------------

@pytest.mark.parametrize("duplicate", [copy.copy, copy.deepcopy, pickle.dumps])
def test_allocators_and_blocks_refuse_copy_and_pickle(duplicate: Callable[[Any], Any]) -> None:
    pool = Pool(16, 2)
    blk = pool.allocate()
    for obj in (pool, blk, SlabAllocator(), Arena(64), SlabAllocator().allocate(9)):
        with pytest.raises(TypeError):
            duplicate(obj)
    assert pool.in_use == 1 and blk.live


def test_a_copied_mark_is_the_same_mark_and_goes_stale_with_it() -> None:
    arena = Arena(256)
    arena.allocate(8)
    mark = arena.mark()
    later = arena.allocate(8)
    clone = copy.copy(mark)
    arena.rewind(clone)  # same position, same validity checks as the original
    assert arena.used == 8 and not later.live
    arena.rewind(mark)
    arena.reset()
    for m in (mark, clone):
        raises_exactly(InvalidMark, lambda m=m: arena.rewind(m))
    with pytest.raises(TypeError):
        pickle.dumps(mark)  # would need to pickle the arena


# -- closing with live blocks: raise, or keep memory alive until the last user ------------------

@pytest.mark.parametrize("make", [lambda: Pool(32, 4), lambda: SlabAllocator(fallback="system")])
def test_close_with_live_blocks_raises_and_leaves_the_allocator_working(make: Callable[[], Any]
                                                                         ) -> None:
    allocator = make()
    size = () if isinstance(allocator, Pool) else (32,)
    blk = allocator.allocate(*size)
    memoryview(blk)[:] = b"\x11" * 32
    raises_exactly(BlocksStillLive, allocator.close)
    assert not allocator.closed and blk.tobytes() == b"\x11" * 32
    allocator.allocate(*size).release()  # still usable after the refused close
    blk.release()
    allocator.close()
    raises_exactly(AllocatorClosed, lambda: allocator.allocate(*size))
    raises_exactly(AllocatorClosed, lambda: allocator.try_allocate(*size))
    allocator.close()  # idempotent


def test_slab_close_counts_live_system_fallback_blocks() -> None:
    slab = SlabAllocator(max_size=64, fallback="system")
    big = slab.allocate(1000)
    raises_exactly(BlocksStillLive, slab.close)
    big.release()
    slab.close()


def test_closing_context_manager_with_a_live_block_chains_the_original_error() -> None:
    with pytest.raises(BlocksStillLive) as info, Pool(8, 1) as pool:
        kept = pool.allocate()
        raise KeyError("body failed")
    assert isinstance(info.value.__context__, KeyError)
    kept.release()
    pool.close()


def test_closed_arena_keeps_live_blocks_and_views_valid() -> None:
    arena = Arena(256)
    blk = arena.allocate(64)
    memoryview(blk)[:] = bytes(range(64))
    view = np.frombuffer(blk, dtype=np.uint8)
    arena.close()
    raises_exactly(AllocatorClosed, partial(arena.allocate, 8))
    raises_exactly(AllocatorClosed, arena.mark)
    assert blk.tobytes() == bytes(range(64))
    del arena
    gc.collect()
    assert bytes(view) == bytes(range(64))  # the view keeps block, arena and region alive
    view[0] = 200
    assert blk.tobytes()[0] == 200


def test_dropping_the_allocator_never_frees_memory_under_a_live_view() -> None:
    views = []
    for make in (lambda: Pool(64, 1).allocate(), lambda: SlabAllocator().allocate(64),
                 lambda: SlabAllocator(max_size=32, fallback="system").allocate(64),
                 lambda: Arena(64).allocate(64)):
        blk = make()  # the allocator object itself is unreferenced from here on
        memoryview(blk)[:] = b"\x42" * 64
        views.append(memoryview(blk))
        del blk
    gc.collect()
    for _ in range(3):  # churn the heap so a freed slab would be reused
        junk = [bytearray(64) for _ in range(1000)]
        del junk
    assert all(v.tobytes() == b"\x42" * 64 for v in views)


# -- buffer exports that fail, or that break the rules -----------------------------------------

def test_failed_exports_do_not_leak_an_export_count() -> None:
    pool = Pool(12, 1)
    blk = pool.allocate()
    with pytest.raises(ValueError):
        np.frombuffer(blk, dtype=np.uint64)  # 12 bytes is not a multiple of 8
    view = memoryview(blk)
    with pytest.raises(TypeError):
        view.cast("Q")
    view.release()
    assert blk.exported == 0
    blk.release()
    assert pool.in_use == 0


def test_readonly_view_refuses_writes_and_bounds_are_the_requested_size() -> None:
    pool = Pool(5, 1, align=64)  # 59 bytes of padding after the block
    blk = pool.allocate()
    ro = blk.view(readonly=True)
    with pytest.raises(TypeError):
        ro[0] = 1
    ro.release()
    with pytest.raises(struct.error):
        struct.pack_into("<Q", blk, 0, 1)  # 8 bytes into a 5-byte block
    with pytest.raises(ValueError):
        memoryview(blk)[:] = b"x" * 6
    assert len(blk) == 5 and blk.reserved == 64 and blk.exported == 0


def test_dead_handles_refuse_export_in_every_form() -> None:
    pool, arena = Pool(16, 1), Arena(64)
    released = pool.allocate()
    released.release()
    stale = arena.allocate(16)
    arena.reset()
    for blk, error in ((released, UseAfterRelease), (stale, StaleHandle)):
        for export in (memoryview, lambda b: np.frombuffer(b, np.uint8), bytes, bytearray,
                       lambda b: b.view(), lambda b: struct.unpack_from("<I", b)):
            raises_exactly(error, lambda e=export, b=blk: e(b))
        assert blk.exported == 0


def test_block_type_cannot_be_built_or_subclassed() -> None:
    with pytest.raises(TypeError):
        Block()
    with pytest.raises(TypeError):
        type("MyBlock", (Block,), {})


def test_export_while_releasing_is_refused_then_allowed_after_the_view_goes() -> None:
    slab = SlabAllocator()
    blk = slab.allocate(40)
    arr = np.frombuffer(blk, dtype=np.uint8)
    raises_exactly(BufferStillExported, blk.release)
    raises_exactly(BufferStillExported, lambda: slab.release(blk))
    assert blk.live and slab.in_use == 1
    del arr
    slab.release(blk)
    assert slab.in_use == 0


# -- no uncollectable cycle through a block ---------------------------------------------------

def test_origin_cannot_make_a_block_uncollectable() -> None:
    """Blocks are not GC-tracked, so nothing stored on one may reference it back."""
    pool = Pool(8, 2)
    blk = pool.allocate()
    with pytest.raises(TypeError):
        blk.origin = [blk]  # a cycle the collector could never see
    blk.origin = "allocated here"
    assert blk.origin == "allocated here"
    del blk
    gc.collect()
    assert pool.in_use == 0


@pytest.mark.skipif(os.environ.get("SAFETY_LONG") != "1",
                    reason="2**32 alloc/free cycles in C (~40 s): run with SAFETY_LONG=1")
def test_generation_wrap_does_not_resurrect_a_handle_freed_through_the_c_api() -> None:
    capi = capi_demo.load()
    pool = Pool(8, 1)
    stale = pool.allocate()
    assert capi.pool_free_address(pool, stale.address) == 0  # freed behind the handle's back
    capi.pool_alloc_free_ns(pool, 2**32 - 1)  # the same slot, again and again
    owner = pool.allocate()
    owner.view()[:] = b"SECRET!!"
    assert not stale.live
    with pytest.raises(UseAfterRelease):
        stale.tobytes()
