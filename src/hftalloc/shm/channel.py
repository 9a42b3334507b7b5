"""Shared-memory channels: N producer processes, one consumer process, zero copy.

``Channel`` creates (and on close unlinks) a segment; ``ChannelWriter`` and
``ChannelReader`` attach to it, from any process on the machine, as one of its
producers and as its consumer::

    with Channel("md", producers=2, blocks_per_class=256) as ch:   # owner: unlinks on exit
        ...                                                         # start the processes
    # producer processes (each takes a free producer slot)
    w = ChannelWriter("md", policy="block", timeout=1.0)
    w.publish("md.quote.AAPL", payload)                      # copy in
    w.publish_many("md.quote.AAPL", payloads)                # one ring publication
    with w.claim("md.quote.AAPL", 48) as c:                  # or write in place
        QUOTE.pack_into(c.buffer, 0, ...)
    # consumer process
    r = ChannelReader("md")
    r.subscribe("md.quote.*", on_quote)                       # msg.payload: view into shm
    r.poll()                                                  # dispatch what is waiting
    r.poll_batch(on_quotes)                                   # or: a tuple per call

Every producer slot is a *lane* of the segment (see :mod:`hftalloc.shm.layout`): its
own descriptor ring, topic table and pools, so producers never contend and a lone
producer runs the single-producer path. The reader polls the lanes round robin; order
is kept per producer (``msg.producer`` is the slot, ``msg.seq`` its sequence).

Roles are claimed with a compare-and-swap on the pid in the role slot, so a producer
finds a free slot (``RoleTaken`` when every slot is held by a live process) and a second
live consumer is refused. A slot whose holder died is taken over after its blocks have
been reclaimed (the dead producer's committed messages are still delivered; the ones it
had claimed and not committed are counted as ``lost``). ``Channel.open_or_create``
lets any process come first. Endpoints inherited over ``fork`` refuse every use in the
child (:class:`EndpointForked`); the child opens its own.

Messages and claims are :class:`hftalloc._message.Message` objects, the same type the
bus hands out (``ShmMessage`` and ``ShmClaim`` are other names for it). Each endpoint
owns compiled cores (:mod:`hftalloc.shm._core`: one ``ProducerCore``, or one
``ConsumerCore`` per lane) that do all per-message work, the full-ring policies and the
dispatch; the hot methods (``publish``, ``claim``, ``poll``, ``wait``) are the cores'
own bound methods, so calling them through an endpoint adds no Python layer.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from hftalloc._message import Message
from hftalloc.bus import Subscription
from hftalloc.errors import (
    BlocksStillLive,
    GeometryMismatch,
    RoleTaken,
    SegmentCorrupted,
    SegmentError,
    SegmentExists,
)
from hftalloc.histogram import Histogram, LatencySummary
from hftalloc.polling import poll_until
from hftalloc.shm import _core as _shmcore
from hftalloc.shm import layout as L
from hftalloc.shm.layout import Layout
from hftalloc.shm.liveness import pid_alive, process_start_ticks
from hftalloc.shm.segment import Segment

__all__ = ["Channel", "ChannelReader", "ChannelStats", "ChannelWriter", "ProducerInfo",
           "ShmClaim", "ShmMessage"]

# received messages and claims are the bus's own message type (one state machine, one
# payload/buffer/retain API for every transport)
ShmMessage = Message
ShmClaim = Message
log_subscriber_error = _shmcore.log_subscriber_error
PRODUCER, CONSUMER = "producer", "consumer"
ROLE_OFFSETS = {PRODUCER: L.OFF_PRODUCER, CONSUMER: L.OFF_CONSUMER}
DROPPED, REJECTED, WAITS = (L.OFF_PRODUCER_STATS + 8 * i for i in range(3))

log = logging.getLogger("hftalloc.shm")

# endpoints of this process: disowned in a child after fork (they belong to the parent)
_ENDPOINTS: weakref.WeakSet[_Endpoint] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for endpoint in list(_ENDPOINTS):
        endpoint._disown()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _no_copy(obj: object) -> NoReturn:
    raise TypeError(f"a {type(obj).__name__} cannot be copied or pickled (attach to the "
                    "channel by name instead)")


def _bind_lanes(core_type: Any, segment: Segment, layout: Layout) -> list[Any]:
    """One core of ``core_type`` bound to each lane of ``segment``."""
    cores = []
    try:
        for lane in range(layout.producers):
            core = core_type()
            core._bind(segment.buffer, segment.name, *layout.core_args(lane))
            cores.append(core)
    except BaseException:
        for core in cores:
            core._unbind()
        raise
    return cores


def _unbind_all(cores: Iterable[Any]) -> None:
    for core in cores:
        if core.bound:
            core._unbind()


class Channel:
    """Creates a channel segment and owns its name: ``close()`` unlinks it.

    Processes already attached keep their mapping (POSIX semantics); new ones can no
    longer attach. ``producers`` is the number of producer slots (concurrent
    ``ChannelWriter`` endpoints); the other geometry: see
    :class:`~hftalloc.shm.layout.Layout`. :meth:`open_or_create` attaches to the
    channel if it exists (checking its geometry) and creates it otherwise.
    """

    def __init__(self, name: str, *, producers: int = 1, ring_capacity: int = 1024,
                 blocks_per_class: int = 1024, num_classes: int = 8, min_size: int = 64,
                 max_topics: int = 1024) -> None:
        self.layout = Layout(ring_capacity, num_classes, min_size, blocks_per_class, max_topics,
                             producers)
        self._pid = os.getpid()
        self.created = True
        self.segment = Segment(name, create=True, size=self.layout.total_size)
        self.name = self.segment.name
        try:
            with memoryview(self.segment.buffer) as buf:
                self.layout.write_header(buf, created_ns=time.time_ns(), pid=self._pid,
                                         ticks=process_start_ticks())
            cores = _bind_lanes(_shmcore.ChannelCore, self.segment, self.layout)
            try:
                for core in cores:
                    core._init_free_rings()
                cores[0]._store(L.OFF_READY, 1)   # last: attachers wait for it
            finally:
                _unbind_all(cores)
        except BaseException:
            self.segment.close()
            self.segment.unlink()
            raise

    @classmethod
    def open_or_create(cls, name: str, *, timeout: float = 2.0, **geometry: int) -> Channel:
        """The channel ``name``: created if it does not exist, else attached to.

        Any number of processes may call this at once: one creates the segment (an
        exclusive create, initialised before its ready word is published), the others
        wait up to ``timeout`` seconds for it to be ready. The existing channel's
        geometry must be the one asked for (defaults included), else
        :class:`GeometryMismatch` names the first differing field. ``created`` tells
        whether this object created (and so owns and unlinks on close) the segment.
        """
        wanted = Layout(**geometry)      # validates the arguments before anything else
        deadline = time.monotonic() + timeout
        while True:
            try:
                return cls(name, **geometry)
            except SegmentExists:
                pass
            try:
                return cls._attached(name, wanted, max(0.0, deadline - time.monotonic()))
            except SegmentError as exc:
                # the segment went away between the two calls (its owner closed it): retry
                if "no segment named" not in str(exc) or time.monotonic() > deadline:
                    raise

    @classmethod
    def _attached(cls, name: str, wanted: Layout, timeout: float) -> Channel:
        segment, layout = open_segment(name, timeout)
        try:
            check_geometry(segment.name, wanted, layout)
        except BaseException:
            segment.close()
            raise
        self = cls.__new__(cls)
        self.layout = layout
        self._pid = os.getpid()
        self.created = False
        self.segment = segment
        self.name = segment.name
        return self

    def close(self) -> None:
        """Unmap the segment here and, if this object created it (in this process),
        unlink its name (idempotent)."""
        if not self.segment.closed:
            if self.created and os.getpid() == self._pid:
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
        owner = "" if self.created else " attached"
        return f"<Channel {self.name!r} producers={self.layout.producers} {state}{owner}>"


def check_geometry(name: str, wanted: Layout, actual: Layout) -> None:
    """GeometryMismatch naming the first field where ``actual`` differs from ``wanted``."""
    mine, theirs = wanted.geometry(), actual.geometry()
    for field, expected in mine.items():
        if theirs[field] != expected:
            raise GeometryMismatch(
                f"channel {name!r} exists with {field}={theirs[field]}, but {field}="
                f"{expected} was asked for", field, expected, theirs[field])


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """A snapshot of a channel as seen from one endpoint (a writer sees its own slot)."""

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
    lost: int = 0  # claimed by a producer that died before committing them
    producers: int = 1  # producer slots of the channel

    def report(self) -> str:
        lines = [
            f"channel {self.name} ({self.role}): published={self.published:,} "
            f"received={self.received:,} delivered={self.delivered:,} queued={self.queued}",
            f"  dropped={self.dropped} gaps={self.gaps} lost={self.lost} "
            f"rejected={self.rejected} waits={self.waits} errors={self.errors} "
            f"leaked_views={self.leaked_views} retained={self.retained}",
        ]
        if self.latency is not None:
            lines.append(f"  latency {self.latency.format()}")
        lines.append("  blocks (free/producer/queued/consumer): " + ", ".join(
            f"{size} B {'/'.join(map(str, row))}" for size, row in self.blocks.items()))
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ProducerInfo:
    """One producer slot of a channel, as its reader sees it."""

    slot: int
    pid: int  # 0: vacant; negative: being taken over by -pid
    alive: bool | None  # None when vacant
    state: str
    published: int
    received: int
    queued: int
    gaps: int
    dropped: int
    lost: int


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


def reclaim_dead_producer(core: Any) -> tuple[int, int]:
    """Reclaim the blocks of a dead producer's lane (its slot locked by the caller).

    Returns (blocks reclaimed, messages lost): the dead producer's spares carried no
    message; its other blocks were claims or publications it never committed, which
    are added to the lane's ``lost`` counter.
    """
    spares = core._load(L.OFF_SPARES)
    orphans = core._reclaim_producer()
    lost = max(0, orphans - spares)
    if lost:
        core._add(L.OFF_LOST, lost)
    return orphans, lost


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


def _new_session() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1 | 1


class _Endpoint:
    """Role handling shared by writer and reader around their compiled cores.

    ``_cores`` are the endpoint's cores; ``_core`` is the one whose lane holds the role
    slot (a writer's lane, lane 0 for the reader).
    """

    role: str = ""
    _core: Any = None
    _cores: tuple[Any, ...] = ()

    def _open(self, name: str, timeout: float, create: bool,
              geometry: dict[str, int]) -> None:
        self._pid = os.getpid()
        self._session = _new_session()
        self._owner = Channel(name, **geometry) if create else None
        try:
            self.segment, self.layout = open_segment(name, timeout)
        except BaseException:
            if self._owner is not None:
                self._owner.close()
            raise
        self.name = self.segment.name
        self._role_off = ROLE_OFFSETS[self.role]

    def _abandon(self) -> None:
        """Undo ``_open`` after a failed attach."""
        _unbind_all(self._cores)
        self._core = None
        self._cores = ()
        self.segment.close()
        if self._owner is not None:
            self._owner.close()

    def _claim_slot(self, core: Any, timeout: float) -> str | None:
        """CAS our pid into ``core``'s role slot if it is vacant or its holder is dead.

        Returns the previous holder's fate, or None while a live process (this one
        included) holds the slot.
        """
        me = os.getpid()
        off = self._role_off
        pid_off = off + L.ROLE_PID
        deadline = time.monotonic() + timeout
        while True:
            pid = core._load_signed(pid_off)
            if pid == 0:
                if core._cas(pid_off, 0, -me):
                    return "vacant"
            elif pid > 0:
                if pid == me or pid_alive(pid, core._load(off + L.ROLE_TICKS)):
                    return None
                if core._cas(pid_off, pid, -me):
                    return f"dead pid {pid}"
            elif not pid_alive(-pid):
                if core._cas(pid_off, pid, -me):
                    return f"dead pid {-pid}"
            elif time.monotonic() > deadline:
                return None
            else:
                time.sleep(0.001)

    def _finish_claim(self, core: Any) -> None:
        """We hold ``core``'s slot (pid = -us): recover or start, then publish our pid."""
        off = self._role_off
        try:
            if core._load(off + L.ROLE_STATE) != L.STATE_NEVER:
                self._recover_own_role()
            else:
                self._start_cores()
        except BaseException:
            if not core.truncated:
                core._store_signed(off + L.ROLE_PID, 0)
            raise
        core._store(off + L.ROLE_TICKS, process_start_ticks())
        core._store(off + L.ROLE_STATE, L.STATE_ATTACHED)
        core._store(off + L.ROLE_SESSION, self._session)
        core._add(off + L.ROLE_ATTACHES)
        core._set_heartbeat_slot(off)
        core.heartbeat()
        core._store_signed(off + L.ROLE_PID, os.getpid())

    def _start_cores(self) -> None:
        for core in self._cores:
            core._start()

    def _recover_own_role(self) -> None:  # pragma: no cover - defined by both endpoints
        raise NotImplementedError

    def _release_role(self) -> None:
        """Leave our slot vacant, if it is still ours (another endpoint may have taken it
        over after this process was thought dead)."""
        core, off = self._core, self._role_off
        me = os.getpid()
        if core._load(off + L.ROLE_SESSION) != self._session or \
                core._load_signed(off + L.ROLE_PID) != me:
            return
        core._store(off + L.ROLE_STATE, L.STATE_CLOSED)
        core._cas(off + L.ROLE_PID, me, 0)

    def _disown(self) -> None:
        """In a child after fork: this endpoint is the parent's; refuse every use."""
        for core in self._cores:
            core._disown(self._pid)

    # -- the other side -----------------------------------------------------------------------
    def peer(self) -> tuple[int, bool | None]:
        """(pid, alive) of the other side (lane 0's producer for a reader): alive is None
        while its role is vacant."""
        return self._core.peer()  # type: ignore[no-any-return]

    def peer_alive(self) -> bool | None:
        """True/False for an attached peer, None if nobody holds the other role."""
        return self._core.peer()[1]  # type: ignore[no-any-return]

    # -- state shared by both ends --------------------------------------------------------------
    @property
    def bound(self) -> bool:
        return self._core is not None and self._core.bound  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        return not self.bound

    @property
    def forked_from(self) -> int:
        """The pid this endpoint belongs to if it was inherited over fork, else 0."""
        return 0 if self._core is None else self._core.forked_from  # type: ignore[no-any-return]

    @property
    def truncated(self) -> bool:
        """Another process truncated the segment: every operation raises SegmentCorrupted."""
        return self._core is not None and self._core.truncated  # type: ignore[no-any-return]

    @property
    def producers(self) -> int:
        """Producer slots of the channel."""
        return self.layout.producers

    @property
    def queued(self) -> int:
        """Descriptors published and not yet consumed (in this endpoint's lanes)."""
        return sum(core.queued for core in self._cores)

    def owner_counts(self) -> list[list[int]]:
        """Per size class: [free, producer, queued, consumer] block counts (summed over
        this endpoint's lanes)."""
        rows = [core.owner_counts() for core in self._cores]
        return [[sum(lane[c][k] for lane in rows) for k in range(4)]
                for c in range(self.layout.num_classes)]

    def heartbeat(self) -> None:
        """Stamp this endpoint's heartbeat (wall clock) in the segment."""
        self._core.heartbeat()

    # -- shutdown -----------------------------------------------------------------------------
    def _can_close(self) -> bool:  # pragma: no cover - defined by both endpoints
        raise NotImplementedError

    def _detach(self) -> None:
        core = self._core
        if core is None or not core.bound or os.getpid() != self._pid:
            return
        if not core.truncated:
            self._release_role()
        _unbind_all(self._cores)
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
        return dict(zip(self.layout.class_sizes, self.owner_counts(), strict=True))

    def _counter(self, off: int) -> int:
        return sum(core._load(off) for core in self._cores)


