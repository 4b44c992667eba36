/* The AVX-512 vector vocabulary decode_simd.h is written in (16 float32
 * lanes, 32 zmm registers), shared by the two AVX-512 paths: simd_avx512.c
 * (float32 multiply-adds) and simd_avx512bf16.c (bf16 dot products). Only
 * for translation units compiled with -mavx512f/bw/vl/dq (see
 * kernels/CMakeLists.txt) and called after dispatch.c has seen those
 * features and the zmm state enabled in XCR0.
 *
 * bf16 is widened exactly: 32 at a time pairwise (a 16-bit shift gives the
 * even elements, a mask the odd ones), else by a zero-extend and a shift;
 * f16 by vcvtph2ps (exact). exp2 is a degree-6 polynomial on [-1/2, 1/2] (Cephes
 * exp2f, ~2 ulp) scaled by vscalefps; inputs below -126 give exactly 0. */
#ifndef ATTND_SIMD_AVX512_OPS_H
#define ATTND_SIMD_AVX512_OPS_H

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu_int.h"

typedef __m512 vf;
#define VW 16

/* Register blocking of decode_simd.h's float32 microkernels. */
/* scores: 8 tokens x 3 row vectors = 24 accumulators + 3 q + 1 broadcast */
#define WIDE_TB 8
#define WIDE_RB 3
/* scores with one row vector (<= VW rows): tokens per block */
#define WIDE_TB1 16
/* output: 4 rows x 4 vectors of d_v = 16 accumulators + 4 v + broadcasts */
#define PV_RB 4
#define PV_EB 4
#define PV_CASES                                                                       \
    PV_CASE(1, 1) PV_CASE(1, 2) PV_CASE(1, 3) PV_CASE(1, 4) PV_CASE(2, 1) PV_CASE(2, 2) \
    PV_CASE(2, 3) PV_CASE(2, 4) PV_CASE(3, 1) PV_CASE(3, 2) PV_CASE(3, 3) PV_CASE(3, 4) \
    PV_CASE(4, 1) PV_CASE(4, 2) PV_CASE(4, 3) PV_CASE(4, 4)

/* P V from bf16 V rows: vectors per block (pairs), rows x vectors cases */
#define PVR_EB 4
#define PVR_CASES                                                                      \
    PVR_CASE(1, 2) PVR_CASE(1, 4) PVR_CASE(2, 2) PVR_CASE(2, 4) PVR_CASE(3, 2)         \
    PVR_CASE(3, 4) PVR_CASE(4, 2) PVR_CASE(4, 4)

static inline vf v_zero(void) { return _mm512_setzero_ps(); }
static inline vf v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void v_store(float *p, vf x) { _mm512_storeu_ps(p, x); }
static inline vf v_set1(float x) { return _mm512_set1_ps(x); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf v_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf v_ceil(vf x)
{
    return _mm512_roundscale_ps(x, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
}
static inline float v_hmax(vf x) { return _mm512_reduce_max_ps(x); }
static inline float v_hsum(vf x) { return _mm512_reduce_add_ps(x); }

static inline vf v_load_bf16(const uint16_t *p)
{
    __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Widen 2 * 16 bf16 pairwise: the even elements to *even, the odd to *odd. */
static inline void v_load_bf16_pair(const uint16_t *p, float *even, float *odd)
{
    __m512i x = _mm512_loadu_si512((const void *)p);
    _mm512_storeu_ps(even, _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)));
    _mm512_storeu_ps(odd, _mm512_castsi512_ps(
                              _mm512_and_si512(x, _mm512_set1_epi32((int)0xffff0000u))));
}

/* Widen 2 * 16 bf16 pairwise into registers. */
static inline void v_bf16_pair(const uint16_t *p, vf *even, vf *odd)
{
    __m512i x = _mm512_loadu_si512((const void *)p);
    *even = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    *odd = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32((int)0xffff0000u)));
}

static inline vf v_load_f16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)p));
}

/* Lanes i >= n become -inf (n may be out of [0, 16]). */
static inline vf v_mask_tail(vf x, int32_t n)
{
    __mmask16 k = n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
    return _mm512_mask_blend_ps(k, _mm512_set1_ps(-INFINITY), x);
}

