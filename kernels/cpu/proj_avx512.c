/* The projection kernels for AVX-512: 16 float32 lanes, 32 zmm registers.
 * Only the vector vocabulary is here (the body is proj_simd.h); compiled
 * with the avx512 flags of kernels/CMakeLists.txt and called only where
 * dispatch.c found them. */
#include <immintrin.h>
#include <stdint.h>

typedef __m512 vf;
#define VW 16
#define SFX(name) name##_avx512
#define PROJ_RB 8
#define PROJ_NV 3

static inline vf v_zero(void) { return _mm512_setzero_ps(); }
static inline vf v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void v_store(float *p, vf x) { _mm512_storeu_ps(p, x); }
static inline vf v_set1(float x) { return _mm512_set1_ps(x); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf v_load_bf16(const uint16_t *p)
{
    __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

#include "proj_simd.h"
