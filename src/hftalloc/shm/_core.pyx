# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: freethreading_compatible = False
"""Compiled hot path of the shared-memory channel (see ``hftalloc.shm.layout``).

One producer process and one consumer process share a segment holding a ring of
32-byte message descriptors and power-of-two size-class pools. Synchronisation is by
memory ordering only (no locks): every cursor has exactly one writer, which publishes
it with a release store; the other side reads it with an acquire load.

Producer, per message: take a block index from the class's free ring (acquire
``fhead``), mark the block PRODUCER, advance ``ftail``; copy the payload; write the
descriptor; mark the block QUEUED; release-store ``head``.
Consumer, per message: acquire ``head``; read the descriptor (every field checked
against the geometry: a corrupt segment raises, it never reads out of bounds); mark
the block CONSUMER; release-store ``tail``; dispatch; when the message is no longer
used (subscribers returned, retains released, no buffer export left) mark the block
FREE, write it into the free ring and release-store ``fhead``.

A block is therefore owned by exactly one side at a time and is never reused while a
descriptor or a consumer-side message refers to it. The owner bytes let a surviving
or replacing process reclaim the blocks of a dead one (``_reclaim_*``).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.buffer cimport PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.exc cimport PyErr_CheckSignals
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.memoryview cimport PyMemoryView_FromObject
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from coreallocs._buffer cimport fill_byte_buffer

from hftalloc.errors import BufferStillExported, MessageReleased, MessageStateError, NotRetained
from hftalloc.histogram import HEADER as _PY_HEADER
from hftalloc.histogram import MAX_VALUE as _PY_MAX_VALUE
from hftalloc.histogram import SUB_BITS as _PY_SUB_BITS
from hftalloc.shm import layout as _L
from hftalloc.errors import ChannelClosed, SegmentCorrupted

cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>
    static inline uint64_t hft_load_acq(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline uint64_t hft_load_rlx(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void hft_store_rel(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline void hft_store_rlx(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    static inline uint64_t hft_add(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
    static inline int hft_cas(int64_t *p, int64_t expected, int64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline uint8_t hft_load8(uint8_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void hft_store8(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint64_t hft_mono_ns(void) {
        struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    }
    static inline uint64_t hft_wall_ns(void) {
        struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    }
    static inline void hft_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    static inline uint32_t hft_load32(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void hft_store32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    static inline int hft_cas32(uint32_t *p, uint32_t expected, uint32_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    #ifdef __linux__
    #include <linux/futex.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #include <limits.h>
    #define HFT_HAS_FUTEX 1
    /* shared (not private) futexes: the word lives in a mapping shared between processes */
    static inline int hft_futex_wait(uint32_t *p, uint32_t val, int64_t timeout_ns) {
        struct timespec ts, *tp = NULL;
        if (timeout_ns >= 0) { ts.tv_sec = timeout_ns / 1000000000; ts.tv_nsec = timeout_ns % 1000000000; tp = &ts; }
        return (int)syscall(SYS_futex, p, FUTEX_WAIT, val, tp, NULL, 0);
    }
    static inline void hft_futex_wake(uint32_t *p) { syscall(SYS_futex, p, FUTEX_WAKE, INT_MAX, NULL, NULL, 0); }
    #else
    #define HFT_HAS_FUTEX 0
    static inline int hft_futex_wait(uint32_t *p, uint32_t val, int64_t timeout_ns) {
        struct timespec ts; ts.tv_sec = 0; ts.tv_nsec = 50000;
        if (timeout_ns >= 0 && timeout_ns < 50000) ts.tv_nsec = timeout_ns;
        nanosleep(&ts, NULL); return 0;
    }
    static inline void hft_futex_wake(uint32_t *p) { (void)p; }
    #endif
    #define HFT_SUB_BITS 8
    #define HFT_HEADER 4
    #define HFT_MAX_VALUE ((1ULL << 44) - 1)
    """
    uint64_t load_acq "hft_load_acq"(uint64_t* p) noexcept nogil
    uint64_t load_rlx "hft_load_rlx"(uint64_t* p) noexcept nogil
    void store_rel "hft_store_rel"(uint64_t* p, uint64_t v) noexcept nogil
    void store_rlx "hft_store_rlx"(uint64_t* p, uint64_t v) noexcept nogil
    uint64_t atomic_add "hft_add"(uint64_t* p, uint64_t v) noexcept nogil
    bint cas_i64 "hft_cas"(int64_t* p, int64_t expected, int64_t desired) noexcept nogil
    uint8_t load8 "hft_load8"(uint8_t* p) noexcept nogil
    void store8 "hft_store8"(uint8_t* p, uint8_t v) noexcept nogil
    uint64_t mono_ns "hft_mono_ns"() noexcept nogil
    uint64_t wall_ns "hft_wall_ns"() noexcept nogil
    void fence_seq_cst "hft_fence"() noexcept nogil
    uint32_t load32 "hft_load32"(uint32_t* p) noexcept nogil
    void store32 "hft_store32"(uint32_t* p, uint32_t v) noexcept nogil
    bint cas32 "hft_cas32"(uint32_t* p, uint32_t expected, uint32_t desired) noexcept nogil
    int futex_wait "hft_futex_wait"(uint32_t* p, uint32_t val, int64_t timeout_ns) noexcept nogil
    void futex_wake "hft_futex_wake"(uint32_t* p) noexcept nogil
    int HAS_FUTEX "HFT_HAS_FUTEX"
    int SUB_BITS "HFT_SUB_BITS"
    int HIST_HEADER "HFT_HEADER"
    unsigned long long HIST_MAX "HFT_MAX_VALUE"
    int __builtin_clzll(unsigned long long) nogil
    Py_ssize_t _refcnt "Py_REFCNT"(PyObject* ob)

if (_PY_SUB_BITS, _PY_HEADER, _PY_MAX_VALUE) != (SUB_BITS, HIST_HEADER, HIST_MAX):
    raise ImportError("hftalloc.shm._core was built for another histogram layout; rebuild it")

