/* The Attend request encoder and the AttendResponse decoder.
 *
 * Encoding: the protobuf-c message is built around the caller's buffers
 * (the tensors' `bytes` fields and the shape arrays point at them) and
 * packed once, straight into the request's grpc slice; no element is
 * touched one by one. What the wire can carry is sent as given, so the
 * server's validation answers for it (a bad dtype, shape or batch); only
 * what the wire cannot express is refused here: NULL pointers, more than 6
 * dims, a byte count that overflows, and result buffers too small for the
 * reply (checked before sending when the query's shape matches the served
 * model, so a refused call has appended nothing).
 *
 * Decoding: the reply is parsed field by field straight from the byte
 * buffer's slices, and the out/lse bytes are copied directly into the
 * caller's buffers, so a reply of many megabytes is copied once (protobuf-c
 * would first copy it into a buffer of its own). The parser follows the
 * protobuf wire format: unknown fields are skipped, shapes may come packed
 * or not, and any malformation is INTERNAL (the server sent garbage).
 */
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>

#include "client_int.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "attnd's wire tensors are little-endian; this client assumes the host is too"
#endif

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
    /* projected outputs are d_vo wide, which only the group knows: their
     * size is checked when the reply comes */
    if (!a->up_project && (st = precheck_results(c, a, out_dtype, err)))
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
                                         grpc_byte_buffer **bb_p, attnd__client_attend_dst *dst,
                                         attnd_error *err)
{
    attnd__client_attend_msg msg;
    attnd_status st = attnd__client_attend_prepare(c, a, &msg, dst, err);
    if (st)
        return st;
    *bb_p = attnd__client_pack(&msg.req.base);
    attnd__client_attend_msg_cleanup(&msg);
    return ATTND_OK;
}

/* ---- decoding ------------------------------------------------------------------ */

/* A forward-only reader over the slices of a byte buffer. */
typedef struct cursor {
    grpc_byte_buffer_reader rd;
    const uint8_t *p, *end; /* the unread part of the current slice */
    size_t pos;             /* bytes consumed since the start */
} cursor;

static int cur_fill(cursor *k)
{
    while (k->p == k->end) {
        grpc_slice *s;
        if (!grpc_byte_buffer_reader_peek(&k->rd, &s))
            return 0;
        k->p = GRPC_SLICE_START_PTR(*s);
        k->end = k->p + GRPC_SLICE_LENGTH(*s);
    }
    return 1;
}

static int cur_varint(cursor *k, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (!cur_fill(k))
            return 0;
        uint8_t b = *k->p++;
        k->pos++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 1;
        }
    }
    return 0;
}

/* Copy n bytes to dst (NULL: skip them). */
static int cur_take(cursor *k, void *dst, size_t n)
{
    unsigned char *d = dst;
    while (n) {
        if (!cur_fill(k))
            return 0;
        size_t m = (size_t)(k->end - k->p);
        if (m > n)
            m = n;
        if (d) {
            memcpy(d, k->p, m);
            d += m;
        }
        k->p += m;
        k->pos += m;
        n -= m;
    }
    return 1;
}

static int skip_field(cursor *k, unsigned wire_type)
{
    uint64_t v;
    switch (wire_type) {
    case 0: return cur_varint(k, &v);
    case 1: return cur_take(k, NULL, 8);
    case 2: return cur_varint(k, &v) && cur_take(k, NULL, v);
    case 5: return cur_take(k, NULL, 4);
    default: return 0; /* groups are not proto3 */
    }
}

typedef struct tensor_info {
    int seen;
    uint64_t dtype;
    int ndim;
    int64_t shape[MAX_DIMS];
    uint64_t data_len;
    int too_big; /* data longer than the destination */
} tensor_info;

/* Parse a Tensor of len bytes; its data goes to dst (cap bytes) or is
 * skipped when dst is NULL. */
static int parse_tensor(cursor *k, uint64_t len, tensor_info *t, void *dst, size_t cap)
{
    size_t end = k->pos + len;
    uint64_t key, v;

    memset(t, 0, sizeof *t);
    t->seen = 1;
    while (k->pos < end) {
        if (!cur_varint(k, &key))
            return 0;
        unsigned field = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
        if (field == 1 && wt == 0) {
            if (!cur_varint(k, &t->dtype))
                return 0;
        } else if (field == 2 && (wt == 0 || wt == 2)) {
            size_t stop = 0; /* packed: the end of the run; unpacked: one value */
            if (wt == 2 && !cur_varint(k, &v))
                return 0;
            if (wt == 2)
                stop = k->pos + v;
            for (int first = 1; wt == 0 ? first : k->pos < stop; first = 0) {
                if (t->ndim == MAX_DIMS || !cur_varint(k, &v))
                    return 0;
                t->shape[t->ndim++] = (int64_t)v;
            }
            if (wt == 2 && k->pos != stop)
                return 0;
        } else if (field == 3 && wt == 2) {
            if (!cur_varint(k, &v))
                return 0;
            t->data_len = v;
            t->too_big = !dst || v > cap;
            if (!cur_take(k, t->too_big ? NULL : dst, v))
                return 0;
        } else if (!skip_field(k, wt)) {
            return 0;
        }
    }
    return k->pos == end;
}

