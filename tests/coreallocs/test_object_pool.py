"""ObjectPool: reuse, bounded idle list, guards, GC safety net, accounting, threads."""

from __future__ import annotations

import copy
import gc
import itertools
import pickle
import random
import runpy
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coreallocs.errors import (
    AllocatorClosed,
    AllocatorError,
    DoubleRelease,
    InvalidSize,
    UseAfterRelease,
)
from coreallocs.object_pool import ObjectPool, ObjectPoolStats, PooledObject


class Thing:
    """A pooled object that knows its serial number and can be poisoned for reset()."""

    _serials = itertools.count()

    def __init__(self) -> None:
        self.serial = next(Thing._serials)
        self.payload: list[int] = []
        self.poisoned = False


def clean(thing: Thing) -> None:
    if thing.poisoned:
        raise RuntimeError(f"thing {thing.serial} cannot be reset")
    thing.payload.clear()


def assert_balanced(s: ObjectPoolStats) -> None:
    assert s.created - s.dropped - s.detached == s.idle + s.in_use


# -- basic behaviour -----------------------------------------------------------
def test_with_returns_object_and_next_acquire_reuses_it() -> None:
    pool = ObjectPool(Thing, max_size=4)
    with pool.acquire() as first:
        assert isinstance(first, Thing)
        assert pool.in_use == 1
    assert (pool.in_use, pool.idle) == (0, 1)
    with pool.acquire() as second:
        assert second is first
    s = pool.stats()
    assert (s.created, s.reused, s.dropped, s.high_water) == (1, 1, 0, 1)


def test_empty_pool_calls_factory_for_each_concurrent_acquire() -> None:
    pool = ObjectPool(Thing, max_size=4)
    guards = [pool.acquire() for _ in range(3)]
    assert len({id(g.value) for g in guards}) == 3
    assert (pool.created, pool.in_use, pool.high_water) == (3, 3, 3)
    for g in guards:
        g.release()
    assert (pool.in_use, pool.idle) == (0, 3)


def test_reset_runs_before_the_object_is_reused() -> None:
    pool = ObjectPool(Thing, max_size=2, reset=clean)
    with pool.acquire() as thing:
        thing.payload.extend([1, 2, 3])
    with pool.acquire() as again:
        assert again is thing
        assert again.payload == []


def test_full_pool_drops_returned_objects_and_counts_them() -> None:
    pool = ObjectPool(Thing, max_size=2)
    guards = [pool.acquire() for _ in range(5)]
    for g in guards:
        g.release()
    s = pool.stats()
    assert (s.idle, s.dropped, s.in_use, s.created) == (2, 3, 0, 5)
    assert_balanced(s)


def test_full_pool_does_not_reset_objects_it_drops() -> None:
    calls: list[int] = []
    pool = ObjectPool(Thing, max_size=1, reset=lambda t: calls.append(t.serial))
    a, b = pool.acquire(), pool.acquire()
    a.release()
    b.release()
    assert len(calls) == 1
    assert pool.dropped == 1


def test_prefill_builds_objects_up_front() -> None:
    pool = ObjectPool(Thing, max_size=4, prefill=3)
    assert (pool.created, pool.idle) == (3, 3)
    with pool.acquire():
        pass
    assert (pool.created, pool.reused) == (3, 1)


def test_guard_outside_with_release_and_value_alias() -> None:
    pool = ObjectPool(dict, max_size=2)
    guard = pool.acquire()
    assert isinstance(guard, PooledObject)
    assert guard.value is guard.obj
    guard.value["k"] = 1
    assert guard.held
    guard.release()
    assert not guard.held
    assert pool.idle == 1


# -- misuse --------------------------------------------------------------------
def test_double_release_raises_and_does_not_return_twice() -> None:
    pool = ObjectPool(Thing, max_size=4)
    guard = pool.acquire()
    guard.release()
    with pytest.raises(DoubleRelease):
        guard.release()
    assert (pool.idle, pool.in_use) == (1, 0)
    # the object must not be handed to two borrowers
    a, b = pool.acquire(), pool.acquire()
    assert a.value is not b.value


def test_use_after_release_raises() -> None:
    pool = ObjectPool(Thing, max_size=4)
    guard = pool.acquire()
    guard.release()
    with pytest.raises(UseAfterRelease):
        _ = guard.value
    with pytest.raises(UseAfterRelease), guard:
        pass


