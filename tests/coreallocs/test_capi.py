"""The nogil C-level API, driven through the C-API example module (tests/support/capi_demo)."""

import importlib.util
import threading
from pathlib import Path

import capi_demo
import pytest

from coreallocs import Arena, DoubleRelease, Pool, SlabAllocator, UseAfterRelease

capi = capi_demo.load()  # tests/support/capi_demo: built against the installed package

CA_OK, CA_FOREIGN, CA_DOUBLE_FREE = 0, 3, 4
SLOT_NONE = 0xFFFFFFFF


def test_the_example_is_built_against_the_installed_package_and_is_not_part_of_it():
    import coreallocs

    assert importlib.util.find_spec("coreallocs._capi_demo") is None
    package = Path(coreallocs.__file__).parent
    assert {"__init__.pxd", "_core.pxd", "_capi.h"} <= {p.name for p in package.iterdir()}
    assert Path(coreallocs.get_include()) == package.parent
    assert package not in Path(capi.__file__).parents


def test_c_alloc_and_free_update_python_stats():
    pool = Pool(64, 4)
    addr = capi.pool_alloc_address(pool)
    assert addr and pool.in_use == 1
    assert capi.pool_free_address(pool, addr) == CA_OK
    assert pool.in_use == 0


def test_c_double_free_and_foreign_pointer_are_refused():
    pool = Pool(64, 4)
    addr = capi.pool_alloc_address(pool)
    assert capi.pool_free_address(pool, addr) == CA_OK
    assert capi.pool_free_address(pool, addr) == CA_DOUBLE_FREE
    assert capi.pool_free_address(pool, addr + 8) == CA_FOREIGN  # not a block start
    assert capi.pool_free_address(pool, 16) == CA_FOREIGN
    assert pool.in_use == 0


def test_c_free_of_a_python_owned_block_invalidates_the_handle():
    pool = Pool(64, 1)
    blk = pool.allocate()
    assert capi.pool_free_address(pool, blk.address) == CA_OK
    with pytest.raises(UseAfterRelease):
        len(blk)
    with pytest.raises(DoubleRelease):
        blk.release()
    assert pool.in_use == 0


def test_c_exhaustion_returns_null():
    pool = Pool(8, 2)
    assert capi.pool_alloc_address(pool) and capi.pool_alloc_address(pool)
    assert capi.pool_alloc_address(pool) == 0
    assert pool.stats.failures == 1


def test_pointer_lookup_in_grown_pools():
    pool = Pool(32, 2, grow=True)
    addrs = [capi.pool_alloc_address(pool) for _ in range(9)]
    assert pool.capacity == 10 and len(set(addrs)) == 9
    for a in reversed(addrs):
        assert capi.pool_free_address(pool, a) == CA_OK
    assert pool.in_use == 0


def test_slab_c_api_routes_by_size_and_falls_back():
    slab = SlabAllocator(max_size=256, fallback="system")
    small = capi.slab_alloc_address(slab, 100)
    big = capi.slab_alloc_address(slab, 1000)
    assert small and big and slab.in_use == 2
    assert capi.slab_free_address(slab, small, 70) == CA_OK  # same class (128 B)
    assert capi.slab_free_address(slab, small, 70) == CA_DOUBLE_FREE
    assert capi.slab_free_address(slab, big, 1000) == CA_OK
    assert slab.in_use == 0
    assert capi.slab_free_address(SlabAllocator(), 4096, 8) == CA_FOREIGN


def test_slab_c_api_raise_policy_returns_null_above_largest_class():
    slab = SlabAllocator(max_size=256)
    assert capi.slab_alloc_address(slab, 257) == 0
    assert slab.stats.failures == 1


