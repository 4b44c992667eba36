/* What the decode kernels share besides PTX: the unit record a plan uploads,
 * the producer loop that walks units and page lists, output row addressing,
 * and the in-kernel split-KV combine (GQA).
 *
 * A stream cut into k >= 2 units writes k float32 partial states (o
 * normalized, lse natural log) to slots slot0 .. slot0 + k - 1. In the GQA
 * kernel each unit, once its partial state is stored, fences it and bumps
 * the stream's arrival counter (one per (stream, row block)); the CTA that
 * arrives last merges the k states in slot order (deterministic, whatever
 * the arrival order) into the outputs and resets the counter to 0 for the
 * next run: a split decode costs one launch, which matters at batch 1. The
 * MLA kernel leaves the merge to the combine kernel (combine.cu): its unit
 * ends are costlier to stall (NOTES.md). */
#ifndef ATTND_CUDA_UNIT_CUH
#define ATTND_CUDA_UNIT_CUH

#include <math.h>
#include <stdint.h>

#include "cuda_int.h"
#include "ptx.cuh"

/* A unit as uploaded: two int4. tile1 == tile0 for an empty stream (the
 * unit writes out 0 and lse -inf). */
struct attnd__unit {
    int32_t stream, tile0, tile1, slot; /* slot -1: write the outputs */
    int32_t page_base;                  /* index in page_idx of the list's first page */
    int32_t len;                        /* tokens the list holds */
    int32_t nsplit, slot0;              /* units of the stream, its first slot */
};

static __device__ __forceinline__ attnd__unit attnd__load_unit(const attnd__dec_params &p,
                                                               int32_t u)
{
    const int4 *src = reinterpret_cast<const int4 *>(p.units) + 2 * (int64_t)u;
    int4 a = __ldg(src), b = __ldg(src + 1);
    attnd__unit un;
    un.stream = a.x;
    un.tile0 = a.y;
    un.tile1 = a.z;
    un.slot = a.w;
    un.page_base = b.x;
    un.len = b.y;
    un.nsplit = b.z;
    un.slot0 = b.w;
    return un;
}

/* Page of tile t + lane of unit un (lane-parallel; lanes past the unit's
 * tiles read nothing: entries past a list's end may be garbage). */
static __device__ __forceinline__ int32_t attnd__fetch_pages(const attnd__dec_params &p,
                                                             const attnd__unit &un, int32_t t,
                                                             int lane)
{
    const int32_t tt = t + lane;
    return tt < un.tile1 ? __ldg(p.page_idx + un.page_base +
                                 (int32_t)((int64_t)tt * ATTND__CUDA_TILE / p.page_size))
                         : 0;
}

/* The producer loop of a persistent decode CTA, run by one whole warp:
 * walks units [u0, u1) tile by tile; lane 0 calls on_unit(unit) before a
 * unit's first tile, and for each tile waits for the ring stage to be
 * empty and calls issue(stage, page, slot, unit), which arms the stage's
 * full barrier and starts its bulk copies. Page indices
 * are read 32 tiles at a time, and the next batch (or the next unit and
 * its first batch) is requested before the current one is issued, so no
 * dependent global load sits between two tiles' copies. */
template <int STAGES, typename Issue, typename OnUnit>
static __device__ __forceinline__ void attnd__produce(const attnd__dec_params &p, int32_t u0,
                                                      int32_t u1, uint64_t *empty, Issue issue,
                                                      OnUnit on_unit)
{
    const int lane = threadIdx.x & 31;
    int stage = 0;
    uint32_t phase = 0;
    int32_t u = u0;
    attnd__unit un = {};
    if (u < u1)
        un = attnd__load_unit(p, u);
    int32_t t = un.tile0;
    int32_t pages = u < u1 ? attnd__fetch_pages(p, un, t, lane) : 0;
    while (u < u1) {
        if (t == un.tile0 && lane == 0)
            on_unit(un); /* before the unit's first tile (also for no tiles) */
        const int32_t cnt = min(32, un.tile1 - t);
        /* request the next batch now */
        attnd__unit un2 = un;
        int32_t t2 = t + 32, u2 = u;
        if (t2 >= un.tile1) {
            u2 = u + 1;
            if (u2 < u1) {
                un2 = attnd__load_unit(p, u2);
                t2 = un2.tile0;
            }
        }
        const int32_t pages2 = u2 < u1 ? attnd__fetch_pages(p, un2, t2, lane) : 0;
        for (int32_t j = 0; j < cnt; j++) {
            const int32_t page = __shfl_sync(0xffffffffu, pages, j);
            if (lane == 0) {
                attnd__mbar_wait(&empty[stage], phase ^ 1);
                issue(stage, page, (int32_t)(((int64_t)(t + j) * ATTND__CUDA_TILE) % p.page_size),
                      un);
            }
            __syncwarp();
            if (++stage == STAGES) {
                stage = 0;
                phase ^= 1;
            }
        }
        un = un2;
        t = t2;
        u = u2;
        pages = pages2;
    }
}

/* Row of out [n][S][Hq] (and of lse) that stream row g writes. */
static __device__ __forceinline__ int64_t attnd__out_row(const attnd__dec_params &p,
                                                         int32_t stream, int32_t g)
{
    int32_t seq = stream / p.sps, s = g / p.hs;
    int32_t head = (stream % p.sps) * p.hs + g % p.hs;
    return ((int64_t)seq * p.q_tokens + s) * p.n_q_heads + head;
}

