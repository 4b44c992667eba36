/* Buffers and pending calls of the worker group.
 *
 * Buffers: byte buffers on a free list (first fit; at most 64 kept), so that
 * a steady decode loop reuses the same ones for requests, replies and
 * partial results.
 *
 * Calls: a leader that sends a request to peers registers a call (an id
 * and one slot per rank); replies find their call by id in the AM handler
 * (group_net.c, under net.mu) and land in the slot's buffer, by copy for an
 * eager message or by ucp_am_recv_data_nbx straight into it for a
 * rendezvous one. The leader waits on call_cv until every slot it expects is
 * done or the deadline passes. A leader that gives up while a rendezvous
 * receive still writes into a slot's buffer marks the call abandoned; the
 * receive's completion then frees the call. A slot fails when its peer's
 * endpoint breaks (attnd__gcalls_fail_rank) or at the deadline.
 *
 * Invariants (ATTND_ASSERT, every build): a call's n_left is the number of
 * its slots expected and not done, under call_mu; a slot is expected once
 * and done once; a rendezvous receive is in flight on a slot at most once;
 * a buffer is on the free list at most once, and the list holds at most 64.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnd_assert.h"
#include "attnd_clock.h"
#include "group_int.h"

/* ---- buffers -------------------------------------------------------------------- */

attnd__gbuf *attnd__gbuf_get(attnd_group *g, size_t n)
{
    attnd__gbuf *b, **pp;

    pthread_mutex_lock(&g->buf_mu);
    for (pp = &g->free_bufs; (b = *pp); pp = &b->next)
        if (b->cap >= n) {
            *pp = b->next;
            g->n_free_bufs--;
            ATTND_ASSERT(b->pooled && b->g == g && g->n_free_bufs >= 0);
            break;
        }
    pthread_mutex_unlock(&g->buf_mu);
    if (!b) {
        b = calloc(1, sizeof *b);
        if (!b)
            return NULL;
        b->cap = n < 4096 ? 4096 : n;
        if (posix_memalign((void **)&b->data, 64, b->cap)) {
            free(b);
            return NULL;
        }
    }
    b->next = NULL;
    b->g = g;
    b->pooled = 0;
    b->peer_token = 0;
    b->len = 0;
    memset(&b->hdr, 0, sizeof b->hdr);
    return b;
}

static void gbuf_free(attnd__gbuf *b)
{
    free(b->data);
    free(b);
}

void attnd__gbuf_put(attnd_group *g, attnd__gbuf *b)
{
    if (!b)
        return;
    ATTND_ASSERT(b->g == g);
    pthread_mutex_lock(&g->buf_mu);
    ATTND_ASSERT(!b->pooled); /* put twice */
    if (g->n_free_bufs < 64) {
        b->pooled = 1;
        b->next = g->free_bufs;
        g->free_bufs = b;
        g->n_free_bufs++;
        b = NULL;
    }
    pthread_mutex_unlock(&g->buf_mu);
    if (b)
        gbuf_free(b);
}

void attnd__gbufs_cleanup(attnd_group *g)
{
    attnd__gbuf *b = g->free_bufs, *next;
    for (; b; b = next) {
        next = b->next;
        gbuf_free(b);
    }
    g->free_bufs = NULL;
    g->n_free_bufs = 0;
}

/* ---- calls ---------------------------------------------------------------------- */

/* n_left counts the slots expected and not done (caller holds call_mu). */
static void check_left(const attnd_group *g, const attnd__gcall *c)
{
    int open = 0;
    for (int32_t r = 0; r < g->N; r++) {
        ATTND_ASSERT(!c->slot[r].done || c->slot[r].expect);
        open += c->slot[r].expect && !c->slot[r].done;
    }
    ATTND_ASSERT(c->n_left == open);
}

attnd__gcall *attnd__gcall_new(attnd_group *g)
{
    attnd__gcall *c;

    pthread_mutex_lock(&g->call_mu);
    c = g->free_calls;
    if (c)
        g->free_calls = c->next;
    pthread_mutex_unlock(&g->call_mu);
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c || !(c->slot = calloc((size_t)g->N, sizeof *c->slot))) {
            free(c);
            return NULL;
        }
    }
    memset(c->slot, 0, sizeof *c->slot * (size_t)g->N);
    c->n_left = 0;
    c->abandoned = 0;
    pthread_mutex_lock(&g->call_mu);
    c->id = ++g->next_call_id;
    c->next = g->calls;
    g->calls = c;
    pthread_mutex_unlock(&g->call_mu);
    return c;
}

