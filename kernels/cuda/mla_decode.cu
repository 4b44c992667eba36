/* MLA (absorbed) paged decode on Hopper: wgmma tensor cores, TMA loads.
 *
 * One persistent CTA per (row block of 64 query rows, part of the plan)
 * runs its units (stream, tile range) one after the other. Per 64-token
 * tile (one page, or a 64-token slice of a larger page):
 *
 *   producer        one warp of warpgroup 2, TMA: the tile's d_k / 64
 *                   column blocks of 64 x 64 bf16, 128-byte swizzled, into
 *                   a ring of STAGES stages (full/empty mbarriers).
 *   warpgroup 0     S = Q K^T (64 x 64, k = d_k; Q and K from shared
 *                   memory), mask, online softmax in float32 (exp2, the
 *                   scale folded into log2 units), P -> bf16 registers and
 *                   to shared memory for warpgroup 1, then
 *                   O[:, :d_c/2] += P V[:, :d_c/2] (P from registers).
 *   warpgroup 1     O[:, d_c/2:] += P V[:, d_c/2:] (P from shared memory),
 *                   with the row rescale factors warpgroup 0 published.
 *
 * V is the first d_c columns of the K tile already in shared memory (MN-
 * major operand, no second load). Tokens past the list's end in the last
 * tile are masked to -inf in S and their V rows zeroed in shared memory
 * (pages there may hold NaN). Rows past the stream's rows are zero queries
 * whose outputs are dropped. At the end of a unit both warpgroups write
 * their half of O / l: bf16 or float32 outputs and LSE for a stream run in
 * one unit, float32 partial states (normalized o, natural-log lse) to the
 * plan's slots otherwise, which the combine kernel merges after this one
 * (an in-kernel merge, as in gqa_decode.cu, measured slower here: its fence
 * and counter stall both warpgroups at unit ends while only two stages
 * buffer the next unit; see NOTES.md). Softmax probabilities are rounded to bf16 relative
 * to each tile's own row max (REF_FLOOR below), so results agree across
 * split counts to float32 rounding.
 *
 * Non-finite values follow attnd_kernels.h's rule, as on the CPU: a row
 * that meets a non-finite score (made NaN before the mask, so l turns NaN),
 * a non-finite O element (warpgroup 1 reports its half in sFlags at its
 * unit's last tile), or a non-finite V element of a token only some rows
 * see (S > 1: guard_tail) comes out NaN in every element and in lse.
 *
 * Warpgroups 0 and 1 hand P over with two named barriers: BAR_P (P and
 * the scale factors are in shared memory) and BAR_PFREE (warpgroup 1 is
 * done reading them); the producer and consumers meet only on mbarriers.
 * Shared memory (d_c 512): Q 72 KB + 2 stages x 72 KB + P 8 KB. */
#include <cuda_runtime.h>

#include "cuda_int.h"
#include "ptx.cuh"
#include "ptx_wgmma.cuh"
#include "unit.cuh"

