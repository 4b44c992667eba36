/* The client handle: connect, channel configuration, method registration,
 * and the cached description of the served model.
 *
 * Connect creates a channel (plaintext, or TLS with the options' CA and
 * client certificate) with its own subchannel pool (so
 * every attnd_client has its own HTTP/2 connection and flow control), with
 * the message limits raised to max_message_bytes both ways and retries off
 * (an Attend that appends new_kv is not idempotent; `positions` guards
 * replays, but we never replay on our own). Each method is registered once
 * here; calls are then created from the handle, with no per-call method
 * string. Connect then waits for the channel to become READY, driving the
 * connectivity state machine with watches on a private pluck queue, and
 * fails UNAVAILABLE once connect_timeout_ms has passed. A bearer token
 * rides every call's initial metadata (attnd__client_initial_md); it is not
 * a gRPC call credential, which gRPC refuses to send over plaintext (a
 * token on loopback is the user's choice: the README says when not to).
 *
 * grpc_init / grpc_shutdown are reference counted by gRPC: one pair per
 * client, so a process may hold several clients and gRPC lives until the
 * last is destroyed.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "client_int.h"

static const char *const method_paths[ATTND__CLIENT_M_COUNT] = {
    [ATTND__CLIENT_M_CREATE_SESSION] = "/attnd.v1.Attnd/CreateSession",
    [ATTND__CLIENT_M_APPEND_KV] = "/attnd.v1.Attnd/AppendKV",
    [ATTND__CLIENT_M_ATTEND] = "/attnd.v1.Attnd/Attend",
    [ATTND__CLIENT_M_ATTEND_STREAM] = "/attnd.v1.Attnd/AttendStream",
    [ATTND__CLIENT_M_CLOSE_SESSION] = "/attnd.v1.Attnd/CloseSession",
    [ATTND__CLIENT_M_GET_STATS] = "/attnd.v1.Attnd/GetStats",
    [ATTND__CLIENT_M_HEALTH_CHECK] = "/grpc.health.v1.Health/Check",
    [ATTND__CLIENT_M_GET_ENDPOINT] = "/attnd.v1.Attnd/GetEndpoint",
    [ATTND__CLIENT_M_LOAD_WEIGHTS] = "/attnd.v1.Attnd/LoadWeights",
};

const char *attnd__client_method_path(attnd__client_method m)
{
    return m < ATTND__CLIENT_M_COUNT ? method_paths[m] : "?";
}

void attnd_client_options_init(attnd_client_options *o)
{
    o->deadline_ms = 30000;
    o->connect_timeout_ms = 5000;
    o->max_message_bytes = (size_t)256 << 20;
    o->transport = ATTND_TRANSPORT_GRPC;
    o->ucx_spin_us = 1000;
    o->tls_ca_file = o->tls_cert_file = o->tls_key_file = NULL;
    o->tls_server_name = NULL;
    o->token = NULL;
}

static const char *state_name(grpc_connectivity_state s)
{
    switch (s) {
    case GRPC_CHANNEL_IDLE: return "IDLE";
    case GRPC_CHANNEL_CONNECTING: return "CONNECTING";
    case GRPC_CHANNEL_READY: return "READY";
    case GRPC_CHANNEL_TRANSIENT_FAILURE: return "TRANSIENT_FAILURE";
    case GRPC_CHANNEL_SHUTDOWN: return "SHUTDOWN";
    }
    return "?";
}

/* Wait until the channel is READY or timeout_ms passes. */
static attnd_status wait_ready(grpc_channel *ch, const char *target, int64_t timeout_ms,
                               attnd_error *err)
{
    gpr_timespec deadline = attnd__client_deadline(timeout_ms > 0 ? timeout_ms : 1);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_connectivity_state st;
    attnd_status rc = ATTND_OK;
    char tag;

    if (!cq)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "connect: no memory for a completion queue");
    for (;;) {
        st = grpc_channel_check_connectivity_state(ch, 1);
        if (st == GRPC_CHANNEL_READY)
            break;
        if (st == GRPC_CHANNEL_SHUTDOWN) {
            rc = attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "connect: channel to %s shut down",
                                 target);
            break;
        }
        /* fires on the next state change, or (success 0) at the deadline */
        grpc_channel_watch_connectivity_state(ch, st, deadline, cq, &tag);
        grpc_event ev = grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME),
                                                    NULL);
        if (ev.type != GRPC_OP_COMPLETE || !ev.success) {
            rc = attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                                 "connect: %s not ready after %lld ms (channel %s)", target,
                                 (long long)timeout_ms, state_name(st));
            break;
        }
    }
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq);
    return rc;
}

/* The whole file at path (NUL-terminated, caller frees); NULL with
 * INVALID_ARGUMENT naming `field` in err. */
