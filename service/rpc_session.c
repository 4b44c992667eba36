/* CreateSession and CloseSession: a session is one sequence's KV across all
 * layers. CreateSession reserves pages for max_tokens (when given), gives
 * the session its sparse policy (when given: checked by the engine, which
 * names the field), and answers the 16-byte id with the full ModelInfo, so
 * a client learns every shape it must send from one call. With
 * --token-file the session is bound to the caller's tenant (on every rank
 * of a group) and counts against its limits; to any other tenant it does
 * not exist (NOT_FOUND, as an unknown id: its existence is not revealed).
 * A tenant's session may have a sparse policy: its quota counts what the
 * policy reserves and gets back what streaming frees, on every rank of a
 * group. */
#include <stdlib.h>

#include "srv.h"

/* Create the session of a validated request (with its policy, if any)
 * for owner (0: none). */
static attnd_status create(attnd_srv *srv, const Attnd__V1__CreateSessionRequest *m,
                           attnd_srv_create_req *req, uint64_t owner, attnd_session_id *id,
                           attnd_error *err)
{
    if (!req->has_policy)
        return srv->group ? attnd_group_session_create_owned(srv->group, owner,
                                                             req->max_tokens, id, err)
                          : attnd_engine_session_create_owned(srv->engine, owner,
                                                              req->max_tokens, NULL, id, err);
    attnd_policy_rule *rules = NULL;
    if (m->n_policy_table && !(rules = calloc(m->n_policy_table, sizeof *rules)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "policy_table: no memory for %zu rules", m->n_policy_table);
    attnd_srv_create_rules(m, rules, req);
    attnd_status st =
        srv->group ? attnd_group_session_create_policy_owned(srv->group, owner, req->max_tokens,
                                                             &req->policy, id, err)
                   : attnd_engine_session_create_policy_owned(srv->engine, owner,
                                                              req->max_tokens, &req->policy,
                                                              NULL, id, err);
    free(rules);
    return st;
}

void attnd_srv_create_session_start(attnd_srv_call *c)
{
    attnd_srv *srv = c->srv;
    Attnd__V1__CreateSessionRequest *m;
    attnd_srv_create_req req;
    attnd_session_id id;
    attnd_error err;

    attnd_error_clear(&err);
    m = (Attnd__V1__CreateSessionRequest *)attnd_srv_call_decode(
        c, &attnd__v1__create_session_request__descriptor, &err);
    if (!m || attnd_srv_validate_create(m, &srv->model, &req, &err) ||
        create(srv, m, &req, attnd_srv_call_owner(c), &id, &err)) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    Attnd__V1__CreateSessionResponse resp = ATTND__V1__CREATE_SESSION_RESPONSE__INIT;
    Attnd__V1__ModelInfo info = ATTND__V1__MODEL_INFO__INIT;
    attnd_srv_model_info(&srv->model, &info);
    resp.session_id.len = sizeof id.bytes;
    resp.session_id.data = id.bytes;
    resp.model = &info;
    attnd_srv_call_finish(c, attnd_srv_pack(&resp.base), ATTND_OK, NULL);
}

void attnd_srv_close_session_start(attnd_srv_call *c)
{
    attnd_srv *srv = c->srv;
    Attnd__V1__CloseSessionRequest *m;
    attnd_session_id id;
    uint64_t freed = 0;
    attnd_error err;

    attnd_error_clear(&err);
    m = (Attnd__V1__CloseSessionRequest *)attnd_srv_call_decode(
        c, &attnd__v1__close_session_request__descriptor, &err);
    if (!m || attnd_srv_validate_close(m, &id, &err) ||
        (c->tenant &&
         attnd_engine_sessions_check(srv->engine, attnd_srv_call_owner(c), &id, 1, 0, &err)) ||
        (srv->group ? attnd_group_session_close(srv->group, &id, &freed, &err)
                    : attnd_engine_session_close(srv->engine, &id, &freed, &err))) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    Attnd__V1__CloseSessionResponse resp = ATTND__V1__CLOSE_SESSION_RESPONSE__INIT;
    resp.pages_freed = freed;
    attnd_srv_call_finish(c, attnd_srv_pack(&resp.base), ATTND_OK, NULL);
}
