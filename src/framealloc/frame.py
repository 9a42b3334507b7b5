"""One frame buffer: an arena, what the frame using it allocated, and its O(1) recycling."""

from __future__ import annotations

import warnings

import numpy as np

from coreallocs import Arena, Block
from coreallocs.errors import BufferStillExported
from coreallocs.uncopyable import Uncopyable
from framealloc.errors import FrameLeakError, FrameLeakWarning, StaleFrameError
from framealloc.policies import LeakPolicy

__all__ = ["FrameBuffer", "Segment"]

_MAX_LISTED = 10


class Segment(Uncopyable):
    """An arena block that frame arrays live in: a chunk of many arrays or one big array.

    It records where the block is, not the block itself: the block goes as soon as
    its arrays do, and recycling a frame then only drops these small records.
    """

    __slots__ = ("dims", "dtype", "first", "last", "nbytes", "offset")

    def __init__(self, block: Block, first: int, dims: tuple[int, ...] | None = None,
                 dtype: object = None) -> None:
        self.offset = block.offset  # unique within one generation of a bump arena
        self.nbytes = block.nbytes
        self.first = first  # number (within its frame) of the first array in it
        self.last = first if dims is not None else -1  # chunks: set when retired
        self.dims = dims  # None for a chunk
        self.dtype = dtype

    def describe(self) -> str:
        where = f"{self.nbytes} B at offset {self.offset}"
        if self.dims is None:
            return f"chunk of {where}"
        return f"{self.dtype} array of shape {self.dims}, {where}"


class FrameBuffer(Uncopyable):
    """Buffer `index` of a frame allocator; serves frames index, index+N, index+2N, ...

    ``recycle()`` resets it for its next frame in O(1) when nothing references its
    memory any more; otherwise it applies the leak policy. The bookkeeping it keeps
    (one segment per chunk or big array, one arena per heap-fallback block) is what
    lets it name the allocations still referenced.
    """

    __slots__ = ("arena", "frame", "heap_arenas", "index", "leaks", "segments", "waste")

    def __init__(self, index: int, capacity: int, *, name: str, debug: bool,
                 prefault: bool = True) -> None:
        self.index = index
        self.arena = Arena(capacity, name=name, debug=debug, stale_error=StaleFrameError)
        if prefault:
            self.prefault()
        self.frame = index  # the frame currently (or last) served by this buffer
        self.segments: dict[int, Segment] = {}  # arena offset -> segment
        self.heap_arenas: list[Arena] = []  # one-off arenas of heap-fallback blocks
        self.waste = 0  # bytes left unused at the end of retired chunks
        self.leaks = 0  # recycles that found memory still referenced

    def prefault(self) -> None:
        """Touch every page of the buffer once, so frames do not pay first-touch page faults."""
        block = self.arena.allocate(self.arena.capacity, 1)
        # Block exports the buffer protocol (numpy's stubs list concrete buffer types)
        pages = np.frombuffer(block, np.uint8)  # type: ignore[call-overload]
        pages.fill(0)
        del pages  # the export must be gone before the reset
        self.arena.reset()

    # -- bookkeeping -------------------------------------------------------------
    def add_segment(self, segment: Segment) -> Segment:
        self.segments[segment.offset] = segment
        return segment

    @property
    def used(self) -> int:
        """Bytes of the arena handed out to this frame, minus the unused ends of chunks."""
        return self.arena.used - self.waste

    def exported(self) -> list[Block]:
        """Blocks of this frame (arena and heap fallbacks) still exported to views."""
        blocks = self.arena.exported_blocks()
        for heap in self.heap_arenas:
            blocks.extend(heap.exported_blocks())
        return blocks

    # -- recycling -----------------------------------------------------------------
    def recycle(self, policy: LeakPolicy, next_frame: int) -> bool:
        """Reset for `next_frame` in O(1); return True if leaked views forced a detach.

        ``strict``: raise FrameLeakError and change nothing if views remain. ``warn``
        and ``detach``: leave the old memory to those views and continue on fresh memory.
        """
        leaked = self.exported()
        if leaked:
            message, leaks = self._leak_message(leaked, next_frame)
            if policy == "strict":
                raise FrameLeakError(message, frame=self.frame, leaks=leaks)
            if policy == "warn":
                warnings.warn(message, FrameLeakWarning, stacklevel=3)  # the swap() caller
            self.leaks += 1
            self.arena.reset(on_exported="detach")
        else:
            try:
                self.arena.reset(on_exported="raise")
            except BufferStillExported as exc:  # a view appeared meanwhile: never reset under it
                raise FrameLeakError(str(exc), frame=self.frame) from exc
        for heap in self.heap_arenas:  # retire heap-fallback handles with their frame
            heap.reset(on_exported="detach")
        self.heap_arenas.clear()
        self.segments.clear()
        self.waste = 0
        self.frame = next_frame
        return bool(leaked)

    def _leak_message(self, blocks: list[Block], next_frame: int) -> tuple[str, list[str]]:
        leaks = [self._describe(b) for b in blocks]
        head = (
            f"frame {self.frame} (buffer {self.index}) cannot be reset for frame {next_frame}: "
            f"{len(leaks)} of its allocation(s) are still referenced by numpy arrays or "
            f"memoryviews:"
        )
        listed = [f"  - {text}" for text in leaks[:_MAX_LISTED]]
        if len(leaks) > _MAX_LISTED:
            listed.append(f"  ... and {len(leaks) - _MAX_LISTED} more")
        hint = (
            "Drop those references before the frame's buffer comes round again, copy what "
            "must survive (numpy.array(a), allocator.copy(a) into the current frame, or "
            "allocator.persistent.copy(a)), or choose on_leak='warn' or 'detach'."
        )
        if not self.arena.debug:
            hint += " Create the allocator with debug=True to see where each array was allocated."
        return "\n".join([head, *listed, hint]), leaks

    def _describe(self, block: Block) -> str:
        own = block.owner is self.arena
        seg = self.segments.get(block.offset) if own else None
        if seg is None:
            owner = "block" if own else "heap-fallback block"
            text = f"{owner} of {block.nbytes} B from allocate() in frame {self.frame}"
        elif seg.last >= 0 and seg.last != seg.first:
            text = (f"one or more of arrays #{seg.first}..#{seg.last} of frame {self.frame} "
                    f"({seg.describe()})")
        else:
            text = f"array #{seg.first} of frame {self.frame} ({seg.describe()})"
        if block.origin:
            text += "\n    allocated at:\n" + block.origin.rstrip("\n")
        return text
