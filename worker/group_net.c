/* The worker group's transport: one UCX context and worker per rank
 * (common/attnd_ucxw.h), one endpoint of ours to each peer (everything we
 * send it, requests and replies), the rendezvous that makes them
 * (group_rdv.c), and the dispatch of incoming messages to the handlers
 * group.c registers (requests: group_peer.c; replies: group_call.c).
 *
 * Progress: one progress thread (attnd_ucxw's loop, holding net.mu around
 * each round) drains ucp_worker_progress (AM handlers, completions and
 * endpoint errors run there), serves the rendezvous sockets, tends the
 * peers (rendezvous for those that are down, hello retries, kicks from
 * leaders that timed out, pidfds of same-host peers), and sleeps in poll()
 * on the worker's event fd, the sockets and the pidfds for at most 20 ms
 * (the retry timers' tick): an idle group burns no CPU. Other threads
 * (leaders sending requests, executors sending replies) call into UCX
 * under net.mu and wake the thread. The worker is UCS_THREAD_MODE_SERIALIZED.
 *
 * Membership: peer r is DOWN (no endpoint; a rendezvous is tried every
 * 100 ms), CONNECTING (a rendezvous gave us its card: endpoint made by
 * address, our UCX HELLO sent every 200 ms until it answers; its requests
 * are answered already, since it may be UP first) or UP. Every
 * rendezvous, whichever side began it, remakes our endpoint to the peer
 * (both sides together: UCX may have paired the old endpoints into one
 * connection, half of which the other side just closed); calls waiting on
 * the peer fail only when it is a new process (another token). Each side
 * sends only on its own endpoint, and a message is accepted only with the
 * receiver's token, so nothing depends on how UCX pairs endpoints. A peer
 * on this host (same boot id, pid, IPC and network namespaces and uid,
 * both willing) is connected without UCX error handling, so that UCX uses
 * shared memory and CMA, and its process is watched through a pidfd;
 * others get UCX peer error handling. Each rank keeps, for every peer, a
 * UCX worker of its own (its address goes in the card next to the main
 * worker's): a same-host peer connects to that one, so that a rank killed
 * in the middle of a send leaves nothing stuck but the worker kept for it
 * (common/attnd_ucxw.h: shared-memory receive FIFOs), which is retired
 * once that process is known gone (exited, or a new token); its
 * successor gets a fresh one. Remote peers use the main worker. An
 * endpoint error, an exited process, a hello unanswered within
 * HELLO_TIMEOUT_MS, or a leader's kick (a request timed out) closes the
 * endpoint (forced) and fails every call waiting on that peer with
 * UNAVAILABLE; the peer is retried for as long as the rank runs, so a
 * rank that comes back is reconnected.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/random.h>

#include "attnd_clock.h"
#include "attnd_log.h"
#include "group_int.h"

#define HELLO_EVERY_MS 200
#define HELLO_TIMEOUT_MS 3000
#define RETRY_MS 100
#define WATCH_MS 5

/* ---- sends ---------------------------------------------------------------------- */

static void on_send_done(void *user, ucs_status_t status)
{
    attnd__gbuf *b = user;
    (void)status; /* a broken endpoint also reports through its error callback */
    attnd__gbuf_put(b->g, b);
}

/* Caller holds net.mu. b is the transport's from here on. */
static void send_locked(attnd__gpeer *p, unsigned id, attnd__gbuf *b)
{
    b->hdr.token = p->peer_token;
    atomic_fetch_add_explicit(&p->g->bytes_sent, sizeof b->hdr + b->len, memory_order_relaxed);
    attnd_ucxw_am_send(p->ep, id, &b->hdr, sizeof b->hdr, b->data, b->len,
                       ucp_dt_make_contig(1), 0, on_send_done, b, NULL);
}

