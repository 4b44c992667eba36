/* The gRPC C-core server: its setup, its io threads, and the dispatch of
 * every event to the call it belongs to.
 *
 * Every io thread owns one completion queue registered with the server and
 * keeps ATTND_SRV_REQUESTS requests outstanding per method on it (plus as
 * many generic ones for methods we do not serve). When a request completes
 * the thread posts a replacement at once, then answers a control call
 * inline or hands a work call to the executors (exec.c); the handler's
 * later batches come back here and go the same way. Once the server
 * refuses new calls (drain.c), a work call, GetEndpoint or an unknown
 * method is answered UNAVAILABLE right here instead. srv.h has the rule
 * that keeps a call's state race-free across io threads and executors.
 *
 * Connections come from our own accept loop (listener.c), not from a gRPC
 * listening port: gRPC 1.51 stops accepting for good after one EMFILE.
 * With TLS they cannot (gRPC takes outside connections only in
 * plaintext): gRPC listens, under a watchdog (watchdog.c).
 * Shutdown is drain.c's.
 *
 * Limits on every connection (issue 15): keepalive pings after
 * --grpc-keepalive-ms of quiet, also with no call open, and a peer that
 * does not answer within --grpc-keepalive-timeout-ms is dropped (a
 * connection that never speaks HTTP/2 included); at most --max-streams
 * calls at once per connection; gRPC's buffers under a resource quota of
 * --grpc-memory; a TLS handshake bounded by --handshake-timeout-ms. With
 * --token-file every call but Health is authenticated here, on the io
 * thread, before anything else looks at it (auth.c).
 */
#include <stdlib.h>
#include <string.h>

#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "attnd_assert.h"
#include "attnd_clock.h"
#include "attnd_log.h"
#include "srv.h"
#include "ucx_server.h"

const attnd_srv_method attnd_srv_methods[ATTND_SRV_M_COUNT + 1] = {
    [ATTND_SRV_M_CREATE_SESSION] = {"/attnd.v1.Attnd/CreateSession", 0, 1,
                                    attnd_srv_create_session_start, NULL},
    [ATTND_SRV_M_APPEND_KV] = {"/attnd.v1.Attnd/AppendKV", 1, 1, attnd_srv_append_start,
                               attnd_srv_append_step},
    [ATTND_SRV_M_ATTEND] = {"/attnd.v1.Attnd/Attend", 0, 1, attnd_srv_attend_start, NULL},
    [ATTND_SRV_M_ATTEND_STREAM] = {"/attnd.v1.Attnd/AttendStream", 1, 1,
                                   attnd_srv_attend_stream_start,
                                   attnd_srv_attend_stream_step},
    [ATTND_SRV_M_CLOSE_SESSION] = {"/attnd.v1.Attnd/CloseSession", 0, 1,
                                   attnd_srv_close_session_start, NULL},
    [ATTND_SRV_M_GET_STATS] = {"/attnd.v1.Attnd/GetStats", 0, 0, attnd_srv_get_stats_start,
                               NULL},
    [ATTND_SRV_M_HEALTH_CHECK] = {"/grpc.health.v1.Health/Check", 0, 0,
                                  attnd_srv_health_check_start, NULL},
    [ATTND_SRV_M_HEALTH_WATCH] = {"/grpc.health.v1.Health/Watch", 0, 0,
                                  attnd_srv_health_watch_start,
                                  attnd_srv_health_watch_step},
    [ATTND_SRV_M_GET_ENDPOINT] = {"/attnd.v1.Attnd/GetEndpoint", 0, 0,
                                  attnd_srv_get_endpoint_start, NULL},
    [ATTND_SRV_M_LOAD_WEIGHTS] = {"/attnd.v1.Attnd/LoadWeights", 0, 1,
                                  attnd_srv_load_weights_start, NULL},
    [ATTND_SRV_M_GENERIC] = {"(unregistered)", 1, 0, attnd_srv_generic_start, NULL},
};

/* ---- io threads ------------------------------------------------------------------------ */

