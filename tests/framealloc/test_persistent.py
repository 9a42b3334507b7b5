"""The persistent area: pool-backed memory that outlives frames."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from coreallocs.errors import AllocatorClosed, BlocksStillLive, InvalidSize
from framealloc import FrameAllocator, PersistentArea


def test_persistent_arrays_outlive_any_number_of_swaps() -> None:
    fa = FrameAllocator(4096)
    keep = fa.persistent.zeros((10, 3), np.float32)
    keep[:] = 1.5
    for _ in range(6):
        scratch = fa.array(400)
        scratch[:] = -1
        del scratch
        fa.swap()
    assert (keep == 1.5).all()
    assert keep.dtype == np.float32 and keep.shape == (10, 3)
    assert keep.ctypes.data % 16 == 0


def test_persistent_memory_returns_to_its_pool_when_arrays_go() -> None:
    area = PersistentArea(name="p")
    arrays = [area.array(n) for n in (1, 7, 100, 1000)]
    assert area.in_use == 4
    view = arrays[2][10:]
    del arrays
    gc.collect()
    assert area.in_use == 1  # the view keeps its block alive
    view[:] = 3.0
    del view
    assert area.in_use == 0
    assert area.stats.allocations == 4 and area.stats.releases == 4


def test_blocks_and_their_release() -> None:
    area = PersistentArea()
    blk = area.allocate(48)
    assert len(blk) == 48 and blk.kind == "pool"
    blk.release()
    assert area.in_use == 0


def test_sizes_above_max_size_come_from_the_system_and_are_counted() -> None:
    area = PersistentArea(max_size=1024)
    big = area.array(1000)  # 8000 B > 1024
    big[:] = 2.0
    assert area.stats.fallback_allocations == 1
    assert (big == 2.0).all()


def test_copy_of_frame_data_survives_its_frame() -> None:
    fa = FrameAllocator(4096)
    frame_data = fa.array(5)
    frame_data[:] = np.arange(5)
    saved = fa.persistent.copy(frame_data)
    del frame_data
    fa.swap()
    fa.swap()
    assert np.array_equal(saved, np.arange(5))


def test_zero_size_and_bad_shapes() -> None:
    area = PersistentArea()
    assert area.array((0, 4)).shape == (0, 4)
    assert area.in_use == 0
    with pytest.raises(InvalidSize):
        area.array(-1)


def test_close_refuses_while_blocks_live_and_then_allocations() -> None:
    area = PersistentArea()
    kept = area.array(3)
    with pytest.raises(BlocksStillLive):
        area.close()
    del kept
    area.close()
    with pytest.raises(AllocatorClosed):
        area.array(3)


def test_a_frame_allocator_can_share_a_persistent_area() -> None:
    area = PersistentArea(name="shared")
    a, b = FrameAllocator(1024, persistent=area), FrameAllocator(1024, persistent=area)
    assert a.persistent is b.persistent is area
    assert "shared" in a.report()


def test_persistent_area_per_class_capacities_default_to_its_own_256() -> None:
    from framealloc import PersistentArea

    area = PersistentArea(min_size=16, max_size=128, blocks_per_class={16: 4, 128: 2})
    assert area._slab.class_capacities == (4, 256, 256, 2)
    listed = PersistentArea(min_size=16, max_size=64, blocks_per_class=[1, 2, 3])
    assert listed._slab.class_capacities == (1, 2, 3)
    with pytest.raises(ValueError):  # InvalidSize: 24 is not a class
        PersistentArea(min_size=16, max_size=64, blocks_per_class={24: 1})