namespace {

template <int DC> struct MlaCfg {
    static constexpr int DK = DC + 64;
    static constexpr int NCB = DK / 64;  /* 64-column blocks of a K row */
    static constexpr int NHB = DC / 128; /* V column blocks per warpgroup */
    static constexpr int HALF = DC / 2;  /* O columns per warpgroup */
    static constexpr int NACC = HALF / 2; /* O accumulators per thread */
    static constexpr int BLK = 64 * 128; /* one swizzled 64 x 64 block */
    static constexpr int Q_BYTES = NCB * BLK;
    static constexpr int STAGE_BYTES = NCB * BLK;
    static constexpr int P_BYTES = BLK;
    static constexpr int MISC = 1024; /* scales, barriers, flags */
    static constexpr int LIMIT = 227 * 1024;
    static constexpr int FIT = (LIMIT - 1024 - Q_BYTES - P_BYTES - MISC) / STAGE_BYTES;
    static constexpr int STAGES = FIT > 4 ? 4 : FIT;
    static constexpr int SMEM = 1024 + Q_BYTES + STAGES * STAGE_BYTES + P_BYTES + MISC;
    static_assert(STAGES >= 2, "two stages at least");
};

constexpr int THREADS = 384; /* 2 consumer warpgroups + 1 producer warpgroup */
constexpr uint32_t BAR_Q = 1, BAR_P = 2, BAR_PFREE = 3, BAR_WG0 = 4;
/* P = exp2(s - ref) is rounded to bf16 with ref the tile's own row max, so a
 * tile contributes the same bits whatever unit (split) it falls in; only
 * when the tile's max is more than 2^REF_FLOOR below the running max is ref
 * raised to running max - REF_FLOOR (keeping O and l bounded by 2^20 times
 * their size), where its bf16 rounding is far below float32 resolution. */
constexpr float REF_FLOOR = 20.f;

template <int DC>
__device__ void producer(const attnd__dec_params &p, const CUtensorMap *tmap, uint8_t *sK,
                         uint64_t *full, uint64_t *empty, int32_t u0, int32_t u1)
{
    using C = MlaCfg<DC>;
    if ((threadIdx.x & 31) == 0)
        attnd__tma_prefetch_desc(tmap);
    attnd__produce<C::STAGES>(
        p, u0, u1, empty,
        [&](int stage, int32_t page, int32_t slot, const attnd__unit &) {
            uint8_t *dst = sK + stage * C::STAGE_BYTES;
            attnd__mbar_expect_tx(&full[stage], C::STAGE_BYTES);
#pragma unroll
            for (int c = 0; c < C::NCB; c++)
                attnd__tma_load_3d(dst + c * C::BLK, tmap, &full[stage], c * 64, slot, page);
        },
        [](const attnd__unit &) {});
}

/* Load the 64 query rows of row block `rb` of a stream into sQ (swizzled
 * like a TMA tile), zeros past the stream's rows. All 256 consumers. */
template <int DC>
__device__ __forceinline__ void load_q(const attnd__dec_params &p, int32_t stream, int32_t row0,
                                       uint8_t *sQ, int ct)
{
    using C = MlaCfg<DC>;
    constexpr int CHUNKS = 64 * C::NCB * 8; /* 16-byte chunks */
    static_assert(CHUNKS % 256 == 0, "whole rounds");
    const uint16_t *q = static_cast<const uint16_t *>(p.q);
#pragma unroll 6
    for (int idx = ct; idx < CHUNKS; idx += 256) {
        const int r = idx / (C::NCB * 8), c16 = idx % (C::NCB * 8);
        const int32_t g = row0 + r;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (g < p.rows)
            v = __ldg(reinterpret_cast<const uint4 *>(q + attnd__out_row(p, stream, g) * C::DK) +
                      c16);
        const int cb = c16 >> 3, ch = c16 & 7;
        *reinterpret_cast<uint4 *>(sQ + cb * C::BLK + r * 128 + ((ch ^ (r & 7)) << 4)) = v;
    }
}

/* Write one warpgroup's half of O (rows r0, r0 + 8 of the block, columns
 * col0 .. col0 + HALF) scaled by inv0 / inv1: to out, or a partial slot. */
template <int DC>
__device__ __forceinline__ void store_o(const attnd__dec_params &p, const float (&o)[MlaCfg<DC>::NACC],
                                        int32_t stream, int32_t slot, int32_t row0, int r0,
                                        float inv0, float inv1, int col0, int lane)
{
    using C = MlaCfg<DC>;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int32_t g = row0 + r0 + 8 * h;
        if (g >= p.rows)
            continue;
        float inv = h ? inv1 : inv0;
        int col = col0 + 2 * (lane & 3);
        if (slot >= 0) {
            float *dst = p.part_o + ((int64_t)slot * p.rows + g) * DC + col;
#pragma unroll
            for (int i = 0; i < C::NACC / 4; i++)
                *reinterpret_cast<float2 *>(dst + 8 * i) =
                    make_float2(o[4 * i + 2 * h] * inv, o[4 * i + 2 * h + 1] * inv);
        } else if (p.out_f32) {
            float *dst = static_cast<float *>(p.out) + attnd__out_row(p, stream, g) * DC + col;
#pragma unroll
            for (int i = 0; i < C::NACC / 4; i++)
                *reinterpret_cast<float2 *>(dst + 8 * i) =
                    make_float2(o[4 * i + 2 * h] * inv, o[4 * i + 2 * h + 1] * inv);
        } else {
            uint16_t *dst = static_cast<uint16_t *>(p.out) + attnd__out_row(p, stream, g) * DC + col;
#pragma unroll
            for (int i = 0; i < C::NACC / 4; i++)
                *reinterpret_cast<uint32_t *>(dst + 8 * i) =
                    attnd__pack_bf16(o[4 * i + 2 * h] * inv, o[4 * i + 2 * h + 1] * inv);
        }
    }
}

