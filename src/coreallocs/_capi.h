/* Small C helpers shared by the coreallocs extensions: a test-and-set spin lock
 * (uncontended cost: one atomic exchange), bit tricks and aligned allocation. */
#ifndef COREALLOCS_CAPI_H
#define COREALLOCS_CAPI_H

#include <stdint.h>
#include <stdlib.h>
#include <sched.h>

typedef unsigned char ca_lock_t;

static inline void ca_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
static inline void *ca_load_ptr(void **slot) { return __atomic_load_n(slot, __ATOMIC_ACQUIRE); }
static inline void ca_store_ptr(void **slot, void *value) { __atomic_store_n(slot, value, __ATOMIC_RELEASE); }

#endif
}

static inline void ca_lock(ca_lock_t *flag) {
#ifdef CA_NO_LOCK
    return;
#endif
    unsigned spins = 0;
    while (__atomic_test_and_set(flag, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(flag, __ATOMIC_RELAXED)) {
            if (++spins < 128) {
                ca_cpu_relax();
            } else {
                spins = 0;
                sched_yield();
            }
        }
    }
}

static inline void ca_unlock(ca_lock_t *flag) { __atomic_clear(flag, __ATOMIC_RELEASE); }

/* Smallest k with 2**k >= n (n >= 1). */
static inline unsigned ca_ceil_log2(size_t n) {
    if (n <= 1) return 0;
    return (unsigned)(64 - __builtin_clzll((unsigned long long)(n - 1)));
}

static inline int ca_is_pow2(size_t n) { return n != 0 && (n & (n - 1)) == 0; }

static inline void *ca_aligned_alloc(size_t align, size_t size) {
    void *p = NULL;
    if (align < sizeof(void *)) align = sizeof(void *);
    if (posix_memalign(&p, align, size ? size : 1) != 0) return NULL;
    return p;
}

static inline size_t ca_align_up(size_t n, size_t align) { return (n + align - 1) & ~(align - 1); }

static inline void *ca_load_ptr(void **slot) { return __atomic_load_n(slot, __ATOMIC_ACQUIRE); }
static inline void ca_store_ptr(void **slot, void *value) { __atomic_store_n(slot, value, __ATOMIC_RELEASE); }

#endif