/* Post a request for one more call of `method` on th's queue. */
static void request_call(attnd_srv_thread *th, int method)
{
    attnd_srv *srv = th->srv;
    attnd_srv_call *c;
    grpc_call_error e;

    if (!(c = attnd_srv_call_get(th, method))) {
        attnd_log_error("server", "io thread %d: no memory to accept %s calls", th->index,
                        attnd_srv_methods[method].path);
        return;
    }
    c->state = ATTND_SRV_CALL_REQUESTED;
    c->pending = 1; /* before the request: it may complete at once */
    if (method == ATTND_SRV_M_GENERIC)
        e = grpc_server_request_call(srv->server, &c->call, &c->details, &c->md, th->cq,
                                     th->cq, &c->op_tag);
    else
        e = grpc_server_request_registered_call(
            srv->server, srv->registered[method], &c->call, &c->deadline, &c->md,
            attnd_srv_methods[method].streaming ? NULL : &c->recv, th->cq, th->cq,
            &c->op_tag);
    if (e != GRPC_CALL_OK) {
        attnd_log_error("server", "io thread %d: requesting %s calls: %s", th->index,
                        attnd_srv_methods[method].path, grpc_call_error_to_string(e));
        c->pending = 0;
        attnd_srv_call_put(c);
    }
}

/* Health, stats and the endpoint still answer while the server refuses
 * (health says NOT_SERVING); every other call is refused. */
static int refused(attnd_srv *srv, int method)
{
    return atomic_load(&srv->refusing) && method != ATTND_SRV_M_HEALTH_CHECK &&
           method != ATTND_SRV_M_HEALTH_WATCH && method != ATTND_SRV_M_GET_STATS;
}

/* A request completed: a new call of c->method (or, failed, the server is
 * stopping and c was never a call). */
static void on_accept(attnd_srv_thread *th, attnd_srv_call *c, int success)
{
    attnd_srv *srv = th->srv;
    const attnd_srv_method *m = &attnd_srv_methods[c->method];

    if (!success) { /* shutdown fails every outstanding request */
        c->state = ATTND_SRV_CALL_FINISHING;
        attnd_srv_call_maybe_release(c);
        return;
    }
    request_call(th, c->method);
    c->state = ATTND_SRV_CALL_ACTIVE;
    c->x = &th->x;
    c->t_start_ns = attnd_clock_ns(); /* counted when released, refused ones too */
    c->mx_live = 1;
    if (refused(srv, c->method)) {
        attnd_srv_call_finish(c, NULL, ATTND_ERR_UNAVAILABLE,
                              "server is shutting down: send this call to another worker");
        return;
    }
    if (srv->auth && c->method != ATTND_SRV_M_HEALTH_CHECK &&
        c->method != ATTND_SRV_M_HEALTH_WATCH) {
        attnd_error err;
        attnd_error_clear(&err);
        if (attnd_srv_auth_call(srv->auth, &c->md, c->call, &c->tenant, &c->admin, &err)) {
            attnd_srv_call_fail(c, &err);
            return;
        }
    }
    /* the drain waits for it, its last bytes included (a Watch ends when
     * the drain starts) */
    c->counted = 1;
    atomic_fetch_add(&srv->active_calls, 1);
    if (m->exec)
        attnd_srv_exec_push(c, -1);
    else
        m->start(c);
}

/* The handler's batch (or, closing, the RECV_CLOSE_ON_SERVER of a held
 * call) completed. */
static void on_done(attnd_srv_thread *th, attnd_srv_call *c, int is_close, int success)
{
    const attnd_srv_method *m = &attnd_srv_methods[c->method];

    if (is_close) {
        c->close_done = 1;
        if (c->state == ATTND_SRV_CALL_ACTIVE && !c->op_inflight)
            c->state = ATTND_SRV_CALL_FINISHING; /* the client went away */
        attnd_srv_call_maybe_release(c);
        return;
    }
    c->op_inflight = 0;
    if (c->send) {
        grpc_byte_buffer_destroy(c->send);
        c->send = NULL;
    }
    if (c->state != ATTND_SRV_CALL_ACTIVE) {
        attnd_srv_call_maybe_release(c);
        return;
    }
    if (c->close_done) { /* cancelled while this batch ran */
        c->state = ATTND_SRV_CALL_FINISHING;
        attnd_srv_call_maybe_release(c);
        return;
    }
    c->x = &th->x;
    if (m->exec)
        attnd_srv_exec_push(c, success);
    else
        m->step(c, success);
}

