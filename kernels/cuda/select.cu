/* Page selection on the GPU (attnd_cuda.h, "page selection"): the same
 * math and the same result as kernels/cpu/select.c, up to the order of the
 * float32 sums.
 *
 * Three kernels on the context's stream:
 * - qsum_kernel, a grid of query elements per list: each query row (a
 *   head, or the sum of a run of head_agg heads, in order) once, in
 *   float32, into the list's packed-query room of the scratch (which the
 *   CPU packs and the GPU otherwise does not use): [heads of the list][R]
 *   [d_k]; it also sets each row's best to -inf.
 *   (Lists of one KV head and up to 8 rows, MLA's default and GQA's per
 *   KV head, score their bf16 bounds on tensor cores instead:
 *   select_mma.cu's qprep_kernel and score_mma_kernel.)
 * - score_kernel, one CTA per scoring unit of ATTND_KERNEL_SELECT_CHUNK
 *   candidates (GQA-like shapes) or four (MLA's d_k 576): up to 16 query
 *   rows in shared memory; LPP lanes take a candidate page (8 for d_k up to
 *   256, else 16), read its bounds once (8-byte loads when d_k allows),
 *   keep a sum per row in registers and add them up by shuffles:
 *   ub[p][row] = sum_d q_d * (q_d > 0 ? hi_d : lo_d); the pages' maxima go
 *   into the rows' best (an atomicMax on the floats' order-preserving
 *   integer images; NaN ignored as the CPU's fmaxf does).
 * - select_kernel, one CTA of SEL_THREADS per list: each middle
 *   candidate's score (max over rows of ub - best, NaN as +inf) as its
 *   integer image, the threshold (the want-th largest) by a radix
 *   selection of up to four 8-bit digits over a shared histogram (one
 *   atomic per distinct digit of a warp; it stops at a digit whose keys
 *   are all kept, mostly the second for random scores), and the kept
 *   candidates written in order by block-wide scans (the mandatory ones,
 *   those above the threshold, and the earliest of those equal to it).
 *
 * The kernel this replaced (a warp per (page, row) pair re-reading the
 * query, and one thread per row taking its maximum serially over all
 * candidates) took 4.1 ms of a 4.4 ms sparse MLA call on an H200
 * (worker/SPARSE.md, Speed). The scratch layout is the CPU's (select.c):
 * packed queries (here the summed rows), ub [n_cand][rows], chunk maxima
 * [chunks][rows] (here the first rows hold each row's best), scores
 * [n_cand] (here their integer images, when a list has more candidates than
 * SEL_SMEM_KEYS; else they stay in shared memory). Not run in this repository's CI
 * (no GPU): tests/gpu/test_cuda.c compares it with the CPU selection. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "../cpu/select_pack.h"
#include "ctx_int.h"
#include "select_int.cuh"

namespace {

using namespace attnd_sel;

constexpr int QSUM_THREADS = 256;
constexpr int SCORE_THREADS = 256;
constexpr int SCORE_ROWS = 16; /* query rows per pass over a page's bounds */
constexpr int SCORE_SMEM = 48 * 1024;
constexpr int SEL_THREADS = 1024;
constexpr int SEL_SMEM_KEYS = 8192; /* keys kept in shared memory (32 KiB) */

static_assert(SEL_THREADS % 32 == 0 && SEL_THREADS / 32 <= 32, "one warp scans the warps");

__global__ void qsum_kernel(sel_params p)
{
    const attnd_kernel_select_list sl = p.lists[blockIdx.y];
    if (!chunks_of(sl))
        return;
    const int32_t hpg = p.hkv / p.lg, R = rows_per_head(p);
    if (blockIdx.x == 0) /* each row's best, folded in by score_kernel */
        for (int32_t r = (int32_t)threadIdx.x; r < R * hpg; r += (int32_t)blockDim.x)
            best_of(p, sl)[r] = fkey(-INFINITY);
    float *qs = qs_of(p, sl);
    const int64_t n = (int64_t)hpg * R * p.dk;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int32_t d = (int32_t)(i % p.dk), r = (int32_t)(i / p.dk);
        qs[i] = row_elem(p, sl, sl.group * hpg + r / R, r % R, d);
    }
}

