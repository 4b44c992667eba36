/* Portable scalar decode attention over paged KV: the reference path the
 * SIMD kernels are tested against, and the fallback on any CPU.
 *
 * One work unit is (sequence, KV head, query token, token range). It streams
 * the range's K/V rows once: each row is widened to float32, then every query
 * head of the group scores it and updates its online-softmax state (running
 * max m, running sum l, unnormalized output in the out row). A unit ends by
 * normalizing: out /= l, lse = m + log l. Split-KV runs several units over
 * disjoint ranges and merges them with attnd_kernel_merge_states.
 *
 * Non-finite inputs follow attnd_kernels.h's rule: a score that is not
 * finite becomes NaN (so an Inf or NaN in q or K poisons the running sum),
 * and a row whose sum is NaN or whose normalized output is not finite (a
 * non-finite V) comes out as NaN everywhere, lse included. */
#include <math.h>
#include <string.h>

#include "cpu_int.h"

size_t attnd_kernel_decode_work_floats(const attnd_kernel_decode_batch *b)
{
    size_t group = (size_t)(b->n_q_heads / b->kv->n_kv_heads);
    size_t scalar = group * (size_t)b->kv->d_k + 3 * group + (size_t)b->kv->d_k +
                    (size_t)b->kv->d_v;
    attnd__simd_dims dm = attnd__simd_dims_of(b);
    size_t simd = attnd__simd_work_floats(&dm), bf16 = attnd__bf16_work_floats(&dm);
    simd = simd > bf16 ? simd : bf16;
    return scalar > simd ? scalar : simd;
}

int64_t attnd_kernel_decode_seq_len(const attnd_kernel_decode_batch *b, int32_t i, int32_t kvh)
{
    int32_t li = attnd_kernel_decode_list(b, i, kvh);
    int32_t np = b->page_indptr[li + 1] - b->page_indptr[li];
    if (np == 0)
        return 0;
    return (int64_t)(np - 1) * b->kv->page_size + b->last_page_len[li];
}

int64_t attnd_kernel_decode_visible_len(const attnd_kernel_decode_batch *b, int32_t i,
                                        int32_t kvh, int32_t s)
{
    int64_t v = attnd_kernel_decode_seq_len(b, i, kvh) - (b->q_tokens - 1 - s);
    return v > 0 ? v : 0;
}

attnd_status attnd_kernel_decode_batch_check(const attnd_kernel_decode_batch *b,
                                             attnd_error *err)
{
    const attnd_kernel_kv_layout *l = b->kv;

    if (!l || !b->page_indptr || !b->out || !b->work)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "batch: kv, page_indptr, out and work are required");
    if (b->n_seqs < 0 || b->q_tokens < 1)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "batch: n_seqs %d, q_tokens %d (need >= 0, >= 1)",
                               b->n_seqs, b->q_tokens);
    if (l->n_kv_heads < 1 || b->n_q_heads < 1 || b->n_q_heads % l->n_kv_heads)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "n_q_heads %d: must be a positive multiple of n_kv_heads %d",
                               b->n_q_heads, l->n_kv_heads);
    if (attnd_dtype_size(b->q_dtype) == 0 || attnd_dtype_size(l->dtype) == 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "dtype: q %d, kv %d", b->q_dtype, l->dtype);
    if (l->page_size < 1 || l->d_k < 1 || l->d_v < 1 || l->d_v > l->d_k * 64)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "kv layout: page_size %d, d_k %d, d_v %d",
                               l->page_size, l->d_k, l->d_v);
    if (b->n_seqs > 0 && (!b->q || !b->last_page_len))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "batch: q and last_page_len are required");
    const int32_t lg = b->list_groups > 1 ? b->list_groups : 1;
    if (b->list_groups < 0 || l->n_kv_heads % lg)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "list_groups: %d, expected 0, 1 or a divisor of n_kv_heads %d",
                               b->list_groups, l->n_kv_heads);
    if ((int64_t)b->n_seqs * lg > INT32_MAX - 1)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "n_seqs: %d lists of %d groups: too many", b->n_seqs, lg);
    if (b->page_indptr[0] != 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "page_indptr[0]: expected 0, got %d", b->page_indptr[0]);
    for (int32_t i = 0; i < b->n_seqs * lg; i++) {
        int32_t p0 = b->page_indptr[i], p1 = b->page_indptr[i + 1];
        if (p1 < p0)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "page_indptr[%d]: decreasing (%d < %d)", i + 1, p1, p0);
        if (p1 > p0 && (b->last_page_len[i] < 1 || b->last_page_len[i] > l->page_size))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "last_page_len[%d]: %d not in [1, %d]", i,
                                   b->last_page_len[i], l->page_size);
        for (int32_t j = p0; j < p1; j++)
            if (b->page_idx[j] < 0 || b->page_idx[j] >= b->pool_pages)
                return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                       "page_idx[%d]: %d not in [0, %lld)", j,
                                       b->page_idx[j], (long long)b->pool_pages);
    }
    return ATTND_OK;
}

