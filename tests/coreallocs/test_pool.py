"""Pool: allocation, buffer protocol, RAII release and every misuse error."""

import gc
import itertools
import struct

import numpy as np
import pytest

from coreallocs import (
    AllocatorClosed,
    AllocatorError,
    BlocksStillLive,
    BufferStillExported,
    DoubleRelease,
    ForeignBlock,
    InvalidAlignment,
    InvalidSize,
    Pool,
    PoolExhausted,
    UseAfterRelease,
)


def test_allocate_gives_distinct_writable_blocks():
    pool = Pool(64, 4)
    blocks = [pool.allocate() for _ in range(4)]
    addresses = sorted(b.address for b in blocks)
    assert all(b - a >= 64 for a, b in itertools.pairwise(addresses))
    for i, blk in enumerate(blocks):
        memoryview(blk)[:] = bytes([i]) * 64
    for i, blk in enumerate(blocks):
        assert blk.tobytes() == bytes([i]) * 64
    assert pool.in_use == 4 and pool.available == 0


def test_blocks_come_from_one_contiguous_slab():
    pool = Pool(48, 10, align=16)
    blocks = [pool.allocate() for _ in range(10)]
    addresses = sorted(b.address for b in blocks)
    assert addresses[-1] - addresses[0] == 9 * pool.stride
    assert pool.stride == 48


@pytest.mark.parametrize("align", [1, 2, 8, 16, 64, 256, 4096])
def test_every_address_is_aligned(align):
    pool = Pool(24, 8, align=align)
    blocks = [pool.allocate() for _ in range(8)]
    assert all(b.address % align == 0 for b in blocks)
    assert pool.stride % align == 0 and pool.stride >= 24


def test_block_size_rounded_up_to_alignment_but_len_is_requested():
    pool = Pool(60, 2, align=8)
    blk = pool.allocate()
    assert len(blk) == 60 and blk.reserved == 64 and pool.stride == 64


def test_buffer_protocol_memoryview_numpy_struct():
    pool = Pool(32, 2)
    with pool.allocate() as blk:
        struct.pack_into("<qd", blk, 0, 7, 2.5)
        assert struct.unpack_from("<qd", blk, 0) == (7, 2.5)
        arr = np.frombuffer(blk, dtype=np.int64)
        assert arr.flags.writeable and arr[0] == 7
        arr[3] = 99
        assert struct.unpack_from("<q", blk, 24)[0] == 99
        del arr
        mv = memoryview(blk)
        assert mv.format == "B" and mv.nbytes == 32 and not mv.readonly
        mv.release()
        assert blk.view(readonly=True).readonly


def test_exhaustion_raises_and_try_allocate_returns_none():
    pool = Pool(16, 2)
    a, b = pool.allocate(), pool.allocate()
    with pytest.raises(PoolExhausted, match="all 2 blocks of 16 B"):
        pool.allocate()
    assert pool.try_allocate() is None
    assert pool.stats.failures == 2
    a.release()
    assert pool.try_allocate() is not None
    del b


def test_grow_adds_slabs_of_the_same_size():
    pool = Pool(32, 4, grow=True)
    blocks = [pool.allocate() for _ in range(10)]
    assert pool.capacity == 12 and pool.in_use == 10
    assert len({b.address for b in blocks}) == 10
    for blk in blocks:
        blk.release()
    assert pool.in_use == 0


def test_double_release_raises():
    pool = Pool(8, 1)
    blk = pool.allocate()
    blk.release()
    with pytest.raises(DoubleRelease):
        blk.release()
    assert pool.in_use == 0


@pytest.mark.parametrize(
    "use",
    [len, memoryview, lambda b: b.address, lambda b: b.tobytes(), lambda b: np.frombuffer(b)],
)
def test_use_after_release_raises(use):
    pool = Pool(8, 1)
    blk = pool.allocate()
    blk.release()
    with pytest.raises(UseAfterRelease):
        use(blk)


def test_stale_handle_does_not_see_the_slots_next_owner():
    pool = Pool(8, 1)
    old = pool.allocate()
    old.release()
    new = pool.allocate()  # same slot, new generation
    memoryview(new)[:] = b"newowner"
    with pytest.raises(UseAfterRelease):
        old.tobytes()
    assert new.live and not old.live


