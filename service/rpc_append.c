/* AppendKV: a client stream of prefill KV chunks.
 *
 * Each chunk is validated and applied as it arrives (the engine appends it
 * all or nothing), so a prefill of many chunks never sits in memory whole.
 * The first chunk that fails ends the call with its status; the chunks and
 * tokens applied before it travel back as trailing metadata
 * (attnd-chunks-applied, attnd-tokens-applied) so the client knows where to
 * resume. When the client half-closes, the reply counts every chunk. */
#include <inttypes.h>

#include "srv.h"

void attnd_srv_append_start(attnd_srv_call *c)
{
    attnd_srv_call_recv(c);
}

static void fail_with_progress(attnd_srv_call *c, const attnd_error *err)
{
    char v[24];
    snprintf(v, sizeof v, "%" PRIu64, c->chunks);
    attnd_srv_call_add_trailer(c, "attnd-chunks-applied", v);
    snprintf(v, sizeof v, "%" PRIu64, c->tokens);
    attnd_srv_call_add_trailer(c, "attnd-tokens-applied", v);
    attnd_srv_call_fail(c, err);
}

void attnd_srv_append_step(attnd_srv_call *c, int ok)
{
    attnd_srv *srv = c->srv;
    Attnd__V1__AppendKVRequest *m;
    attnd_srv_append_req req;
    attnd_error err;

    if (!ok) {
        attnd_srv_call_finish(c, NULL, ATTND_ERR_CANCELLED, "AppendKV: stream broken");
        return;
    }
    if (!c->recv) { /* half-close: every chunk applied */
        Attnd__V1__AppendKVResponse resp = ATTND__V1__APPEND_KVRESPONSE__INIT;
        resp.chunks = c->chunks;
        resp.tokens = c->tokens;
        attnd_srv_call_finish(c, attnd_srv_pack(&resp.base), ATTND_OK, NULL);
        return;
    }
    attnd_error_clear(&err);
    m = (Attnd__V1__AppendKVRequest *)attnd_srv_call_decode(
        c, &attnd__v1__append_kvrequest__descriptor, &err);
    if (!m || attnd_srv_validate_append(m, &srv->model, &req, &err) ||
        (srv->group ? attnd_group_append(srv->group, &req.id, req.layer, req.start,
                                         req.n_tokens, req.dtype, req.kv, &err)
                    : attnd_engine_append(srv->engine, &req.id, req.layer, req.start,
                                          req.n_tokens, req.dtype, req.kv, &err))) {
        fail_with_progress(c, &err);
        return;
    }
    c->chunks++;
    c->tokens += req.n_tokens;
    attnd_srv_call_recv(c);
}