/* One event. A handler that ran (or a push to the executors) was the last
 * touch of c here: srv.h's ownership rule. */
static void on_event(attnd_srv_thread *th, const grpc_event *ev)
{
    attnd_srv_tag *tag = ev->tag;
    attnd_srv_call *c = tag->call;
    attnd_srv *srv = th->srv;
    int watch = c->method == ATTND_SRV_M_HEALTH_WATCH;

    if (watch)
        pthread_mutex_lock(&srv->watch_mu);
    ATTND_ASSERT(c->pending > 0);
    c->pending--;
    if (!tag->is_close && c->state == ATTND_SRV_CALL_REQUESTED)
        on_accept(th, c, ev->success);
    else
        on_done(th, c, tag->is_close, ev->success);
    if (watch)
        pthread_mutex_unlock(&srv->watch_mu);
}

static void *thread_main(void *arg)
{
    attnd_srv_thread *th = arg;

    for (int m = 0; m <= ATTND_SRV_M_GENERIC; m++)
        for (int i = 0; i < ATTND_SRV_REQUESTS; i++)
            request_call(th, m);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(th->cq, gpr_inf_future(GPR_CLOCK_REALTIME),
                                                   NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            on_event(th, &ev);
    }
    return NULL;
}

/* ---- the server ------------------------------------------------------------------------ */

/* Shut a queue down and take every event left on it. */
static void cq_drain(grpc_completion_queue *cq)
{
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
}

static void arg_int(grpc_arg *a, const char *key, int v)
{
    a->type = GRPC_ARG_INTEGER;
    a->key = (char *)key;
    a->value.integer = v;
}

/* gRPC's resource quota for the server's connections (the arg keeps its
 * own reference). */
static void arg_quota(grpc_arg *a, grpc_resource_quota *q)
{
    a->type = GRPC_ARG_POINTER;
    a->key = (char *)GRPC_ARG_RESOURCE_QUOTA;
    a->value.pointer.p = q;
    a->value.pointer.vtable = grpc_resource_quota_arg_vtable();
}

static int clamp_int(int64_t v)
{
    return v > INT32_MAX ? INT32_MAX : (int)v;
}

static int init_locks(attnd_srv *srv)
{
    if (pthread_mutex_init(&srv->q_mu, NULL))
        return -1;
    if (pthread_cond_init(&srv->q_cv, NULL))
        goto err_q_mu;
    if (pthread_mutex_init(&srv->pool_mu, NULL))
        goto err_q_cv;
    if (pthread_mutex_init(&srv->watch_mu, NULL))
        goto err_pool_mu;
    return 0;

err_pool_mu:
    pthread_mutex_destroy(&srv->pool_mu);
err_q_cv:
    pthread_cond_destroy(&srv->q_cv);
err_q_mu:
    pthread_mutex_destroy(&srv->q_mu);
    return -1;
}