/* acc[j] += x_j * (x_j > 0 ? hi : lo) for rows j < nr of the tile (x_j its
 * element d), one d_k element of a page whose bounds are lo, hi. */
template <int RT>
__device__ __forceinline__ void fold(float (&acc)[RT], const float *tile, int32_t dk, int32_t nr,
                                     int32_t d, float lo, float hi)
{
#pragma unroll
    for (int j = 0; j < RT; j++)
        if (j < nr) {
            const float x = tile[j * dk + d];
            acc[j] = fmaf(x, x > 0.f ? hi : lo, acc[j]);
        }
}

/* The same for four consecutive elements d .. d + 3 (d % 4 == 0, dk % 4 ==
 * 0): one 16-byte shared load per row. */
template <int RT>
__device__ __forceinline__ void fold4(float (&acc)[RT], const float *tile, int32_t dk, int32_t nr,
                                      int32_t d, uint2 l4, uint2 h4)
{
    const float lo[4] = {bf16f(l4.x & 0xffffu), bf16f(l4.x >> 16), bf16f(l4.y & 0xffffu),
                         bf16f(l4.y >> 16)};
    const float hi[4] = {bf16f(h4.x & 0xffffu), bf16f(h4.x >> 16), bf16f(h4.y & 0xffffu),
                         bf16f(h4.y >> 16)};
#pragma unroll
    for (int j = 0; j < RT; j++)
        if (j < nr) {
            const float4 x = *reinterpret_cast<const float4 *>(tile + j * dk + d);
            acc[j] = fmaf(x.x, x.x > 0.f ? hi[0] : lo[0], acc[j]);
            acc[j] = fmaf(x.y, x.y > 0.f ? hi[1] : lo[1], acc[j]);
            acc[j] = fmaf(x.z, x.z > 0.f ? hi[2] : lo[2], acc[j]);
            acc[j] = fmaf(x.w, x.w > 0.f ? hi[3] : lo[3], acc[j]);
        }
}

/* A warp's walk over candidates [p0, p1) of list sl, 32 / LPP pages a
 * step (lane slot's page at pb + slot), calling score(pp, valid, page)
 * in every lane (valid: pp < p1; page: the candidate's pool page, read a
 * step ahead so that its bounds' address no longer waits for it). */
template <int LPP, typename F>
__device__ __forceinline__ void walk_pages(const sel_params &p, const attnd_kernel_select_list &sl,
                                           int32_t p0, int32_t p1, int warp, int nw, int slot,
                                           F &&score)
{
    constexpr int PPW = 32 / LPP;
    int32_t pb = p0 + warp * PPW;
    int32_t next = pb + slot < p1 ? __ldg(p.cand + sl.cand0 + pb + slot) : 0;
    for (; pb < p1; pb += nw * PPW) {
        const int32_t pp = pb + slot, pn = pp + nw * PPW;
        const int32_t page = next;
        next = pn < p1 ? __ldg(p.cand + sl.cand0 + pn) : 0;
        score(pp, pp < p1, page);
    }
}

/* A page's LPP lanes add up their sums of rows j < nr (RT kept); lane sub
 * gets row sub's total. Every lane calls it. */
template <int LPP, int RT, typename T>
__device__ __forceinline__ T rows_reduce(const T (&acc)[RT], int32_t nr, int sub)
{
    T mine = 0;
#pragma unroll
    for (int j = 0; j < RT; j++) {
        if (j < nr) {
            T v = acc[j];
#pragma unroll
            for (int o = LPP / 2; o > 0; o /= 2)
                v += __shfl_xor_sync(0xffffffffu, v, o);
            if (sub == j)
                mine = v;
        }
    }
    return mine;
}

/* A CTA scores candidates [p0, p1) of its list (p.split CTAs per scoring
 * unit), a tile of up to RT query rows at a time. LPP lanes take a page:
 * a warp scores 32 / LPP pages at once, each lane 4 elements per step of
 * 4 * LPP (8-byte loads of its page's lo and hi), and a page's LPP lanes
 * sum their rows by log2(LPP) shuffles (GQA's d_k 128 with LPP 8: four
 * pages a step, 16-byte sectors whole, 3 shuffles a row; MLA's 576 with
 * LPP 16: two pages a step). GQA-like shapes keep to 48 registers so that
 * five CTAs fit an SM: at 60 only four did, and a 4-sequence llama3-8b
 * batch's 544 units ran as one wave and a tail of 16 CTAs (ncu, H200). */
