# C declarations of the FIX codec (hft_fix.h) and its compiled classes.
from libc.stdint cimport int32_t, int64_t, uint64_t

cdef extern from "hftalloc/include/hft_fix.h" nogil:
    int HFT_FIX_E_GARBAGE
    int HFT_FIX_E_BODYLEN
    int HFT_FIX_E_CHECKSUM
    int HFT_FIX_E_OVERSIZE
    int HFT_FIX_E_TAG
    int HFT_FIX_E_NOVALUE
    int HFT_FIX_E_FIELDS
    int HFT_FIX_E_ORDER
    int HFT_FIX_E_TRUNCATED
    int HFT_FIX_E_RAWLEN
    ctypedef struct hft_fix_field:
        int32_t tag
        int32_t off
        int32_t len
    unsigned int hft_fix_checksum(const unsigned char *p, Py_ssize_t n)
    Py_ssize_t hft_fix_find_begin(const unsigned char *p, Py_ssize_t n, Py_ssize_t start)
    Py_ssize_t hft_fix_frame(const unsigned char *p, Py_ssize_t n, Py_ssize_t max_size,
                             int verify, Py_ssize_t *body_start, Py_ssize_t *body_len)
    int hft_fix_split(const unsigned char *p, Py_ssize_t n, hft_fix_field *out, int cap,
                      int *err_at)
    int32_t hft_fix_raw_data_tag(int32_t len_tag)
    int32_t hft_fix_raw_length_tag(int32_t data_tag)
    int hft_fix_digits(uint64_t v)
    int hft_fix_put_int(unsigned char *p, int64_t v)
    int hft_fix_put_utc(unsigned char *p, int64_t ns)


cdef class FixMessage:
    cdef Py_buffer _view
    cdef bint _has_view
    cdef object _owner
    cdef const unsigned char *_p
    cdef Py_ssize_t _n
    cdef hft_fix_field _inline[64]
    cdef hft_fix_field *_fields
    cdef int _count
    cdef int _cap
    cdef object _msg_type
    cdef int64_t _seq
    cdef void _drop(self)
    cdef int _load(self, object data, Py_ssize_t start, Py_ssize_t end, bint verify,
                   Py_ssize_t max_size, int max_fields) except -1
    cdef void _alive(self) except *
    cdef int _find(self, int tag, int lo, int hi)
    cdef int _index(self, int tag) except -2


cdef class FixGroup:
    cdef FixMessage _msg
    cdef int _lo
    cdef int _hi
    cdef int _depth                 # 1 for an entry of a top-level group
    cdef tuple _skip                # (lo, hi) field ranges of nested groups' entries
    cdef int _at(self, int tag) except -2


cdef class FixEncoder:
    cdef bytes _begin
    cdef bytes _sender
    cdef bytes _target
    cdef bytearray _scratch
    cdef Py_ssize_t _write(self, unsigned char *p, Py_ssize_t cap, str msg_type,
                           int64_t seq_num, fields, body, int64_t sending_time_ns,
                           bint poss_dup, orig_sending_time) except -1
