/* The control calls: CreateSession, CloseSession, GetStats, Health/Check.
 *
 * Small unary messages, encoded and decoded by protobuf-c. CreateSession
 * and GetStats both describe the served model; the client remembers it
 * (attnd__client_model_cache) for the calls that need the model's shapes.
 */
#include <string.h>

#include "client_int.h"

attnd_status attnd_client_create_session(attnd_client *c, const char *model, uint32_t max_tokens,
                                         attnd_session_id *id_p, attnd_model_info *model_p,
                                         attnd_error *err)
{
    Attnd__V1__CreateSessionRequest req = ATTND__V1__CREATE_SESSION_REQUEST__INIT;
    Attnd__V1__CreateSessionResponse *resp = NULL;
    attnd_model_info m;
    attnd_status st;

    if (!c || !id_p)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "create_session: %s is NULL",
                               !c ? "client" : "id_p");
    req.model = (char *)(model ? model : "");
    req.max_tokens = max_tokens;
    st = attnd__client_unary(c, ATTND__CLIENT_M_CREATE_SESSION, &req.base,
                             &attnd__v1__create_session_response__descriptor,
                             (ProtobufCMessage **)&resp, err);
    if (st)
        return st;
    if (resp->session_id.len != ATTND_SESSION_ID_BYTES) {
        st = attnd_error_set(err, ATTND_ERR_INTERNAL,
                             "CreateSessionResponse.session_id: expected %d bytes, got %zu",
                             ATTND_SESSION_ID_BYTES, resp->session_id.len);
        goto out;
    }
    attnd__client_model_from_pb(resp->model, &m);
    attnd__client_model_cache(c, &m);
    memcpy(id_p->bytes, resp->session_id.data, ATTND_SESSION_ID_BYTES);
    if (model_p)
        *model_p = m;
out:
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return st;
}

attnd_status attnd_client_close_session(attnd_client *c, const attnd_session_id *id,
                                        attnd_error *err)
{
    Attnd__V1__CloseSessionRequest req = ATTND__V1__CLOSE_SESSION_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    attnd_status st;

    if (!c || !id)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "close_session: %s is NULL",
                               !c ? "client" : "id");
    req.session_id.len = ATTND_SESSION_ID_BYTES;
    req.session_id.data = (uint8_t *)id->bytes;
    st = attnd__client_unary(c, ATTND__CLIENT_M_CLOSE_SESSION, &req.base,
                             &attnd__v1__close_session_response__descriptor, &resp, err);
    if (st == ATTND_OK)
        protobuf_c_message_free_unpacked(resp, NULL);
    return st;
}

attnd_status attnd_client_get_stats(attnd_client *c, attnd_stats *out, attnd_model_info *model_p,
                                    attnd_error *err)
{
    Attnd__V1__GetStatsRequest req = ATTND__V1__GET_STATS_REQUEST__INIT;
    Attnd__V1__GetStatsResponse *r = NULL;
    attnd_model_info m;
    attnd_status st;

    if (!c || !out)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "get_stats: %s is NULL",
                               !c ? "client" : "st");
    st = attnd__client_unary(c, ATTND__CLIENT_M_GET_STATS, &req.base,
                             &attnd__v1__get_stats_response__descriptor,
                             (ProtobufCMessage **)&r, err);
    if (st)
        return st;
    attnd__client_model_from_pb(r->model, &m);
    attnd__client_model_cache(c, &m);
    *out = (attnd_stats){
        .sessions = r->sessions,
        .max_sessions = r->max_sessions,
        .pages_total = r->pages_total,
        .pages_used = r->pages_used,
        .pages_reserved = r->pages_reserved,
        .page_bytes = r->page_bytes,
        .attend_calls = r->attend_calls,
        .attend_sequences = r->attend_sequences,
        .append_calls = r->append_calls,
        .tokens_appended = r->tokens_appended,
        .errors = r->errors,
        .kv_bytes_read = r->kv_bytes_read,
        .uptime_ms = r->uptime_ms,
        .group_size = r->group_size,
        .group_rank = r->group_rank,
        .group_connected = r->group_connected,
        .group_peer_failures = r->group_peer_failures,
        .sessions_expired = r->sessions_expired,
        .pages_expired = r->pages_expired,
        .kv_bytes_dense = r->kv_bytes_dense,
        .select_bytes_read = r->select_bytes_read,
        .select_ns = r->select_ns,
        .select_calls = r->select_calls,
        .pages_evicted = r->pages_evicted,
    };
    snprintf(out->stats_scope, sizeof out->stats_scope, "%s",
             r->stats_scope && *r->stats_scope ? r->stats_scope : "global");
    snprintf(out->group_mode, sizeof out->group_mode, "%s", r->group_mode ? r->group_mode : "");
    snprintf(out->group_missing, sizeof out->group_missing, "%s",
             r->group_missing ? r->group_missing : "");
    out->ucx_endpoints = (uint32_t)r->n_ucx_endpoints;
    for (size_t i = 0, used = 0; i < r->n_ucx_endpoints; i++) {
        const Attnd__V1__UcxEndpointInfo *e = r->ucx_endpoints[i];
        int k = snprintf(out->ucx_transports + used, sizeof out->ucx_transports - used,
                         "%s%s: %s", i ? "; " : "", e->peer ? e->peer : "?",
                         e->transports ? e->transports : "?");
        if (k < 0 || (size_t)k >= sizeof out->ucx_transports - used)
            break; /* truncated */
        used += (size_t)k;
    }
    if (model_p)
        *model_p = m;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return ATTND_OK;
}

