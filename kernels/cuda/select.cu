/* Page selection on the GPU (attnd_cuda.h, "page selection"): the same
 * math and the same result as kernels/cpu/select.c, up to the order of the
 * float32 sums.
 *
 * Two kernels. score_kernel: one CTA per unit of ATTND_KERNEL_SELECT_CHUNK
 * candidates of one list (the units attnd_kernel_select_prepare counted); its
 * warps take (candidate, query row) pairs, lanes stride over d_k reading
 * the row's query (the sum of head_agg heads' queries when rows are runs
 * of heads) and the candidate's bounds (bf16, L2-resident for the
 * unit), a warp sum gives ub[p][row] = sum_d max(q lo, q hi). select_kernel:
 * one CTA per list: each row's best page (max over candidates), each middle
 * candidate's score (max over rows of ub - best, NaN as +inf), the
 * threshold (the want-th largest score, found bit by bit over the
 * order-preserving integer image of the floats, 32 block-wide counts), and
 * warp 0 writes the kept candidates in order (ballots: mandatory ones,
 * those above the threshold, and the earliest of those equal to it). The
 * scratch is the CPU's layout (select.c: packed queries, which the GPU does
 * not use, then ub [n_cand][rows], chunk maxima [chunks][rows] (here the
 * rows' maxima), scores [n_cand]). Not run in this repository's CI (no
 * GPU): tests/gpu/test_cuda.c compares it with the CPU selection. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "ctx_int.h"

namespace {

constexpr int SEL_THREADS = 256;

struct sel_params {
    const attnd_kernel_select_list *lists;
    int32_t n_lists, q_tokens, hq, hkv, lg, dk;
    int32_t agg; /* heads summed into one row (1: a row per head) */
    const uint16_t *q, *bounds;
    int64_t bounds_pages;
    const int32_t *cand;
    int32_t *sel_pages, *sel_pos;
    float *work;
};

