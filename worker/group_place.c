/* Placement and slicing: which rank holds which part of every tensor.
 *
 * sequence  token t of a layer lives on rank (t / P) mod N, P the page
 *           size: pages are dealt round-robin, so every rank holds ~1/N of
 *           every long session and the rule needs no table. A rank stores
 *           its tokens in global order, so its local position of a token is
 *           the count of its tokens before it (attnd__gplace_count).
 * head      rank r: KV heads [r*Hkv/N, (r+1)*Hkv/N) (K and V blocks of the
 *           wire entry [2][Hkv][D]) and query heads [r*Hq/N, (r+1)*Hq/N),
 *           which are exactly the heads that read them.
 * latent    rank r: rotated latent dims [r*d_c/N, (r+1)*d_c/N) of queries
 *           (times mu) and entries, plus the RoPE dims (all, or
 *           [r*d_r/N, (r+1)*d_r/N) with rope_split). Latent parts travel as
 *           float32 (a rotation rounded to bf16 would add error of its own).
 *           A heads-form query (the narrow wire) is not rotated: every rank
 *           gets q_nope whole and its RoPE dims, in the request's dtype,
 *           and absorbs with its part of W_UK (group_weights.c).
 */
#include <string.h>

#include "attnd_assert.h"
#include "group_int.h"

int32_t attnd__gplace_owner(const attnd_group *g, uint64_t t)
{
    return (int32_t)((t / (uint64_t)g->cfg.page_size) % (uint64_t)g->N);
}

uint64_t attnd__gplace_count(const attnd_group *g, int32_t r, uint64_t x)
{
    uint64_t P = (uint64_t)g->cfg.page_size, cycle = P * (uint64_t)g->N;
    uint64_t full = x / cycle, rem = x % cycle, lo = (uint64_t)r * P;
    uint64_t part = rem <= lo ? 0 : (rem - lo < P ? rem - lo : P);
    return full * P + part;
}

uint64_t attnd__gplace_gather_seq(const attnd_group *g, int32_t r, uint64_t start, uint64_t n,
                                  size_t es, const void *src, void *dst)
{
    const uint64_t P = (uint64_t)g->cfg.page_size, end = start + n;
    uint64_t t = start, k = 0;
    while (t < end) {
        uint64_t page_end = (t / P + 1) * P;
        uint64_t run = (page_end < end ? page_end : end) - t;
        if (attnd__gplace_owner(g, t) == r) {
            if (dst)
                memcpy((char *)dst + k * es, (const char *)src + (t - start) * es, run * es);
            k += run;
        }
        t += run;
    }
    /* placement is monotonic: what was gathered is exactly what rank r's
     * count says it holds of the range */
    ATTND_ASSERT(k == attnd__gplace_count(g, r, end) - attnd__gplace_count(g, r, start));
    return k;
}

uint64_t attnd__gplace_first_run(const attnd_group *g, int32_t r, uint64_t start, uint64_t n,
                                 uint64_t *off_p)
{
    const uint64_t P = (uint64_t)g->cfg.page_size, N = (uint64_t)g->N, end = start + n;
    uint64_t page = start / P;
    uint64_t ahead = ((uint64_t)r + N - page % N) % N; /* pages to rank r's next one */
    uint64_t t = ahead ? (page + ahead) * P : start;
    if (t >= end)
        return 0;
    uint64_t page_end = (t / P + 1) * P;
    ATTND_ASSERT(attnd__gplace_owner(g, t) == r && t >= start);
    *off_p = t - start;
    return (page_end < end ? page_end : end) - t;
}

attnd_dtype attnd__gpart_q_dtype(const attnd_group *g, attnd_dtype qt, int32_t d_nope)
{
    return g->cfg.mode == ATTND_GROUP_LATENT && d_nope <= 0 ? ATTND_DTYPE_F32 : qt;
}

attnd_dtype attnd__gpart_kv_dtype(const attnd_group *g, attnd_dtype kt)
{
    return g->cfg.mode == ATTND_GROUP_LATENT ? ATTND_DTYPE_F32 : kt;
}

/* Latent: copy the rank-r slice of one rotated float32 vector [d_c + d_r]
 * (latent scaled by mul). */
static void latent_slice(const attnd_group *g, int32_t r, const float *src, float *dst,
                         float mul)
{
    const int32_t dc = g->cfg.model.d_latent, dr = g->cfg.model.d_rope;
    const int32_t dcr = dc / g->N, drr = g->d_k_r - dcr;
    for (int32_t e = 0; e < dcr; e++)
        dst[e] = mul * src[r * dcr + e];
    memcpy(dst + dcr, src + dc + (drr == dr ? 0 : r * drr), sizeof(float) * (size_t)drr);
}

