# cython: freethreading_compatible=False
"""Compiled hot path of the journal: CRC-32C, appending into a mapped segment,
reading records out of one, and the fast replay loop.

The Python modules around it (``writer``, ``reader``, ``verify``...) own files,
directories, locks and every cold decision (new topic, next segment, index entry);
this module calls them back through callables it is given, never through methods of
a subclass. Every length and offset read from a mapping is checked against the
mapping's size before use: a journal file is untrusted input.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.memoryview cimport PyMemoryView_FromObject
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_CheckExact
from libc.stdint cimport INT64_MIN, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from coreallocs._buffer cimport fill_byte_buffer
from hftalloc.journal._journal cimport (
    hft_any_nonzero,
    hft_crc32c,
    hft_crc32c_hw,
    hft_crc32c_hw_available,
    hft_crc32c_init,
    hft_crc32c_sw,
    hft_get_i64,
    hft_get_u32,
    hft_get_u64,
    hft_journal_clock_init,
    hft_journal_mono_ns,
    hft_journal_now_ns,
    hft_prefault_note,
    hft_prefault_start,
    hft_prefault_stop,
    hft_load_acquire_u32,
    hft_msync_range,
    hft_put_i64,
    hft_put_u32,
    hft_put_u64,
    hft_store_release_u32,
)

import os
import sys

from hftalloc.errors import (
    JournalClosed,
    JournalCorrupted,
    JournalIOError,
    JournalStateError,
    RecordTooLarge,
    RecordTypeError,
)

if sys.byteorder != "little":  # pragma: no cover - the format is little-endian
    raise ImportError("hftalloc.journal needs a little-endian host")

hft_crc32c_init(os.environ.get("HFTALLOC_CRC32C") == "software")


def _kernel_clocksource():
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            return f.read().strip()
    except OSError:
        return ""


_CLOCK = ("tsc" if hft_journal_clock_init(os.environ.get("HFTALLOC_CLOCK") != "monotonic"
                                          and _kernel_clocksource() == "tsc")
          else "clock_gettime")


def clock_info():
    """How default timestamps are read: ``"tsc"`` (CLOCK_MONOTONIC ns through the TSC,
    re-anchored every 50 ms) or ``"clock_gettime"``."""
    return _CLOCK


def now_ns():
    """The default timestamp of an append (CLOCK_MONOTONIC ns)."""
    return hft_journal_now_ns()

cdef enum:
    HDR = 32                     # record header bytes
    SEG_HDR = 128                # records start at this offset of a segment
    END_MARK = 0xFFFFFFFF

# flush policies (same order as hftalloc.journal.writer.FLUSH_POLICIES)
cdef enum:
    FLUSH_NONE = 0
    FLUSH_INTERVAL = 1
    FLUSH_EVERY = 2

RECORD_HEADER = HDR
SEGMENT_HEADER = SEG_HDR
END_OF_SEGMENT = END_MARK


# -- CRC-32C ----------------------------------------------------------------------------
cdef uint32_t _crc_of(object data, uint32_t crc, int impl) except? 0xFFFFFFFF:
    cdef Py_buffer view
    cdef uint32_t out
    try:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    except (TypeError, BufferError) as exc:
        raise RecordTypeError(f"crc32c needs a contiguous bytes-like object, not "
                              f"{type(data).__name__}") from exc
    try:
        if impl == 1:
            out = hft_crc32c_sw(crc, view.buf, <size_t>view.len)
        elif impl == 2:
            out = hft_crc32c_hw(crc, view.buf, <size_t>view.len)
        else:
            out = hft_crc32c(crc, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return out


def crc32c(data, uint32_t crc=0):
    """CRC-32C of ``data`` (continuing ``crc``), with the fastest implementation here."""
    return _crc_of(data, crc, 0)


def crc32c_software(data, uint32_t crc=0):
    """CRC-32C with the table-driven software implementation."""
    return _crc_of(data, crc, 1)


def crc32c_hardware(data, uint32_t crc=0):
    """CRC-32C with the SSE4.2 ``crc32`` instruction (RuntimeError when the CPU lacks it)."""
    if not hft_crc32c_hw_available():
        raise RuntimeError("this CPU has no SSE4.2 crc32 instruction")
    return _crc_of(data, crc, 2)


def crc32c_hardware_available():
    """True when the SSE4.2 ``crc32`` instruction is usable on this CPU."""
    return bool(hft_crc32c_hw_available())


def crc32c_implementation():
    """``"sse4.2"`` or ``"software"``: what :func:`crc32c` and the journal use."""
    if hft_crc32c_hw_available() and os.environ.get("HFTALLOC_CRC32C") != "software":
        return "sse4.2"
    return "software"


cdef inline uint32_t _record_crc(const char* rec, uint32_t length) noexcept nogil:
    cdef uint32_t crc = hft_crc32c(0, rec + 8, length - 8)
    return hft_crc32c(crc, &length, 4)


# -- mappings ---------------------------------------------------------------------------
cdef class Mapping:
    """A mapped segment file (an ``mmap`` object) and the pointer to its bytes.

    Records, claims and payload views keep their mapping alive; the memory is unmapped
    when the last of them is gone (never earlier: no view can outlive its bytes).
    """

    def __cinit__(self, object mm, str path, uint64_t number, bint writable):
        cdef int flags = PyBUF_SIMPLE | (PyBUF_WRITABLE if writable else 0)
        PyObject_GetBuffer(mm, &self._view, flags)
        self._held = True
        self._mm = mm
        self.base = <char*>self._view.buf
        self.size = <size_t>self._view.len
        self.path = path
        self.number = number
        self.writable = writable

    def __dealloc__(self):
        hft_prefault_stop(&self._prefault)      # joined before the memory can go
        if self._held:
            PyBuffer_Release(&self._view)
            self._held = False

    def prefault(self, size_t start):
        """Fault the pages from ``start`` in ahead of the writer, in a helper thread."""
        if not self.writable or self.base == NULL or start >= self.size:
            return False
        return hft_prefault_start(&self._prefault, self.base, start, self.size) == 0

    def stop_prefault(self):
        hft_prefault_stop(&self._prefault)

    @property
    def prefault_error(self):
        """The errno that stopped the prefault thread (0: none)."""
        return self._prefault.error

    @property
    def size_bytes(self):
        return self.size

    def __repr__(self):
        return f"<Mapping {self.path!r} {self.size} B{' writable' if self.writable else ''}>"


# -- records (reading) ------------------------------------------------------------------
@cython.freelist(64)
cdef class Record:
    """One record of a journal: ``topic``, ``seq``, ``timestamp`` (ns), ``flags`` and the
    payload, a read-only zero-copy view into the mapped segment (``memoryview(rec)``,
    ``rec.payload``, or any API that takes a buffer)."""

    def __init__(self):
        raise TypeError("records come from a JournalReader")

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("journal records are read-only")
        fill_byte_buffer(buffer, self, <char*>self._ptr, &self._len, True, flags)

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    @property
    def payload(self):
        """Read-only view of the payload (no copy)."""
        return PyMemoryView_FromObject(self)

    def tobytes(self):
        """A copy of the payload."""
        return (<char*>self._ptr)[:self._len]

    def __len__(self):
        return self._len

    @property
    def segment(self):
        """Number of the segment file holding the record."""
        return self._map.number

    @property
    def offset(self):
        """Byte offset of the record's header in its segment file."""
        return <Py_ssize_t>(self._ptr - self._map.base) - HDR

    def __repr__(self):
        return (f"<Record seq={self.seq} topic={self.topic!r} t={self.timestamp} "
                f"{self._len} B>")


