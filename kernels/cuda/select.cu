/* Page selection on the GPU (attnd_cuda.h, "page selection"): the same
 * math and the same result as kernels/cpu/select.c, up to the order of the
 * float32 sums.
 *
 * Three kernels on the context's stream:
 * - qsum_kernel, one CTA per list: each query row (a head, or the sum of a
 *   run of head_agg heads, in order) once, in float32, into the list's
 *   packed-query room of the scratch (which the CPU packs and the GPU
 *   otherwise does not use): [heads of the list][R][d_k].
 * - score_kernel, SCORE_SPLIT CTAs per scoring unit of
 *   ATTND_KERNEL_SELECT_CHUNK candidates: up to SCORE_ROWS query rows in
 *   shared memory, a warp per candidate page reads its bounds once (8-byte
 *   loads when d_k allows) and keeps a sum per row in registers:
 *   ub[p][row] = sum_d q_d * (q_d > 0 ? hi_d : lo_d).
 * - select_kernel, one CTA of SEL_THREADS per list: each row's best (the
 *   max over every candidate, NaN ignored as the CPU's fmaxf does) by
 *   column slices and a shared atomicMax, each middle candidate's score
 *   (max over rows of ub - best, NaN as +inf) as the order-preserving
 *   integer image of the float, the threshold (the want-th largest) by a
 *   radix selection of four 8-bit digits over a shared histogram, and the
 *   kept candidates written in order by block-wide scans (the mandatory
 *   ones, those above the threshold, and the earliest of those equal).
 *
 * The kernel this replaced (a warp per (page, row) pair re-reading the
 * query, and one thread per row taking its maximum serially over all
 * candidates) took 4.1 ms of a 4.4 ms sparse MLA call on an H200
 * (kernels/BENCHMARKS.md). The scratch layout is the CPU's (select.c):
 * packed queries, ub [n_cand][rows], chunk maxima [chunks][rows] (unused
 * here), scores [n_cand] (here their integer images). Not run in this
 * repository's CI (no GPU): tests/gpu/test_cuda.c compares it with the CPU
 * selection. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "ctx_int.h"

namespace {

constexpr int QSUM_THREADS = 256;
constexpr int SCORE_THREADS = 256;
constexpr int SCORE_SPLIT = 2; /* CTAs per scoring unit */
constexpr int SCORE_ROWS = 16; /* query rows per pass over a page's bounds */
constexpr int SCORE_SMEM = 48 * 1024;
constexpr int SEL_THREADS = 1024;
constexpr int SEL_MAX_ROWS = 8192; /* each row's best in shared memory (32 KiB) */

static_assert(ATTND_KERNEL_SELECT_CHUNK % SCORE_SPLIT == 0, "split units evenly");
static_assert(SEL_THREADS % 32 == 0 && SEL_THREADS / 32 <= 32, "one warp scans the warps");

struct sel_params {
    const attnd_kernel_select_list *lists;
    int32_t n_lists, q_tokens, hq, hkv, lg, dk;
    int32_t agg;   /* heads summed into one row (1: a row per head) */
    int32_t qrows; /* query rows per pass in score_kernel (<= SCORE_ROWS) */
    const uint16_t *q, *bounds;
    int64_t bounds_pages;
    const int32_t *cand;
    int32_t *sel_pages, *sel_pos;
    float *work;
};

__device__ __forceinline__ float bf16f(uint32_t h)
{
    return __uint_as_float(h << 16);
}

/* Units of a list to score: none when its mandatory pages fill the budget
 * or every candidate is kept (select.c's list_chunks). */
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

/* A list's packed-query room (select.c's list_q) and its ub (list_ub). */
__device__ __forceinline__ float *qs_of(const sel_params &p, const attnd_kernel_select_list &sl)
{
    return p.work + sl.work0;
}

