/* The tick clock of the compiled bus core (hftalloc._bus).
 *
 * Per message the bus reads a clock twice or more: at commit (the publish stamp) and
 * before each delivery (the latency histogram). clock_gettime(CLOCK_MONOTONIC) costs
 * about 23 ns even through the vDSO; the TSC (rdtsc) about 10 ns. So the hot path
 * reads "ticks":
 *
 *   - the TSC on x86 when the kernel itself trusts it (clocksource "tsc": invariant,
 *     synchronised across CPUs), decided once at import by hftalloc._bus;
 *   - otherwise CLOCK_MONOTONIC in ns (other clocksource, other architecture, or
 *     HFTALLOC_CLOCK=monotonic): ticks == ns, hft_ns_per_tick == 1.0.
 *
 * Tick differences become ns with hft_ns_per_tick (calibrated against CLOCK_MONOTONIC);
 * absolute ticks become CLOCK_MONOTONIC ns through an anchor pair kept by hftalloc._bus.
 * The state below is written only at import and from cold paths, with the GIL held.
 * It is static: each extension module that includes this header has its own copy, so
 * only hftalloc._bus reads ticks (other modules convert through its owner methods).
 */
#ifndef HFT_TICKS_H
#define HFT_TICKS_H

#include <stdint.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define HFT_HAVE_TSC 1
static inline int64_t hft_rdtsc(void) { return (int64_t)__rdtsc(); }
#else
#define HFT_HAVE_TSC 0
static inline int64_t hft_rdtsc(void) { return 0; }
#endif

static int hft_use_tsc = 0;           /* 1: ticks are TSC cycles; 0: CLOCK_MONOTONIC ns */
static double hft_ns_per_tick = 1.0;  /* calibrated rate (1.0 for CLOCK_MONOTONIC) */

/* CLOCK_MONOTONIC in ns: the clock behind time.perf_counter_ns() on Linux. */
static inline int64_t hft_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + (int64_t)ts.tv_nsec;
}

static inline int64_t hft_ticks(void) {
#if HFT_HAVE_TSC
    if (hft_use_tsc) return hft_rdtsc();
#endif
    return hft_mono_ns();
}

/* A tick difference in ns, rounded; 0 for d <= 0, saturated at INT64_MAX. */
static inline int64_t hft_elapsed_ns(int64_t d) {
    double x;
    if (d <= 0) return 0;
    x = (double)d * hft_ns_per_tick + 0.5;
    return x < 9.2e18 ? (int64_t)x : INT64_MAX;
}

#endif
