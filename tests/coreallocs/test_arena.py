"""Arena: bump allocation, mark/rewind, O(1) reset, stale handles and exported buffers."""

import numpy as np
import pytest

from coreallocs import (
    AllocatorClosed,
    Arena,
    ArenaOverflow,
    BufferStillExported,
    DoubleRelease,
    InvalidAlignment,
    InvalidMark,
    InvalidSize,
    StaleHandle,
    UseAfterRelease,
)


def test_bump_allocation_is_contiguous_and_aligned():
    arena = Arena(1024)
    a = arena.allocate(3, align=1)
    b = arena.allocate(8, align=8)
    c = arena.allocate(1, align=64)
    assert b.address - a.address == 8 and c.address % 64 == 0
    assert arena.used == c.offset + 1
    assert arena.stats.bytes_requested == 12 and arena.stats.bytes_reserved == arena.used


@pytest.mark.parametrize("align", [1, 2, 4, 8, 16, 32, 64, 128, 4096])
def test_every_alignment_is_honoured(align):
    arena = Arena(64 * 1024)
    for size in (1, 3, 17, 100):
        assert arena.allocate(size, align=align).address % align == 0


@pytest.mark.parametrize("align", [0, 3, 12, 8192, -4])
def test_bad_alignment(align):
    with pytest.raises(InvalidAlignment):
        Arena(64).allocate(8, align=align)


def test_overflow_raises_with_usage_and_try_allocate_returns_none():
    arena = Arena(100, name="scratch")
    arena.allocate(90)
    with pytest.raises(ArenaOverflow, match="90 of 100 B used"):
        arena.allocate(20)
    assert arena.try_allocate(20) is None
    assert arena.allocate(10, align=1).offset == 90
    assert arena.stats.failures == 2


def test_reset_invalidates_every_handle_in_constant_work():
    arena = Arena(1 << 20)
    blocks = [arena.allocate(16) for _ in range(1000)]
    assert arena.live_handles == 1000
    arena.reset()
    assert arena.used == 0 and arena.live_handles == 0 and arena.generation == 1
    for blk in blocks[::97]:
        with pytest.raises(StaleHandle, match="reset"):
            memoryview(blk)
    fresh = arena.allocate(16)
    assert fresh.address == blocks[0].owner.allocate(16).address - 16


def test_stale_handle_is_a_use_after_release():
    arena = Arena(64)
    blk = arena.allocate(8)
    arena.reset()
    arena.allocate(8)  # same memory, new owner
    with pytest.raises(UseAfterRelease):
        blk.tobytes()
    with pytest.raises(StaleHandle):
        blk.release()


def test_mark_and_rewind():
    arena = Arena(1024)
    keep = arena.allocate(10)
    mark = arena.mark()
    gone = [arena.allocate(100) for _ in range(3)]
    arena.rewind(mark)
    assert arena.used == 10 and keep.live
    assert not any(b.live for b in gone)
    again = arena.allocate(100)
    assert again.offset == gone[0].offset
    assert not gone[0].live  # same address, still stale
    arena.rewind(mark)  # a mark can be rewound to repeatedly
    assert arena.used == 10 and not again.live


def test_rewind_to_outer_mark_invalidates_inner_marks():
    arena = Arena(1024)
    outer = arena.mark()
    arena.allocate(8)
    inner = arena.mark()
    arena.rewind(outer)
    with pytest.raises(InvalidMark):
        arena.rewind(inner)
    arena.reset()
    with pytest.raises(InvalidMark):
        arena.rewind(outer)
    with pytest.raises(InvalidMark):
        Arena(8).rewind(Arena(8).mark())


def test_reset_refuses_while_exported_and_names_the_block():
    arena = Arena(256, debug=True, name="frame")
    blk = arena.allocate(32)
    arr = np.frombuffer(blk, dtype=np.float32)
    with pytest.raises(BufferStillExported) as info:
        arena.reset()
    message = str(info.value)
    assert "frame" in message and "size=32" in message and "allocated at" in message
    assert "test_arena.py" in message
    assert blk.live and arena.used == 32  # nothing changed
    del arr
    arena.reset()
    assert not blk.live


def test_rewind_refuses_only_for_blocks_after_the_mark():
    arena = Arena(256)
    before = arena.allocate(8)
    view_before = memoryview(before)
    mark = arena.mark()
    after = arena.allocate(8)
    view_after = memoryview(after)
    with pytest.raises(BufferStillExported):
        arena.rewind(mark)
    view_after.release()
    arena.rewind(mark)  # the view of `before` does not matter
    assert before.live and view_before[0] == view_before[0]


def test_detach_keeps_old_memory_for_views_and_gives_fresh_memory():
    arena = Arena(64)
    blk = arena.allocate(8)
    memoryview(blk)[:] = b"ABCDEFGH"
    view = memoryview(blk)
    arena.reset(on_exported="detach")
    assert arena.detached == 1 and not blk.live
    new = arena.allocate(8)
    memoryview(new)[:] = b"zzzzzzzz"
    assert bytes(view) == b"ABCDEFGH"  # the view still sees its own (old) memory
    assert new.address != view_address(view)


def view_address(view):
    return np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]


def test_bad_reset_policy():
    with pytest.raises(ValueError, match="on_exported"):
        Arena(8).reset(on_exported="ignore")


def test_release_retires_only_the_handle():
    arena = Arena(64)
    blk = arena.allocate(8)
    blk.release()
    with pytest.raises(DoubleRelease):
        blk.release()
    with pytest.raises(UseAfterRelease):
        len(blk)
    assert arena.used == 8 and arena.stats.releases == 1


@pytest.mark.parametrize("size", [0, -5, 2**70])
def test_bad_sizes(size):
    with pytest.raises(InvalidSize):
        Arena(64).allocate(size)
    with pytest.raises(InvalidSize):
        Arena(size)


def test_stale_error_class_is_configurable():
    class FrameGone(StaleHandle):
        pass

    arena = Arena(64, stale_error=FrameGone)
    blk = arena.allocate(8)
    arena.reset()
    with pytest.raises(FrameGone):
        len(blk)
    with pytest.raises(TypeError):
        Arena(64, stale_error=ValueError)


def test_close_and_report():
    arena = Arena(64, name="tmp")
    arena.allocate(8)
    assert "tmp" in arena.report()
    arena.close()
    with pytest.raises(AllocatorClosed):
        arena.allocate(8)
    with pytest.raises(AllocatorClosed):
        arena.mark()
