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
is taken over, after its blocks have been reclaimed (see ``_shmcore``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hftalloc.bus import Subscription
from hftalloc.errors import (
    BlocksStillLive,
    ChannelFull,
    InvalidTopic,
    PeerDead,
    RoleTaken,
    SegmentCorrupted,
    SegmentError,
    SizeTooLarge,
    TopicTableFull,
)
from hftalloc.histogram import Histogram, LatencySummary
from hftalloc.polling import poll_until
from hftalloc.shm import _core as _shmcore
from hftalloc.shm import layout as L
from hftalloc.shm.layout import Layout
from hftalloc.shm.segment import Segment, pid_alive, process_start_ticks
from hftalloc.topics import matches, split_pattern, validate_topic

__all__ = ["Channel", "ChannelReader", "ChannelStats", "ChannelWriter", "ShmClaim", "ShmMessage"]

ShmClaim = _shmcore.ShmClaim
ShmMessage = _shmcore.ShmMessage
RAISE, DROP, BLOCK = range(3)
PRODUCER, CONSUMER = "producer", "consumer"
ROLE_OFFSETS = {PRODUCER: L.OFF_PRODUCER, CONSUMER: L.OFF_CONSUMER}
DROPPED, REJECTED, WAITS = (L.OFF_PRODUCER_STATS + 8 * i for i in range(3))

log = logging.getLogger("hftalloc.shm")


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
            core._bind(self.segment.buffer, *self.layout.core_args())
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
    return _open(name, timeout)


def _open(name: str, timeout: float) -> tuple[Segment, Layout]:
    segment = Segment(name)
    try:
        deadline = time.monotonic() + timeout
        while not _shmcore.load_u64(segment.buffer, L.OFF_READY):
            if time.monotonic() > deadline:
                raise SegmentError(f"segment {segment.name!r} was never initialised")
            time.sleep(0.001)
        with memoryview(segment.buffer) as buf:
            layout = Layout.read_header(buf, segment.name)
    except BaseException:
        segment.close()
        raise
    return segment, layout


class _Endpoint:
    """Role handling shared by writer and reader (mixed into a compiled core class)."""

    role: str = ""
    other: str = ""

    def _attach(self, name: str, timeout: float, create: bool, geometry: dict[str, int]) -> None:
        self._owner = Channel(name, **geometry) if create else None
        try:
            self.segment, self.layout = _open(name, timeout)
        except BaseException:
            if self._owner is not None:
                self._owner.close()
            raise
        self.name = self.segment.name
        self._role_off = ROLE_OFFSETS[self.role]
        self._other_off = ROLE_OFFSETS[self.other]
        try:
            self._bind(self.segment.buffer, *self.layout.core_args())
            self.taken_over = self._take_role(timeout)
        except BaseException:
            self._unbind()
            self.segment.close()
            if self._owner is not None:
                self._owner.close()
            raise

    def _take_role(self, timeout: float) -> str:
        """Claim our role slot (CAS on the pid); returns the previous holder's fate."""
        me = os.getpid()
        pid_off = self._role_off + L.ROLE_PID
        deadline = time.monotonic() + timeout
        while True:
            pid = self._load_signed(pid_off)
            if pid == 0:
                if self._cas(pid_off, 0, -me):
                    previous = "vacant"
                    break
            elif pid > 0:
                if pid == me:
                    raise RoleTaken(f"this process already is the {self.role} of {self.name!r}")
                if pid_alive(pid, self._load(self._role_off + L.ROLE_TICKS)):
                    raise RoleTaken(f"the {self.role} of {self.name!r} is pid {pid}, alive")
                if self._cas(pid_off, pid, -me):
                    previous = f"dead pid {pid}"
                    break
            elif not pid_alive(-pid):
                if self._cas(pid_off, pid, -me):
                    previous = f"dead pid {-pid}"
                    break
            elif time.monotonic() > deadline:
                raise RoleTaken(f"pid {-pid} is taking the {self.role} role of {self.name!r}")
            else:
                time.sleep(0.001)
        try:
            if self._load(self._role_off + L.ROLE_STATE) != L.STATE_NEVER:
                self._recover_own_role()
            else:
                self._start()
        except BaseException:
            self._store_signed(pid_off, 0)
            raise
        self._store(self._role_off + L.ROLE_TICKS, process_start_ticks())
        self._store(self._role_off + L.ROLE_STATE, L.STATE_ATTACHED)
        self._add(self._role_off + L.ROLE_ATTACHES)
        self._set_heartbeat_slot(self._role_off)
        self.heartbeat()
        self._store_signed(pid_off, me)
        return previous

    def _release_role(self) -> None:
        self._store(self._role_off + L.ROLE_STATE, L.STATE_CLOSED)
        self._store_signed(self._role_off + L.ROLE_PID, 0)

    # -- the other side -----------------------------------------------------------------------
    def peer(self) -> tuple[int, bool | None]:
        """(pid, alive) of the other side: alive is None while its role is vacant."""
        pid = self._load_signed(self._other_off + L.ROLE_PID)
        if pid == 0:
            return 0, None
        if pid < 0:
            return -pid, pid_alive(-pid)
        return pid, pid_alive(pid, self._load(self._other_off + L.ROLE_TICKS))

    def peer_alive(self) -> bool | None:
        """True/False for an attached peer, None if nobody holds the other role."""
        return self.peer()[1]

    def _lock_other_role(self) -> bool:
        return lock_dead_role(self, self._other_off)

    def _unlock_other_role(self, state: int) -> None:
        unlock_role(self, self._other_off, state)

    # -- shutdown -----------------------------------------------------------------------------
    def _detach(self) -> None:
        if not self.bound:
            return
        self._release_role()
        self._unbind()
        self.segment.close()
        if self._owner is not None:
            self._owner.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "segment", None) is not None and self.bound and self._can_close():
                self._detach()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]

    def _blocks(self) -> dict[int, list[int]]:
        return dict(zip(self.layout.class_sizes, self.owner_counts(), strict=True))

    def _counter(self, off: int) -> int:
        return self._load(off)