attnd_status attnd__gnet_send_req(attnd_group *g, int32_t r, attnd__gbuf *b, attnd_error *err)
{
    int ok = 0;
    attnd_ucxw_lock(&g->net);
    if (g->peers[r].state == ATTND__PEER_UP) {
        send_locked(&g->peers[r], ATTND__GAM_REQ, b);
        ok = 1;
    } else {
        attnd__gbuf_put(g, b);
    }
    attnd_ucxw_unlock(&g->net);
    attnd_ucxw_wake(&g->net);
    if (!ok) {
        atomic_fetch_add(&g->peer_failures, 1);
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                               "group: rank %d (%s) is not connected", r, g->cfg.addrs[r]);
    }
    return ATTND_OK;
}

void attnd__gnet_send_rep_locked(attnd_group *g, int32_t r, uint64_t peer_token,
                                 attnd__gbuf *b)
{
    attnd__gpeer *p = r >= 0 && r < g->N && r != g->me ? &g->peers[r] : NULL;
    if (p && p->ep && p->state != ATTND__PEER_DOWN && p->peer_token == peer_token)
        send_locked(p, ATTND__GAM_REP, b);
    else
        attnd__gbuf_put(g, b); /* it went away (or restarted) meanwhile */
}

void attnd__gnet_send_rep(attnd_group *g, int32_t r, uint64_t peer_token, attnd__gbuf *b)
{
    attnd_ucxw_lock(&g->net);
    attnd__gnet_send_rep_locked(g, r, peer_token, b);
    attnd_ucxw_unlock(&g->net);
    attnd_ucxw_wake(&g->net);
}

void attnd__gnet_recv(attnd_group *g, void *desc, void *buf, size_t len, attnd_ucxw_recv_cb cb,
                      void *user)
{
    attnd_ucxw_am_recv(&g->net, desc, buf, len, ucp_dt_make_contig(1), cb, user, NULL);
}

int attnd__gnet_peer_up(attnd_group *g, int32_t r)
{
    attnd_ucxw_lock(&g->net);
    int up = g->peers[r].state == ATTND__PEER_UP;
    attnd_ucxw_unlock(&g->net);
    return up;
}

int attnd__gnet_peer_info(attnd_group *g, int32_t r, attnd_group_peer_info *info)
{
    attnd_ucxw_lock(&g->net);
    const attnd__gpeer *p = &g->peers[r];
    memset(info, 0, sizeof *info);
    info->up = p->state == ATTND__PEER_UP;
    info->same_host = p->same_host;
    snprintf(info->transports, sizeof info->transports, "%s", p->transports);
    attnd_ucxw_unlock(&g->net);
    return info->up;
}

void attnd__gnet_set_handlers(attnd_group *g, attnd__gnet_handler on_request,
                              attnd__gnet_handler on_reply)
{
    g->on_request = on_request;
    g->on_reply = on_reply;
}

/* ---- peers -------------------------------------------------------------------------- */

/* Close our endpoint to p and forget it (under net.mu). */
static void peer_reset(attnd_group *g, attnd__gpeer *p)
{
    if (p->ep)
        attnd_ucxw_ep_close_on(&g->net, p->ep_worker, p->ep, 1);
    p->ep = NULL;
    p->ep_worker = NULL;
    if (p->pidfd >= 0)
        close(p->pidfd);
    p->pidfd = -1;
    p->same_host = 0;
    p->peer_token = 0;
    p->transports[0] = '\0';
}

/* The process that used p's peer worker is gone: the worker goes too (a
 * send it died in the middle of may have left the worker's receive FIFO
 * stuck; attnd_ucxw.h); the next rendezvous makes a fresh one. After
 * peer_reset (its endpoint closed). */
static void pw_retire(attnd_group *g, attnd__gpeer *p)
{
    if (!p->pw)
        return;
    attnd_ucxw_peer_worker_retire(&g->net, p->pw);
    p->pw = NULL;
    free(p->pw_addr);
    p->pw_addr = NULL;
    p->pw_len = 0;
    p->pw_token = 0;
}

/* p's peer worker, made if there is none (NULL when UCX cannot: p then
 * connects to our main worker). */