/* Lanes whose visible length vis[i] is <= t become -inf. */
static inline vf v_mask_vis(vf x, const int32_t *vis, int32_t t)
{
    __mmask16 k = _mm512_cmpgt_epi32_mask(_mm512_loadu_si512(vis), _mm512_set1_epi32(t));
    return _mm512_mask_blend_ps(k, _mm512_set1_ps(-INFINITY), x);
}

static inline vf v_ninf_to_zero(vf x)
{
    __mmask16 k = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ);
    return _mm512_mask_blend_ps(k, x, _mm512_setzero_ps());
}

static inline int v_any_ne1(vf a)
{
    return _mm512_cmp_ps_mask(a, _mm512_set1_ps(1.0f), _CMP_NEQ_UQ) != 0;
}

/* Lanes that are NaN or +-inf become NaN (fpclass: QNaN, +inf, -inf, SNaN). */
static inline vf v_nonfinite_to_nan(vf x)
{
    return _mm512_mask_blend_ps(_mm512_fpclass_ps_mask(x, 0x99), x, _mm512_set1_ps(NAN));
}

/* 1 when some lane is NaN or +-inf. */
static inline int v_any_nonfinite(vf x)
{
    return _mm512_fpclass_ps_mask(x, 0x99) != 0;
}

/* even (x0, x2, ..., x30) and odd (x1, ..., x31) -> natural order: lo = x0..x15,
 * hi = x16..x31; v_deinterleave is its inverse. */
static inline void v_interleave(vf even, vf odd, vf *lo, vf *hi)
{
    const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i ih =
        _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    *lo = _mm512_permutex2var_ps(even, il, odd);
    *hi = _mm512_permutex2var_ps(even, ih, odd);
}

static inline void v_deinterleave(vf lo, vf hi, vf *even, vf *odd)
{
    const __m512i ie =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io =
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    *even = _mm512_permutex2var_ps(lo, ie, hi);
    *odd = _mm512_permutex2var_ps(lo, io, hi);
}

/* Transpose a 16 x 16 block: row i (i < 16) at src + i * ss; column j of it
 * goes to dst + j * ds for j < ncols (unpack ps, unpack pd, two rounds of
 * 128-bit lane shuffles: 48 shuffles for 256 floats). */
