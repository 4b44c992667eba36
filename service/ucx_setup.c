/* Start and stop of the UCX Attend endpoint (see ucx_server.h): the ucp
 * context and worker (common/attnd_ucxw.h), the AM handler, this rank's
 * worker address, the executors and the progress thread of ucx_server.c /
 * ucx_conn.c; stop joins them and closes every client endpoint.
 *
 * --ucx-listen HOST:PORT (auto: --listen's host, port 0) says where UCX's
 * network transport may be reached: only on HOST's interface
 * (UCX_NET_DEVICES; a wildcard host: every interface), on TCP port PORT
 * (0: a free one). There is no UCX listener: clients send their worker
 * address in GetEndpoint and connect to ours (ucx_conn.c). Messages up to
 * 256K go eager. The environment (UCX_NET_DEVICES, UCX_TCP_PORT_RANGE,
 * UCX_RNDV_THRESH) wins.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ucx_int.h"

/* ---- start and stop ----------------------------------------------------------------------- */

/* --ucx-listen into host and port. */
static int parse_listen(const attnd_srv_config *cfg, char *host, size_t cap, int *port_p)
{
    const char *spec = strcmp(cfg->ucx_listen, "auto") == 0 ? cfg->listen : cfg->ucx_listen;
    const char *colon = strrchr(spec, ':');
    char *end;

    if (!colon || (size_t)(colon - spec) >= cap)
        return -1;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535)
        return -1;
    *port_p = strcmp(cfg->ucx_listen, "auto") == 0 ? 0 : (int)port;
    return 0;
}

static void ucx_free(attnd_srv_ucx *u)
{
    if (u->w.worker)
        attnd_srv_ucx_conns_close_all(u);
    /* jobs still queued: dropped (their endpoints are closed) */
    ucx_job *j;
    for (ucx_fifo *f = &u->ready; f; f = f == &u->ready ? &u->queued : f == &u->queued ? &u->done : NULL)
        while ((j = f->head)) {
            f->head = j->next;
            attnd_srv_ucx_job_put(j);
        }
    u->ready.tail = u->queued.tail = u->done.tail = NULL;
    /* sends in flight come back through the closes, in cleanup's progress */
    attnd_ucxw_cleanup(&u->w);
    u->free_jobs = NULL;
    for (ucx_job *next; (j = u->all_jobs); u->all_jobs = next) {
        next = j->all_next;
        free(j->req.p);
        free(j->rep.p);
        free(j);
    }
    /* connections still referenced by lost jobs */
    for (ucx_conn *c = u->conns, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    for (int i = 0; i < u->n_exec; i++) {
        attnd_engine_ws_cleanup(&u->exec[i].ws);
        attnd_srv_arena_cleanup(&u->exec[i].arena);
    }
    free(u->exec);
    if (u->q_init) {
        pthread_mutex_destroy(&u->q_mu);
        pthread_cond_destroy(&u->q_cv);
    }
    if (u->adm_init) {
        pthread_mutex_destroy(&u->adm_mu);
        pthread_cond_destroy(&u->adm_cv);
    }
    if (u->stats_init)
        pthread_mutex_destroy(&u->stats_mu);
    free(u->stats);
    free(u->addr);
    attnd_engine_ws_cleanup(&u->ws);
    attnd_srv_arena_cleanup(&u->arena);
    free(u);
}

/* Join the executors (each finishes the job in hand; jobs still queued
 * are dropped by ucx_free). */
static void stop_executors(attnd_srv_ucx *u)
{
    if (!u->q_init)
        return;
    pthread_mutex_lock(&u->q_mu);
    atomic_store(&u->exec_stop, 1);
    pthread_cond_broadcast(&u->q_cv);
    pthread_mutex_unlock(&u->q_mu);
    for (int i = 0; i < u->n_exec; i++)
        if (u->exec[i].running) {
            pthread_join(u->exec[i].tid, NULL);
            u->exec[i].running = 0;
        }
}

/* n executor threads and their queues (n = 0: none, requests run on the
 * progress thread). */
static attnd_status start_executors(attnd_srv_ucx *u, int n, attnd_error *err)
{
    pthread_mutex_init(&u->q_mu, NULL);
    pthread_cond_init(&u->q_cv, NULL);
    u->q_init = 1;
    if (n <= 0)
        return ATTND_OK;
    if (!(u->exec = calloc((size_t)n, sizeof *u->exec)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "--ucx-exec-threads: no memory");
    u->n_exec = n;
    for (int i = 0; i < n; i++) {
        ucx_exec *x = &u->exec[i];
        x->u = u;
        attnd_engine_ws_init(&x->ws);
        attnd_srv_arena_init(&x->arena, 0);
    }
    for (int i = 0; i < n; i++) {
        int rc = pthread_create(&u->exec[i].tid, NULL, attnd_srv_ucx_exec_thread, &u->exec[i]);
        if (rc) {
            stop_executors(u);
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "--ucx-exec-threads: cannot start thread %d: %s", i,
                                   strerror(rc));
        }
        u->exec[i].running = 1;
    }
    return ATTND_OK;
}

static void init_locks(attnd_srv_ucx *u)
{
    pthread_condattr_t ca; /* the admission wait's deadline is CLOCK_MONOTONIC */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&u->adm_mu, NULL);
    pthread_cond_init(&u->adm_cv, &ca);
    pthread_condattr_destroy(&ca);
    u->adm_init = 1;
    pthread_mutex_init(&u->stats_mu, NULL);
    u->stats_init = 1;
}

