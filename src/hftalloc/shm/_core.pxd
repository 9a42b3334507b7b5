# The compiled shared-memory channel (see _core.pyx): class layouts and the C headers
# it uses. Every method the cores call is defined here or in _core.pyx; the Python
# layer (channel.py) composes the cores and never subclasses them. Messages and claims
# are hftalloc._message.Message objects; the cores are their MessageOwners.
cimport cython
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from hftalloc._message cimport Message, MessageOwner

cdef extern from "hftalloc/shm/include/hft_shm_guard.h" nogil:
    int HFT_GUARD_SLOTS
    int hft_guard_install()
    int hft_guard_register(void* base, size_t length, int writable)
    void hft_guard_unregister(int slot)
    uint32_t* hft_guard_mark(int slot)
    uint64_t hft_guard_repair_count()
    int hft_guard_find(const void* p, size_t n)

cdef enum:
    MAX_CLASSES = 15

cdef enum:                  # what ConsumerCore._merge does with each lane's messages
    MERGE_DISPATCH = 0      # to the subscribers
    MERGE_BATCH = 1         # a tuple per call to a handler
    MERGE_COPY = 2          # copied out into a list of runs


@cython.final
cdef class MappingGuard:
    cdef int _slot
    cdef object _mapping


cdef class ChannelCore(MessageOwner):
    cdef Py_buffer _view
    cdef bint _bound
    cdef bint _has_view                  # _view holds the mapping (until unbind or dealloc)
    cdef int64_t _forked_from            # inherited over fork from this pid: unusable
    cdef str _name
    cdef char* seg                       # the segment (lane 0, its header)
    cdef char* base                      # this core's lane
    cdef uint32_t _lane
    cdef uint32_t* _mark                 # truncation mark of the mapping (SIGBUS guard)
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
    cdef Py_ssize_t _other_off           # role slot of the other side (peer checks)

    cdef int _check(self) except -1
    cdef object _corrupt(self, str text)
    cdef object _truncated_error(self)
    cdef object _closed_error(self, str what)
    cdef int _after_bind(self) except -1
    cdef int _can_unbind(self) except -1
    cdef void _release(self) noexcept
    cdef uint64_t* _word(self, Py_ssize_t off) except NULL
    cdef int _class_of(self, Py_ssize_t n) noexcept
    cdef int _decode(self, uint64_t pos, uint32_t* c, uint32_t* idx) noexcept
    cdef void _push_free(self, uint32_t c, uint32_t idx) noexcept
    cdef void _orphan(self, uint32_t c, uint32_t idx) noexcept
    cdef uint8_t* _membership(self, uint64_t start, uint64_t end) except NULL


@cython.final
cdef class Route:
    cdef readonly str topic
    cdef readonly tuple callbacks
    cdef readonly tuple subscriptions
    cdef readonly Py_ssize_t received
    cdef readonly Py_ssize_t delivered
    cdef readonly Py_ssize_t errors


@cython.final
cdef class ConsumerCore(ChannelCore):
    cdef uint64_t _tail, _head_cache, _last_seq, _gaps, _received
    cdef uint64_t _fhead[MAX_CLASSES]
    cdef uint64_t _ftail_cache[MAX_CLASSES]
    cdef uint8_t* _held                  # private: 1 for each block this consumer holds
    cdef list _topics
    cdef list _routes
    cdef list _deferred
    cdef dict _subs
    cdef dict _patterns
    cdef Py_ssize_t _next_id
    cdef object _on_error
    cdef uint64_t* _lat
    cdef object _lat_owner
    cdef Py_buffer _lat_view
    cdef Py_ssize_t _retained, _leaked_views, _delivered, _errors, _redelivered, _hook_errors

    cdef list _cache                     # per block: its last Message, for reuse (or None)
    cdef list _siblings                  # lane 0: the consumer cores of the other lanes
    cdef Py_ssize_t _rr                  # lane 0: the lane polled first next time
    cdef Message _next(self, uint64_t now)
    cdef int _done(self, Message msg) except -1
    cdef int _enter(self) except -1
    cdef Py_ssize_t _poll(self, Py_ssize_t limit) except -1
    cdef Py_ssize_t _waiting_up_to(self, Py_ssize_t limit) except -1
    cdef Py_ssize_t _poll_batch(self, handler, Py_ssize_t limit) except -1
    cdef Py_ssize_t _poll_copies(self, list out, Py_ssize_t limit) except -1
    cdef Py_ssize_t _poll_lane(self, handler, Py_ssize_t limit, int mode) except -1
    cdef Py_ssize_t _merge(self, handler, Py_ssize_t limit, int mode) except -1
    cdef bint _any_waiting(self) noexcept
    cdef int _free_block(self, uint32_t c, uint32_t idx) except -1
    cdef void _give_back(self, Message msg) noexcept
    cdef int _free_message(self, Message msg) except -1
    cdef Route _route(self, uint32_t tid)
    cdef Route _resolve(self, str topic)
    cdef int _report(self, exc, msg, sub) except -1


@cython.final
cdef class ProducerCore(ChannelCore):
    cdef uint64_t _head, _tail_cache, _next_seq, _published, _last_pub_ns
    cdef uint64_t _ftail[MAX_CLASSES]
    cdef uint64_t _fhead_cache[MAX_CLASSES]
    cdef uint32_t* _spares
    cdef uint8_t* _held                  # private: 1 for each block this producer holds
    cdef uint32_t _nspare[MAX_CLASSES]
    cdef list _cache                     # per block: its last claim, for reuse (or None)
    cdef dict _topic_ids
    cdef uint32_t _beat
    cdef Py_ssize_t _claims_live, _aborted
    cdef uint64_t _spares_total
    cdef int _policy
    cdef double _timeout
    cdef str _policy_name

    cdef int64_t _take(self, uint32_t c) noexcept
    cdef bint _ring_full(self) noexcept
    cdef uint64_t _emit(self, uint32_t tid, uint32_t c, uint32_t idx, Py_ssize_t n) noexcept
    cdef uint64_t _stage(self, uint32_t tid, uint32_t c, uint32_t idx, Py_ssize_t n,
                         uint64_t now) noexcept
    cdef void _publish_head(self, uint32_t count) noexcept
    cdef int64_t _stage_copy(self, uint32_t tid, const char* src, Py_ssize_t n,
                             uint64_t now) noexcept
    cdef void _note_spares(self, int delta) noexcept
    cdef int64_t _put(self, uint32_t tid, const char* src, Py_ssize_t n) noexcept
    cdef int _tid(self, topic) except -1
    cdef int _register_topic(self, topic) except -1
    cdef object _try_publish(self, topic, data)
    cdef object _try_claim(self, topic, Py_ssize_t size)
    cdef int _refuse_live_views(self, Message claim, str action) except -1
    cdef object _retry_commit(self, Message claim)
    cdef object _finish_commit(self, Message claim)
    cdef void _abort_claim(self, Message claim) noexcept
    cdef void _keep(self, Message claim) noexcept
    cdef void _skip_seq(self) noexcept
    cdef object _full(self, int64_t rc, topic, data, Py_ssize_t size, Message claim)
    cdef object _block(self, int64_t rc, topic, data, Py_ssize_t size, Message claim)
    cdef int _check_status(self, int64_t rc, data, Py_ssize_t size) except -1
    cdef str _full_text(self, int64_t rc, topic)
    cdef void _count(self, Py_ssize_t off) noexcept