class ChannelWriter(_Endpoint, _shmcore.ProducerCore):
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
        if policy not in L.POLICIES:
            raise ValueError(f"policy must be one of {L.POLICIES}, got {policy!r}")
        if not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
        self.policy = policy
        self._policy = L.POLICIES.index(policy)
        self.timeout = timeout
        self._attach(name, attach_timeout, create, geometry)
        self._store(self._role_off + L.ROLE_POLICY, self._policy)

    def _recover_own_role(self) -> None:
        self._start()
        adopted = self._reclaim_producer()
        if adopted:
            log.info("%s: adopted %d block(s) of the previous producer", self.name, adopted)

    def _register_topic(self, topic: Any) -> int:
        validate_topic(topic)
        raw = topic.encode()
        if len(raw) > L.MAX_TOPIC_BYTES:
            raise InvalidTopic(f"topic {topic[:40]!r}... is {len(raw)} bytes of UTF-8; a channel "
                               f"carries topics of up to {L.MAX_TOPIC_BYTES}")
        tid = self._write_topic(raw)
        if tid < 0:
            raise TopicTableFull(f"channel {self.name!r} already carries "
                                 f"{self.layout.max_topics} topics (raise max_topics)")
        self.topic_ids[topic] = tid
        return tid

    # -- exhaustion policy (cold path, called by the core) -----------------------------------------
    def _full(self, rc: int, topic: str, data: Any, size: int) -> Any:
        self._check_status(rc, data, size)
        if self._policy == DROP:
            self._add(DROPPED)
            self._skip_seq()
            return None
        if self._policy == RAISE:
            self._add(REJECTED)
            raise ChannelFull(self._full_text(rc, topic))
        if size < 0:
            return self._wait(topic, lambda: self._try_publish(topic, data))
        return self._wait(topic, lambda: self._try_claim(topic, size))

    def _full_commit(self, claim: ShmClaim) -> int | None:
        """A claim's commit found the ring full."""
        if self._policy == DROP:
            self._add(DROPPED)
            self._drop_claim(claim)
            return None
        if self._policy == RAISE:
            self._add(REJECTED)
            raise ChannelFull(self._full_text(_shmcore.RING_FULL, claim.topic) +
                              " (the claim is still yours: commit again or abort)")
        return self._wait(claim.topic, lambda: self._retry_commit(claim))

    def _wait(self, topic: str, attempt: Callable[[], Any]) -> Any:
        """The block policy: retry until there is room, the timeout passes or the peer died."""
        self._add(WAITS)
        start = time.monotonic()
        deadline = start + self.timeout
        next_check = start + 0.02
        spins = 0
        while True:
            result = attempt()
            if not isinstance(result, int) or result > 0:
                return result
            self._check_status(result, None, -1)
            now = time.monotonic()
            if now >= deadline:
                self._add(REJECTED)
                raise ChannelFull(self._full_text(result, topic) +
                                  f"; no room within {self.timeout} s")
            if now >= next_check:
                next_check = now + 0.02
                self.heartbeat()
                pid, alive = self.peer()
                if alive is False:
                    self._add(REJECTED)
                    raise PeerDead(f"channel {self.name!r}: the consumer (pid {pid}) died; "
                                   "call recover_consumer() and wait for a new one")
            spins += 1
            time.sleep(0 if spins < 50 else 0.0002)

    def _check_status(self, rc: int, data: Any, size: int) -> None:
        if rc == _shmcore.TOO_LARGE:
            n = size if size >= 0 else memoryview(data).nbytes
            raise SizeTooLarge(f"{n} B is above the largest size class "
                               f"({self.layout.max_size} B) of channel {self.name!r}")
        if rc == _shmcore.CORRUPT:
            raise SegmentCorrupted(f"channel {self.name!r}: the free list is inconsistent")

    def _full_text(self, rc: int, topic: str) -> str:
        what = "the descriptor ring" if rc == _shmcore.RING_FULL else "a size class"
        return (f"channel {self.name!r}, topic {topic!r}: {what} is full (the consumer is "
                f"behind or holds the blocks; policy={self.policy!r})")

    # -- recovery -----------------------------------------------------------------------------
    def recover_consumer(self) -> tuple[int, int] | None:
        """Reclaim the blocks of a dead consumer and free its role for a new one.

        Returns (reclaimed, requeued), or None if the consumer is alive.
        """
        if not self._lock_other_role():
            return None
        try:
            return self._reclaim_consumer()
        finally:
            self._unlock_other_role(L.STATE_RECOVERED)

    # -- lifecycle / stats --------------------------------------------------------------------
    def _can_close(self) -> bool:
        return self.claims_live == 0

    def close(self) -> None:
        """Give up the producer role (BlocksStillLive while claims are uncommitted)."""
        if not self.bound:
            return
        if self.claims_live:
            raise BlocksStillLive(f"channel {self.name!r}: {self.claims_live} claim(s) are "
                                  "neither committed nor aborted")
        self._detach()

    @property
    def closed(self) -> bool:
        return not self.bound

    def stats(self) -> ChannelStats:
        return ChannelStats(
            name=self.name, role=self.role, published=self.published,
            received=self._counter(L.OFF_RECEIVED), delivered=0,
            dropped=self._counter(DROPPED), rejected=self._counter(REJECTED),
            waits=self._counter(WAITS), gaps=self._counter(L.OFF_GAPS), queued=self.queued,
            errors=0, leaked_views=0, deferred=0, retained=0, latency=None, blocks=self._blocks())

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"published={self.published}"
        return f"<ChannelWriter {getattr(self, 'name', '?')!r} policy={self.policy} {state}>"


