/* Attend (unary) and AttendStream (one response per request, in order).
 *
 * One request is: decode into the thread's arena, validate, run the engine
 * on the thread's workspace, and encode the float32 result straight into
 * the reply in the asked dtype. After warm-up none of these steps allocates
 * in our code (gRPC allocates the reply slice). A failing request of a
 * stream ends the stream with its status. */
#include "srv.h"

/* Handle one AttendRequest in c->recv; *reply_p gets the reply. */
static attnd_status attend_one(attnd_srv_call *c, grpc_byte_buffer **reply_p,
                               attnd_error *err)
{
    attnd_srv_thread *th = c->th;
    attnd_srv *srv = th->srv;
    const Attnd__V1__AttendRequest *m;
    attnd_srv_attend_req req;
    const float *out = NULL, *lse = NULL;
    attnd_status st;

    m = (const Attnd__V1__AttendRequest *)attnd_srv_call_decode(
        c, &attnd__v1__attend_request__descriptor, err);
    if (!m)
        return err->code;
    st = attnd_srv_validate_attend(m, &srv->model, &th->arena.pc, &req, err);
    if (st)
        return st;
    st = attnd_engine_attend(srv->engine, &req.eng, &th->ws, &out, &lse, err);
    if (st)
        return st;
    attnd_srv_attend_reply r = {
        .request_id = req.request_id,
        .out_dtype = req.out_dtype,
        .out = out,
        .lse = req.eng.want_lse ? lse : NULL,
    };
    for (int i = 0; i < 4; i++)
        r.out_shape[i] = req.out_shape[i];
    for (int i = 0; i < 3; i++)
        r.lse_shape[i] = req.lse_shape[i];
    *reply_p = attnd_srv_attend_reply_pack(&r);
    return ATTND_OK;
}

void attnd_srv_attend_start(attnd_srv_call *c)
{
    grpc_byte_buffer *reply = NULL;
    attnd_error err;

    attnd_error_clear(&err);
    if (attend_one(c, &reply, &err)) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    attnd_srv_call_finish(c, reply, ATTND_OK, NULL);
}

void attnd_srv_attend_stream_start(attnd_srv_call *c)
{
    attnd_srv_call_recv(c);
}

void attnd_srv_attend_stream_step(attnd_srv_call *c, int ok)
{
    grpc_byte_buffer *reply = NULL;
    attnd_error err;

    if (!ok) {
        attnd_srv_call_finish(c, NULL, ATTND_ERR_CANCELLED, "AttendStream: stream broken");
        return;
    }
    if (!c->recv) { /* the client half-closed: done */
        attnd_srv_call_finish(c, NULL, ATTND_OK, NULL);
        return;
    }
    attnd_error_clear(&err);
    if (attend_one(c, &reply, &err)) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    attnd_srv_call_send(c, reply, 1);
}
