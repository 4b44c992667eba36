/* The life of one call: its pooled object, the batches a handler starts,
 * and its end.
 *
 * A handler keeps at most one "op" batch in flight (SEND_INITIAL_METADATA
 * rides along with the first one); calls held open also have a
 * RECV_CLOSE_ON_SERVER batch of their own. attnd_srv_call_finish sends the
 * status (with the reply, for unary calls) and, unless already issued, the
 * RECV_CLOSE_ON_SERVER, in one batch; the call goes back to its thread's
 * pool once it is finishing and no batch is pending. Statuses travel as
 * negated attnd_status values (grpc code = -status). */
#include <stdlib.h>
#include <string.h>

#include <grpc/slice.h>

#include "srv.h"

/* ---- the call pool ------------------------------------------------------------ */

attnd_srv_call *attnd_srv_call_get(attnd_srv_thread *th, int method)
{
    attnd_srv_call *c = th->free_calls;
    if (c)
        th->free_calls = c->next;
    else if (!(c = malloc(sizeof *c)))
        return NULL;
    memset(c, 0, sizeof *c);
    c->th = th;
    c->method = method;
    c->op_tag.call = c;
    c->close_tag.call = c;
    c->close_tag.is_close = 1;
    grpc_metadata_array_init(&c->md);
    grpc_call_details_init(&c->details);
    th->live_calls++;
    return c;
}

static void held_unlink(attnd_srv_call *c)
{
    attnd_srv_thread *th = c->th;
    if (c->prev)
        c->prev->next = c->next;
    else
        th->watches = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    c->held = 0;
}

void attnd_srv_call_put(attnd_srv_call *c)
{
    attnd_srv_thread *th = c->th;
    attnd_srv_append_drop(c); /* an AppendKV stream that never committed */
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
        atomic_fetch_sub(&th->srv->active_calls, 1);
    }
    c->next = th->free_calls;
    th->free_calls = c;
    th->live_calls--;
}

void attnd_srv_call_maybe_release(attnd_srv_call *c)
{
    if (c->state == ATTND_SRV_CALL_FINISHING && c->pending == 0)
        attnd_srv_call_put(c);
}

/* ---- batches ------------------------------------------------------------------------- */

static int start_batch(attnd_srv_call *c, const grpc_op *ops, size_t n, attnd_srv_tag *tag)
{
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
    if (e != GRPC_CALL_OK) {
        /* a bug of ours, never the client's: log it and drop the call */
        fprintf(stderr, "attnd: %s: grpc_call_start_batch: %s\n",
                attnd_srv_methods[c->method].path, grpc_call_error_to_string(e));
        grpc_call_cancel(c->call, NULL);
        c->state = ATTND_SRV_CALL_FINISHING;
        return -1;
    }
    c->pending++;
    if (!tag->is_close)
        c->op_inflight = 1;
    return 0;
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

    if (c->state != ATTND_SRV_CALL_ACTIVE)
        return; /* dropped while starting an earlier batch */
    n = add_initial_md(c, &ops[0]);

    if (c->recv) {
        grpc_byte_buffer_destroy(c->recv);
        c->recv = NULL;
    }
    memset(&ops[n], 0, sizeof ops[n]);
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n].data.recv_message.recv_message = &c->recv;
    n++;
    start_batch(c, ops, n, &c->op_tag);
}

void attnd_srv_call_send(attnd_srv_call *c, grpc_byte_buffer *bb, int and_recv)
{
    grpc_op ops[3];
    size_t n;

    if (c->state != ATTND_SRV_CALL_ACTIVE) {
        grpc_byte_buffer_destroy(bb);
        return;
    }
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
    start_batch(c, ops, n, &c->op_tag);
}

void attnd_srv_call_hold_open(attnd_srv_call *c)
{
    attnd_srv_thread *th = c->th;
    grpc_op op;

    if (c->state != ATTND_SRV_CALL_ACTIVE)
        return;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    c->close_started = 1;
    if (start_batch(c, &op, 1, &c->close_tag))
        return;
    /* held open: the thread ends it when the server stops */
    c->held = 1;
    c->prev = NULL;
    c->next = th->watches;
    if (th->watches)
        th->watches->prev = c;
    th->watches = c;
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

    if (st != ATTND_OK && st != ATTND_ERR_CANCELLED)
        atomic_fetch_add(&c->th->srv->errors, 1);
    if (c->state != ATTND_SRV_CALL_ACTIVE || c->close_done) {
        /* cancelled under us: nobody to tell */
        if (bb)
            grpc_byte_buffer_destroy(bb);
        c->state = ATTND_SRV_CALL_FINISHING;
        return;
    }
    if (c->recv) {
        grpc_byte_buffer_destroy(c->recv);
        c->recv = NULL;
    }
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
    if (st != ATTND_OK && msg) {
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
    start_batch(c, ops, n, &c->op_tag);
    if (st != ATTND_OK && msg)
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
    attnd_srv_thread *th = c->th;
    const uint8_t *data;
    size_t len;
    ProtobufCMessage *m = NULL;

    if (!c->recv) {
        attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "request: missing %s message",
                        d->name);
        return NULL;
    }
    attnd_srv_arena_reset(&th->arena);
    if (attnd_srv_bb_flatten(c->recv, &th->flat, &data, &len, err) == ATTND_OK)
        m = attnd_srv_unpack(d, &th->arena, data, len, err);
    /* protobuf-c copied what it keeps into the arena */
    grpc_byte_buffer_destroy(c->recv);
    c->recv = NULL;
    return m;
}
