"""pytest-benchmark versions of the frame scratch cases (pytest benchmarks --benchmark-enable).

Each group takes 1000 scratch arrays of 16 float64 (dropped at once) and ends the
frame: framealloc one call per array, framealloc in batches of 8, and numpy.empty.
``benchmarks/bench_frame.py`` is the full table (sizes, swap cost, the demo).
"""

import numpy as np
import pytest

from framealloc import FrameAllocator

N = 1000


@pytest.mark.benchmark(group="16-float-scratch-arrays-x1000")
def test_framealloc_array(benchmark):
    frames = FrameAllocator(1 << 20)
    array, swap = frames.array, frames.swap

    def run():
        for _ in range(N):
            array(16)
        swap()

    benchmark(run)
    assert frames.leaks == 0


@pytest.mark.benchmark(group="16-float-scratch-arrays-x1000")
def test_framealloc_arrays_batch_of_8(benchmark):
    frames = FrameAllocator(1 << 20)
    arrays, swap = frames.arrays, frames.swap

    def run():
        for _ in range(N // 8):
            arrays(8, 16)
        swap()

    benchmark(run)
    assert frames.leaks == 0


@pytest.mark.benchmark(group="16-float-scratch-arrays-x1000")
def test_numpy_empty(benchmark):
    empty = np.empty

    def run():
        for _ in range(N):
            empty(16)

    benchmark(run)