template <int DC> __device__ __forceinline__ void o_fence(float (&o)[MlaCfg<DC>::NACC])
{
#pragma unroll
    for (int i = 0; i < MlaCfg<DC>::NACC; i++)
        attnd__reg_fence(o[i]);
}

template <int DC>
__device__ __forceinline__ void wgmma_pv_rs(float (&o)[MlaCfg<DC>::NACC], const uint32_t (&a)[4],
                                            uint64_t db)
{
    if constexpr (DC == 512)
        attnd__wgmma_rs_n256_tb(o, a, db);
    else if constexpr (DC == 256)
        attnd__wgmma_rs_n128_tb(o, a, db);
    else
        attnd__wgmma_rs_n64_tb(o, a, db);
}

template <int DC>
__device__ __forceinline__ void wgmma_pv_ss(float (&o)[MlaCfg<DC>::NACC], uint64_t da, uint64_t db)
{
    if constexpr (DC == 512)
        attnd__wgmma_ss_n256_tb(o, da, db, 1);
    else if constexpr (DC == 256)
        attnd__wgmma_ss_n128_tb(o, da, db, 1);
    else
        attnd__wgmma_ss_n64_tb(o, da, db, 1);
}

/* Multi-token queries (S > 1): tokens [tl, hi) of the tile (hi <= 64) are
 * seen by only some rows, whose P for them is 0, and 0 * NaN is NaN: a
 * non-finite V element there is zeroed in the stage (both warpgroups read V
 * from it) and its token reported in the returned mask (bit j: token tok0 +
 * j), so that only the rows that see it are poisoned. Warpgroup 0's 128
 * threads together (uniform branch); rare: only tiles holding a multi-token
 * stream's last S - 1 tokens. Same job as the CPU kernels' guard_tail. */
template <int DC>
__device__ uint64_t guard_tail(uint8_t *st, int tl, int hi, int tid, unsigned long long *sTail)
{
    using C = MlaCfg<DC>;
    constexpr int PER_ROW = (DC / 64) * 8; /* 16-byte chunks of a row's V */
    if (tid == 0)
        *sTail = 0ull;
    attnd__bar_sync(BAR_WG0, 128);
    for (int idx = tid; idx < (hi - tl) * PER_ROW; idx += 128) {
        const int r = tl + idx / PER_ROW, rem = idx % PER_ROW;
        uint4 *c = reinterpret_cast<uint4 *>(st + (rem >> 3) * C::BLK + r * 128 + ((rem & 7) << 4));
        const uint4 v = *c;
        uint32_t w[4] = {v.x, v.y, v.z, v.w};
        bool bad = false;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint32_t keep = ((w[i] & 0x7f80u) != 0x7f80u ? 0x0000ffffu : 0u) |
                            ((w[i] & 0x7f800000u) != 0x7f800000u ? 0xffff0000u : 0u);
            bad |= keep != 0xffffffffu;
            w[i] &= keep;
        }
        if (bad) {
            *c = make_uint4(w[0], w[1], w[2], w[3]);
            atomicOr(sTail, 1ull << r);
        }
    }
    attnd__bar_sync(BAR_WG0, 128);
    return *sTail;
}

