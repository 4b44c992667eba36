/* LoadWeights (unary, over gRPC): a layer's W_UK and/or W_UV for the narrow
 * MLA wire (attnd_client_load_mla_weights), and the W_UV-only form kept
 * from before it (attnd_client_load_weights). */
#include <string.h>

#include "client_int.h"

/* t (named field) as a 3-dim tensor message around the caller's bytes. */
static attnd_status tensor3(const char *field, const attnd_tensor *t, Attnd__V1__Tensor *pb,
                            attnd_error *err)
{
    size_t n = attnd_dtype_size(t->dtype);
    if (t->ndim != 3)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.ndim: expected 3 (%s), got %d", field,
                               strcmp(field, "w_uk") ? "[Hq, d_c, d_v]" : "[Hq, d_nope, d_c]",
                               t->ndim);
    for (int i = 0; i < 3; i++) {
        if (t->shape[i] <= 0)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "%s.shape[%d]: expected > 0, got %lld", field, i,
                                   (long long)t->shape[i]);
        if (__builtin_mul_overflow(n, (size_t)t->shape[i], &n))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "%s.shape: the element count overflows", field);
    }
    if (!t->data)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "%s.data: NULL", field);
    attnd__v1__tensor__init(pb);
    pb->dtype = (Attnd__V1__DType)t->dtype;
    pb->n_shape = 3;
    pb->shape = (int64_t *)t->shape; /* read only: pack does not write */
    pb->data.len = n;
    pb->data.data = (uint8_t *)t->data;
    return ATTND_OK;
}

attnd_status attnd_client_load_mla_weights(attnd_client *c, uint32_t layer,
                                           const attnd_tensor *w_uk, const attnd_tensor *w_uv,
                                           uint64_t *bytes_p, attnd_error *err)
{
    Attnd__V1__LoadWeightsRequest req = ATTND__V1__LOAD_WEIGHTS_REQUEST__INIT;
    Attnd__V1__Tensor tk, tv;
    Attnd__V1__LoadWeightsResponse *resp = NULL;
    attnd_status st;

    if (!c || (!w_uk && !w_uv))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "load_weights: %s is NULL",
                               !c ? "client" : "w_uk and w_uv");
    if ((w_uk && (st = tensor3("w_uk", w_uk, &tk, err))) ||
        (w_uv && (st = tensor3("w_uv", w_uv, &tv, err))))
        return st;
    req.layer = layer;
    req.w_uk = w_uk ? &tk : NULL;
    req.w_uv = w_uv ? &tv : NULL;
    st = attnd__client_unary(c, ATTND__CLIENT_M_LOAD_WEIGHTS, &req.base,
                             &attnd__v1__load_weights_response__descriptor,
                             (ProtobufCMessage **)&resp, err);
    if (st == ATTND_OK) {
        if (bytes_p)
            *bytes_p = resp->bytes;
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return st;
}

attnd_status attnd_client_load_weights(attnd_client *c, uint32_t layer,
                                       const attnd_tensor *w_uv, uint64_t *bytes_p,
                                       attnd_error *err)
{
    if (!w_uv)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "load_weights: %s is NULL",
                               !c ? "client" : "w_uv");
    return attnd_client_load_mla_weights(c, layer, NULL, w_uv, bytes_p, err);
}