/* Tokens stream row g sees: L - (S - 1 - s); rows past the stream's rows
 * (padding) see L. */
static __device__ __forceinline__ int32_t attnd__row_visible(const attnd__dec_params &p,
                                                             int32_t g, int32_t len)
{
    return g < p.rows ? len - (p.q_tokens - 1 - g / p.hs) : len;
}

/* After this CTA stored its partial state for unit un (rows [r0, r1) of
 * the stream): fence, count the arrival, and if it is the last of the
 * stream's units for this row block, merge all slots into the outputs.
 * Called by the nthr consumer threads (tid 0..nthr-1, whole warps), which
 * meet on named barrier `bar`; *flag is a shared int and sL shared scratch
 * of r1 - r0 (<= 64) floats. Two passes: a warp per row finds the row's
 * total lse, then every (row, 4 columns) item sums its weighted parts, four
 * parts' loads in flight at once (the merge is latency-bound: it sits on
 * the tail of the decode; this form measured fastest, NOTES.md). */
static __device__ void attnd__split_arrive_merge(const attnd__dec_params &p, const attnd__unit &un,
                                                 int32_t r0, int32_t r1, int tid, int nthr,
                                                 uint32_t bar, int *flag, float *sL)
{
    __threadfence(); /* this thread's partial stores, visible GPU-wide */
    attnd__bar_sync(bar, nthr);
    if (tid == 0) {
        int *ctr = p.counters + (int64_t)un.slot0 * p.n_row_blocks + blockIdx.x;
        int old = atomicAdd(ctr, 1);
        int last = old == un.nsplit - 1;
        if (last)
            *ctr = 0; /* every arrival of this run is in: ready for the next */
        *flag = last;
    }
    attnd__bar_sync(bar, nthr);
    if (!*flag)
        return;
    __threadfence();

    const int dv = p.d_v, c4 = dv / 4, k = un.nsplit, lane = tid & 31;
    const float *pl = p.part_lse + (int64_t)un.slot0 * p.rows;
    const float *po = p.part_o + (int64_t)un.slot0 * p.rows * dv;
    const int64_t lstride = p.rows, ostride = (int64_t)p.rows * dv;
    if (r1 > p.rows)
        r1 = p.rows;
    /* pass 1: a warp per row, lanes over the parts; a NaN part (poisoned:
     * attnd_kernels.h's rule) makes the row's lse NaN, which pass 2 turns
     * into NaN outputs (fmaxf drops NaN, so it is tracked apart) */
    for (int32_t g = r0 + (tid >> 5); g < r1; g += nthr >> 5) {
        float M = -INFINITY;
        bool bad = false;
        for (int i = lane; i < k; i += 32) {
            const float li = __ldcg(pl + i * lstride + g);
            M = fmaxf(M, li);
            bad |= isnan(li);
        }
#pragma unroll
        for (int sh = 16; sh >= 1; sh >>= 1)
            M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, sh));
        bad = __any_sync(0xffffffffu, bad);
        float sum = 0.f;
        if (M != -INFINITY)
            for (int i = lane; i < k; i += 32)
                sum += expf(__ldcg(pl + i * lstride + g) - M);
#pragma unroll
        for (int sh = 16; sh >= 1; sh >>= 1)
            sum += __shfl_xor_sync(0xffffffffu, sum, sh);
        if (lane == 0)
            sL[g - r0] = bad ? __int_as_float(0x7fc00000)
                             : M != -INFINITY ? M + logf(sum) : -INFINITY;
    }
    attnd__bar_sync(bar, nthr);
    /* pass 2: (row, 4 columns) items, parts four at a time */
    for (int idx = tid; idx < (r1 - r0) * c4; idx += nthr) {
        const int32_t g = r0 + idx / c4;
        const int c = 4 * (idx % c4);
        const float lse = sL[g - r0];
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        if (lse != -INFINITY) { /* NaN lse: every weight is NaN */
            const float *pr = po + (int64_t)g * dv + c;
#pragma unroll 4
            for (int i = 0; i < k; i++) {
                const float w = expf(__ldcg(pl + i * lstride + g) - lse);
                const float4 v = __ldcg(reinterpret_cast<const float4 *>(pr + i * ostride));
                acc.x += w * v.x;
                acc.y += w * v.y;
                acc.z += w * v.z;
                acc.w += w * v.w;
            }
        }
        const int64_t orow = attnd__out_row(p, un.stream, g);
        if (p.out_f32) {
            *reinterpret_cast<float4 *>(static_cast<float *>(p.out) + orow * dv + c) = acc;
        } else {
            uint2 b2 = make_uint2(attnd__pack_bf16(acc.x, acc.y), attnd__pack_bf16(acc.z, acc.w));
            *reinterpret_cast<uint2 *>(static_cast<uint16_t *>(p.out) + orow * dv + c) = b2;
        }
        if (c == 0 && p.lse)
            p.lse[orow] = lse;
    }
    attnd__bar_sync(bar, nthr); /* sL may be reused once everyone is done */
}

#endif /* ATTND_CUDA_UNIT_CUH */
