"""Byte layout of a shared-memory channel segment (N producers, one consumer).

A segment is ``producers`` *lanes* of ``lane_size`` bytes each, one per producer slot;
every lane is a complete single-producer channel (its own descriptor ring, topic
table, free rings and pools), so a producer never shares a cursor or a block with
another one. Lane ``i`` starts at ``i * lane_size``; offsets below are relative to it::

    0        header page (4 KiB): role slots, counters, ring cursors (lane 0's page also
             holds the segment's identity and geometry, the consumer's role slot and the
             consumer's futex word)
    ring     ring_capacity descriptors of 32 bytes (seq, publish_ns, topic id, length, block)
    topics   max_topics entries of TOPIC_ENTRY bytes (u16 length + UTF-8), append-only
    free     per size class: a ring of u32 block indices (the pool's free list)
    owners   one byte per block: who owns it (FREE/PRODUCER/QUEUED/CONSUMER), for recovery
    pools    per size class: blocks_per_class blocks of min_size << class bytes

Every cursor written by one side lives on its own 128-byte line (no false sharing).
All integers are native little-endian; the segment is only shared on one machine.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hftalloc.errors import SegmentError

__all__ = ["Layout"]

MAGIC = int.from_bytes(b"HFTALLC1", "little")
VERSION = 2
HEADER_SIZE = 4096
LINE = 128
DESC_SIZE = 32
TOPIC_ENTRY = 256  # u16 length + up to 254 bytes of UTF-8
MAX_TOPIC_BYTES = TOPIC_ENTRY - 2
MAX_CLASSES = 15
MAX_BLOCKS_PER_CLASS = (1 << 24) - 1
MAX_PRODUCERS = 64

# -- header offsets (bytes) -----------------------------------------------------------------
OFF_MAGIC = 0  # u64
OFF_VERSION = 8  # u32
OFF_HEADER_SIZE = 12  # u32
OFF_READY = 16  # u64, 1 once the creator has initialised everything (release store)
OFF_TOTAL_SIZE = 24  # u64
OFF_RING_CAPACITY = 32  # u32
OFF_NUM_CLASSES = 36  # u32
OFF_MIN_SIZE = 40  # u32
OFF_BLOCKS_PER_CLASS = 44  # u32
OFF_MAX_TOPICS = 48  # u32
OFF_FREE_CAPACITY = 52  # u32
OFF_CREATED_NS = 56  # u64 (wall clock)
OFF_CREATOR_PID = 64  # i64
OFF_CREATOR_TICKS = 72  # u64
OFF_RING = 80  # u64 offsets of the regions
OFF_TOPICS = 88
OFF_FREE = 96
OFF_OWNERS = 104
OFF_POOLS = 112
OFF_PRODUCERS = 120  # u32: producer slots (lanes)
OFF_LANE_SIZE = 128  # u64: bytes per lane
OFF_POOLS_END = 136  # u64: end of the pools in a lane (before page alignment)

# role slots: one line each
OFF_PRODUCER = 256
OFF_CONSUMER = 384
ROLE_PID = 0  # i64: 0 vacant, >0 attached, <0 being taken over by -pid
ROLE_TICKS = 8  # u64: process start time (clock ticks since boot), 0 if unknown
ROLE_HEARTBEAT = 16  # u64: wall-clock ns of the last sign of life
ROLE_STATE = 24  # u64: see ROLE_STATES
ROLE_ATTACHES = 32  # u64: how many processes took this role so far
ROLE_RECOVERIES = 40  # u64: how many times a dead holder's blocks were reclaimed
ROLE_POLICY = 48  # u64: producer policy index (informational)
ROLE_SESSION = 56  # u64: token of the endpoint holding the slot (released only by it)
ROLE_STATES = ("never", "attached", "closed", "recovered")
STATE_NEVER, STATE_ATTACHED, STATE_CLOSED, STATE_RECOVERED = range(4)

# producer-written counters (cold) and consumer-written counters (cold)
OFF_PRODUCER_STATS = 512  # dropped, rejected, waits, claims_aborted, bytes
OFF_CONSUMER_STATS = 640  # errors, leaked_views, reclaimed, duplicates
OFF_SPARES = 552  # u64 producer: blocks it holds as spares (not messages)
OFF_LOST = 672  # u64 any recoverer: messages a dead producer claimed and never committed
# hot cursors
OFF_HEAD = 1024  # u64 producer: descriptors published
OFF_NEXT_SEQ = 1032  # u64 producer: next sequence number (dropped ones consume one)
OFF_PUBLISHED = 1040  # u64 producer: messages published
OFF_TAIL = 1152  # u64 consumer: descriptors consumed
OFF_LAST_SEQ = 1160  # u64 consumer: last sequence number seen
OFF_GAPS = 1168  # u64 consumer: messages missing from the sequence
OFF_RECEIVED = 1176  # u64 consumer: messages received
OFF_TOPIC_COUNT = 1280  # u64 producer: entries in the topic table
OFF_WAITING = 1408  # u32 futex word: 1 while the consumer sleeps in wait() (own line)
OFF_FREE_CURSORS = 2048  # per class c: FHEAD at +c*LINE (consumer), FTAIL at +c*LINE+64 (producer)

# block owners
FREE, PRODUCER, QUEUED, CONSUMER = range(4)
OWNER_NAMES = ("free", "producer", "queued", "consumer")

POLICIES = ("raise", "drop", "block")

_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True, slots=True)
class Layout:
    """Geometry of a channel segment and the offsets derived from it."""

    ring_capacity: int = 1024
    num_classes: int = 8
    min_size: int = 64
    blocks_per_class: int = 1024
    max_topics: int = 1024
    producers: int = 1

    def __post_init__(self) -> None:
        for name in ("ring_capacity", "num_classes", "min_size", "blocks_per_class", "max_topics",
                     "producers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                hint = (" (a channel segment has one count for every class)"
                        if name == "blocks_per_class" else "")
                raise TypeError(f"{name} must be an int, not {type(value).__name__}{hint}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.ring_capacity & (self.ring_capacity - 1) or self.ring_capacity > 1 << 24:
            raise ValueError(f"ring_capacity must be a power of two <= 2**24, "
                             f"got {self.ring_capacity}")
        if self.min_size & (self.min_size - 1) or self.min_size < 8:
            raise ValueError(f"min_size must be a power of two >= 8, got {self.min_size}")
        if self.num_classes > MAX_CLASSES:
            raise ValueError(f"num_classes must be <= {MAX_CLASSES}, got {self.num_classes}")
        if self.max_size > 1 << 30:
            raise ValueError(f"the largest class ({self.max_size} B) must be <= 1 GiB")
        if self.blocks_per_class > MAX_BLOCKS_PER_CLASS:
            raise ValueError(f"blocks_per_class must be <= {MAX_BLOCKS_PER_CLASS}")
        if self.max_topics > 1 << 20:
            raise ValueError("max_topics must be <= 2**20")
        if self.producers > MAX_PRODUCERS:
            raise ValueError(f"producers must be <= {MAX_PRODUCERS}, got {self.producers}")

    # -- geometry -------------------------------------------------------------------------
    @property
    def max_size(self) -> int:
        return self.min_size << (self.num_classes - 1)

    @property
    def class_sizes(self) -> tuple[int, ...]:
        return tuple(self.min_size << c for c in range(self.num_classes))

    @property
    def free_capacity(self) -> int:
        return _pow2_at_least(self.blocks_per_class)

    @property
    def total_blocks(self) -> int:
        return self.num_classes * self.blocks_per_class

    @property
    def ring_offset(self) -> int:
        return HEADER_SIZE

    @property
    def topics_offset(self) -> int:
        return self.ring_offset + self.ring_capacity * DESC_SIZE

    @property
    def free_offset(self) -> int:
        return _align(self.topics_offset + self.max_topics * TOPIC_ENTRY, LINE)

    @property
    def owners_offset(self) -> int:
        return _align(self.free_offset + self.num_classes * self.free_capacity * 4, LINE)

    @property
    def pools_offset(self) -> int:
        return _align(self.owners_offset + self.total_blocks, 4096)

    @property
    def pools_end(self) -> int:
        return self.pools_offset + self.blocks_per_class * sum(self.class_sizes)

    @property
    def lane_size(self) -> int:
        """Bytes of one producer's lane (page aligned)."""
        return _align(self.pools_end, 4096)

    @property
    def total_size(self) -> int:
        return self.producers * self.lane_size

    def lane_offset(self, lane: int) -> int:
        if not 0 <= lane < self.producers:
            raise ValueError(f"producer slot {lane} out of range (0..{self.producers - 1})")
        return lane * self.lane_size

    def geometry(self) -> dict[str, int]:
        """The arguments that make this layout (what ``open_or_create`` compares)."""
        return {"producers": self.producers, "ring_capacity": self.ring_capacity,
                "num_classes": self.num_classes, "min_size": self.min_size,
                "blocks_per_class": self.blocks_per_class, "max_topics": self.max_topics}

    def core_args(self, lane: int = 0) -> tuple[int, ...]:
        """The numbers the compiled core binds lane ``lane`` with (``ChannelCore._bind``)."""
        return (lane, self.lane_offset(lane), self.ring_capacity, self.num_classes,
                self.min_size, self.blocks_per_class, self.max_topics, self.free_capacity,
                self.ring_offset, self.topics_offset, self.free_offset, self.owners_offset,
                self.pools_offset, self.lane_size)

    # -- header ---------------------------------------------------------------------------
    def write_header(self, buf: memoryview, *, created_ns: int, pid: int, ticks: int) -> None:
        """Fill the geometry part of a fresh (zeroed) header; READY is set by the caller."""
        _U64.pack_into(buf, OFF_MAGIC, MAGIC)
        _U32.pack_into(buf, OFF_VERSION, VERSION)
        _U32.pack_into(buf, OFF_HEADER_SIZE, HEADER_SIZE)
        _U64.pack_into(buf, OFF_TOTAL_SIZE, self.total_size)
        _U32.pack_into(buf, OFF_RING_CAPACITY, self.ring_capacity)
        _U32.pack_into(buf, OFF_NUM_CLASSES, self.num_classes)
        _U32.pack_into(buf, OFF_MIN_SIZE, self.min_size)
        _U32.pack_into(buf, OFF_BLOCKS_PER_CLASS, self.blocks_per_class)
        _U32.pack_into(buf, OFF_MAX_TOPICS, self.max_topics)
        _U32.pack_into(buf, OFF_FREE_CAPACITY, self.free_capacity)
        _U32.pack_into(buf, OFF_PRODUCERS, self.producers)
        _U64.pack_into(buf, OFF_LANE_SIZE, self.lane_size)
        _U64.pack_into(buf, OFF_POOLS_END, self.pools_end)
        _U64.pack_into(buf, OFF_CREATED_NS, created_ns)
        _I64.pack_into(buf, OFF_CREATOR_PID, pid)
        _U64.pack_into(buf, OFF_CREATOR_TICKS, ticks)
        for off, value in ((OFF_RING, self.ring_offset), (OFF_TOPICS, self.topics_offset),
                           (OFF_FREE, self.free_offset), (OFF_OWNERS, self.owners_offset),
                           (OFF_POOLS, self.pools_offset)):
            _U64.pack_into(buf, off, value)

    @classmethod
    def read_header(cls, buf: memoryview | bytes, name: str = "?") -> Layout:
        """The layout recorded in a segment, checked against its size and derived offsets."""
        if len(buf) < HEADER_SIZE:
            raise SegmentError(f"segment {name!r} is {len(buf)} bytes, smaller than a header")
        if _U64.unpack_from(buf, OFF_MAGIC)[0] != MAGIC:
            raise SegmentError(f"segment {name!r} is not an hftalloc channel (bad magic)")
        version = _U32.unpack_from(buf, OFF_VERSION)[0]
        if version != VERSION:
            raise SegmentError(f"segment {name!r} has layout version {version}, "
                               f"this hftalloc speaks {VERSION}")
        try:
            layout = cls(
                ring_capacity=_U32.unpack_from(buf, OFF_RING_CAPACITY)[0],
                num_classes=_U32.unpack_from(buf, OFF_NUM_CLASSES)[0],
                min_size=_U32.unpack_from(buf, OFF_MIN_SIZE)[0],
                blocks_per_class=_U32.unpack_from(buf, OFF_BLOCKS_PER_CLASS)[0],
                max_topics=_U32.unpack_from(buf, OFF_MAX_TOPICS)[0],
                producers=_U32.unpack_from(buf, OFF_PRODUCERS)[0],
            )
        except (TypeError, ValueError) as exc:
            raise SegmentError(f"segment {name!r} has an invalid geometry: {exc}") from None
        recorded = [_U64.unpack_from(buf, off)[0] for off in
                    (OFF_TOTAL_SIZE, OFF_RING, OFF_TOPICS, OFF_FREE, OFF_OWNERS, OFF_POOLS,
                     OFF_LANE_SIZE, OFF_POOLS_END)]
        derived = [layout.total_size, layout.ring_offset, layout.topics_offset,
                   layout.free_offset, layout.owners_offset, layout.pools_offset,
                   layout.lane_size, layout.pools_end]
        if recorded != derived or _U32.unpack_from(buf, OFF_FREE_CAPACITY)[0] != \
                layout.free_capacity:
            raise SegmentError(f"segment {name!r}: recorded offsets do not match its geometry")
        if layout.total_size > len(buf):
            raise SegmentError(f"segment {name!r} is {len(buf)} bytes but its layout needs "
                               f"{layout.total_size}")
        return layout


def read_u64(buf: memoryview | bytes, offset: int) -> int:
    return _U64.unpack_from(buf, offset)[0]


def read_i64(buf: memoryview | bytes, offset: int) -> int:
    return _I64.unpack_from(buf, offset)[0]
