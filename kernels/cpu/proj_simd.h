/* The projection kernels' SIMD body (attnd_proj.h), written once in the
 * vector vocabulary of the including file (proj_avx2.c, proj_avx512.c):
 * vf, VW lanes, SFX(name), v_zero, v_load, v_store, v_set1, v_fma,
 * v_load_bf16, and the register blocking PROJ_RB rows x PROJ_NV vectors.
 *
 * For one head, every row is converted to float32 first (once, into the
 * thread's scratch; aligned float32 rows are read in place), then the columns go
 * in blocks of PROJ_NV vectors (then single vectors, then a scalar tail
 * for J % VW), and within a column block the rows in blocks of nr <=
 * PROJ_RB: a block keeps nr x nv accumulators in registers and walks k =
 * 0 .. K-1 in order, each weight vector loaded once serving nr rows. The
 * weights of a column block (K x PROJ_NV VW) are read again for every row
 * block, from L1 or L2. At one row the loop streams the weights from
 * memory, which bounds a small batch; at 32 rows (DeepSeek-V3 B=32) it is
 * FMA-bound: measured on the 2-vCPU dev VM (attnd-proj-bench, both
 * products, bf16 weights, one thread) 4 x 4 gave 74, 6 x 4 78, 8 x 2 71,
 * 8 x 3 79 GFLOP per CPU-second, against an FMA peak of 118-123 GFLOP/s
 * measured beside it by attnd-kbench; AVX-512 uses 8 x 3 (24 of 32 zmm
 * for accumulators), AVX2 4 x 3 (12 of 16 ymm). */
#include <string.h>

#include "attnd_dtype.h"
#include "proj_int.h"

#define PROJ_ALWAYS_INLINE static inline __attribute__((always_inline))