cdef class PayloadView:
    """A reusable read-only view for the replay loop (moved to the next payload only
    while nobody holds a buffer of it)."""

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("journal payloads are read-only")
        fill_byte_buffer(buffer, self, <char*>self._ptr, &self._len, True, flags)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer* buffer):
        self._exports -= 1

    def __len__(self):
        return self._len


# -- claims (zero-copy writing) ---------------------------------------------------------
cdef enum:
    CLAIM_OPEN = 0
    CLAIM_COMMITTED = 1
    CLAIM_ABORTED = 2


cdef class Claim:
    """Space for one record, written in place (``memoryview(claim)``, ``pack_into``),
    published by :meth:`commit` (or leaving its ``with`` block), dropped by :meth:`abort`.
    A view taken of it must be released before commit."""

    def __init__(self):
        raise TypeError("claims come from JournalWriter.claim()")

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        if self._state != CLAIM_OPEN:
            raise JournalStateError(f"claim seq={self.seq} is "
                                    f"{'committed' if self._state == CLAIM_COMMITTED else 'aborted'}"
                                    "; it cannot be written any more")
        fill_byte_buffer(buffer, self, self._ptr, &self._size, False, flags)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer* buffer):
        self._exports -= 1

    def __len__(self):
        return self._size

    @property
    def committed(self):
        return self._state == CLAIM_COMMITTED

    def commit(self):
        """Checksum the record and make it visible to readers; returns its seq."""
        if self._state != CLAIM_OPEN:
            raise JournalStateError(f"claim seq={self.seq} was already "
                                    f"{'committed' if self._state == CLAIM_COMMITTED else 'aborted'}")
        if self._exports:
            raise JournalStateError(f"claim seq={self.seq}: a view of it is still alive; "
                                    "release it before commit")
        return self._core._commit_claim(self)

    def abort(self):
        """Drop the claim: nothing is recorded and the seq is not used."""
        if self._state != CLAIM_OPEN:
            return
        if self._exports:
            raise JournalStateError(f"claim seq={self.seq}: a view of it is still alive; "
                                    "release it before abort")
        self._core._abort_claim(self)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


