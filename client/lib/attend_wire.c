/* Attend on the wire, the client's side: the args checked and turned into
 * a message, and the reply checked and delivered. The bytes themselves are
 * attnd_wire's (proto/attnd_wire.h), the one Attend codec.
 *
 * Encoding: the message (a protobuf-c struct) is built around the caller's
 * buffers (the tensors' `bytes` fields and the shape arrays point at them)
 * and written once, straight into the request's grpc slice (or sent as a
 * gather list over UCX); no element is touched one by one. What the wire
 * can carry is sent as given, so the server's validation answers for it (a
 * bad dtype, shape or batch); only what the wire cannot express is refused
 * here: NULL pointers, more than 6 dims, a byte count that overflows, and
 * result buffers too small for the reply (checked before sending when the
 * query's shape matches the served model, so a refused call has appended
 * nothing).
 *
 * Decoding: attnd_wire parses the reply where it lies (the byte buffer's
 * slices, or a UCX buffer) and the out/lse bytes are copied once, straight
 * into the caller's buffers. Whatever protobuf-c would refuse, or a reply
 * of another shape than asked, is INTERNAL (the server sent garbage).
 */
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>

#include "attnd_wire_grpc.h"
#include "client_int.h"

#define MAX_DIMS 6

/* Bytes of a tensor's data: 0 when the dtype or a dim is not valid (the
 * server rejects those before it looks at the data). -1 on overflow. */
static int tensor_bytes(const char *field, const attnd_tensor *t, size_t *bytes_p,
                        attnd_error *err)
{
    size_t n = attnd_dtype_size(t->dtype);

    if (t->ndim < 0 || t->ndim > MAX_DIMS)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.ndim: expected 0 to %d, got %d", field, MAX_DIMS, t->ndim);
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0) {
            n = 0;
            break;
        }
        if (__builtin_mul_overflow(n, (size_t)t->shape[i], &n))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "%s.shape: the element count overflows", field);
    }
    if (n && !t->data)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.data: NULL for %zu bytes", field, n);
    *bytes_p = n;
    return ATTND_OK;
}

static void tensor_pb(Attnd__V1__Tensor *pb, const attnd_tensor *t, size_t bytes)
{
    attnd__v1__tensor__init(pb);
    pb->dtype = (Attnd__V1__DType)t->dtype;
    pb->n_shape = (size_t)t->ndim;
    pb->shape = (int64_t *)t->shape; /* read only: pack does not write */
    pb->data.len = bytes;
    pb->data.data = (uint8_t *)t->data;
}

/* When q's shape matches the model, check out/lse capacity before sending. */
static attnd_status precheck_results(attnd_client *c, const attnd_attend_args *a,
                                     attnd_dtype out_dtype, attnd_error *err)
{
    attnd_model_info m;
    attnd_status st = attnd__client_model(c, &m, err);
    const attnd_tensor *q = &a->q;

    if (st)
        return st;
    if ((q->ndim != 3 && q->ndim != 4) || q->shape[0] != (int64_t)a->n_seqs ||
        q->shape[q->ndim - 2] != (int64_t)m.n_q_heads || attnd_dtype_size(out_dtype) == 0)
        return ATTND_OK; /* the server will say what is wrong */
    int64_t s = q->ndim == 4 ? q->shape[1] : 1;
    if (s < 1 || s > 1024)
        return ATTND_OK;
    size_t rows = (size_t)a->n_seqs * (size_t)s * m.n_q_heads;
    size_t need = rows * m.d_v * attnd_dtype_size(out_dtype);
    if (a->out_capacity < need)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "out_capacity: expected at least %zu bytes ([%u, %lld, %u, %u] "
                               "of %s), got %zu",
                               need, a->n_seqs, (long long)s, m.n_q_heads, m.d_v,
                               attnd_dtype_name(out_dtype), a->out_capacity);
    if (a->lse && a->lse_capacity < rows)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "lse_capacity: expected at least %zu floats ([%u, %lld, %u]), "
                               "got %zu",
                               rows, a->n_seqs, (long long)s, m.n_q_heads, a->lse_capacity);
    return ATTND_OK;
}

