/* The life of one call: its pooled object, the batches a handler starts,
 * and its end.
 *
 * A handler keeps at most one "op" batch in flight (SEND_INITIAL_METADATA
 * rides along with the first one); calls held open also have a
 * RECV_CLOSE_ON_SERVER batch of their own. attnd_srv_call_finish sends the
 * status (with the reply, for unary calls) and, unless already issued, the
 * RECV_CLOSE_ON_SERVER, in one batch; the call goes back to the pool once
 * it is finishing and no batch is pending. Statuses travel as negated
 * attnd_status values (grpc code = -status).
 *
 * Handlers run on io threads and on executors (srv.h states who owns a
 * call when). Every function here that starts a batch does all its
 * bookkeeping first and touches the call no more once
 * grpc_call_start_batch is entered; when no batch can start, the call is
 * dropped here (back to the pool if nothing else is pending), so a caller
 * never touches the call after one of them either way. */
#include <stdlib.h>
#include <string.h>

#include <grpc/slice.h>

#include "attnd_assert.h"
#include "attnd_clock.h"
#include "attnd_log.h"
#include "srv.h"

/* ---- the call pool ------------------------------------------------------------ */

attnd_srv_call *attnd_srv_call_get(attnd_srv_thread *th, int method)
{
    attnd_srv *srv = th->srv;
    attnd_srv_call *c;

    pthread_mutex_lock(&srv->pool_mu);
    if ((c = srv->free_calls))
        srv->free_calls = c->next;
    srv->live_calls++;
    pthread_mutex_unlock(&srv->pool_mu);
    if (!c && !(c = malloc(sizeof *c))) {
        pthread_mutex_lock(&srv->pool_mu);
        srv->live_calls--;
        pthread_mutex_unlock(&srv->pool_mu);
        return NULL;
    }
    memset(c, 0, sizeof *c);
    c->srv = srv;
    c->th = th;
    c->method = method;
    c->op_tag.call = c;
    c->close_tag.call = c;
    c->close_tag.is_close = 1;
    c->final_st = ATTND_ERR_CANCELLED;
    grpc_metadata_array_init(&c->md);
    grpc_call_details_init(&c->details);
    return c;
}

/* Unlink a held-open call from srv->watches (caller holds watch_mu). */
static void held_unlink(attnd_srv_call *c)
{
    attnd_srv *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->watches = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    c->held = 0;
}

void attnd_srv_call_put(attnd_srv_call *c)
{
    attnd_srv *srv = c->srv;
    ATTND_ASSERT(c->pending == 0); /* no completion can still name it */
    /* an AppendKV stream that never committed; its handler (on an
     * executor) drops its stage before ending the call, so on an io thread
     * this finds none (closing a group's stage waits for the peers) */
    attnd_srv_append_drop(c);
    if (c->held)
        held_unlink(c);
    for (size_t i = 0; i < c->n_trailer; i++)
        grpc_slice_unref(c->trailer[i].value);
    if (c->recv)
        grpc_byte_buffer_destroy(c->recv);
    if (c->send)
        grpc_byte_buffer_destroy(c->send);
    if (c->call)
        grpc_call_unref(c->call);
    grpc_metadata_array_destroy(&c->md);
    grpc_call_details_destroy(&c->details);
    if (c->counted) {
        c->counted = 0;
        atomic_fetch_sub(&srv->active_calls, 1);
    }
    if (c->mx_live) { /* an accepted call ends: count it once */
        c->mx_live = 0;
        attnd_srv_mx_request(attnd_srv_metrics_local(srv->metrics), c->method, c->final_st,
                             attnd_clock_ns() - c->t_start_ns);
    }
    pthread_mutex_lock(&srv->pool_mu);
    c->next = srv->free_calls;
    srv->free_calls = c;
    srv->live_calls--;
    pthread_mutex_unlock(&srv->pool_mu);
}

void attnd_srv_call_maybe_release(attnd_srv_call *c)
{
    if (c->state == ATTND_SRV_CALL_FINISHING && c->pending == 0)
        attnd_srv_call_put(c);
}

/* Count a reply message's bytes (bb may be NULL). */
static void count_tx(attnd_srv_call *c, grpc_byte_buffer *bb)
{
    attnd_srv_mshard *mx = bb ? attnd_srv_metrics_local(c->srv->metrics) : NULL;
    if (mx)
        attnd_srv_mx_add(&mx->tx_bytes[ATTND_SRV_MX_GRPC], grpc_byte_buffer_length(bb));
}