def test_slab_alloc_slot_reports_class_and_slot():
    slab = SlabAllocator(min_size=16, max_size=256, blocks_per_class=4, grow=False)
    a = capi.slab_alloc_slot_address(slab, 100)
    b = capi.slab_alloc_slot_address(slab, 128)
    c = capi.slab_alloc_slot_address(slab, 1)
    assert a[1:] == (3, 0) and b[1:] == (3, 1) and c[1:] == (0, 0)  # 128 B class, 16 B class
    assert b[0] - a[0] == 128 and slab.in_use == 3
    stats = slab.class_stats()
    assert stats[3].in_use == 2 and stats[3].bytes_requested == 228 and stats[0].in_use == 1
    # slot-freed, pointer-freed: the same blocks and the same counters
    assert capi.slab_free_slot_index(slab, 3, 0) == CA_OK
    assert capi.slab_free_address(slab, b[0], 128) == CA_OK
    assert capi.slab_free_slot_index(slab, 3, 1) == CA_DOUBLE_FREE
    assert capi.slab_free_slot_index(slab, 0, 0) == CA_OK
    assert slab.in_use == 0
    # the freed slot is handed out again, at the same address
    again = capi.slab_alloc_slot_address(slab, 70)
    assert again[1] == 3 and again[0] in (a[0], b[0])
    assert capi.slab_free_slot_index(slab, again[1], again[2]) == CA_OK
    assert slab.stats.allocations == slab.stats.releases == 4


def test_slab_free_slot_refuses_unknown_classes_and_slots():
    slab = SlabAllocator(min_size=16, max_size=256, blocks_per_class=4, grow=False)
    assert capi.slab_free_slot_index(slab, 2, 0) == CA_FOREIGN  # class never created
    addr, k, idx = capi.slab_alloc_slot_address(slab, 64)
    assert addr and (k, idx) == (2, 0)
    assert capi.slab_free_slot_index(slab, 2, 4) == CA_FOREIGN  # past the capacity
    assert capi.slab_free_slot_index(slab, 2, SLOT_NONE) == CA_FOREIGN
    assert capi.slab_free_slot_index(slab, -1, 0) == CA_FOREIGN
    assert capi.slab_free_slot_index(slab, 5, 0) == CA_FOREIGN  # only classes 0..4
    assert capi.slab_free_slot_index(slab, 2, 1) == CA_DOUBLE_FREE  # not allocated
    assert slab.in_use == 1
    assert capi.slab_free_slot_index(slab, k, idx) == CA_OK and slab.in_use == 0


def test_slab_alloc_slot_failures_and_system_blocks():
    slab = SlabAllocator(max_size=256, blocks_per_class=2, grow=False)
    assert capi.slab_alloc_slot_address(slab, 257) == (0, -1, SLOT_NONE)  # fallback="raise"
    assert capi.slab_alloc_slot_address(slab, 0) == (0, -1, SLOT_NONE)
    assert slab.stats.failures == 1
    first = [capi.slab_alloc_slot_address(slab, 200) for _ in range(2)]
    assert [f[1:] for f in first] == [(5, 0), (5, 1)]
    assert capi.slab_alloc_slot_address(slab, 200) == (0, 5, SLOT_NONE)  # class exhausted
    for _addr, k, idx in first:
        assert capi.slab_free_slot_index(slab, k, idx) == CA_OK
    system = SlabAllocator(max_size=256, fallback="system")
    addr, k, idx = capi.slab_alloc_slot_address(system, 1000)
    assert addr and (k, idx) == (-1, SLOT_NONE) and system.stats.fallback_allocations == 1
    assert capi.slab_free_slot_index(system, k, idx) == CA_FOREIGN  # system blocks: slab_free
    assert capi.slab_free_address(system, addr, 1000) == CA_OK and system.in_use == 0


def test_slab_alloc_slots_serves_requests_in_order_across_classes():
    slab = SlabAllocator(min_size=16, max_size=256, blocks_per_class=3, grow=False)
    served = capi.slab_alloc_slots_list(slab, [10, 16, 100, 128, 12])
    assert [s[1:] for s in served] == [(0, 0), (0, 1), (3, 0), (3, 1), (0, 2)]
    assert served[1][0] - served[0][0] == 16 and served[3][0] - served[2][0] == 128
    stats = slab.class_stats()
    assert stats[0].in_use == 3 and stats[0].bytes_requested == 38
    assert stats[3].in_use == 2 and stats[3].bytes_requested == 228
    # the same blocks and counters as one slab_alloc_slot per request
    assert capi.slab_free_slots_list(slab, 0, [0, 1, 2]) == CA_OK
    assert capi.slab_free_slots_list(slab, 3, [1, 0]) == CA_OK
    assert slab.in_use == 0 and slab.stats.allocations == slab.stats.releases == 5