template <bool VEC, int LPP, int RT>
__global__ void __launch_bounds__(SCORE_THREADS, LPP == 8 ? 5 : 1) score_kernel(sel_params p)
{
    static_assert(RT <= LPP && 32 % LPP == 0, "a page's lanes write its rows");
    extern __shared__ float tile[]; /* [qrows][dk] */
    const int unit = (int)blockIdx.x / p.split, part = (int)blockIdx.x % p.split;
    const attnd_kernel_select_list sl =
        p.lists[p.unit_list ? __ldg(p.unit_list + unit) : list_of_chunk(p, unit)];
    const int32_t hpg = p.hkv / p.lg, R = rows_per_head(p), rows = R * hpg, dk = p.dk;
    const int32_t per = (ATTND_KERNEL_SELECT_CHUNK + p.split - 1) / p.split;
    const int32_t c0 = (unit - sl.chunk0) * ATTND_KERNEL_SELECT_CHUNK;
    const int32_t p0 = c0 + part * per;
    const int32_t p1 = min(min(p0 + per, c0 + ATTND_KERNEL_SELECT_CHUNK), sl.n_cand);
    if (p0 >= p1)
        return; /* the whole block */
    const float *qs = qs_of(p, sl);
    float *ub = ub_of(p, sl);
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int nw = (int)blockDim.x / 32;
    const int slot = lane / LPP, sub = lane % LPP; /* this lane's page of a step, its part */

    for (int32_t hh = 0; hh < hpg; hh++) {
        const int32_t kvh = sl.group * hpg + hh;
        for (int32_t r0 = 0; r0 < R; r0 += p.qrows) {
            const int32_t nr = min(p.qrows, R - r0);
            __syncthreads(); /* the previous tile is no longer read */
            const float *src = qs + ((int64_t)hh * R + r0) * dk;
            if (VEC) /* qs_of is 16-byte aligned, dk % 4 == 0 */
                for (int32_t i = (int32_t)threadIdx.x; i < nr * dk / 4; i += (int32_t)blockDim.x)
                    reinterpret_cast<float4 *>(tile)[i] = reinterpret_cast<const float4 *>(src)[i];
            else
                for (int32_t i = (int32_t)threadIdx.x; i < nr * dk; i += (int32_t)blockDim.x)
                    tile[i] = src[i];
            __syncthreads();
            float top = -INFINITY; /* row sub's best over this lane's pages */
            walk_pages<LPP>(p, sl, p0, p1, warp, nw, slot, [&](int32_t pp, bool valid, int32_t page) {
                const uint16_t *lo = p.bounds + ((int64_t)kvh * p.bounds_pages + page) * 2 * dk;
                float acc[RT];
#pragma unroll
                for (int j = 0; j < RT; j++)
                    acc[j] = 0.f;
                if (valid) {
                    if (VEC) {
#pragma unroll 4 /* GQA's d_k 128: a page's loads all in flight */
                        for (int32_t d = sub * 4; d < dk; d += 4 * LPP) {
                            const uint2 l4 = __ldg(reinterpret_cast<const uint2 *>(lo + d));
                            const uint2 h4 = __ldg(reinterpret_cast<const uint2 *>(lo + dk + d));
                            fold4<RT>(acc, tile, dk, nr, d, l4, h4);
                        }
                    } else {
                        for (int32_t d = sub; d < dk; d += LPP)
                            fold<RT>(acc, tile, dk, nr, d, bf16f(__ldg(lo + d)),
                                     bf16f(__ldg(lo + dk + d)));
                    }
                }
                const float mine = rows_reduce<LPP, RT>(acc, nr, sub);
                if (valid && sub < nr) {
                    ub[(int64_t)pp * rows + (int64_t)hh * R + r0 + sub] = mine;
                    top = fmaxf(top, mine); /* ignores NaN, as the CPU */
                }
            });
            best_fold<LPP>(top, lane, nr, best_of(p, sl) + (int64_t)hh * R + r0);
        }
    }
}

