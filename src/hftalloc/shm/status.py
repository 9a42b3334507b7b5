"""Inspect, recover and clean up channel segments (behind ``python -m hftalloc``).

A segment is *in use* while its creator, one of its producers or its consumer is alive
(pid checked together with the process start time, so a reused pid does not count). A
segment nobody uses any more is *dead*: ``cleanup`` unlinks it. ``recover`` reclaims
the blocks of dead producers or of a dead consumer of a live segment, so new ones can
attach. Every producer slot is shown (:class:`ProducerStatus`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from hftalloc.errors import SegmentError
from hftalloc.shm import _core as _shmcore
from hftalloc.shm import layout as L
from hftalloc.shm.channel import (
    DROPPED,
    REJECTED,
    lock_dead_role,
    open_segment,
    reclaim_dead_producer,
    unlock_role,
)
from hftalloc.shm.layout import Layout, read_i64, read_u64
from hftalloc.shm.liveness import pid_alive
from hftalloc.shm.segment import Segment, full_name, list_segments, unlink

__all__ = ["ProducerStatus", "RoleStatus", "SegmentStatus", "cleanup", "recover",
           "segment_status", "statuses"]


@dataclass(frozen=True, slots=True)
class RoleStatus:
    """One role slot (producer or consumer) of a channel."""

    pid: int  # 0: vacant; negative: being taken over by -pid
    alive: bool | None  # None when vacant
    state: str
    heartbeat_age: float | None  # seconds since the last heartbeat (None: never)
    attaches: int
    recoveries: int


@dataclass(frozen=True, slots=True)
class ProducerStatus:
    """One producer slot: its role and its lane's counters."""

    slot: int
    role: RoleStatus
    policy: str
    published: int
    received: int
    queued: int
    dropped: int
    rejected: int
    gaps: int
    lost: int
    topics: int


@dataclass(frozen=True, slots=True)
class SegmentStatus:
    """What ``python -m hftalloc status`` shows about one segment."""

    name: str
    size: int
    valid: bool
    problem: str = ""
    creator_pid: int = 0
    creator_alive: bool = False
    age: float = 0.0
    producer: RoleStatus | None = None
    consumer: RoleStatus | None = None
    policy: str = ""
    published: int = 0
    received: int = 0
    queued: int = 0
    dropped: int = 0
    rejected: int = 0
    gaps: int = 0
    topics: int = 0
    lost: int = 0
    geometry: dict[str, int] = field(default_factory=dict)
    blocks: dict[int, list[int]] = field(default_factory=dict)
    producers: tuple[ProducerStatus, ...] = ()

    @property
    def in_use(self) -> bool:
        """Some process that may still use the segment is alive."""
        if not self.valid:
            return self.creator_alive
        roles = [self.consumer] + [p.role for p in self.producers]
        return self.creator_alive or any(role is not None and role.alive for role in roles)

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["in_use"] = self.in_use
        return data


def _role(buf: memoryview, off: int, now_ns: int) -> RoleStatus:
    pid = read_i64(buf, off + L.ROLE_PID)
    beat = read_u64(buf, off + L.ROLE_HEARTBEAT)
    state = read_u64(buf, off + L.ROLE_STATE)
    if pid > 0:
        alive: bool | None = pid_alive(pid, read_u64(buf, off + L.ROLE_TICKS))
    elif pid < 0:
        alive = pid_alive(-pid)
    else:
        alive = None
    return RoleStatus(
        pid=pid, alive=alive,
        state=L.ROLE_STATES[state] if state < len(L.ROLE_STATES) else f"?{state}",
        heartbeat_age=(now_ns - beat) / 1e9 if beat else None,
        attaches=read_u64(buf, off + L.ROLE_ATTACHES),
        recoveries=read_u64(buf, off + L.ROLE_RECOVERIES))


def segment_status(name: str) -> SegmentStatus:
    """Read a segment's header without attaching to it (read-only mapping)."""
    try:
        seg = Segment(name, readonly=True, wait=0.0)
    except SegmentError as exc:
        return SegmentStatus(full_name(name), 0, False, str(exc))
    try:
        with memoryview(seg.buffer) as buf:
            status = _read(seg, buf)
        if seg.truncated:
            return SegmentStatus(seg.name, seg.size, False, "truncated by another process "
                                 "while it was being read", status.creator_pid)
        return status
    finally:
        seg.close()


