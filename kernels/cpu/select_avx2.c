/* Page-selection scoring on AVX2 + FMA (8 float32 lanes): the vector
 * vocabulary select_simd.h is written in. Compiled with -mavx2 -mfma
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