/* Rows seeing tokens [0, lim) of a tile: the bits of a guard_tail mask. */
__device__ __forceinline__ uint64_t seen_bits(int32_t lim)
{
    return lim >= 64 ? ~0ull : lim <= 0 ? 0ull : (1ull << lim) - 1ull;
}

/* OR of a per-thread flag over the 4 lanes holding one row. */
__device__ __forceinline__ bool quad_any(bool b)
{
    int x = b;
    x |= __shfl_xor_sync(0xffffffffu, x, 1);
    x |= __shfl_xor_sync(0xffffffffu, x, 2);
    return x != 0;
}

/* Whether this thread's O accumulators of row half h (0: r0, 1: r0 + 8)
 * hold a non-finite value. */
template <int DC>
__device__ __forceinline__ bool o_nonfinite(const float (&o)[MlaCfg<DC>::NACC], int h)
{
    bool bad = false;
#pragma unroll
    for (int i = 0; i < MlaCfg<DC>::NACC / 4; i++)
        bad |= !isfinite(o[4 * i + 2 * h]) || !isfinite(o[4 * i + 2 * h + 1]);
    return bad;
}

/* Warpgroup 0: scores, softmax, left half of O. */
template <int DC>
__device__ void consumer0(const attnd__dec_params &p, uint8_t *sQ, uint8_t *sK, uint8_t *sP,
                          float *sScale, uint64_t *full, uint64_t *empty, int *sFlags,
                          unsigned long long *sTail, int32_t u0, int32_t u1)
{
    using C = MlaCfg<DC>;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int r0 = warp * 16 + (lane >> 2); /* rows r0 and r0 + 8 */
    const int32_t row0 = blockIdx.x * 64;
    const float sl2 = p.scale_log2;
    const uint32_t q_addr = attnd__smem_u32(sQ), k_addr = attnd__smem_u32(sK);
    int stage = 0;
    uint32_t phase = 0;

    for (int32_t u = u0; u < u1; u++) {
        const attnd__unit un = attnd__load_unit(p, u);
        load_q<DC>(p, un.stream, row0, sQ, tid);
        attnd__fence_proxy_async();
        attnd__bar_sync(BAR_Q, 256);

        const int32_t vis0 = attnd__row_visible(p, row0 + r0, un.len);
        const int32_t vis1 = attnd__row_visible(p, row0 + r0 + 8, un.len);
        float o[C::NACC];
#pragma unroll
        for (int i = 0; i < C::NACC; i++)
            o[i] = 0.f;
        /* m: the reference O and l are kept relative to (log2 units); mr:
         * the running max */
        float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
        float mr0 = -INFINITY, mr1 = -INFINITY;
        bool bad0 = false, bad1 = false; /* rows poisoned by guard_tail */

        for (int32_t t = un.tile0; t < un.tile1; t++) {
            const uint32_t st_addr = k_addr + stage * C::STAGE_BYTES;
            attnd__mbar_wait(&full[stage], phase);

            /* S = Q K^T */
            float s[32];
#pragma unroll
            for (int i = 0; i < 32; i++)
                s[i] = 0.f;
            attnd__wgmma_fence();
#pragma unroll
            for (int c = 0; c < C::NCB; c++)
#pragma unroll
                for (int kk = 0; kk < 4; kk++) {
                    uint64_t da = attnd__wgmma_desc(q_addr + c * C::BLK + kk * 32, 16, 1024);
                    uint64_t db = attnd__wgmma_desc(st_addr + c * C::BLK + kk * 32, 16, 1024);
                    attnd__wgmma_ss_n64(s, da, db, (c | kk) ? 1u : 0u);
                }
            attnd__wgmma_commit();
            attnd__wgmma_wait<0>();
#pragma unroll
            for (int i = 0; i < 32; i++)
                attnd__reg_fence(s[i]);

            /* a non-finite score becomes NaN (0 s + s: s if finite, else
             * NaN), which makes l NaN: an unmasked -inf would otherwise pass
             * for a masked token. Before the mask, which overwrites. */
#pragma unroll
            for (int i = 0; i < 32; i++)
                s[i] = __fmaf_rn(0.f, s[i], s[i]);

            /* mask tokens past what each row sees */
            const int32_t tok0 = t * ATTND__CUDA_TILE;
            const int32_t lim0 = vis0 - tok0, lim1 = vis1 - tok0;
            if (lim0 < 64 || lim1 < 64) {
#pragma unroll
                for (int j = 0; j < 8; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        int col = 8 * j + 2 * (lane & 3) + e;
                        if (col >= lim0)
                            s[4 * j + e] = -INFINITY;
                        if (col >= lim1)
                            s[4 * j + 2 + e] = -INFINITY;
                    }
            }

            /* online softmax, base 2 */
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                mx0 = fmaxf(mx0, fmaxf(s[4 * j], s[4 * j + 1]));
                mx1 = fmaxf(mx1, fmaxf(s[4 * j + 2], s[4 * j + 3]));
            }
#pragma unroll
            for (int sh = 1; sh <= 2; sh <<= 1) {
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, sh));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, sh));
            }
            /* reference of this tile: its own max unless that is 2^20
             * below the running max (see the file comment) */
            mx0 *= sl2;
            mx1 *= sl2;
            mr0 = fmaxf(mr0, mx0);
            mr1 = fmaxf(mr1, mx1);
            const float rn0 = fmaxf(mx0, mr0 - REF_FLOOR), rn1 = fmaxf(mx1, mr1 - REF_FLOOR);
            const float mu0 = rn0 == -INFINITY ? 0.f : rn0;
            const float mu1 = rn1 == -INFINITY ? 0.f : rn1;
            const float al0 = attnd__exp2(m0 - mu0), al1 = attnd__exp2(m1 - mu1);
            m0 = rn0;
            m1 = rn1;
            float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                s[4 * j] = attnd__exp2(fmaf(s[4 * j], sl2, -mu0));
                s[4 * j + 1] = attnd__exp2(fmaf(s[4 * j + 1], sl2, -mu0));
                s[4 * j + 2] = attnd__exp2(fmaf(s[4 * j + 2], sl2, -mu1));
                s[4 * j + 3] = attnd__exp2(fmaf(s[4 * j + 3], sl2, -mu1));
                sum0 += s[4 * j] + s[4 * j + 1];
                sum1 += s[4 * j + 2] + s[4 * j + 3];
            }
            l0 = l0 * al0 + sum0;
            l1 = l1 * al1 + sum1;

            /* P as the A fragments of the PV product: k-step kk covers
             * columns 16kk..16kk+15 = accumulator chunks 2kk, 2kk+1 */
            uint32_t pa[16];
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                pa[4 * kk + 0] = attnd__pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
                pa[4 * kk + 1] = attnd__pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
                pa[4 * kk + 2] = attnd__pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
                pa[4 * kk + 3] = attnd__pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
            }

            /* hand P and the scales to warpgroup 1 */
            attnd__bar_sync(BAR_PFREE, 256);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                uint32_t w0 = pa[4 * (j >> 1) + ((j & 1) ? 2 : 0)];
                uint32_t w1 = pa[4 * (j >> 1) + ((j & 1) ? 3 : 1)];
                int ra = r0, rbw = r0 + 8;
                *reinterpret_cast<uint32_t *>(sP + ra * 128 + ((j ^ (ra & 7)) << 4) +
                                              4 * (lane & 3)) = w0;
                *reinterpret_cast<uint32_t *>(sP + rbw * 128 + ((j ^ (rbw & 7)) << 4) +
                                              4 * (lane & 3)) = w1;
            }
            if ((lane & 3) == 0) {
                sScale[r0] = al0;
                sScale[r0 + 8] = al1;
            }
            const int32_t nv = un.len - tok0; /* valid tokens in this tile */
            const int32_t tl = un.len - (p.q_tokens - 1) - tok0; /* S > 1 tail */
            const bool tail = tl < 64 && tl < nv;
            if (tail) {
                const int32_t hi = nv < 64 ? nv : 64;
                const uint64_t badtok =
                    guard_tail<DC>(sK + stage * C::STAGE_BYTES, tl > 0 ? tl : 0, hi, tid, sTail);
                bad0 |= (badtok & seen_bits(lim0)) != 0;
                bad1 |= (badtok & seen_bits(lim1)) != 0;
            }
            if (nv < 64) {
                /* zero V rows past the list's end (they may hold NaN) */
                uint8_t *st = sK + stage * C::STAGE_BYTES;
                const int n16 = (64 - nv) * (DC / 64) * 8;
                for (int idx = tid; idx < n16; idx += 128) {
                    int r = nv + idx / ((DC / 64) * 8), rem = idx % ((DC / 64) * 8);
                    *reinterpret_cast<uint4 *>(st + (rem >> 3) * C::BLK + r * 128 +
                                               ((rem & 7) << 4)) = make_uint4(0, 0, 0, 0);
                }
            }
            attnd__fence_proxy_async();
            attnd__bar_arrive(BAR_P, 256);
            if (nv < 64 || tail) /* every thread's V writes fenced before our P V */
                attnd__bar_sync(BAR_WG0, 128);

            /* O[:, :HALF] = al * O + P V */