void attnd__gplace_rotate_split(const attnd_group *g, attnd_dtype t, const void *src, float mul,
                                float *tmp, float *const *dst)
{
    const int32_t dk = g->cfg.model.d_latent + g->cfg.model.d_rope;
    attnd_dtype_convert(ATTND_DTYPE_F32, tmp, t, src, (size_t)dk);
    attnd_kernel_fwht_f32(tmp, g->cfg.model.d_latent);
    for (int32_t r = 0; r < g->N; r++)
        if (dst[r])
            latent_slice(g, r, tmp, dst[r], mul);
}

void attnd__gplace_slice_q(const attnd_group *g, int32_t r, size_t rows, attnd_dtype qt,
                           const void *q, void *dst)
{
    const size_t es = attnd_dtype_size(qt);
    switch (g->cfg.mode) {
    case ATTND_GROUP_SEQUENCE:
        memcpy(dst, q, rows * (size_t)g->hq * (size_t)g->d_k * es);
        return;
    case ATTND_GROUP_HEAD: {
        size_t row = (size_t)g->hq * (size_t)g->d_k * es;
        size_t part = (size_t)g->hq_r * (size_t)g->d_k * es;
        for (size_t i = 0; i < rows; i++)
            memcpy((char *)dst + i * part, (const char *)q + i * row + (size_t)r * part, part);
        return;
    }
    case ATTND_GROUP_LATENT: {
        const float *src = q; /* rotated float32 */
        float *d = dst;
        for (size_t i = 0; i < rows * (size_t)g->hq; i++)
            latent_slice(g, r, src + i * (size_t)g->d_k, d + i * (size_t)g->d_k_r, g->cfg.mu);
        return;
    }
    }
}

void attnd__gplace_slice_q_heads(const attnd_group *g, int32_t r, size_t rows, attnd_dtype qt,
                                 int32_t d_nope, const void *q, void *dst)
{
    const size_t es = attnd_dtype_size(qt), dn = (size_t)d_nope;
    const size_t dr = (size_t)g->cfg.model.d_rope, drr = (size_t)g->shard.d_rope;
    const size_t n = rows * (size_t)g->hq, dq = dn + dr, dqr = dn + drr;
    ATTND_ASSERT(g->cfg.mode != ATTND_GROUP_HEAD && g->hq_r == g->hq);
    if (drr == dr) { /* every rank gets the query as it is */
        memcpy(dst, q, n * dq * es);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const char *src = (const char *)q + i * dq * es;
        char *d = (char *)dst + i * dqr * es;
        memcpy(d, src, dn * es);
        memcpy(d + dn * es, src + (dn + (size_t)r * drr) * es, drr * es);
    }
}

void attnd__gplace_slice_kv(const attnd_group *g, int32_t r, size_t n, attnd_dtype dt,
                            const void *kv, void *dst)
{
    const size_t es = attnd_dtype_size(dt);
    switch (g->cfg.mode) {
    case ATTND_GROUP_SEQUENCE:
        memcpy(dst, kv, n * (size_t)g->kv_elems * es);
        return;
    case ATTND_GROUP_HEAD: {
        const size_t D = (size_t)g->cfg.model.head_dim, hkv = (size_t)g->cfg.model.n_kv_heads;
        const size_t hr = hkv / (size_t)g->N, blk = hr * D * es;
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < 2; k++)
                memcpy((char *)dst + (i * 2 + k) * blk,
                       (const char *)kv + ((i * 2 + k) * hkv + (size_t)r * hr) * D * es, blk);
        return;
    }
    case ATTND_GROUP_LATENT: {
        const float *src = kv; /* rotated float32 */
        float *d = dst;
        for (size_t i = 0; i < n; i++)
            latent_slice(g, r, src + i * (size_t)g->kv_elems, d + i * (size_t)g->kv_elems_r,
                         1.0f);
        return;
    }
    }
}

/* float32 copies of n vectors of d_c + d_r elements, latent part rotated. */
static void rotate_vecs(const attnd_group *g, size_t n, attnd_dtype t, const void *src,
                        float *dst)
{
    const int32_t dk = g->cfg.model.d_latent + g->cfg.model.d_rope;
    attnd_dtype_convert(ATTND_DTYPE_F32, dst, t, src, n * (size_t)dk);
    for (size_t i = 0; i < n; i++)
        attnd_kernel_fwht_f32(dst + i * (size_t)dk, g->cfg.model.d_latent);
}

void attnd__grotate_kv(const attnd_group *g, size_t n, attnd_dtype dt, const void *kv,
                       float *dst)
{
    rotate_vecs(g, n, dt, kv, dst);
}
