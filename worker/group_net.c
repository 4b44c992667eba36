/* The worker group's transport: one UCX context and worker per rank, a
 * sockaddr listener on the rank's group address, one endpoint to each peer
 * (for our requests) and the endpoints peers open to us (for our replies).
 *
 * Progress design: one progress thread owns the UCX worker. It takes
 * ucp_mu, drains ucp_worker_progress (AM handlers, send and receive
 * completions and endpoint errors all run there), tends the peers
 * (reconnects, hello timeouts, kicks from leaders that timed out, endpoint
 * closes), arms the worker's wake-up fd and sleeps in poll() on it for at
 * most 20 ms (the reconnect timer's tick), so an idle group burns no CPU.
 * Other threads (leaders sending requests, executors sending replies) call
 * ucp_am_send_nbx under ucp_mu and then ucp_worker_signal() to wake it.
 * The worker is created UCS_THREAD_MODE_SERIALIZED: ucp_mu serializes every
 * call into it.
 *
 * Membership: peer r is DOWN (no endpoint), CONNECTING (endpoint created,
 * HELLO sent) or UP (its HELLO answer came back OK: same group size, mode
 * and page size). An endpoint error, a hello that is not answered within a
 * second, or a leader's kick (a request timed out) closes the endpoint
 * (forced) and fails every call waiting on that peer with UNAVAILABLE; the
 * peer is retried every 100 ms, for as long as the rank runs, so a rank that
 * comes back is reconnected. A peer whose configured port is 0 is found
 * through the address file it writes to --group-dir.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "attnd_clock.h"
#include "attnd_log.h"
#include "group_int.h"

#define HELLO_TIMEOUT_MS 1000
#define RETRY_MS 100

/* ---- sends ---------------------------------------------------------------------- */

static void on_send_done(void *request, ucs_status_t status, void *user)
{
    attnd__gbuf *b = user;
    (void)status; /* a broken endpoint also reports through its error callback */
    attnd__gbuf_put(b->g, b);
    ucp_request_free(request);
}

/* Caller holds ucp_mu. b is the transport's from here on. */
static int send_locked(attnd_group *g, ucp_ep_h ep, unsigned id, attnd__gbuf *b, int reply)
{
    ucp_request_param_t rp = {
        .op_attr_mask =
            UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS,
        .cb.send = on_send_done,
        .user_data = b,
        .flags = reply ? UCP_AM_SEND_FLAG_REPLY : 0,
    };
    atomic_fetch_add_explicit(&g->bytes_sent, sizeof b->hdr + b->len, memory_order_relaxed);
    ucs_status_ptr_t r = ucp_am_send_nbx(ep, id, &b->hdr, sizeof b->hdr, b->data, b->len, &rp);
    if (r == NULL) {
        attnd__gbuf_put(g, b);
        return 0;
    }
    if (UCS_PTR_IS_ERR(r)) {
        attnd__gbuf_put(g, b);
        return -1;
    }
    return 0;
}

attnd_status attnd__gnet_send_req(attnd_group *g, int32_t r, attnd__gbuf *b, attnd_error *err)
{
    int ok = 0;
    pthread_mutex_lock(&g->ucp_mu);
    if (g->peers[r].state == ATTND__PEER_UP)
        ok = send_locked(g, g->peers[r].ep, ATTND__GAM_REQ, b, 1) == 0;
    else
        attnd__gbuf_put(g, b);
    pthread_mutex_unlock(&g->ucp_mu);
    ucp_worker_signal(g->worker);
    if (!ok) {
        atomic_fetch_add(&g->peer_failures, 1);
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                               "group: rank %d (%s) is not connected", r, g->cfg.addrs[r]);
    }
    return ATTND_OK;
}

void attnd__gnet_send_rep(attnd_group *g, attnd__gconn *conn, attnd__gbuf *b)
{
    pthread_mutex_lock(&g->ucp_mu);
    if (conn->alive)
        send_locked(g, conn->ep, ATTND__GAM_REP, b, 0);
    else
        attnd__gbuf_put(g, b);
    pthread_mutex_unlock(&g->ucp_mu);
    ucp_worker_signal(g->worker);
}

