/* The client-side KV mirror and float64 reference checks (see refcheck.h).
 *
 * A check of heads [h0, h1) walks the KV heads those query heads read
 * (GQA: head h reads KV head h / (Hq / Hkv); MLA: the one latent head),
 * widens that KV head's K and V rows of the mirror to float64 once, and
 * runs attnd_kernel_ref_attention_f64 for the group's query heads in one go. The
 * heads form (the narrow MLA wire) absorbs the queries with W_UK and
 * up-projects the reference's latent outputs with W_UV, in float64.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_buf.h"
#include "attnd_kernels.h"
#include "refcheck.h"

/* The mirror of one layer of one sequence; NULL when either is out of
 * range (tests ask about layers past the model on purpose). */
static attnd_refcheck_seq *seq_at(const attnd_refcheck *rc, uint32_t seq, uint32_t layer)
{
    if (seq >= rc->n_seqs || layer >= rc->model.n_layers)
        return NULL;
    return &rc->seqs[(size_t)seq * rc->model.n_layers + layer];
}

int attnd_refcheck_init(attnd_refcheck *rc, const attnd_model_info *model, uint32_t n_seqs)
{
    memset(rc, 0, sizeof *rc);
    rc->model = *model;
    rc->n_seqs = n_seqs;
    rc->seqs = calloc((size_t)n_seqs * model->n_layers + 1, sizeof *rc->seqs);
    return rc->seqs ? 0 : -1;
}

void attnd_refcheck_cleanup(attnd_refcheck *rc)
{
    if (rc->seqs)
        for (size_t i = 0; i < (size_t)rc->n_seqs * rc->model.n_layers; i++)
            free(rc->seqs[i].data);
    free(rc->seqs);
    free(rc->q);
    free(rc->k);
    free(rc->v);
    free(rc->out);
    free(rc->lse);
    memset(rc, 0, sizeof *rc);
}

static size_t entry_bytes(const attnd_refcheck *rc)
{
    return (size_t)rc->model.kv_token_elems * attnd_dtype_size(rc->model.kv_dtype);
}

int attnd_refcheck_append(attnd_refcheck *rc, uint32_t seq, uint32_t layer, uint64_t n,
                          attnd_dtype src_t, const void *src)
{
    attnd_refcheck_seq *s = seq_at(rc, seq, layer);
    size_t eb = entry_bytes(rc);

    if (!s)
        return -1;
    if (s->len + n > s->cap) {
        uint64_t cap = s->cap ? s->cap : 64;
        while (cap < s->len + n)
            cap *= 2;
        unsigned char *p = realloc(s->data, (size_t)cap * eb);
        if (!p)
            return -1;
        s->data = p;
        s->cap = cap;
    }
    attnd_dtype_convert(rc->model.kv_dtype, s->data + (size_t)s->len * eb, src_t, src,
                  (size_t)n * rc->model.kv_token_elems);
    s->len += n;
    return 0;
}

uint64_t attnd_refcheck_len(const attnd_refcheck *rc, uint32_t seq, uint32_t layer)
{
    const attnd_refcheck_seq *s = seq_at(rc, seq, layer);
    return s ? s->len : 0;
}

/* Fold one row's errors into *res: out elements [at, at + n) of out_t
 * against ref[n]; the row's LSE (when l is not NULL) against r. */
static void fold_row(attnd_refcheck_result *res, attnd_dtype out_t, const void *out, size_t at,
                     const double *ref, size_t n, double r, const float *l)
{
    double num = 0, den = 0;
    for (size_t d = 0; d < n; d++) {
        double o = attnd_dtype_load_f64(out_t, out, at + d);
        double diff = fabs(o - ref[d]);
        if (diff > num || isnan(diff))
            num = isnan(diff) ? INFINITY : diff;
        if (fabs(ref[d]) > den)
            den = fabs(ref[d]);
    }
    double err = den > 0 ? num / den : num;
    if (err > res->max_err)
        res->max_err = err;
    if (l) {
        double le;
        if (isinf(r) && isinf(*l) && (r < 0) == (*l < 0))
            le = 0;
        else
            le = fabs(*l - r) / (fabs(r) > 1 ? fabs(r) : 1);
        if (!(le <= res->max_lse_err))
            res->max_lse_err = isnan(le) ? INFINITY : le;
    }
    res->rows++;
}

