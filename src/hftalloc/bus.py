"""MessageBus: publish/subscribe over pool blocks, with sync or asyncio dispatch.

The per-message hot path (claim, copy, commit, dispatch, release) lives in a *core*
class: the compiled ``hftalloc._fastcore.FastCore`` when it is built, else the
pure-Python ``hftalloc._pycore.PyCore`` (same behaviour, slower). This module adds
everything that is not per message: subscriptions and wildcard resolution (cached per
topic), the exhaustion policies, the error hook, the asyncio drain task and statistics.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic, perf_counter_ns
from typing import Any

from hftalloc import _pycore
from hftalloc.allocator import BlocksPerClass, MessageAllocator
from hftalloc.errors import (
    BlocksStillLive,
    BusClosed,
    BusError,
    BusFull,
    InvalidSize,
    NotSubscribed,
    WouldBlock,
)
from hftalloc.histogram import Histogram
from hftalloc.stats import BusStats, TopicStats
from hftalloc.topics import matches, split_pattern, validate_topic

try:
    if os.environ.get("HFTALLOC_PURE_PYTHON") == "1":
        raise ImportError("pure Python requested")
    from hftalloc import _fastcore
except ImportError:  # not built: the pure-Python core does the same job
    _fastcore = None  # type: ignore[assignment]

__all__ = [
    "IMPLEMENTATION",
    "MODES",
    "POLICIES",
    "MessageBus",
    "PyMessageBus",
    "Subscription",
]

MODES = ("sync", "async")
POLICIES = ("raise", "drop", "block")
RAISE, DROP, BLOCK = range(3)
MAX_MESSAGE = (1 << 63) - 1  # larger sizes cannot even be expressed (InvalidSize)
IMPLEMENTATION = "cython" if _fastcore is not None else "python"

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

    def unsubscribe(self) -> None:
        self.bus.unsubscribe(self)

    def __repr__(self) -> str:
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        state = "" if self.active else " inactive"
        return f"<Subscription #{self.id} {self.pattern!r} -> {name}{state}>"


def log_subscriber_error(exc: BaseException, msg: Any, sub: Subscription) -> None:
    """Default error hook: log the exception with the topic and subscriber."""
    log.error("subscriber %r failed on %r", sub, msg, exc_info=exc)


class _BusAPI:
    """Everything of MessageBus that is not per message (mixed into a core class)."""

    _Route: Any = None  # the core's Route type, set by the concrete classes

    def __init__(
        self,
        allocator: MessageAllocator | None = None,
        *,
        mode: str = "sync",
        policy: str = "raise",
        blocks_per_class: BlocksPerClass = 1024,
        on_error: ErrorHook | None = None,
        batch: int = 256,
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
        self._owns_allocator = allocator is None
        if allocator is None:
            allocator = MessageAllocator(blocks_per_class, name=name)
        elif not isinstance(allocator, MessageAllocator):
            raise TypeError(f"allocator must be a MessageAllocator, not {type(allocator).__name__}")
        self.name = name
        self.allocator = allocator
        self.mode = mode
        self.policy = policy
        self.on_error: ErrorHook = on_error if on_error is not None else log_subscriber_error
        self.hook_errors = 0
        self.blocked = 0
        self._latency = Histogram()
        self._core_init(allocator.slab, POLICIES.index(policy), mode == "async",
                        self._latency.counts)
        self._subs: dict[int, Subscription] = {}
        self._patterns: dict[int, tuple[str, ...]] = {}
        self._next_id = 1
        # asyncio machinery (async mode)
        self._batch = batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake_future: asyncio.Future[None] | None = None
        self._idle_event: asyncio.Event | None = None
        self._space_futures: list[asyncio.Future[None]] = []
        self._stopping = False
        if mode == "async":
            self._wake = self._autostart

    # -- subscriptions ----------------------------------------------------------------
    def subscribe(self, pattern: str, callback: Callable[[Any], Any]) -> Subscription:
        """Call ``callback(msg)`` for every message on a topic matching ``pattern``.

        ``pattern`` is a topic or uses ``*`` (one segment) / ``>`` (the rest). In async
        mode ``callback`` may be a coroutine function (awaited by the drain task).
        Changes take effect from the next message.
        """
        segments = split_pattern(pattern)
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        is_async = inspect.iscoroutinefunction(callback)
        if is_async and self.mode != "async":
            raise TypeError("coroutine subscribers need mode='async'")
        sub = Subscription(pattern, callback, self._next_id, is_async, self)
        self._next_id += 1
        self._subs[sub.id] = sub
        self._patterns[sub.id] = segments
        for topic, route in self._routes.items():
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
        for topic, route in self._routes.items():
            if matches(segments, topic):
                self._fill_route(route)

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())

    def _fill_route(self, route: Any) -> None:
        subs = [s for i, s in self._subs.items() if matches(self._patterns[i], route.topic)]
        sync = [s for s in subs if not s.is_async]
        route.callbacks = tuple(s.callback for s in sync)
        route.subscriptions = tuple(sync)
        route.async_subs = tuple(s for s in subs if s.is_async)

    def _resolve(self, topic: str) -> Any:
        """First message on ``topic``: validate it and cache its matching subscribers.

        The cores call it for any topic that is not an exact ``str`` already routed, so
        a non-str raises TopicTypeError here, and a str subclass equal to a known topic
        gets that topic's route (and its counters)."""
        validate_topic(topic)
        route = self._routes.get(topic)
        if route is not None:
            return route
        route = self._Route(topic)
        self._fill_route(route)
        self._routes[topic] = route
        return route

    # -- policies and errors (cold paths called by the core) -------------------------------
    def _check_size(self, size: Any) -> int:
        if isinstance(size, bool) or not hasattr(size, "__index__"):
            raise TypeError(f"size must be an integer, not {type(size).__name__}")
        size = size.__index__()
        if size < 0:
            raise InvalidSize(f"size must be >= 0, got {size}")
        if size > MAX_MESSAGE:
            raise InvalidSize(f"size={size} is too large")
        return size

    def _exhausted(self, route: Any, size: int) -> None:
        """The size class for ``size`` is full (after a sweep): apply the policy."""
        if self._policy == DROP:
            route.dropped += 1
            self.dropped += 1
            return None
        route.rejected += 1
        self.rejected += 1
        cls = self.allocator.size_class(size or 1)
        text = (f"topic {route.topic!r}: the {cls} B size class is exhausted "
                f"({self.allocator.class_capacity(size or 1)} blocks in use")
        if self._policy == BLOCK:
            raise WouldBlock(text + "); policy='block' needs await bus.apublish()/aclaim()")
        raise BusFull(text + "); release retained messages, raise blocks_per_class, "
                      "or use policy='drop'/'block'")

    def _subscriber_failed(self, exc: BaseException, msg: Any, route: Any,
                           subscription: Subscription) -> None:
        route.errors += 1
        self.errors += 1
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
            self._idle = True
            return
        self._start_drainer(loop)

    def _start_drainer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None and not self._task.done():
            if self._loop is not loop:
                raise BusError("this async bus is already running on another event loop")
            return
        if self._closed:
            raise BusClosed("the bus is closed")
        self._loop = loop
        self._stopping = False
        self._idle = False
        self._idle_event = asyncio.Event()
        self._wake = self._wake_drainer
        self._task = loop.create_task(self._drain_forever(), name=f"hftalloc-drain-{self.name}")

    def _wake_drainer(self) -> None:
        fut = self._wake_future
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _drain_forever(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        idle_event = self._idle_event
        assert idle_event is not None
        try:
            while True:
                if not queue:
                    if self._stopping:
                        return
                    self._idle = True
                    idle_event.set()
                    self._wake_future = loop.create_future()
                    await self._wake_future
                    self._wake_future = None
                    continue
                self._idle = False
                idle_event.clear()
                for msg in self._drain(self._batch):
                    await self._deliver_async(msg)
                if queue:
                    await asyncio.sleep(0)  # let publishers and other tasks run
        finally:  # stopped, or cancelled with its loop: the next publish starts a new one
            self._idle = True
            self._wake_future = None
            self._wake = self._autostart
            idle_event.set()

    async def _deliver_async(self, msg: Any) -> None:
        route = msg._route
        latency = self._latency
        try:
            for sub in route.async_subs:
                latency.record(max(0, perf_counter_ns() - msg.publish_ns))
                try:
                    await sub.callback(msg)
                except Exception as exc:
                    self._subscriber_failed(exc, msg, route, sub)
                else:
                    route.delivered += 1
                    self.delivered += 1
        finally:
            self._finish(msg)

    async def join(self) -> None:
        """Wait until every queued message has been dispatched (async mode)."""
        self._require_async("join")
        while self._queue or not self._idle:
            if self._task is None or self._task.done():
                self._start_drainer(asyncio.get_running_loop())
            elif self._queue and self._idle:  # queued without waking the drain task
                self._idle = False
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
        if self._policy != BLOCK:
            return self.publish(topic, data)
        seq = self._try_publish(topic, data)
        if seq == -1:
            seq = await self._wait_and_retry(topic, timeout, lambda: self._try_publish(topic, data))
        return seq

    async def aclaim(self, topic: str, size: int, *, timeout: float | None = None) -> Any:
        """``claim`` that waits for a free block under the ``block`` policy."""
        if self._policy != BLOCK:
            return self.claim(topic, size)
        msg = self._try_claim(topic, size)
        if msg is None:
            msg = await self._wait_and_retry(topic, timeout, lambda: self._try_claim(topic, size))
        return msg

    async def _wait_and_retry(self, topic: str, timeout: float | None,
                              attempt: Callable[[], Any]) -> Any:
        self._require_async("apublish/aclaim")
        self.blocked += 1
        deadline = None if timeout is None else monotonic() + timeout
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._start_drainer(loop)
        while True:
            self._sweep()
            result = attempt()
            if result is not None and result != -1:
                return result
            fut = loop.create_future()
            self._space_futures.append(fut)
            self._space_waiters += 1
            remaining = None if deadline is None else deadline - monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                route = self._routes[topic]
                route.rejected += 1
                self.rejected += 1
                raise BusFull(f"topic {topic!r}: no free block within {timeout} s") from None
            finally:
                if fut in self._space_futures:
                    self._space_futures.remove(fut)
                    self._space_waiters -= 1
            if self._closed:
                raise BusClosed("the bus was closed while waiting for a free block")

    def _on_space(self) -> None:
        futures, self._space_futures = self._space_futures, []
        self._space_waiters = 0
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
        self._closed = True
        for fut in self._space_futures:
            if not fut.done():
                fut.set_result(None)
        deferred = self._sweep()
        if self._queue or self.retained or deferred:
            raise BlocksStillLive(
                f"bus {self.name!r}: {len(self._queue)} queued, {self.retained} retained and "
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
        return self._closed

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
    def queued(self) -> int:
        return len(self._queue)

    @property
    def deferred(self) -> int:
        """Messages whose block is held back by a leaked view right now (after a sweep)."""
        return self._sweep()

    @property
    def implementation(self) -> str:
        return self._implementation

    def stats(self) -> BusStats:
        """A snapshot of every counter (retries blocks held back by leaked views first)."""
        deferred = self._sweep()
        topics = {
            t: TopicStats(t, r.published, r.delivered, r.dropped, r.rejected, r.errors)
            for t, r in self._routes.items()
        }
        return BusStats(
            mode=self.mode,
            policy=self.policy,
            published=self.published,
            delivered=self.delivered,
            dropped=self.dropped,
            rejected=self.rejected,
            errors=self.errors,
            hook_errors=self.hook_errors,
            aborted=self.aborted,
            blocked=self.blocked,
            leaked_views=self.leaked_views,
            deferred=deferred,
            retained=self.retained,
            queued=len(self._queue),
            latency=self._latency.summary(),
            pools=self.allocator.class_stats(),
            topics=topics,
        )

    def report(self) -> str:
        return self.stats().report()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r} {self.mode} policy={self.policy} "
                f"subscriptions={len(self._subs)} topics={len(self._routes)} "
                f"published={self.published} core={self._implementation}>")


class PyMessageBus(_BusAPI, _pycore.PyCore):
    """MessageBus on the pure-Python core (reference implementation; always available)."""

    _Route = _pycore.Route
    _implementation = "python"


if _fastcore is not None:

    class MessageBus(_BusAPI, _fastcore.FastCore):  # type: ignore[misc]
        """Publish/subscribe bus over pool blocks (compiled core). See ``_BusAPI.__init__``."""

        _Route = _fastcore.Route
        _implementation = "cython"

else:

    class MessageBus(_BusAPI, _pycore.PyCore):  # type: ignore[no-redef]
        """Publish/subscribe bus over pool blocks (pure-Python core). See ``_BusAPI.__init__``."""

        _Route = _pycore.Route
        _implementation = "python"
