"""Shared-memory channels: one producer process, one consumer process, zero copy.

``Channel`` creates (and on close unlinks) a segment; ``ChannelWriter`` and
``ChannelReader`` attach to it, from any process on the machine, as its single
producer and single consumer::

    with Channel("md", blocks_per_class=256) as ch:          # owner: unlinks on exit
        ...                                                   # start the processes
    # producer process
    w = ChannelWriter("md", policy="block", timeout=1.0)
    w.publish("md.quote.AAPL", payload)                      # copy in
    with w.claim("md.quote.AAPL", 48) as c:                  # or write in place
        QUOTE.pack_into(c.buffer, 0, ...)
    # consumer process
    r = ChannelReader("md")
    r.subscribe("md.quote.*", on_quote)                       # msg.payload: view into shm
    r.poll()                                                  # dispatch what is waiting

Roles are claimed with a compare-and-swap on the pid in the segment header, so a second
live producer (or consumer) is refused with :class:`RoleTaken`. A role whose holder died
is taken over, after its blocks have been reclaimed.

Messages and claims are :class:`hftalloc._message.Message` objects, the same type the
bus hands out (``ShmMessage`` and ``ShmClaim`` are other names for it). Each endpoint
owns a compiled core (:mod:`hftalloc.shm._core`: ``ProducerCore`` or
``ConsumerCore``) that does all per-message work, the full-ring policies and the
dispatch; the hot methods (``publish``, ``claim``, ``poll``, ``wait``) are the core's
own bound methods, so calling them through an endpoint adds no Python layer.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from hftalloc._message import Message
from hftalloc.bus import Subscription
from hftalloc.errors import BlocksStillLive, RoleTaken, SegmentCorrupted, SegmentError
from hftalloc.histogram import Histogram, LatencySummary
from hftalloc.polling import poll_until
from hftalloc.shm import _core as _shmcore
from hftalloc.shm import layout as L
from hftalloc.shm.layout import Layout
from hftalloc.shm.liveness import pid_alive, process_start_ticks
from hftalloc.shm.segment import Segment

__all__ = ["Channel", "ChannelReader", "ChannelStats", "ChannelWriter", "ShmClaim", "ShmMessage"]

# received messages and claims are the bus's own message type (one state machine, one
# payload/buffer/retain API for every transport)
ShmMessage = Message
ShmClaim = Message
log_subscriber_error = _shmcore.log_subscriber_error
PRODUCER, CONSUMER = "producer", "consumer"
ROLE_OFFSETS = {PRODUCER: L.OFF_PRODUCER, CONSUMER: L.OFF_CONSUMER}
DROPPED, REJECTED, WAITS = (L.OFF_PRODUCER_STATS + 8 * i for i in range(3))

log = logging.getLogger("hftalloc.shm")


def _no_copy(obj: object) -> NoReturn:
    raise TypeError(f"a {type(obj).__name__} cannot be copied or pickled (attach to the "
                    "channel by name instead)")


class Channel:
    """Creates a channel segment and owns its name: ``close()`` unlinks it.

    Processes already attached keep their mapping (POSIX semantics); new ones can no
    longer attach. Geometry: see :class:`~hftalloc.shm.layout.Layout`.
    """

    def __init__(self, name: str, *, ring_capacity: int = 1024, blocks_per_class: int = 1024,
                 num_classes: int = 8, min_size: int = 64, max_topics: int = 1024) -> None:
        self.layout = Layout(ring_capacity, num_classes, min_size, blocks_per_class, max_topics)
        self.segment = Segment(name, create=True, size=self.layout.total_size)
        self.name = self.segment.name
        try:
            core = _shmcore.ChannelCore()
            core._bind(self.segment.buffer, self.name, *self.layout.core_args())
            with memoryview(self.segment.buffer) as buf:
                self.layout.write_header(buf, created_ns=time.time_ns(), pid=os.getpid(),
                                         ticks=process_start_ticks())
            core._init_free_rings()
            core._store(L.OFF_READY, 1)
            core._unbind()
        except BaseException:
            self.segment.close()
            self.segment.unlink()
            raise

    def close(self) -> None:
        """Unlink the segment and unmap it here (idempotent)."""
        if not self.segment.closed:
            self.segment.unlink()
            self.segment.close()

    @property
    def closed(self) -> bool:
        return self.segment.closed

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> NoReturn:
        _no_copy(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.layout.total_size:,} B"
        return f"<Channel {self.name!r} {state}>"


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """A snapshot of a channel as seen from one endpoint."""

    name: str
    role: str
    published: int
    received: int
    delivered: int
    dropped: int
    rejected: int
    waits: int
    gaps: int
    queued: int
    errors: int
    leaked_views: int
    deferred: int
    retained: int
    latency: LatencySummary | None
    blocks: dict[int, list[int]]  # class size -> [free, producer, queued, consumer]

    def report(self) -> str:
        lines = [
            f"channel {self.name} ({self.role}): published={self.published:,} "
            f"received={self.received:,} delivered={self.delivered:,} queued={self.queued}",
            f"  dropped={self.dropped} gaps={self.gaps} rejected={self.rejected} "
            f"waits={self.waits} errors={self.errors} leaked_views={self.leaked_views} "
            f"retained={self.retained}",
        ]
        if self.latency is not None:
            lines.append(f"  latency {self.latency.format()}")
        lines.append("  blocks (free/producer/queued/consumer): " + ", ".join(
            f"{size} B {'/'.join(map(str, row))}" for size, row in self.blocks.items()))
        return "\n".join(lines)


def lock_dead_role(core: Any, role_off: int) -> bool:
    """Take a role slot whose holder is dead (or that is vacant): True if we hold it now.

    The slot's pid becomes ``-our pid`` (nobody else can attach to the role meanwhile);
    release it with :func:`unlock_role`.
    """
    off = role_off + L.ROLE_PID
    current = core._load_signed(off)
    if current > 0:
        alive = pid_alive(current, core._load(role_off + L.ROLE_TICKS))
    else:
        alive = current < 0 and pid_alive(-current)
    return not alive and core._cas(off, current, -os.getpid())


def unlock_role(core: Any, role_off: int, state: int, recovered: bool = True) -> None:
    """Leave a role slot taken by :func:`lock_dead_role` vacant, in ``state``."""
    core._store(role_off + L.ROLE_STATE, state)
    if recovered:
        core._add(role_off + L.ROLE_RECOVERIES)
    core._store_signed(role_off + L.ROLE_PID, 0)


def open_segment(name: str, timeout: float = 2.0) -> tuple[Segment, Layout]:
    """Map an existing channel segment (waits up to ``timeout`` for its creator)."""
    segment = Segment(name, wait=timeout)
    try:
        deadline = time.monotonic() + timeout
        while not _shmcore.load_u64(segment.buffer, L.OFF_READY):
            if segment.truncated:
                break
            if time.monotonic() > deadline:
                raise SegmentError(f"segment {segment.name!r} was never initialised")
            time.sleep(0.001)
        with memoryview(segment.buffer) as buf:
            try:
                layout = Layout.read_header(buf, segment.name)
            finally:
                if segment.truncated:
                    raise SegmentCorrupted(f"segment {segment.name!r} was truncated by another "
                                           "process while it was being opened")
    except BaseException:
        segment.close()
        raise
    return segment, layout


class _Endpoint:
    """Role handling shared by writer and reader around their compiled core."""

    role: str = ""
    other: str = ""
    _core: Any = None

    def _attach(self, core: Any, name: str, timeout: float, create: bool,
                geometry: dict[str, int]) -> None:
        self._owner = Channel(name, **geometry) if create else None
        try:
            self.segment, self.layout = open_segment(name, timeout)
        except BaseException:
            if self._owner is not None:
                self._owner.close()
            raise
        self.name = self.segment.name
        self._role_off = ROLE_OFFSETS[self.role]
        self._other_off = ROLE_OFFSETS[self.other]
        try:
            core._bind(self.segment.buffer, self.name, *self.layout.core_args())
            self._core = core
            self.taken_over = self._take_role(timeout)
        except BaseException:
            self._core = None
            if core.bound:
                core._unbind()
            self.segment.close()
            if self._owner is not None:
                self._owner.close()
            raise

    def _take_role(self, timeout: float) -> str:
        """Claim our role slot (CAS on the pid); returns the previous holder's fate."""
        core = self._core
        me = os.getpid()
        pid_off = self._role_off + L.ROLE_PID
        deadline = time.monotonic() + timeout
        while True:
            pid = core._load_signed(pid_off)
            if pid == 0:
                if core._cas(pid_off, 0, -me):
                    previous = "vacant"
                    break
            elif pid > 0:
                if pid == me:
                    raise RoleTaken(f"this process already is the {self.role} of {self.name!r}")
                if pid_alive(pid, core._load(self._role_off + L.ROLE_TICKS)):
                    raise RoleTaken(f"the {self.role} of {self.name!r} is pid {pid}, alive")
                if core._cas(pid_off, pid, -me):
                    previous = f"dead pid {pid}"
                    break
            elif not pid_alive(-pid):
                if core._cas(pid_off, pid, -me):
                    previous = f"dead pid {-pid}"
                    break
            elif time.monotonic() > deadline:
                raise RoleTaken(f"pid {-pid} is taking the {self.role} role of {self.name!r}")
            else:
                time.sleep(0.001)
        try:
            if core._load(self._role_off + L.ROLE_STATE) != L.STATE_NEVER:
                self._recover_own_role()
            else:
                core._start()
        except BaseException:
            if not core.truncated:
                core._store_signed(pid_off, 0)
            raise
        core._store(self._role_off + L.ROLE_TICKS, process_start_ticks())
        core._store(self._role_off + L.ROLE_STATE, L.STATE_ATTACHED)
        core._add(self._role_off + L.ROLE_ATTACHES)
        core._set_heartbeat_slot(self._role_off)
        core.heartbeat()
        core._store_signed(pid_off, me)
        return previous

    def _recover_own_role(self) -> None:  # pragma: no cover - defined by both endpoints
        raise NotImplementedError

    def _release_role(self) -> None:
        self._core._store(self._role_off + L.ROLE_STATE, L.STATE_CLOSED)
        self._core._store_signed(self._role_off + L.ROLE_PID, 0)

    # -- the other side -----------------------------------------------------------------------
    def peer(self) -> tuple[int, bool | None]:
        """(pid, alive) of the other side: alive is None while its role is vacant."""
        return self._core.peer()  # type: ignore[no-any-return]

    def peer_alive(self) -> bool | None:
        """True/False for an attached peer, None if nobody holds the other role."""
        return self._core.peer()[1]  # type: ignore[no-any-return]

    def _lock_other_role(self) -> bool:
        return lock_dead_role(self._core, self._other_off)

    def _unlock_other_role(self, state: int) -> None:
        unlock_role(self._core, self._other_off, state)

    # -- state shared by both ends --------------------------------------------------------------
    @property
    def bound(self) -> bool:
        return self._core is not None and self._core.bound  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        return not self.bound

    @property
    def truncated(self) -> bool:
        """Another process truncated the segment: every operation raises SegmentCorrupted."""
        return self._core is not None and self._core.truncated  # type: ignore[no-any-return]

    @property
    def queued(self) -> int:
        """Descriptors published and not yet consumed."""
        return self._core.queued  # type: ignore[no-any-return]

    def owner_counts(self) -> list[list[int]]:
        """Per size class: [free, producer, queued, consumer] block counts."""
        return self._core.owner_counts()  # type: ignore[no-any-return]

    def heartbeat(self) -> None:
        """Stamp this endpoint's heartbeat (wall clock) in the segment."""
        self._core.heartbeat()

    # -- shutdown -----------------------------------------------------------------------------
    def _can_close(self) -> bool:  # pragma: no cover - defined by both endpoints
        raise NotImplementedError

    def _detach(self) -> None:
        core = self._core
        if core is None or not core.bound:
            return
        if not core.truncated:
            self._release_role()
        core._unbind()
        self.segment.close()
        if self._owner is not None:
            self._owner.close()

    def __del__(self) -> None:
        try:
            if self._core is not None and self._core.bound and self._can_close():
                self._detach()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]

    def __reduce__(self) -> NoReturn:
        _no_copy(self)

    def _blocks(self) -> dict[int, list[int]]:
        return dict(zip(self.layout.class_sizes, self._core.owner_counts(), strict=True))

    def _counter(self, off: int) -> int:
        return self._core._load(off)  # type: ignore[no-any-return]


