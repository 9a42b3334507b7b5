"""MessageBus: publish/subscribe over pool blocks, with sync or asyncio dispatch.

The per-message path (claim, copy, commit, dispatch, release, size checks and the
exhaustion policy) is the compiled :class:`hftalloc._bus.BusCore`, which the bus creates
and keeps as ``_core``; its hot methods are the bus's own (``bus.publish`` is the core's
bound method: no extra call layer). This module adds everything that is not per message
and hands it to the core as callables: topic validation and wildcard resolution (cached
per topic), the error hook, the asyncio drain task and its wake-ups, statistics.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import monotonic
from typing import Any, ClassVar

from hftalloc._batch import MessageBatch
from hftalloc._bus import DEFAULT_MAX_DEPTH, BusCore, Route
from hftalloc.allocator import BlocksPerClass, MessageAllocator
from hftalloc.errors import (
    BlocksStillLive,
    BusClosed,
    BusError,
    BusFull,
    NotSubscribed,
)
from hftalloc.histogram import Histogram
from hftalloc.policies import BLOCK, MODES, POLICIES
from hftalloc.stats import BusStats, TopicStats
from hftalloc.topics import matches, split_pattern, validate_topic

__all__ = [
    "MODES",
    "POLICIES",
    "MessageBatch",
    "MessageBus",
    "Subscription",
]

log = logging.getLogger("hftalloc.bus")
ErrorHook = Callable[[BaseException, Any, "Subscription"], None]


@dataclass(eq=False, slots=True)
class Subscription:
    """A subscriber registered on a topic or pattern; ``unsubscribe()`` removes it."""

    pattern: str
    callback: Callable[[Any], Any]
    id: int
    is_async: bool
    bus: Any
    active: bool = True
    batch: bool = False

    def unsubscribe(self) -> None:
        self.bus.unsubscribe(self)

    def __reduce__(self) -> Any:
        raise TypeError("Subscription objects cannot be copied or pickled (they belong to one "
                        "live bus)")

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.__reduce__()

    def __copy__(self) -> Any:
        return self.__reduce__()

    def __deepcopy__(self, memo: Any) -> Any:
        return self.__reduce__()

    def __repr__(self) -> str:
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        state = ("" if self.active else " inactive") + (" batch" if self.batch else "")
        return f"<Subscription #{self.id} {self.pattern!r} -> {name}{state}>"


def log_subscriber_error(exc: BaseException, msg: Any, sub: Subscription) -> None:
    """Default error hook: log the exception with the topic and subscriber."""
    log.error("subscriber %r failed on %r", sub, msg, exc_info=exc)


class MessageBus:
    """Publish/subscribe bus over pool blocks (see :meth:`__init__`)."""

    # the core class and its Route type (tests swap in the reference model here)
    _Core: ClassVar[Any] = BusCore
    _Route: ClassVar[Any] = Route

    def __init__(
        self,
        allocator: MessageAllocator | None = None,
        *,
        mode: str = "sync",
        policy: str = "raise",
        blocks_per_class: BlocksPerClass = 1024,
        on_error: ErrorHook | None = None,
        batch: int = 256,
        max_depth: int = DEFAULT_MAX_DEPTH,
        name: str = "bus",
    ) -> None:
        """Create a bus.

        ``allocator``: a :class:`MessageAllocator` (default: 64 B..8 KiB classes with
        ``blocks_per_class`` blocks each, owned and closed by the bus; an int, one int
        per class or ``{class_size: blocks}``, as for :class:`MessageAllocator`).
        ``mode``: ``"sync"`` (publish runs the subscribers inline) or ``"async"``
        (publish queues; a task on the running loop dispatches).
        ``policy`` when a size class is exhausted: ``"raise"`` (BusFull), ``"drop"``
        (counted per topic, publish returns None) or ``"block"`` (async mode only:
        ``await bus.apublish()`` waits for a free block).
        ``on_error(exc, msg, subscription)`` is called when a subscriber raises.
        ``batch``: messages dispatched per drain step before yielding (async mode).
        ``max_depth``: nested synchronous dispatches (subscribers that publish) before
        a publish raises DispatchDepthExceeded (counted as rejected).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if policy == "block" and mode != "async":
            raise ValueError("policy='block' needs mode='async' (a sync publisher cannot wait "
                             "for the subscribers that would free a block)")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or \
                not 1 <= max_depth <= 1_000_000:
            raise ValueError(f"max_depth must be an int in 1..1000000, got {max_depth!r}")
        self._owns_allocator = allocator is None
        if allocator is None:
            allocator = MessageAllocator(blocks_per_class, name=name)
        elif not isinstance(allocator, MessageAllocator):
            raise TypeError(f"allocator must be a MessageAllocator, not {type(allocator).__name__}")
        self.name = name
        self.allocator = allocator
        self.mode = mode
        self.policy = policy
        self._policy = POLICIES.index(policy)
        self.on_error: ErrorHook = on_error if on_error is not None else log_subscriber_error
        self.hook_errors = 0
        self.blocked = 0
        self._latency = Histogram()
        self._subs: dict[int, Subscription] = {}
        self._patterns: dict[int, tuple[str, ...]] = {}
        self._next_id = 1
        core = self._core = self._Core(
            allocator.slab, self._policy, mode == "async", self._latency.counts,
            self._resolve, self._report_error, self._on_space, max_depth)
        # the hot methods are the core's own bound methods (no extra call layer), unless
        # a subclass overrides them
        cls = type(self)
        if cls.publish is MessageBus.publish:
            self.publish = core.publish  # type: ignore[method-assign]
        if cls.claim is MessageBus.claim:
            self.claim = core.claim  # type: ignore[method-assign]
        if cls.publish_at is MessageBus.publish_at:
            self.publish_at = core.publish_at  # type: ignore[method-assign]
        if cls.publish_many is MessageBus.publish_many:
            self.publish_many = core.publish_many  # type: ignore[method-assign]
        if cls.commit_many is MessageBus.commit_many:
            self.commit_many = core.commit_many  # type: ignore[method-assign]
        # asyncio machinery (async mode)
        self._batch = batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake_future: asyncio.Future[None] | None = None
        self._idle_event: asyncio.Event | None = None
        self._space_futures: list[asyncio.Future[None]] = []
        self._stopping = False
        if mode == "async":
            core.set_wake(self._autostart)

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} objects cannot be copied or pickled (they own "
                        "pools, subscribers and counters of one live bus)")

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.__reduce__()

    def __copy__(self) -> Any:
        return self.__reduce__()

    def __deepcopy__(self, memo: Any) -> Any:
        return self.__reduce__()

    # -- publishing (replaced per instance by the core's bound methods) ---------------------
    def publish(self, topic: str, data: Any) -> int | None:
        """Copy ``data`` (any C-contiguous buffer) into a pool block and publish it on
        ``topic``. Returns the sequence number, or None when the ``drop`` policy dropped it.
        """
        return self._core.publish(topic, data)  # type: ignore[no-any-return]

    def publish_at(self, topic: str, data: Any, publish_ns: int) -> int | None:
        """``publish`` whose message carries ``publish_ns`` (CLOCK_MONOTONIC ns, > 0) as its
        ``publish_ns`` (journal replay); the latency histogram measures from the commit."""
        return self._core.publish_at(topic, data, publish_ns)  # type: ignore[no-any-return]

    def claim(self, topic: str, size: int) -> Any:
        """A writable message of ``size`` bytes; publish it with ``commit()``/``with``.

        Returns None when the ``drop`` policy dropped it.
        """
        return self._core.claim(topic, size)

    def try_claim(self, topic: str, size: int) -> Any:
        """``claim`` without the exhaustion policy: None when the size class is full (nothing
        is counted; a gateway that holds claimed blocks commits them and claims again)."""
        return self._core.try_claim(topic, size)

    def try_publish_many(self, topic: str, payloads: Iterable[Any]) -> int:
        """``publish_many`` without the exhaustion policy: stops at the first message whose
        size class is full and returns how many were published (the rest are not tried
        and not counted)."""
        return self._core.try_publish_many(topic, payloads)  # type: ignore[no-any-return]

    def publish_many(self, topic: str, payloads: Iterable[Any]) -> int:
        """Publish each buffer of ``payloads`` on ``topic`` as one batch; returns how many
        were published.

        Per-message subscribers get each message, batch subscribers
        (``subscribe(..., batch=True)``) one :class:`MessageBatch` (in sync mode in
        pieces if the pool runs out mid-batch). A message whose size class is full
        applies the policy on its own: ``drop`` counts it and goes on; ``raise`` (and
        ``block`` outside :meth:`apublish_many`) counts it as rejected, goes on, and
        raises BusFull/WouldBlock at the end. The messages of one call share one
        publish stamp (``publish_ns``), taken when the call starts.
        """
        return self._core.publish_many(topic, payloads)  # type: ignore[no-any-return]

    def publish_many_at(self, topic: str, payloads: Iterable[Any],
                        stamps: Iterable[int]) -> int:
        """``publish_many`` whose messages carry ``stamps[i]`` (CLOCK_MONOTONIC ns) as their
        ``publish_ns`` (journal replay); a stamp <= 0 means the commit time."""
        return self._core.publish_many_at(topic, payloads, stamps)  # type: ignore[no-any-return]

    def commit_many(self, messages: Iterable[Any]) -> int:
        """Publish claimed messages (from :meth:`claim`, filled, all on one topic) in order
        and as one batch, with one publish stamp; returns how many. Nothing is committed
        when one of them cannot be (MessageStateError, BufferStillExported)."""
        return self._core.commit_many(messages)  # type: ignore[no-any-return]

    # -- subscriptions ----------------------------------------------------------------
    def subscribe(self, pattern: str, callback: Callable[[Any], Any], *,
                  batch: bool = False) -> Subscription:
        """Call ``callback(msg)`` for every message on a topic matching ``pattern``.

        ``pattern`` is a topic or uses ``*`` (one segment) / ``>`` (the rest). In async
        mode ``callback`` may be a coroutine function (awaited by the drain task).
        ``batch=True``: ``callback(batch)`` receives a :class:`MessageBatch` of messages
        on one topic per call (a ``publish_many``, or a single ``publish`` as a batch
        of one); the batch is valid during the call only, its messages follow the
        rules of single messages (``retain()`` to keep one).
        Changes take effect from the next message.
        """
        segments = split_pattern(pattern)
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        if not isinstance(batch, bool):
            raise TypeError(f"batch must be a bool, got {type(batch).__name__}")
        is_async = inspect.iscoroutinefunction(callback)
        if is_async and self.mode != "async":
            raise TypeError("coroutine subscribers need mode='async'")
        sub = Subscription(pattern, callback, self._next_id, is_async, self, batch=batch)
        self._next_id += 1
        self._subs[sub.id] = sub
        self._patterns[sub.id] = segments
        for topic, route in list(self._core.routes.items()):
            if matches(segments, topic):
                self._fill_route(route)
        return sub

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscription (NotSubscribed if it is not active on this bus)."""
        if not isinstance(subscription, Subscription) or \
                self._subs.get(subscription.id) is not subscription:
            raise NotSubscribed(f"{subscription!r} is not an active subscription of this bus")
        del self._subs[subscription.id]
        segments = self._patterns.pop(subscription.id)
        subscription.active = False
        for topic, route in list(self._core.routes.items()):
            if matches(segments, topic):
                self._fill_route(route)

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())

    def _fill_route(self, route: Any) -> None:
        subs = [s for i, s in self._subs.items() if matches(self._patterns[i], route.topic)]
        sync = [s for s in subs if not s.is_async and not s.batch]
        sync_batch = [s for s in subs if not s.is_async and s.batch]
        route.set_subscribers(tuple(s.callback for s in sync), tuple(sync),
                              tuple(s for s in subs if s.is_async and not s.batch),
                              tuple(s.callback for s in sync_batch), tuple(sync_batch),
                              tuple(s for s in subs if s.is_async and s.batch))

    def _resolve(self, topic: str) -> Any:
        """First message on ``topic`` (called by the core): validate it and build its route
        with the matching subscribers (the core caches it). A non-str raises
        TopicTypeError here."""
        validate_topic(topic)
        route = self._Route(topic)
        self._fill_route(route)
        return route

    def _report_error(self, exc: BaseException, msg: Any, subscription: Subscription) -> None:
        """A subscriber raised (the core counted it): run the error hook."""
        try:
            self.on_error(exc, msg, subscription)
        except Exception:
            self.hook_errors += 1
            log.exception("the bus error hook failed while reporting %r", exc)

    # -- async mode -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the drain task on the running loop (done automatically on first publish)."""
        self._require_async("start")
        self._start_drainer(asyncio.get_running_loop())

    def _autostart(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet: messages stay queued until start()
            self._core.idle = True
            return
        self._start_drainer(loop)

    def _start_drainer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None and not self._task.done():
            if self._loop is not loop:
                raise BusError("this async bus is already running on another event loop")
            return
        if self._core.closed:
            raise BusClosed("the bus is closed")
        self._loop = loop
        self._stopping = False
        self._core.idle = False
        self._idle_event = asyncio.Event()
        self._core.set_wake(self._wake_drainer)
        self._task = loop.create_task(self._drain_forever(), name=f"hftalloc-drain-{self.name}")

    def _wake_drainer(self) -> None:
        fut = self._wake_future
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _drain_forever(self) -> None:
        loop = asyncio.get_running_loop()
        core = self._core
        idle_event = self._idle_event
        assert idle_event is not None
        try:
            while True:
                if not core.queued:
                    if self._stopping:
                        return
                    core.idle = True
                    idle_event.set()
                    self._wake_future = loop.create_future()
                    await self._wake_future
                    self._wake_future = None
                    continue
                core.idle = False
                idle_event.clear()
                for batch in core.drain(self._batch):
                    await self._deliver_async(batch)
                if core.queued:
                    await asyncio.sleep(0)  # let publishers and other tasks run
        finally:  # stopped, or cancelled with its loop: the next publish starts a new one
            core.idle = True
            self._wake_future = None
            core.set_wake(self._autostart)
            idle_event.set()

    async def _deliver_async(self, batch: Any) -> None:
        """Await the coroutine subscribers of one batch handed out by the core's drain:
        per-message ones on each message, then batch ones on the batch."""
        core = self._core
        try:
            for msg in batch:
                for sub in core.async_subscribers(msg):
                    core.record_latency(msg)
                    try:
                        await sub.callback(msg)
                    except Exception as exc:
                        core.count_delivery(msg, False)
                        self._report_error(exc, msg, sub)
                    else:
                        core.count_delivery(msg, True)
            for sub in core.async_batch_subscribers(batch):
                core.record_batch_latency(batch)
                try:
                    await sub.callback(batch)
                except Exception as exc:
                    core.count_batch_delivery(batch, False)
                    self._report_error(exc, batch, sub)
                else:
                    core.count_batch_delivery(batch, True)
        finally:
            core.finish_batch(batch)

    async def join(self) -> None:
        """Wait until every queued message has been dispatched (async mode)."""
        self._require_async("join")
        core = self._core
        while core.queued or not core.idle:
            if self._task is None or self._task.done():
                self._start_drainer(asyncio.get_running_loop())
            elif core.queued and core.idle:  # queued without waking the drain task
                core.idle = False
                self._wake_drainer()
            assert self._idle_event is not None
            if self._idle_event.is_set():
                await asyncio.sleep(0)  # the drainer has been woken but has not run yet
            else:
                await self._idle_event.wait()

    async def apublish(self, topic: str, data: Any, *, timeout: float | None = None) -> int | None:
        """``publish`` that waits for a free block under the ``block`` policy.

        With ``timeout`` (seconds) it gives up with BusFull (counted as rejected).
        Under the other policies it behaves exactly like :meth:`publish`.
        """
        core = self._core
        if self._policy != BLOCK:
            return core.publish(topic, data)  # type: ignore[no-any-return]
        seq = core.try_publish(topic, data)
        if seq == -1:
            seq = await self._wait_and_retry(topic, timeout, lambda: core.try_publish(topic, data))
        return seq  # type: ignore[no-any-return]

    async def apublish_many(self, topic: str, payloads: Iterable[Any], *,
                            timeout: float | None = None) -> int:
        """``publish_many`` that waits for free blocks under the ``block`` policy (each wait
        up to ``timeout`` seconds, then BusFull for the rest, counted as rejected);
        returns how many were published. Under the other policies it is
        :meth:`publish_many`. The messages published before a wait form one batch, the
        ones after it the next."""
        core = self._core
        if self._policy != BLOCK:
            return core.publish_many(topic, payloads)  # type: ignore[no-any-return]
        items = payloads if isinstance(payloads, list | tuple) else tuple(payloads)
        done: int = core.try_publish_many(topic, items)
        total = len(items)
        while done < total:
            rest = items[done:]

            def attempt(rest: Any = rest) -> int | None:
                return core.try_publish_many(topic, rest) or None

            try:
                count: int = await self._wait_and_retry(topic, timeout, attempt)
            except BusFull:
                for _ in range(len(rest) - 1):  # the first one was counted by the wait
                    core.count_rejected(topic)
                raise
            done += count
        return done

    async def aclaim(self, topic: str, size: int, *, timeout: float | None = None) -> Any:
        """``claim`` that waits for a free block under the ``block`` policy."""
        core = self._core
        if self._policy != BLOCK:
            return core.claim(topic, size)
        msg = core.try_claim(topic, size)
        if msg is None:
            msg = await self._wait_and_retry(topic, timeout, lambda: core.try_claim(topic, size))
        return msg

    async def _wait_and_retry(self, topic: str, timeout: float | None,
                              attempt: Callable[[], Any]) -> Any:
        self._require_async("apublish/aclaim")
        core = self._core
        self.blocked += 1
        deadline = None if timeout is None else monotonic() + timeout
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._start_drainer(loop)
        while True:
            core.sweep()
            result = attempt()
            if result is not None and result != -1:
                return result
            fut = loop.create_future()
            self._space_futures.append(fut)
            core.space_waiters += 1
            remaining = None if deadline is None else deadline - monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                core.count_rejected(topic)
                raise BusFull(f"topic {topic!r}: no free block within {timeout} s") from None
            finally:
                if fut in self._space_futures:
                    self._space_futures.remove(fut)
                    core.space_waiters -= 1
            if core.closed:
                raise BusClosed("the bus was closed while waiting for a free block")

    def _on_space(self) -> None:
        """A block came back while publishers wait (called by the core)."""
        futures, self._space_futures = self._space_futures, []
        self._core.space_waiters = 0
        for fut in futures:
            if not fut.done():
                fut.set_result(None)

    def _require_async(self, what: str) -> None:
        if self.mode != "async":
            raise BusError(f"{what}() is for mode='async' buses")

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Stop accepting messages and return the pools.

        BlocksStillLive if messages are still queued, retained, or held back by a
        leaked view (the bus stays closed; call close() again once they are released).
        """
        core = self._core
        core.close()
        for fut in self._space_futures:
            if not fut.done():
                fut.set_result(None)
        deferred = core.sweep()
        if core.queued or core.retained or deferred:
            raise BlocksStillLive(
                f"bus {self.name!r}: {core.queued} queued, {core.retained} retained and "
                f"{deferred} view-held message(s) still own pool blocks"
            )
        if self._owns_allocator and not self.allocator.closed:
            self.allocator.close()

    async def aclose(self) -> None:
        """Dispatch what is queued, stop the drain task, then :meth:`close`."""
        if self.mode == "async" and self._loop is not None:
            await self.join()
            self._stopping = True
            self._wake_drainer()
            if self._task is not None and not self._task.done():
                await self._task
        self.close()

    @property
    def closed(self) -> bool:
        return self._core.closed  # type: ignore[no-any-return]

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Any:
        if self.mode == "async":
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- statistics ------------------------------------------------------------------------
    @property
    def latency(self) -> Histogram:
        """The live publish->deliver latency histogram (ns)."""
        return self._latency

    @property
    def max_depth(self) -> int:
        """Nested synchronous dispatches allowed before DispatchDepthExceeded."""
        return self._core.max_depth  # type: ignore[no-any-return]

    @property
    def queued(self) -> int:
        return self._core.queued  # type: ignore[no-any-return]

    @property
    def deferred(self) -> int:
        """Messages whose block is held back by a leaked view right now (after a sweep)."""
        return self._core.sweep()  # type: ignore[no-any-return]

    @property
    def published(self) -> int:
        return self._core.published  # type: ignore[no-any-return]

    @property
    def delivered(self) -> int:
        return self._core.delivered  # type: ignore[no-any-return]

    @property
    def dropped(self) -> int:
        return self._core.dropped  # type: ignore[no-any-return]

    @property
    def rejected(self) -> int:
        return self._core.rejected  # type: ignore[no-any-return]

    @property
    def errors(self) -> int:
        return self._core.errors  # type: ignore[no-any-return]

    @property
    def aborted(self) -> int:
        return self._core.aborted  # type: ignore[no-any-return]

    @property
    def leaked_views(self) -> int:
        return self._core.leaked_views  # type: ignore[no-any-return]

    @property
    def retained(self) -> int:
        return self._core.retained  # type: ignore[no-any-return]

    def stats(self) -> BusStats:
        """A snapshot of every counter (retries blocks held back by leaked views first)."""
        core = self._core
        deferred = core.sweep()
        topics = {
            t: TopicStats(t, r.published, r.delivered, r.dropped, r.rejected, r.errors)
            for t, r in core.routes.items()
        }
        return BusStats(
            mode=self.mode,
            policy=self.policy,
            published=core.published,
            delivered=core.delivered,
            dropped=core.dropped,
            rejected=core.rejected,
            errors=core.errors,
            hook_errors=self.hook_errors,
            aborted=core.aborted,
            blocked=self.blocked,
            leaked_views=core.leaked_views,
            deferred=deferred,
            retained=core.retained,
            queued=core.queued,
            latency=self._latency.summary(),
            pools=self.allocator.class_stats(),
            topics=topics,
        )

    def report(self) -> str:
        return self.stats().report()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r} {self.mode} policy={self.policy} "
                f"subscriptions={len(self._subs)} topics={len(self._core.routes)} "
                f"published={self._core.published}>")
