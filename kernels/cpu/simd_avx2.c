/* The AVX2 decode path: 8 float32 lanes, 16 vector registers, FMA, F16C.
 *
 * This file only defines the vector vocabulary decode_simd.h is written in,
 * and a register blocking that fits 16 ymm registers; the math is there. It
 * is compiled with -mavx2 -mfma -mf16c (see kernels/CMakeLists.txt) and only
 * called after dispatch.c has seen those features and the ymm state enabled.
 *
 * bf16 is widened exactly: 16 at a time pairwise (a 16-bit shift gives the
 * even elements, a mask the odd ones), else by a zero-extend and a shift;
 * f16 by vcvtph2ps (exact). exp2 is the same degree-6 polynomial as the AVX-512
 * path, scaled by building 2^n in the exponent field. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu_int.h"

typedef __m256 vf;
#define VW 8
#define SFX(name) name##_avx2

/* scores: 4 tokens x 3 row vectors = 12 accumulators + 3 q + 1 broadcast */
#define WIDE_TB 4
#define WIDE_RB 3
/* scores with one row vector (<= VW rows): tokens per block */
#define WIDE_TB1 8
/* output: 4 rows x 2 vectors of d_v = 8 accumulators + 2 v + 4 broadcasts */
#define PV_RB 4
#define PV_EB 2
#define PV_CASES                                                                       \
    PV_CASE(1, 1) PV_CASE(1, 2) PV_CASE(2, 1) PV_CASE(2, 2) PV_CASE(3, 1) PV_CASE(3, 2) \
    PV_CASE(4, 1) PV_CASE(4, 2)
/* P V from bf16 V rows: vector pairs per block, rows x pairs cases */
#define PVR_EB 2
#define PVR_CASES PVR_CASE(1, 2) PVR_CASE(2, 2) PVR_CASE(3, 2) PVR_CASE(4, 2)

static inline vf v_zero(void) { return _mm256_setzero_ps(); }
static inline vf v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void v_store(float *p, vf x) { _mm256_storeu_ps(p, x); }
static inline vf v_set1(float x) { return _mm256_set1_ps(x); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf v_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm256_max_ps(a, b); }

static inline vf v_ceil(vf x) { return _mm256_ceil_ps(x); }

static inline float v_hmax(vf x)
{
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

static inline float v_hsum(vf x)
{
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

static inline vf v_load_bf16(const uint16_t *p)
{
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* Widen 2 * 8 bf16 pairwise: the even elements to *even, the odd to *odd. */
static inline void v_load_bf16_pair(const uint16_t *p, float *even, float *odd)
{
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)p);
    _mm256_storeu_ps(even, _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)));
    _mm256_storeu_ps(odd, _mm256_castsi256_ps(
                              _mm256_and_si256(x, _mm256_set1_epi32((int)0xffff0000u))));
}

/* Widen 2 * 8 bf16 pairwise into registers. */
static inline void v_bf16_pair(const uint16_t *p, vf *even, vf *odd)
{
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)p);
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    *odd = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32((int)0xffff0000u)));
}

static inline vf v_load_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}

/* Lanes i >= n become -inf (n may be out of [0, 8]). */
static inline vf v_mask_tail(vf x, int32_t n)
{
    __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), iota));
    return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), x, keep);
}

/* Lanes whose visible length vis[i] is <= t become -inf. */
static inline vf v_mask_vis(vf x, const int32_t *vis, int32_t t)
{
    __m256i vv = _mm256_loadu_si256((const __m256i *)(const void *)vis);
    __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(vv, _mm256_set1_epi32(t)));
    return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), x, keep);
}

static inline vf v_ninf_to_zero(vf x)
{
    __m256 is = _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ);
    return _mm256_andnot_ps(is, x);
}

static inline int v_any_ne1(vf a)
{
    return _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(1.0f), _CMP_NEQ_UQ)) != 0;
}

/* Lanes that are NaN or +-inf become NaN. */
static inline vf v_nonfinite_to_nan(vf x)
{
    __m256 abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    __m256 finite = _mm256_cmp_ps(abs, _mm256_set1_ps(INFINITY), _CMP_LT_OQ);
    return _mm256_blendv_ps(_mm256_set1_ps(NAN), x, finite);
}

