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

/* x rounded to bf16 (to nearest, ties to even; x finite). */
static inline double nr_bf16(double x)
{
    union {
        float f;
        uint32_t u;
    } v = {.f = (float)x};
    v.u = (v.u + 0x7fffu + ((v.u >> 16) & 1u)) & 0xffff0000u;
    return (double)v.f;
}

/* nr_ref_heads, with q_bf16: q and the absorbed q_c rounded to bf16 as a
 * GPU worker does (its kernel reads a bf16 query); the rest in float64. */
static inline void nr_ref_heads_q(int32_t H, int32_t dn, int32_t dc, int32_t dr, int32_t dv,
                                  int64_t T, double scale, const double *q, const double *kv,
                                  const double *wuk, const double *wuv, double *out, double *lse,
                                  int q_bf16)
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
                a += (q_bf16 ? nr_bf16(qn[k]) : qn[k]) *
                     wuk[((size_t)h * (size_t)dn + (size_t)k) * (size_t)dc + (size_t)c];
            qc[c] = q_bf16 ? nr_bf16(a) : a;
        }
        double mx = -INFINITY, sum = 0.0;
        for (int64_t t = 0; t < T; t++) {
            const double *e = kv + t * dk;
            double a = 0.0;
            for (int32_t c = 0; c < dc; c++)
                a += qc[c] * e[c];
            for (int32_t r = 0; r < dr; r++)
                a += (q_bf16 ? nr_bf16(qr[r]) : qr[r]) * e[dc + r];
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

static inline void nr_ref_heads(int32_t H, int32_t dn, int32_t dc, int32_t dr, int32_t dv,
                                int64_t T, double scale, const double *q, const double *kv,
                                const double *wuk, const double *wuv, double *out, double *lse)
{
    nr_ref_heads_q(H, dn, dc, dr, dv, T, scale, q, kv, wuk, wuv, out, lse, 0);
}

/* x <- H_n x / sqrt(n), n a power of two (the normalized Hadamard R). */
static inline void nr_fwht(double *x, int32_t n)
{
    for (int32_t h = 1; h < n; h *= 2)
        for (int32_t i = 0; i < n; i += 2 * h)
            for (int32_t j = i; j < i + h; j++) {
                double a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    for (int32_t i = 0; i < n; i++)
        x[i] /= sqrt((double)n);
}

/* The same wire over a latent-sharded group of N ranks (TPLA,
 * worker/GROUPS.md): q_c as above, then in the rotated basis c' = R c,
 * q' = R q_c each rank r attends with its own softmax over
 *   s_t = scale * (mu q'[S_r] . c'_t[S_r] + q_rope[P_r] . k_rope_t[P_r])
 * (S_r its latent dims, P_r all RoPE dims or, rope_split, its slice), o'
 * the ranks' outputs side by side, o = R o' (R is its own inverse), v[h] =
 * o . W_UV[h], lse[h] the mean of the ranks' LSEs. N = 1 is nr_ref_heads. */
static inline void nr_ref_tpla_heads(int32_t H, int32_t dn, int32_t dc, int32_t dr, int32_t dv,
                                     int32_t N, int rope_split, double mu, int64_t T,
                                     double scale, const double *q, const double *kv,
                                     const double *wuk, const double *wuv, double *out,
                                     double *lse)
{
    const int64_t dk = dc + dr;
    const int32_t dcs = dc / N, drs = rope_split ? dr / N : dr;
    double *c = malloc(sizeof(double) * (size_t)((T > 0 ? T : 1) * dk));
    double *qc = malloc(sizeof(double) * (size_t)dc), *o = malloc(sizeof(double) * (size_t)dc);
    double *s = malloc(sizeof(double) * (size_t)(T > 0 ? T : 1));
    for (int64_t t = 0; t < T; t++) {
        for (int64_t e = 0; e < dk; e++)
            c[t * dk + e] = kv[t * dk + e];
        nr_fwht(c + t * dk, dc);
    }
    for (int32_t h = 0; h < H; h++) {
        const double *qn = q + (size_t)h * (size_t)(dn + dr), *qr = qn + dn;
        for (int32_t j = 0; j < dc; j++) {
            double a = 0.0;
            for (int32_t k = 0; k < dn; k++)
                a += qn[k] * wuk[((size_t)h * (size_t)dn + (size_t)k) * (size_t)dc + (size_t)j];
            qc[j] = a;
        }
        nr_fwht(qc, dc);
        double lse_sum = 0.0;
        for (int32_t r = 0; r < N; r++) {
            const int32_t r0 = rope_split ? r * drs : 0;
            double mx = -INFINITY, sum = 0.0;
            for (int64_t t = 0; t < T; t++) {
                double a = 0.0, b = 0.0;
                for (int32_t d = r * dcs; d < (r + 1) * dcs; d++)
                    a += qc[d] * c[t * dk + d];
                for (int32_t d = r0; d < r0 + drs; d++)
                    b += qr[d] * c[t * dk + dc + d];
                s[t] = scale * (mu * a + b);
                mx = s[t] > mx ? s[t] : mx;
            }
            for (int32_t d = r * dcs; d < (r + 1) * dcs; d++)
                o[d] = 0.0;
            for (int64_t t = 0; t < T; t++) {
                double w = exp(s[t] - mx);
                sum += w;
                for (int32_t d = r * dcs; d < (r + 1) * dcs; d++)
                    o[d] += w * c[t * dk + d];
            }
            for (int32_t d = r * dcs; d < (r + 1) * dcs; d++)
                o[d] = T > 0 ? o[d] / sum : 0.0;
            lse_sum += T > 0 ? mx + log(sum) : -INFINITY;
        }
        nr_fwht(o, dc);
        for (int32_t j = 0; j < dv; j++) {
            double a = 0.0;
            for (int32_t d = 0; d < dc; d++)
                a += o[d] * wuv[((size_t)h * (size_t)dc + (size_t)d) * (size_t)dv + (size_t)j];
            out[(size_t)h * (size_t)dv + (size_t)j] = a;
        }
        if (lse)
            lse[h] = lse_sum / N;
    }
    free(c);
    free(qc);
    free(o);
    free(s);
}

#endif /* ATTND_NARROW_REF_H */
