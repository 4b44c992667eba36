/* The UCX Attend endpoint's connections: admission from GetEndpoint,
 * liveness, per-connection limits, and what GetStats shows of them.
 *
 * Admission: GetEndpoint (a gRPC thread) hands the client's worker address
 * to the progress thread and waits until it has made an endpoint to it
 * (attnd_ucxw_connect); the client then connects to the address
 * GetEndpoint answers (this rank's, or a same-host client's own worker's),
 * and UCX pairs the two endpoints into one connection, so requests arrive
 * with this endpoint as their reply endpoint. No UCX listener exists.
 *
 * Liveness: a client on another host (or one that may not use shared
 * memory) gets UCX peer error handling: its endpoint's error callback
 * marks the connection failed. A client on this host gets none, so that
 * UCX keeps the shared-memory + CMA lanes (see common/attnd_ucxw.h); its
 * process is watched through a pidfd (polled every WATCH_NS while busy and
 * slept on while idle): once it exits, the connection fails. Such a client
 * gets a UCX worker of its own (GetEndpoint answers that worker's
 * address), retired with its connection: a client killed in the middle
 * of a send leaves a shared-memory receive slot that is never filled,
 * which would otherwise stop every same-host client (attnd_ucxw.h). A failed
 * connection's endpoint is closed with force, its queued replies dropped;
 * jobs still running for it finish and are discarded. Other clients are
 * not affected.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attnd_clock.h"
#include "attnd_log.h"
#include "ucx_int.h"

#define WATCH_NS 5000000u
#define ADMIT_WAIT_MS 10000

/* ---- counting --------------------------------------------------------------------- */

int attnd_srv_ucx_conn_admit(attnd_srv_ucx *u, ucx_conn *c, size_t len, const char **why)
{
    const attnd_srv_config *cfg = u->srv->cfg;
    if (c->n_queued >= cfg->ucx_conn_queue) {
        *why = "--ucx-conn-queue";
    } else if (c->held && c->held + len > cfg->ucx_conn_bytes) {
        *why = "--ucx-conn-bytes";
    } else {
        c->n_queued++;
        c->held += len;
        return 0;
    }
    c->refused++;
    return -1;
}

void attnd_srv_ucx_conn_ran(ucx_conn *c, ucx_job *j)
{
    if (j->admitted && j->len) {
        c->held -= j->len;
        j->len = 0; /* counted once */
    }
}

/* A closed connection's own worker goes once no job holds UCX's data from
 * it (a dead client's sends may stay queued in it: attnd_ucxw.h). */
static void retire_worker(attnd_srv_ucx *u, ucx_conn *c)
{
    if (c->own_worker && !c->worker_retired && c->closed && c->n_held == 0) {
        attnd_ucxw_peer_worker_retire(&u->w, c->worker);
        c->worker_retired = 1;
    }
}

void attnd_srv_ucx_conn_hold(ucx_conn *c)
{
    c->n_held++;
}

void attnd_srv_ucx_conn_release(attnd_srv_ucx *u, ucx_conn *c)
{
    c->n_held--;
    retire_worker(u, c);
}

