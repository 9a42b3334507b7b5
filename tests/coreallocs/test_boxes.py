"""Typed boxes: a fixed-layout value stored in place in an allocator block."""

from __future__ import annotations

import copy
import gc
import runpy
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coreallocs import Arena, Pool, SlabAllocator
from coreallocs.boxes import Box, box
from coreallocs.errors import (
    BufferStillExported,
    DoubleRelease,
    InvalidSize,
    PoolExhausted,
    SizeTooLarge,
    StaleHandle,
    UseAfterRelease,
)

TICK = np.dtype([("price", "<f8"), ("qty", "<i4"), ("side", "u1")])


@pytest.fixture
def slab() -> SlabAllocator:
    return SlabAllocator(min_size=8, max_size=256, blocks_per_class=16, name="boxes")


# -- struct layouts --------------------------------------------------------------
def test_struct_box_stores_value_in_place(slab: SlabAllocator) -> None:
    b = slab.box("<qd", (7, 2.5))
    assert isinstance(b, Box)
    assert b.value == (7, 2.5)
    assert b.block.tobytes() == struct.pack("<qd", 7, 2.5)
    assert b.nbytes == 16
    assert slab.in_use == 1


def test_struct_box_item_access_and_update(slab: SlabAllocator) -> None:
    b = slab.box("<qd", (1, 1.0))
    assert (b[0], b[1], b[-1]) == (1, 1.0, 1.0)
    b[0] = 99
    b.value = (5, 0.5)
    b[1] = 4.0
    assert b.value == (5, 4.0)
    assert b.block.tobytes() == struct.pack("<qd", 5, 4.0)


def test_single_field_struct_accepts_a_bare_value(slab: SlabAllocator) -> None:
    b = slab.box("<d", 3.25)
    assert b.value == (3.25,)
    b.value = 1.5
    assert b.value == (1.5,)
    s = slab.box("8s", b"abc")
    assert s.value == (b"abc\0\0\0\0\0",)


def test_precompiled_struct_layout(slab: SlabAllocator) -> None:
    layout = struct.Struct("<iI")
    b = slab.box(layout, (-1, 1))
    assert b.value == (-1, 1)
    assert b.layout is layout


def test_none_value_zero_fills_recycled_memory(slab: SlabAllocator) -> None:
    dirty = slab.allocate(16)
    struct.pack_into("<qq", dirty, 0, -1, -1)
    address = dirty.address
    dirty.release()
    b = slab.box("<qq")
    assert b.block.address == address  # same slot reused
    assert b.value == (0, 0)


@given(
    q=st.integers(-(2**63), 2**63 - 1),
    d=st.floats(allow_nan=False),
    small=st.integers(0, 2**32 - 1),
    flag=st.booleans(),
)
def test_struct_round_trip_matches_struct_pack(q: int, d: float, small: int, flag: bool) -> None:
    slab = SlabAllocator(min_size=8, max_size=64, blocks_per_class=4)
    with slab.box("<qdI?", (q, d, small, flag)) as b:
        assert b.value == (q, d, small, flag)
        assert b.block.tobytes() == struct.pack("<qdI?", q, d, small, flag)
    assert slab.in_use == 0


def test_struct_box_has_no_array_view(slab: SlabAllocator) -> None:
    b = slab.box("<q", 1)
    with pytest.raises(TypeError, match="numpy dtype"):
        _ = b.array


# -- numpy layouts -------------------------------------------------------------
def test_scalar_dtype_box(slab: SlabAllocator) -> None:
    b = slab.box(np.dtype("<f8"), 1.25)
    assert isinstance(b.value, np.float64)
    assert b.value == 1.25
    b.value = -3
    assert b.value == -3.0
    assert b.block.tobytes() == np.float64(-3).tobytes()


def test_structured_dtype_field_access(slab: SlabAllocator) -> None:
    b = slab.box(TICK, (101.5, 10, 1))
    assert b["price"] == 101.5
    assert b["qty"] == 10
    b["qty"] = 25
    rec = b.value
    assert isinstance(rec, np.void)
    assert (rec["price"], rec["qty"], rec["side"]) == (101.5, 25, 1)
    raw = np.frombuffer(b.block.tobytes(), dtype=TICK)[0]
    assert raw["qty"] == 25


def test_structured_dtype_unknown_field(slab: SlabAllocator) -> None:
    b = slab.box(TICK)
    with pytest.raises(KeyError, match="volume"):
        _ = b["volume"]
    scalar = slab.box(np.dtype("<i8"))
    with pytest.raises(TypeError, match="no fields"):
        _ = scalar["x"]


def test_subarray_dtype(slab: SlabAllocator) -> None:
    b = slab.box(np.dtype(("<f4", (3,))), [1, 2, 3])
    np.testing.assert_array_equal(b.value, [1, 2, 3])


def test_value_is_a_copy_that_does_not_pin_the_block(slab: SlabAllocator) -> None:
    b = slab.box(TICK, (1.0, 2, 0))
    rec = b.value
    field = b["price"]
    b.release()  # no BufferStillExported: the record is a copy
    assert rec["qty"] == 2
    assert field == 1.0


def test_array_is_a_live_view(slab: SlabAllocator) -> None:
    b = slab.box(TICK, (1.0, 1, 0))
    view = b.array
    assert view.shape == (1,)
    view["price"][0] = 42.0
    assert b["price"] == 42.0
    b["qty"] = 7
    assert view[0]["qty"] == 7