int attnd__gnet_peer_up(attnd_group *g, int32_t r)
{
    pthread_mutex_lock(&g->ucp_mu);
    int up = g->peers[r].state == ATTND__PEER_UP;
    pthread_mutex_unlock(&g->ucp_mu);
    return up;
}

/* ---- endpoints ------------------------------------------------------------------ */

/* Close ep (forced) without waiting; the progress loop reaps the request. */
static void close_ep(attnd_group *g, ucp_ep_h ep)
{
    ucp_request_param_t rp = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                              .flags = UCP_EP_CLOSE_FLAG_FORCE};
    ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &rp);
    if (r == NULL || UCS_PTR_IS_ERR(r))
        return;
    if (g->n_closing == g->cap_closing) {
        size_t c = g->cap_closing ? 2 * g->cap_closing : 16;
        void **p = realloc(g->closing, c * sizeof *p);
        if (!p) { /* cannot track it: wait for it here */
            while (ucp_request_check_status(r) == UCS_INPROGRESS)
                ucp_worker_progress(g->worker);
            ucp_request_free(r);
            return;
        }
        g->closing = p;
        g->cap_closing = c;
    }
    g->closing[g->n_closing++] = r;
}

static void reap_closing(attnd_group *g)
{
    for (size_t i = 0; i < g->n_closing;)
        if (ucp_request_check_status(g->closing[i]) != UCS_INPROGRESS) {
            ucp_request_free(g->closing[i]);
            g->closing[i] = g->closing[--g->n_closing];
        } else {
            i++;
        }
}

/* Peer r is gone (or must be reconnected): close, fail its calls. */
static void drop_peer(attnd_group *g, attnd__gpeer *p, const char *why, int64_t retry_ms)
{
    char msg[192];
    if (p->state == ATTND__PEER_UP)
        attnd_log_warn("group", "rank %d: lost rank %d (%s): %s", g->me, p->rank,
                       g->cfg.addrs[p->rank], why);
    if (p->ep)
        close_ep(g, p->ep);
    p->ep = NULL;
    p->state = ATTND__PEER_DOWN;
    p->next_try_ms = attnd_clock_ms() + retry_ms;
    snprintf(msg, sizeof msg, "group: rank %d (%s) %s", p->rank, g->cfg.addrs[p->rank], why);
    attnd__gcalls_fail_rank(g, p->rank, msg);
}

static void on_peer_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    attnd__gpeer *p = arg;
    attnd_group *g = p->g;
    char why[96];
    if (p->ep != ep)
        return;
    snprintf(why, sizeof why, "disconnected (%s)", ucs_status_string(status));
    drop_peer(g, p, why, RETRY_MS);
}

/* The model a HELLO names: layers, query heads, KV entry width and dtype
 * (ranks of one group must serve the same model, stored alike). */
static void hello_model(const attnd_group *g, attnd__ghdr *h)
{
    h->n_seqs = (uint32_t)g->cfg.model.n_layers;
    h->q_tokens = g->hq;
    h->kv_dtype = (uint32_t)g->kv_elems;
    h->q_dtype = (uint32_t)g->cfg.model.kv_dtype;
}

static void try_connect(attnd_group *g, attnd__gpeer *p)
{
    struct sockaddr_storage ss;
    socklen_t len;
    attnd__gbuf *b;

    p->next_try_ms = attnd_clock_ms() + RETRY_MS;
    if (attnd__gaddr_peer(g, p->rank, &ss, &len))
        return; /* not known yet */
    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                      UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER,
        .sockaddr = {.addr = (const struct sockaddr *)&ss, .addrlen = len},
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = on_peer_error, .arg = p},
    };
    if (ucp_ep_create(g->worker, &ep, &p->ep) != UCS_OK) {
        p->ep = NULL;
        return;
    }
    if (!(b = attnd__gbuf_get(g, 0))) {
        drop_peer(g, p, "out of memory", RETRY_MS);
        return;
    }
    p->hello_id++;
    b->hdr.type = ATTND__GMSG_HELLO;
    b->hdr.src_rank = g->me;
    b->hdr.req_id = p->hello_id;
    b->hdr.a = (uint64_t)g->N;
    b->hdr.b = (uint64_t)g->cfg.mode;
    b->hdr.layer = (uint32_t)g->cfg.page_size;
    hello_model(g, &b->hdr);
    p->state = ATTND__PEER_CONNECTING;
    p->hello_deadline_ms = attnd_clock_ms() + HELLO_TIMEOUT_MS;
    if (send_locked(g, p->ep, ATTND__GAM_REQ, b, 1))
        drop_peer(g, p, "hello failed", RETRY_MS);
}

