"""GameLoop(gc="frame"): no full collection inside a frame unless asked, cyclic garbage
reclaimed within a bounded number of frames, the collector's state restored."""

from __future__ import annotations

import gc
import weakref

import pytest

from framealloc import FixedStepClock, FrameAllocator, GameLoop, GCPressureWarning


class Node:
    __slots__ = ("__weakref__", "other")


def make_loop(update, **kw) -> GameLoop:  # type: ignore[no-untyped-def]
    return GameLoop(update, allocator=FrameAllocator(1 << 16, prefault=False),
                    clock=FixedStepClock(1 / 60), dt=1 / 60, **kw)


# (CPython 3.12 starts with objects in the permanent generation: a loop cannot unfreeze
# only its own then, so they stay frozen, counted in frozen_kept)
FROZEN_AT_START = gc.get_freeze_count()


@pytest.fixture(autouse=True)
def _gc_state_is_restored():  # type: ignore[no-untyped-def]
    state = (gc.isenabled(), gc.get_threshold())
    frozen = gc.get_freeze_count()
    yield
    assert (gc.isenabled(), gc.get_threshold()) == state
    if FROZEN_AT_START == 0:
        assert gc.get_freeze_count() == frozen


def test_no_full_collection_inside_frames_and_automatic_collection_is_off() -> None:
    seen: list[tuple[bool, int]] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and loop.gc.in_frame:
            seen.append((True, info["generation"]))

    def update(dt: float, frame: object) -> None:
        assert not gc.isenabled()
        for _ in range(500):
            a, b = Node(), Node()
            a.other, b.other = b, a

    loop = make_loop(update, gc="frame", gc_budget=1.0)
    loop.freeze()
    gc.callbacks.append(on_gc)
    try:
        stats = loop.run(60)
    finally:
        gc.callbacks.remove(on_gc)
    assert seen == []  # nothing at all ran inside a frame
    assert stats.gc.in_frame == [0, 0, 0] and stats.gc.pause_in_frames == 0.0
    assert stats.gc.collections[0] >= 60  # a young collection after every frame
    assert stats.gc.frozen > 0


def test_a_requested_full_collection_runs_in_the_slack() -> None:
    def update(dt: float, frame: object) -> None:
        if loop.frame.number == 5:
            loop.collect_full()

    loop = make_loop(update, gc="frame")
    stats = loop.run(10)
    assert stats.gc.requested_full == 1
    assert stats.gc.collections[2] >= 1 and stats.gc.in_frame[2] == 0
    generations = list(stats.series("gc_slack_generation"))
    assert generations[5] == 2  # the frame that asked: its slack ran the full collection
    assert set(generations) <= {-1, 0, 1, 2}


def test_the_oldest_generation_collected_in_each_slack_is_recorded() -> None:
    def update(dt: float, frame: object) -> None:
        for _ in range(50):
            a, b = Node(), Node()
            a.other, b.other = b, a

    auto = make_loop(update, gc="auto")
    assert set(auto.run(20).series("gc_slack_generation")) == {-1}  # (nothing in the slack)
    frame = make_loop(update, gc="frame")
    generations = frame.run(40).series("gc_slack_generation")
    assert min(generations) >= 0  # a young collection after every frame
    assert (generations >= 1).sum() == frame.stats.gc.collections[1] + \
        frame.stats.gc.collections[2]


def test_cyclic_garbage_of_frames_is_reclaimed_within_a_bounded_number_of_frames() -> None:
    alive: set[int] = set()
    born: dict[int, int] = {}
    freed_after: list[int] = []

    def gone(key: int) -> None:
        alive.discard(key)
        freed_after.append(loop.frame.number - born.pop(key))

    refs = []

    def update(dt: float, frame: object) -> None:
        n = loop.frame.number
        for k in range(20):
            a, b = Node(), Node()
            a.other, b.other = b, a
            key = n * 100 + k
            alive.add(key)
            born[key] = n
            refs.append(weakref.ref(a, lambda _r, key=key: gone(key)))
        del refs[:-200]

    loop = make_loop(update, gc="frame")
    loop.freeze()
    stats = loop.run(200)
    # every cycle made before the last frames was collected, and within a few frames
    assert all(key // 100 >= 195 for key in alive)
    assert freed_after and max(freed_after) <= 12
    assert stats.gc.collected >= 2 * 20 * 190


def test_state_is_restored_when_a_callback_raises() -> None:
    gc.set_threshold(555, 7, 3)
    try:
        def update(dt: float, frame: object) -> None:
            if loop.frame.number == 3:
                raise RuntimeError("boom")

        loop = make_loop(update, gc="frame")
        loop.freeze()
        with pytest.raises(RuntimeError, match="boom"):
            loop.run(10)
        assert gc.isenabled() and gc.get_threshold() == (555, 7, 3)
        assert gc.get_freeze_count() == 0 or FROZEN_AT_START
        assert loop.gc._on_collection not in gc.callbacks
    finally:
        gc.set_threshold(700, 10, 10)


def test_a_disabled_collector_stays_disabled_and_foreign_frozen_objects_stay() -> None:
    gc.disable()
    gc.freeze()
    frozen = gc.get_freeze_count()
    try:
        loop = make_loop(lambda dt, f: None, gc="frame")
        loop.freeze()
        stats = loop.run(3)
        assert not gc.isenabled()
        assert gc.get_freeze_count() >= frozen  # cannot unfreeze only ours: kept, counted
        assert stats.gc.frozen_kept == stats.gc.frozen
    finally:
        gc.unfreeze()
        gc.enable()


def test_garbage_growth_past_the_bound_forces_a_counted_warned_full_collection() -> None:
    keep: list[list[Node]] = []

    def update(dt: float, frame: object) -> None:
        batch = []
        for _ in range(300):  # cycles that live long enough to reach the old generation
            a, b = Node(), Node()
            a.other, b.other = b, a
            batch.append(a)
        keep.append(batch)
        if len(keep) > 40:
            keep.pop(0)

    loop = make_loop(update, gc="frame", gc_budget=0.0, gc_max_pending=2000)
    with pytest.warns(GCPressureWarning):
        stats = loop.run(120)
    assert stats.gc.forced_full >= 1 and stats.gc.in_frame[2] == 0


def test_auto_mode_counts_collections_and_leaves_the_collector_alone() -> None:
    def update(dt: float, frame: object) -> None:
        assert gc.isenabled()
        for _ in range(3000):
            a, b = Node(), Node()
            a.other, b.other = b, a

    stats = make_loop(update).run(5)
    assert sum(stats.gc.collections) >= 1 and stats.gc.collected > 0
    assert stats.summary()["gc_collections_gen0"] == stats.gc.collections[0]


@pytest.mark.parametrize("kwargs", [{"gc": "never"}, {"gc_budget": -1.0},
                                    {"gc_max_pending": 0}, {"gc_max_pending": 1.5}])
def test_bad_gc_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_loop(lambda dt, f: None, **kwargs)
