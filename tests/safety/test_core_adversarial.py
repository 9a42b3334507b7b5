"""Adversarial use of the coreallocs types: duplicates, half-built objects, random sequences.

1. Each case that could crash the interpreter runs in a child interpreter (a crash fails
   the test instead of killing pytest): copies and pickles of every type, objects made with
   ``Type.__new__`` alone, a second ``__init__``.
2. Hypothesis drives random sizes, alignments, counts and operation sequences against
   small models: pool geometry, arena bump/mark/rewind/reset arithmetic, slab routing with
   per-class capacities and both fallback policies, the ObjectPool accounting, and the C
   API freeing Python-owned blocks.
"""

from __future__ import annotations

import gc
import itertools
import subprocess
import sys
import textwrap

import capi_demo
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coreallocs import (
    AllocatorClosed,
    Arena,
    ArenaOverflow,
    DoubleRelease,
    InvalidMark,
    ObjectPool,
    Pool,
    PoolExhausted,
    SizeTooLarge,
    SlabAllocator,
    StaleHandle,
    UseAfterRelease,
)

capi = capi_demo.load()  # tests/support/capi_demo: built against the installed package

PRELUDE = """
import copy, gc, pickle, sys, weakref
import coreallocs
from coreallocs import *
from coreallocs import NotInitialized

def expect(error, action, *args):
    try:
        action(*args)
    except error:
        return
    except BaseException as exc:
        raise AssertionError(f"{action} raised {type(exc).__name__}: {exc}, not {error.__name__}")
    raise AssertionError(f"{action} did not raise {error.__name__}")

def refuses_duplicates(obj):
    for duplicate in (copy.copy, copy.deepcopy, pickle.dumps,
                      lambda o: pickle.dumps(o, protocol=0)):
        expect(TypeError, duplicate, obj)
"""


def run_child(body: str) -> None:
    """Run PRELUDE + body in a fresh interpreter; it must exit 0 and print CHILD OK."""
    code = PRELUDE + textwrap.dedent(body) + "\nprint('CHILD OK')\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0 and "CHILD OK" in result.stdout, (
        f"child exited with {result.returncode}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}")
    assert "Exception ignored" not in result.stderr, result.stderr


# -- 1. duplicates and half-built objects (child interpreters) ---------------------------------

def test_object_pool_refuses_copy_deepcopy_and_pickle_and_keeps_its_state() -> None:
    run_child("""
        pool = ObjectPool(list, 4, prefill=2)
        guard = pool.acquire()
        guard.value.append(1)
        refuses_duplicates(pool)
        refuses_duplicates(guard)
        assert (pool.idle, pool.in_use, pool.created) == (1, 1, 2)
        guard.release()
        assert (pool.idle, pool.in_use) == (2, 0)
    """)


def test_a_guard_made_with_new_refuses_everything_and_never_touches_memory() -> None:
    run_child("""
        orphan = PooledObject.__new__(PooledObject)
        for action in (orphan.release, orphan.detach, orphan.__enter__,
                       lambda: orphan.value, lambda: orphan.obj, lambda: orphan.held,
                       lambda: orphan.pool):
            expect(NotInitialized, action)
        assert "never handed out" in repr(orphan)
        orphan.__exit__(None, None, None)   # nothing held: nothing to give back
        refuses_duplicates(orphan)
        del orphan
        gc.collect()
        # the guard type's free list hands the same memory out again: still a valid guard
        pool = ObjectPool(dict, 2)
        with pool.acquire() as d:
            d["k"] = 1
        assert (pool.in_use, pool.idle, pool.created) == (0, 1, 1)
    """)


def test_an_object_pool_made_with_new_refuses_everything() -> None:
    run_child("""
        half = ObjectPool.__new__(ObjectPool)
        for action in (half.acquire, half.clear, half.close, half.stats, half.__enter__,
                       half.__len__):
            expect(NotInitialized, action)
        for name in ("max_size", "created", "reused", "dropped", "detached", "in_use",
                     "idle", "high_water", "reclaimed", "closed"):
            expect(NotInitialized, getattr, half, name)
        assert "not initialised" in repr(half)
        refuses_duplicates(half)

        class Forgetful(ObjectPool):
            def __init__(self):
                pass                          # never calls ObjectPool.__init__
        expect(NotInitialized, Forgetful().acquire)
    """)