class ChannelWriter(_Endpoint):
    """A producer of a channel: it takes a free producer slot (``slot``).

    ``policy`` when the ring or the needed size class is full (the consumer is behind):
    ``"block"`` (default) waits up to ``timeout`` seconds for room, then raises
    ChannelFull (counted as rejected; PeerDead if the consumer died meanwhile);
    ``"drop"`` drops the message, counts it and consumes its sequence number, so the
    consumer sees the gap; ``"raise"`` raises ChannelFull at once (counted).
    ``create=True`` also creates the channel (this writer then owns and unlinks it).
    RoleTaken when every producer slot is held by a live process.
    """

    role = PRODUCER

    def __init__(self, name: str, *, policy: str = "block", timeout: float = 1.0,
                 create: bool = False, attach_timeout: float = 2.0, **geometry: int) -> None:
        core = _shmcore.ProducerCore()
        core._configure(policy, timeout)
        self._open(name, attach_timeout, create, geometry)
        try:
            self.taken_over = self._take_slot(core, attach_timeout)
        except BaseException:
            self._abandon()
            raise
        core._store(self._role_off + L.ROLE_POLICY, L.POLICIES.index(policy))
        _ENDPOINTS.add(self)
        # the core's own bound methods: no extra call layer on the hot path
        self.publish = core.publish  # type: ignore[method-assign]
        self.publish_many = core.publish_many  # type: ignore[method-assign]
        self.claim = core.claim  # type: ignore[method-assign]

    def _take_slot(self, core: Any, timeout: float) -> str:
        """Bind ``core`` to the first lane whose slot we can claim; the previous holder's
        fate. Live holders are skipped; a slot being taken over is waited for."""
        holders = []
        for lane in range(self.layout.producers):
            core._bind(self.segment.buffer, self.name, *self.layout.core_args(lane))
            self._core, self._cores = core, (core,)
            previous = self._claim_slot(core, timeout if lane == self.layout.producers - 1
                                        else 0.0)
            if previous is not None:
                self.slot = lane
                self._finish_claim(core)
                return previous
            holders.append(abs(core._load_signed(self._role_off + L.ROLE_PID)))
            core._unbind()
        self._core, self._cores = None, ()
        n = self.layout.producers
        raise RoleTaken(f"channel {self.name!r}: all {n} producer slot(s) are taken by live "
                        f"processes (pids {', '.join(map(str, holders))})")

    def publish(self, topic: str, data: Any) -> int | None:
        """Copy ``data`` (bytes or any contiguous buffer) into a block and publish it on
        ``topic``. Returns the sequence number, or None when the ``drop`` policy dropped it.
        """
        return self._core.publish(topic, data)  # type: ignore[no-any-return]

    def publish_many(self, topic: str, payloads: Iterable[Any]) -> int:
        """Publish every payload (bytes or buffers) on ``topic`` in order, as one ring
        publication for as many as fit; returns how many were published (see
        ``ProducerCore.publish_many`` for the policy on a full ring)."""
        return self._core.publish_many(topic, payloads)  # type: ignore[no-any-return]

    def claim(self, topic: str, size: int) -> ShmClaim | None:
        """A writable block of ``size`` bytes in shared memory (publish with ``commit()``).

        Returns None when the ``drop`` policy dropped it.
        """
        return self._core.claim(topic, size)  # type: ignore[no-any-return]

    def _recover_own_role(self) -> None:
        core = self._core
        spares = core._load(L.OFF_SPARES)
        core._start()
        adopted = core._reclaim_producer()
        lost = max(0, adopted - spares)
        if lost:
            core._add(L.OFF_LOST, lost)
        if adopted:
            log.info("%s: slot %d: adopted %d block(s) of the previous producer (%d message(s) "
                     "it never committed)", self.name, self.slot, adopted, lost)

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
        """Topic -> id in this slot's topic table (a copy)."""
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
        """Reclaim the blocks of a dead consumer (in every lane) and free its role for a
        new one. Returns (reclaimed, requeued), or None if the consumer is alive."""
        cores = _bind_lanes(_shmcore.ChannelCore, self.segment, self.layout)
        try:
            if not lock_dead_role(cores[0], L.OFF_CONSUMER):
                return None
            try:
                reclaimed = requeued = 0
                for core in cores:
                    a, b = core._reclaim_consumer()
                    reclaimed, requeued = reclaimed + a, requeued + b
                return reclaimed, requeued
            finally:
                unlock_role(cores[0], L.OFF_CONSUMER, L.STATE_RECOVERED)
        finally:
            _unbind_all(cores)

    # -- lifecycle / stats --------------------------------------------------------------------
    def _can_close(self) -> bool:
        return self._core.claims_live == 0  # type: ignore[no-any-return]

    def close(self) -> None:
        """Give up the producer slot (BlocksStillLive while claims are uncommitted)."""
        if not self.bound:
            return
        if self._core.claims_live:
            raise BlocksStillLive(f"channel {self.name!r}: {self._core.claims_live} claim(s) "
                                  "are neither committed nor aborted")
        self._detach()

    def stats(self) -> ChannelStats:
        """This producer slot's counters."""
        return ChannelStats(
            name=self.name, role=self.role, published=self.published,
            received=self._counter(L.OFF_RECEIVED), delivered=0,
            dropped=self._counter(DROPPED), rejected=self._counter(REJECTED),
            waits=self._counter(WAITS), gaps=self._counter(L.OFF_GAPS), queued=self.queued,
            errors=0, leaked_views=0, deferred=0, retained=0, latency=None, blocks=self._blocks(),
            lost=self._counter(L.OFF_LOST), producers=self.layout.producers)

    def __repr__(self) -> str:
        if self._core is None:
            return "<ChannelWriter (not attached)>"
        state = "closed" if self.closed else f"published={self.published}"
        return f"<ChannelWriter {self.name!r} slot={self.slot} policy={self.policy} {state}>"


