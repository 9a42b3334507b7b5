"""FrameAllocator: N rotating frame buffers (double buffering by default) plus a persistent area."""

from __future__ import annotations

import operator
import traceback
import weakref
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from coreallocs import Arena, Block, format_table
from coreallocs.errors import AllocatorClosed, InvalidSize
from coreallocs.uncopyable import Uncopyable
from framealloc._ccursor import CCursor
from framealloc.arrays import (
    CHUNK_ALIGN,
    DEFAULT_ALIGN,
    DTypeLike,
    ShapeLike,
    align_up,
    heap_array,
)
from framealloc.errors import FrameLeakError, FrameOverflow, StaleFrameError
from framealloc.frame import FrameBuffer, Segment
from framealloc.objects import FrameObjects, T
from framealloc.persistent import PersistentArea
from framealloc.policies import (
    LeakPolicy,
    OverflowPolicy,
    check_leak_policy,
    check_overflow_policy,
)
from framealloc.stats import FrameAllocatorStats

__all__ = ["FrameAllocator"]

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
MAX_DEFAULT_CHUNK = 4 << 20
FIRST_CHUNK = 1024  # chunks double from this size up to chunk_size (and stay there)


class FrameAllocator(Uncopyable):
    """Scratch memory that is recycled wholesale, frame after frame.

    ``FrameAllocator(frame_size=1 MiB, *, buffers=2, on_leak="strict",
    on_overflow="raise", chunk_size=None, debug=False, persistent=None)``

    Frame ``k`` allocates from buffer ``k % buffers``. ``swap()`` ends the frame and
    resets the next buffer in O(1), whatever it held, so with the default two
    buffers the data of frame ``k`` stays readable during frame ``k+1`` and is
    reclaimed when frame ``k+2`` starts.

    - ``allocate(size, align=16)`` -> :class:`coreallocs.Block`; using it after its
      buffer was reset raises :class:`~framealloc.StaleFrameError`.
    - ``array(shape, dtype=float64, align=16)`` / ``zeros(...)`` -> numpy arrays in the
      frame. ``swap()`` refuses to reset a buffer that arrays or memoryviews still
      reference and applies `on_leak` (see :mod:`framealloc.policies`).
    - A request that does not fit raises :class:`~framealloc.FrameOverflow`, or is
      served from the heap with ``on_overflow="heap"`` (counted).
    - ``persistent``: a pool-backed :class:`~framealloc.PersistentArea` for data that
      outlives frames.

    Small arrays are carved from chunks of the frame (one buffer export per chunk;
    chunks double from 1 KiB up to `chunk_size`: frame_size/8 capped to 4 MiB by
    default); arrays above half of `chunk_size` get their own block. With ``debug=True``
    every array gets its own block and remembers where it was allocated, so leak
    errors name each array. With `prefault` (default) every page of the buffers is
    touched once up front, so frames do not pay first-touch page faults. Not
    thread-safe: use one allocator per thread. Not copyable or picklable (TypeError).
    """

    #: the bump cursor class (the compiled ``framealloc._ccursor.CCursor``)
    _cursor_type: ClassVar[Any] = CCursor
    _closed = True  # until __init__ has run: an uninitialised instance refuses to work

    def __init__(
        self,
        frame_size: int = 1 << 20,
        *,
        buffers: int = 2,
        on_leak: LeakPolicy = "strict",
        on_overflow: OverflowPolicy = "raise",
        chunk_size: int | None = None,
        debug: bool = False,
        persistent: PersistentArea | None = None,
        name: str = "frame",
        prefault: bool = True,
    ) -> None:
        frame_size = _positive(frame_size, "frame_size")
        buffers = _positive(buffers, "buffers")
        if chunk_size is None:
            chunk_size = min(MAX_DEFAULT_CHUNK, max(FIRST_CHUNK, frame_size // 8))
        chunk_size = align_up(_positive(chunk_size, "chunk_size"), CHUNK_ALIGN)
        self.frame_size = frame_size
        self.buffers = buffers
        self.chunk_size = chunk_size
        self.on_leak: LeakPolicy = check_leak_policy(on_leak)
        self.on_overflow: OverflowPolicy = check_overflow_policy(on_overflow)
        self.debug = bool(debug)
        self.name = name
        self.persistent = persistent if persistent is not None else PersistentArea(
            name=f"{name}.persistent"
        )
        self._buffers = [
            FrameBuffer(i, frame_size, name=f"{name}[{i}]", debug=self.debug, prefault=prefault)
            for i in range(buffers)
        ]
        self._index = 0
        self.frame = 0  # number of the current frame
        self._closed = False
        self._chunk: Segment | None = None  # the chunk the cursor carves from
        self._next_chunk = min(FIRST_CHUNK, chunk_size)  # chunks double up to chunk_size
        self._raw_allocations = 0  # allocate() calls of the current frame
        self._last_bytes = 0
        self._last_allocations = 0
        self._high_water = 0
        self._total_allocations = 0
        self.overflows = 0
        self.heap_fallbacks = 0
        self.heap_bytes = 0
        self._pools: dict[type, FrameObjects[Any]] = {}  # frame-scoped object pools
        self._cursor: Any = self._cursor_type(_weak_refill(self))
        # The hot path: array()/zeros()/arrays() go straight to the cursor's bound methods
        # (one call instead of two; the methods below document the signatures), unless a
        # subclass overrides them.
        cls = type(self)
        if cls.array is FrameAllocator.array:
            self.array = self._cursor.array  # type: ignore[method-assign]
        if cls.zeros is FrameAllocator.zeros:
            self.zeros = self._cursor.zeros  # type: ignore[method-assign]
        if cls.arrays is FrameAllocator.arrays:
            self.arrays = self._cursor.arrays  # type: ignore[method-assign]

    # -- allocation ------------------------------------------------------------------
    def array(  # replaced per instance by the cursor's bound method (same signature)
        self, shape: ShapeLike, dtype: DTypeLike = None, align: int = DEFAULT_ALIGN
    ) -> np.ndarray:
        """An uninitialised C-contiguous array in the current frame (dtype None = float64).

        The data starts on a multiple of ``max(align, 16)`` bytes.
        """
        out: np.ndarray = self._cursor.array(shape, dtype, align)
        return out

    def arrays(  # replaced per instance like array()
        self, count: int, shape: ShapeLike, dtype: DTypeLike = None, align: int = DEFAULT_ALIGN
    ) -> tuple[np.ndarray, ...]:
        """`count` arrays like ``array(shape, dtype, align)`` in one call (a tuple).

        For the handful of same-shape temporaries a frame needs: one call and one
        argument check instead of `count`.
        """
        out: tuple[np.ndarray, ...] = self._cursor.arrays(count, shape, dtype, align)
        return out

    def zeros(  # replaced per instance like array()
        self, shape: ShapeLike, dtype: DTypeLike = None, align: int = DEFAULT_ALIGN
    ) -> np.ndarray:
        """Like array(), filled with zeros."""
        out: np.ndarray = self._cursor.zeros(shape, dtype, align)
        return out

    def empty_like(self, other: np.ndarray) -> np.ndarray:
        """An uninitialised frame array with the shape and dtype of `other`."""
        return self.array(other.shape, other.dtype)

    def copy(self, source: np.ndarray) -> np.ndarray:
        """A copy of `source` in the current frame (to carry data one more frame)."""
        out = self.array(np.shape(source), np.asarray(source).dtype)
        np.copyto(out, source)
        return out

    def objects(self, cls: type[T]) -> FrameObjects[T]:
        """The frame-scoped object pool of the ``__slots__`` class `cls` (one per class).

        ``frames.objects(Event).new(...)`` returns a record valid for the current frame;
        ``swap()`` takes it back for reuse unless something still references it (then
        it is detached and counted in ``objects_detached``). See :class:`FrameObjects`.
        """
        pool = self._pools.get(cls)
        if pool is None:
            self._check_open()
            pool = self._pools[cls] = FrameObjects(cls)
        return pool

    @property
    def objects_detached(self) -> int:
        """Frame-scoped objects that were still referenced at a swap (left to their holder)."""
        return sum(pool.detached for pool in self._pools.values())

    def allocate(self, size: int, align: int = DEFAULT_ALIGN) -> Block:
        """`size` bytes of the current frame as a Block (stale once its buffer is reset)."""
        block = self._buffers[self._index].arena.try_allocate(size, align)
        if block is None:
            return self._allocate_overflow(size, align)
        self._raw_allocations += 1
        return block

    # -- frames ------------------------------------------------------------------------
    def swap(self, *, settle_objects: bool = True) -> int:
        """End the current frame, reset the next buffer (O(1)) and return the new frame number.

        Raises FrameLeakError (policy ``strict``) when arrays or memoryviews still
        reference the buffer to reset; the frame then does not advance. The frame's
        records (``objects(cls)``) are settled at once, or with ``settle_objects=False``
        left waiting for :meth:`settle_objects` (what :class:`GameLoop` does: it settles
        them in the slack after the frame, before any collection).
        """
        self._check_open()
        nxt = (self._index + 1) % self.buffers
        target = self._buffers[nxt]
        resume = None
        if nxt == self._index:  # a single buffer: the current frame is the one to reset
            resume = self._suspend_chunk()
        nbytes, count = self.bytes_used, self.allocations
        self._cursor.release_cached(nxt)  # recycled array objects no longer hold `target`
        try:
            target.recycle(self.on_leak, self.frame + 1)
        except FrameLeakError:
            if resume is not None:  # nothing was reset: keep carving the same chunk
                self._resume_chunk(*resume)
            raise
        self._retire_chunk()
        self._last_bytes, self._last_allocations = nbytes, count
        self._high_water = max(self._high_water, nbytes)
        self._total_allocations += count
        self._cursor.reset_count()
        self._raw_allocations = 0
        self._index = nxt
        self.frame += 1
        if self._pools:
            for pool in self._pools.values():
                pool.close_frame()
            if settle_objects:
                self.settle_objects()
        return self.frame

    def settle_objects(self) -> int:
        """Settle the records of ended frames (see :class:`FrameObjects`); return how
        many were taken back."""
        return sum(pool.settle() for pool in self._pools.values())

    @property
    def bytes_used(self) -> int:
        """Bytes the current frame has used so far (alignment padding included)."""
        buf = self._buffers[self._index]
        unused = 0 if self._chunk is None else self._chunk.nbytes - self._cursor.used
        return buf.used - unused

    @property
    def allocations(self) -> int:
        """Allocations (arrays and blocks) made by the current frame so far."""
        carved: int = self._cursor.count
        return carved + self._raw_allocations

    @property
    def leaks(self) -> int:
        """Swaps that found a frame still referenced and detached it (warn/detach)."""
        return sum(b.leaks for b in self._buffers)

    @property
    def stats(self) -> FrameAllocatorStats:
        used = self.bytes_used
        return FrameAllocatorStats(
            frame=self.frame,
            buffers=self.buffers,
            frame_size=self.frame_size,
            bytes_used=used,
            allocations=self.allocations,
            last_frame_bytes=self._last_bytes,
            last_frame_allocations=self._last_allocations,
            high_water=max(self._high_water, used),
            total_allocations=self._total_allocations + self.allocations,
            overflows=self.overflows,
            heap_fallbacks=self.heap_fallbacks,
            heap_bytes=self.heap_bytes,
            leaks=self.leaks,
        )

    def report(self) -> str:
        """Frame figures, one row per frame buffer, and the persistent area."""
        s = self.stats
        lines = [
            f"frame allocator {self.name!r}: frame {s.frame}, {s.buffers} x {s.frame_size} B",
            f"  this frame: {s.bytes_used} B in {s.allocations} allocations; last frame: "
            f"{s.last_frame_bytes} B in {s.last_frame_allocations}; high water {s.high_water} B",
            f"  overflows {s.overflows} (heap fallbacks {s.heap_fallbacks}, {s.heap_bytes} B), "
            f"leaks detached {s.leaks}, allocations in total {s.total_allocations}",
        ]
        rows = [b.arena.stats for b in self._buffers] + [self.persistent.stats]
        lines.append(format_table(rows))
        return "\n".join(lines)

    def close(self) -> None:
        """Refuse further frame allocations (the persistent area stays usable)."""
        if self._closed:
            return
        self._retire_chunk()
        self._cursor.clear_cache()
        for pool in self._pools.values():
            pool.clear()
        self._closed = True
        for buf in self._buffers:
            buf.arena.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> FrameAllocator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<FrameAllocator {self.name!r} frame={self.frame} buffers={self.buffers} "
                f"used={self.bytes_used}/{self.frame_size}>")

    # -- slow paths ------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise AllocatorClosed(f"frame allocator {self.name!r} is closed")

    def _suspend_chunk(self) -> tuple[Segment, Block, int, int, int] | None:
        """Retire the current chunk but remember how to resume it if the swap is refused.

        Only the chunk's Block is kept (not its array): holding the array would keep
        the block exported and make the leak check see the cursor itself.
        """
        chunk = self._chunk
        if chunk is None:
            return None
        block = self._cursor.chunk.base.obj  # frombuffer wraps the Block in a memoryview
        state = (chunk, block, self._cursor.used, chunk.last, self._buffers[self._index].waste)
        self._retire_chunk()
        return state

    def _resume_chunk(self, chunk: Segment, block: Block, pos: int, last: int, waste: int) -> None:
        chunk.last = last
        self._buffers[self._index].waste = waste
        self._chunk = chunk
        # Block exports the buffer protocol (numpy's stubs list concrete buffer types)
        chunk = np.frombuffer(block, np.uint8)  # type: ignore[call-overload]
        self._cursor.attach(chunk, pos, self._index)

    def _retire_chunk(self) -> None:
        """Stop carving from the current chunk; count its unused end as waste."""
        chunk = self._chunk
        if chunk is None:
            return
        chunk.last = self._cursor.count - 1
        self._buffers[self._index].waste += self._cursor.detach()
        self._chunk = None

    def _refill(
        self, dims: tuple[int, ...], dt: np.dtype, nbytes: int, align: int
    ) -> np.ndarray | None:
        """Cursor slow path: a dedicated block, a new chunk (then None) or the overflow policy."""
        self._check_open()
        buf = self._buffers[self._index]
        number = self._cursor.count  # the number the array will get in its frame
        if self.debug or align > CHUNK_ALIGN or 2 * nbytes > self.chunk_size:
            return self._dedicated(buf, dims, dt, nbytes, align, number)
        arena = buf.arena
        free = arena.remaining - (align_up(arena.used, CHUNK_ALIGN) - arena.used)
        size = min(max(self._next_chunk, align_up(nbytes, CHUNK_ALIGN)), free & -CHUNK_ALIGN)
        block = arena.try_allocate(size, CHUNK_ALIGN) if size >= nbytes else None
        if block is None:  # the current chunk (if any) stays in use for smaller requests
            return self._array_overflow(buf, dims, dt, nbytes, align)
        self._retire_chunk()
        self._next_chunk = min(2 * self._next_chunk, self.chunk_size)
        self._chunk = buf.add_segment(Segment(block, number))
        # Block exports the buffer protocol (numpy's stubs list concrete buffer types)
        chunk = np.frombuffer(block, np.uint8)  # type: ignore[call-overload]
        self._cursor.attach(chunk, 0, self._index)
        return None

    def _dedicated(self, buf: FrameBuffer, dims: tuple[int, ...], dt: np.dtype, nbytes: int,
                   align: int, number: int) -> np.ndarray:
        block = buf.arena.try_allocate(nbytes, max(align, DEFAULT_ALIGN))
        if block is None:
            return self._array_overflow(buf, dims, dt, nbytes, align)
        buf.add_segment(Segment(block, number, dims, dt))
        if self.debug:
            block.origin = _user_stack()
        # Block exports the buffer protocol (numpy's stubs list concrete buffer types only)
        count = nbytes // dt.itemsize
        out: np.ndarray = np.frombuffer(block, dt, count)  # type: ignore[call-overload]
        return out if len(dims) == 1 else out.reshape(dims)

    def _overflow(self, buf: FrameBuffer, nbytes: int, align: int, kind: str) -> None:
        """Count an overflow; raise FrameOverflow unless the heap policy applies."""
        self.overflows += 1
        if self.on_overflow == "heap":
            return
        used = self.bytes_used
        raise FrameOverflow(
            f"frame {self.frame} (buffer {buf.index} of {self.frame_size} B): {kind} of "
            f"{nbytes} B (align {align}) does not fit; {used} B used by "
            f"{self.allocations} allocations, {buf.arena.remaining} B left in the buffer. "
            f"Use a larger frame_size or on_overflow='heap'.",
            frame=self.frame,
            requested=nbytes,
            used=used,
            capacity=self.frame_size,
            allocations=self.allocations,
        )

    def _array_overflow(self, buf: FrameBuffer, dims: tuple[int, ...], dt: np.dtype, nbytes: int,
                        align: int) -> np.ndarray:
        self._overflow(buf, nbytes, align, f"{dt} array of shape {dims}")
        out = heap_array(dims, dt, max(align, DEFAULT_ALIGN))  # MemoryError: nothing served
        self._served_from_heap(nbytes)
        return out

    def _served_from_heap(self, nbytes: int) -> None:
        self.heap_fallbacks += 1
        self.heap_bytes += nbytes

    def _allocate_overflow(self, size: int, align: int) -> Block:
        self._check_open()
        buf = self._buffers[self._index]
        self._overflow(buf, size, align, "block")
        heap = Arena(size, name=f"{buf.arena.name}.heap", debug=self.debug,
                     stale_error=StaleFrameError)
        block = heap.allocate(size, align)  # arena memory is 4096-aligned: any align fits
        buf.heap_arenas.append(heap)
        self._served_from_heap(size)
        self._raw_allocations += 1
        return block


def _weak_refill(allocator: FrameAllocator) -> Any:
    """The cursor's refill callback, holding the allocator weakly.

    The allocator owns the cursor; a strong reference back would make a cycle that
    keeps whole frame buffers alive until the cyclic GC runs. This way dropping the
    allocator frees its buffers at once (once no array uses them).
    """
    method = weakref.WeakMethod(allocator._refill)

    def refill(dims: tuple[int, ...], dt: np.dtype, nbytes: int, align: int) -> Any:
        bound = method()
        if bound is None:
            raise AllocatorClosed("the frame allocator of this array() method is gone")
        return bound(dims, dt, nbytes, align)

    return refill


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, not bool")
    number = operator.index(value)
    if number <= 0:
        raise InvalidSize(f"{what} must be positive, got {number}")
    return number


def _user_stack(limit: int = 12) -> str:
    """The caller's stack, without the frames inside framealloc (debug origins)."""
    frames = [f for f in traceback.extract_stack() if not f.filename.startswith(_PACKAGE_DIR)]
    return "".join(traceback.format_list(frames[-limit:]))
