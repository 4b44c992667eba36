/* One unary RPC over a pluck completion queue, plus what every call needs:
 * deadlines, gRPC status -> attnd_status, and protobuf-c <-> byte buffers.
 *
 * A unary call is one batch of all six client ops, started at once and
 * plucked by its tag; the queue is the call's own, so nothing else can be
 * on it and a pluck never waits behind another call. The call carries the
 * client's deadline; when it passes, gRPC completes the batch with
 * DEADLINE_EXCEEDED, so the pluck itself needs none.
 */
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "client_int.h"

gpr_timespec attnd__client_deadline(int64_t ms)
{
    if (ms <= 0)
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis(ms, GPR_TIMESPAN));
}

attnd_status attnd__client_grpc_status(grpc_status_code code, const grpc_slice *details,
                                       attnd_error *err)
{
    attnd_status st = (code >= 0 && code <= 16) ? (attnd_status)(-(int)code)
                                                  : ATTND_ERR_UNKNOWN;
    if (st == ATTND_OK)
        return ATTND_OK;
    size_t n = details ? GRPC_SLICE_LENGTH(*details) : 0;
    if (n == 0)
        return attnd_error_set(err, st, "%s (no details)", attnd_status_string(st));
    if (n >= ATTND_ERROR_MSG_MAX)
        n = ATTND_ERROR_MSG_MAX - 1;
    return attnd_error_set(err, st, "%.*s", (int)n, (const char *)GRPC_SLICE_START_PTR(*details));
}

grpc_byte_buffer *attnd__client_pack(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(n); /* gRPC aborts rather than fail */
    size_t w = protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    (void)w;
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

ProtobufCMessage *attnd__client_unpack(const ProtobufCMessageDescriptor *d, grpc_byte_buffer *bb,
                                       attnd_error *err)
{
    grpc_byte_buffer_reader rd;
    ProtobufCMessage *m;

    if (!grpc_byte_buffer_reader_init(&rd, bb)) {
        attnd_error_set(err, ATTND_ERR_INTERNAL, "%s: reply cannot be read", d->name);
        return NULL;
    }
    grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    m = protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    if (!m)
        attnd_error_set(err, ATTND_ERR_INTERNAL, "%s: reply is not such a message", d->name);
    return m;
}

/* ---- one unary call ----------------------------------------------------------- */

attnd_status attnd__client_rpc_start(attnd__client_rpc *r, attnd_client *c,
                                     attnd__client_method m, grpc_byte_buffer *send,
                                     attnd_error *err)
{
    grpc_op ops[6];
    grpc_call_error e;

    memset(r, 0, sizeof *r);
    r->send = send;
    r->details = grpc_empty_slice();
    grpc_metadata_array_init(&r->md_initial);
    grpc_metadata_array_init(&r->md_trailing);
    if (!send)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "%s: no memory for the request",
                               attnd__client_method_path(m));
    r->cq = grpc_completion_queue_create_for_pluck(NULL);
    if (!r->cq)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "%s: no memory for a completion queue",
                               attnd__client_method_path(m));
    r->call = grpc_channel_create_registered_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, r->cq,
                                                  c->methods[m],
                                                  attnd__client_deadline(c->opts.deadline_ms),
                                                  NULL);
    if (!r->call)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "%s: cannot create the call",
                               attnd__client_method_path(m));

    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    attnd__client_initial_md(c, &ops[0]);
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = r->send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &r->md_initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &r->recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &r->md_trailing;
    ops[5].data.recv_status_on_client.status = &r->status;
    ops[5].data.recv_status_on_client.status_details = &r->details;
    e = grpc_call_start_batch(r->call, ops, 6, r, NULL);
    if (e != GRPC_CALL_OK)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "%s: cannot start the call: %s",
                               attnd__client_method_path(m), grpc_call_error_to_string(e));
    r->started = 1;
    return ATTND_OK;
}

attnd_status attnd__client_rpc_finish(attnd__client_rpc *r, attnd_error *err)
{
    attnd_status st;

    if (!r->started)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "call: never started");
    if (!r->finished) {
        grpc_event ev = grpc_completion_queue_pluck(r->cq, r, gpr_inf_future(GPR_CLOCK_REALTIME),
                                                    NULL);
        r->finished = 1;
        if (ev.type != GRPC_OP_COMPLETE)
            return attnd_error_set(err, ATTND_ERR_INTERNAL, "call: completion queue failed");
        if (!ev.success && r->status == GRPC_STATUS_OK)
            return attnd_error_set(err, ATTND_ERR_INTERNAL, "call: batch failed");
    }
    st = attnd__client_grpc_status(r->status, &r->details, err);
    if (st)
        return st;
    if (!r->recv)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "call: status OK but no reply");
    return ATTND_OK;
}

void attnd__client_rpc_cleanup(attnd__client_rpc *r)
{
    if (r->started && !r->finished) {
        grpc_call_cancel(r->call, NULL);
        grpc_completion_queue_pluck(r->cq, r, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        r->finished = 1;
    }
    if (r->call)
        grpc_call_unref(r->call);
    if (r->cq) {
        grpc_completion_queue_shutdown(r->cq);
        grpc_completion_queue_destroy(r->cq);
    }
    if (r->send)
        grpc_byte_buffer_destroy(r->send);
    if (r->recv)
        grpc_byte_buffer_destroy(r->recv);
    grpc_slice_unref(r->details);
    grpc_metadata_array_destroy(&r->md_initial);
    grpc_metadata_array_destroy(&r->md_trailing);
    memset(r, 0, sizeof *r);
}

attnd_status attnd__client_unary(attnd_client *c, attnd__client_method m,
                                 const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d,
                                 ProtobufCMessage **reply_p, attnd_error *err)
{
    attnd__client_rpc r;
    attnd_status st;

    st = attnd__client_rpc_start(&r, c, m, attnd__client_pack(req), err);
    if (st == ATTND_OK)
        st = attnd__client_rpc_finish(&r, err);
    if (st == ATTND_OK) {
        *reply_p = attnd__client_unpack(d, r.recv, err);
        if (!*reply_p)
            st = ATTND_ERR_INTERNAL;
    }
    attnd__client_rpc_cleanup(&r);
    return st;
}

attnd_status attnd__client_unary_raw(attnd_client *c, attnd__client_method m, const void *data,
                                     size_t len, grpc_byte_buffer **reply_p, attnd_error *err)
{
    attnd__client_rpc r;
    attnd_status st;
    grpc_slice s = grpc_slice_from_copied_buffer(data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);

    grpc_slice_unref(s);
    st = attnd__client_rpc_start(&r, c, m, bb, err);
    if (st == ATTND_OK)
        st = attnd__client_rpc_finish(&r, err);
    if (st == ATTND_OK && reply_p) {
        *reply_p = r.recv;
        r.recv = NULL;
    }
    attnd__client_rpc_cleanup(&r);
    return st;
}
