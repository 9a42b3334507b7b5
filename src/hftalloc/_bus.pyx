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
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_CheckBuffer
from cpython.buffer cimport PyObject_GetBuffer
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM
from cpython.unicode cimport PyUnicode_FromObject
from libc.math cimport llround
from libc.stdint cimport INT64_MAX, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

from coreallocs cimport (
    SLOT_NONE,
    SlabAllocator,
    SlabCore,
    slab_alloc_slot,
    slab_free,
    slab_free_slot,
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

MAX_MESSAGE = (1 << 63) - 1   # larger sizes cannot even be expressed (InvalidSize)
DEFAULT_MAX_DEPTH = 200       # nested synchronous dispatches (see BusCore)


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

    def __init__(self, str topic not None):
        if self.topic is not None:
            raise TypeError(f"route {self.topic!r} is already initialised")
        self.topic = topic

    def set_subscribers(self, tuple callbacks not None, tuple subscriptions not None,
                        tuple async_subs not None):
        """Replace the subscribers: ``callbacks[i]`` is the callable of ``subscriptions[i]``
        (same length), ``async_subs`` the coroutine subscriptions (async mode)."""
        if len(callbacks) != len(subscriptions):
            raise ValueError(f"{len(callbacks)} callbacks for {len(subscriptions)} subscriptions")
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"callback must be callable, got {type(cb).__name__}")
        self.callbacks = callbacks
        self.subscriptions = subscriptions
        self.async_subs = async_subs

    def __reduce__(self):
        raise not_copyable(self)

    def __reduce_ex__(self, protocol):
        raise not_copyable(self)

    def __copy__(self):
        raise not_copyable(self)

    def __deepcopy__(self, memo):
        raise not_copyable(self)

    def __repr__(self):
        return (f"<Route {self.topic!r} subscribers={len(self.callbacks) + len(self.async_subs)} "
                f"published={self.published}>")


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
                    hft_list_put(row, idx, None)   # in use: only its holders reference it
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
                            self._park(msg, ptr, alloc, k, idx)
                            return self._take_once(route, topic, length)
        if msg is None:
            msg = Message.__new__(Message)
        if msg._owner is not self:          # a recycled message already points at us
            msg._memory = self._slab
            msg._owner = self
        msg._ptr = ptr
        msg._alloc = alloc
        msg._reserved = <Py_ssize_t>slab_class_size(core, k, alloc)
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
        msg.seq = 0
        msg._pub_ticks = 0
        msg._pub_ns = 0
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
        """Dispatch up to ``limit`` queued messages; return those with async subscribers
        (each to be handed back through ``finish`` once delivered)."""
        cdef list queue = self._queue
        cdef list pending = []
        cdef Py_ssize_t k = min(limit, len(queue)), i = 0
        cdef Message msg
        if self._draining:
            raise BusError("drain() is already running (it is not re-entrant)")
        self._draining = True
        try:
            while i < k:
                msg = <Message>queue[i]
                i += 1
                try:
                    self._dispatch(msg, <Route>msg._route)
                finally:
                    if (<Route>msg._route).async_subs:
                        pending.append(msg)
                    else:
                        self._finish_c(msg)
        finally:
            del queue[:i]
            self._draining = False
        return pending

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
                    hft_list_put(row, msg._idx, msg)
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
