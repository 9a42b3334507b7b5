"""ObjectPool: a thread-safe pool of reusable Python objects with RAII guards.

``pool.acquire()`` hands out a :class:`PooledObject` guard. Use it as a context
manager (``with pool.acquire() as obj:``) or keep it and call ``release()`` /
``detach()``. An empty pool builds a new object with ``factory()``; a released
object goes back to the pool after ``reset(obj)`` unless the pool already holds
``max_size`` idle objects, in which case it is dropped and counted. A guard that
is garbage-collected while still holding its object returns it (counted in
``reclaimed``), so a forgotten ``release()`` does not leak.

Accounting invariant, at any time:
``created - dropped - detached == idle + in_use``.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from coreallocs.errors import AllocatorClosed, DoubleRelease, InvalidSize, UseAfterRelease

__all__ = ["ObjectPool", "ObjectPoolStats", "PooledObject"]

T = TypeVar("T")

_HELD = 0
_RELEASED = 1
_DETACHED = 2
_RECLAIMED = 3
_new_guard = object.__new__
_STATE_NAMES = ("held", "released", "detached", "reclaimed by the garbage collector")


@dataclass(frozen=True)
class ObjectPoolStats:
    """A consistent snapshot of an :class:`ObjectPool`'s counters."""

    name: str
    max_size: int
    created: int  # objects built by the factory
    reused: int  # acquisitions served from the idle list
    dropped: int  # returned objects discarded (pool full, reset failed, pool closed/cleared)
    detached: int  # objects handed over for good with ``detach()``
    in_use: int  # objects currently held through a guard
    idle: int  # objects waiting in the pool
    high_water: int  # largest ``in_use`` seen
    reclaimed: int  # objects returned by the GC safety net (a guard dropped unreleased)
    reset_failures: int  # ``reset(obj)`` raised; the object was dropped (also in ``dropped``)

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


class PooledObject(Generic[T]):
    """Guard for one object on loan from an :class:`ObjectPool`.

    ``with guard as obj:`` returns the object to the pool on exit; ``release()``
    does it explicitly; ``detach()`` keeps the object for good. Once released or
    detached, the guard is dead: ``value`` raises :class:`UseAfterRelease` and a
    second ``release()``/``detach()`` raises :class:`DoubleRelease`.
    """

    __slots__ = ("__weakref__", "_obj", "_pool", "_state")

    _pool: ObjectPool[T]
    _obj: T | None
    _state: int

    def __init__(self) -> None:
        raise TypeError("pooled object guards are created by ObjectPool.acquire()")

    @property
    def value(self) -> T:
        """The pooled object (UseAfterRelease once the guard was released or detached)."""
        if self._state != _HELD:
            raise UseAfterRelease(self._dead_message("used"))
        return self._obj

    obj = value

    @property
    def held(self) -> bool:
        """True while the guard still holds its object."""
        return self._state == _HELD

    @property
    def pool(self) -> ObjectPool[T]:
        return self._pool

    def release(self) -> None:
        """Give the object back to the pool (after ``reset``); DoubleRelease if already done."""
        pool = self._pool
        if pool._reset is not None:
            pool._give_back(self)
            return
        # Hot path (no reset), inlined: one lock round trip, no further calls.
        lock = pool._lock
        lock.acquire()
        try:
            if self._state != _HELD:
                raise DoubleRelease(self._dead_message("released"))
            self._state = _RELEASED
            obj = self._obj
            self._obj = None
            pool._in_use -= 1
            if len(pool._idle) < pool._max_size and not pool._closed:
                pool._idle.append(obj)
            else:
                pool._dropped += 1
        finally:
            lock.release()

    def detach(self) -> T:
        """Keep the object for good: remove it from the pool's accounting and return it."""
        return self._pool._detach(self)

    def __enter__(self) -> T:
        if self._state != _HELD:
            raise UseAfterRelease(self._dead_message("entered"))
        return self._obj

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._state != _HELD:
            return  # released or detached inside the block
        pool = self._pool
        if pool._reset is not None:
            pool._give_back(self)
            return
        # Same hot path as release(), inlined to save a call per ``with``.
        lock = pool._lock
        lock.acquire()
        try:
            if self._state == _HELD:  # re-checked under the lock (another thread may race)
                self._state = _RELEASED
                obj = self._obj
                self._obj = None
                pool._in_use -= 1
                if len(pool._idle) < pool._max_size and not pool._closed:
                    pool._idle.append(obj)
                else:
                    pool._dropped += 1
        finally:
            lock.release()

    def __del__(self) -> None:
        # Safety net: a guard dropped while holding its object returns it. This must
        # not take the pool lock (__del__ may run inside the pool's own critical
        # section when a collection triggers there), so it only queues the object.
        try:
            state = self._state
        except AttributeError:  # never handed out
            return
        if state == _HELD and not sys.is_finalizing():
            self._state = _RECLAIMED
            self._pool._orphans.append(self._obj)
            self._obj = None

    def __reduce__(self) -> Any:
        # A copy would hold the same object and return it twice: refuse.
        raise TypeError("a pooled object guard cannot be copied or pickled; it owns its loan")

    def _dead_message(self, verb: str) -> str:
        return (
            f"pooled object guard from {self._pool.name!r} was {_STATE_NAMES[self._state]}; "
            f"it cannot be {verb} any more"
        )

    def __repr__(self) -> str:
        if self._state == _HELD:
            return f"<PooledObject {self._obj!r} from {self._pool.name!r}>"
        return f"<PooledObject ({_STATE_NAMES[self._state]}) from {self._pool.name!r}>"