#pragma unroll
            for (int i = 0; i < C::NACC / 4; i++) {
                o[4 * i] *= al0;
                o[4 * i + 1] *= al0;
                o[4 * i + 2] *= al1;
                o[4 * i + 3] *= al1;
            }
            attnd__wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                const uint32_t a[4] = {pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3]};
                uint64_t db = attnd__wgmma_desc(st_addr + kk * 2048, C::BLK, 1024);
                wgmma_pv_rs<DC>(o, a, db);
            }
            attnd__wgmma_commit();
            attnd__wgmma_wait<0>();
            o_fence<DC>(o);
            __syncwarp();
            if (lane == 0)
                attnd__mbar_arrive(&empty[stage]);
            if (++stage == C::STAGES) {
                stage = 0;
                phase ^= 1;
            }
        }

        /* finish the unit: row sums, LSE, outputs; a poisoned row gets
         * inv = NaN (so both halves of O come out NaN) and lse NaN */
#pragma unroll
        for (int sh = 1; sh <= 2; sh <<= 1) {
            l0 += __shfl_xor_sync(0xffffffffu, l0, sh);
            l1 += __shfl_xor_sync(0xffffffffu, l1, sh);
        }
        bad0 = quad_any(bad0 || o_nonfinite<DC>(o, 0)) || isnan(l0);
        bad1 = quad_any(bad1 || o_nonfinite<DC>(o, 1)) || isnan(l1);
        attnd__bar_sync(BAR_PFREE, 256); /* after it, warpgroup 1's sFlags */
        if (un.tile1 > un.tile0) {
            bad0 |= sFlags[r0] != 0;
            bad1 |= sFlags[r0 + 8] != 0;
        }
        const float qnan = __int_as_float(0x7fc00000);
        const float inv0 = bad0 ? qnan : l0 > 0.f ? 1.f / l0 : 0.f;
        const float inv1 = bad1 ? qnan : l1 > 0.f ? 1.f / l1 : 0.f;
        if ((lane & 3) == 0) {
            sScale[r0] = inv0;
            sScale[r0 + 8] = inv1;
        }
        attnd__bar_arrive(BAR_P, 256);
        if ((lane & 3) == 0) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int32_t g = row0 + r0 + 8 * h;
                if (g >= p.rows)
                    continue;
                float l = h ? l1 : l0, m = h ? m1 : m0;
                float lse = (h ? bad1 : bad0) ? qnan
                            : l > 0.f ? (m + __log2f(l)) * ATTND_LN2 : -INFINITY;
                if (un.slot >= 0)
                    p.part_lse[(int64_t)un.slot * p.rows + g] = lse;
                else if (p.lse)
                    p.lse[attnd__out_row(p, un.stream, g)] = lse;
            }
        }
        store_o<DC>(p, o, un.stream, un.slot, row0, r0, inv0, inv1, 0, lane);
    }
    attnd__bar_sync(BAR_PFREE, 256); /* balance warpgroup 1's first arrive */
}

