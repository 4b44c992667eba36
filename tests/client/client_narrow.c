/* The narrow MLA wire's test helpers (client_narrow.h): random weights,
 * heads-form requests and their float64 check. */
#include "client_narrow.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_dtype.h"

void cu_wset_make(cu_seqs *s, cu_wset *w, uint32_t d_nope, uint32_t d_v, attnd_dtype wt)
{
    const attnd_model_info *m = &s->m;
    const size_t nk = (size_t)m->n_q_heads * d_nope * m->d_latent;
    const size_t nv = (size_t)m->n_q_heads * m->d_latent * d_v;
    w->uk = malloc(nk * attnd_dtype_size(wt));
    w->uv = malloc(nv * attnd_dtype_size(wt));
    float *f = malloc(nk * sizeof(float));
    ck_assert(w->uk && w->uv && f);
    /* W_UK uniform in +-2^-k, 2^-k the power of two nearest 1/sqrt(d_nope)
     * (exact in every dtype): the absorbed query is as large as q_nope
     * whatever d_nope, so that scores stay in the range the kernels'
     * tests use */
    const float uk_scale = ldexpf(1.0f, -(int)lround(0.5 * log2((double)d_nope)));
    attnd_rng_fill(&s->rng, ATTND_DTYPE_F32, f, nk);
    for (size_t i = 0; i < nk; i++)
        f[i] *= uk_scale;
    attnd_dtype_convert(wt, w->uk, ATTND_DTYPE_F32, f, nk);
    free(f);
    attnd_rng_fill(&s->rng, wt, w->uv, nv);
    w->p = (attnd_refcheck_proj){d_nope, d_v, wt, w->uk, w->uv};
}

void cu_wset_free(cu_wset *w)
{
    free(w->uk);
    free(w->uv);
}

attnd_status cu_wset_load(cu_seqs *s, const cu_wset *w, uint32_t layer, uint64_t *bytes_p,
                          attnd_error *err)
{
    const attnd_model_info *m = &s->m;
    attnd_tensor tk = {w->p.w_t, 3, {m->n_q_heads, w->p.d_nope, m->d_latent}, w->uk};
    attnd_tensor tv = {w->p.w_t, 3, {m->n_q_heads, m->d_latent, w->p.d_v}, w->uv};
    return attnd_client_load_mla_weights(s->c, layer, &tk, &tv, bytes_p, err);
}

void cu_hstep_make(cu_seqs *s, cu_hstep *h, const cu_wset *w, uint32_t layer, uint32_t n,
                   uint32_t S)
{
    const attnd_model_info *m = &s->m;
    const size_t ds = attnd_dtype_size(s->dt), dq = w->p.d_nope + m->d_rope;
    const size_t rows = (size_t)n * S * m->n_q_heads, dv = w->p.d_v;
    ck_assert_uint_le(n, CU_MAX_SEQS);
    memset(h, 0, sizeof *h);
    h->S = S;
    h->d_nope = w->p.d_nope;
    h->d_v = w->p.d_v;
    h->q = malloc(rows * dq * ds);
    h->kv = malloc((size_t)n * S * m->kv_token_elems * ds);
    h->out = malloc(rows * dv * ds);
    h->lse = malloc(rows * sizeof(float));
    ck_assert(h->q && h->kv && h->out && h->lse);
    attnd_rng_fill(&s->rng, s->dt, h->q, rows * dq);
    attnd_rng_fill(&s->rng, s->dt, h->kv, (size_t)n * S * m->kv_token_elems);
    for (uint32_t i = 0; i < n; i++)
        h->pos[i] = attnd_refcheck_len(&s->rc, i, layer);
    h->a = (attnd_attend_args){
        .layer = layer, .n_seqs = n, .sessions = s->ids,
        .q = {s->dt, 4, {n, S, m->n_q_heads, (int64_t)dq}, h->q},
        .new_kv = {s->dt, 3, {n, S, m->kv_token_elems}, h->kv},
        .positions = h->pos, .out_dtype = s->dt,
        .out = h->out, .out_capacity = rows * dv * ds,
        .lse = h->lse, .lse_capacity = rows,
        .q_form = ATTND_Q_HEADS,
    };
}

void cu_hstep_free(cu_hstep *h)
{
    free(h->q);
    free(h->kv);
    free(h->out);
    free(h->lse);
}

void cu_hstep_check(cu_seqs *s, cu_hstep *h, const cu_wset *w, attnd_refcheck_result *res)
{
    const attnd_model_info *m = &s->m;
    const size_t ds = attnd_dtype_size(s->dt), dq = h->d_nope + m->d_rope, H = m->n_q_heads;
    for (uint32_t i = 0; i < h->a.n_seqs; i++) {
        ck_assert_int_eq(attnd_refcheck_append(&s->rc, i, h->a.layer, h->S, s->dt,
                                               (const char *)h->kv +
                                                   (size_t)i * h->S * m->kv_token_elems * ds),
                         0);
        uint64_t L = attnd_refcheck_len(&s->rc, i, h->a.layer);
        for (uint32_t t = 0; t < h->S; t++) {
            size_t row = ((size_t)i * h->S + t) * H;
            ck_assert_int_eq(attnd_refcheck_token_heads(
                                 &s->rc, i, h->a.layer, L - (h->S - 1 - t), &w->p, s->dt,
                                 (const char *)h->q + row * dq * ds, s->dt,
                                 (const char *)h->out + row * h->d_v * ds, h->lse + row, 0,
                                 (uint32_t)H, res),
                             0);
        }
    }
}