void attnd_srv_ucx_conn_unref(attnd_srv_ucx *u, ucx_conn *c)
{
    if (--c->refs > 0 || !c->closed)
        return;
    for (ucx_conn **pp = &u->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    retire_worker(u, c); /* (already, unless it never closed with jobs) */
    free(c);
}

void attnd_srv_ucx_conn_answered(attnd_srv_ucx *u, ucx_conn *c, ucx_job *j)
{
    attnd_srv_ucx_conn_ran(c, j);
    if (j->admitted)
        c->n_queued--;
    j->admitted = 0;
    c->n_out--;
    attnd_srv_ucx_conn_unref(u, c);
}

ucx_conn *attnd_srv_ucx_conn_of(attnd_srv_ucx *u, ucp_ep_h ep)
{
    for (ucx_conn *c = u->conns; c; c = c->next)
        if (c->ep == ep && !c->closed)
            return c;
    return NULL;
}

/* ---- what GetStats shows ----------------------------------------------------------- */

static void stats_rebuild(attnd_srv_ucx *u)
{
    size_t n = 0, i = 0;
    for (ucx_conn *c = u->conns; c; c = c->next)
        n += !c->closed;
    pthread_mutex_lock(&u->stats_mu);
    attnd_srv_ucx_ep_info *s = n ? realloc(u->stats, n * sizeof *s) : u->stats;
    if (s || !n) {
        u->stats = s;
        for (ucx_conn *c = u->conns; c && i < n; c = c->next) {
            if (c->closed)
                continue;
            if (c->same_host)
                snprintf(s[i].peer, sizeof s[i].peer, "client %llu (pid %d)",
                         (unsigned long long)c->id, (int)c->pid);
            else
                snprintf(s[i].peer, sizeof s[i].peer, "client %llu",
                         (unsigned long long)c->id);
            snprintf(s[i].transports, sizeof s[i].transports, "%s", c->transports);
            s[i].same_host = c->same_host;
            i++;
        }
    }
    u->n_stats = i;
    pthread_mutex_unlock(&u->stats_mu);
}

size_t attnd_srv_ucx_endpoints(attnd_srv *srv, attnd_srv_ucx_ep_info *out, size_t cap)
{
    attnd_srv_ucx *u = srv->ucx;
    size_t n;
    if (!u)
        return 0;
    pthread_mutex_lock(&u->stats_mu);
    n = u->n_stats;
    if (n && cap)
        memcpy(out, u->stats, (n < cap ? n : cap) * sizeof *out);
    pthread_mutex_unlock(&u->stats_mu);
    return n;
}

/* ---- admission ------------------------------------------------------------------------ */

/* arg is the endpoint's owner, not the connection: UCX may report an
 * error of an endpoint after it was closed (with force) and its
 * connection freed; the endpoint itself still exists then, so a live
 * connection never has its address. */
static void on_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    ucx_conn *c = attnd_srv_ucx_conn_of(arg, ep);
    (void)status; /* a client going away is normal: no log */
    if (c)
        c->failed = 1;
}

/* A same-host client gets a worker of its own (common/attnd_ucxw.h: a
 * client killed in the middle of a send would otherwise stop every
 * same-host client's requests reaching this rank); its address goes back
 * in a->own_addr. Without one (UCX could not make it), the rank's worker. */
static void own_worker(attnd_srv_ucx *u, ucx_admit *a, ucx_conn *c)
{
    attnd_error err;
    ucp_worker_h pw;
    void *addr = NULL;
    size_t len = 0;

    attnd_error_clear(&err);
    if (attnd_ucxw_peer_worker(&u->w, "--ucx-listen", &pw, &addr, &len, &err)) {
        attnd_log_warn("ucx", "%s; the client shares the rank's worker", err.msg);
        return;
    }
    if (len > sizeof a->own_addr) { /* never seen: a few hundred bytes */
        attnd_log_warn("ucx", "a peer worker's address of %zu bytes; the client shares the "
                              "rank's worker", len);
        free(addr);
        attnd_ucxw_peer_worker_retire(&u->w, pw);
        return;
    }
    memcpy(a->own_addr, addr, len);
    a->own_len = len;
    free(addr);
    c->worker = pw;
    c->own_worker = 1;
}

/* On the progress thread: connect to one admitted client; a->st says how
 * it went. */