static int shape_is(const tensor_info *t, int ndim, const int64_t *want)
{
    if (t->ndim != ndim)
        return 0;
    for (int i = 0; i < ndim; i++)
        if (want[i] >= 0 && t->shape[i] != want[i])
            return 0;
    return 1;
}

static uint64_t shape_elems(const tensor_info *t)
{
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (uint64_t)t->shape[i];
    return n;
}

attnd_status attnd__client_attend_decode(grpc_byte_buffer *bb, const attnd__client_attend_dst *dst,
                                         attnd_error *err)
{
    cursor k;
    tensor_info out, lse;
    uint64_t key, v, request_id = 0;
    int ok = 1;

    memset(&k, 0, sizeof k);
    memset(&out, 0, sizeof out);
    memset(&lse, 0, sizeof lse);
    if (!grpc_byte_buffer_reader_init(&k.rd, bb))
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "AttendResponse: cannot read the reply");
    while (ok && cur_fill(&k)) {
        ok = cur_varint(&k, &key);
        unsigned field = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
        if (!ok)
            break;
        if (field == 1 && wt == 0)
            ok = cur_varint(&k, &request_id);
        else if (field == 2 && wt == 2)
            ok = cur_varint(&k, &v) && parse_tensor(&k, v, &out, dst->out, dst->out_capacity);
        else if (field == 3 && wt == 2)
            ok = cur_varint(&k, &v) &&
                 parse_tensor(&k, v, &lse, dst->lse, dst->lse_capacity * sizeof(float));
        else
            ok = skip_field(&k, wt);
    }
    grpc_byte_buffer_reader_destroy(&k.rd);
    if (!ok)
        return attnd_error_set(err, ATTND_ERR_INTERNAL,
                               "AttendResponse: malformed reply near byte %zu", k.pos);

    int64_t want[4] = {dst->n_seqs, dst->q_tokens, dst->n_q_heads, -1};
    if (request_id != dst->request_id)
        return attnd_error_set(err, ATTND_ERR_INTERNAL,
                               "AttendResponse.request_id: expected %llu, got %llu",
                               (unsigned long long)dst->request_id,
                               (unsigned long long)request_id);
    if (!out.seen)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "AttendResponse.out: missing");
    if (out.too_big)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "out_capacity: the reply holds %llu bytes, got %zu",
                               (unsigned long long)out.data_len, dst->out_capacity);
    if (out.dtype != (uint64_t)dst->out_dtype || !shape_is(&out, 4, want) ||
        shape_elems(&out) * attnd_dtype_size(dst->out_dtype) != out.data_len)
        return attnd_error_set(err, ATTND_ERR_INTERNAL,
                               "AttendResponse.out: expected %s [%lld, %lld, %lld, d_v], got "
                               "dtype %llu, %d dims, %llu bytes",
                               attnd_dtype_name(dst->out_dtype), (long long)want[0],
                               (long long)want[1], (long long)want[2],
                               (unsigned long long)out.dtype, out.ndim,
                               (unsigned long long)out.data_len);
    if (!dst->lse)
        return ATTND_OK;
    if (!lse.seen)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "AttendResponse.lse: missing");
    if (lse.too_big)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "lse_capacity: the reply holds %llu floats, got %zu",
                               (unsigned long long)lse.data_len / sizeof(float),
                               dst->lse_capacity);
    if (lse.dtype != ATTND_DTYPE_F32 || !shape_is(&lse, 3, want) ||
        shape_elems(&lse) * sizeof(float) != lse.data_len)
        return attnd_error_set(err, ATTND_ERR_INTERNAL,
                               "AttendResponse.lse: expected f32 [%lld, %lld, %lld], got dtype "
                               "%llu, %d dims, %llu bytes",
                               (long long)want[0], (long long)want[1], (long long)want[2],
                               (unsigned long long)lse.dtype, lse.ndim,
                               (unsigned long long)lse.data_len);
    return ATTND_OK;
}
