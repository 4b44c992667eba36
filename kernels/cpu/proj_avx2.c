/* The projection kernels for AVX2 + FMA: 8 float32 lanes, 16 ymm registers.
 * Only the vector vocabulary is here (the body is proj_simd.h); compiled
 * with -mavx2 -mfma -mf16c and called only where dispatch.c found them. */
#include <immintrin.h>
#include <stdint.h>

typedef __m256 vf;
#define VW 8
#define SFX(name) name##_avx2
#define PROJ_RB 4
#define PROJ_NV 3

static inline vf v_zero(void) { return _mm256_setzero_ps(); }
static inline vf v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void v_store(float *p, vf x) { _mm256_storeu_ps(p, x); }
static inline vf v_set1(float x) { return _mm256_set1_ps(x); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf v_load_bf16(const uint16_t *p)
{
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

#include "proj_simd.h"