__device__ __forceinline__ float *ub_of(const sel_params &p, const attnd_kernel_select_list &sl)
{
    const int32_t hpg = p.hkv / p.lg, R = rows_per_head(p);
    const int64_t rp = (R + 15) / 16 * 16, dkp = (p.dk + 15) / 16 * 16;
    const int64_t pack = 2 * (R >= 32 ? rp : (int64_t)R) * dkp;
    return p.work + sl.work0 + (int64_t)hpg * pack;
}

__device__ int list_of_chunk(const sel_params &p, int k)
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

__global__ void qsum_kernel(sel_params p)
{
    const attnd_kernel_select_list sl = p.lists[blockIdx.x];
    if (!chunks_of(sl))
        return;
    const int32_t hpg = p.hkv / p.lg, G = p.hq / p.hkv, runs = G / p.agg, R = rows_per_head(p);
    float *qs = qs_of(p, sl);
    const int64_t n = (int64_t)hpg * R * p.dk;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const int32_t d = (int32_t)(i % p.dk), r = (int32_t)(i / p.dk);
        const int32_t hh = r / R, rr = r % R, kvh = sl.group * hpg + hh;
        const int32_t s = rr / runs, g = rr % runs * p.agg;
        const uint16_t *q =
            p.q + (((int64_t)sl.seq * p.q_tokens + s) * p.hq + (int64_t)kvh * G + g) * p.dk + d;
        float x = bf16f(__ldg(q));
        for (int32_t j = 1; j < p.agg; j++) /* a run of heads: their sum, in order */
            x += bf16f(__ldg(q + (int64_t)j * p.dk));
        qs[i] = x;
    }
}

/* acc[j] += x * (x > 0 ? hi : lo) for rows j < nr of the tile, d_k element
 * d of the page whose bounds are lo, hi. */
__device__ __forceinline__ void fold(float (&acc)[SCORE_ROWS], const float *tile, int32_t dk,
                                     int32_t nr, int32_t d, float lo, float hi)
{
#pragma unroll
    for (int j = 0; j < SCORE_ROWS; j++)
        if (j < nr) {
            const float x = tile[j * dk + d];
            acc[j] = fmaf(x, x > 0.f ? hi : lo, acc[j]);
        }
}

/* The same for four consecutive elements d .. d + 3 (d % 4 == 0, dk % 4 ==
 * 0): one 16-byte shared load per row. */
__device__ __forceinline__ void fold4(float (&acc)[SCORE_ROWS], const float *tile, int32_t dk,
                                      int32_t nr, int32_t d, uint2 l4, uint2 h4)
{
    const float lo[4] = {bf16f(l4.x & 0xffffu), bf16f(l4.x >> 16), bf16f(l4.y & 0xffffu),
                         bf16f(l4.y >> 16)};
    const float hi[4] = {bf16f(h4.x & 0xffffu), bf16f(h4.x >> 16), bf16f(h4.y & 0xffffu),
                         bf16f(h4.y >> 16)};
#pragma unroll
    for (int j = 0; j < SCORE_ROWS; j++)
        if (j < nr) {
            const float4 x = *reinterpret_cast<const float4 *>(tile + j * dk + d);
            acc[j] = fmaf(x.x, x.x > 0.f ? hi[0] : lo[0], acc[j]);
            acc[j] = fmaf(x.y, x.y > 0.f ? hi[1] : lo[1], acc[j]);
            acc[j] = fmaf(x.z, x.z > 0.f ? hi[2] : lo[2], acc[j]);
            acc[j] = fmaf(x.w, x.w > 0.f ? hi[3] : lo[3], acc[j]);
        }
}