def test_release_inside_with_then_exit_is_quiet() -> None:
    pool = ObjectPool(Thing, max_size=4)
    with pool.acquire() as guard_obj:
        pass
    guard = pool.acquire()
    with guard as obj:
        assert obj is guard_obj
        guard.release()
    assert (pool.idle, pool.in_use) == (1, 0)


def test_detach_keeps_object_out_of_the_pool() -> None:
    pool = ObjectPool(Thing, max_size=4)
    guard = pool.acquire()
    kept = guard.detach()
    assert isinstance(kept, Thing)
    s = pool.stats()
    assert (s.detached, s.in_use, s.idle) == (1, 0, 0)
    assert_balanced(s)
    with pytest.raises(DoubleRelease):
        guard.release()
    with pytest.raises(DoubleRelease):
        guard.detach()
    with pytest.raises(UseAfterRelease):
        _ = guard.value
    with pool.acquire() as fresh:
        assert fresh is not kept


def test_guard_cannot_be_copied_into_a_second_owner() -> None:
    pool = ObjectPool(Thing, max_size=4)
    guard = pool.acquire()
    for duplicate in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be copied"):
            duplicate(guard)
    with pytest.raises(TypeError):
        PooledObject()
    guard.release()
    assert (pool.idle, pool.in_use) == (1, 0)


def test_detach_inside_with_skips_the_return() -> None:
    pool = ObjectPool(Thing, max_size=4)
    guard = pool.acquire()
    with guard as obj:
        assert guard.detach() is obj
    assert (pool.idle, pool.detached) == (0, 1)


def test_reset_failure_drops_object_counts_it_and_propagates() -> None:
    pool = ObjectPool(Thing, max_size=4, reset=clean)
    guard = pool.acquire()
    guard.value.poisoned = True
    with pytest.raises(RuntimeError, match="cannot be reset"):
        guard.release()
    s = pool.stats()
    assert (s.dropped, s.reset_failures, s.idle, s.in_use) == (1, 1, 0, 0)
    assert_balanced(s)
    with pytest.raises(DoubleRelease):
        guard.release()


