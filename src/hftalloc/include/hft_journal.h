/* Memory helpers of the hftalloc journal (hftalloc.journal._journal).
 *
 * A record becomes visible to readers when its length word is stored: the writer fills
 * the rest of the record first and stores the length with release ordering; a reader
 * loads the length with acquire ordering before it reads anything else of the record.
 */
#ifndef HFTALLOC_JOURNAL_H
#define HFTALLOC_JOURNAL_H

#include <errno.h>
#include <pthread.h>
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

/* -- default timestamps --------------------------------------------------------------
 * CLOCK_MONOTONIC ns. Where the kernel's clocksource is the TSC (invariant, synchronised)
 * the module enables hft_journal_now_ns's TSC path: ns = anchor + ticks * rate, with the
 * anchor and the rate re-measured against clock_gettime at least every 50 ms, and never
 * below the previous value (monotonic). Called with the GIL held (the state is shared). */
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline int64_t hft_journal_rdtsc(void) { return (int64_t)__rdtsc(); }
#define HFT_JOURNAL_HAVE_TSC 1
#else
static inline int64_t hft_journal_rdtsc(void) { return 0; }
#define HFT_JOURNAL_HAVE_TSC 0
#endif

static int hft_j_use_tsc = 0;
static double hft_j_ns_per_tick = 1.0;
static int64_t hft_j_anchor_ns = 0, hft_j_anchor_ticks = 0, hft_j_last_ns = 0;
static int64_t hft_j_resync_ticks = 0;

static void hft_journal_anchor(void) {
    int64_t t0 = hft_journal_rdtsc(), ns = hft_journal_mono_ns(), t1 = hft_journal_rdtsc();
    int64_t ticks = t0 + (t1 - t0) / 2;
    int64_t dt = ticks - hft_j_anchor_ticks, dn = ns - hft_j_anchor_ns;
    if (hft_j_anchor_ticks && dt > 0 && dn >= 1000000)   /* >= 1 ms: a usable rate */
        hft_j_ns_per_tick = (double)dn / (double)dt;
    hft_j_anchor_ns = ns;
    hft_j_anchor_ticks = ticks;
    hft_j_resync_ticks = (int64_t)(50000000.0 / hft_j_ns_per_tick);   /* 50 ms */
}

/* Enable the TSC path (after a short calibration); returns 1 when it is in use. */
static int hft_journal_clock_init(int want_tsc) {
    struct timespec pause = {0, 2000000};
    hft_j_use_tsc = 0;
    if (!want_tsc || !HFT_JOURNAL_HAVE_TSC) return 0;
    hft_j_anchor_ticks = 0;
    hft_journal_anchor();
    nanosleep(&pause, NULL);
    hft_journal_anchor();
    if (!(hft_j_ns_per_tick > 0.01 && hft_j_ns_per_tick < 100.0)) return 0;
    hft_j_use_tsc = 1;
    return 1;
}

static inline int64_t hft_journal_now_ns(void) {
    int64_t ticks, ns;
    if (!hft_j_use_tsc) return hft_journal_mono_ns();
    ticks = hft_journal_rdtsc() - hft_j_anchor_ticks;
    if (ticks < 0 || ticks > hft_j_resync_ticks) {
        hft_journal_anchor();
        ns = hft_j_anchor_ns;
    } else {
        ns = hft_j_anchor_ns + (int64_t)((double)ticks * hft_j_ns_per_tick);
    }
    if (ns < hft_j_last_ns) ns = hft_j_last_ns;
    hft_j_last_ns = ns;
    return ns;
}

/* -- prefaulting ------------------------------------------------------------------------
 * A first write to each page of a fresh mapping costs a page fault (microseconds in a VM).
 * A helper thread faults the pages of a segment in ahead of the writer with
 * madvise(MADV_POPULATE_WRITE) (Linux 5.14+; elsewhere it stops at once), 1 MiB at a
 * time and at most HFT_PREFAULT_LEAD bytes ahead of the writer's position (it sleeps
 * 200 us when it is that far ahead); it never touches the bytes. hft_prefault_stop joins
 * it before the mapping goes. */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define HFT_PREFAULT_CHUNK (1u << 20)
#define HFT_PREFAULT_LEAD (8u << 20)

typedef struct {
    char* base;
    size_t start, end;
    size_t writer_pos;
    int stop;
    int running;
    int error;
    pid_t pid;
    pthread_t thread;
} hft_prefault_t;

static void* hft_prefault_main(void* arg) {
    hft_prefault_t* p = (hft_prefault_t*)arg;
    size_t off = p->start, len, lead;
    struct timespec nap = {0, 200000};
    while (off < p->end && !__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
        lead = __atomic_load_n(&p->writer_pos, __ATOMIC_RELAXED) + HFT_PREFAULT_LEAD;
        if (off >= lead) {
            nanosleep(&nap, NULL);
            continue;
        }
        len = p->end - off < HFT_PREFAULT_CHUNK ? p->end - off : HFT_PREFAULT_CHUNK;
        if (madvise(p->base + off, len, MADV_POPULATE_WRITE) != 0) {
            p->error = errno;
            break;
        }
        off += len;
    }
    return NULL;
}

/* Start prefaulting [start, end) of the mapping at base; 0 or an errno. */
static int hft_prefault_start(hft_prefault_t* p, char* base, size_t start, size_t end) {
    long page = sysconf(_SC_PAGESIZE);
    if (p->running) return EBUSY;
    if (page <= 0) page = 4096;
    p->base = base;
    p->start = start - start % (size_t)page;
    p->end = end - end % (size_t)page;
    p->stop = 0;
    p->error = 0;
    p->writer_pos = start;
    p->pid = getpid();
    if (p->start >= p->end) return 0;
    if (pthread_create(&p->thread, NULL, hft_prefault_main, p) != 0) return EAGAIN;
    p->running = 1;
    return 0;
}

/* The writer reached `pos` (a plain relaxed store: the thread only paces itself by it). */
static inline void hft_prefault_note(hft_prefault_t* p, size_t pos) {
    __atomic_store_n(&p->writer_pos, pos, __ATOMIC_RELAXED);
}

static void hft_prefault_stop(hft_prefault_t* p) {
    if (!p->running) return;
    __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
    if (p->pid == getpid())          /* a forked child has no such thread to join */
        pthread_join(p->thread, NULL);
    p->running = 0;
}

#endif /* HFTALLOC_JOURNAL_H */