@pytest.mark.parametrize(("sizes", "served"), [
    ([64, 64, 64, 64], 3),          # the class holds 3: the 4th request stops the run
    ([64, 0, 64], 1),               # size 0 is no class block
    ([64, 257, 64], 1),             # above the largest class (also with fallback="system")
    ([], 0),
])
def test_slab_alloc_slots_stops_at_the_first_request_it_cannot_serve(sizes, served):
    for fallback in ("raise", "system"):
        slab = SlabAllocator(max_size=256, blocks_per_class=3, grow=False, fallback=fallback)
        got = capi.slab_alloc_slots_list(slab, sizes)
        assert len(got) == served and slab.in_use == served
        assert slab.stats.fallback_allocations == 0
        for _addr, k, idx in got:
            assert capi.slab_free_slot_index(slab, k, idx) == CA_OK
        assert slab.in_use == 0


def test_slab_free_slots_frees_what_it_can_and_reports_the_first_failure():
    slab = SlabAllocator(min_size=16, max_size=256, blocks_per_class=4, grow=False)
    got = capi.slab_alloc_slots_list(slab, [64, 64, 64])
    slots = [idx for _addr, _k, idx in got]
    assert capi.slab_free_slots_list(slab, 2, [slots[0], 9, slots[1]]) == CA_FOREIGN
    assert slab.in_use == 1                                         # 0 and 1 were freed
    assert capi.slab_free_slots_list(slab, 2, [slots[2], slots[0]]) == CA_DOUBLE_FREE
    assert slab.in_use == 0 and slab.stats.releases == 3
    assert capi.slab_free_slots_list(slab, 2, []) == CA_OK
    assert capi.slab_free_slots_list(slab, 1, [0]) == CA_FOREIGN    # class never created
    assert capi.slab_free_slots_list(slab, -1, [0]) == CA_FOREIGN
    assert capi.slab_free_slots_list(slab, 9, [0]) == CA_FOREIGN


def test_slab_alloc_slots_grows_a_growing_class():
    slab = SlabAllocator(min_size=16, max_size=256, blocks_per_class=2, grow=True)
    got = capi.slab_alloc_slots_list(slab, [32] * 7)
    assert [idx for _a, _k, idx in got] == list(range(7)) and slab.in_use == 7
    assert len({addr for addr, _k, _i in got}) == 7
    assert capi.slab_free_slots_list(slab, 1, [idx for _a, _k, idx in got]) == CA_OK
    assert slab.in_use == 0


@pytest.mark.parametrize(
    ("make", "by_slot"),
    [(lambda: Pool(64, 512), False), (lambda: SlabAllocator(blocks_per_class=512), False),
     (lambda: SlabAllocator(blocks_per_class=512), True)],
    ids=["pool", "slab", "slab-by-slot"],
)
def test_threads_hammering_the_nogil_api(make, by_slot):
    """4 threads allocate/stamp/verify/free with the GIL released; no block is shared."""
    allocator = make()
    errors = []
    threads = [
        threading.Thread(
            target=lambda t=t: errors.append(capi.hammer(allocator, 300, 100, t, by_slot)))
        for t in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [0, 0, 0, 0]
    assert allocator.in_use == 0
    s = allocator.stats
    assert s.allocations == s.releases == 4 * 300 * 100


def test_timing_helpers_return_positive_figures():
    pool = Pool(64, 1000)
    assert capi.pool_alloc_free_ns(pool, 1000) > 0
    assert capi.pool_batch_ns(pool, 1000, 2) > 0
    arena = Arena(64 * 1000)
    assert capi.arena_alloc_ns(arena, 1000, 64) > 0
    assert arena.used == 64 * 1000
    with pytest.raises(RuntimeError, match="arena full"):
        capi.arena_alloc_ns(arena, 1, 64)
