/* Start and stop of the UCX Attend endpoint (see ucx_server.h): the ucp
 * context (active messages + wakeup), the worker, the listener bound as
 * --ucx-listen says (auto: --listen's host, a free port), and the progress
 * thread of ucx_server.c; stop joins it and closes every client endpoint.
 *
 * UCX configuration: endpoints use peer error handling, so a client that
 * dies is noticed and closed without hurting anyone else; in UCX 1.13 that
 * rules out the shared-memory transports, so even on one host the data
 * goes over TCP (client/bench/transport/transport_bench.sh shows what it costs
 * against ucx_perftest with and without -e). Messages up to 256K go eager
 * (UCX_RNDV_THRESH in the environment wins).
 */
#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "attnd_log.h"
#include "attnd_ucx_setup.h"
#include "ucx_int.h"

/* ---- start and stop ----------------------------------------------------------------------- */

/* Split "host:port" ("[v6]:port" too) and resolve it. */
static int resolve(const char *hostport, struct sockaddr_storage *ss, socklen_t *len_p,
                   char *host, size_t host_cap, int *port_p)
{
    const char *colon = strrchr(hostport, ':');
    struct addrinfo hints, *ai = NULL;
    size_t hl;

    if (!colon)
        return -1;
    hl = (size_t)(colon - hostport);
    if (hl >= 2 && hostport[0] == '[' && hostport[hl - 1] == ']') {
        hostport++;
        hl -= 2;
    }
    if (hl + 1 > host_cap)
        return -1;
    memcpy(host, hostport, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return -1;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    if (getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &ai) != 0 || !ai)
        return -1;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len_p = ai->ai_addrlen;
    *port_p = (int)port;
    freeaddrinfo(ai);
    return 0;
}

static int bound_port(ucp_listener_h l)
{
    ucp_listener_attr_t a = {.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR};
    if (ucp_listener_query(l, &a) != UCS_OK)
        return -1;
    if (a.sockaddr.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&a.sockaddr)->sin_port);
    if (a.sockaddr.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&a.sockaddr)->sin6_port);
    return -1;
}

static attnd_status set_handler(attnd_srv_ucx *u, attnd_error *err)
{
    ucs_status_t st = attnd_ucx_on_am(u->worker, ATTND_UCX_AM_ATTEND, attnd_srv_ucx_on_attend, u);
    if (st != UCS_OK)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "--ucx-listen: AM handler: %s",
                               ucs_status_string(st));
    return ATTND_OK;
}

