"""MessageAllocator: power-of-two size-class pools for bus messages.

A thin policy layer over :class:`coreallocs.SlabAllocator`: classes from ``min_size``
(64 B) doubling ``num_classes`` times (8 classes: 64 B .. 8 KiB), a fixed number of
blocks per class (``grow=False``: memory use is bounded and known up front; the same
count for every class or one per class) and an explicit policy for requests above the
largest class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from coreallocs import AllocatorStats, Block, SlabAllocator, format_table
from hftalloc.errors import InvalidSize

__all__ = ["OVERSIZE_POLICIES", "BlocksPerClass", "MessageAllocator"]

OVERSIZE_POLICIES = ("raise", "system")

#: ``blocks_per_class``: an int (every class), one int per class (smallest first) or
#: ``{class_size: blocks}`` (classes left out get 1024).
BlocksPerClass = int | Iterable[int] | Mapping[int, int]


class MessageAllocator:
    """Fixed-capacity power-of-two size classes for message payloads.

    ``allocate(size)`` serves a request from the class ``next_power_of_two(size)``
    (at least ``min_size``). Above the largest class the ``oversize`` policy applies:
    ``"raise"`` (default) raises :class:`~hftalloc.errors.SizeTooLarge`, ``"system"``
    takes a counted block from the system allocator.

    ``blocks_per_class``: the same count for every class (an int), one count per class
    (a sequence, smallest class first, e.g. ``[4096, 4096, 1024, 256, 64, 32, 16, 8]``)
    or ``{class_size: blocks}`` (e.g. ``{64: 8192, 8192: 16}``; the classes left out get
    1024). Each class is exhausted at its own capacity.
    """

    __slots__ = ("_slab",)

    def __reduce__(self) -> Any:
        raise TypeError("MessageAllocator objects cannot be copied or pickled (a copy would "
                        "share the pools of the original)")

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.__reduce__()

    def __copy__(self) -> Any:
        return self.__reduce__()

    def __deepcopy__(self, memo: Any) -> Any:
        return self.__reduce__()

    def __init__(
        self,
        blocks_per_class: BlocksPerClass = 1024,
        *,
        min_size: int = 64,
        num_classes: int = 8,
        oversize: str = "raise",
        name: str = "hftalloc",
    ) -> None:
        if oversize not in OVERSIZE_POLICIES:
            raise ValueError(f"oversize must be one of {OVERSIZE_POLICIES}, got {oversize!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise TypeError(f"num_classes must be an int, not {type(num_classes).__name__}")
        if not 1 <= num_classes <= 24:
            raise InvalidSize(f"num_classes must be between 1 and 24, got {num_classes}")
        if isinstance(min_size, int) and min_size > 0 and min_size & (min_size - 1):
            raise InvalidSize(f"min_size must be a power of two, got {min_size}")
        self._slab = SlabAllocator(
            min_size,
            min_size << (num_classes - 1) if isinstance(min_size, int) else min_size,
            blocks_per_class,
            grow=False,
            fallback="raise" if oversize == "raise" else "system",
            name=name,
        )

    # -- allocation -----------------------------------------------------------
    def allocate(self, size: int) -> Block:
        """A block of ``size`` bytes (PoolExhausted when its class is full)."""
        return self._slab.allocate(size)

    def try_allocate(self, size: int) -> Block | None:
        """Like :meth:`allocate` but ``None`` when the class is exhausted."""
        return self._slab.try_allocate(size)

    def release(self, block: Block) -> None:
        """Give ``block`` back (ForeignBlock if it came from another allocator)."""
        self._slab.release(block)

    def size_class(self, size: int) -> int | None:
        """The class size serving ``size`` bytes, or None above the largest class."""
        return self._slab.size_class(size)

    # -- introspection ----------------------------------------------------------
    @property
    def slab(self) -> SlabAllocator:
        """The underlying core allocator."""
        return self._slab

    @property
    def name(self) -> str:
        return self._slab.name

    @property
    def oversize(self) -> str:
        return "raise" if self._slab.fallback == "raise" else "system"

    @property
    def class_sizes(self) -> tuple[int, ...]:
        return self._slab.class_sizes

    @property
    def num_classes(self) -> int:
        return len(self._slab.class_sizes)

    @property
    def min_size(self) -> int:
        return self._slab.min_size

    @property
    def max_size(self) -> int:
        return self._slab.max_size

    @property
    def blocks_per_class(self) -> int:
        """The largest class capacity (every class's when uniform; see class_capacities)."""
        return self._slab.blocks_per_class

    @property
    def class_capacities(self) -> tuple[int, ...]:
        """Blocks per size class, smallest class first."""
        return self._slab.class_capacities

    def class_capacity(self, size: int) -> int | None:
        """The capacity of the class serving ``size`` bytes (None above the largest)."""
        return self._slab.class_capacity(size)

    @property
    def in_use(self) -> int:
        """Live blocks over every class (system fallback blocks included)."""
        return self._slab.in_use

    def class_stats(self) -> list[AllocatorStats]:
        """One record per size class: capacity, in use, high-water, failures..."""
        return self._slab.class_stats()

    @property
    def stats(self) -> AllocatorStats:
        return self._slab.stats

    def report(self) -> str:
        """A table with one row per size class and the totals."""
        return format_table([*self.class_stats(), self.stats])

    def close(self) -> None:
        """Refuse new allocations (BlocksStillLive while blocks are in use)."""
        self._slab.close()

    @property
    def closed(self) -> bool:
        return self._slab.closed

    def _capacities_text(self) -> str:
        caps = self.class_capacities
        return str(caps[0]) if len(set(caps)) == 1 else "(" + ", ".join(map(str, caps)) + ")"

    def __repr__(self) -> str:
        return (
            f"<MessageAllocator {self.name!r} classes={self.min_size}..{self.max_size} B "
            f"x {self._capacities_text()} in_use={self.in_use} oversize={self.oversize!r}>"
        )