/* The variant for R rows per KV head and d_k; its split (CTAs per unit). */
template <bool VEC>
static void score_launch(sel_params p, int32_t R, int32_t n_chunks, size_t smem,
                         cudaStream_t stream)
{
    if (p.dk <= 256 && R <= 8) { /* GQA-like: a quarter warp a page, whole units per CTA */
        p.split = 1;
        if (R <= 4)
            score_kernel<VEC, 8, 4><<<n_chunks, SCORE_THREADS, smem, stream>>>(p);
        else
            score_kernel<VEC, 8, 8><<<n_chunks, SCORE_THREADS, smem, stream>>>(p);
    } else { /* MLA-like: half a warp a page, a unit over 4 CTAs */
        p.split = 4;
        if (R <= 8)
            score_kernel<VEC, 16, 8><<<n_chunks * 4, SCORE_THREADS, smem, stream>>>(p);
        else
            score_kernel<VEC, 16, 16><<<n_chunks * 4, SCORE_THREADS, smem, stream>>>(p);
    }
}

/* ---- compact bounds: the CPU's integer scoring (select_int.h) ----------- */

/* qpack8_kernel: a warp per query row (KV head hh of the list's group, row
 * r), blockIdx.y the list: the row as qsum_kernel sums it, then exactly
 * select.c's pack_row8: sq (max |x| / 127, rounded up until sq 127 >= max
 * |x| in float64), Qsum (the elements summed in order, float32) and the
 * int8 codes ceil(x / sq) into the lo (x < 0) or hi half, in the list's
 * packed-query room: per KV head sq [R], Qsum [R], rows [R][q8_width]. */
__global__ void qpack8_kernel(sel_params p)
{
    extern __shared__ float xs[]; /* [warps][dk] */
    const attnd_kernel_select_list sl = p.lists[blockIdx.y];
    if (!chunks_of(sl))
        return;
    const int32_t hpg = p.hkv / p.lg, R = rows_per_head(p);
    const int32_t dk = p.dk, lane = (int32_t)threadIdx.x % 32, warp = (int32_t)threadIdx.x / 32;
    if (blockIdx.x == 0)
        for (int32_t r = (int32_t)threadIdx.x; r < R * hpg; r += (int32_t)blockDim.x)
            best_of(p, sl)[r] = fkey(-INFINITY);
    const int32_t row = (int32_t)blockIdx.x * ((int32_t)blockDim.x / 32) + warp;
    if (row >= R * hpg)
        return; /* the whole warp */
    const int32_t hh = row / R, rr = row % R, kvh = sl.group * hpg + hh;
    float *x = xs + (int64_t)warp * dk;
    float mx = 0.f;
    for (int32_t d = lane; d < dk; d += 32) {
        const float v = row_elem(p, sl, kvh, rr, d); /* a sum of adds: nothing to contract */
        x[d] = v;
        mx = fmaxf(mx, fabsf(v)); /* NaN ignored, as the CPU's a > mx */
    }
    for (int o = 16; o > 0; o /= 2)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    __syncwarp();
    float *base = qs_of(p, sl) + (int64_t)hh * attnd__select_pack_floats(R, dk);
    if (lane == 0) { /* the sum in the CPU's order */
        float sum = 0.f;
        for (int32_t d = 0; d < dk; d++)
            sum = __fadd_rn(sum, x[d]);
        base[R + rr] = sum;
    }
    float sq = NAN;
    if (isfinite(mx)) {
        sq = __fdiv_rn(mx, 127.0f);
        while ((double)sq * 127.0 < (double)mx)
            sq = nextafterf(sq, INFINITY);
    }
    const bool zero = sq == 0.f, none = !isfinite(mx) || zero; /* every code 0 */
    const int32_t qw8 = attnd__select_q8_width(dk);
    int8_t *qi = reinterpret_cast<int8_t *>(base + 2 * R) + (int64_t)rr * qw8;
    for (int32_t d = 2 * dk + lane; d < qw8; d += 32) /* the row's padding */
        qi[d] = 0;
    for (int32_t d = lane; d < dk; d += 32) {
        int32_t c = 0;
        const float v = x[d];
        if (!none) {
            const double t = (double)v / (double)sq;
            c = (int32_t)t;
            c += (double)c < t;
            while ((double)c * (double)sq < (double)v)
                c++;
        }
        qi[d] = v < 0.f ? (int8_t)c : (int8_t)0;
        qi[dk + d] = v < 0.f ? (int8_t)0 : (int8_t)c;
    }
    if (lane == 0)
        base[rr] = none ? (zero ? 1.0f : NAN) : sq;
}