static void tend_peers(attnd_group *g)
{
    int64_t now = attnd_clock_ms();
    for (int32_t r = 0; r < g->N; r++) {
        attnd__gpeer *p = &g->peers[r];
        if (r == g->me)
            continue;
        if (atomic_exchange(&p->kick, 0) && p->state != ATTND__PEER_DOWN)
            drop_peer(g, p, "did not answer in time", 0);
        if (p->state == ATTND__PEER_CONNECTING && now > p->hello_deadline_ms)
            drop_peer(g, p, "did not answer hello", RETRY_MS);
        if (p->state == ATTND__PEER_DOWN && now >= p->next_try_ms)
            try_connect(g, p);
    }
    /* dead connections keep their struct (queued requests point at it)
     * until the group is destroyed; their endpoints close now */
    for (attnd__gconn *c = g->conns; c; c = c->next)
        if (!c->alive && c->ep) {
            close_ep(g, c->ep);
            c->ep = NULL;
        }
    reap_closing(g);
}

/* ---- incoming ------------------------------------------------------------------- */

static void on_conn_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    attnd__gconn *c = arg;
    (void)status;
    (void)ep;
    c->alive = 0; /* the progress loop closes its endpoint */
}

static void on_conn(ucp_conn_request_h req, void *arg)
{
    attnd_group *g = arg;
    attnd__gconn *c = calloc(1, sizeof *c);
    if (!c) {
        ucp_listener_reject(g->listener, req);
        return;
    }
    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .conn_request = req,
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = on_conn_error, .arg = c},
    };
    if (ucp_ep_create(g->worker, &ep, &c->ep) != UCS_OK) {
        free(c);
        return;
    }
    c->alive = 1;
    c->next = g->conns;
    g->conns = c;
}

static attnd__gconn *conn_of(attnd_group *g, ucp_ep_h ep)
{
    for (attnd__gconn *c = g->conns; c; c = c->next)
        if (c->ep == ep && c->alive)
            return c;
    return NULL;
}

/* A reply carrying only a status (and its message). Under ucp_mu. */
static void reply_status(attnd_group *g, attnd__gconn *conn, const attnd__ghdr *req,
                         attnd_status st, const char *msg)
{
    size_t n = msg ? strlen(msg) : 0;
    attnd__gbuf *b = attnd__gbuf_get(g, n + 1);
    if (!b)
        return;
    b->hdr = *req;
    b->hdr.src_rank = g->me;
    b->hdr.status = st;
    if (n)
        memcpy(b->data, msg, n);
    b->len = n;
    send_locked(g, conn->ep, ATTND__GAM_REP, b, 0);
}

static void on_req_data(void *request, ucs_status_t status, size_t length, void *user)
{
    attnd__gbuf *b = user;
    (void)length;
    if (status == UCS_OK)
        attnd__gpeer_enqueue(b->g, b);
    else
        attnd__gbuf_put(b->g, b);
    if (request)
        ucp_request_free(request);
}

