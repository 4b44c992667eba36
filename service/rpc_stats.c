/* GetStats, and the ModelInfo that CreateSession and GetStats both carry:
 * the engine's counters, the service's error count (calls that ended with
 * a non-OK status other than a client's cancel) and the uptime. */
#include "srv.h"

void attnd_srv_model_info(const attnd_srv_model *m, Attnd__V1__ModelInfo *info)
{
    const attnd_model_spec *s = m->spec;
    info->name = (char *)s->name;
    info->kind = (Attnd__V1__AttentionKind)s->kind;
    info->n_layers = (uint32_t)s->n_layers;
    info->n_q_heads = (uint32_t)s->n_q_heads;
    info->n_kv_heads = (uint32_t)s->n_kv_heads;
    info->head_dim = (uint32_t)s->head_dim;
    info->d_latent = (uint32_t)s->d_latent;
    info->d_rope = (uint32_t)s->d_rope;
    info->scale = s->scale;
    info->kv_dtype = (Attnd__V1__DType)s->kv_dtype;
    info->page_size = (uint32_t)m->page_size;
}

void attnd_srv_get_stats_start(attnd_srv_call *c)
{
    attnd_srv *srv = c->srv;
    attnd_engine_stats st;
    attnd_error err;

    attnd_error_clear(&err);
    /* the request is empty, but it must still be one */
    if (!attnd_srv_call_decode(c, &attnd__v1__get_stats_request__descriptor, &err)) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    attnd_engine_get_stats(srv->engine, &st);
    Attnd__V1__GetStatsResponse resp = ATTND__V1__GET_STATS_RESPONSE__INIT;
    Attnd__V1__ModelInfo info = ATTND__V1__MODEL_INFO__INIT;
    attnd_srv_model_info(&srv->model, &info);
    resp.model = &info;
    resp.sessions = st.sessions;
    resp.max_sessions = st.max_sessions;
    resp.pages_total = st.pages_total;
    resp.pages_used = st.pages_used;
    resp.pages_reserved = st.pages_reserved;
    resp.page_bytes = st.page_bytes;
    resp.attend_calls = st.attend_calls;
    resp.attend_sequences = st.attend_sequences;
    resp.append_calls = st.append_calls;
    resp.tokens_appended = st.tokens_appended;
    resp.errors = atomic_load(&srv->errors);
    resp.kv_bytes_read = st.kv_bytes_read;
    resp.uptime_ms = attnd_srv_uptime_ms(srv);
    attnd_group_state gs;
    char mode[16];
    if (srv->group) {
        attnd_group_get_state(srv->group, &gs);
        snprintf(mode, sizeof mode, "%s", attnd_group_mode_name(gs.mode));
        resp.group_size = (uint32_t)gs.size;
        resp.group_rank = (uint32_t)gs.rank;
        resp.group_mode = mode;
        resp.group_connected = (uint32_t)gs.connected;
        resp.group_missing = gs.missing;
        resp.group_peer_failures = gs.peer_failures;
    }
    attnd_srv_call_finish(c, attnd_srv_pack(&resp.base), ATTND_OK, NULL);
}
