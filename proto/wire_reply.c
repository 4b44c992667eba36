/* AttendResponse: its layout (both sides), the encoder (the server) and
 * the decoder (libattnd). See attnd_wire.h for the contract.
 *
 *   AttendResponse { 1 uint64 request_id; 2 Tensor out; 3 Tensor lse }
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

enum { F_REQUEST_ID = 1, F_OUT = 2, F_LSE = 3 };

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
    l->total = l->lse_off + l->lse_bytes;
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
