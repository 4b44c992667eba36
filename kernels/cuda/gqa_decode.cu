/* GQA / MHA / MQA paged decode on Hopper: mma.sync tensor cores, TMA loads.
 *
 * A stream is one (sequence, KV head); its rows are the q_tokens x (Hq /
 * Hkv) query rows that read that KV head, taken 16 * NMT at a time (one
 * row block per blockIdx.x). One persistent CTA per (row block, part of
 * the plan) runs its units; per 64-token tile:
 *
 *   producer warp   TMA: the tile's K rows and V rows of the KV head (two
 *                   64-token x head_dim boxes, 128-byte swizzled) into a
 *                   ring of STAGES stages (full/empty mbarriers).
 *   4 MMA warps     warp w takes tokens [16w, 16w + 16) of the tile: S =
 *                   Q K^T with m16n8k16 (Q fragments stay in registers for
 *                   the whole unit, K fragments by ldmatrix), mask, its own
 *                   online softmax (float32, base 2), then O += P V with P
 *                   straight from the S accumulators and V by ldmatrix.trans.
 *
 * Each warp keeps its own (max, sum, O) over its slice of every tile; at
 * the end of a unit the four states are merged through shared memory and
 * written: bf16 / float32 outputs and LSE, or a float32 partial state to
 * the plan's slot (the last unit of a split stream merges them: unit.cuh). Tokens past the list's end are masked in S and their V
 * values zeroed in registers (pages there may hold NaN). The tensor cores
 * are far from busy (a decode row block is at most 32 rows): the kernel
 * lives on keeping enough TMA bytes in flight: 4 stages of 32 KB (head dim
 * 128) or 8 of 16 KB (64) per SM.
 *
 * Non-finite values follow attnd_kernels.h's rule, as on the CPU: a row
 * that meets a non-finite score (made NaN before the mask: l turns NaN),
 * a non-finite O element,
 * or a non-finite V element of a token only some rows see (S > 1: zeroed
 * in registers, its rows flagged) comes out NaN in every element and in
 * lse; a warp's flag travels as l = NaN through the warps' merge. */
#include <cuda_runtime.h>

#include "cuda_int.h"
#include "ptx.cuh"
#include "unit.cuh"

