/* AppendKV: a client stream of prefill KV chunks, applied all or nothing.
 *
 * Each chunk is validated and staged as it arrives: written into KV pages
 * but invisible to attention (the engine's attnd_engine_stage; in a worker
 * group, a stream that stages on every rank), so a prefill of many chunks never
 * sits in memory whole. A chunk must start where its layer ends as this
 * stream has it (committed length plus what the stream staged before).
 * At the client's half-close the stage commits, and the reply counts the
 * chunks and tokens committed. The first chunk that fails ends the call
 * with its status, as does a broken stream (client cancel, deadline,
 * server shutdown; gRPC ends the receive of a cancelled call with "no
 * message" as at a half-close, so grpc_call_failed_before_recv_message
 * tells them apart): the stage is aborted and nothing of the stream is
 * applied, so a retry of the whole stream starts from the same lengths.
 * A call that ends any other way aborts its stage when it is released
 * (attnd_srv_append_drop, from call.c). With --token-file every chunk's
 * session must be the caller's tenant's (else NOT_FOUND, as an unknown id).
 */
#include "srv.h"

void attnd_srv_append_start(attnd_srv_call *c)
{
    attnd_srv_call_recv(c);
}

void attnd_srv_append_drop(attnd_srv_call *c)
{
    if (!c->stage)
        return;
    if (c->srv->group)
        attnd_group_stream_close(c->stage);
    else
        attnd_engine_stage_close(c->stage);
    c->stage = NULL;
}

/* Stage one validated chunk, opening the call's stage on first use. */
static attnd_status stage_chunk(attnd_srv_call *c, const attnd_srv_append_req *r,
                                attnd_error *err)
{
    attnd_srv *srv = c->srv;
    attnd_status st;

    if (srv->group) {
        attnd_group_stream *gs = c->stage;
        if (!gs && (st = attnd_group_stream_open(srv->group, &gs, err)))
            return st;
        c->stage = gs;
        return attnd_group_stream_append(gs, &r->id, r->layer, r->start, r->n_tokens, r->dtype,
                                         r->kv, err);
    }
    attnd_engine_stage *es = c->stage;
    if (!es && (st = attnd_engine_stage_open(srv->engine, &es, err)))
        return st;
    c->stage = es;
    return attnd_engine_stage_append(es, &r->id, r->layer, r->start, r->n_tokens, r->dtype,
                                     r->kv, err);
}

/* Commit what the stream staged (nothing staged: nothing to do). */
static attnd_status commit(attnd_srv_call *c, uint64_t *chunks_p, uint64_t *tokens_p,
                           attnd_error *err)
{
    attnd_status st = ATTND_OK;
    *chunks_p = *tokens_p = 0;
    if (c->stage)
        st = c->srv->group ? attnd_group_stream_commit(c->stage, chunks_p, tokens_p, err)
                               : attnd_engine_stage_commit(c->stage, chunks_p, tokens_p, err);
    attnd_srv_append_drop(c);
    return st;
}

void attnd_srv_append_step(attnd_srv_call *c, int ok)
{
    attnd_srv *srv = c->srv;
    Attnd__V1__AppendKVRequest *m;
    attnd_srv_append_req req;
    attnd_error err;

    attnd_error_clear(&err);
    /* a cancelled call (the client's cancel, the deadline) also ends its
     * receive with no message: that is no half-close, nothing commits */
    if (!ok || (!c->recv && grpc_call_failed_before_recv_message(c->call))) {
        attnd_srv_append_drop(c);
        attnd_srv_call_finish(c, NULL, ATTND_ERR_CANCELLED,
                              "AppendKV: stream broken; nothing of it was applied");
        return;
    }
    if (!c->recv) { /* half-close: commit */
        Attnd__V1__AppendKVResponse resp = ATTND__V1__APPEND_KVRESPONSE__INIT;
        if (commit(c, &resp.chunks, &resp.tokens, &err)) {
            attnd_srv_call_fail(c, &err);
        } else {
            /* the engine waited for the log in sync mode (worker/TIERS.md) */
            resp.durability = (Attnd__V1__Durability)attnd_srv_durable_mode(srv->cfg);
            if (resp.durability == ATTND__V1__DURABILITY__DURABILITY_BATCH)
                resp.durable_window_ms = (uint32_t)srv->cfg->durable_window_ms;
            attnd_srv_call_finish(c, attnd_srv_pack(&resp.base), ATTND_OK, NULL);
        }
        return;
    }
    m = (Attnd__V1__AppendKVRequest *)attnd_srv_call_decode(
        c, &attnd__v1__append_kvrequest__descriptor, &err);
    if (!m || attnd_srv_validate_append(m, &srv->model, &req, &err) ||
        (c->tenant && attnd_engine_sessions_check(srv->engine, attnd_srv_call_owner(c),
                                                  &req.id, 1, 0, &err)) ||
        stage_chunk(c, &req, &err)) {
        attnd_srv_append_drop(c);
        attnd_srv_call_fail(c, &err);
        return;
    }
    attnd_srv_call_recv(c);
}