def test_release_refused_while_an_array_view_is_alive(slab: SlabAllocator) -> None:
    b = slab.box(TICK, (1.0, 1, 0))
    view = b.array
    with pytest.raises(BufferStillExported):
        b.release()
    assert b.live
    assert b["qty"] == 1  # still usable
    del view
    b.release()
    assert slab.in_use == 0


@given(
    price=st.floats(allow_nan=False, width=64),
    qty=st.integers(-(2**31), 2**31 - 1),
    side=st.integers(0, 255),
)
def test_structured_round_trip(price: float, qty: int, side: int) -> None:
    slab = SlabAllocator(min_size=8, max_size=64, blocks_per_class=4)
    with slab.box(TICK, (price, qty, side)) as b:
        rec = b.value
        assert (rec["price"], rec["qty"], rec["side"]) == (price, qty, side)
        expected = np.array([(price, qty, side)], dtype=TICK).tobytes()
        assert b.block.tobytes() == expected
    assert slab.in_use == 0


# -- lifetime ------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["<qd", TICK])
def test_every_access_after_release_raises(slab: SlabAllocator, layout: object) -> None:
    b = slab.box(layout)
    b.release()
    assert not b.live
    assert slab.in_use == 0
    key: int | str = 0 if isinstance(layout, str) else "price"
    for access in (
        lambda: b.value,
        lambda: b[key],
        lambda: b.block,
        lambda: b.array,
        lambda: b.__enter__(),
    ):
        with pytest.raises(UseAfterRelease):
            access()
    with pytest.raises(UseAfterRelease):
        b.value = (1, 1.0) if isinstance(layout, str) else (1.0, 1, 1)
    with pytest.raises(UseAfterRelease):
        b[key] = 1
    with pytest.raises(DoubleRelease):
        b.release()
    assert "released" in repr(b)


def test_with_releases_on_exit(slab: SlabAllocator) -> None:
    with slab.box("<q", 5) as b:
        assert slab.in_use == 1
    assert slab.in_use == 0
    assert not b.live
    with slab.box("<q", 5) as b2:
        b2.release()  # early release inside with: exit stays quiet
    assert slab.in_use == 0


def test_garbage_collected_box_releases_its_block(slab: SlabAllocator) -> None:
    b = slab.box(TICK, (1.0, 1, 1))
    del b
    gc.collect()
    assert slab.in_use == 0


def test_array_outliving_its_box_keeps_the_memory_valid(slab: SlabAllocator) -> None:
    b = slab.box(TICK, (3.5, 9, 2))
    view = b.array
    del b
    gc.collect()
    assert slab.in_use == 1  # the view still pins the block
    assert view[0]["qty"] == 9
    other = slab.box(TICK, (0.0, 0, 0))  # must not get the same memory
    assert view[0]["price"] == 3.5
    other.release()
    del view
    gc.collect()
    assert slab.in_use == 0


def test_block_released_behind_the_box_is_detected(slab: SlabAllocator) -> None:
    b = slab.box("<q", 1)
    b.block.release()
    assert not b.live
    with pytest.raises(UseAfterRelease):
        _ = b.value
    with b:  # nothing left to release: exit stays quiet
        pass


def test_value_that_does_not_fit_releases_the_block(slab: SlabAllocator) -> None:
    with pytest.raises(struct.error):
        slab.box("<q", "not a number")
    with pytest.raises((ValueError, TypeError)):
        slab.box(TICK, ("x", "y", "z"))
    assert slab.in_use == 0


# -- layouts and allocators ----------------------------------------------------
@pytest.mark.parametrize(
    ("layout", "error"),
    [
        (np.dtype(object), TypeError),
        (np.dtype([("a", "<f8"), ("o", object)]), TypeError),
        ("", InvalidSize),
        ("<qz", ValueError),
        (3.5, TypeError),
    ],
)
def test_bad_layouts_are_refused(slab: SlabAllocator, layout: object, error: type) -> None:
    with pytest.raises(error):
        slab.box(layout)
    assert slab.in_use == 0


def test_layout_larger_than_the_slab(slab: SlabAllocator) -> None:
    with pytest.raises(SizeTooLarge):
        slab.box("512s")


def test_box_function_with_arena_goes_stale_after_reset() -> None:
    arena = Arena(1024)
    b = box(arena, "<qq", (1, 2))
    assert b.value == (1, 2)
    arena.reset()
    with pytest.raises(StaleHandle):
        _ = b.value
    assert not b.live


def test_box_function_with_pool() -> None:
    pool = Pool(16, 1)
    b = box(pool, TICK, (1.0, 2, 3))
    assert b["qty"] == 2
    with pytest.raises(PoolExhausted):
        box(pool, "<q")
    b.release()
    with pytest.raises(InvalidSize):
        box(pool, "32s")
    assert pool.in_use == 0


def test_box_constructor_checks_block_size(slab: SlabAllocator) -> None:
    blk = slab.allocate(4)
    with pytest.raises(InvalidSize):
        Box(blk, struct.Struct("<q"))
    with pytest.raises(TypeError):
        Box(b"12345678", struct.Struct("<q"))  # type: ignore[arg-type]


def test_box_constructor_parses_layouts_and_refuses_copies(slab: SlabAllocator) -> None:
    b = Box(slab.allocate(16), "<qd")
    b.value = (1, 2.0)
    assert b.value == (1, 2.0)
    with pytest.raises(TypeError, match="cannot be copied"):
        copy.copy(b)
    b.release()


def test_allocator_without_allocate_is_refused() -> None:
    with pytest.raises(TypeError, match="allocate"):
        box(object(), "<q")


def test_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "raii_boxes.py"
    runpy.run_path(str(example), run_name="__main__")
    assert "(199.0, 15)" in capsys.readouterr().out