/* No batch could start: the call is over for us. */
static void drop(attnd_srv_call *c)
{
    c->state = ATTND_SRV_CALL_FINISHING;
    attnd_srv_call_maybe_release(c);
}

/* ---- batches ------------------------------------------------------------------------- */

/* Start a batch. The counters are set before grpc_call_start_batch, whose
 * completion may run on the io thread before it returns; 0 then, and the
 * caller must not touch c. -1 (a bug of ours, never the client's: logged,
 * the call cancelled) with the counters restored and c still the
 * caller's. */
static int start_batch(attnd_srv_call *c, const grpc_op *ops, size_t n, attnd_srv_tag *tag)
{
    grpc_call *call = c->call;
    const char *path = attnd_srv_methods[c->method].path;

    c->pending++;
    if (!tag->is_close)
        c->op_inflight = 1;
    grpc_call_error e = grpc_call_start_batch(call, ops, n, tag, NULL);
    if (e == GRPC_CALL_OK)
        return 0;
    /* no completion will come: c is still ours */
    c->pending--;
    if (!tag->is_close)
        c->op_inflight = 0;
    attnd_log_error("rpc", "%s: grpc_call_start_batch: %s", path, grpc_call_error_to_string(e));
    grpc_call_cancel(call, NULL);
    return -1;
}

static size_t add_initial_md(attnd_srv_call *c, grpc_op *op)
{
    if (c->md_sent)
        return 0;
    memset(op, 0, sizeof *op);
    op->op = GRPC_OP_SEND_INITIAL_METADATA;
    c->md_sent = 1;
    return 1;
}

void attnd_srv_call_recv(attnd_srv_call *c)
{
    grpc_op ops[2];
    size_t n;

    if (c->state != ATTND_SRV_CALL_ACTIVE) {
        drop(c);
        return;
    }
    n = add_initial_md(c, &ops[0]);

    if (c->recv) {
        grpc_byte_buffer_destroy(c->recv);
        c->recv = NULL;
    }
    memset(&ops[n], 0, sizeof ops[n]);
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n].data.recv_message.recv_message = &c->recv;
    n++;
    if (start_batch(c, ops, n, &c->op_tag))
        drop(c);
}

void attnd_srv_call_send(attnd_srv_call *c, grpc_byte_buffer *bb, int and_recv)
{
    grpc_op ops[3];
    size_t n;

    if (c->state != ATTND_SRV_CALL_ACTIVE) {
        grpc_byte_buffer_destroy(bb);
        drop(c);
        return;
    }
    count_tx(c, bb);
    n = add_initial_md(c, &ops[0]);

    if (c->recv) {
        grpc_byte_buffer_destroy(c->recv);
        c->recv = NULL;
    }
    c->send = bb;
    memset(&ops[n], 0, sizeof ops[n]);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = bb;
    n++;
    if (and_recv) {
        memset(&ops[n], 0, sizeof ops[n]);
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n].data.recv_message.recv_message = &c->recv;
        n++;
    }
    if (start_batch(c, ops, n, &c->op_tag))
        drop(c); /* c->send goes with the call */
}

int attnd_srv_call_hold_open(attnd_srv_call *c)
{
    attnd_srv *srv = c->srv;
    grpc_op op;

    if (c->state != ATTND_SRV_CALL_ACTIVE) {
        drop(c);
        return -1;
    }
    /* listed first: the close may complete (on this thread, under
     * watch_mu, so after we return) and then finds it listed */
    c->held = 1;
    c->prev = NULL;
    c->next = srv->watches;
    if (srv->watches)
        srv->watches->prev = c;
    srv->watches = c;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    c->close_started = 1;
    if (start_batch(c, &op, 1, &c->close_tag)) {
        c->close_started = 0;
        drop(c); /* unlinks it */
        return -1;
    }
    return 0;
}

void attnd_srv_call_add_trailer(attnd_srv_call *c, const char *key, const char *value)
{
    if (c->n_trailer >= sizeof c->trailer / sizeof c->trailer[0])
        return;
    grpc_metadata *md = &c->trailer[c->n_trailer++];
    memset(md, 0, sizeof *md);
    md->key = grpc_slice_from_static_string(key);
    md->value = grpc_slice_from_copied_string(value);
}