int attnd_refcheck_token(attnd_refcheck *rc, uint32_t seq, uint32_t layer, uint64_t visible,
                         attnd_dtype q_t, const void *q, attnd_dtype out_t, const void *out,
                         const float *lse, uint32_t h0, uint32_t h1, attnd_refcheck_result *res)
{
    const attnd_model_info *m = &rc->model;
    const attnd_refcheck_seq *s = seq_at(rc, seq, layer);
    const uint32_t hkv = m->kind == ATTND_ATTN_GQA ? m->n_kv_heads : 1;
    const uint32_t group = m->n_q_heads / hkv;
    const size_t dk = m->d_k, dv = m->d_v;
    const attnd_dtype kt = m->kv_dtype;

    if (!s || h1 > m->n_q_heads)
        return -1;
    if (visible > s->len)
        visible = s->len;
    if (ATTND_BUF_RESERVE(rc->k, rc->cap_k, visible * dk + 1) ||
        ATTND_BUF_RESERVE(rc->v, rc->cap_v, visible * dv + 1) ||
        ATTND_BUF_RESERVE(rc->q, rc->cap_q, (size_t)group * dk) ||
        ATTND_BUF_RESERVE(rc->out, rc->cap_out, (size_t)group * dv) ||
        ATTND_BUF_RESERVE(rc->lse, rc->cap_lse, (size_t)group))
        return -1;

    for (uint32_t g = h0 / group; g < hkv && g * group < h1; g++) {
        uint32_t a = g * group > h0 ? g * group : h0;
        uint32_t b = (g + 1) * group < h1 ? (g + 1) * group : h1;
        /* K/V rows of KV head g within each entry */
        size_t k_off = m->kind == ATTND_ATTN_GQA ? (size_t)g * dk : 0;
        size_t v_off = m->kind == ATTND_ATTN_GQA ? (size_t)(hkv + g) * dv : 0;
        for (uint64_t t = 0; t < visible; t++) {
            size_t e = (size_t)t * m->kv_token_elems;
            for (size_t d = 0; d < dk; d++)
                rc->k[t * dk + d] = attnd_dtype_load_f64(kt, s->data, e + k_off + d);
            for (size_t d = 0; d < dv; d++)
                rc->v[t * dv + d] = attnd_dtype_load_f64(kt, s->data, e + v_off + d);
        }
        for (uint32_t h = a; h < b; h++)
            for (size_t d = 0; d < dk; d++)
                rc->q[(h - a) * dk + d] = attnd_dtype_load_f64(q_t, q, (size_t)h * dk + d);
        attnd_kernel_ref_attention_f64((int32_t)(b - a), 1, (int32_t)dk, (int32_t)dv, (int64_t)visible,
                                (double)m->scale, rc->q, rc->k, rc->v, rc->out, rc->lse);
        for (uint32_t h = a; h < b; h++)
            fold_row(res, out_t, out, (size_t)h * dv, rc->out + (size_t)(h - a) * dv, dv,
                     lse ? rc->lse[h - a] : 0, lse ? lse + h : NULL);
    }
    return 0;
}