def _read(seg: Segment, buf: memoryview) -> SegmentStatus:
    now = time.time_ns()
    creator = read_i64(buf, L.OFF_CREATOR_PID) if len(buf) >= L.HEADER_SIZE else 0
    creator_alive = creator > 0 and pid_alive(creator, read_u64(buf, L.OFF_CREATOR_TICKS))
    try:
        if not read_u64(buf, L.OFF_READY):
            raise SegmentError("not initialised (its creator died while creating it?)")
        layout = Layout.read_header(buf, seg.name)
    except (SegmentError, IndexError, ValueError) as exc:
        return SegmentStatus(seg.name, seg.size, False, str(exc), creator, creator_alive)
    blocks = {size: [0, 0, 0, 0] for size in layout.class_sizes}
    lanes = []
    for slot in range(layout.producers):
        base = layout.lane_offset(slot)
        owners = bytes(buf[base + layout.owners_offset:
                           base + layout.owners_offset + layout.total_blocks])
        for c, size in enumerate(layout.class_sizes):
            row = owners[c * layout.blocks_per_class:(c + 1) * layout.blocks_per_class]
            for owner in range(4):
                blocks[size][owner] += row.count(bytes([owner]))
        policy = read_u64(buf, base + L.OFF_PRODUCER + L.ROLE_POLICY)
        lanes.append(ProducerStatus(
            slot=slot, role=_role(buf, base + L.OFF_PRODUCER, now),
            policy=L.POLICIES[policy] if policy < len(L.POLICIES) else "?",
            published=read_u64(buf, base + L.OFF_PUBLISHED),
            received=read_u64(buf, base + L.OFF_RECEIVED),
            queued=(read_u64(buf, base + L.OFF_HEAD) - read_u64(buf, base + L.OFF_TAIL))
            % 2**64,
            dropped=read_u64(buf, base + DROPPED), rejected=read_u64(buf, base + REJECTED),
            gaps=read_u64(buf, base + L.OFF_GAPS), lost=read_u64(buf, base + L.OFF_LOST),
            topics=read_u64(buf, base + L.OFF_TOPIC_COUNT)))

    def total(attr: str) -> int:
        return sum(getattr(lane, attr) for lane in lanes) % 2**64

    return SegmentStatus(
        name=seg.name, size=seg.size, valid=True, creator_pid=creator,
        creator_alive=creator_alive, age=(now - read_u64(buf, L.OFF_CREATED_NS)) / 1e9,
        producer=lanes[0].role, consumer=_role(buf, L.OFF_CONSUMER, now),
        policy=lanes[0].policy, published=total("published"), received=total("received"),
        queued=total("queued"), dropped=total("dropped"), rejected=total("rejected"),
        gaps=total("gaps"), topics=total("topics"), lost=total("lost"),
        geometry=layout.geometry(), blocks=blocks, producers=tuple(lanes))


def statuses() -> list[SegmentStatus]:
    """The status of every hftalloc segment on this machine."""
    return [segment_status(name) for name in list_segments()]


def cleanup(names: list[str] | None = None, *, dry_run: bool = False, force: bool = False,
            invalid: bool = False) -> list[tuple[str, str]]:
    """Unlink dead segments (all, or only ``names``); returns (name, reason) per removal.

    ``invalid`` also removes segments that are not readable channels (unless their
    creator is alive); ``force`` removes segments in use too (their processes keep
    their mappings, but nobody new can attach).
    """
    removed = []
    for name in (list_segments() if names is None else [full_name(n) for n in names]):
        status = segment_status(name)
        if not status.valid and status.problem.startswith("no segment"):
            continue
        if force:
            reason = "forced"
        elif status.in_use:
            continue
        elif status.valid:
            reason = "no live creator, producer or consumer"
        elif invalid:
            reason = f"invalid: {status.problem}"
        else:
            continue
        try:
            if dry_run or unlink(name):
                removed.append((name, reason))
        except SegmentError:  # another user's segment: not ours to remove
            continue
    return removed


def recover(name: str, timeout: float = 2.0) -> dict[str, object]:
    """Reclaim the blocks held by dead producers and/or a dead consumer of a channel.

    A dead consumer's blocks always come back (the queues are kept for the next
    consumer). A dead producer's blocks are pushed back when the consumer role is free
    too; while a consumer is alive they are left marked, and the next producer of that
    slot adopts them (or the consumer calls ``recover_producers()``). ``producer`` is
    the outcome for slot 0, ``producers`` for every slot.
    """
    segment, layout = open_segment(name, timeout)
    result: dict[str, object] = {"name": segment.name, "pid": os.getpid()}
    cores: list[_shmcore.ChannelCore] = []
    try:
        for lane in range(layout.producers):
            core = _shmcore.ChannelCore()
            core._bind(segment.buffer, segment.name, *layout.core_args(lane))
            cores.append(core)
        head = cores[0]
        consumer_locked = lock_dead_role(head, L.OFF_CONSUMER)
        if consumer_locked:
            was_attached = head._load(L.OFF_CONSUMER + L.ROLE_STATE) == L.STATE_ATTACHED
            reclaimed = requeued = 0
            for core in cores:
                a, b = core._reclaim_consumer()
                reclaimed, requeued = reclaimed + a, requeued + b
            result["consumer"] = {"reclaimed": reclaimed, "requeued": requeued}
        else:
            result["consumer"] = "alive: left alone"
        outcomes: list[object] = []
        for core in cores:
            pid = core._load_signed(L.OFF_PRODUCER + L.ROLE_PID)
            state = core._load(L.OFF_PRODUCER + L.ROLE_STATE)
            if pid == 0 and state not in (L.STATE_CLOSED, L.STATE_ATTACHED):
                outcomes.append("vacant")
            elif not lock_dead_role(core, L.OFF_PRODUCER):
                outcomes.append("alive: left alone")
            elif consumer_locked:
                blocks, lost = reclaim_dead_producer(core)
                core._store(L.OFF_SPARES, 0)
                outcomes.append({"reclaimed": blocks, "lost": lost})
                unlock_role(core, L.OFF_PRODUCER, L.STATE_RECOVERED)
            else:  # only the consumer may push to the free rings: leave them to be adopted
                outcomes.append("dead, blocks left to the next producer (consumer alive)")
                unlock_role(core, L.OFF_PRODUCER, L.STATE_CLOSED, recovered=False)
        result["producer"] = outcomes[0]
        result["producers"] = outcomes
        if consumer_locked:
            unlock_role(head, L.OFF_CONSUMER,
                        L.STATE_RECOVERED if was_attached else
                        head._load(L.OFF_CONSUMER + L.ROLE_STATE), recovered=was_attached)
        counts = [core.owner_counts() for core in cores]
        result["blocks"] = {size: [sum(lane[c][k] for lane in counts) for k in range(4)]
                            for c, size in enumerate(layout.class_sizes)}
    finally:
        for core in cores:
            core._unbind()
        segment.close()
    return result