def test_release_into_wrong_pool_raises_foreign_block():
    a, b = Pool(8, 1), Pool(8, 1)
    blk = a.allocate()
    with pytest.raises(ForeignBlock):
        b.release(blk)
    with pytest.raises(ForeignBlock):
        b.release(object())
    a.release(blk)
    assert a.in_use == 0


def test_release_while_exported_raises_and_keeps_block():
    pool = Pool(16, 1)
    blk = pool.allocate()
    view = memoryview(blk)
    arr = np.frombuffer(blk, dtype=np.uint8)
    with pytest.raises(BufferStillExported, match="2 exported"):
        blk.release()
    view.release()
    with pytest.raises(BufferStillExported, match="1 exported"):
        blk.release()
    assert pool.in_use == 1 and blk.live
    del arr
    blk.release()
    assert pool.in_use == 0


def test_context_manager_releases_on_exit_and_on_error():
    pool = Pool(8, 1)
    with pool.allocate() as blk:
        assert pool.in_use == 1
    assert pool.in_use == 0 and not blk.live
    with pytest.raises(RuntimeError), pool.allocate():
        raise RuntimeError("boom")
    assert pool.in_use == 0


def test_context_manager_tolerates_explicit_release_inside():
    pool = Pool(8, 1)
    with pool.allocate() as blk:
        blk.release()
    assert pool.in_use == 0


def test_garbage_collection_releases_dropped_blocks():
    pool = Pool(8, 3)
    pool.allocate()  # dropped immediately
    blk = pool.allocate()
    del blk
    holder = [pool.allocate()]
    holder.append(holder)  # a cycle through a GC-tracked list
    del holder
    gc.collect()
    assert pool.in_use == 0


def test_block_keeps_pool_memory_alive():
    blk = Pool(16, 1).allocate()  # the pool object is dropped at once
    memoryview(blk)[:] = b"x" * 16
    assert blk.tobytes() == b"x" * 16
    assert blk.owner.in_use == 1


def test_close_refuses_while_live_then_refuses_allocation():
    pool = Pool(8, 2)
    blk = pool.allocate()
    with pytest.raises(BlocksStillLive, match="1 block"):
        pool.close()
    blk.release()
    pool.close()
    assert pool.closed
    with pytest.raises(AllocatorClosed):
        pool.allocate()
    with pytest.raises(AllocatorClosed):
        pool.try_allocate()


def test_context_manager_closes_pool():
    with Pool(8, 2) as pool:
        pool.allocate().release()
    assert pool.closed


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"block_size": 0, "capacity": 1}, InvalidSize),
        ({"block_size": -8, "capacity": 1}, InvalidSize),
        ({"block_size": 8, "capacity": 0}, InvalidSize),
        ({"block_size": 8, "capacity": -1}, InvalidSize),
        ({"block_size": 2**70, "capacity": 1}, InvalidSize),
        ({"block_size": 2**31, "capacity": 2**31}, InvalidSize),
        ({"block_size": 8, "capacity": 2**40}, InvalidSize),
        ({"block_size": 8, "capacity": 1, "align": 3}, InvalidAlignment),
        ({"block_size": 8, "capacity": 1, "align": 0}, InvalidAlignment),
        ({"block_size": 8, "capacity": 1, "align": 8192}, InvalidAlignment),
        ({"block_size": 8.0, "capacity": 1}, TypeError),
        ({"block_size": "8", "capacity": 1}, TypeError),
        ({"block_size": 8, "capacity": None}, TypeError),
    ],
)
def test_bad_constructor_arguments(kwargs, error):
    with pytest.raises(error):
        Pool(**kwargs)


def test_errors_share_a_base_and_name_values():
    with pytest.raises(AllocatorError, match="-8"):
        Pool(-8, 1)
    with pytest.raises(ValueError):
        Pool(8, 1, align=3)


def test_block_cannot_be_constructed_directly():
    from coreallocs import Block

    with pytest.raises(TypeError):
        Block()


def test_stats_and_report():
    pool = Pool(100, 4, align=8, name="orders")
    a, b = pool.allocate(), pool.allocate()
    a.release()
    s = pool.stats
    assert (s.capacity, s.in_use, s.high_water, s.allocations, s.releases) == (4, 1, 2, 2, 1)
    assert s.bytes_requested == 100 and s.bytes_reserved == 104
    assert s.fragmentation == pytest.approx(4 / 104)
    text = pool.report()
    assert "orders" in text and "high water" in text
    del b