__device__ __forceinline__ int32_t dp4a_us(uint32_t a, int32_t b, int32_t c)
{
    int32_t d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

/* score8_kernel: score_kernel's work on compact bounds: LPP lanes a page,
 * each up to W2 pairs of code words (8 bytes a load) of its page against up
 * to RT int8 rows in shared memory, dp4a into exact int32 sums, added
 * across the page's lanes by shuffles; then ub = off Qsum + (step sq) dot in
 * float32 with the CPU's roundings (no contraction), so the scores are
 * bitwise the CPU's. dk % 4 == 0, dk / 2 <= 2 LPP W2.
 *
 * A lane takes NB pages of a batch at once, NB * W2 loads in flight with
 * the pages' headers, issued before the query tile is read, the next
 * batch's candidates a batch ahead: the codes stay in registers for every
 * tile of rows. ncu (H100, a llama3-8b batch-16 step, 69 MB): 48.4 us, 45%
 * of DRAM's peak, 80 registers (3 CTAs an SM); the version with a page per
 * step (four steps for a 128-candidate unit, each waiting for its loads
 * after the candidate's index, the tile's load and the header's) took 58.9
 * us at 48 registers. What is left is each CTA's chain of dependent loads
 * (units' list, list, candidates, codes) against its 33 KB. */
template <int LPP, int RT, int W2, int NB>
__global__ void __launch_bounds__(SCORE_THREADS, LPP == 8 ? (RT == 4 ? 3 : 2) : 1) score8_kernel(sel_params p)
{
    static_assert(RT <= LPP && 32 % LPP == 0, "a page's lanes write its rows");
    constexpr int PPW = 32 / LPP; /* a warp's pages at once */
    extern __shared__ int32_t qw[]; /* [RT][q8_width / 4] int8 rows, then sq [RT], Qsum [RT] */
    const int unit = (int)blockIdx.x / p.split, part = (int)blockIdx.x % p.split;
    const attnd_kernel_select_list sl =
        p.lists[p.unit_list ? __ldg(p.unit_list + unit) : list_of_chunk(p, unit)];
    const int32_t hpg = p.hkv / p.lg, R = rows_per_head(p), rows = R * hpg, dk = p.dk;
    const int32_t words = attnd__select_q8_width(dk) / 4;
    const int32_t cw = dk / 2; /* code words of a row: 2 dk / 4 */
    const int32_t per = (ATTND_KERNEL_SELECT_CHUNK + p.split - 1) / p.split;
    const int32_t c0 = (unit - sl.chunk0) * ATTND_KERNEL_SELECT_CHUNK;
    const int32_t p0 = c0 + part * per;
    const int32_t p1 = min(min(p0 + per, c0 + ATTND_KERNEL_SELECT_CHUNK), sl.n_cand);
    if (p0 >= p1)
        return;
    float *ub = ub_of(p, sl);
    float *sqs = reinterpret_cast<float *>(qw + RT * words), *qss = sqs + RT;
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int32_t stride = (int32_t)blockDim.x / 32 * PPW; /* between a lane's pages */
    const int slot = lane / LPP, sub = lane % LPP;

    /* batches of NB pages a lane, the same for every warp (syncs inside);
     * the next batch's pool pages read a batch ahead */
    int32_t next[NB];
#pragma unroll
    for (int k = 0; k < NB; k++) {
        const int32_t q = p0 + k * stride + warp * PPW + slot;
        next[k] = q < p1 ? __ldg(p.cand + sl.cand0 + q) : 0;
    }
    for (int32_t b0 = p0; b0 < p1; b0 += stride * NB) {
        int32_t pp[NB], page[NB];
#pragma unroll
        for (int k = 0; k < NB; k++) {
            pp[k] = b0 + k * stride + warp * PPW + slot;
            page[k] = next[k];
            const int32_t q = pp[k] + stride * NB;
            next[k] = q < p1 ? __ldg(p.cand + sl.cand0 + q) : 0;
        }
        for (int32_t hh = 0; hh < hpg; hh++) {
            const int32_t kvh = sl.group * hpg + hh;
            uint2 c[NB][W2];
            float2 hd[NB];
#pragma unroll
            for (int k = 0; k < NB; k++) {
                const uint8_t *brow =
                        p.bounds8 + ((int64_t)kvh * p.bounds_pages + page[k]) * p.b8_row;
                const uint2 *codes = reinterpret_cast<const uint2 *>(brow + 8);
                const bool v = pp[k] < p1;
                hd[k] = v ? __ldg(reinterpret_cast<const float2 *>(brow)) : make_float2(0.f, 0.f);
#pragma unroll
                for (int i = 0; i < W2; i++) {
                    const int32_t w = sub + i * LPP; /* in pairs of words */
                    c[k][i] = v && 2 * w < cw ? __ldg(codes + w) : make_uint2(0u, 0u);
                }
            }
            const float *base = qs_of(p, sl) + (int64_t)hh * attnd__select_pack_floats(R, dk);
            const int32_t *src = reinterpret_cast<const int32_t *>(base + 2 * R);
            for (int32_t r0 = 0; r0 < R; r0 += RT) {
                const int32_t nr = min(RT, R - r0);
                __syncthreads(); /* the previous tile is no longer read */
                for (int32_t i = (int32_t)threadIdx.x; i < nr * words; i += (int32_t)blockDim.x)
                    qw[i] = src[(int64_t)r0 * words + i];
                for (int32_t i = (int32_t)threadIdx.x; i < nr; i += (int32_t)blockDim.x) {
                    sqs[i] = base[r0 + i];
                    qss[i] = base[R + r0 + i];
                }
                __syncthreads();
                float top = -INFINITY; /* row sub's best over this lane's pages */
#pragma unroll
                for (int k = 0; k < NB; k++) {
                    int32_t acc[RT];
#pragma unroll
                    for (int j = 0; j < RT; j++)
                        acc[j] = 0;
#pragma unroll
                    for (int i = 0; i < W2; i++) {
                        const int32_t w = 2 * (sub + i * LPP);
                        if (w < cw) {
#pragma unroll
                            for (int j = 0; j < RT; j++)
                                if (j < nr) {
                                    const int2 q2 =
                                            *reinterpret_cast<const int2 *>(qw + j * words + w);
                                    acc[j] = dp4a_us(c[k][i].x, q2.x, acc[j]);
                                    acc[j] = dp4a_us(c[k][i].y, q2.y, acc[j]);
                                }
                        }
                    }
                    const int32_t mine = rows_reduce<LPP, RT>(acc, nr, sub);
                    if (pp[k] < p1 && sub < nr) {
                        const float u = __fadd_rn(__fmul_rn(hd[k].x, qss[sub]),
                                                  __fmul_rn(__fmul_rn(hd[k].y, sqs[sub]),
                                                            __int2float_rn(mine)));
                        ub[(int64_t)pp[k] * rows + (int64_t)hh * R + r0 + sub] = u;
                        top = fmaxf(top, u);
                    }
                }
                best_fold<LPP>(top, lane, nr, best_of(p, sl) + (int64_t)hh * R + r0);
            }
        }
    }
}

/* The variant for R rows per KV head and d_k: GQA-like shapes a quarter
 * warp a page, four pages a lane at once for d_k up to 128 (two up to
 * 256), a unit a CTA; MLA-like (d_k up to 1024) half a warp a page, a page
 * a lane at once, a unit over 4 CTAs. */
static void score8_launch(sel_params p, int32_t R, int32_t n_chunks, cudaStream_t stream)
{
    const size_t w = (size_t)attnd__select_q8_width(p.dk);
    static_assert(ATTND_CUDA_SELECT8_MAX_DK / 2 <= 2 * 16 * 16, "MLA-like: W2 16 covers d_k");
    if (p.dk <= 256) {
        p.split = 1;
        if (R <= 4 && p.dk <= 128)
            score8_kernel<8, 4, 4, 2><<<n_chunks, SCORE_THREADS, 4 * w + 32, stream>>>(p);
        else if (R <= 4)
            score8_kernel<8, 4, 8, 2><<<n_chunks, SCORE_THREADS, 4 * w + 32, stream>>>(p);
        else if (p.dk <= 128)
            score8_kernel<8, 8, 4, 2><<<n_chunks, SCORE_THREADS, 8 * w + 64, stream>>>(p);
        else
            score8_kernel<8, 8, 8, 2><<<n_chunks, SCORE_THREADS, 8 * w + 64, stream>>>(p);
    } else {
        p.split = 4;
        if (R <= 8)
            score8_kernel<16, 8, 16, 1><<<n_chunks * 4, SCORE_THREADS, 8 * w + 64, stream>>>(p);
        else
            score8_kernel<16, 16, 16, 1><<<n_chunks * 4, SCORE_THREADS, 16 * w + 128, stream>>>(p);
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
    extern __shared__ uint32_t skeys[]; /* [SEL_SMEM_KEYS]: a list's keys when they fit */
    __shared__ uint32_t hist[256];
    __shared__ int32_t warp_base[32], sum_sh, digit_sh, rem_sh, whole_sh;
    const attnd_kernel_select_list sl = p.lists[blockIdx.x];
    const int32_t n = sl.n_cand, chunks = chunks_of(sl);
    const int32_t m0 = sl.n_head, m1 = n - sl.n_tail;
    const int32_t *cand = p.cand + sl.cand0;
    int32_t *out = p.sel_pages + sl.out0;
    int32_t *pos = p.sel_pos ? p.sel_pos + sl.out0 : nullptr;
    const bool all = sl.keep >= n;
    const int32_t t = (int32_t)threadIdx.x, bd = (int32_t)blockDim.x;
    uint32_t *keys = nullptr, thr = 0xffffffffu, tmask = 0xffffffffu;
    int32_t ties_needed = 0;
    bool whole = false; /* every key whose top bits (tmask) reach thr is kept */

    if (chunks) {
        const int32_t rows = rows_per_head(p) * (p.hkv / p.lg);
        const float *ub = ub_of(p, sl);
        keys = n <= SEL_SMEM_KEYS ? skeys
                                  : reinterpret_cast<uint32_t *>(const_cast<float *>(ub) +
                                                                 (int64_t)n * rows +
                                                                 (int64_t)chunks * rows);
        /* each middle candidate's score, as its key */
        const uint32_t *best_k = best_of(p, sl);
        for (int32_t pp = m0 + t; pp < m1; pp += bd) {
            float b = -INFINITY;
#pragma unroll 8
            for (int32_t r = 0; r < rows; r++) {
                const float v = ub[(int64_t)pp * rows + r] - fkey_inv(__ldg(best_k + r));
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
                if ((k & mask) == prefix) { /* one atomic per distinct digit of the warp */
                    const uint32_t dg = (k >> shift) & 0xffu;
                    const unsigned same = __match_any_sync(__activemask(), dg);
                    if ((threadIdx.x % 32) == (unsigned)(__ffs(same) - 1))
                        atomicAdd(&hist[dg], (uint32_t)__popc(same));
                }
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
                    whole_sh = 0;
                }
                if (hit && t == __ffs(hit) - 1) {
                    uint32_t cum = incl - s;
                    int i = 0;
                    while (i < 7 && cum + c[i] < (uint32_t)remaining)
                        cum += c[i++];
                    digit_sh = 255 - 8 * t - i;
                    rem_sh = remaining - (int32_t)cum;
                    whole_sh = (uint32_t)rem_sh == c[i]; /* the digit's keys all kept */
                }
            }
            __syncthreads();
            prefix |= (uint32_t)digit_sh << shift;
            mask |= 0xffu << shift;
            remaining = rem_sh;
            whole = whole_sh;
            __syncthreads(); /* digit_sh, rem_sh and hist are written again */
            if (whole) /* the lower digits choose nothing more (block-uniform) */
                break;
        }
        thr = prefix;
        tmask = mask;
        ties_needed = whole ? 0 : remaining; /* keys equal to thr to keep, earliest first */
    }
    /* the kept candidates, in order */
    int32_t w = 0, ties = 0;
    for (int32_t base = 0; base < n; base += bd) {
        const int32_t pp = base + t;
        const bool valid = pp < n;
        const bool mand = valid && (all || pp < m0 || pp >= m1);
        const bool scored = valid && !mand && keys != nullptr;
        const uint32_t k = scored ? keys[pp] : 0u;
        const bool tie = !whole && scored && k == thr;
        int32_t n_ties = 0, n_keep, tr = 0;
        if (ties_needed > 0) /* block-uniform */
            tr = block_rank(tie, &n_ties, warp_base, &sum_sh);
        const bool keep = mand || (scored && (whole ? (k & tmask) >= thr : k > thr)) ||
                          (tie && ties + tr < ties_needed);
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
    if (!s->lists || !s->q || (!s->bounds && !s->bounds8) || !s->cand_idx || !s->sel_pages ||
        !s->work ||
        hkv < 1 || s->n_q_heads % hkv || hkv % lg || s->q_tokens < 1 || s->kv.d_k < 1 ||
        s->n_chunks < 0 || s->head_agg < 0 ||
        (s->head_agg > 1 && (s->n_q_heads / hkv) % s->head_agg))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "select: lists, q, bounds (or bounds8), cand_idx, sel_pages, "
                               "work and a consistent shape are required");
    const int32_t agg = s->head_agg > 1 ? s->head_agg : 1, dk = s->kv.d_k;
    if (s->bounds8 && (dk % 4 || dk > ATTND_CUDA_SELECT8_MAX_DK))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "select: d_k %d; compact bounds take a multiple of 4 up to %d", dk,
                               ATTND_CUDA_SELECT8_MAX_DK);
    const int64_t rows = (int64_t)s->q_tokens * (s->n_q_heads / hkv / agg) * (hkv / lg);
    const int32_t R = (int32_t)(rows / (hkv / lg)); /* rows per KV head */
    const int32_t rt = R <= 4 && dk <= 256 ? 4 : R <= 8 ? 8 : SCORE_ROWS; /* score_launch's */
    const int32_t qrows = SCORE_SMEM / 4 / dk < rt ? SCORE_SMEM / 4 / dk : rt;
    if (qrows < 1)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "select: d_k %d; the GPU selection takes d_k up to %d", dk,
                               SCORE_SMEM / 4);
    sel_params p = {s->lists,      s->n_lists,  s->q_tokens,
                    s->n_q_heads,  hkv,         lg,
                    dk,            agg,         qrows,       1,
                    static_cast<const uint16_t *>(s->q), s->bounds, s->bounds_pages,
                    s->cand_idx,   s->sel_pages, s->sel_pos,
                    s->work,       s->unit_list,
                    s->bounds8,    (int64_t)attnd_kernel_kv_bounds8_row(&s->kv)};
    if (s->n_chunks > 0 && s->bounds8) {
        const unsigned warps = QSUM_THREADS / 32;
        const dim3 qgrid((unsigned)((rows + warps - 1) / warps), (unsigned)s->n_lists);
        qpack8_kernel<<<qgrid, QSUM_THREADS, warps * (size_t)dk * sizeof(float), ctx->stream>>>(p);
        score8_launch(p, R, s->n_chunks, ctx->stream);
    } else if (s->n_chunks > 0 && !mma_launch(p, R, s->n_chunks, ctx->stream)) {
        const int64_t qn = rows * dk; /* query floats of a list */
        const dim3 qgrid((unsigned)((qn + QSUM_THREADS - 1) / QSUM_THREADS), (unsigned)s->n_lists);
        qsum_kernel<<<qgrid, QSUM_THREADS, 0, ctx->stream>>>(p);
        const size_t smem = (size_t)qrows * (size_t)dk * sizeof(float);
        if (dk % 4 == 0)
            score_launch<true>(p, R, s->n_chunks, smem, ctx->stream);
        else
            score_launch<false>(p, R, s->n_chunks, smem, ctx->stream);
    }
    select_kernel<<<s->n_lists, SEL_THREADS, SEL_SMEM_KEYS * sizeof(uint32_t), ctx->stream>>>(p);
    return attnd__cuda_launched(err, "page selection");
}
