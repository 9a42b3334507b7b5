/* Surviving the truncation of a mapped shared-memory segment.
 *
 * Any process that can open a segment can also ftruncate() it; touching a page of a
 * mapping beyond the new end of its file raises SIGBUS, which would kill this process.
 * Every channel mapping is registered here. A process-wide SIGBUS handler (installed,
 * outermost, whenever a mapping is registered) repairs a fault inside a registered
 * mapping: it maps anonymous zero pages over the whole mapping (MAP_FIXED, same
 * protection), marks the mapping truncated and returns, so the faulting access is
 * retried on the zero pages. The channel checks the mark after each operation and
 * raises. A fault anywhere else goes to the handler that was installed before (or
 * the default action, which ends the process as it would have without this handler).
 *
 * Registration runs with the GIL held; the handler only reads the table (atomic loads).
 */
#ifndef HFTALLOC_HFT_SHM_GUARD_H
#define HFTALLOC_HFT_SHM_GUARD_H

#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HFT_GUARD_SLOTS 1024

typedef struct {
    uintptr_t base;      /* 0: free slot; published last (release store) */
    uintptr_t length;
    int prot;
    uint32_t truncated;  /* set by the handler */
} hft_guard_slot;

static hft_guard_slot hft_guard_table[HFT_GUARD_SLOTS];
static struct sigaction hft_guard_previous;
static uint64_t hft_guard_repairs;         /* faults repaired (all mappings) */
static uintptr_t hft_guard_last_foreign;   /* address of the last fault passed on */
static unsigned hft_guard_foreign_repeats;

static void hft_guard_handler(int sig, siginfo_t *info, void *context);

static inline int hft_guard_is_ours(const struct sigaction *sa) {
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == hft_guard_handler;
}

static void hft_guard_default(int sig) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    raise(sig);  /* pending until the handler returns, then the default action */
}

static void hft_guard_pass_on(int sig, siginfo_t *info, void *context) {
    const struct sigaction *prev = &hft_guard_previous;
    uintptr_t addr = (uintptr_t)info->si_addr;
    /* a previous handler that returns without fixing the fault would bring us back
     * here for ever: after a few repeats at one address, take the default action */
    if (info->si_code > 0 && addr == hft_guard_last_foreign) {
        if (++hft_guard_foreign_repeats > 3) {
            hft_guard_default(sig);
            return;
        }
    } else {
        hft_guard_last_foreign = addr;
        hft_guard_foreign_repeats = 0;
    }
    if (prev->sa_flags & SA_SIGINFO) {
        if (prev->sa_sigaction != NULL && !hft_guard_is_ours(prev)) {
            prev->sa_sigaction(sig, info, context);
            return;
        }
    } else if (prev->sa_handler == SIG_IGN) {
        if (info->si_code <= 0) return;  /* sent by kill(): ignored, as before */
    } else if (prev->sa_handler != SIG_DFL && prev->sa_handler != NULL) {
        prev->sa_handler(sig);
        return;
    }
    hft_guard_default(sig);
}

static void hft_guard_handler(int sig, siginfo_t *info, void *context) {
    int i;
    if (info->si_code > 0) {  /* a memory fault, not a signal sent by a process */
        uintptr_t addr = (uintptr_t)info->si_addr;
        for (i = 0; i < HFT_GUARD_SLOTS; i++) {
            hft_guard_slot *s = &hft_guard_table[i];
            uintptr_t base = __atomic_load_n(&s->base, __ATOMIC_ACQUIRE);
            if (base != 0 && addr - base < s->length) {
                void *p = mmap((void *)base, s->length, s->prot,
                               MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (p == MAP_FAILED) break;
                __atomic_store_n(&s->truncated, 1u, __ATOMIC_RELEASE);
                __atomic_add_fetch(&hft_guard_repairs, 1, __ATOMIC_RELAXED);
                return;
            }
        }
    }
    hft_guard_pass_on(sig, info, context);
}

/* Make our handler the current (outermost) SIGBUS handler; 0 or -1 (errno set). */
static int hft_guard_install(void) {
    struct sigaction now, ours;
    if (sigaction(SIGBUS, NULL, &now) != 0) return -1;
    if (hft_guard_is_ours(&now)) return 0;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = hft_guard_handler;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&ours.sa_mask);
    hft_guard_previous = now;  /* before installing: the handler may run at once */
    return sigaction(SIGBUS, &ours, NULL);
}

/* Register [base, base + length) (page aligned): the slot index, or -1 if the table is
 * full. The handler is (re)installed as the outermost one. */
static int hft_guard_register(void *base, size_t length, int writable) {
    int i;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) page = 4096;
    if (base == NULL || length == 0) return -1;
    for (i = 0; i < HFT_GUARD_SLOTS; i++) {
        hft_guard_slot *s = &hft_guard_table[i];
        if (__atomic_load_n(&s->base, __ATOMIC_ACQUIRE) == 0) {
            s->length = (length + (size_t)page - 1) / (size_t)page * (size_t)page;
            s->prot = writable ? (PROT_READ | PROT_WRITE) : PROT_READ;
            __atomic_store_n(&s->truncated, 0u, __ATOMIC_RELAXED);
            __atomic_store_n(&s->base, (uintptr_t)base, __ATOMIC_RELEASE);
            return i;
        }
    }
    return -1;
}

static void hft_guard_unregister(int slot) {
    if (slot >= 0 && slot < HFT_GUARD_SLOTS)
        __atomic_store_n(&hft_guard_table[slot].base, (uintptr_t)0, __ATOMIC_RELEASE);
}

/* The truncation mark of a slot (a word the caller reads with an atomic load). */
static inline uint32_t *hft_guard_mark(int slot) { return &hft_guard_table[slot].truncated; }

static inline uint64_t hft_guard_repair_count(void) {
    return __atomic_load_n(&hft_guard_repairs, __ATOMIC_RELAXED);
}

/* Slot whose mapping contains [p, p + n), or -1. */
static int hft_guard_find(const void *p, size_t n) {
    int i;
    uintptr_t a = (uintptr_t)p;
    for (i = 0; i < HFT_GUARD_SLOTS; i++) {
        hft_guard_slot *s = &hft_guard_table[i];
        uintptr_t base = __atomic_load_n(&s->base, __ATOMIC_ACQUIRE);
        if (base != 0 && a >= base && a - base <= s->length && n <= s->length - (a - base))
            return i;
    }
    return -1;
}

#endif
