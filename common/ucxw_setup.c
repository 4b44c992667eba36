/* attnd_ucxw setup: the ucp context and worker, the UCX configuration
 * attnd chooses, the worker's address and AM handler registration (see
 * attnd_ucxw.h).
 *
 * Configuration, each overridden by the same variable in the environment:
 *   RNDV_THRESH=256K   one sequence's DeepSeek-V3 query (147K) and latent
 *                      output (128K) go eager: on TCP lanes that saved ~40 us
 *                      of an Attend round trip over rendezvous.
 *   NET_DEVICES=<if>   UCX's TCP transport opens a listening port on every
 *                      device it uses; attnd restricts it to the interface
 *                      of the address it was told to use (a loopback-only
 *                      attnd opens no port on the machine's external
 *                      address). Shared-memory devices are not affected.
 *   TCP_PORT_RANGE=P-P a fixed port for that listener, when asked (set as
 *                      the tcp transport's PORT_RANGE).
 */
#include <errno.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "attnd_clock.h"
#include "ucxw_int.h"

/* ---- which interface ---------------------------------------------------------------- */

static int sa_equal(const struct sockaddr *a, const struct sockaddr *b)
{
    if (a->sa_family != b->sa_family)
        return 0;
    if (a->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (a->sa_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                      &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
    return 0;
}

static int sa_wildcard(const struct sockaddr *a)
{
    if (a->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr == htonl(INADDR_ANY);
    if (a->sa_family == AF_INET6)
        return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)a)->sin6_addr);
    return 0;
}

/* The name of the interface holding address sa into buf; 0 or -1. */
static int iface_of(const struct sockaddr *sa, char *buf, size_t cap)
{
    struct ifaddrs *ifs, *i;
    int rc = -1;

    if (getifaddrs(&ifs))
        return -1;
    for (i = ifs; i; i = i->ifa_next)
        if (i->ifa_addr && sa_equal(i->ifa_addr, sa) && strlen(i->ifa_name) < cap) {
            snprintf(buf, cap, "%s", i->ifa_name);
            rc = 0;
            break;
        }
    freeifaddrs(ifs);
    return rc;
}

/* The local address the kernel would send from to reach sa (a UDP
 * "connect" sends nothing). 0 or -1. */
static int route_src(const struct sockaddr *sa, socklen_t len, struct sockaddr_storage *src)
{
    socklen_t sl = sizeof *src;
    struct sockaddr_storage dst;
    int fd = socket(sa->sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0), rc = -1;

    if (fd < 0)
        return -1;
    memcpy(&dst, sa, len);
    if (dst.ss_family == AF_INET)
        ((struct sockaddr_in *)&dst)->sin_port = htons(9);
    else
        ((struct sockaddr_in6 *)&dst)->sin6_port = htons(9);
    if (connect(fd, (struct sockaddr *)&dst, len) == 0 &&
        getsockname(fd, (struct sockaddr *)src, &sl) == 0)
        rc = 0;
    close(fd);
    return rc;
}

int attnd_ucxw_net_device(const char *host, char *buf, size_t cap)
{
    struct addrinfo hints, *ai = NULL;
    struct sockaddr_storage src;
    char h[256];
    size_t n;

    buf[0] = '\0';
    if (!host || !host[0])
        return 0;
    n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') { /* "[v6]" */
        host++;
        n -= 2;
    }
    if (n >= sizeof h)
        return -1;
    memcpy(h, host, n);
    h[n] = '\0';
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(h, NULL, &hints, &ai) != 0 || !ai)
        return -1;
    if (!sa_wildcard(ai->ai_addr) && iface_of(ai->ai_addr, buf, cap) != 0) {
        /* not ours: the interface that routes there */
        if (route_src(ai->ai_addr, ai->ai_addrlen, &src) != 0 ||
            iface_of((struct sockaddr *)&src, buf, cap) != 0)
            buf[0] = '\0'; /* unknown: leave UCX alone */
    }
    freeaddrinfo(ai);
    return 0;
}

/* ---- context and worker ------------------------------------------------------------- */

static void config_set(ucp_config_t *cfg, const char *env, const char *name, const char *val)
{
    if (!getenv(env))
        (void)ucp_config_modify(cfg, name, val);
}

/* A ucp context with attnd's configuration (see the file comment) into
 * *ctx_p. dev: the network device ("" none); tcp_port > 0: fixed;
 * shm_only: transports restricted to shared memory and self (peer
 * workers), unless UCX_TLS is set. */