# -- writer core ------------------------------------------------------------------------
cdef class WriterCore:
    """Appends records into the current segment mapping.

    Cold decisions go to the callables it is given: ``new_topic(topic) -> id`` for a
    topic without an id, ``roll() -> Mapping`` when the segment is full (the end marker
    is already written), ``index(seq, time_max_before, segment, offset)`` every
    ``index_every`` records or ``index_bytes`` bytes and at the start of each segment.
    """

    def __init__(self, Mapping mapping, size_t pos, uint64_t next_seq, int64_t time_max,
                 uint32_t max_payload, dict topic_ids, new_topic, roll, index,
                 uint32_t index_every, size_t index_bytes, int flush, int64_t interval_ns):
        if not mapping.writable:
            raise ValueError("the writer needs a writable mapping")
        if pos < SEG_HDR or pos % 8 or pos > mapping.size:
            raise ValueError(f"write position {pos} out of range")
        self._map = mapping
        self._pos = pos
        self._dirty_from = pos
        self.next_seq = next_seq
        self.time_max = time_max
        self.max_payload = max_payload
        self.topic_ids = topic_ids
        self._new_topic = new_topic
        self._roll = roll
        self._index = index
        self._index_every = index_every if index_every > 0 else 1
        self._index_bytes = index_bytes if index_bytes > 0 else 1
        self._since_n = self._index_every   # the first record of a writer gets an entry
        self._since_bytes = 0
        self._flush = flush
        self._interval_ns = interval_ns
        self._next_flush_ns = hft_journal_now_ns() + interval_ns
        self._claim = None
        self.closed = False

    @property
    def position(self):
        """(segment number, offset of the next record)."""
        return (self._map.number if self._map is not None else 0, self._pos)

    @property
    def claim_pending(self):
        return self._claim is not None

    cdef inline int _check_open(self) except -1:
        if self.closed:
            raise JournalClosed("the journal writer is closed")
        if self._claim is not None:
            raise JournalStateError(f"claim seq={self._claim.seq} is in progress; commit or "
                                    "abort it first")
        return 0

    cdef inline uint32_t _topic_id(self, object topic) except 0:
        cdef object tid = self.topic_ids.get(topic) if type(topic) is str else None
        if tid is None:
            tid = self._new_topic(topic)
        return <uint32_t>tid

    cdef inline int64_t _stamp(self, object timestamp) except? -1:
        if timestamp is None:
            return hft_journal_now_ns()
        if type(timestamp) is not int:
            if isinstance(timestamp, bool) or not isinstance(timestamp, int):
                raise RecordTypeError(f"timestamp must be an int (ns), not "
                                      f"{type(timestamp).__name__}")
        try:
            return <int64_t>timestamp
        except OverflowError:
            raise RecordTypeError(f"timestamp {timestamp} is outside the int64 range") from None

    cdef int _make_room(self, size_t need) except -1:
        """Roll to a new segment when ``need`` bytes do not fit in this one."""
        cdef Mapping nxt
        if self._pos + need <= self._map.size:
            return 0
        if self._pos + 8 <= self._map.size:
            hft_store_release_u32(self._map.base + self._pos, END_MARK)
        self._sync_dirty(self._map.size if self._pos + 8 > self._map.size else self._pos + 8)
        nxt = self._roll()
        if nxt is None or not nxt.writable or nxt.size < SEG_HDR + need:
            raise JournalStateError("roll() must return a writable mapping with room for "
                                    "the record")
        self._map = nxt
        self._pos = SEG_HDR
        self._dirty_from = SEG_HDR
        self._since_n = self._index_every
        return 0

    cdef int _sync_dirty(self, size_t end) except -1:
        cdef int err
        if self._flush == FLUSH_NONE or end <= self._dirty_from:
            self._dirty_from = end
            return 0
        err = hft_msync_range(self._map.base, self._dirty_from, end - self._dirty_from)
        if err:
            self.flush_errors += 1
            raise JournalIOError(err, f"msync failed: {os.strerror(err)}", self._map.path)
        self.flushes += 1
        self._dirty_from = end
        return 0

    cdef int _committed(self, char* rec, size_t padded, uint64_t seq, int64_t ts,
                        int64_t max_before) except -1:
        """Bookkeeping after a record became visible: index entry, flush policy."""
        cdef size_t offset = <size_t>(rec - self._map.base)
        self._pos += padded
        if self._pos & 0xFFFF < padded:          # crossed a 64 KiB boundary
            hft_prefault_note(&self._map._prefault, self._pos)
        self.next_seq = seq + 1
        self.appended += 1
        self.bytes_written += padded
        self._since_n += 1
        self._since_bytes += padded
        if self._since_n >= self._index_every or self._since_bytes >= self._index_bytes:
            self._since_n = 0
            self._since_bytes = 0
            self._index(seq, max_before, self._map.number, offset)
        if self._flush == FLUSH_EVERY:
            self._sync_dirty(self._pos)
        elif self._flush == FLUSH_INTERVAL:
            if hft_journal_now_ns() >= self._next_flush_ns:
                self._next_flush_ns = hft_journal_now_ns() + self._interval_ns
                self._sync_dirty(self._pos)
        return 0

    @cython.binding(False)
    def append(self, topic, payload, timestamp=None):
        """Append one record; returns its sequence number."""
        return self._append(topic, payload, timestamp)

    cdef object _append(self, object topic, object payload, object timestamp):
        cdef Py_buffer view
        cdef const char* src
        cdef Py_ssize_t n
        cdef bint have_view = False
        cdef uint32_t tid, length
        cdef int64_t ts, before
        cdef size_t padded
        cdef char* rec
        cdef uint64_t seq
        self._check_open()
        tid = self._topic_id(topic)
        ts = self._stamp(timestamp)
        if PyBytes_CheckExact(payload):
            src = PyBytes_AS_STRING(payload)
            n = PyBytes_GET_SIZE(payload)
        else:
            try:
                PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
            except (TypeError, BufferError) as exc:
                raise RecordTypeError(f"payload must be a contiguous bytes-like object, not "
                                      f"{type(payload).__name__}") from exc
            have_view = True
            src = <const char*>view.buf
            n = view.len
        try:
            if <size_t>n > self.max_payload:
                raise RecordTooLarge(f"payload of {n} B is above the journal's max_payload "
                                     f"({self.max_payload} B)")
            length = <uint32_t>(HDR + n)
            padded = (length + 7) & ~(<size_t>7)
            self._make_room(padded)
            rec = self._map.base + self._pos
            seq = self.next_seq
            hft_put_u64(rec + 8, seq)
            hft_put_i64(rec + 16, ts)
            hft_put_u32(rec + 24, tid)
            hft_put_u32(rec + 28, 0)
            if n:
                memcpy(rec + HDR, src, <size_t>n)
            if padded != length:
                memset(rec + length, 0, padded - length)
        finally:
            if have_view:
                PyBuffer_Release(&view)
        hft_put_u32(rec + 4, _record_crc(rec, length))
        hft_store_release_u32(rec, length)          # visible from here on
        before = self.time_max
        if ts > before:
            self.time_max = ts
        self._committed(rec, padded, seq, ts, before)
        return seq

    def claim(self, topic, size, timestamp=None):
        """Reserve a record of ``size`` payload bytes to be written in place."""
        cdef Claim c
        cdef uint32_t tid
        cdef int64_t ts
        cdef size_t padded
        cdef char* rec
        self._check_open()
        tid = self._topic_id(topic)
        ts = self._stamp(timestamp)
        if isinstance(size, bool) or not isinstance(size, int):
            raise RecordTypeError(f"size must be an int, not {type(size).__name__}")
        if size < 0:
            raise RecordTooLarge(f"size must be >= 0, got {size}")
        if size > self.max_payload:
            raise RecordTooLarge(f"claim of {size} B is above the journal's max_payload "
                                 f"({self.max_payload} B)")
        padded = (HDR + <size_t>size + 7) & ~(<size_t>7)
        self._make_room(padded)
        rec = self._map.base + self._pos
        memset(rec + 4, 0, padded - 4)
        hft_put_u64(rec + 8, self.next_seq)
        hft_put_i64(rec + 16, ts)
        hft_put_u32(rec + 24, tid)
        c = Claim.__new__(Claim)
        c._core = self
        c._rec = rec
        c._ptr = rec + HDR
        c._size = <Py_ssize_t>size
        c._map = self._map
        c.seq = self.next_seq
        c.timestamp = ts
        c._state = CLAIM_OPEN
        self._claim = c
        return c

    cdef object _commit_claim(self, Claim c):
        cdef uint32_t length = <uint32_t>(HDR + c._size)
        cdef size_t padded = (length + 7) & ~(<size_t>7)
        cdef int64_t before = self.time_max
        if c is not self._claim or c._map is not self._map:
            raise JournalStateError("this claim does not belong to the writer's open claim")
        self._claim = None
        c._state = CLAIM_COMMITTED
        if padded != length:
            memset(c._rec + length, 0, padded - length)
        hft_put_u32(c._rec + 4, _record_crc(c._rec, length))
        hft_store_release_u32(c._rec, length)
        if c.timestamp > before:
            self.time_max = c.timestamp
        self._committed(c._rec, padded, c.seq, c.timestamp, before)
        return c.seq

    cdef int _abort_claim(self, Claim c) except -1:
        cdef size_t padded = (HDR + <size_t>c._size + 7) & ~(<size_t>7)
        if c is self._claim:
            memset(c._rec, 0, padded)
            self._claim = None
            self.aborted += 1
        c._state = CLAIM_ABORTED
        return 0

    def abort_pending(self):
        """Abort the open claim if there is one (refused while a view of it is alive)."""
        if self._claim is not None:
            self._claim.abort()

    def flush(self):
        """msync the records written since the last flush (any policy)."""
        cdef int saved = self._flush
        cdef int err
        if self._map is None or self._pos <= self._dirty_from:
            return
        err = hft_msync_range(self._map.base, self._dirty_from, self._pos - self._dirty_from)
        if err:
            self.flush_errors += 1
            raise JournalIOError(err, f"msync failed: {os.strerror(err)}", self._map.path)
        self.flushes += 1
        self._dirty_from = self._pos
        self._flush = saved

    def detach(self):
        """Close the core: no more appends; returns the current mapping."""
        if self._claim is not None:
            raise JournalStateError(f"claim seq={self._claim.seq} is in progress; commit or "
                                    "abort it before closing")
        self.closed = True
        m = self._map
        self._map = None
        return m


