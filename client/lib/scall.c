/* One streaming RPC (AppendKV, AttendStream) over a pluck completion queue.
 *
 * The call is created without a deadline and each send or receive waits at
 * most deadline_ms: a prefill of many chunks or a decode loop of many steps
 * may run far longer than one call's deadline, but no single message may
 * stall. When a wait times out the call is cancelled and drained, and the
 * caller gets DEADLINE_EXCEEDED.
 *
 * Every batch is plucked before the function that started it returns, so
 * no batch is in flight between calls and cleanup knows what to drain. The
 * status is received last, in the way gRPC's own clients do it: after the
 * half-close, or once a send or receive shows the server ended the call.
 */
#include <string.h>

#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "client_int.h"

enum { PLUCK_OK = 1, PLUCK_FAILED = 0, PLUCK_TIMEOUT = -1 };

/* Pluck tag within the client's deadline; on timeout cancel the call and
 * drain the tag (a cancelled batch always completes). */
static int pluck(attnd__client_scall *s, void *tag)
{
    grpc_event ev = grpc_completion_queue_pluck(s->cq, tag,
                                                attnd__client_deadline(s->c->opts.deadline_ms),
                                                NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT) {
        grpc_call_cancel_with_status(s->call, GRPC_STATUS_DEADLINE_EXCEEDED,
                                     "attnd client: no progress within deadline_ms", NULL);
        grpc_completion_queue_pluck(s->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        return PLUCK_TIMEOUT;
    }
    return ev.type == GRPC_OP_COMPLETE && ev.success ? PLUCK_OK : PLUCK_FAILED;
}

static attnd_status timed_out(attnd__client_scall *s, const char *what, attnd_error *err)
{
    return attnd_error_set(err, ATTND_ERR_DEADLINE_EXCEEDED,
                           "%s: no progress within %lld ms; the stream was cancelled", what,
                           (long long)s->c->opts.deadline_ms);
}

static attnd_status ended(attnd__client_scall *s, const char *what, attnd_error *err);

attnd_status attnd__client_scall_open(attnd__client_scall *s, attnd_client *c,
                                      attnd__client_method m, attnd_error *err)
{
    grpc_op ops[1];
    grpc_call_error e;
    const char *path = attnd__client_method_path(m);

    memset(s, 0, sizeof *s);
    s->c = c;
    s->details = grpc_empty_slice();
    grpc_metadata_array_init(&s->md_initial);
    grpc_metadata_array_init(&s->md_trailing);
    s->cq = grpc_completion_queue_create_for_pluck(NULL);
    if (!s->cq)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "%s: no memory for a completion queue", path);
    s->call = grpc_channel_create_registered_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq,
                                                  c->methods[m],
                                                  gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (!s->call)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "%s: cannot create the call", path);

    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    attnd__client_initial_md(c, &ops[0]);
    e = grpc_call_start_batch(s->call, ops, 1, &s->tag_open, NULL);
    if (e != GRPC_CALL_OK)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "%s: cannot start the call: %s", path,
                               grpc_call_error_to_string(e));
    switch (pluck(s, &s->tag_open)) {
    case PLUCK_OK:
        return ATTND_OK;
    case PLUCK_TIMEOUT:
        return timed_out(s, path, err);
    default:
        return ended(s, path, err);
    }
}

/* Start the batch that receives the status (and the initial metadata,
 * unless a receive took it already), as gRPC's own clients do once they
 * are done writing or a write failed. Why not at open: with gRPC 1.51, a
 * status batch started before the first send never completed when the
 * server ended the call while the client was still sending (its
 * initial-metadata op never reached the transport; GRPC_TRACE=http shows
 * only RECV_TRAILING_METADATA), so AppendKV hung until the deadline. */
static attnd_status start_status(attnd__client_scall *s, attnd_error *err)
{
    grpc_op ops[2];
    size_t n = 0;
    grpc_call_error e;

    memset(ops, 0, sizeof ops);
    if (!s->md_received) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->md_initial;
    }
    ops[n].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[n].data.recv_status_on_client.trailing_metadata = &s->md_trailing;
    ops[n].data.recv_status_on_client.status = &s->status;
    ops[n++].data.recv_status_on_client.status_details = &s->details;
    e = grpc_call_start_batch(s->call, ops, n, &s->tag_status, NULL);
    if (e != GRPC_CALL_OK)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "stream status: cannot start: %s",
                               grpc_call_error_to_string(e));
    s->md_received = 1;
    s->status_started = 1;
    return ATTND_OK;
}

