# The message contract shared by the compiled bus core (hftalloc._bus) and the
# shared-memory cores: one Message class, its states, and the owner it calls back.
#
# An owner subclasses MessageOwner and overrides its cdef methods (compiled-to-compiled
# virtual calls). To hand out a message it creates one with Message.__new__(Message)
# (the class is final: every owner uses it as is), sets _owner, _memory, _ptr, _length, _reserved (and its own
# _cls/_idx/_alloc bookkeeping), topic, _route, then calls msg._reset(CLAIMED) for a
# writable claim or msg._reset(IN_FLIGHT) for a received message; _stamp() sets seq and
# the publish time. Before the memory goes back the owner calls msg._settle_views():
# true means no view of the memory is left and it may be reused; false means a view
# leaked (park the message and retry _settle_views() later).

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint32_t, uint64_t

from hftalloc._cdefs cimport hft_refcnt, hft_view_disarm, hft_view_rearm, hft_view_shared

# message states (the numbers of hftalloc.policies; below CLAIMED: no access to memory)
cdef enum:
    NOT_INITIALISED = 0
    RELEASED = 1
    COMMITTED = 2
    ABORTED = 3
    CLAIMED = 4
    IN_FLIGHT = 5
    RETAINED = 6

# exhaustion policies (hftalloc.policies.RAISE/DROP/BLOCK)
cdef enum:
    POLICY_RAISE = 0
    POLICY_DROP = 1
    POLICY_BLOCK = 2


cdef object not_copyable(object obj)


cdef class MessageOwner:
    """What a message asks its owner (override every method; the base raises)."""

    # msg is CLAIMED and commit() was called: publish it, return the sequence number
    # (or None when a policy dropped it). Views were not checked yet: call
    # msg._end_claim_views() first if the memory must not be written any more.
    cdef object _commit_message(self, Message msg)
    # msg is CLAIMED and abort() was called (or its `with` block failed): give it back.
    cdef int _abort_message(self, Message msg) except -1
    # msg is RETAINED and its last release() happened: give the memory back.
    cdef int _release_message(self, Message msg) except -1
    # msg is being deallocated while msg._ptr != NULL (an abandoned claim): free only,
    # no Python calls, no exceptions.
    cdef void _discard_message(self, Message msg) noexcept
    # msg._pub_ticks (the owner's tick clock) as CLOCK_MONOTONIC ns.
    cdef int64_t _ticks_to_ns(self, int64_t ticks) noexcept


@cython.final
cdef class Message:
    cdef char* _ptr                 # the payload; NULL once the memory went back
    cdef Py_ssize_t _length         # payload bytes
    cdef Py_ssize_t _reserved       # bytes reserved (size class)
    cdef Py_ssize_t _alloc          # owner bookkeeping: bytes taken
    cdef Py_ssize_t _cls            # owner bookkeeping: size-class index (-1: none)
    cdef uint32_t _idx              # owner bookkeeping: slot in the class
    cdef uint32_t _tid              # owner bookkeeping: topic id (shared memory)
    cdef MessageOwner _owner
    cdef object _memory             # keeps the memory alive (slab, segment...)
    cdef object _route              # the owner's per-topic entry
    cdef object _rview              # cached read-only payload view
    cdef Py_ssize_t _rview_len
    cdef object _wview              # cached writable view (claimed state)
    cdef Py_ssize_t _exports        # buffers exported by the message itself
    cdef Py_ssize_t _wexports       # of which writable
    cdef Py_ssize_t _refs           # outstanding retain()
    cdef int _state
    cdef readonly str topic
    cdef readonly uint64_t seq
    cdef int64_t _pub_ticks         # publish time in owner ticks (0: none)
    cdef int64_t _pub_ns            # publish time in CLOCK_MONOTONIC ns (0: from ticks)
    cdef readonly uint64_t receive_ns   # when a consumer read it (0: never crossed a process)
    cdef readonly uint32_t producer     # producer slot of a shared-memory channel (else 0)

    cdef int _reset(self, int state) except -1
    cdef int _end_claim_views(self) except -1
    cdef int _drop_view(self, bint writable) except -1
    cdef bint _settle_views(self) except -1
    cdef object _released_error(self)
    cdef object _state_error(self, str action)
    cdef object _access_error(self)
    cdef int64_t _converted_pub_ns(self) noexcept


cdef inline bint views_settled(Message msg) noexcept:
    """The common end of life, inline for every owner: True when no view but the cached
    payload view (referenced by the message alone, unshared) exports the memory, i.e.
    when msg._settle_views() would return True without dropping anything. False means
    "call msg._settle_views()", not "a view leaked"."""
    if msg._wview is not None or msg._wexports:
        return False
    if msg._rview is None:
        return msg._exports == 0
    # the kept view is disarmed (length 0) while its block is free: see hft_view_disarm
    return (msg._exports == 1 and hft_refcnt(<PyObject*>msg._rview) == 1
            and not hft_view_shared(<PyObject*>msg._rview)
            and hft_view_disarm(<PyObject*>msg._rview))
