"""The nogil C-level API, driven through the small Cython module coreallocs._capi_demo."""

import threading

import pytest

from coreallocs import Arena, DoubleRelease, Pool, SlabAllocator, UseAfterRelease
from coreallocs import _capi_demo as capi

CA_OK, CA_FOREIGN, CA_DOUBLE_FREE = 0, 3, 4


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


@pytest.mark.parametrize(
    "make", [lambda: Pool(64, 512), lambda: SlabAllocator(blocks_per_class=512)]
)
def test_threads_hammering_the_nogil_api(make):
    """4 threads allocate/stamp/verify/free with the GIL released; no block is shared."""
    allocator = make()
    errors = []
    threads = [
        threading.Thread(target=lambda t=t: errors.append(capi.hammer(allocator, 300, 100, t)))
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
