# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: freethreading_compatible = False
"""Compiled core of :class:`hftalloc.bus.MessageBus`: the per-message path and its counters.

The core claims, copies, commits, dispatches and frees messages (``hftalloc._message``)
and applies the size checks and the exhaustion policy (drop/raise/block). What is not
per message stays in the bus layer and is handed to the core as callables at creation:
topic resolution (a new topic's :class:`Route`), the subscriber-error hook, the wake-up
of publishers waiting for space, and the async drain task's wake-up.

Mechanisms:

* memory comes from the slab's C API (``slab_alloc_slot``/``slab_free_slot``: the slab
  says which class and slot a block is, so no pointer is mapped back); the message itself
  exports the bytes (buffer protocol) and counts its exports. Memory goes back only when
  no export is left; a message whose view leaked is parked and retried (``sweep``).
* the publish stamp and the per-delivery latency use a tick clock (the TSC when the
  kernel's clocksource is ``tsc``, else CLOCK_MONOTONIC; see ``include/hft_ticks.h``);
  the message keeps ticks and ``publish_ns`` converts them to CLOCK_MONOTONIC ns on
  first read.
* Message objects and their cached payload view are recycled per pool slot, but only
  when the core holds the sole reference (checked with the reference count when the
  slot is handed out again): a message someone kept is never reused, it stays released.
* synchronous dispatch is bounded in depth (a subscriber that publishes re-enters the
  core): past ``max_depth`` nested dispatches a publish raises DispatchDepthExceeded.
* batches (``publish_many``/``commit_many``): each message is taken, copied, stamped
  and counted as a single one; batch subscribers get a ``MessageBatch``
  (``hftalloc._batch``) once per batch, reused when nobody kept it. In sync mode a
  class that runs out mid-batch first delivers the part so far (which frees its
  blocks); in async mode the queued messages of one batch carry ``BATCH_MORE`` in
  ``Message._tid`` (owner bookkeeping) up to the last one, and ``drain`` regroups them.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_CheckBuffer
from cpython.buffer cimport PyObject_GetBuffer
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF, Py_XINCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_FromObject
from libc.math cimport llround
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

from coreallocs cimport (
    SLOT_NONE,
    SlabAllocator,
    SlabCore,
    slab_alloc_slot,
    slab_alloc_slots,
    slab_free,
    slab_free_slot,
    slab_free_slots,
)
from hftalloc._cdefs cimport (
    HFT_HAVE_TSC,
    HFT_HEADER,
    HFT_MAX_VALUE,
    HFT_NUM_BUCKETS,
    HFT_SUB_BITS,
    hft_call1,
    hft_elapsed_ns,
    hft_hist_record,
    hft_hist_record_n,
    hft_list_put,
    hft_mono_ns,
    hft_ns_per_tick,
    hft_pending_error,
    hft_pin,
    hft_rdtsc,
    hft_refcnt,
    hft_ticks,
    hft_unpin,
    hft_use_tsc,
    hft_view_rearm,
    hft_view_shared,
)
from hftalloc._batch cimport (
    BATCH_OPEN,
    BatchBlock,
    MessageBatch,
    batch_block,
    batch_item,
    batch_push,
    batch_push_block,
)
from hftalloc._message cimport (
    CLAIMED,
    IN_FLIGHT,
    POLICY_BLOCK,
    POLICY_DROP,
    RELEASED,
    RETAINED,
    Message,
    MessageOwner,
    not_copyable,
    views_settled,
)

import os
import warnings
from types import MappingProxyType

from hftalloc.errors import (
    BusClosed,
    BusError,
    BusFull,
    DispatchDepthExceeded,
    InvalidSize,
    MessageStateError,
    WouldBlock,
)
from hftalloc.histogram import HEADER as _PY_HEADER
from hftalloc.histogram import MAX_VALUE as _PY_MAX_VALUE
from hftalloc.histogram import SUB_BITS as _PY_SUB_BITS

if (_PY_SUB_BITS, _PY_HEADER, _PY_MAX_VALUE) != (HFT_SUB_BITS, HFT_HEADER, HFT_MAX_VALUE):
    raise ImportError("hftalloc._bus was built for another histogram layout; rebuild it")

cdef enum:
    BATCH_MORE = 1            # Message._tid of a queued message: its batch goes on after it

MAX_MESSAGE = (1 << 63) - 1   # larger sizes cannot even be expressed (InvalidSize)
DEFAULT_MAX_DEPTH = 200       # nested synchronous dispatches (see BusCore)


cdef enum:
    RUN = 64        # messages publish_many takes blocks for, and frees, with one slab call
    BIND_AHEAD = 63 # publish_many calls that bind their messages at publish once the
                    # batch subscribers of a topic read every message of a batch


cdef int _get_flat_buffer(object data, Py_buffer* view) except -1:
    """PyBUF_SIMPLE view of `data`; a buffer that is not C-contiguous raises BufferError
    whatever its exporter says (numpy says ValueError)."""
    try:
        PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    except (BufferError, ValueError) as exc:
        if PyObject_CheckBuffer(data):
            raise BufferError(f"publish needs a C-contiguous buffer ({exc})") from exc
        raise
    return 0


cdef inline size_t slab_class_size(SlabCore* core, Py_ssize_t k, Py_ssize_t alloc) noexcept:
    return (<size_t>1 << (core.min_shift + k)) if k >= 0 else <size_t>alloc


# -- the tick clock (see include/hft_ticks.h) -----------------------------------------
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


cdef inline void _record_latencies(uint64_t* lat, MessageBatch batch, int64_t now) noexcept:
    """Commit -> ``now`` of each message of ``batch``: one histogram update per run of
    messages with the same commit stamp (``publish_many`` stamps its whole call once)."""
    cdef Py_ssize_t j = 0, start, m = batch._len
    cdef int64_t ticks
    while j < m:
        ticks = _pub_ticks_of(batch, j)
        start = j
        j += 1
        while j < m and _pub_ticks_of(batch, j) == ticks:
            j += 1
        hft_hist_record_n(lat, hft_elapsed_ns(now - ticks), <uint64_t>(j - start))


cdef inline int64_t _pub_ticks_of(MessageBatch batch, Py_ssize_t j) noexcept:
    """The commit stamp of entry j, a message or an unbound block."""
    if batch._items[j] == NULL:
        return batch_block(batch, j).pub_ticks
    return (<Message>batch._items[j])._pub_ticks


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


def _histogram_record(latency_counts, int64_t value):
    """Record one value with the C recorder (lets tests compare it with Histogram.record)."""
    cdef uint64_t[::1] counts = latency_counts
    hft_hist_record(&counts[0], value)


def _not_initialised(topic):
    raise BusError("this BusCore was not initialised (cores are made by MessageBus)")


@cython.final
@cython.auto_pickle(False)
cdef class Route:
    """Per-topic dispatch entry: resolved subscribers and counters (counters read-only)."""

    def __cinit__(self, *args, **kwargs):
        self.callbacks = ()
        self.subscriptions = ()
        self.async_subs = ()
        self.batch_callbacks = ()
        self.batch_subscriptions = ()
        self.async_batch_subs = ()

    def __init__(self, str topic not None):
        if self.topic is not None:
            raise TypeError(f"route {self.topic!r} is already initialised")
        self.topic = topic

    def set_subscribers(self, tuple callbacks not None, tuple subscriptions not None,
                        tuple async_subs not None, tuple batch_callbacks not None = (),
                        tuple batch_subscriptions not None = (),
                        tuple async_batch_subs not None = ()):
        """Replace the subscribers: ``callbacks[i]`` is the callable of ``subscriptions[i]``
        (same length), ``async_subs`` the coroutine subscriptions (async mode); the
        ``batch_`` arguments are the same for batch subscribers (called with a
        :class:`~hftalloc._batch.MessageBatch`)."""
        if len(callbacks) != len(subscriptions):
            raise ValueError(f"{len(callbacks)} callbacks for {len(subscriptions)} subscriptions")
        if len(batch_callbacks) != len(batch_subscriptions):
            raise ValueError(f"{len(batch_callbacks)} batch callbacks for "
                             f"{len(batch_subscriptions)} batch subscriptions")
        for cb in callbacks + batch_callbacks:
            if not callable(cb):
                raise TypeError(f"callback must be callable, got {type(cb).__name__}")
        self.callbacks = callbacks
        self.subscriptions = subscriptions
        self.async_subs = async_subs
        self.batch_callbacks = batch_callbacks
        self.batch_subscriptions = batch_subscriptions
        self.async_batch_subs = async_batch_subs
        self._wanted = bool(callbacks or async_subs or batch_callbacks or async_batch_subs)
        self._grouped = bool(async_subs or batch_callbacks or async_batch_subs)

    def __reduce__(self):
        raise not_copyable(self)

    def __reduce_ex__(self, protocol):
        raise not_copyable(self)

    def __copy__(self):
        raise not_copyable(self)

    def __deepcopy__(self, memo):
        raise not_copyable(self)

    def __repr__(self):
        cdef Py_ssize_t n = (len(self.callbacks) + len(self.async_subs) + len(self.batch_callbacks)
                             + len(self.async_batch_subs))
        return f"<Route {self.topic!r} subscribers={n} published={self.published}>"


@cython.final
@cython.auto_pickle(False)
cdef class BusCore(MessageOwner):
    """The per-message path of a bus (see the module docstring).

    ``BusCore(slab, policy, is_async, latency_counts, resolve, on_error, on_space,
    max_depth)``: ``resolve(topic)`` validates a topic seen for the first time and returns
    its new :class:`Route`; ``on_error(exc, msg, subscription)`` reports a subscriber's
    exception (already counted); ``on_space()`` is called when a block came back while
    ``space_waiters`` is non-zero; ``set_wake(f)`` installs the async drain wake-up.
    """

    def __cinit__(self, *args, **kwargs):
        self._routes = {}
        self._routes_view = MappingProxyType(self._routes)
        self._queue = []
        self._deferred = []
        self._handed = set()
        self._cache = []
        self._idle = True
        self._closed = True              # until __init__ (refuses every publish)
        self._resolve = _not_initialised
        self._max_depth = DEFAULT_MAX_DEPTH

    def __init__(self, SlabAllocator slab not None, int policy, bint is_async, latency_counts,
                 resolve, on_error, on_space, int max_depth=DEFAULT_MAX_DEPTH):
        cdef uint64_t[::1] lat = latency_counts
        if self._slab is not None:
            raise BusError("this BusCore is already initialised")
        if not 0 <= policy <= POLICY_BLOCK:
            raise ValueError(f"policy must be 0..{POLICY_BLOCK}, got {policy}")
        if lat.shape[0] < HFT_HEADER + HFT_NUM_BUCKETS:
            raise ValueError("latency_counts is not a Histogram.counts array")
        for name, f in (("resolve", resolve), ("on_error", on_error), ("on_space", on_space)):
            if not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        self._lat_view = lat
        self._lat = &self._lat_view[0]
        self._max_class = (<size_t>1) << (slab.core.min_shift + slab.core.nclasses - 1)
        self._policy = policy
        self._async = is_async
        self._resolve = resolve
        self._on_error = on_error
        self._on_space = on_space
        self._max_depth = max_depth
        self._cache = [[None] * cap for cap in slab.class_capacities]   # one slot per block
        self._slab = slab
        self._closed = False

    def __reduce__(self):
        raise not_copyable(self)

    def __reduce_ex__(self, protocol):
        raise not_copyable(self)

    def __copy__(self):
        raise not_copyable(self)

    def __deepcopy__(self, memo):
        raise not_copyable(self)

    # -- state the bus layer reads or drives -------------------------------------------
    @property
    def routes(self):
        """Read-only mapping topic -> Route (filled by ``resolve``)."""
        return self._routes_view

    @property
    def queued(self):
        """Messages committed in async mode and not dispatched yet."""
        return len(self._queue)

    @property
    def closed(self):
        return self._closed

    @property
    def max_depth(self):
        """Nested synchronous dispatches allowed before DispatchDepthExceeded."""
        return self._max_depth

    @property
    def idle(self):
        """True when the async drain task is not scheduled (a commit then wakes it)."""
        return self._idle

    @idle.setter
    def idle(self, bint value):
        self._idle = value

    @property
    def space_waiters(self):
        """Publishers waiting for a free block (``on_space`` is called while non-zero)."""
        return self._space_waiters

    @space_waiters.setter
    def space_waiters(self, Py_ssize_t value):
        if value < 0:
            raise ValueError(f"space_waiters must be >= 0, got {value}")
        self._space_waiters = value

    def set_wake(self, wake):
        """The callable an async commit calls when the drain task is idle (None: none)."""
        if wake is not None and not callable(wake):
            raise TypeError(f"wake must be callable or None, got {type(wake).__name__}")
        self._wake = wake

    def close(self):
        """Refuse every further publish/claim (BusClosed)."""
        self._closed = True

    # -- publishing ---------------------------------------------------------------------------
    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def publish(self, topic, data):
        """Copy ``data`` into a pool block and publish it on ``topic``.

        Returns the sequence number, or None when the ``drop`` policy dropped it.
        """
        return self._publish(topic, data, True, 0)

    def publish_at(self, topic, data, publish_ns):
        """``publish`` whose message carries ``publish_ns`` (CLOCK_MONOTONIC ns, > 0) as
        its publish time (journal replay); the latency histogram still measures from the
        actual commit."""
        if isinstance(publish_ns, bool) or not isinstance(publish_ns, int):
            raise TypeError(f"publish_ns must be an int, not {type(publish_ns).__name__}")
        if not 0 < publish_ns <= INT64_MAX:
            raise ValueError(f"publish_ns must be a CLOCK_MONOTONIC time in ns (> 0), "
                             f"got {publish_ns}")
        return self._publish(topic, data, True, publish_ns)

    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def try_publish(self, topic, data):
        """publish() without the exhaustion policy: -1 when the class is full."""
        return self._publish(topic, data, False, 0)

    # -- batches ------------------------------------------------------------------------------
    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def publish_many(self, topic, payloads):
        """Copy each buffer of ``payloads`` (an iterable) into a pool block and publish them
        on ``topic`` as one batch; returns how many were published.

        Per-message subscribers get each message; batch subscribers get them in one
        :class:`~hftalloc._batch.MessageBatch` (in sync mode in pieces when the pool runs
        out mid-batch: the part delivered so far frees its blocks first). The messages of
        one call share one publish stamp, taken when the call starts. A message whose
        size class is full applies the policy on its own: ``drop`` counts it and goes on;
        ``raise``/``block`` count it as rejected, go on, and raise BusFull/WouldBlock at
        the end naming how many were refused.
        """
        return self._publish_many(topic, payloads, None, True)

    def publish_many_at(self, topic, payloads, stamps):
        """``publish_many`` whose messages carry ``stamps[i]`` (CLOCK_MONOTONIC ns) as their
        publish time (journal replay); a stamp <= 0 means the commit time."""
        items = tuple(payloads)
        times = tuple(stamps)
        if len(times) != len(items):
            raise ValueError(f"{len(items)} payloads but {len(times)} stamps")
        for t in times:
            if isinstance(t, bool) or not isinstance(t, int):
                raise TypeError(f"stamps must be ints, not {type(t).__name__}")
            if t > INT64_MAX:
                raise ValueError(f"stamp {t} is not a CLOCK_MONOTONIC time in ns")
        return self._publish_many(topic, items, times, True)

    def try_publish_many(self, topic, payloads):
        """publish_many() without the exhaustion policy: stops at the first message whose
        size class is full; returns how many were published (the rest were not tried)."""
        return self._publish_many(topic, payloads, None, False)

    cdef object _publish_many(self, object topic, object payloads, object stamps,
                              bint apply_policy):
        cdef Route route = self._route(topic)
        cdef object items, item
        cdef Py_ssize_t i = 0, total, published = 0, refused = 0, n, last_size = 0, got
        cdef bint is_list, pinned, sync = not self._async, bind = False
        cdef Py_buffer src
        cdef char* buf
        cdef Message msg, last = None
        cdef MessageBatch batch = None
        cdef int64_t pub_ns = 0, ticks
        if self._closed:
            raise BusClosed("the bus is closed")
        if type(payloads) is tuple or type(payloads) is list:
            items = payloads
        else:
            try:
                items = tuple(payloads)
            except TypeError:
                raise TypeError(f"payloads must be an iterable of buffers, not "
                                f"{type(payloads).__name__}") from None
        is_list = type(items) is list
        total = len(items)
        if not route._wanted:
            for item in items[:total]:
                pinned = hft_pin(item, &buf, &n)
                if pinned:
                    hft_unpin(item)
                else:
                    _get_flat_buffer(item, &src)
                    PyBuffer_Release(&src)
                self._count_unrouted(route)
                published += 1
            return published
        if sync:
            if self._depth >= self._max_depth:
                route.rejected += total
                self.rejected += total
                raise DispatchDepthExceeded(
                    f"topic {route.topic!r}: publish_many nested {self._max_depth} dispatches "
                    f"deep (a subscriber publishing recursively?); its {total} messages were "
                    "not published")
            if route.batch_callbacks:
                batch = self._batch_for(route)
                # bind the messages now while the subscribers read them all (the next
                # call after BIND_AHEAD looks again: unbound blocks, bound if read)
                bind = route._bind_ahead > 0
                if bind:
                    route._bind_ahead -= 1
            self._depth += 1
        ticks = hft_ticks()                     # one publish stamp for the call
        try:
            while i < total:
                # batch subscribers only: no Python code runs between two messages, so runs
                # of messages take their blocks with one slab call
                if batch is not None and not route.callbacks and not self._closed \
                        and not self._slab._closed:
                    n = min(total - i, RUN)
                    if is_list:
                        n = min(n, PyList_GET_SIZE(items) - i)
                    if n > 0:
                        got = self._publish_run(route, items, i, n, stamps, ticks, batch,
                                                bind)
                        i += got
                        published += got
                        if got == n:
                            continue
                if is_list:
                    if i >= PyList_GET_SIZE(items):
                        break                   # a subscriber shortened the caller's list
                    item = <object>PyList_GET_ITEM(items, i)
                else:
                    item = <object>PyTuple_GET_ITEM(items, i)
                if stamps is not None:
                    pub_ns = _stamp_of(stamps, i)
                i += 1
                if self._closed:
                    error = BusClosed("the bus was closed during publish_many")
                    error.published = published     # the rest was not
                    raise error
                # a reference held here would keep the slot's cached message from reuse
                msg = None
                pinned = hft_pin(item, &buf, &n)
                if not pinned:
                    _get_flat_buffer(item, &src)
                    buf = <char*>src.buf
                    n = src.len
                try:
                    msg = self._take_once(route, route.topic, n)
                    if msg is None:
                        msg = self._take(route, route.topic, n)   # after a sweep
                    if msg is None and batch is not None and batch._len:
                        # the pool ran out mid-batch: deliver the part so far, free its blocks
                        self._dispatch_batch(batch, route)
                        self._end_batch(batch, True)
                        batch = self._batch_for(route)
                        msg = self._take(route, route.topic, n)
                    if msg is not None and n:
                        memcpy(msg._ptr, buf, n)
                finally:
                    if pinned:
                        hft_unpin(item)
                    else:
                        PyBuffer_Release(&src)
                if msg is None:
                    if not apply_policy:
                        i -= 1
                        break
                    if self._policy == POLICY_DROP:
                        route.dropped += 1
                        self.dropped += 1
                    else:
                        route.rejected += 1
                        self.rejected += 1
                        refused += 1
                        last_size = n
                    continue
                _stamp(self, msg, route, pub_ns, ticks)
                published += 1
                if not sync:
                    self._enqueue(msg)
                    msg._tid = BATCH_MORE
                    last = msg
                elif batch is not None:
                    batch._append(msg)          # finished with the batch
                    if route.callbacks:
                        self._dispatch(msg, route)
                else:
                    try:
                        self._dispatch(msg, route)
                    finally:
                        self._finish_c(msg)
            if batch is not None and batch._len:
                self._dispatch_batch(batch, route)
        except Exception:
            # the messages published so far reach the batch subscribers all the same
            if batch is not None and batch._len and batch._phase == BATCH_OPEN:
                self._dispatch_batch(batch, route)
            raise
        finally:
            if sync:
                self._depth -= 1
                if batch is not None:
                    self._end_batch(batch, True)
            elif last is not None:
                last._tid = 0                   # the batch ends here
                if self._idle:
                    self._idle = False
                    if self._wake is not None:
                        self._wake()
        if refused:
            self._refused_many(route, refused, total, last_size)
        return published

    cdef Py_ssize_t _publish_run(self, Route route, object items, Py_ssize_t start,
                                 Py_ssize_t n, object stamps, int64_t ticks,
                                 MessageBatch batch, bint bind) except -1:
        """publish_many's path for a route with batch subscribers only: copy
        items[start:start + n] (n <= RUN) into blocks taken with one slab call and append
        them to ``batch``: as messages (``bind``), else as unbound blocks (their Message
        is made when a subscriber reads one: _bind_blocks). Returns how many it
        published, the first ones: it stops at the first item it cannot serve (not a
        buffer, class full or none, a block parked or whose old message's view is held
        elsewhere), which the caller publishes on its own."""
        cdef PyObject* objs[RUN]
        cdef Py_buffer views[RUN]
        cdef char* bufs[RUN]
        cdef Py_ssize_t lens[RUN]
        cdef size_t sizes[RUN]
        cdef Py_ssize_t classes[RUN]
        cdef uint32_t slots[RUN]
        cdef char* ptrs[RUN]
        cdef bint pinned[RUN]
        cdef Py_ssize_t j, acquired = 0, got = 0, used = 0, ok = 0
        cdef bint is_list = type(items) is list
        cdef BatchBlock* block
        cdef Message msg
        cdef int64_t pub_ns = 0
        try:
            for j in range(n):
                objs[j] = PyList_GET_ITEM(items, start + j) if is_list \
                    else PyTuple_GET_ITEM(items, start + j)
                Py_XINCREF(objs[j])
                pinned[j] = hft_pin(<object>objs[j], &bufs[j], &lens[j])
                if not pinned[j]:
                    try:
                        _get_flat_buffer(<object>objs[j], &views[j])
                    except Exception:
                        Py_XDECREF(objs[j])
                        break                   # the caller raises it again, in order
                    bufs[j] = <char*>views[j].buf
                    lens[j] = views[j].len
                sizes[j] = <size_t>lens[j] if lens[j] > 0 else 1
                acquired = j + 1
            batch._reserve(acquired)
            got = slab_alloc_slots(self._slab.core, sizes, acquired, classes, slots, ptrs)
            while bind and used < got:
                msg = _bind(self, route, route.topic, ptrs[used], classes[used], slots[used],
                            <Py_ssize_t>sizes[used], lens[used], True)
                used += 1
                if msg is None:
                    break                       # the block was parked
                if lens[ok]:
                    memcpy(msg._ptr, bufs[ok], lens[ok])
                if stamps is not None:
                    pub_ns = _stamp_of(stamps, start + ok)
                _stamp(self, msg, route, pub_ns, ticks)
                batch_push(batch, msg)
                ok += 1
            while not bind and used < got:
                if _view_held_elsewhere(self, classes[used], slots[used]):
                    break                       # _bind decides for this block (it parks it)
                if stamps is not None:
                    pub_ns = _stamp_of(stamps, start + used)
                if lens[used]:
                    memcpy(ptrs[used], bufs[used], lens[used])
                block = batch_push_block(batch)
                block.ptr = ptrs[used]
                block.length = lens[used]
                block.cls = <int32_t>classes[used]
                block.idx = slots[used]
                block.pub_ticks = ticks
                block.pub_ns = pub_ns
                self._seq += 1
                block.seq = self._seq
                used += 1
                ok += 1
        finally:
            if not bind:                        # (bound messages are counted by _stamp)
                route.published += ok
                self.published += ok
            for j in range(used, got):          # blocks taken and not handed out
                slab_free_slot(self._slab.core, classes[j], slots[j])
            for j in range(acquired):
                if pinned[j]:
                    hft_unpin(<object>objs[j])
                else:
                    PyBuffer_Release(&views[j])
                Py_XDECREF(objs[j])
        return ok

    def commit_many(self, messages):
        """Publish claimed messages of this bus, all on one topic, in order and as one batch
        (use this instead of ``commit()``/``with``); returns how many, all with one
        publish stamp. Nothing is committed if one of them cannot be (MessageStateError,
        BufferStillExported)."""
        cdef tuple items = tuple(messages)
        cdef Py_ssize_t i, total = len(items)
        cdef Message msg, last = None
        cdef Route route = None
        cdef MessageBatch batch = None
        cdef set seen = set()
        cdef int64_t ticks
        for obj in items:
            if type(obj) is not Message or (<Message>obj)._owner is not self \
                    or (<Message>obj)._state != CLAIMED:
                raise MessageStateError(f"commit_many() needs claimed messages of this bus, "
                                        f"got {obj!r}")
            if id(obj) in seen:
                raise MessageStateError(f"{obj!r} is given twice to commit_many()")
            seen.add(id(obj))
            if route is None:
                route = <Route>(<Message>obj)._route
            elif (<Message>obj)._route is not route:
                raise ValueError(f"commit_many() publishes one topic per call: {route.topic!r} "
                                 f"and {(<Message>obj).topic!r}")
        if total == 0:
            return 0
        for obj in items:
            msg = <Message>obj
            if msg._wview is not None or msg._wexports:
                msg._end_claim_views()
        if not self._async:
            if self._depth >= self._max_depth:
                for obj in items:
                    route.rejected += 1
                    self.rejected += 1
                    self._free_c(<Message>obj)
                raise DispatchDepthExceeded(
                    f"topic {route.topic!r}: commit_many nested {self._max_depth} dispatches "
                    f"deep (a subscriber publishing recursively?); its {total} messages were "
                    "not published")
            if route.batch_callbacks:
                batch = self._batch_for(route)
            self._depth += 1
            ticks = hft_ticks()
            try:
                for i in range(total):
                    msg = <Message>items[i]
                    _stamp(self, msg, route, 0, ticks)
                    if batch is not None:
                        batch._append(msg)
                        self._dispatch(msg, route)
                    else:
                        try:
                            self._dispatch(msg, route)
                        finally:
                            self._finish_c(msg)
                if batch is not None:
                    self._dispatch_batch(batch, route)
            finally:
                self._depth -= 1
                if batch is not None:
                    self._end_batch(batch, True)
            return total
        ticks = hft_ticks()
        for i in range(total):
            msg = <Message>items[i]
            _stamp(self, msg, route, 0, ticks)
            self._enqueue(msg)
            msg._tid = BATCH_MORE
            last = msg
        last._tid = 0
        if self._idle:
            self._idle = False
            if self._wake is not None:
                self._wake()
        return total

    cdef int _enqueue(self, Message msg) except -1:
        self._queue.append(msg)
        return 0

    cdef int _refused_many(self, Route route, Py_ssize_t refused, Py_ssize_t total,
                           Py_ssize_t size) except -1:
        """Raise the policy's error for the messages of a batch that found their class full."""
        request = size or 1
        text = (f"topic {route.topic!r}: {refused} of {total} messages of the batch were "
                f"refused (counted as rejected), the {self._slab.size_class(request)} B size "
                f"class being exhausted ({self._slab.class_capacity(request)} blocks in use")
        if self._policy == POLICY_BLOCK:
            error = WouldBlock(text + "); policy='block' needs await bus.apublish_many()")
        else:
            error = BusFull(text + "); release retained messages, raise blocks_per_class, "
                            "or use policy='drop'/'block'")
        error.refused = refused                 # the others of the batch were published
        raise error

    cdef MessageBatch _batch_for(self, Route route):
        """An open, empty batch on ``route`` (the spare one when nobody kept it)."""
        cdef MessageBatch batch = self._spare
        if batch is None:
            batch = MessageBatch.__new__(MessageBatch)
        else:
            self._spare = None
        batch._open(route.topic, route, self, _bind_blocks)
        return batch

    cdef int _dispatch_batch(self, MessageBatch batch, Route route) except -1:
        """Run the synchronous batch subscribers of ``route`` on ``batch`` (errors are
        contained; each message's latency is recorded per subscriber)."""
        cdef tuple callbacks = route.batch_callbacks
        cdef tuple subscriptions = route.batch_subscriptions
        cdef Py_ssize_t i, m, n = len(callbacks), ok = 0
        for i in range(n):
            m = batch._len
            _record_latencies(self._lat, batch, hft_ticks())
            if hft_call1(PyTuple_GET_ITEM(callbacks, i), batch) == 0:
                ok += m
            else:
                self._batch_failed(batch, route, subscriptions[i])
        route.delivered += ok
        self.delivered += ok
        return 0

    cdef int _batch_failed(self, MessageBatch batch, Route route, object subscription) except -1:
        """A batch subscriber raised: each of its messages counts as a failed delivery; the
        error hook gets the exception with the batch (as for single subscribers)."""
        cdef Py_ssize_t m = batch._len
        try:
            hft_pending_error()
        except Exception as exc:
            route.errors += m
            self.errors += m
            self._on_error(exc, batch, subscription)
        return 0

    cdef int _dispatch_single(self, Message msg, Route route) except -1:
        """Synchronous dispatch of one message on a route with batch subscribers: the
        per-message subscribers, then the batch subscribers with a batch of one."""
        cdef MessageBatch batch = self._batch_for(route)
        try:
            batch._append(msg)
            self._dispatch(msg, route)
            self._dispatch_batch(batch, route)
        finally:
            self._end_batch(batch, False)
        return 0

    cdef int _end_batch(self, MessageBatch batch, bint finish) except -1:
        """Delivery over: finish the batch's messages (``finish``), close the batch, keep it
        as the spare when nobody else references it."""
        cdef Py_ssize_t j
        cdef Message msg
        cdef object error = None
        cdef SlotRun run
        cdef Py_ssize_t freed = 0, unread = 0
        cdef BatchBlock* block
        cdef SlabCore* core = self._slab.core
        run.cls = -1
        run.n = 0
        if finish:
            for j in range(batch._len):
                msg = batch_item(batch, j)
                if msg is None:                 # an unbound block: nobody read it
                    unread += 1
                    block = batch_block(batch, j)
                    freed += _run_add(core, &run, block.cls, block.idx)
                    continue
                if msg._state != IN_FLIGHT:
                    continue
                if msg._refs == 0 and msg._cls >= 0 and msg._ptr != NULL \
                        and views_settled(msg):
                    # the common end, as _free_c, with the slots freed by one slab call
                    msg._state = RELEASED
                    freed += _run_add(core, &run, msg._cls, msg._idx)
                    msg._ptr = NULL
                    _cache_message(self, msg)
                    continue
                freed += _run_flush(core, &run)
                try:
                    self._finish_c(msg)
                except BaseException as exc:
                    if error is None:
                        error = exc
            msg = None
            freed += _run_flush(core, &run)
            if batch._unbound:                  # read whole: bind the next ones at publish
                (<Route>batch._route)._bind_ahead = BIND_AHEAD if unread == 0 else 0
            if freed and self._space_waiters:
                try:
                    self._on_space()
                except BaseException as exc:
                    if error is None:
                        error = exc
        batch._close()
        if hft_refcnt(<PyObject*>batch) == 1:   # the caller's reference alone
            self._spare = batch
        if error is not None:
            raise error
        return 0

    cdef Route _route(self, object topic):
        """The route of `topic`: a dict hit for a known exact str, else _new_route."""
        cdef Route route = self._routes.get(topic) if type(topic) is str else None
        if route is None:
            route = self._new_route(topic)
        return route

    cdef Route _new_route(self, object topic):
        """A topic that is not an exact str already routed: a str subclass is turned into
        its plain str (the type Route keeps) and looked up again; anything else goes to
        ``resolve`` (TopicTypeError for a non-str, InvalidTopic for a bad name)."""
        cdef Route route
        if type(topic) is not str and isinstance(topic, str):
            topic = PyUnicode_FromObject(topic)
            route = self._routes.get(topic)
            if route is not None:
                return route
        obj = self._resolve(topic)
        if type(obj) is not Route:
            raise TypeError(f"resolve() must return a Route, not {type(obj).__name__}")
        route = <Route>obj
        if route.topic != topic:
            raise ValueError(f"resolve({topic!r}) returned the route of {route.topic!r}")
        self._routes[route.topic] = route
        return route

    cdef object _publish(self, object topic, object data, bint apply_policy, int64_t pub_ns):
        cdef Route route = self._route(topic)
        cdef Py_buffer src
        cdef char* buf
        cdef Py_ssize_t n
        cdef bint pinned
        cdef Message msg
        if self._closed:
            raise BusClosed("the bus is closed")
        pinned = hft_pin(data, &buf, &n)
        if not pinned:
            _get_flat_buffer(data, &src)
            buf = <char*>src.buf
            n = src.len
        try:
            if not route._wanted:
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
                hft_unpin(data)
            else:
                PyBuffer_Release(&src)
        return self._commit_c(msg, pub_ns)

    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def claim(self, topic, size):
        """A writable message of ``size`` bytes; publish it with ``commit()``/``with``.

        Returns None when the ``drop`` policy dropped it.
        """
        return self._claim(topic, size, True)

    @cython.binding(False)   # a plain method descriptor: the cheapest call
    def try_claim(self, topic, size):
        """claim() without the exhaustion policy: None when the class is full."""
        return self._claim(topic, size, False)

    cdef object _claim(self, object topic, object size, bint apply_policy):
        cdef Route route = self._route(topic)
        cdef Message msg
        cdef Py_ssize_t n
        if self._closed:
            raise BusClosed("the bus is closed")
        if type(size) is not int or not 0 <= size <= 0x7FFFFFFFFFFFFFFF:
            size = _check_size(size)
        n = size
        msg = self._take(route, route.topic, n)
        if msg is None and apply_policy:
            self._exhausted(route, n)
        return msg

    cdef object _count_unrouted(self, Route route):
        self._seq += 1
        route.published += 1
        self.published += 1
        return self._seq

    cdef int _exhausted(self, Route route, Py_ssize_t size) except -1:
        """The size class for ``size`` is full (after a sweep): apply the policy."""
        if self._policy == POLICY_DROP:
            route.dropped += 1
            self.dropped += 1
            return 0
        route.rejected += 1
        self.rejected += 1
        request = size or 1
        text = (f"topic {route.topic!r}: the {self._slab.size_class(request)} B size class is "
                f"exhausted ({self._slab.class_capacity(request)} blocks in use")
        if self._policy == POLICY_BLOCK:
            raise WouldBlock(text + "); policy='block' needs await bus.apublish()/aclaim()")
        raise BusFull(text + "); release retained messages, raise blocks_per_class, "
                      "or use policy='drop'/'block'")

    def count_rejected(self, topic):
        """Count one refused publish on ``topic`` (a blocked publisher that timed out)."""
        cdef Route route = self._route(topic)
        route.rejected += 1
        self.rejected += 1

    cdef Message _take(self, Route route, str topic, Py_ssize_t length):
        """A claimed message with a fresh block of ``length`` bytes; None when the class
        is full (after recycling blocks freed from leaked views)."""
        cdef Message msg = self._take_once(route, topic, length)
        cdef Py_ssize_t before = len(self._deferred)
        if msg is None and before and self._sweep_c() < before:
            msg = self._take_once(route, topic, length)
        return msg

    cdef Message _take_once(self, Route route, str topic, Py_ssize_t length):
        cdef SlabCore* core = self._slab.core
        cdef Py_ssize_t alloc = length if length > 0 else 1
        cdef Py_ssize_t k = -1
        cdef char* ptr
        cdef uint32_t idx = SLOT_NONE
        cdef Message msg
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
        msg = _bind(self, route, topic, ptr, k, idx, alloc, length, True)
        if msg is None:                     # the block was parked: take another
            return self._take_once(route, topic, length)
        return msg

    cdef int _park(self, Message msg, char* ptr, Py_ssize_t alloc, Py_ssize_t k,
                   uint32_t idx) except -1:
        """The block just taken is still exported by a view of its previous message: the
        message keeps it, released and parked until the view goes (``sweep``)."""
        msg._ptr = ptr
        msg._alloc = alloc
        msg._cls = k
        msg._idx = idx
        msg._state = RELEASED
        self.leaked_views += 1
        self._deferred.append(msg)
        return 0

    cdef int _refuse(self, Route route, Py_ssize_t alloc) except -1:
        """Raise the allocator's own error for a request it cannot serve (counted)."""
        route.rejected += 1
        self.rejected += 1
        self._slab.allocate(alloc).release()     # raises SizeTooLarge / AllocatorClosed / ...
        raise MemoryError(f"{self._slab.name}: cannot allocate {alloc} B")

    # -- MessageOwner ---------------------------------------------------------------------
    cdef object _commit_message(self, Message msg):
        return self._commit_c(msg, 0)

    cdef int _abort_message(self, Message msg) except -1:
        self.aborted += 1
        self._free_c(msg)
        return 0

    cdef int _release_message(self, Message msg) except -1:
        self._free_c(msg)
        return 0

    cdef void _discard_message(self, Message msg) noexcept:
        cdef SlabAllocator slab = <SlabAllocator>msg._memory
        if msg._ptr != NULL and slab is not None:
            slab_free(slab.core, msg._ptr, <size_t>msg._alloc)
            msg._ptr = NULL

    cdef int64_t _ticks_to_ns(self, int64_t ticks) noexcept:
        return _ticks_to_ns(ticks)

    # -- commit and delivery ----------------------------------------------------------------
    cdef object _commit_c(self, Message msg, int64_t pub_ns):
        cdef Route route = <Route>msg._route
        cdef uint64_t seq
        if self._depth >= self._max_depth:
            self._too_deep(msg, route)
        if msg._wview is not None or msg._wexports:
            msg._end_claim_views()
        self._seq += 1
        seq = msg.seq = self._seq
        msg._pub_ticks = hft_ticks()
        msg._pub_ns = pub_ns
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
            self._depth += 1
            try:
                if route.batch_callbacks:
                    self._dispatch_single(msg, route)
                else:
                    self._dispatch(msg, route)
            finally:
                self._depth -= 1
                self._finish_c(msg)
        return seq

    cdef int _too_deep(self, Message msg, Route route) except -1:
        """A publish nested ``max_depth`` dispatches deep: refuse it (counted), block back."""
        route.rejected += 1
        self.rejected += 1
        self._free_c(msg)
        raise DispatchDepthExceeded(
            f"topic {route.topic!r}: publish nested {self._max_depth} dispatches deep "
            "(a subscriber publishing recursively?); the message was not published")

    cdef int _dispatch(self, Message msg, Route route) except -1:
        """Run the synchronous subscribers of ``route`` on ``msg`` (errors are contained)."""
        cdef tuple callbacks = route.callbacks
        cdef tuple subscriptions = route.subscriptions   # same length (set_subscribers)
        cdef Py_ssize_t i, n = len(callbacks), ok = 0
        cdef int64_t start = msg._pub_ticks
        for i in range(n):
            hft_hist_record(self._lat, hft_elapsed_ns(hft_ticks() - start))
            # a plain C call: the exception machinery only runs when a subscriber fails
            if hft_call1(PyTuple_GET_ITEM(callbacks, i), msg) == 0:
                ok += 1
            else:
                self._callback_failed(msg, route, subscriptions[i])
        route.delivered += ok
        self.delivered += ok
        return 0

    cdef int _callback_failed(self, Message msg, Route route, object subscription) except -1:
        """A subscriber raised (the exception is set): count it and report an Exception to
        the error hook; anything else (KeyboardInterrupt, SystemExit...) propagates."""
        try:
            hft_pending_error()
        except Exception as exc:
            route.errors += 1
            self.errors += 1
            self._on_error(exc, msg, subscription)
        return 0

    def drain(self, Py_ssize_t limit):
        """Dispatch up to ``limit`` queued messages to the synchronous subscribers; return the
        batches whose topic has coroutine subscribers (per message or batch), each open
        until handed back through ``finish_batch`` once delivered.

        The messages of one ``publish_many``/``commit_many`` form one batch (cut at
        ``limit``); any other message is a batch of one."""
        cdef list queue = self._queue
        cdef list pending = []
        cdef Py_ssize_t k = min(limit, len(queue)), i = 0
        cdef Message msg
        cdef Route route
        cdef MessageBatch batch = None
        if self._draining:
            raise BusError("drain() is already running (it is not re-entrant)")
        self._draining = True
        try:
            while i < k:
                msg = <Message>queue[i]
                i += 1
                route = <Route>msg._route
                if batch is not None and (batch._route is not route or not route._grouped):
                    self._close_group(batch, pending)   # subscribers changed mid-batch
                    batch = None
                if not route._grouped:
                    try:
                        self._dispatch(msg, route)
                    finally:
                        self._finish_c(msg)
                    continue
                if batch is None:
                    batch = self._batch_for(route)
                batch._append(msg)
                self._dispatch(msg, route)
                if msg._tid != BATCH_MORE or i == k:
                    self._close_group(batch, pending)
                    batch = None
        except BaseException:
            # a subscriber let a BaseException through: nothing stays half delivered
            if batch is not None:
                self._end_batch(batch, True)
            for batch in pending:
                self._handed.discard(batch)
                self._end_batch(batch, True)
            raise
        finally:
            del queue[:i]
            self._draining = False
        return pending

    cdef int _close_group(self, MessageBatch batch, list pending) except -1:
        """The last message of a batch was dispatched: the batch subscribers run, then the
        batch goes to the coroutine subscribers (``pending``) or is over."""
        cdef Route route = <Route>batch._route
        try:
            if route.batch_callbacks:
                self._dispatch_batch(batch, route)
        except BaseException:
            self._end_batch(batch, True)
            raise
        if route.async_subs or route.async_batch_subs:
            self._handed.add(batch)
            pending.append(batch)
        else:
            self._end_batch(batch, True)
        return 0

    cdef MessageBatch _own_handed(self, object obj):
        if type(obj) is not MessageBatch or obj not in self._handed:
            raise MessageStateError(f"{obj!r} is not a batch drain() handed out on this bus")
        return <MessageBatch>obj

    def async_batch_subscribers(self, batch):
        """The coroutine batch subscriptions of a batch returned by ``drain``."""
        return (<Route>self._own_handed(batch)._route).async_batch_subs

    def record_batch_latency(self, batch):
        """Record commit -> now of each message of a batch returned by ``drain``."""
        _record_latencies(self._lat, self._own_handed(batch), hft_ticks())

    def count_batch_delivery(self, batch, bint ok):
        """Count one coroutine batch delivery: each message delivered (ok) or failed."""
        cdef MessageBatch b = self._own_handed(batch)
        cdef Route route = <Route>b._route
        if ok:
            route.delivered += b._len
            self.delivered += b._len
        else:
            route.errors += b._len
            self.errors += b._len

    def finish_batch(self, batch):
        """The coroutine subscribers of a batch returned by ``drain`` are done: its
        messages are freed or kept (retained), the batch is over."""
        cdef MessageBatch b = self._own_handed(batch)
        self._handed.discard(b)
        self._end_batch(b, True)

    cdef Route _own_in_flight(self, object obj):
        if type(obj) is not Message or (<Message>obj)._owner is not self \
                or (<Message>obj)._state != IN_FLIGHT:
            raise MessageStateError(f"{obj!r} is not an in-flight message of this bus")
        return <Route>(<Message>obj)._route

    def async_subscribers(self, msg):
        """The coroutine subscriptions of an in-flight message returned by ``drain``."""
        return self._own_in_flight(msg).async_subs

    def record_latency(self, msg):
        """Record commit -> now of an in-flight message in the latency histogram."""
        self._own_in_flight(msg)
        hft_hist_record(self._lat, hft_elapsed_ns(hft_ticks() - (<Message>msg)._pub_ticks))

    def count_delivery(self, msg, bint ok):
        """Count one async delivery of an in-flight message (ok, or a subscriber error)."""
        cdef Route route = self._own_in_flight(msg)
        if ok:
            route.delivered += 1
            self.delivered += 1
        else:
            route.errors += 1
            self.errors += 1

    def finish(self, msg):
        """The async subscribers of an in-flight message are done: free or keep it."""
        self._own_in_flight(msg)
        self._finish_c(<Message>msg)

    cdef int _finish_c(self, Message msg) except -1:
        """Dispatch is over: free the block unless a subscriber retained the message."""
        if msg._refs:
            msg._state = RETAINED
            self.retained += 1
        else:
            self._free_c(msg)
        return 0

    cdef int _free_c(self, Message msg) except -1:
        if msg._state == RETAINED:
            self.retained -= 1
        msg._state = RELEASED
        if views_settled(msg) or msg._settle_views():
            self._give_back(msg)
            if self._space_waiters:
                self._on_space()
        else:
            self.leaked_views += 1
            self._deferred.append(msg)
        return 0

    cdef int _give_back(self, Message msg) except -1:
        """Return the memory; the message object waits in its slot's cache for reuse."""
        if msg._ptr != NULL:
            if msg._cls >= 0:
                slab_free_slot(self._slab.core, msg._cls, msg._idx)
                msg._ptr = NULL
                _cache_message(self, msg)
            else:                               # a system block: no slot, no cache
                slab_free(self._slab.core, msg._ptr, <size_t>msg._alloc)
                msg._ptr = NULL
        return 0

    def sweep(self):
        """Retry blocks held back by leaked views; returns how many are still held."""
        return self._sweep_c()

    cdef Py_ssize_t _sweep_c(self) except -1:
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


