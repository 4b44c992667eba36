/* LoadWeights: one layer's W_UK ([Hq, d_nope, d_c]) and/or W_UV ([Hq, d_c,
 * d_v]), any dtype, for a worker serving an MLA model, lone or group, so
 * that Attend takes the heads-form query and returns per-head values (the
 * narrow wire; attnd_engine_load_weights, attnd_group_load_weights). A load
 * replaces the matrices it carries and keeps the other. With --token-file
 * only an admin tenant may load weights: they serve every tenant. */
#include <stdio.h>

#include "attnd_dtype.h"
#include "srv.h"

/* Tensor t named `field`, [Hq, d, d_c] (w_uk: free_axis 1) or [Hq, d_c, d]
 * (w_uv: free_axis 2), d in [1, ATTND_ENGINE_MAX_PROJ_DIM] into *dim_p. */
static attnd_status check_w(const char *field, const char *dname, const Attnd__V1__Tensor *t,
                            int free_axis, const attnd_srv_model *md, int32_t *dim_p,
                            attnd_error *err)
{
    const int64_t H = md->spec->n_q_heads, dc = md->spec->d_latent;
    char want[64];
    if (free_axis == 1)
        snprintf(want, sizeof want, "[%lld, %s, %lld]", (long long)H, dname, (long long)dc);
    else
        snprintf(want, sizeof want, "[%lld, %lld, %s]", (long long)H, (long long)dc, dname);
    size_t es = attnd_dtype_size((attnd_dtype)t->dtype);
    if (es == 0 || (int)t->dtype > (int)ATTND_DTYPE_F32)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.dtype: expected bf16, f16 or f32", field);
    if (t->n_shape != 3 || t->shape[0] != H || t->shape[3 - free_axis] != dc ||
        t->shape[free_axis] < 1 || t->shape[free_axis] > ATTND_ENGINE_MAX_PROJ_DIM)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.shape: expected %s with %s in [1, %d]", field, want, dname,
                               ATTND_ENGINE_MAX_PROJ_DIM);
    size_t want_bytes = (size_t)H * (size_t)dc * (size_t)t->shape[free_axis] * es;
    if (t->data.len != want_bytes)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.data: %zu bytes, expected %zu", field, t->data.len,
                               want_bytes);
    /* non-finite weights are refused before any rank or engine gets them */
    size_t n = want_bytes / es, bad = attnd_dtype_find_nonfinite((attnd_dtype)t->dtype,
                                                                 t->data.data, n);
    if (bad < n)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: element %zu is %s (non-finite values are rejected)", field,
                               bad, attnd_dtype_nonfinite_name((attnd_dtype)t->dtype,
                                                               t->data.data, bad));
    *dim_p = (int32_t)t->shape[free_axis];
    return ATTND_OK;
}

static attnd_status check_req(const Attnd__V1__LoadWeightsRequest *m, const attnd_srv_model *md,
                              attnd_engine_weights *w, attnd_error *err)
{
    attnd_status st;
    if (m->layer >= (uint32_t)md->spec->n_layers)
        return attnd_error_set(err, ATTND_ERR_OUT_OF_RANGE, "layer: %u not in [0, %d)",
                               m->layer, md->spec->n_layers);
    if (!m->w_uk && !m->w_uv)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "w_uk, w_uv: both missing (a load carries at least one)");
    *w = (attnd_engine_weights){0};
    if (m->w_uk) {
        if ((st = check_w("w_uk", "d_nope", m->w_uk, 1, md, &w->d_nope, err)))
            return st;
        w->uk_dtype = (attnd_dtype)m->w_uk->dtype;
        w->w_uk = m->w_uk->data.data;
    }
    if (m->w_uv) {
        if ((st = check_w("w_uv", "d_v", m->w_uv, 2, md, &w->d_vo, err)))
            return st;
        w->uv_dtype = (attnd_dtype)m->w_uv->dtype;
        w->w_uv = m->w_uv->data.data;
    }
    return ATTND_OK;
}

void attnd_srv_load_weights_start(attnd_srv_call *c)
{
    attnd_srv *srv = c->srv;
    Attnd__V1__LoadWeightsRequest *m;
    attnd_engine_weights w;
    uint64_t bytes = 0;
    attnd_error err;

    attnd_error_clear(&err);
    m = (Attnd__V1__LoadWeightsRequest *)attnd_srv_call_decode(
        c, &attnd__v1__load_weights_request__descriptor, &err);
    if (!m) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    if (c->tenant && !c->admin) { /* the weights serve every tenant */
        attnd_error_set(&err, ATTND_ERR_PERMISSION_DENIED,
                        "%s: LoadWeights changes the model every tenant is served: it needs "
                        "an admin tenant's token (admin in --token-file)",
                        m->w_uk ? "w_uk" : "w_uv");
        attnd_srv_call_fail(c, &err);
        return;
    }
    if (srv->model.spec->kind != ATTND_ATTN_MLA) {
        attnd_error_set(&err, ATTND_ERR_FAILED_PRECONDITION,
                        "%s: LoadWeights needs a worker serving an MLA model (this one serves "
                        "%s)", m->w_uk ? "w_uk" : "w_uv", srv->model.spec->name);
        attnd_srv_call_fail(c, &err);
        return;
    }
    if (check_req(m, &srv->model, &w, &err) ||
        (srv->group ? attnd_group_load_weights(srv->group, m->layer, &w, &bytes, &err)
                    : attnd_engine_load_weights(srv->engine, m->layer, &w, &bytes, &err))) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    Attnd__V1__LoadWeightsResponse resp = ATTND__V1__LOAD_WEIGHTS_RESPONSE__INIT;
    resp.bytes = bytes;
    attnd_srv_call_finish(c, attnd_srv_pack(&resp.base), ATTND_OK, NULL);
}
