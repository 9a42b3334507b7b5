"""Frame-scoped Python objects: records that are taken back at ``swap()`` and reused.

Per-frame churn of small Python objects (events, contacts, commands) is what feeds
the cyclic GC: every new container object counts towards the next collection, and
records that point at each other become cyclic garbage. A :class:`FrameObjects`
pool hands out instances of one ``__slots__`` class for the current frame and takes
them back when the frame's allocator swaps, so a steady game creates none.

The rule is the one recycled arrays follow: an object is reused only if nothing
outside the pool's frame records can still reach it. When the frame's records are
settled (at ``swap()``, or in a game loop's slack right after it) an object still
referenced from elsewhere (a list, a global, a weak reference, another object --
directly or through other records of the frame) is *detached*: the pool forgets it,
its holder keeps a normal object, and ``detached`` counts it. Records of the frame
that only reference each other (cycles included) are taken back. A taken-back
object has every slot cleared (its references dropped at once) before reuse.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from coreallocs.uncopyable import Uncopyable
from framealloc._crecords import RecordCore

__all__ = ["FrameObjects"]

T = TypeVar("T")

_MAX_FREE = 1 << 16  # free objects kept per pool (beyond that, taken-back ones are dropped)


def _slots_of(cls: type) -> tuple[str, ...]:
    """Every slot of `cls` (its MRO), or TypeError if its instances have a __dict__."""
    if not isinstance(cls, type):
        raise TypeError(f"FrameObjects needs a class, got {cls!r}")
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        slots = klass.__dict__.get("__slots__")
        if slots is None:
            raise TypeError(
                f"{cls.__name__} must define __slots__ (and so must its bases): a frame "
                f"record's state has to be clearable when it is taken back")
        if isinstance(slots, str):
            slots = (slots,)
        names += [n for n in slots if n not in ("__weakref__", "__dict__")]
        if "__dict__" in slots:
            raise TypeError(f"{cls.__name__} has a __dict__ slot: frame records need fixed slots")
    if not names:
        raise TypeError(f"{cls.__name__} has no slots to hold a record's fields")
    return tuple(dict.fromkeys(names))


class FrameObjects(Uncopyable, Generic[T]):
    """A pool of `cls` instances valid for the current frame (``allocator.objects(cls)``).

    ``new(*values, **fields)`` returns a record with its slots set (the others None);
    the allocator's ``swap()`` calls ``close_frame()`` (O(1): the frame's records wait)
    and ``settle()``, which takes back every waiting record that nothing else
    references and detaches (counts) the others; ``end_frame()`` does both.
    `cls` must define ``__slots__`` (through its whole hierarchy), keep the default
    attribute access, and is created with ``cls.__new__(cls)``: ``__init__`` is not
    called. The work is done by the compiled ``framealloc._crecords.RecordCore``.
    """

    def __init__(self, cls: type[T]) -> None:
        self.cls = cls
        self.slots = _slots_of(cls)
        for hook in ("__getattribute__", "__setattr__", "__delattr__"):
            if getattr(cls, hook) is not getattr(object, hook):
                raise TypeError(f"{cls.__name__} overrides {hook}: frame records need plain "
                                f"slot access")
        self._core = RecordCore(cls, self.slots, "__weakref__" in dir(cls), _MAX_FREE)
        self.new = self._core.new  # type: ignore[method-assign]
        self.end_frame = self._core.end_frame  # type: ignore[method-assign]
        self.close_frame = self._core.close_frame  # type: ignore[method-assign]
        self.settle = self._core.settle  # type: ignore[method-assign]

    def new(self, *values: Any, **fields: Any) -> T:  # replaced per instance by the core's
        """A record for this frame: `values` fill the slots in order, `fields` by name."""
        return self._core.new(*values, **fields)  # type: ignore[no-any-return]

    def end_frame(self) -> int:  # replaced per instance by the core's
        """close_frame() then settle(); return the records taken back."""
        return self._core.end_frame()  # type: ignore[no-any-return]

    def close_frame(self) -> None:  # replaced per instance by the core's
        """The frame ends: its records wait for settle() (O(1))."""
        self._core.close_frame()

    def settle(self) -> int:  # replaced per instance by the core's
        """Take back the waiting records nothing else references; return how many."""
        return self._core.settle()  # type: ignore[no-any-return]

    @property
    def live(self) -> int:
        """Records handed out in the current frame."""
        return self._core.live  # type: ignore[no-any-return]

    @property
    def ended(self) -> int:
        """Records of ended frames waiting for settle()."""
        return self._core.ended  # type: ignore[no-any-return]

    @property
    def free(self) -> int:
        """Taken-back records ready for reuse."""
        return self._core.free  # type: ignore[no-any-return]

    @property
    def created(self) -> int:
        """Records created because none was free."""
        return self._core.created  # type: ignore[no-any-return]

    @property
    def reused(self) -> int:
        """new() calls served by a taken-back record."""
        return self._core.reused  # type: ignore[no-any-return]

    @property
    def recycled(self) -> int:
        """Records taken back at swaps."""
        return self._core.recycled  # type: ignore[no-any-return]

    @property
    def detached(self) -> int:
        """Records still referenced at a swap: left to their holder."""
        return self._core.detached  # type: ignore[no-any-return]

    def clear(self) -> None:
        """Forget every record (free and taken); the allocator closes."""
        self._core.clear()

    def __repr__(self) -> str:
        return (f"<FrameObjects {self.cls.__name__} live={self.live} free={self.free} "
                f"detached={self.detached}>")
