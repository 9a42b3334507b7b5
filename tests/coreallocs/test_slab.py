"""SlabAllocator: O(1) routing to power-of-two classes, fallback policy, ownership."""

import pytest

from coreallocs import (
    AllocatorClosed,
    BlocksStillLive,
    DoubleRelease,
    ForeignBlock,
    InvalidSize,
    PoolExhausted,
    SizeTooLarge,
    SlabAllocator,
)


@pytest.mark.parametrize(
    ("size", "klass"),
    [
        (1, 8),
        (7, 8),
        (8, 8),
        (9, 16),
        (16, 16),
        (17, 32),
        (63, 64),
        (64, 64),
        (65, 128),
        (2047, 2048),
        (2048, 2048),
        (2049, 4096),
        (4096, 4096),
    ],
)
def test_routes_to_smallest_class_that_fits(size, klass):
    slab = SlabAllocator()
    assert slab.size_class(size) == klass
    blk = slab.allocate(size)
    assert len(blk) == size and blk.reserved == klass and blk.kind == "pool"


def test_every_size_routes_to_the_next_power_of_two():
    slab = SlabAllocator(min_size=64, max_size=8192)
    for size in range(1, 8193):
        expected = max(64, 1 << (size - 1).bit_length())
        assert slab.size_class(size) == expected, size
    assert slab.size_class(8193) is None


def test_class_sizes_and_bounds():
    slab = SlabAllocator(min_size=64, max_size=8192, blocks_per_class=4)
    assert slab.class_sizes == (64, 128, 256, 512, 1024, 2048, 4096, 8192)
    assert (slab.min_size, slab.max_size, slab.blocks_per_class) == (64, 8192, 4)


def test_oversize_raises_by_default_and_is_counted():
    slab = SlabAllocator(max_size=4096)
    with pytest.raises(SizeTooLarge, match="4097 B"):
        slab.allocate(4097)
    assert slab.stats.failures == 1


def test_system_fallback_is_counted_and_released():
    slab = SlabAllocator(max_size=4096, fallback="system")
    blk = slab.allocate(10_000)
    assert blk.kind == "system" and len(blk) == 10_000
    memoryview(blk)[-1] = 7
    assert slab.stats.fallback_allocations == 1 and slab.in_use == 1
    blk.release()
    assert slab.in_use == 0
    with pytest.raises(DoubleRelease):
        blk.release()
    slab.allocate(5000)  # dropped: the GC safety net frees it
    assert slab.in_use == 0 and slab.stats.fallback_allocations == 2


def test_classes_are_created_lazily():
    slab = SlabAllocator(blocks_per_class=16)
    assert slab.stats.capacity == 0
    slab.allocate(100).release()
    rows = {r.block_size: r for r in slab.class_stats()}
    assert rows[128].capacity == 16 and rows[64].capacity == 0


def test_fixed_capacity_classes_exhaust_independently():
    slab = SlabAllocator(blocks_per_class=2, grow=False)
    held = [slab.allocate(64), slab.allocate(64)]
    with pytest.raises(PoolExhausted, match="64 B"):
        slab.allocate(60)
    assert slab.try_allocate(64) is None
    assert slab.allocate(65).reserved == 128  # another class still has room
    del held


def test_release_checks_ownership():
    a, b = SlabAllocator(), SlabAllocator()
    blk = a.allocate(32)
    with pytest.raises(ForeignBlock):
        b.release(blk)
    with pytest.raises(ForeignBlock):
        a.release("not a block")
    a.release(blk)
    assert a.in_use == 0


@pytest.mark.parametrize("size", [0, -1, 2**80])
def test_bad_sizes(size):
    with pytest.raises(InvalidSize):
        SlabAllocator().allocate(size)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_size": 12},
        {"max_size": 1000},
        {"min_size": 64, "max_size": 32},
        {"blocks_per_class": 0},
        {"max_size": 2**31},
    ],
)
def test_bad_configuration(kwargs):
    with pytest.raises(InvalidSize):
        SlabAllocator(**kwargs)


def test_bad_fallback_policy():
    with pytest.raises(ValueError, match="fallback"):
        SlabAllocator(fallback="ignore")


def test_report_has_one_row_per_class_plus_total():
    slab = SlabAllocator(min_size=16, max_size=256, name="mixed")
    keep = [slab.allocate(s) for s in (16, 64, 128, 256, 100)]
    lines = slab.report().splitlines()
    assert len(lines) == 2 + 5 + 1
    assert any(line.startswith("mixed[128]") for line in lines)
    total = slab.stats
    assert total.in_use == 5 and total.bytes_requested == 16 + 64 + 128 + 256 + 100
    assert total.bytes_reserved == 16 + 64 + 128 + 256 + 128
    del keep


def test_close():
    slab = SlabAllocator()
    blk = slab.allocate(8)
    with pytest.raises(BlocksStillLive):
        slab.close()
    blk.release()
    slab.close()
    with pytest.raises(AllocatorClosed):
        slab.allocate(8)


def test_fragmentation_analysis_like_the_seed():
    """The seed's analysis: 10k mixed allocations, free every other one, report per class."""
    slab = SlabAllocator(min_size=16, max_size=256, blocks_per_class=1024)
    sizes = [16, 64, 128, 256]
    blocks = [slab.allocate(sizes[i % 4]) for i in range(10_000)]
    for blk in blocks[::2]:
        blk.release()
    rows = {r.block_size: r for r in slab.class_stats()}
    assert rows[16].in_use == 0 and rows[128].in_use == 0  # classes 0 and 2 hit even indices
    assert rows[64].in_use == 2500 and rows[256].in_use == 2500
    assert slab.stats.fragmentation == 0.0


def test_a_class_that_cannot_be_created_is_a_counted_failure() -> None:
    # 2**32 - 32 blocks of 1 GiB (about 2**62 bytes, beyond any address space) cannot be
    # reserved whatever the overcommit setting: OutOfMemory, counted
    from coreallocs.errors import OutOfMemory

    slab = SlabAllocator(2**30, 2**30, blocks_per_class=2**32 - 32, grow=False)
    for _ in range(2):
        with pytest.raises(OutOfMemory):
            slab.allocate(64)
    with pytest.raises(OutOfMemory):  # out of memory is not "exhausted": no None here
        slab.try_allocate(64)
    assert slab.stats.failures == 3 and slab.stats.in_use == 0