class ChannelWriter(_Endpoint):
    """The producer of a channel.

    ``policy`` when the ring or the needed size class is full (the consumer is behind):
    ``"block"`` (default) waits up to ``timeout`` seconds for room, then raises
    ChannelFull (counted as rejected; PeerDead if the consumer died meanwhile);
    ``"drop"`` drops the message, counts it and consumes its sequence number, so the
    consumer sees the gap; ``"raise"`` raises ChannelFull at once (counted).
    ``create=True`` also creates the channel (this writer then owns and unlinks it).
    """

    role, other = PRODUCER, CONSUMER

    def __init__(self, name: str, *, policy: str = "block", timeout: float = 1.0,
                 create: bool = False, attach_timeout: float = 2.0, **geometry: int) -> None:
        core = _shmcore.ProducerCore()
        core._configure(policy, timeout)
        self._attach(core, name, attach_timeout, create, geometry)
        core._store(self._role_off + L.ROLE_POLICY, L.POLICIES.index(policy))
        # the core's own bound methods: no extra call layer on the hot path
        self.publish = core.publish  # type: ignore[method-assign]
        self.claim = core.claim  # type: ignore[method-assign]

    def publish(self, topic: str, data: Any) -> int | None:
        """Copy ``data`` (bytes or any contiguous buffer) into a block and publish it on
        ``topic``. Returns the sequence number, or None when the ``drop`` policy dropped it.
        """
        return self._core.publish(topic, data)  # type: ignore[no-any-return]

    def claim(self, topic: str, size: int) -> ShmClaim | None:
        """A writable block of ``size`` bytes in shared memory (publish with ``commit()``).

        Returns None when the ``drop`` policy dropped it.
        """
        return self._core.claim(topic, size)  # type: ignore[no-any-return]

    def _recover_own_role(self) -> None:
        self._core._start()
        adopted = self._core._reclaim_producer()
        if adopted:
            log.info("%s: adopted %d block(s) of the previous producer", self.name, adopted)

    @property
    def policy(self) -> str:
        return self._core.policy  # type: ignore[no-any-return]

    @property
    def timeout(self) -> float:
        """Seconds the ``block`` policy waits for room."""
        return self._core.timeout  # type: ignore[no-any-return]

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._core.timeout = value

    @property
    def topic_ids(self) -> dict[str, int]:
        """Topic -> id in the segment's topic table (a copy)."""
        return self._core.topic_ids  # type: ignore[no-any-return]

    @property
    def published(self) -> int:
        return self._core.published  # type: ignore[no-any-return]

    @property
    def next_seq(self) -> int:
        return self._core.next_seq  # type: ignore[no-any-return]

    @property
    def claims_live(self) -> int:
        """Claims neither committed nor aborted."""
        return self._core.claims_live  # type: ignore[no-any-return]

    @property
    def aborted(self) -> int:
        """Claims given back without being published."""
        return self._core.aborted  # type: ignore[no-any-return]

    @property
    def spares(self) -> int:
        """Blocks this producer holds back for reuse (aborted claims, adopted orphans)."""
        return self._core.spares  # type: ignore[no-any-return]

    # -- recovery -----------------------------------------------------------------------------
    def recover_consumer(self) -> tuple[int, int] | None:
        """Reclaim the blocks of a dead consumer and free its role for a new one.

        Returns (reclaimed, requeued), or None if the consumer is alive.
        """
        if not self._lock_other_role():
            return None
        try:
            return self._core._reclaim_consumer()  # type: ignore[no-any-return]
        finally:
            self._unlock_other_role(L.STATE_RECOVERED)

    # -- lifecycle / stats --------------------------------------------------------------------
    def _can_close(self) -> bool:
        return self._core.claims_live == 0  # type: ignore[no-any-return]

    def close(self) -> None:
        """Give up the producer role (BlocksStillLive while claims are uncommitted)."""
        if not self.bound:
            return
        if self._core.claims_live:
            raise BlocksStillLive(f"channel {self.name!r}: {self._core.claims_live} claim(s) "
                                  "are neither committed nor aborted")
        self._detach()

    def stats(self) -> ChannelStats:
        return ChannelStats(
            name=self.name, role=self.role, published=self.published,
            received=self._counter(L.OFF_RECEIVED), delivered=0,
            dropped=self._counter(DROPPED), rejected=self._counter(REJECTED),
            waits=self._counter(WAITS), gaps=self._counter(L.OFF_GAPS), queued=self.queued,
            errors=0, leaked_views=0, deferred=0, retained=0, latency=None, blocks=self._blocks())

    def __repr__(self) -> str:
        if self._core is None:
            return "<ChannelWriter (not attached)>"
        state = "closed" if self.closed else f"published={self.published}"
        return f"<ChannelWriter {self.name!r} policy={self.policy} {state}>"