static ucp_worker_h pw_get(attnd_group *g, attnd__gpeer *p)
{
    attnd_error err;
    attnd_error_clear(&err);
    if (!p->pw &&
        attnd_ucxw_peer_worker(&g->net, "group", &p->pw, &p->pw_addr, &p->pw_len, &err)) {
        attnd_log_warn("group", "rank %d: %s (rank %d shares our main worker)", g->me, err.msg,
                       p->rank);
        p->pw = NULL;
    }
    return p->pw;
}

/* Peer p is gone (or must be reconnected): close, fail its calls. */
static void drop_peer(attnd_group *g, attnd__gpeer *p, const char *why, int64_t retry_ms)
{
    char msg[192];
    if (p->state == ATTND__PEER_UP)
        attnd_log_warn("group", "rank %d: lost rank %d (%s): %s", g->me, p->rank,
                       g->cfg.addrs[p->rank], why);
    peer_reset(g, p);
    p->state = ATTND__PEER_DOWN;
    p->next_try_ms = attnd_clock_ms() + retry_ms;
    snprintf(msg, sizeof msg, "group: rank %d (%s) %s", p->rank, g->cfg.addrs[p->rank], why);
    attnd__gcalls_fail_rank(g, p->rank, msg);
}

static void on_peer_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    attnd__gpeer *p = arg;
    char why[96];
    if (p->ep != ep)
        return; /* an endpoint we already replaced */
    snprintf(why, sizeof why, "disconnected (%s)", ucs_status_string(status));
    drop_peer(p->g, p, why, RETRY_MS);
}

void attnd__gnet_my_card(attnd_group *g, uint16_t kind, attnd__gcard *c)
{
    memset(c, 0, sizeof *c);
    c->version = ATTND__GCARD_VERSION;
    c->kind = kind;
    c->rank = g->me;
    c->size = g->N;
    c->mode = (uint32_t)g->cfg.mode;
    c->page_size = (uint32_t)g->cfg.page_size;
    c->n_layers = (uint32_t)g->cfg.model.n_layers;
    c->n_q_heads = (uint32_t)g->hq;
    c->kv_elems = (uint32_t)g->kv_elems;
    c->kv_dtype = (uint32_t)g->cfg.model.kv_dtype;
    c->token = g->token;
    if (getrandom(c->nonce, sizeof c->nonce, 0) != (ssize_t)sizeof c->nonce)
        memset(c->nonce, 0, sizeof c->nonce); /* only the future challenge uses it */
    c->host = g->host;
    c->shm_ok = (uint32_t)g->shm_ok;
    c->payload_len = (uint32_t)g->addr_len;
}

size_t attnd__gnet_put_card(attnd_group *g, int32_t r, uint16_t kind, unsigned char *out)
{
    attnd__gcard c;
    attnd__gnet_my_card(g, kind, &c);
    memcpy(out + ATTND__GCARD_HDR, g->addr, g->addr_len);
    if (r >= 0 && r < g->N && r != g->me && g->shm_ok && !g->peers[r].no_pw) {
        attnd__gpeer *p = &g->peers[r];
        if (pw_get(g, p) && g->addr_len + p->pw_len <= ATTND_UCXW_ADDR_MAX) {
            memcpy(out + ATTND__GCARD_HDR + g->addr_len, p->pw_addr, p->pw_len);
            c.shm_len = (uint32_t)p->pw_len;
            c.payload_len += c.shm_len;
        }
    }
    return attnd__gcard_encode(&c, NULL, out);
}

static void send_hello(attnd_group *g, attnd__gpeer *p)
{
    attnd__gbuf *b = attnd__gbuf_get(g, 0);
    p->hello_next_ms = attnd_clock_ms() + HELLO_EVERY_MS;
    if (!b)
        return;
    b->hdr.type = ATTND__GMSG_HELLO;
    b->hdr.src_rank = g->me;
    b->hdr.req_id = p->hello_id;
    send_locked(p, ATTND__GAM_REQ, b);
}

