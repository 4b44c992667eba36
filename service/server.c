/* The gRPC C-core server: its setup, its completion-queue threads, and the
 * dispatch of every event to the call it belongs to.
 *
 * Every thread owns one completion queue registered with the server and
 * keeps one request outstanding per method on it (plus one generic request
 * for methods we do not serve). When a request completes the thread posts
 * a replacement and hands the new call to its method's start function; the
 * handler's later batches come back to its step function (call.c has the
 * batches and the call's end). All events of a call arrive on the thread
 * that accepted it, so nothing here takes a lock.
 *
 * Shutdown: grpc_server_shutdown_and_notify fails every outstanding request
 * at once, which is how each thread learns that the server is stopping (it
 * stops re-requesting and ends its held-open calls); calls in flight run to
 * completion until the grace deadline, after which grpc_server_cancel_all_calls
 * makes their batches fail. Then the queues are shut down and drained and
 * the threads exit.
 */
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "attnd_clock.h"
#include "srv.h"
#include "ucx_server.h"

const attnd_srv_method attnd_srv_methods[ATTND_SRV_M_COUNT + 1] = {
    [ATTND_SRV_M_CREATE_SESSION] = {"/attnd.v1.Attnd/CreateSession", 0,
                                    attnd_srv_create_session_start, NULL},
    [ATTND_SRV_M_APPEND_KV] = {"/attnd.v1.Attnd/AppendKV", 1, attnd_srv_append_start,
                               attnd_srv_append_step},
    [ATTND_SRV_M_ATTEND] = {"/attnd.v1.Attnd/Attend", 0, attnd_srv_attend_start, NULL},
    [ATTND_SRV_M_ATTEND_STREAM] = {"/attnd.v1.Attnd/AttendStream", 1,
                                   attnd_srv_attend_stream_start,
                                   attnd_srv_attend_stream_step},
    [ATTND_SRV_M_CLOSE_SESSION] = {"/attnd.v1.Attnd/CloseSession", 0,
                                   attnd_srv_close_session_start, NULL},
    [ATTND_SRV_M_GET_STATS] = {"/attnd.v1.Attnd/GetStats", 0, attnd_srv_get_stats_start,
                               NULL},
    [ATTND_SRV_M_HEALTH_CHECK] = {"/grpc.health.v1.Health/Check", 0,
                                  attnd_srv_health_check_start, NULL},
    [ATTND_SRV_M_HEALTH_WATCH] = {"/grpc.health.v1.Health/Watch", 0,
                                  attnd_srv_health_watch_start,
                                  attnd_srv_health_watch_step},
    [ATTND_SRV_M_GET_ENDPOINT] = {"/attnd.v1.Attnd/GetEndpoint", 0,
                                  attnd_srv_get_endpoint_start, NULL},
    [ATTND_SRV_M_LOAD_WEIGHTS] = {"/attnd.v1.Attnd/LoadWeights", 0,
                                  attnd_srv_load_weights_start, NULL},
    [ATTND_SRV_M_GENERIC] = {"(unregistered)", 1, attnd_srv_generic_start, NULL},
};

/* ---- threads -------------------------------------------------------------------------- */

/* Post a request for one more call of `method` on th's queue. */
static void request_call(attnd_srv_thread *th, int method)
{
    attnd_srv *srv = th->srv;
    attnd_srv_call *c;
    grpc_call_error e;

    if (th->shutting_down)
        return;
    if (!(c = attnd_srv_call_get(th, method))) {
        fprintf(stderr, "attnd: thread %d: no memory to accept %s calls\n", th->index,
                attnd_srv_methods[method].path);
        return;
    }
    c->state = ATTND_SRV_CALL_REQUESTED;
    if (method == ATTND_SRV_M_GENERIC)
        e = grpc_server_request_call(srv->server, &c->call, &c->details, &c->md, th->cq,
                                     th->cq, &c->op_tag);
    else
        e = grpc_server_request_registered_call(
            srv->server, srv->registered[method], &c->call, &c->deadline, &c->md,
            attnd_srv_methods[method].streaming ? NULL : &c->recv, th->cq, th->cq,
            &c->op_tag);
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "attnd: thread %d: requesting %s calls: %s\n", th->index,
                attnd_srv_methods[method].path, grpc_call_error_to_string(e));
        attnd_srv_call_put(c);
        return;
    }
    c->pending = 1;
}

