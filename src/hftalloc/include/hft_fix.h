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
#define HFT_FIX_E_RAWLEN      (-10) /* raw data field: length missing, malformed, past the
                                       message end, or data not followed by SOH */

/* The FIX 4.4 length/data pairs (fields of type LENGTH followed by one of type DATA): the
 * data field may hold any byte, SOH and '=' included, and is read by its declared length.
 * Returns the data tag for a length tag, else 0. */
static inline int32_t hft_fix_raw_data_tag(int32_t len_tag) {
    switch (len_tag) {
    case 90: return 91;    /* SecureDataLen -> SecureData */
    case 93: return 89;    /* SignatureLength -> Signature */
    case 95: return 96;    /* RawDataLength -> RawData */
    case 212: return 213;  /* XmlDataLen -> XmlData */
    case 348: return 349;  /* EncodedIssuerLen -> EncodedIssuer */
    case 350: return 351;  /* EncodedSecurityDescLen -> EncodedSecurityDesc */
    case 352: return 353;  /* EncodedListExecInstLen -> EncodedListExecInst */
    case 354: return 355;  /* EncodedTextLen -> EncodedText */
    case 356: return 357;  /* EncodedSubjectLen -> EncodedSubject */
    case 358: return 359;  /* EncodedHeadlineLen -> EncodedHeadline */
    case 360: return 361;  /* EncodedAllocTextLen -> EncodedAllocText */
    case 362: return 363;  /* EncodedUnderlyingIssuerLen -> EncodedUnderlyingIssuer */
    case 364: return 365;  /* EncodedUnderlyingSecurityDescLen -> ...SecurityDesc */
    case 445: return 446;  /* EncodedListStatusTextLen -> EncodedListStatusText */
    case 618: return 619;  /* EncodedLegIssuerLen -> EncodedLegIssuer */
    case 621: return 622;  /* EncodedLegSecurityDescLen -> EncodedLegSecurityDesc */
    default: return 0;
    }
}

/* The length tag of a data tag, else 0. */
static inline int32_t hft_fix_raw_length_tag(int32_t data_tag) {
    switch (data_tag) {
    case 91: return 90;
    case 89: return 93;
    case 96: return 95;
    case 213: return 212;
    case 349: return 348;
    case 351: return 350;
    case 353: return 352;
    case 355: return 354;
    case 357: return 356;
    case 359: return 358;
    case 361: return 360;
    case 363: return 362;
    case 365: return 364;
    case 446: return 445;
    case 619: return 618;
    case 622: return 621;
    default: return 0;
    }
}

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
 * (`*err_at` is the index of the offending field, whose tag is filled in).
 *
 * A data field (see hft_fix_raw_data_tag) must follow its length field directly and is
 * taken by that length: its bytes may include SOH and '='. The length is checked against
 * the bytes left before any byte is read, so a lying length never reads past p[n-1]. */
static inline int hft_fix_split(const unsigned char *p, Py_ssize_t n, hft_fix_field *out,
                                int cap, int *err_at) {
    Py_ssize_t i = 0, raw_len = 0;
    int32_t raw_tag = 0;   /* the data tag the previous (length) field announced */
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
        out[count].tag = tag;
        if (raw_tag != 0) {
            if (tag != raw_tag) {           /* a length field not followed by its data */
                *err_at = count - 1;
                return HFT_FIX_E_RAWLEN;
            }
            raw_tag = 0;
            if (raw_len >= n - vstart) {    /* no room for the data and its SOH */
                *err_at = count;
                return HFT_FIX_E_RAWLEN;
            }
            i = vstart + raw_len;
            if (p[i] != HFT_FIX_SOH) { *err_at = count; return HFT_FIX_E_RAWLEN; }
        } else {
            if (hft_fix_raw_length_tag(tag) != 0) {   /* data without its length */
                *err_at = count;
                return HFT_FIX_E_RAWLEN;
            }
            while (i < n && p[i] != HFT_FIX_SOH) i++;
            if (i >= n) { *err_at = count; return HFT_FIX_E_TRUNCATED; }
        }
        if (i == vstart) { *err_at = count; return HFT_FIX_E_NOVALUE; }
        out[count].off = (int32_t)vstart;
        out[count].len = (int32_t)(i - vstart);
        raw_tag = hft_fix_raw_data_tag(tag);
        if (raw_tag != 0) {
            Py_ssize_t k;
            raw_len = 0;
            if (i - vstart > 9) { *err_at = count; return HFT_FIX_E_RAWLEN; }
            for (k = vstart; k < i; k++) {
                if (p[k] < '0' || p[k] > '9') { *err_at = count; return HFT_FIX_E_RAWLEN; }
                raw_len = raw_len * 10 + (p[k] - '0');
            }
        }
        count++;
        i++;
    }
    if (raw_tag != 0) { *err_at = count - 1; return HFT_FIX_E_RAWLEN; }
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
