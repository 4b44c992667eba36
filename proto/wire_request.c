/* AttendRequest: the encoder (libattnd) and the decoder (the server, for
 * gRPC and UCX alike). See attnd_wire.h for the contract.
 *
 *   AttendRequest { 1 uint32 layer; 2 repeated bytes session_ids; 3 Tensor q;
 *                   4 Tensor new_kv; 5 repeated uint64 positions (packed);
 *                   6 bool return_lse; 7 DType out_dtype; 8 uint64 request_id;
 *                   20 bool up_project; 21 QForm q_form; 30 uint32 given_groups;
 *                   31 repeated uint32 given_indptr (packed);
 *                   32 repeated uint64 given_idx (packed); 33 bool return_pages }
 *   Tensor        { 1 DType dtype; 2 repeated int64 shape (packed); 3 bytes data }
 *
 * The encoder writes proto3 as protobuf-c packs it (zero scalars and empty
 * bytes omitted, present messages always written, enums sign-extended).
 * The decoder makes two passes over the framing (the tensors' bytes are
 * skipped, never read): the first checks everything and counts the
 * repeated fields, the second fills arrays of exactly those sizes.
 */
#include <string.h>

#include "attnd_dtype.h"
#include "wire_int.h"

enum {
    F_LAYER = 1, F_IDS = 2, F_Q = 3, F_NEW_KV = 4, F_POSITIONS = 5, F_RETURN_LSE = 6,
    F_OUT_DTYPE = 7, F_REQUEST_ID = 8, F_UP_PROJECT = 20, F_Q_FORM = 21,
    F_GIVEN_GROUPS = 30, F_GIVEN_INDPTR = 31, F_GIVEN_IDX = 32, F_RETURN_PAGES = 33,
    T_DTYPE = 1, T_SHAPE = 2, T_DATA = 3,
};

/* ---- encoding ------------------------------------------------------------------- */

static uint64_t enum_wire(int v)
{
    return (uint64_t)(int64_t)v; /* int32 on the wire: sign-extended */
}

static size_t packed_len(const uint64_t *v, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += attnd__wire_vsize(v[i]);
    return len;
}

static size_t packed_len32(const uint32_t *v, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += attnd__wire_vsize(v[i]);
    return len;
}

static size_t shape_len(const Attnd__V1__Tensor *t)
{
    return packed_len((const uint64_t *)t->shape, t->n_shape);
}

/* A Tensor's body without its data bytes. */
static size_t tensor_head_len(const Attnd__V1__Tensor *t)
{
    size_t n = 0, sl = shape_len(t);
    if (t->dtype)
        n += 1 + attnd__wire_vsize(enum_wire(t->dtype));
    if (t->n_shape)
        n += 1 + attnd__wire_vsize(sl) + sl;
    if (t->data.len)
        n += 1 + attnd__wire_vsize(t->data.len);
    return n;
}

/* Write a Tensor field up to its data (which comes next). */
static uint8_t *tensor_head_put(uint8_t *p, unsigned field, const Attnd__V1__Tensor *t)
{
    size_t sl = shape_len(t);
    p = attnd__wire_kput(p, field, ATTND__WT_LEN);
    p = attnd__wire_vput(p, tensor_head_len(t) + t->data.len);
    if (t->dtype) {
        p = attnd__wire_kput(p, T_DTYPE, ATTND__WT_VARINT);
        p = attnd__wire_vput(p, enum_wire(t->dtype));
    }
    if (t->n_shape) {
        p = attnd__wire_kput(p, T_SHAPE, ATTND__WT_LEN);
        p = attnd__wire_vput(p, sl);
        for (size_t i = 0; i < t->n_shape; i++)
            p = attnd__wire_vput(p, (uint64_t)t->shape[i]);
    }
    if (t->data.len) {
        p = attnd__wire_kput(p, T_DATA, ATTND__WT_LEN);
        p = attnd__wire_vput(p, t->data.len);
    }
    return p;
}

static size_t tensor_field_frame(unsigned field, const Attnd__V1__Tensor *t)
{
    size_t body = tensor_head_len(t) + t->data.len;
    return attnd__wire_ksize(field) + attnd__wire_vsize(body) + body - t->data.len;
}