/* The server is stopping: stop requesting, end held-open calls. */
static void thread_stopping(attnd_srv_thread *th)
{
    if (th->shutting_down)
        return;
    th->shutting_down = 1;
    attnd_srv_call *c = th->watches, *next;
    for (; c; c = next) {
        next = c->next;
        c->end_requested = 1;
        if (c->state == ATTND_SRV_CALL_ACTIVE && !c->op_inflight) {
            attnd_srv_methods[c->method].step(c, 1);
            attnd_srv_call_maybe_release(c);
        }
    }
}

static void on_event(attnd_srv_thread *th, const grpc_event *ev)
{
    attnd_srv_tag *tag = ev->tag;
    attnd_srv_call *c = tag->call;

    c->pending--;
    if (tag->is_close) {
        c->close_done = 1;
        if (c->state == ATTND_SRV_CALL_ACTIVE && !c->op_inflight)
            c->state = ATTND_SRV_CALL_FINISHING; /* the client went away */
    } else if (c->state == ATTND_SRV_CALL_REQUESTED) {
        if (!ev->success) { /* shutdown fails every outstanding request */
            c->state = ATTND_SRV_CALL_FINISHING;
            attnd_srv_call_maybe_release(c);
            thread_stopping(th);
            return;
        }
        request_call(th, c->method);
        c->state = ATTND_SRV_CALL_ACTIVE;
        c->t_start_ns = attnd_clock_ns();
        c->counted = 1;
        atomic_fetch_add(&th->srv->active_calls, 1);
        attnd_srv_methods[c->method].start(c);
    } else {
        c->op_inflight = 0;
        if (c->send) {
            grpc_byte_buffer_destroy(c->send);
            c->send = NULL;
        }
        if (c->state == ATTND_SRV_CALL_ACTIVE) {
            if (c->close_done) /* cancelled while this batch ran */
                c->state = ATTND_SRV_CALL_FINISHING;
            else
                attnd_srv_methods[c->method].step(c, ev->success);
        }
    }
    attnd_srv_call_maybe_release(c);
}

static void *thread_main(void *arg)
{
    attnd_srv_thread *th = arg;

    for (int m = 0; m <= ATTND_SRV_M_GENERIC; m++)
        request_call(th, m);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(th->cq, gpr_inf_future(GPR_CLOCK_REALTIME),
                                                   NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            on_event(th, &ev);
    }
    if (th->live_calls)
        fprintf(stderr, "attnd: thread %d: %zu calls left at exit\n", th->index,
                th->live_calls);
    return NULL;
}

/* ---- the server ------------------------------------------------------------------------ */

static void thread_cleanup(attnd_srv_thread *th)
{
    attnd_srv_call *c = th->free_calls;
    while (c) {
        attnd_srv_call *next = c->next;
        free(c);
        c = next;
    }
    th->free_calls = NULL;
    attnd_engine_ws_cleanup(&th->ws);
    attnd_srv_arena_cleanup(&th->arena);
    attnd_srv_buf_cleanup(&th->flat);
}

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