attnd_status attnd_client_get_tier_stats(attnd_client *c, const attnd_session_id *session,
                                         attnd_tier_stats *out, attnd_error *err)
{
    Attnd__V1__GetStatsRequest req = ATTND__V1__GET_STATS_REQUEST__INIT;
    Attnd__V1__GetStatsResponse *r = NULL;
    attnd_status st;

    if (!c || !out)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "get_tier_stats: %s is NULL",
                               !c ? "client" : "st");
    if (session) {
        req.session_id.len = ATTND_SESSION_ID_BYTES;
        req.session_id.data = (uint8_t *)session->bytes;
    }
    st = attnd__client_unary(c, ATTND__CLIENT_M_GET_STATS, &req.base,
                             &attnd__v1__get_stats_response__descriptor,
                             (ProtobufCMessage **)&r, err);
    if (st)
        return st;
    *out = (attnd_tier_stats){
        .pages_held = r->kv_pages_held,
        .pages_capacity = r->kv_pages_capacity,
        .page_bytes = r->page_bytes,
        .memory_pages_total = r->pages_total,
        .memory_pages_used = r->pages_used,
        .below_slots = r->kv_below_slots,
        .below_slots_used = r->kv_below_slots_used,
        .below_slot_bytes = r->kv_below_slot_bytes,
        .pages_moved_down = r->kv_pages_moved_down,
        .pages_moved_up = r->kv_pages_moved_up,
        .pages_prefetched = r->kv_pages_prefetched,
        .load_waits = r->kv_load_waits,
        .pages_bad = r->kv_pages_bad,
        .write_failures = r->kv_write_failures,
        .durability = (int)r->durability,
        .durable_window_ms = r->durable_window_ms,
        .wal_durable_lsn = r->wal_durable_lsn,
        .wal_bytes_written = r->wal_bytes_written,
        .wal_syncs = r->wal_syncs,
        .checkpoints = r->checkpoints,
        .sessions_recovered = r->sessions_recovered,
        .sessions_lost = r->sessions_lost,
        .session_memory_bytes = r->session_memory_bytes,
        .session_below_bytes = r->session_below_bytes,
    };
    snprintf(out->below, sizeof out->below, "%s", r->kv_below ? r->kv_below : "");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return ATTND_OK;
}

attnd_status attnd_client_health(attnd_client *c, const char *service, int *serving_p,
                                 attnd_error *err)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    Grpc__Health__V1__HealthCheckResponse *r = NULL;
    attnd_status st;

    if (!c || !serving_p)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "health: %s is NULL",
                               !c ? "client" : "serving_p");
    req.service = (char *)(service ? service : "");
    st = attnd__client_unary(c, ATTND__CLIENT_M_HEALTH_CHECK, &req.base,
                             &grpc__health__v1__health_check_response__descriptor,
                             (ProtobufCMessage **)&r, err);
    if (st)
        return st;
    *serving_p = r->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return ATTND_OK;
}
