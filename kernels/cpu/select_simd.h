/* The SIMD scoring unit of page selection (select_int.h has its contract),
 * written once over a small vector vocabulary and compiled per instruction
 * set: select_avx512.c and select_avx2.c define vf, VW, v_zero, v_load,
 * v_store, v_set1, v_fma, v_max, v_min, v_hsum, v_bf16 (VW bf16 widened)
 * and SFX(), then include this file. Not a public header.
 *
 * ub = sum_d max(q lo, q hi) is computed as q+ . hi + q- . lo with q+ =
 * max(q, 0), q- = min(q, 0) (the same value: for q >= 0 the larger product
 * is q hi, else q lo), so a page costs two multiply-adds per row and dim
 * and no compares. Two shapes, as the decode's scores:
 *   wide (R >= 2 VW rows: MLA's many heads): vectors run over rows; q+ and
 *     q- are packed transposed [d_k][R_pad], the page's bounds widened
 *     once, and each bound element is broadcast against a block of up to 4
 *     row vectors kept in registers across d_k;
 *   narrow (GQA's few rows per KV head): vectors run over d_k; bounds are
 *     widened in registers and four rows accumulate at once, reduced at
 *     the end;
 *   one row (the summed heads of one query token): as narrow, over four
 *     pages at once. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "select_int.h"

#define SEL_AI static inline __attribute__((always_inline))
/* Candidates whose bounds are prefetched ahead of the one scored. */
#define SEL_AHEAD 4

static size_t sel_round(size_t x, size_t m)
{
    return (x + m - 1) / m * m;
}

/* Wide: ub of the row vectors [rb, rb + RB * VW) for TB pages, whose
 * bounds are widened in bf ([TB][lo row, hi row] of dkp floats each); out
 * [TB][2 VW]. TB x RB accumulators stay in registers across d_k; per dim
 * 2 RB query loads serve 2 TB broadcasts and 2 TB RB multiply-adds. */
#define WT_DECL(t) vf a##t##0 = v_zero(), a##t##1 = v_zero();
#define WT_FMA(t)                                                                     \
    if (TB > t) {                                                                     \
        vf h = v_set1(bf[(size_t)t * 2 * dkp + dkp + d]);                             \
        vf l = v_set1(bf[(size_t)t * 2 * dkp + d]);                                   \
        a##t##0 = v_fma(p0, h, v_fma(m0, l, a##t##0));                                \
        if (RB > 1)                                                                   \
            a##t##1 = v_fma(p1, h, v_fma(m1, l, a##t##1));                            \
    }