def test_a_second_init_is_refused_and_changes_nothing() -> None:
    run_child("""
        pool = ObjectPool(list, 4, prefill=2, name="p")
        guard = pool.acquire()
        expect(TypeError, pool.__init__, dict, 8)
        assert (pool.name, pool.max_size, pool.idle, pool.in_use, pool.created) == ("p", 4, 1, 1, 2)
        assert isinstance(guard.value, list)
        guard.release()
        scope = ResourceScope("s")
        scope.callback(lambda: None)
        expect(TypeError, scope.__init__, "other")
        assert scope.name == "s" and scope.own_count == 1
        scope.close()
    """)


def test_blocks_and_marks_made_with_new_raise_not_initialized() -> None:
    run_child("""
        blk = Block.__new__(Block)
        for action in (blk.release, blk.tobytes, blk.view, blk.__len__, blk.__enter__,
                       lambda: memoryview(blk), lambda: blk.address):
            expect(NotInitialized, action)
        for name in ("nbytes", "reserved", "live", "kind", "owner", "exported",
                     "generation", "offset"):
            expect(NotInitialized, getattr, blk, name)
        assert "not from an allocator" in repr(blk)
        blk.__exit__(None, None, None)
        for pool in (Pool(8, 1), SlabAllocator()):
            expect(ForeignBlock, pool.release, blk)
        del blk
        gc.collect()

        mark = Mark.__new__(Mark)
        expect(NotInitialized, getattr, mark, "offset")
        arena = Arena(64)
        expect(InvalidMark, arena.rewind, mark)
        assert "not from an arena" in repr(mark)
        # a live mark is an immutable value: its copies are itself; pickling is refused
        live = arena.mark()
        assert copy.copy(live) is live and copy.deepcopy(live) is live
        expect(TypeError, pickle.dumps, live)
    """)


def test_python_level_types_made_with_new_raise_not_initialized_and_finalize_quietly() -> None:
    run_child("""
        from coreallocs.boxes import Box
        box = Box.__new__(Box)
        for action in (box.release, box.__enter__, lambda: box.value, lambda: box.block,
                       lambda: box.live, lambda: box.array, lambda: box.nbytes,
                       lambda: box[0]):
            expect(NotInitialized, action)
        assert "not initialised" in repr(box)
        guard = ScopeGuard.__new__(ScopeGuard)
        for action in (guard.release, guard.detach, lambda: guard.resource,
                       lambda: guard.scope, lambda: guard.released):
            expect(NotInitialized, action)
        assert "not initialised" in repr(guard)
        scope = ResourceScope.__new__(ResourceScope)
        for action in (scope.close, scope.child, lambda: scope.callback(print),
                       lambda: scope.own_count, lambda: scope.closed, lambda: scope.parent):
            expect(NotInitialized, action)
        assert "not initialised" in repr(scope)
        expect(AttributeError, getattr, scope, "no_such_attribute")
        del box, guard, scope
        gc.collect()      # the scope finalizer must not raise (checked: no "Exception ignored")
    """)


def test_every_core_type_refuses_duplicates_and_copies_share_nothing() -> None:
    run_child("""
        pool, slab, arena = Pool(16, 2), SlabAllocator(fallback="system"), Arena(256)
        objects = [pool, slab, arena, pool.allocate(), slab.allocate(9), slab.allocate(9000),
                   arena.allocate(8), slab.box("<q", 5), ResourceScope("s")]
        scope = ResourceScope("owner")
        objects.append(scope.add(pool.allocate()))
        for obj in objects:
            refuses_duplicates(obj)
        assert pool.in_use == 2 and slab.in_use == 3 and scope.own_count == 1
        scope.close()
        assert pool.in_use == 1
    """)


def test_the_core_imports_without_the_box_helper_and_the_object_pool_stats_type() -> None:
    """No import circle: the compiled core loads neither coreallocs.boxes nor object_pool."""
    run_child("""
        import importlib, sys
        for name in ("_core", "_objpool"):
            module = importlib.import_module(f"coreallocs.{name}")
            assert not {"boxes", "object_pool"} & set(vars(module)), name
        from coreallocs.stats import ObjectPoolStats
        from coreallocs.object_pool import ObjectPoolStats as Same
        assert Same is ObjectPoolStats and ObjectPool(list, 1).stats().__class__ is ObjectPoolStats
        assert type(SlabAllocator().box("<d", 1.5)).__name__ == "Box"
    """)


# -- 2. random sizes, alignments, counts and sequences against models --------------------------

def align_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@given(block_size=st.integers(1, 300), capacity=st.integers(1, 24),
       align_log=st.integers(0, 12), grow=st.booleans(), data=st.data())