cdef inline int64_t _stamp_of(tuple stamps, Py_ssize_t i) except? -1:
    """publish_many_at's stamp of message i (checked ints): <= 0 means the commit time."""
    cdef int64_t pub_ns = <object>PyTuple_GET_ITEM(stamps, i)
    return pub_ns if pub_ns > 0 else 0


cdef inline PyObject* _cache_row(BusCore self, Py_ssize_t k, uint32_t idx) noexcept:
    """The slot cache's row (a list, borrowed) of class k when it has an entry for slot
    idx, else NULL."""
    cdef PyObject* row
    if k < 0 or k >= PyList_GET_SIZE(self._cache):
        return NULL
    row = PyList_GET_ITEM(self._cache, k)
    return row if idx < <uint32_t>PyList_GET_SIZE(<list>row) else NULL


cdef inline void _cache_message(BusCore self, Message msg) noexcept:
    """A message whose class block went back (msg._cls >= 0) waits in its slot's cache
    for the block's next use."""
    cdef PyObject* row = _cache_row(self, msg._cls, msg._idx)
    if row != NULL:
        hft_list_put(<list>row, msg._idx, msg)


ctypedef struct SlotRun:     # slots of one class waiting for one slab_free_slots call
    Py_ssize_t cls
    Py_ssize_t n
    uint32_t slots[RUN]


