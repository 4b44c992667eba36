/* CRC-32C (Castagnoli), the checksum of every KV page and log record the
 * tiers write (TIERS.md).
 *
 * x86-64 with SSE4.2 computes it with the crc32 instruction, three
 * independent streams over thirds of a block and a combine by table
 * (the instruction has a latency of 3 cycles and a throughput of 1, so one
 * stream runs at a third of its speed); elsewhere a byte-at-a-time table.
 * Both give the same value: the standard CRC-32C (initial and final value
 * inverted), with attnd__crc32c(0, "123456789", 9) == 0xE3069283.
 * Chaining: attnd__crc32c(attnd__crc32c(0, a, n), b, m) is the CRC of a
 * followed by b. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "tier_int.h"

#define POLY 0x82f63b78u /* reflected Castagnoli polynomial */

static uint32_t table[256];
/* zero-extension operators: x^(8 * n) mod P applied to a CRC, for the
 * three-stream combine, as four byte tables each (see shift) */
#define BLOCK 4096 /* bytes per stream per step */
static uint32_t shift_tab[4][256];

static uint32_t gf2_times(const uint32_t *mat, uint32_t v)
{
    uint32_t r = 0;
    for (int i = 0; v; i++, v >>= 1)
        if (v & 1)
            r ^= mat[i];
    return r;
}

static void gf2_square(uint32_t *sq, const uint32_t *mat)
{
    for (int i = 0; i < 32; i++)
        sq[i] = gf2_times(mat, mat[i]);
}

/* The operator that appends n zero bytes to a CRC register (n a power of
 * two times 1, computed by squaring the one-bit operator). */
static void zeros_op(uint32_t *out, size_t n)
{
    uint32_t odd[32], even[32];
    odd[0] = POLY; /* one zero bit */
    for (int i = 1; i < 32; i++)
        odd[i] = 1u << (i - 1);
    gf2_square(even, odd); /* 2 bits */
    gf2_square(odd, even); /* 4 bits */
    /* odd: 4 bits; square until 8 * n bits */
    size_t bits = 4;
    uint32_t *cur = odd, *oth = even;
    while (bits < 8 * n) {
        gf2_square(oth, cur);
        uint32_t *t = cur;
        cur = oth;
        oth = t;
        bits *= 2;
    }
    memcpy(out, cur, sizeof(uint32_t) * 32);
}

static void init_tables(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
        table[i] = c;
    }
    uint32_t op[32];
    zeros_op(op, BLOCK);
    for (int b = 0; b < 4; b++)
        for (uint32_t i = 0; i < 256; i++)
            shift_tab[b][i] = gf2_times(op, i << (8 * b));
}

static inline uint32_t shift(uint32_t crc)
{
    return shift_tab[0][crc & 0xff] ^ shift_tab[1][(crc >> 8) & 0xff] ^
           shift_tab[2][(crc >> 16) & 0xff] ^ shift_tab[3][crc >> 24];
}

static uint32_t crc_table(uint32_t c, const unsigned char *p, size_t n)
{
    while (n--)
        c = table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c, const unsigned char *p,
                                                          size_t n)
{
    uint64_t c0 = c;
    while (n && ((uintptr_t)p & 7)) {
        c0 = _mm_crc32_u8((uint32_t)c0, *p++);
        n--;
    }
    /* three streams of BLOCK bytes each, combined by shifting */
    while (n >= 3 * BLOCK) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *p1 = p + BLOCK, *p2 = p + 2 * BLOCK;
        for (size_t i = 0; i < BLOCK; i += 8) {
            uint64_t a, b, d;
            memcpy(&a, p + i, 8);
            memcpy(&b, p1 + i, 8);
            memcpy(&d, p2 + i, 8);
            c0 = _mm_crc32_u64(c0, a);
            c1 = _mm_crc32_u64(c1, b);
            c2 = _mm_crc32_u64(c2, d);
        }
        c0 = shift(shift((uint32_t)c0) ^ (uint32_t)c1) ^ (uint32_t)c2;
        p += 3 * BLOCK;
        n -= 3 * BLOCK;
    }
    while (n >= 8) {
        uint64_t a;
        memcpy(&a, p, 8);
        c0 = _mm_crc32_u64(c0, a);
        p += 8;
        n -= 8;
    }
    while (n--)
        c0 = _mm_crc32_u8((uint32_t)c0, *p++);
    return (uint32_t)c0;
}
#endif

uint32_t attnd__crc32c(uint32_t crc, const void *data, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, init_tables);
    uint32_t c = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        return ~crc_hw(c, data, n);
#endif
    return ~crc_table(c, data, n);
}
