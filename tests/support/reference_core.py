"""Reference model of the bus core, in pure Python (for tests only).

:class:`ReferenceCore` has the interface of the compiled ``hftalloc._bus.BusCore`` (same
constructor, methods, counters, errors and texts) and is written for clarity, not speed.
:class:`ReferenceBus` is a :class:`~hftalloc.MessageBus` on it: tests that take the
``Bus`` fixture run against both, so the compiled core is checked against the model.

Lifetime of a message: ``claim``/``publish`` takes a block from the size-class pool
-> commit stamps ``seq`` and ``publish_ns`` -> subscribers run (inline, or from the
async drain task) -> when the last subscriber has returned and every ``retain()`` has
been matched by ``release()``, the core releases its memoryviews and gives the block
back. If a subscriber still holds a view (exports remain), the block is *not*
recycled: the message is parked in ``_deferred`` and retried later (counted in
``leaked_views``).

Batches: ``publish_many``/``commit_many`` publish messages on one topic as one batch;
per-message subscribers get each message, batch subscribers one :class:`MessageBatch`
(in sync mode in pieces when the pool runs out mid-batch), which is over (every access
raises MessageReleased) once the call returns.
"""

from __future__ import annotations

from collections import deque
from time import perf_counter_ns
from types import MappingProxyType
from typing import Any

from hftalloc import MessageBus
from hftalloc.errors import (
    BufferStillExported,
    BusClosed,
    BusError,
    BusFull,
    DispatchDepthExceeded,
    InvalidSize,
    MessageReleased,
    MessageStateError,
    NotRetained,
    WouldBlock,
)
from hftalloc.histogram import HEADER, MAX_VALUE, SUB_BITS
from hftalloc.policies import (
    BLOCK,
    CLAIMED,
    DROP,
    IN_FLIGHT,
    RELEASED,
    RETAINED,
    STATE_NAMES,
)

__all__ = ["BUS_CORES", "Message", "MessageBatch", "ReferenceBus", "ReferenceCore", "Route",
           "core_id"]

MAX_MESSAGE = (1 << 63) - 1
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


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not hasattr(size, "__index__"):
        raise TypeError(f"size must be an integer, not {type(size).__name__}")
    size = size.__index__()
    if size < 0:
        raise InvalidSize(f"size must be >= 0, got {size}")
    if size > MAX_MESSAGE:
        raise InvalidSize(f"size={size} is too large")
    return size


def _record(lat: Any, value: int) -> None:
    """Histogram.record, spelled out on the counts array."""
    value = max(0, value)
    if value < _SMALL:
        lat[HEADER + value] += 1
    else:
        clamped = min(value, MAX_VALUE)
        shift = clamped.bit_length() - SUB_BITS
        lat[HEADER + (shift << _HALF_SHIFT) + (clamped >> shift)] += 1
    lat[0] += 1
    lat[1] += value
    if value < lat[2]:
        lat[2] = value
    if value > lat[3]:
        lat[3] = value


