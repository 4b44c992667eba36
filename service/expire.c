/* Idle sessions expire (--session-idle-ttl, issue 15 item 3).
 *
 * A client that crashes or forgets its sessions would hold their pages
 * until a restart. With a TTL, a thread wakes a few times per TTL (at most
 * once a second, at least every 10 ms) and closes every session that no
 * call has named for the TTL and that nothing holds right now
 * (attnd_engine_reap_idle: an open AppendKV stream or a running call
 * keeps it). GetStats counts them (sessions_expired, pages_expired); a
 * later call naming one gets NOT_FOUND.
 *
 * In a worker group every rank runs this on its own engine; every call
 * reaches every rank, so they agree on idleness, and a rank that closes a
 * session also closes it on its peers (attnd_group_session_close), which
 * answer NOT_FOUND if they were first. At most 256 sessions close per
 * round; the next round takes the rest.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_clock.h"
#include "attnd_log.h"
#include "srv.h"

#define REAP_MAX 256

struct attnd_srv_expire {
    attnd_srv *srv;
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    attnd_session_id ids[REAP_MAX];
};

static void reap_once(attnd_srv_expire *x)
{
    attnd_srv *srv = x->srv;
    size_t n = 0;

    attnd_engine_reap_idle(srv->engine, (uint64_t)srv->cfg->session_idle_ttl_ms, x->ids,
                           REAP_MAX, &n);
    if (!n)
        return;
    for (size_t i = 0; srv->group && i < n; i++) {
        attnd_error ignored; /* NOT_FOUND here: this rank's shard is gone already */
        attnd_group_session_close(srv->group, &x->ids[i], NULL, &ignored);
    }
    attnd_log_info("server", "%zu sessions idle for %lld ms closed (--session-idle-ttl)", n,
                   (long long)srv->cfg->session_idle_ttl_ms);
}

static void *expire_main(void *arg)
{
    attnd_srv_expire *x = arg;
    int64_t every = x->srv->cfg->session_idle_ttl_ms / 4;

    every = every > 1000 ? 1000 : every < 10 ? 10 : every;
    pthread_mutex_lock(&x->mu);
    while (!x->stop) {
        struct timespec at = attnd_clock_ts(attnd_clock_ms() + every);
        while (!x->stop && pthread_cond_timedwait(&x->cv, &x->mu, &at) != ETIMEDOUT)
            ;
        if (x->stop)
            break;
        pthread_mutex_unlock(&x->mu);
        reap_once(x);
        pthread_mutex_lock(&x->mu);
    }
    pthread_mutex_unlock(&x->mu);
    return NULL;
}

attnd_status attnd_srv_expire_start(attnd_srv *srv, attnd_error *err)
{
    pthread_condattr_t ca;
    attnd_srv_expire *x;
    int rc;

    if (srv->cfg->session_idle_ttl_ms <= 0)
        return ATTND_OK;
    if (!(x = calloc(1, sizeof *x)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "--session-idle-ttl: out of memory");
    x->srv = srv;
    pthread_mutex_init(&x->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&x->cv, &ca);
    pthread_condattr_destroy(&ca);
    if ((rc = pthread_create(&x->tid, NULL, expire_main, x))) {
        pthread_cond_destroy(&x->cv);
        pthread_mutex_destroy(&x->mu);
        free(x);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "--session-idle-ttl: cannot start its thread: %s", strerror(rc));
    }
    srv->expire = x;
    return ATTND_OK;
}

void attnd_srv_expire_stop(attnd_srv *srv)
{
    attnd_srv_expire *x = srv->expire;
    if (!x)
        return;
    pthread_mutex_lock(&x->mu);
    x->stop = 1;
    pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
    pthread_join(x->tid, NULL);
    pthread_cond_destroy(&x->cv);
    pthread_mutex_destroy(&x->mu);
    srv->expire = NULL;
    free(x);
}