def log_subscriber_error(exc: BaseException, msg: Any, sub: Subscription) -> None:
    log.error("subscriber %r failed on %r", sub, msg, exc_info=exc)


class ChannelReader(_Endpoint, _shmcore.ConsumerCore):
    """The consumer of a channel: subscribe with topic patterns, then ``poll()``.

    ``poll(limit)`` dispatches up to ``limit`` waiting messages inline and returns how
    many; subscribers get :class:`ShmMessage` objects whose ``payload`` is a read-only
    view into shared memory. Errors in subscribers are counted and passed to
    ``on_error(exc, msg, subscription)`` (default: logged); delivery goes on.
    """

    role, other = CONSUMER, PRODUCER

    def __init__(self, name: str, *, on_error: Callable[..., Any] | None = None,
                 create: bool = False, attach_timeout: float = 2.0, **geometry: int) -> None:
        self.on_error = on_error if on_error is not None else log_subscriber_error
        self.hook_errors = 0
        self._subs: dict[int, Subscription] = {}
        self._patterns: dict[int, tuple[str, ...]] = {}
        self._next_id = 1
        self._latency = Histogram()
        self._set_latency(self._latency.counts)
        self._attach(name, attach_timeout, create, geometry)

    def _recover_own_role(self) -> None:
        reclaimed, requeued = self._reclaim_consumer()
        self._start()
        if reclaimed or requeued:
            log.info("%s: reclaimed %d block(s) of the previous consumer, %d message(s) will "
                     "be delivered again", self.name, reclaimed, requeued)

    # -- subscriptions ------------------------------------------------------------------------
    def subscribe(self, pattern: str, callback: Callable[[Any], Any]) -> Subscription:
        """Call ``callback(msg)`` for each message on a topic matching ``pattern``."""
        segments = split_pattern(pattern)
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        sub = Subscription(pattern, callback, self._next_id, False, self)
        self._next_id += 1
        self._subs[sub.id] = sub
        self._patterns[sub.id] = segments
        self._reset_routes()
        return sub

    def unsubscribe(self, subscription: Subscription) -> None:
        from hftalloc.errors import NotSubscribed

        if not isinstance(subscription, Subscription) or \
                self._subs.get(subscription.id) is not subscription:
            raise NotSubscribed(f"{subscription!r} is not an active subscription of this reader")
        del self._subs[subscription.id]
        del self._patterns[subscription.id]
        subscription.active = False
        self._reset_routes()

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())

    def _resolve(self, topic: str) -> _shmcore.Route:
        route = _shmcore.Route(topic)
        subs = tuple(s for i, s in self._subs.items() if matches(self._patterns[i], topic))
        route.subscriptions = subs
        route.callbacks = tuple(s.callback for s in subs)
        return route

    def _subscriber_failed(self, exc: BaseException, msg: Any, sub: Subscription) -> None:
        try:
            self.on_error(exc, msg, sub)
        except Exception:
            self.hook_errors += 1
            log.exception("the reader's error hook failed while reporting %r", exc)

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
            return self._reclaim_producer()
        finally:
            self._unlock_other_role(L.STATE_RECOVERED)

    # -- lifecycle / stats --------------------------------------------------------------------
    def _can_close(self) -> bool:
        return not self.retained and not self.deferred

    def close(self) -> None:
        """Give up the consumer role (BlocksStillLive while messages are retained or views
        of them are alive; the reader stays open then)."""
        if not self.bound:
            return
        deferred = self._sweep()
        if self.retained or deferred:
            raise BlocksStillLive(f"channel {self.name!r}: {self.retained} retained message(s) "
                                  f"and {deferred} leaked view(s) still hold shared blocks")
        self._detach()

    @property
    def closed(self) -> bool:
        return not self.bound

    @property
    def latency(self) -> Histogram:
        """Publish->deliver latency (ns), recorded before the subscribers run."""
        return self._latency

    def stats(self) -> ChannelStats:
        deferred = self._sweep()
        return ChannelStats(
            name=self.name, role=self.role, published=self._counter(L.OFF_PUBLISHED),
            received=self.received, delivered=self.delivered,
            dropped=self._counter(DROPPED), rejected=self._counter(REJECTED),
            waits=self._counter(WAITS), gaps=self.gaps, queued=self.queued,
            errors=self.errors, leaked_views=self.leaked_views, deferred=deferred,
            retained=self.retained, latency=self._latency.summary(), blocks=self._blocks())

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"received={self.received}"
        return f"<ChannelReader {getattr(self, 'name', '?')!r} {state}>"