void attnd__gnet_apply_card(attnd_group *g, const attnd__gcard *c, const void *addr)
{
    attnd__gpeer *p = &g->peers[c->rank];
    attnd_error err;
    int on_host = attnd_ucxw_host_same(&g->host, &c->host);
    int same = on_host && g->shm_ok && c->shm_ok;
    char who[48];

    if (p->state != ATTND__PEER_DOWN) { /* a new rendezvous: new endpoints */
        if (p->peer_token != c->token) {
            drop_peer(g, p, "restarted", 0); /* its calls died with it */
            pw_retire(g, p);
        } else {
            /* the same process reconnects (it gave up on an answer of
             * ours, or both sides met at once): calls waiting on it may
             * still get their answers, which come on its endpoint */
            if (p->state == ATTND__PEER_UP)
                attnd_log_info("group", "rank %d: rank %d reconnects", g->me, p->rank);
            peer_reset(g, p);
            p->state = ATTND__PEER_DOWN;
        }
    }
    if (p->pw && p->pw_token && p->pw_token != c->token)
        pw_retire(g, p); /* another process used it */
    /* a peer on another host (or without shared memory) never connects to
     * the worker our card offered it (it is not same, by the same rule on
     * its side): that worker goes, and our next cards offer none */
    p->no_pw = !same;
    if (!same && p->pw) {
        attnd_log_info("group", "rank %d: rank %d is %s: its worker for it goes", g->me, p->rank,
                       on_host ? "not admitted to shared memory" : "on another host");
        pw_retire(g, p);
    }
    if (same && (p->pidfd = attnd_ucxw_pidfd(c->host.pid)) < 0)
        return; /* its process is gone already */
    /* a same-host peer: from our worker for it to its worker for us */
    const unsigned char *to = addr;
    size_t to_len = c->payload_len - c->shm_len;
    p->ep_worker = g->net.worker;
    if (same && c->shm_len && pw_get(g, p)) {
        to += to_len;
        to_len = c->shm_len;
        p->ep_worker = p->pw;
        p->pw_token = c->token;
    }
    snprintf(who, sizeof who, "group rank %d", c->rank);
    attnd_error_clear(&err);
    if (attnd_ucxw_connect_on(p->ep_worker, to, to_len,
                              same ? ATTND_UCXW_PEER_WATCHED : ATTND_UCXW_PEER_CHECKED,
                              on_peer_error, p, who, &p->ep, &err)) {
        attnd_log_error("group", "rank %d: %s", g->me, err.msg);
        peer_reset(g, p);
        return;
    }
    p->same_host = same;
    p->on_host = on_host;
    p->peer_token = c->token;
    p->state = ATTND__PEER_CONNECTING;
    p->hello_id++;
    p->hello_deadline_ms = attnd_clock_ms() + HELLO_TIMEOUT_MS;
    send_hello(g, p);
}

/* Its HELLO answer came: p is UP. */
static void peer_up(attnd_group *g, attnd__gpeer *p)
{
    p->state = ATTND__PEER_UP;
    attnd_ucxw_ep_transports(p->ep, p->transports, sizeof p->transports);
    attnd_log_info("group", "rank %d: connected to rank %d (%s) over %s%s", g->me, p->rank,
                   g->cfg.addrs[p->rank], p->transports, p->ever_up ? " again" : "");
    if (p->on_host && attnd_ucxw_transports_tcp(p->transports))
        attnd_log_warn("group", "rank %d: rank %d runs on this host but UCX uses %s for it "
                                "(%s; shared memory needs both ranks willing (ATTND_UCX_SHM), "
                                "pidfds, and UCX_TLS with sysv/posix and cma)",
                       g->me, p->rank, p->transports,
                       p->same_host ? "same host" : "not admitted to shared memory");
    p->ever_up = 1;
}

/* ---- incoming ------------------------------------------------------------------- */

/* The sender of a checked message, or NULL: a message is taken only with
 * our token, from a rank of the group other than us. */
