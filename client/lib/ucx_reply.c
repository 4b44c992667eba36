/* libattnd's UCX transport: the reply handler. It runs inside
 * ucp_worker_progress, under the transport's mutex, on whichever thread is
 * progressing: an error reply fails its call with the server's status and
 * message; an eager reply is decoded straight from UCX's buffer into the
 * caller's out/lse (attend_wire.c's decoder); a rendezvous reply is
 * received straight into out/lse when its layout is the one
 * attnd_wire_reply_plan gives for the expected shape (below), else into a
 * pooled buffer and then decoded. A reply whose call
 * is gone (withdrawn at its deadline) is dropped.
 */
#include <stdlib.h>
#include <string.h>

#include "ucx_int.h"

/* ---- callbacks (inside ucp_worker_progress, under mu) -------------------------------- */

void attnd__client_ucx_finish(attnd__client_ucx_call *k, attnd_status st)
{
    k->st = st;
    k->done = 1;
}

/* Decode an AttendResponse held in plain memory into k's destination. */
static void decode_into(attnd__client_ucx_call *k, const void *data, size_t len)
{
    attnd_wire_in in;
    attnd_wire_in_flat(&in, data, len);
    attnd__client_ucx_finish(k, attnd__client_attend_decode_in(&in, &k->dst, &k->err));
}

static void on_reply_data(void *user_data, ucs_status_t status, size_t length)
{
    attnd__client_ucx_call *k = user_data;
    k->recv_req = NULL;
    if (status != UCS_OK)
        attnd__client_ucx_finish(k, attnd_error_set(&k->err, ATTND_ERR_UNAVAILABLE,
                                  "attend: receiving the reply over UCX: %s",
                                  ucs_status_string(status)));
    else
        decode_into(k, k->rbuf, length);
}

/* ---- rendezvous replies straight into the caller's buffers ----------------------------
 * A reply of the shape asked for has one layout, attnd_wire_reply_plan's
 * (the server encodes with the same function). When the reply's length is
 * exactly that layout's for the served model's d_v (or, for up-projected
 * and heads-form replies, for the d_v its length implies), a rendezvous reply is
 * received as a gather list: the framing before out (pre) into k, out's
 * data into dst->out, the framing between (mid) into k, lse's data into
 * dst->lse, so 4 MB of output is not copied twice. The framing received is
 * then compared with the planned bytes; any other reply takes the buffered
 * path and the full decoder. */

/* Plan a direct receive of `length` reply bytes; the number of gather
 * entries, 0 when the reply is not the expected layout. */
static size_t direct_plan(attnd__client_ucx_call *k, size_t length)
{
    const attnd__client_attend_dst *d = &k->dst;
    size_t rows;
    ucp_dt_iov_t *iov = (ucp_dt_iov_t *)k->riov;
    attnd_wire_reply_layout *l = &k->layout;
    const size_t es = attnd_dtype_size(d->out_dtype);

    _Static_assert(sizeof k->riov >= 4 * sizeof(ucp_dt_iov_t), "riov holds 4 entries");
    if (!es || d->n_seqs <= 0 || d->q_tokens <= 0 || d->n_q_heads <= 0)
        return 0;
    /* chosen lists (return_pages) follow lse in a layout of their own:
     * the buffered path decodes them */
    if (d->sparse && d->sparse->return_pages)
        return 0;
    rows = (size_t)d->n_seqs * (size_t)d->q_tokens * (size_t)d->n_q_heads;
    attnd_wire_reply_desc want = {
        .request_id = d->request_id,
        .out_dtype = d->out_dtype,
        .out_shape = {d->n_seqs, d->q_tokens, d->n_q_heads, k->d_v},
        .has_lse = d->lse != NULL,
        .lse_shape = {d->n_seqs, d->q_tokens, d->n_q_heads},
    };
    /* the served model's d_v; else (an up-projected or heads-form reply,
     * whose width the worker's W_UV sets) the width this length implies:
     * out's bytes are what is left after lse's and a little framing, so
     * the widths near (length - lse) / row bytes are tried, and taken only
     * when exactly one fits (else the buffered path decodes it) */
    want.out_shape[3] = k->d_v;
    attnd_wire_reply_plan(&want, l);
    if (!k->d_v || l->total != length) {
        const size_t lse_bytes = d->lse ? rows * sizeof(float) : 0;
        const int64_t c = length > lse_bytes ? (int64_t)((length - lse_bytes) / (rows * es)) : 0;
        int64_t fit = 0;
        int fits = 0;
        for (int64_t dv = c - 3; dv <= c; dv++) {
            if (dv <= 0)
                continue;
            want.out_shape[3] = dv;
            attnd_wire_reply_plan(&want, l);
            if (l->total == length) {
                fit = dv;
                fits++;
            }
        }
        if (fits != 1)
            return 0;
        want.out_shape[3] = fit;
        attnd_wire_reply_plan(&want, l);
    }
    if (l->out_bytes > d->out_capacity || (d->lse && rows > d->lse_capacity))
        return 0;
    size_t n = 0;
    iov[n++] = (ucp_dt_iov_t){k->pre_got, l->pre_len};
    iov[n++] = (ucp_dt_iov_t){d->out, l->out_bytes};
    if (d->lse) {
        iov[n++] = (ucp_dt_iov_t){k->mid_got, l->mid_len};
        iov[n++] = (ucp_dt_iov_t){d->lse, l->lse_bytes};
    }
    return n;
}