template <bool VEC>
__global__ void score_kernel(sel_params p)
{
    extern __shared__ float tile[]; /* [qrows][dk] */
    const int unit = (int)blockIdx.x / SCORE_SPLIT, part = (int)blockIdx.x % SCORE_SPLIT;
    const attnd_kernel_select_list sl = p.lists[list_of_chunk(p, unit)];
    const int32_t hpg = p.hkv / p.lg, R = rows_per_head(p), rows = R * hpg, dk = p.dk;
    const int32_t per = ATTND_KERNEL_SELECT_CHUNK / SCORE_SPLIT;
    const int32_t p0 = (unit - sl.chunk0) * ATTND_KERNEL_SELECT_CHUNK + part * per;
    const int32_t p1 = min(p0 + per, sl.n_cand);
    if (p0 >= p1)
        return; /* the whole block */
    const float *qs = qs_of(p, sl);
    float *ub = ub_of(p, sl);
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int nw = (int)blockDim.x / 32;

    for (int32_t hh = 0; hh < hpg; hh++) {
        const int32_t kvh = sl.group * hpg + hh;
        for (int32_t r0 = 0; r0 < R; r0 += p.qrows) {
            const int32_t nr = min(p.qrows, R - r0);
            __syncthreads(); /* the previous tile is no longer read */
            const float *src = qs + ((int64_t)hh * R + r0) * dk;
            for (int32_t i = (int32_t)threadIdx.x; i < nr * dk; i += (int32_t)blockDim.x)
                tile[i] = src[i];
            __syncthreads();
            for (int32_t pp = p0 + warp; pp < p1; pp += nw) {
                const uint16_t *lo =
                    p.bounds +
                    ((int64_t)kvh * p.bounds_pages + __ldg(p.cand + sl.cand0 + pp)) * 2 * dk;
                const uint16_t *hi = lo + dk;
                float acc[SCORE_ROWS];
#pragma unroll
                for (int j = 0; j < SCORE_ROWS; j++)
                    acc[j] = 0.f;
                if (VEC) { /* dk % 4 == 0: four elements per lane per step */
                    for (int32_t d = lane * 4; d < dk; d += 128) {
                        const uint2 l4 = __ldg(reinterpret_cast<const uint2 *>(lo + d));
                        const uint2 h4 = __ldg(reinterpret_cast<const uint2 *>(hi + d));
                        fold4(acc, tile, dk, nr, d, l4, h4);
                    }
                } else {
                    for (int32_t d = lane; d < dk; d += 32)
                        fold(acc, tile, dk, nr, d, bf16f(__ldg(lo + d)), bf16f(__ldg(hi + d)));
                }
                float mine = 0.f;
#pragma unroll
                for (int j = 0; j < SCORE_ROWS; j++) {
                    if (j < nr) {
                        float v = acc[j];
                        for (int o = 16; o > 0; o /= 2)
                            v += __shfl_xor_sync(0xffffffffu, v, o);
                        if (lane == j)
                            mine = v;
                    }
                }
                if (lane < nr)
                    ub[(int64_t)pp * rows + (int64_t)hh * R + r0 + lane] = mine;
            }
        }
    }
}

/* Exclusive rank of this thread's flag among the block's, in thread order;
 * *total: the block's count. Every thread calls it. */
__device__ int32_t block_rank(bool f, int32_t *total, int32_t *warp_base, int32_t *sum)
{
    const int lane = (int)threadIdx.x % 32, warp = (int)threadIdx.x / 32;
    const int nw = (int)blockDim.x / 32;
    const unsigned b = __ballot_sync(0xffffffffu, f);
    if (lane == 0)
        warp_base[warp] = __popc(b);
    __syncthreads();
    if (warp == 0) {
        const int32_t v = lane < nw ? warp_base[lane] : 0;
        int32_t incl = v;
        for (int o = 1; o < 32; o *= 2) {
            const int32_t u = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o)
                incl += u;
        }
        if (lane < nw)
            warp_base[lane] = incl - v;
        if (lane == 31)
            *sum = incl;
    }
    __syncthreads();
    const int32_t r = warp_base[warp] + __popc(b & ((1u << lane) - 1u));
    *total = *sum;
    __syncthreads(); /* warp_base and sum may be written again */
    return r;
}