cdef class RecordSink:
    """The bus subscriber of a :class:`~hftalloc.journal.Recorder`: appends each message
    with the bus's topic and publish stamp. ``recorded`` + ``failed`` == calls; a failure
    is kept in ``last_error`` and raised again, so the bus counts it as a subscriber
    error too."""

    def __init__(self, WriterCore core not None):
        self._core = core
        self.last_error = None

    def __call__(self, msg):
        try:
            self._core._append(msg.topic, msg, msg.publish_ns)
        except BaseException as exc:
            self.failed += 1
            self.last_error = exc
            raise
        self.recorded += 1


def zero_tail(Mapping mapping, size_t start, size_t length):
    """Zero ``length`` bytes from ``start`` (cutting a torn record off), bounded by the
    mapping; returns the number of bytes cleared."""
    if not mapping.writable or mapping.base == NULL:
        raise ValueError("zero_tail needs a writable mapping")
    if start >= mapping.size:
        return 0
    if length > mapping.size - start:
        length = mapping.size - start
    memset(mapping.base + start, 0, length)
    return length


def any_nonzero(Mapping mapping, size_t start, size_t length):
    """True when a byte of [start, start + length) (bounded by the mapping) is not zero."""
    if mapping.base == NULL or start >= mapping.size:
        return False
    if length > mapping.size - start:
        length = mapping.size - start
    return bool(hft_any_nonzero(mapping.base + start, length))