/* Warpgroup 1: right half of O. */
template <int DC>
__device__ void consumer1(const attnd__dec_params &p, uint8_t *sQ, uint8_t *sK, uint8_t *sP,
                          float *sScale, uint64_t *full, uint64_t *empty, int *sFlags,
                          int32_t u0, int32_t u1)
{
    using C = MlaCfg<DC>;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int r0 = (warp - 4) * 16 + (lane >> 2);
    const int32_t row0 = blockIdx.x * 64;
    const uint32_t k_addr = attnd__smem_u32(sK), p_addr = attnd__smem_u32(sP);
    int stage = 0;
    uint32_t phase = 0;

    attnd__bar_arrive(BAR_PFREE, 256); /* sP starts free */
    for (int32_t u = u0; u < u1; u++) {
        const attnd__unit un = attnd__load_unit(p, u);
        load_q<DC>(p, un.stream, row0, sQ, tid);
        attnd__fence_proxy_async();
        attnd__bar_sync(BAR_Q, 256);

        float o[C::NACC];
#pragma unroll
        for (int i = 0; i < C::NACC; i++)
            o[i] = 0.f;
        for (int32_t t = un.tile0; t < un.tile1; t++) {
            const uint32_t st_addr = k_addr + stage * C::STAGE_BYTES;
            attnd__mbar_wait(&full[stage], phase);
            attnd__bar_sync(BAR_P, 256);
            const float al0 = sScale[r0], al1 = sScale[r0 + 8];
#pragma unroll
            for (int i = 0; i < C::NACC / 4; i++) {
                o[4 * i] *= al0;
                o[4 * i + 1] *= al0;
                o[4 * i + 2] *= al1;
                o[4 * i + 3] *= al1;
            }
            attnd__wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                uint64_t da = attnd__wgmma_desc(p_addr + kk * 32, 16, 1024);
                uint64_t db = attnd__wgmma_desc(st_addr + C::NHB * C::BLK + kk * 2048, C::BLK, 1024);
                wgmma_pv_ss<DC>(o, da, db);
            }
            attnd__wgmma_commit();
            attnd__wgmma_wait<0>();
            o_fence<DC>(o);
            if (t == un.tile1 - 1) { /* this half's non-finite O, for warpgroup 0 */
                const bool b0 = quad_any(o_nonfinite<DC>(o, 0));
                const bool b1 = quad_any(o_nonfinite<DC>(o, 1));
                if ((lane & 3) == 0) {
                    sFlags[r0] = b0;
                    sFlags[r0 + 8] = b1;
                }
            }
            attnd__bar_arrive(BAR_PFREE, 256);
            __syncwarp();
            if (lane == 0)
                attnd__mbar_arrive(&empty[stage]);
            if (++stage == C::STAGES) {
                stage = 0;
                phase ^= 1;
            }
        }
        attnd__bar_sync(BAR_P, 256);
        const float inv0 = sScale[r0], inv1 = sScale[r0 + 8];
        attnd__bar_arrive(BAR_PFREE, 256);
        store_o<DC>(p, o, un.stream, un.slot, row0, r0, inv0, inv1, C::HALF, lane);
    }
}