int attnd__gcall_expect(attnd_group *g, attnd__gcall *c, int32_t r, size_t want, size_t max)
{
    attnd__gbuf *b = attnd__gbuf_get(g, want);
    if (!b)
        return -1;
    pthread_mutex_lock(&g->call_mu);
    ATTND_ASSERT(r >= 0 && r < g->N && !c->slot[r].expect && !c->slot[r].buf);
    c->slot[r].expect = 1;
    c->slot[r].buf = b;
    c->slot[r].want = want;
    c->slot[r].max = max > want ? max : want;
    c->n_left++;
    check_left(g, c);
    pthread_mutex_unlock(&g->call_mu);
    return 0;
}

void attnd__gslot_fail(attnd_group *g, attnd__gcall *c, int32_t r, attnd_status st,
                       const char *msg)
{
    attnd__gslot *s = &c->slot[r];
    if (!s->expect || s->done)
        return;
    s->done = 1;
    s->st = st;
    snprintf(s->msg, sizeof s->msg, "%s", msg);
    c->n_left--;
    check_left(g, c);
    pthread_cond_broadcast(&g->call_cv);
}

static void unlink_call(attnd_group *g, attnd__gcall *c)
{
    for (attnd__gcall **pp = &g->calls; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
}

static int inflight(const attnd_group *g, const attnd__gcall *c)
{
    for (int32_t r = 0; r < g->N; r++)
        if (c->slot[r].recv_inflight)
            return 1;
    return 0;
}

/* Caller holds call_mu; c is unlinked. */
static void free_call_locked(attnd_group *g, attnd__gcall *c, attnd__gbuf **bufs_p)
{
    ATTND_ASSERT(!inflight(g, c)); /* no receive writes into its buffers */
    for (int32_t r = 0; r < g->N; r++)
        if (c->slot[r].buf) {
            c->slot[r].buf->next = *bufs_p;
            *bufs_p = c->slot[r].buf;
            c->slot[r].buf = NULL;
        }
    c->next = g->free_calls;
    g->free_calls = c;
}

static void put_bufs(attnd_group *g, attnd__gbuf *b)
{
    while (b) {
        attnd__gbuf *next = b->next;
        attnd__gbuf_put(g, b);
        b = next;
    }
}

void attnd__gcall_wait(attnd_group *g, attnd__gcall *c, int64_t deadline_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t left = deadline_ms - attnd_clock_ms();
    if (left < 0)
        left = 0;
    ts.tv_sec += left / 1000;
    ts.tv_nsec += (left % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&g->call_mu);
    while (c->n_left > 0)
        if (pthread_cond_timedwait(&g->call_cv, &g->call_mu, &ts) == ETIMEDOUT)
            break;
    for (int32_t r = 0; r < g->N && c->n_left > 0; r++) {
        attnd__gslot *s = &c->slot[r];
        if (s->expect && !s->done) {
            char msg[128];
            snprintf(msg, sizeof msg, "rank %d did not answer in time; reconnecting", r);
            attnd__gslot_fail(g, c, r, ATTND_ERR_UNAVAILABLE, msg);
            atomic_store(&g->peers[r].kick, 1);
        }
    }
    ATTND_ASSERT(c->n_left == 0);
    pthread_mutex_unlock(&g->call_mu);
}

void attnd__gcall_release(attnd_group *g, attnd__gcall *c)
{
    attnd__gbuf *bufs = NULL;

    pthread_mutex_lock(&g->call_mu);
    ATTND_ASSERT(!c->abandoned); /* released once */
    if (inflight(g, c)) {
        c->abandoned = 1; /* the last receive frees it */
    } else {
        unlink_call(g, c);
        free_call_locked(g, c, &bufs);
    }
    pthread_mutex_unlock(&g->call_mu);
    attnd_ucxw_wake(&g->net); /* the progress thread may kick peers */
    put_bufs(g, bufs);
}

void attnd__gcalls_cleanup(attnd_group *g)
{
    attnd__gbuf *bufs = NULL;
    attnd__gcall *c, *next;

    pthread_mutex_lock(&g->call_mu);
    for (c = g->calls; c; c = next) {
        next = c->next;
        free_call_locked(g, c, &bufs);
    }
    g->calls = NULL;
    for (c = g->free_calls; c; c = next) {
        next = c->next;
        free(c->slot);
        free(c);
    }
    g->free_calls = NULL;
    pthread_mutex_unlock(&g->call_mu);
    put_bufs(g, bufs);
}

void attnd__gcalls_fail_rank(attnd_group *g, int32_t r, const char *why)
{
    pthread_mutex_lock(&g->call_mu);
    for (attnd__gcall *c = g->calls; c; c = c->next)
        if (!c->slot[r].recv_inflight)
            attnd__gslot_fail(g, c, r, ATTND_ERR_UNAVAILABLE, why);
    pthread_mutex_unlock(&g->call_mu);
}

static attnd__gcall *find_call(attnd_group *g, uint64_t id)
{
    for (attnd__gcall *c = g->calls; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

/* A rendezvous receive into a slot ended. */
static void on_recv_done(void *user, ucs_status_t status, size_t length)
{
    attnd__gslot *s = user;
    attnd_group *g = s->g;
    attnd__gcall *c = s->call;
    (void)length;
    attnd__gbuf *bufs = NULL;
    pthread_mutex_lock(&g->call_mu);
    ATTND_ASSERT(s->recv_inflight && s->expect);
    s->recv_inflight = 0;
    if (!s->done) {
        s->done = 1;
        c->n_left--;
        check_left(g, c);
        if (status != UCS_OK) {
            s->st = ATTND_ERR_UNAVAILABLE;
            snprintf(s->msg, sizeof s->msg, "receiving a peer's result: %s",
                     ucs_status_string(status));
        }
        pthread_cond_broadcast(&g->call_cv);
    }
    if (c->abandoned && !inflight(g, c)) {
        unlink_call(g, c);
        free_call_locked(g, c, &bufs);
    }
    pthread_mutex_unlock(&g->call_mu);
    put_bufs(g, bufs);
}

/* Returning UCS_OK without receiving drops a rendezvous payload (UCX
 * releases it). */
ucs_status_t attnd__gcall_on_reply(attnd_group *g, const attnd__gnet_msg *m)
{
    const attnd__ghdr *h = m->h;
    const void *data = m->data;
    size_t len = m->len;
    int rndv = m->rndv;

    pthread_mutex_lock(&g->call_mu);
    attnd__gcall *c = find_call(g, h->req_id);
    attnd__gslot *s = c ? &c->slot[h->src_rank] : NULL;
    if (!s || !s->expect || s->done || s->recv_inflight || c->abandoned) {
        pthread_mutex_unlock(&g->call_mu);
        return UCS_OK; /* a late answer to a call that gave up */
    }
    s->a = h->a;
    if (h->status == ATTND_OK && len > s->want && len <= s->max && len > s->buf->cap) {
        attnd__gbuf *big = attnd__gbuf_get(g, len); /* buf_mu after call_mu */
        if (!big) {
            attnd__gslot_fail(g, c, h->src_rank, ATTND_ERR_RESOURCE_EXHAUSTED,
                              "group: out of memory for a peer's result");
            pthread_mutex_unlock(&g->call_mu);
            return UCS_OK;
        }
        attnd__gbuf_put(g, s->buf);
        s->buf = big;
    }
    if (h->status != ATTND_OK || len < s->want || len > s->max) {
        char msg[192];
        if (h->status != ATTND_OK && !rndv)
            snprintf(msg, sizeof msg, "%.*s", (int)(len < 180 ? len : 180), (const char *)data);
        else
            snprintf(msg, sizeof msg, "rank %d answered %zu bytes, expected %zu",
                     h->src_rank, len, s->want);
        attnd__gslot_fail(g, c, h->src_rank,
                          h->status != ATTND_OK ? (attnd_status)h->status : ATTND_ERR_INTERNAL,
                          msg);
        pthread_mutex_unlock(&g->call_mu);
        return UCS_OK;
    }
    if (!rndv) {
        memcpy(s->buf->data, data, len);
        s->buf->len = len;
        s->done = 1;
        c->n_left--;
        check_left(g, c);
        pthread_cond_broadcast(&g->call_cv);
        pthread_mutex_unlock(&g->call_mu);
        return UCS_OK;
    }
    /* rendezvous: receive straight into the slot's buffer */
    s->recv_inflight = 1;
    s->buf->len = len;
    s->g = g;
    s->call = c;
    pthread_mutex_unlock(&g->call_mu);
    attnd__gnet_recv(g, m->data, s->buf->data, len, on_recv_done, s);
    return UCS_INPROGRESS;
}
