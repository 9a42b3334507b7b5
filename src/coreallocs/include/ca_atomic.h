/* Atomic loads, stores, read-modify-writes and fences on plain integers (GCC/Clang
 * __atomic builtins), shared by the coreallocs extensions and hftalloc's shared-memory
 * channel. Every function names its memory order; the words may live in memory shared
 * between processes (lock-free atomics of 1, 4 and 8 bytes are address-free).
 */
#ifndef COREALLOCS_CA_ATOMIC_H
#define COREALLOCS_CA_ATOMIC_H

#include <stdint.h>

/* -- 8 bit ------------------------------------------------------------------------- */
static inline uint8_t ca_load_acquire_u8(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint8_t ca_load_relaxed_u8(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void ca_store_release_u8(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void ca_store_relaxed_u8(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

/* -- 32 bit ------------------------------------------------------------------------ */
static inline uint32_t ca_load_acquire_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint32_t ca_load_relaxed_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint32_t ca_load_seq_cst_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void ca_store_release_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void ca_store_relaxed_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void ca_store_seq_cst_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t ca_add_u32(uint32_t *p, uint32_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
/* 1 when *p was `expected` and is now `desired` (sequentially consistent) */
static inline int ca_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

/* -- 64 bit ------------------------------------------------------------------------ */
static inline uint64_t ca_load_acquire_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t ca_load_relaxed_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void ca_store_release_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void ca_store_relaxed_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
/* returns the new value */
static inline uint64_t ca_add_u64(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
/* 1 when *p was `expected` and is now `desired` (acq_rel on success, acquire on failure) */
static inline int ca_cas_i64(int64_t *p, int64_t expected, int64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* -- pointers and flags ------------------------------------------------------------ */
static inline void *ca_load_ptr(void **slot) { return __atomic_load_n(slot, __ATOMIC_ACQUIRE); }
static inline void ca_store_ptr(void **slot, void *value) { __atomic_store_n(slot, value, __ATOMIC_RELEASE); }
/* test-and-set with acquire order: the previous state (nonzero: was set) */
static inline int ca_test_and_set_acquire(unsigned char *flag) { return __atomic_test_and_set(flag, __ATOMIC_ACQUIRE); }
static inline void ca_clear_release(unsigned char *flag) { __atomic_clear(flag, __ATOMIC_RELEASE); }

/* -- fences ------------------------------------------------------------------------ */
static inline void ca_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void ca_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void ca_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
/* orders the compiler only (against a signal handler of the same thread) */
static inline void ca_signal_fence(void) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

/* spin-wait hint */
static inline void ca_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