attnd_status attnd_srv_create(const attnd_srv_config *cfg, attnd_engine *engine,
                              attnd_srv **srv_p, attnd_error *err)
{
    grpc_arg args[16];
    grpc_channel_args chargs = {0, args};
    grpc_resource_quota *quota = NULL;
    attnd_status st;
    attnd_srv *srv;

    if (!(srv = calloc(1, sizeof *srv)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "server: out of memory");
    if (!(srv->metrics = attnd_srv_metrics_create())) {
        free(srv);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "server: out of memory");
    }
    if (init_locks(srv)) {
        attnd_srv_metrics_destroy(srv->metrics);
        free(srv);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "server: no mutex");
    }
    srv->cfg = cfg;
    srv->engine = engine;
    clock_gettime(CLOCK_MONOTONIC, &srv->started_at);
    attnd_srv_model_init(&srv->model, attnd_engine_model(engine), attnd_engine_page_size(engine),
                         cfg->max_sessions);

    int max_msg = cfg->max_message > INT32_MAX ? INT32_MAX : (int)cfg->max_message;
    arg_int(&args[chargs.num_args++], GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, max_msg);
    arg_int(&args[chargs.num_args++], GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, max_msg);
    if (cfg->http2_lookahead > 0)
        arg_int(&args[chargs.num_args++], GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                (int)cfg->http2_lookahead);
    if (cfg->http2_max_frame > 0)
        arg_int(&args[chargs.num_args++], GRPC_ARG_HTTP2_MAX_FRAME_SIZE,
                (int)cfg->http2_max_frame);
    arg_int(&args[chargs.num_args++], GRPC_ARG_KEEPALIVE_TIME_MS, clamp_int(cfg->keepalive_ms));
    arg_int(&args[chargs.num_args++], GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
            clamp_int(cfg->keepalive_timeout_ms));
    /* pinged with no call open too: a silent or dead peer is found */
    arg_int(&args[chargs.num_args++], GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    arg_int(&args[chargs.num_args++], GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    arg_int(&args[chargs.num_args++], GRPC_ARG_MAX_CONCURRENT_STREAMS,
            clamp_int(cfg->max_streams));
    arg_int(&args[chargs.num_args++], GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
            clamp_int(cfg->handshake_timeout_ms));
    /* gRPC's own listener (TLS): never share the port (as listener.c) */
    arg_int(&args[chargs.num_args++], GRPC_ARG_ALLOW_REUSEPORT, 0);
    if ((quota = grpc_resource_quota_create("attnd"))) {
        grpc_resource_quota_resize(quota, (size_t)cfg->grpc_memory);
        arg_quota(&args[chargs.num_args++], quota);
    }
    srv->server = grpc_server_create(&chargs, NULL);
    if (quota)
        grpc_resource_quota_unref(quota); /* the server holds it */
    srv->shutdown_cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(srv->server, srv->shutdown_cq, NULL);

    for (int m = 0; m < ATTND_SRV_M_COUNT; m++) {
        const attnd_srv_method *md = &attnd_srv_methods[m];
        srv->registered[m] = grpc_server_register_method(
            srv->server, md->path, NULL,
            md->streaming ? GRPC_SRM_PAYLOAD_NONE : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
        if (!srv->registered[m]) {
            st = attnd_error_set(err, ATTND_ERR_INTERNAL, "server: cannot register %s",
                                 md->path);
            goto err_server;
        }
    }
    int n_threads = cfg->io_threads > 0 ? cfg->io_threads : 1;
    srv->threads = calloc((size_t)n_threads, sizeof *srv->threads);
    if (!srv->threads) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "server: out of memory");
        goto err_server;
    }
    for (int i = 0; i < n_threads; i++) {
        attnd_srv_thread *th = &srv->threads[i];
        th->srv = srv;
        th->index = i;
        th->cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(srv->server, th->cq, NULL);
        attnd_srv_ctx_init(&th->x);
        srv->n_threads++;
    }
    if ((st = attnd_srv_exec_init(srv, cfg->threads, err)))
        goto err_server;
    if (cfg->token_file[0] &&
        ((st = attnd_srv_auth_open(cfg->token_file, (uint64_t)cfg->tenant_max_sessions,
                                   cfg->tenant_kv_memory, &srv->auth, err)) ||
         (st = attnd_srv_auth_apply(srv->auth, engine, err))))
        goto err_server;
    if (!cfg->tls_cert[0] != !cfg->tls_key[0] || (cfg->tls_client_ca[0] && !cfg->tls_cert[0])) {
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                             "%s: TLS needs both --tls-cert and --tls-key",
                             cfg->tls_cert[0] ? "--tls-key" : "--tls-cert");
        goto err_server;
    }
    if (cfg->tls_cert[0]) {
        grpc_server_credentials *creds = NULL;
        if ((st = attnd_srv_tls_open(cfg, &srv->tls, &creds, err)))
            goto err_server;
        st = attnd_srv_watchdog_open(srv, creds, err);
        grpc_server_credentials_release(creds); /* the server holds its own */
        if (st)
            goto err_server;
    } else if ((st = attnd_srv_listener_open(srv, err))) {
        goto err_server;
    }
    *srv_p = srv;
    return ATTND_OK;

err_server:
    attnd_srv_destroy(srv);
    return st;
}

