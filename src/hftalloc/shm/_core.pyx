# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: freethreading_compatible = False
"""Compiled core of the shared-memory channel (see ``hftalloc.shm.layout``).

One producer process and one consumer process share a segment holding a ring of
32-byte message descriptors and power-of-two size-class pools. Synchronisation is by
memory ordering only (no locks): every cursor has exactly one writer, which publishes
it with a release store; the other side reads it with an acquire load.

Producer, per message: take a block index from the class's free ring (acquire
``fhead``), mark the block PRODUCER, advance ``ftail``; copy the payload; write the
descriptor; mark the block QUEUED; release-store ``head``.
Consumer, per message: acquire ``head``; read the descriptor (every field checked
against the geometry); mark the block CONSUMER; release-store ``tail``; dispatch; when
the message is no longer used (subscribers returned, retains released, no buffer
export left) mark the block FREE, write it into the free ring and release-store
``fhead``.

Everything read from the segment is untrusted: any process of the same user can write
it. Indices, counts and offsets are bounded before use; each side keeps a private map
of the blocks it holds, so a block pushed twice into a free ring, or queued twice, is
refused (``SegmentCorrupted``) instead of being handed out twice. A truncated segment
is caught by the SIGBUS guard (``hft_shm_guard.h``): the mapping turns into zero pages
and the next check raises ``SegmentCorrupted``. The owner bytes let a surviving or
replacing process reclaim the blocks of a dead one (``_reclaim_*``).

The cores are complete: topic registration, the full-ring policies (raise, drop,
block with timeout and peer check), subscriptions and subscriber errors are done here.
``hftalloc.shm.channel`` composes them with role handling and re-exports their hot
methods.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.exc cimport PyErr_CheckSignals
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_New, PyTuple_SET_ITEM
from libc.errno cimport errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset, strerror

from hftalloc._atomic cimport (
    ca_add_u64,
    ca_cas_i64,
    ca_cas_u32,
    ca_fence_seq_cst,
    ca_load_acquire_u8,
    ca_load_acquire_u64,
    ca_load_relaxed_u32,
    ca_load_relaxed_u64,
    ca_load_seq_cst_u32,
    ca_store_release_u8,
    ca_store_release_u64,
    ca_store_relaxed_u64,
    ca_store_seq_cst_u32,
)
from hftalloc._futex cimport (
    HFT_HAS_FUTEX,
    hft_clock_monotonic_ns,
    hft_clock_realtime_ns,
    hft_futex_wait_shared,
    hft_futex_wake_shared,
    hft_sleep_ns,
)
from hftalloc._cdefs cimport HFT_HEADER, HFT_MAX_VALUE, HFT_NUM_BUCKETS, HFT_SUB_BITS
from hftalloc._cdefs cimport (
    hft_hist_record,
    hft_list_put,
    hft_refcnt,
    hft_view_rearm,
    hft_view_shared,
)
from hftalloc._message cimport (
    ABORTED,
    CLAIMED,
    COMMITTED,
    IN_FLIGHT,
    POLICY_BLOCK,
    POLICY_DROP,
    POLICY_RAISE,
    RELEASED,
    RETAINED,
    Message,
    MessageOwner,
    not_copyable,
    views_settled,
)

import logging
from os import getpid

from hftalloc.bus import Subscription
from hftalloc.errors import (
    BlocksStillLive,
    BufferStillExported,
    ChannelClosed,
    ChannelFull,
    EndpointForked,
    InvalidTopic,
    NotSubscribed,
    PeerDead,
    SegmentCorrupted,
    SegmentError,
    SizeTooLarge,
    TopicTableFull,
)
from hftalloc.histogram import HEADER as _PY_HEADER
from hftalloc.histogram import MAX_VALUE as _PY_MAX_VALUE
from hftalloc.histogram import NUM_BUCKETS as _PY_NUM_BUCKETS
from hftalloc.histogram import SUB_BITS as _PY_SUB_BITS
from hftalloc.shm import layout as _L
from hftalloc.shm.liveness import pid_alive
from hftalloc.topics import matches, split_pattern, validate_topic

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil

log = logging.getLogger("hftalloc.shm")

# -- latency histogram (hft_histogram.h: the layout of hftalloc.histogram) ----------------------
if (_PY_SUB_BITS, _PY_HEADER, _PY_MAX_VALUE, _PY_NUM_BUCKETS) != (
        HFT_SUB_BITS, HFT_HEADER, HFT_MAX_VALUE, HFT_NUM_BUCKETS):
    raise ImportError("hftalloc.shm._core was built for another histogram layout; rebuild it")

# -- layout constants (checked against hftalloc.shm.layout at import) ---------------------------
cdef enum:
    HEADER_SIZE = 4096
    DESC_SIZE = 32
    TOPIC_ENTRY = 256
    MAX_TOPIC_BYTES = 254
    OFF_PRODUCER = 256
    OFF_CONSUMER = 384
    ROLE_PID = 0
    ROLE_TICKS = 8
    ROLE_HEARTBEAT = 16
    OFF_DROPPED = 512
    OFF_REJECTED = 520
    OFF_WAITS = 528
    OFF_SPARES = 552
    OFF_LOST = 672
    OFF_HEAD = 1024
    OFF_NEXT_SEQ = 1032
    OFF_PUBLISHED = 1040
    OFF_TAIL = 1152
    OFF_LAST_SEQ = 1160
    OFF_GAPS = 1168
    OFF_RECEIVED = 1176
    OFF_TOPIC_COUNT = 1280
    OFF_WAITING = 1408
    OFF_FREE_CURSORS = 2048
    LINE = 128
    OWN_FREE = 0
    OWN_PRODUCER = 1
    OWN_QUEUED = 2
    OWN_CONSUMER = 3

if (MAX_CLASSES, HEADER_SIZE, DESC_SIZE, TOPIC_ENTRY, MAX_TOPIC_BYTES, OFF_PRODUCER,
        OFF_CONSUMER, ROLE_PID, ROLE_TICKS, ROLE_HEARTBEAT, OFF_DROPPED, OFF_SPARES, OFF_LOST,
        OFF_HEAD, OFF_NEXT_SEQ,
        OFF_PUBLISHED, OFF_TAIL, OFF_LAST_SEQ, OFF_GAPS, OFF_RECEIVED, OFF_TOPIC_COUNT,
        OFF_WAITING, OFF_FREE_CURSORS, LINE, OWN_FREE, OWN_PRODUCER, OWN_QUEUED,
        OWN_CONSUMER) != (
        _L.MAX_CLASSES, _L.HEADER_SIZE, _L.DESC_SIZE, _L.TOPIC_ENTRY, _L.MAX_TOPIC_BYTES,
        _L.OFF_PRODUCER, _L.OFF_CONSUMER, _L.ROLE_PID, _L.ROLE_TICKS, _L.ROLE_HEARTBEAT,
        _L.OFF_PRODUCER_STATS, _L.OFF_SPARES, _L.OFF_LOST, _L.OFF_HEAD, _L.OFF_NEXT_SEQ, _L.OFF_PUBLISHED, _L.OFF_TAIL,
        _L.OFF_LAST_SEQ, _L.OFF_GAPS, _L.OFF_RECEIVED, _L.OFF_TOPIC_COUNT, _L.OFF_WAITING,
        _L.OFF_FREE_CURSORS, _L.LINE, _L.FREE, _L.PRODUCER, _L.QUEUED, _L.CONSUMER) or \
        _L.POLICIES[POLICY_RAISE] != "raise" or _L.POLICIES[POLICY_DROP] != "drop" or \
        _L.POLICIES[POLICY_BLOCK] != "block":
    raise ImportError("hftalloc.shm._core was built for another segment layout; rebuild it")


# status codes of the non-raising producer calls (negative; a sequence number is > 0)
RING_FULL = -1
POOL_EMPTY = -2
TOO_LARGE = -3
CORRUPT = -4
cdef enum:
    C_RING_FULL = -1
    C_POOL_EMPTY = -2
    C_TOO_LARGE = -3
    C_CORRUPT = -4

# a consumer caches one Message per block for reuse when the geometry is this small or less
cdef Py_ssize_t MAX_CACHED_BLOCKS = 1 << 20

# a mark that is never set: the truncation mark of an unbound core
cdef uint32_t _NEVER_TRUNCATED = 0

HAS_FUTEX_WAIT = bool(HFT_HAS_FUTEX)
GUARD_SLOTS = HFT_GUARD_SLOTS


def load_u64(buffer, Py_ssize_t offset):
    """Acquire-load the u64 at ``offset`` of ``buffer`` (e.g. READY before the layout is known)."""
    cdef Py_buffer view
    cdef uint64_t value
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    try:
        if offset < 0 or offset & 7 or offset + 8 > view.len:
            raise ValueError(f"bad offset {offset}")
        value = ca_load_acquire_u64(<uint64_t*>(<char*>view.buf + offset))
    finally:
        PyBuffer_Release(&view)
    return value


def monotonic_ns():
    """CLOCK_MONOTONIC in ns: the clock of ``publish_ns`` (= time.perf_counter_ns on Linux)."""
    return hft_clock_monotonic_ns()


def wall_clock_ns():
    """CLOCK_REALTIME in ns: the clock of the heartbeats."""
    return hft_clock_realtime_ns()


def guard_repairs():
    """How many SIGBUS faults in truncated channel mappings this process has survived."""
    return hft_guard_repair_count()


cdef int _view_holders(PyObject* view) except -1:
    """0: no view or a released one; 1: only the message holds it; 2: someone else too."""
    cdef Py_ssize_t refs
    if view == <PyObject*>None:
        return 0
    refs = hft_refcnt(view)
    try:
        (<object>view).nbytes
    except ValueError:  # released by its holder: no export left
        return 0
    return 2 if refs > 1 else 1


# ---------------------------------------------------------------------------------------------
@cython.auto_pickle(False)
@cython.final
cdef class MappingGuard:
    """Registers a mapping with the SIGBUS guard while it lives (or until ``close()``).

    A fault in a registered mapping (its file was truncated by another process) turns
    the whole mapping into zero pages and sets ``truncated``; the process goes on.
    """

    def __cinit__(self, mapping, bint writable):
        cdef Py_buffer view
        self._slot = -1
        PyObject_GetBuffer(mapping, &view, PyBUF_SIMPLE)
        try:
            if view.len <= 0:
                raise SegmentError("cannot guard an empty mapping")
            if hft_guard_install() != 0:
                raise SegmentError(f"cannot install the SIGBUS guard: {strerror(errno).decode()}")
            self._slot = hft_guard_register(view.buf, <size_t>view.len, writable)
        finally:
            PyBuffer_Release(&view)
        if self._slot < 0:
            raise SegmentError(f"too many channel mappings in this process (at most "
                               f"{HFT_GUARD_SLOTS})")
        self._mapping = mapping

    def close(self):
        """Unregister (before the mapping is unmapped)."""
        if self._slot >= 0:
            hft_guard_unregister(self._slot)
            self._slot = -1
        self._mapping = None

    @property
    def truncated(self):
        return self._slot >= 0 and ca_load_relaxed_u32(hft_guard_mark(self._slot)) != 0

    def __dealloc__(self):
        if self._slot >= 0:
            hft_guard_unregister(self._slot)
            self._slot = -1

    def __reduce__(self):
        raise not_copyable(self)

    def __copy__(self):
        raise not_copyable(self)

    def __deepcopy__(self, memo):
        raise not_copyable(self)


# ---------------------------------------------------------------------------------------------
@cython.auto_pickle(False)
cdef class ChannelCore(MessageOwner):
    """A mapped channel segment: geometry, cursors, owner bytes and recovery (no role)."""

    def __cinit__(self, *args, **kwargs):
        self._bound = False
        self._name = "?"
        self._mark = &_NEVER_TRUNCATED
        self._other_off = -1

    def _bind(self, buffer, str name, uint32_t lane, uint64_t lane_off, uint32_t ring_cap,
              uint32_t num_classes, uint32_t min_size, uint32_t bpc, uint32_t max_topics,
              uint32_t free_cap, uint64_t ring_off, uint64_t topics_off, uint64_t free_off,
              uint64_t owners_off, uint64_t pools_off, uint64_t total_size):
        """Map lane ``lane`` (``total_size`` bytes at ``lane_off``) of ``buffer`` (a
        writable, guarded mapping of the segment); region offsets are lane-relative."""
        cdef uint32_t c
        cdef uint64_t off
        cdef int slot
        if self._bound:
            raise RuntimeError("already bound")
        if num_classes < 1 or num_classes > MAX_CLASSES or ring_cap == 0 or \
                ring_cap & (ring_cap - 1) or free_cap & (free_cap - 1) or free_cap < bpc or \
                bpc == 0 or bpc > 0xFFFFFF or min_size < 8 or min_size & (min_size - 1) or \
                <uint64_t>min_size << (num_classes - 1) > (1ULL << 30):
            raise SegmentCorrupted(f"segment {name!r}: invalid channel geometry")
        if self._forked_from:
            raise self._closed_error("endpoint")
        PyObject_GetBuffer(buffer, &self._view, PyBUF_WRITABLE)
        self._bound = True
        self._has_view = True
        slot = hft_guard_find(self._view.buf, <size_t>self._view.len)
        if slot < 0:
            self._release()
            raise SegmentError(f"segment {name!r}: the buffer is not a guarded channel mapping")
        if lane_off > <uint64_t>self._view.len or \
                <uint64_t>self._view.len - lane_off < total_size or \
                lane_off & 4095 or (lane_off == 0) != (lane == 0) or \
                ring_off < HEADER_SIZE or \
                ring_off + <uint64_t>ring_cap * DESC_SIZE > topics_off or \
                topics_off + <uint64_t>max_topics * TOPIC_ENTRY > free_off or \
                free_off + <uint64_t>num_classes * free_cap * 4 > owners_off or \
                owners_off + <uint64_t>num_classes * bpc > pools_off:
            self._release()
            raise SegmentCorrupted(f"segment {name!r}: channel regions overlap or exceed the "
                                   "segment")
        off = pools_off
        for c in range(num_classes):
            off += (<uint64_t>min_size << c) * bpc
        if off > total_size:
            self._release()
            raise SegmentCorrupted(f"segment {name!r}: channel pools exceed the segment")
        self._name = name
        self._mark = hft_guard_mark(slot)
        self.seg = <char*>self._view.buf
        self.base = self.seg + lane_off
        self._lane = lane
        self.total_size = total_size
        self.ring_cap = ring_cap
        self.ring_mask = ring_cap - 1
        self.num_classes = num_classes
        self.min_size = min_size
        self.min_shift = 63 - __builtin_clzll(min_size)
        self.bpc = bpc
        self.max_topics = max_topics
        self.free_cap = free_cap
        self.free_mask = free_cap - 1
        self.ring = self.base + ring_off
        self.topics = self.base + topics_off
        self.owners = <uint8_t*>(self.base + owners_off)
        off = pools_off
        for c in range(num_classes):
            self.class_size[c] = <uint64_t>min_size << c
            self.pools[c] = self.base + off
            off += self.class_size[c] * bpc
            self.free_rings[c] = <uint32_t*>(self.base + free_off) + <uint64_t>c * free_cap
            self.fhead_p[c] = <uint64_t*>(self.base + OFF_FREE_CURSORS + c * LINE)
            self.ftail_p[c] = <uint64_t*>(self.base + OFF_FREE_CURSORS + c * LINE + 64)
        self.head_p = <uint64_t*>(self.base + OFF_HEAD)
        self.tail_p = <uint64_t*>(self.base + OFF_TAIL)
        self.waiting_p = <uint32_t*>(self.seg + OFF_WAITING)   # one futex for every lane
        self.heartbeat_p = NULL
        try:
            self._after_bind()
        except BaseException:
            self._release()
            raise

    cdef int _after_bind(self) except -1:
        """Per-role private state, sized from the geometry (overridden by the cores)."""
        return 0

    cdef int _can_unbind(self) except -1:
        """Raise while messages or claims still point into the mapping."""
        return 0

    cdef void _release(self) noexcept:
        if self._bound and self._has_view:
            PyBuffer_Release(&self._view)
            self._has_view = False
            self._bound = False
            self.base = NULL
            self.seg = NULL
            self.heartbeat_p = NULL
            self._mark = &_NEVER_TRUNCATED

    def _unbind(self):
        """Drop the reference to the mapping (the segment can then be unmapped)."""
        if self._bound:
            self._can_unbind()
        self._release()

    def __dealloc__(self):
        if self._has_view:     # a disowned core keeps its view until it goes
            PyBuffer_Release(&self._view)
            self._has_view = False
        self._bound = False

    def __reduce__(self):
        raise not_copyable(self)

    def __copy__(self):
        raise not_copyable(self)

    def __deepcopy__(self, memo):
        raise not_copyable(self)

    @property
    def bound(self):
        return self._bound

    @property
    def lane(self):
        """The producer slot (lane) this core is bound to."""
        return self._lane

    @property
    def name(self):
        return self._name

    @property
    def truncated(self):
        """The segment was truncated by another process (the mapping reads as zeros)."""
        return ca_load_relaxed_u32(self._mark) != 0

    cdef object _closed_error(self, str what):
        if self._forked_from:
            return EndpointForked(
                f"this channel {what} of {self._name!r} belongs to pid {self._forked_from}, "
                f"which forked this process (pid {getpid()}); open a new one here")
        return ChannelClosed(f"the channel {what} is closed")

    def _disown(self, int64_t parent):
        """After fork, in the child: refuse every use from now on without touching the
        segment (the parent still holds the role). The mapping stays referenced, so
        messages inherited with the core never point at unmapped memory."""
        if self._bound:
            self._forked_from = parent
            self._bound = False

    @property
    def forked_from(self):
        """The pid this core belongs to, if it was inherited over fork (else 0)."""
        return self._forked_from

    cdef object _truncated_error(self):
        return SegmentCorrupted(f"segment {self._name!r} was truncated by another process; its "
                                "mapping now reads as zeros (close this endpoint)")

    cdef object _corrupt(self, str text):
        """The error for an inconsistency: a truncation explains it, if there was one."""
        if ca_load_relaxed_u32(self._mark):
            return self._truncated_error()
        return SegmentCorrupted(text)

    cdef int _check(self) except -1:
        if not self._bound:
            raise self._closed_error("endpoint")
        if ca_load_relaxed_u32(self._mark):
            raise self._truncated_error()
        return 0

    # -- header words for the Python layer (role slots, counters) ---------------------------
    cdef uint64_t* _word(self, Py_ssize_t off) except NULL:
        self._check()
        if off < 0 or off + 8 > HEADER_SIZE or off & 7:
            raise ValueError(f"bad header offset {off}")
        return <uint64_t*>(self.base + off)

    def _load(self, Py_ssize_t off):
        return ca_load_acquire_u64(self._word(off))

    def _load_signed(self, Py_ssize_t off):
        return <int64_t>ca_load_acquire_u64(self._word(off))

    def _store(self, Py_ssize_t off, uint64_t value):
        ca_store_release_u64(self._word(off), value)

    def _store_signed(self, Py_ssize_t off, int64_t value):
        ca_store_release_u64(self._word(off), <uint64_t>value)

    def _add(self, Py_ssize_t off, uint64_t delta=1):
        return ca_add_u64(self._word(off), delta)

    def _cas(self, Py_ssize_t off, int64_t expected, int64_t desired):
        """Compare-and-swap a signed header word; True when it was ``expected``."""
        return ca_cas_i64(<int64_t*>self._word(off), expected, desired)

    def _set_heartbeat_slot(self, Py_ssize_t role_off):
        self.heartbeat_p = self._word(role_off + ROLE_HEARTBEAT)

    def heartbeat(self):
        """Stamp this endpoint's heartbeat (wall clock) in the segment."""
        self._check()
        if self.heartbeat_p != NULL:
            ca_store_relaxed_u64(self.heartbeat_p, hft_clock_realtime_ns())

    # -- the other side ---------------------------------------------------------------------
    def peer(self):
        """(pid, alive) of the other side: alive is None while its role is vacant."""
        cdef int64_t pid
        if self._other_off < 0:
            raise ChannelClosed("a bare channel core has no peer")
        cdef uint64_t* slot = self._word(self._other_off)
        if self._other_off == OFF_CONSUMER:   # the consumer's slot is in the segment header
            slot = <uint64_t*>(self.seg + OFF_CONSUMER)
        pid = <int64_t>ca_load_acquire_u64(slot + ROLE_PID // 8)
        if pid == 0:
            return 0, None
        if pid < 0:
            return -pid, pid_alive(-pid)
        return pid, pid_alive(pid, ca_load_acquire_u64(slot + ROLE_TICKS // 8))

    def peer_alive(self):
        """True/False for an attached peer, None if nobody holds the other role."""
        return self.peer()[1]

    # -- topics -------------------------------------------------------------------------------
    def _topic_count(self):
        self._check()
        return ca_load_acquire_u64(<uint64_t*>(self.base + OFF_TOPIC_COUNT))

    def _read_topic(self, uint32_t tid):
        """Topic ``tid`` from the table (published entries only)."""
        cdef uint64_t count
        cdef char* entry
        cdef uint16_t n
        self._check()
        count = ca_load_acquire_u64(<uint64_t*>(self.base + OFF_TOPIC_COUNT))
        if tid >= count or tid >= self.max_topics:
            raise self._corrupt(f"topic id {tid} is not in the topic table ({count} entries)")
        entry = self.topics + <uint64_t>tid * TOPIC_ENTRY
        memcpy(&n, entry, 2)
        if n == 0 or n > TOPIC_ENTRY - 2:
            raise self._corrupt(f"topic entry {tid} has length {n}")
        try:
            topic = entry[2:2 + n].decode("utf-8")
        except UnicodeDecodeError:
            raise self._corrupt(f"topic entry {tid} is not UTF-8") from None
        self._check()
        return topic

    # -- geometry helpers ---------------------------------------------------------------------
    cdef inline int _class_of(self, Py_ssize_t n) noexcept:
        """Size class index for ``n`` bytes, or -1 above the largest class."""
        cdef int k
        if n <= <Py_ssize_t>self.min_size:
            return 0
        k = (64 - __builtin_clzll(<unsigned long long>(n - 1))) - <int>self.min_shift
        return k if k < <int>self.num_classes else -1

    cdef inline int _decode(self, uint64_t pos, uint32_t* c, uint32_t* idx) noexcept:
        """Block of the descriptor at ring position ``pos``; -1 if out of range."""
        cdef uint32_t blk = (<uint32_t*>(self.ring + (pos & self.ring_mask) * DESC_SIZE))[6]
        c[0] = blk >> 24
        idx[0] = blk & 0xFFFFFF
        if c[0] >= self.num_classes or idx[0] >= self.bpc:
            return -1
        return 0

    cdef void _push_free(self, uint32_t c, uint32_t idx) noexcept:
        """Give a block back through the free ring (the caller is the free-ring writer)."""
        cdef uint64_t fh = ca_load_relaxed_u64(self.fhead_p[c])
        ca_store_release_u8(&self.owners[c * self.bpc + idx], OWN_FREE)
        self.free_rings[c][fh & self.free_mask] = idx
        ca_store_release_u64(self.fhead_p[c], fh + 1)

    cdef void _orphan(self, uint32_t c, uint32_t idx) noexcept:
        """A dead producer's block: back to the free ring (a ProducerCore adopts it)."""
        self._push_free(c, idx)

    cdef uint8_t* _membership(self, uint64_t start, uint64_t end) except NULL:
        """Flag the blocks referenced by queued descriptors [start, end) (bit 1) and by the
        free rings (bit 2)."""
        cdef uint64_t total = <uint64_t>self.num_classes * self.bpc
        cdef uint8_t* flags
        cdef uint64_t pos, ft, fh
        cdef uint32_t c, idx
        if end - start > self.ring_cap:
            raise self._corrupt(f"ring cursors out of range (tail={start}, head={end})")
        flags = <uint8_t*>calloc(total if total else 1, 1)
        if flags == NULL:
            raise MemoryError()
        try:
            pos = start
            while pos != end:
                if self._decode(pos, &c, &idx) < 0:
                    raise self._corrupt(f"descriptor {pos} refers to a block out of range")
                flags[c * self.bpc + idx] |= 1
                pos += 1
            for c in range(self.num_classes):
                ft = ca_load_acquire_u64(self.ftail_p[c])
                fh = ca_load_acquire_u64(self.fhead_p[c])
                if fh - ft > self.bpc:
                    raise self._corrupt(f"free ring {c} cursors out of range")
                while ft != fh:
                    idx = self.free_rings[c][ft & self.free_mask]
                    if idx >= self.bpc:
                        raise self._corrupt(f"free ring {c} holds block {idx}")
                    flags[c * self.bpc + idx] |= 2
                    ft += 1
        except BaseException:
            free(flags)
            raise
        return flags

    def _reclaim_consumer(self):
        """Return a dead consumer's blocks (the caller holds the consumer role).

        CONSUMER blocks still referenced by a queued descriptor (the consumer died
        between taking and consuming it) go back to QUEUED and are delivered again; the
        other CONSUMER blocks, and FREE blocks missing from the free ring (it died while
        giving one back), are pushed to the free ring. Returns (reclaimed, requeued).
        """
        self._check()
        cdef uint64_t tail = ca_load_acquire_u64(self.tail_p)
        cdef uint64_t head = ca_load_acquire_u64(self.head_p)
        cdef uint8_t* flags = self._membership(tail, head)
        cdef uint64_t g, total = <uint64_t>self.num_classes * self.bpc
        cdef uint8_t st
        cdef Py_ssize_t reclaimed = 0, requeued = 0
        try:
            for g in range(total):
                st = ca_load_acquire_u8(&self.owners[g])
                if st == OWN_CONSUMER:
                    if flags[g] & 1:
                        ca_store_release_u8(&self.owners[g], OWN_QUEUED)
                        requeued += 1
                    else:
                        self._push_free(<uint32_t>(g // self.bpc), <uint32_t>(g % self.bpc))
                        reclaimed += 1
                elif st == OWN_FREE and not flags[g]:
                    self._push_free(<uint32_t>(g // self.bpc), <uint32_t>(g % self.bpc))
                    reclaimed += 1
        finally:
            free(flags)
        self._check()
        return reclaimed, requeued

    def _reclaim_producer(self):
        """Take back a dead (or closed) producer's blocks (the caller holds the producer role).

        PRODUCER blocks, and QUEUED blocks whose descriptor was never published, are
        orphans: a ConsumerCore pushes them to the free ring, a ProducerCore keeps them
        as its spares. A PRODUCER block still in the free ring (death between marking and
        advancing ``ftail``) is simply marked FREE again. Returns the number of orphans.
        """
        self._check()
        cdef uint64_t tail = ca_load_acquire_u64(self.tail_p)
        cdef uint64_t head = ca_load_acquire_u64(self.head_p)
        cdef uint8_t* flags = self._membership(tail, head)
        cdef uint64_t g, total = <uint64_t>self.num_classes * self.bpc
        cdef uint8_t st
        cdef Py_ssize_t orphans = 0
        try:
            for g in range(total):
                st = ca_load_acquire_u8(&self.owners[g])
                if st == OWN_PRODUCER and flags[g] & 2:
                    ca_store_release_u8(&self.owners[g], OWN_FREE)
                elif st == OWN_PRODUCER or (st == OWN_QUEUED and not flags[g] & 1):
                    self._orphan(<uint32_t>(g // self.bpc), <uint32_t>(g % self.bpc))
                    orphans += 1
        finally:
            free(flags)
        self._check()
        return orphans

    def owner_counts(self):
        """Per size class: [free, producer, queued, consumer] block counts."""
        self._check()
        cdef uint32_t c, i
        cdef list rows = []
        cdef list row
        for c in range(self.num_classes):
            row = [0, 0, 0, 0]
            for i in range(self.bpc):
                row[ca_load_acquire_u8(&self.owners[c * self.bpc + i]) & 3] += 1
            rows.append(row)
        self._check()
        return rows

    def _init_free_rings(self):
        """Creator only, before READY: every block starts in its class's free ring."""
        self._check()
        cdef uint32_t c, i
        for c in range(self.num_classes):
            for i in range(self.bpc):
                self.free_rings[c][i] = i
                self.owners[c * self.bpc + i] = OWN_FREE
            ca_store_release_u64(self.fhead_p[c], self.bpc)
            ca_store_release_u64(self.ftail_p[c], 0)
        self._check()

    @property
    def queued(self):
        """Descriptors published and not yet consumed."""
        self._check()
        return ca_load_acquire_u64(self.head_p) - ca_load_acquire_u64(self.tail_p)


# ---------------------------------------------------------------------------------------------
@cython.auto_pickle(False)
@cython.final
cdef class Route:
    """Consumer-side dispatch entry of one topic: matching subscribers and counters."""

    def __init__(self, str topic):
        self.topic = topic
        self.callbacks = ()
        self.subscriptions = ()

    def __reduce__(self):
        raise not_copyable(self)


def log_subscriber_error(exc, msg, sub):
    """Default error hook of a reader: log the exception with the message and subscriber."""
    log.error("subscriber %r failed on %r", sub, msg, exc_info=exc)


# ---------------------------------------------------------------------------------------------
@cython.auto_pickle(False)
@cython.final
cdef class ConsumerCore(ChannelCore):
    """Consumer side of a channel: subscriptions, and ``poll`` dispatching messages read in
    place. Errors in subscribers are counted and passed to ``on_error(exc, msg, sub)``."""

    def __cinit__(self, *args, **kwargs):
        self._topics = []
        self._routes = []
        self._deferred = []
        self._subs = {}
        self._patterns = {}
        self._next_id = 1
        self._on_error = log_subscriber_error
        self._lat = NULL
        self._held = NULL
        self._cache = None
        self._siblings = []
        self._other_off = OFF_PRODUCER

    def __dealloc__(self):
        if self._lat != NULL:
            PyBuffer_Release(&self._lat_view)
            self._lat = NULL
        if self._held != NULL:
            free(self._held)
            self._held = NULL

    cdef int _after_bind(self) except -1:
        cdef size_t total = <size_t>self.num_classes * self.bpc
        if self._held == NULL:
            self._held = <uint8_t*>calloc(total, 1)
            if self._held == NULL:
                raise MemoryError()
        if total <= <size_t>MAX_CACHED_BLOCKS:
            self._cache = [None] * total
        return 0

    cdef int _can_unbind(self) except -1:
        if self._deferred:
            try:
                self._sweep()
            except SegmentCorrupted:
                pass  # the blocks cannot go back to a corrupt segment: unbinding still may
        if self._retained or self._deferred:
            raise BlocksStillLive(f"channel {self._name!r}: {self._retained} retained "
                                  f"message(s) and {len(self._deferred)} leaked view(s) still "
                                  "hold shared blocks")
        return 0

    # -- configuration ------------------------------------------------------------------------
    @property
    def on_error(self):
        """``on_error(exc, msg, subscription)``: called when a subscriber raises."""
        return self._on_error

    @on_error.setter
    def on_error(self, hook):
        if hook is None:
            hook = log_subscriber_error
        if not callable(hook):
            raise TypeError(f"on_error must be callable, got {type(hook).__name__}")
        self._on_error = hook
        for item in self._siblings:
            (<ConsumerCore>item)._on_error = hook

    def _set_latency(self, counts):
        """Record publish->deliver latency into ``counts`` (a Histogram's array('Q'))."""
        cdef Py_buffer view
        PyObject_GetBuffer(counts, &view, PyBUF_WRITABLE)
        if view.itemsize != 8 or view.len < 8 * (HFT_HEADER + HFT_NUM_BUCKETS):
            PyBuffer_Release(&view)
            raise ValueError("latency counts must be a Histogram's array('Q')")
        if self._lat != NULL:
            PyBuffer_Release(&self._lat_view)
        self._lat_view = view
        self._lat = <uint64_t*>view.buf
        self._lat_owner = counts

    # -- subscriptions ------------------------------------------------------------------------
    def subscribe(self, pattern, callback):
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

    def unsubscribe(self, subscription):
        if not isinstance(subscription, Subscription) or \
                self._subs.get(subscription.id) is not subscription:
            raise NotSubscribed(f"{subscription!r} is not an active subscription of this reader")
        del self._subs[subscription.id]
        del self._patterns[subscription.id]
        subscription.active = False
        self._reset_routes()

    @property
    def subscriptions(self):
        return list(self._subs.values())

    def _reset_routes(self):
        """Subscriptions changed: resolve every topic again on its next message (in every
        lane)."""
        cdef ConsumerCore lane
        self._routes = [None] * len(self._routes)
        for item in self._siblings:
            lane = <ConsumerCore>item
            lane._routes = [None] * len(lane._routes)

    cdef Route _resolve(self, str topic):
        cdef Route route = Route(topic)
        subs = tuple(s for i, s in self._subs.items() if matches(self._patterns[i], topic))
        route.subscriptions = subs
        route.callbacks = tuple(s.callback for s in subs)
        return route

    cdef Route _route(self, uint32_t tid):
        cdef Route route
        if tid < <uint32_t>PyList_GET_SIZE(self._routes):
            route = <Route>PyList_GET_ITEM(self._routes, tid)
            if route is not None:
                return route
        if tid >= self.max_topics:
            raise self._corrupt(f"descriptor refers to topic id {tid} (max {self.max_topics})")
        while PyList_GET_SIZE(self._topics) <= tid:
            self._topics.append(self._read_topic(PyList_GET_SIZE(self._topics)))
        while PyList_GET_SIZE(self._routes) <= tid:
            self._routes.append(None)
        route = self._resolve(self._topics[tid])
        self._routes[tid] = route
        return route

    cdef int _report(self, exc, msg, sub) except -1:
        try:
            self._on_error(exc, msg, sub)
        except Exception:
            self._hook_errors += 1
            log.exception("the reader's error hook failed while reporting %r", exc)
        return 0

    # -- cursors and blocks -------------------------------------------------------------------
    def _start(self):
        """Load the cursors from the segment (after the role was taken and recovered)."""
        cdef uint32_t c
        self._check()
        self._tail = ca_load_acquire_u64(self.tail_p)
        self._head_cache = ca_load_acquire_u64(self.head_p)
        self._last_seq = ca_load_acquire_u64(<uint64_t*>(self.base + OFF_LAST_SEQ))
        self._gaps = ca_load_acquire_u64(<uint64_t*>(self.base + OFF_GAPS))
        self._received = ca_load_acquire_u64(<uint64_t*>(self.base + OFF_RECEIVED))
        for c in range(self.num_classes):
            self._fhead[c] = ca_load_acquire_u64(self.fhead_p[c])
            self._ftail_cache[c] = ca_load_acquire_u64(self.ftail_p[c])
        self._check()

    cdef void _push_free(self, uint32_t c, uint32_t idx) noexcept:
        # the consumer keeps its own copy of fhead; recovery may push too
        self._fhead[c] = ca_load_relaxed_u64(self.fhead_p[c])
        ChannelCore._push_free(self, c, idx)
        self._fhead[c] += 1

    cdef int _free_block(self, uint32_t c, uint32_t idx) except -1:
        cdef uint64_t fh = self._fhead[c]
        cdef uint64_t g = <uint64_t>c * self.bpc + idx
        if not self._bound:
            return 0
        self._held[g] = 0
        if fh - self._ftail_cache[c] >= self.bpc:
            self._ftail_cache[c] = ca_load_acquire_u64(self.ftail_p[c])
            if fh - self._ftail_cache[c] >= self.bpc:
                raise self._corrupt(f"free ring {c} would overflow: its cursors were changed "
                                    "by another process")
        ca_store_release_u8(&self.owners[g], OWN_FREE)
        self.free_rings[c][fh & self.free_mask] = idx
        self._fhead[c] = fh + 1
        ca_store_release_u64(self.fhead_p[c], fh + 1)
        return 0

    cdef void _give_back(self, Message msg) noexcept:
        """The block goes back to the free ring; the message waits in its block's cache."""
        cdef uint64_t g = <uint64_t>msg._cls * self.bpc + msg._idx
        msg._ptr = NULL
        if self._cache is not None and g < <uint64_t>PyList_GET_SIZE(self._cache):
            hft_list_put(self._cache, <Py_ssize_t>g, msg)

    cdef int _free_message(self, Message msg) except -1:
        """Dispatch and retains are over: free the block, or park it while a view lives."""
        msg._state = RELEASED
        if views_settled(msg) or msg._settle_views():
            self._free_block(<uint32_t>msg._cls, msg._idx)
            self._give_back(msg)
            return 0
        self._leaked_views += 1
        self._deferred.append(msg)
        return 0

    def _sweep(self):
        """Give back blocks whose leaked views are gone; returns how many are still held."""
        cdef list pending = self._deferred
        cdef list still = []
        cdef Message msg
        cdef Py_ssize_t i
        if not pending:
            return 0
        self._deferred = still      # a message leaves the list before its block goes back
        for i in range(len(pending)):
            msg = <Message>pending[i]
            if msg._settle_views():
                try:
                    self._free_block(<uint32_t>msg._cls, msg._idx)
                except BaseException:
                    still.extend(pending[i:])  # this one and the rest: retried next sweep
                    raise
                self._give_back(msg)
            else:
                still.append(msg)
        return len(still)

    # -- MessageOwner -----------------------------------------------------------------------
    cdef int _release_message(self, Message msg) except -1:
        self._retained -= 1
        return self._free_message(msg)

    cdef void _discard_message(self, Message msg) noexcept:
        # a retained message dropped without release(): no export can be alive (each one
        # holds a reference to the message), so the block goes back
        cdef uint64_t fh, g
        cdef uint32_t c = <uint32_t>msg._cls
        if msg._state == RETAINED:
            self._retained -= 1
        msg._state = RELEASED
        msg._ptr = NULL
        if not self._bound or ca_load_relaxed_u32(self._mark):
            return
        g = <uint64_t>c * self.bpc + msg._idx
        fh = self._fhead[c]
        if fh - ca_load_acquire_u64(self.ftail_p[c]) >= self.bpc:
            return  # forged cursors: leave the block out rather than overflow
        self._held[g] = 0
        ca_store_release_u8(&self.owners[g], OWN_FREE)
        self.free_rings[c][fh & self.free_mask] = msg._idx
        self._fhead[c] = fh + 1
        ca_store_release_u64(self.fhead_p[c], fh + 1)

    # -- hot path -----------------------------------------------------------------------------
    cdef inline Message _next(self, uint64_t now):
        """Take this lane's next waiting message: descriptor checked, block taken, message
        ready to hand out (IN_FLIGHT, received at ``now``) and counted. None when the lane
        is empty."""
        cdef uint64_t* d
        cdef uint32_t* w
        cdef uint32_t c, idx, tid, length
        cdef uint64_t seq, g
        cdef Route route
        cdef Message msg
        cdef PyObject* entry
        if self._tail == self._head_cache:
            self._head_cache = ca_load_acquire_u64(self.head_p)
            if self._tail == self._head_cache:
                return None
            if self._head_cache - self._tail > self.ring_cap:
                raise self._corrupt("the ring head is out of range")
        d = <uint64_t*>(self.ring + (self._tail & self.ring_mask) * DESC_SIZE)
        w = <uint32_t*>d
        seq = d[0]
        tid = w[4]
        length = w[5]
        c = w[6] >> 24
        idx = w[6] & 0xFFFFFF
        if c >= self.num_classes or idx >= self.bpc or length > self.class_size[c]:
            raise self._corrupt(
                f"descriptor {self._tail} (seq {seq}) refers to class {c} block {idx} of "
                f"length {length}, which is not a block of the channel")
        g = <uint64_t>c * self.bpc + idx
        if self._held[g] or ca_load_acquire_u8(&self.owners[g]) != OWN_QUEUED:
            raise self._corrupt(
                f"descriptor {self._tail} (seq {seq}) refers to class {c} block {idx}, "
                "which is not a queued block")
        route = self._route(tid)
        msg = None
        if self._cache is not None:
            entry = PyList_GET_ITEM(self._cache, <Py_ssize_t>g)
            if entry != <PyObject*>None:
                msg = <Message>entry
                hft_list_put(self._cache, <Py_ssize_t>g, None)
                # references left: `msg` and its cached view's: anyone else keeps it
                if hft_refcnt(entry) != 1 + (msg._rview is not None):
                    msg = None
                elif msg._rview is not None and (
                        msg._rview_len != length
                        or hft_refcnt(<PyObject*>msg._rview) != 1
                        or hft_view_shared(<PyObject*>msg._rview)):
                    # a view reached some other way (gc introspection) must not read
                    # the block's next message: release it, or leave the old message
                    # behind (its view stays disarmed, length 0) and take a new one
                    if not msg._drop_view(False) or msg._exports:
                        msg = None
        if msg is None:
            msg = Message.__new__(Message)
            msg._owner = self
            msg._memory = self
            msg._cls = c
            msg._idx = idx
            msg._reserved = <Py_ssize_t>self.class_size[c]
            msg.producer = self._lane
        msg._ptr = self.pools[c] + <uint64_t>idx * self.class_size[c]
        msg._length = length
        if msg._route is not route:
            msg._route = route
            msg.topic = route.topic
        # msg._reset(IN_FLIGHT), inline (the hot path avoids the cross-module call)
        msg._refs = 0
        msg._state = IN_FLIGHT
        if msg._rview is not None:   # a kept view, disarmed while its block was free
            hft_view_rearm(<PyObject*>msg._rview, msg._rview_len)
        msg._pub_ticks = 0
        msg.seq = seq
        msg._pub_ns = <int64_t>d[1]
        # take the block, then consume the descriptor
        self._held[g] = 1
        ca_store_release_u8(&self.owners[g], OWN_CONSUMER)
        if seq != self._last_seq + 1:
            if seq > self._last_seq:
                self._gaps += seq - self._last_seq - 1
                ca_store_relaxed_u64(<uint64_t*>(self.base + OFF_GAPS), self._gaps)
            else:
                self._redelivered += 1
        if seq > self._last_seq:
            self._last_seq = seq
        self._received += 1
        ca_store_relaxed_u64(<uint64_t*>(self.base + OFF_LAST_SEQ), self._last_seq)
        ca_store_relaxed_u64(<uint64_t*>(self.base + OFF_RECEIVED), self._received)
        self._tail += 1
        ca_store_release_u64(self.tail_p, self._tail)
        route.received += 1
        msg.receive_ns = now
        if self._lat != NULL:
            hft_hist_record(self._lat, <int64_t>(now - <uint64_t>msg._pub_ns))
        return msg

    cdef inline int _done(self, Message msg) except -1:
        """The handlers returned: keep a retained message, give the others back."""
        if msg._refs:
            msg._state = RETAINED
            self._retained += 1
        else:
            self._free_message(msg)
        return 0

    cdef inline int _enter(self) except -1:
        if not self._bound:
            raise self._closed_error("reader")
        if self._deferred:
            self._sweep()
        if self.heartbeat_p != NULL:
            ca_store_relaxed_u64(self.heartbeat_p, hft_clock_realtime_ns())
        return 0

    cdef Py_ssize_t _poll(self, Py_ssize_t limit) except -1:
        cdef Py_ssize_t n = 0, i, ncb
        cdef Route route
        cdef Message msg
        cdef tuple callbacks
        self._enter()
        while n < limit:
            msg = self._next(hft_clock_monotonic_ns())
            if msg is None:
                break
            n += 1
            route = <Route>msg._route
            callbacks = route.callbacks
            ncb = len(callbacks)
            try:
                for i in range(ncb):
                    try:
                        callbacks[i](msg)
                    except Exception as exc:
                        route.errors += 1
                        self._errors += 1
                        self._report(exc, msg, route.subscriptions[i])
                    else:
                        route.delivered += 1
                        self._delivered += 1
            finally:
                self._done(msg)
        if ca_load_relaxed_u32(self._mark):
            raise self._truncated_error()
        return n

    cdef inline Py_ssize_t _waiting_up_to(self, Py_ssize_t limit) except -1:
        """Enter a read: how many messages wait in this lane, at most ``limit``."""
        cdef uint64_t waiting
        self._enter()
        waiting = ca_load_acquire_u64(self.head_p) - self._tail
        if waiting > self.ring_cap:
            raise self._corrupt("the ring head is out of range")
        return <Py_ssize_t>waiting if <Py_ssize_t>waiting < limit else limit

    cdef Py_ssize_t _poll_batch(self, handler, Py_ssize_t limit) except -1:
        cdef Py_ssize_t n = 0, i, k
        cdef uint64_t now
        cdef Message msg
        cdef tuple batch
        k = self._waiting_up_to(limit)
        if k <= 0:
            return 0
        batch = PyTuple_New(k)
        now = hft_clock_monotonic_ns()    # one receive time for the batch
        try:
            while n < k:
                msg = self._next(now)
                if msg is None:   # cannot happen (the head only grows): deliver what we hold
                    batch = batch[:n]
                    break
                Py_INCREF(msg)
                PyTuple_SET_ITEM(batch, n, msg)
                n += 1
            try:
                handler(batch)
            except Exception as exc:
                self._errors += n
                self._report(exc, batch, handler)
            else:
                self._delivered += n
        finally:
            for i in range(n):
                self._done(<Message>PyTuple_GET_ITEM(batch, i))
        if ca_load_relaxed_u32(self._mark):
            raise self._truncated_error()
        return n

    def poll(self, Py_ssize_t limit=256):
        """Dispatch up to ``limit`` waiting messages of this lane to the subscribers;
        returns how many."""
        return self._poll(limit)

    def poll_all(self, Py_ssize_t limit=256):
        """Dispatch up to ``limit`` messages from every lane (``_set_lanes``), round robin:
        each lane gets its share per pass, the first lane rotates between calls."""
        return self._merge(None, limit, MERGE_DISPATCH)

    def poll_batch(self, handler, Py_ssize_t limit=256):
        """Call ``handler(messages)`` with a tuple of up to ``limit`` waiting messages
        (per lane, round robin; subscriptions are not consulted); returns how many.

        The messages live until ``handler`` returns, like single messages: retain() the
        ones to keep. Counters are per message (``delivered``, or ``errors`` for every
        message of a batch whose handler raised).
        """
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        return self._merge(handler, limit, MERGE_BATCH)

    cdef Py_ssize_t _poll_copies(self, list out, Py_ssize_t limit) except -1:
        cdef Py_ssize_t n = 0, k, largest = 0
        cdef uint64_t now
        cdef Message msg
        cdef str topic = None
        cdef list items = None
        k = self._waiting_up_to(limit)
        if k <= 0:
            return 0
        now = hft_clock_monotonic_ns()    # one receive time for the run
        try:
            while n < k:
                msg = self._next(now)
                if msg is None:   # cannot happen (the head only grows)
                    break
                try:
                    if msg.topic is not topic:
                        if items is not None:
                            out.append((topic, items, largest))
                        topic = msg.topic
                        items = []
                        largest = 0
                    items.append(PyBytes_FromStringAndSize(msg._ptr, msg._length))
                    if msg._length > largest:
                        largest = msg._length
                finally:
                    self._done(msg)
                n += 1
        finally:
            if items:
                out.append((topic, items, largest))
            self._delivered += n
        if ca_load_relaxed_u32(self._mark):
            raise self._truncated_error()
        return n

    def poll_copies(self, list out not None, Py_ssize_t limit=256):
        """Copy up to ``limit`` waiting messages out of the channel (per lane, round robin,
        like poll_batch) and give their blocks back at once; returns how many.

        Appends to ``out`` one ``(topic, [payload bytes, ...], largest)`` tuple per run of
        consecutive messages on one topic, in arrival order (``largest``: the longest
        payload of the run). Counted as delivered. What was copied before an error (a
        corrupt descriptor, a truncated segment) is in ``out`` when the error is raised.
        """
        return self._merge(out, limit, MERGE_COPY)

    cdef inline Py_ssize_t _poll_lane(self, handler, Py_ssize_t limit, int mode) except -1:
        """This lane's share of a _merge: dispatch, batch to ``handler``, or copy into it."""
        if mode == MERGE_BATCH:
            return self._poll_batch(handler, limit)
        if mode == MERGE_COPY:
            return self._poll_copies(<list>handler, limit)
        return self._poll(limit)

    cdef Py_ssize_t _merge(self, handler, Py_ssize_t limit, int mode) except -1:
        cdef list others = self._siblings
        cdef Py_ssize_t n, k, j, got, quota, total = 0
        cdef bint progress = True
        cdef ConsumerCore lane
        if not self._bound:
            raise self._closed_error("reader")
        if limit <= 0:
            return 0
        n = 1 + PyList_GET_SIZE(others)
        if n == 1:                  # one lane: one pass takes all it can
            return self._poll_lane(handler, limit, mode)
        quota = (limit + n - 1) // n
        while progress and total < limit:
            progress = False
            for k in range(n):
                j = (self._rr + k) % n
                lane = self if j == 0 else <ConsumerCore>PyList_GET_ITEM(others, j - 1)
                got = lane._poll_lane(handler, min(quota, limit - total), mode)
                if got:
                    progress = True
                    total += got
                    if total >= limit:
                        break
        self._rr = (self._rr + 1) % n
        return total

    def _set_siblings(self, list others):
        """This core (lane 0) also polls and waits for the cores of the other lanes
        (``others``, in lane order); they share its subscriptions and error hook."""
        cdef ConsumerCore lane
        for item in others:
            lane = <ConsumerCore?>item
            if lane is self:
                raise ValueError("a core is not its own sibling")
            lane._subs = self._subs
            lane._patterns = self._patterns
            lane._on_error = self._on_error
            lane._reset_routes()
        self._siblings = list(others)

    cdef inline bint _any_waiting(self) noexcept:
        cdef Py_ssize_t k
        cdef ConsumerCore lane
        if ca_load_acquire_u64(self.head_p) != self._tail:
            return True
        for k in range(PyList_GET_SIZE(self._siblings)):
            lane = <ConsumerCore>PyList_GET_ITEM(self._siblings, k)
            if lane._bound and ca_load_acquire_u64(lane.head_p) != lane._tail:
                return True
        return False

    def wait(self, timeout=None, double spin_us=20.0):
        """Block until a message is waiting (True) or ``timeout`` seconds pass (False).

        Spins for ``spin_us`` µs, then sleeps on a futex in the segment (Linux; elsewhere
        it polls every 50 µs) that the producer wakes after its next publish. The GIL is
        released while sleeping. Signals interrupt the wait (KeyboardInterrupt works).
        """
        cdef uint64_t start = hft_clock_monotonic_ns(), now
        cdef uint64_t spin_ns = <uint64_t>(spin_us * 1000) if spin_us > 0 else 0
        cdef int64_t limit_ns = -1 if timeout is None else <int64_t>(max(0.0, timeout) * 1e9)
        cdef int64_t left
        if not self._bound:
            raise self._closed_error("reader")
        while True:
            if ca_load_relaxed_u32(self._mark):
                raise self._truncated_error()
            if self._any_waiting():
                return True
            now = hft_clock_monotonic_ns()
            if limit_ns >= 0 and <int64_t>(now - start) >= limit_ns:
                return False
            if now - start < spin_ns:
                continue
            ca_store_seq_cst_u32(self.waiting_p, 1)
            ca_fence_seq_cst()
            if self._any_waiting():
                ca_store_seq_cst_u32(self.waiting_p, 0)
                return True
            left = 100_000_000  # wake up now and then: heartbeats, signals
            if limit_ns >= 0 and limit_ns - <int64_t>(now - start) < left:
                left = limit_ns - <int64_t>(now - start)
            with nogil:
                hft_futex_wait_shared(self.waiting_p, 1, left)
            ca_store_seq_cst_u32(self.waiting_p, 0)
            PyErr_CheckSignals()
            if self.heartbeat_p != NULL:
                ca_store_relaxed_u64(self.heartbeat_p, hft_clock_realtime_ns())

    # -- counters -----------------------------------------------------------------------------
    @property
    def deferred(self):
        """Blocks held back by leaked views right now (after a sweep)."""
        return self._sweep()

    @property
    def parked(self):
        """Messages held back by leaked views, without a sweep."""
        return len(self._deferred)

    @property
    def received(self):
        return self._received

    @property
    def gaps(self):
        """Messages missing from the sequence (dropped by the producer's policy)."""
        return self._gaps

    @property
    def last_seq(self):
        return self._last_seq

    @property
    def retained(self):
        """Messages kept by ``retain()`` and not yet released."""
        return self._retained

    @property
    def leaked_views(self):
        """Messages whose payload view outlived them (their block was held back)."""
        return self._leaked_views

    @property
    def delivered(self):
        """Subscriber calls that returned normally."""
        return self._delivered

    @property
    def errors(self):
        """Subscriber calls that raised."""
        return self._errors

    @property
    def redelivered(self):
        """Messages seen again (a dead consumer's messages, delivered to its successor)."""
        return self._redelivered

    @property
    def hook_errors(self):
        """Times the ``on_error`` hook itself raised."""
        return self._hook_errors


# ---------------------------------------------------------------------------------------------
@cython.auto_pickle(False)
@cython.final
cdef class ProducerCore(ChannelCore):
    """Producer side of a channel: ``publish`` (copy in) and ``claim`` (write in place), with
    the full-ring policy (``raise``, ``drop``, ``block``) applied here."""

    def __cinit__(self, *args, **kwargs):
        self._spares = NULL
        self._held = NULL
        self._cache = None
        self._topic_ids = {}
        self._other_off = OFF_CONSUMER
        self._policy = POLICY_RAISE
        self._policy_name = "raise"
        self._timeout = 0.0

    def __dealloc__(self):
        if self._spares != NULL:
            free(self._spares)
            self._spares = NULL
        if self._held != NULL:
            free(self._held)
            self._held = NULL

    cdef int _after_bind(self) except -1:
        cdef size_t total = <size_t>self.num_classes * self.bpc
        if total <= <size_t>MAX_CACHED_BLOCKS:
            self._cache = [None] * total
        if self._spares == NULL:
            self._spares = <uint32_t*>malloc(total * 4)
            if self._spares == NULL:
                raise MemoryError()
        if self._held == NULL:
            self._held = <uint8_t*>calloc(total, 1)
            if self._held == NULL:
                raise MemoryError()
        return 0

    cdef int _can_unbind(self) except -1:
        if self._claims_live:
            raise BlocksStillLive(f"channel {self._name!r}: {self._claims_live} claim(s) are "
                                  "neither committed nor aborted")
        return 0

    def _configure(self, policy, timeout):
        """The full-ring policy: ``raise``, ``drop`` or ``block`` (waiting ``timeout`` s)."""
        if policy not in _L.POLICIES:
            raise ValueError(f"policy must be one of {_L.POLICIES}, got {policy!r}")
        if not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
        self._timeout = timeout
        self._policy = _L.POLICIES.index(policy)
        self._policy_name = str(policy)

    @property
    def policy(self):
        return self._policy_name

    @property
    def timeout(self):
        """Seconds the ``block`` policy waits for room."""
        return self._timeout

    @timeout.setter
    def timeout(self, double value):
        if not value >= 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {value!r}")
        self._timeout = value

    def _start(self):
        """Load the cursors from the segment (after the role was taken and recovered)."""
        cdef uint32_t c
        cdef uint64_t tid, count
        self._check()
        self._head = ca_load_acquire_u64(self.head_p)
        self._tail_cache = ca_load_acquire_u64(self.tail_p)
        self._next_seq = ca_load_acquire_u64(<uint64_t*>(self.base + OFF_NEXT_SEQ))
        if self._next_seq == 0:
            self._next_seq = 1
        self._published = ca_load_acquire_u64(<uint64_t*>(self.base + OFF_PUBLISHED))
        self._spares_total = 0
        self._note_spares(0)
        for c in range(self.num_classes):
            self._ftail[c] = ca_load_acquire_u64(self.ftail_p[c])
            self._fhead_cache[c] = ca_load_acquire_u64(self.fhead_p[c])
        count = ca_load_acquire_u64(<uint64_t*>(self.base + OFF_TOPIC_COUNT))
        if count > self.max_topics:
            raise self._corrupt(f"the topic table claims {count} entries (max "
                                f"{self.max_topics})")
        topic_ids = {}
        for tid in range(count):
            topic_ids[self._read_topic(<uint32_t>tid)] = tid
        self._topic_ids = topic_ids
        self._check()

    cdef void _orphan(self, uint32_t c, uint32_t idx) noexcept:
        """A dead producer's block becomes one of our spares (once)."""
        cdef uint64_t g = <uint64_t>c * self.bpc + idx
        if self._held[g] or self._nspare[c] >= self.bpc:
            return
        self._held[g] = 1
        ca_store_release_u8(&self.owners[g], OWN_PRODUCER)
        self._spares[<uint64_t>c * self.bpc + self._nspare[c]] = idx
        self._nspare[c] += 1
        self._note_spares(1)

    cdef inline void _note_spares(self, int delta) noexcept:
        """Keep the segment's count of our spares current: recovery tells a dead producer's
        spares (no message) from its claims in flight (lost messages) by it."""
        self._spares_total += delta
        if self._bound:
            ca_store_relaxed_u64(<uint64_t*>(self.base + OFF_SPARES), self._spares_total)

    @property
    def spares(self):
        """Blocks this producer holds back for reuse (aborted claims, adopted orphans)."""
        cdef uint32_t c
        return sum(self._nspare[c] for c in range(self.num_classes))

    @property
    def topic_ids(self):
        """A copy of the topic -> id table of this producer."""
        return dict(self._topic_ids)

    @property
    def claims_live(self):
        """Claims neither committed nor aborted."""
        return self._claims_live

    @property
    def aborted(self):
        """Claims given back without being published."""
        return self._aborted

    @property
    def published(self):
        return self._published

    @property
    def next_seq(self):
        return self._next_seq

    # -- hot path --------------------------------------------------------------------------------
    cdef inline int64_t _take(self, uint32_t c) noexcept:
        """A free block index of class ``c``; -1 if none; CORRUPT if the ring lies."""
        cdef uint64_t ft, g
        cdef uint32_t idx
        if self._nspare[c]:
            self._nspare[c] -= 1
            self._note_spares(-1)
            return self._spares[<uint64_t>c * self.bpc + self._nspare[c]]
        ft = self._ftail[c]
        if ft == self._fhead_cache[c]:
            self._fhead_cache[c] = ca_load_acquire_u64(self.fhead_p[c])
            if ft == self._fhead_cache[c]:
                return -1
            if self._fhead_cache[c] - ft > self.bpc:
                return C_CORRUPT
        idx = self.free_rings[c][ft & self.free_mask]
        if idx >= self.bpc:
            return C_CORRUPT
        g = <uint64_t>c * self.bpc + idx
        # our own map decides: a block we hold cannot be free, whatever the segment says
        if self._held[g] or ca_load_acquire_u8(&self.owners[g]) != OWN_FREE:
            return C_CORRUPT
        self._held[g] = 1
        ca_store_release_u8(&self.owners[g], OWN_PRODUCER)
        self._ftail[c] = ft + 1
        ca_store_release_u64(self.ftail_p[c], ft + 1)
        return idx

    cdef inline bint _ring_full(self) noexcept:
        if self._head - self._tail_cache < self.ring_cap:
            return False
        self._tail_cache = ca_load_acquire_u64(self.tail_p)
        # a forged tail (ahead of head, or too far behind) makes the ring look full for ever
        return self._head - self._tail_cache >= self.ring_cap

    cdef inline uint64_t _emit(self, uint32_t tid, uint32_t c, uint32_t idx,
                               Py_ssize_t n) noexcept:
        """Write the descriptor and publish it (the ring has room)."""
        cdef uint64_t seq = self._stage(tid, c, idx, n, hft_clock_monotonic_ns())
        self._publish_head(1)
        return seq

    cdef inline uint64_t _stage(self, uint32_t tid, uint32_t c, uint32_t idx,
                                Py_ssize_t n, uint64_t now) noexcept:
        """Write the descriptor at the private head (published by ``_publish_head``)."""
        cdef uint64_t seq = self._next_seq
        cdef uint64_t* d = <uint64_t*>(self.ring + (self._head & self.ring_mask) * DESC_SIZE)
        cdef uint32_t* w = <uint32_t*>d
        cdef uint64_t g = <uint64_t>c * self.bpc + idx
        d[0] = seq
        self._last_pub_ns = now
        d[1] = now
        w[4] = tid
        w[5] = <uint32_t>n
        w[6] = (c << 24) | idx
        w[7] = 0
        self._held[g] = 0
        ca_store_release_u8(&self.owners[g], OWN_QUEUED)
        self._next_seq = seq + 1
        self._head += 1
        self._published += 1
        return seq

    cdef inline void _publish_head(self, uint32_t count) noexcept:
        """Make the staged descriptors visible to the consumer (one release store) and
        wake it if it sleeps."""
        ca_store_relaxed_u64(<uint64_t*>(self.base + OFF_NEXT_SEQ), self._next_seq)
        ca_store_relaxed_u64(<uint64_t*>(self.base + OFF_PUBLISHED), self._published)
        ca_store_release_u64(self.head_p, self._head)
        # eventcount: the head store must be visible before we look at the consumer's flag
        # (the consumer does the mirror image: flag store, fence, head load)
        ca_fence_seq_cst()
        if ca_load_seq_cst_u32(self.waiting_p) and ca_cas_u32(self.waiting_p, 1, 0):
            hft_futex_wake_shared(self.waiting_p)
        self._beat += count
        if self._beat >= 1024:
            self._beat = 0
            if self.heartbeat_p != NULL:
                ca_store_relaxed_u64(self.heartbeat_p, hft_clock_realtime_ns())

    cdef inline int64_t _put(self, uint32_t tid, const char* src, Py_ssize_t n) noexcept:
        cdef int c = self._class_of(n)
        cdef int64_t idx
        if c < 0:
            return C_TOO_LARGE
        if self._ring_full():
            return C_RING_FULL
        idx = self._take(c)
        if idx < 0:
            return C_POOL_EMPTY if idx == -1 else idx
        if n:
            memcpy(self.pools[c] + <uint64_t>idx * self.class_size[c], src, n)
        return <int64_t>self._emit(tid, c, <uint32_t>idx, n)

    cdef inline int64_t _stage_copy(self, uint32_t tid, const char* src, Py_ssize_t n,
                                    uint64_t now) noexcept:
        """_put without the publication: the message is staged for ``_publish_head``."""
        cdef int c = self._class_of(n)
        cdef int64_t idx
        if c < 0:
            return C_TOO_LARGE
        if self._ring_full():
            return C_RING_FULL
        idx = self._take(c)
        if idx < 0:
            return C_POOL_EMPTY if idx == -1 else idx
        if n:
            memcpy(self.pools[c] + <uint64_t>idx * self.class_size[c], src, n)
        return <int64_t>self._stage(tid, c, <uint32_t>idx, n, now)

    def publish_many(self, topic, payloads):
        """Publish every payload of ``payloads`` (bytes or contiguous buffers) on ``topic``
        in order, as one ring publication for as many as fit; returns how many were
        published.

        When the ring or a size class fills up, the ones staged so far are published and
        the policy applies to the rest one by one: ``drop`` counts and skips, ``block``
        waits, ``raise`` raises ChannelFull saying how many were published.
        """
        cdef Py_buffer view
        cdef Py_ssize_t i = 0, n, staged = 0, done = 0
        cdef int64_t rc
        cdef int tid
        cdef uint64_t now
        cdef object item, items
        if not self._bound:
            raise self._closed_error("writer")
        tid = self._tid(topic)
        items = payloads if type(payloads) is list or type(payloads) is tuple else \
            list(payloads)
        n = len(items)
        now = hft_clock_monotonic_ns()
        try:
            while i < n:
                item = items[i]
                if type(item) is bytes:
                    rc = self._stage_copy(tid, PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item),
                                          now)
                else:
                    PyObject_GetBuffer(item, &view, PyBUF_SIMPLE)
                    try:
                        rc = self._stage_copy(tid, <const char*>view.buf, view.len, now)
                    finally:
                        PyBuffer_Release(&view)
                if ca_load_relaxed_u32(self._mark):
                    raise self._truncated_error()
                i += 1
                if rc > 0:
                    staged += 1
                    continue
                if staged:       # what fitted goes out before the policy runs
                    self._publish_head(<uint32_t>staged)
                    done += staged
                    staged = 0
                try:
                    if self._full(rc, topic, item, -1, None) is not None:
                        done += 1
                except ChannelFull as exc:
                    raise ChannelFull(f"{exc} ({done} of {n} published)") from None
                now = hft_clock_monotonic_ns()
        finally:
            if staged:
                self._publish_head(<uint32_t>staged)
                done += staged
        if ca_load_relaxed_u32(self._mark):
            raise self._truncated_error()
        return done

    cdef inline int _tid(self, topic) except -1:
        cdef PyObject* found = PyDict_GetItem(self._topic_ids, topic)
        if found != NULL:
            return <int>(<object>found)
        return self._register_topic(topic)

    cdef int _register_topic(self, topic) except -1:
        """Append a new topic to the segment's table (validated, UTF-8, <= 254 bytes)."""
        cdef uint64_t* count_p
        cdef uint64_t count
        cdef uint16_t n
        cdef char* entry
        cdef bytes raw
        validate_topic(topic)
        raw = topic.encode()
        if len(raw) > MAX_TOPIC_BYTES:
            raise InvalidTopic(f"topic {topic[:40]!r}... is {len(raw)} bytes of UTF-8; a channel "
                               f"carries topics of up to {MAX_TOPIC_BYTES}")
        self._check()
        count_p = <uint64_t*>(self.base + OFF_TOPIC_COUNT)
        count = ca_load_relaxed_u64(count_p)
        if count != <uint64_t>len(self._topic_ids):
            raise self._corrupt(f"channel {self._name!r}: the topic table holds {count} entries, "
                                f"this producer wrote {len(self._topic_ids)}")
        if count >= self.max_topics:
            raise TopicTableFull(f"channel {self._name!r} already carries {self.max_topics} "
                                 "topics (raise max_topics)")
        n = <uint16_t>len(raw)
        entry = self.topics + count * TOPIC_ENTRY
        memcpy(entry, &n, 2)
        memcpy(entry + 2, PyBytes_AS_STRING(raw), n)
        ca_store_release_u64(count_p, count + 1)
        self._check()
        self._topic_ids[topic] = <int>count
        return <int>count

    def publish(self, topic, data):
        """Copy ``data`` (bytes or any contiguous buffer) into a block and publish it on
        ``topic``. Returns the sequence number, or None when the ``drop`` policy dropped it.
        """
        cdef Py_buffer view
        cdef int64_t rc
        cdef int tid
        if not self._bound:
            raise self._closed_error("writer")
        tid = self._tid(topic)
        if type(data) is bytes:
            rc = self._put(tid, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                rc = self._put(tid, <const char*>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
        if ca_load_relaxed_u32(self._mark):
            raise self._truncated_error()
        if rc > 0:
            return rc
        return self._full(rc, topic, data, -1, None)

    cdef object _try_publish(self, topic, data):
        """publish() without the policy: a sequence number (> 0) or a status code (< 0)."""
        cdef Py_buffer view
        cdef int64_t rc
        cdef int tid
        self._check()
        tid = self._tid(topic)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            rc = self._put(tid, <const char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        self._check()
        return rc

    def claim(self, topic, Py_ssize_t size):
        """A writable block of ``size`` bytes in shared memory (publish with ``commit()``).

        Returns None when the ``drop`` policy dropped it.
        """
        cdef object result
        if not self._bound:
            raise self._closed_error("writer")
        result = self._try_claim(topic, size)
        if type(result) is Message:
            return result
        return self._full(result, topic, None, size, None)

    cdef object _try_claim(self, topic, Py_ssize_t size):
        """claim() without the policy: a claimed Message, or a status code (< 0)."""
        cdef int c
        cdef int64_t idx
        cdef Message claim
        cdef PyObject* entry
        cdef uint64_t g
        cdef int tid
        self._check()
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        tid = self._tid(topic)
        c = self._class_of(size)
        if c < 0:
            return TOO_LARGE
        idx = self._take(c)
        if ca_load_relaxed_u32(self._mark):
            raise self._truncated_error()
        if idx < 0:
            return POOL_EMPTY if idx == -1 else idx
        g = <uint64_t>c * self.bpc + <uint64_t>idx
        claim = None
        if self._cache is not None:
            entry = PyList_GET_ITEM(self._cache, <Py_ssize_t>g)
            if entry != <PyObject*>None:
                claim = <Message>entry
                hft_list_put(self._cache, <Py_ssize_t>g, None)
                if hft_refcnt(entry) != 1:  # its last holder still keeps it: never reuse
                    claim = None
        if claim is None:
            claim = Message.__new__(Message)
            claim._owner = self
            claim._memory = self
            claim._cls = c
            claim._idx = <uint32_t>idx
            claim._reserved = <Py_ssize_t>self.class_size[c]
            claim.producer = self._lane
        claim._tid = <uint32_t>tid
        claim._length = size
        claim._ptr = self.pools[c] + <uint64_t>idx * self.class_size[c]
        if claim.topic is not topic:
            claim.topic = topic
        claim._reset(CLAIMED)
        self._claims_live += 1
        return claim

    # -- MessageOwner: the claims -----------------------------------------------------------------
    cdef int _refuse_live_views(self, Message claim, str action) except -1:
        """BufferStillExported while a view of the claim is held outside the message (the
        message's own cached views do not count; a released view does not either)."""
        cdef int w, r
        if claim._exports == 0:
            return 0
        w = _view_holders(<PyObject*>claim._wview)
        r = _view_holders(<PyObject*>claim._rview)
        if w == 2 or r == 2 or claim._exports > w + r:
            raise BufferStillExported(f"claim on {claim.topic!r}: a view of its buffer is still "
                                      f"alive; drop it before {action}")
        return 0

    cdef object _commit_message(self, Message claim):
        if not self._bound:
            raise self._closed_error("writer")
        if claim._exports:
            self._refuse_live_views(claim, "commit")
            claim._end_claim_views()
        if self._ring_full():
            return self._full(C_RING_FULL, claim.topic, None, -1, claim)
        return self._finish_commit(claim)

    cdef int _abort_message(self, Message claim) except -1:
        self._refuse_live_views(claim, "abort")
        claim._end_claim_views()
        self._abort_claim(claim)
        self._keep(claim)
        return 0

    cdef void _discard_message(self, Message claim) noexcept:
        # an uncommitted claim dropped by its holder: no export can be alive (each one holds
        # a reference to the message); its block becomes a spare
        if claim._state == CLAIMED:
            self._abort_claim(claim)
        claim._ptr = NULL

    cdef object _retry_commit(self, Message claim):
        """Commit if the ring has room now: the sequence number, or RING_FULL."""
        if claim._state != CLAIMED:
            raise claim._state_error("commit() needs a claimed message")
        self._check()
        if self._ring_full():
            return RING_FULL
        return self._finish_commit(claim)

    cdef object _finish_commit(self, Message claim):
        cdef uint64_t seq = self._emit(claim._tid, <uint32_t>claim._cls, claim._idx,
                                       claim._length)
        claim._state = COMMITTED
        claim.seq = seq
        claim._pub_ns = <int64_t>self._last_pub_ns
        claim._ptr = NULL
        claim._rview = None
        self._claims_live -= 1
        self._keep(claim)
        if ca_load_relaxed_u32(self._mark):
            raise self._truncated_error()
        return seq

    cdef void _keep(self, Message claim) noexcept:
        """A finished claim waits in its block's cache for reuse by the next claim."""
        cdef uint64_t g = <uint64_t>claim._cls * self.bpc + claim._idx
        if self._cache is not None and claim._wview is None and \
                g < <uint64_t>PyList_GET_SIZE(self._cache):
            hft_list_put(self._cache, <Py_ssize_t>g, claim)

    cdef void _abort_claim(self, Message claim) noexcept:
        cdef uint32_t c = <uint32_t>claim._cls
        claim._state = ABORTED
        claim._ptr = NULL
        claim._rview = None
        self._claims_live -= 1
        self._aborted += 1
        if self._nspare[c] < self.bpc:  # always true: a held block is a spare at most once
            self._spares[<uint64_t>c * self.bpc + self._nspare[c]] = claim._idx
            self._nspare[c] += 1
            self._note_spares(1)

    cdef void _skip_seq(self) noexcept:
        """Consume a sequence number for a dropped message (the consumer sees the gap)."""
        self._next_seq += 1
        ca_store_relaxed_u64(<uint64_t*>(self.base + OFF_NEXT_SEQ), self._next_seq)

    # -- exhaustion policy (cold path) -----------------------------------------------------------
    cdef void _count(self, Py_ssize_t off) noexcept:
        if self._bound:
            ca_add_u64(<uint64_t*>(self.base + off), 1)

    cdef int _check_status(self, int64_t rc, data, Py_ssize_t size) except -1:
        if rc == C_TOO_LARGE:
            n = size if size >= 0 else memoryview(data).nbytes
            raise SizeTooLarge(f"{n} B is above the largest size class "
                               f"({self.class_size[self.num_classes - 1]} B) of channel "
                               f"{self._name!r}")
        if rc == C_CORRUPT:
            raise self._corrupt(f"channel {self._name!r}: the free list is inconsistent (a "
                                "block was offered twice or is not free)")
        return 0

    cdef str _full_text(self, int64_t rc, topic):
        what = "the descriptor ring" if rc == C_RING_FULL else "a size class"
        return (f"channel {self._name!r}, topic {topic!r}: {what} is full (the consumer is "
                f"behind or holds the blocks; policy={self._policy_name!r})")

    cdef object _full(self, int64_t rc, topic, data, Py_ssize_t size, Message claim):
        """Apply the policy to a message (or a claim's commit) that found no room."""
        self._check_status(rc, data, size)
        if self._policy == POLICY_DROP:
            self._count(OFF_DROPPED)
            if claim is not None:
                self._abort_claim(claim)
                self._aborted -= 1
            self._skip_seq()
            return None
        if self._policy == POLICY_RAISE:
            self._count(OFF_REJECTED)
            if claim is not None:
                raise ChannelFull(self._full_text(rc, topic) +
                                  " (the claim is still yours: commit again or abort)")
            raise ChannelFull(self._full_text(rc, topic))
        return self._block(rc, topic, data, size, claim)

    cdef object _block(self, int64_t rc, topic, data, Py_ssize_t size, Message claim):
        """The block policy: retry until there is room, the timeout passes or the peer died."""
        cdef uint64_t start = hft_clock_monotonic_ns(), now
        cdef uint64_t deadline = start + <uint64_t>(min(self._timeout, 1e9) * 1e9)
        cdef uint64_t next_check = start + 20_000_000
        cdef Py_ssize_t spins = 0
        cdef object result
        self._count(OFF_WAITS)
        while True:
            if claim is not None:
                result = self._retry_commit(claim)
            elif size >= 0:
                result = self._try_claim(topic, size)
            else:
                result = self._try_publish(topic, data)
            if type(result) is not int or result > 0:
                return result
            self._check_status(result, data, size)
            now = hft_clock_monotonic_ns()
            if now >= deadline:
                self._count(OFF_REJECTED)
                raise ChannelFull(self._full_text(result, topic) +
                                  f"; no room within {self._timeout} s")
            if now >= next_check:
                next_check = now + 20_000_000
                self.heartbeat()
                pid, alive = self.peer()
                if alive is False:
                    self._count(OFF_REJECTED)
                    raise PeerDead(f"channel {self._name!r}: the consumer (pid {pid}) died; "
                                   "call recover_consumer() and wait for a new one")
            spins += 1
            with nogil:
                if spins < 50:
                    sched_yield()
                else:
                    hft_sleep_ns(200_000)
            PyErr_CheckSignals()
