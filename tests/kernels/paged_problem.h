/* A random paged decode problem and its float64 answer, for kernel tests.
 *
 * pp_build draws fresh normal KV and queries, rounds them to the chosen
 * dtypes, scatters each sequence's tokens over randomly chosen pages of a
 * pool whose every other slot holds NaN (so a kernel that reads past a
 * sequence's end, or a page not listed, poisons its output), and keeps the
 * rounded values in float64 for attnd_kernel_ref_attention_f64. Header-only so each
 * kernel test program (scalar, SIMD paths) can include it. */
#ifndef ATTND_PAGED_PROBLEM_H
#define ATTND_PAGED_PROBLEM_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_kernels.h"
#include "testutil.h"

typedef struct pp_spec {
    attnd_attn_kind kind;
    int32_t hq, hkv, head_dim; /* GQA */
    int32_t d_c, d_r;          /* MLA */
    int32_t page_size;
    int32_t q_tokens;
    attnd_dtype kv_t, q_t;
    int32_t n_seqs;
    const int64_t *lens; /* [n_seqs] tokens per sequence */
} pp_spec;

typedef struct pp_problem {
    pp_spec sp;
    attnd_kernel_kv_layout l;
    attnd_kernel_decode_batch b;
    int64_t entry;      /* wire elements per token */
    double **k64, **v64; /* per sequence [T][hkv][dk], [T][hkv][dv] */
    double *q64;        /* [n][S][hq][dk] */
    void *q, *pool;
    int32_t *indptr, *idx, *last;
    float *out, *lse, *work;
} pp_problem;

static inline void pp_fill_nan(attnd_dtype t, void *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (t == ATTND_DTYPE_F32)
            ((float *)p)[i] = NAN;
        else
            ((uint16_t *)p)[i] = t == ATTND_DTYPE_BF16 ? 0x7fc0 : 0x7e00;
    }
}

/* Round v to dtype t and back, in float64. */
static inline double pp_round(attnd_dtype t, float v)
{
    switch (t) {
    case ATTND_DTYPE_BF16: return attnd_dtype_bf16_to_f32(attnd_dtype_f32_to_bf16(v));
    case ATTND_DTYPE_F16: return attnd_dtype_f16_to_f32(attnd_dtype_f32_to_f16(v));
    default: return v;
    }
}

static inline void pp_build(pp_problem *p, const pp_spec *sp, tu_rng *r)
{
    memset(p, 0, sizeof *p);
    p->sp = *sp;
    if (sp->kind == ATTND_ATTN_MLA)
        attnd_kernel_kv_layout_mla(&p->l, sp->d_c, sp->d_r, sp->page_size, sp->kv_t);
    else
        attnd_kernel_kv_layout_gqa(&p->l, sp->hkv, sp->head_dim, sp->page_size, sp->kv_t);
    const attnd_kernel_kv_layout *l = &p->l;
    int32_t n = sp->n_seqs, hkv = l->n_kv_heads, dk = l->d_k, dv = l->d_v;
    p->entry = attnd_kernel_kv_layout_token_elems(l);

    /* pages: each sequence's pages are a random subset of a pool with spares */
    int64_t total = 0;
    p->indptr = calloc((size_t)n + 1, sizeof(int32_t));
    p->last = calloc((size_t)n + 1, sizeof(int32_t));
    for (int32_t i = 0; i < n; i++) {
        int64_t np = (sp->lens[i] + sp->page_size - 1) / sp->page_size;
        p->indptr[i + 1] = p->indptr[i] + (int32_t)np;
        p->last[i] = np ? (int32_t)(sp->lens[i] - (np - 1) * sp->page_size) : 0;
        total += np;
    }
    int64_t pool_pages = total + 3;
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)pool_pages);
    for (int64_t j = 0; j < pool_pages; j++)
        perm[j] = (int32_t)j;
    for (int64_t j = pool_pages - 1; j > 0; j--) {
        int64_t k = tu_int(r, 0, j);
        int32_t t = perm[j];
        perm[j] = perm[k];
        perm[k] = t;
    }
    p->idx = malloc(sizeof(int32_t) * (size_t)(total + 1));
    memcpy(p->idx, perm, sizeof(int32_t) * (size_t)total);
    free(perm);
    size_t es = attnd_dtype_size(sp->kv_t);
    p->pool = malloc((size_t)pool_pages * attnd_kernel_kv_layout_page_bytes(l));
    pp_fill_nan(sp->kv_t, p->pool, (size_t)pool_pages * (size_t)l->page_stride);

    /* KV: wire entries drawn in float32, stored rounded, kept in float64 */
    p->k64 = calloc((size_t)n, sizeof(double *));
    p->v64 = calloc((size_t)n, sizeof(double *));
    float *wire = malloc(sizeof(float) * (size_t)p->entry * (size_t)sp->page_size);
    for (int32_t i = 0; i < n; i++) {
        int64_t T = sp->lens[i];
        p->k64[i] = malloc(sizeof(double) * (size_t)(T * hkv * dk + 1));
        p->v64[i] = malloc(sizeof(double) * (size_t)(T * hkv * dv + 1));
        for (int64_t t0 = 0; t0 < T; t0 += sp->page_size) {
            int32_t cnt = (int32_t)(T - t0 < sp->page_size ? T - t0 : sp->page_size);
            for (int64_t e = 0; e < (int64_t)cnt * p->entry; e++)
                wire[e] = (float)tu_normal(r);
            int32_t page = p->idx[p->indptr[i] + t0 / sp->page_size];
            attnd_kernel_kv_write_tokens(l, (char *)p->pool + (size_t)page * l->page_stride * es,
                                         0, cnt, ATTND_DTYPE_F32, wire);
            for (int32_t c = 0; c < cnt; c++) {
                const float *w = wire + (size_t)c * p->entry;
                int64_t t = t0 + c;
                for (int32_t h = 0; h < hkv; h++)
                    for (int32_t d = 0; d < dk; d++)
                        p->k64[i][(t * hkv + h) * dk + d] = pp_round(sp->kv_t, w[h * dk + d]);
                for (int32_t h = 0; h < hkv; h++)
                    for (int32_t e = 0; e < dv; e++)
                        p->v64[i][(t * hkv + h) * dv + e] =
                            l->v_in_k ? p->k64[i][(t * hkv + h) * dk + e]
                                      : pp_round(sp->kv_t, w[hkv * dk + h * dv + e]);
            }
        }
    }
    free(wire);

    size_t nq = (size_t)n * sp->q_tokens * sp->hq * dk;
    float *qf = malloc(sizeof(float) * (nq + 1));
    p->q64 = malloc(sizeof(double) * (nq + 1));
    for (size_t j = 0; j < nq; j++) {
        qf[j] = (float)tu_normal(r);
        p->q64[j] = pp_round(sp->q_t, qf[j]);
    }
    p->q = malloc((nq + 1) * attnd_dtype_size(sp->q_t));
    attnd_dtype_convert(sp->q_t, p->q, ATTND_DTYPE_F32, qf, nq);
    free(qf);

    size_t rows = (size_t)n * sp->q_tokens * sp->hq;
    p->out = malloc(sizeof(float) * (rows * dv + 1));
    p->lse = malloc(sizeof(float) * (rows + 1));
    for (size_t j = 0; j < rows * dv; j++)
        p->out[j] = NAN;
    for (size_t j = 0; j < rows; j++)
        p->lse[j] = NAN;

    attnd_kernel_decode_batch *b = &p->b;
    b->n_seqs = n;
    b->q_tokens = sp->q_tokens;
    b->n_q_heads = sp->hq;
    b->scale = (float)(1.0 / sqrt((double)dk));
    b->q_dtype = sp->q_t;
    b->q = p->q;
    b->kv = &p->l;
    b->pool = p->pool;
    b->pool_pages = pool_pages;
    b->page_indptr = p->indptr;
    b->page_idx = p->idx;
    b->last_page_len = p->last;
    b->out = p->out;
    b->lse = p->lse;
    p->work = malloc(sizeof(float) * attnd_kernel_decode_work_floats(b));
    b->work = p->work;
}