__device__ __forceinline__ float bf16f(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

/* Units of a list to score: none when its mandatory pages fill the budget
 * or every candidate is kept (select.c's list_chunks). */
__device__ __forceinline__ int chunks_of(const attnd_kernel_select_list &sl)
{
    if (sl.keep >= sl.n_cand || sl.keep <= sl.n_head + sl.n_tail)
        return 0;
    return (sl.n_cand + ATTND_KERNEL_SELECT_CHUNK - 1) / ATTND_KERNEL_SELECT_CHUNK;
}

/* Where a list's ub starts in the scratch (select.c's list_ub). */
__device__ __forceinline__ float *ub_of(const sel_params &p, const attnd_kernel_select_list &sl)
{
    const int32_t hpg = p.hkv / p.lg, R = p.q_tokens * (p.hq / p.hkv / p.agg);
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

__global__ void score_kernel(sel_params p)
{
    const attnd_kernel_select_list sl = p.lists[list_of_chunk(p, (int)blockIdx.x)];
    const int32_t hpg = p.hkv / p.lg, G = p.hq / p.hkv, runs = G / p.agg;
    const int32_t R = p.q_tokens * runs, rows = R * hpg;
    const int32_t p0 = ((int)blockIdx.x - sl.chunk0) * ATTND_KERNEL_SELECT_CHUNK;
    const int32_t p1 = min(p0 + ATTND_KERNEL_SELECT_CHUNK, sl.n_cand);
    float *ub = ub_of(p, sl);
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int nw = (int)blockDim.x / 32;

    for (int64_t item = warp; item < (int64_t)(p1 - p0) * rows; item += nw) {
        const int32_t pp = p0 + (int32_t)(item / rows), r = (int32_t)(item % rows);
        const int32_t hh = r / R, rr = r % R, kvh = sl.group * hpg + hh;
        const int32_t s = rr / runs, g = rr % runs * p.agg;
        const uint16_t *q =
            p.q + (((int64_t)sl.seq * p.q_tokens + s) * p.hq + (int64_t)kvh * G + g) * p.dk;
        const uint16_t *lo =
            p.bounds + ((int64_t)kvh * p.bounds_pages + __ldg(p.cand + sl.cand0 + pp)) * 2 * p.dk;
        const uint16_t *hi = lo + p.dk;
        float acc = 0.f;
        for (int d = lane; d < p.dk; d += 32) {
            float x = bf16f(__ldg(q + d));
            for (int32_t j = 1; j < p.agg; j++) /* a run of heads: their sum, in order */
                x += bf16f(__ldg(q + (int64_t)j * p.dk + d));
            acc += x > 0.f ? x * bf16f(__ldg(hi + d)) : x * bf16f(__ldg(lo + d));
        }
        for (int o = 16; o > 0; o /= 2)
            acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0)
            ub[(int64_t)pp * rows + r] = acc;
    }
}

/* Order-preserving image of a score (NaN ranks as +inf). */
__device__ __forceinline__ uint32_t key_of(float v)
{
    if (isnan(v))
        v = INFINITY;
    const uint32_t u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Candidates [m0, m1) whose key is >= t (gt: > t), counted by the block. */
__device__ uint32_t count_keys(const float *score, int32_t m0, int32_t m1, uint32_t t, bool gt,
                               unsigned *shared_count)
{
    if (threadIdx.x == 0)
        *shared_count = 0;
    __syncthreads();
    unsigned local = 0;
    for (int32_t pp = m0 + (int32_t)threadIdx.x; pp < m1; pp += (int32_t)blockDim.x) {
        const uint32_t k = key_of(score[pp]);
        local += gt ? k > t : k >= t;
    }
    if (local)
        atomicAdd(shared_count, local);
    __syncthreads();
    const uint32_t n = *shared_count;
    __syncthreads();
    return n;
}

__global__ void select_kernel(sel_params p)
{
    __shared__ unsigned shared_count;
    const attnd_kernel_select_list sl = p.lists[blockIdx.x];
    const int32_t n = sl.n_cand, chunks = chunks_of(sl);
    const int32_t m0 = sl.n_head, m1 = n - sl.n_tail;
    const int32_t *cand = p.cand + sl.cand0;
    int32_t *out = p.sel_pages + sl.out0;
    int32_t *pos = p.sel_pos ? p.sel_pos + sl.out0 : nullptr;
    const bool all = sl.keep >= n;
    const float *score = nullptr;
    uint32_t thr = 0xffffffffu;
    int32_t ties_needed = 0;

    if (chunks) {
        const int32_t hpg = p.hkv / p.lg, rows = p.q_tokens * (p.hq / p.hkv / p.agg) * hpg;
        float *ub = ub_of(p, sl);
        float *best = ub + (int64_t)n * rows; /* the chunk maxima's room */
        float *sc = best + (int64_t)chunks * rows;
        for (int32_t r = (int32_t)threadIdx.x; r < rows; r += (int32_t)blockDim.x) {
            float m = -INFINITY;
            for (int32_t pp = 0; pp < n; pp++)
                m = fmaxf(m, ub[(int64_t)pp * rows + r]); /* ignores NaN, as the CPU */
            best[r] = m;
        }
        __syncthreads();
        for (int32_t pp = m0 + (int32_t)threadIdx.x; pp < m1; pp += (int32_t)blockDim.x) {
            float b = -INFINITY;
            for (int32_t r = 0; r < rows; r++) {
                float v = ub[(int64_t)pp * rows + r] - best[r];
                b = fmaxf(b, isnan(v) ? INFINITY : v);
            }
            sc[pp] = b;
        }
        __syncthreads();
        const uint32_t want = (uint32_t)(sl.keep - sl.n_head - sl.n_tail);
        uint32_t t = 0;
        for (int bit = 31; bit >= 0; bit--) {
            const uint32_t c = t | (1u << bit);
            if (count_keys(sc, m0, m1, c, false, &shared_count) >= want)
                t = c;
        }
        thr = t;
        ties_needed = (int32_t)(want - count_keys(sc, m0, m1, t, true, &shared_count));
        score = sc;
    }
    if (threadIdx.x >= 32)
        return;
    /* warp 0: the kept candidates, in order */
    const unsigned lt = (1u << threadIdx.x) - 1u;
    int32_t w = 0, ties = 0;
    for (int32_t base = 0; base < n; base += 32) {
        const int32_t pp = base + (int32_t)threadIdx.x;
        const bool valid = pp < n;
        const bool mand = valid && (all || pp < m0 || pp >= m1);
        const bool scored = valid && !mand && score != nullptr;
        const uint32_t k = scored ? key_of(score[pp]) : 0u;
        const bool tie = scored && k == thr;
        const unsigned tmask = __ballot_sync(0xffffffffu, tie);
        const bool take_tie = tie && ties + __popc(tmask & lt) < ties_needed;
        const bool keep = mand || (scored && k > thr) || take_tie;
        const unsigned kmask = __ballot_sync(0xffffffffu, keep);
        if (keep) {
            const int32_t at = w + __popc(kmask & lt);
            out[at] = __ldg(cand + pp);
            if (pos)
                pos[at] = pp;
        }
        w += __popc(kmask);
        ties += min(__popc(tmask), max(0, ties_needed - ties));
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
    sel_params p = {s->lists,      s->n_lists,       s->q_tokens,
                    s->n_q_heads,  hkv,              lg,
                    s->kv.d_k,     s->head_agg > 1 ? s->head_agg : 1,
                    static_cast<const uint16_t *>(s->q), s->bounds, s->bounds_pages,
                    s->cand_idx,   s->sel_pages,     s->sel_pos,
                    s->work};
    if (s->n_chunks > 0)
        score_kernel<<<s->n_chunks, SEL_THREADS, 0, ctx->stream>>>(p);
    select_kernel<<<s->n_lists, SEL_THREADS, 0, ctx->stream>>>(p);
    int rc = (int)cudaGetLastError();
    if (rc != cudaSuccess)
        return attnd__cuda_fail(err, rc, "page selection");
    return ATTND_OK;
}