attnd_status attnd_srv_create(const attnd_srv_config *cfg, attnd_engine *engine,
                              attnd_srv **srv_p, attnd_error *err)
{
    grpc_arg args[8];
    grpc_channel_args chargs = {0, args};
    grpc_server_credentials *creds;
    attnd_status st;
    attnd_srv *srv;

    if (!(srv = calloc(1, sizeof *srv)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "server: out of memory");
    srv->cfg = cfg;
    srv->engine = engine;
    if (!(srv->metrics = attnd_srv_metrics_create())) {
        free(srv);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "server: out of memory");
    }
    clock_gettime(CLOCK_MONOTONIC, &srv->started);
    attnd_srv_model_init(&srv->model, attnd_engine_model(engine), attnd_engine_page_size(engine),
                         cfg->max_sessions);

    int max_msg = cfg->max_message > INT32_MAX ? INT32_MAX : (int)cfg->max_message;
    arg_int(&args[chargs.num_args++], GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, max_msg);
    arg_int(&args[chargs.num_args++], GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, max_msg);
    /* two servers must never share a port by accident */
    arg_int(&args[chargs.num_args++], GRPC_ARG_ALLOW_REUSEPORT, 0);
    if (cfg->http2_lookahead > 0)
        arg_int(&args[chargs.num_args++], GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                (int)cfg->http2_lookahead);
    if (cfg->http2_max_frame > 0)
        arg_int(&args[chargs.num_args++], GRPC_ARG_HTTP2_MAX_FRAME_SIZE,
                (int)cfg->http2_max_frame);
    srv->server = grpc_server_create(&chargs, NULL);
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
    int n_threads = cfg->threads > 0 ? cfg->threads : 1;
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
        attnd_engine_ws_init(&th->ws);
        attnd_srv_arena_init(&th->arena, 0);
        srv->n_threads++;
    }
    creds = grpc_insecure_server_credentials_create();
    srv->port = grpc_server_add_http2_port(srv->server, cfg->listen, creds);
    grpc_server_credentials_release(creds);
    if (srv->port <= 0) {
        st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                             "--listen: cannot listen on %s (in use, or not a local address?)",
                             cfg->listen);
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
    /* before gRPC serves: GetEndpoint must find the UCX address */
    attnd_status st = attnd_srv_ucx_start(srv, err);
    if (st)
        return st;
    if (srv->cfg->metrics_listen[0] &&
        (st = attnd_srv_metrics_http_start(srv, srv->cfg->metrics_listen, err)))
        return st;
    grpc_server_start(srv->server);
    for (int i = 0; i < srv->n_threads; i++) {
        attnd_srv_thread *th = &srv->threads[i];
        int rc = pthread_create(&th->tid, NULL, thread_main, th);
        if (rc) {
            attnd_srv_shutdown(srv, 0, NULL);
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "--threads: cannot start thread %d: %s", i, strerror(rc));
        }
        th->running = 1;
    }
    return ATTND_OK;
}

static gpr_timespec ms_from_now(int64_t ms)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

int attnd_srv_shutdown(attnd_srv *srv, int64_t grace_ms, int (*interrupt)(void))
{
    int cancelled = 0, idle_cut = 0;

    if (srv->shut_down)
        return 0;
    srv->shut_down = 1;
    atomic_store(&srv->draining, 1);
    grpc_server_shutdown_and_notify(srv->server, srv->shutdown_cq, srv);
    gpr_timespec deadline = ms_from_now(grace_ms);
    for (;;) {
        gpr_timespec wake = ms_from_now(100);
        if (!cancelled && gpr_time_cmp(deadline, wake) < 0)
            wake = deadline;
        grpc_event ev = grpc_completion_queue_next(srv->shutdown_cq, wake, NULL);
        if (ev.type == GRPC_OP_COMPLETE)
            break;
        /* Nothing in flight: close idle client connections now rather than
         * wait for each client to act on the GOAWAY (seconds). */
        if (!cancelled && !idle_cut && atomic_load(&srv->active_calls) == 0) {
            grpc_server_cancel_all_calls(srv->server);
            idle_cut = 1;
            continue;
        }
        if (!cancelled && (gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), deadline) >= 0 ||
                           (interrupt && interrupt()))) {
            grpc_server_cancel_all_calls(srv->server);
            cancelled = 1;
        }
    }
    for (int i = 0; i < srv->n_threads; i++)
        grpc_completion_queue_shutdown(srv->threads[i].cq);
    for (int i = 0; i < srv->n_threads; i++)
        if (srv->threads[i].running) {
            pthread_join(srv->threads[i].tid, NULL);
            srv->threads[i].running = 0;
        }
    attnd_srv_ucx_stop(srv);
    return cancelled;
}

void attnd_srv_destroy(attnd_srv *srv)
{
    if (!srv)
        return;
    if (!srv->shut_down)
        attnd_srv_shutdown(srv, 0, NULL);
    attnd_srv_metrics_http_stop(srv); /* it reads the engine and every shard */
    attnd_srv_ucx_stop(srv);
    grpc_server_destroy(srv->server);
    for (int i = 0; i < srv->n_threads; i++) {
        cq_drain(srv->threads[i].cq);
        grpc_completion_queue_destroy(srv->threads[i].cq);
        thread_cleanup(&srv->threads[i]);
    }
    cq_drain(srv->shutdown_cq);
    grpc_completion_queue_destroy(srv->shutdown_cq);
    free(srv->threads);
    attnd_srv_metrics_destroy(srv->metrics);
    free(srv);
}

uint64_t attnd_srv_uptime_ms(const attnd_srv *srv)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)(now.tv_sec - srv->started.tv_sec) * 1000u +
           (uint64_t)((now.tv_nsec - srv->started.tv_nsec) / 1000000);
}
