/* The AVX-512 BF16 decode path ("avx512bf16"): the AVX-512 path with its two
 * small GEMMs (scores Q K^T and outputs P V) on vdpbf16ps, two bf16
 * multiply-adds per float32 lane. The math is decode_bf16.h, included by
 * decode_simd.h because DPBF16 is set; batches it does not take (KV that is
 * not bf16, d_v not a multiple of 32) run the avx512 path's float32 unit,
 * compiled here again.
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16
 * (kernels/CMakeLists.txt) and only called after dispatch.c has seen those
 * features in CPUID and the zmm state enabled in XCR0. Whether it is the
 * default is decided by dispatch.c's one-time calibration: on hosts whose
 * vdpbf16ps is slower than two FMAs (measured: this Intel VM) it is not. */
#include "simd_avx512_ops.h"

#define SFX(name) name##_avx512bf16
#define DPBF16 1

/* Put a chunk of 32 outputs of the V-pair order back in natural order. */
static inline void v_unpair(vf lo, vf hi, vf *a, vf *b)
{
    /* lo holds elements 0-3, 8-11, 16-19, 24-27 of a chunk of 32, hi 4-7,
     * 12-15, 20-23, 28-31 (unpacklo / unpackhi_epi16 of token pairs) */
    const __m512i ia = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i ib =
        _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    *a = _mm512_permutex2var_ps(lo, ia, hi);
    *b = _mm512_permutex2var_ps(lo, ib, hi);
}

#include "decode_simd.h"
