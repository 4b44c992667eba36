/* AttendResponse: its layout (both sides), the encoder (the server) and
 * the decoder (libattnd). See attnd_wire.h for the contract.
 *
 *   AttendResponse { 1 uint64 request_id; 2 Tensor out; 3 Tensor lse;
 *                    10 uint32 chosen_groups; 11 bool chosen_tokens;
 *                    12 repeated uint32 chosen_indptr (packed);
 *                    13 repeated uint64 chosen (packed) }
 *   Tensor         { 1 DType dtype; 2 repeated int64 shape (packed); 3 bytes data }
 *
 * The encoder converts the engine's float32 output straight into the reply
 * (attnd_dtype_convert, vectorized, any alignment: the data sits wherever
 * the framing ends), so the output is written once. The decoder reads the
 * framing and leaves the tensors where they are (offsets into the input).
 */
#include <string.h>

#include "attnd_dtype.h"
#include "wire_int.h"

enum { F_REQUEST_ID = 1, F_OUT = 2, F_LSE = 3, F_CHOSEN_GROUPS = 10, F_CHOSEN_TOKENS = 11,
       F_CHOSEN_INDPTR = 12, F_CHOSEN = 13 };

/* The chosen lists' framing and values (post); p NULL: only the size. */
static size_t post_put(const attnd_wire_reply_desc *d, uint8_t *p)
{
    size_t n = 0, li = 0, lc = 0;
    if (!d->n_chosen_lists)
        return 0;
    const size_t nc = (size_t)d->chosen_indptr[d->n_chosen_lists];
    for (size_t i = 0; i <= d->n_chosen_lists; i++)
        li += attnd__wire_vsize((uint32_t)d->chosen_indptr[i]);
    for (size_t i = 0; i < nc; i++)
        lc += attnd__wire_vsize((uint64_t)d->chosen[i]);
    if (d->chosen_groups)
        n += 1 + attnd__wire_vsize(d->chosen_groups);
    if (d->chosen_tokens)
        n += 2;
    n += 1 + attnd__wire_vsize(li) + li;
    if (nc)
        n += 1 + attnd__wire_vsize(lc) + lc;
    if (!p)
        return n;
    if (d->chosen_groups) {
        p = attnd__wire_kput(p, F_CHOSEN_GROUPS, ATTND__WT_VARINT);
        p = attnd__wire_vput(p, d->chosen_groups);
    }
    if (d->chosen_tokens) {
        p = attnd__wire_kput(p, F_CHOSEN_TOKENS, ATTND__WT_VARINT);
        *p++ = 1;
    }
    p = attnd__wire_kput(p, F_CHOSEN_INDPTR, ATTND__WT_LEN);
    p = attnd__wire_vput(p, li);
    for (size_t i = 0; i <= d->n_chosen_lists; i++)
        p = attnd__wire_vput(p, (uint32_t)d->chosen_indptr[i]);
    if (nc) {
        p = attnd__wire_kput(p, F_CHOSEN, ATTND__WT_LEN);
        p = attnd__wire_vput(p, lc);
        for (size_t i = 0; i < nc; i++)
            p = attnd__wire_vput(p, (uint64_t)d->chosen[i]);
    }
    return n;
}

/* ---- layout and encoding ------------------------------------------------------- */

static size_t elems_of(const int64_t *shape, int n)
{
    size_t e = 1;
    for (int i = 0; i < n; i++)
        e *= (size_t)shape[i];
    return e;
}

/* Write field `field` = Tensor{dtype, shape, data of `bytes`} up to its
 * data at p; returns the framing's length (at most 1 + 10 + 2 + 3 + 4 * 10
 * + 11 = 67 bytes for 4 dims). */
static size_t tensor_frame(uint8_t *p, unsigned field, attnd_dtype dt, const int64_t *shape,
                           int n, size_t bytes)
{
    uint8_t *q = p;
    size_t sl = 0, body;

    for (int i = 0; i < n; i++)
        sl += attnd__wire_vsize((uint64_t)shape[i]);
    body = (dt ? 1 + attnd__wire_vsize((uint64_t)dt) : 0) + 1 + attnd__wire_vsize(sl) + sl +
           (bytes ? 1 + attnd__wire_vsize(bytes) + bytes : 0);
    uint8_t *s = q;
    q = attnd__wire_kput(q, field, ATTND__WT_LEN);
    q = attnd__wire_vput(q, body);
    if (dt) {
        q = attnd__wire_kput(q, 1, ATTND__WT_VARINT);
        q = attnd__wire_vput(q, (uint64_t)dt);
    }
    q = attnd__wire_kput(q, 2, ATTND__WT_LEN);
    q = attnd__wire_vput(q, sl);
    for (int i = 0; i < n; i++)
        q = attnd__wire_vput(q, (uint64_t)shape[i]);
    if (bytes) {
        q = attnd__wire_kput(q, 3, ATTND__WT_LEN);
        q = attnd__wire_vput(q, bytes);
    }
    return (size_t)(q - s);
}

