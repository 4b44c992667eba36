/* attnd_client_load_weights: W_UV for a worker group's up-projected Attend
 * (LoadWeights, unary, over gRPC). */
#include <string.h>

#include "client_int.h"

attnd_status attnd_client_load_weights(attnd_client *c, uint32_t layer,
                                       const attnd_tensor *w_uv, uint64_t *bytes_p,
                                       attnd_error *err)
{
    Attnd__V1__LoadWeightsRequest req = ATTND__V1__LOAD_WEIGHTS_REQUEST__INIT;
    Attnd__V1__Tensor t = ATTND__V1__TENSOR__INIT;
    Attnd__V1__LoadWeightsResponse *resp = NULL;
    size_t n = 0;
    attnd_status st;

    if (!c || !w_uv)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "load_weights: %s is NULL",
                               !c ? "client" : "w_uv");
    if (w_uv->ndim != 3)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "w_uv.ndim: expected 3 ([Hq, d_c, d_vo]), got %d", w_uv->ndim);
    n = attnd_dtype_size(w_uv->dtype);
    for (int i = 0; i < 3; i++) {
        if (w_uv->shape[i] <= 0)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "w_uv.shape[%d]: expected > 0, got %lld", i,
                                   (long long)w_uv->shape[i]);
        if (__builtin_mul_overflow(n, (size_t)w_uv->shape[i], &n))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "w_uv.shape: the element count overflows");
    }
    if (!w_uv->data)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "w_uv.data: NULL");
    t.dtype = (Attnd__V1__DType)w_uv->dtype;
    t.n_shape = 3;
    t.shape = (int64_t *)w_uv->shape; /* read only: pack does not write */
    t.data.len = n;
    t.data.data = (uint8_t *)w_uv->data;
    req.layer = layer;
    req.w_uv = &t;
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
