# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: freethreading_compatible = False
"""Compiled bus core: the same classes and methods as ``hftalloc._pycore``, in Cython.

Only the per-message path lives here (claim, copy, commit, dispatch, latency record,
release); every cold path (topic resolution, exhaustion policy, error hook) calls back
into the Python bus layer. Behaviour must stay identical to ``_pycore``: the test
suite runs against both.

Differences in mechanism (not in behaviour) from ``_pycore``:

* memory comes from the core's C API (``slab_alloc_slot``/``slab_free_slot``: the slab
  says which class and slot a block is, so no pointer is mapped back): no Block handle
  per message; the Message itself exports the bytes (buffer protocol), read-only once
  committed, and counts its exports. Memory goes back only when no export is left.
* the publish stamp and the per-delivery latency use a tick clock (the TSC when the
  kernel's clocksource is ``tsc``, else CLOCK_MONOTONIC; see ``_ticks.h``); the message
  keeps ticks and ``publish_ns`` converts them to CLOCK_MONOTONIC ns on first read.
* Message objects and their cached payload view are recycled per pool slot, but only
  when the bus holds the sole reference (checked with the reference count when the
  slot is handed out again): a message someone kept is never reused, it stays released.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.buffer cimport PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.memoryview cimport PyMemoryView_FromObject
from cpython.object cimport PyObject, PyObject_GenericGetAttr
from cpython.tuple cimport PyTuple_GET_ITEM
from cpython.unicode cimport PyUnicode_FromObject
from libc.math cimport llround
from libc.stdint cimport INT64_MAX, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

from coreallocs._buffer cimport fill_byte_buffer
from coreallocs cimport (
    SLOT_NONE,
    SlabAllocator,
    SlabCore,
    slab_alloc_slot,
    slab_free,
    slab_free_slot,
)

import os
import sys
import warnings

from hftalloc.errors import (
    BufferStillExported,
    BusClosed,
    MessageReleased,
    MessageStateError,
    NotRetained,
)
from hftalloc.histogram import HEADER as _PY_HEADER
from hftalloc.histogram import MAX_VALUE as _PY_MAX_VALUE
from hftalloc.histogram import SUB_BITS as _PY_SUB_BITS

# histogram layout (must match hftalloc.histogram; checked at import)
cdef extern from *:
    """
    /* A memoryview may be kept (and recycled with its message) only if nothing else
       uses its managed buffer: no buffer exported from the view itself and no other
       view (slice, memoryview(view), toreadonly()) registered on the same buffer.
       With an unknown CPython layout every view counts as shared: it is then released
       and the message's own export count decides (always correct, a little slower). */
    #if PY_VERSION_HEX >= 0x03030000 && PY_VERSION_HEX < 0x030F0000 && !defined(Py_LIMITED_API)
    #define HFT_VIEW_SHARED(v) (((PyMemoryViewObject*)(v))->exports != 0 || \
                                ((PyMemoryViewObject*)(v))->mbuf->exports != 1)
    #else
    #define HFT_VIEW_SHARED(v) 1
    #endif
    """
    Py_ssize_t _refcnt "Py_REFCNT"(PyObject* ob)
    bint _view_shared "HFT_VIEW_SHARED"(PyObject* view)

cdef extern from *:
    """
    /* list[i] = v for an index known to be in range (no bounds or type checks) */
    static inline void hft_list_put(PyObject* list, Py_ssize_t i, PyObject* v) {
        PyObject* old = PyList_GET_ITEM(list, i);
        Py_INCREF(v);
        PyList_SET_ITEM(list, i, v);
        Py_XDECREF(old);
    }
    """
    void _list_put "hft_list_put"(list row, Py_ssize_t i, object v)

cdef extern from *:
    """
    /* f(arg) through the callee's vectorcall slot (what PyObject_Vectorcall does, minus
       its extra call layers); 0 on success, -1 with the exception set on failure */
    static inline int hft_call1(PyObject* f, PyObject* arg) {
        PyObject* args[2] = {NULL, arg};
        PyObject* r;
        vectorcallfunc vc = PyVectorcall_Function(f);
        if (vc != NULL)
            r = vc(f, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        else
            r = PyObject_CallOneArg(f, arg);
        if (r == NULL) return -1;
        Py_DECREF(r);
        return 0;
    }
    /* Exact bytes and bytearray are read without the buffer protocol: bytes cannot
       change, and a bytearray is pinned the way its own getbuffer does it (an export
       count that forbids resizing) until hft_unpin. Returns 0 for any other type (and
       for bytearray on a CPython whose layout is not known here): the caller then uses
       PyObject_GetBuffer. */
    static inline int hft_pin(PyObject* o, char** buf, Py_ssize_t* len) {
        if (PyBytes_CheckExact(o)) {
            *buf = PyBytes_AS_STRING(o);
            *len = PyBytes_GET_SIZE(o);
            return 1;
        }
    #if PY_VERSION_HEX < 0x030F0000 && !defined(Py_LIMITED_API)   /* known layouts only */
        if (PyByteArray_CheckExact(o)) {
            ((PyByteArrayObject*)o)->ob_exports++;
            *buf = PyByteArray_AS_STRING(o);
            *len = PyByteArray_GET_SIZE(o);
            return 1;
        }
    #endif
        return 0;
    }
    static inline void hft_unpin(PyObject* o) {
    #if PY_VERSION_HEX < 0x030F0000 && !defined(Py_LIMITED_API)
        if (PyByteArray_CheckExact(o)) ((PyByteArrayObject*)o)->ob_exports--;
    #endif
    }
    /* a C function that "raises" the exception already set (see FastCore._callback_failed) */
    static inline int hft_pending_error(void) { return -1; }
    """
    int _call1 "hft_call1"(PyObject* f, object arg) noexcept
    int _pending_error "hft_pending_error"() except -1
    bint _pin "hft_pin"(object o, char** buf, Py_ssize_t* length) noexcept
    void _unpin "hft_unpin"(object o) noexcept

cdef extern from *:
    """
    #define HFT_SUB_BITS 8
    #define HFT_HEADER 4
    #define HFT_MAX_VALUE ((1ULL << 44) - 1)
    """
    int SUB_BITS "HFT_SUB_BITS"
    int HEADER "HFT_HEADER"
    unsigned long long MAX_VALUE "HFT_MAX_VALUE"
    int __builtin_clzll(unsigned long long) nogil

if (_PY_SUB_BITS, _PY_HEADER, _PY_MAX_VALUE) != (SUB_BITS, HEADER, MAX_VALUE):
    raise ImportError("hftalloc._fastcore was built for another histogram layout; rebuild it")

# message states (same numbers as _pycore)
cdef enum:
    CLAIMED = 0
    IN_FLIGHT = 1
    DONE = 2
    RELEASED = 3
STATE_NAMES = ("claimed", "in flight", "retained", "released")
cdef str _PAYLOAD = sys.intern("payload")


cdef int _get_flat_buffer(object data, Py_buffer* view) except -1:
    """PyBUF_SIMPLE view of `data`; a buffer that is not C-contiguous raises BufferError
    whatever its exporter says (numpy says ValueError), as the pure-Python core does."""
    try:
        PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    except (BufferError, ValueError) as exc:
        if PyObject_CheckBuffer(data):
            raise BufferError(f"publish needs a C-contiguous buffer ({exc})") from exc
        raise
    return 0


cdef inline size_t slab_class_size(SlabCore* core, Py_ssize_t k, Py_ssize_t alloc) noexcept:
    return (<size_t>1 << (core.min_shift + k)) if k >= 0 else <size_t>alloc


# -- the tick clock (see _ticks.h) -------------------------------------------------------
cdef extern from "_ticks.h" nogil:
    int HFT_HAVE_TSC
    int hft_use_tsc
    double hft_ns_per_tick
    int64_t hft_rdtsc()
    int64_t hft_mono_ns()
    int64_t hft_ticks()
    int64_t hft_elapsed_ns(int64_t d)

# Anchors: (CLOCK_MONOTONIC ns, ticks) pairs, oldest first. Absolute ticks convert to ns
# by interpolating between the two anchors around them, or by extrapolating from the
# newest with the current rate. When the table is full its older half is thinned (every
# other anchor dropped, the first one kept), so recent history stays dense and old
# history sparse but covered. Written at import and by _resync() (cold paths, GIL held).
cdef enum:
    NANCHORS = 64
cdef int64_t _anc_ns[NANCHORS]
cdef int64_t _anc_ticks[NANCHORS]
cdef int _anc_len = 0
cdef int64_t _anchor_ns = 0               # the newest anchor (copy of the table's last)
cdef int64_t _anchor_ticks = 0
cdef int64_t _resync_ticks = INT64_MAX    # anchor age (ticks) after which a conversion re-anchors
cdef int64_t _window_ns = 0               # span the current rate was measured over
cdef Py_ssize_t _resyncs = 0

cdef int64_t CALIBRATE_NS = 1000000       # import-time calibration window: 1 ms
cdef int64_t RESYNC_MAX_NS = 100000000    # re-anchor at least every 100 ms (when converting)


cdef void _take_anchor(int64_t* ns_out, int64_t* ticks_out) noexcept:
    """Read CLOCK_MONOTONIC between two TSC reads; of a few tries keep the narrowest
    bracket and pair the ns with its midpoint (error: a few ns). Tries again (up to 64
    in all) while every bracket was wide (an interrupt or preemption in between)."""
    cdef int64_t t0, t1, ns, best = INT64_MAX
    cdef int i
    for i in range(64):
        t0 = hft_rdtsc()
        ns = hft_mono_ns()
        t1 = hft_rdtsc()
        if 0 <= t1 - t0 < best:
            best = t1 - t0
            ns_out[0] = ns
            ticks_out[0] = t0 + (t1 - t0) // 2
        if i >= 6 and best <= 4000:       # 4000 ticks: about 1 us at 4 GHz
            break


cdef void _push_anchor(int64_t ns, int64_t ticks) noexcept:
    global _anc_len, _anchor_ns, _anchor_ticks
    cdef int i, half = NANCHORS // 2
    if _anc_len == NANCHORS:              # thin the older half: keep 0, 2, 4, ...
        for i in range(1, half // 2):
            _anc_ns[i] = _anc_ns[2 * i]
            _anc_ticks[i] = _anc_ticks[2 * i]
        for i in range(half, NANCHORS):
            _anc_ns[i - half // 2] = _anc_ns[i]
            _anc_ticks[i - half // 2] = _anc_ticks[i]
        _anc_len = NANCHORS - half // 2
    _anc_ns[_anc_len] = ns
    _anc_ticks[_anc_len] = ticks
    _anc_len += 1
    _anchor_ns = ns
    _anchor_ticks = ticks


cdef void _set_resync_after(int64_t window_ns) noexcept:
    """The rate is known to about (2 anchor errors / window): re-anchor once the anchor is
    twice the window old (doubling the window from the 1 ms import calibration), and at
    least every RESYNC_MAX_NS, so that the extrapolation error stays at a few tens of ns."""
    global _window_ns, _resync_ticks
    cdef int64_t after = 2 * window_ns
    if after > RESYNC_MAX_NS:
        after = RESYNC_MAX_NS
    _window_ns = window_ns
    _resync_ticks = <int64_t>(after / hft_ns_per_tick)


cdef void _resync() noexcept:
    """Take a new anchor and measure the rate over the span since the previous one."""
    global _resyncs, hft_ns_per_tick
    cdef int64_t ns = 0, ticks = 0, dn, dt
    cdef double rate
    _take_anchor(&ns, &ticks)
    dn = ns - _anchor_ns
    dt = ticks - _anchor_ticks
    if dn <= 0 or dt <= 0:
        return                            # no progress (or a clock went back): keep the old one
    if dn >= CALIBRATE_NS:                # shorter spans would only add noise to the rate
        rate = <double>dn / <double>dt
        if 0.5 * hft_ns_per_tick < rate < 2.0 * hft_ns_per_tick:    # sanity: no wild jumps
            hft_ns_per_tick = rate
        _set_resync_after(dn)
    _push_anchor(ns, ticks)
    _resyncs += 1


cdef int64_t _ticks_to_ns(int64_t ticks) noexcept:
    """Absolute ticks -> CLOCK_MONOTONIC ns (cold path: re-anchors when the anchor is old).

    Ticks after the newest anchor are extrapolated from it with the rate measured since
    the anchor before (over a short span: the anchor is renewed first when it is old).
    Older ticks (a message whose publish_ns is read late) are interpolated between the
    two kept anchors around them, so their error does not grow with the time since."""
    cdef int lo, hi, mid
    if not hft_use_tsc:
        return ticks
    if hft_rdtsc() - _anchor_ticks > _resync_ticks:
        _resync()
    if ticks >= _anchor_ticks or _anc_len < 2:
        return _anchor_ns + <int64_t>llround(<double>(ticks - _anchor_ticks) * hft_ns_per_tick)
    lo = 0                                # last anchor at or before `ticks` (0 if none)
    hi = _anc_len - 1                     # _anc_ticks[hi] > ticks
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _anc_ticks[mid] <= ticks:
            lo = mid
        else:
            hi = mid
    hi = lo + 1
    return _anc_ns[lo] + <int64_t>llround(
        <double>(ticks - _anc_ticks[lo])
        * (<double>(_anc_ns[hi] - _anc_ns[lo]) / <double>(_anc_ticks[hi] - _anc_ticks[lo])))


cdef str _clock_init():
    """Pick the tick source and calibrate it (about 1 ms with the TSC)."""
    global hft_use_tsc, hft_ns_per_tick
    cdef int64_t ns0 = 0, t0 = 0, ns1 = 0, t1 = 0
    choice = os.environ.get("HFTALLOC_CLOCK", "auto").strip().lower() or "auto"
    if choice not in ("auto", "tsc", "monotonic"):
        warnings.warn(f"HFTALLOC_CLOCK={choice!r} is not one of auto, tsc, monotonic; "
                      "using auto", RuntimeWarning, stacklevel=2)
        choice = "auto"
    hft_use_tsc = 0
    hft_ns_per_tick = 1.0
    if HFT_HAVE_TSC and choice != "monotonic" and _kernel_clocksource() == "tsc":
        _take_anchor(&ns0, &t0)
        while hft_mono_ns() - ns0 < CALIBRATE_NS:
            pass
        _take_anchor(&ns1, &t1)
        # sane: between 10 MHz and 100 GHz
        if t1 > t0 and ns1 > ns0 and 0.01 < (<double>(ns1 - ns0) / <double>(t1 - t0)) < 100.0:
            hft_ns_per_tick = <double>(ns1 - ns0) / <double>(t1 - t0)
            hft_use_tsc = 1
            _push_anchor(ns0, t0)
            _push_anchor(ns1, t1)
            _set_resync_after(ns1 - ns0)
    return "tsc" if hft_use_tsc else "monotonic"


def _kernel_clocksource():
    """The kernel's current clocksource ('tsc' means an invariant, synchronised TSC)."""
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            return f.read().strip()
    except OSError:
        return None


CLOCK = _clock_init()
"""The tick source of this core: "tsc" or "monotonic" (see :func:`clock_info`)."""


def clock_info():
    """The tick clock in use: source, calibrated ns per tick, and the current anchor."""
    return {
        "clock": CLOCK,
        "ns_per_tick": hft_ns_per_tick,
        "anchor_ns": _anchor_ns,
        "anchor_ticks": _anchor_ticks,
        "anchors_kept": _anc_len,
        "window_ns": _window_ns,
        "resyncs": _resyncs,
    }


def _ticks():
    """The hot path's clock, raw (for tests)."""
    return hft_ticks()


def _ticks_to_ns_py(int64_t ticks):
    """Convert raw ticks to CLOCK_MONOTONIC ns, as ``Message.publish_ns`` does (for tests)."""
    return _ticks_to_ns(ticks)


def _clock_resync():
    """Take a new anchor now, whatever its age (for tests; no-op with CLOCK_MONOTONIC)."""
    if hft_use_tsc:
        _resync()


def _elapsed_ns(int64_t ticks):
    """A tick difference in ns, as the latency histogram records it (for tests)."""
    return hft_elapsed_ns(ticks)


cdef inline void _record(uint64_t* c, int64_t value) noexcept nogil:
    """hftalloc.histogram.Histogram.record, in C."""
    cdef uint64_t v = <uint64_t>value if value > 0 else 0
    cdef uint64_t clamped = v if v <= MAX_VALUE else MAX_VALUE
    cdef int shift
    if clamped < (1 << SUB_BITS):
        c[HEADER + clamped] += 1
    else:
        shift = (64 - __builtin_clzll(clamped)) - SUB_BITS
        c[HEADER + (<uint64_t>shift << (SUB_BITS - 1)) + (clamped >> shift)] += 1
    c[0] += 1
    c[1] += v
    if v < c[2]:
        c[2] = v
    if v > c[3]:
        c[3] = v


@cython.final
cdef class Route:
    """Per-topic dispatch entry: resolved subscribers and counters."""

    cdef public str topic
    cdef public tuple callbacks
    cdef public tuple subscriptions
    cdef public tuple async_subs
    cdef public Py_ssize_t published
    cdef public Py_ssize_t delivered
    cdef public Py_ssize_t dropped
    cdef public Py_ssize_t rejected
    cdef public Py_ssize_t errors

    def __init__(self, str topic):
        self.topic = topic
        self.callbacks = ()
        self.subscriptions = ()
        self.async_subs = ()


@cython.final
@cython.no_gc_clear
cdef class Message:
    """One message on the bus: a pool block plus topic, sequence number and timestamp.

    Subscribers read ``msg.payload`` (a read-only memoryview of the block, no copy).
    It is valid until the subscriber returns; to keep the message longer call
    ``msg.retain()`` and later ``msg.release()``. A claimed message is written
    through ``msg.buffer`` and published by ``commit()`` (or leaving its ``with``).
    """

    cdef char* _ptr                 # NULL once the memory went back to the pool
    cdef Py_ssize_t _alloc          # bytes taken from the slab (>= 1)
    cdef Py_ssize_t _reserved       # size class
    cdef Py_ssize_t _cls            # size-class index (-1: system block, not recycled)
    cdef uint32_t _idx              # slot in the class (SLOT_NONE for a system block)
    cdef SlabAllocator _slab        # keeps the memory alive
    cdef FastCore _core
    cdef readonly Route _route
    cdef object _rview              # cached read-only payload view
    cdef Py_ssize_t _rview_len
    cdef object _wview              # cached writable view (claimed state)
    cdef Py_ssize_t _length
    cdef Py_ssize_t _exports
    cdef Py_ssize_t _wexports       # exports granted while claimed (writable)
    cdef Py_ssize_t _refs
    cdef int _state
    cdef readonly str topic
    cdef readonly uint64_t seq
    cdef int64_t _pub_ticks         # commit time in ticks (0: not committed)
    cdef int64_t _pub_ns            # publish_ns, converted on first read (0: not yet)

    def __init__(self):
        raise TypeError("messages are created by MessageBus.claim()/publish()")

    def __dealloc__(self):
        # Safety net: a message dropped while it still owns memory (an abandoned claim,
        # a bus dropped with queued messages) gives it back. No export can be alive here:
        # every export holds a reference to the message.
        if self._ptr != NULL and self._slab is not None:
            slab_free(self._slab.core, self._ptr, <size_t>self._alloc)
            self._ptr = NULL

    # -- buffer protocol: the message itself exports the block's bytes ---------------
    def __getbuffer__(self, Py_buffer* buffer, int flags):
        if self._state == RELEASED:
            raise self._released_error()
        if (flags & PyBUF_WRITABLE) and self._state != CLAIMED:
            raise BufferError(f"message seq={self.seq} on {self.topic!r} is read-only once "
                              "published")
        fill_byte_buffer(buffer, self, self._ptr, &self._length, self._state != CLAIMED, flags)
        self._exports += 1
        if not buffer.readonly:
            self._wexports += 1

    def __releasebuffer__(self, Py_buffer* buffer):
        self._exports -= 1
        if not buffer.readonly:
            self._wexports -= 1

    # -- payload access ---------------------------------------------------------------
    def __getattribute__(self, name):
        # `msg.payload` is what every subscriber reads: once the view is cached, answer
        # it here instead of through the generic lookup and the property below (same
        # result; anything else, or a view still to be made, takes the normal path).
        if name is _PAYLOAD and self._rview is not None and self._state != RELEASED:
            return self._rview
        return PyObject_GenericGetAttr(self, name)

    @property
    def payload(self):
        """Read-only view of the payload (zero copy)."""
        if self._state == RELEASED:
            raise self._released_error()
        view = self._rview
        if view is None:
            view = PyMemoryView_FromObject(self)
            if self._state == CLAIMED:
                view = view.toreadonly()
            self._rview = view
            self._rview_len = self._length
        return view

    @property
    def buffer(self):
        """Writable view of a claimed message (before commit)."""
        if self._state != CLAIMED:
            raise MessageStateError(
                f"message seq={self.seq} on {self.topic!r} is {STATE_NAMES[self._state]}; "
                "only a claimed message can be written"
            )
        view = self._wview
        if view is None:
            view = PyMemoryView_FromObject(self)
            self._wview = view
        return view

    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def tobytes(self):
        """A copy of the payload."""
        if self._state == RELEASED:
            raise self._released_error()
        return self._ptr[:self._length]

    def __len__(self):
        return self._length

    @property
    def nbytes(self):
        """Payload length in bytes."""
        return self._length

    @property
    def publish_ns(self):
        """Commit time, CLOCK_MONOTONIC ns (``time.perf_counter_ns()``); 0 before commit."""
        if self._pub_ns == 0 and self._pub_ticks != 0:
            self._pub_ns = _ticks_to_ns(self._pub_ticks)
        return self._pub_ns

    @property
    def size_class(self):
        """Bytes reserved for this message (its size class)."""
        if self._state == RELEASED:
            raise self._released_error()
        return self._reserved

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

    # -- ownership ----------------------------------------------------------------------
    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def retain(self):
        """Keep the message (and its block) alive after the subscriber returns."""
        if self._state == RELEASED:
            raise self._released_error()
        if self._state == CLAIMED:
            raise MessageStateError(
                "retain() is for subscribers; a claimed message is owned by its claimer")
        self._refs += 1
        return self

    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def release(self):
        """Undo one ``retain()``; the block goes back once nobody holds the message."""
        if self._refs <= 0:
            if self._state == RELEASED:
                raise NotRetained(f"message seq={self.seq} on {self.topic!r} was already released")
            raise NotRetained(
                f"message seq={self.seq} on {self.topic!r}: release() without retain()")
        self._refs -= 1
        if self._refs == 0 and self._state == DONE:
            self._core._free_c(self)

    # -- claim / commit -------------------------------------------------------------------
    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def commit(self):
        """Publish a claimed message; returns its sequence number."""
        if self._state != CLAIMED:
            raise MessageStateError(f"message on {self.topic!r} is {STATE_NAMES[self._state]}, "
                                    "commit() needs a claimed message")
        return self._core._commit_c(self)

    def abort(self):
        """Give a claimed message's block back without publishing it (counted)."""
        if self._state != CLAIMED:
            raise MessageStateError(f"message on {self.topic!r} is {STATE_NAMES[self._state]}, "
                                    "abort() needs a claimed message")
        self._core._abort_c(self)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._state != CLAIMED:
            return
        if exc_type is not None:
            self._core._abort_c(self)
            return
        try:
            self._core._commit_c(self)
        except BufferStillExported:
            self._core._abort_c(self)
            raise

    # -- helpers ----------------------------------------------------------------------------
    def _released_error(self):
        return MessageReleased(
            f"message seq={self.seq} on {self.topic!r} was released; call msg.retain() in the "
            "subscriber to keep it"
        )

    cdef int _drop_view(self, bint writable) except -1:
        """Drop one cached view; invalidate it first if someone else holds it.

        Returns 0 when the view could not be released (a buffer derived from it is alive).
        """
        view = self._wview if writable else self._rview
        if _refcnt(<PyObject*>view) > 2:   # the attribute, our local and someone else
            try:
                view.release()
            except BufferError:
                return 0
        if writable:
            self._wview = None
        else:
            self._rview = None
        return 1

    cdef bint _settle_views(self) except -1:
        """End of life: keep the payload view only if nobody else holds it.

        True when no other export of the memory is alive (the memory may be reused).
        """
        if self._wview is not None and not self._drop_view(True):
            return False
        if self._rview is not None:
            if (self._wexports or _refcnt(<PyObject*>self._rview) > 1
                    or _view_shared(<PyObject*>self._rview)):
                if not self._drop_view(False):
                    return False
        return self._wexports == 0 and self._exports == (0 if self._rview is None else 1)

    def __repr__(self):
        return (f"<Message seq={self.seq} topic={self.topic!r} nbytes={self._length} "
                f"{STATE_NAMES[self._state]}>")


cdef class FastCore:
    """Hot path of :class:`~hftalloc.bus.MessageBus`, compiled (see ``hftalloc._pycore``)."""

    cdef SlabAllocator _slab
    cdef size_t _max_class           # largest size class in bytes (larger: system or refused)
    cdef uint64_t[::1] _lat_view
    cdef uint64_t* _lat
    cdef list _cache                 # per size class: list of Message (or None) per slot
    cdef public dict _routes
    cdef public list _queue
    cdef public list _deferred
    cdef public object _wake
    cdef public bint _idle
    cdef public bint _async
    cdef public bint _closed
    cdef public int _policy
    cdef public Py_ssize_t _space_waiters
    cdef public uint64_t _seq
    cdef public Py_ssize_t published
    cdef public Py_ssize_t delivered
    cdef public Py_ssize_t dropped
    cdef public Py_ssize_t rejected
    cdef public Py_ssize_t errors
    cdef public Py_ssize_t aborted
    cdef public Py_ssize_t leaked_views
    cdef public Py_ssize_t retained
    cdef dict __dict__

    def __cinit__(self, *args, **kwargs):
        self._routes = {}
        self._queue = []
        self._deferred = []
        self._cache = []
        self._idle = True

    def _core_init(self, SlabAllocator slab not None, int policy, bint is_async, latency_counts):
        self._slab = slab
        self._max_class = (<size_t>1) << (slab.core.min_shift + slab.core.nclasses - 1)
        self._policy = policy
        self._async = is_async
        self._lat_view = latency_counts
        self._lat = &self._lat_view[0]
        self._cache = [[None] * cap for cap in slab.class_capacities]   # one slot per block

    def _drop_message_cache(self):
        """Forget the recycled message objects (at close)."""
        self._cache = []

    # -- publishing ---------------------------------------------------------------------------
    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def publish(self, topic, data):
        """Copy ``data`` into a pool block and publish it on ``topic``.

        Returns the sequence number, or None when the ``drop`` policy dropped it.
        """
        return self._publish(topic, data, True)

    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def _try_publish(self, topic, data):
        """publish() without the exhaustion policy: -1 when the class is full."""
        return self._publish(topic, data, False)

    @cython.final
    cdef inline Route _route(self, object topic):
        """The route of `topic`: a dict hit for a known exact str; anything else goes
        through the bus layer's _resolve (TopicTypeError for a non-str, as in _pycore;
        a str subclass is first turned into its plain str, the type Route keeps)."""
        cdef Route route = self._routes.get(topic) if type(topic) is str else None
        if route is None:
            if type(topic) is not str and isinstance(topic, str):
                topic = PyUnicode_FromObject(topic)
            route = self._resolve(topic)
        return route

    @cython.final
    cdef object _publish(self, object topic, object data, bint apply_policy):
        cdef Route route = self._route(topic)
        cdef Py_buffer src
        cdef char* buf
        cdef Py_ssize_t n
        cdef bint pinned
        cdef Message msg
        if self._closed:
            raise BusClosed("the bus is closed")
        pinned = _pin(data, &buf, &n)
        if not pinned:
            _get_flat_buffer(data, &src)
            buf = <char*>src.buf
            n = src.len
        try:
            if not route.callbacks and not route.async_subs:
                return self._count_unrouted(route)
            msg = self._take(route, route.topic, n)
            if msg is None:
                if not apply_policy:
                    return -1
                self._exhausted(route, n)
                return None
            if n:
                memcpy(msg._ptr, buf, n)
        finally:
            if pinned:
                _unpin(data)
            else:
                PyBuffer_Release(&src)
        return self._commit_c(msg)

    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def claim(self, topic, size):
        """A writable message of ``size`` bytes; publish it with ``commit()``/``with``.

        Returns None when the ``drop`` policy dropped it.
        """
        return self._claim(topic, size, True)

    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def _try_claim(self, topic, size):
        """claim() without the exhaustion policy: None when the class is full."""
        return self._claim(topic, size, False)

    @cython.final
    cdef object _claim(self, object topic, object size, bint apply_policy):
        cdef Route route = self._route(topic)
        cdef Message msg
        if self._closed:
            raise BusClosed("the bus is closed")
        if type(size) is not int or not 0 <= size <= 0x7FFFFFFFFFFFFFFF:
            size = self._check_size(size)
        msg = self._take(route, route.topic, size)
        if msg is None and apply_policy:
            self._exhausted(route, size)
        return msg

    @cython.final
    cdef object _count_unrouted(self, Route route):
        self._seq += 1
        route.published += 1
        self.published += 1
        return self._seq

    @cython.final
    cdef Message _take(self, Route route, str topic, Py_ssize_t length):
        """A claimed message with a fresh block of ``length`` bytes; None when the class
        is full (after recycling blocks freed from leaked views)."""
        cdef Message msg = self._take_once(route, topic, length)
        cdef Py_ssize_t before = len(self._deferred)
        if msg is None and before and self._sweep() < before:
            msg = self._take_once(route, topic, length)
        return msg

    @cython.final
    cdef Message _take_once(self, Route route, str topic, Py_ssize_t length):
        cdef SlabCore* core = self._slab.core
        cdef Py_ssize_t alloc = length if length > 0 else 1
        cdef Py_ssize_t k = -1
        cdef char* ptr
        cdef uint32_t idx = SLOT_NONE
        cdef list row
        cdef PyObject* entry
        cdef Message msg = None
        if self._slab._closed:
            self._refuse(route, alloc)
        if <size_t>alloc > self._max_class and not core.fallback_system:
            self._refuse(route, alloc)
        # the slab says which class and slot the block is: no pointer -> slot search
        ptr = <char*>slab_alloc_slot(core, <size_t>alloc, &k, &idx)
        if ptr == NULL:
            if k < 0:
                self._refuse(route, alloc)
            return None
        if k >= 0 and k < PyList_GET_SIZE(self._cache):
            row = <list>PyList_GET_ITEM(self._cache, k)
            if idx < <uint32_t>PyList_GET_SIZE(row):
                entry = PyList_GET_ITEM(row, idx)
                if entry != <PyObject*>None:
                    msg = <Message>entry
                    _list_put(row, idx, None)   # in use: only its holders reference it
                    # references left: `msg` and the cached view's own one
                    if _refcnt(entry) != 1 + (msg._rview is not None):
                        msg = None          # someone kept the old message: never reuse it
                    elif msg._rview is not None and msg._rview_len != length:
                        msg._rview = None
        if msg is None:
            msg = Message.__new__(Message)
        if msg._core is not self:          # a recycled message already points at us
            msg._slab = self._slab
            msg._core = self
        msg._ptr = ptr
        msg._alloc = alloc
        msg._reserved = <Py_ssize_t>slab_class_size(core, k, alloc)
        msg._cls = k
        msg._idx = idx
        msg._length = length
        msg._refs = 0
        msg._state = CLAIMED
        if msg._route is not route:
            msg._route = route
            msg.topic = topic
        msg.seq = 0
        msg._pub_ticks = 0
        msg._pub_ns = 0
        return msg

    cdef int _refuse(self, Route route, Py_ssize_t alloc) except -1:
        """Raise the allocator's own error for a request it cannot serve (counted)."""
        route.rejected += 1
        self.rejected += 1
        self._slab.allocate(alloc).release()     # raises SizeTooLarge / AllocatorClosed / ...
        raise MemoryError(f"{self._slab.name}: cannot allocate {alloc} B")

    @cython.final
    cdef object _commit_c(self, Message msg):
        cdef Route route = msg._route
        cdef uint64_t seq
        if msg._wview is not None or msg._wexports:
            if (msg._wview is not None and not msg._drop_view(True)) or (
                    msg._rview is not None and msg._wexports and not msg._drop_view(False)) \
                    or msg._wexports:
                raise BufferStillExported(
                    f"claimed message on {msg.topic!r}: a view derived from msg.buffer/payload "
                    "is still alive; drop it before commit"
                )
        self._seq += 1
        seq = msg.seq = self._seq
        msg._pub_ticks = hft_ticks()
        msg._state = IN_FLIGHT
        route.published += 1
        self.published += 1
        if self._async:
            self._queue.append(msg)
            if self._idle:
                self._idle = False
                if self._wake is not None:
                    self._wake()
        else:
            try:
                self._dispatch(msg, route)
            finally:
                self._finish_c(msg)
        return seq

    @cython.final
    cdef int _abort_c(self, Message msg) except -1:
        self.aborted += 1
        self._free_c(msg)
        return 0

    # -- delivery -----------------------------------------------------------------------------
    @cython.final
    cdef int _dispatch(self, Message msg, Route route) except -1:
        """Run the synchronous subscribers of ``route`` on ``msg`` (errors are contained)."""
        cdef tuple callbacks = route.callbacks
        cdef Py_ssize_t i, n = len(callbacks), ok = 0
        cdef int64_t start = msg._pub_ticks
        for i in range(n):
            _record(self._lat, hft_elapsed_ns(hft_ticks() - start))
            # a plain C call: the exception machinery only runs when a subscriber fails
            if _call1(PyTuple_GET_ITEM(callbacks, i), msg) == 0:
                ok += 1
            else:
                self._callback_failed(msg, route, i)
        route.delivered += ok
        self.delivered += ok
        return 0

    @cython.final
    cdef int _callback_failed(self, Message msg, Route route, Py_ssize_t i) except -1:
        """Subscriber ``i`` raised (the exception is set): report an Exception to the error
        hook, let anything else (KeyboardInterrupt, SystemExit...) propagate."""
        try:
            _pending_error()
        except Exception as exc:
            self._subscriber_failed(exc, msg, route, route.subscriptions[i])
        return 0

    def _drain(self, Py_ssize_t limit):
        """Dispatch up to ``limit`` queued messages; return those with async subscribers."""
        cdef list queue = self._queue
        cdef list pending = []
        cdef Py_ssize_t k = min(limit, len(queue)), i = 0
        cdef Message msg
        try:
            while i < k:
                msg = <Message>queue[i]
                i += 1
                try:
                    self._dispatch(msg, msg._route)
                finally:
                    if msg._route.async_subs:
                        pending.append(msg)
                    else:
                        self._finish_c(msg)
        finally:
            del queue[:i]
        return pending

    @cython.final
    cdef int _finish_c(self, Message msg) except -1:
        """Dispatch is over: free the block unless a subscriber retained the message."""
        if msg._refs:
            msg._state = DONE
            self.retained += 1
        else:
            self._free_c(msg)
        return 0

    @cython.final
    cdef int _free_c(self, Message msg) except -1:
        if msg._state == DONE:
            self.retained -= 1
        msg._state = RELEASED
        if msg._settle_views():
            self._give_back(msg)
            if self._space_waiters:
                self._on_space()
        else:
            self.leaked_views += 1
            self._deferred.append(msg)
        return 0

    @cython.final
    cdef int _give_back(self, Message msg) except -1:
        """Return the memory; the message object waits in its slot's cache for reuse."""
        cdef list row
        if msg._ptr != NULL:
            if msg._cls >= 0:
                slab_free_slot(self._slab.core, msg._cls, msg._idx)
            else:
                slab_free(self._slab.core, msg._ptr, <size_t>msg._alloc)
            msg._ptr = NULL
            if 0 <= msg._cls < PyList_GET_SIZE(self._cache):
                row = <list>PyList_GET_ITEM(self._cache, msg._cls)
                if msg._idx < <uint32_t>PyList_GET_SIZE(row):
                    _list_put(row, msg._idx, msg)
        return 0

    def _sweep(self):
        """Retry blocks held back by leaked views; returns how many are still held."""
        cdef list still
        cdef Message msg
        cdef Py_ssize_t freed = 0
        if not self._deferred:
            return 0
        still = []
        for msg in self._deferred:
            if msg._settle_views():
                self._give_back(msg)
                freed += 1
            else:
                still.append(msg)
        self._deferred = still
        if freed and self._space_waiters:
            self._on_space()
        return len(still)

    # Python-level entry points (same names as _pycore, used by the bus layer and tests)
    def _commit(self, Message msg not None):
        return self._commit_c(msg)

    def _abort(self, Message msg not None):
        self._abort_c(msg)

    def _finish(self, Message msg not None):
        self._finish_c(msg)

    def _free(self, Message msg not None):
        self._free_c(msg)


def _histogram_record(latency_counts, int64_t value):
    """Record one value with the C recorder (lets tests compare it with Histogram.record)."""
    cdef uint64_t[::1] counts = latency_counts
    _record(&counts[0], value)
