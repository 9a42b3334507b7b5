# Declarations of coreallocs/include/ca_atomic.h (atomics on plain integers, with the
# memory order in the name). A .pxd without a module: cimport it, nothing to import.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


cdef extern from "coreallocs/include/ca_atomic.h" nogil:
    uint8_t ca_load_acquire_u8(const uint8_t* p)
    uint8_t ca_load_relaxed_u8(const uint8_t* p)
    void ca_store_release_u8(uint8_t* p, uint8_t v)
    void ca_store_relaxed_u8(uint8_t* p, uint8_t v)

    uint32_t ca_load_acquire_u32(const uint32_t* p)
    uint32_t ca_load_relaxed_u32(const uint32_t* p)
    uint32_t ca_load_seq_cst_u32(const uint32_t* p)
    void ca_store_release_u32(uint32_t* p, uint32_t v)
    void ca_store_relaxed_u32(uint32_t* p, uint32_t v)
    void ca_store_seq_cst_u32(uint32_t* p, uint32_t v)
    uint32_t ca_add_u32(uint32_t* p, uint32_t v)
    bint ca_cas_u32(uint32_t* p, uint32_t expected, uint32_t desired)

    uint64_t ca_load_acquire_u64(const uint64_t* p)
    uint64_t ca_load_relaxed_u64(const uint64_t* p)
    void ca_store_release_u64(uint64_t* p, uint64_t v)
    void ca_store_relaxed_u64(uint64_t* p, uint64_t v)
    uint64_t ca_add_u64(uint64_t* p, uint64_t v)
    bint ca_cas_i64(int64_t* p, int64_t expected, int64_t desired)

    void* ca_load_ptr(void** slot)
    void ca_store_ptr(void** slot, void* value)

    void ca_fence_seq_cst()
    void ca_fence_acquire()
    void ca_fence_release()
    void ca_signal_fence()
    void ca_cpu_relax()
