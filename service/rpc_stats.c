/* GetStats, and the ModelInfo that CreateSession and GetStats both carry:
 * the engine's counters, the service's error count (calls that ended with
 * a non-OK status other than a client's cancel), the uptime, the KV tiers
 * and durability (and one session's bytes per tier when asked), and every
 * UCX endpoint this rank holds (Attend clients, group peers) with the
 * transports UCX really uses for it.
 *
 * With --token-file a tenant sees its own figures only (stats_scope
 * "tenant NAME": its sessions, pages, calls and failed calls, its limits);
 * the worker's (stats_scope "global", group fields, UCX endpoints) need an
 * admin tenant. */
#include <stdlib.h>
#include <string.h>

#include "srv.h"
#include "ucx_server.h"

/* The UCX endpoints of clients and peers into resp (arrays in *mem, freed
 * by the caller). */
static void ucx_endpoints(attnd_srv *srv, const attnd_group_state *gs,
                          Attnd__V1__GetStatsResponse *resp, void **mem)
{
    size_t n_cli = attnd_srv_ucx_endpoints(srv, NULL, 0), n_peer = 0, n = 0;
    if (gs)
        for (int32_t r = 0; r < gs->size; r++)
            n_peer += gs->peers[r].up;
    size_t cap = n_cli + n_peer;
    if (!cap)
        return;
    /* one block, most aligned parts first: infos, pointers, then chars */
    size_t bytes = cap * (sizeof(Attnd__V1__UcxEndpointInfo) +
                          sizeof(Attnd__V1__UcxEndpointInfo *) + sizeof(attnd_srv_ucx_ep_info) +
                          16);
    char *p = *mem = calloc(1, bytes);
    if (!p)
        return;
    Attnd__V1__UcxEndpointInfo *info = (Attnd__V1__UcxEndpointInfo *)p;
    Attnd__V1__UcxEndpointInfo **ptrs = (Attnd__V1__UcxEndpointInfo **)(info + cap);
    attnd_srv_ucx_ep_info *cli = (attnd_srv_ucx_ep_info *)(ptrs + cap);
    char (*names)[16] = (char (*)[16])(cli + cap);
    size_t got = attnd_srv_ucx_endpoints(srv, cli, n_cli); /* may have changed */
    if (got < n_cli)
        n_cli = got;
    for (size_t i = 0; i < n_cli; i++, n++) {
        attnd__v1__ucx_endpoint_info__init(&info[n]);
        info[n].peer = cli[i].peer;
        info[n].transports = cli[i].transports;
        info[n].same_host = cli[i].same_host;
        ptrs[n] = &info[n];
    }
    for (int32_t r = 0; gs && r < gs->size && n < cap; r++) {
        if (!gs->peers[r].up)
            continue;
        attnd__v1__ucx_endpoint_info__init(&info[n]);
        snprintf(names[n], sizeof names[n], "rank %d", (int)r);
        info[n].peer = names[n];
        info[n].transports = (char *)gs->peers[r].transports;
        info[n].same_host = gs->peers[r].same_host;
        ptrs[n] = &info[n];
        n++;
    }
    resp->n_ucx_endpoints = n;
    resp->ucx_endpoints = ptrs;
}

/* The engine's tier and durability figures into resp; with a session id,
 * that session's bytes (NOT_FOUND names it; for a tenant, admins included,
 * another tenant's session is NOT_FOUND in the same words, as everywhere).
 * owner: the caller's tenant (0: no --token-file). */
