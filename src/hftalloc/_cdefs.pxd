# C helpers of hftalloc's compiled modules, declared once (the C is in include/*.h).

from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t


cdef extern from "hftalloc/include/hft_ticks.h" nogil:
    int HFT_HAVE_TSC
    int hft_use_tsc
    double hft_ns_per_tick
    int64_t hft_rdtsc()
    int64_t hft_mono_ns()
    int64_t hft_ticks()
    int64_t hft_elapsed_ns(int64_t d)


cdef extern from "hftalloc/include/hft_histogram.h" nogil:
    int HFT_SUB_BITS
    int HFT_HEADER
    int HFT_MAX_BITS
    int HFT_NUM_BUCKETS
    unsigned long long HFT_MAX_VALUE
    void hft_hist_record(uint64_t* counts, int64_t value)
    void hft_hist_record_n(uint64_t* counts, int64_t value, uint64_t n)


cdef extern from "hftalloc/include/hft_pyfast.h":
    Py_ssize_t hft_refcnt "Py_REFCNT"(PyObject* ob)
    bint hft_view_shared(PyObject* view)
    bint hft_view_disarm(PyObject* view)
    void hft_view_rearm(PyObject* view, Py_ssize_t length)
    void hft_list_put(list row, Py_ssize_t i, object v)
    int hft_call1(PyObject* f, object arg) noexcept
    int hft_pending_error() except -1
    bint hft_pin(object o, char** buf, Py_ssize_t* length) noexcept
    void hft_unpin(object o) noexcept
