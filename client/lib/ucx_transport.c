/* libattnd's UCX transport for Attend: the same encoded AttendRequest and
 * AttendResponse as over gRPC, carried by ucp active messages framed as in
 * proto/attnd_ucx.h. This file: the calls, progress and waiting; the
 * reply handler is in ucx_reply.c, the handshake and endpoint in
 * ucx_connect.c.
 *
 * Calls: the sync forms (attnd_client_attend, AttendStream) send the
 * request as a gather list (attnd_wire_request_gather): framing from a stack
 * buffer, tensor bytes straight from the caller's q / new_kv, no copy of
 * ours. The async form must let the caller reuse q at once, so it sends
 * the packed copy from attend_wire.c. Both go with UCP_AM_SEND_FLAG_REPLY;
 * calls in flight sit in a list keyed by id, where the reply handler finds
 * them.
 *
 * Waiting (attnd_ucxw_wait): progress under the mutex while anything
 * happens or for ucx_spin_us, then arm the worker and sleep in poll() on
 * its event fd (at most 1 ms at a time, so that several waiting threads,
 * one of which may have drained the events the others slept on, all make
 * progress) and, for a server on this host, on its pidfd: the endpoint has
 * no UCX error handling there, so the server's exit is learnt that way.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/slice.h>

#include "attnd_clock.h"
#include "ucx_int.h"

/* How long a withdrawn call waits for UCX to give its send back. */
#define WITHDRAW_NS 200000000u

/* ---- the call list and reply buffers (under mu) -------------------------------------- */

static void call_link(attnd__client_ucx *u, attnd__client_ucx_call *k)
{
    k->prev = NULL;
    k->next = u->calls;
    if (u->calls)
        u->calls->prev = k;
    u->calls = k;
    k->listed = 1;
}

static void call_unlink(attnd__client_ucx *u, attnd__client_ucx_call *k)
{
    if (!k->listed)
        return;
    if (k->prev)
        k->prev->next = k->next;
    else
        u->calls = k->next;
    if (k->next)
        k->next->prev = k->prev;
    k->next = k->prev = NULL;
    k->listed = 0;
}

attnd__client_ucx_call *attnd__client_ucx_call_find(attnd__client_ucx *u, uint64_t id)
{
    for (attnd__client_ucx_call *k = u->calls; k; k = k->next)
        if (k->id == id)
            return k;
    return NULL;
}

/* A buffer of at least n bytes for k->rbuf, from the pool when one fits. */
int attnd__client_ucx_rbuf_get(attnd__client_ucx *u, attnd__client_ucx_call *k, size_t n)
{
    for (int i = 0; i < u->n_rbufs; i++)
        if (u->rcaps[i] >= n) {
            k->rbuf = u->rbufs[i];
            k->rcap = u->rcaps[i];
            u->rbufs[i] = u->rbufs[--u->n_rbufs];
            u->rcaps[i] = u->rcaps[u->n_rbufs];
            return 0;
        }
    k->rbuf = malloc(n ? n : 1);
    k->rcap = n;
    return k->rbuf ? 0 : -1;
}

static void rbuf_put(attnd__client_ucx *u, attnd__client_ucx_call *k)
{
    if (!k->rbuf)
        return;
    if (u->n_rbufs < RBUF_POOL) {
        u->rbufs[u->n_rbufs] = k->rbuf;
        u->rcaps[u->n_rbufs++] = k->rcap;
    } else {
        free(k->rbuf);
    }
    k->rbuf = NULL;
    k->rcap = 0;
}

static void on_sent(void *user_data, ucs_status_t status)
{
    attnd__client_ucx_call *k = user_data;
    k->send_req = NULL;
    k->send_done = 1;
    if (status != UCS_OK && !k->done)
        attnd__client_ucx_finish(k, attnd_error_set(&k->err, ATTND_ERR_UNAVAILABLE,
                                  "attend: sending over UCX: %s", ucs_status_string(status)));
}

void attnd__client_ucx_on_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    attnd__client_ucx *u = arg;
    (void)ep;
    u->failed = status;
}

/* ---- progress ---------------------------------------------------------------------------- */

typedef struct wait_ctx {
    attnd__client_ucx *u;
    const int *flag;
} wait_ctx;

static int wait_done(void *arg)
{
    const wait_ctx *x = arg;
    return *x->flag || x->u->failed != UCS_OK;
}

