# C declarations and compiled classes of hftalloc.journal._journal.
from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef extern from "hftalloc/include/hft_crc32c.h" nogil:
    uint32_t hft_crc32c(uint32_t crc, const void* data, size_t n)
    uint32_t hft_crc32c_sw(uint32_t crc, const void* data, size_t n)
    uint32_t hft_crc32c_hw(uint32_t crc, const void* data, size_t n)
    int hft_crc32c_hw_available()
    void hft_crc32c_init(int force_sw)

cdef extern from "hftalloc/include/hft_journal.h" nogil:
    uint32_t hft_load_acquire_u32(const void* p)
    void hft_store_release_u32(void* p, uint32_t v)
    uint32_t hft_get_u32(const char* p)
    uint64_t hft_get_u64(const char* p)
    int64_t hft_get_i64(const char* p)
    void hft_put_u32(char* p, uint32_t v)
    void hft_put_u64(char* p, uint64_t v)
    void hft_put_i64(char* p, int64_t v)
    int hft_msync_range(char* base, size_t off, size_t length)
    int64_t hft_journal_mono_ns()
    int hft_any_nonzero(const char* p, size_t n)
    int hft_journal_clock_init(int want_tsc)
    int64_t hft_journal_now_ns()
    ctypedef struct hft_prefault_t:
        int running
        int error
    int hft_prefault_start(hft_prefault_t* p, char* base, size_t start, size_t end)
    void hft_prefault_stop(hft_prefault_t* p)
    void hft_prefault_note(hft_prefault_t* p, size_t pos)


cdef class Mapping:
    cdef Py_buffer _view
    cdef bint _held
    cdef hft_prefault_t _prefault
    cdef object _mm
    cdef object __weakref__
    cdef char* base
    cdef size_t size
    cdef readonly str path
    cdef readonly uint64_t number
    cdef readonly bint writable


cdef class Record:
    cdef Mapping _map
    cdef const char* _ptr
    cdef Py_ssize_t _len
    cdef readonly uint64_t seq
    cdef readonly int64_t timestamp
    cdef readonly uint32_t topic_id
    cdef readonly uint32_t flags
    cdef readonly str topic


cdef class PayloadView:
    cdef Mapping _map
    cdef const char* _ptr
    cdef Py_ssize_t _len
    cdef Py_ssize_t _exports


cdef class Claim:
    cdef WriterCore _core
    cdef Mapping _map
    cdef char* _rec
    cdef char* _ptr
    cdef Py_ssize_t _size
    cdef Py_ssize_t _exports
    cdef int _state
    cdef readonly uint64_t seq
    cdef readonly int64_t timestamp


cdef class WriterCore:
    cdef Mapping _map
    cdef size_t _pos
    cdef size_t _dirty_from
    cdef readonly uint64_t next_seq
    cdef readonly int64_t time_max
    cdef readonly uint32_t max_payload
    cdef readonly dict topic_ids
    cdef object _new_topic
    cdef object _roll
    cdef object _index
    cdef uint32_t _index_every
    cdef size_t _index_bytes
    cdef uint32_t _since_n
    cdef size_t _since_bytes
    cdef int _flush
    cdef int64_t _interval_ns
    cdef int64_t _next_flush_ns
    cdef Claim _claim
    cdef readonly bint closed
    cdef readonly uint64_t appended
    cdef readonly uint64_t bytes_written
    cdef readonly uint64_t aborted
    cdef readonly uint64_t flushes
    cdef readonly uint64_t flush_errors

    cdef int _check_open(self) except -1
    cdef uint32_t _topic_id(self, object topic) except 0
    cdef int64_t _stamp(self, object timestamp) except? -1
    cdef int _make_room(self, size_t need) except -1
    cdef int _sync_dirty(self, size_t end) except -1
    cdef int _committed(self, char* rec, size_t padded, uint64_t seq, int64_t ts,
                        int64_t max_before) except -1
    cdef object _append(self, object topic, object payload, object timestamp)
    cdef object _commit_claim(self, Claim c)
    cdef int _abort_claim(self, Claim c) except -1


cdef class ScanResult:
    cdef readonly size_t end
    cdef readonly str kind
    cdef readonly uint64_t next_seq
    cdef readonly int64_t time_max
    cdef readonly uint64_t records
    cdef readonly list problems
    cdef readonly Py_ssize_t torn_offset
    cdef readonly Py_ssize_t first_problem


cdef class Cursor:
    cdef Mapping _map
    cdef size_t _pos
    cdef size_t _stop
    cdef uint32_t _len
    cdef uint32_t _max_len
    cdef readonly uint64_t expect_seq
    cdef readonly uint64_t records_read
    cdef readonly list topics
    cdef readonly bytearray mask
    cdef object _next_segment
    cdef object _unknown_topic
    cdef object _grow_mask
    cdef readonly tuple patterns
    cdef int64_t _t_from
    cdef int64_t _t_to
    cdef const char* _rec
    cdef uint64_t _seq
    cdef int64_t _ts
    cdef uint32_t _tid

    cdef int _locate(self) except -1
    cdef int _step(self, bint check) except -1
    cdef bint _known(self, uint32_t tid) noexcept
    cdef int _wanted(self) except -1


cdef class RecordSink:
    cdef WriterCore _core
    cdef readonly uint64_t recorded
    cdef readonly uint64_t failed
    cdef readonly object last_error
