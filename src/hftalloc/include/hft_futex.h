/* Waiting on a 32-bit word shared between processes, and the two clocks of a channel.
 *
 * Linux: shared (not private) futexes, since the word lives in a mapping that other
 * processes map at other addresses. Elsewhere the wait is a short sleep (50 µs, or
 * the timeout if shorter) and the wake does nothing: waiters re-check their condition.
 */
#ifndef HFTALLOC_HFT_FUTEX_H
#define HFTALLOC_HFT_FUTEX_H

#include <stdint.h>
#include <time.h>

#ifdef __linux__
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define HFT_HAS_FUTEX 1

/* Sleep while *word == expected, at most timeout_ns (< 0: no limit). Returns 0 when
 * woken, -1 on timeout, signal or a value that had already changed (check errno). */
static inline int hft_futex_wait_shared(uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts, *tp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        tp = &ts;
    }
    return (int)syscall(SYS_futex, word, FUTEX_WAIT, expected, tp, NULL, 0);
}

/* Wake every waiter on word. */
static inline void hft_futex_wake_shared(uint32_t *word) {
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}
#else
#define HFT_HAS_FUTEX 0

static inline int hft_futex_wait_shared(uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts;
    (void)word;
    (void)expected;
    ts.tv_sec = 0;
    ts.tv_nsec = 50000;
    if (timeout_ns >= 0 && timeout_ns < 50000) ts.tv_nsec = (long)timeout_ns;
    nanosleep(&ts, NULL);
    return 0;
}

static inline void hft_futex_wake_shared(uint32_t *word) { (void)word; }
#endif

/* Sleep for ns nanoseconds (without the GIL when called from a nogil block). */
static inline void hft_sleep_ns(int64_t ns) {
    struct timespec ts;
    if (ns <= 0) return;
    ts.tv_sec = (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    nanosleep(&ts, NULL);
}

/* CLOCK_MONOTONIC in ns (the clock of time.perf_counter_ns() and time.monotonic_ns() on Linux). */
static inline uint64_t hft_clock_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* CLOCK_REALTIME in ns (the clock of time.time_ns()). */
static inline uint64_t hft_clock_realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
