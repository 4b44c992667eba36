/* Page scoring on tensor cores for lists of one KV head and up to 8 query
 * rows (MLA's default of 8 rows of 16 heads; GQA per KV head when its
 * bounds are bf16), d_k a multiple of 32 up to MMA_MAX_DK: select.cu's
 * qsum_kernel and score_kernel for those shapes.
 *
 * A page's upper bound for query row r is ub = sum_d q_d (q_d > 0 ? hi_d :
 * lo_d) = [lo | hi] . [q-_r | q+_r], with q- = (q <= 0 ? q : 0) and q+ =
 * (q > 0 ? q : 0): a product of the pages' bound rows (2 d_k bf16, as the
 * pool keeps them: lo then hi) and a 2 d_k x 8 matrix of the rows. The rows
 * are float32 sums of heads; each is split into two bf16 parts (x = hi +
 * lo to ~2^-16 relative), so the matrix is 2 d_k x 16 (columns 0-7 the
 * rows' first parts, 8-15 their rests) and ub is the sum of a row's two
 * columns, float32-accumulated products of bf16 values: the CPU's score up
 * to rounding in the last bits (test_cuda allows 1% of kept pages to
 * differ on the bf16 path, as for the order of float32 sums before).
 *
 * - qprep_kernel (a grid of row elements per list): each row as qsum_kernel
 *   sums it, stored as its two bf16 parts [2][R][d_k] in the list's
 *   packed-query room; resets the rows' best.
 * - score_mma_kernel (a CTA of 4 warps per half unit, 64 candidates): the
 *   16 x 2 d_k matrix expanded into shared memory, 8 elements a step (the
 *   zero halves of q+ and q- made there) while the first bounds are
 *   already in flight, then a warp per 16 pages: per 32 bound elements a
 *   lane loads 16 bytes of each of its two pages (rows g and g + 8 of the
 *   m16n8k16 tile) and 16 bytes of each column half of the matrix, and
 *   runs four mma.sync (two k steps, two n tiles). The k order inside a 32
 *   element chunk is permuted alike in both operands (lane t's logical k
 *   2t, 2t+1, 2t+8, 2t+9 are its physical 8t..8t+3, then 8t+4..8t+7), so
 *   every load is 16 contiguous bytes.
 *
 * Non-finite scores keep the CPU's meaning: where a tile's sum is not
 * finite (an infinite bound times a zero weight is NaN here and not on the
 * CPU, or a bound near the float range, or a NaN query), that page and row
 * are scored again by one lane as score_kernel scores them, from the
 * query's heads and the bounds in global memory.
 *
 * ncu on an H100 (DeepSeek-V3, 128K context, batch 16: 75.5 MB of bounds):
 * score_kernel 75 us (30% of DRAM's peak; 8 rows x d_k multiply-adds and
 * shared loads per page on CUDA cores), this kernel 33.7 us (67%); with
 * the matrix filled an element at a time and no load ahead, 59.9 us. */
#include <cuda_bf16.h>

#include "ctx_int.h"
#include "ptx.cuh"
#include "select_int.cuh"

