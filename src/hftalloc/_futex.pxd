# Declarations of hftalloc/include/hft_futex.h (a wait/wake on a 32-bit word shared
# between processes, sleeping, and the two clocks). A .pxd without a module.
from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef extern from "hftalloc/include/hft_futex.h" nogil:
    int HFT_HAS_FUTEX
    int hft_futex_wait_shared(uint32_t* word, uint32_t expected, int64_t timeout_ns)
    void hft_futex_wake_shared(uint32_t* word)
    void hft_sleep_ns(int64_t ns)
    uint64_t hft_clock_monotonic_ns()
    uint64_t hft_clock_realtime_ns()
