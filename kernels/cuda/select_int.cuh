/* Page selection on the GPU, what its kernels share (select.cu, select_mma.cu):
 * the launch's parameters and the scratch layout of kernels/cpu/select.c
 * as the device reads it. Internal to kernels/cuda. */
#ifndef ATTND_CUDA_SELECT_INT_CUH
#define ATTND_CUDA_SELECT_INT_CUH

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "../cpu/select_pack.h"
#include "attnd_kernels.h"

namespace attnd_sel {

struct sel_params {
    const attnd_kernel_select_list *lists;
    int32_t n_lists, q_tokens, hq, hkv, lg, dk;
    int32_t agg;   /* heads summed into one row (1: a row per head) */
    int32_t qrows; /* query rows per pass in score_kernel (<= its RT) */
    int32_t split; /* score_kernel's CTAs per scoring unit */
    const uint16_t *q, *bounds;
    int64_t bounds_pages;
    const int32_t *cand;
    int32_t *sel_pages, *sel_pos;
    float *work;
    const int32_t *unit_list; /* or NULL */
    const uint8_t *bounds8;   /* or NULL: compact bounds, integer scoring */
    int64_t b8_row;           /* bytes of a compact row */
};

__device__ __forceinline__ float bf16f(uint32_t h)
{
    return __uint_as_float(h << 16);
}

/* Units of a list to score: attnd_kernel_select_list_units on the device. */
__device__ __forceinline__ int chunks_of(const attnd_kernel_select_list &sl)
{
    if (sl.keep >= sl.n_cand || sl.keep <= sl.n_head + sl.n_tail)
        return 0;
    return (sl.n_cand + ATTND_KERNEL_SELECT_CHUNK - 1) / ATTND_KERNEL_SELECT_CHUNK;
}

/* Rows per KV head (R) and KV heads per list (hpg). */
__device__ __forceinline__ int32_t rows_per_head(const sel_params &p)
{
    return p.q_tokens * (p.hq / p.hkv / p.agg);
}

/* Element d of query row r (of R per KV head) of KV head kvh of list sl:
 * the row's run of agg heads summed in order, in float32. */
__device__ __forceinline__ float row_elem(const sel_params &p, const attnd_kernel_select_list &sl,
                                          int32_t kvh, int32_t r, int32_t d)
{
    const int32_t G = p.hq / p.hkv, runs = G / p.agg;
    const int32_t s = r / runs, g = r % runs * p.agg;
    const uint16_t *q =
            p.q + (((int64_t)sl.seq * p.q_tokens + s) * p.hq + (int64_t)kvh * G + g) * p.dk + d;
    float x = bf16f(__ldg(q));
    for (int32_t j = 1; j < p.agg; j++)
        x += bf16f(__ldg(q + (int64_t)j * p.dk));
    return x;
}

/* A list's packed-query room (select.c's list_q) and its ub (list_ub). */
__device__ __forceinline__ float *qs_of(const sel_params &p, const attnd_kernel_select_list &sl)
{
    /* 16-byte aligned (p.work is): the room is hpg * 2 * R' * dkp floats,
     * more than the hpg * R * dk + 3 used */
    return p.work + (sl.work0 + 3) / 4 * 4;
}

__device__ __forceinline__ float *ub_of(const sel_params &p, const attnd_kernel_select_list &sl)
{
    const int32_t hpg = p.hkv / p.lg, R = rows_per_head(p);
    const int64_t rp = (R + 15) / 16 * 16, dkp = (p.dk + 15) / 16 * 16;
    const int64_t pack = 2 * (R >= 32 ? rp : (int64_t)R) * dkp;
    return p.work + sl.work0 + (int64_t)hpg * pack;
}

/* Each row's best over every candidate (fkey images), in the chunk maxima's
 * room: qsum_kernel sets them to -inf, score_kernel folds its pages in. */
__device__ __forceinline__ uint32_t *best_of(const sel_params &p, const attnd_kernel_select_list &sl)
{
    const int32_t rows = rows_per_head(p) * (p.hkv / p.lg);
    return reinterpret_cast<uint32_t *>(ub_of(p, sl) + (int64_t)sl.n_cand * rows);
}

__device__ __forceinline__ int list_of_chunk(const sel_params &p, int k)
{
    int lo = 0, hi = p.n_lists - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (p.lists[mid].chunk0 <= k)
            lo = mid;
        else
            hi = mid - 1;
    }
    while (chunks_of(p.lists[lo]) <= k - p.lists[lo].chunk0)
        lo++;
    return lo;
}

/* Order-preserving image of a float (NaN excluded by the callers). */
__device__ __forceinline__ uint32_t fkey(float v)
{
    const uint32_t u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float fkey_inv(uint32_t k)
{
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* A score's image: NaN ranks as +inf. */
__device__ __forceinline__ uint32_t key_of(float v)
{
    return fkey(isnan(v) ? INFINITY : v);
}

/* Fold a warp's best per row (lane l % LPP's top, row l % LPP, over the
 * warp's page slots) into best[0 .. nr) (fkey images; NaN ignored, as the
 * CPU's maxima). Every lane calls it. */
template <int LPP>
__device__ __forceinline__ void best_fold(float top, int lane, int32_t nr, uint32_t *best)
{
    for (int o = LPP; o < 32; o *= 2) /* the lanes of the same row in other slots */
        top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, o));
    if (lane < nr && top > -INFINITY)
        atomicMax(best + lane, fkey(top));
}

/* The MLA-like scoring on tensor cores (select_mma.cu): launches its two
 * kernels in place of qsum_kernel and score_kernel and returns true when
 * the shape is one it takes (one KV head a list, R <= 8 rows, d_k a
 * multiple of 32 up to MMA_MAX_DK), else launches nothing. */
constexpr int MMA_MAX_DK = 736;
bool mma_launch(sel_params p, int32_t R, int32_t n_chunks, cudaStream_t stream);

} // namespace attnd_sel

#endif /* ATTND_CUDA_SELECT_INT_CUH */