# layout constants (checked against hftalloc.shm.layout at import)
cdef enum:
    MAX_CLASSES = 15
    HEADER_SIZE = 4096
    DESC_SIZE = 32
    TOPIC_ENTRY = 256
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
    ROLE_HEARTBEAT = 16
    OWN_FREE = 0
    OWN_PRODUCER = 1
    OWN_QUEUED = 2
    OWN_CONSUMER = 3

if (MAX_CLASSES, HEADER_SIZE, DESC_SIZE, TOPIC_ENTRY, OFF_HEAD, OFF_NEXT_SEQ, OFF_PUBLISHED,
        OFF_TAIL, OFF_LAST_SEQ, OFF_GAPS, OFF_RECEIVED, OFF_TOPIC_COUNT, OFF_WAITING,
        OFF_FREE_CURSORS, LINE,
        ROLE_HEARTBEAT, OWN_FREE, OWN_PRODUCER, OWN_QUEUED, OWN_CONSUMER) != (
        _L.MAX_CLASSES, _L.HEADER_SIZE, _L.DESC_SIZE, _L.TOPIC_ENTRY, _L.OFF_HEAD, _L.OFF_NEXT_SEQ,
        _L.OFF_PUBLISHED, _L.OFF_TAIL, _L.OFF_LAST_SEQ, _L.OFF_GAPS, _L.OFF_RECEIVED,
        _L.OFF_TOPIC_COUNT, _L.OFF_WAITING, _L.OFF_FREE_CURSORS, _L.LINE, _L.ROLE_HEARTBEAT, _L.FREE,
        _L.PRODUCER, _L.QUEUED, _L.CONSUMER):
    raise ImportError("hftalloc.shm._core was built for another segment layout; rebuild it")


# status codes of the non-raising producer calls (negative; a sequence number is > 0)
RING_FULL = -1
POOL_EMPTY = -2
TOO_LARGE = -3
CORRUPT = -4

# message / claim states
cdef enum:
    IN_FLIGHT = 0
    RETAINED = 1
    RELEASED = 2
    CLAIMED = 3
    COMMITTED = 4
    ABORTED = 5
STATE_NAMES = ("in flight", "retained", "released", "claimed", "committed", "aborted")


cdef inline void _record(uint64_t* c, uint64_t v) noexcept nogil:
    """hftalloc.histogram.Histogram.record, in C (same bucket layout)."""
    cdef uint64_t clamped = v if v <= HIST_MAX else HIST_MAX
    cdef int shift
    if clamped < (1 << SUB_BITS):
        c[HIST_HEADER + clamped] += 1
    else:
        shift = (64 - __builtin_clzll(clamped)) - SUB_BITS
        c[HIST_HEADER + (<uint64_t>shift << (SUB_BITS - 1)) + (clamped >> shift)] += 1
    c[0] += 1
    c[1] += v
    if v < c[2]:
        c[2] = v
    if v > c[3]:
        c[3] = v


def load_u64(buffer, Py_ssize_t offset):
    """Acquire-load the u64 at ``offset`` of ``buffer`` (e.g. READY before the layout is known)."""
    cdef Py_buffer view
    cdef uint64_t value
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    try:
        if offset < 0 or offset & 7 or offset + 8 > view.len:
            raise ValueError(f"bad offset {offset}")
        value = load_acq(<uint64_t*>(<char*>view.buf + offset))
    finally:
        PyBuffer_Release(&view)
    return value


HAS_FUTEX_WAIT = bool(HAS_FUTEX)


def monotonic_ns():
    """CLOCK_MONOTONIC in ns: the clock of ``publish_ns`` (= time.perf_counter_ns on Linux)."""
    return mono_ns()


def wall_clock_ns():
    """CLOCK_REALTIME in ns: the clock of the heartbeats."""
    return wall_ns()