/* Wait until *flag (read under mu) or deadline_ns; 0, or -1 at the
 * deadline. A server on this host that exits fails the endpoint. */
static int wait_flag(attnd__client_ucx *u, const int *flag, uint64_t deadline_ns,
                     uint64_t spin_ns)
{
    wait_ctx x = {u, flag};
    int k = attnd_ucxw_wait(&u->w, wait_done, &x, deadline_ns, spin_ns, u->server_pidfd);
    if (k == 1) {
        attnd_ucxw_lock(&u->w);
        if (u->failed == UCS_OK)
            u->failed = UCS_ERR_CONNECTION_RESET; /* the server's process exited */
        attnd_ucxw_unlock(&u->w);
        return 0;
    }
    return k;
}

static uint64_t deadline_from(const attnd_client *c)
{
    int64_t ms = c->opts.deadline_ms > 0 ? c->opts.deadline_ms : (int64_t)1 << 40;
    return attnd_clock_ns() + (uint64_t)ms * 1000000u;
}

/* ---- calls -------------------------------------------------------------------------------- */

/* Send `count` elements of `datatype` at buffer (total bytes) as k's
 * request; k is set up for dst. */
static attnd_status send_request(attnd_client *c, attnd__client_ucx_call *k,
                                 const attnd__client_attend_dst *dst, const void *buffer,
                                 size_t count, ucp_datatype_t datatype, size_t total,
                                 attnd_error *err)
{
    attnd__client_ucx *u = c->ucx;

    k->dst = *dst;
    k->id = dst->request_id;
    attnd_error_clear(&k->err);
    pthread_mutex_lock(&c->model_mu);
    k->d_v = c->have_model ? c->model.d_v : 0;
    pthread_mutex_unlock(&c->model_mu);
    if (total > u->max_message)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "request: sent message larger than max (%zu vs. %zu bytes of "
                               "max_message_bytes)", total, u->max_message);
    k->hdr.id = k->id; /* the header lives in k until the send completes */
    k->hdr.deadline_ms = c->opts.deadline_ms <= 0 ? 0
                         : c->opts.deadline_ms > UINT32_MAX ? UINT32_MAX
                                                            : (uint32_t)c->opts.deadline_ms;

    attnd_ucxw_lock(&u->w);
    if (u->failed != UCS_OK) {
        attnd_ucxw_unlock(&u->w);
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                               "attend: UCX endpoint to %s failed: %s", u->address,
                               ucs_status_string(u->failed));
    }
    call_link(u, k);
    /* on_sent runs now (sent at once, or failed: the call then ends
     * UNAVAILABLE) or from progress */
    attnd_ucxw_am_send(u->ep, ATTND_UCX_AM_ATTEND, &k->hdr, sizeof k->hdr, buffer, count,
                       datatype, UCP_AM_SEND_FLAG_REPLY, on_sent, k, &k->send_req);
    attnd_ucxw_unlock(&u->w);
    return ATTND_OK;
}

attnd_status attnd__client_ucx_start(attnd_client *c, attnd__client_ucx_call *k,
                                     grpc_byte_buffer *bb, const attnd__client_attend_dst *dst,
                                     attnd_error *err)
{
    attnd_status st;

    memset(k, 0, sizeof *k);
    k->send = bb;
    if (!bb || bb->type != GRPC_BB_RAW || bb->data.raw.slice_buffer.count != 1) {
        st = attnd_error_set(err, ATTND_ERR_INTERNAL, "attend: request not in one slice");
        goto err_bb;
    }
    grpc_slice *s = &bb->data.raw.slice_buffer.slices[0];
    st = send_request(c, k, dst, GRPC_SLICE_START_PTR(*s), GRPC_SLICE_LENGTH(*s),
                      ucp_dt_make_contig(1), GRPC_SLICE_LENGTH(*s), err);
    if (st)
        goto err_bb;
    return ATTND_OK;

err_bb:
    if (bb)
        grpc_byte_buffer_destroy(bb);
    k->send = NULL;
    return st;
}

attnd_status attnd__client_ucx_attend(attnd_client *c, const attnd_attend_args *a,
                                      attnd_error *err)
{
    return attnd__client_ucx_attend_sparse(c, a, NULL, err);
}

