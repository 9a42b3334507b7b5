"""Reference model of the frame allocator's bump cursor, in pure Python (tests only).

It has the interface of ``framealloc._ccursor.CCursor`` (the product's only cursor)
and follows the same rules: a *chunk* is one arena block exported once as a
``uint8`` numpy array; every array the cursor hands out is a view of it, so the
chunk's block stays exported (and the arena refuses to reset it) for as long as any
of those arrays -- or anything derived from them -- is alive. It does not recycle
array objects. ``ReferenceFrameAllocator`` is a ``FrameAllocator`` driving this
cursor, so that the behavioural tests run against both (``frame_allocator()``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from framealloc import FrameAllocator
from framealloc.arrays import (
    CHUNK_ALIGN,
    DEFAULT_ALIGN,
    DTypeLike,
    ShapeLike,
    align_up,
    check_align,
    check_count,
    known_dtypes,
    memoizable,
    split_request,
    zero_fill,
)

__all__ = ["CURSORS", "PyCursor", "ReferenceFrameAllocator", "Refill", "frame_allocator"]

#: ``refill(dims, dtype, nbytes, align)`` is called when the chunk cannot serve a
#: request: it returns a ready array (dedicated block, heap fallback), or attaches a
#: new chunk with room for the request and returns None. It may raise (overflow).
Refill = Callable[[tuple[int, ...], np.dtype, int, int], "np.ndarray | None"]

_EMPTY = np.empty(0, np.uint8)
_known_dtypes = known_dtypes()  # dtype argument -> validated dtype (shared cache)
_prod = math.prod
_ndarray = np.ndarray


class PyCursor:
    """Bump allocation of numpy arrays inside one chunk; the offset stays 16-aligned."""

    __slots__ = ("_end", "_pos", "_refill", "_typed", "_u8", "count")

    def __init__(self, refill: Refill) -> None:
        self._refill = refill
        self._u8: np.ndarray = _EMPTY
        self._pos = 0
        self._end = 0
        # fixed dtype argument -> (view of the chunk in that dtype, log2(itemsize)), for
        # the fast path of dtypes whose itemsize is a power of two <= 16
        self._typed: dict[object, tuple[np.ndarray, int]] = {}
        self.count = 0  # arrays handed out (including those refill served)

    # -- chunk management (slow path, called by the allocator) -------------------
    def reset_count(self) -> None:
        """A new frame starts: its arrays are numbered from 0 again."""
        self.count = 0

    def attach(self, chunk: np.ndarray, pos: int = 0, tag: int = 0) -> None:
        """Carve the next arrays from `chunk` (a uint8 array, 64-aligned, len % 64 == 0).

        `pos` resumes a chunk that was detached at that offset (a refused swap). `tag`
        (the chunk's frame buffer) only matters to the compiled cursor's recycling.
        """
        if not 0 <= pos <= len(chunk):
            raise ValueError(f"pos={pos} is outside the chunk (0..{len(chunk)})")
        self._u8 = chunk
        self._pos = pos
        self._end = len(chunk)
        self._typed = {}

    @property
    def chunk(self) -> np.ndarray:
        """The chunk being carved (an empty array when detached)."""
        return self._u8

    def detach(self) -> int:
        """Drop the chunk; return the bytes left unused at its end."""
        unused = self._end - self._pos
        self._u8 = _EMPTY
        self._pos = self._end = 0
        self._typed = {}
        return unused

    @property
    def used(self) -> int:
        """Bytes of the current chunk handed out (including alignment padding)."""
        return self._pos

    # -- recycling (compiled cursor only: a Python cursor has no table) --------------
    recycled = 0  # arrays handed out again
    cached = 0  # array objects held for reuse

    def release_cached(self, tag: int) -> int:
        """Nothing to unhook: this cursor creates a new view per array."""
        return 0

    def clear_cache(self) -> None:
        """Nothing cached."""

    # -- allocation ------------------------------------------------------------
    def array(
        self, shape: ShapeLike, dtype: DTypeLike = None, align: int = DEFAULT_ALIGN
    ) -> np.ndarray:
        """An uninitialised C-contiguous array of `shape` and `dtype` from the chunk."""
        if align == DEFAULT_ALIGN:
            if type(shape) is int:  # slicing a cached typed view of the chunk is cheapest
                try:
                    view, shift = self._typed[dtype]
                except (KeyError, TypeError):
                    pass
                else:
                    start = self._pos
                    end = start + (shape << shift)
                    if start < end <= self._end:
                        self._pos = (end + 15) & -16
                        self.count += 1
                        return view[start >> shift : end >> shift]
            elif type(shape) is tuple:
                try:
                    dt = _known_dtypes[dtype]
                except (KeyError, TypeError):
                    pass
                else:
                    start = self._pos
                    end = start + _prod(shape) * dt.itemsize
                    if start < end <= self._end:
                        try:  # numpy validates the dimensions
                            out = _ndarray(shape, dt, self._u8, start)
                        except (TypeError, ValueError):
                            pass
                        else:
                            self._pos = (end + 15) & -16
                            self.count += 1
                            return out
        return self._general(shape, dtype, align)

    def arrays(
        self, count: int, shape: ShapeLike, dtype: DTypeLike = None, align: int = DEFAULT_ALIGN
    ) -> tuple[np.ndarray, ...]:
        """A tuple of `count` arrays like array(shape, dtype, align)."""
        n = check_count(count)
        if n == 0:  # the request is still checked, like the compiled cursor does
            split_request(shape, dtype)
            check_align(align)
        array = self.array
        return tuple([array(shape, dtype, align) for _ in range(n)])

    def zeros(
        self, shape: ShapeLike, dtype: DTypeLike = None, align: int = DEFAULT_ALIGN
    ) -> np.ndarray:
        """Like array(), filled with zeros."""
        return zero_fill(self.array(shape, dtype, align))

    def _general(self, shape: ShapeLike, dtype: DTypeLike, align: int) -> np.ndarray:
        align = check_align(align)  # (first, as the compiled cursor does)
        dims, dt, count = split_request(shape, dtype)
        nbytes = count * dt.itemsize
        if nbytes == 0:
            self.count += 1
            return np.empty(dims, dt)
        start = align_up(self._pos, align)
        if align > CHUNK_ALIGN or start + nbytes > self._end:
            ready = self._refill(dims, dt, nbytes, align)
            if ready is not None:
                self.count += 1
                return ready
            start = align_up(self._pos, align)  # a fresh chunk with room was attached
        end = start + nbytes
        self._pos = (end + 15) & -16
        self.count += 1
        itemsize = dt.itemsize
        if (itemsize & (itemsize - 1) == 0 and itemsize <= 16 and start % itemsize == 0
                and memoizable(dtype) and dtype in _known_dtypes):  # (a plain, fixed dtype)
            self._cache_view(dtype, dt)
        return np.ndarray(dims, dt, self._u8, start)

    def _cache_view(self, key: DTypeLike, dt: np.dtype) -> None:
        if key in self._typed:
            return
        usable = self._end - self._end % dt.itemsize
        self._typed[key] = (self._u8[:usable].view(dt), dt.itemsize.bit_length() - 1)


class ReferenceFrameAllocator(FrameAllocator):
    """A FrameAllocator whose cursor is the reference model (tests only)."""

    _cursor_type = PyCursor


#: the cursors behavioural tests run against (ids for pytest parametrisation)
CURSORS = ["compiled", "reference"]


def frame_allocator(cursor: str, *args: Any, **kwargs: Any) -> FrameAllocator:
    """``FrameAllocator(*args, **kwargs)`` with the product cursor ("compiled") or the
    reference model ("reference")."""
    if cursor == "compiled":
        return FrameAllocator(*args, **kwargs)
    if cursor == "reference":
        return ReferenceFrameAllocator(*args, **kwargs)
    raise ValueError(f"unknown cursor {cursor!r}")