template <int DC>
__global__ void __launch_bounds__(THREADS, 1)
    attnd__mla_decode_kernel(const __grid_constant__ attnd__dec_params p,
                             const __grid_constant__ CUtensorMap tmap)
{
    using C = MlaCfg<DC>;
    extern __shared__ uint8_t smem_raw[];
    uint8_t *smem = reinterpret_cast<uint8_t *>(
        (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~static_cast<uintptr_t>(1023));
    uint8_t *sQ = smem;
    uint8_t *sK = sQ + C::Q_BYTES;
    uint8_t *sP = sK + C::STAGES * C::STAGE_BYTES;
    float *sScale = reinterpret_cast<float *>(sP + C::P_BYTES);
    uint64_t *full = reinterpret_cast<uint64_t *>(sScale + 64);
    uint64_t *empty = full + C::STAGES;
    int *sFlags = reinterpret_cast<int *>(empty + C::STAGES); /* [64] */
    unsigned long long *sTail = reinterpret_cast<unsigned long long *>(sFlags + 64);
    static_assert(64 * 4 + 2 * C::STAGES * 8 + 64 * 4 + 8 <= C::MISC,
                  "MISC holds the scales, the barriers and the flags");

    const int32_t u0 = __ldg(p.part_ptr + blockIdx.y), u1 = __ldg(p.part_ptr + blockIdx.y + 1);
    if (threadIdx.x == 0) {
        for (int s = 0; s < C::STAGES; s++) {
            attnd__mbar_init(&full[s], 1);
            attnd__mbar_init(&empty[s], 8);
        }
        attnd__mbar_init_fence();
    }
    __syncthreads();

    /* the producer warpgroup gives its registers to the consumers:
     * 168 x 384 at launch; (168 - 40) x 128 freed = (232 - 168) x 256 taken:
     * an increase the freed registers do not cover never returns (seen) */
    const int wg = threadIdx.x >> 7;
    if (wg == 2) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (threadIdx.x < 256 + 32)
            producer<DC>(p, &tmap, sK, full, empty, u0, u1);
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
        if (wg == 0)
            consumer0<DC>(p, sQ, sK, sP, sScale, full, empty, sFlags, sTail, u0, u1);
        else
            consumer1<DC>(p, sQ, sK, sP, sScale, full, empty, sFlags, u0, u1);
    }
}