attnd_status attnd__client_scall_status(attnd__client_scall *s, attnd_error *err)
{
    if (!s->call)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "stream: never opened");
    if (!s->status_started) {
        attnd_status st = start_status(s, err);
        if (st)
            return st;
    }
    if (!s->status_done) {
        int r = pluck(s, &s->tag_status);
        s->status_done = 1;
        if (r == PLUCK_TIMEOUT)
            return timed_out(s, "stream status", err);
    }
    return attnd__client_grpc_status(s->status, &s->details, err);
}

/* A batch failed: the server ended the call; report why. */
static attnd_status ended(attnd__client_scall *s, const char *what, attnd_error *err)
{
    attnd_status st = attnd__client_scall_status(s, err);
    if (st == ATTND_OK)
        st = attnd_error_set(err, ATTND_ERR_UNKNOWN, "%s: the server ended the stream", what);
    return st;
}

attnd_status attnd__client_scall_send(attnd__client_scall *s, grpc_byte_buffer *bb, int close,
                                      attnd_error *err)
{
    grpc_op ops[2];
    size_t n = 0;
    grpc_call_error e;

    if (s->status_done)
        return ended(s, "send", err);
    memset(ops, 0, sizeof ops);
    if (bb) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = bb;
    }
    if (close && !s->half_closed)
        ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    if (n == 0)
        return ATTND_OK;
    e = grpc_call_start_batch(s->call, ops, n, &s->tag_send, NULL);
    if (e != GRPC_CALL_OK)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "send: cannot start: %s",
                               grpc_call_error_to_string(e));
    if (close)
        s->half_closed = 1;
    switch (pluck(s, &s->tag_send)) {
    case PLUCK_OK:
        return ATTND_OK;
    case PLUCK_TIMEOUT:
        return timed_out(s, "send", err);
    default:
        return ended(s, "send", err);
    }
}

attnd_status attnd__client_scall_recv(attnd__client_scall *s, grpc_byte_buffer **bb_p,
                                      attnd_error *err)
{
    grpc_op ops[2];
    size_t n = 0;
    grpc_call_error e;

    *bb_p = NULL;
    if (s->status_done)
        return attnd__client_scall_status(s, err);
    memset(ops, 0, sizeof ops);
    if (!s->md_received) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->md_initial;
    }
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = bb_p;
    e = grpc_call_start_batch(s->call, ops, n, &s->tag_recv, NULL);
    if (e != GRPC_CALL_OK)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "receive: cannot start: %s",
                               grpc_call_error_to_string(e));
    s->md_received = 1;
    switch (pluck(s, &s->tag_recv)) {
    case PLUCK_OK:
        if (*bb_p)
            return ATTND_OK;
        return attnd__client_scall_status(s, err); /* the stream ended */
    case PLUCK_TIMEOUT:
        if (*bb_p) {
            grpc_byte_buffer_destroy(*bb_p);
            *bb_p = NULL;
        }
        return timed_out(s, "receive", err);
    default:
        if (*bb_p) {
            grpc_byte_buffer_destroy(*bb_p);
            *bb_p = NULL;
        }
        return ended(s, "receive", err);
    }
}

void attnd__client_scall_cleanup(attnd__client_scall *s)
{
    if (s->call && !s->status_done) {
        /* still open: cancel, and take the status so the queue is empty */
        grpc_call_cancel(s->call, NULL);
        attnd_error ignored;
        if (s->status_started || start_status(s, &ignored) == ATTND_OK)
            grpc_completion_queue_pluck(s->cq, &s->tag_status,
                                        gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    }
    if (s->call)
        grpc_call_unref(s->call);
    if (s->cq) {
        grpc_completion_queue_shutdown(s->cq);
        grpc_completion_queue_destroy(s->cq);
    }
    grpc_slice_unref(s->details);
    grpc_metadata_array_destroy(&s->md_initial);
    grpc_metadata_array_destroy(&s->md_trailing);
    memset(s, 0, sizeof *s);
}
