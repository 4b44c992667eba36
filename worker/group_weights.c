/* W_UK and W_UV in a worker group (the narrow MLA wire): the rank that
 * LoadWeights reached makes every rank's part of the layer's matrices and
 * sends it; each rank hands its part to its own engine
 * (attnd_engine_load_weights), which absorbs and up-projects with it inside
 * its attends (worker/weights.c). Nothing of the weights stays here.
 *
 * Math. Sequence mode: every rank holds every head's whole latent, so its
 * parts are the matrices whole (in the dtype given; bf16 stays bf16).
 * Latent mode works in the rotated basis c' = R c (R the normalized
 * Hadamard: symmetric, orthonormal), rank r holding dims S_r = [r d_c/N,
 * (r+1) d_c/N) of c' and of the query scaled by mu:
 *   absorb      rank r's latent query is mu (R q_c)[S_r] = mu (q_nope W_UK
 *               R)[S_r] = q_nope (mu W_UK R)[:, S_r]: its W_UK part is the
 *               columns S_r of mu W_UK R (each row of W_UK rotated), and its
 *               RoPE part of the query is sent unrotated;
 *   up-project  o W = o'^T (R W) = sum_r o'_r (R W)[S_r]: rank r keeps rows
 *               S_r of R W_UV (each column rotated) and the leader adds the
 *               ranks' projections in rank order;
 * in float32 (a rotation rounded to bf16 would add error of its own).
 *
 * WEIGHTS message: header layer, b = d_nope (0: no W_UK), a = d_vo (0: no
 * W_UV), q_dtype / kv_dtype the parts' dtypes; data the W_UK part
 * [Hq][d_nope][d_c_r], then at a 64-byte offset the W_UV part
 * [Hq][d_c_r][d_vo]. */
#include <stdlib.h>
#include <string.h>

#include "attnd_clock.h"
#include "attnd_dtype.h"
#include "group_int.h"

static size_t align64(size_t x)
{
    return (x + 63) & ~(size_t)63;
}

void attnd_group_weights_dims(attnd_group *g, uint32_t layer, int32_t *d_nope_p,
                              int32_t *d_vo_p)
{
    attnd_engine_weights_dims(g->engine, layer, d_nope_p, d_vo_p);
}

/* Bytes of a rank's W_UK part and W_UV part. */
static size_t uk_part_bytes(const attnd_group *g, const attnd_engine_weights *w)
{
    return w->d_nope > 0 ? (size_t)g->hq * (size_t)w->d_nope * (size_t)g->d_v_r *
                               attnd_dtype_size(w->uk_dtype)
                         : 0;
}

static size_t uv_part_bytes(const attnd_group *g, const attnd_engine_weights *w)
{
    return w->d_vo > 0 ? (size_t)g->hq * (size_t)g->d_v_r * (size_t)w->d_vo *
                             attnd_dtype_size(w->uv_dtype)
                       : 0;
}

attnd_status attnd__gweights_store(attnd_group *g, const attnd__gbuf *req, attnd_error *err)
{
    const attnd__ghdr *h = &req->hdr;
    attnd_engine_weights w = {
        .d_nope = (int32_t)h->b, .uk_dtype = (attnd_dtype)h->q_dtype,
        .d_vo = (int32_t)h->a, .uv_dtype = (attnd_dtype)h->kv_dtype,
    };
    if (h->b > ATTND_ENGINE_MAX_PROJ_DIM || h->a > ATTND_ENGINE_MAX_PROJ_DIM ||
        (w.d_nope && attnd_dtype_size(w.uk_dtype) == 0) ||
        (w.d_vo && attnd_dtype_size(w.uv_dtype) == 0))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "group: malformed WEIGHTS");
    size_t uk = uk_part_bytes(g, &w), off = align64(uk), uv = uv_part_bytes(g, &w);
    if (req->len != (uv ? off + uv : uk))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "group: WEIGHTS of %zu bytes does not match its header",
                               req->len);
    w.w_uk = uk ? req->data : NULL;
    w.w_uv = uv ? req->data + off : NULL;
    return attnd_engine_load_weights(g->engine, h->layer, &w, NULL, err);
}

