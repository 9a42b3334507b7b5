"""Typed boxes: one fixed-layout value stored in place in an allocator block.

``SlabAllocator.box(layout, value)`` (or :func:`box` with any coreallocs allocator)
allocates ``size`` bytes for the layout, writes ``value`` there and returns a
:class:`Box` guard. The layout is either

* a :mod:`struct` format string (or :class:`struct.Struct`), e.g. ``"<qd"``:
  ``box.value`` is a tuple, ``box[i]`` one item; or
* a numpy dtype (scalar, structured or subarray), e.g. ``np.dtype([("px", "<f8")])``:
  ``box.value`` is a numpy scalar / record (a copy), ``box["px"]`` one field,
  ``box.array`` a live one-element numpy view of the block.

Strings are always read as struct formats; pass ``np.dtype(...)`` for numpy.
The block is released by ``box.release()``, on leaving ``with``, or when the box
(and every view made from it) is garbage-collected. The box holds no buffer of
its own: every read/write makes a temporary view, so only views the caller keeps
(``box.array``) can make ``release()`` raise :class:`BufferStillExported`.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

import numpy as np

from coreallocs import _core
from coreallocs._core import Arena, Block, Pool
from coreallocs.errors import DoubleRelease, InvalidSize, NotInitialized, UseAfterRelease

__all__ = ["Box", "box"]


@lru_cache(maxsize=256)
def _compiled_struct(fmt: str | bytes) -> struct.Struct:
    return struct.Struct(fmt)


def _parse_layout(layout: object) -> struct.Struct | np.dtype[Any]:
    if isinstance(layout, struct.Struct):
        return layout
    if isinstance(layout, (str, bytes)):
        try:
            return _compiled_struct(layout)
        except struct.error as exc:
            raise ValueError(
                f"invalid struct format {layout!r}: {exc} "
                f"(strings are struct formats; pass numpy.dtype(...) for numpy layouts)"
            ) from None
    try:
        dtype: np.dtype[Any] = np.dtype(layout)  # type: ignore[call-overload]
    except TypeError as exc:
        raise TypeError(
            f"layout must be a struct format string, struct.Struct or numpy dtype, "
            f"not {layout!r} ({exc})"
        ) from None
    if dtype.hasobject:
        raise TypeError(
            f"dtype {dtype} holds Python object references; it cannot live in raw memory"
        )
    return dtype


def _layout_size(layout: struct.Struct | np.dtype[Any]) -> int:
    size = layout.size if isinstance(layout, struct.Struct) else layout.itemsize
    if size <= 0:
        raise InvalidSize(
            f"layout {_describe(layout)} has size {size}; a box needs at least 1 byte"
        )
    return size


def _describe(layout: struct.Struct | np.dtype[Any]) -> str:
    if isinstance(layout, struct.Struct):
        return f"struct {layout.format!r}"
    return f"dtype {layout}"


def _allocate(allocator: object, size: int) -> Block:
    if isinstance(allocator, Pool):
        if size > allocator.block_size:
            raise InvalidSize(
                f"a {size}-byte layout does not fit pool {allocator.name!r} "
                f"({allocator.block_size}-byte blocks)"
            )
        return allocator.allocate()
    if isinstance(allocator, Arena):
        return allocator.allocate(size)
    allocate = getattr(allocator, "allocate", None)
    if allocate is None:
        raise TypeError(f"{allocator!r} has no allocate(size) method")
    block = allocate(size)
    if not isinstance(block, Block):
        raise TypeError(f"{allocator!r}.allocate() returned {type(block).__name__}, not a Block")
    return block


def box(allocator: object, layout: object, value: object = None) -> Box:
    """Allocate one ``layout``-sized block from ``allocator`` and store ``value`` in it.

    ``value=None`` zero-fills the block. If the value does not fit the layout the
    block is released before the error propagates.
    """
    parsed = _parse_layout(layout)
    size = _layout_size(parsed)
    block = _allocate(allocator, size)
    try:
        result = Box(block, parsed)
        if value is None:
            with memoryview(block) as mv:
                mv[:size] = bytes(size)
        else:
            result.value = value
    except BaseException:
        if block.live and not block.exported:
            block.release()
        raise
    return result


class Box:
    """Guard over one value stored in place in an allocator block.

    Any access after ``release()`` raises :class:`UseAfterRelease`; releasing twice
    raises :class:`DoubleRelease`; releasing while a view from ``.array`` is alive
    raises :class:`BufferStillExported` and leaves the box usable. A box cannot be
    copied or pickled (TypeError): it owns its block.
    """

    __slots__ = ("__weakref__", "_block", "_layout", "_released")

    def __getattr__(self, name: str) -> Any:
        # Only reached when a slot was never set: Box.__new__ without __init__.
        if name in Box.__slots__:
            raise NotInitialized("this Box was made with Box.__new__; boxes come from "
                                 "SlabAllocator.box() or coreallocs.boxes.box()")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __init__(self, block: Block, layout: object) -> None:
        if not isinstance(block, Block):
            raise TypeError(f"block must be a coreallocs Block, not {type(block).__name__}")
        layout = _parse_layout(layout)
        if len(block) < _layout_size(layout):
            raise InvalidSize(f"{_describe(layout)} does not fit a {len(block)}-byte block")
        self._block = block
        self._layout = layout
        self._released = False

    # -- state -------------------------------------------------------------
    def _live_block(self) -> Block:
        if self._released:
            raise UseAfterRelease(f"box of {_describe(self._layout)} was released")
        return self._block

    @property
    def block(self) -> Block:
        """The underlying block (UseAfterRelease once the box was released)."""
        return self._live_block()

    @property
    def layout(self) -> struct.Struct | np.dtype[Any]:
        return self._layout

    @property
    def nbytes(self) -> int:
        return _layout_size(self._layout)

    @property
    def live(self) -> bool:
        """True while the box and its block can be used."""
        return not self._released and self._block.live

    # -- value -------------------------------------------------------------
    @property
    def value(self) -> Any:
        """A copy of the stored value: a tuple (struct) or numpy scalar/record (dtype)."""
        block = self._live_block()
        layout = self._layout
        if isinstance(layout, struct.Struct):
            return layout.unpack_from(block, 0)
        return np.frombuffer(block, dtype=layout, count=1).copy()[0]  # type: ignore[call-overload]

    @value.setter
    def value(self, value: Any) -> None:
        block = self._live_block()
        layout = self._layout
        if isinstance(layout, struct.Struct):
            items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
            layout.pack_into(block, 0, *items)
        else:
            np.frombuffer(block, dtype=layout, count=1)[0] = value  # type: ignore[call-overload]

    @property
    def array(self) -> np.ndarray[Any, Any]:
        """A live one-element numpy view of the block (dtype layouts only).

        While the view is alive, ``release()`` raises BufferStillExported.
        """
        block = self._live_block()
        if isinstance(self._layout, struct.Struct):
            raise TypeError("array views need a numpy dtype layout, this box uses a struct format")
        view = np.frombuffer(block, dtype=self._layout, count=1)  # type: ignore[call-overload]
        return view  # type: ignore[no-any-return]

    def __getitem__(self, key: int | str) -> Any:
        block = self._live_block()
        layout = self._layout
        if isinstance(layout, struct.Struct):
            if not isinstance(key, int):
                raise TypeError(f"struct layouts are indexed by position, not {key!r}")
            return layout.unpack_from(block, 0)[key]
        self._check_field(key)
        record = np.frombuffer(block, dtype=layout, count=1).copy()[0]  # type: ignore[call-overload]
        return record[key]

    def __setitem__(self, key: int | str, item: Any) -> None:
        block = self._live_block()
        layout = self._layout
        if isinstance(layout, struct.Struct):
            values = list(layout.unpack_from(block, 0))
            values[key] = item  # type: ignore[index]
            layout.pack_into(block, 0, *values)
            return
        self._check_field(key)
        np.frombuffer(block, dtype=layout, count=1)[key][0] = item  # type: ignore[call-overload]

    def _check_field(self, key: object) -> None:
        names = self._layout.names  # type: ignore[union-attr]
        if names is None:
            raise TypeError(f"{_describe(self._layout)} has no fields; use .value")
        if isinstance(key, str) and key not in names:
            raise KeyError(f"{_describe(self._layout)} has no field {key!r} (fields: {names})")

    # -- release -----------------------------------------------------------
    def release(self) -> None:
        """Release the block (BufferStillExported while a view from ``.array`` is alive)."""
        if self._released:
            raise DoubleRelease(f"box of {_describe(self._layout)} was already released")
        self._block.release()
        self._released = True

    def __enter__(self) -> Box:
        self._live_block()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._released and self._block.live:
            self.release()

    def __reduce__(self) -> Any:
        raise TypeError("a Box cannot be copied or pickled; copy its .value instead")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a Box cannot be copied or pickled; copy its .value instead")

    def __copy__(self) -> Box:
        raise TypeError("a Box cannot be copied; copy its .value instead")

    def __deepcopy__(self, memo: Any) -> Box:
        raise TypeError("a Box cannot be copied; copy its .value instead")

    def __repr__(self) -> str:
        try:
            object.__getattribute__(self, "_released")
        except AttributeError:
            return "<Box (not initialised)>"
        if not self.live:
            return f"<Box {_describe(self._layout)} released>"
        return f"<Box {_describe(self._layout)} value={self.value!r}>"


_core._register_box_factory(box)  # SlabAllocator.box(layout, value)