static attnd__gpeer *sender(attnd_group *g, const void *header, size_t hlen, attnd__ghdr *h)
{
    if (hlen != sizeof *h)
        return NULL;
    memcpy(h, header, sizeof *h);
    if (h->token != g->token || h->src_rank < 0 || h->src_rank >= g->N || h->src_rank == g->me)
        return NULL;
    return &g->peers[h->src_rank];
}

/* Returning UCS_OK without receiving drops a rendezvous payload. */
static ucs_status_t on_req(void *arg, const void *header, size_t hlen, void *data, size_t len,
                           const ucp_am_recv_param_t *param)
{
    attnd_group *g = arg;
    attnd__ghdr h;
    attnd__gpeer *p = sender(g, header, hlen, &h);

    atomic_fetch_add_explicit(&g->bytes_received, hlen + len, memory_order_relaxed);
    if (!p || p->state == ATTND__PEER_DOWN)
        return UCS_OK; /* a stranger, or a peer we have no endpoint to answer on */
    if (h.type == ATTND__GMSG_HELLO) {
        attnd__gbuf *b = attnd__gbuf_get(g, 0);
        if (b) {
            b->hdr = h;
            b->hdr.src_rank = g->me;
            b->hdr.status = ATTND_OK;
            send_locked(p, ATTND__GAM_REP, b);
        }
        return UCS_OK;
    }
    /* CONNECTING: our HELLO is unanswered yet, but the peer may already
     * be UP (ours answered first) and sending requests: answer them on
     * our endpoint (dropping them stalled the peer's callers until their
     * deadline, then reconnected; a rendezvous in which our first HELLO
     * came before the peer had our card waited HELLO_EVERY_MS), and
     * HELLO again now: a request shows the peer ready */
    if (p->state == ATTND__PEER_CONNECTING &&
        attnd_clock_ms() + HELLO_EVERY_MS - 20 > p->hello_next_ms)
        send_hello(g, p);
    attnd__gnet_msg m = {.h = &h, .data = data, .len = len,
                         .rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0,
                         .peer_token = p->peer_token};
    return g->on_request(g, &m);
}

static ucs_status_t on_rep(void *arg, const void *header, size_t hlen, void *data, size_t len,
                           const ucp_am_recv_param_t *param)
{
    attnd_group *g = arg;
    attnd__ghdr h;
    attnd__gpeer *p = sender(g, header, hlen, &h);

    atomic_fetch_add_explicit(&g->bytes_received, hlen + len, memory_order_relaxed);
    if (!p)
        return UCS_OK;
    if (h.type == ATTND__GMSG_HELLO) {
        if (p->state == ATTND__PEER_CONNECTING && h.req_id == p->hello_id &&
            h.status == ATTND_OK)
            peer_up(g, p);
        return UCS_OK;
    }
    attnd__gnet_msg m = {.h = &h, .data = data, .len = len,
                         .rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0,
                         .peer_token = p->peer_token};
    return g->on_reply(g, &m);
}

/* ---- the progress loop's work ------------------------------------------------------ */

static int tend(void *arg)
{
    attnd_group *g = arg;
    int64_t now = attnd_clock_ms();
    int busy = attnd__grdv_tend(g);
    int watch = now - g->last_watch_ms >= WATCH_MS;

    if (watch)
        g->last_watch_ms = now;
    for (int32_t r = 0; r < g->N; r++) {
        attnd__gpeer *p = &g->peers[r];
        if (r == g->me)
            continue;
        if (atomic_exchange(&p->kick, 0) && p->state != ATTND__PEER_DOWN)
            drop_peer(g, p, "did not answer in time", 0);
        if (watch && p->pidfd >= 0 && attnd_ucxw_pidfd_exited(p->pidfd)) {
            drop_peer(g, p, "exited", RETRY_MS);
            pw_retire(g, p);
        }
        if (p->state == ATTND__PEER_CONNECTING) {
            if (now > p->hello_deadline_ms)
                drop_peer(g, p, "did not answer hello", RETRY_MS);
            else if (now >= p->hello_next_ms)
                send_hello(g, p);
        }
        if (p->state == ATTND__PEER_DOWN && now >= p->next_try_ms) {
            p->next_try_ms = now + RETRY_MS;
            attnd__grdv_connect(g, r);
        }
    }
    return busy;
}