#define WT_STORE(t)                                                                   \
    if (TB > t) {                                                                     \
        v_store(out + (size_t)t * 2 * VW, a##t##0);                                   \
        if (RB > 1)                                                                   \
            v_store(out + (size_t)t * 2 * VW + VW, a##t##1);                          \
    }
#define WT_ALL(X) X(0) X(1) X(2) X(3)

SEL_AI void wide_tile(const float *qp, const float *qm, size_t rp, int32_t dk, const float *bf,
                      size_t dkp, int32_t rb, float *out, const int TB, const int RB)
{
    WT_ALL(WT_DECL)
    for (int32_t d = 0; d < dk; d++) {
        const float *pp = qp + (size_t)d * rp + rb, *mm = qm + (size_t)d * rp + rb;
        vf p0 = v_load(pp), m0 = v_load(mm);
        vf p1 = RB > 1 ? v_load(pp + VW) : p0, m1 = RB > 1 ? v_load(mm + VW) : m0;
        WT_ALL(WT_FMA)
    }
    WT_ALL(WT_STORE)
}

#if ATTND__SEL_TB != 4
#error "wide_tile is written for 4 pages"
#endif

/* Narrow: ub of rows [r0, r0 + nr) (nr <= 4) of one page. */
SEL_AI void narrow_block(const float *qp, const float *qm, size_t dkp, int32_t dk,
                         const uint16_t *lo, const uint16_t *hi, int32_t r0, float *dst,
                         const int nr)
{
    vf a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
    const float *p = qp + (size_t)r0 * dkp, *m = qm + (size_t)r0 * dkp;
    const int32_t dv = dk / VW * VW;
    for (int32_t d = 0; d < dv; d += VW) {
        vf h = v_bf16(hi + d), l = v_bf16(lo + d);
        a0 = v_fma(v_load(p + d), h, v_fma(v_load(m + d), l, a0));
        if (nr > 1)
            a1 = v_fma(v_load(p + dkp + d), h, v_fma(v_load(m + dkp + d), l, a1));
        if (nr > 2)
            a2 = v_fma(v_load(p + 2 * dkp + d), h, v_fma(v_load(m + 2 * dkp + d), l, a2));
        if (nr > 3)
            a3 = v_fma(v_load(p + 3 * dkp + d), h, v_fma(v_load(m + 3 * dkp + d), l, a3));
    }
    float s[4] = {v_hsum(a0), v_hsum(a1), v_hsum(a2), v_hsum(a3)};
    for (int32_t d = dv; d < dk; d++) {
        float h = attnd_dtype_bf16_to_f32(hi[d]), l = attnd_dtype_bf16_to_f32(lo[d]);
        for (int j = 0; j < nr; j++)
            s[j] += p[(size_t)j * dkp + d] * h + m[(size_t)j * dkp + d] * l;
    }
    for (int j = 0; j < nr; j++)
        dst[j] = s[j];
}

/* One row (summed heads, one query token): ub of NP pages at once, so
 * that NP accumulator chains and NP bound streams are in flight (a single
 * page's chain of 2 d_k / VW dependent multiply-adds would wait on
 * latency). lo[j]: page j's lo row (hi follows at + dk). */
SEL_AI void one_row_pages(const float *qp, const float *qm, int32_t dk, const uint16_t *const *lo,
                          float *dst, size_t stride, const int NP)
{
    vf a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
    const int32_t dv = dk / VW * VW;
    for (int32_t d = 0; d < dv; d += VW) {
        vf p = v_load(qp + d), m = v_load(qm + d);
        a0 = v_fma(p, v_bf16(lo[0] + dk + d), v_fma(m, v_bf16(lo[0] + d), a0));
        if (NP > 1)
            a1 = v_fma(p, v_bf16(lo[1] + dk + d), v_fma(m, v_bf16(lo[1] + d), a1));
        if (NP > 2)
            a2 = v_fma(p, v_bf16(lo[2] + dk + d), v_fma(m, v_bf16(lo[2] + d), a2));
        if (NP > 3)
            a3 = v_fma(p, v_bf16(lo[3] + dk + d), v_fma(m, v_bf16(lo[3] + d), a3));
    }
    float s[4] = {v_hsum(a0), v_hsum(a1), v_hsum(a2), v_hsum(a3)};
    for (int j = 0; j < NP; j++) {
        for (int32_t d = dv; d < dk; d++)
            s[j] += qp[d] * attnd_dtype_bf16_to_f32(lo[j][dk + d]) +
                    qm[d] * attnd_dtype_bf16_to_f32(lo[j][d]);
        dst[(size_t)j * stride] = s[j];
    }
}

/* The bounds (lo row) of KV head kvh of candidate p of list sl. */
static inline const uint16_t *cand_bounds(const attnd_kernel_select_batch *b,
                                          const attnd_kernel_select_list *sl, int32_t kvh,
                                          int32_t p)
{
    return b->bounds +
           attnd_kernel_kv_bounds_at(b->kv, b->bounds_pages, kvh, b->cand_idx[sl->cand0 + p]);
}

/* Candidates are scattered pages: fetch one's bounds ahead of use (the
 * hardware prefetcher does not follow a page list). */
static inline void prefetch_bounds(const uint16_t *lo, int32_t dk)
{
    const char *c = (const char *)lo;
    for (size_t off = 0; off < (size_t)dk * 2 * sizeof(uint16_t); off += 64)
        __builtin_prefetch(c + off);
}

void SFX(attnd__select_ub)(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                           int32_t kvh, int32_t p0, int32_t p1, const float *qpk, float *ub,
                           int32_t row0, int32_t rows, float *scratch)
{
    const int32_t R = attnd__select_head_rows(b);
    const int32_t dk = b->kv->d_k;
    const int wide = attnd__select_wide(R);
    const size_t rp = sel_round((size_t)R, 16), dkp = sel_round((size_t)dk, 16);
    const float *qp = qpk, *qm = qpk + (wide ? rp : (size_t)R) * dkp;
    float *bf = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63); /* [TB][2][dkp] */

    if (R == 1) {
        for (int32_t p = p0; p < p1; p += 4) {
            const int32_t np = p1 - p < 4 ? p1 - p : 4;
            const uint16_t *lo[4];
            for (int32_t j = 0; j < np; j++) {
                lo[j] = cand_bounds(b, sl, kvh, p + j);
                if (p + SEL_AHEAD + j < p1)
                    prefetch_bounds(cand_bounds(b, sl, kvh, p + SEL_AHEAD + j), dk);
            }
            float *dst = ub + (size_t)p * rows + row0;
            if (np == 4)
                one_row_pages(qp, qm, dk, lo, dst, (size_t)rows, 4);
            else if (np == 3)
                one_row_pages(qp, qm, dk, lo, dst, (size_t)rows, 3);
            else if (np == 2)
                one_row_pages(qp, qm, dk, lo, dst, (size_t)rows, 2);
            else
                one_row_pages(qp, qm, dk, lo, dst, (size_t)rows, 1);
        }
        return;
    }
    if (!wide) {
        for (int32_t p = p0; p < p1; p++) {
            const uint16_t *lo = cand_bounds(b, sl, kvh, p), *hi = lo + dk;
            if (p + SEL_AHEAD < p1)
                prefetch_bounds(cand_bounds(b, sl, kvh, p + SEL_AHEAD), dk);
            float *dst = ub + (size_t)p * rows + row0;
            for (int32_t r0 = 0; r0 < R; r0 += 4) {
                int32_t nr = R - r0 < 4 ? R - r0 : 4;
                if (nr == 4)
                    narrow_block(qp, qm, dkp, dk, lo, hi, r0, dst + r0, 4);
                else if (nr == 3)
                    narrow_block(qp, qm, dkp, dk, lo, hi, r0, dst + r0, 3);
                else if (nr == 2)
                    narrow_block(qp, qm, dkp, dk, lo, hi, r0, dst + r0, 2);
                else
                    narrow_block(qp, qm, dkp, dk, lo, hi, r0, dst + r0, 1);
            }
        }
        return;
    }
    float out[ATTND__SEL_TB * 2 * VW];
    for (int32_t p = p0; p < p1; p += ATTND__SEL_TB) {
        const int32_t tb = p1 - p < ATTND__SEL_TB ? p1 - p : ATTND__SEL_TB;
        for (int32_t t = 0; t < tb; t++) {
            const uint16_t *lo = cand_bounds(b, sl, kvh, p + t);
            float *fl = bf + (size_t)t * 2 * dkp;
            int32_t d = 0;
            for (; d + VW <= dk; d += VW) {
                v_store(fl + d, v_bf16(lo + d));
                v_store(fl + dkp + (size_t)d, v_bf16(lo + dk + d));
            }
            for (; d < dk; d++) {
                fl[d] = attnd_dtype_bf16_to_f32(lo[d]);
                fl[dkp + (size_t)d] = attnd_dtype_bf16_to_f32(lo[dk + d]);
            }
            if (p + ATTND__SEL_TB + t < p1)
                prefetch_bounds(cand_bounds(b, sl, kvh, p + ATTND__SEL_TB + t), dk);
        }
        for (int32_t rb = 0; rb < R; rb += 2 * VW) {
            const int rb2 = R - rb > VW;
#define WT_CASE(T)                                                                    \
    case T:                                                                           \
        if (rb2)                                                                      \
            wide_tile(qp, qm, rp, dk, bf, dkp, rb, out, T, 2);                        \
        else                                                                          \
            wide_tile(qp, qm, rp, dk, bf, dkp, rb, out, T, 1);                        \
        break;
            switch (tb) {
                WT_CASE(1)
                WT_CASE(2)
                WT_CASE(3)
                default:
                WT_CASE(4)
            }
#undef WT_CASE
            const int32_t n = R - rb < 2 * VW ? R - rb : 2 * VW;
            for (int32_t t = 0; t < tb; t++)
                memcpy(ub + (size_t)(p + t) * rows + row0 + rb, out + (size_t)t * 2 * VW,
                       sizeof(float) * (size_t)n);
        }
    }
}