/* Latent mode: float32 copies of the matrices in the rotated basis,
 * W_UK R (rows rotated) into uk and R W_UV (columns rotated) into uv;
 * col: d_c floats of scratch. */
static void rotate_full(const attnd_group *g, const attnd_engine_weights *w, float *uk,
                        float *uv, float *col)
{
    const size_t H = (size_t)g->hq, dc = (size_t)g->d_v;
    if (w->d_nope > 0) {
        const size_t rows = H * (size_t)w->d_nope;
        attnd_dtype_convert(ATTND_DTYPE_F32, uk, w->uk_dtype, w->w_uk, rows * dc);
        for (size_t i = 0; i < rows; i++)
            attnd_kernel_fwht_f32(uk + i * dc, (int32_t)dc);
    }
    if (w->d_vo > 0) {
        const size_t dw = (size_t)w->d_vo;
        attnd_dtype_convert(ATTND_DTYPE_F32, uv, w->uv_dtype, w->w_uv, H * dc * dw);
        for (size_t h = 0; h < H; h++)
            for (size_t j = 0; j < dw; j++) {
                for (size_t k = 0; k < dc; k++)
                    col[k] = uv[(h * dc + k) * dw + j];
                attnd_kernel_fwht_f32(col, (int32_t)dc);
                for (size_t k = 0; k < dc; k++)
                    uv[(h * dc + k) * dw + j] = col[k];
            }
    }
}

/* Rank r's parts into dst (layout of the WEIGHTS data); p: the parts'
 * matrices (latent: the rotated float32 ones), full: the caller's. */
static void write_part(const attnd_group *g, int32_t r, const attnd_engine_weights *p,
                       unsigned char *dst)
{
    const size_t H = (size_t)g->hq, dc = (size_t)g->d_v, dcr = (size_t)g->d_v_r;
    const int latent = g->cfg.mode == ATTND_GROUP_LATENT;
    const size_t uk = uk_part_bytes(g, p), off = align64(uk), uv = uv_part_bytes(g, p);
    if (uk && !latent)
        memcpy(dst, p->w_uk, uk);
    if (uv && !latent)
        memcpy(dst + off, p->w_uv, uv);
    if (!latent)
        return;
    const size_t c0 = (size_t)r * dcr;
    if (uk) { /* columns S_r of mu W_UK R */
        const float *src = p->w_uk;
        float *d = (float *)dst;
        for (size_t i = 0; i < H * (size_t)p->d_nope; i++)
            for (size_t c = 0; c < dcr; c++)
                d[i * dcr + c] = g->cfg.mu * src[i * dc + c0 + c];
    }
    if (uv) { /* rows S_r of R W_UV */
        const size_t dw = (size_t)p->d_vo;
        const float *src = p->w_uv;
        for (size_t h = 0; h < H; h++)
            memcpy(dst + off + h * dcr * dw * sizeof(float), src + (h * dc + c0) * dw,
                   dcr * dw * sizeof(float));
    }
}

static attnd_status check_load(attnd_group *g, uint32_t layer, const attnd_engine_weights *w,
                               attnd_error *err)
{
    const char *field = w->d_nope > 0 ? "w_uk" : "w_uv";
    if (g->cfg.model.kind != ATTND_ATTN_MLA || g->cfg.mode == ATTND_GROUP_HEAD)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: W_UK and W_UV apply to MLA models in sequence or latent "
                               "mode", field);
    if (w->d_nope <= 0 && w->d_vo <= 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "w_uk, w_uv: neither given (a load carries at least one)");
    if ((w->d_nope > 0 && (w->d_nope > ATTND_ENGINE_MAX_PROJ_DIM ||
                           attnd_dtype_size(w->uk_dtype) == 0 || !w->w_uk)) ||
        (w->d_vo > 0 && (w->d_vo > ATTND_ENGINE_MAX_PROJ_DIM ||
                         attnd_dtype_size(w->uv_dtype) == 0 || !w->w_uv)))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: expected widths in [1, %d] and a bf16, f16 or f32 tensor",
                               field, ATTND_ENGINE_MAX_PROJ_DIM);
    if (layer >= (uint32_t)g->cfg.model.n_layers)
        return attnd_error_set(err, ATTND_ERR_OUT_OF_RANGE, "layer: %u not in [0, %d)", layer,
                               g->cfg.model.n_layers);
    for (int32_t r = 0; r < g->N; r++)
        if (r != g->me && !attnd__gnet_peer_up(g, r))
            return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                                   "group: rank %d (%s) is not connected", r, g->cfg.addrs[r]);
    return ATTND_OK;
}