static int fds(void *arg, struct pollfd *f, int cap)
{
    attnd_group *g = arg;
    int n = attnd__grdv_fds(g, f, cap);
    for (int32_t r = 0; r < g->N && n < cap; r++)
        if (g->peers[r].pidfd >= 0)
            f[n++] = (struct pollfd){.fd = g->peers[r].pidfd, .events = POLLIN};
    return n;
}

void attnd__gnet_wait_connected(attnd_group *g, int64_t deadline_ms)
{
    for (;;) {
        int all = 1;
        for (int32_t r = 0; r < g->N; r++)
            if (r != g->me && !attnd__gnet_peer_up(g, r))
                all = 0;
        if (all || attnd_clock_ms() >= deadline_ms)
            return;
        usleep(10000);
    }
}

/* ---- start and stop ----------------------------------------------------------------- */

attnd_status attnd__gnet_start(attnd_group *g, attnd_error *err)
{
    char host[ATTND_GROUP_ADDR_MAX];
    attnd_status st;
    ucs_status_t us;
    int port;

    for (int32_t r = 0; r < g->N; r++) {
        g->peers[r].rank = r;
        g->peers[r].g = g;
        g->peers[r].state = ATTND__PEER_DOWN;
        g->peers[r].pidfd = -1;
    }
    if (attnd__gaddr_split(g->cfg.addrs[g->me], host, sizeof host, &port))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--group: entry %d \"%s\" is not a HOST:PORT", g->me,
                               g->cfg.addrs[g->me]);
    if (getrandom(&g->token, sizeof g->token, 0) != (ssize_t)sizeof g->token)
        g->token = attnd_clock_ns() ^ ((uint64_t)getpid() << 32);
    attnd_ucxw_host_self(&g->host);
    g->shm_ok = attnd_ucxw_shm_allowed();
    attnd_ucxw_config wc = {.thread_mode = UCS_THREAD_MODE_SERIALIZED, .net_host = host};
    if ((st = attnd_ucxw_init(&g->net, &wc, "--group", err)))
        return st;
    if ((us = attnd_ucxw_on_am(&g->net, ATTND__GAM_REQ, on_req, g)) != UCS_OK ||
        (us = attnd_ucxw_on_am(&g->net, ATTND__GAM_REP, on_rep, g)) != UCS_OK) {
        attnd__gnet_stop(g);
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "group: AM handlers: %s",
                               ucs_status_string(us));
    }
    if ((st = attnd_ucxw_address(&g->net, &g->addr, &g->addr_len, err)) ||
        (st = attnd__grdv_listen(g, err))) {
        attnd__gnet_stop(g);
        return st;
    }
    if (attnd__gaddr_publish(g)) {
        attnd__gnet_stop(g);
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--group-dir: cannot write %s/rank-%d: %s", g->cfg.addr_dir,
                               g->me, strerror(errno));
    }
    attnd_ucxw_loop loop = {.tend = tend, .fds = fds, .arg = g, .spin_ns = 0, .tick_ms = 20,
                            .locked = 1};
    if ((st = attnd_ucxw_start(&g->net, &loop, "group", err))) {
        attnd__gnet_stop(g);
        return st;
    }
    return ATTND_OK;
}

void attnd__gnet_stop(attnd_group *g)
{
    attnd_ucxw_stop(&g->net);
    if (g->net.worker) {
        attnd_ucxw_lock(&g->net);
        for (int32_t r = 0; r < g->N; r++)
            if (r != g->me) {
                peer_reset(g, &g->peers[r]);
                pw_retire(g, &g->peers[r]);
                g->peers[r].state = ATTND__PEER_DOWN;
            }
        attnd_ucxw_unlock(&g->net);
    }
    attnd__grdv_close(g);
    attnd_ucxw_cleanup(&g->net);
    free(g->addr);
    g->addr = NULL;
}
