/* The engine's MLA projections: per layer W_UK and W_UV for the narrow
 * wire (attnd_engine_load_weights in attnd_worker.h; the products are
 * attnd_proj.h's on the CPU, cuBLAS's on the GPU backend).
 *
 * Each matrix is an attnd__wmat shared by reference: the layer's slot
 * holds one reference, and every attend that uses it takes another (under
 * w_mu, for the few instructions it takes to copy the pointer), so a load
 * swaps the slot at once and the matrix it replaced is freed by whoever
 * lets go of it last -- a reload never waits for attends, and an attend
 * never sees a half-written matrix or a W_UK of one load with a W_UV of
 * another that it did not start with.
 *
 * Storage: a CPU engine keeps bf16 as given (the products widen it
 * exactly; half the bytes a small batch streams per call) and anything
 * else as float32 (f16 widens exactly). A GPU engine keeps W_UK in bf16
 * (multiplied with the bf16 query the kernel reads anyway) and W_UV in
 * float32 (multiplied with the kernel's float32 output), in device memory
 * only. */
#include <stdlib.h>
#include <string.h>

#include "attnd_dtype.h"
#include "backend.h"
#include "worker_int.h"

attnd_status attnd__weights_init(attnd_engine *e, attnd_error *err)
{
    e->w_uk = calloc((size_t)e->model.n_layers, sizeof *e->w_uk);
    e->w_uv = calloc((size_t)e->model.n_layers, sizeof *e->w_uv);
    if (!e->w_uk || !e->w_uv) {
        free(e->w_uk);
        free(e->w_uv);
        e->w_uk = e->w_uv = NULL;
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "engine: out of memory");
    }
    pthread_mutex_init(&e->w_mu, NULL);
    return ATTND_OK;
}

static void wmat_free(attnd_engine *e, attnd__wmat *m)
{
    if (m->dev)
        attnd__gpu_free(e->gpu, m->dev);
    free(m->host);
    free(m);
}

void attnd__weights_put(attnd_engine *e, attnd__wmat *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1)
        wmat_free(e, m);
}

void attnd__weights_cleanup(attnd_engine *e)
{
    if (!e->w_uk)
        return;
    for (int32_t l = 0; l < e->model.n_layers; l++) {
        attnd__weights_put(e, e->w_uk[l]);
        attnd__weights_put(e, e->w_uv[l]);
    }
    free(e->w_uk);
    free(e->w_uv);
    e->w_uk = e->w_uv = NULL;
    pthread_mutex_destroy(&e->w_mu);
}

/* A new matrix of heads x rows x cols from src (src_t), stored as the
 * engine keeps it: on a GPU in gpu_t, else bf16 as given, float32
 * otherwise. */
static attnd_status wmat_make(attnd_engine *e, const char *field, int32_t rows, int32_t cols,
                              attnd_dtype src_t, const void *src, attnd_dtype gpu_t,
                              attnd__wmat **m_p, attnd_error *err)
{
    const size_t n = (size_t)e->model.n_q_heads * (size_t)rows * (size_t)cols;
    attnd__wmat *m = calloc(1, sizeof *m);
    attnd_status st;
    if (!m)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", field);
    atomic_init(&m->refs, 1);
    m->rows = rows;
    m->cols = cols;
    if (e->gpu) {
        m->dtype = gpu_t;
        m->bytes = n * attnd_dtype_size(gpu_t);
        st = attnd__gpu_upload(e->gpu, gpu_t, src_t, src, n, &m->dev, err);
        if (st)
            goto err_store;
    } else {
        m->dtype = src_t == ATTND_DTYPE_BF16 ? ATTND_DTYPE_BF16 : ATTND_DTYPE_F32;
        m->bytes = n * attnd_dtype_size(m->dtype);
        if (!(m->host = malloc(m->bytes))) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                 "%s: no memory for %zu bytes", field, m->bytes);
            goto err_store;
        }
        attnd_dtype_convert(m->dtype, m->host, src_t, src, n);
    }
    *m_p = m;
    return ATTND_OK;

err_store:
    free(m);
    return st;
}

static attnd_status check_dim(const char *field, const char *dim, int32_t d, attnd_dtype t,
                              const void *p, attnd_error *err)
{
    if (d < 1 || d > ATTND_ENGINE_MAX_PROJ_DIM || attnd_dtype_size(t) == 0 || !p)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: expected %s in [1, %d], a bf16, f16 or f32 tensor; got %s "
                               "%d, dtype %d%s", field, dim, ATTND_ENGINE_MAX_PROJ_DIM, dim, d,
                               (int)t, p ? "" : ", no data");
    return ATTND_OK;
}

/* Loads that keep their matrices on disk write and swap in one order. */
static pthread_mutex_t persist_mu = PTHREAD_MUTEX_INITIALIZER;

attnd_status attnd_engine_load_weights(attnd_engine *e, uint32_t layer,
                                       const attnd_engine_weights *w, uint64_t *bytes_p,
                                       attnd_error *err)
{
    return attnd__weights_load(e, layer, w, bytes_p, 1, err);
}