__global__ void select_kernel(sel_params p)
{
    extern __shared__ uint32_t best_k[]; /* [rows]: each row's best, as fkey */
    __shared__ uint32_t hist[256];
    __shared__ int32_t warp_base[32], sum_sh, digit_sh, rem_sh;
    const attnd_kernel_select_list sl = p.lists[blockIdx.x];
    const int32_t n = sl.n_cand, chunks = chunks_of(sl);
    const int32_t m0 = sl.n_head, m1 = n - sl.n_tail;
    const int32_t *cand = p.cand + sl.cand0;
    int32_t *out = p.sel_pages + sl.out0;
    int32_t *pos = p.sel_pos ? p.sel_pos + sl.out0 : nullptr;
    const bool all = sl.keep >= n;
    const int32_t t = (int32_t)threadIdx.x, bd = (int32_t)blockDim.x;
    uint32_t *keys = nullptr, thr = 0xffffffffu;
    int32_t ties_needed = 0;

    if (chunks) {
        const int32_t rows = rows_per_head(p) * (p.hkv / p.lg);
        const float *ub = ub_of(p, sl);
        keys = reinterpret_cast<uint32_t *>(const_cast<float *>(ub) + (int64_t)n * rows +
                                            (int64_t)chunks * rows);
        /* each row's best: column slices of ub, then a shared maximum */
        for (int32_t r = t; r < rows; r += bd)
            best_k[r] = fkey(-INFINITY);
        __syncthreads();
        if (rows <= bd) {
            const int32_t slices = bd / rows, r = t % rows, s = t / rows;
            if (s < slices) {
                float m = -INFINITY;
                for (int32_t pp = s; pp < n; pp += slices)
                    m = fmaxf(m, ub[(int64_t)pp * rows + r]); /* ignores NaN, as the CPU */
                atomicMax(&best_k[r], fkey(m));
            }
        } else {
            for (int32_t r = t; r < rows; r += bd) {
                float m = -INFINITY;
                for (int32_t pp = 0; pp < n; pp++)
                    m = fmaxf(m, ub[(int64_t)pp * rows + r]);
                best_k[r] = fkey(m);
            }
        }
        __syncthreads();
        /* each middle candidate's score, as its key */
        for (int32_t pp = m0 + t; pp < m1; pp += bd) {
            float b = -INFINITY;
            for (int32_t r = 0; r < rows; r++) {
                const float v = ub[(int64_t)pp * rows + r] - fkey_inv(best_k[r]);
                b = fmaxf(b, isnan(v) ? INFINITY : v);
            }
            keys[pp] = key_of(b);
        }
        __syncthreads();
        /* the want-th largest key, 8 bits at a time */
        uint32_t prefix = 0, mask = 0;
        int32_t remaining = sl.keep - sl.n_head - sl.n_tail;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int32_t i = t; i < 256; i += bd)
                hist[i] = 0;
            __syncthreads();
            for (int32_t pp = m0 + t; pp < m1; pp += bd) {
                const uint32_t k = keys[pp];
                if ((k & mask) == prefix)
                    atomicAdd(&hist[(k >> shift) & 0xffu], 1u);
            }
            __syncthreads();
            if (t < 32) { /* lane l: digits 255 - 8l .. 248 - 8l, highest first */
                uint32_t c[8], s = 0;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    c[i] = hist[255 - 8 * t - i];
                    s += c[i];
                }
                uint32_t incl = s;
                for (int o = 1; o < 32; o *= 2) {
                    const uint32_t u = __shfl_up_sync(0xffffffffu, incl, o);
                    if (t >= o)
                        incl += u;
                }
                const unsigned hit = __ballot_sync(0xffffffffu, incl >= (uint32_t)remaining);
                if (!hit && t == 0) { /* fewer keys than wanted: cannot happen */
                    digit_sh = 0;
                    rem_sh = 1;
                }
                if (hit && t == __ffs(hit) - 1) {
                    uint32_t cum = incl - s;
                    int i = 0;
                    while (i < 7 && cum + c[i] < (uint32_t)remaining)
                        cum += c[i++];
                    digit_sh = 255 - 8 * t - i;
                    rem_sh = remaining - (int32_t)cum;
                }
            }
            __syncthreads();
            prefix |= (uint32_t)digit_sh << shift;
            mask |= 0xffu << shift;
            remaining = rem_sh;
            __syncthreads(); /* digit_sh, rem_sh and hist are written again */
        }
        thr = prefix;
        ties_needed = remaining; /* keys equal to thr to keep, earliest first */
    }
    /* the kept candidates, in order */
    int32_t w = 0, ties = 0;
    for (int32_t base = 0; base < n; base += bd) {
        const int32_t pp = base + t;
        const bool valid = pp < n;
        const bool mand = valid && (all || pp < m0 || pp >= m1);
        const bool scored = valid && !mand && keys != nullptr;
        const uint32_t k = scored ? keys[pp] : 0u;
        const bool tie = scored && k == thr;
        int32_t n_ties, n_keep;
        const int32_t tr = block_rank(tie, &n_ties, warp_base, &sum_sh);
        const bool keep = mand || (scored && k > thr) || (tie && ties + tr < ties_needed);
        const int32_t kr = block_rank(keep, &n_keep, warp_base, &sum_sh);
        if (keep) {
            out[w + kr] = __ldg(cand + pp);
            if (pos)
                pos[w + kr] = pp;
        }
        w += n_keep;
        ties += n_ties;
    }
}

} // namespace