# -- scanning (verify, recovery, finding the end) ---------------------------------------
cdef class ScanResult:
    """What :func:`scan` found in one segment from a starting offset."""

    def __repr__(self):
        return (f"<ScanResult end={self.end} kind={self.kind!r} records={self.records} "
                f"next_seq={self.next_seq} problems={len(self.problems)}>")


cdef inline int _check_record(const char* base, size_t cap, size_t pos, uint32_t max_len,
                              uint32_t* length_out) noexcept nogil:
    """0: a valid committed record; 1: not written (length 0); 2: end marker;
    3: length out of range; 4: checksum mismatch."""
    cdef uint32_t length
    if pos + 8 > cap:
        return 2
    length = hft_load_acquire_u32(base + pos)
    length_out[0] = length
    if length == 0:
        return 1
    if length == END_MARK:
        return 2
    if length < HDR or length > max_len or pos + length > cap:
        return 3
    if hft_get_u32(base + pos + 4) != _record_crc(base + pos, length):
        return 4
    return 0


cdef size_t _resync(const char* base, size_t cap, size_t pos, uint32_t max_len) noexcept nogil:
    """The next 8-aligned offset after ``pos`` holding a valid record (or ``cap``)."""
    cdef uint32_t length
    cdef int st
    pos += 8
    while pos + HDR <= cap:
        st = _check_record(base, cap, pos, max_len, &length)
        if st == 0 and hft_get_u64(base + pos + 8) != 0:
            return pos
        pos += 8
    return cap


