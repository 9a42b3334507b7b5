# The compiled bus core (hftalloc._bus): Route and BusCore, a MessageOwner.

cimport cython
from libc.stdint cimport int64_t, uint32_t, uint64_t

from coreallocs cimport SlabAllocator
from hftalloc._batch cimport MessageBatch
from hftalloc._message cimport Message, MessageOwner


@cython.final
cdef class Route:
    cdef readonly str topic
    cdef readonly tuple callbacks          # sync callables, one per subscriptions[i]
    cdef readonly tuple subscriptions
    cdef readonly tuple async_subs
    cdef readonly tuple batch_callbacks    # sync batch callables, one per batch_subscriptions[i]
    cdef readonly tuple batch_subscriptions
    cdef readonly tuple async_batch_subs
    cdef bint _wanted                      # any subscriber at all
    cdef bint _grouped                     # async mode: messages go through a MessageBatch
    cdef Py_ssize_t _bind_ahead            # publish_many calls left that bind at publish
    cdef readonly Py_ssize_t published
    cdef readonly Py_ssize_t delivered
    cdef readonly Py_ssize_t dropped
    cdef readonly Py_ssize_t rejected
    cdef readonly Py_ssize_t errors


@cython.final
cdef class BusCore(MessageOwner):
    cdef SlabAllocator _slab
    cdef size_t _max_class           # largest size class in bytes (larger: system or refused)
    cdef uint64_t[::1] _lat_view
    cdef uint64_t* _lat
    cdef list _cache                 # per size class: list of Message (or None) per slot
    cdef dict _routes
    cdef object _routes_view
    cdef list _queue
    cdef list _deferred
    cdef MessageBatch _spare         # a closed batch nobody else holds, for the next delivery
    cdef set _handed                 # batches drain() handed to the bus layer (async subscribers)
    cdef object _resolve             # topic -> Route (validates a new topic)
    cdef object _on_error            # (exc, msg, subscription): report a subscriber error
    cdef object _on_space            # (): a block came back while publishers wait
    cdef object _wake                # (): wake the async drain task (None: none)
    cdef bint _idle
    cdef bint _async
    cdef bint _closed
    cdef bint _draining
    cdef int _policy
    cdef int _depth
    cdef int _max_depth
    cdef Py_ssize_t _space_waiters
    cdef uint64_t _seq
    cdef readonly Py_ssize_t published
    cdef readonly Py_ssize_t delivered
    cdef readonly Py_ssize_t dropped
    cdef readonly Py_ssize_t rejected
    cdef readonly Py_ssize_t errors
    cdef readonly Py_ssize_t aborted
    cdef readonly Py_ssize_t leaked_views
    cdef readonly Py_ssize_t retained

    cdef Route _route(self, object topic)
    cdef Route _new_route(self, object topic)
    cdef object _publish(self, object topic, object data, bint apply_policy, int64_t pub_ns)
    cdef object _claim(self, object topic, object size, bint apply_policy)
    cdef object _count_unrouted(self, Route route)
    cdef int _exhausted(self, Route route, Py_ssize_t size) except -1
    cdef Message _take(self, Route route, str topic, Py_ssize_t length)
    cdef Message _take_once(self, Route route, str topic, Py_ssize_t length)
    cdef int _park(self, Message msg, char* ptr, Py_ssize_t alloc, Py_ssize_t k,
                   uint32_t idx) except -1
    cdef int _refuse(self, Route route, Py_ssize_t alloc) except -1
    cdef object _commit_c(self, Message msg, int64_t pub_ns)
    cdef int _too_deep(self, Message msg, Route route) except -1
    cdef int _dispatch(self, Message msg, Route route) except -1
    cdef int _dispatch_single(self, Message msg, Route route) except -1
    cdef object _publish_many(self, object topic, object payloads, object stamps,
                              bint apply_policy)
    cdef Py_ssize_t _publish_run(self, Route route, object items, Py_ssize_t start,
                                 Py_ssize_t n, object stamps, int64_t ticks,
                                 MessageBatch batch, bint bind) except -1
    cdef int _enqueue(self, Message msg) except -1
    cdef int _refused_many(self, Route route, Py_ssize_t refused, Py_ssize_t total,
                           Py_ssize_t size) except -1
    cdef MessageBatch _batch_for(self, Route route)
    cdef int _dispatch_batch(self, MessageBatch batch, Route route) except -1
    cdef int _batch_failed(self, MessageBatch batch, Route route, object subscription) except -1
    cdef int _end_batch(self, MessageBatch batch, bint finish) except -1
    cdef int _close_group(self, MessageBatch batch, list pending) except -1
    cdef MessageBatch _own_handed(self, object obj)
    cdef int _callback_failed(self, Message msg, Route route, object subscription) except -1
    cdef Route _own_in_flight(self, object obj)
    cdef int _finish_c(self, Message msg) except -1
    cdef int _free_c(self, Message msg) except -1
    cdef int _give_back(self, Message msg) except -1
    cdef Py_ssize_t _sweep_c(self) except -1