class ChannelReader(_Endpoint):
    """The consumer of a channel: subscribe with topic patterns, then ``poll()``.

    ``poll(limit)`` dispatches up to ``limit`` waiting messages inline and returns how
    many; subscribers get :class:`ShmMessage` objects whose ``payload`` is a read-only
    view into shared memory. Errors in subscribers are counted and passed to
    ``on_error(exc, msg, subscription)`` (default: logged); delivery goes on.
    """

    role, other = CONSUMER, PRODUCER

    def __init__(self, name: str, *, on_error: Callable[..., Any] | None = None,
                 create: bool = False, attach_timeout: float = 2.0, **geometry: int) -> None:
        core = _shmcore.ConsumerCore()
        core.on_error = on_error
        self._latency = Histogram()
        core._set_latency(self._latency.counts)
        self._attach(core, name, attach_timeout, create, geometry)
        # the core's own bound methods: no extra call layer on the hot path
        self.poll = core.poll  # type: ignore[method-assign]
        self.wait = core.wait  # type: ignore[method-assign]

    def poll(self, limit: int = 256) -> int:
        """Dispatch up to ``limit`` waiting messages to the subscribers; returns how many."""
        return self._core.poll(limit)  # type: ignore[no-any-return]

    def wait(self, timeout: float | None = None, spin_us: float = 20.0) -> bool:
        """Block until a message is waiting (True) or ``timeout`` seconds pass (False).

        Spins for ``spin_us`` µs, then sleeps on a futex in the segment (Linux; elsewhere
        it polls every 50 µs) that the producer wakes after its next publish. The GIL is
        released while sleeping. Signals interrupt the wait (KeyboardInterrupt works).
        """
        return self._core.wait(timeout, spin_us)  # type: ignore[no-any-return]

    def _recover_own_role(self) -> None:
        reclaimed, requeued = self._core._reclaim_consumer()
        self._core._start()
        if reclaimed or requeued:
            log.info("%s: reclaimed %d block(s) of the previous consumer, %d message(s) will "
                     "be delivered again", self.name, reclaimed, requeued)

    # -- subscriptions ------------------------------------------------------------------------
    def subscribe(self, pattern: str, callback: Callable[[Any], Any]) -> Subscription:
        """Call ``callback(msg)`` for each message on a topic matching ``pattern``."""
        return self._core.subscribe(pattern, callback)  # type: ignore[no-any-return]

    def unsubscribe(self, subscription: Subscription) -> None:
        self._core.unsubscribe(subscription)

    @property
    def subscriptions(self) -> list[Subscription]:
        return self._core.subscriptions  # type: ignore[no-any-return]

    @property
    def on_error(self) -> Callable[..., Any]:
        """``on_error(exc, msg, subscription)``, called when a subscriber raises."""
        return self._core.on_error  # type: ignore[no-any-return]

    @on_error.setter
    def on_error(self, hook: Callable[..., Any] | None) -> None:
        self._core.on_error = hook

    # -- counters -----------------------------------------------------------------------------
    @property
    def received(self) -> int:
        return self._core.received  # type: ignore[no-any-return]

    @property
    def delivered(self) -> int:
        """Subscriber calls that returned normally."""
        return self._core.delivered  # type: ignore[no-any-return]

    @property
    def errors(self) -> int:
        """Subscriber calls that raised."""
        return self._core.errors  # type: ignore[no-any-return]

    @property
    def hook_errors(self) -> int:
        """Times the ``on_error`` hook itself raised."""
        return self._core.hook_errors  # type: ignore[no-any-return]

    @property
    def gaps(self) -> int:
        """Messages missing from the sequence (dropped by the producer's policy)."""
        return self._core.gaps  # type: ignore[no-any-return]

    @property
    def last_seq(self) -> int:
        return self._core.last_seq  # type: ignore[no-any-return]

    @property
    def redelivered(self) -> int:
        """Messages seen again (a dead consumer's messages, delivered to its successor)."""
        return self._core.redelivered  # type: ignore[no-any-return]

    @property
    def retained(self) -> int:
        """Messages kept by ``retain()`` and not yet released."""
        return self._core.retained  # type: ignore[no-any-return]

    @property
    def leaked_views(self) -> int:
        """Messages whose payload view outlived them (their block was held back)."""
        return self._core.leaked_views  # type: ignore[no-any-return]

    @property
    def deferred(self) -> int:
        """Blocks held back by leaked views right now (after a sweep)."""
        return self._core.deferred  # type: ignore[no-any-return]

    # -- running ------------------------------------------------------------------------------
    def poll_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll (sleeping in :meth:`wait` when idle) until ``predicate()`` is true or
        ``timeout`` seconds pass; returns ``predicate()``."""
        return poll_until(self.poll, self.wait, predicate, timeout)

    async def run(self, stop: Callable[[], bool] | None = None, *,
                  idle_sleep: float = 0.0005, limit: int = 256) -> None:
        """Poll from an asyncio task: yields after every batch, sleeps when idle."""
        import asyncio

        while self.bound and not (stop is not None and stop()):
            if self.poll(limit):
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(idle_sleep)

    # -- recovery -----------------------------------------------------------------------------
    def recover_producer(self) -> int | None:
        """Reclaim the blocks of a dead (or closed) producer; returns how many, or None if a
        producer is alive."""
        if not self._lock_other_role():
            return None
        try:
            return self._core._reclaim_producer()  # type: ignore[no-any-return]
        finally:
            self._unlock_other_role(L.STATE_RECOVERED)

    # -- lifecycle / stats --------------------------------------------------------------------
    def _can_close(self) -> bool:
        return not self._core.retained and not self._core.deferred

    def close(self) -> None:
        """Give up the consumer role (BlocksStillLive while messages are retained or views
        of them are alive; the reader stays open then)."""
        if not self.bound:
            return
        core = self._core
        try:
            deferred = core._sweep()
        except SegmentCorrupted:  # a corrupt segment cannot take the blocks back: still close
            deferred = core.parked
        if core.retained or deferred:
            raise BlocksStillLive(f"channel {self.name!r}: {core.retained} retained message(s) "
                                  f"and {deferred} leaked view(s) still hold shared blocks")
        self._detach()

    @property
    def latency(self) -> Histogram:
        """Publish->deliver latency (ns), recorded before the subscribers run."""
        return self._latency

    def stats(self) -> ChannelStats:
        core = self._core
        deferred = core._sweep()
        return ChannelStats(
            name=self.name, role=self.role, published=self._counter(L.OFF_PUBLISHED),
            received=core.received, delivered=core.delivered,
            dropped=self._counter(DROPPED), rejected=self._counter(REJECTED),
            waits=self._counter(WAITS), gaps=core.gaps, queued=core.queued,
            errors=core.errors, leaked_views=core.leaked_views, deferred=deferred,
            retained=core.retained, latency=self._latency.summary(), blocks=self._blocks())

    def __repr__(self) -> str:
        if self._core is None:
            return "<ChannelReader (not attached)>"
        state = "closed" if self.closed else f"received={self.received}"
        return f"<ChannelReader {self.name!r} {state}>"