int attnd_refcheck_token_heads(attnd_refcheck *rc, uint32_t seq, uint32_t layer,
                               uint64_t visible, const attnd_refcheck_proj *p, attnd_dtype q_t,
                               const void *q, attnd_dtype out_t, const void *out,
                               const float *lse, uint32_t h0, uint32_t h1,
                               attnd_refcheck_result *res)
{
    const attnd_model_info *m = &rc->model;
    const attnd_refcheck_seq *s = seq_at(rc, seq, layer);
    const size_t dk = m->d_k, dc = m->d_latent, dr = m->d_rope, dn = p->d_nope, dw = p->d_v;
    const size_t n = h1 > h0 ? h1 - h0 : 0;
    const attnd_dtype kt = m->kv_dtype;

    if (!s || m->kind != ATTND_ATTN_MLA || h1 > m->n_q_heads || dn < 1 || dw < 1)
        return -1;
    if (visible > s->len)
        visible = s->len;
    if (ATTND_BUF_RESERVE(rc->k, rc->cap_k, visible * dk + 1) ||
        ATTND_BUF_RESERVE(rc->v, rc->cap_v, visible * dc + 1) ||
        ATTND_BUF_RESERVE(rc->q, rc->cap_q, n * dk + 1) ||
        ATTND_BUF_RESERVE(rc->out, rc->cap_out, n * dc + dw + 1) ||
        ATTND_BUF_RESERVE(rc->lse, rc->cap_lse, n + 1))
        return -1;
    for (uint64_t t = 0; t < visible; t++) {
        size_t e = (size_t)t * m->kv_token_elems;
        for (size_t d = 0; d < dk; d++)
            rc->k[t * dk + d] = attnd_dtype_load_f64(kt, s->data, e + d);
        for (size_t d = 0; d < dc; d++)
            rc->v[t * dc + d] = rc->k[t * dk + d];
    }
    for (uint32_t h = h0; h < h1; h++) { /* absorb: q_nope . W_UK[h], then q_rope */
        double *qa = rc->q + (size_t)(h - h0) * dk;
        const size_t qh = (size_t)h * (dn + dr);
        for (size_t c = 0; c < dc; c++) {
            double acc = 0.0;
            for (size_t k = 0; k < dn; k++)
                acc += attnd_dtype_load_f64(q_t, q, qh + k) *
                       attnd_dtype_load_f64(p->w_t, p->w_uk, ((size_t)h * dn + k) * dc + c);
            qa[c] = acc;
        }
        for (size_t d = 0; d < dr; d++)
            qa[dc + d] = attnd_dtype_load_f64(q_t, q, qh + dn + d);
    }
    attnd_kernel_ref_attention_f64((int32_t)n, 1, (int32_t)dk, (int32_t)dc, (int64_t)visible,
                            (double)m->scale, rc->q, rc->k, rc->v, rc->out, rc->lse);
    double *v = rc->out + n * dc;
    for (uint32_t h = h0; h < h1; h++) { /* up-project: o . W_UV[h] */
        const double *o = rc->out + (size_t)(h - h0) * dc;
        for (size_t j = 0; j < dw; j++) {
            double acc = 0.0;
            for (size_t c = 0; c < dc; c++)
                acc += o[c] * attnd_dtype_load_f64(p->w_t, p->w_uv, ((size_t)h * dc + c) * dw + j);
            v[j] = acc;
        }
        fold_row(res, out_t, out, (size_t)h * dw, v, dw, lse ? rc->lse[h - h0] : 0,
                 lse ? lse + h : NULL);
    }
    return 0;
}

/* ---- inputs ------------------------------------------------------------------ */

void attnd_rng_seed(attnd_rng *r, uint64_t seed)
{
    r->s = seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
    if (!r->s)
        r->s = 1;
}

uint64_t attnd_rng_next(attnd_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545f4914f6cdd1dull;
}

void attnd_rng_fill(attnd_rng *r, attnd_dtype t, void *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float f = (float)((double)(attnd_rng_next(r) >> 11) * 0x1p-52 - 1.0);
        switch (t) {
        case ATTND_DTYPE_BF16: ((uint16_t *)dst)[i] = attnd_dtype_f32_to_bf16(f); break;
        case ATTND_DTYPE_F16: ((uint16_t *)dst)[i] = attnd_dtype_f32_to_f16(f); break;
        case ATTND_DTYPE_F32: ((float *)dst)[i] = f; break;
        default: break;
        }
    }
}