void attnd_kernel_decode_range_scalar(const attnd_kernel_decode_batch *b, int32_t i,
                                      int32_t kvh, int32_t s, int64_t t0,
                                      int64_t t1, float *out, float *lse,
                                      float *work)
{
    const attnd_kernel_kv_layout *l = b->kv;
    const int32_t group = b->n_q_heads / l->n_kv_heads;
    const int32_t dk = l->d_k, dv = l->d_v, ps = l->page_size;
    const size_t es = attnd_dtype_size(l->dtype);
    float *qf = work;                       /* [group][dk] */
    float *m = qf + (size_t)group * dk;     /* [group] */
    float *sum = m + group;                 /* [group] */
    float *krow = sum + group;              /* [dk] */
    float *vrow = l->v_in_k ? krow : krow + dk;
    int64_t vis = attnd_kernel_decode_visible_len(b, i, kvh, s);

    if (!lse) /* caller does not want it: keep it in scratch */
        lse = krow + dk + dv;
    if (t1 > vis)
        t1 = vis;
    /* query rows of this group, widened once */
    size_t q_off = (((size_t)i * b->q_tokens + s) * b->n_q_heads +
                    (size_t)kvh * group) * dk;
    attnd_dtype_convert(ATTND_DTYPE_F32, qf, b->q_dtype,
                  (const char *)b->q + q_off * attnd_dtype_size(b->q_dtype),
                  (size_t)group * dk);
    for (int32_t h = 0; h < group; h++) {
        m[h] = -INFINITY;
        sum[h] = 0.0f;
        memset(out + (size_t)h * dv, 0, (size_t)dv * sizeof(float));
    }

    const int32_t *pages = b->page_idx + b->page_indptr[attnd_kernel_decode_list(b, i, kvh)];
    const char *pool = b->pool;
    for (int64_t t = t0; t < t1; t++) {
        int64_t page = pages[t / ps], slot = t % ps;
        const char *pg = pool + (size_t)(page * l->page_stride) * es;
        attnd_dtype_convert(ATTND_DTYPE_F32, krow, l->dtype,
                      pg + (size_t)(kvh * l->k_head_stride + slot * l->k_token_stride) * es,
                      (size_t)dk);
        if (!l->v_in_k)
            attnd_dtype_convert(ATTND_DTYPE_F32, vrow, l->dtype,
                          pg + (size_t)(l->v_offset + kvh * l->v_head_stride +
                                        slot * l->v_token_stride) * es,
                          (size_t)dv);
        for (int32_t h = 0; h < group; h++) {
            const float *qh = qf + (size_t)h * dk;
            float *oh = out + (size_t)h * dv;
            float sc = 0.0f;
            for (int32_t d = 0; d < dk; d++)
                sc += qh[d] * krow[d];
            sc *= b->scale;
            if (!isfinite(sc)) /* the non-finite rule: see attnd_kernels.h */
                sc = NAN;
            if (sc > m[h]) {
                float c = expf(m[h] - sc); /* 0 when m was -inf */
                sum[h] *= c;
                for (int32_t e = 0; e < dv; e++)
                    oh[e] *= c;
                m[h] = sc;
            }
            float p = expf(sc - m[h]);
            sum[h] += p;
            for (int32_t e = 0; e < dv; e++)
                oh[e] += p * vrow[e];
        }
    }
    for (int32_t h = 0; h < group; h++) {
        float *oh = out + (size_t)h * dv;
        if (sum[h] > 0.0f) {
            float inv = 1.0f / sum[h];
            int finite = 1;
            for (int32_t e = 0; e < dv; e++) {
                oh[e] *= inv;
                finite &= isfinite(oh[e]) != 0;
            }
            lse[h] = m[h] + logf(sum[h]);
            if (!finite)
                attnd__nan_row(oh, dv, &lse[h]);
        } else if (sum[h] == 0.0f) { /* saw no token: out is still 0 */
            lse[h] = -INFINITY;
        } else { /* NaN: a non-finite score */
            attnd__nan_row(oh, dv, &lse[h]);
        }
    }
}

/* The scalar path's work unit: one range call per query token. */
void attnd__decode_unit_scalar(const attnd_kernel_decode_batch *b, const attnd__unit *u,
                               float *work)
{
    for (int32_t s = 0; s < b->q_tokens; s++)
        attnd_kernel_decode_range_scalar(b, u->seq, u->kv_head, s, u->t0, u->t1,
                                         u->out + s * u->out_s,
                                         u->lse ? u->lse + s * u->lse_s : NULL, work);
}

void attnd_kernel_decode_scalar(const attnd_kernel_decode_batch *b)
{
    const int32_t hkv = b->kv->n_kv_heads;
    const int32_t group = b->n_q_heads / hkv;
    const int32_t dv = b->kv->d_v;

    for (int32_t i = 0; i < b->n_seqs; i++) {
        for (int32_t s = 0; s < b->q_tokens; s++) {
            size_t row = ((size_t)i * b->q_tokens + s) * b->n_q_heads;
            for (int32_t g = 0; g < hkv; g++) {
                size_t h0 = row + (size_t)g * group;
                attnd_kernel_decode_range_scalar(
                    b, i, g, s, 0, attnd_kernel_decode_seq_len(b, i, g), b->out + h0 * dv,
                    b->lse ? b->lse + h0 : NULL, b->work);
            }
        }
    }
}