/* acc[r][v] = sum_k a[r][k] * w[k][c0 + v VW + lane]; then dst rows. */
PROJ_ALWAYS_INLINE void SFX(proj_block)(const float *a, int64_t lda, const void *w, int w_bf16,
                                        size_t K, size_t J, size_t c0, float *dst,
                                        int64_t ldd, const int nr, const int nv)
{
    vf acc[8][4];
#pragma GCC unroll 8
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            acc[r][v] = v_zero();
    for (size_t k = 0; k < K; k++) {
        vf wv[4];
        if (w_bf16) {
            const uint16_t *wr = (const uint16_t *)w + k * J + c0;
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                wv[v] = v_load_bf16(wr + (size_t)v * VW);
        } else {
            const float *wr = (const float *)w + k * J + c0;
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                wv[v] = v_load(wr + (size_t)v * VW);
        }
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++) {
            vf x = v_set1(a[(size_t)r * (size_t)lda + k]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[r][v] = v_fma(x, wv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            v_store(dst + (size_t)r * (size_t)ldd + c0 + (size_t)v * VW, acc[r][v]);
}

/* One function per (rows, vectors): constants let the compiler keep acc
 * in registers; the weight dtype is a run-time branch hoisted out of k. */
#define PROJ_CASE(NR, NV, NAME)                                                              \
    static void NAME(const float *a, int64_t lda, const void *w, int w_bf16, size_t K,       \
                     size_t J, size_t c0, float *d, int64_t ldd)                             \
    {                                                                                        \
        if (w_bf16)                                                                          \
            SFX(proj_block)(a, lda, w, 1, K, J, c0, d, ldd, NR, NV);                         \
        else                                                                                 \
            SFX(proj_block)(a, lda, w, 0, K, J, c0, d, ldd, NR, NV);                         \
    }
PROJ_CASE(1, PROJ_NV, SFX(proj_w1)) PROJ_CASE(2, PROJ_NV, SFX(proj_w2))
PROJ_CASE(3, PROJ_NV, SFX(proj_w3)) PROJ_CASE(4, PROJ_NV, SFX(proj_w4))
PROJ_CASE(1, 1, SFX(proj_v1)) PROJ_CASE(2, 1, SFX(proj_v2))
PROJ_CASE(3, 1, SFX(proj_v3)) PROJ_CASE(4, 1, SFX(proj_v4))
#if PROJ_RB > 4
PROJ_CASE(5, PROJ_NV, SFX(proj_w5)) PROJ_CASE(6, PROJ_NV, SFX(proj_w6))
PROJ_CASE(7, PROJ_NV, SFX(proj_w7)) PROJ_CASE(8, PROJ_NV, SFX(proj_w8))
PROJ_CASE(5, 1, SFX(proj_v5)) PROJ_CASE(6, 1, SFX(proj_v6))
PROJ_CASE(7, 1, SFX(proj_v7)) PROJ_CASE(8, 1, SFX(proj_v8))
#endif
#undef PROJ_CASE

typedef void (*SFX(proj_block_fn))(const float *, int64_t, const void *, int, size_t, size_t,
                                   size_t, float *, int64_t);

static const SFX(proj_block_fn) SFX(proj_wide)[PROJ_RB] = {
    SFX(proj_w1), SFX(proj_w2), SFX(proj_w3), SFX(proj_w4),
#if PROJ_RB > 4
    SFX(proj_w5), SFX(proj_w6), SFX(proj_w7), SFX(proj_w8),
#endif
};
static const SFX(proj_block_fn) SFX(proj_one)[PROJ_RB] = {
    SFX(proj_v1), SFX(proj_v2), SFX(proj_v3), SFX(proj_v4),
#if PROJ_RB > 4
    SFX(proj_v5), SFX(proj_v6), SFX(proj_v7), SFX(proj_v8),
#endif
};

/* Columns [c0, J) that do not fill a vector: scalar, same k order. */
static void SFX(proj_tail)(const float *a, int64_t lda, const void *w, int w_bf16, size_t K,
                           size_t J, size_t c0, float *dst, int64_t ldd, int32_t nr)
{
    for (int32_t r = 0; r < nr; r++)
        for (size_t j = c0; j < J; j++) {
            float acc = 0.0f;
            for (size_t k = 0; k < K; k++) {
                float wk = w_bf16 ? attnd_dtype_bf16_to_f32(((const uint16_t *)w)[k * J + j])
                                  : ((const float *)w)[k * J + j];
                acc += a[(size_t)r * (size_t)lda + k] * wk;
            }
            dst[(size_t)r * (size_t)ldd + j] = acc;
        }
}

/* Columns [c, c + width) of every row, through fn[nr - 1] per row block. */
static void SFX(proj_cols)(const SFX(proj_block_fn) *fn, const attnd_kernel_proj *p, const float *a,
                           int64_t lda, const void *w, int w_bf16, size_t c, float *d)
{
    for (int32_t r0 = 0; r0 < p->rows; r0 += PROJ_RB) {
        const int nr = p->rows - r0 < PROJ_RB ? p->rows - r0 : PROJ_RB;
        fn[nr - 1](a + (size_t)r0 * (size_t)lda, lda, w, w_bf16, (size_t)p->k, (size_t)p->j, c,
                   d + (size_t)r0 * (size_t)p->dst_row, p->dst_row);
    }
}

void SFX(attnd__proj_heads)(const attnd_kernel_proj *p, int32_t h0, int32_t h1, float *work)
{
    const size_t K = (size_t)p->k, J = (size_t)p->j, es = attnd_dtype_size(p->w_dtype);
    const int w_bf16 = p->w_dtype == ATTND_DTYPE_BF16;

    for (int32_t h = h0; h < h1; h++) {
        const void *w = (const char *)p->w + (size_t)h * K * J * es;
        int64_t lda;
        const float *a = attnd__proj_rows(p, h, 0, p->rows, work, &lda);
        float *d = p->dst + (size_t)h * (size_t)p->dst_head;
        size_t c = 0;
        for (; c + PROJ_NV * VW <= J; c += PROJ_NV * VW)
            SFX(proj_cols)(SFX(proj_wide), p, a, lda, w, w_bf16, c, d);
        for (; c + VW <= J; c += VW)
            SFX(proj_cols)(SFX(proj_one), p, a, lda, w, w_bf16, c, d);
        if (c < J)
            SFX(proj_tail)(a, lda, w, w_bf16, K, J, c, d, p->dst_row, p->rows);
        attnd__proj_pass(p, h, 0, p->rows);
    }
}