size_t attnd_wire_request_frame_bound(const Attnd__V1__AttendRequest *m)
{
    size_t n = 0;
    if (m->layer)
        n += 1 + attnd__wire_vsize(m->layer);
    for (size_t i = 0; i < m->n_session_ids; i++)
        n += 1 + attnd__wire_vsize(m->session_ids[i].len) + m->session_ids[i].len;
    if (m->q)
        n += tensor_field_frame(F_Q, m->q);
    if (m->new_kv)
        n += tensor_field_frame(F_NEW_KV, m->new_kv);
    if (m->n_positions) {
        size_t pl = packed_len(m->positions, m->n_positions);
        n += 1 + attnd__wire_vsize(pl) + pl;
    }
    if (m->return_lse)
        n += 2;
    if (m->out_dtype)
        n += 1 + attnd__wire_vsize(enum_wire(m->out_dtype));
    if (m->request_id)
        n += 1 + attnd__wire_vsize(m->request_id);
    if (m->up_project)
        n += attnd__wire_ksize(F_UP_PROJECT) + 1;
    if (m->q_form)
        n += attnd__wire_ksize(F_Q_FORM) + attnd__wire_vsize(enum_wire(m->q_form));
    if (m->given_groups)
        n += attnd__wire_ksize(F_GIVEN_GROUPS) + attnd__wire_vsize(m->given_groups);
    if (m->n_given_indptr) {
        size_t pl = packed_len32(m->given_indptr, m->n_given_indptr);
        n += attnd__wire_ksize(F_GIVEN_INDPTR) + attnd__wire_vsize(pl) + pl;
    }
    if (m->n_given_idx) {
        size_t pl = packed_len(m->given_idx, m->n_given_idx);
        n += attnd__wire_ksize(F_GIVEN_IDX) + attnd__wire_vsize(pl) + pl;
    }
    if (m->return_pages)
        n += attnd__wire_ksize(F_RETURN_PAGES) + 1;
    return n;
}

size_t attnd_wire_request_size(const Attnd__V1__AttendRequest *m)
{
    return attnd_wire_request_frame_bound(m) + (m->q ? m->q->data.len : 0) +
           (m->new_kv ? m->new_kv->data.len : 0);
}

/* Write the request at p: with g, tensor data is referenced by g's entries
 * and only the framing is written (the pieces in g); without, the data is
 * copied in place and p receives the whole message. */
