/* attnd_dtype (attnd_dtype.h): bf16 and f16 to and from float32, by bit manipulation.
 *
 * Portable C (no F16C/AVX-512 intrinsics): these are the reference
 * conversions the SIMD paths must match bit for bit. Rounding is to nearest,
 * ties to even; NaN stays a (quiet) NaN; f16 subnormals are handled. */
#include <string.h>

#include "attnd_dtype.h"

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t attnd_dtype_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep sign, force quiet */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

uint16_t attnd_dtype_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t abs = u & 0x7fffffffu;

    if (abs > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
    if (abs >= 0x477ff000u) /* rounds to >= 65520: infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (abs < 0x38800000u) { /* below 2^-14: f16 subnormal or zero */
        if (abs < 0x33000000u) /* below 2^-25: rounds to zero */
            return (uint16_t)sign;
        uint32_t exp = abs >> 23;
        uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - exp; /* 14..24 */
        uint32_t half = 1u << (shift - 1);
        uint32_t rest = mant & ((1u << shift) - 1);
        uint32_t r = mant >> shift;
        if (rest > half || (rest == half && (r & 1u)))
            r++;
        return (uint16_t)(sign | r);
    }
    /* normal: rebias exponent 127 -> 15, round mantissa 23 -> 10 bits */
    uint32_t r = abs - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

float attnd_dtype_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;

    if (exp == 0x1fu) /* inf / NaN */
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0)
            return bits_f32(sign);
        /* subnormal: value = mant * 2^-24, exact in float32 */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

float attnd_dtype_load_f32(attnd_dtype t, const void *src, size_t i)
{
    switch (t) {
    case ATTND_DTYPE_BF16: return attnd_dtype_bf16_to_f32(((const uint16_t *)src)[i]);
    case ATTND_DTYPE_F16: return attnd_dtype_f16_to_f32(((const uint16_t *)src)[i]);
    case ATTND_DTYPE_F32: return ((const float *)src)[i];
    default: return 0.0f;
    }
}

double attnd_dtype_load_f64(attnd_dtype t, const void *src, size_t i)
{
    return (double)attnd_dtype_load_f32(t, src, i);
}

/* Element i of a 16-bit array at any alignment (memcpy compiles to a plain
 * load; typed pointers into unaligned bytes would be undefined behaviour). */
static inline uint16_t ld16(const unsigned char *p, size_t i)
{
    uint16_t v;
    memcpy(&v, p + 2 * i, sizeof v);
    return v;
}

static inline void st16(unsigned char *p, size_t i, uint16_t v)
{
    memcpy(p + 2 * i, &v, sizeof v);
}

static inline float ldf(const unsigned char *p, size_t i)
{
    float v;
    memcpy(&v, p + 4 * i, sizeof v);
    return v;
}

static inline uint32_t ldu32(const unsigned char *p, size_t i)
{
    uint32_t v;
    memcpy(&v, p + 4 * i, sizeof v);
    return v;
}

static inline void stu32(unsigned char *p, size_t i, uint32_t v)
{
    memcpy(p + 4 * i, &v, sizeof v);
}

/* attnd_dtype_f32_to_bf16 with the NaN case as a select instead of a branch, so
 * that the reply encoder's f32 -> bf16 loop vectorizes (same bits). */