static ucs_status_t on_req(void *arg, const void *header, size_t hlen, void *data, size_t len,
                           const ucp_am_recv_param_t *param)
{
    attnd_group *g = arg;
    attnd__ghdr h;
    int rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    attnd__gconn *conn = NULL;

    atomic_fetch_add_explicit(&g->bytes_received, hlen + len, memory_order_relaxed);
    if (hlen != sizeof h || !(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ||
        !(conn = conn_of(g, param->reply_ep)))
        goto drop;
    memcpy(&h, header, sizeof h);
    if (h.type == ATTND__GMSG_HELLO) {
        char msg[200];
        attnd__ghdr mine = h;
        hello_model(g, &mine);
        if (h.a != (uint64_t)g->N || h.b != (uint64_t)g->cfg.mode ||
            h.layer != (uint32_t)g->cfg.page_size || memcmp(&mine, &h, sizeof h) != 0) {
            snprintf(msg, sizeof msg,
                     "group: rank %d runs size %d, mode %s, page size %d, model %s (kv %s); "
                     "rank %d differs (size %llu, mode %llu, page size %u, or the model)",
                     g->me, g->N, attnd_group_mode_name(g->cfg.mode), g->cfg.page_size,
                     g->cfg.model.name, attnd_dtype_name(g->cfg.model.kv_dtype), h.src_rank,
                     (unsigned long long)h.a, (unsigned long long)h.b, h.layer);
            reply_status(g, conn, &h, ATTND_ERR_FAILED_PRECONDITION, msg);
        } else {
            reply_status(g, conn, &h, ATTND_OK, NULL);
        }
        goto drop;
    }
    attnd__gbuf *b = attnd__gbuf_get(g, len);
    if (!b) {
        reply_status(g, conn, &h, ATTND_ERR_RESOURCE_EXHAUSTED, "group: peer out of memory");
        goto drop;
    }
    b->hdr = h;
    b->conn = conn;
    b->len = len;
    if (!rndv) {
        memcpy(b->data, data, len);
        attnd__gpeer_enqueue(g, b);
        return UCS_OK;
    }
    ucp_request_param_t rp = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.recv_am = on_req_data,
        .user_data = b,
    };
    ucs_status_ptr_t r = ucp_am_recv_data_nbx(g->worker, data, b->data, len, &rp);
    if (r == NULL)
        on_req_data(NULL, UCS_OK, len, b);
    else if (UCS_PTR_IS_ERR(r))
        on_req_data(NULL, UCS_PTR_STATUS(r), 0, b);
    return UCS_OK;

drop:
    if (rndv)
        ucp_am_data_release(g->worker, data);
    return UCS_OK;
}

static ucs_status_t on_rep(void *arg, const void *header, size_t hlen, void *data, size_t len,
                           const ucp_am_recv_param_t *param)
{
    attnd_group *g = arg;
    attnd__ghdr h;

    atomic_fetch_add_explicit(&g->bytes_received, hlen + len, memory_order_relaxed);
    if (hlen != sizeof h) {
        if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)
            ucp_am_data_release(g->worker, data);
        return UCS_OK;
    }
    memcpy(&h, header, sizeof h);
    if (h.type == ATTND__GMSG_HELLO) {
        attnd__gpeer *p = h.src_rank >= 0 && h.src_rank < g->N ? &g->peers[h.src_rank] : NULL;
        if (p && p->state == ATTND__PEER_CONNECTING && h.req_id == p->hello_id) {
            if (h.status == ATTND_OK) {
                p->state = ATTND__PEER_UP;
                attnd_log_info("group", "rank %d: connected to rank %d (%s)%s", g->me,
                               p->rank, g->cfg.addrs[p->rank], p->ever_up ? " again" : "");
                p->ever_up = 1;
            } else {
                attnd_log_error("group", "rank %d: rank %d refused us: %.*s", g->me,
                                p->rank, (int)(len < 200 ? len : 200), (const char *)data);
                drop_peer(g, p, "refused the group settings", 5000);
            }
        }
        if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)
            ucp_am_data_release(g->worker, data);
        return UCS_OK;
    }
    return attnd__gcall_on_reply(g, &h, data, len, param);
}

/* ---- the progress thread -------------------------------------------------------- */