/* 1 when some lane is NaN or +-inf. */
static inline int v_any_nonfinite(vf x)
{
    __m256 abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    return _mm256_movemask_ps(_mm256_cmp_ps(abs, _mm256_set1_ps(INFINITY), _CMP_LT_OQ)) != 0xff;
}

/* even (x0, x2, ..., x14) and odd (x1, ..., x15) -> natural order: lo = x0..x7,
 * hi = x8..x15; v_deinterleave is its inverse. */
static inline void v_interleave(vf even, vf odd, vf *lo, vf *hi)
{
    vf a = _mm256_unpacklo_ps(even, odd), b = _mm256_unpackhi_ps(even, odd);
    *lo = _mm256_permute2f128_ps(a, b, 0x20);
    *hi = _mm256_permute2f128_ps(a, b, 0x31);
}

static inline void v_deinterleave(vf lo, vf hi, vf *even, vf *odd)
{
    vf e = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    vf o = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
    *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* Transpose an 8 x 8 block: row i (i < 8) at src + i * ss; column j of it
 * goes to dst + j * ds for j < ncols. */
static inline void tr_put(float *dst, size_t ds, int ncols, int j, vf x)
{
    if (j < ncols)
        _mm256_storeu_ps(dst + (size_t)j * ds, x);
}

static inline void v_transpose_block(const float *src, size_t ss, float *dst, size_t ds,
                                     int ncols)
{
    vf r0 = v_load(src), r1 = v_load(src + ss), r2 = v_load(src + 2 * ss);
    vf r3 = v_load(src + 3 * ss), r4 = v_load(src + 4 * ss), r5 = v_load(src + 5 * ss);
    vf r6 = v_load(src + 6 * ss), r7 = v_load(src + 7 * ss);
    vf t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    vf t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    vf t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    vf t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    /* u0: column 0 of rows 0-3 | column 4 of rows 0-3; u1: 1 | 5; ... */
    vf u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    vf u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    vf u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    vf u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    vf u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    vf u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    vf u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    vf u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    tr_put(dst, ds, ncols, 0, _mm256_permute2f128_ps(u0, u4, 0x20));
    tr_put(dst, ds, ncols, 1, _mm256_permute2f128_ps(u1, u5, 0x20));
    tr_put(dst, ds, ncols, 2, _mm256_permute2f128_ps(u2, u6, 0x20));
    tr_put(dst, ds, ncols, 3, _mm256_permute2f128_ps(u3, u7, 0x20));
    tr_put(dst, ds, ncols, 4, _mm256_permute2f128_ps(u0, u4, 0x31));
    tr_put(dst, ds, ncols, 5, _mm256_permute2f128_ps(u1, u5, 0x31));
    tr_put(dst, ds, ncols, 6, _mm256_permute2f128_ps(u2, u6, 0x31));
    tr_put(dst, ds, ncols, 7, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* 2^x for x <= 0 (NaN stays NaN; x < -126 gives 0). */
static inline vf v_exp2(vf x)
{
    __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_NLT_UQ);
    vf xc = _mm256_max_ps(_mm256_set1_ps(-126.0f), x); /* NaN passes (2nd operand) */
    vf n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf f = _mm256_sub_ps(xc, n);
    vf y = _mm256_set1_ps(1.535336188319500e-4f);
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.339887440266574e-3f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(9.618437357674640e-3f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(5.550332471162809e-2f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(2.402264791363012e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(6.931472028550421e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), keep);
}

/* Lane i of the result = sum of the lanes of v_i, for 8 vectors. */
static inline vf v_reduce_lanes(vf v0, vf v1, vf v2, vf v3, vf v4, vf v5, vf v6, vf v7)
{
    vf h0 = _mm256_hadd_ps(v0, v1), h1 = _mm256_hadd_ps(v2, v3);
    vf h2 = _mm256_hadd_ps(v4, v5), h3 = _mm256_hadd_ps(v6, v7);
    vf g0 = _mm256_hadd_ps(h0, h1), g1 = _mm256_hadd_ps(h2, h3);
    return _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20),
                         _mm256_permute2f128_ps(g0, g1, 0x31));
}

#include "decode_simd.h"