def test_pool_geometry_matches_the_model(block_size: int, capacity: int, align_log: int,
                                         grow: bool, data: st.DataObject) -> None:
    align = 1 << align_log
    pool = Pool(block_size, capacity, align=align, grow=grow)
    stride = align_up(block_size, align)
    assert (pool.stride, pool.capacity, pool.block_size) == (stride, capacity, block_size)
    wanted = data.draw(st.integers(0, 2 * capacity), label="allocations")
    blocks = []
    for _ in range(wanted):
        if not grow and len(blocks) == capacity:
            with pytest.raises(PoolExhausted):
                pool.allocate()
            assert pool.try_allocate() is None
            break
        blk = pool.allocate()
        assert blk.address % align == 0 and len(blk) == block_size == blk.nbytes
        blocks.append(blk)
    addresses = sorted(b.address for b in blocks)
    assert all(b - a >= stride for a, b in itertools.pairwise(addresses))
    assert pool.in_use == len(blocks)
    assert pool.capacity == (capacity * -(-len(blocks) // capacity) if grow and blocks
                             else capacity)
    freed = data.draw(st.lists(st.sampled_from(range(len(blocks))), unique=True)
                      if blocks else st.just([]), label="freed")
    for i in freed:
        blocks[i].release()
    for i in freed:
        with pytest.raises(DoubleRelease):
            blocks[i].release()
    assert pool.in_use == len(blocks) - len(freed)
    assert pool.stats.allocations == len(blocks) and pool.stats.releases == len(freed)


arena_ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(1, 700), st.integers(0, 12)),
        st.tuples(st.just("mark")),
        st.tuples(st.just("rewind"), st.integers(0, 50)),
        st.tuples(st.just("reset")),
        st.tuples(st.just("use"), st.integers(0, 50)),
    ),
    max_size=40,
)


@given(capacity=st.integers(1, 4096), ops=arena_ops)
def test_arena_bump_mark_rewind_reset_match_the_model(capacity: int, ops: list[tuple]) -> None:
    """Model: the offset, each handle's offset, and which handles/marks are still live
    (a stack: rewind keeps what is at or below the mark, reset keeps nothing)."""
    arena = Arena(capacity)
    offset = 0
    stack: list[tuple[str, object, int]] = []  # (kind, handle, offset), oldest first
    dead: list[tuple[str, object]] = []
    for op in ops:
        if op[0] == "alloc":
            size, align = op[1], 1 << op[2]
            start = align_up(offset, align)
            if start + size > capacity:
                with pytest.raises(ArenaOverflow):
                    arena.allocate(size, align)
                assert arena.try_allocate(size, align) is None
                continue
            blk = arena.allocate(size, align)
            assert blk.offset == start and blk.address % align == 0
            blk.view()[:] = bytes([start % 251]) * size
            stack.append(("block", blk, start))
            offset = start + size
        elif op[0] == "mark":
            mark = arena.mark()
            assert mark.offset == offset
            stack.append(("mark", mark, offset))
        elif op[0] == "rewind":
            marks = [i for i, (kind, _, _) in enumerate(stack) if kind == "mark"]
            if marks:
                i = marks[op[1] % len(marks)]
                arena.rewind(stack[i][1])
                dead += [(kind, h) for kind, h, _ in stack[i + 1:]]
                del stack[i + 1:]
                offset = stack[i][2]
            elif dead:
                kind, h = dead[op[1] % len(dead)]
                if kind == "mark":
                    with pytest.raises(InvalidMark):
                        arena.rewind(h)
        elif op[0] == "reset":
            arena.reset()
            dead += [(kind, h) for kind, h, _ in stack]
            stack, offset = [], 0
        elif dead:
            kind, h = dead[op[1] % len(dead)]
            if kind == "block":
                with pytest.raises(StaleHandle):
                    h.tobytes()
        assert arena.used == offset and arena.live_handles == len(stack)
    for kind, h, start in stack:
        if kind == "block":
            assert h.live and h.tobytes() == bytes([start % 251]) * len(h)


@given(min_log=st.integers(0, 6), extra=st.integers(0, 5),
       caps=st.lists(st.integers(1, 6), min_size=12, max_size=12),
       fallback=st.sampled_from(["raise", "system"]),
       sizes=st.lists(st.integers(1, 5000), max_size=40))