attnd_status attnd__client_attend_prepare(attnd_client *c, const attnd_attend_args *a,
                                          attnd__client_attend_msg *msg,
                                          attnd__client_attend_dst *dst, attnd_error *err)
{
    Attnd__V1__AttendRequest *rq = &msg->req;
    ProtobufCBinaryData *ids = msg->ids_stack;
    size_t q_bytes = 0, kv_bytes = 0;
    attnd_status st;

    if (!c || !a)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "attend: %s is NULL",
                               !c ? "client" : "args");
    if (a->n_seqs && !a->sessions)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "sessions: NULL for n_seqs %u", a->n_seqs);
    if (!a->out)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "out: NULL; expected a buffer for the output");
    if ((st = tensor_bytes("q", &a->q, &q_bytes, err)))
        return st;
    if (a->new_kv.data && (st = tensor_bytes("new_kv", &a->new_kv, &kv_bytes, err)))
        return st;
    attnd_dtype out_dtype = a->out_dtype != ATTND_DTYPE_INVALID ? a->out_dtype : a->q.dtype;
    /* projected outputs (up_project, the heads form) are d_v wide, which
     * only the worker's weights say: their size is checked when the reply
     * comes */
    if (!a->up_project && a->q_form == ATTND_Q_ABSORBED &&
        (st = precheck_results(c, a, out_dtype, err)))
        return st;

    if (a->n_seqs > ATTND__CLIENT_STACK_IDS) {
        ids = malloc(a->n_seqs * sizeof *ids);
        if (!ids)
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "sessions: no memory for %u ids", a->n_seqs);
    }
    for (uint32_t i = 0; i < a->n_seqs; i++) {
        ids[i].len = ATTND_SESSION_ID_BYTES;
        ids[i].data = (uint8_t *)a->sessions[i].bytes;
    }
    attnd__v1__attend_request__init(rq);
    msg->ids = ids;
    rq->layer = a->layer;
    rq->n_session_ids = a->n_seqs;
    rq->session_ids = ids;
    tensor_pb(&msg->q_pb, &a->q, q_bytes);
    rq->q = &msg->q_pb;
    if (a->new_kv.data) {
        tensor_pb(&msg->kv_pb, &a->new_kv, kv_bytes);
        rq->new_kv = &msg->kv_pb;
    }
    if (a->positions) {
        rq->n_positions = a->n_seqs;
        rq->positions = (uint64_t *)a->positions;
    }
    rq->return_lse = a->lse != NULL;
    rq->up_project = a->up_project != 0;
    rq->q_form = (Attnd__V1__QForm)a->q_form; /* as given: the server names a bad one */
    rq->out_dtype = (Attnd__V1__DType)a->out_dtype;
    rq->request_id = atomic_fetch_add(&c->next_request_id, 1);

    memset(dst, 0, sizeof *dst);
    dst->request_id = rq->request_id;
    dst->out_dtype = out_dtype;
    dst->n_seqs = a->n_seqs;
    dst->q_tokens = a->q.ndim == 4 ? a->q.shape[1] : 1;
    dst->n_q_heads = a->q.ndim >= 2 ? a->q.shape[a->q.ndim - 2] : 0;
    dst->out = a->out;
    dst->out_capacity = a->out_capacity;
    dst->lse = a->lse;
    dst->lse_capacity = a->lse_capacity;
    return ATTND_OK;
}

void attnd__client_attend_msg_cleanup(attnd__client_attend_msg *msg)
{
    if (msg->ids && msg->ids != msg->ids_stack)
        free(msg->ids);
    msg->ids = NULL;
}

attnd_status attnd__client_attend_encode(attnd_client *c, const attnd_attend_args *a,
                                         attnd_sparse_args *sp, grpc_byte_buffer **bb_p,
                                         attnd__client_attend_dst *dst, attnd_error *err)
{
    attnd__client_attend_msg msg;
    attnd_status st = attnd__client_attend_prepare(c, a, &msg, dst, err);
    if (st)
        return st;
    if ((st = attnd__client_attend_sparse_apply(&msg, dst, sp, err))) {
        attnd__client_attend_msg_cleanup(&msg);
        return st;
    }
    size_t n = attnd_wire_request_size(&msg.req);
    grpc_slice sl = grpc_slice_malloc(n);
    attnd_wire_request_write(&msg.req, GRPC_SLICE_START_PTR(sl));
    *bb_p = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    attnd__client_attend_msg_cleanup(&msg);
    return ATTND_OK;
}

