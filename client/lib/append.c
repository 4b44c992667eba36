/* AppendKV: prefill chunks over one client stream, all or nothing.
 *
 * Chunks go out in order, one message each, the last one with the
 * half-close; the server stages each as it arrives and commits them all
 * at the half-close, or, at the first failure (a refused chunk, a broken
 * stream, the deadline), ends the call with that status having applied
 * none of them. *applied_p is the reply's count on success, 0 otherwise;
 * a failed call can be retried whole. (The one ambiguous case is any
 * RPC's: a call that fails after the half-close went out, e.g. on the
 * deadline, may have committed; a retry then fails FAILED_PRECONDITION at
 * its first chunk, naming the layer's length.)
 *
 * A chunk is flat ([n_tokens][kv_token_elems]); the wire wants the entry's
 * dims ([T, d_c + d_r] for MLA, [T, 2, Hkv, D] for GQA), so the shape is
 * built from the served model (learned once per client, see
 * attnd__client_model). An entry size that does not match the model is
 * sent as [T, kv_token_elems] for the server to reject by name.
 */
#include <string.h>

#include "client_int.h"

/* Build chunk ch's request around the caller's data; shape[] is its shape
 * storage. */
static void chunk_pb(Attnd__V1__AppendKVRequest *req, Attnd__V1__Tensor *kv, int64_t shape[4],
                     const attnd_kv_chunk *ch, const attnd_model_info *m)
{
    size_t n = 2;

    attnd__v1__append_kvrequest__init(req);
    attnd__v1__tensor__init(kv);
    shape[0] = ch->n_tokens;
    shape[1] = ch->kv_token_elems;
    if (m->kind == ATTND_ATTN_GQA && ch->kv_token_elems == m->kv_token_elems) {
        shape[1] = 2;
        shape[2] = m->n_kv_heads;
        shape[3] = m->head_dim;
        n = 4;
    }
    req->session_id.len = ATTND_SESSION_ID_BYTES;
    req->session_id.data = (uint8_t *)ch->session.bytes;
    req->layer = ch->layer;
    req->start = ch->start;
    kv->dtype = (Attnd__V1__DType)ch->dtype;
    kv->n_shape = n;
    kv->shape = shape;
    kv->data.len = (size_t)ch->n_tokens * ch->kv_token_elems * attnd_dtype_size(ch->dtype);
    kv->data.data = (uint8_t *)ch->data;
    req->kv = kv;
}

attnd_status attnd_client_append_kv(attnd_client *c, const attnd_kv_chunk *chunks, size_t n,
                                    size_t *applied_p, attnd_error *err)
{
    attnd__client_scall s;
    attnd_model_info m;
    grpc_byte_buffer *bb = NULL;
    Attnd__V1__AppendKVResponse *resp = NULL;
    size_t applied = 0;
    attnd_status st;

    memset(&s, 0, sizeof s);
    if (applied_p)
        *applied_p = 0;
    if (!c || (n && !chunks))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "append_kv: %s is NULL",
                               !c ? "client" : "chunks");
    for (size_t i = 0; i < n; i++)
        if (!chunks[i].data && chunks[i].n_tokens && chunks[i].kv_token_elems)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "chunks[%zu].data: NULL for %u tokens", i,
                                   chunks[i].n_tokens);
    st = attnd__client_model(c, &m, err);
    if (st)
        return st;
    st = attnd__client_scall_open(&s, c, ATTND__CLIENT_M_APPEND_KV, err);
    if (st)
        goto err_call;
    for (size_t i = 0; i < n; i++) {
        Attnd__V1__AppendKVRequest req;
        Attnd__V1__Tensor kv;
        int64_t shape[4];
        chunk_pb(&req, &kv, shape, &chunks[i], &m);
        bb = attnd__client_pack(&req.base);
        st = attnd__client_scall_send(&s, bb, i + 1 == n, err);
        grpc_byte_buffer_destroy(bb);
        bb = NULL;
        if (st)
            goto err_call;
    }
    if (n == 0 && (st = attnd__client_scall_send(&s, NULL, 1, err)))
        goto err_call;
    st = attnd__client_scall_recv(&s, &bb, err);
    if (st == ATTND_OK && !bb)
        st = attnd_error_set(err, ATTND_ERR_UNKNOWN, "AppendKV: the server sent no reply");
    if (st)
        goto err_call;
    resp = (Attnd__V1__AppendKVResponse *)attnd__client_unpack(
        &attnd__v1__append_kvresponse__descriptor, bb, err);
    grpc_byte_buffer_destroy(bb);
    if (!resp) {
        st = ATTND_ERR_INTERNAL;
        goto err_call;
    }
    applied = (size_t)resp->chunks;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    st = attnd__client_scall_status(&s, err);
    if (st)
        goto err_call;
    if (applied != n) { /* committed, but not what we sent: say what it counted */
        if (applied_p)
            *applied_p = applied;
        st = attnd_error_set(err, ATTND_ERR_INTERNAL,
                             "AppendKV: sent %zu chunks, the server counted %zu", n, applied);
        goto err_call;
    }
    attnd__client_scall_cleanup(&s);
    if (applied_p)
        *applied_p = applied;
    return ATTND_OK;

err_call: /* the server applied nothing of a stream that failed */
    attnd__client_scall_cleanup(&s);
    return st;
}