attnd_status attnd__weights_load(attnd_engine *e, uint32_t layer, const attnd_engine_weights *w,
                                 uint64_t *bytes_p, int persist, attnd_error *err)
{
    const int32_t dc = e->model.d_latent;
    attnd__wmat *uk = NULL, *uv = NULL;
    attnd_status st;

    if (e->model.kind != ATTND_ATTN_MLA)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: W_UK and W_UV apply to MLA models; this engine serves %s "
                               "(GQA)", w->d_nope > 0 ? "w_uk" : "w_uv", e->model.name);
    if ((st = attnd__engine_check_layer(e, layer, err)))
        return st;
    if (w->d_nope <= 0 && w->d_vo <= 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "w_uk, w_uv: neither given (a load carries at least one)");
    if ((w->d_nope > 0 && (st = check_dim("w_uk", "d_nope", w->d_nope, w->uk_dtype, w->w_uk,
                                          err))) ||
        (w->d_vo > 0 && (st = check_dim("w_uv", "d_v", w->d_vo, w->uv_dtype, w->w_uv, err))))
        return st;
    if ((w->d_nope > 0 && (st = wmat_make(e, "w_uk", w->d_nope, dc, w->uk_dtype, w->w_uk,
                                          ATTND_DTYPE_BF16, &uk, err))) ||
        (w->d_vo > 0 && (st = wmat_make(e, "w_uv", dc, w->d_vo, w->uv_dtype, w->w_uv,
                                        ATTND_DTYPE_F32, &uv, err)))) {
        attnd__weights_put(e, uk);
        return st;
    }
    attnd__wmat *old_uk = NULL, *old_uv = NULL;
    uint64_t bytes = 0;
    /* --durable: on disk before it is served (a failure changes nothing) */
    if (persist)
        pthread_mutex_lock(&persist_mu);
    if (persist && (st = attnd__weights_persist(e, layer, w, err))) {
        pthread_mutex_unlock(&persist_mu);
        attnd__weights_put(e, uk);
        attnd__weights_put(e, uv);
        return st;
    }
    pthread_mutex_lock(&e->w_mu);
    if (uk) {
        old_uk = e->w_uk[layer];
        e->w_uk[layer] = uk;
    }
    if (uv) {
        old_uv = e->w_uv[layer];
        e->w_uv[layer] = uv;
    }
    bytes = (e->w_uk[layer] ? e->w_uk[layer]->bytes : 0) +
            (e->w_uv[layer] ? e->w_uv[layer]->bytes : 0);
    pthread_mutex_unlock(&e->w_mu);
    if (persist)
        pthread_mutex_unlock(&persist_mu);
    attnd__weights_put(e, old_uk);
    attnd__weights_put(e, old_uv);
    if (bytes_p)
        *bytes_p = bytes;
    return ATTND_OK;
}

void attnd_engine_weights_dims(attnd_engine *e, uint32_t layer, int32_t *d_nope_p,
                               int32_t *d_vo_p)
{
    int32_t dn = 0, dv = 0;
    if (layer < (uint32_t)e->model.n_layers && e->model.kind == ATTND_ATTN_MLA) {
        pthread_mutex_lock(&e->w_mu);
        dn = e->w_uk[layer] ? e->w_uk[layer]->rows : 0;
        dv = e->w_uv[layer] ? e->w_uv[layer]->cols : 0;
        pthread_mutex_unlock(&e->w_mu);
    }
    if (d_nope_p)
        *d_nope_p = dn;
    if (d_vo_p)
        *d_vo_p = dv;
}

attnd_status attnd__weights_get(attnd_engine *e, const attnd_attend_req *r,
                                attnd__wmat **uk_p, attnd__wmat **uv_p, attnd_error *err)
{
    const int heads = r->q_form == ATTND_Q_HEADS;
    attnd__wmat *uk = NULL, *uv = NULL;
    attnd_status st = ATTND_OK;

    *uk_p = *uv_p = NULL;
    if (!heads && r->d_vo <= 0)
        return ATTND_OK;
    if (e->model.kind != ATTND_ATTN_MLA)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: the narrow wire's projections apply to MLA models; this "
                               "engine serves %s (GQA)", heads ? "q_form" : "up_project",
                               e->model.name);
    pthread_mutex_lock(&e->w_mu);
    if (heads) {
        uk = e->w_uk[r->layer];
        if (!uk) {
            st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                                 "q_form: HEADS needs layer %u's W_UK, and none is loaded "
                                 "(LoadWeights w_uk; a restarted worker must be loaded again)",
                                 r->layer);
            goto out;
        }
        if (uk->rows != r->d_nope) {
            st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                                 "q_form: HEADS with d_nope %d, but layer %u's W_UK has d_nope "
                                 "%d", r->d_nope, r->layer, uk->rows);
            uk = NULL;
            goto out;
        }
        atomic_fetch_add(&uk->refs, 1);
    }
    if (r->d_vo > 0) {
        uv = e->w_uv[r->layer];
        if (!uv || uv->cols != r->d_vo) {
            st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                                 "%s: layer %u holds no W_UV of width %d (%s; LoadWeights "
                                 "w_uv; a restarted worker must be loaded again)",
                                 heads ? "q_form" : "up_project", r->layer, r->d_vo,
                                 uv ? "another width" : "none loaded");
            uv = NULL;
            goto out;
        }
        atomic_fetch_add(&uv->refs, 1);
    }
out:
    pthread_mutex_unlock(&e->w_mu);
    if (st) {
        attnd__weights_put(e, uk);
        return st;
    }
    *uk_p = uk;
    *uv_p = uv;
    return ATTND_OK;
}
