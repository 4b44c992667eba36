/* The gRPC port under TLS: gRPC's own listener, and a watchdog over it
 * (issue 15 item 1).
 *
 * attnd's own accept loop (listener.c) cannot carry TLS: gRPC 1.51 takes
 * a connection from outside (grpc_server_add_channel_from_fd) only with
 * insecure credentials. With --tls-cert the port is gRPC's
 * (grpc_server_add_http2_port with the SSL credentials of tls.c), and so
 * is its weakness: after one accept4 that fails for want of descriptors,
 * gRPC 1.51 never accepts again (upstream issues 16058, 20418), while open
 * connections go on answering SERVING. What attnd can do is see it and
 * say so, so that an orchestrator replaces the process:
 *
 * - gRPC logs that failure ("Failed accept4: ..."); attnd's gRPC log hook
 *   (which prints every gRPC log line to stderr, as gRPC would) notes it;
 * - independently of logging (GRPC_VERBOSITY=NONE silences it), once a
 *   second the watchdog connects to the port itself and reads the length
 *   of the listening socket's accept queue (TCP_INFO on gRPC's listening
 *   socket, found among this process's descriptors by its port). A live
 *   listener takes every waiting connection at each wake-up; a queue that
 *   is not empty for STUCK_TICKS seconds in a row means nobody accepts.
 *
 * Either way: a log line, health NOT_SERVING (Check, and every Watch gets
 * it and ends), for good. What stays as with listener.c: the soft fd limit
 * is raised to the hard one at start. What does not: --max-connections
 * (gRPC accepts whatever comes; a handshake that does not finish in
 * --handshake-timeout-ms is dropped, and keepalive drops silent peers).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <grpc/support/log.h>

#include "attnd_log.h"
#include "srv.h"

#define LISTEN_MAX 4
#define TICK_MS 1000
#define STUCK_TICKS 5

struct attnd_srv_watchdog {
    attnd_srv *srv;
    int stop_fd;
    pthread_t tid;
    int running;
    int lfd[LISTEN_MAX]; /* gRPC's listening sockets (not ours to close) */
    uint64_t lino[LISTEN_MAX];
    int n_lfd;
    struct sockaddr_storage probe_addr;
    socklen_t probe_len;
    int probe_fd;
    int stuck; /* ticks in a row with connections waiting */
};

/* Set by the log hook; gRPC logs from its own threads. */
static atomic_int accept_failed;

static void grpc_log(gpr_log_func_args *a)
{
    if (strncmp(a->message, "Failed accept4", 14) == 0)
        atomic_store(&accept_failed, 1);
    attnd_log(a->severity == GPR_LOG_SEVERITY_ERROR  ? ATTND_LOG_ERROR
              : a->severity == GPR_LOG_SEVERITY_INFO ? ATTND_LOG_INFO
                                                     : ATTND_LOG_DEBUG,
              "grpc", "%s:%d: %s", a->file, a->line, a->message);
}

attnd_status attnd_srv_watchdog_open(attnd_srv *srv, grpc_server_credentials *creds,
                                     attnd_error *err)
{
    attnd_srv_watchdog *w = calloc(1, sizeof *w);
    if (!w)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--listen: out of memory");
    w->srv = srv;
    w->probe_fd = -1;
    if ((w->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        free(w);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--listen: %s",
                               strerror(errno));
    }
    gpr_set_log_function(grpc_log);
    int port = grpc_server_add_http2_port(srv->server, srv->cfg->listen, creds);
    if (port <= 0) {
        close(w->stop_fd);
        free(w);
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                               "--listen: cannot listen on %s (in use, or not a local address?)",
                               srv->cfg->listen);
    }
    srv->port = port;
    srv->max_connections = 0; /* not enforced: gRPC accepts */
    if (srv->cfg->max_connections > 0)
        attnd_log_warn("listener", "--max-connections is not enforced with TLS (gRPC's own "
                       "listener accepts); keep the fd limit high");
    srv->watchdog = w;
    return ATTND_OK;
}

static int port_of(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return -1;
}

/* Find gRPC's listening sockets: ours by port, accepting. The probe goes
 * to the first one's address (loopback for a wildcard). */