extern "C" attnd_status attnd_cuda_select_run(attnd_cuda_ctx *ctx, const attnd_cuda_select *s,
                                              attnd_error *err)
{
    if (!ctx || !s)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "select: ctx and s are required");
    if (s->n_lists <= 0)
        return ATTND_OK;
    const int32_t hkv = s->kv.n_kv_heads, lg = s->list_groups > 1 ? s->list_groups : 1;
    if (!s->lists || !s->q || !s->bounds || !s->cand_idx || !s->sel_pages || !s->work ||
        hkv < 1 || s->n_q_heads % hkv || hkv % lg || s->q_tokens < 1 || s->kv.d_k < 1 ||
        s->n_chunks < 0 || s->head_agg < 0 ||
        (s->head_agg > 1 && (s->n_q_heads / hkv) % s->head_agg))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "select: lists, q, bounds, cand_idx, sel_pages, work and a "
                               "consistent shape are required");
    const int32_t agg = s->head_agg > 1 ? s->head_agg : 1, dk = s->kv.d_k;
    const int64_t rows = (int64_t)s->q_tokens * (s->n_q_heads / hkv / agg) * (hkv / lg);
    const int32_t qrows = (int32_t)(SCORE_SMEM / 4 / dk < SCORE_ROWS ? SCORE_SMEM / 4 / dk
                                                                       : SCORE_ROWS);
    if (qrows < 1 || rows > SEL_MAX_ROWS)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "select: %lld query rows of d_k %d per list; the GPU selection "
                               "takes up to %d rows and d_k up to %d",
                               (long long)rows, dk, SEL_MAX_ROWS, SCORE_SMEM / 4);
    sel_params p = {s->lists,      s->n_lists,  s->q_tokens,
                    s->n_q_heads,  hkv,         lg,
                    dk,            agg,         qrows,
                    static_cast<const uint16_t *>(s->q), s->bounds, s->bounds_pages,
                    s->cand_idx,   s->sel_pages, s->sel_pos,
                    s->work};
    if (s->n_chunks > 0) {
        qsum_kernel<<<s->n_lists, QSUM_THREADS, 0, ctx->stream>>>(p);
        const size_t smem = (size_t)qrows * (size_t)dk * sizeof(float);
        if (dk % 4 == 0)
            score_kernel<true><<<s->n_chunks * SCORE_SPLIT, SCORE_THREADS, smem, ctx->stream>>>(p);
        else
            score_kernel<false><<<s->n_chunks * SCORE_SPLIT, SCORE_THREADS, smem, ctx->stream>>>(p);
    }
    select_kernel<<<s->n_lists, SEL_THREADS, (size_t)rows * sizeof(uint32_t) + 16, ctx->stream>>>(p);
    int rc = (int)cudaGetLastError();
    if (rc != cudaSuccess)
        return attnd__cuda_fail(err, rc, "page selection");
    return ATTND_OK;
}
