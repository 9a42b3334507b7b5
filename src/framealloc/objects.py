"""Frame-scoped Python objects: records that are taken back at ``swap()`` and reused.

Per-frame churn of small Python objects (events, contacts, commands) is what feeds
the cyclic GC: every new container object counts towards the next collection, and
records that point at each other become cyclic garbage. A :class:`FrameObjects`
pool hands out instances of one ``__slots__`` class for the current frame and takes
them back when the frame's allocator swaps, so a steady game creates none.

The rule is the one recycled arrays follow: an object is reused only if nothing
outside the pool's frame records can still reach it. At ``swap()`` an object still
referenced from elsewhere (a list, a global, a weak reference, another object --
directly or through other records of the frame) is *detached*: the pool forgets it,
its holder keeps a normal object, and ``detached`` counts it. Records of the frame
that only reference each other (cycles included) are taken back. A taken-back
object has every slot cleared (its references dropped at once) before reuse.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable
from operator import attrgetter
from typing import Any, Generic, TypeVar

from framealloc.uncopyable import Uncopyable

__all__ = ["FrameObjects"]

T = TypeVar("T")

_getrefcount = sys.getrefcount
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
    the allocator's ``swap()`` calls ``end_frame()``, which takes back every record of
    the frame that nothing else references and detaches (counts) the others.
    `cls` must define ``__slots__`` (through its whole hierarchy) and is created with
    ``cls.__new__(cls)``: ``__init__`` is not called.
    """

    def __init__(self, cls: type[T]) -> None:
        self.cls = cls
        self.slots = _slots_of(cls)
        self._new = cls.__new__
        self._get = attrgetter(*self.slots)
        self._weak = "__weakref__" in dir(cls)
        self._free: list[T] = []
        self._taken: list[T] = []
        self.created = 0  # objects created because none was free
        self.reused = 0  # new() calls served by a taken-back object
        self.recycled = 0  # objects taken back at swaps
        self.detached = 0  # objects still referenced at a swap: left to their holder

    @property
    def live(self) -> int:
        """Records handed out in the current frame."""
        return len(self._taken)

    @property
    def free(self) -> int:
        """Taken-back records ready for reuse."""
        return len(self._free)

    def new(self, *values: Any, **fields: Any) -> T:
        """A record for this frame: `values` fill the slots in order, `fields` by name."""
        slots = self.slots
        if len(values) > len(slots):
            raise TypeError(f"{self.cls.__name__} has {len(slots)} slots, got {len(values)} values")
        for name in fields:
            if name not in slots:
                raise AttributeError(f"{self.cls.__name__} has no slot {name!r}")
            if name in slots[:len(values)]:
                raise TypeError(f"slot {name!r} given both by position and by name")
        free = self._free
        if free:
            obj = free.pop()
            self.reused += 1
        else:
            obj = self._new(self.cls)
            self.created += 1
        setattr_ = object.__setattr__
        for name, value in zip(slots, values, strict=False):
            setattr_(obj, name, value)
        for name in slots[len(values):]:
            setattr_(obj, name, fields.get(name))
        self._taken.append(obj)
        return obj

    def end_frame(self) -> int:
        """Take back the frame's records nothing else references; return how many."""
        taken = self._taken
        if not taken:
            return 0
        self._taken = []
        # `taken` and the loop variable hold each object: 3 with getrefcount's argument
        base = 3
        keep: list[Any] = []
        held: list[Any] = []
        weak = self._weak
        for obj in taken:
            if _getrefcount(obj) == base and not (weak and weakref.getweakrefcount(obj)):
                keep.append(obj)
            else:
                held.append(obj)
        del obj
        taken.clear()  # now `keep` / `held` hold each object once
        if held:
            keep += self._settle(held)
        self._clear(keep)
        self.recycled += len(keep)
        room = _MAX_FREE - len(self._free)
        self._free += keep[:room] if room < len(keep) else keep
        return len(keep)

    def _settle(self, held: list[Any]) -> list[Any]:
        """Of records that have referrers, those only other frame records reach.

        Counts the references the held records make to each other; a record with
        more references than those (and the pool's own) is reachable from outside,
        and so is every record it reaches: those are detached, the rest returned.
        """
        inner, edges = self._links(held)
        weak = self._weak
        outside = []
        for i in range(len(held)):
            # `held` and `obj` hold the object: 3 with getrefcount's argument
            obj = held[i]
            if _getrefcount(obj) - 3 > inner[i] or (weak and weakref.getweakrefcount(obj)):
                outside.append(i)
        reached = set(outside)
        while outside:
            i = outside.pop()
            for j in edges[i]:
                if j not in reached:
                    reached.add(j)
                    outside.append(j)
        self.detached += len(reached)
        return [held[i] for i in range(len(held)) if i not in reached]

    def _links(self, held: list[Any]) -> tuple[list[int], list[list[int]]]:
        """References among `held`: per record, how many it receives and whom it points to
        (a function of its own, so that no local keeps a slot value alive afterwards)."""
        get, single = self._get, len(self.slots) == 1
        ids = {id(obj): i for i, obj in enumerate(held)}
        inner = [0] * len(held)
        edges: list[list[int]] = [[] for _ in held]
        for i, obj in enumerate(held):
            values: Iterable[Any] = (get(obj),) if single else get(obj)
            for value in values:
                j = ids.get(id(value))
                if j is not None and held[j] is value:
                    inner[j] += 1
                    edges[i].append(j)
        return inner, edges

    def _clear(self, objects: list[Any]) -> None:
        """Drop every slot value of `objects` (slots set to None)."""
        slots = self.slots
        setattr_ = object.__setattr__
        for obj in objects:
            for name in slots:
                setattr_(obj, name, None)

    def clear(self) -> None:
        """Forget every record (free and taken); the allocator closes."""
        self._taken = []
        self._free = []

    def __repr__(self) -> str:
        return (f"<FrameObjects {self.cls.__name__} live={self.live} free={self.free} "
                f"detached={self.detached}>")
