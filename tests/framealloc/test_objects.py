"""Frame-scoped records: taken back at swap unless referenced; held ones never recycled."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
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


class Node:
    __slots__ = ("a", "b")


@given(st.integers(1, 24).flatmap(lambda n: st.tuples(
    st.lists(st.tuples(st.integers(-1, n - 1), st.integers(-1, n - 1)), min_size=n, max_size=n),
    st.sets(st.integers(0, n - 1)),
    st.sets(st.integers(0, n - 1)))))
def test_the_swap_detaches_exactly_what_outside_holders_reach(
        case: tuple[list[tuple[int, int]], set[int], set[int]]) -> None:
    """Random graphs among one frame's records (cycles, self-links, links to later
    records), some held from a list, some from a plain object a record points at:
    detached == what the holders reach through the links (a reference model), and
    exactly the others come back from new() after the swap."""
    links, held_by_list, held_by_object = case
    n = len(links)
    fa = FrameAllocator(1 << 16, prefault=False)
    pool = fa.objects(Node)
    nodes = [pool.new() for _ in range(n)]
    for node, (a, b) in zip(nodes, links, strict=True):
        node.a = nodes[a] if a >= 0 else None
        node.b = nodes[b] if b >= 0 else None
    box = [nodes[i] for i in held_by_object]  # a plain object the frame's records point at
    if held_by_object:
        nodes[0].a = box  # (not a record: the box holds its records from outside)
    outside = [nodes[i] for i in held_by_list]
    roots = held_by_list | held_by_object
    reached, todo = set(roots), list(roots)
    while todo:
        i = todo.pop()
        a, b = links[i]
        if held_by_object and i == 0:
            a = -1  # node 0's `a` is the box
        for j in (a, b):
            if j >= 0 and j not in reached:
                reached.add(j)
                todo.append(j)
    ids = {i: id(node) for i, node in enumerate(nodes)}
    del nodes, node
    kept = {id(o) for o in outside + box}
    fa.swap()
    assert pool.detached == len(reached) and pool.recycled == n - len(reached)
    back = {id(pool.new()) for _ in range(n - len(reached))}
    assert back == {ids[i] for i in range(n) if i not in reached}
    assert not back & kept and pool.created == n


def test_taken_back_records_release_their_values_at_the_swap() -> None:
    class Value:
        pass

    fa = FrameAllocator(1 << 16, prefault=False)
    pool = fa.objects(Event)
    value = Value()
    ref = weakref.ref(value)
    pool.new("k", value, 1)
    del value
    assert ref() is not None
    fa.swap()
    assert ref() is None and pool.free == 1


def test_a_full_free_list_drops_the_surplus() -> None:
    from framealloc._crecords import RecordCore

    core = RecordCore(Event, ("kind", "link", "x"), False, 3)
    new = core.new
    made = [new(i) for i in range(5)]
    assert core.live == 5
    del made
    assert core.end_frame() == 3 and core.free == 3 and core.recycled == 5
    assert [new().kind for _ in range(4)] == [None] * 4 and core.created == 6


def test_the_fast_new_checks_its_arguments() -> None:
    pool = FrameObjects(Event)
    e = pool.new("a", link=None, x=3)
    assert (e.kind, e.link, e.x) == ("a", None, 3)
    assert pool.new(x=1, kind="b").kind == "b"
    for bad in [lambda: pool.new(1, 2, 3, 4), lambda: pool.new(kind=1, colour=2),
                lambda: pool.new(1, kind=2)]:
        with pytest.raises((TypeError, AttributeError)):
            bad()
    assert pool.live == 2
    assert pool.new.__name__ == "new" and "slots" in (pool.new.__doc__ or "")


def test_finalizers_that_reenter_the_pool_at_a_swap_are_safe_in_a_child() -> None:
    """A dropped slot value whose finalizer calls new() and end_frame() of the same
    pool while the swap releases it: consistent counts, no crash."""
    code = textwrap.dedent("""
        import gc
        from framealloc import FrameAllocator
        class Event:
            __slots__ = ("kind", "link", "x")
        fa = FrameAllocator(1 << 16, prefault=False)
        pool = fa.objects(Event)
        seen = []
        class Reenter:
            def __del__(self):
                a = pool.new("inner")
                b = pool.new("inner", a)
                a.link = b
                del a, b
                seen.append(pool.end_frame())  # the two records: taken back
                held.append(pool.new("held"))
                seen.append(pool.end_frame())  # held: detached
        held = []
        for frame in range(50):
            for i in range(20):
                e = pool.new("outer", None, Reenter() if i % 3 == 0 else None)
                f = pool.new("outer", e, None)
                e.link = f
            del e, f
            fa.swap()  # releases the Reenter objects: their finalizers run
        gc.collect()
        assert pool.live == 0 and pool.detached == 50 * 7 == len(held), pool.detached
        assert pool.recycled == 50 * (40 + 7 * 2), pool.recycled
        assert sorted(set(seen)) == [0, 2], seen
        assert all(h.kind == "held" for h in held)
        print("survived", pool.recycled, pool.created, sorted(set(seen)))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "survived" in proc.stdout, proc.stderr


def test_records_can_wait_for_settle_after_the_swap() -> None:
    fa = FrameAllocator(1 << 16, prefault=False)
    pool = fa.objects(Event)
    kept = pool.new("kept")
    dropped_later = pool.new("dropped after the swap")
    for _ in range(3):
        pool.new("free")
    fa.swap(settle_objects=False)
    assert pool.ended == 5 and pool.free == 0 and pool.recycled == 0
    fresh = pool.new("next frame")  # nothing waiting is handed out
    assert fresh is not kept and fresh is not dropped_later and pool.created == 6
    del dropped_later  # released before the records are settled: taken back
    assert fa.settle_objects() == 4
    assert pool.ended == 0 and pool.detached == 1 and pool.live == 1  # (`kept`)
    del fresh
    fa.swap(settle_objects=False)
    pool.new("third frame")
    fa.swap(settle_objects=False)  # a frame not settled: both frames wait together
    assert pool.ended == 2
    assert fa.settle_objects() == 2 and kept.kind == "kept" and pool.detached == 1


def test_the_game_loop_settles_records_in_the_slack() -> None:
    from framealloc import FixedStepClock, GameLoop

    def update(dt: float, frame: object) -> None:
        new = loop.frame.objects(Event).new
        for i in range(100):
            a, b = new("a", None, i), new("b", None, i)
            a.link, b.link = b, a

    loop = GameLoop(update, allocator=FrameAllocator(1 << 16, prefault=False),
                    clock=FixedStepClock(1 / 60), dt=1 / 60, gc="frame")
    stats = loop.run(20)
    pool = loop.allocator.objects(Event)
    assert pool.ended == 0 and pool.live == 0 and pool.created == 200
    assert pool.recycled == 20 * 200 and stats.objects_detached == 0
    assert (stats.series("settle") > 0).all() and stats.summary()["objects_settle_ms"] > 0
