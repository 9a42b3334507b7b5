"""pytest-benchmark versions of the core cases (run: pytest benchmarks --benchmark-enable).

Each group pairs coreallocs with the peer a user would write by hand, so the
comparison table pytest-benchmark prints is a same-run comparison.
"""

import os
import sys

import numpy as np
import pytest

from coreallocs import Arena, Pool, SlabAllocator

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests", "support"))
import capi_demo

capi = capi_demo.load()

N = 1000
MIXED = [16, 32, 64, 128, 256] * (N // 5)


@pytest.mark.benchmark(group="64B-alloc-release-x1000")
def test_pool_alloc_release(benchmark):
    alloc = Pool(64, N).allocate

    def run():
        for _ in range(N):
            alloc().release()

    benchmark(run)


@pytest.mark.benchmark(group="64B-alloc-release-x1000")
def test_bytearray_create_drop(benchmark):
    def run():
        for _ in range(N):
            b = bytearray(64)
            del b

    benchmark(run)


@pytest.mark.benchmark(group="64B-alloc-release-x1000")
def test_numpy_empty_create_drop(benchmark):
    empty, u8 = np.empty, np.uint8

    def run():
        for _ in range(N):
            b = empty(64, u8)
            del b

    benchmark(run)


@pytest.mark.benchmark(group="mixed-16-256-x1000")
def test_slab_mixed(benchmark):
    alloc = SlabAllocator(min_size=16, max_size=256, blocks_per_class=N).allocate

    def run():
        for b in [alloc(s) for s in MIXED]:
            b.release()

    benchmark(run)


@pytest.mark.benchmark(group="mixed-16-256-x1000")
def test_bytearray_mixed(benchmark):
    benchmark(lambda: [bytearray(s) for s in MIXED])


@pytest.mark.benchmark(group="arena-x1000-reset")
def test_arena_fill_reset(benchmark):
    arena = Arena(64 * N)
    alloc = arena.allocate

    def run():
        for _ in range(N):
            alloc(64)
        arena.reset()

    benchmark(run)


@pytest.mark.benchmark(group="c-api-64B-x1000")
def test_c_pool_batch(benchmark):
    pool = Pool(64, N)
    benchmark(capi.pool_batch_ns, pool, N, 1)


@pytest.mark.benchmark(group="c-api-64B-x1000")
def test_c_malloc_batch(benchmark):
    benchmark(capi.malloc_batch_ns, 64, N, 1)