static char *slurp(const char *field, const char *path, attnd_error *err)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t cap = 1 << 20, n;

    if (!f) {
        attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "opts.%s: %s: %s", field, path,
                        strerror(errno));
        return NULL;
    }
    if (!(buf = malloc(cap + 1)))
        attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "opts.%s: no memory", field);
    else if ((n = fread(buf, 1, cap + 1, f)) > cap || ferror(f)) {
        attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "opts.%s: %s: %s", field, path,
                        n > cap ? "larger than 1 MiB" : "read error");
        free(buf);
        buf = NULL;
    } else {
        buf[n] = '\0';
    }
    fclose(f);
    return buf;
}

/* The channel credentials the options ask for: TLS when a CA or a client
 * certificate is given, else plaintext. */
static attnd_status make_creds(const attnd_client_options *o, grpc_channel_credentials **creds_p,
                               attnd_error *err)
{
    char *ca = NULL, *cert = NULL, *key = NULL;
    attnd_status st = ATTND_OK;

    if (!o->tls_ca_file && !o->tls_cert_file) {
        if (o->tls_key_file)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "opts.tls_key_file: given without tls_cert_file");
        *creds_p = grpc_insecure_credentials_create();
        return ATTND_OK;
    }
    if (!o->tls_cert_file != !o->tls_key_file)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "opts.%s: a client certificate needs both tls_cert_file and "
                               "tls_key_file", o->tls_cert_file ? "tls_key_file" : "tls_cert_file");
    if ((o->tls_ca_file && !(ca = slurp("tls_ca_file", o->tls_ca_file, err))) ||
        (o->tls_cert_file && (!(cert = slurp("tls_cert_file", o->tls_cert_file, err)) ||
                              !(key = slurp("tls_key_file", o->tls_key_file, err))))) {
        st = err ? err->code : ATTND_ERR_INVALID_ARGUMENT;
        goto out;
    }
    grpc_ssl_pem_key_cert_pair pair = {key, cert};
    *creds_p = grpc_ssl_credentials_create(ca, cert ? &pair : NULL, NULL, NULL);
    if (!*creds_p)
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                             "opts.tls_ca_file: gRPC made no TLS credentials of these files");
out:
    if (key) {
        memset(key, 0, strlen(key));
        free(key);
    }
    free(cert);
    free(ca);
    return st;
}

/* The bearer token's metadata (opts.token); nothing when none. */
static attnd_status make_md(attnd_client *c, attnd_error *err)
{
    const char *tok = c->opts.token;
    char *v;

    if (!tok)
        return ATTND_OK;
    if (!*tok || strpbrk(tok, "\r\n"))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "opts.token: empty or not one line");
    if (!(v = malloc(strlen(tok) + 8)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "opts.token: no memory");
    sprintf(v, "Bearer %s", tok);
    memset(&c->md[0], 0, sizeof c->md[0]);
    c->md[0].key = grpc_slice_from_static_string("authorization");
    c->md[0].value = grpc_slice_from_copied_string(v);
    c->n_md = 1;
    memset(v, 0, strlen(v));
    free(v);
    return ATTND_OK;
}

static void arg_int(grpc_arg *a, const char *key, int value)
{
    a->type = GRPC_ARG_INTEGER;
    a->key = (char *)key;
    a->value.integer = value;
}

/* Ownership: the client is allocated here and freed by
 * attnd_client_destroy, which the caller may call only once no call,
 * attnd_call or attnd_stream of the client is left. */