static inline uint16_t bf16_round_sel(uint32_t u)
{
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet = (u >> 16) | 0x0040u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

static inline void stf(unsigned char *p, size_t i, float v)
{
    memcpy(p + 4 * i, &v, sizeof v);
}

/* The two conversions on the reply/request path get one clone per x86-64
 * level, picked by the loader (ifunc) from the CPU's features: the loops
 * are the same C, vectorized 8 or 16 wide. */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define ATTND_CONVERT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef ATTND_CONVERT_CLONES
#define ATTND_CONVERT_CLONES
#endif

ATTND_CONVERT_CLONES
static void f32_to_bf16_n(unsigned char *d, const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        st16(d, i, bf16_round_sel(ldu32(s, i)));
}

ATTND_CONVERT_CLONES
static void bf16_to_f32_n(unsigned char *d, const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        stu32(d, i, (uint32_t)ld16(s, i) << 16); /* attnd_dtype_bf16_to_f32 */
}

/* ---- non-finite elements --------------------------------------------------------
 * An element is NaN or infinite when its exponent bits are all ones. With
 * E the exponent mask and L its lowest bit, (x & E) + L reaches the sign
 * bit exactly then; OR-ing that over a block and testing the sign bit is a
 * branch-free loop the compiler vectorizes (16 or 32 lanes). */

#define NF_BLOCK 2048 /* elements: 4-8 KB, stays in L1 between the two loops */

ATTND_CONVERT_CLONES
static int block_nonfinite16(const unsigned char *s, size_t n, uint16_t e, uint16_t l)
{
    uint16_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= (uint16_t)((ld16(s, i) & e) + l);
    return (acc & 0x8000u) != 0;
}

ATTND_CONVERT_CLONES
static int block_nonfinite32(const unsigned char *s, size_t n)
{
    uint32_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= (ldu32(s, i) & 0x7f800000u) + 0x00800000u;
    return (acc & 0x80000000u) != 0;
}

static int is_nonfinite(attnd_dtype t, const unsigned char *s, size_t i)
{
    switch (t) {
    case ATTND_DTYPE_BF16: return (ld16(s, i) & 0x7f80u) == 0x7f80u;
    case ATTND_DTYPE_F16: return (ld16(s, i) & 0x7c00u) == 0x7c00u;
    case ATTND_DTYPE_F32: return (ldu32(s, i) & 0x7f800000u) == 0x7f800000u;
    default: return 0;
    }
}

/* The first non-finite element of one block (n when none). */
static size_t block_find(attnd_dtype t, const unsigned char *s, size_t n)
{
    int any;
    switch (t) {
    case ATTND_DTYPE_BF16: any = block_nonfinite16(s, n, 0x7f80u, 0x0080u); break;
    case ATTND_DTYPE_F16: any = block_nonfinite16(s, n, 0x7c00u, 0x0400u); break;
    case ATTND_DTYPE_F32: any = block_nonfinite32(s, n); break;
    default: return n;
    }
    for (size_t i = 0; any && i < n; i++)
        if (is_nonfinite(t, s, i))
            return i;
    return n;
}

size_t attnd_dtype_find_nonfinite(attnd_dtype t, const void *src, size_t n)
{
    const unsigned char *s = src;
    size_t es = attnd_dtype_size(t);
    for (size_t at = 0; at < n; at += NF_BLOCK) {
        size_t m = n - at < NF_BLOCK ? n - at : NF_BLOCK;
        size_t k = block_find(t, s + at * es, m);
        if (k < m)
            return at + k;
    }
    return n;
}

size_t attnd_dtype_convert_checked(attnd_dtype dst_t, void *dst, attnd_dtype src_t,
                                   const void *src, size_t n)
{
    const unsigned char *s = src;
    unsigned char *d = dst;
    size_t ss = attnd_dtype_size(src_t), ds = attnd_dtype_size(dst_t), bad = n;
    for (size_t at = 0; at < n; at += NF_BLOCK) {
        size_t m = n - at < NF_BLOCK ? n - at : NF_BLOCK;
        attnd_dtype_convert(dst_t, d + at * ds, src_t, s + at * ss, m);
        if (bad == n) { /* the block is in L1 now: checking it costs no memory pass */
            size_t k = block_find(src_t, s + at * ss, m);
            if (k < m)
                bad = at + k;
        }
    }
    return bad;
}

const char *attnd_dtype_nonfinite_name(attnd_dtype t, const void *src, size_t i)
{
    const unsigned char *s = src;
    if (!is_nonfinite(t, s, i))
        return "finite";
    float f; /* wire data sits at any alignment: convert, do not load */
    attnd_dtype_convert(ATTND_DTYPE_F32, &f, t, s + i * attnd_dtype_size(t), 1);
    return f != f ? "NaN" : f > 0 ? "+Inf" : "-Inf";
}

/* One loop per (src, dst) pair so that each inner loop is branch-free and
 * vectorizable; the codec converts whole tensors with it. */
void attnd_dtype_convert(attnd_dtype dst_t, void *dst, attnd_dtype src_t,
                   const void *src, size_t n)
{
    const unsigned char *s = src;
    unsigned char *d = dst;

    if (dst_t == src_t) {
        memmove(dst, src, n * attnd_dtype_size(src_t));
        return;
    }
    switch (src_t * 4 + dst_t) {
    case ATTND_DTYPE_F32 * 4 + ATTND_DTYPE_BF16:
        f32_to_bf16_n(d, s, n);
        return;
    case ATTND_DTYPE_F32 * 4 + ATTND_DTYPE_F16:
        for (size_t i = 0; i < n; i++)
            st16(d, i, attnd_dtype_f32_to_f16(ldf(s, i)));
        return;
    case ATTND_DTYPE_BF16 * 4 + ATTND_DTYPE_F32:
        bf16_to_f32_n(d, s, n);
        return;
    case ATTND_DTYPE_F16 * 4 + ATTND_DTYPE_F32:
        for (size_t i = 0; i < n; i++)
            stf(d, i, attnd_dtype_f16_to_f32(ld16(s, i)));
        return;
    case ATTND_DTYPE_BF16 * 4 + ATTND_DTYPE_F16:
        for (size_t i = 0; i < n; i++)
            st16(d, i, attnd_dtype_f32_to_f16(attnd_dtype_bf16_to_f32(ld16(s, i))));
        return;
    case ATTND_DTYPE_F16 * 4 + ATTND_DTYPE_BF16:
        for (size_t i = 0; i < n; i++)
            st16(d, i, attnd_dtype_f32_to_bf16(attnd_dtype_f16_to_f32(ld16(s, i))));
        return;
    default: /* an invalid dtype: callers validate first; write nothing */
        return;
    }
}
