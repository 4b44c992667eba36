/* W_UV in a worker group: loading each rank's part, and the up-projection
 * every rank applies to its own partial result (the true all-reduce of
 * latent mode: the leader sums d_vo-wide rows instead of concatenating
 * d_c-wide ones, 4x fewer bytes for DeepSeek-V3).
 *
 * Math: a head's output is o W, W = W_UV[h] of [d_c][d_vo]. Latent mode
 * computes in the rotated basis, o = R o' (R the normalized Hadamard,
 * symmetric and orthonormal), so o W = o'^T (R W) = sum_r o'_r (R W)_r: rank
 * r keeps rows [r d_c/N, (r+1) d_c/N) of R W and the leader adds the ranks'
 * projections in rank order. Sequence mode: the LSE merge is linear in o, so
 * ranks project before merging (o_r W merged with the same weights as o_r).
 *
 * A rank's parts are float32 [hq_r][d_v_r][d_vo], one per layer, replaced
 * whole by a new load (under w_lock: attends read under the read lock).
 */
#include <stdlib.h>
#include <string.h>

#include "attnd_clock.h"
#include "group_int.h"

attnd_status attnd__gweights_init(attnd_group *g)
{
    int32_t L = g->cfg.model.n_layers;
    g->wuv = calloc((size_t)L, sizeof *g->wuv);
    g->wuv_dv = calloc((size_t)L, sizeof *g->wuv_dv);
    if (!g->wuv || !g->wuv_dv)
        return ATTND_ERR_RESOURCE_EXHAUSTED;
    pthread_rwlock_init(&g->w_lock, NULL);
    return ATTND_OK;
}

void attnd__gweights_cleanup(attnd_group *g)
{
    if (!g->wuv)
        return;
    for (int32_t l = 0; l < g->cfg.model.n_layers; l++)
        free(g->wuv[l]);
    free(g->wuv);
    free(g->wuv_dv);
    g->wuv = NULL;
    pthread_rwlock_destroy(&g->w_lock);
}

attnd_status attnd__gweights_store(attnd_group *g, uint32_t layer, int32_t d_vo,
                                   const float *part, attnd_error *err)
{
    size_t n = (size_t)g->hq_r * (size_t)g->d_v_r * (size_t)d_vo;
    if (layer >= (uint32_t)g->cfg.model.n_layers)
        return attnd_error_set(err, ATTND_ERR_OUT_OF_RANGE, "layer: %u not in [0, %d)", layer,
                               g->cfg.model.n_layers);
    float *w = malloc(n * sizeof *w);
    if (!w)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "w_uv: no memory for %zu floats", n);
    memcpy(w, part, n * sizeof *w);
    pthread_rwlock_wrlock(&g->w_lock);
    float *old = g->wuv[layer];
    g->wuv[layer] = w;
    g->wuv_dv[layer] = d_vo;
    pthread_rwlock_unlock(&g->w_lock);
    free(old);
    return ATTND_OK;
}

int32_t attnd_group_weights_dv(attnd_group *g, uint32_t layer)
{
    if (layer >= (uint32_t)g->cfg.model.n_layers)
        return 0;
    pthread_rwlock_rdlock(&g->w_lock);
    int32_t d = g->wuv_dv[layer];
    pthread_rwlock_unlock(&g->w_lock);
    return d;
}

attnd_status attnd__gweights_project(attnd_group *g, uint32_t layer, int32_t d_vo, size_t rows,
                                     const float *out, float *dst, attnd_error *err)
{
    const size_t H = (size_t)g->hq_r, dv = (size_t)g->d_v_r, dw = (size_t)d_vo;
    attnd_status st = ATTND_OK;

    pthread_rwlock_rdlock(&g->w_lock);
    if (layer >= (uint32_t)g->cfg.model.n_layers || !g->wuv[layer] ||
        g->wuv_dv[layer] != d_vo) {
        st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                             "up_project: rank %d holds no W_UV of width %d for layer %u "
                             "(LoadWeights; a restarted rank must be loaded again)",
                             g->me, d_vo, layer);
        goto out;
    }
    const float *w = g->wuv[layer];
    for (size_t i = 0; i < rows; i++)
        for (size_t h = 0; h < H; h++) {
            const float *o = out + (i * H + h) * dv, *wh = w + h * dv * dw;
            float *d = dst + (i * H + h) * dw;
            memset(d, 0, dw * sizeof *d);
            for (size_t k = 0; k < dv; k++) {
                float ok = o[k];
                const float *row = wh + k * dw;
                for (size_t j = 0; j < dw; j++)
                    d[j] += ok * row[j];
            }
        }
out:
    pthread_rwlock_unlock(&g->w_lock);
    return st;
}

/* Rank r's part of W ([H][d_c][d_vo] float32, latent: already rotated). */
static void weights_part(const attnd_group *g, int32_t r, int32_t d_vo, const float *w,
                         float *dst)
{
    const size_t H = (size_t)g->hq, dc = (size_t)g->d_v, dvr = (size_t)g->d_v_r;
    const size_t dw = (size_t)d_vo, r0 = g->cfg.mode == ATTND_GROUP_LATENT ? (size_t)r * dvr : 0;
    for (size_t h = 0; h < H; h++)
        memcpy(dst + h * dvr * dw, w + (h * dc + r0) * dw, dvr * dw * sizeof(float));
}

