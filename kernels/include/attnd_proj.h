/* attnd CPU kernels: the per-head projections of MLA's narrow wire.
 *
 * A serving stack holds per-head q_nope [d_nope] and q_rope [d_rope] before
 * attention and wants per-head values [d_v] after it. The worker absorbs
 * and up-projects where the KV is (ARCHITECTURE.md, "MLA, two wire forms"):
 *
 *   absorb      q_c[r][h] = q_nope[r][h] . W_UK[h]    [d_nope] x [d_nope][d_c]
 *               (then q_rope copied through behind it: the absorbed query
 *               [d_c + d_rope] the MLA kernel reads)
 *   up-project  v[r][h]   = o_c[r][h] . W_UV[h]       [d_c] x [d_c][d_v]
 *
 * Both are one operation, for rows r < rows and heads h < heads:
 *
 *   dst[r][h][j]     = sum_{k < K} src[r][h][k] * w[h][k][j]     j < J
 *   dst[r][h][J + e] = src[r][h][K + e]                           e < pass
 *
 * src of any dtype (bf16, f16, f32) at element strides src_row (between
 * rows) and src_head (between heads); w [heads][K][J] contiguous, float32
 * or bf16 (widened exactly); dst float32 at strides dst_row / dst_head.
 * Products and sums are float32, k in increasing order for every element
 * on every path (the SIMD paths keep one accumulator per output element):
 * the error against a float64 reference is float32 rounding over K terms.
 * Non-finite values propagate as IEEE arithmetic makes them (the service
 * refuses them on the wire).
 *
 * Speed (what the narrow wire adds to a call): 2 x d_nope x d_c MACs per
 * head and query token at DeepSeek-V3 (128 x 512 each way), and at small
 * batches the weights' bytes (W_UK and W_UV of 128 heads: 32 MB in bf16,
 * 64 MB in float32, read once per call whatever the batch). The SIMD paths
 * block 4 rows x 4 vectors of columns (16 accumulators) so that each
 * weight vector loaded serves 4 rows; figures in kernels/BENCHMARKS.md.
 */
#ifndef ATTND_PROJ_H
#define ATTND_PROJ_H

#include <stddef.h>
#include <stdint.h>

#include "attnd_kernels.h"

typedef struct attnd_kernel_proj {
    int32_t rows, heads;
    int32_t k, j;      /* the product's inner and output widths */
    int32_t pass;      /* src elements after the first k copied through */
    attnd_dtype src_dtype;
    const void *src;
    int64_t src_row, src_head; /* element strides */
    attnd_dtype w_dtype;       /* F32 or BF16 */
    const void *w;             /* [heads][k][j] */
    float *dst;
    int64_t dst_row, dst_head; /* element strides */
} attnd_kernel_proj;

/* INVALID_ARGUMENT naming what is wrong (sizes below 1, a bad dtype, NULL
 * pointers) or OK. The functions below assume a checked p. */
attnd_status attnd_kernel_proj_check(const attnd_kernel_proj *p, attnd_error *err);

/* Floats of scratch a call needs per thread: every row of a head converted
 * to float32; 0 for float32 src at float alignment (read in place), so
 * such a call on a pool allocates nothing and cannot fail (float32 src at
 * another address, as wire data may sit, is copied like other dtypes). */
size_t attnd_kernel_proj_work_floats(const attnd_kernel_proj *p);

/* Heads [h0, h1) of p on the calling thread with path `path` (scalar,
 * avx2, avx512 and any later x86 path: the widest of those this CPU
 * runs), work holding attnd_kernel_proj_work_floats(p) floats. For tests and
 * benchmarks that compare paths. */
void attnd_kernel_proj_range(attnd_kernel_path path, const attnd_kernel_proj *p, int32_t h0,
                             int32_t h1, float *work);

/* All of p on the pool's threads (heads split evenly among them; the
 * pool's per-thread scratch holds the converted rows) with the current
 * kernel path. RESOURCE_EXHAUSTED when the scratch cannot grow (nothing
 * computed). */
attnd_status attnd_kernel_proj_parallel(attnd_kernel_pool *pool, const attnd_kernel_proj *p,
                                        attnd_error *err);

#endif /* ATTND_PROJ_H */