/* ---- decoding ------------------------------------------------------------------ */

static int shape_is(const attnd_wire_tensor_view *t, size_t ndim, const int64_t *want)
{
    if (t->n_shape != ndim)
        return 0;
    for (size_t i = 0; i < ndim; i++)
        if (want[i] >= 0 && t->shape[i] != want[i])
            return 0;
    return 1;
}

static uint64_t shape_elems(const attnd_wire_tensor_view *t)
{
    uint64_t n = 1;
    for (size_t i = 0; i < t->n_shape && i < ATTND_WIRE_MAX_DIMS; i++)
        n *= (uint64_t)t->shape[i];
    return n;
}

attnd_status attnd__client_attend_decode_in(const attnd_wire_in *in,
                                            const attnd__client_attend_dst *dst,
                                            attnd_error *err)
{
    attnd_wire_reply_view v;
    attnd_status st = attnd_wire_reply_decode(in, &v, err);
    const attnd_wire_tensor_view *out = &v.out, *lse = &v.lse;
    int64_t want[4] = {dst->n_seqs, dst->q_tokens, dst->n_q_heads, -1};

    if (st)
        return st;
    if (v.request_id != dst->request_id)
        return attnd_error_set(err, ATTND_ERR_INTERNAL,
                               "AttendResponse.request_id: expected %llu, got %llu",
                               (unsigned long long)dst->request_id,
                               (unsigned long long)v.request_id);
    if (!out->present)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "AttendResponse.out: missing");
    if (out->data_len > dst->out_capacity)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "out_capacity: the reply holds %zu bytes, got %zu",
                               out->data_len, dst->out_capacity);
    if (out->dtype != (int32_t)dst->out_dtype || !shape_is(out, 4, want) ||
        shape_elems(out) * attnd_dtype_size(dst->out_dtype) != out->data_len)
        return attnd_error_set(err, ATTND_ERR_INTERNAL,
                               "AttendResponse.out: expected %s [%lld, %lld, %lld, d_v], got "
                               "dtype %d, %zu dims, %zu bytes",
                               attnd_dtype_name(dst->out_dtype), (long long)want[0],
                               (long long)want[1], (long long)want[2], (int)out->dtype,
                               out->n_shape, out->data_len);
    if (dst->lse) {
        if (!lse->present)
            return attnd_error_set(err, ATTND_ERR_INTERNAL, "AttendResponse.lse: missing");
        if (lse->data_len > dst->lse_capacity * sizeof(float))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "lse_capacity: the reply holds %zu floats, got %zu",
                                   lse->data_len / sizeof(float), dst->lse_capacity);
        if (lse->dtype != ATTND_DTYPE_F32 || !shape_is(lse, 3, want) ||
            shape_elems(lse) * sizeof(float) != lse->data_len)
            return attnd_error_set(err, ATTND_ERR_INTERNAL,
                                   "AttendResponse.lse: expected f32 [%lld, %lld, %lld], got "
                                   "dtype %d, %zu dims, %zu bytes",
                                   (long long)want[0], (long long)want[1], (long long)want[2],
                                   (int)lse->dtype, lse->n_shape, lse->data_len);
    }
    if (dst->sparse && (st = attnd__client_attend_chosen(in, &v, dst, err)))
        return st;
    /* checked: now the one copy of each tensor, into the caller's buffers */
    attnd_wire_copy(in, out->data_off, out->data_len, dst->out);
    if (dst->lse)
        attnd_wire_copy(in, lse->data_off, lse->data_len, dst->lse);
    return ATTND_OK;
}

attnd_status attnd__client_attend_decode(grpc_byte_buffer *bb, const attnd__client_attend_dst *dst,
                                         attnd_error *err)
{
    grpc_byte_buffer_reader rd;
    attnd_wire_in in;

    if (attnd_wire_in_grpc(&in, bb) == 0) /* read where the slices are */
        return attnd__client_attend_decode_in(&in, dst, err);
    if (!grpc_byte_buffer_reader_init(&rd, bb)) /* compressed */
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "AttendResponse: cannot read the reply");
    grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    attnd_wire_in_flat(&in, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
    attnd_status st = attnd__client_attend_decode_in(&in, dst, err);
    grpc_slice_unref(s);
    return st;
}