void attnd_srv_call_finish(attnd_srv_call *c, grpc_byte_buffer *bb, attnd_status st,
                           const char *msg)
{
    grpc_op ops[4];
    size_t n;
    grpc_slice details;
    int with_details = st != ATTND_OK && msg;

    if (st != ATTND_OK && st != ATTND_ERR_CANCELLED) {
        atomic_fetch_add(&c->srv->errors, 1);
        if (c->tenant)
            atomic_fetch_add(&c->tenant->errors, 1);
    }
    if (st != ATTND_OK) /* per request: debug only */
        attnd_log_req(ATTND_LOG_DEBUG, "rpc", c->request_id, "%s: %s: %s",
                      attnd_srv_methods[c->method].path, attnd_status_string(st),
                      msg ? msg : "");
    if (c->state != ATTND_SRV_CALL_ACTIVE || c->close_done) {
        /* cancelled under us: nobody to tell */
        if (bb)
            grpc_byte_buffer_destroy(bb);
        drop(c);
        return;
    }
    if (c->recv) {
        grpc_byte_buffer_destroy(c->recv);
        c->recv = NULL;
    }
    c->final_st = st;
    count_tx(c, bb);
    n = add_initial_md(c, &ops[0]);
    if (bb) {
        c->send = bb;
        memset(&ops[n], 0, sizeof ops[n]);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = bb;
        n++;
    }
    memset(&ops[n], 0, sizeof ops[n]);
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)(-st);
    ops[n].data.send_status_from_server.trailing_metadata_count = c->n_trailer;
    ops[n].data.send_status_from_server.trailing_metadata = c->n_trailer ? c->trailer : NULL;
    if (with_details) {
        details = grpc_slice_from_copied_string(msg);
        ops[n].data.send_status_from_server.status_details = &details;
    }
    n++;
    if (!c->close_started) {
        memset(&ops[n], 0, sizeof ops[n]);
        ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        ops[n].data.recv_close_on_server.cancelled = &c->cancelled;
        c->close_started = 1;
        n++;
    }
    c->state = ATTND_SRV_CALL_FINISHING;
    if (start_batch(c, ops, n, &c->op_tag))
        drop(c);
    /* gRPC took its own reference to the details */
    if (with_details)
        grpc_slice_unref(details);
}

void attnd_srv_call_fail(attnd_srv_call *c, const attnd_error *err)
{
    attnd_status st = err->code ? err->code : ATTND_ERR_INTERNAL;
    attnd_srv_call_finish(c, NULL, st, err->msg[0] ? err->msg : attnd_status_string(st));
}

ProtobufCMessage *attnd_srv_call_decode(attnd_srv_call *c, const ProtobufCMessageDescriptor *d,
                                        attnd_error *err)
{
    attnd_srv_ctx *x = c->x;
    const uint8_t *data;
    size_t len;
    ProtobufCMessage *m = NULL;

    if (!c->recv) {
        attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "request: missing %s message",
                        d->name);
        return NULL;
    }
    attnd_srv_mshard *mx = attnd_srv_metrics_local(c->srv->metrics);
    if (mx)
        attnd_srv_mx_add(&mx->rx_bytes[ATTND_SRV_MX_GRPC], grpc_byte_buffer_length(c->recv));
    attnd_srv_arena_reset(&x->arena);
    if (attnd_srv_bb_flatten(c->recv, &x->flat, &data, &len, err) == ATTND_OK)
        m = attnd_srv_unpack(d, &x->arena, data, len, err);
    /* protobuf-c copied what it keeps into the arena */
    grpc_byte_buffer_destroy(c->recv);
    c->recv = NULL;
    return m;
}

void attnd_srv_ctx_init(attnd_srv_ctx *x)
{
    memset(x, 0, sizeof *x);
    attnd_engine_ws_init(&x->ws);
    attnd_srv_arena_init(&x->arena, 0);
}

void attnd_srv_ctx_cleanup(attnd_srv_ctx *x)
{
    attnd_engine_ws_cleanup(&x->ws);
    attnd_srv_arena_cleanup(&x->arena);
    attnd_srv_buf_cleanup(&x->flat);
}