static void on_reply_direct(void *user_data, ucs_status_t status, size_t length)
{
    attnd__client_ucx_call *k = user_data;
    (void)length;
    k->recv_req = NULL;
    if (status != UCS_OK)
        attnd__client_ucx_finish(k, attnd_error_set(&k->err, ATTND_ERR_UNAVAILABLE,
                                  "attend: receiving the reply over UCX: %s",
                                  ucs_status_string(status)));
    else if (memcmp(k->pre_got, k->layout.pre, k->layout.pre_len) != 0 ||
             memcmp(k->mid_got, k->layout.mid, k->layout.mid_len) != 0)
        attnd__client_ucx_finish(k, attnd_error_set(&k->err, ATTND_ERR_INTERNAL,
                                  "AttendResponse: framing is not what attnd sends"));
    else
        attnd__client_ucx_finish(k, ATTND_OK);
}

ucs_status_t attnd__client_ucx_on_reply(void *arg, const void *header, size_t header_length,
                                        void *data, size_t length,
                                        const ucp_am_recv_param_t *param)
{
    attnd__client_ucx *u = arg;
    attnd__client_ucx_call *k;
    attnd_ucx_reply_hdr rh;
    attnd_ucx_hdr h;

    if (header_length < sizeof h)
        return UCS_OK;
    memset(&rh, 0, sizeof rh);
    memcpy(&rh, header, header_length < sizeof rh ? header_length : sizeof rh);
    h = rh.h;
    if (!(k = attnd__client_ucx_call_find(u, h.id)) || k->done || k->recv_req)
        return UCS_OK; /* withdrawn (deadline) or a duplicate: drop */
    if (length > u->max_message) { /* as gRPC's receive limit would */
        attnd__client_ucx_finish(k, attnd_error_set(&k->err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                  "reply: received message larger than max (%zu vs. %zu "
                                  "bytes of max_message_bytes)", length, u->max_message));
        return UCS_OK;
    }
    if (header_length >= sizeof rh && h.status == ATTND_OK) {
        k->timing.valid = 1;
        k->timing.queue_ns = rh.queue_ns;
        k->timing.validate_ns = rh.validate_ns;
        k->timing.kernel_ns = rh.kernel_ns;
        k->timing.fanout_ns = rh.fanout_ns;
        k->timing.encode_ns = rh.encode_ns;
    }
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        size_t n_iov = h.status == ATTND_OK ? direct_plan(k, length) : 0;
        if (n_iov) {
            k->direct = 1;
            attnd_ucxw_am_recv(&u->w, data, k->riov, n_iov, ucp_dt_make_iov(), on_reply_direct,
                               k, &k->recv_req);
            return UCS_INPROGRESS;
        }
        if (h.status != ATTND_OK || attnd__client_ucx_rbuf_get(u, k, length)) {
            attnd__client_ucx_finish(k, h.status != ATTND_OK
                          ? attnd_error_set(&k->err, h.status, "attend: a rendezvous error reply")
                          : attnd_error_set(&k->err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                            "attend: no memory for a %zu-byte reply", length));
            return UCS_OK;
        }
        attnd_ucxw_am_recv(&u->w, data, k->rbuf, length, ucp_dt_make_contig(1), on_reply_data,
                           k, &k->recv_req);
        return UCS_INPROGRESS;
    }
    if (h.status != ATTND_OK) {
        attnd_status st = h.status < 0 && h.status >= ATTND_ERR_UNAUTHENTICATED
                              ? (attnd_status)h.status
                              : ATTND_ERR_UNKNOWN;
        attnd__client_ucx_finish(k, attnd_error_set(&k->err, st, "%.*s", (int)(length < 1000 ? length : 1000),
                                  (const char *)data));
        return UCS_OK;
    }
    decode_into(k, data, length);
    return UCS_OK;
}