static void encode(const Attnd__V1__AttendRequest *m, uint8_t *p, attnd_wire_gather *g)
{
    uint8_t *seg = p;
    const Attnd__V1__Tensor *tensors[2] = {m->q, m->new_kv};

    if (g) {
        g->n = 0;
        g->total = 0;
    }
#define GATHER(ptr, n_)                           \
    do {                                          \
        if ((n_) > 0) {                           \
            g->e[g->n].p = (ptr);                 \
            g->e[g->n++].len = (size_t)(n_);      \
            g->total += (size_t)(n_);             \
        }                                         \
    } while (0)

    if (m->layer) {
        p = attnd__wire_kput(p, F_LAYER, ATTND__WT_VARINT);
        p = attnd__wire_vput(p, m->layer);
    }
    for (size_t i = 0; i < m->n_session_ids; i++) {
        p = attnd__wire_kput(p, F_IDS, ATTND__WT_LEN);
        p = attnd__wire_vput(p, m->session_ids[i].len);
        if (m->session_ids[i].len)
            memcpy(p, m->session_ids[i].data, m->session_ids[i].len);
        p += m->session_ids[i].len;
    }
    for (int k = 0; k < 2; k++) {
        const Attnd__V1__Tensor *t = tensors[k];
        if (!t)
            continue;
        p = tensor_head_put(p, k == 0 ? F_Q : F_NEW_KV, t);
        if (!t->data.len)
            continue;
        if (g) { /* the framing so far, then the data where it is */
            GATHER(seg, p - seg);
            GATHER(t->data.data, t->data.len);
            seg = p;
        } else {
            memcpy(p, t->data.data, t->data.len);
            p += t->data.len;
        }
    }
    if (m->n_positions) {
        p = attnd__wire_kput(p, F_POSITIONS, ATTND__WT_LEN);
        p = attnd__wire_vput(p, packed_len(m->positions, m->n_positions));
        for (size_t i = 0; i < m->n_positions; i++)
            p = attnd__wire_vput(p, m->positions[i]);
    }
    if (m->return_lse) {
        p = attnd__wire_kput(p, F_RETURN_LSE, ATTND__WT_VARINT);
        *p++ = 1;
    }
    if (m->out_dtype) {
        p = attnd__wire_kput(p, F_OUT_DTYPE, ATTND__WT_VARINT);
        p = attnd__wire_vput(p, enum_wire(m->out_dtype));
    }
    if (m->request_id) {
        p = attnd__wire_kput(p, F_REQUEST_ID, ATTND__WT_VARINT);
        p = attnd__wire_vput(p, m->request_id);
    }
    if (m->up_project) {
        p = attnd__wire_kput(p, F_UP_PROJECT, ATTND__WT_VARINT);
        *p++ = 1;
    }
    if (m->q_form) {
        p = attnd__wire_kput(p, F_Q_FORM, ATTND__WT_VARINT);
        p = attnd__wire_vput(p, enum_wire(m->q_form));
    }
    if (m->given_groups) {
        p = attnd__wire_kput(p, F_GIVEN_GROUPS, ATTND__WT_VARINT);
        p = attnd__wire_vput(p, m->given_groups);
    }
    if (m->n_given_indptr) {
        p = attnd__wire_kput(p, F_GIVEN_INDPTR, ATTND__WT_LEN);
        p = attnd__wire_vput(p, packed_len32(m->given_indptr, m->n_given_indptr));
        for (size_t i = 0; i < m->n_given_indptr; i++)
            p = attnd__wire_vput(p, m->given_indptr[i]);
    }
    if (m->n_given_idx) {
        p = attnd__wire_kput(p, F_GIVEN_IDX, ATTND__WT_LEN);
        p = attnd__wire_vput(p, packed_len(m->given_idx, m->n_given_idx));
        for (size_t i = 0; i < m->n_given_idx; i++)
            p = attnd__wire_vput(p, m->given_idx[i]);
    }
    if (m->return_pages) {
        p = attnd__wire_kput(p, F_RETURN_PAGES, ATTND__WT_VARINT);
        *p++ = 1;
    }
    if (g)
        GATHER(seg, p - seg);
#undef GATHER
}

void attnd_wire_request_gather(const Attnd__V1__AttendRequest *m, uint8_t *frame,
                               attnd_wire_gather *g)
{
    encode(m, frame, g);
}

void attnd_wire_request_write(const Attnd__V1__AttendRequest *m, uint8_t *dst)
{
    encode(m, dst, NULL);
}

/* ---- decoding ----------------------------------------------------------------- */

typedef struct rscan {
    uint32_t layer;
    size_t n_ids, n_positions, n_given_indptr, n_given_idx;
    attnd__wire_tscan q, kv;
    int return_lse, up_project, return_pages;
    int32_t out_dtype, q_form;
    uint64_t request_id;
    uint32_t given_groups;
} rscan;

/* A repeated uint32 field's occurrence (one varint or a packed run), as
 * attnd__wire_repeated, keeping each value's low 32 bits as protobuf-c. */
static int repeated_u32(attnd__wire_cur *c, const attnd__wire_val *v, uint32_t *out, size_t cap,
                        size_t *n)
{
    if (v->wt == ATTND__WT_VARINT) {
        if (*n < cap)
            out[*n] = (uint32_t)v->v;
        (*n)++;
        return 0;
    }
    if (v->wt != ATTND__WT_LEN)
        return -1;
    size_t end = v->off + v->len;
    while (c->pos < end) {
        uint64_t x;
        if (attnd__wire_packed_next(c, end, &x))
            return -1;
        if (*n < cap)
            out[*n] = (uint32_t)x;
        (*n)++;
    }
    return 0;
}

static void *arena_alloc(ProtobufCAllocator *a, size_t n)
{
    return a->alloc(a->allocator_data, n ? n : 1);
}

/* Bytes at off..off+b->len: a view, or a copy in a when they span
 * segments; empty: NULL, as protobuf-c leaves it. -1: out of memory. */