class ChannelReader(_Endpoint):
    """The consumer of a channel: subscribe with topic patterns, then ``poll()``.

    ``poll(limit)`` dispatches up to ``limit`` waiting messages inline and returns how
    many, taking them from the producer slots round robin; subscribers get
    :class:`ShmMessage` objects whose ``payload`` is a read-only view into shared memory
    (``msg.producer``: the slot it came from). ``poll_batch(handler, limit)`` hands
    them to ``handler`` as tuples instead. Errors in subscribers are counted and passed
    to ``on_error(exc, msg, subscription)`` (default: logged); delivery goes on.
    """

    role = CONSUMER

    def __init__(self, name: str, *, on_error: Callable[..., Any] | None = None,
                 create: bool = False, attach_timeout: float = 2.0, **geometry: int) -> None:
        self._latency = Histogram()
        self._open(name, attach_timeout, create, geometry)
        try:
            cores = _bind_lanes(_shmcore.ConsumerCore, self.segment, self.layout)
            self._core, self._cores = cores[0], tuple(cores)
            core = cores[0]
            core.on_error = on_error
            core._set_siblings(cores[1:])
            for lane in cores:
                lane._set_latency(self._latency.counts)
            previous = self._claim_slot(core, attach_timeout)
            if previous is None:
                pid = abs(core._load_signed(self._role_off + L.ROLE_PID))
                if pid == os.getpid():
                    raise RoleTaken(f"this process already is the consumer of {self.name!r}")
                raise RoleTaken(f"the consumer of {self.name!r} is pid {pid}, alive")
            self.taken_over = previous
            self._finish_claim(core)
        except BaseException:
            self._abandon()
            raise
        _ENDPOINTS.add(self)
        # the core's own bound methods: no extra call layer on the hot path
        self.poll = core.poll if len(cores) == 1 else core.poll_all  # type: ignore[method-assign]
        self.poll_batch = core.poll_batch  # type: ignore[method-assign]
        self.poll_copies = core.poll_copies  # type: ignore[method-assign]
        self.wait = core.wait  # type: ignore[method-assign]

    def poll(self, limit: int = 256) -> int:
        """Dispatch up to ``limit`` waiting messages to the subscribers; returns how many."""
        return self._core.poll_all(limit)  # type: ignore[no-any-return]

    def poll_batch(self, handler: Callable[[tuple[Message, ...]], Any], limit: int = 256) -> int:
        """Call ``handler(messages)`` with tuples of waiting messages (up to ``limit`` in
        all, one tuple per producer slot with messages; subscriptions are not consulted).

        The messages live until ``handler`` returns (``retain()`` the ones to keep); a
        handler that raises counts every message of its tuple as an error.
        """
        return self._core.poll_batch(handler, limit)  # type: ignore[no-any-return]

    def poll_copies(self, out: list[tuple[str, list[bytes], int]], limit: int = 256) -> int:
        """Copy up to ``limit`` waiting messages out as bytes and give their blocks back at
        once (subscriptions are not consulted); returns how many.

        Appends one ``(topic, [payload, ...], largest)`` tuple to ``out`` per run of
        consecutive messages on one topic, in arrival order (``largest``: the longest
        payload of the run); what was copied before an error is in ``out`` when it raises.
        """
        return self._core.poll_copies(out, limit)  # type: ignore[no-any-return]

    def wait(self, timeout: float | None = None, spin_us: float = 20.0) -> bool:
        """Block until a message is waiting (True) or ``timeout`` seconds pass (False).

        Spins for ``spin_us`` µs, then sleeps on a futex in the segment (Linux; elsewhere
        it polls every 50 µs) that the producers wake after their next publish. The GIL is
        released while sleeping. Signals interrupt the wait (KeyboardInterrupt works).
        """
        return self._core.wait(timeout, spin_us)  # type: ignore[no-any-return]

    def _recover_own_role(self) -> None:
        reclaimed = requeued = 0
        for core in self._cores:
            a, b = core._reclaim_consumer()
            core._start()
            reclaimed, requeued = reclaimed + a, requeued + b
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

    # -- counters (summed over the producer slots) ----------------------------------------------
    def _sum(self, attr: str) -> int:
        return sum(getattr(core, attr) for core in self._cores)

    @property
    def received(self) -> int:
        return self._sum("received")

    @property
    def delivered(self) -> int:
        """Subscriber calls that returned normally (batch handlers: messages)."""
        return self._sum("delivered")

    @property
    def errors(self) -> int:
        """Subscriber calls that raised (batch handlers: messages)."""
        return self._sum("errors")

    @property
    def hook_errors(self) -> int:
        """Times the ``on_error`` hook itself raised."""
        return self._sum("hook_errors")

    @property
    def gaps(self) -> int:
        """Messages missing from the producers' sequences (dropped by their policy)."""
        return self._sum("gaps")

    @property
    def lost(self) -> int:
        """Messages claimed by producers that died before committing them."""
        return self._counter(L.OFF_LOST)

    @property
    def last_seq(self) -> int:
        """The last sequence number seen from slot 0 (``producer_info()`` for the others)."""
        return self._core.last_seq  # type: ignore[no-any-return]

    @property
    def redelivered(self) -> int:
        """Messages seen again (a dead consumer's messages, delivered to its successor)."""
        return self._sum("redelivered")

    @property
    def retained(self) -> int:
        """Messages kept by ``retain()`` and not yet released."""
        return self._sum("retained")

    @property
    def leaked_views(self) -> int:
        """Messages whose payload view outlived them (their block was held back)."""
        return self._sum("leaked_views")

    @property
    def deferred(self) -> int:
        """Blocks held back by leaked views right now (after a sweep)."""
        return self._sum("deferred")

    def producer_info(self) -> list[ProducerInfo]:
        """Every producer slot: holder, liveness and counters."""
        out = []
        for slot, core in enumerate(self._cores):
            alive = core.peer()[1]
            state = core._load(L.OFF_PRODUCER + L.ROLE_STATE)
            out.append(ProducerInfo(
                slot=slot, pid=core._load_signed(L.OFF_PRODUCER + L.ROLE_PID), alive=alive,
                state=L.ROLE_STATES[state] if state < len(L.ROLE_STATES) else f"?{state}",
                published=core._load(L.OFF_PUBLISHED), received=core.received,
                queued=core.queued, gaps=core.gaps, dropped=core._load(DROPPED),
                lost=core._load(L.OFF_LOST)))
        return out

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
    def recover_producers(self) -> dict[int, tuple[int, int]]:
        """Reclaim the blocks of every dead (or closed) producer slot while the others go
        on: {slot: (blocks reclaimed, messages lost)} for the slots recovered. The dead
        producer's committed messages stay queued and are delivered; a new writer can
        then take the slot."""
        done = {}
        for slot, core in enumerate(self._cores):
            pid = core._load_signed(L.OFF_PRODUCER + L.ROLE_PID)
            state = core._load(L.OFF_PRODUCER + L.ROLE_STATE)
            if pid == 0 and state != L.STATE_CLOSED:
                continue              # never used, or already recovered
            if not lock_dead_role(core, L.OFF_PRODUCER):
                continue              # alive
            try:
                done[slot] = reclaim_dead_producer(core)
                core._store(L.OFF_SPARES, 0)
            finally:
                unlock_role(core, L.OFF_PRODUCER, L.STATE_RECOVERED)
        return done

    def recover_producer(self) -> int | None:
        """Reclaim the blocks of the dead (or closed) producers; returns how many, or None
        if no producer slot needed it (every holder alive)."""
        done = self.recover_producers()
        return sum(blocks for blocks, _ in done.values()) if done else None

    # -- lifecycle / stats --------------------------------------------------------------------
    def _can_close(self) -> bool:
        return not self.retained and not self.deferred

    def close(self) -> None:
        """Give up the consumer role (BlocksStillLive while messages are retained or views
        of them are alive; the reader stays open then)."""
        if not self.bound:
            return
        deferred = 0
        for core in self._cores:
            try:
                deferred += core._sweep()
            except SegmentCorrupted:  # a corrupt segment cannot take the blocks back
                deferred += core.parked
        if self.retained or deferred:
            raise BlocksStillLive(f"channel {self.name!r}: {self.retained} retained "
                                  f"message(s) and {deferred} leaked view(s) still hold "
                                  "shared blocks")
        self._detach()

    @property
    def latency(self) -> Histogram:
        """Publish->deliver latency (ns), recorded before the subscribers run."""
        return self._latency

    def stats(self) -> ChannelStats:
        deferred = sum(core._sweep() for core in self._cores)
        return ChannelStats(
            name=self.name, role=self.role, published=self._counter(L.OFF_PUBLISHED),
            received=self.received, delivered=self.delivered,
            dropped=self._counter(DROPPED), rejected=self._counter(REJECTED),
            waits=self._counter(WAITS), gaps=self.gaps, queued=self.queued,
            errors=self.errors, leaked_views=self.leaked_views, deferred=deferred,
            retained=self.retained, latency=self._latency.summary(), blocks=self._blocks(),
            lost=self.lost, producers=self.layout.producers)

    def __repr__(self) -> str:
        if self._core is None:
            return "<ChannelReader (not attached)>"
        state = "closed" if self.closed else f"received={self.received}"
        return f"<ChannelReader {self.name!r} producers={self.layout.producers} {state}>"