def test_slab_routing_and_per_class_capacities_match_the_model(
        min_log: int, extra: int, caps: list[int], fallback: str, sizes: list[int]) -> None:
    lo, hi = 1 << min_log, 1 << (min_log + extra)
    classes = [lo << k for k in range(extra + 1)]
    slab = SlabAllocator(lo, hi, dict(zip(classes, caps, strict=False)), grow=False,
                         fallback=fallback)
    assert slab.class_capacities == tuple(caps[: extra + 1])
    held: dict[int, int] = dict.fromkeys(classes, 0)
    blocks, system = [], 0
    for size in sizes:
        klass = next((c for c in classes if c >= size), None)
        assert slab.size_class(size) == klass
        if klass is None:
            if fallback == "raise":
                with pytest.raises(SizeTooLarge):
                    slab.allocate(size)
                continue
            blk = slab.allocate(size)
            assert blk.kind == "system" and len(blk) == size
            system += 1
        elif held[klass] == slab.class_capacity(size):
            with pytest.raises(PoolExhausted):
                slab.allocate(size)
            assert slab.try_allocate(size) is None
            continue
        else:
            blk = slab.allocate(size)
            assert blk.reserved == max(klass, 8) and len(blk) == size  # rounded up to align=8
            held[klass] += 1
        blocks.append(blk)
    assert slab.in_use == len(blocks) == sum(held.values()) + system
    assert [row.in_use for row in slab.class_stats()] == [held[c] for c in classes]
    for blk in blocks:
        slab.release(blk)
    assert slab.in_use == 0


pool_ops = st.lists(st.sampled_from(["acquire", "release", "detach", "drop", "clear",
                                     "failing_reset", "close"]), max_size=40)


@given(max_size=st.integers(1, 4), prefill=st.integers(0, 4), ops=pool_ops)
def test_object_pool_accounting_matches_the_model(max_size: int, prefill: int,
                                                  ops: list[str]) -> None:
    prefill = min(prefill, max_size)
    fail = [False]

    def reset(obj: list[int]) -> None:
        if fail[0]:
            fail[0] = False
            raise ValueError("reset refused")
        obj.clear()

    pool = ObjectPool(list, max_size, reset, prefill=prefill)
    created, idle, in_use, dropped, detached, closed = prefill, prefill, 0, 0, 0, False
    guards = []
    for op in ops:
        if op == "acquire":
            if closed:
                with pytest.raises(AllocatorClosed):
                    pool.acquire()
                continue
            guards.append(pool.acquire())
            if idle:
                idle -= 1
            else:
                created += 1
            in_use += 1
        elif op in ("release", "drop", "failing_reset") and guards:
            guard = guards.pop()
            keep = not closed and idle < max_size
            if op == "failing_reset" and keep:
                fail[0] = True
                with pytest.raises(ValueError):
                    guard.release()
                dropped += 1
            elif op == "drop":
                del guard
                gc.collect()
                dropped += not keep
                idle += keep
            else:
                guard.release()
                dropped += not keep
                idle += keep
            in_use -= 1
        elif op == "detach" and guards:
            guards.pop().detach()
            in_use, detached = in_use - 1, detached + 1
        elif op == "clear":
            assert pool.clear() == idle
            dropped, idle = dropped + idle, 0
        elif op == "close":
            pool.close()
            dropped, idle, closed = dropped + idle, 0, True
        s = pool.stats()
        assert (s.created, s.idle, s.in_use, s.dropped, s.detached) == (
            created, idle, in_use, dropped, detached)
        assert s.created - s.dropped - s.detached == s.idle + s.in_use
    for guard in guards:
        guard.release()
        with pytest.raises(UseAfterRelease):
            guard.value  # noqa: B018  (a released guard refuses use)


@given(ops=st.lists(st.tuples(st.sampled_from(["py", "c", "c_frees_py", "py_release"]),
                              st.integers(0, 30)), max_size=40))
def test_c_api_and_python_handles_share_one_pool_consistently(ops: list[tuple[str, int]]) -> None:
    pool = Pool(32, 8)
    handles: list = []
    c_addresses: list[int] = []
    dead: list = []
    for op, pick in ops:
        live = len(handles) + len(c_addresses)
        if op == "py":
            if live == 8:
                assert pool.try_allocate() is None
                continue
            handles.append(pool.allocate())
        elif op == "c":
            address = capi.pool_alloc_address(pool)
            assert (address == 0) == (live == 8)
            if address:
                c_addresses.append(address)
        elif op == "c_frees_py" and handles:
            blk = handles.pop(pick % len(handles))
            assert capi.pool_free_address(pool, blk.address) == 0
            dead.append(blk)
        elif op == "py_release" and handles:
            handles.pop(pick % len(handles)).release()
        for blk in dead:
            with pytest.raises(UseAfterRelease):
                blk.tobytes()
            with pytest.raises(DoubleRelease):
                blk.release()
        assert pool.in_use == len(handles) + len(c_addresses)
    for address in c_addresses:
        assert capi.pool_free_address(pool, address) == 0
        assert capi.pool_free_address(pool, address) == 4  # CA_DOUBLE_FREE
    del handles, dead
    gc.collect()
    assert pool.in_use == 0