static void connect_one(attnd_srv_ucx *u, ucx_admit *a, int on_host)
{
    attnd_error err;
    ucx_conn *c = calloc(1, sizeof *c);

    attnd_error_clear(&err);
    if (!c) {
        a->st = attnd_error_set(&err, ATTND_ERR_RESOURCE_EXHAUSTED, "GetEndpoint: no memory");
        goto err;
    }
    c->worker = u->w.worker;
    if (a->same_host)
        own_worker(u, a, c);
    a->st = attnd_ucxw_connect_on(c->worker, a->addr, a->len,
                                  a->same_host ? ATTND_UCXW_PEER_WATCHED : ATTND_UCXW_PEER_CHECKED,
                                  on_ep_error, u, "GetEndpointRequest.ucx_worker_address", &c->ep,
                                  &err);
    if (a->st)
        goto err;
    c->id = ++u->next_conn_id;
    c->pid = a->pid;
    c->pidfd = a->pidfd;
    c->same_host = a->same_host;
    attnd_ucxw_ep_transports(c->ep, c->transports, sizeof c->transports);
    if (on_host && attnd_ucxw_transports_tcp(c->transports))
        attnd_log_warn("ucx", "client %llu runs on this host but UCX uses %s for it (%s; "
                              "shared memory needs the same pid, IPC and network namespaces and uid, "
                              "UCX_TLS with sysv/posix and cma, and pidfds)",
                       (unsigned long long)c->id, c->transports,
                       a->same_host ? "same host" : "not admitted to shared memory");
    c->next = u->conns;
    u->conns = c;
    stats_rebuild(u);
    return;

err:
    snprintf(a->msg, sizeof a->msg, "%s", err.msg);
    if (a->pidfd >= 0)
        close(a->pidfd);
    if (c && c->own_worker)
        attnd_ucxw_peer_worker_retire(&u->w, c->worker);
    free(c);
}

/* Take the admissions GetEndpoint queued. 1 when there were any. */
static int take_admissions(attnd_srv_ucx *u)
{
    ucx_admit *list;

    pthread_mutex_lock(&u->adm_mu);
    list = u->admits;
    u->admits = NULL;
    for (ucx_admit *a = list; a; a = a->next)
        a->taken = 1;
    pthread_mutex_unlock(&u->adm_mu);
    if (!list)
        return 0;
    for (ucx_admit *a = list; a; a = a->next)
        connect_one(u, a, a->on_host);
    pthread_mutex_lock(&u->adm_mu);
    for (ucx_admit *a = list, *next; a; a = next) {
        next = a->next; /* a belongs to its waiter once done is set */
        a->done = 1;
    }
    pthread_cond_broadcast(&u->adm_cv);
    pthread_mutex_unlock(&u->adm_mu);
    return 1;
}

attnd_status attnd_srv_ucx_admit(attnd_srv *srv, const void *addr, size_t len,
                                 const attnd_ucxw_host *peer, int peer_shm_ok,
                                 attnd_srv_ucx_admitted *out, attnd_error *err)
{
    attnd_srv_ucx *u = srv->ucx;
    ucx_admit a;

    if (!u)
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                               "GetEndpoint: this rank serves no UCX endpoint (--ucx-listen)");
    if (attnd_ucxw_address_check(addr, len))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "GetEndpointRequest.ucx_worker_address: not a UCX worker "
                               "address (%zu bytes)", len);
    memset(&a, 0, sizeof a);
    a.addr = addr;
    a.len = len;
    a.pidfd = -1;
    a.on_host = attnd_ucxw_host_same(&u->host, peer);
    if (a.on_host && peer_shm_ok && attnd_ucxw_shm_allowed() &&
        (a.pidfd = attnd_ucxw_pidfd(peer->pid)) >= 0) {
        a.same_host = 1;
        a.pid = peer->pid;
    }
    pthread_mutex_lock(&u->adm_mu);
    if (u->adm_closed) {
        pthread_mutex_unlock(&u->adm_mu);
        if (a.pidfd >= 0)
            close(a.pidfd);
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "GetEndpoint: UCX is stopping");
    }
    a.next = u->admits;
    u->admits = &a;
    attnd_ucxw_wake(&u->w);
    struct timespec ts = attnd_clock_ts(attnd_clock_ms() + ADMIT_WAIT_MS);
    while (!a.done) {
        if (pthread_cond_timedwait(&u->adm_cv, &u->adm_mu, &ts) != ETIMEDOUT)
            continue;
        if (a.taken) { /* being connected: done within a progress round */
            ts = attnd_clock_ts(attnd_clock_ms() + 100);
            continue;
        }
        for (ucx_admit **pp = &u->admits; *pp; pp = &(*pp)->next)
            if (*pp == &a) {
                *pp = a.next;
                break;
            }
        a.done = 1;
        a.st = ATTND_ERR_UNAVAILABLE;
        snprintf(a.msg, sizeof a.msg, "GetEndpoint: the UCX progress thread did not answer "
                                      "in %d ms", ADMIT_WAIT_MS);
        if (a.pidfd >= 0)
            close(a.pidfd);
    }
    pthread_mutex_unlock(&u->adm_mu);
    if (a.st)
        return attnd_error_set(err, a.st, "%s", a.msg);
    out->addr = u->addr;
    out->addr_len = u->addr_len;
    if (a.own_len) {
        memcpy(out->own_addr, a.own_addr, a.own_len);
        out->addr = out->own_addr;
        out->addr_len = a.own_len;
    }
    out->same_host = a.same_host;
    out->host = u->host;
    return ATTND_OK;
}