#define TR_LD(i) vf r##i = _mm512_loadu_ps(src + (size_t)(i) * ss);
#define TR_PS(a, b) vf t##a = _mm512_unpacklo_ps(r##a, r##b), t##b = _mm512_unpackhi_ps(r##a, r##b);
#define TR_PD(a, b, c, d)                                                                  \
    vf u##a = _mm512_castpd_ps(                                                            \
        _mm512_unpacklo_pd(_mm512_castps_pd(t##a), _mm512_castps_pd(t##c)));               \
    vf u##b = _mm512_castpd_ps(                                                            \
        _mm512_unpackhi_pd(_mm512_castps_pd(t##a), _mm512_castps_pd(t##c)));               \
    vf u##c = _mm512_castpd_ps(                                                            \
        _mm512_unpacklo_pd(_mm512_castps_pd(t##b), _mm512_castps_pd(t##d)));               \
    vf u##d = _mm512_castpd_ps(                                                            \
        _mm512_unpackhi_pd(_mm512_castps_pd(t##b), _mm512_castps_pd(t##d)));
/* u(c) holds columns c, c + 4, c + 8, c + 12 of rows 0-3 (one per 128-bit lane),
 * u(c + 4) of rows 4-7, ...: gather lane k of u(c), u(c+4), u(c+8), u(c+12) */
#define TR_COL(c)                                                                          \
    {                                                                                      \
        vf v0 = _mm512_shuffle_f32x4(u##c, u_##c##_4, 0x88);                               \
        vf v1 = _mm512_shuffle_f32x4(u##c, u_##c##_4, 0xdd);                               \
        vf w0 = _mm512_shuffle_f32x4(u_##c##_8, u_##c##_12, 0x88);                         \
        vf w1 = _mm512_shuffle_f32x4(u_##c##_8, u_##c##_12, 0xdd);                         \
        tr_put(dst, ds, ncols, c, _mm512_shuffle_f32x4(v0, w0, 0x88));                     \
        tr_put(dst, ds, ncols, c + 4, _mm512_shuffle_f32x4(v1, w1, 0x88));                 \
        tr_put(dst, ds, ncols, c + 8, _mm512_shuffle_f32x4(v0, w0, 0xdd));                 \
        tr_put(dst, ds, ncols, c + 12, _mm512_shuffle_f32x4(v1, w1, 0xdd));                \
    }

static inline void tr_put(float *dst, size_t ds, int ncols, int j, vf x)
{
    if (j < ncols)
        _mm512_storeu_ps(dst + (size_t)j * ds, x);
}

static inline void v_transpose_block(const float *src, size_t ss, float *dst, size_t ds,
                                     int ncols)
{
    TR_LD(0) TR_LD(1) TR_LD(2) TR_LD(3) TR_LD(4) TR_LD(5) TR_LD(6) TR_LD(7)
    TR_LD(8) TR_LD(9) TR_LD(10) TR_LD(11) TR_LD(12) TR_LD(13) TR_LD(14) TR_LD(15)
    TR_PS(0, 1) TR_PS(2, 3) TR_PS(4, 5) TR_PS(6, 7)
    TR_PS(8, 9) TR_PS(10, 11) TR_PS(12, 13) TR_PS(14, 15)
    TR_PD(0, 1, 2, 3) TR_PD(4, 5, 6, 7) TR_PD(8, 9, 10, 11) TR_PD(12, 13, 14, 15)
    /* rows 0-3: u0..u3 = columns 0..3 (+4k); rows 4-7: u4..u7; ... */
    vf u_0_4 = u4, u_0_8 = u8, u_0_12 = u12;
    vf u_1_4 = u5, u_1_8 = u9, u_1_12 = u13;
    vf u_2_4 = u6, u_2_8 = u10, u_2_12 = u14;
    vf u_3_4 = u7, u_3_8 = u11, u_3_12 = u15;
    TR_COL(0) TR_COL(1) TR_COL(2) TR_COL(3)
}
#undef TR_LD
#undef TR_PS
#undef TR_PD
#undef TR_COL

/* 2^x for x <= 0 (NaN stays NaN; x < -126 gives 0). */
static inline vf v_exp2(vf x)
{
    __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
    vf xc = _mm512_max_ps(_mm512_set1_ps(-127.0f), x); /* NaN passes (2nd operand) */
    vf n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf f = _mm512_sub_ps(xc, n);
    vf y = _mm512_set1_ps(1.535336188319500e-4f);
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.339887440266574e-3f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.618437357674640e-3f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.550332471162809e-2f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.402264791363012e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.931472028550421e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(y, n));
}

/* Lane i of the result = sum of the lanes of v_i, for 16 vectors: a
 * transpose-add tree (unpack ps, unpack pd, then 128-bit lane shuffles),
 * 15 adds and 30 shuffles for 16 dot products. */
static inline vf pair_ps(vf x, vf y)
{
    return _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
}

static inline vf pair_pd(vf x, vf y)
{
    __m512d a = _mm512_castps_pd(x), b = _mm512_castps_pd(y);
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
}

static inline vf pair_lanes(vf x, vf y)
{
    return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
}

static inline vf v_reduce_lanes(vf v0, vf v1, vf v2, vf v3, vf v4, vf v5, vf v6, vf v7, vf v8,
                                vf v9, vf v10, vf v11, vf v12, vf v13, vf v14, vf v15)
{
    vf c0 = pair_pd(pair_ps(v0, v1), pair_ps(v2, v3));
    vf c1 = pair_pd(pair_ps(v4, v5), pair_ps(v6, v7));
    vf c2 = pair_pd(pair_ps(v8, v9), pair_ps(v10, v11));
    vf c3 = pair_pd(pair_ps(v12, v13), pair_ps(v14, v15));
    return pair_lanes(pair_lanes(c0, c1), pair_lanes(c2, c3));
}

#endif /* ATTND_SIMD_AVX512_OPS_H */