void attnd_wire_reply_plan(const attnd_wire_reply_desc *d, attnd_wire_reply_layout *l)
{
    uint8_t *p = l->pre;

    l->out_bytes = elems_of(d->out_shape, 4) * attnd_dtype_size(d->out_dtype);
    if (d->request_id) {
        p = attnd__wire_kput(p, F_REQUEST_ID, ATTND__WT_VARINT);
        p = attnd__wire_vput(p, d->request_id);
    }
    p += tensor_frame(p, F_OUT, d->out_dtype, d->out_shape, 4, l->out_bytes);
    l->pre_len = (size_t)(p - l->pre);
    l->out_off = l->pre_len;
    l->mid_len = 0;
    l->lse_bytes = 0;
    if (d->has_lse) {
        l->lse_bytes = elems_of(d->lse_shape, 3) * sizeof(float);
        l->mid_len = tensor_frame(l->mid, F_LSE, ATTND_DTYPE_F32, d->lse_shape, 3, l->lse_bytes);
    }
    l->lse_off = l->out_off + l->out_bytes + l->mid_len;
    l->post_off = l->lse_off + l->lse_bytes;
    l->post_len = post_put(d, NULL);
    l->total = l->post_off + l->post_len;
}

void attnd_wire_reply_write(const attnd_wire_reply_desc *d, const attnd_wire_reply_layout *l,
                            const float *out, const float *lse, uint8_t *dst)
{
    memcpy(dst, l->pre, l->pre_len);
    if (l->out_bytes)
        attnd_dtype_convert(d->out_dtype, dst + l->out_off, ATTND_DTYPE_F32, out,
                            l->out_bytes / attnd_dtype_size(d->out_dtype));
    memcpy(dst + l->out_off + l->out_bytes, l->mid, l->mid_len);
    if (l->lse_bytes)
        memcpy(dst + l->lse_off, lse, l->lse_bytes);
    if (l->post_len)
        post_put(d, dst + l->post_off);
}

/* ---- decoding ---------------------------------------------------------------------- */

static void view_of(const attnd__wire_tscan *t, attnd_wire_tensor_view *v)
{
    v->present = t->seen;
    v->dtype = t->dtype;
    v->n_shape = t->n_shape;
    v->data_off = t->data_off;
    v->data_len = t->data_len;
}

attnd_status attnd_wire_reply_decode(const attnd_wire_in *in, attnd_wire_reply_view *v,
                                     attnd_error *err)
{
    attnd__wire_cur c;
    attnd__wire_tscan t[2];
    attnd_wire_reply_view r;
    const size_t lim = in->len;
    size_t fields = 0;

    memset(&r, 0, sizeof r);
    memset(t, 0, sizeof t);
    attnd__wire_cur_init(&c, in);
    while (c.pos < lim) {
        uint32_t tag;
        unsigned wt;
        attnd__wire_val val;
        if (++fields > ATTND__WIRE_MAX_FIELDS || attnd__wire_key(&c, lim, &tag, &wt) ||
            attnd__wire_value(&c, lim, wt, &val))
            goto err_malformed;
        if (tag == F_REQUEST_ID) {
            if (wt != ATTND__WT_VARINT)
                goto err_malformed;
            r.request_id = val.v;
        } else if (tag == F_CHOSEN_GROUPS) {
            if (wt != ATTND__WT_VARINT)
                goto err_malformed;
            r.chosen_groups = (uint32_t)val.v;
        } else if (tag == F_CHOSEN_TOKENS) {
            r.chosen_tokens = val.any;
            attnd__wire_value_skip(&c, &val);
        } else if (tag == F_CHOSEN_INDPTR || tag == F_CHOSEN) {
            if (attnd__wire_repeated(&c, &val, NULL, 0,
                                     tag == F_CHOSEN ? &r.n_chosen : &r.n_chosen_indptr))
                goto err_malformed;
        } else if (tag == F_OUT || tag == F_LSE) {
            attnd_wire_tensor_view *tv = tag == F_OUT ? &r.out : &r.lse;
            if (wt != ATTND__WT_LEN ||
                attnd__wire_tensor(&c, val.off + val.len, &t[tag - F_OUT], tv->shape,
                                   ATTND_WIRE_MAX_DIMS))
                goto err_malformed;
        } else {
            attnd__wire_value_skip(&c, &val);
        }
    }
    view_of(&t[0], &r.out);
    view_of(&t[1], &r.lse);
    *v = r;
    return ATTND_OK;

err_malformed:
    return attnd_error_set(err, ATTND_ERR_INTERNAL,
                           "AttendResponse: a malformed reply of %zu bytes (near byte %zu)",
                           in->len, c.pos);
}

void attnd_wire_reply_chosen(const attnd_wire_in *in, uint32_t *indptr, size_t cap_indptr,
                             uint64_t *chosen, size_t cap_chosen)
{
    attnd__wire_cur c;
    size_t ni = 0, nc = 0;
    uint64_t tmp;

    attnd__wire_cur_init(&c, in);
    while (c.pos < in->len) { /* accepted by the decoder: every step succeeds */
        uint32_t tag;
        unsigned wt;
        attnd__wire_val v;
        if (attnd__wire_key(&c, in->len, &tag, &wt) || attnd__wire_value(&c, in->len, wt, &v))
            return;
        if (tag == F_CHOSEN) {
            if (attnd__wire_repeated(&c, &v, chosen, cap_chosen, &nc))
                return;
        } else if (tag == F_CHOSEN_INDPTR) {
            /* uint32: each value's low 32 bits, one at a time */
            if (v.wt == ATTND__WT_VARINT) {
                if (ni < cap_indptr)
                    indptr[ni] = (uint32_t)v.v;
                ni++;
                continue;
            }
            size_t end = v.off + v.len;
            while (c.pos < end && !attnd__wire_packed_next(&c, end, &tmp)) {
                if (ni < cap_indptr)
                    indptr[ni] = (uint32_t)tmp;
                ni++;
            }
        } else {
            attnd__wire_value_skip(&c, &v);
        }
    }
}