class Route:
    """Per-topic dispatch entry: resolved subscribers and counters."""

    __slots__ = ("async_batch_subs", "async_subs", "batch_callbacks", "batch_subscriptions",
                 "callbacks", "delivered", "dropped", "errors", "published", "rejected",
                 "subscriptions", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.callbacks: tuple[Any, ...] = ()
        self.subscriptions: tuple[Any, ...] = ()
        self.async_subs: tuple[Any, ...] = ()
        self.batch_callbacks: tuple[Any, ...] = ()
        self.batch_subscriptions: tuple[Any, ...] = ()
        self.async_batch_subs: tuple[Any, ...] = ()
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.rejected = 0
        self.errors = 0

    def set_subscribers(self, callbacks: tuple[Any, ...], subscriptions: tuple[Any, ...],
                        async_subs: tuple[Any, ...], batch_callbacks: tuple[Any, ...] = (),
                        batch_subscriptions: tuple[Any, ...] = (),
                        async_batch_subs: tuple[Any, ...] = ()) -> None:
        if len(callbacks) != len(subscriptions):
            raise ValueError(f"{len(callbacks)} callbacks for {len(subscriptions)} subscriptions")
        if len(batch_callbacks) != len(batch_subscriptions):
            raise ValueError(f"{len(batch_callbacks)} batch callbacks for "
                             f"{len(batch_subscriptions)} batch subscriptions")
        self.callbacks = callbacks
        self.subscriptions = subscriptions
        self.async_subs = async_subs
        self.batch_callbacks = batch_callbacks
        self.batch_subscriptions = batch_subscriptions
        self.async_batch_subs = async_batch_subs

    @property
    def wanted(self) -> bool:
        """Any subscriber at all."""
        return bool(self.callbacks or self.async_subs or self.batch_callbacks
                    or self.async_batch_subs)

    @property
    def grouped(self) -> bool:
        """Async mode: the drain delivers this topic's messages through a batch."""
        return bool(self.async_subs or self.batch_callbacks or self.async_batch_subs)


class Message:
    """One message on the bus: a pool block plus topic, sequence number and timestamp."""

    __slots__ = ("_block", "_core", "_length", "_more", "_refs", "_route", "_rview", "_start",
                 "_state", "_wview", "publish_ns", "seq", "topic")

    def __init__(self) -> None:
        raise TypeError("messages are created by their owner (MessageBus.claim()/publish(), "
                        "a channel reader or writer)")

    @property
    def payload(self) -> memoryview:
        view = self._rview
        if view is None:
            if self._state == RELEASED:
                raise self._released_error()
            view = memoryview(self._block)[: self._length].toreadonly()
            self._rview = view
        return view

    @property
    def buffer(self) -> memoryview:
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
        return bytes(self.payload)

    def __len__(self) -> int:
        return self._length

    @property
    def nbytes(self) -> int:
        return self._length

    @property
    def size_class(self) -> int:
        if self._block is None:
            raise self._released_error()
        return int(self._block.reserved)

    @property
    def live(self) -> bool:
        return self._state != RELEASED

    @property
    def state(self) -> str:
        return STATE_NAMES[self._state]

    @property
    def refcount(self) -> int:
        return self._refs

    def retain(self) -> Message:
        if self._state in (RELEASED, CLAIMED):
            raise (self._released_error() if self._state == RELEASED else MessageStateError(
                "retain() is for subscribers; a claimed message is owned by its claimer"))
        self._refs += 1
        return self

    def release(self) -> None:
        if self._refs <= 0:
            if self._state == RELEASED:
                raise NotRetained(f"message seq={self.seq} on {self.topic!r} was already released")
            raise NotRetained(
                f"message seq={self.seq} on {self.topic!r}: release() without retain()")
        self._refs -= 1
        if self._refs == 0 and self._state == RETAINED:
            self._core._free(self)

    def _state_error(self, action: str) -> MessageStateError:
        return MessageStateError(f"message on {self.topic!r} is {STATE_NAMES[self._state]}, "
                                 f"{action}")

    def commit(self) -> int | None:
        if self._state != CLAIMED:
            raise self._state_error("commit() needs a claimed message")
        return self._core._commit(self, 0)

    def abort(self) -> None:
        if self._state != CLAIMED:
            raise self._state_error("abort() needs a claimed message")
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
            self._core._commit(self, 0)
        except BufferStillExported:
            self._core._abort(self)
            raise

    def __reduce__(self) -> Any:
        raise TypeError("Message objects cannot be copied or pickled")

    def _released_error(self) -> MessageReleased:
        return MessageReleased(
            f"message seq={self.seq} on {self.topic!r} was released; call msg.retain() in the "
            "subscriber to keep it"
        )

    def _drop_views(self) -> bool:
        """Release the core's own views; True when no buffer of the block is exported."""
        for name in ("_rview", "_wview"):
            view = getattr(self, name)
            if view is not None:
                try:
                    view.release()
                except BufferError:
                    return False
                setattr(self, name, None)
        return bool(self._block.exported == 0)

    def __repr__(self) -> str:
        return (f"<Message seq={self.seq} topic={self.topic!r} nbytes={self._length} "
                f"{STATE_NAMES[self._state]}>")


def _new_message(core: ReferenceCore, route: Route, topic: str, block: Any,
                 length: int) -> Message:
    msg = object.__new__(Message)
    msg._core = core
    msg._route = route
    msg._block = block
    msg._length = length
    msg._refs = 0
    msg._state = CLAIMED
    msg._rview = None
    msg._wview = None
    msg._start = 0
    msg._more = False
    msg.topic = topic
    msg.seq = 0
    msg.publish_ns = 0
    return msg


_NEW, _OPEN, _CLOSED = range(3)


class MessageBatch:
    """Messages on one topic delivered in one batch-subscriber call (model of
    ``hftalloc._batch.MessageBatch``): valid during the call, over afterwards."""

    __slots__ = ("_items", "_phase", "_route", "topic")

    def __init__(self) -> None:
        raise TypeError("batches are made by the bus for its batch subscribers "
                        "(bus.subscribe(pattern, handler, batch=True))")

    def _over_error(self) -> Exception:
        if self._phase == _NEW:
            return MessageStateError("this MessageBatch was not made by a bus (batches are "
                                     "handed to batch subscribers)")
        return MessageReleased(
            f"the batch on {self.topic!r} was delivered and is over; keep retained messages "
            "(kept = [m.retain() for m in batch]), not the batch")

    def _check(self) -> list[Message]:
        if self._phase != _OPEN:
            raise self._over_error()
        return self._items

    def __len__(self) -> int:
        return len(self._check())

    def __bool__(self) -> bool:
        return bool(self._check())

    def __getitem__(self, index: Any) -> Any:
        items = self._check()
        if isinstance(index, slice):
            return tuple(items[index])
        i = index.__index__()
        if not -len(items) <= i < len(items):
            raise IndexError(f"batch index {index} out of range ({len(items)} messages)")
        return items[i]

    def __iter__(self) -> Any:
        self._check()
        return self._iterate()

    def _iterate(self) -> Any:
        i = 0
        while True:
            items = self._check()
            if i >= len(items):
                return
            yield items[i]
            i += 1

    def __contains__(self, item: object) -> bool:
        return any(m is item for m in self._check())

    @property
    def live(self) -> bool:
        return self._phase == _OPEN

    def __reduce__(self) -> Any:
        raise TypeError("MessageBatch objects cannot be copied or pickled")

    def __repr__(self) -> str:
        if self._phase == _CLOSED:
            return f"<MessageBatch topic={self.topic!r} over>"
        return f"<MessageBatch topic={self.topic!r} messages={len(self._items)}>"


def _new_batch(route: Route) -> MessageBatch:
    batch = object.__new__(MessageBatch)
    batch._items = []
    batch._phase = _OPEN
    batch._route = route
    batch.topic = route.topic
    return batch


class ReferenceCore:
    """The model of ``hftalloc._bus.BusCore`` (same constructor and interface)."""

    def __init__(self, slab: Any, policy: int, is_async: bool, latency_counts: Any,
                 resolve: Any, on_error: Any, on_space: Any, max_depth: int = 200) -> None:
        self._slab = slab
        self._policy = policy
        self._async = is_async
        self._lat = latency_counts
        self._resolve = resolve
        self._on_error = on_error
        self._on_space = on_space
        self.max_depth = max_depth
        self._depth = 0
        self._routes: dict[str, Route] = {}
        self.routes = MappingProxyType(self._routes)
        self._queue: deque[Message] = deque()
        self._deferred: list[Message] = []
        self._handed: list[MessageBatch] = []
        self._draining = False
        self.idle = True
        self._wake: Any = None
        self.space_waiters = 0
        self.closed = False
        self._seq = 0
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.rejected = 0
        self.errors = 0
        self.aborted = 0
        self.leaked_views = 0
        self.retained = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def set_wake(self, wake: Any) -> None:
        self._wake = wake

    def close(self) -> None:
        self.closed = True

    # -- publishing --------------------------------------------------------------------
    def publish(self, topic: str, data: Any) -> int | None:
        return self._publish(topic, data, True, 0)

    def publish_at(self, topic: str, data: Any, publish_ns: int) -> int | None:
        if isinstance(publish_ns, bool) or not isinstance(publish_ns, int):
            raise TypeError(f"publish_ns must be an int, not {type(publish_ns).__name__}")
        if not 0 < publish_ns <= MAX_MESSAGE:
            raise ValueError(f"publish_ns must be a CLOCK_MONOTONIC time in ns (> 0), "
                             f"got {publish_ns}")
        return self._publish(topic, data, True, publish_ns)

    def try_publish(self, topic: str, data: Any) -> int | None:
        return self._publish(topic, data, False, 0)

    def _route(self, topic: Any) -> Route:
        route = self._routes.get(topic) if type(topic) is str else None
        if route is None:
            if type(topic) is not str and isinstance(topic, str):
                topic = str.__str__(topic)
                route = self._routes.get(topic)
                if route is not None:
                    return route
            route = self._resolve(topic)
            self._routes[route.topic] = route
        return route

    def _publish(self, topic: str, data: Any, apply_policy: bool, pub_ns: int) -> int | None:
        route = self._route(topic)
        if self.closed:
            raise BusClosed("the bus is closed")
        src = data if type(data) in _BYTE_TYPES else _as_bytes_view(data)
        n = len(src)
        if not route.wanted:
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
        return self._commit(_new_message(self, route, route.topic, block, n), pub_ns)

    # -- batches ----------------------------------------------------------------------
    def publish_many(self, topic: str, payloads: Any) -> int:
        return self._publish_many(topic, payloads, None, True)

    def publish_many_at(self, topic: str, payloads: Any, stamps: Any) -> int:
        items = tuple(payloads)
        times = tuple(stamps)
        if len(times) != len(items):
            raise ValueError(f"{len(items)} payloads but {len(times)} stamps")
        for t in times:
            if isinstance(t, bool) or not isinstance(t, int):
                raise TypeError(f"stamps must be ints, not {type(t).__name__}")
            if t > MAX_MESSAGE:
                raise ValueError(f"stamp {t} is not a CLOCK_MONOTONIC time in ns")
        return self._publish_many(topic, items, times, True)

    def try_publish_many(self, topic: str, payloads: Any) -> int:
        return self._publish_many(topic, payloads, None, False)

    def _publish_many(self, topic: str, payloads: Any, stamps: Any, apply_policy: bool) -> int:
        route = self._route(topic)
        if self.closed:
            raise BusClosed("the bus is closed")
        if isinstance(payloads, list | tuple) and type(payloads) in (list, tuple):
            items = payloads
        else:
            try:
                items = tuple(payloads)
            except TypeError:
                raise TypeError(f"payloads must be an iterable of buffers, not "
                                f"{type(payloads).__name__}") from None
        total = len(items)
        published = refused = last_size = 0
        if not route.wanted:
            for item in items[:total]:
                if type(item) not in _BYTE_TYPES:
                    _as_bytes_view(item)
                self._count_unrouted(route)
                published += 1
            return published
        sync = not self._async
        batch = None
        if sync:
            if self._depth >= self.max_depth:
                route.rejected += total
                self.rejected += total
                raise DispatchDepthExceeded(
                    f"topic {route.topic!r}: publish_many nested {self.max_depth} dispatches "
                    f"deep (a subscriber publishing recursively?); its {total} messages were "
                    "not published")
            if route.batch_callbacks:
                batch = _new_batch(route)
            self._depth += 1
        last = None
        i = 0
        start = perf_counter_ns()
        try:
            while i < total and i < len(items):
                item = items[i]
                pub_ns = max(0, stamps[i]) if stamps is not None else 0
                i += 1
                if self.closed:
                    closed = BusClosed("the bus was closed during publish_many")
                    closed.published = published
                    raise closed
                src = item if type(item) in _BYTE_TYPES else _as_bytes_view(item)
                n = len(src)
                block = self._take(route, n)
                if block is None and batch is not None and batch._items:
                    self._dispatch_batch(batch, route)
                    self._end_batch(batch)
                    batch = _new_batch(route)
                    block = self._take(route, n)
                if block is None:
                    if not apply_policy:
                        i -= 1
                        break
                    if self._policy == DROP:
                        route.dropped += 1
                        self.dropped += 1
                    else:
                        route.rejected += 1
                        self.rejected += 1
                        refused += 1
                        last_size = n
                    continue
                if n:
                    view = memoryview(block)
                    view[:n] = src
                    view.release()
                msg = _new_message(self, route, route.topic, block, n)
                self._stamp(msg, route, pub_ns, start)
                published += 1
                if not sync:
                    self._queue.append(msg)
                    msg._more = True
                    last = msg
                elif batch is not None:
                    batch._items.append(msg)
                    self._dispatch(msg, route)
                else:
                    try:
                        self._dispatch(msg, route)
                    finally:
                        self._finish(msg)
            if batch is not None and batch._items:
                self._dispatch_batch(batch, route)
        except Exception:
            if batch is not None and batch._items and batch._phase == _OPEN:
                self._dispatch_batch(batch, route)
            raise
        finally:
            if sync:
                self._depth -= 1
                if batch is not None:
                    self._end_batch(batch)
            elif last is not None:
                last._more = False
                if self.idle:
                    self.idle = False
                    if self._wake is not None:
                        self._wake()
        if refused:
            request = last_size or 1
            text = (f"topic {route.topic!r}: {refused} of {total} messages of the batch were "
                    f"refused (counted as rejected), the {self._slab.size_class(request)} B "
                    f"size class being exhausted ({self._slab.class_capacity(request)} blocks "
                    "in use")
            error: BusFull
            if self._policy == BLOCK:
                error = WouldBlock(text + "); policy='block' needs await bus.apublish_many()")
            else:
                error = BusFull(text + "); release retained messages, raise blocks_per_class, "
                                "or use policy='drop'/'block'")
            error.refused = refused
            raise error
        return published

    def commit_many(self, messages: Any) -> int:
        items = tuple(messages)
        route = None
        seen: set[int] = set()
        for obj in items:
            if type(obj) is not Message or obj._core is not self or obj._state != CLAIMED:
                raise MessageStateError(f"commit_many() needs claimed messages of this bus, "
                                        f"got {obj!r}")
            if id(obj) in seen:
                raise MessageStateError(f"{obj!r} is given twice to commit_many()")
            seen.add(id(obj))
            if route is None:
                route = obj._route
            elif obj._route is not route:
                raise ValueError(f"commit_many() publishes one topic per call: {route.topic!r} "
                                 f"and {obj.topic!r}")
        if not items:
            return 0
        assert route is not None
        for msg in items:
            if (msg._wview is not None or msg._rview is not None) and not msg._drop_views():
                raise BufferStillExported(
                    f"claimed message on {msg.topic!r}: a view derived from msg.buffer/payload "
                    "is still alive; drop it before commit")
        if not self._async:
            if self._depth >= self.max_depth:
                for msg in items:
                    route.rejected += 1
                    self.rejected += 1
                    self._free(msg)
                raise DispatchDepthExceeded(
                    f"topic {route.topic!r}: commit_many nested {self.max_depth} dispatches "
                    f"deep (a subscriber publishing recursively?); its {len(items)} messages "
                    "were not published")
            batch = _new_batch(route) if route.batch_callbacks else None
            self._depth += 1
            try:
                start = perf_counter_ns()
                for msg in items:
                    self._stamp(msg, route, 0, start)
                    if batch is not None:
                        batch._items.append(msg)
                        self._dispatch(msg, route)
                    else:
                        try:
                            self._dispatch(msg, route)
                        finally:
                            self._finish(msg)
                if batch is not None:
                    self._dispatch_batch(batch, route)
            finally:
                self._depth -= 1
                if batch is not None:
                    self._end_batch(batch)
            return len(items)
        start = perf_counter_ns()
        for msg in items:
            self._stamp(msg, route, 0, start)
            self._queue.append(msg)
            msg._more = True
        items[-1]._more = False
        if self.idle:
            self.idle = False
            if self._wake is not None:
                self._wake()
        return len(items)

    def _stamp(self, msg: Message, route: Route, pub_ns: int, start: int) -> None:
        """Commit with the call's clock reading (one stamp per batch call)."""
        self._seq += 1
        msg.seq = self._seq
        msg._start = start
        msg.publish_ns = pub_ns or msg._start
        msg._state = IN_FLIGHT
        route.published += 1
        self.published += 1

    def _dispatch_batch(self, batch: MessageBatch, route: Route) -> None:
        ok = 0
        for callback, sub in zip(route.batch_callbacks, route.batch_subscriptions, strict=True):
            m = len(batch._items)
            now = perf_counter_ns()
            for msg in batch._items:
                _record(self._lat, now - msg._start)
            try:
                callback(batch)
                ok += m
            except Exception as exc:
                route.errors += m
                self.errors += m
                self._on_error(exc, batch, sub)
        route.delivered += ok
        self.delivered += ok

    def _end_batch(self, batch: MessageBatch) -> None:
        error = None
        for msg in batch._items:
            if msg._state == IN_FLIGHT:
                try:
                    self._finish(msg)
                except BaseException as exc:
                    error = error or exc
        batch._items = []
        batch._phase = _CLOSED
        if error is not None:
            raise error

    def claim(self, topic: str, size: int) -> Message | None:
        return self._claim(topic, size, True)

    def try_claim(self, topic: str, size: int) -> Message | None:
        return self._claim(topic, size, False)

    def _claim(self, topic: str, size: int, apply_policy: bool) -> Message | None:
        route = self._route(topic)
        if self.closed:
            raise BusClosed("the bus is closed")
        if type(size) is not int or not 0 <= size <= MAX_MESSAGE:
            size = _check_size(size)
        block = self._take(route, size)
        if block is None:
            if apply_policy:
                self._exhausted(route, size)
            return None
        return _new_message(self, route, route.topic, block, size)

    def _exhausted(self, route: Route, size: int) -> None:
        if self._policy == DROP:
            route.dropped += 1
            self.dropped += 1
            return
        route.rejected += 1
        self.rejected += 1
        text = (f"topic {route.topic!r}: the {self._slab.size_class(size or 1)} B size class is "
                f"exhausted ({self._slab.class_capacity(size or 1)} blocks in use")
        if self._policy == BLOCK:
            raise WouldBlock(text + "); policy='block' needs await bus.apublish()/aclaim()")
        raise BusFull(text + "); release retained messages, raise blocks_per_class, "
                      "or use policy='drop'/'block'")

    def count_rejected(self, topic: str) -> None:
        route = self._route(topic)
        route.rejected += 1
        self.rejected += 1

    def _take(self, route: Route, size: int) -> Any:
        block = self._allocate(route, size)
        if block is None:
            before = len(self._deferred)
            if before and self.sweep() < before:
                block = self._allocate(route, size)
        return block

    def _count_unrouted(self, route: Route) -> int:
        self._seq += 1
        route.published += 1
        self.published += 1
        return self._seq

    def _allocate(self, route: Route, size: int) -> Any:
        try:
            return self._slab.try_allocate(size or 1)
        except Exception:
            route.rejected += 1
            self.rejected += 1
            raise

    def _commit(self, msg: Message, pub_ns: int) -> int:
        route = msg._route
        if self._depth >= self.max_depth:
            route.rejected += 1
            self.rejected += 1
            self._free(msg)
            raise DispatchDepthExceeded(
                f"topic {route.topic!r}: publish nested {self.max_depth} dispatches deep "
                "(a subscriber publishing recursively?); the message was not published")
        if (msg._wview is not None or msg._rview is not None) and not msg._drop_views():
            raise BufferStillExported(
                f"claimed message on {msg.topic!r}: a view derived from msg.buffer/payload is "
                "still alive; drop it before commit"
            )
        self._seq += 1
        msg.seq = seq = self._seq
        msg._start = perf_counter_ns()
        msg.publish_ns = pub_ns or msg._start
        msg._state = IN_FLIGHT
        route.published += 1
        self.published += 1
        if self._async:
            self._queue.append(msg)
            if self.idle:
                self.idle = False
                if self._wake is not None:
                    self._wake()
        else:
            self._depth += 1
            try:
                self._dispatch(msg, route)
                if route.batch_callbacks:
                    batch = _new_batch(route)
                    batch._items.append(msg)
                    try:
                        self._dispatch_batch(batch, route)
                    finally:
                        batch._items = []
                        batch._phase = _CLOSED
            finally:
                self._depth -= 1
                self._finish(msg)
        return seq

    def _abort(self, msg: Message) -> None:
        self.aborted += 1
        self._free(msg)

    # -- delivery ------------------------------------------------------------------------
    def _dispatch(self, msg: Message, route: Route) -> None:
        ok = 0
        for callback, sub in zip(route.callbacks, route.subscriptions, strict=True):
            _record(self._lat, perf_counter_ns() - msg._start)
            try:
                callback(msg)
                ok += 1
            except Exception as exc:
                route.errors += 1
                self.errors += 1
                self._on_error(exc, msg, sub)
        route.delivered += ok
        self.delivered += ok

    def drain(self, limit: int) -> list[MessageBatch]:
        if self._draining:
            raise BusError("drain() is already running (it is not re-entrant)")
        self._draining = True
        queue = self._queue
        pending: list[MessageBatch] = []
        batch = None
        k = min(limit, len(queue))
        try:
            for i in range(1, k + 1):
                msg = queue.popleft()
                route = msg._route
                if batch is not None and (batch._route is not route or not route.grouped):
                    self._close_group(batch, pending)
                    batch = None
                if not route.grouped:
                    try:
                        self._dispatch(msg, route)
                    finally:
                        self._finish(msg)
                    continue
                if batch is None:
                    batch = _new_batch(route)
                batch._items.append(msg)
                self._dispatch(msg, route)
                if not msg._more or i == k:
                    self._close_group(batch, pending)
                    batch = None
        except BaseException:
            if batch is not None:
                self._end_batch(batch)
            for b in pending:
                self._handed.remove(b)
                self._end_batch(b)
            raise
        finally:
            self._draining = False
        return pending

    def _close_group(self, batch: MessageBatch, pending: list[MessageBatch]) -> None:
        route = batch._route
        try:
            if route.batch_callbacks:
                self._dispatch_batch(batch, route)
        except BaseException:
            self._end_batch(batch)
            raise
        if route.async_subs or route.async_batch_subs:
            self._handed.append(batch)
            pending.append(batch)
        else:
            self._end_batch(batch)

    def _own_handed(self, batch: Any) -> MessageBatch:
        if type(batch) is not MessageBatch or not any(b is batch for b in self._handed):
            raise MessageStateError(f"{batch!r} is not a batch drain() handed out on this bus")
        return batch  # type: ignore[no-any-return]

    def async_batch_subscribers(self, batch: Any) -> tuple[Any, ...]:
        return self._own_handed(batch)._route.async_batch_subs  # type: ignore[no-any-return]

    def record_batch_latency(self, batch: Any) -> None:
        now = perf_counter_ns()
        for msg in self._own_handed(batch)._items:
            _record(self._lat, now - msg._start)

    def count_batch_delivery(self, batch: Any, ok: bool) -> None:
        b = self._own_handed(batch)
        route = b._route
        if ok:
            route.delivered += len(b._items)
            self.delivered += len(b._items)
        else:
            route.errors += len(b._items)
            self.errors += len(b._items)

    def finish_batch(self, batch: Any) -> None:
        b = self._own_handed(batch)
        self._handed = [x for x in self._handed if x is not b]
        self._end_batch(b)

    def _own_in_flight(self, msg: Any) -> Route:
        if type(msg) is not Message or msg._core is not self or msg._state != IN_FLIGHT:
            raise MessageStateError(f"{msg!r} is not an in-flight message of this bus")
        return msg._route  # type: ignore[no-any-return]

    def async_subscribers(self, msg: Any) -> tuple[Any, ...]:
        return self._own_in_flight(msg).async_subs

    def record_latency(self, msg: Any) -> None:
        self._own_in_flight(msg)
        _record(self._lat, perf_counter_ns() - msg._start)

    def count_delivery(self, msg: Any, ok: bool) -> None:
        route = self._own_in_flight(msg)
        if ok:
            route.delivered += 1
            self.delivered += 1
        else:
            route.errors += 1
            self.errors += 1

    def finish(self, msg: Any) -> None:
        self._own_in_flight(msg)
        self._finish(msg)

    def _finish(self, msg: Message) -> None:
        if msg._refs:
            msg._state = RETAINED
            self.retained += 1
        else:
            self._free(msg)

    def _free(self, msg: Message) -> None:
        if msg._state == RETAINED:
            self.retained -= 1
        msg._state = RELEASED
        if msg._drop_views():
            msg._block.release()
            msg._block = None
            if self.space_waiters:
                self._on_space()
        else:
            self.leaked_views += 1
            self._deferred.append(msg)

    def sweep(self) -> int:
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
        if freed and self.space_waiters:
            self._on_space()
        return len(still)


class ReferenceBus(MessageBus):
    """A MessageBus on the reference core (tests run the same cases on both)."""

    _Core = ReferenceCore
    _Route = Route


BUS_CORES = [ReferenceBus, MessageBus]
"""The bus classes every core-parametrised test runs on: the model and the product."""


def core_id(cls: type) -> str:
    """Test id of a BUS_CORES entry."""
    return "reference" if cls is ReferenceBus else "compiled"