static ucs_status_t make_ctx(const char *dev, int tcp_port, int shm_only, ucp_context_h *ctx_p)
{
    ucp_params_t params = {.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_REQUEST_SIZE,
                           .features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP,
                           .request_size = sizeof(attnd__ucxw_req)};
    ucp_config_t *cfg;
    ucs_status_t us;
    char port[32];

    if ((us = ucp_config_read(NULL, NULL, &cfg)) != UCS_OK)
        return us;
    config_set(cfg, "UCX_RNDV_THRESH", "RNDV_THRESH", "256K");
    if (dev[0])
        config_set(cfg, "UCX_NET_DEVICES", "NET_DEVICES", dev);
    if (tcp_port > 0) {
        snprintf(port, sizeof port, "%d-%d", tcp_port, tcp_port);
        /* a transport's own key goes without the transport's prefix:
         * UCX 1.13 warns "invalid configuration" on TCP_PORT_RANGE and
         * lets the OS pick the port */
        config_set(cfg, "UCX_TCP_PORT_RANGE", "PORT_RANGE", port);
    }
    if (shm_only)
        config_set(cfg, "UCX_TLS", "TLS", "sm,self");
    us = ucp_init(&params, cfg, ctx_p);
    ucp_config_release(cfg);
    return us;
}

static ucs_status_t make_worker(ucp_context_h ctx, ucs_thread_mode_t mode, ucp_worker_h *wk_p,
                                int *efd_p)
{
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = mode};
    ucs_status_t us = ucp_worker_create(ctx, &wp, wk_p);
    if (us != UCS_OK)
        return us;
    if ((us = ucp_worker_get_efd(*wk_p, efd_p)) != UCS_OK) {
        ucp_worker_destroy(*wk_p);
        *wk_p = NULL;
    }
    return us;
}

attnd_status attnd_ucxw_init(attnd_ucxw *w, const attnd_ucxw_config *c, const char *who,
                             attnd_error *err)
{
    ucs_status_t us;
    char dev[IF_NAMESIZE + 1];

    memset(w, 0, sizeof *w);
    w->efd = -1;
    w->mode = c->thread_mode;
    if (pthread_mutex_init(&w->mu, NULL))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "%s: no mutex", who);
    w->mu_init = 1;
    if (attnd_ucxw_net_device(c->net_host, dev, sizeof dev) != 0) {
        attnd_ucxw_cleanup(w);
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: cannot resolve \"%s\"", who, c->net_host);
    }
    snprintf(w->net_devices, sizeof w->net_devices, "%s",
             getenv("UCX_NET_DEVICES") ? getenv("UCX_NET_DEVICES") : dev[0] ? dev : "all");
    if ((us = make_ctx(dev, c->tcp_port, 0, &w->ctx)) != UCS_OK)
        goto err_ucs;
    if ((us = make_worker(w->ctx, w->mode, &w->worker, &w->efd)) != UCS_OK)
        goto err_ucs;
    return ATTND_OK;

err_ucs:
    attnd_ucxw_cleanup(w);
    return attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "%s: UCX: %s", who,
                           ucs_status_string(us));
}

/* How many closes in flight are on `worker`. */
static size_t closes_on(const attnd_ucxw *w, ucp_worker_h worker)
{
    size_t n = 0;
    for (size_t k = 0; k < w->n_closing; k++)
        n += w->closing[k].worker == worker;
    return n;
}

/* Cancel the closes still in flight on `worker`, then let late completions
 * (sends, receives) run before it goes. */
static void drop_closes(attnd_ucxw *w, ucp_worker_h worker)
{
    for (size_t k = 0; k < w->n_closing;)
        if (w->closing[k].worker == worker) {
            ucp_request_cancel(worker, w->closing[k].req);
            ucp_request_free(w->closing[k].req);
            w->closing[k] = w->closing[--w->n_closing];
        } else {
            k++;
        }
    w->cur = worker;
    for (int i = 0; i < 100 && ucp_worker_progress(worker); i++)
        ;
}

/* Finish the closes in flight on `worker` (2 s at most), then drop_closes. */
static void drain_worker(attnd_ucxw *w, ucp_worker_h worker)
{
    for (uint64_t i = 0; i < 200000 && closes_on(w, worker); i++) {
        w->cur = worker;
        ucp_worker_progress(worker);
        attnd__ucxw_reap_closes(w);
        if (i % 1000 == 999)
            usleep(10000);
    }
    drop_closes(w, worker);
}

void attnd_ucxw_cleanup(attnd_ucxw *w)
{
    w->cleaning = 1; /* completions below may retire peer workers */
    for (size_t i = 0; i < w->n_pw; i++) {
        drain_worker(w, w->pw[i].worker);
        ucp_worker_destroy(w->pw[i].worker);
    }
    w->cur = NULL;
    free(w->pw);
    w->pw = NULL;
    w->n_pw = w->cap_pw = 0;
    if (w->worker) {
        drain_worker(w, w->worker);
        ucp_worker_destroy(w->worker);
        w->worker = NULL;
    }
    w->cur = NULL;
    free(w->closing);
    w->closing = NULL;
    w->n_closing = w->cap_closing = 0;
    free(w->pfds);
    w->pfds = NULL;
    w->cap_pfds = 0;
    if (w->pw_ctx)
        ucp_cleanup(w->pw_ctx);
    w->pw_ctx = NULL;
    if (w->ctx)
        ucp_cleanup(w->ctx);
    w->ctx = NULL;
    if (w->mu_init)
        pthread_mutex_destroy(&w->mu);
    w->mu_init = 0;
}

