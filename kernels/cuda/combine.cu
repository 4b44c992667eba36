/* The LSE combine: merge float32 partial states (o normalized, lse natural
 * log, -inf = empty, NaN = poisoned) into one output row:
 *
 *   lse = M + log sum_i exp(lse_i - M),  M = max_i lse_i
 *   out = sum_i exp(lse_i - lse) o_i     (i in order: deterministic)
 *
 * A NaN part poisons the row (out NaN, lse NaN: attnd_kernels.h's rule);
 * fmaxf drops NaN, so it is tracked apart and never lost to an M of -inf.
 *
 * for the public combine of n_parts states laid out [part][row][d] (the
 * all-reduce of sequence-sharded ranks) and for the split streams of an MLA
 * decode plan: a warp per row, 4 floats a lane. (GQA decodes merge their
 * split streams inside the decode kernel: unit.cuh.) */
#include <cuda_runtime.h>
#include <math.h>

#include "cuda_int.h"
#include "ptx.cuh"

namespace {

/* Merge n parts of one row: part i at po + i * pstride (d floats), lse at
 * pl[i * lstride]. Writes d elements to out (bf16 or float32) and lse. */
__device__ void combine_row(int n, const float *po, int64_t pstride, const float *pl,
                            int64_t lstride, int d, bool out_f32, void *out, float *lse_out)
{
    const int lane = threadIdx.x & 31;
    const float qnan = __int_as_float(0x7fc00000);
    float M = -INFINITY;
    bool poisoned = false;
    for (int i = 0; i < n; i++) {
        const float li = __ldg(pl + i * lstride);
        M = fmaxf(M, li);
        poisoned |= isnan(li);
    }
    float sum = 0.f;
    if (M != -INFINITY && !poisoned)
        for (int i = 0; i < n; i++)
            sum += expf(__ldg(pl + i * lstride) - M);
    const float lse = poisoned ? qnan : M != -INFINITY ? M + logf(sum) : -INFINITY;
    for (int c = 4 * lane; c < d; c += 128) {
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        if (poisoned)
            acc = make_float4(qnan, qnan, qnan, qnan);
        else if (M != -INFINITY)
            for (int i = 0; i < n; i++) {
                const float w = expf(__ldg(pl + i * lstride) - lse);
                const float4 v = __ldg(reinterpret_cast<const float4 *>(po + i * pstride + c));
                acc.x += w * v.x;
                acc.y += w * v.y;
                acc.z += w * v.z;
                acc.w += w * v.w;
            }
        if (out_f32) {
            *reinterpret_cast<float4 *>(static_cast<float *>(out) + c) = acc;
        } else {
            uint2 b = make_uint2(attnd__pack_bf16(acc.x, acc.y), attnd__pack_bf16(acc.z, acc.w));
            *reinterpret_cast<uint2 *>(static_cast<uint16_t *>(out) + c) = b;
        }
    }
    if (lane == 0 && lse_out)
        *lse_out = lse;
}

/* grid (n splits, ceil(rows / 8)), 256 threads: a warp per stream row. */
__global__ void attnd__combine_splits_kernel(const attnd__dec_params p, const int4 *splits)
{
    const int4 sp = splits[blockIdx.x];
    const int32_t g = blockIdx.y * 8 + (threadIdx.x >> 5);
    if (g >= p.rows)
        return;
    const int32_t seq = sp.x / p.sps, s = g / p.hs;
    const int32_t head = (sp.x % p.sps) * p.hs + g % p.hs;
    const int64_t orow = ((int64_t)seq * p.q_tokens + s) * p.n_q_heads + head;
    void *out = p.out_f32 ? static_cast<void *>(static_cast<float *>(p.out) + orow * p.d_v)
                          : static_cast<void *>(static_cast<uint16_t *>(p.out) + orow * p.d_v);
    combine_row(sp.z, p.part_o + ((int64_t)sp.y * p.rows + g) * p.d_v, (int64_t)p.rows * p.d_v,
                p.part_lse + (int64_t)sp.y * p.rows + g, p.rows, p.d_v, p.out_f32 != 0, out,
                p.lse ? p.lse + orow : nullptr);
}

/* grid ceil(n_rows / 8), 256 threads. */
__global__ void attnd__combine_states_kernel(int n_parts, int64_t n_rows, int d, const float *po,
                                             const float *pl, int out_f32, void *out,
                                             float *out_lse)
{
    const int64_t r = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    if (r >= n_rows)
        return;
    void *o = out_f32 ? static_cast<void *>(static_cast<float *>(out) + r * d)
                      : static_cast<void *>(static_cast<uint16_t *>(out) + r * d);
    combine_row(n_parts, po + r * d, n_rows * d, pl + r, n_rows, d, out_f32 != 0, o,
                out_lse ? out_lse + r : nullptr);
}

} /* namespace */

extern "C" int attnd__combine_splits_launch(const attnd__dec_params *p, const int32_t *splits,
                                            int n, void *stream)
{
    if (n == 0)
        return 0;
    dim3 grid((unsigned)n, (unsigned)((p->rows + 7) / 8));
    attnd__combine_splits_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>(
        *p, reinterpret_cast<const int4 *>(splits));
    return (int)cudaGetLastError();
}

extern "C" int attnd__combine_states_launch(int32_t n_parts, int64_t n_rows, int32_t d,
                                            const float *part_o, const float *part_lse,
                                            int out_f32, void *out, float *out_lse, void *stream)
{
    if (n_rows == 0)
        return 0;
    unsigned blocks = (unsigned)((n_rows + 7) / 8);
    attnd__combine_states_kernel<<<blocks, 256, 0, (cudaStream_t)stream>>>(
        n_parts, n_rows, d, part_o, part_lse, out_f32, out, out_lse);
    return (int)cudaGetLastError();
}