namespace attnd_sel {
namespace {

constexpr int QPREP_THREADS = 256;
constexpr int MMA_WARPS = 4;
constexpr int MMA_PAGES = 16 * MMA_WARPS; /* candidates a CTA */
constexpr int MMA_SPLIT = ATTND_KERNEL_SELECT_CHUNK / MMA_PAGES;
constexpr int MMA_COLS = 16;     /* 8 rows' first parts, then their rests */
constexpr int MMA_PAD = 8;       /* bf16 a matrix row: banks apart */
constexpr int MMA_UNROLL = 4;    /* 32-element chunks a lane loads at once */

static_assert(ATTND_KERNEL_SELECT_CHUNK % MMA_PAGES == 0, "half units");

__device__ __forceinline__ uint16_t bf16_bits(float x)
{
    const __nv_bfloat16 b = __float2bfloat16_rn(x);
    return *reinterpret_cast<const uint16_t *>(&b);
}

/* The rows' two parts [2][R][dk] (bf16 bits) in the list's packed-query
 * room (R dk floats of its 2 R dk); blockIdx.y the list. */
__global__ void qprep_kernel(sel_params p)
{
    const attnd_kernel_select_list sl = p.lists[blockIdx.y];
    if (!chunks_of(sl))
        return;
    const int32_t R = rows_per_head(p), dk = p.dk;
    if (blockIdx.x == 0)
        for (int32_t r = (int32_t)threadIdx.x; r < R; r += (int32_t)blockDim.x)
            best_of(p, sl)[r] = fkey(-INFINITY);
    uint16_t *parts = reinterpret_cast<uint16_t *>(qs_of(p, sl));
    const int64_t n = (int64_t)R * dk;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float x = row_elem(p, sl, sl.group, (int32_t)(i / dk), (int32_t)(i % dk));
        const uint16_t h = bf16_bits(x);
        parts[i] = h;
        parts[n + i] = bf16_bits(x - bf16f(h)); /* NaN and infinities: NaN, caught later */
    }
}

/* x > 0 from its parts (a tiny x whose first part rounded to zero: its rest) */
__device__ __forceinline__ bool part_pos(uint16_t h, uint16_t l)
{
    const float fh = bf16f(h);
    return fh > 0.f || (fh == 0.f && bf16f(l) > 0.f);
}

/* Both bf16 halves of a word: 0xffff where that element's x > 0. */
__device__ __forceinline__ uint32_t pos_mask(uint32_t h, uint32_t l)
{
    const uint32_t m0 = part_pos((uint16_t)(h & 0xffffu), (uint16_t)(l & 0xffffu)) ? 0xffffu : 0u;
    const uint32_t m1 = part_pos((uint16_t)(h >> 16), (uint16_t)(l >> 16)) ? 0xffff0000u : 0u;
    return m0 | m1;
}

/* Chunks c0 .. c0 + MMA_UNROLL of two pages' bound rows: lane t's 16 bytes
 * of each 32-element chunk (zeros past the row). */
__device__ __forceinline__ void load_chunks(uint4 (&a)[MMA_UNROLL], uint4 (&b)[MMA_UNROLL],
                                            const uint16_t *row_a, const uint16_t *row_b,
                                            int32_t c0, int32_t chunks, int t)
{
#pragma unroll
    for (int u = 0; u < MMA_UNROLL; u++) {
        const int32_t c = c0 + u;
        const bool in = c < chunks;
        a[u] = in ? __ldg(reinterpret_cast<const uint4 *>(row_a + 32 * c + 8 * t))
                  : make_uint4(0u, 0u, 0u, 0u);
        b[u] = in ? __ldg(reinterpret_cast<const uint4 *>(row_b + 32 * c + 8 * t))
                  : make_uint4(0u, 0u, 0u, 0u);
    }
}

/* score_kernel's arithmetic for one page and row, in order (the fallback). */
__device__ float score_exact(const sel_params &p, const attnd_kernel_select_list &sl, int32_t r,
                             const uint16_t *lo)
{
    float acc = 0.f;
    for (int32_t d = 0; d < p.dk; d++) {
        const float x = row_elem(p, sl, sl.group, r, d);
        acc = fmaf(x, x > 0.f ? bf16f(__ldg(lo + p.dk + d)) : bf16f(__ldg(lo + d)), acc);
    }
    return acc;
}

__global__ void __launch_bounds__(MMA_WARPS * 32) score_mma_kernel(sel_params p)
{
    extern __shared__ __align__(16) uint16_t bm[]; /* [MMA_COLS][2 dk + MMA_PAD] */
    const int unit = (int)blockIdx.x / MMA_SPLIT, part = (int)blockIdx.x % MMA_SPLIT;
    const attnd_kernel_select_list sl =
        p.lists[p.unit_list ? __ldg(p.unit_list + unit) : list_of_chunk(p, unit)];
    const int32_t R = rows_per_head(p), dk = p.dk, k2 = 2 * dk, pitch = k2 + MMA_PAD;
    const int32_t c0 = (unit - sl.chunk0) * ATTND_KERNEL_SELECT_CHUNK;
    const int32_t p0 = c0 + part * MMA_PAGES;
    const int32_t p1 = min(min(p0 + MMA_PAGES, c0 + ATTND_KERNEL_SELECT_CHUNK), sl.n_cand);
    if (p0 >= p1)
        return; /* the whole block */
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    /* this warp's pages (rows g and g + 8 of its tile), read before the
     * matrix is made */
    const int32_t pa = p0 + warp * 16 + g, pb = pa + 8;
    const int32_t kvh = sl.group; /* one KV head a list */
    const int32_t page_a = pa < p1 ? __ldg(p.cand + sl.cand0 + pa) : 0;
    const int32_t page_b = pb < p1 ? __ldg(p.cand + sl.cand0 + pb) : 0;
    const uint16_t *row_a = p.bounds + ((int64_t)kvh * p.bounds_pages + page_a) * k2;
    const uint16_t *row_b = p.bounds + ((int64_t)kvh * p.bounds_pages + page_b) * k2;

    const int32_t chunks = k2 / 32;
    uint4 a[MMA_UNROLL], b[MMA_UNROLL]; /* the first chunks' bounds, in flight during the fill */
    load_chunks(a, b, row_a, row_b, 0, chunks, t);

    /* the matrix, 8 elements a step: column n < 8 row n's first part, n >= 8
     * row n - 8's rest; element k < dk weighs lo (x <= 0), k >= dk hi (x > 0) */
    const uint16_t *parts = reinterpret_cast<const uint16_t *>(qs_of(p, sl));
    const int64_t np = (int64_t)R * dk;
    const int32_t d8 = dk / 8;
    for (int32_t i = (int32_t)threadIdx.x; i < 8 * d8; i += (int32_t)blockDim.x) {
        const int32_t r = i / d8, d = i % d8 * 8;
        uint4 h = make_uint4(0u, 0u, 0u, 0u), l = h;
        if (r < R) {
            h = *reinterpret_cast<const uint4 *>(parts + (int64_t)r * dk + d);
            l = *reinterpret_cast<const uint4 *>(parts + np + (int64_t)r * dk + d);
        }
        const uint4 m = make_uint4(pos_mask(h.x, l.x), pos_mask(h.y, l.y), pos_mask(h.z, l.z),
                                   pos_mask(h.w, l.w));
        uint16_t *c1 = bm + r * pitch + d, *c2 = bm + (8 + r) * pitch + d;
        *reinterpret_cast<uint4 *>(c1) =
                make_uint4(h.x & ~m.x, h.y & ~m.y, h.z & ~m.z, h.w & ~m.w);
        *reinterpret_cast<uint4 *>(c1 + dk) = make_uint4(h.x & m.x, h.y & m.y, h.z & m.z, h.w & m.w);
        *reinterpret_cast<uint4 *>(c2) =
                make_uint4(l.x & ~m.x, l.y & ~m.y, l.z & ~m.z, l.w & ~m.w);
        *reinterpret_cast<uint4 *>(c2 + dk) = make_uint4(l.x & m.x, l.y & m.y, l.z & m.z, l.w & m.w);
    }
    __syncthreads();

    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    const uint16_t *b_lo = bm + g * pitch + 8 * t, *b_hi = bm + (8 + g) * pitch + 8 * t;
    for (int32_t cb = 0; cb < chunks; cb += MMA_UNROLL) {
        uint4 na[MMA_UNROLL], nb[MMA_UNROLL]; /* the next chunks, loaded a step ahead */
        load_chunks(na, nb, row_a, row_b, cb + MMA_UNROLL, chunks, t);
#pragma unroll
        for (int u = 0; u < MMA_UNROLL; u++) {
            const int32_t c = cb + u;
            if (c >= chunks)
                break;
            const uint4 q0 = *reinterpret_cast<const uint4 *>(b_lo + 32 * c);
            const uint4 q1 = *reinterpret_cast<const uint4 *>(b_hi + 32 * c);
            const uint32_t s0[4] = {a[u].x, b[u].x, a[u].y, b[u].y};
            const uint32_t s1[4] = {a[u].z, b[u].z, a[u].w, b[u].w};
            attnd__mma_bf16_16816(acc[0], s0, q0.x, q0.y);
            attnd__mma_bf16_16816(acc[1], s0, q1.x, q1.y);
            attnd__mma_bf16_16816(acc[0], s1, q0.z, q0.w);
            attnd__mma_bf16_16816(acc[1], s1, q1.z, q1.w);
        }
#pragma unroll
        for (int u = 0; u < MMA_UNROLL; u++) {
            a[u] = na[u];
            b[u] = nb[u];
        }
    }

    /* lane (g, t) holds rows 2t, 2t + 1 of pages pa (acc[.][0..1]) and pb
     * (acc[.][2..3]): first parts in acc[0], rests in acc[1] */
    float *ub = ub_of(p, sl);
    float top[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int32_t r = 2 * t + (e & 1), pp = e < 2 ? pa : pb;
        if (r >= R || pp >= p1)
            continue;
        float u = acc[0][e] + acc[1][e];
        if (!isfinite(u))
            u = score_exact(p, sl, r, e < 2 ? row_a : row_b);
        ub[(int64_t)pp * R + r] = u;
        top[e & 1] = fmaxf(top[e & 1], u); /* ignores NaN, as the CPU */
    }
    /* the warp's best per row: lanes of the same t, then one atomic a row */
#pragma unroll
    for (int j = 0; j < 2; j++) {
        float v = top[j];
        for (int o = 4; o < 32; o *= 2)
            v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        const int32_t r = 2 * t + j;
        if (g == 0 && r < R && v > -INFINITY)
            atomicMax(best_of(p, sl) + r, fkey(v));
    }
}

} // namespace

bool mma_launch(sel_params p, int32_t R, int32_t n_chunks, cudaStream_t stream)
{
    if (p.hkv / p.lg != 1 || R < 1 || R > 8 || p.dk % 32 || p.dk > MMA_MAX_DK)
        return false;
    const int64_t qn = (int64_t)R * p.dk;
    const dim3 qgrid((unsigned)((qn + QPREP_THREADS - 1) / QPREP_THREADS), (unsigned)p.n_lists);
    qprep_kernel<<<qgrid, QPREP_THREADS, 0, stream>>>(p);
    const size_t smem = (size_t)MMA_COLS * (size_t)(2 * p.dk + MMA_PAD) * sizeof(uint16_t);
    score_mma_kernel<<<(unsigned)(n_chunks * MMA_SPLIT), MMA_WARPS * 32, smem, stream>>>(p);
    return true;
}

} // namespace attnd_sel