/* ---- the progress loop's work ---------------------------------------------------------- */

/* Mark connections whose process exited failed (every WATCH_NS). */
static void watch_pids(attnd_srv_ucx *u)
{
    uint64_t now = attnd_clock_ns();
    if (now - u->last_watch_ns < WATCH_NS)
        return;
    u->last_watch_ns = now;
    for (ucx_conn *c = u->conns; c; c = c->next)
        if (c->pidfd >= 0 && !c->failed && !c->closed && attnd_ucxw_pidfd_exited(c->pidfd))
            c->failed = 1;
}

/* Close failed connections (forced: nothing queued for a dead client is
 * worth waiting for). 1 when any was closed. */
static int close_failed(attnd_srv_ucx *u)
{
    int any = 0;
    for (;;) {
        ucx_conn *c;
        for (c = u->conns; c; c = c->next)
            if (c->failed && !c->closed)
                break;
        if (!c)
            break;
        c->refs++; /* callbacks run inside the close may drop jobs */
        attnd_ucxw_ep_close_on(&u->w, c->worker, c->ep, 1);
        c->closed = 1;
        retire_worker(u, c);
        if (c->pidfd >= 0)
            close(c->pidfd);
        c->pidfd = -1;
        attnd_srv_ucx_conn_unref(u, c); /* frees c when no job holds it */
        any = 1;
    }
    if (any)
        stats_rebuild(u);
    return any;
}

int attnd_srv_ucx_tend(void *arg)
{
    attnd_srv_ucx *u = arg;
    int busy = take_admissions(u);
    if (attnd_srv_ucx_jobs(u))
        busy = 1;
    watch_pids(u);
    if (close_failed(u))
        busy = 1;
    return busy;
}

int attnd_srv_ucx_fds(void *arg, struct pollfd *fds, int cap)
{
    attnd_srv_ucx *u = arg;
    int n = 0;
    for (ucx_conn *c = u->conns; c && n < cap; c = c->next)
        if (c->pidfd >= 0 && !c->closed)
            fds[n++] = (struct pollfd){.fd = c->pidfd, .events = POLLIN};
    return n;
}

void attnd_srv_ucx_conns_close_all(attnd_srv_ucx *u)
{
    pthread_mutex_lock(&u->adm_mu);
    u->adm_closed = 1;
    for (ucx_admit *a = u->admits, *next; a; a = next) {
        next = a->next;
        a->st = ATTND_ERR_UNAVAILABLE;
        snprintf(a->msg, sizeof a->msg, "GetEndpoint: UCX is stopping");
        if (a->pidfd >= 0)
            close(a->pidfd);
        a->pidfd = -1;
        a->done = 1;
    }
    u->admits = NULL;
    pthread_cond_broadcast(&u->adm_cv);
    pthread_mutex_unlock(&u->adm_mu);
    for (ucx_conn *c = u->conns; c; c = c->next)
        c->failed = 1;
    close_failed(u);
}