def test_errors_are_allocator_errors() -> None:
    assert issubclass(DoubleRelease, AllocatorError)
    assert issubclass(UseAfterRelease, AllocatorError)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"factory": Thing, "max_size": 0}, InvalidSize),
        ({"factory": Thing, "max_size": -3}, InvalidSize),
        ({"factory": Thing, "max_size": 2.5}, TypeError),
        ({"factory": Thing, "max_size": True}, TypeError),
        ({"factory": Thing, "max_size": 2, "prefill": 3}, InvalidSize),
        ({"factory": Thing, "max_size": 2, "prefill": -1}, InvalidSize),
        ({"factory": 42, "max_size": 2}, TypeError),
        ({"factory": Thing, "max_size": 2, "reset": "no"}, TypeError),
    ],
)
def test_constructor_validates_arguments(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        ObjectPool(**kwargs)  # type: ignore[arg-type]


def test_factory_failure_changes_no_counter() -> None:
    def broken() -> Thing:
        raise OSError("no resource")

    pool = ObjectPool(broken, max_size=2)
    with pytest.raises(OSError):
        pool.acquire()
    s = pool.stats()
    assert (s.created, s.in_use, s.high_water) == (0, 0, 0)


def test_close_refuses_acquire_and_drops_late_returns() -> None:
    pool = ObjectPool(Thing, max_size=4, prefill=2)
    guard = pool.acquire()
    pool.close()
    assert pool.closed
    with pytest.raises(AllocatorClosed):
        pool.acquire()
    guard.release()
    s = pool.stats()
    assert (s.idle, s.in_use, s.dropped) == (0, 0, 2)
    assert_balanced(s)


def test_clear_drops_idle_objects_counted() -> None:
    pool = ObjectPool(Thing, max_size=4, prefill=3)
    assert pool.clear() == 3
    s = pool.stats()
    assert (s.idle, s.dropped) == (0, 3)
    assert_balanced(s)


# -- GC safety net -------------------------------------------------------------
def test_dropped_guard_returns_its_object() -> None:
    pool = ObjectPool(Thing, max_size=4, reset=clean)
    guard = pool.acquire()
    obj = guard.value
    obj.payload.append(1)
    del guard
    s = pool.stats()
    assert (s.in_use, s.idle, s.reclaimed) == (0, 1, 1)
    assert obj.payload == []  # reset ran
    with pool.acquire() as again:
        assert again is obj


def test_guard_in_reference_cycle_is_reclaimed_by_gc() -> None:
    pool = ObjectPool(Thing, max_size=4)
    guard = pool.acquire()
    guard.value.payload.append(guard)  # type: ignore[arg-type]  # obj -> guard -> obj
    del guard
    gc.collect()
    s = pool.stats()
    assert (s.in_use, s.idle, s.reclaimed) == (0, 1, 1)


def test_reset_failure_on_gc_path_is_counted_not_raised() -> None:
    pool = ObjectPool(Thing, max_size=4, reset=clean)
    guard = pool.acquire()
    guard.value.poisoned = True
    del guard
    s = pool.stats()
    assert (s.in_use, s.idle, s.dropped, s.reset_failures, s.reclaimed) == (0, 0, 1, 1, 1)


@pytest.mark.timeout(10)
def test_guard_collected_in_the_middle_of_a_release_is_reclaimed() -> None:
    holder: list[PooledObject[Thing]] = []

    def reset(obj: Thing) -> None:
        holder.clear()  # drops another guard while the pool is inside release()

    pool = ObjectPool(Thing, max_size=4, reset=reset)
    guard = pool.acquire()
    holder.append(pool.acquire())
    guard.release()
    s = pool.stats()
    assert (s.in_use, s.idle, s.reclaimed) == (0, 2, 1)
    assert_balanced(s)


def test_released_guard_collection_changes_nothing() -> None:
    pool = ObjectPool(Thing, max_size=4)
    guard = pool.acquire()
    guard.release()
    del guard
    gc.collect()
    s = pool.stats()
    assert (s.idle, s.reclaimed) == (1, 0)


def test_stats_snapshot_as_dict() -> None:
    pool = ObjectPool(Thing, max_size=3, name="things")
    with pool.acquire():
        d = pool.stats().as_dict()
    assert d["name"] == "things"
    assert (d["in_use"], d["created"], d["max_size"]) == (1, 1, 3)
    assert "things" in repr(pool)


# -- accounting model (hypothesis, stateful) ----------------------------------
class ObjectPoolMachine(RuleBasedStateMachine):
    """Drive the pool with random operations and compare against a simple model."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = ObjectPool(Thing, max_size=3, reset=clean)
        self.guards: list[PooledObject[Thing]] = []  # held guards, private to the machine
        self.dead: list[PooledObject[Thing]] = []  # released/detached guards
        self.idle: list[Thing] = []  # model of the idle stack (LIFO)
        self.created = self.reused = self.dropped = self.detached = 0
        self.reclaimed = self.reset_failures = self.high_water = 0

    def _give_back(self, thing: Thing) -> bool:
        """Model of returning an object; returns True when reset failed."""
        if len(self.idle) < 3:
            if thing.poisoned:
                self.dropped += 1
                self.reset_failures += 1
                return True
            self.idle.append(thing)
        else:
            self.dropped += 1
        return False

    @rule()
    def acquire(self) -> None:
        expected = self.idle.pop() if self.idle else None
        guard = self.pool.acquire()
        if expected is None:
            self.created += 1
        else:
            self.reused += 1
            assert guard.value is expected
        self.guards.append(guard)
        self.high_water = max(self.high_water, len(self.guards))

    @precondition(lambda self: self.guards)
    @rule(i=st.integers(0, 99))
    def release(self, i: int) -> None:
        guard = self.guards.pop(i % len(self.guards))
        thing = guard.value
        if self._give_back(thing):
            with pytest.raises(RuntimeError):
                guard.release()
        else:
            guard.release()
        self.dead.append(guard)

    @precondition(lambda self: self.guards)
    @rule(i=st.integers(0, 99))
    def detach(self, i: int) -> None:
        guard = self.guards.pop(i % len(self.guards))
        assert guard.detach() is not None
        self.detached += 1
        self.dead.append(guard)

    @precondition(lambda self: self.guards)
    @rule(i=st.integers(0, 99))
    def drop_guard(self, i: int) -> None:
        guard = self.guards.pop(i % len(self.guards))
        thing = guard.value
        del guard  # collected at once (refcount); the pool drains it on its next call
        self.reclaimed += 1
        self._give_back(thing)

    @precondition(lambda self: self.guards)
    @rule(i=st.integers(0, 99))
    def poison(self, i: int) -> None:
        self.guards[i % len(self.guards)].value.poisoned = True

    @precondition(lambda self: self.dead)
    @rule(i=st.integers(0, 99), detach=st.booleans())
    def misuse_dead_guard(self, i: int, detach: bool) -> None:
        guard = self.dead[i % len(self.dead)]
        with pytest.raises(DoubleRelease):
            guard.detach() if detach else guard.release()
        with pytest.raises(UseAfterRelease):
            _ = guard.value

    @rule()
    def clear(self) -> None:
        assert self.pool.clear() == len(self.idle)
        self.dropped += len(self.idle)
        self.idle.clear()

    @invariant()
    def counters_match_model(self) -> None:
        s = self.pool.stats()
        assert s.created == self.created
        assert s.reused == self.reused
        assert s.dropped == self.dropped
        assert s.detached == self.detached
        assert s.in_use == len(self.guards)
        assert s.idle == len(self.idle) <= s.max_size
        assert s.high_water == self.high_water
        assert s.reclaimed == self.reclaimed
        assert s.reset_failures == self.reset_failures
        assert_balanced(s)


TestObjectPoolMachine = ObjectPoolMachine.TestCase


# -- threads -------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_threads_never_share_an_object_and_accounting_balances() -> None:
    n_threads, iterations, max_size = 4, 1500, 3
    pool = ObjectPool(Thing, max_size=max_size, reset=clean)
    in_hand: set[int] = set()
    in_hand_lock = threading.Lock()
    problems: list[str] = []
    totals = {"acquired": 0, "detached": 0, "dropped_guards": 0}
    totals_lock = threading.Lock()
    start = threading.Barrier(n_threads)

    def take(thing: Thing) -> None:
        with in_hand_lock:
            if thing.serial in in_hand:
                problems.append(f"object {thing.serial} handed out twice")
            in_hand.add(thing.serial)

    def give(thing: Thing) -> None:
        with in_hand_lock:
            in_hand.discard(thing.serial)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        acquired = detached = dropped = 0
        start.wait()
        for _ in range(iterations):
            op = rng.random()
            if op < 0.6:
                with pool.acquire() as thing:
                    acquired += 1
                    take(thing)
                    thing.payload.append(seed)
                    give(thing)
            elif op < 0.9:  # hold two at once
                a, b = pool.acquire(), pool.acquire()
                acquired += 2
                take(a.value)
                take(b.value)
                give(b.value)
                b.release()
                give(a.value)
                a.release()
            elif op < 0.95:
                guard = pool.acquire()
                acquired += 1
                take(guard.value)
                give(guard.value)
                guard.detach()
                detached += 1
            else:
                guard = pool.acquire()
                acquired += 1
                take(guard.value)
                give(guard.value)
                del guard  # GC safety net
                dropped += 1
        with totals_lock:
            totals["acquired"] += acquired
            totals["detached"] += detached
            totals["dropped_guards"] += dropped

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # force frequent thread switches
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)

    assert problems == []
    s = pool.stats()
    assert s.in_use == 0
    assert s.idle <= max_size
    assert s.created + s.reused == totals["acquired"]
    assert s.detached == totals["detached"]
    assert s.reclaimed == totals["dropped_guards"]
    assert s.high_water <= 2 * n_threads
    assert s.reset_failures == 0
    assert_balanced(s)


def test_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "raii_object_pool.py"
    runpy.run_path(str(example), run_name="__main__")
    assert "created=1 reused=2 detached=1 in_use=0" in capsys.readouterr().out


@pytest.mark.timeout(10)
def test_finalizer_of_a_cleared_object_may_use_the_pool() -> None:
    made: list[CallsBack] = []

    def factory() -> CallsBack:
        made.append(CallsBack(pool, armed=not made))  # only the first one calls back
        return made[-1]

    pool: ObjectPool[CallsBack] = ObjectPool(factory, max_size=2)
    pool.acquire().release()
    made.clear()
    assert pool.clear() == 1  # its __del__ borrows from the pool: no deadlock
    s = pool.stats()
    assert (s.created, s.idle, s.in_use) == (2, 1, 0)


class CallsBack:
    def __init__(self, pool: ObjectPool[CallsBack], armed: bool) -> None:
        self.pool = pool
        self.armed = armed

    def __del__(self) -> None:
        if self.armed:
            self.armed = False
            with self.pool.acquire():
                pass
