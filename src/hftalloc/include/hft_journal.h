/* Memory helpers of the hftalloc journal (hftalloc.journal._journal).
 *
 * A record becomes visible to readers when its length word is stored: the writer fills
 * the rest of the record first and stores the length with release ordering; a reader
 * loads the length with acquire ordering before it reads anything else of the record.
 */
#ifndef HFTALLOC_JOURNAL_H
#define HFTALLOC_JOURNAL_H

#include <errno.h>
#include <string.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static inline uint32_t hft_load_acquire_u32(const void* p) {
    return __atomic_load_n((const uint32_t*)p, __ATOMIC_ACQUIRE);
}

static inline void hft_store_release_u32(void* p, uint32_t v) {
    __atomic_store_n((uint32_t*)p, v, __ATOMIC_RELEASE);
}

static inline uint32_t hft_get_u32(const char* p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t hft_get_u64(const char* p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline int64_t hft_get_i64(const char* p) { int64_t v; memcpy(&v, p, 8); return v; }
static inline void hft_put_u32(char* p, uint32_t v) { memcpy(p, &v, 4); }
static inline void hft_put_u64(char* p, uint64_t v) { memcpy(p, &v, 8); }
static inline void hft_put_i64(char* p, int64_t v) { memcpy(p, &v, 8); }

/* msync(MS_SYNC) of [base + off, base + off + len), widened to whole pages.
 * Returns 0 or the errno. */
static int hft_msync_range(char* base, size_t off, size_t len) {
    long page = sysconf(_SC_PAGESIZE);
    size_t start, end;
    if (len == 0) return 0;
    if (page <= 0) page = 4096;
    start = off - off % (size_t)page;
    end = off + len;
    if (msync(base + start, end - start, MS_SYNC) != 0) return errno ? errno : EIO;
    return 0;
}

static inline int64_t hft_journal_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + (int64_t)ts.tv_nsec;
}

/* 1 when any of the n bytes at p is not zero */
static int hft_any_nonzero(const char* p, size_t n) {
    size_t i;
    uint64_t w;
    for (i = 0; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        if (w) return 1;
    }
    for (; i < n; i++)
        if (p[i]) return 1;
    return 0;
}

#endif /* HFTALLOC_JOURNAL_H */
