"""The persistent area: pool-backed memory for data that outlives frames."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from coreallocs import AllocatorStats, Block, SlabAllocator
from coreallocs.uncopyable import Uncopyable
from framealloc.arrays import DTypeLike, ShapeLike, split_request, zero_fill

__all__ = ["PersistentArea"]

DEFAULT_BLOCKS_PER_CLASS = 256


class PersistentArea(Uncopyable):
    """Long-lived blocks and numpy arrays from a :class:`coreallocs.SlabAllocator`.

    Sizes up to `max_size` come from power-of-two size-class pools (O(1), growing
    by `blocks_per_class`: an int, one int per class, or ``{class_size: blocks}``
    with the classes left out at 256); bigger ones from the system, counted in
    ``stats.fallback_allocations``. A block returns to its pool on ``release()``
    or when its last reference goes; an array's block returns when the array and
    every view of it are gone. Memory is 16-byte aligned. Not copyable or picklable.
    """

    def __init__(
        self,
        *,
        min_size: int = 16,
        max_size: int = 1 << 16,
        blocks_per_class: int | Sequence[int] | Mapping[int, int] = DEFAULT_BLOCKS_PER_CLASS,
        name: str = "persistent",
    ) -> None:
        if isinstance(blocks_per_class, Mapping):  # classes left out: this area's default
            blocks_per_class = {**_class_defaults(min_size, max_size), **blocks_per_class}
        self._slab = SlabAllocator(
            min_size, max_size, blocks_per_class, align=16, grow=True, fallback="system", name=name
        )

    def allocate(self, size: int) -> Block:
        """A block of `size` bytes (uninitialised) that lives until released or dropped."""
        return self._slab.allocate(size)

    def array(self, shape: ShapeLike, dtype: DTypeLike = None) -> np.ndarray:
        """An uninitialised array whose memory lives as long as the array (and its views)."""
        dims, dt, count = split_request(shape, dtype)
        nbytes = count * dt.itemsize
        if nbytes == 0:
            return np.empty(dims, dt)
        block = self._slab.allocate(nbytes)
        # Block exports the buffer protocol (numpy's stubs list concrete buffer types)
        return np.frombuffer(block, dt, count).reshape(dims)  # type: ignore[call-overload]

    def zeros(self, shape: ShapeLike, dtype: DTypeLike = None) -> np.ndarray:
        """Like array(), filled with zeros."""
        return zero_fill(self.array(shape, dtype))

    def copy(self, source: np.ndarray) -> np.ndarray:
        """A persistent copy of `source` (for example frame data that must survive)."""
        out = self.array(source.shape, source.dtype)
        np.copyto(out, source)
        return out

    @property
    def in_use(self) -> int:
        """Blocks currently allocated (arrays count one block each)."""
        return self._slab.in_use

    @property
    def stats(self) -> AllocatorStats:
        return self._slab.stats

    @property
    def slab(self) -> SlabAllocator:
        """The underlying slab allocator (per-class statistics, C-level access)."""
        return self._slab

    def report(self) -> str:
        return self._slab.report()

    def close(self) -> None:
        """Refuse further allocations (BlocksStillLive if blocks are still in use)."""
        self._slab.close()

    def __repr__(self) -> str:
        return f"<PersistentArea {self._slab.name!r} in_use={self._slab.in_use}>"


def _class_defaults(min_size: object, max_size: object) -> dict[int, int]:
    """{class_size: DEFAULT_BLOCKS_PER_CLASS} for every class (empty for bad sizes: the
    SlabAllocator then reports them)."""
    if type(min_size) is not int or type(max_size) is not int or not 0 < min_size <= max_size:
        return {}
    sizes, size = {}, 1 << (min_size - 1).bit_length()
    while size <= max_size:
        sizes[size] = DEFAULT_BLOCKS_PER_CLASS
        size <<= 1
    return sizes