class ObjectPool(Generic[T]):
    """A bounded pool of reusable objects.

    Args:
        factory: builds a new object when the pool is empty.
        max_size: how many idle objects the pool keeps; objects returned beyond
            that are dropped (counted in ``dropped``). ``in_use`` is not bounded.
        reset: called with each returned object before it goes back to the
            pool. If it raises, the object is dropped (counted in ``dropped`` and
            ``reset_failures``) and the error propagates from ``release()``.
        prefill: number of objects to build up front (at most ``max_size``).
        name: label used in messages and stats.

    Thread-safe: one lock guards the idle list and the counters; the factory and
    ``reset`` run outside it.
    """

    def __init__(
        self,
        factory: Callable[[], T],
        max_size: int,
        reset: Callable[[T], Any] | None = None,
        *,
        prefill: int = 0,
        name: str | None = None,
    ) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        if reset is not None and not callable(reset):
            raise TypeError(f"reset must be callable or None, not {type(reset).__name__}")
        max_size = _as_count(max_size, "max_size")
        if max_size < 1:
            raise InvalidSize(f"max_size must be positive, got {max_size}")
        prefill = _as_count(prefill, "prefill")
        if prefill < 0 or prefill > max_size:
            raise InvalidSize(f"prefill must be between 0 and max_size={max_size}, got {prefill}")
        self._factory = factory
        self._reset = reset
        self._max_size = max_size
        self.name = name if name is not None else f"ObjectPool({_qualname(factory)})"
        self._lock = threading.Lock()
        self._idle: deque[T] = deque()
        # Objects queued by collected guards; drained under the lock by the pool.
        self._orphans: deque[T] = deque()
        self._closed = False
        self._created = 0
        self._reused = 0
        self._dropped = 0
        self._detached = 0
        self._in_use = 0
        self._high_water = 0
        self._reclaimed = 0
        self._reset_failures = 0
        for _ in range(prefill):
            self._idle.append(factory())
            self._created += 1

    # -- acquire -------------------------------------------------------------
    def acquire(self) -> PooledObject[T]:
        """Borrow an object (a reused idle one, else a new one from the factory)."""
        if self._orphans:
            self._reclaim_orphans()
        lock = self._lock
        guard = _new_guard(PooledObject)
        guard._pool = self
        lock.acquire()
        try:
            if self._closed:
                raise AllocatorClosed(f"object pool {self.name!r} is closed")
            idle = self._idle
            if idle:
                guard._obj = idle.pop()
                guard._state = _HELD
                self._reused += 1
                self._in_use = in_use = self._in_use + 1
                if in_use > self._high_water:
                    self._high_water = in_use
                return guard
        finally:
            lock.release()
        obj = self._factory()
        lock.acquire()
        try:
            self._created += 1
            self._in_use = in_use = self._in_use + 1
            if in_use > self._high_water:
                self._high_water = in_use
        finally:
            lock.release()
        guard._obj = obj
        guard._state = _HELD
        return guard

    # -- give back -----------------------------------------------------------
    def _give_back(self, guard: PooledObject[T]) -> None:
        """Release path with a ``reset`` (the no-reset path is inlined in the guard)."""
        lock = self._lock
        lock.acquire()
        try:
            if guard._state != _HELD:
                raise DoubleRelease(guard._dead_message("released"))
            guard._state = _RELEASED
            obj = guard._obj
            guard._obj = None
        finally:
            lock.release()
        self._store_after_reset(obj)  # type: ignore[arg-type]

    def _store_after_reset(self, obj: T) -> None:
        """Run ``reset(obj)`` outside the lock, then keep or drop the object (counted).

        The guard was already retired under the lock, so no other thread can hand
        this object out before it is stored here.
        """
        keep = not self._closed and len(self._idle) < self._max_size
        if keep:
            try:
                self._reset(obj)  # type: ignore[misc]
            except BaseException:
                with self._lock:
                    self._in_use -= 1
                    self._dropped += 1
                    self._reset_failures += 1
                raise
        lock = self._lock
        lock.acquire()
        try:
            self._in_use -= 1
            if keep and not self._closed and len(self._idle) < self._max_size:
                self._idle.append(obj)
            else:
                self._dropped += 1
        finally:
            lock.release()

    def _detach(self, guard: PooledObject[T]) -> T:
        with self._lock:
            if guard._state != _HELD:
                raise DoubleRelease(guard._dead_message("detached"))
            guard._state = _DETACHED
            obj = guard._obj
            guard._obj = None
            self._in_use -= 1
            self._detached += 1
        return obj

    def _reclaim_orphans(self) -> None:
        """Take back objects queued by guards that were collected without release()."""
        orphans = self._orphans
        while True:
            try:
                obj = orphans.popleft()
            except IndexError:
                return
            with self._lock:
                self._reclaimed += 1
            if self._reset is None:
                with self._lock:
                    self._in_use -= 1
                    if not self._closed and len(self._idle) < self._max_size:
                        self._idle.append(obj)
                    else:
                        self._dropped += 1
            else:
                try:
                    self._store_after_reset(obj)
                except Exception:
                    pass  # counted in reset_failures/dropped; no caller to report to

    # -- lifecycle -----------------------------------------------------------
    def clear(self) -> int:
        """Drop every idle object (counted in ``dropped``); returns how many."""
        self._reclaim_orphans()
        with self._lock:
            dropped = list(self._idle)
            self._idle.clear()
            self._dropped += len(dropped)
        n = len(dropped)
        del dropped  # objects die outside the lock (their finalizers may call back in)
        return n

    def close(self) -> None:
        """Drop idle objects and refuse further acquisitions (AllocatorClosed).

        Objects still on loan may be released afterwards; they are dropped (counted).
        """
        with self._lock:
            self._closed = True
        self.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ObjectPool[T]:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    # -- introspection -------------------------------------------------------
    def stats(self) -> ObjectPoolStats:
        """A consistent snapshot of every counter."""
        if self._orphans:
            self._reclaim_orphans()
        with self._lock:
            return ObjectPoolStats(
                name=self.name,
                max_size=self._max_size,
                created=self._created,
                reused=self._reused,
                dropped=self._dropped,
                detached=self._detached,
                in_use=self._in_use,
                idle=len(self._idle),
                high_water=self._high_water,
                reclaimed=self._reclaimed,
                reset_failures=self._reset_failures,
            )

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def created(self) -> int:
        return self._created

    @property
    def reused(self) -> int:
        return self._reused

    @property
    def dropped(self) -> int:
        self._reclaim_orphans()
        return self._dropped

    @property
    def detached(self) -> int:
        return self._detached

    @property
    def in_use(self) -> int:
        self._reclaim_orphans()
        return self._in_use

    @property
    def idle(self) -> int:
        self._reclaim_orphans()
        return len(self._idle)

    @property
    def high_water(self) -> int:
        return self._high_water

    @property
    def reclaimed(self) -> int:
        self._reclaim_orphans()
        return self._reclaimed

    def __len__(self) -> int:
        """Number of idle objects ready for reuse."""
        return self.idle

    def __repr__(self) -> str:
        s = self.stats()
        state = " closed" if self._closed else ""
        return (
            f"<ObjectPool {self.name!r}{state} idle={s.idle}/{s.max_size} in_use={s.in_use} "
            f"created={s.created} reused={s.reused} dropped={s.dropped}>"
        )


def _as_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
    return value.__index__()  # type: ignore[attr-defined,no-any-return]


def _qualname(factory: Callable[..., object]) -> str:
    return getattr(factory, "__qualname__", None) or type(factory).__name__