static void ucx_free(attnd_srv_ucx *u)
{
    for (;;) {
        ucx_conn *c = u->conns;
        while (c && c->closed)
            c = c->next;
        if (!c)
            break;
        attnd_srv_ucx_close_ep(u, c); /* may free c */
    }
    while (u->ready) { /* dropped: their endpoints are closed */
        ucx_job *j = u->ready;
        u->ready = j->next;
        attnd_srv_ucx_job_put(j);
    }
    /* executors are joined by now: what they left is dropped too */
    for (ucx_fifo *f = &u->queued; f; f = f == &u->queued ? &u->done : NULL)
        for (ucx_job *j = f->head, *next; j; j = next) {
            next = j->next;
            attnd_srv_ucx_job_put(j);
        }
    u->queued.head = u->queued.tail = u->done.head = u->done.tail = NULL;
    /* jobs whose send was in flight came back through the close */
    for (ucx_job *j = u->free_jobs, *next; j; j = next) {
        next = j->next;
        free(j->req.p);
        free(j->rep.p);
        free(j);
    }
    /* connections still referenced by lost jobs */
    for (ucx_conn *c = u->conns, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    if (u->listener)
        ucp_listener_destroy(u->listener);
    if (u->worker)
        ucp_worker_destroy(u->worker);
    if (u->ctx)
        ucp_cleanup(u->ctx);
    if (u->stop_fd >= 0)
        close(u->stop_fd);
    if (u->done_fd >= 0)
        close(u->done_fd);
    for (int i = 0; i < u->n_exec; i++) {
        attnd_engine_ws_cleanup(&u->exec[i].ws);
        attnd_srv_arena_cleanup(&u->exec[i].arena);
    }
    free(u->exec);
    if (u->q_init) {
        pthread_mutex_destroy(&u->q_mu);
        pthread_cond_destroy(&u->q_cv);
    }
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

/* n executor threads with their queues and wake-up eventfd (n = 0: none,
 * requests run on the progress thread). */
static attnd_status start_executors(attnd_srv_ucx *u, int n, attnd_error *err)
{
    if (n <= 0)
        return ATTND_OK;
    if ((u->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "--ucx-exec-threads: eventfd: %s", strerror(errno));
    if (!(u->exec = calloc((size_t)n, sizeof *u->exec)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "--ucx-exec-threads: no memory");
    pthread_mutex_init(&u->q_mu, NULL);
    pthread_cond_init(&u->q_cv, NULL);
    u->q_init = 1;
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

attnd_status attnd_srv_ucx_start(attnd_srv *srv, attnd_error *err)
{
    const attnd_srv_config *cfg = srv->cfg;
    char spec[300], host[256];
    struct sockaddr_storage ss;
    socklen_t sslen;
    attnd_srv_ucx *u;
    attnd_status st;
    ucs_status_t us;
    int port;

    if (!cfg->ucx_listen[0] || srv->ucx)
        return ATTND_OK;
    if (strcmp(cfg->ucx_listen, "auto") == 0) {
        const char *colon = strrchr(cfg->listen, ':');
        snprintf(spec, sizeof spec, "%.*s:0", (int)(colon - cfg->listen), cfg->listen);
    } else {
        snprintf(spec, sizeof spec, "%s", cfg->ucx_listen);
    }
    if (resolve(spec, &ss, &sslen, host, sizeof host, &port))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--ucx-listen: cannot resolve \"%s\" (expected HOST:PORT)", spec);
    if (!(u = calloc(1, sizeof *u)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--ucx-listen: no memory");
    u->srv = srv;
    u->stop_fd = -1;
    u->done_fd = -1;
    attnd_engine_ws_init(&u->ws);
    attnd_srv_arena_init(&u->arena, 0);

    if ((us = attnd_ucx_setup(UCS_THREAD_MODE_SINGLE, &u->ctx, &u->worker, &u->efd)) != UCS_OK)
        goto err_ucs;
    if ((st = set_handler(u, err)))
        goto err_free;
    ucp_listener_params_t lp = {
        .field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
        .sockaddr = {.addr = (const struct sockaddr *)&ss, .addrlen = sslen},
        .conn_handler = {.cb = attnd_srv_ucx_on_conn_request, .arg = u},
    };
    if ((us = ucp_listener_create(u->worker, &lp, &u->listener)) != UCS_OK) {
        st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                             "--ucx-listen: cannot listen on %s: %s", spec,
                             ucs_status_string(us));
        goto err_free;
    }
    if ((port = bound_port(u->listener)) < 0) {
        st = attnd_error_set(err, ATTND_ERR_INTERNAL, "--ucx-listen: cannot query the port");
        goto err_free;
    }
    snprintf(u->address, sizeof u->address, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host,
             port);
    if ((u->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--ucx-listen: eventfd: %s",
                             strerror(errno));
        goto err_free;
    }
    if ((st = start_executors(u, cfg->ucx_exec_threads, err)))
        goto err_free;
    int rc = pthread_create(&u->tid, NULL, attnd_srv_ucx_thread, u);
    if (rc) {
        stop_executors(u);
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "--ucx-listen: cannot start the progress thread: %s", strerror(rc));
        goto err_free;
    }
    u->running = 1;
    srv->ucx = u;
    return ATTND_OK;

err_ucs:
    st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "--ucx-listen: UCX: %s",
                         ucs_status_string(us));
err_free:
    ucx_free(u);
    return st;
}

void attnd_srv_ucx_stop(attnd_srv *srv)
{
    attnd_srv_ucx *u = srv->ucx;
    uint64_t one = 1;

    if (!u)
        return;
    if (u->running) {
        atomic_store(&u->stop, 1);
        if (write(u->stop_fd, &one, sizeof one) < 0)
            attnd_log_error("ucx", "waking the progress thread: %s", strerror(errno));
        pthread_join(u->tid, NULL);
        u->running = 0;
    }
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
