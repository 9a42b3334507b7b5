"""Per-class capacities: ``blocks_per_class`` as an int, one int per class, or a dict.

SlabAllocator (Python and C API), MessageAllocator and both MessageBus cores.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_core import BUS_CORES, core_id

from coreallocs import InvalidSize, PoolExhausted, SlabAllocator
from coreallocs import _capi_demo as capi
from hftalloc import BusFull, MessageAllocator
from hftalloc.shm.layout import Layout

CORES = BUS_CORES
SIZES = (8, 16, 32, 64)  # SlabAllocator(8, 64)


@pytest.fixture(params=CORES, ids=core_id)
def Bus(request):
    return request.param


class Sixteen:
    """An int-like key equal to no int: 16 given twice in one dict."""

    def __index__(self) -> int:
        return 16


def fill(slab, size: int) -> list:
    """Allocate `size` bytes until the class is full; returns the blocks."""
    blocks = []
    while (b := slab.try_allocate(size)) is not None:
        blocks.append(b)
        assert len(blocks) <= 10_000
    return blocks


# -- accepted forms -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "caps"),
    [
        (3, (3, 3, 3, 3)),
        ([1, 2, 3, 4], (1, 2, 3, 4)),
        ((4, 3, 2, 1), (4, 3, 2, 1)),
        (range(1, 5), (1, 2, 3, 4)),
        (np.array([5, 1, 1, 2]), (5, 1, 1, 2)),
        ({16: 7}, (1024, 7, 1024, 1024)),
        ({8: 2, 64: 1}, (2, 1024, 1024, 1)),
        ({}, (1024, 1024, 1024, 1024)),
        ({np.int64(32): np.int64(9)}, (1024, 1024, 9, 1024)),
    ],
)
def test_blocks_per_class_forms(spec, caps):
    slab = SlabAllocator(8, 64, spec, grow=False)
    assert slab.class_capacities == caps
    assert slab.blocks_per_class == max(caps)  # the largest; the uniform value when uniform
    assert [slab.class_capacity(s) for s in (1, 9, 17, 64)] == list(caps)
    assert slab.class_capacity(65) is None


def test_uniform_int_keeps_the_old_behaviour():
    slab = SlabAllocator(blocks_per_class=16)
    assert slab.blocks_per_class == 16 and set(slab.class_capacities) == {16}


# -- rejected forms -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        ([1, 2, 3], InvalidSize, "3 entries"),
        ([1, 2, 3, 4, 5], InvalidSize, "4 size classes"),
        ([], InvalidSize, "0 entries"),
        ([1, 2, 0, 4], InvalidSize, "positive"),
        ([1, 2, -1, 4], InvalidSize, "positive"),
        ([1, 2, True, 4], TypeError, "blocks_per_class[32]"),
        ([1, 2, 3.0, 4], TypeError, "blocks_per_class[32]"),
        ([1, 2, None, 4], TypeError, "blocks_per_class[32]"),
        ([1, 2, 3, 2**40], InvalidSize, "overflows"),
        ([1, 2, 3, 2**70], InvalidSize, "too large"),
        ({100: 1}, InvalidSize, "not a size class"),
        ({128: 1}, InvalidSize, "not a size class"),
        ({0: 1}, InvalidSize, "not a size class"),
        ({-8: 1}, InvalidSize, "not a size class"),
        ({True: 1}, TypeError, "keys"),
        ({"16": 1}, TypeError, "keys"),
        ({16.0: 1}, TypeError, "keys"),
        ({16: 0}, InvalidSize, "positive"),
        ({16: -3}, InvalidSize, "positive"),
        ({16: False}, TypeError, "bool"),
        ({16: "2"}, TypeError, "str"),
        ({16: 2**40}, InvalidSize, "overflows"),
        ({16: 1, Sixteen(): 2}, InvalidSize, "twice"),
        (0, InvalidSize, "positive"),
        (-1, InvalidSize, "positive"),
        (True, TypeError, "bool"),
        (2.0, TypeError, "float"),
        (None, TypeError, "NoneType"),
        ("1234", TypeError, "str"),
        (b"\x01\x02\x03\x04", TypeError, "bytes"),
        (2**40, InvalidSize, "overflows"),
    ],
)
def test_bad_blocks_per_class(spec, error, words):
    with pytest.raises(error) as info:
        SlabAllocator(8, 64, spec)
    assert words in str(info.value)
    with pytest.raises(error):
        MessageAllocator(spec, min_size=8, num_classes=4)  # the same 8..64 B classes


def test_overflow_is_checked_against_each_class_size():
    # 2**30 blocks of 8 B is fine, of 2**30 B is not: the check is per class
    with pytest.raises(InvalidSize, match="overflows"):
        SlabAllocator(8, 2**30, {2**30: 2**32})
    slab = SlabAllocator(2**29, 2**30, [2**20, 1])
    assert slab.class_capacities == (2**20, 1)


def test_bus_rejects_bad_blocks_per_class(Bus):
    with pytest.raises(InvalidSize):
        Bus(blocks_per_class=[1, 2])
    with pytest.raises(TypeError):
        Bus(blocks_per_class={64: True})


def test_ipc_channel_layout_stays_uniform():
    with pytest.raises(TypeError, match="one count for every class"):
        Layout(blocks_per_class=[1] * 8)


# -- exhaustion at each class's own capacity ------------------------------------------------
def test_each_class_exhausts_at_its_own_capacity():
    caps = (5, 1, 3, 2)
    slab = SlabAllocator(8, 64, list(caps), grow=False)
    held = {size: fill(slab, size) for size in SIZES}
    assert tuple(len(held[s]) for s in SIZES) == caps
    for size in SIZES:
        with pytest.raises(PoolExhausted):
            slab.allocate(size)
    rows = slab.class_stats()
    assert tuple(r.capacity for r in rows) == caps
    assert tuple(r.in_use for r in rows) == caps
    held[16].pop().release()  # one slot back in the 16 B class only
    assert slab.try_allocate(16) is not None
    assert slab.try_allocate(8) is None


def test_growing_classes_grow_by_their_own_step():
    slab = SlabAllocator(8, 64, {8: 4, 64: 2}, grow=True)
    blocks = [slab.allocate(8) for _ in range(5)] + [slab.allocate(64) for _ in range(3)]
    rows = slab.class_stats()
    assert (rows[0].capacity, rows[3].capacity) == (8, 4)
    del blocks


def test_c_api_fills_each_class_to_its_capacity():
    slab = SlabAllocator(8, 64, [3, 1, 4, 2], grow=False)
    assert capi.slab_fill_classes(slab) == [(3, 3), (1, 1), (4, 4), (2, 2)]
    assert slab.in_use == 0


def test_c_api_constructors():
    assert capi.slab_core_caps_fill(8, 64, [4, 1, 6, 2]) == ([(4, 4), (1, 1), (6, 6), (2, 2)], 6)
    # the old constructor: one count for every class, per_class is that count
    assert capi.slab_core_caps_fill(8, 32, 3) == ([(3, 3)] * 3, 3)


# -- MessageAllocator and the bus -----------------------------------------------------------
def test_message_allocator_passes_capacities_through():
    alloc = MessageAllocator({64: 6, 8192: 1})
    assert alloc.class_capacities == (6, 1024, 1024, 1024, 1024, 1024, 1024, 1)
    assert alloc.class_capacity(8000) == 1 and alloc.class_capacity(10) == 6
    assert "(6, 1024," in repr(alloc)
    assert "x 7 " in repr(MessageAllocator(7))
    blocks = [alloc.allocate(8000)]
    assert alloc.try_allocate(5000) is None
    report = alloc.report()
    assert "hftalloc[8192]" in report
    rows = {r.block_size: r for r in alloc.class_stats()}
    assert rows[8192].capacity == 1
    del blocks


def test_bus_per_class_capacities(Bus):
    caps = [4, 2, 1, 1, 1, 1, 1, 3]
    bus = Bus(blocks_per_class=caps)
    assert bus.allocator.class_capacities == tuple(caps)
    kept = []
    bus.subscribe("t.>", lambda m: kept.append(m.retain()))
    for _ in range(4):
        bus.publish("t.small", b"x")
    with pytest.raises(BusFull, match=r"the 64 B size class is exhausted \(4 blocks in use"):
        bus.publish("t.small", b"x")
    for _ in range(3):
        bus.publish("t.big", bytes(8000))
    with pytest.raises(BusFull, match=r"the 8192 B size class is exhausted \(3 blocks in use"):
        bus.publish("t.big", bytes(8000))
    bus.publish("t.mid", bytes(100))
    bus.publish("t.mid", bytes(100))
    with pytest.raises(BusFull, match=r"\(2 blocks in use"):
        bus.claim("t.mid", 100)
    pools = {p.block_size: p for p in bus.stats().pools}
    assert (pools[64].capacity, pools[64].in_use) == (4, 4)
    assert (pools[128].capacity, pools[128].in_use) == (2, 2)
    assert (pools[8192].capacity, pools[8192].in_use) == (3, 3)
    for m in kept:
        m.release()
    assert bus.allocator.in_use == 0
    bus.close()


def test_bus_drop_policy_when_a_small_class_is_full(Bus):
    bus = Bus(blocks_per_class={64: 1, 128: 3}, policy="drop")
    kept = []
    bus.subscribe("t.>", lambda m: kept.append(m.retain()))
    assert bus.publish("t.a", b"a") is not None
    assert bus.publish("t.a", b"a") is None      # the 64 B class (1 block) is full
    assert bus.publish("t.b", b"b") is None
    assert bus.claim("t.b", 10) is None
    for _ in range(3):                           # the 128 B class still has its 3 blocks
        assert bus.publish("t.b", bytes(100)) is not None
    assert bus.publish("t.b", bytes(100)) is None
    assert bus.publish("t.c", bytes(1000)) is not None  # 1024 B class: default 1024 blocks
    stats = bus.stats()
    assert (stats.topics["t.a"].dropped, stats.topics["t.b"].dropped) == (1, 3)
    assert stats.topics["t.c"].dropped == 0 and stats.dropped == 4
    assert (stats.topics["t.a"].published, stats.topics["t.b"].published) == (1, 3)
    for m in kept:
        m.release()
    assert bus.allocator.in_use == 0
    bus.close()


def test_bus_recycles_messages_in_every_class(Bus):
    """The compiled core caches one message object per slot: a class larger than the
    others (or smaller) must still publish, release and publish again cleanly."""
    bus = Bus(blocks_per_class=[1, 8, 1, 1, 1, 1, 1, 2])
    seen = []
    bus.subscribe("t", lambda m: seen.append(m.tobytes()))
    for round_ in range(3):
        for size in (10, 100, 8000):
            bus.publish("t", bytes([round_]) * size)
    assert len(seen) == 9 and bus.allocator.in_use == 0
    bus.close()


# -- property test against a model ------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    caps=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 4), st.integers(0, 63)), max_size=80),
    as_dict=st.booleans(),
)
def test_random_alloc_free_never_exceeds_a_class_capacity(caps, ops, as_dict):
    sizes = [8 << k for k in range(len(caps))]
    spec = dict(zip(sizes, caps, strict=True)) if as_dict else caps
    slab = SlabAllocator(8, sizes[-1], spec, grow=False)
    assert slab.class_capacities == tuple(caps)
    held: list[list] = [[] for _ in caps]
    for is_alloc, k, pick in ops:
        k %= len(caps)
        if is_alloc:
            size = sizes[k] // 2 + 1 if k else 1 + pick % 8   # a size routed to class k
            block = slab.try_allocate(size)
            if len(held[k]) == caps[k]:
                assert block is None          # exhausted exactly at capacity
                with pytest.raises(PoolExhausted):
                    slab.allocate(size)
            else:
                assert block is not None and len(block) == size
                held[k].append(block)
        elif held[k]:
            held[k].pop(pick % len(held[k])).release()
        rows = slab.class_stats()
        for j, row in enumerate(rows):
            assert row.in_use == len(held[j]) <= caps[j]
            assert row.capacity in (0, caps[j])
    assert slab.in_use == sum(map(len, held))
