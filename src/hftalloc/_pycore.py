"""Pure-Python bus core: messages, routes and the publish/dispatch/release path.

This is the reference implementation of the hot path. ``_fastcore.pyx`` implements
the same classes and methods in Cython (selected automatically when it is built);
both are tested against the same suite. The slow, shared parts (subscriptions,
policies, error hook, asyncio machinery, statistics) live in :mod:`hftalloc.bus`.

Lifetime of a message: ``claim``/``publish`` takes a block from the size-class pool
-> commit stamps ``seq`` and ``publish_ns`` -> subscribers run (inline, or from the
async drain task) -> when the last subscriber has returned and every ``retain()`` has
been matched by ``release()``, the bus releases its memoryviews and gives the block
back. If a subscriber still holds a view (exports remain), the block is *not*
recycled: the message is parked in ``_deferred`` and retried later (counted in
``leaked_views``).
"""

from __future__ import annotations

from collections import deque
from time import perf_counter_ns
from typing import Any

from hftalloc.errors import (
    BufferStillExported,
    BusClosed,
    MessageReleased,
    MessageStateError,
    NotRetained,
)
from hftalloc.histogram import HEADER, MAX_VALUE, SUB_BITS

__all__ = ["CLAIMED", "DONE", "IN_FLIGHT", "RELEASED", "Message", "PyCore", "Route"]

# message states (shared with _fastcore)
CLAIMED, IN_FLIGHT, DONE, RELEASED = range(4)
STATE_NAMES = ("claimed", "in flight", "retained", "released")

_SMALL = 1 << SUB_BITS
_BYTE_TYPES = (bytes, bytearray)
_HALF_SHIFT = SUB_BITS - 1


def _as_bytes_view(data: Any) -> Any:
    """A flat byte view of any C-contiguous buffer (TypeError: not a buffer;
    BufferError: not C-contiguous, as the compiled core's PyBUF_SIMPLE request says)."""
    view = memoryview(data)
    if not view.c_contiguous:
        raise BufferError("publish needs a C-contiguous buffer")
    if not view.nbytes:
        return b""
    return view.cast("B")


class Route:
    """Per-topic dispatch entry: resolved subscribers and counters."""

    __slots__ = (
        "async_subs",
        "callbacks",
        "delivered",
        "dropped",
        "errors",
        "published",
        "rejected",
        "subscriptions",
        "topic",
    )

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.callbacks: tuple[Any, ...] = ()
        self.subscriptions: tuple[Any, ...] = ()
        self.async_subs: tuple[Any, ...] = ()
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.rejected = 0
        self.errors = 0


class Message:
    """One message on the bus: a pool block plus topic, sequence number and timestamp.

    Subscribers read ``msg.payload`` (a read-only memoryview of the block, no copy).
    It is valid until the subscriber returns; to keep the message longer call
    ``msg.retain()`` and later ``msg.release()``. A claimed message is written
    through ``msg.buffer`` and published by ``commit()`` (or leaving its ``with``).
    """

    __slots__ = ("_block", "_core", "_length", "_refs", "_route", "_rview", "_state",
                 "_wview", "publish_ns", "seq", "topic")

    def __init__(self) -> None:
        raise TypeError("messages are created by MessageBus.claim()/publish()")

    # -- payload access -------------------------------------------------------------
    @property
    def payload(self) -> memoryview:
        """Read-only view of the payload (zero copy)."""
        view = self._rview
        if view is None:
            if self._state == RELEASED:
                raise self._released_error()
            view = memoryview(self._block)[: self._length].toreadonly()
            self._rview = view
        return view

    @property
    def buffer(self) -> memoryview:
        """Writable view of a claimed message (before commit)."""
        if self._state != CLAIMED:
            raise MessageStateError(
                f"message seq={self.seq} on {self.topic!r} is {STATE_NAMES[self._state]}; "
                "only a claimed message can be written"
            )
        view = self._wview
        if view is None:
            view = memoryview(self._block)[: self._length]
            self._wview = view
        return view

    def tobytes(self) -> bytes:
        """A copy of the payload."""
        return bytes(self.payload)

    def __len__(self) -> int:
        return self._length

    @property
    def nbytes(self) -> int:
        """Payload length in bytes."""
        return self._length

    @property
    def size_class(self) -> int:
        """Bytes reserved for this message (its size class)."""
        if self._block is None:
            raise self._released_error()
        return self._block.reserved

    @property
    def live(self) -> bool:
        return self._state != RELEASED

    @property
    def state(self) -> str:
        return STATE_NAMES[self._state]

    @property
    def refcount(self) -> int:
        """Outstanding ``retain()`` calls."""
        return self._refs

    # -- ownership --------------------------------------------------------------------
    def retain(self) -> Message:
        """Keep the message (and its block) alive after the subscriber returns."""
        if self._state in (RELEASED, CLAIMED):
            raise (self._released_error() if self._state == RELEASED else MessageStateError(
                "retain() is for subscribers; a claimed message is owned by its claimer"))
        self._refs += 1
        return self

    def release(self) -> None:
        """Undo one ``retain()``; the block goes back once nobody holds the message."""
        if self._refs <= 0:
            if self._state == RELEASED:
                raise NotRetained(f"message seq={self.seq} on {self.topic!r} was already released")
            raise NotRetained(
                f"message seq={self.seq} on {self.topic!r}: release() without retain()")
        self._refs -= 1
        if self._refs == 0 and self._state == DONE:
            self._core._free(self)

    # -- claim / commit ------------------------------------------------------------------
    def commit(self) -> int:
        """Publish a claimed message; returns its sequence number."""
        if self._state != CLAIMED:
            raise MessageStateError(f"message on {self.topic!r} is {STATE_NAMES[self._state]}, "
                                    "commit() needs a claimed message")
        return self._core._commit(self)

    def abort(self) -> None:
        """Give a claimed message's block back without publishing it (counted)."""
        if self._state != CLAIMED:
            raise MessageStateError(f"message on {self.topic!r} is {STATE_NAMES[self._state]}, "
                                    "abort() needs a claimed message")
        self._core._abort(self)

    def __enter__(self) -> Message:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._state != CLAIMED:
            return
        if exc_type is not None:
            self._core._abort(self)
            return
        try:
            self._core._commit(self)
        except BufferStillExported:
            self._core._abort(self)
            raise

    # -- helpers -------------------------------------------------------------------------
    def _released_error(self) -> MessageReleased:
        return MessageReleased(
            f"message seq={self.seq} on {self.topic!r} was released; call msg.retain() in the "
            "subscriber to keep it"
        )

    def _drop_views(self) -> bool:
        """Release the bus's own views; True when no buffer of the block is exported any more."""
        view = self._rview
        if view is not None:
            try:
                view.release()
            except BufferError:
                return False
            self._rview = None
        view = self._wview
        if view is not None:
            try:
                view.release()
            except BufferError:
                return False
            self._wview = None
        return self._block.exported == 0

    def __repr__(self) -> str:
        return (f"<Message seq={self.seq} topic={self.topic!r} nbytes={self._length} "
                f"{STATE_NAMES[self._state]}>")