attnd_status attnd_srv_start(attnd_srv *srv, attnd_error *err)
{
    attnd_status st;

    /* before gRPC serves: GetEndpoint must find the UCX address */
    if ((st = attnd_srv_ucx_start(srv, err)))
        return st;
    if (srv->cfg->metrics_listen[0] &&
        (st = attnd_srv_metrics_http_start(srv, srv->cfg->metrics_listen, err)))
        return st;
    grpc_server_start(srv->server);
    srv->started = 1;
    if ((st = attnd_srv_exec_start(srv, err)))
        goto err_stop;
    for (int i = 0; i < srv->n_threads; i++) {
        attnd_srv_thread *th = &srv->threads[i];
        int rc = pthread_create(&th->tid, NULL, thread_main, th);
        if (rc) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                 "--io-threads: cannot start thread %d: %s", i, strerror(rc));
            goto err_stop;
        }
        th->running = 1;
    }
    if ((st = attnd_srv_expire_start(srv, err)))
        goto err_stop;
    /* last: connections arrive only once everything can take their calls
     * (gRPC's own listener, with TLS, started with the server) */
    if ((st = srv->watchdog ? attnd_srv_watchdog_start(srv, err)
                            : attnd_srv_listener_start(srv, err)))
        goto err_stop;
    return ATTND_OK;

err_stop:
    attnd_srv_shutdown(srv, 0, 0, NULL);
    return st;
}

void attnd_srv_destroy(attnd_srv *srv)
{
    if (!srv)
        return;
    if (!srv->shut_down)
        attnd_srv_shutdown(srv, 0, 0, NULL);
    attnd_srv_metrics_http_stop(srv); /* it reads the engine and every shard */
    attnd_srv_listener_stop(srv);
    attnd_srv_watchdog_stop(srv);
    attnd_srv_ucx_stop(srv);
    if (srv->server)
        grpc_server_destroy(srv->server);
    attnd_srv_tls_close(srv->tls); /* its fetcher was gRPC's until now */
    attnd_srv_auth_close(srv->auth);
    for (int i = 0; i < srv->n_threads; i++) {
        cq_drain(srv->threads[i].cq);
        grpc_completion_queue_destroy(srv->threads[i].cq);
        attnd_srv_ctx_cleanup(&srv->threads[i].x);
    }
    if (srv->shutdown_cq) {
        cq_drain(srv->shutdown_cq);
        grpc_completion_queue_destroy(srv->shutdown_cq);
    }
    attnd_srv_exec_cleanup(srv);
    if (srv->live_calls)
        attnd_log_warn("server", "%zu calls left at exit", srv->live_calls);
    for (attnd_srv_call *c = srv->free_calls, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(srv->threads);
    pthread_mutex_destroy(&srv->watch_mu);
    pthread_mutex_destroy(&srv->pool_mu);
    pthread_cond_destroy(&srv->q_cv);
    pthread_mutex_destroy(&srv->q_mu);
    attnd_srv_metrics_destroy(srv->metrics);
    free(srv);
}

uint64_t attnd_srv_uptime_ms(const attnd_srv *srv)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)(now.tv_sec - srv->started_at.tv_sec) * 1000u +
           (uint64_t)((now.tv_nsec - srv->started_at.tv_nsec) / 1000000);
}

int attnd_srv_reload(attnd_srv *srv)
{
    attnd_error err;
    int failed = 0;

    if (srv->auth) {
        attnd_error_clear(&err);
        if (attnd_srv_auth_reload(srv->auth, &err) ||
            attnd_srv_auth_apply(srv->auth, srv->engine, &err)) {
            attnd_log_error("server", "SIGHUP: %s (the tenants stay as they were)", err.msg);
            failed = 1;
        } else {
            attnd_log_info("server", "SIGHUP: --token-file reloaded: %zu tenants",
                           attnd_srv_auth_count(srv->auth));
        }
    }
    if (srv->tls) {
        attnd_error_clear(&err);
        if (attnd_srv_tls_reload(srv->tls, &err)) {
            attnd_log_error("server", "SIGHUP: %s (the certificates stay as they were)",
                            err.msg);
            failed = 1;
        } else {
            attnd_log_info("server", "SIGHUP: TLS certificates reloaded for new connections");
        }
    }
    return failed;
}

int attnd_srv_serving(const attnd_srv *srv)
{
    return !atomic_load(&srv->draining) && !atomic_load(&srv->listener_dead);
}
