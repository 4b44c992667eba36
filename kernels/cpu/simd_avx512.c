/* The AVX-512 decode path: 16 float32 lanes, 32 vector registers, float32
 * multiply-adds.
 *
 * This file only names the path; the vector vocabulary and the register
 * blocking for 32 zmm registers are simd_avx512_ops.h, the math is
 * decode_simd.h. It is compiled with -mavx512f -mavx512bw -mavx512vl
 * -mavx512dq (see kernels/CMakeLists.txt) and only called after dispatch.c
 * has seen those features in CPUID and the zmm state enabled in XCR0. */
#include "simd_avx512_ops.h"

#define SFX(name) name##_avx512

#include "decode_simd.h"
