/* FIX tag=value framing, field splitting, checksum and formatting helpers.
 *
 * Every function takes an explicit buffer length and never reads past it: the bytes come
 * from the network and are untrusted. No allocation, no Python API: callable without the GIL.
 */
#ifndef HFT_FIX_H
#define HFT_FIX_H

#include <stdint.h>
#include <string.h>
#include <time.h>

#define HFT_FIX_SOH 0x01

/* error codes (negative return values) */
#define HFT_FIX_E_GARBAGE     (-1)  /* no "8=FIX" at the start */
#define HFT_FIX_E_BODYLEN     (-2)  /* BodyLength missing, malformed or wrong */
#define HFT_FIX_E_CHECKSUM    (-3)  /* CheckSum missing, malformed or wrong */
#define HFT_FIX_E_OVERSIZE    (-4)  /* declared size above the limit */
#define HFT_FIX_E_TAG         (-5)  /* tag not a positive decimal number */
#define HFT_FIX_E_NOVALUE     (-6)  /* tag without a value */
#define HFT_FIX_E_FIELDS      (-7)  /* more fields than the table holds */
#define HFT_FIX_E_ORDER       (-8)  /* 8, 9, 35 not first or 10 not last */
#define HFT_FIX_E_TRUNCATED   (-9)  /* last field not terminated by SOH */

typedef struct {
    int32_t tag;
    int32_t off;
    int32_t len;
} hft_fix_field;

/* Sum of the bytes modulo 256 (the FIX CheckSum). */
static inline unsigned int hft_fix_checksum(const unsigned char *p, Py_ssize_t n) {
    unsigned int s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3];
    }
    for (; i < n; i++) s0 += p[i];
    return (s0 + s1 + s2 + s3) & 0xFF;
}

/* Offset of the first "8=FIX" at or after `from`, or -1. */
static inline Py_ssize_t hft_fix_find_begin(const unsigned char *p, Py_ssize_t n,
                                            Py_ssize_t from) {
    Py_ssize_t i;
    for (i = from; i + 5 <= n; i++) {
        if (p[i] == '8' && p[i + 1] == '=' && p[i + 2] == 'F' && p[i + 3] == 'I'
                && p[i + 4] == 'X')
            return i;
    }
    /* a partial "8=FIX" at the very end may still complete */
    for (; i < n; i++) {
        if (p[i] == '8') {
            Py_ssize_t k = 1;
            const char *want = "8=FIX";
            while (i + k < n && p[i + k] == (unsigned char)want[k]) k++;
            if (i + k == n) return i;
        }
    }
    return -1;
}

/* Size of the complete message starting at p[0] (which must be "8=FIX"), 0 when more
 * bytes are needed, or a negative error code. `*body_start` receives the offset just
 * after the BodyLength field and `*body_len` the declared BodyLength. The CheckSum is
 * verified when `verify` is non-zero. */
static inline Py_ssize_t hft_fix_frame(const unsigned char *p, Py_ssize_t n, Py_ssize_t max_size,
                                       int verify, Py_ssize_t *body_start, Py_ssize_t *body_len) {
    Py_ssize_t i = 0, bl = 0, total, digits = 0;
    if (n < 2) return 0;
    if (p[0] != '8' || p[1] != '=') return HFT_FIX_E_GARBAGE;
    /* BeginString value: up to 16 bytes */
    for (i = 2; i < n && p[i] != HFT_FIX_SOH; i++) {
        if (i > 18) return HFT_FIX_E_GARBAGE;
    }
    if (i >= n) return 0;
    i++;
    if (i + 2 > n) return 0;
    if (p[i] != '9' || p[i + 1] != '=') return HFT_FIX_E_BODYLEN;
    i += 2;
    for (; i < n && p[i] != HFT_FIX_SOH; i++) {
        if (p[i] < '0' || p[i] > '9' || ++digits > 7) return HFT_FIX_E_BODYLEN;
        bl = bl * 10 + (p[i] - '0');
    }
    if (i >= n) return 0;
    if (digits == 0) return HFT_FIX_E_BODYLEN;
    i++;
    total = i + bl + 7;
    if (total > max_size) return HFT_FIX_E_OVERSIZE;
    *body_start = i;
    *body_len = bl;
    if (n < total) return 0;
    if (p[total - 7] != '1' || p[total - 6] != '0' || p[total - 5] != '='
            || p[total - 1] != HFT_FIX_SOH || (bl > 0 && p[total - 8] != HFT_FIX_SOH))
        return HFT_FIX_E_BODYLEN;
    if (verify) {
        unsigned int want = 0;
        int k;
        for (k = 0; k < 3; k++) {
            unsigned char c = p[total - 4 + k];
            if (c < '0' || c > '9') return HFT_FIX_E_CHECKSUM;
            want = want * 10 + (c - '0');
        }
        if (want != hft_fix_checksum(p, total - 7)) return HFT_FIX_E_CHECKSUM;
    }
    return total;
}