attnd_status attnd_client_connect(const char *target, const attnd_client_options *opts,
                                  attnd_client **client_p, attnd_error *err)
{
    attnd_client *c;
    grpc_channel_credentials *creds;
    grpc_arg args[7];
    grpc_channel_args chargs = {0, args};
    attnd_status st;

    if (!target || !client_p)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "connect: %s is NULL", !target ? "target" : "client_p");
    c = calloc(1, sizeof *c);
    if (!c)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "connect: no memory");
    if (opts)
        c->opts = *opts;
    else
        attnd_client_options_init(&c->opts);
    if (c->opts.max_message_bytes == 0) {
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                             "opts.max_message_bytes: expected > 0, got 0");
        goto err_free;
    }
    atomic_init(&c->next_request_id, 1);
    if (pthread_mutex_init(&c->model_mu, NULL)) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "connect: no mutex");
        goto err_free;
    }

    grpc_init();
    int max_msg = c->opts.max_message_bytes > INT_MAX ? INT_MAX : (int)c->opts.max_message_bytes;
    arg_int(&args[chargs.num_args++], GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, max_msg);
    arg_int(&args[chargs.num_args++], GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, max_msg);
    arg_int(&args[chargs.num_args++], GRPC_ARG_ENABLE_RETRIES, 0);
    arg_int(&args[chargs.num_args++], GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    arg_int(&args[chargs.num_args++], GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    arg_int(&args[chargs.num_args++], GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    if (c->opts.tls_server_name) {
        grpc_arg *a = &args[chargs.num_args++];
        a->type = GRPC_ARG_STRING;
        a->key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
        a->value.string = (char *)c->opts.tls_server_name;
    }
    /* the strings are the caller's: none is kept past connect */
    c->opts.tls_ca_file = c->opts.tls_cert_file = c->opts.tls_key_file = NULL;
    if ((st = make_md(c, err)))
        goto err_grpc;
    c->opts.token = NULL;
    if ((st = make_creds(opts ? opts : &c->opts, &creds, err)))
        goto err_grpc;
    c->opts.tls_server_name = NULL;
    c->channel = grpc_channel_create(target, creds, &chargs);
    grpc_channel_credentials_release(creds);
    if (!c->channel) {
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "target: cannot make a channel to \"%s\"",
                             target);
        goto err_grpc;
    }
    for (int m = 0; m < ATTND__CLIENT_M_COUNT; m++) {
        c->methods[m] = grpc_channel_register_call(c->channel, method_paths[m], NULL, NULL);
        if (!c->methods[m]) {
            st = attnd_error_set(err, ATTND_ERR_INTERNAL, "connect: cannot register %s",
                                 method_paths[m]);
            goto err_channel;
        }
    }
    st = wait_ready(c->channel, target, c->opts.connect_timeout_ms, err);
    if (st)
        goto err_channel;
    if (c->opts.transport == ATTND_TRANSPORT_UCX)
        st = attnd__client_ucx_connect(c, target, err);
    else if (c->opts.transport != ATTND_TRANSPORT_GRPC)
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                             "opts.transport: expected ATTND_TRANSPORT_GRPC or _UCX, got %d",
                             (int)c->opts.transport);
    if (st)
        goto err_channel;
    *client_p = c;
    return ATTND_OK;

err_channel:
    grpc_channel_destroy(c->channel);
err_grpc:
    if (c->n_md)
        grpc_slice_unref(c->md[0].value);
    grpc_shutdown();
    pthread_mutex_destroy(&c->model_mu);
err_free:
    free(c);
    return st;
}

void attnd_client_destroy(attnd_client *c)
{
    if (!c)
        return;
    attnd__client_ucx_destroy(c);
    grpc_channel_destroy(c->channel);
    if (c->n_md)
        grpc_slice_unref(c->md[0].value);
    grpc_shutdown();
    pthread_mutex_destroy(&c->model_mu);
    free(c);
}

/* ---- the served model ----------------------------------------------------- */

void attnd__client_model_from_pb(const Attnd__V1__ModelInfo *pb, attnd_model_info *m)
{
    memset(m, 0, sizeof *m);
    if (!pb)
        return;
    snprintf(m->name, sizeof m->name, "%s", pb->name ? pb->name : "");
    m->kind = (attnd_attn_kind)pb->kind;
    m->n_layers = pb->n_layers;
    m->n_q_heads = pb->n_q_heads;
    m->n_kv_heads = pb->n_kv_heads;
    m->head_dim = pb->head_dim;
    m->d_latent = pb->d_latent;
    m->d_rope = pb->d_rope;
    m->scale = pb->scale;
    m->kv_dtype = (attnd_dtype)pb->kv_dtype;
    m->page_size = pb->page_size;
    if (m->kind == ATTND_ATTN_MLA) {
        m->d_k = m->d_latent + m->d_rope;
        m->d_v = m->d_latent;
        m->kv_token_elems = m->d_k;
    } else if (m->kind == ATTND_ATTN_GQA) {
        m->d_k = m->d_v = m->head_dim;
        m->kv_token_elems = 2 * m->n_kv_heads * m->head_dim;
    }
}

void attnd__client_model_cache(attnd_client *c, const attnd_model_info *m)
{
    if (m->kind != ATTND_ATTN_MLA && m->kind != ATTND_ATTN_GQA)
        return; /* an answer without a model says nothing */
    pthread_mutex_lock(&c->model_mu);
    c->model = *m;
    c->have_model = 1;
    pthread_mutex_unlock(&c->model_mu);
}

attnd_status attnd__client_model(attnd_client *c, attnd_model_info *m_p, attnd_error *err)
{
    attnd_stats st;
    attnd_status rc;

    pthread_mutex_lock(&c->model_mu);
    int have = c->have_model;
    if (have)
        *m_p = c->model;
    pthread_mutex_unlock(&c->model_mu);
    if (have)
        return ATTND_OK;
    /* attnd_client_get_stats caches the model it reports */
    rc = attnd_client_get_stats(c, &st, m_p, err);
    if (rc == ATTND_OK && m_p->kind != ATTND_ATTN_MLA && m_p->kind != ATTND_ATTN_GQA)
        rc = attnd_error_set(err, ATTND_ERR_INTERNAL,
                             "GetStats: the server reported no model (kind %d)", (int)m_p->kind);
    return rc;
}
