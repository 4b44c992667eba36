/* Page-selection scoring on AVX-512 (16 float32 lanes): the vector
 * vocabulary select_simd.h is written in. Compiled with the avx512 flags
 * (kernels/CMakeLists.txt); called only when dispatch.c chose that path. */
#include <immintrin.h>

#include "cpu_int.h"

typedef __m512 vf;
#define VW 16
#define SFX(name) name##_avx512

static inline vf v_zero(void) { return _mm512_setzero_ps(); }
static inline vf v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void v_store(float *p, vf x) { _mm512_storeu_ps(p, x); }
static inline vf v_set1(float x) { return _mm512_set1_ps(x); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline float v_hsum(vf x) { return _mm512_reduce_add_ps(x); }
/* 16 bf16 widened exactly (a bf16 is the high half of its float32) */
static inline vf v_bf16(const uint16_t *p)
{
    __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

#include "select_simd.h"

/* ---- compact bounds: exact integer sums (select_int.h) ----------------- */

/* acc += the 4-byte dot products of codes c (u8) and query q (s8):
 * vpdpbusd where AVX512-VNNI is there (written as asm: the rest of this
 * file must run without it), else both widened to 16 bits and summed in
 * pairs (vpmaddwd), exactly the same integers. */
static inline __m512i dp_vnni(__m512i acc, __m512i c, __m512i q)
{
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(c), "v"(q));
    return acc;
}
static inline __m512i dp_bw(__m512i acc, __m512i c, __m512i q)
{
    const __m512i z = _mm512_setzero_si512();
    __m512i cl = _mm512_unpacklo_epi8(c, z), ch = _mm512_unpackhi_epi8(c, z);
    __m512i ql = _mm512_srai_epi16(_mm512_unpacklo_epi8(q, q), 8);
    __m512i qh = _mm512_srai_epi16(_mm512_unpackhi_epi8(q, q), 8);
    return _mm512_add_epi32(acc, _mm512_add_epi32(_mm512_madd_epi16(cl, ql),
                                                  _mm512_madd_epi16(ch, qh)));
}

/* The four sums of a0..a3, in one vector. */
static inline __m128i hsum4(__m512i a0, __m512i a1, __m512i a2, __m512i a3)
{
    __m512i x = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
    __m512i y = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
    __m512i z = _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
    __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(z), _mm512_extracti64x4_epi64(z, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* Rows [r0, r0 + nr) of one page: codes c (n bytes), int8 rows q8 (width
 * w, zero past n), integer sums into dot. */
#define UB8_ROW(j)                                                                    \
    if (nr > j)                                                                       \
        a##j = VNNI ? dp_vnni(a##j, cv, _mm512_loadu_si512(q + (size_t)j * w + i))     \
                    : dp_bw(a##j, cv, _mm512_loadu_si512(q + (size_t)j * w + i));
static inline __attribute__((always_inline)) void ub8_block(const uint8_t *c, int32_t n,
                                                            const int8_t *q, size_t w,
                                                            int32_t *dot, const int nr,
                                                            const int VNNI)
{
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int32_t i = 0; i < n; i += 64) {
        const __mmask64 m = n - i >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (n - i)) - 1;
        const __m512i cv = _mm512_maskz_loadu_epi8(m, c + i);
        UB8_ROW(0)
        UB8_ROW(1)
        UB8_ROW(2)
        UB8_ROW(3)
    }
    _mm_storeu_si128((__m128i *)(void *)dot, hsum4(a0, a1, a2, a3));
}
#undef UB8_ROW

static inline __attribute__((always_inline)) void
ub8_run(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl, int32_t kvh,
        int32_t p0, int32_t p1, const float *qpk, float *ub, int32_t row0, int32_t rows,
        const int VNNI)
{
    const int32_t R = attnd__select_head_rows(b), n = 2 * b->kv->d_k;
    const size_t w = attnd__select_q8_width(b->kv->d_k);
    const size_t row8 = attnd_kernel_kv_bounds8_row(b->kv);
    const int8_t *q8 = attnd__select_q8_rows((float *)(uintptr_t)qpk, R);
    int32_t dot[4];
    for (int32_t p = p0; p < p1; p++) {
        const uint8_t *brow = b->bounds8 + attnd_kernel_kv_bounds8_at(b->kv, b->bounds_pages, kvh,
                                                                      b->cand_idx[sl->cand0 + p]);
        if (p + SEL_AHEAD < p1) {
            const char *nx = (const char *)b->bounds8 +
                             attnd_kernel_kv_bounds8_at(b->kv, b->bounds_pages, kvh,
                                                        b->cand_idx[sl->cand0 + p + SEL_AHEAD]);
            for (size_t off = 0; off < row8; off += 64)
                __builtin_prefetch(nx + off);
        }
        const uint8_t *c = brow + 2 * sizeof(float);
        float *dst = ub + (size_t)p * rows + row0;
        for (int32_t r0 = 0; r0 < R; r0 += 4) {
            const int32_t nr = R - r0 < 4 ? R - r0 : 4;
            const int8_t *q = q8 + (size_t)r0 * w;
            if (nr == 4)
                ub8_block(c, n, q, w, dot, 4, VNNI);
            else if (nr == 3)
                ub8_block(c, n, q, w, dot, 3, VNNI);
            else if (nr == 2)
                ub8_block(c, n, q, w, dot, 2, VNNI);
            else
                ub8_block(c, n, q, w, dot, 1, VNNI);
            for (int32_t j = 0; j < nr; j++)
                dst[r0 + j] = attnd__select_ub8_value(brow, qpk, R, r0 + j, dot[j]);
        }
    }
}

void attnd__select_ub8_avx512(const attnd_kernel_select_batch *b,
                              const attnd_kernel_select_list *sl, int32_t kvh, int32_t p0,
                              int32_t p1, const float *qpk, float *ub, int32_t row0, int32_t rows)
{
    if (__builtin_cpu_supports("avx512vnni"))
        ub8_run(b, sl, kvh, p0, p1, qpk, ub, row0, rows, 1);
    else
        ub8_run(b, sl, kvh, p0, p1, qpk, ub, row0, rows, 0);
}