attnd_status attnd__client_ucx_attend_sparse(attnd_client *c, const attnd_attend_args *a,
                                             attnd_sparse_args *sp, attnd_error *err)
{
    attnd__client_attend_msg msg;
    attnd__client_attend_dst dst;
    attnd__client_ucx_call k;
    attnd_wire_gather g;
    unsigned char frame_stack[2048], *frame = frame_stack;
    ucp_dt_iov_t iov[ATTND_WIRE_GATHER_MAX];
    attnd_status st;

    st = attnd__client_attend_prepare(c, a, &msg, &dst, err);
    if (st)
        return st;
    if ((st = attnd__client_attend_sparse_apply(&msg, &dst, sp, err)))
        goto out_msg;
    size_t bound = attnd_wire_request_frame_bound(&msg.req);
    if (bound > sizeof frame_stack && !(frame = malloc(bound))) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "attend: no memory for a %zu-byte request frame", bound);
        goto out_msg;
    }
    attnd_wire_request_gather(&msg.req, frame, &g);
    for (size_t i = 0; i < g.n; i++) {
        iov[i].buffer = (void *)g.e[i].p;
        iov[i].length = g.e[i].len;
    }
    memset(&k, 0, sizeof k);
    /* the caller's buffers and the frame outlive the send: wait returns
     * only once it completed or was cancelled */
    st = send_request(c, &k, &dst, iov, g.n, ucp_dt_make_iov(), g.total, err);
    if (st == ATTND_OK)
        st = attnd__client_ucx_wait(c, &k, err);
    if (frame != frame_stack)
        free(frame);
out_msg:
    attnd__client_attend_msg_cleanup(&msg);
    return st;
}

/* Withdraw k: unlist it, cancel what it has in flight and wait for that
 * (the buffers it points at are about to go). */
static void withdraw(attnd__client_ucx *u, attnd__client_ucx_call *k)
{
    uint64_t give_up = attnd_clock_ns() + WITHDRAW_NS;
    attnd_ucxw_lock(&u->w);
    call_unlink(u, k);
    if (k->send_req)
        ucp_request_cancel(u->w.worker, k->send_req);
    if (k->recv_req)
        ucp_request_cancel(u->w.worker, k->recv_req);
    while (k->send_req || k->recv_req) {
        ucp_worker_progress(u->w.worker);
        if ((k->send_req || k->recv_req) && !u->ep_closed && attnd_clock_ns() > give_up) {
            /* UCX cannot cancel a send the server has not taken (it is
             * frozen, or gone without a word): close the endpoint, which
             * ends every request on it; the client's later calls fail
             * UNAVAILABLE */
            if (u->failed == UCS_OK)
                u->failed = UCS_ERR_TIMED_OUT;
            u->ep_closed = 1;
            attnd_ucxw_ep_close(&u->w, u->ep, 1);
        }
    }
    rbuf_put(u, k);
    attnd_ucxw_unlock(&u->w);
}

attnd_status attnd__client_ucx_wait(attnd_client *c, attnd__client_ucx_call *k, attnd_error *err)
{
    attnd__client_ucx *u = c->ucx;
    uint64_t spin = (uint64_t)(c->opts.ucx_spin_us > 0 ? c->opts.ucx_spin_us : 0) * 1000u;
    attnd_status st;

    /* done is set with the reply; the send's completion may trail it */
    int timed_out = wait_flag(u, &k->done, deadline_from(c), spin);
    if (!timed_out && k->done && !k->send_done)
        timed_out = wait_flag(u, &k->send_done, deadline_from(c), spin);
    attnd_ucxw_lock(&u->w);
    int done = k->done;
    ucs_status_t failed = u->failed;
    attnd_ucxw_unlock(&u->w);
    withdraw(u, k);
    if (done) {
        st = k->st;
        if (st && err)
            *err = k->err;
    } else if (failed != UCS_OK) {
        st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "attend: UCX endpoint to %s failed: %s",
                             u->address, ucs_status_string(failed));
    } else {
        st = attnd_error_set(err, ATTND_ERR_DEADLINE_EXCEEDED,
                             "attend: no UCX reply from %s within %lld ms", u->address,
                             (long long)c->opts.deadline_ms);
    }
    (void)timed_out;
    if (k->send)
        grpc_byte_buffer_destroy(k->send);
    k->send = NULL;
    return st;
}