namespace {

template <int D, int NMT> struct GqaCfg {
    static constexpr int KB = D / 64;            /* 64-column blocks per row */
    static constexpr int BLK = 64 * 128;         /* one swizzled 64 x 64 block */
    static constexpr int TILE_BYTES = KB * BLK;  /* K (or V) of one tile */
    static constexpr int STAGE_BYTES = 2 * TILE_BYTES;
    static constexpr int RB = 16 * NMT;          /* rows per CTA */
    static constexpr int OPAD = D + 4;           /* merge row pitch (floats) */
    static constexpr int MERGE_BYTES = 4 * RB * OPAD * 4 + 2 * 4 * RB * 4;
    static constexpr int FIT = (227 * 1024 - 1024 - MERGE_BYTES - 256) / STAGE_BYTES;
    /* 4 x 32 KB measured 1-4% faster than 6 x 32 KB (NOTES.md, run 7) */
    static constexpr int WANT = D == 128 ? 4 : 8;
    static constexpr int STAGES = FIT < WANT ? FIT : WANT;
    static constexpr int SMEM = 1024 + STAGES * STAGE_BYTES + MERGE_BYTES + 256;
};

constexpr int THREADS = 160; /* 4 MMA warps + 1 producer warp */
constexpr uint32_t BAR_MERGE = 1, BAR_FIN = 2;
/* Tokens [0, lim) of a warp's 16-token slice, as bits. */
__device__ __forceinline__ uint32_t seen16(int32_t lim)
{
    return lim >= 16 ? 0xffffu : lim <= 0 ? 0u : (1u << lim) - 1u;
}

/* OR of a per-thread flag over the 4 lanes holding one row. */
__device__ __forceinline__ bool quad_any(bool b)
{
    int x = b;
    x |= __shfl_xor_sync(0xffffffffu, x, 1);
    x |= __shfl_xor_sync(0xffffffffu, x, 2);
    return x != 0;
}

/* P is rounded to bf16 relative to its 16-token slice's own row max unless
 * that is more than 2^REF_FLOOR below the running max: results agree across
 * split counts to float32 rounding (see mla_decode.cu). */
constexpr float REF_FLOOR = 20.f;

template <int D, int NMT>
__device__ void producer(const attnd__dec_params &p, const CUtensorMap *tmap, uint8_t *sKV,
                         uint64_t *full, uint64_t *empty, int32_t u0, int32_t u1)
{
    using C = GqaCfg<D, NMT>;
    if ((threadIdx.x & 31) == 0)
        attnd__tma_prefetch_desc(tmap);
    attnd__produce<C::STAGES>(
        p, u0, u1, empty, [&](int stage, int32_t page, int32_t slot, const attnd__unit &un) {
            const int32_t kvh = un.stream % p.sps;
            uint8_t *dst = sKV + stage * C::STAGE_BYTES;
            attnd__mbar_expect_tx(&full[stage], C::STAGE_BYTES);
#pragma unroll
            for (int c = 0; c < C::KB; c++) {
                attnd__tma_load_3d(dst + c * C::BLK, tmap, &full[stage], c * 64,
                                   kvh * p.page_size + slot, page);
                attnd__tma_load_3d(dst + C::TILE_BYTES + c * C::BLK, tmap, &full[stage], c * 64,
                                   (p.hkv + kvh) * p.page_size + slot, page);
            }
        },
        [](const attnd__unit &) {});
}

/* Shared-memory byte offset of 16-byte chunk `ch` (of the whole D row) of
 * token row `r` in a swizzled tile. */
__device__ __forceinline__ uint32_t swz(int r, int ch)
{
    return (uint32_t)((ch >> 3) * (64 * 128) + r * 128 + (((ch & 7) ^ (r & 7)) << 4));
}

template <int D, int NMT>
__device__ void mma_warp(const attnd__dec_params &p, uint8_t *sKV, float *sMerge, int *sFlag,
                         uint64_t *full, uint64_t *empty, int32_t u0, int32_t u1)
{
    using C = GqaCfg<D, NMT>;
    constexpr int NK = D / 16; /* k-steps of S, n-pairs of O */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int32_t row0 = blockIdx.x * C::RB;
    const float sl2 = p.scale_log2;
    const uint32_t kv_addr = attnd__smem_u32(sKV);
    float *mO = sMerge;                        /* [4][RB][OPAD] */
    float *mM = sMerge + 4 * C::RB * C::OPAD;  /* [4][RB] */
    float *mL = mM + 4 * C::RB;                /* [4][RB] */
    int stage = 0;
    uint32_t phase = 0;

    for (int32_t u = u0; u < u1; u++) {
        const attnd__unit un = attnd__load_unit(p, u);

        /* Q fragments (rows g = row0 + 16 mt + lane/4 (+8)), zero past rows */
        uint32_t qa[NMT][NK][4];
        int32_t vis[NMT][2];
        const uint16_t *q = static_cast<const uint16_t *>(p.q);
#pragma unroll
        for (int mt = 0; mt < NMT; mt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int32_t g = row0 + 16 * mt + (lane >> 2) + 8 * h;
                bool ok = g < p.rows;
                vis[mt][h] = ok ? un.len - (p.q_tokens - 1 - g / p.hs) : 0;
                const uint32_t *src =
                    ok ? reinterpret_cast<const uint32_t *>(q + attnd__out_row(p, un.stream, g) * D) : nullptr;
#pragma unroll
                for (int kk = 0; kk < NK; kk++) {
                    qa[mt][kk][h] = ok ? __ldg(src + 8 * kk + (lane & 3)) : 0u;
                    qa[mt][kk][h + 2] = ok ? __ldg(src + 8 * kk + 4 + (lane & 3)) : 0u;
                }
            }

        float o[NMT][2 * NK][4];
        float m[NMT][2], l[NMT][2], mr[NMT][2]; /* reference, sum, running max */
        bool bad[NMT][2];                       /* rows poisoned by a tail V */
#pragma unroll
        for (int mt = 0; mt < NMT; mt++) {
            bad[mt][0] = bad[mt][1] = false;
#pragma unroll
            for (int n = 0; n < 2 * NK; n++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    o[mt][n][e] = 0.f;
            m[mt][0] = m[mt][1] = -INFINITY;
            mr[mt][0] = mr[mt][1] = -INFINITY;
            l[mt][0] = l[mt][1] = 0.f;
        }

        for (int32_t t = un.tile0; t < un.tile1; t++) {
            attnd__mbar_wait(&full[stage], phase);
            const uint32_t kb_addr = kv_addr + stage * C::STAGE_BYTES;
            const uint32_t vb_addr = kb_addr + C::TILE_BYTES;
            const int tw = 16 * warp; /* this warp's first token in the tile */

            /* S = Q K^T over tokens tw..tw+15 */
            float s[NMT][2][4];
#pragma unroll
            for (int mt = 0; mt < NMT; mt++)
#pragma unroll
                for (int n = 0; n < 2; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        s[mt][n][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < NK; kk++) {
                const int i = lane >> 3;
                const int r = tw + (lane & 7) + ((i >> 1) << 3);
                uint32_t kb[4];
                attnd__ldsm_x4(kb, kb_addr + swz(r, 2 * kk + (i & 1)));
#pragma unroll
                for (int mt = 0; mt < NMT; mt++) {
                    attnd__mma_bf16_16816(s[mt][0], qa[mt][kk], kb[0], kb[1]);
                    attnd__mma_bf16_16816(s[mt][1], qa[mt][kk], kb[2], kb[3]);
                }
            }

            /* mask, online softmax, P fragments */
            const int32_t tok0 = t * ATTND__CUDA_TILE + tw;
            uint32_t pa[NMT][4];
#pragma unroll
            for (int mt = 0; mt < NMT; mt++) {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    /* a non-finite score becomes NaN (0 s + s), which makes
                     * l NaN (an unmasked -inf would pass for a masked token);
                     * before the mask, which overwrites */
#pragma unroll
                    for (int n = 0; n < 2; n++)
#pragma unroll
                        for (int e = 0; e < 2; e++)
                            s[mt][n][2 * h + e] =
                                __fmaf_rn(0.f, s[mt][n][2 * h + e], s[mt][n][2 * h + e]);
                    const int32_t lim = vis[mt][h] - tok0;
                    if (lim < 16) {
#pragma unroll
                        for (int n = 0; n < 2; n++)
#pragma unroll
                            for (int e = 0; e < 2; e++)
                                if (8 * n + 2 * (lane & 3) + e >= lim)
                                    s[mt][n][2 * h + e] = -INFINITY;
                    }
                    float mx = fmaxf(fmaxf(s[mt][0][2 * h], s[mt][0][2 * h + 1]),
                                     fmaxf(s[mt][1][2 * h], s[mt][1][2 * h + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    mx *= sl2;
                    mr[mt][h] = fmaxf(mr[mt][h], mx);
                    const float rn = fmaxf(mx, mr[mt][h] - REF_FLOOR);
                    const float mu = rn == -INFINITY ? 0.f : rn;
                    const float al = attnd__exp2(m[mt][h] - mu);
                    m[mt][h] = rn;
                    float sum = 0.f;
#pragma unroll
                    for (int n = 0; n < 2; n++)
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            float v = attnd__exp2(fmaf(s[mt][n][2 * h + e], sl2, -mu));
                            s[mt][n][2 * h + e] = v;
                            sum += v;
                        }
                    l[mt][h] = l[mt][h] * al + sum;
#pragma unroll
                    for (int n = 0; n < 2 * NK; n++) {
                        o[mt][n][2 * h] *= al;
                        o[mt][n][2 * h + 1] *= al;
                    }
                }
                pa[mt][0] = attnd__pack_bf16(s[mt][0][0], s[mt][0][1]);
                pa[mt][1] = attnd__pack_bf16(s[mt][0][2], s[mt][0][3]);
                pa[mt][2] = attnd__pack_bf16(s[mt][1][0], s[mt][1][1]);
                pa[mt][3] = attnd__pack_bf16(s[mt][1][2], s[mt][1][3]);
            }

            /* O += P V; V rows past the list's end are zeroed, and with S > 1
             * non-finite V of the last S - 1 tokens (seen by only some rows:
             * 0 * NaN is NaN for the others) is zeroed and its rows flagged */
            const int32_t nv = un.len - tok0; /* valid tokens from tw on */
            const int32_t tl = nv - (p.q_tokens - 1);
            const bool tail = tl < 16 && tl < nv;
            uint32_t badtok = 0; /* bit k: token tok0 + k has a non-finite V */
#pragma unroll
            for (int np = 0; np < NK; np++) {
                const int i = lane >> 3;
                const int r = tw + (lane & 7) + ((i & 1) << 3);
                uint32_t vb[4];
                attnd__ldsm_x4_trans(vb, vb_addr + swz(r, 2 * np + (i >> 1)));
                if (nv < 16) {
                    const int k0 = 2 * (lane & 3);
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        const int k = k0 + ((j & 1) << 3);
                        uint32_t keep = (k < nv ? 0x0000ffffu : 0u) | (k + 1 < nv ? 0xffff0000u : 0u);
                        vb[j] &= keep;
                    }
                }
                if (tail) {
                    const int k0 = 2 * (lane & 3);
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        const int k = k0 + ((j & 1) << 3);
                        if (k >= tl && k < nv && (vb[j] & 0x7f80u) == 0x7f80u) {
                            vb[j] &= 0xffff0000u;
                            badtok |= 1u << k;
                        }
                        if (k + 1 >= tl && k + 1 < nv && (vb[j] & 0x7f800000u) == 0x7f800000u) {
                            vb[j] &= 0x0000ffffu;
                            badtok |= 1u << (k + 1);
                        }
                    }
                }
#pragma unroll
                for (int mt = 0; mt < NMT; mt++) {
                    attnd__mma_bf16_16816(o[mt][2 * np], pa[mt], vb[0], vb[1]);
                    attnd__mma_bf16_16816(o[mt][2 * np + 1], pa[mt], vb[2], vb[3]);
                }
            }
            if (tail) {
                badtok = __reduce_or_sync(0xffffffffu, badtok);
#pragma unroll
                for (int mt = 0; mt < NMT; mt++)
#pragma unroll
                    for (int h = 0; h < 2; h++)
                        bad[mt][h] |= (badtok & seen16(vis[mt][h] - tok0)) != 0;
            }
            __syncwarp();
            if (lane == 0)
                attnd__mbar_arrive(&empty[stage]);
            if (++stage == C::STAGES) {
                stage = 0;
                phase ^= 1;
            }
        }

        /* merge the four warps' states through shared memory */
#pragma unroll
        for (int mt = 0; mt < NMT; mt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float lv = l[mt][h];
                lv += __shfl_xor_sync(0xffffffffu, lv, 1);
                lv += __shfl_xor_sync(0xffffffffu, lv, 2);
                bool b = bad[mt][h];
#pragma unroll
                for (int n = 0; n < 2 * NK; n++)
                    b |= !isfinite(o[mt][n][2 * h]) || !isfinite(o[mt][n][2 * h + 1]);
                if (quad_any(b))
                    lv = __int_as_float(0x7fc00000); /* poisoned: see the file comment */
                const int r = 16 * mt + (lane >> 2) + 8 * h;
                float *dst = mO + (warp * C::RB + r) * C::OPAD + 2 * (lane & 3);
#pragma unroll
                for (int n = 0; n < 2 * NK; n++)
                    *reinterpret_cast<float2 *>(dst + 8 * n) =
                        make_float2(o[mt][n][2 * h], o[mt][n][2 * h + 1]);
                if ((lane & 3) == 0) {
                    mM[warp * C::RB + r] = m[mt][h];
                    mL[warp * C::RB + r] = lv;
                }
            }
        attnd__bar_sync(BAR_MERGE, 128);
        for (int idx = tid; idx < C::RB * (D / 2); idx += 128) {
            const int r = idx / (D / 2), col = 2 * (idx % (D / 2));
            const int32_t g = row0 + r;
            if (g >= p.rows)
                continue;
            float mw[4], M = -INFINITY;
            bool poisoned = false; /* fmaxf drops NaN: tracked apart */
#pragma unroll
            for (int w = 0; w < 4; w++) {
                mw[w] = mM[w * C::RB + r];
                M = fmaxf(M, mw[w]);
                poisoned |= isnan(mL[w * C::RB + r]);
            }
            float2 acc = make_float2(0.f, 0.f);
            float lsum = 0.f, lse = -INFINITY;
            if (poisoned) {
                lse = __int_as_float(0x7fc00000);
                acc = make_float2(lse, lse);
            } else if (M != -INFINITY) {
#pragma unroll
                for (int w = 0; w < 4; w++) {
                    const float f = attnd__exp2(mw[w] - M);
                    const float2 v = *reinterpret_cast<const float2 *>(mO + (w * C::RB + r) * C::OPAD + col);
                    lsum += f * mL[w * C::RB + r];
                    acc.x += f * v.x;
                    acc.y += f * v.y;
                }
                const float inv = 1.f / lsum;
                acc.x *= inv;
                acc.y *= inv;
                lse = (M + __log2f(lsum)) * ATTND_LN2;
            }
            if (un.slot >= 0) {
                *reinterpret_cast<float2 *>(p.part_o + ((int64_t)un.slot * p.rows + g) * D + col) = acc;
                if (col == 0)
                    p.part_lse[(int64_t)un.slot * p.rows + g] = lse;
            } else {
                const int64_t orow = attnd__out_row(p, un.stream, g);
                if (p.out_f32)
                    *reinterpret_cast<float2 *>(static_cast<float *>(p.out) + orow * D + col) = acc;
                else
                    *reinterpret_cast<uint32_t *>(static_cast<uint16_t *>(p.out) + orow * D + col) =
                        attnd__pack_bf16(acc.x, acc.y);
                if (col == 0 && p.lse)
                    p.lse[orow] = lse;
            }
        }
        attnd__bar_sync(BAR_MERGE, 128);
        if (un.slot >= 0)
            attnd__split_arrive_merge(p, un, row0, row0 + C::RB, tid, 128, BAR_FIN, sFlag, mM);
    }
}

template <int D, int NMT>
__global__ void __launch_bounds__(THREADS, 1)
    attnd__gqa_decode_kernel(const __grid_constant__ attnd__dec_params p,
                             const __grid_constant__ CUtensorMap tmap)
{
    using C = GqaCfg<D, NMT>;
    extern __shared__ uint8_t smem_raw[];
    uint8_t *smem = reinterpret_cast<uint8_t *>(
        (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~static_cast<uintptr_t>(1023));
    uint8_t *sKV = smem;
    float *sMerge = reinterpret_cast<float *>(sKV + C::STAGES * C::STAGE_BYTES);
    uint64_t *full = reinterpret_cast<uint64_t *>(reinterpret_cast<uint8_t *>(sMerge) + C::MERGE_BYTES);
    uint64_t *empty = full + C::STAGES;
    int *sFlag = reinterpret_cast<int *>(empty + C::STAGES);

    const int32_t u0 = __ldg(p.part_ptr + blockIdx.y), u1 = __ldg(p.part_ptr + blockIdx.y + 1);
    if (threadIdx.x == 0) {
        for (int s = 0; s < C::STAGES; s++) {
            attnd__mbar_init(&full[s], 1);
            attnd__mbar_init(&empty[s], 4);
        }
        attnd__mbar_init_fence();
    }
    __syncthreads();
    if (threadIdx.x >= 128) {
        producer<D, NMT>(p, &tmap, sKV, full, empty, u0, u1);
    } else {
        mma_warp<D, NMT>(p, sKV, sMerge, sFlag, full, empty, u0, u1);
    }
}

template <int D, int NMT>
int launch(const attnd__dec_params *p, const void *tmap, int nrb, int nparts, void *stream)
{
    dim3 grid((unsigned)nrb, (unsigned)nparts);
    attnd__gqa_decode_kernel<D, NMT><<<grid, THREADS, GqaCfg<D, NMT>::SMEM, (cudaStream_t)stream>>>(
        *p, *static_cast<const CUtensorMap *>(tmap));
    return (int)cudaGetLastError();
}

template <int D, int NMT> int prepare()
{
    return (int)cudaFuncSetAttribute(attnd__gqa_decode_kernel<D, NMT>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      GqaCfg<D, NMT>::SMEM);
}

} /* namespace */

extern "C" int attnd__gqa_prepare(int d, int nmt)
{
    if (d == 128 && nmt == 1) return prepare<128, 1>();
    if (d == 128 && nmt == 2) return prepare<128, 2>();
    if (d == 64 && nmt == 1) return prepare<64, 1>();
    if (d == 64 && nmt == 2) return prepare<64, 2>();
    return (int)cudaErrorInvalidValue;
}

extern "C" int attnd__gqa_launch(int d, int nmt, const attnd__dec_params *p, const void *tmap,
                                 int n_row_blocks, int n_parts, void *stream)
{
    if (d == 128 && nmt == 1) return launch<128, 1>(p, tmap, n_row_blocks, n_parts, stream);
    if (d == 128 && nmt == 2) return launch<128, 2>(p, tmap, n_row_blocks, n_parts, stream);
    if (d == 64 && nmt == 1) return launch<64, 1>(p, tmap, n_row_blocks, n_parts, stream);
    if (d == 64 && nmt == 2) return launch<64, 2>(p, tmap, n_row_blocks, n_parts, stream);
    return (int)cudaErrorInvalidValue;
}