/* Split p[0:n] into fields; returns the field count or a negative error code
 * (`*err_at` is the index of the offending field). */
static inline int hft_fix_split(const unsigned char *p, Py_ssize_t n, hft_fix_field *out,
                                int cap, int *err_at) {
    Py_ssize_t i = 0;
    int count = 0;
    while (i < n) {
        int32_t tag = 0;
        Py_ssize_t start = i, vstart;
        if (count >= cap) { *err_at = count; return HFT_FIX_E_FIELDS; }
        while (i < n && p[i] >= '0' && p[i] <= '9') {
            if (i - start >= 9) { *err_at = count; return HFT_FIX_E_TAG; }
            tag = tag * 10 + (p[i] - '0');
            i++;
        }
        if (i == start || i >= n || p[i] != '=' || tag == 0) {
            *err_at = count;
            return HFT_FIX_E_TAG;
        }
        vstart = ++i;
        while (i < n && p[i] != HFT_FIX_SOH) i++;
        if (i >= n) { *err_at = count; return HFT_FIX_E_TRUNCATED; }
        if (i == vstart) { out[count].tag = tag; *err_at = count; return HFT_FIX_E_NOVALUE; }
        out[count].tag = tag;
        out[count].off = (int32_t)vstart;
        out[count].len = (int32_t)(i - vstart);
        count++;
        i++;
    }
    return count;
}

/* Decimal digits of v (v >= 0). */
static inline int hft_fix_digits(uint64_t v) {
    int d = 1;
    while (v >= 10) { v /= 10; d++; }
    return d;
}

/* Write v (signed) as decimal text at p; returns the byte count (at most 20). */
static inline int hft_fix_put_int(unsigned char *p, int64_t v) {
    uint64_t u;
    int neg = 0, d, k;
    if (v < 0) { neg = 1; u = (uint64_t)0 - (uint64_t)v; } else { u = (uint64_t)v; }
    d = hft_fix_digits(u);
    if (neg) *p++ = '-';
    for (k = d - 1; k >= 0; k--) { p[k] = (unsigned char)('0' + u % 10); u /= 10; }
    return d + neg;
}

/* UTCTimestamp "YYYYMMDD-HH:MM:SS.sss" (21 bytes) for a time in ns since the epoch. */
static inline int hft_fix_put_utc(unsigned char *p, int64_t ns) {
    struct tm tmv;
    time_t secs = (time_t)(ns / 1000000000LL);
    int ms = (int)((ns / 1000000LL) % 1000);
    if (ms < 0) { ms += 1000; secs -= 1; }
    gmtime_r(&secs, &tmv);
    int year = tmv.tm_year + 1900;
    p[0] = '0' + (year / 1000) % 10; p[1] = '0' + (year / 100) % 10;
    p[2] = '0' + (year / 10) % 10; p[3] = '0' + year % 10;
    p[4] = '0' + (tmv.tm_mon + 1) / 10; p[5] = '0' + (tmv.tm_mon + 1) % 10;
    p[6] = '0' + tmv.tm_mday / 10; p[7] = '0' + tmv.tm_mday % 10;
    p[8] = '-';
    p[9] = '0' + tmv.tm_hour / 10; p[10] = '0' + tmv.tm_hour % 10; p[11] = ':';
    p[12] = '0' + tmv.tm_min / 10; p[13] = '0' + tmv.tm_min % 10; p[14] = ':';
    p[15] = '0' + tmv.tm_sec / 10; p[16] = '0' + tmv.tm_sec % 10; p[17] = '.';
    p[18] = '0' + ms / 100; p[19] = '0' + (ms / 10) % 10; p[20] = '0' + ms % 10;
    return 21;
}

#endif /* HFT_FIX_H */