static attnd_status tier_stats(attnd_srv *srv, const Attnd__V1__GetStatsRequest *m,
                               uint64_t owner, const attnd_engine_stats *st, char *below,
                               Attnd__V1__GetStatsResponse *resp, attnd_error *err)
{
    resp->kv_pages_held = st->pages_held;
    resp->kv_pages_capacity = st->pages_capacity;
    memcpy(below, st->below, sizeof st->below);
    resp->kv_below = below;
    resp->kv_below_slots = st->below_slots;
    resp->kv_below_slots_used = st->below_slots_used;
    resp->kv_below_slot_bytes = st->below_slot_bytes;
    resp->kv_pages_moved_down = st->pages_moved_down;
    resp->kv_pages_moved_up = st->pages_moved_up;
    resp->kv_pages_prefetched = st->pages_prefetched;
    resp->kv_load_waits = st->load_waits;
    resp->kv_pages_bad = st->pages_bad;
    resp->kv_write_failures = st->write_failures;
    resp->durability = (Attnd__V1__Durability)st->durable;
    resp->durable_window_ms = st->durable_window_ms;
    resp->wal_durable_lsn = st->wal_durable_lsn;
    resp->wal_bytes_written = st->wal_bytes;
    resp->wal_syncs = st->wal_syncs;
    resp->checkpoints = st->checkpoints;
    resp->sessions_recovered = st->sessions_recovered;
    resp->sessions_lost = st->sessions_lost;
    if (!m->session_id.len)
        return ATTND_OK;
    attnd_session_id id;
    if (m->session_id.len != sizeof id.bytes)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "session_id: %zu bytes, expected %zu", m->session_id.len,
                               sizeof id.bytes);
    memcpy(id.bytes, m->session_id.data, sizeof id.bytes);
    attnd_status st2;
    if (owner && (st2 = attnd_engine_sessions_check(srv->engine, owner, &id, 1, 0, err)))
        return st2;
    return attnd_engine_session_bytes(srv->engine, &id, &resp->session_memory_bytes,
                                      &resp->session_below_bytes, err);
}

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
    const Attnd__V1__GetStatsRequest *m = (const Attnd__V1__GetStatsRequest *)
        attnd_srv_call_decode(c, &attnd__v1__get_stats_request__descriptor, &err);
    if (!m) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    int global = !c->tenant || c->admin;
    char scope[16 + ATTND_SRV_TENANT_NAME_MAX];
    if (global) {
        attnd_engine_get_stats(srv->engine, &st);
        snprintf(scope, sizeof scope, "global");
    } else {
        attnd_engine_owner_stats(srv->engine, c->tenant->tag, &st);
        if (!st.max_sessions || st.max_sessions > srv->cfg->max_sessions)
            st.max_sessions = srv->cfg->max_sessions;
        snprintf(scope, sizeof scope, "tenant %s", c->tenant->name);
    }
    Attnd__V1__GetStatsResponse resp = ATTND__V1__GET_STATS_RESPONSE__INIT;
    char below[sizeof st.below];
    if (tier_stats(srv, m, attnd_srv_call_owner(c), &st, below, &resp, &err)) {
        attnd_srv_call_fail(c, &err);
        return;
    }
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
    resp.errors = global ? atomic_load(&srv->errors) : atomic_load(&c->tenant->errors);
    resp.kv_bytes_read = st.kv_bytes_read;
    resp.kv_bytes_dense = st.kv_bytes_dense;
    resp.select_bytes_read = st.select_bytes_read;
    resp.select_ns = st.select_ns;
    resp.select_calls = st.select_calls;
    resp.pages_evicted = st.pages_evicted;
    resp.uptime_ms = attnd_srv_uptime_ms(srv);
    resp.stats_scope = scope;
    resp.sessions_expired = st.sessions_expired;
    resp.pages_expired = st.pages_expired;
    attnd_group_state gs;
    char mode[16];
    if (srv->group && global) {
        attnd_group_get_state(srv->group, &gs);
        snprintf(mode, sizeof mode, "%s", attnd_group_mode_name(gs.mode));
        resp.group_size = (uint32_t)gs.size;
        resp.group_rank = (uint32_t)gs.rank;
        resp.group_mode = mode;
        resp.group_connected = (uint32_t)gs.connected;
        resp.group_missing = gs.missing;
        resp.group_peer_failures = gs.peer_failures;
    }
    void *mem = NULL;
    if (global) /* other clients' endpoints are not a tenant's business */
        ucx_endpoints(srv, srv->group ? &gs : NULL, &resp, &mem);
    attnd_srv_call_finish(c, attnd_srv_pack(&resp.base), ATTND_OK, NULL);
    free(mem);
}
