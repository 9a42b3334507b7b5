"""Frame-scoped records: taken back at swap unless referenced; held ones never recycled."""

from __future__ import annotations

import gc
import weakref

import pytest
from hypothesis import given
from hypothesis import strategies as st

from framealloc import FrameAllocator, FrameObjects


class Event:
    __slots__ = ("kind", "link", "x")


class Weak:
    __slots__ = ("__weakref__", "v")


def test_records_are_reused_after_swap_and_churn_makes_no_new_objects() -> None:
    fa = FrameAllocator(1 << 16, prefault=False)
    pool = fa.objects(Event)
    assert fa.objects(Event) is pool
    first = {id(pool.new("hit", None, i)) for i in range(100)}
    fa.swap()
    assert pool.recycled == 100 and pool.free == 100
    again = [pool.new(kind="move") for _ in range(100)]
    assert {id(e) for e in again} == first and pool.created == 100
    assert all(e.kind == "move" and e.x is None and e.link is None for e in again)
    del again
    fa.swap()
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(50):
        for i in range(100):
            pool.new("e", None, i)
        fa.swap()
    assert pool.created == 100 and len(gc.get_objects()) <= before + 5


def test_a_held_record_is_detached_never_recycled() -> None:
    fa = FrameAllocator(1 << 16, prefault=False)
    pool = fa.objects(Event)
    kept = pool.new("keep", None, 1)
    chained = pool.new("inner", None, 2)
    kept.link = chained  # reachable from the held record: detached with it
    pool.new("free", None, 3)
    fa.swap()
    assert pool.detached == 2 and fa.objects_detached == 2 and pool.recycled == 1
    for _ in range(10):
        e = pool.new("other", None, 0)
        assert e is not kept and e is not chained
    assert (kept.kind, kept.x, kept.link.kind, kept.link.x) == ("keep", 1, "inner", 2)


def test_cycles_among_records_are_taken_back() -> None:
    fa = FrameAllocator(1 << 16, prefault=False)
    pool = fa.objects(Event)
    for _ in range(10):
        a, b = pool.new("a"), pool.new("b")
        a.link, b.link = b, a
    del a, b
    fa.swap()
    assert pool.recycled == 20 and pool.detached == 0
    again = [pool.new() for _ in range(20)]
    assert all(e.link is None and e.kind is None for e in again) and pool.created == 20


def test_weakly_referenced_records_are_detached() -> None:
    fa = FrameAllocator(1 << 16, prefault=False)
    pool = fa.objects(Weak)
    ref = weakref.ref(pool.new(v=1))
    assert ref() is not None
    fa.swap()
    assert pool.detached == 1 and pool.free == 0


def test_a_refused_swap_keeps_the_records() -> None:
    fa = FrameAllocator(1 << 16, prefault=False)
    pool = fa.objects(Event)
    pool.new("x")
    arr = fa.array(4)
    fa.swap()
    with pytest.raises(Exception, match="still referenced"):
        fa.swap()  # strict: frame 0's array is alive, nothing advances
    assert pool.live == 0 or pool.recycled >= 1
    del arr


@pytest.mark.parametrize("cls", [int, dict, type("NoSlots", (), {}),
                                 type("DictSlot", (), {"__slots__": ("__dict__",)})])
def test_classes_without_fixed_slots_are_refused(cls: type) -> None:
    with pytest.raises(TypeError):
        FrameObjects(cls)


def test_unknown_and_duplicate_fields_are_refused() -> None:
    pool = FrameObjects(Event)
    with pytest.raises(AttributeError):
        pool.new(colour=1)
    with pytest.raises(TypeError):
        pool.new("a", kind="b")
    with pytest.raises(TypeError):
        pool.new(1, 2, 3, 4)
    assert pool.live == 0


@given(st.lists(st.lists(st.tuples(st.booleans(), st.integers(-1, 30)), max_size=30),
                min_size=1, max_size=8))
def test_held_records_are_never_recycled(frames: list[list[tuple[bool, int]]]) -> None:
    """Random frames of records, some kept outside, some linked to earlier ones of the
    frame: a record reachable from outside at a swap never comes back from new()."""
    fa = FrameAllocator(1 << 16, prefault=False)
    pool = fa.objects(Event)
    held: list[Event] = []
    snapshot: list[tuple[Event, int]] = []
    serial = 0
    for spec in frames:
        made: list[Event] = []
        for hold, link in spec:
            e = pool.new("e", None, serial)
            serial += 1
            assert all(e is not h for h in held), "a held record came back"
            if 0 <= link < len(made):
                e.link = made[link]
            made.append(e)
            if hold:
                held.append(e)
        e = None  # type: ignore[assignment]
        made.clear()
        fa.swap()
        snapshot = [(h, h.x) for h in held]
        for h, x in snapshot:
            assert h.x == x and h.kind == "e"
        if held and len(held) > 5:
            held.pop(0)  # let some go: they are plain objects now, never taken back
    assert pool.recycled + pool.detached <= serial


def test_deleted_slots_changed_classes_and_odd_classes_are_safe() -> None:
    class Twin:
        __slots__ = ("kind", "link", "x")

    class Hooked:
        __slots__ = ("a",)

        def __setattr__(self, name: str, value: object) -> None:
            object.__setattr__(self, name, value)

    with pytest.raises(TypeError):
        FrameObjects(Hooked)
    fa = FrameAllocator(1 << 16, prefault=False)
    pool = fa.objects(Event)
    a, b = pool.new("a"), pool.new("b")
    a.link, b.link = b, a
    del a.kind  # an unset slot
    b.__class__ = Twin  # same layout, another class: never recycled
    del a, b
    fa.swap()
    assert pool.detached == 2 and pool.recycled == 0  # the Twin holds the other: both go
    c = pool.new("c")
    del c.kind
    del c
    fa.swap()
    again = pool.new()
    assert pool.recycled == 1 and type(again) is Event and again.kind is None