def scan(Mapping mapping, size_t start, uint64_t expect_seq, int64_t time_max,
         uint32_t max_payload, bint last, bint repair_scan=False, uint64_t limit=0):
    """Walk the records of one segment from ``start``.

    Returns a :class:`ScanResult`: ``end`` (offset after the last valid record),
    ``kind`` (``"end"``: nothing written after it, ``"marker"``: end-of-segment marker,
    ``"full"``: the segment is full, ``"torn"``: a record cut short by a writer that died
    (``torn_offset``), ``"corrupt"``: damage before the end), ``next_seq``, ``time_max``,
    ``records`` and ``problems`` (``(offset, end, kind, text)``). With ``repair_scan`` the
    walk continues past damage (resynchronising on the next valid record) so that every
    problem is listed. ``limit`` stops after that many records (0: no limit).
    """
    cdef const char* base = mapping.base
    cdef size_t cap = mapping.size
    cdef size_t pos = start, nxt, window
    cdef uint32_t length = 0
    cdef uint32_t max_len = HDR + max_payload
    cdef int st
    cdef uint64_t seq
    cdef int64_t ts
    cdef ScanResult r = ScanResult.__new__(ScanResult)
    r.problems = []
    r.kind = "end"
    r.torn_offset = -1
    r.first_problem = -1
    if base == NULL:
        raise ValueError("the mapping was released")
    if start % 8 or start < SEG_HDR or start > cap:
        raise ValueError(f"start offset {start} out of range")
    window = max_len + 8
    while True:
        if limit and r.records >= limit:
            r.kind = "limit"
            break
        st = _check_record(base, cap, pos, max_len, &length)
        if st == 0:
            seq = hft_get_u64(base + pos + 8)
            if expect_seq and seq != expect_seq:
                r.problems.append((pos, pos + ((length + 7) & ~7), "sequence",
                                   f"expected seq {expect_seq}, found {seq}"))
                if r.first_problem < 0:
                    r.first_problem = pos
                if not repair_scan:
                    r.kind = "corrupt"
                    break
            ts = hft_get_i64(base + pos + 16)
            if ts > time_max:
                time_max = ts
            expect_seq = seq + 1
            r.records += 1
            pos += (length + 7) & ~(<size_t>7)
            continue
        if st == 1:
            if hft_any_nonzero(base + pos, min(window, cap - pos)):
                if last:
                    r.kind = "torn"
                    r.torn_offset = pos
                    r.problems.append((pos, min(cap, pos + window), "torn",
                                       "torn tail: a record the writer did not finish"))
                else:
                    r.kind = "corrupt"
                    r.problems.append((pos, min(cap, pos + window), "garbage",
                                       "bytes after the end of a finished segment"))
                if r.first_problem < 0:
                    r.first_problem = pos
            else:
                r.kind = "end" if last else "corrupt"
                if not last:
                    r.problems.append((pos, cap, "unfinished",
                                       "segment ends without an end marker but is not the "
                                       "last one"))
                    if r.first_problem < 0:
                        r.first_problem = pos
            break
        if st == 2:
            r.kind = "marker" if pos + 8 <= cap else "full"
            break
        # 3 or 4: damaged; at the very end of the last segment it is a torn tail
        nxt = pos + ((length + 7) & ~(<size_t>7)) if st == 4 else cap
        if last and st == 4 and (nxt + 8 > cap or (
                hft_load_acquire_u32(base + nxt) == 0
                and not hft_any_nonzero(base + nxt, min(window, cap - nxt)))):
            r.kind = "torn"
            r.torn_offset = pos
            r.problems.append((pos, nxt, "torn", "torn tail: the last record's checksum does "
                               "not match (written partly before a crash)"))
            if r.first_problem < 0:
                r.first_problem = pos
            break
        if r.first_problem < 0:
            r.first_problem = pos
        if not repair_scan:
            r.kind = "corrupt"
            r.problems.append((pos, nxt if st == 4 else pos + 8,
                               "checksum" if st == 4 else "length",
                               "checksum mismatch" if st == 4 else
                               f"record length {length} out of range"))
            break
        nxt = _resync(base, cap, pos, max_len)
        r.problems.append((pos, nxt, "checksum" if st == 4 else "length",
                           ("checksum mismatch" if st == 4 else
                            f"record length {length} out of range")
                           + (f"; next valid record at offset {nxt}" if nxt < cap else
                              "; no valid record after it in this segment")))
        r.kind = "corrupt"
        if nxt >= cap:
            break
        pos = nxt
        expect_seq = 0   # resynchronised: the sequence restarts from what is found
    r.end = pos
    r.next_seq = expect_seq
    r.time_max = time_max
    return r