static void find_listeners(attnd_srv_watchdog *w)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;

    if (!d)
        return;
    while ((de = readdir(d)) && w->n_lfd < LISTEN_MAX) {
        int fd = atoi(de->d_name), acc = 0;
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss, alen = sizeof acc;
        struct stat sb;
        if (de->d_name[0] < '0' || de->d_name[0] > '9' || fd == dirfd(d) ||
            fstat(fd, &sb) || !S_ISSOCK(sb.st_mode) ||
            getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &alen) || !acc ||
            getsockname(fd, (struct sockaddr *)&ss, &len) || port_of(&ss) != w->srv->port)
            continue;
        w->lfd[w->n_lfd] = fd;
        w->lino[w->n_lfd++] = (uint64_t)sb.st_ino;
        if (w->probe_len)
            continue;
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            if (a->sin_addr.s_addr == htonl(INADDR_ANY))
                a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        } else {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr))
                a->sin6_addr = in6addr_loopback;
        }
        w->probe_addr = ss;
        w->probe_len = len;
    }
    closedir(d);
}

static void die(attnd_srv_watchdog *w, const char *why)
{
    attnd_log_error("listener", "the gRPC listener stopped accepting (%s): no new connections; "
                    "health is NOT_SERVING; restart attnd", why);
    atomic_store(&w->srv->listener_dead, 1);
    attnd_srv_health_end_watches(w->srv);
}

/* Connections waiting in any listening socket's queue? */
static int waiting(attnd_srv_watchdog *w)
{
    for (int i = 0; i < w->n_lfd; i++) {
        struct tcp_info ti;
        socklen_t len = sizeof ti;
        struct stat sb;
        if (fstat(w->lfd[i], &sb) || (uint64_t)sb.st_ino != w->lino[i])
            continue; /* not that socket any more */
        if (getsockopt(w->lfd[i], IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
            ti.tcpi_state == TCP_LISTEN && ti.tcpi_unacked > 0)
            return 1;
    }
    return 0;
}

static void probe(attnd_srv_watchdog *w)
{
    if (w->probe_fd >= 0)
        close(w->probe_fd);
    w->probe_fd = -1;
    if (!w->probe_len)
        return;
    int fd = socket(w->probe_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return; /* out of descriptors: the queue tells anyway */
    if (connect(fd, (struct sockaddr *)&w->probe_addr, w->probe_len) && errno != EINPROGRESS) {
        close(fd);
        return;
    }
    w->probe_fd = fd;
}

static void *watch_main(void *arg)
{
    attnd_srv_watchdog *w = arg;
    struct pollfd p = {w->stop_fd, POLLIN, 0};

    find_listeners(w);
    if (!w->n_lfd)
        attnd_log_warn("listener", "gRPC's listening socket on port %d not found: only gRPC's "
                       "own log tells if it stops accepting", w->srv->port);
    for (;;) {
        int r = poll(&p, 1, TICK_MS);
        if (r > 0)
            break;
        if (r < 0 && errno != EINTR)
            break;
        if (atomic_load(&accept_failed)) {
            die(w, "accept4 failed: out of descriptors or memory; gRPC 1.51 does not retry");
            break;
        }
        w->stuck = waiting(w) ? w->stuck + 1 : 0;
        if (w->stuck >= STUCK_TICKS) {
            die(w, "connections have waited in its queue for 5 s");
            break;
        }
        probe(w);
    }
    if (w->probe_fd >= 0)
        close(w->probe_fd);
    w->probe_fd = -1;
    return NULL;
}

attnd_status attnd_srv_watchdog_start(attnd_srv *srv, attnd_error *err)
{
    attnd_srv_watchdog *w = srv->watchdog;
    int rc = pthread_create(&w->tid, NULL, watch_main, w);
    if (rc)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "--listen: cannot start the watchdog thread: %s", strerror(rc));
    w->running = 1;
    return ATTND_OK;
}

void attnd_srv_watchdog_stop(attnd_srv *srv)
{
    attnd_srv_watchdog *w = srv->watchdog;
    uint64_t one = 1;

    if (!w)
        return;
    if (w->running) {
        if (write(w->stop_fd, &one, sizeof one) < 0)
            attnd_log_error("listener", "waking the watchdog: %s", strerror(errno));
        pthread_join(w->tid, NULL);
        w->running = 0;
    }
    close(w->stop_fd);
    srv->watchdog = NULL;
    free(w);
}