attnd_status attnd_srv_ucx_start(attnd_srv *srv, attnd_error *err)
{
    const attnd_srv_config *cfg = srv->cfg;
    char host[256];
    attnd_srv_ucx *u;
    attnd_status st;
    ucs_status_t us;
    int port;

    if (!cfg->ucx_listen[0] || srv->ucx)
        return ATTND_OK;
    if (parse_listen(cfg, host, sizeof host, &port))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--ucx-listen: expected HOST:PORT or auto, got \"%s\"",
                               cfg->ucx_listen);
    if (!(u = calloc(1, sizeof *u)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--ucx-listen: no memory");
    u->srv = srv;
    attnd_engine_ws_init(&u->ws);
    attnd_srv_arena_init(&u->arena, 0);
    init_locks(u);
    attnd_ucxw_host_self(&u->host);

    attnd_ucxw_config wc = {.thread_mode = UCS_THREAD_MODE_SINGLE, .net_host = host,
                            .tcp_port = port};
    if ((st = attnd_ucxw_init(&u->w, &wc, "--ucx-listen", err)))
        goto err_free;
    if ((us = attnd_ucxw_on_am(&u->w, ATTND_UCX_AM_ATTEND, attnd_srv_ucx_on_attend, u)) !=
            UCS_OK ||
        (us = attnd_ucxw_on_am(&u->w, ATTND_UCX_AM_HELLO, attnd_srv_ucx_on_hello, u)) !=
            UCS_OK ||
        (us = attnd_ucxw_on_am(&u->w, ATTND_UCX_AM_BYE, attnd_srv_ucx_on_bye, u)) != UCS_OK) {
        st = attnd_error_set(err, ATTND_ERR_INTERNAL, "--ucx-listen: AM handler: %s",
                             ucs_status_string(us));
        goto err_free;
    }
    if ((st = attnd_ucxw_address(&u->w, &u->addr, &u->addr_len, err)))
        goto err_free;
    snprintf(u->address, sizeof u->address, "devices %s", u->w.net_devices);
    if ((st = start_executors(u, cfg->ucx_exec_threads, err)))
        goto err_free;
    attnd_ucxw_loop loop = {
        .tend = attnd_srv_ucx_tend,
        .fds = attnd_srv_ucx_fds,
        .arg = u,
        .spin_ns = (uint64_t)cfg->ucx_spin_us * 1000u,
        .tick_ms = 100, /* pidfds beyond what one poll() watches */
    };
    if ((st = attnd_ucxw_start(&u->w, &loop, "--ucx-listen", err))) {
        stop_executors(u);
        goto err_free;
    }
    srv->ucx = u;
    return ATTND_OK;

err_free:
    ucx_free(u);
    return st;
}

void attnd_srv_ucx_stop(attnd_srv *srv)
{
    attnd_srv_ucx *u = srv->ucx;

    if (!u)
        return;
    attnd_ucxw_stop(&u->w);
    stop_executors(u);
    srv->ucx = NULL;
    ucx_free(u);
}

void attnd_srv_ucx_refuse(attnd_srv *srv)
{
    if (srv->ucx)
        atomic_store(&srv->ucx->refusing, 1);
}

int attnd_srv_ucx_busy(const attnd_srv *srv)
{
    return srv->ucx ? atomic_load(&srv->ucx->busy) : 0;
}

const char *attnd_srv_ucx_address(const attnd_srv *srv)
{
    return srv->ucx ? srv->ucx->address : "";
}