cdef inline Py_ssize_t _run_flush(SlabCore* core, SlotRun* run) noexcept:
    """Free the slots of ``run`` with one slab call; returns how many."""
    cdef Py_ssize_t n = run.n
    slab_free_slots(core, run.cls, run.slots, n)
    run.n = 0
    return n


cdef inline Py_ssize_t _run_add(SlabCore* core, SlotRun* run, Py_ssize_t k,
                                uint32_t idx) noexcept:
    """Queue slot ``idx`` of class ``k``, freeing the run first when it holds another
    class or is full; returns how many that freed."""
    cdef Py_ssize_t freed = 0
    if k != run.cls or run.n == RUN:
        freed = _run_flush(core, run)
        run.cls = k
    run.slots[run.n] = idx
    run.n += 1
    return freed


cdef inline bint _view_held_elsewhere(BusCore self, Py_ssize_t k, uint32_t idx) noexcept:
    """True when the cached message of slot (k, idx) has a payload view that something
    else holds too (reached by gc introspection): only _bind may reuse that block."""
    cdef PyObject* row = _cache_row(self, k, idx)
    cdef PyObject* entry
    cdef PyObject* view
    if row == NULL:
        return False
    entry = PyList_GET_ITEM(<list>row, idx)
    if entry == <PyObject*>None:
        return False
    view = <PyObject*>(<Message>entry)._rview
    return view != <PyObject*>None and (hft_refcnt(view) != 1 or hft_view_shared(view))