static int resolve_bytes(const attnd_wire_in *in, ProtobufCAllocator *a, size_t off,
                         ProtobufCBinaryData *b)
{
    const void *p;
    b->data = NULL;
    if (!b->len)
        return 0;
    if ((p = attnd_wire_view(in, off, b->len))) {
        b->data = (uint8_t *)p; /* read only: nobody writes a decoded request */
        return 0;
    }
    if (!(b->data = a->alloc(a->allocator_data, b->len)))
        return -1;
    attnd_wire_copy(in, off, b->len, b->data);
    return 0;
}

/* Pass one (m NULL): check everything, count into r. Pass two (r fresh):
 * fill m's arrays, sized by pass one's counts. 0; -1 where protobuf-c's
 * unpack fails (pass one only); -2 when a is out of memory. */
static int request_pass(attnd__wire_cur *c, rscan *r, Attnd__V1__AttendRequest *m,
                        const rscan *sizes, ProtobufCAllocator *a)
{
    const size_t lim = c->in->len;
    size_t fields = 0;

    while (c->pos < lim) {
        uint32_t tag;
        unsigned wt;
        attnd__wire_val v;
        if (++fields > ATTND__WIRE_MAX_FIELDS || attnd__wire_key(c, lim, &tag, &wt) ||
            attnd__wire_value(c, lim, wt, &v))
            return -1;
        switch (tag) {
        case F_LAYER:
            if (wt != ATTND__WT_VARINT)
                return -1;
            r->layer = (uint32_t)v.v;
            break;
        case F_IDS:
            if (wt != ATTND__WT_LEN)
                return -1;
            if (m) {
                ProtobufCBinaryData *b = &m->session_ids[r->n_ids];
                b->len = v.len;
                if (resolve_bytes(c->in, a, v.off, b))
                    return -2;
            }
            r->n_ids++;
            attnd__wire_skip(c, v.len);
            break;
        case F_Q:
        case F_NEW_KV: {
            if (wt != ATTND__WT_LEN)
                return -1;
            attnd__wire_tscan *t = tag == F_Q ? &r->q : &r->kv;
            Attnd__V1__Tensor *pt = m ? (tag == F_Q ? m->q : m->new_kv) : NULL;
            if (attnd__wire_tensor(c, v.off + v.len, t, pt ? pt->shape : NULL,
                                   pt ? pt->n_shape : 0))
                return -1;
            break;
        }
        case F_POSITIONS:
            if (attnd__wire_repeated(c, &v, m ? m->positions : NULL,
                                     m ? sizes->n_positions : 0, &r->n_positions))
                return -1;
            break;
        case F_RETURN_LSE: /* bool: any wire type, as protobuf-c */
            r->return_lse = v.any;
            attnd__wire_value_skip(c, &v);
            break;
        case F_UP_PROJECT:
            r->up_project = v.any;
            attnd__wire_value_skip(c, &v);
            break;
        case F_RETURN_PAGES:
            r->return_pages = v.any;
            attnd__wire_value_skip(c, &v);
            break;
        case F_GIVEN_GROUPS:
            if (wt != ATTND__WT_VARINT)
                return -1;
            r->given_groups = (uint32_t)v.v;
            break;
        case F_GIVEN_INDPTR:
            if (repeated_u32(c, &v, m ? m->given_indptr : NULL, m ? sizes->n_given_indptr : 0,
                             &r->n_given_indptr))
                return -1;
            break;
        case F_GIVEN_IDX:
            if (attnd__wire_repeated(c, &v, m ? m->given_idx : NULL,
                                     m ? sizes->n_given_idx : 0, &r->n_given_idx))
                return -1;
            break;
        case F_OUT_DTYPE:
            if (wt != ATTND__WT_VARINT)
                return -1;
            r->out_dtype = (int32_t)(uint32_t)v.v;
            break;
        case F_Q_FORM: /* enum: as out_dtype */
            if (wt != ATTND__WT_VARINT)
                return -1;
            r->q_form = (int32_t)(uint32_t)v.v;
            break;
        case F_REQUEST_ID:
            if (wt != ATTND__WT_VARINT)
                return -1;
            r->request_id = v.v;
            break;
        default: /* unknown: skipped (protobuf-c keeps it aside) */
            attnd__wire_value_skip(c, &v);
        }
    }
    return 0;
}