static ucs_status_t set_am(ucp_worker_h worker, const struct attnd_ucxw_am *a)
{
    ucp_am_handler_param_t p = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                      UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG,
        .id = a->id,
        .flags = UCP_AM_FLAG_WHOLE_MSG,
        .cb = a->cb,
        .arg = a->arg,
    };
    return ucp_worker_set_am_recv_handler(worker, &p);
}

ucs_status_t attnd_ucxw_on_am(attnd_ucxw *w, unsigned id, ucp_am_recv_callback_t cb, void *arg)
{
    struct attnd_ucxw_am a = {.id = id, .cb = cb, .arg = arg};
    int i;
    ucs_status_t us;

    for (i = 0; i < w->n_am && w->am[i].id != id; i++)
        ;
    if (i == ATTND_UCXW_MAX_AM)
        return UCS_ERR_EXCEEDS_LIMIT;
    if ((us = set_am(w->worker, &a)) != UCS_OK)
        return us;
    for (size_t k = 0; k < w->n_pw; k++)
        if ((us = set_am(w->pw[k].worker, &a)) != UCS_OK)
            return us;
    w->am[i] = a;
    if (i == w->n_am)
        w->n_am++;
    return UCS_OK;
}

attnd_status attnd_ucxw_peer_worker(attnd_ucxw *w, const char *who, ucp_worker_h *out,
                                    void **addr_p, size_t *len_p, attnd_error *err)
{
    attnd_ucxw_pw pw = {.efd = -1};
    ucs_status_t us;
    attnd_status st;

    if (w->n_pw == w->cap_pw) {
        size_t c = w->cap_pw ? 2 * w->cap_pw : 8;
        attnd_ucxw_pw *np = realloc(w->pw, c * sizeof *np);
        if (!np)
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "%s: no memory", who);
        w->pw = np;
        w->cap_pw = c;
    }
    if (!w->pw_ctx &&
        (us = make_ctx(strcmp(w->net_devices, "all") ? w->net_devices : "", 0, 1,
                       &w->pw_ctx)) != UCS_OK) {
        w->pw_ctx = NULL;
        goto err_ucs;
    }
    if ((us = make_worker(w->pw_ctx, w->mode, &pw.worker, &pw.efd)) != UCS_OK)
        goto err_ucs;
    for (int i = 0; i < w->n_am; i++)
        if ((us = set_am(pw.worker, &w->am[i])) != UCS_OK)
            goto err_worker;
    if ((st = attnd_ucxw_worker_address(pw.worker, addr_p, len_p, err))) {
        ucp_worker_destroy(pw.worker);
        return st;
    }
    w->pw[w->n_pw++] = pw;
    *out = pw.worker;
    return ATTND_OK;

err_worker:
    ucp_worker_destroy(pw.worker);
err_ucs:
    return attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "%s: UCX peer worker: %s", who,
                           ucs_status_string(us));
}

void attnd_ucxw_peer_worker_retire(attnd_ucxw *w, ucp_worker_h worker)
{
    if (w->cleaning)
        return; /* every worker goes now */
    for (size_t i = 0; i < w->n_pw; i++)
        if (w->pw[i].worker == worker) {
            if (!w->pw[i].retired)
                w->pw[i].retired_ns = attnd_clock_ns();
            w->pw[i].retired = 1;
            return;
        }
    /* not found: being destroyed (a completion its destruction ran) */
}

/* Destroy retired peer workers whose closes finished or whose time is up
 * (outside progress). Callbacks that run meanwhile may retire others. */
void attnd__ucxw_reap_workers(attnd_ucxw *w)
{
    uint64_t now = attnd_clock_ns();
    for (size_t i = 0; i < w->n_pw;) {
        attnd_ucxw_pw *pw = &w->pw[i];
        int waiting = pw->retired &&
                      now - pw->retired_ns < ATTND_UCXW_RETIRE_MS * 1000000ull &&
                      closes_on(w, pw->worker);
        if (!pw->retired || waiting) {
            i++;
            continue;
        }
        ucp_worker_h worker = pw->worker;
        w->pw[i] = w->pw[--w->n_pw]; /* gone from the loop's sets first */
        drop_closes(w, worker);
        ucp_worker_destroy(worker);
        w->cur = NULL;
    }
}

attnd_status attnd_ucxw_address(attnd_ucxw *w, void **addr_p, size_t *len_p, attnd_error *err)
{
    return attnd_ucxw_worker_address(w->worker, addr_p, len_p, err);
}

attnd_status attnd_ucxw_worker_address(ucp_worker_h worker, void **addr_p, size_t *len_p,
                                       attnd_error *err)
{
    ucp_address_t *a;
    size_t n;
    ucs_status_t us = ucp_worker_get_address(worker, &a, &n);

    if (us != UCS_OK)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "UCX worker address: %s",
                               ucs_status_string(us));
    void *copy = malloc(n);
    if (!copy) {
        ucp_worker_release_address(worker, a);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "UCX worker address: no memory");
    }
    memcpy(copy, a, n);
    ucp_worker_release_address(worker, a);
    *addr_p = copy;
    *len_p = n;
    return ATTND_OK;
}
