/* LoadWeights: one layer's W_UV ([Hq, d_c, d_v], any dtype) for a worker
 * group serving an MLA model, so that Attend with up_project returns
 * up-projected outputs (see attnd_group_load_weights). A lone worker (no
 * --group) answers FAILED_PRECONDITION: the up-projection is the group's
 * all-reduce, and a group of one rank (--group HOST:PORT) serves it.
 * With --token-file only an admin tenant may load weights: they serve
 * every tenant. */
#include "srv.h"

static attnd_status check_w(const Attnd__V1__LoadWeightsRequest *m, const attnd_srv_model *md,
                            int32_t *d_vo_p, attnd_error *err)
{
    const Attnd__V1__Tensor *t = m->w_uv;
    if (m->layer >= (uint32_t)md->spec->n_layers)
        return attnd_error_set(err, ATTND_ERR_OUT_OF_RANGE, "layer: %u not in [0, %d)",
                               m->layer, md->spec->n_layers);
    if (!t)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "w_uv: missing");
    size_t es = attnd_dtype_size((attnd_dtype)t->dtype);
    if (es == 0 || (int)t->dtype > (int)ATTND_DTYPE_F32)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "w_uv.dtype: expected bf16, f16 or f32");
    if (t->n_shape != 3 || t->shape[0] != md->spec->n_q_heads ||
        t->shape[1] != md->spec->d_latent || t->shape[2] < 1 || t->shape[2] > 4096)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "w_uv.shape: expected [%d, %d, d_v] with d_v in [1, 4096]",
                               md->spec->n_q_heads, md->spec->d_latent);
    size_t want = (size_t)t->shape[0] * (size_t)t->shape[1] * (size_t)t->shape[2] * es;
    if (t->data.len != want)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "w_uv.data: %zu bytes, expected %zu", t->data.len, want);
    *d_vo_p = (int32_t)t->shape[2];
    return ATTND_OK;
}

void attnd_srv_load_weights_start(attnd_srv_call *c)
{
    attnd_srv *srv = c->srv;
    Attnd__V1__LoadWeightsRequest *m;
    uint64_t bytes = 0;
    int32_t d_vo = 0;
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
                        "w_uv: LoadWeights changes the model every tenant is served: it needs "
                        "an admin tenant's token (admin in --token-file)");
        attnd_srv_call_fail(c, &err);
        return;
    }
    if (!srv->group || srv->model.spec->kind != ATTND_ATTN_MLA) {
        attnd_error_set(&err, ATTND_ERR_FAILED_PRECONDITION,
                        "w_uv: LoadWeights needs a worker group (--group) serving an MLA model");
        attnd_srv_call_fail(c, &err);
        return;
    }
    if (check_w(m, &srv->model, &d_vo, &err) ||
        attnd_group_load_weights(srv->group, m->layer, d_vo, (attnd_dtype)m->w_uv->dtype,
                                 m->w_uv->data.data, &bytes, &err)) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    Attnd__V1__LoadWeightsResponse resp = ATTND__V1__LOAD_WEIGHTS_RESPONSE__INIT;
    resp.bytes = bytes;
    attnd_srv_call_finish(c, attnd_srv_pack(&resp.base), ATTND_OK, NULL);
}