cdef int _bind_blocks(object owner, object batch, Py_ssize_t start,
                      Py_ssize_t stop) except -1:
    """A batch subscriber reads entries [start, stop) of ``batch``: each unbound block
    among them gets its Message, made as _bind makes one (the slot's cached message when
    nobody else holds it) with the stamps it was published with; the batch keeps it
    like any other entry."""
    cdef BusCore self = <BusCore>owner
    cdef MessageBatch b = <MessageBatch>batch
    cdef Route route = <Route>b._route
    cdef str topic = b.topic
    cdef BatchBlock* block
    cdef Message msg
    cdef Py_ssize_t i
    for i in range(start, stop):
        if b._items[i] != NULL:
            continue
        block = batch_block(b, i)
        msg = _bind(self, route, topic, block.ptr, block.cls, block.idx,
                    block.length if block.length > 0 else 1, block.length, False)
        msg.seq = block.seq
        msg._pub_ticks = block.pub_ticks
        msg._pub_ns = block.pub_ns
        msg._state = IN_FLIGHT
        Py_INCREF(msg)
        b._items[i] = <PyObject*>msg
    return 0


cdef inline void _stamp(BusCore self, Message msg, Route route, int64_t pub_ns,
                        int64_t ticks) noexcept:
    """Commit a claimed message whose views are settled: sequence number, stamps (the
    call's tick reading), counters."""
    self._seq += 1
    msg.seq = self._seq
    msg._pub_ticks = ticks
    msg._pub_ns = pub_ns
    msg._state = IN_FLIGHT
    route.published += 1
    self.published += 1


