/* Attend (unary) and AttendStream (one response per request, in order).
 *
 * Both run on the executors (srv.h). One request is: decode in place
 * (attnd_wire; what the executor's arena gets is the message's arrays, not
 * its tensors), validate, run the engine on its workspace, and encode the
 * float32 result straight into
 * the reply in the asked dtype. After warm-up none of these steps allocates
 * in our code (gRPC allocates the reply slice). A failing request of a
 * stream ends the stream with its status. */
#include <grpc/support/time.h>

#include "attnd_clock.h"
#include "attend_exec.h"

/* Trailing-metadata key of the durability of a call's new KV. */
#define ATTND_SRV_DURABILITY_KEY "attnd-durability"

/* Handle one AttendRequest in c->recv; *reply_p gets the reply and *t_p
 * the call's timings, reply encoding included. The work
 * itself is attnd_srv_attend_exec, shared with the UCX endpoint. */
static attnd_status attend_one(attnd_srv_call *c, grpc_byte_buffer **reply_p,
                               attnd_srv_attend_times *t_p, attnd_error *err)
{
    attnd_srv_exec_ctx x = {.srv = c->srv, .ws = &c->x->ws, .arena = &c->x->arena,
                            .owner = attnd_srv_call_owner(c)};
    gpr_timespec left = gpr_time_sub(gpr_convert_clock_type(c->deadline, GPR_CLOCK_MONOTONIC),
                                     gpr_now(GPR_CLOCK_MONOTONIC));
    if (gpr_time_cmp(c->deadline, gpr_inf_future(c->deadline.clock_type)) != 0)
        x.time_left_ms = gpr_time_to_millis(left) > 0 ? gpr_time_to_millis(left) : 1;
    attnd_srv_attend_result res;
    uint64_t t_arrival = c->t_event_ns ? c->t_event_ns : attnd_clock_ns();
    attnd_status st;

    /* decoded in place: the tensors stay in the message's slices, which
     * live until the engine is done with them */
    st = attnd_srv_attend_exec_bb(&x, c->recv, t_arrival, &res, err);
    c->request_id = res.request_id;
    if (c->recv) {
        grpc_byte_buffer_destroy(c->recv);
        c->recv = NULL;
    }
    if (st)
        return st;
    uint64_t t_pack = attnd_clock_ns();
    *reply_p = attnd_srv_attend_reply_pack(&res.reply);
    *t_p = res.t;
    t_p->t_encode_ns = attnd_clock_ns() - t_pack;
    return ATTND_OK;
}

/* The server-side split of a unary Attend, as trailing metadata
 * ATTND_SRV_TIMING_KEY = "q=<ns>,v=<ns>,k=<ns>,f=<ns>,e=<ns>,s=<ns>": queue (from
 * the io thread taking the call, through the executor queue, to the end of
 * decoding the request), validation,
 * kernel (the engine's attend; a group leader's own share), the rest of a
 * group call (f: scatter, waiting for peers, combine; 0 on one rank),
 * reply encoding, and the sparse page selection (s: part of k; 0 without
 * a topk-pages layer). libattnd reads it (attnd_call_wait_timed); attnd-bench
 * subtracts it from the client's latency to show the network's share. */
static void add_timing_trailer(attnd_srv_call *c, const attnd_srv_attend_times *t)
{
    char v[160];
    snprintf(v, sizeof v, "q=%llu,v=%llu,k=%llu,f=%llu,e=%llu,s=%llu",
             (unsigned long long)(t->t_queue_ns + t->t_decode_ns),
             (unsigned long long)t->t_validate_ns,
             (unsigned long long)t->t_kernel_ns, (unsigned long long)t->t_fanout_ns,
             (unsigned long long)t->t_encode_ns, (unsigned long long)t->t_select_ns);
    attnd_srv_call_add_trailer(c, ATTND_SRV_TIMING_KEY, v);
}

/* With --durable: how the call's new KV (if any) is durable, as trailing
 * metadata ATTND_SRV_DURABILITY_KEY = "sync" (in the log before the reply)
 * or "batch;window-ms=N" (within N ms): the reply says which
 * (worker/TIERS.md). No trailer: not durable. */
static void add_durability_trailer(attnd_srv_call *c)
{
    const attnd_srv_config *cfg = c->th->srv->cfg;
    char v[48];
    switch (attnd_srv_durable_mode(cfg)) {
    case ATTND_ENGINE_DURABLE_SYNC:
        attnd_srv_call_add_trailer(c, ATTND_SRV_DURABILITY_KEY, "sync");
        break;
    case ATTND_ENGINE_DURABLE_BATCH:
        snprintf(v, sizeof v, "batch;window-ms=%d", (int)cfg->durable_window_ms);
        attnd_srv_call_add_trailer(c, ATTND_SRV_DURABILITY_KEY, v);
        break;
    }
}

void attnd_srv_attend_start(attnd_srv_call *c)
{
    grpc_byte_buffer *reply = NULL;
    attnd_srv_attend_times t;
    attnd_error err;

    attnd_error_clear(&err);
    if (attend_one(c, &reply, &t, &err)) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    add_timing_trailer(c, &t);
    attnd_srv_attend_times_record(attnd_srv_metrics_local(c->srv->metrics), &t);
    add_durability_trailer(c);
    attnd_srv_call_finish(c, reply, ATTND_OK, NULL);
}

void attnd_srv_attend_stream_start(attnd_srv_call *c)
{
    attnd_srv_call_recv(c);
}

void attnd_srv_attend_stream_step(attnd_srv_call *c, int ok)
{
    grpc_byte_buffer *reply = NULL;
    attnd_srv_attend_times t;
    attnd_error err;

    if (!ok) {
        attnd_srv_call_finish(c, NULL, ATTND_ERR_CANCELLED, "AttendStream: stream broken");
        return;
    }
    if (!c->recv) { /* the client half-closed: done */
        add_durability_trailer(c);
        attnd_srv_call_finish(c, NULL, ATTND_OK, NULL);
        return;
    }
    attnd_error_clear(&err);
    if (attend_one(c, &reply, &t, &err)) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    attnd_srv_attend_times_record(attnd_srv_metrics_local(c->srv->metrics), &t);
    attnd_srv_call_send(c, reply, 1);
}