/* Worst normwise relative error of out, and worst absolute LSE error, over
 * every (sequence, query token, head) against the float64 reference. */
static inline void pp_check(const pp_problem *p, double *out_err_p, double *lse_err_p)
{
    const pp_spec *sp = &p->sp;
    int32_t hq = sp->hq, hkv = p->l.n_kv_heads, dk = p->l.d_k, dv = p->l.d_v;
    double *ref = malloc(sizeof(double) * (size_t)hq * dv);
    double *rlse = malloc(sizeof(double) * (size_t)hq);
    double worst = 0.0, worst_lse = 0.0;

    for (int32_t i = 0; i < sp->n_seqs; i++)
        for (int32_t s = 0; s < sp->q_tokens; s++) {
            int64_t vis = sp->lens[i] - (sp->q_tokens - 1 - s);
            if (vis < 0)
                vis = 0;
            size_t row = ((size_t)i * sp->q_tokens + s) * hq;
            attnd_kernel_ref_attention_f64(hq, hkv, dk, dv, vis, p->b.scale,
                                           p->q64 + row * dk, p->k64[i], p->v64[i], ref, rlse);
            for (int32_t h = 0; h < hq; h++) {
                double e = tu_rel_err_f32(p->out + (row + h) * dv, ref + (size_t)h * dv,
                                          (size_t)dv);
                if (e > worst)
                    worst = e;
                double le;
                float got = p->lse[row + h];
                if (isinf(rlse[h]))
                    le = (isinf(got) && got < 0) ? 0.0 : INFINITY;
                else
                    le = isnan(got) ? INFINITY : fabs(got - rlse[h]);
                if (le > worst_lse)
                    worst_lse = le;
            }
        }
    free(ref);
    free(rlse);
    *out_err_p = worst;
    *lse_err_p = worst_lse;
}

static inline void pp_free(pp_problem *p)
{
    for (int32_t i = 0; i < p->sp.n_seqs; i++) {
        free(p->k64[i]);
        free(p->v64[i]);
    }
    free(p->k64);
    free(p->v64);
    free(p->q64);
    free(p->q);
    free(p->pool);
    free(p->indptr);
    free(p->idx);
    free(p->last);
    free(p->out);
    free(p->lse);
    free(p->work);
}

#endif /* ATTND_PAGED_PROBLEM_H */