attnd_status attnd_group_load_weights(attnd_group *g, uint32_t layer, int32_t d_vo,
                                      attnd_dtype dtype, const void *w, uint64_t *bytes_p,
                                      attnd_error *err)
{
    const size_t H = (size_t)g->hq, dc = (size_t)g->d_v, dw = (size_t)d_vo;
    const size_t part = (size_t)g->hq_r * (size_t)g->d_v_r * dw * sizeof(float);
    attnd__gbuf *full = NULL, *mine = NULL;
    attnd__gcall *c = NULL;
    attnd_status st;

    if (g->cfg.model.kind != ATTND_ATTN_MLA || g->cfg.mode == ATTND_GROUP_HEAD)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "w_uv: W_UV applies to MLA models in sequence or latent mode");
    if (d_vo < 1 || d_vo > 4096 || attnd_dtype_size(dtype) == 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "w_uv: expected [Hq, d_c, d_v] with d_v in [1, 4096] and a "
                               "valid dtype, got d_v %d", d_vo);
    if (layer >= (uint32_t)g->cfg.model.n_layers)
        return attnd_error_set(err, ATTND_ERR_OUT_OF_RANGE, "layer: %u not in [0, %d)", layer,
                               g->cfg.model.n_layers);
    for (int32_t r = 0; r < g->N; r++)
        if (r != g->me && !attnd__gnet_peer_up(g, r))
            return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                                   "group: rank %d (%s) is not connected", r, g->cfg.addrs[r]);
    if (!(full = attnd__gbuf_get(g, H * dc * dw * sizeof(float))) ||
        !(mine = attnd__gbuf_get(g, part)) || !(c = attnd__gcall_new(g))) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "w_uv: out of memory");
        goto out;
    }
    float *wf = (float *)full->data;
    /* non-finite weights are refused here, found while converting (no pass
     * of its own), before anything is sent or stored */
    size_t bad = attnd_dtype_convert_checked(ATTND_DTYPE_F32, wf, dtype, w, H * dc * dw);
    if (bad < H * dc * dw) {
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                             "w_uv: element %zu is %s (non-finite values are rejected)", bad,
                             attnd_dtype_nonfinite_name(dtype, w, bad));
        goto out;
    }
    if (g->cfg.mode == ATTND_GROUP_LATENT) { /* W <- R W, column by column */
        float *col = (float *)mine->data; /* scratch: part >= dc floats */
        if (part < dc * sizeof(float) && !(col = malloc(dc * sizeof(float)))) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "w_uv: out of memory");
            goto out;
        }
        for (size_t h = 0; h < H; h++)
            for (size_t j = 0; j < dw; j++) {
                for (size_t k = 0; k < dc; k++)
                    col[k] = wf[(h * dc + k) * dw + j];
                attnd_kernel_fwht_f32(col, (int32_t)dc);
                for (size_t k = 0; k < dc; k++)
                    wf[(h * dc + k) * dw + j] = col[k];
            }
        if (col != (float *)mine->data)
            free(col);
    }
    for (int32_t r = 0; r < g->N; r++) {
        if (r == g->me)
            continue;
        attnd__gbuf *b = attnd__gbuf_get(g, part);
        attnd_error e;
        if (!b || attnd__gcall_expect(g, c, r, 0)) {
            attnd__gbuf_put(g, b);
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "w_uv: out of memory");
            goto out;
        }
        weights_part(g, r, d_vo, wf, (float *)b->data);
        b->len = part;
        b->hdr.type = ATTND__GMSG_WEIGHTS;
        b->hdr.src_rank = g->me;
        b->hdr.req_id = c->id;
        b->hdr.layer = layer;
        b->hdr.a = (uint64_t)d_vo;
        if (attnd__gnet_send_req(g, r, b, &e)) {
            pthread_mutex_lock(&g->call_mu);
            attnd__gslot_fail(g, c, r, e.code, e.msg);
            pthread_mutex_unlock(&g->call_mu);
        }
    }
    weights_part(g, g->me, d_vo, wf, (float *)mine->data);
    st = attnd__gweights_store(g, layer, d_vo, (const float *)mine->data, err);
    attnd__gcall_wait(g, c, attnd_clock_ms() + g->cfg.timeout_ms);
    for (int32_t r = 0; st == ATTND_OK && r < g->N; r++)
        if (c->slot[r].expect && c->slot[r].st != ATTND_OK)
            st = attnd_error_set(err, c->slot[r].st, "rank %d: %s", r, c->slot[r].msg);
    if (st == ATTND_OK && bytes_p)
        *bytes_p = part;
out:
    if (c)
        attnd__gcall_release(g, c);
    attnd__gbuf_put(g, mine);
    attnd__gbuf_put(g, full);
    return st;
}
