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
 *     the end. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "select_int.h"

#define SEL_AI static inline __attribute__((always_inline))

static size_t sel_round(size_t x, size_t m)
{
    return (x + m - 1) / m * m;
}

/* Wide: ub for row vectors [rb, rb + nv * VW) of one page. */
SEL_AI void wide_block(const float *qp, const float *qm, size_t rp, int32_t dk,
                       const float *lo, const float *hi, int32_t rb, float *acc_out,
                       const int nv)
{
    vf a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
    for (int32_t d = 0; d < dk; d++) {
        const float *p = qp + (size_t)d * rp + rb, *m = qm + (size_t)d * rp + rb;
        vf h = v_set1(hi[d]), l = v_set1(lo[d]);
        a0 = v_fma(v_load(p), h, v_fma(v_load(m), l, a0));
        if (nv > 1)
            a1 = v_fma(v_load(p + VW), h, v_fma(v_load(m + VW), l, a1));
        if (nv > 2)
            a2 = v_fma(v_load(p + 2 * VW), h, v_fma(v_load(m + 2 * VW), l, a2));
        if (nv > 3)
            a3 = v_fma(v_load(p + 3 * VW), h, v_fma(v_load(m + 3 * VW), l, a3));
    }
    v_store(acc_out, a0);
    if (nv > 1)
        v_store(acc_out + VW, a1);
    if (nv > 2)
        v_store(acc_out + 2 * VW, a2);
    if (nv > 3)
        v_store(acc_out + 3 * VW, a3);
}

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

void SFX(attnd__select_ub)(const attnd_select_batch *b, const attnd_select_list *sl,
                           int32_t kvh, int32_t p0, int32_t p1, float *ub, int32_t row0,
                           int32_t rows, float *scratch)
{
    const int32_t G = b->n_q_heads / b->kv->n_kv_heads, R = b->q_tokens * G;
    const int32_t dk = b->kv->d_k;
    const size_t pe = attnd_kv_bounds_elems(b->kv);
    const int wide = R >= 2 * VW;
    const size_t rp = sel_round((size_t)R, 16), dkp = sel_round((size_t)dk, 16);
    float *qp = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    float *qm = qp + rp * dkp, *bf = qm + rp * dkp; /* bf: [2][dkp] */

    /* pack q+ and q- (padding zero: it adds nothing) */
    memset(qp, 0, sizeof(float) * rp * dkp * 2);
    for (int32_t r = 0; r < R; r++) {
        attnd__select_q_row(b, sl->seq, kvh, r, bf);
        for (int32_t d = 0; d < dk; d++) {
            float x = bf[d];
            size_t at = wide ? (size_t)d * rp + (size_t)r : (size_t)r * dkp + (size_t)d;
            qp[at] = x > 0.0f ? x : 0.0f;
            qm[at] = x < 0.0f ? x : 0.0f;
        }
    }
    for (int32_t p = p0; p < p1; p++) {
        const uint16_t *lo = b->bounds + (size_t)b->cand_idx[sl->cand0 + p] * pe +
                             (size_t)kvh * 2 * dk;
        const uint16_t *hi = lo + dk;
        float *dst = ub + (size_t)p * rows + row0;
        if (wide) {
            float *flo = bf, *fhi = bf + dkp;
            float acc[4 * VW];
            for (int32_t d = 0; d < dk; d++) {
                flo[d] = attnd_dtype_bf16_to_f32(lo[d]);
                fhi[d] = attnd_dtype_bf16_to_f32(hi[d]);
            }
            for (int32_t rb = 0; rb < R; rb += 4 * VW) {
                int32_t nv = (R - rb + VW - 1) / VW;
                if (nv >= 4)
                    wide_block(qp, qm, rp, dk, flo, fhi, rb, acc, 4);
                else if (nv == 3)
                    wide_block(qp, qm, rp, dk, flo, fhi, rb, acc, 3);
                else if (nv == 2)
                    wide_block(qp, qm, rp, dk, flo, fhi, rb, acc, 2);
                else
                    wide_block(qp, qm, rp, dk, flo, fhi, rb, acc, 1);
                int32_t n = R - rb < 4 * VW ? R - rb : 4 * VW;
                memcpy(dst + rb, acc, sizeof(float) * (size_t)n);
            }
        } else {
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
    }
}