cdef class ChannelCore:
    """A mapped channel segment: geometry, cursors, owner bytes and recovery (no role)."""

    cdef Py_buffer _view
    cdef bint _bound
    cdef char* base
    cdef uint64_t total_size
    cdef uint32_t ring_cap, ring_mask, num_classes, min_size, min_shift, bpc, max_topics
    cdef uint32_t free_cap, free_mask
    cdef char* ring
    cdef char* topics
    cdef uint8_t* owners
    cdef uint32_t* free_rings[MAX_CLASSES]
    cdef char* pools[MAX_CLASSES]
    cdef uint64_t class_size[MAX_CLASSES]
    cdef uint64_t* fhead_p[MAX_CLASSES]
    cdef uint64_t* ftail_p[MAX_CLASSES]
    cdef uint64_t* head_p
    cdef uint64_t* tail_p
    cdef uint64_t* heartbeat_p
    cdef uint32_t* waiting_p

    def _bind(self, buffer, uint32_t ring_cap, uint32_t num_classes, uint32_t min_size,
              uint32_t bpc, uint32_t max_topics, uint32_t free_cap, uint64_t ring_off,
              uint64_t topics_off, uint64_t free_off, uint64_t owners_off, uint64_t pools_off,
              uint64_t total_size):
        """Map the geometry onto ``buffer`` (a writable mapping of the whole segment)."""
        cdef uint32_t c
        cdef uint64_t off
        if self._bound:
            raise RuntimeError("already bound")
        if num_classes < 1 or num_classes > MAX_CLASSES or ring_cap == 0 or \
                ring_cap & (ring_cap - 1) or free_cap & (free_cap - 1) or free_cap < bpc or \
                bpc == 0 or min_size < 8 or min_size & (min_size - 1):
            raise SegmentCorrupted("invalid channel geometry")
        PyObject_GetBuffer(buffer, &self._view, PyBUF_WRITABLE)
        self._bound = True
        if <uint64_t>self._view.len < total_size or \
                ring_off < HEADER_SIZE or \
                ring_off + <uint64_t>ring_cap * DESC_SIZE > topics_off or \
                topics_off + <uint64_t>max_topics * TOPIC_ENTRY > free_off or \
                free_off + <uint64_t>num_classes * free_cap * 4 > owners_off or \
                owners_off + <uint64_t>num_classes * bpc > pools_off:
            self._release()
            raise SegmentCorrupted("channel regions overlap or exceed the segment")
        self.base = <char*>self._view.buf
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
        if off > total_size:
            self._release()
            raise SegmentCorrupted("channel pools exceed the segment")
        self.head_p = <uint64_t*>(self.base + OFF_HEAD)
        self.tail_p = <uint64_t*>(self.base + OFF_TAIL)
        self.waiting_p = <uint32_t*>(self.base + OFF_WAITING)
        self.heartbeat_p = NULL

    cdef void _release(self) noexcept:
        if self._bound:
            PyBuffer_Release(&self._view)
            self._bound = False
            self.base = NULL

    def _unbind(self):
        """Drop the reference to the mapping (the segment can then be unmapped)."""
        self._release()

    def __dealloc__(self):
        self._release()

    @property
    def bound(self):
        return self._bound

    cdef inline int _check(self) except -1:
        if not self._bound:
            raise ChannelClosed("the channel endpoint is closed")
        return 0

    # -- header words for the Python layer (role slots, counters) ---------------------------
    cdef inline uint64_t* _word(self, Py_ssize_t off) except NULL:
        self._check()
        if off < 0 or off + 8 > HEADER_SIZE or off & 7:
            raise ValueError(f"bad header offset {off}")
        return <uint64_t*>(self.base + off)

    def _load(self, Py_ssize_t off):
        return load_acq(self._word(off))

    def _load_signed(self, Py_ssize_t off):
        return <int64_t>load_acq(self._word(off))

    def _store(self, Py_ssize_t off, uint64_t value):
        store_rel(self._word(off), value)

    def _store_signed(self, Py_ssize_t off, int64_t value):
        store_rel(self._word(off), <uint64_t>value)

    def _add(self, Py_ssize_t off, uint64_t delta=1):
        return atomic_add(self._word(off), delta)

    def _cas(self, Py_ssize_t off, int64_t expected, int64_t desired):
        """Compare-and-swap a signed header word; True when it was ``expected``."""
        return cas_i64(<int64_t*>self._word(off), expected, desired)

    def _set_heartbeat_slot(self, Py_ssize_t role_off):
        self.heartbeat_p = self._word(role_off + ROLE_HEARTBEAT)

    def heartbeat(self):
        """Stamp this endpoint's heartbeat (wall clock) in the segment."""
        self._check()
        if self.heartbeat_p != NULL:
            store_rlx(self.heartbeat_p, wall_ns())

    # -- topics -------------------------------------------------------------------------------
    def _topic_count(self):
        self._check()
        return load_acq(<uint64_t*>(self.base + OFF_TOPIC_COUNT))

    def _read_topic(self, uint32_t tid):
        """Topic ``tid`` from the table (published entries only)."""
        cdef uint64_t count = load_acq(<uint64_t*>(self.base + OFF_TOPIC_COUNT))
        cdef char* entry
        cdef uint16_t n
        self._check()
        if tid >= count or tid >= self.max_topics:
            raise SegmentCorrupted(f"topic id {tid} is not in the topic table ({count} entries)")
        entry = self.topics + <uint64_t>tid * TOPIC_ENTRY
        memcpy(&n, entry, 2)
        if n == 0 or n > TOPIC_ENTRY - 2:
            raise SegmentCorrupted(f"topic entry {tid} has length {n}")
        try:
            return entry[2:2 + n].decode("utf-8")
        except UnicodeDecodeError:
            raise SegmentCorrupted(f"topic entry {tid} is not UTF-8") from None

    def _write_topic(self, bytes raw):
        """Append ``raw`` to the topic table (producer only); returns its id."""
        cdef uint64_t* count_p = <uint64_t*>(self.base + OFF_TOPIC_COUNT)
        cdef uint64_t count
        cdef uint16_t n = <uint16_t>len(raw)
        cdef char* entry
        self._check()
        count = load_rlx(count_p)
        if count >= self.max_topics:
            return -1
        if len(raw) == 0 or len(raw) > TOPIC_ENTRY - 2:
            raise ValueError("topic entry length out of range")
        entry = self.topics + count * TOPIC_ENTRY
        memcpy(entry, &n, 2)
        memcpy(entry + 2, PyBytes_AS_STRING(raw), n)
        store_rel(count_p, count + 1)
        return count

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
        cdef uint64_t fh = load_rlx(self.fhead_p[c])
        store8(&self.owners[c * self.bpc + idx], OWN_FREE)
        self.free_rings[c][fh & self.free_mask] = idx
        store_rel(self.fhead_p[c], fh + 1)

    cdef void _orphan(self, uint32_t c, uint32_t idx) noexcept:
        """A dead producer's block: back to the free ring (overridden by ProducerCore)."""
        self._push_free(c, idx)

    cdef uint8_t* _membership(self, uint64_t start, uint64_t end, bint ring_side) except NULL:
        """Flag the blocks referenced by queued descriptors [start, end) (bit 1) and by the
        free rings (bit 2)."""
        cdef uint64_t total = <uint64_t>self.num_classes * self.bpc
        cdef uint8_t* flags = <uint8_t*>malloc(total if total else 1)
        cdef uint64_t pos, ft, fh
        cdef uint32_t c, idx
        if flags == NULL:
            raise MemoryError()
        memset(flags, 0, total)
        try:
            if end - start > self.ring_cap:
                raise SegmentCorrupted(f"ring cursors out of range (tail={start}, head={end})")
            pos = start
            while pos != end:
                if self._decode(pos, &c, &idx) < 0:
                    raise SegmentCorrupted(f"descriptor {pos} refers to a block out of range")
                flags[c * self.bpc + idx] |= 1
                pos += 1
            for c in range(self.num_classes):
                ft = load_acq(self.ftail_p[c])
                fh = load_acq(self.fhead_p[c])
                if fh - ft > self.bpc:
                    raise SegmentCorrupted(f"free ring {c} cursors out of range")
                while ft != fh:
                    idx = self.free_rings[c][ft & self.free_mask]
                    if idx >= self.bpc:
                        raise SegmentCorrupted(f"free ring {c} holds block {idx}")
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
        cdef uint64_t tail = load_acq(self.tail_p)
        cdef uint64_t head = load_acq(self.head_p)
        cdef uint8_t* flags = self._membership(tail, head, True)
        cdef uint64_t g, total = <uint64_t>self.num_classes * self.bpc
        cdef uint8_t st
        cdef Py_ssize_t reclaimed = 0, requeued = 0
        try:
            for g in range(total):
                st = load8(&self.owners[g])
                if st == OWN_CONSUMER:
                    if flags[g] & 1:
                        store8(&self.owners[g], OWN_QUEUED)
                        requeued += 1
                    else:
                        self._push_free(<uint32_t>(g // self.bpc), <uint32_t>(g % self.bpc))
                        reclaimed += 1
                elif st == OWN_FREE and not flags[g]:
                    self._push_free(<uint32_t>(g // self.bpc), <uint32_t>(g % self.bpc))
                    reclaimed += 1
        finally:
            free(flags)
        return reclaimed, requeued

    def _reclaim_producer(self):
        """Take back a dead (or closed) producer's blocks (the caller holds the producer role).

        PRODUCER blocks, and QUEUED blocks whose descriptor was never published, are
        orphans: a ConsumerCore pushes them to the free ring, a ProducerCore keeps them
        as its spares. A PRODUCER block still in the free ring (death between marking and
        advancing ``ftail``) is simply marked FREE again. Returns the number of orphans.
        """
        self._check()
        cdef uint64_t tail = load_acq(self.tail_p)
        cdef uint64_t head = load_acq(self.head_p)
        cdef uint8_t* flags = self._membership(tail, head, False)
        cdef uint64_t g, total = <uint64_t>self.num_classes * self.bpc
        cdef uint8_t st
        cdef Py_ssize_t orphans = 0
        try:
            for g in range(total):
                st = load8(&self.owners[g])
                if st == OWN_PRODUCER and flags[g] & 2:
                    store8(&self.owners[g], OWN_FREE)
                elif st == OWN_PRODUCER or (st == OWN_QUEUED and not flags[g] & 1):
                    self._orphan(<uint32_t>(g // self.bpc), <uint32_t>(g % self.bpc))
                    orphans += 1
        finally:
            free(flags)
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
                row[load8(&self.owners[c * self.bpc + i]) & 3] += 1
            rows.append(row)
        return rows

    def _init_free_rings(self):
        """Creator only, before READY: every block starts in its class's free ring."""
        self._check()
        cdef uint32_t c, i
        for c in range(self.num_classes):
            for i in range(self.bpc):
                self.free_rings[c][i] = i
                self.owners[c * self.bpc + i] = OWN_FREE
            store_rel(self.fhead_p[c], self.bpc)
            store_rel(self.ftail_p[c], 0)

    @property
    def queued(self):
        """Descriptors published and not yet consumed."""
        self._check()
        return load_acq(self.head_p) - load_acq(self.tail_p)


# ---------------------------------------------------------------------------------------------
@cython.final
cdef class ShmClaim:
    """A block claimed in shared memory: write ``buffer`` in place, then ``commit()``.

    Leaving a ``with`` block commits (or aborts if an exception escaped). Dropping an
    uncommitted claim gives its block back (counted in ``aborted``).
    """

    cdef ProducerCore _writer
    cdef char* _ptr
    cdef uint32_t _cls, _idx, _tid
    cdef Py_ssize_t _length
    cdef Py_ssize_t _exports
    cdef int _state
    cdef readonly str topic
    cdef readonly uint64_t seq

    def __init__(self):
        raise TypeError("claims are created by ChannelWriter.claim()")

    @property
    def buffer(self):
        """Writable view of the block (zero copy), valid until commit/abort."""
        if self._state != CLAIMED:
            raise MessageStateError(f"claim on {self.topic!r} is {STATE_NAMES[self._state]}; "
                                    "only a claimed block can be written")
        return PyMemoryView_FromObject(self)

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        if self._state != CLAIMED:
            raise MessageStateError(f"claim on {self.topic!r} is {STATE_NAMES[self._state]}")
        fill_byte_buffer(buffer, self, self._ptr, &self._length, False, flags)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer* buffer):
        self._exports -= 1

    def __len__(self):
        return self._length

    @property
    def nbytes(self):
        return self._length

    @property
    def size_class(self):
        return self._writer.class_size[self._cls]

    @property
    def state(self):
        return STATE_NAMES[self._state]

    def commit(self):
        """Publish the claimed block; returns its sequence number (None if dropped)."""
        if self._state != CLAIMED:
            raise MessageStateError(f"claim on {self.topic!r} is {STATE_NAMES[self._state]}, "
                                    "commit() needs a claimed block")
        if self._exports:
            raise BufferStillExported(
                f"claim on {self.topic!r}: a view of its buffer is still alive; drop it "
                "before commit")
        return self._writer._commit_claim(self)

    def abort(self):
        """Give the block back without publishing it (counted in ``aborted``)."""
        if self._state != CLAIMED:
            raise MessageStateError(f"claim on {self.topic!r} is {STATE_NAMES[self._state]}, "
                                    "abort() needs a claimed block")
        if self._exports:
            raise BufferStillExported(f"claim on {self.topic!r}: a view of its buffer is "
                                      "still alive; drop it before abort")
        self._writer._abort_claim(self)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._state != CLAIMED:
            return
        if exc_type is not None or self._exports:
            if self._exports:
                if exc_type is not None:
                    return  # the view is still exported: __dealloc__ gives the block back
                raise BufferStillExported(
                    f"claim on {self.topic!r}: a view of its buffer is still alive at the end "
                    "of the with block; it was not published")
            self._writer._abort_claim(self)
            return
        self._writer._commit_claim(self)

    def __dealloc__(self):
        if self._state == CLAIMED and self._writer is not None and self._writer._bound:
            self._writer._abort_claim(self)

    def __repr__(self):
        return (f"<ShmClaim topic={self.topic!r} nbytes={self._length} "
                f"{STATE_NAMES[self._state]}>")


cdef class ProducerCore(ChannelCore):
    """Producer side of a channel: ``publish`` (copy in) and ``claim`` (write in place)."""

    cdef uint64_t _head, _tail_cache, _next_seq, _published
    cdef uint64_t _ftail[MAX_CLASSES]
    cdef uint64_t _fhead_cache[MAX_CLASSES]
    cdef uint32_t* _spares
    cdef uint32_t _nspare[MAX_CLASSES]
    cdef public dict topic_ids
    cdef uint32_t _beat
    cdef public Py_ssize_t claims_live
    cdef public Py_ssize_t aborted

    def __cinit__(self):
        self._spares = NULL
        self.topic_ids = {}

    def __dealloc__(self):
        if self._spares != NULL:
            free(self._spares)
            self._spares = NULL

    def _start(self):
        """Load the cursors from the segment (after the role was taken and recovered)."""
        cdef uint32_t c
        self._check()
        if self._spares == NULL:
            self._spares = <uint32_t*>malloc(<size_t>self.num_classes * self.bpc * 4)
            if self._spares == NULL:
                raise MemoryError()
        self._head = load_acq(self.head_p)
        self._tail_cache = load_acq(self.tail_p)
        self._next_seq = load_acq(<uint64_t*>(self.base + OFF_NEXT_SEQ))
        if self._next_seq == 0:
            self._next_seq = 1
        self._published = load_acq(<uint64_t*>(self.base + OFF_PUBLISHED))
        for c in range(self.num_classes):
            self._ftail[c] = load_acq(self.ftail_p[c])
            self._fhead_cache[c] = load_acq(self.fhead_p[c])
        self.topic_ids = {}
        for tid in range(self._topic_count()):
            self.topic_ids[self._read_topic(tid)] = tid

    cdef void _orphan(self, uint32_t c, uint32_t idx) noexcept:
        """A dead producer's block becomes one of our spares."""
        if self._spares == NULL:  # not started: leave it to the consumer's recovery
            return
        store8(&self.owners[c * self.bpc + idx], OWN_PRODUCER)
        self._spares[c * self.bpc + self._nspare[c]] = idx
        self._nspare[c] += 1

    @property
    def spares(self):
        """Blocks this producer holds back for reuse (aborted claims, adopted orphans)."""
        cdef uint32_t c
        return sum(self._nspare[c] for c in range(self.num_classes))

    # -- hot path --------------------------------------------------------------------------------
    cdef inline int64_t _take(self, uint32_t c) noexcept:
        """A free block index of class ``c``; -1 if none; CORRUPT if the ring lies."""
        cdef uint64_t ft
        cdef uint32_t idx
        if self._nspare[c]:
            self._nspare[c] -= 1
            return self._spares[c * self.bpc + self._nspare[c]]
        ft = self._ftail[c]
        if ft == self._fhead_cache[c]:
            self._fhead_cache[c] = load_acq(self.fhead_p[c])
            if ft == self._fhead_cache[c]:
                return -1
            if self._fhead_cache[c] - ft > self.bpc:
                return CORRUPT
        idx = self.free_rings[c][ft & self.free_mask]
        if idx >= self.bpc or load8(&self.owners[c * self.bpc + idx]) != OWN_FREE:
            return CORRUPT
        store8(&self.owners[c * self.bpc + idx], OWN_PRODUCER)
        self._ftail[c] = ft + 1
        store_rel(self.ftail_p[c], ft + 1)
        return idx

    cdef inline bint _ring_full(self) noexcept:
        if self._head - self._tail_cache < self.ring_cap:
            return False
        self._tail_cache = load_acq(self.tail_p)
        return self._head - self._tail_cache >= self.ring_cap

    cdef inline uint64_t _emit(self, uint32_t tid, uint32_t c, uint32_t idx,
                               Py_ssize_t n) noexcept:
        """Write the descriptor and publish it (the ring has room)."""
        cdef uint64_t seq = self._next_seq
        cdef uint64_t* d = <uint64_t*>(self.ring + (self._head & self.ring_mask) * DESC_SIZE)
        cdef uint32_t* w = <uint32_t*>d
        d[0] = seq
        d[1] = mono_ns()
        w[4] = tid
        w[5] = <uint32_t>n
        w[6] = (c << 24) | idx
        w[7] = 0
        store8(&self.owners[c * self.bpc + idx], OWN_QUEUED)
        self._next_seq = seq + 1
        self._head += 1
        self._published += 1
        store_rlx(<uint64_t*>(self.base + OFF_NEXT_SEQ), self._next_seq)
        store_rlx(<uint64_t*>(self.base + OFF_PUBLISHED), self._published)
        store_rel(self.head_p, self._head)
        # eventcount: the head store must be visible before we look at the consumer's flag
        # (the consumer does the mirror image: flag store, fence, head load)
        fence_seq_cst()
        if load32(self.waiting_p) and cas32(self.waiting_p, 1, 0):
            futex_wake(self.waiting_p)
        self._beat += 1
        if self._beat & 1023 == 0 and self.heartbeat_p != NULL:
            store_rlx(self.heartbeat_p, wall_ns())
        return seq

    cdef inline int64_t _put(self, uint32_t tid, const char* src, Py_ssize_t n) noexcept:
        cdef int c = self._class_of(n)
        cdef int64_t idx
        if c < 0:
            return TOO_LARGE
        if self._ring_full():
            return RING_FULL
        idx = self._take(c)
        if idx < 0:
            return POOL_EMPTY if idx == -1 else idx
        if n:
            memcpy(self.pools[c] + <uint64_t>idx * self.class_size[c], src, n)
        return <int64_t>self._emit(tid, c, <uint32_t>idx, n)

    cdef inline int _tid(self, topic) except -1:
        cdef PyObject* found = PyDict_GetItem(self.topic_ids, topic)
        if found != NULL:
            return <int>(<object>found)
        return self._register_topic(topic)

    def publish(self, topic, data):
        """Copy ``data`` (bytes or any contiguous buffer) into a block and publish it on
        ``topic``. Returns the sequence number, or None when the ``drop`` policy dropped it.
        """
        cdef Py_buffer view
        cdef int64_t rc
        cdef int tid
        if not self._bound:
            raise ChannelClosed("the channel writer is closed")
        tid = self._tid(topic)
        if type(data) is bytes:
            rc = self._put(tid, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                rc = self._put(tid, <const char*>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
        if rc > 0:
            return rc
        return self._full(rc, topic, data, -1)

    def _try_publish(self, topic, data):
        """publish() without the policy: a sequence number (> 0) or a status code (< 0)."""
        cdef Py_buffer view
        cdef int64_t rc
        if not self._bound:
            raise ChannelClosed("the channel writer is closed")
        tid = self._tid(topic)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            rc = self._put(tid, <const char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return rc

    def claim(self, topic, Py_ssize_t size):
        """A writable block of ``size`` bytes in shared memory (publish with ``commit()``).

        Returns None when the ``drop`` policy dropped it.
        """
        cdef object result
        if not self._bound:
            raise ChannelClosed("the channel writer is closed")
        result = self._try_claim(topic, size)
        if type(result) is ShmClaim:
            return result
        return self._full(result, topic, None, size)

    def _try_claim(self, topic, Py_ssize_t size):
        """claim() without the policy: a ShmClaim, or a status code (< 0)."""
        cdef int c
        cdef int64_t idx
        cdef ShmClaim claim
        cdef int tid
        if not self._bound:
            raise ChannelClosed("the channel writer is closed")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        tid = self._tid(topic)
        c = self._class_of(size)
        if c < 0:
            return TOO_LARGE
        idx = self._take(c)
        if idx < 0:
            return POOL_EMPTY if idx == -1 else idx
        claim = ShmClaim.__new__(ShmClaim)
        claim._writer = self
        claim._cls = c
        claim._idx = <uint32_t>idx
        claim._tid = tid
        claim._length = size
        claim._ptr = self.pools[c] + <uint64_t>idx * self.class_size[c]
        claim._state = CLAIMED
        claim.topic = topic
        self.claims_live += 1
        return claim

    cdef object _commit_claim(self, ShmClaim claim):
        if not self._bound:
            raise ChannelClosed("the channel writer is closed")
        if self._ring_full():
            return self._full_commit(claim)
        return self._finish_commit(claim)

    def _retry_commit(self, ShmClaim claim):
        """Commit if the ring has room now: the sequence number, or RING_FULL."""
        if claim._state != CLAIMED:
            raise MessageStateError(f"claim on {claim.topic!r} is {STATE_NAMES[claim._state]}")
        if self._ring_full():
            return RING_FULL
        return self._finish_commit(claim)

    cdef object _finish_commit(self, ShmClaim claim):
        cdef uint64_t seq = self._emit(claim._tid, claim._cls, claim._idx, claim._length)
        claim._state = COMMITTED
        claim.seq = seq
        self.claims_live -= 1
        return seq

    cdef void _abort_claim(self, ShmClaim claim) noexcept:
        claim._state = ABORTED
        self.claims_live -= 1
        self.aborted += 1
        self._nspare[claim._cls] += 1
        self._spares[claim._cls * self.bpc + self._nspare[claim._cls] - 1] = claim._idx

    def _drop_claim(self, ShmClaim claim):
        """The drop policy on a claim whose commit found the ring full."""
        self._abort_claim(claim)
        self.aborted -= 1
        return self._skip_seq()

    def _skip_seq(self):
        """Consume a sequence number for a dropped message (the consumer sees the gap)."""
        self._next_seq += 1
        store_rlx(<uint64_t*>(self.base + OFF_NEXT_SEQ), self._next_seq)

    @property
    def published(self):
        return self._published

    @property
    def next_seq(self):
        return self._next_seq

    # -- provided by the Python layer -------------------------------------------------------------
    def _register_topic(self, topic):  # pragma: no cover - overridden
        raise NotImplementedError

    def _full(self, rc, topic, data, size):  # pragma: no cover - overridden
        raise NotImplementedError

    def _full_commit(self, claim):  # pragma: no cover - overridden
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
@cython.final
cdef class Route:
    """Consumer-side dispatch entry of one topic: matching subscribers and counters."""

    cdef public str topic
    cdef public tuple callbacks
    cdef public tuple subscriptions
    cdef public Py_ssize_t received
    cdef public Py_ssize_t delivered
    cdef public Py_ssize_t errors

    def __init__(self, str topic):
        self.topic = topic
        self.callbacks = ()
        self.subscriptions = ()


@cython.freelist(64)
@cython.final
cdef class ShmMessage:
    """A message read in place from shared memory (same API as the bus's messages).

    ``payload`` is a read-only view of the block in the segment (no copy), valid until
    the subscriber returns; ``retain()``/``release()`` keep it longer. A view kept after
    that holds the block back (``leaked_views``) instead of letting it be reused.
    """

    cdef ConsumerCore _reader
    cdef char* _ptr
    cdef Py_ssize_t _length
    cdef uint32_t _cls, _idx
    cdef int _state
    cdef int _refs
    cdef Py_ssize_t _exports
    cdef readonly str topic
    cdef readonly uint64_t seq
    cdef readonly uint64_t publish_ns
    cdef readonly uint64_t receive_ns

    def __init__(self):
        raise TypeError("messages are created by ChannelReader.poll()")

    @property
    def payload(self):
        """Read-only view of the payload in shared memory (zero copy)."""
        if self._state == RELEASED:
            raise self._released_error()
        return PyMemoryView_FromObject(self)

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        if self._state == RELEASED:
            raise self._released_error()
        if flags & PyBUF_WRITABLE:
            raise BufferError("shared-memory messages are read-only")
        fill_byte_buffer(buffer, self, self._ptr, &self._length, True, flags)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer* buffer):
        self._exports -= 1

    def tobytes(self):
        """A copy of the payload."""
        if self._state == RELEASED:
            raise self._released_error()
        return self._ptr[:self._length]

    def __len__(self):
        return self._length

    @property
    def nbytes(self):
        return self._length

    @property
    def size_class(self):
        if self._state == RELEASED:
            raise self._released_error()
        return self._reader.class_size[self._cls]

    @property
    def live(self):
        return self._state != RELEASED

    @property
    def state(self):
        return STATE_NAMES[self._state]

    @property
    def refcount(self):
        """Outstanding ``retain()`` calls."""
        return self._refs

    def retain(self):
        """Keep the message (and its block) after the subscriber returns."""
        if self._state == RELEASED:
            raise self._released_error()
        self._refs += 1
        return self

    def release(self):
        """Undo one ``retain()``; the block goes back once nobody holds the message."""
        if self._refs <= 0:
            if self._state == RELEASED:
                raise NotRetained(f"message seq={self.seq} on {self.topic!r} was already "
                                  "released")
            raise NotRetained(f"message seq={self.seq} on {self.topic!r}: release() without "
                              "retain()")
        self._refs -= 1
        if self._refs == 0 and self._state == RETAINED:
            self._reader.retained -= 1
            self._reader._free_message(self)

    cdef object _released_error(self):
        return MessageReleased(f"message seq={self.seq} on {self.topic!r} was released; call "
                               "msg.retain() in the subscriber to keep it")

    def __repr__(self):
        return (f"<ShmMessage seq={self.seq} topic={self.topic!r} nbytes={self._length} "
                f"{STATE_NAMES[self._state]}>")


cdef class ConsumerCore(ChannelCore):
    """Consumer side of a channel: ``poll`` dispatches messages read in place."""

    cdef uint64_t _tail, _head_cache, _last_seq, _gaps, _received
    cdef uint64_t _fhead[MAX_CLASSES]
    cdef uint64_t _ftail_cache[MAX_CLASSES]
    cdef list _topics
    cdef list _routes
    cdef list _deferred
    cdef uint64_t* _lat
    cdef object _lat_owner
    cdef Py_buffer _lat_view
    cdef public Py_ssize_t retained
    cdef public Py_ssize_t leaked_views
    cdef public Py_ssize_t delivered
    cdef public Py_ssize_t errors
    cdef public Py_ssize_t redelivered

    def __cinit__(self):
        self._topics = []
        self._routes = []
        self._deferred = []
        self._lat = NULL

    def __dealloc__(self):
        if self._lat != NULL:
            PyBuffer_Release(&self._lat_view)
            self._lat = NULL

    def _set_latency(self, counts):
        """Record publish->deliver latency into ``counts`` (a Histogram's array('Q'))."""
        if self._lat != NULL:
            PyBuffer_Release(&self._lat_view)
            self._lat = NULL
        PyObject_GetBuffer(counts, &self._lat_view, PyBUF_WRITABLE)
        if self._lat_view.itemsize != 8 and self._lat_view.len < 8 * (HIST_HEADER + 256):
            PyBuffer_Release(&self._lat_view)
            raise ValueError("latency counts must be a Histogram's array('Q')")
        self._lat = <uint64_t*>self._lat_view.buf
        self._lat_owner = counts

    def _start(self):
        """Load the cursors from the segment (after the role was taken and recovered)."""
        cdef uint32_t c
        self._check()
        self._tail = load_acq(self.tail_p)
        self._head_cache = load_acq(self.head_p)
        self._last_seq = load_acq(<uint64_t*>(self.base + OFF_LAST_SEQ))
        self._gaps = load_acq(<uint64_t*>(self.base + OFF_GAPS))
        self._received = load_acq(<uint64_t*>(self.base + OFF_RECEIVED))
        for c in range(self.num_classes):
            self._fhead[c] = load_acq(self.fhead_p[c])
            self._ftail_cache[c] = load_acq(self.ftail_p[c])

    cdef void _push_free(self, uint32_t c, uint32_t idx) noexcept:
        # the consumer keeps its own copy of fhead; recovery may push too
        self._fhead[c] = load_rlx(self.fhead_p[c])
        ChannelCore._push_free(self, c, idx)
        self._fhead[c] += 1

    cdef int _free_block(self, uint32_t c, uint32_t idx) except -1:
        cdef uint64_t fh = self._fhead[c]
        if fh - self._ftail_cache[c] >= self.bpc:
            self._ftail_cache[c] = load_acq(self.ftail_p[c])
            if fh - self._ftail_cache[c] >= self.bpc:
                raise SegmentCorrupted(f"free ring {c} would overflow: a block was given back "
                                       "twice")
        store8(&self.owners[c * self.bpc + idx], OWN_FREE)
        self.free_rings[c][fh & self.free_mask] = idx
        self._fhead[c] = fh + 1
        store_rel(self.fhead_p[c], fh + 1)
        return 0

    cdef int _free_message(self, ShmMessage msg) except -1:
        msg._state = RELEASED
        if msg._exports:
            self.leaked_views += 1
            self._deferred.append(msg)
            return 0
        return self._free_block(msg._cls, msg._idx)

    def _sweep(self):
        """Give back blocks whose leaked views are gone; returns how many are still held."""
        cdef list still = []
        cdef ShmMessage msg
        if not self._deferred:
            return 0
        for msg in self._deferred:
            if msg._exports:
                still.append(msg)
            else:
                self._free_block(msg._cls, msg._idx)
        self._deferred = still
        return len(still)

    cdef Route _route(self, uint32_t tid):
        cdef Route route
        if tid < <uint32_t>PyList_GET_SIZE(self._routes):
            route = <Route>PyList_GET_ITEM(self._routes, tid)
            if route is not None:
                return route
        if tid >= self.max_topics:
            raise SegmentCorrupted(f"descriptor refers to topic id {tid} (max "
                                   f"{self.max_topics})")
        while PyList_GET_SIZE(self._topics) <= tid:
            self._topics.append(self._read_topic(PyList_GET_SIZE(self._topics)))
        while PyList_GET_SIZE(self._routes) <= tid:
            self._routes.append(None)
        route = self._resolve(self._topics[tid])
        self._routes[tid] = route
        return route

    def _reset_routes(self):
        """Subscriptions changed: resolve every topic again on its next message."""
        self._routes = [None] * len(self._routes)

    def poll(self, Py_ssize_t limit=256):
        """Dispatch up to ``limit`` waiting messages to the subscribers; returns how many."""
        cdef Py_ssize_t n = 0, i, ncb
        cdef uint64_t* d
        cdef uint32_t* w
        cdef uint32_t c, idx, tid, length
        cdef uint64_t seq, now
        cdef Route route
        cdef ShmMessage msg
        cdef tuple callbacks
        if not self._bound:
            raise ChannelClosed("the channel reader is closed")
        if self._deferred:
            self._sweep()
        if self.heartbeat_p != NULL:
            store_rlx(self.heartbeat_p, wall_ns())
        while n < limit:
            if self._tail == self._head_cache:
                self._head_cache = load_acq(self.head_p)
                if self._tail == self._head_cache:
                    break
                if self._head_cache - self._tail > self.ring_cap:
                    raise SegmentCorrupted("the ring head is out of range")
            d = <uint64_t*>(self.ring + (self._tail & self.ring_mask) * DESC_SIZE)
            w = <uint32_t*>d
            seq = d[0]
            tid = w[4]
            length = w[5]
            c = w[6] >> 24
            idx = w[6] & 0xFFFFFF
            if c >= self.num_classes or idx >= self.bpc or length > self.class_size[c] or \
                    load8(&self.owners[c * self.bpc + idx]) != OWN_QUEUED:
                raise SegmentCorrupted(
                    f"descriptor {self._tail} (seq {seq}) refers to class {c} block {idx} of "
                    f"length {length}, which is not a queued block")
            route = self._route(tid)
            msg = ShmMessage.__new__(ShmMessage)
            msg._reader = self
            msg._cls = c
            msg._idx = idx
            msg._length = length
            msg._ptr = self.pools[c] + <uint64_t>idx * self.class_size[c]
            msg.topic = route.topic
            msg.seq = seq
            msg.publish_ns = d[1]
            # take the block, then consume the descriptor
            store8(&self.owners[c * self.bpc + idx], OWN_CONSUMER)
            if seq != self._last_seq + 1:
                if seq > self._last_seq:
                    self._gaps += seq - self._last_seq - 1
                    store_rlx(<uint64_t*>(self.base + OFF_GAPS), self._gaps)
                else:
                    self.redelivered += 1
            if seq > self._last_seq:
                self._last_seq = seq
            self._received += 1
            store_rlx(<uint64_t*>(self.base + OFF_LAST_SEQ), self._last_seq)
            store_rlx(<uint64_t*>(self.base + OFF_RECEIVED), self._received)
            self._tail += 1
            store_rel(self.tail_p, self._tail)
            n += 1
            route.received += 1
            callbacks = route.callbacks
            ncb = len(callbacks)
            now = mono_ns()
            msg.receive_ns = now
            if self._lat != NULL:
                _record(self._lat, now - msg.publish_ns if now > msg.publish_ns else 0)
            try:
                for i in range(ncb):
                    try:
                        callbacks[i](msg)
                    except Exception as exc:
                        route.errors += 1
                        self.errors += 1
                        self._subscriber_failed(exc, msg, route.subscriptions[i])
                    else:
                        route.delivered += 1
                        self.delivered += 1
            finally:
                if msg._refs:
                    msg._state = RETAINED
                    self.retained += 1
                else:
                    self._free_message(msg)
        return n

    def wait(self, timeout=None, double spin_us=20.0):
        """Block until a message is waiting (True) or ``timeout`` seconds pass (False).

        Spins for ``spin_us`` µs, then sleeps on a futex in the segment (Linux; elsewhere
        it polls every 50 µs) that the producer wakes after its next publish. The GIL is
        released while sleeping. Signals interrupt the wait (KeyboardInterrupt works).
        """
        cdef uint64_t start = mono_ns(), now
        cdef uint64_t spin_ns = <uint64_t>(spin_us * 1000) if spin_us > 0 else 0
        cdef int64_t limit_ns = -1 if timeout is None else <int64_t>(max(0.0, timeout) * 1e9)
        cdef int64_t left
        if not self._bound:
            raise ChannelClosed("the channel reader is closed")
        while True:
            if load_acq(self.head_p) != self._tail:
                return True
            now = mono_ns()
            if limit_ns >= 0 and <int64_t>(now - start) >= limit_ns:
                return False
            if now - start < spin_ns:
                continue
            store32(self.waiting_p, 1)
            fence_seq_cst()
            if load_acq(self.head_p) != self._tail:
                store32(self.waiting_p, 0)
                return True
            left = 100_000_000  # wake up now and then: heartbeats, signals
            if limit_ns >= 0 and limit_ns - <int64_t>(now - start) < left:
                left = limit_ns - <int64_t>(now - start)
            with nogil:
                futex_wait(self.waiting_p, 1, left)
            store32(self.waiting_p, 0)
            PyErr_CheckSignals()
            if self.heartbeat_p != NULL:
                store_rlx(self.heartbeat_p, wall_ns())

    @property
    def deferred(self):
        """Blocks held back by leaked views right now (after a sweep)."""
        return self._sweep()

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

    # -- provided by the Python layer -------------------------------------------------------------
    def _resolve(self, topic):  # pragma: no cover - overridden
        raise NotImplementedError

    def _subscriber_failed(self, exc, msg, sub):  # pragma: no cover - overridden
        raise NotImplementedError
