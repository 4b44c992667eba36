/* The float64 reference of the narrow MLA wire (ARCHITECTURE.md, "MLA, two
 * wire forms"), for the suites that check it end to end: per head h,
 *
 *   q_c  = q_nope[h] . W_UK[h]                       [d_nope] x [d_nope][d_c]
 *   s_t  = scale * (q_c . c_t + q_rope[h] . k_rope_t)  for t < T
 *   o    = sum_t softmax(s)_t c_t                    the latent output [d_c]
 *   v[h] = o . W_UV[h]                               [d_c] x [d_c][d_v]
 *   lse[h] = ln sum_t exp(s_t)    (T = 0: v = 0, lse = -inf)
 *
 * q [H][d_nope + d_r] (q_nope then q_rope), kv [T][d_c + d_r] (latent c
 * then k_rope, as the wire's entries), W_UK [H][d_nope][d_c], W_UV
 * [H][d_c][d_v], all float64. Header-only; no attnd code is used, so it
 * checks the worker's absorb, kernel and projection together. */
#ifndef ATTND_NARROW_REF_H
#define ATTND_NARROW_REF_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline void nr_ref_heads(int32_t H, int32_t dn, int32_t dc, int32_t dr, int32_t dv,
                                int64_t T, double scale, const double *q, const double *kv,
                                const double *wuk, const double *wuv, double *out, double *lse)
{
    double *qc = malloc(sizeof(double) * (size_t)dc);
    double *o = malloc(sizeof(double) * (size_t)dc);
    double *s = malloc(sizeof(double) * (size_t)(T > 0 ? T : 1));
    const int64_t dk = dc + dr;
    for (int32_t h = 0; h < H; h++) {
        const double *qn = q + (size_t)h * (size_t)(dn + dr), *qr = qn + dn;
        for (int32_t c = 0; c < dc; c++) {
            double a = 0.0;
            for (int32_t k = 0; k < dn; k++)
                a += qn[k] * wuk[((size_t)h * (size_t)dn + (size_t)k) * (size_t)dc + (size_t)c];
            qc[c] = a;
        }
        double mx = -INFINITY, sum = 0.0;
        for (int64_t t = 0; t < T; t++) {
            const double *e = kv + t * dk;
            double a = 0.0;
            for (int32_t c = 0; c < dc; c++)
                a += qc[c] * e[c];
            for (int32_t r = 0; r < dr; r++)
                a += qr[r] * e[dc + r];
            s[t] = scale * a;
            mx = s[t] > mx ? s[t] : mx;
        }
        for (int32_t c = 0; c < dc; c++)
            o[c] = 0.0;
        for (int64_t t = 0; t < T; t++) {
            double p = exp(s[t] - mx);
            sum += p;
            for (int32_t c = 0; c < dc; c++)
                o[c] += p * kv[t * dk + c];
        }
        for (int32_t c = 0; c < dc; c++)
            o[c] = T > 0 ? o[c] / sum : 0.0;
        for (int32_t j = 0; j < dv; j++) {
            double a = 0.0;
            for (int32_t c = 0; c < dc; c++)
                a += o[c] * wuv[((size_t)h * (size_t)dc + (size_t)c) * (size_t)dv + (size_t)j];
            out[(size_t)h * (size_t)dv + (size_t)j] = a;
        }
        if (lse)
            lse[h] = T > 0 ? mx + log(sum) : -INFINITY;
    }
    free(qc);
    free(o);
    free(s);
}

#endif /* ATTND_NARROW_REF_H */
