/* Page-selection scoring on AVX2 + FMA (8 float32 lanes): the vector
 * vocabulary select_simd.h is written in, and the integer scoring of
 * compact bounds (select_int.h). Compiled with -mavx2 -mfma
 * (kernels/CMakeLists.txt); called only when dispatch.c chose that path. */
#include <immintrin.h>

#include "cpu_int.h"

typedef __m256 vf;
#define VW 8
#define SFX(name) name##_avx2

static inline vf v_zero(void) { return _mm256_setzero_ps(); }
static inline vf v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void v_store(float *p, vf x) { _mm256_storeu_ps(p, x); }
static inline vf v_set1(float x) { return _mm256_set1_ps(x); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline float v_hsum(vf x)
{
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}
/* 8 bf16 widened exactly */
static inline vf v_bf16(const uint16_t *p)
{
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

#include "select_simd.h"

/* Compact bounds (select_int.h): the integer sums with 16-bit products
 * summed in pairs (vpmaddwd), 16 codes a step, the tail scalar. */
static int32_t ub8_dot(const uint8_t *c, const int8_t *q, int32_t n)
{
    __m256i a = _mm256_setzero_si256();
    int32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i c16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(c + i)));
        __m256i q16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(q + i)));
        a = _mm256_add_epi32(a, _mm256_madd_epi16(c16, q16));
    }
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    int32_t dot = _mm_cvtsi128_si32(h);
    for (; i < n; i++)
        dot += (int32_t)c[i] * (int32_t)q[i];
    return dot;
}

void attnd__select_ub8_avx2(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                            int32_t kvh, int32_t p0, int32_t p1, const float *qpk, float *ub,
                            int32_t row0, int32_t rows)
{
    const int32_t R = attnd__select_head_rows(b), n = 2 * b->kv->d_k;
    const size_t w = attnd__select_q8_width(b->kv->d_k);
    const int8_t *q8 = attnd__select_q8_rows((float *)(uintptr_t)qpk, R);
    for (int32_t p = p0; p < p1; p++) {
        const uint8_t *brow = b->bounds8 + attnd_kernel_kv_bounds8_at(b->kv, b->bounds_pages, kvh,
                                                                      b->cand_idx[sl->cand0 + p]);
        for (int32_t r = 0; r < R; r++)
            ub[(size_t)p * rows + row0 + r] = attnd__select_ub8_value(
                    brow, qpk, R, r, ub8_dot(brow + 2 * sizeof(float), q8 + (size_t)r * w, n));
    }
}