template <int DC>
int launch(const attnd__dec_params *p, const void *tmap, int nrb, int nparts, void *stream)
{
    dim3 grid((unsigned)nrb, (unsigned)nparts);
    attnd__mla_decode_kernel<DC><<<grid, THREADS, MlaCfg<DC>::SMEM, (cudaStream_t)stream>>>(
        *p, *static_cast<const CUtensorMap *>(tmap));
    return (int)cudaGetLastError();
}

template <int DC> int prepare()
{
    return (int)cudaFuncSetAttribute(attnd__mla_decode_kernel<DC>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      MlaCfg<DC>::SMEM);
}

} /* namespace */

extern "C" int attnd__mla_smem_bytes(int d_c)
{
    switch (d_c) {
    case 512: return MlaCfg<512>::SMEM;
    case 256: return MlaCfg<256>::SMEM;
    case 128: return MlaCfg<128>::SMEM;
    default: return -1;
    }
}

extern "C" int attnd__mla_prepare(int d_c)
{
    switch (d_c) {
    case 512: return prepare<512>();
    case 256: return prepare<256>();
    case 128: return prepare<128>();
    default: return (int)cudaErrorInvalidValue;
    }
}

extern "C" int attnd__mla_launch(int d_c, const attnd__dec_params *p, const void *tmap,
                                 int n_row_blocks, int n_parts, void *stream)
{
    switch (d_c) {
    case 512: return launch<512>(p, tmap, n_row_blocks, n_parts, stream);
    case 256: return launch<256>(p, tmap, n_row_blocks, n_parts, stream);
    case 128: return launch<128>(p, tmap, n_row_blocks, n_parts, stream);
    default: return (int)cudaErrorInvalidValue;
    }
}
