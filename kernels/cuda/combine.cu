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
 * decode plan: a warp per row (per row and 128 columns for the plan's
 * splits), 4 floats a lane. (GQA decodes merge their
 * split streams inside the decode kernel: unit.cuh.) */
#include <cuda_runtime.h>
#include <math.h>

#include "cuda_int.h"
#include "ptx.cuh"

namespace {

/* Merge n parts of one row: part i at po + i * pstride (d floats), lse at
 * pl[i * lstride]. Writes columns [c0, d) in steps of cstep (a warp's 128
 * at a time, 4 a lane; d % 4 == 0) to out (bf16 or float32), and lse
 * (lse_out not NULL). Loops are warp-uniform (shuffles in them). The lse
 * figures are reduced across the lanes (a fixed order: deterministic),
 * and the parts are summed in order, eight loads in flight: one part at
 * a time, each load waited for, made the MLA decode's combine ~35 us of a
 * 4-sequence call on an H100 (64 CTAs of 8 warps, 16 parts in turn). */
__device__ void combine_row(int n, const float *po, int64_t pstride, const float *pl,
                            int64_t lstride, int d, int c0, int cstep, bool out_f32, void *out,
                            float *lse_out)
{
    const unsigned full = 0xffffffffu;
    const int lane = threadIdx.x & 31;
    const float qnan = __int_as_float(0x7fc00000);
    float M = -INFINITY;
    bool poisoned = false;
    for (int i = lane; i < n; i += 32) {
        const float li = __ldg(pl + i * lstride);
        M = fmaxf(M, li);
        poisoned |= isnan(li);
    }
    poisoned = __any_sync(full, poisoned);
#pragma unroll
    for (int o = 16; o > 0; o /= 2)
        M = fmaxf(M, __shfl_xor_sync(full, M, o));
    float sum = 0.f;
    if (M != -INFINITY && !poisoned) {
        for (int i = lane; i < n; i += 32)
            sum += expf(__ldg(pl + i * lstride) - M);
#pragma unroll
        for (int o = 16; o > 0; o /= 2)
            sum += __shfl_xor_sync(full, sum, o);
    }
    const float lse = poisoned ? qnan : M != -INFINITY ? M + logf(sum) : -INFINITY;
    const bool live = !poisoned && M != -INFINITY;
    for (int cc = c0; cc < d; cc += cstep) {
        const int c = cc + 4 * lane;
        const bool mine = c < d;
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        if (poisoned)
            acc = make_float4(qnan, qnan, qnan, qnan);
        for (int i0 = 0; live && i0 < n; i0 += 32) {
            const int m = min(32, n - i0);
            const float wl = lane < m ? expf(__ldg(pl + (i0 + lane) * lstride) - lse) : 0.f;
            for (int j = 0; j < m; j += 8) {
                float4 v[8];
#pragma unroll
                for (int u = 0; u < 8; u++)
                    if (mine && j + u < m)
                        v[u] = __ldg(
                            reinterpret_cast<const float4 *>(po + (i0 + j + u) * pstride + c));
#pragma unroll
                for (int u = 0; u < 8; u++)
                    if (j + u < m) {
                        const float w = __shfl_sync(full, wl, j + u);
                        if (mine) {
                            acc.x += w * v[u].x;
                            acc.y += w * v[u].y;
                            acc.z += w * v[u].z;
                            acc.w += w * v[u].w;
                        }
                    }
            }
        }
        if (!mine)
            continue;
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

/* grid (n splits, ceil(rows / 8), column slices), 256 threads: a warp per
 * stream row and slice of 128 columns (slice 0 writes the lse). */
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
                p.part_lse + (int64_t)sp.y * p.rows + g, p.rows, p.d_v, 128 * (int)blockIdx.z,
                128 * (int)gridDim.z, p.out_f32 != 0, out,
                p.lse && blockIdx.z == 0 ? p.lse + orow : nullptr);
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
    combine_row(n_parts, po + r * d, n_rows * d, pl + r, n_rows, d, 0, 128, out_f32 != 0, o,
                out_lse ? out_lse + r : nullptr);
}

} /* namespace */

extern "C" int attnd__combine_splits_launch(const attnd__dec_params *p, const int32_t *splits,
                                            int n, void *stream)
{
    if (n == 0)
        return 0;
    /* a slice of 128 columns per warp: enough CTAs to fill the GPU at
     * small batches (MLA's d_v 512: four) */
    dim3 grid((unsigned)n, (unsigned)((p->rows + 7) / 8), (unsigned)((p->d_v + 127) / 128));
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
