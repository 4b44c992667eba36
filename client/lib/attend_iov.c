/* An AttendRequest as a gather list: the protobuf framing in a small
 * buffer, the tensor bytes where the caller keeps them.
 *
 * The UCX transport sends the request straight from the caller's q and
 * new_kv (ucp iov datatype, zero-copy for rendezvous) instead of packing a
 * copy first, which matters at DeepSeek-V3 batch sizes (4.7 MB of queries
 * for 32 sequences). The bytes are the AttendRequest of attnd.proto in
 * field-number order, proto3 style (default scalars omitted, repeated
 * scalars packed), so the server's protobuf-c decoder reads exactly the
 * message protobuf-c itself would have packed. Only for calls that keep
 * the caller's buffers until the send completes (sync Attend, AttendStream).
 */
#include <string.h>

#include "client_int.h"

static size_t varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static unsigned char *varint_put(unsigned char *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *p++ = (unsigned char)v;
    return p;
}

static unsigned char *key_put(unsigned char *p, unsigned field, unsigned wt)
{
    return varint_put(p, (uint64_t)field << 3 | wt);
}

/* enum and int32 fields: negative values travel sign-extended to 64 bits */
static uint64_t enum_wire(int v)
{
    return (uint64_t)(int64_t)v;
}

static size_t packed_i64_len(const int64_t *v, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += varint_size((uint64_t)v[i]);
    return len;
}

/* Bytes of a Tensor's body before its data, and the data's length. */
static size_t tensor_head_len(const Attnd__V1__Tensor *t)
{
    size_t n = 0, sl = packed_i64_len(t->shape, t->n_shape);
    if (t->dtype)
        n += 1 + varint_size(enum_wire(t->dtype));
    if (t->n_shape)
        n += 1 + varint_size(sl) + sl;
    if (t->data.len)
        n += 1 + varint_size(t->data.len);
    return n;
}

/* Write a Tensor field's key, length and body up to its data; the data
 * itself is the next gather entry. */
static unsigned char *tensor_head_put(unsigned char *p, unsigned field,
                                      const Attnd__V1__Tensor *t)
{
    size_t sl = packed_i64_len(t->shape, t->n_shape);
    p = key_put(p, field, 2);
    p = varint_put(p, tensor_head_len(t) + t->data.len);
    if (t->dtype) {
        p = key_put(p, 1, 0);
        p = varint_put(p, enum_wire(t->dtype));
    }
    if (t->n_shape) {
        p = key_put(p, 2, 2);
        p = varint_put(p, sl);
        for (size_t i = 0; i < t->n_shape; i++)
            p = varint_put(p, (uint64_t)t->shape[i]);
    }
    if (t->data.len) {
        p = key_put(p, 3, 2);
        p = varint_put(p, t->data.len);
    }
    return p;
}

size_t attnd__client_attend_frame_bound(const attnd__client_attend_msg *msg)
{
    const Attnd__V1__AttendRequest *r = &msg->req;
    size_t n = 64 + 2 * (16 + 8 * 10 + 3 * 10); /* scalars; two tensor heads */
    for (size_t i = 0; i < r->n_session_ids; i++)
        n += 1 + varint_size(r->session_ids[i].len) + r->session_ids[i].len;
    n += r->n_positions * 10;
    return n;
}

void attnd__client_attend_gather(const attnd__client_attend_msg *msg, unsigned char *frame,
                                 attnd__client_gather *g)
{
    const Attnd__V1__AttendRequest *r = &msg->req;
    unsigned char *p = frame, *seg = frame;

    g->n = 0;
    g->total = 0;
#define FLUSH_FRAME()                                        \
    do {                                                     \
        if (p > seg) {                                       \
            g->e[g->n].p = seg;                              \
            g->e[g->n++].len = (size_t)(p - seg);            \
            g->total += (size_t)(p - seg);                   \
        }                                                    \
        seg = p;                                             \
    } while (0)
#define DATA(t)                                              \
    do {                                                     \
        if ((t)->data.len) {                                 \
            FLUSH_FRAME();                                   \
            g->e[g->n].p = (t)->data.data;                   \
            g->e[g->n++].len = (t)->data.len;                \
            g->total += (t)->data.len;                       \
        }                                                    \
    } while (0)

    if (r->layer) {
        p = key_put(p, 1, 0);
        p = varint_put(p, r->layer);
    }
    for (size_t i = 0; i < r->n_session_ids; i++) {
        p = key_put(p, 2, 2);
        p = varint_put(p, r->session_ids[i].len);
        memcpy(p, r->session_ids[i].data, r->session_ids[i].len);
        p += r->session_ids[i].len;
    }
    if (r->q) {
        p = tensor_head_put(p, 3, r->q);
        DATA(r->q);
    }
    if (r->new_kv) {
        p = tensor_head_put(p, 4, r->new_kv);
        DATA(r->new_kv);
    }
    if (r->n_positions) {
        size_t len = 0;
        for (size_t i = 0; i < r->n_positions; i++)
            len += varint_size(r->positions[i]);
        p = key_put(p, 5, 2);
        p = varint_put(p, len);
        for (size_t i = 0; i < r->n_positions; i++)
            p = varint_put(p, r->positions[i]);
    }
    if (r->return_lse) {
        p = key_put(p, 6, 0);
        p = varint_put(p, 1);
    }
    if (r->out_dtype) {
        p = key_put(p, 7, 0);
        p = varint_put(p, enum_wire(r->out_dtype));
    }
    if (r->request_id) {
        p = key_put(p, 8, 0);
        p = varint_put(p, r->request_id);
    }
    if (r->up_project) {
        p = key_put(p, 20, 0);
        p = varint_put(p, 1);
    }
    FLUSH_FRAME();
#undef DATA
#undef FLUSH_FRAME
}