attnd_status attnd_group_load_weights(attnd_group *g, uint32_t layer,
                                      const attnd_engine_weights *w, uint64_t *bytes_p,
                                      attnd_error *err)
{
    const size_t H = (size_t)g->hq, dc = (size_t)g->d_v;
    const int latent = g->cfg.mode == ATTND_GROUP_LATENT;
    attnd__gbuf *rot = NULL, *mine = NULL;
    attnd__gcall *c = NULL;
    float *col = NULL;
    attnd_status st;

    if ((st = check_load(g, layer, w, err)))
        return st;
    /* p: what the parts are cut from (latent: rotated float32 copies) */
    attnd_engine_weights p = *w;
    if (w->d_nope <= 0)
        p.d_nope = 0;
    if (w->d_vo <= 0)
        p.d_vo = 0;
    const size_t uk_full = (size_t)p.d_nope * H * dc, uv_full = H * dc * (size_t)p.d_vo;
    if (latent) {
        if (!(rot = attnd__gbuf_get(g, (align64(uk_full) + uv_full) * sizeof(float))) ||
            !(col = malloc(dc * sizeof *col))) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "w_uk: out of memory");
            goto out;
        }
        float *uk = (float *)rot->data, *uv = uk + align64(uk_full);
        rotate_full(g, w, uk, uv, col);
        p.uk_dtype = p.uv_dtype = ATTND_DTYPE_F32;
        p.w_uk = p.d_nope ? uk : NULL;
        p.w_uv = p.d_vo ? uv : NULL;
    }
    const size_t uk = uk_part_bytes(g, &p), uv = uv_part_bytes(g, &p);
    const size_t part = uv ? align64(uk) + uv : uk;
    if (!(c = attnd__gcall_new(g)) || (latent && !(mine = attnd__gbuf_get(g, part)))) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "w_uk: out of memory");
        goto out;
    }
    attnd__gbuf *b[ATTND_GROUP_MAX_RANKS] = {0};
    for (int32_t r = 0; r < g->N; r++) /* every buffer before the first send */
        if (r != g->me && !(b[r] = attnd__gbuf_get(g, part))) {
            for (int32_t k = 0; k < r; k++)
                attnd__gbuf_put(g, b[k]);
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "w_uk: out of memory");
            goto out;
        }
    for (int32_t r = 0; r < g->N; r++) {
        if (r == g->me)
            continue;
        write_part(g, r, &p, b[r]->data);
        b[r]->len = part;
        b[r]->hdr.type = ATTND__GMSG_WEIGHTS;
        b[r]->hdr.layer = layer;
        b[r]->hdr.b = (uint64_t)p.d_nope;
        b[r]->hdr.a = (uint64_t)p.d_vo;
        b[r]->hdr.q_dtype = p.d_nope ? (uint32_t)p.uk_dtype : 0;
        b[r]->hdr.kv_dtype = p.d_vo ? (uint32_t)p.uv_dtype : 0;
        attnd__glead_send(g, c, r, b[r], 0); /* the transport's from here on */
    }
    /* our own part: the caller's matrices as they are (sequence) or our
     * slice of the rotated ones, straight into the engine */
    attnd_engine_weights own = p;
    if (latent) {
        write_part(g, g->me, &p, mine->data);
        own.w_uk = p.d_nope ? mine->data : NULL;
        own.w_uv = p.d_vo ? mine->data + align64(uk) : NULL;
    }
    uint64_t bytes = 0;
    st = attnd_engine_load_weights(g->engine, layer, &own, &bytes, err);
    attnd__gcall_wait(g, c, attnd_clock_ms() + g->cfg.timeout_ms);
    if (st == ATTND_OK)
        st = attnd__glead_collect(g, c, err);
    if (st == ATTND_OK && bytes_p)
        *bytes_p = bytes;
out:
    if (c)
        attnd__gcall_release(g, c);
    free(col);
    attnd__gbuf_put(g, mine);
    attnd__gbuf_put(g, rot);
    return st;
}