def _new_message(core: PyCore, route: Route, topic: str, block: Any, length: int) -> Message:
    msg = object.__new__(Message)
    msg._core = core
    msg._route = route
    msg._block = block
    msg._length = length
    msg._refs = 0
    msg._state = CLAIMED
    msg._rview = None
    msg._wview = None
    msg.topic = topic
    msg.seq = 0
    msg.publish_ns = 0
    return msg


class PyCore:
    """Hot path of :class:`~hftalloc.bus.MessageBus` in pure Python (see module doc)."""

    def _core_init(self, slab: Any, policy: int, is_async: bool, latency_counts: Any) -> None:
        self._slab = slab
        self._policy = policy
        self._async = is_async
        self._lat = latency_counts
        self._routes: dict[str, Route] = {}
        self._queue: deque[Message] = deque()
        self._deferred: list[Message] = []
        self._idle = True
        self._wake: Any = None
        self._space_waiters = 0
        self._closed = False
        self._seq = 0
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.rejected = 0
        self.errors = 0
        self.aborted = 0
        self.leaked_views = 0
        self.retained = 0

    # -- publishing --------------------------------------------------------------------
    def publish(self, topic: str, data: Any) -> int | None:
        """Copy ``data`` into a pool block and publish it on ``topic``.

        Returns the sequence number, or None when the ``drop`` policy dropped it.
        """
        return self._publish(topic, data, True)

    def _try_publish(self, topic: str, data: Any) -> int | None:
        """publish() without the exhaustion policy: -1 when the class is full."""
        return self._publish(topic, data, False)

    def _publish(self, topic: str, data: Any, apply_policy: bool) -> int | None:
        route = self._routes.get(topic) if type(topic) is str else None  # else: _resolve raises
        if route is None:
            route = self._resolve(topic)
        if self._closed:
            raise BusClosed("the bus is closed")
        src = data if type(data) in _BYTE_TYPES else _as_bytes_view(data)
        n = len(src)
        if not route.callbacks and not route.async_subs:
            return self._count_unrouted(route)
        block = self._take(route, n)
        if block is None:
            if not apply_policy:
                return -1
            self._exhausted(route, n)
            return None
        if n:
            view = memoryview(block)
            view[:n] = src
            view.release()
        return self._commit(_new_message(self, route, topic, block, n))

    def claim(self, topic: str, size: int) -> Message | None:
        """A writable message of ``size`` bytes; publish it with ``commit()``/``with``.

        Returns None when the ``drop`` policy dropped it.
        """
        return self._claim(topic, size, True)

    def _try_claim(self, topic: str, size: int) -> Message | None:
        """claim() without the exhaustion policy: None when the class is full."""
        return self._claim(topic, size, False)

    def _claim(self, topic: str, size: int, apply_policy: bool) -> Message | None:
        route = self._routes.get(topic) if type(topic) is str else None  # else: _resolve raises
        if route is None:
            route = self._resolve(topic)
        if self._closed:
            raise BusClosed("the bus is closed")
        block = self._take(route, size)
        if block is None:
            if apply_policy:
                self._exhausted(route, size)
            return None
        return _new_message(self, route, topic, block, size)

    def _take(self, route: Route, size: int) -> Any:
        """A block for ``size`` bytes, sweeping parked messages once if the class is full."""
        block = self._allocate(route, size)
        if block is None:
            block = self._allocate_after_sweep(route, size)
        return block

    def _count_unrouted(self, route: Route) -> int:
        self._seq += 1
        route.published += 1
        self.published += 1
        return self._seq

    def _allocate(self, route: Route, size: int) -> Any:
        if type(size) is not int or not 0 <= size <= 0x7FFFFFFFFFFFFFFF:
            size = self._check_size(size)
        try:
            return self._slab.try_allocate(size or 1)
        except Exception:
            route.rejected += 1
            self.rejected += 1
            raise

    def _allocate_after_sweep(self, route: Route, size: int) -> Any:
        """The class is full: recycle blocks whose leaked views are gone, then retry."""
        before = len(self._deferred)
        if before and self._sweep() < before:
            return self._allocate(route, size)
        return None

    def _commit(self, msg: Message) -> int:
        if (msg._wview is not None or msg._rview is not None) and not msg._drop_views():
            raise BufferStillExported(
                f"claimed message on {msg.topic!r}: a view derived from msg.buffer/payload is "
                "still alive; drop it before commit"
            )
        self._seq += 1
        msg.seq = seq = self._seq
        msg.publish_ns = perf_counter_ns()
        msg._state = IN_FLIGHT
        route = msg._route
        route.published += 1
        self.published += 1
        if self._async:
            self._queue.append(msg)
            if self._idle:
                self._idle = False
                if self._wake is not None:
                    self._wake()
        else:
            try:
                self._dispatch(msg, route)
            finally:
                self._finish(msg)
        return seq

    def _abort(self, msg: Message) -> None:
        self.aborted += 1
        self._free(msg)

    # -- delivery ------------------------------------------------------------------------
    def _dispatch(self, msg: Message, route: Route) -> None:
        """Run the synchronous subscribers of ``route`` on ``msg`` (errors are contained)."""
        lat = self._lat
        start = msg.publish_ns
        ok = 0
        i = -1
        for callback in route.callbacks:
            i += 1
            value = perf_counter_ns() - start
            if value < _SMALL:
                lat[HEADER + value] += 1
            else:
                if value > MAX_VALUE:
                    value = MAX_VALUE
                shift = value.bit_length() - SUB_BITS
                lat[HEADER + (shift << _HALF_SHIFT) + (value >> shift)] += 1
            lat[0] += 1
            lat[1] += value
            if value < lat[2]:
                lat[2] = value
            if value > lat[3]:
                lat[3] = value
            try:
                callback(msg)
                ok += 1
            except Exception as exc:
                self._subscriber_failed(exc, msg, route, route.subscriptions[i])
        route.delivered += ok
        self.delivered += ok

    def _drain(self, limit: int) -> list[Message]:
        """Dispatch up to ``limit`` queued messages; return those with async subscribers."""
        queue = self._queue
        pending = []
        while queue and limit > 0:
            limit -= 1
            msg = queue.popleft()
            route = msg._route
            try:
                self._dispatch(msg, route)
            finally:
                if route.async_subs:
                    pending.append(msg)
                else:
                    self._finish(msg)
        return pending

    def _finish(self, msg: Message) -> None:
        """Dispatch is over: free the block unless a subscriber retained the message."""
        if msg._refs:
            msg._state = DONE
            self.retained += 1
        else:
            self._free(msg)

    def _free(self, msg: Message) -> None:
        if msg._state == DONE:
            self.retained -= 1
        msg._state = RELEASED
        if msg._drop_views():
            msg._block.release()
            msg._block = None
            if self._space_waiters:
                self._on_space()
        else:
            self.leaked_views += 1
            self._deferred.append(msg)

    def _sweep(self) -> int:
        """Retry blocks held back by leaked views; returns how many are still held."""
        if not self._deferred:
            return 0
        still = []
        freed = 0
        for msg in self._deferred:
            if msg._drop_views():
                msg._block.release()
                msg._block = None
                freed += 1
            else:
                still.append(msg)
        self._deferred = still
        if freed and self._space_waiters:
            self._on_space()
        return len(still)

    # -- provided by the bus layer (hftalloc.bus._BusAPI) ----------------------------------
    def _resolve(self, topic: str) -> Route:  # pragma: no cover - overridden
        raise NotImplementedError

    def _exhausted(self, route: Route, size: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _subscriber_failed(self, exc: BaseException, msg: Message, route: Route,
                           subscription: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _on_space(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_size(self, size: Any) -> int:  # pragma: no cover - overridden
        raise NotImplementedError
