/* Small C helpers shared by the coreallocs extensions: a test-and-set spin lock
 * (uncontended cost: one atomic exchange), bit tricks, aligned allocation and
 * AddressSanitizer poisoning of free pool slots. Atomics: include/ca_atomic.h. */
#ifndef COREALLOCS_CAPI_H
#define COREALLOCS_CAPI_H

#include <stdint.h>
#include <stdlib.h>
#include <sched.h>

#include "include/ca_atomic.h"

typedef unsigned char ca_lock_t;

static inline void ca_lock(ca_lock_t *flag) {
    unsigned spins = 0;
    while (ca_test_and_set_acquire(flag)) {
        while (ca_load_relaxed_u8(flag)) {
            if (++spins < 128) {
                ca_cpu_relax();
            } else {
                spins = 0;
                sched_yield();
            }
        }
    }
}

static inline void ca_unlock(ca_lock_t *flag) { ca_clear_release(flag); }

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

/* With -fsanitize=address, free pool slots are poisoned so that any access to them
 * (a C-level use after free, or an overflow from a neighbouring block) is reported. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define ca_poison(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define ca_unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define ca_poison(p, n) ((void)(p), (void)(n))
#define ca_unpoison(p, n) ((void)(p), (void)(n))
#endif

#endif