static void *progress_main(void *arg)
{
    attnd_group *g = arg;
    while (!atomic_load(&g->stop)) {
        pthread_mutex_lock(&g->ucp_mu);
        while (ucp_worker_progress(g->worker))
            ;
        tend_peers(g);
        ucs_status_t st = ucp_worker_arm(g->worker);
        pthread_mutex_unlock(&g->ucp_mu);
        if (st == UCS_ERR_BUSY)
            continue;
        struct pollfd pfd = {.fd = g->efd, .events = POLLIN};
        poll(&pfd, 1, 20);
    }
    return NULL;
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

attnd_status attnd__gnet_start(attnd_group *g, attnd_error *err)
{
    ucp_config_t *config;
    ucs_status_t us;
    char host[ATTND_GROUP_ADDR_MAX];
    int port;
    struct sockaddr_storage ss;
    socklen_t len;

    if (attnd__gaddr_split(g->cfg.addrs[g->me], host, sizeof host, &port) ||
        attnd__gaddr_resolve(host, port, &ss, &len))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--group: entry %d \"%s\" is not a HOST:PORT this host resolves",
                               g->me, g->cfg.addrs[g->me]);
    if (ucp_config_read(NULL, NULL, &config) != UCS_OK)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "group: ucp_config_read failed");
    ucp_params_t up = {.field_mask = UCP_PARAM_FIELD_FEATURES,
                       .features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP};
    us = ucp_init(&up, config, &g->ctx);
    ucp_config_release(config);
    if (us != UCS_OK)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "group: ucp_init: %s",
                               ucs_status_string(us));
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SERIALIZED};
    if ((us = ucp_worker_create(g->ctx, &wp, &g->worker)) != UCS_OK ||
        (us = ucp_worker_get_efd(g->worker, &g->efd)) != UCS_OK) {
        attnd__gnet_stop(g);
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "group: UCX worker: %s",
                               ucs_status_string(us));
    }
    ucp_am_handler_param_t hp = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG,
        .id = ATTND__GAM_REQ, .cb = on_req, .arg = g};
    ucp_worker_set_am_recv_handler(g->worker, &hp);
    hp.id = ATTND__GAM_REP;
    hp.cb = on_rep;
    ucp_worker_set_am_recv_handler(g->worker, &hp);

    ucp_listener_params_t lp = {
        .field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
        .sockaddr = {.addr = (const struct sockaddr *)&ss, .addrlen = len},
        .conn_handler = {.cb = on_conn, .arg = g},
    };
    if ((us = ucp_listener_create(g->worker, &lp, &g->listener)) != UCS_OK) {
        g->listener = NULL;
        attnd__gnet_stop(g);
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                               "--group: rank %d cannot listen on %s: %s", g->me,
                               g->cfg.addrs[g->me], ucs_status_string(us));
    }
    ucp_listener_attr_t la = {.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR};
    if (ucp_listener_query(g->listener, &la) == UCS_OK)
        g->port = ntohs(((struct sockaddr_in *)&la.sockaddr)->sin_port);
    if (attnd__gaddr_publish(g)) {
        attnd__gnet_stop(g);
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--group-dir: cannot write %s/rank-%d: %s", g->cfg.addr_dir,
                               g->me, strerror(errno));
    }
    for (int32_t r = 0; r < g->N; r++) {
        g->peers[r].rank = r;
        g->peers[r].g = g;
        g->peers[r].state = ATTND__PEER_DOWN;
    }
    if (pthread_create(&g->progress_tid, NULL, progress_main, g)) {
        attnd__gnet_stop(g);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "group: cannot start the progress thread");
    }
    g->progress_running = 1;
    return ATTND_OK;
}

void attnd__gnet_stop(attnd_group *g)
{
    if (g->progress_running) {
        atomic_store(&g->stop, 1);
        ucp_worker_signal(g->worker);
        pthread_join(g->progress_tid, NULL);
        g->progress_running = 0;
    }
    if (g->worker) {
        pthread_mutex_lock(&g->ucp_mu);
        if (g->listener)
            ucp_listener_destroy(g->listener);
        g->listener = NULL;
        for (int32_t r = 0; r < g->N; r++)
            if (g->peers[r].ep) {
                close_ep(g, g->peers[r].ep);
                g->peers[r].ep = NULL;
                g->peers[r].state = ATTND__PEER_DOWN;
            }
        for (attnd__gconn *c = g->conns, *next; c; c = next) {
            next = c->next;
            if (c->ep)
                close_ep(g, c->ep);
            free(c);
        }
        g->conns = NULL;
        for (int64_t end = attnd_clock_ms() + 2000; g->n_closing && attnd_clock_ms() < end;) {
            ucp_worker_progress(g->worker);
            reap_closing(g);
        }
        for (size_t i = 0; i < g->n_closing; i++)
            ucp_request_free(g->closing[i]);
        g->n_closing = 0;
        /* late completions (sends, receives) before the worker goes */
        for (int i = 0; i < 100 && ucp_worker_progress(g->worker); i++)
            ;
        pthread_mutex_unlock(&g->ucp_mu);
        ucp_worker_destroy(g->worker);
        g->worker = NULL;
    }
    free(g->closing);
    g->closing = NULL;
    g->cap_closing = 0;
    if (g->ctx)
        ucp_cleanup(g->ctx);
    g->ctx = NULL;
}