def peek(Mapping mapping, size_t pos, uint32_t max_payload):
    """(seq, timestamp) of a valid record at ``pos``, or None (index entries are checked
    with it before use)."""
    cdef uint32_t length
    if mapping.base == NULL or pos % 8 or pos < SEG_HDR:
        return None
    if _check_record(mapping.base, mapping.size, pos, HDR + max_payload, &length) != 0:
        return None
    return (hft_get_u64(mapping.base + pos + 8), hft_get_i64(mapping.base + pos + 16))


# -- cursor (reading) -------------------------------------------------------------------
cdef class Cursor:
    """Iterates the records of a journal, segment after segment.

    ``topics`` (list: id -> name) and ``mask`` (bytearray: id -> wanted, or None) are
    shared with the reader, which extends them. ``next_segment(cursor)`` returns
    ``(mapping, stop)`` for the segment after the current one, or None when it does not
    exist (yet); ``unknown_topic(topic_id, mapping, offset)`` reloads ``topics`` for an id
    it lacks; ``grow_mask(cursor)`` extends ``mask`` (from ``patterns``) to new topics.
    """

    def __init__(self, list topics not None, bytearray mask, tuple patterns, next_segment,
                 unknown_topic, grow_mask, uint32_t max_payload):
        self.topics = topics
        self.mask = mask
        self.patterns = patterns
        self._grow_mask = grow_mask
        self._next_segment = next_segment
        self._unknown_topic = unknown_topic
        self._max_len = HDR + max_payload
        self._t_from = INT64_MIN
        self._t_to = 0x7FFFFFFFFFFFFFFF
        self._map = None

    def position_at(self, Mapping mapping, size_t pos, uint64_t expect_seq, size_t stop):
        """Continue from ``pos`` of ``mapping``; records at or after ``stop`` are not read."""
        if mapping.base == NULL:
            raise ValueError("the mapping was released")
        if pos % 8 or pos < SEG_HDR or pos > mapping.size:
            raise ValueError(f"offset {pos} out of range")
        self._map = mapping
        self._pos = pos
        self._stop = stop if stop < mapping.size else mapping.size
        self.expect_seq = expect_seq

    def set_window(self, int64_t t_from, int64_t t_to):
        """Yield only records with ``t_from <= timestamp < t_to``."""
        self._t_from = t_from
        self._t_to = t_to

    def set_mask(self, bytearray mask, tuple patterns):
        self.mask = mask
        self.patterns = patterns

    @property
    def position(self):
        """(segment number, offset of the next record), or None before positioning."""
        if self._map is None:
            return None
        return (self._map.number, self._pos)

    @property
    def mapping(self):
        return self._map

    cdef int _locate(self) except -1:
        """Point at a committed record: 1 (``_len`` set), or 0 when there is none yet."""
        cdef uint32_t length
        cdef object nxt
        while True:
            if self._map is None:
                return 0
            if self._pos >= self._stop:
                if self._stop < self._map.size:
                    return 0
                length = END_MARK
            elif self._pos + 8 > self._map.size:
                length = END_MARK
            else:
                length = hft_load_acquire_u32(self._map.base + self._pos)
            if length == 0:
                return 0
            if length == END_MARK:
                nxt = self._next_segment(self)
                if nxt is None:
                    return 0
                self.position_at(nxt[0], SEG_HDR, self.expect_seq, nxt[1])
                continue
            if length < HDR or length > self._max_len or self._pos + length > self._stop:
                raise JournalCorrupted(
                    f"{self._map.path}: record length {length} at offset {self._pos} out of "
                    "range", self._map.path, self._pos)
            self._len = length
            return 1

    cdef int _step(self, bint check) except -1:
        """Validate the located record and move past it (1), or 0 at the end."""
        cdef const char* rec
        cdef uint64_t seq
        cdef uint32_t tid
        if not self._locate():
            return 0
        rec = self._map.base + self._pos
        if check and hft_get_u32(rec + 4) != _record_crc(rec, self._len):
            raise JournalCorrupted(f"{self._map.path}: checksum mismatch in the record at "
                                   f"offset {self._pos}", self._map.path, self._pos)
        seq = hft_get_u64(rec + 8)
        if self.expect_seq and seq != self.expect_seq:
            raise JournalCorrupted(f"{self._map.path}: expected seq {self.expect_seq} at offset "
                                   f"{self._pos}, found {seq}", self._map.path, self._pos)
        tid = hft_get_u32(rec + 24)
        if not self._known(tid):
            self._unknown_topic(tid, self._map, self._pos)
            if not self._known(tid):
                raise JournalCorrupted(f"{self._map.path}: unknown topic id {tid} at offset "
                                       f"{self._pos}", self._map.path, self._pos)
        self._rec = rec
        self._seq = seq
        self._ts = hft_get_i64(rec + 16)
        self._tid = tid
        self.expect_seq = seq + 1
        self._pos += (self._len + 7) & ~(<size_t>7)
        self.records_read += 1
        return 1

    cdef inline bint _known(self, uint32_t tid) noexcept:
        return tid < <uint32_t>PyList_GET_SIZE(self.topics) and \
            PyUnicode_CheckExact(<object>PyList_GET_ITEM(self.topics, tid))

    cdef inline int _wanted(self) except -1:
        cdef bytearray mask = self.mask
        if self._ts < self._t_from or self._ts >= self._t_to:
            return 0
        if mask is None:
            return 1
        if self._tid >= <uint32_t>PyByteArray_GET_SIZE(mask):
            self._grow_mask(self)       # a topic the mask has not seen yet
            mask = self.mask
            if mask is None:
                return 1
            if self._tid >= <uint32_t>PyByteArray_GET_SIZE(mask):
                return 0
        return PyByteArray_AS_STRING(mask)[self._tid] != 0

    def __iter__(self):
        return self

    def __next__(self):
        cdef Record rec
        while self._step(True):
            if not self._wanted():
                continue
            rec = Record.__new__(Record)
            rec._map = self._map
            rec._ptr = self._rec + HDR
            rec._len = <Py_ssize_t>(self._len - HDR)
            rec.seq = self._seq
            rec.timestamp = self._ts
            rec.topic_id = self._tid
            rec.flags = hft_get_u32(self._rec + 28)
            rec.topic = <str>PyList_GET_ITEM(self.topics, self._tid)
            return rec
        raise StopIteration

    def skip_to(self, uint64_t seq=0, int64_t timestamp=INT64_MIN):
        """Move to the first record with ``seq >= seq`` and ``timestamp >= timestamp``
        (headers only, no checksum: the record is checked when it is read)."""
        cdef const char* rec
        cdef size_t saved_pos
        cdef uint64_t saved_seq
        while self._locate():
            rec = self._map.base + self._pos
            if hft_get_u64(rec + 8) >= seq and hft_get_i64(rec + 16) >= timestamp:
                return True
            saved_pos = self._pos
            saved_seq = self.expect_seq
            self.expect_seq = hft_get_u64(rec + 8) + 1
            self._pos += (self._len + 7) & ~(<size_t>7)
            if self._pos <= saved_pos:   # pragma: no cover - lengths are >= HDR
                self._pos = saved_pos
                self.expect_seq = saved_seq
                return False
        return False

    def replay_into(self, publish, publish_at=None, uint64_t limit=0):
        """Call ``publish_at(topic, payload, timestamp)`` (``publish(topic, payload)``
        when it is None or the timestamp is not > 0) for each wanted record, up to
        ``limit`` (0: all). Returns ``(published, dropped)``: a call returning None
        counts as dropped."""
        cdef PayloadView view = PayloadView.__new__(PayloadView)
        cdef uint64_t done = 0, dropped = 0
        cdef object result
        cdef object topic
        cdef bint with_ts = publish_at is not None
        while (limit == 0 or done + dropped < limit) and self._step(True):
            if not self._wanted():
                continue
            if view._exports:
                view = PayloadView.__new__(PayloadView)
            view._map = self._map
            view._ptr = self._rec + HDR
            view._len = <Py_ssize_t>(self._len - HDR)
            topic = <str>PyList_GET_ITEM(self.topics, self._tid)
            if with_ts and self._ts > 0:
                result = publish_at(topic, view, self._ts)
            else:
                result = publish(topic, view)
            if result is None:
                dropped += 1
            else:
                done += 1
        return (done, dropped)