/* The merged tensor of pass one, with a shape array for pass two; its
 * data a view, or gathered (and checked, for a dtype of known size). */
static int tensor_make(const attnd_wire_in *in, ProtobufCAllocator *a,
                       const attnd__wire_tscan *s, Attnd__V1__Tensor **t_p,
                       attnd_wire_tensor_check *chk)
{
    Attnd__V1__Tensor *t = NULL;
    size_t es = attnd_dtype_size((attnd_dtype)s->dtype);

    memset(chk, 0, sizeof *chk);
    if (s->seen) {
        if (!(t = arena_alloc(a, sizeof *t)))
            return -1;
        attnd__v1__tensor__init(t);
        t->dtype = (Attnd__V1__DType)s->dtype;
        t->n_shape = s->n_shape;
        t->data.len = s->data_len;
        if (!(t->shape = arena_alloc(a, s->n_shape * sizeof *t->shape)))
            return -1;
        if (!es || !s->data_len || attnd_wire_view(in, s->data_off, s->data_len)) {
            if (resolve_bytes(in, a, s->data_off, &t->data))
                return -1;
        } else { /* spans segments: gathered, each piece checked as it lands */
            if (!(t->data.data = a->alloc(a->allocator_data, s->data_len)))
                return -1;
            chk->checked = 1;
            chk->nonfinite = attnd_wire_copy_checked(in, s->data_off, s->data_len,
                                                     t->data.data, (attnd_dtype)s->dtype);
        }
    }
    *t_p = t;
    return 0;
}

attnd_status attnd_wire_request_decode(const attnd_wire_in *in, ProtobufCAllocator *a,
                                       Attnd__V1__AttendRequest **m_p,
                                       attnd_wire_request_checks *checks_p, attnd_error *err)
{
    attnd__wire_cur c;
    rscan r, fill;
    Attnd__V1__AttendRequest *m;
    attnd_wire_request_checks checks;

    memset(&r, 0, sizeof r);
    attnd__wire_cur_init(&c, in);
    if (request_pass(&c, &r, NULL, NULL, a))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "request: %zu bytes that are not a valid %s message", in->len,
                               attnd__v1__attend_request__descriptor.name);

    if (!(m = arena_alloc(a, sizeof *m)))
        goto err_nomem;
    attnd__v1__attend_request__init(m);
    if (tensor_make(in, a, &r.q, &m->q, &checks.q) ||
        tensor_make(in, a, &r.kv, &m->new_kv, &checks.new_kv) ||
        !(m->session_ids = arena_alloc(a, r.n_ids * sizeof *m->session_ids)) ||
        !(m->positions = arena_alloc(a, r.n_positions * sizeof *m->positions)) ||
        !(m->given_indptr = arena_alloc(a, r.n_given_indptr * sizeof *m->given_indptr)) ||
        !(m->given_idx = arena_alloc(a, r.n_given_idx * sizeof *m->given_idx)))
        goto err_nomem;

    /* pass two fills the arrays; pass one checked every byte it reads */
    memset(&fill, 0, sizeof fill);
    attnd__wire_cur_init(&c, in);
    if (request_pass(&c, &fill, m, &r, a))
        goto err_nomem;
    m->layer = r.layer;
    m->n_session_ids = r.n_ids;
    m->n_positions = r.n_positions;
    m->return_lse = r.return_lse;
    m->out_dtype = (Attnd__V1__DType)r.out_dtype;
    m->request_id = r.request_id;
    m->up_project = r.up_project;
    m->q_form = (Attnd__V1__QForm)r.q_form;
    m->given_groups = r.given_groups;
    m->n_given_indptr = r.n_given_indptr;
    m->n_given_idx = r.n_given_idx;
    m->return_pages = r.return_pages;
    *m_p = m;
    if (checks_p)
        *checks_p = checks;
    return ATTND_OK;

err_nomem:
    return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                           "request: no memory to decode a %zu-byte %s", in->len,
                           attnd__v1__attend_request__descriptor.name);
}
