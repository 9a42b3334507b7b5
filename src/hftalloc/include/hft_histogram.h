/* Layout of hftalloc.histogram.Histogram.counts and its recorder, in C.
 *
 * counts[0..3] = count, sum, min, max; counts[HFT_HEADER + i] = bucket i. Values below
 * 2**HFT_SUB_BITS are counted exactly; above, each power of two is split into
 * 2**(HFT_SUB_BITS - 1) buckets; values above HFT_MAX_VALUE land in the last bucket
 * (max and sum stay exact). The constants must equal hftalloc.histogram's (the modules
 * that include this header check it at import).
 */
#ifndef HFT_HISTOGRAM_H
#define HFT_HISTOGRAM_H

#include <stdint.h>

#define HFT_SUB_BITS 8
#define HFT_HEADER 4
#define HFT_MAX_BITS 44
#define HFT_MAX_VALUE ((1ULL << HFT_MAX_BITS) - 1)
#define HFT_NUM_BUCKETS (((HFT_MAX_BITS - HFT_SUB_BITS) << (HFT_SUB_BITS - 1)) + (1 << HFT_SUB_BITS))

/* Histogram.record(value) n times (hft_hist_record: once) on a counts array of HFT_HEADER + HFT_NUM_BUCKETS slots
 * (negative values count as 0). No allocation, no Python: callable without the GIL. */
static inline void hft_hist_record_n(uint64_t* c, int64_t value, uint64_t n) {
    uint64_t v = value > 0 ? (uint64_t)value : 0;
    uint64_t clamped = v <= HFT_MAX_VALUE ? v : HFT_MAX_VALUE;
    if (n == 0) return;
    if (clamped < (1ULL << HFT_SUB_BITS)) {
        c[HFT_HEADER + clamped] += n;
    } else {
        int shift = (64 - __builtin_clzll(clamped)) - HFT_SUB_BITS;
        c[HFT_HEADER + ((uint64_t)shift << (HFT_SUB_BITS - 1)) + (clamped >> shift)] += n;
    }
    c[0] += n;
    c[1] += v * n;
    if (v < c[2]) c[2] = v;
    if (v > c[3]) c[3] = v;
}

static inline void hft_hist_record(uint64_t* c, int64_t value) {
    hft_hist_record_n(c, value, 1);
}

#endif