cdef inline Message _bind(BusCore self, Route route, str topic, char* ptr, Py_ssize_t k,
                          uint32_t idx, Py_ssize_t alloc, Py_ssize_t length, bint park):
    """A claimed message for the block at (class k, slot idx): the slot's cached message
    when nobody else holds it, else a new one. When a view of the slot's previous
    message is held elsewhere and cannot be released, ``park``: the block is parked
    and None returned; else that message is never reused (its view stays disarmed)."""
    cdef PyObject* row = _cache_row(self, k, idx)
    cdef PyObject* entry
    cdef Message msg = None
    if row != NULL:
        entry = PyList_GET_ITEM(<list>row, idx)
        if entry != <PyObject*>None:
            msg = <Message>entry
            hft_list_put(<list>row, idx, None)   # in use: only its holders reference it
            # references left: `msg` and the cached view's own one
            if hft_refcnt(entry) != 1 + (msg._rview is not None):
                msg = None          # someone kept the old message: never reuse it
            elif msg._rview is not None and (
                    msg._rview_len != length
                    or hft_refcnt(<PyObject*>msg._rview) != 1
                    or hft_view_shared(<PyObject*>msg._rview)):
                # a view reached some other way (gc introspection) must not
                # read the block's next message: release it, or park the block
                if not msg._drop_view(False) or msg._exports:
                    if park:
                        self._park(msg, ptr, alloc, k, idx)
                        return None
                    msg = None
    if msg is None:
        msg = Message.__new__(Message)
    if msg._owner is not self:          # a recycled message already points at us
        msg._memory = self._slab
        msg._owner = self
    msg._ptr = ptr
    msg._alloc = alloc
    msg._reserved = <Py_ssize_t>slab_class_size(self._slab.core, k, alloc)
    msg._cls = k
    msg._idx = idx
    msg._length = length
    msg._refs = 0
    msg._state = CLAIMED
    if msg._rview is not None:          # a kept view, disarmed while its block was free
        hft_view_rearm(<PyObject*>msg._rview, msg._rview_len)
    if msg._route is not route:
        msg._route = route
        msg.topic = topic
    msg._tid = 0                        # BATCH_MORE is set by publish_many (async mode)
    msg.seq = 0
    msg._pub_ticks = 0
    msg._pub_ns = 0
    return msg


cdef Py_ssize_t _check_size(object size) except -1:
    """A claim size that is not a plain non-negative int: validate it (same errors for
    every core)."""
    if isinstance(size, bool) or not hasattr(size, "__index__"):
        raise TypeError(f"size must be an integer, not {type(size).__name__}")
    size = size.__index__()
    if size < 0:
        raise InvalidSize(f"size must be >= 0, got {size}")
    if size > MAX_MESSAGE:
        raise InvalidSize(f"size={size} is too large")
    return size
