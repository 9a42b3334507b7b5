/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI, ext4 and
 * the hftalloc journal.
 *
 *   hft_crc32c_sw  table-driven software version (slicing by 8), any CPU
 *   hft_crc32c_hw  the SSE4.2 `crc32` instruction (x86-64 only; call it only when
 *                  hft_crc32c_hw_available() says the CPU has it)
 *   hft_crc32c     the fastest available one, chosen at run time by hft_crc32c_init()
 *
 * All three take the CRC of the bytes before (0 for none) and return the CRC including
 * `n` more bytes, like zlib.crc32: crc32c(b"123456789") == 0xE3069283.
 */
#ifndef HFTALLOC_CRC32C_H
#define HFTALLOC_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define HFT_CRC32C_POLY 0x82F63B78u

static uint32_t hft_crc32c_table[8][256];
static int hft_crc32c_table_ready = 0;

static void hft_crc32c_build_table(void) {
    uint32_t i, j, crc;
    for (i = 0; i < 256; i++) {
        crc = i;
        for (j = 0; j < 8; j++)
            crc = (crc >> 1) ^ (HFT_CRC32C_POLY & (0u - (crc & 1u)));
        hft_crc32c_table[0][i] = crc;
    }
    for (i = 0; i < 256; i++) {
        crc = hft_crc32c_table[0][i];
        for (j = 1; j < 8; j++) {
            crc = hft_crc32c_table[0][crc & 0xFF] ^ (crc >> 8);
            hft_crc32c_table[j][i] = crc;
        }
    }
    hft_crc32c_table_ready = 1;
}

static uint32_t hft_crc32c_sw(uint32_t crc, const void* data, size_t n) {
    const unsigned char* p = (const unsigned char*)data;
    uint64_t word;
    if (!hft_crc32c_table_ready)
        hft_crc32c_build_table();
    crc = ~crc;
    while (n && ((uintptr_t)p & 7)) {
        crc = hft_crc32c_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        memcpy(&word, p, 8);            /* little-endian hosts only (checked at import) */
        word ^= crc;
        crc = hft_crc32c_table[7][word & 0xFF] ^
              hft_crc32c_table[6][(word >> 8) & 0xFF] ^
              hft_crc32c_table[5][(word >> 16) & 0xFF] ^
              hft_crc32c_table[4][(word >> 24) & 0xFF] ^
              hft_crc32c_table[3][(word >> 32) & 0xFF] ^
              hft_crc32c_table[2][(word >> 40) & 0xFF] ^
              hft_crc32c_table[1][(word >> 48) & 0xFF] ^
              hft_crc32c_table[0][word >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = hft_crc32c_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HFT_CRC32C_HAVE_HW 1
__attribute__((target("sse4.2")))
static uint32_t hft_crc32c_hw(uint32_t crc, const void* data, size_t n) {
    const unsigned char* p = (const unsigned char*)data;
    uint64_t c = ~crc;
    uint64_t word;
    while (n && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        n--;
    }
    while (n >= 8) {
        memcpy(&word, p, 8);
        c = __builtin_ia32_crc32di(c, word);
        p += 8;
        n -= 8;
    }
    while (n--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
static int hft_crc32c_hw_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}
#else
#define HFT_CRC32C_HAVE_HW 0
static uint32_t hft_crc32c_hw(uint32_t crc, const void* data, size_t n) {
    return hft_crc32c_sw(crc, data, n);   /* never chosen: hft_crc32c_hw_available() == 0 */
}
static int hft_crc32c_hw_available(void) { return 0; }
#endif

static uint32_t (*hft_crc32c_impl)(uint32_t, const void*, size_t) = hft_crc32c_sw;

/* Pick the implementation (call once before hft_crc32c; `force_sw` keeps the table one). */
static void hft_crc32c_init(int force_sw) {
    hft_crc32c_build_table();
    hft_crc32c_impl = (!force_sw && hft_crc32c_hw_available()) ? hft_crc32c_hw : hft_crc32c_sw;
}

static inline uint32_t hft_crc32c(uint32_t crc, const void* data, size_t n) {
    return hft_crc32c_impl(crc, data, n);
}

#endif /* HFTALLOC_CRC32C_H */
