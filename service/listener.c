/* The gRPC listening sockets and their accept loop.
 *
 * Why our own: gRPC 1.51's listener gives up for good after one accept4
 * fails with EMFILE (upstream issues 16058 and 20418): the process then
 * never takes a connection again, while the connections it has keep
 * answering SERVING. Here one thread polls the sockets, accepts, and hands
 * each connection to gRPC (grpc_server_add_channel_from_fd: the server's
 * channel args, its completion queues, as gRPC's own listener would); gRPC
 * owns and closes the descriptor from then on.
 *
 * Running out of descriptors never stops the loop: it gives up a spare
 * descriptor it keeps open, accepts the waiting connection and closes it
 * at once (the client learns now instead of hanging in the backlog), takes
 * the spare back, logs (at most once a second) and goes on; when even that
 * fails it retries after 100 ms. An error that is not about resources or
 * one connection (the socket itself broke) ends the loop: health then says
 * NOT_SERVING, and it is logged.
 *
 * Connections are capped (--max-connections; by default the fd limit less
 * a quarter, at least 64, kept for everything else attnd opens: UCX and
 * group sockets, files). One beyond the cap is closed at once. Counting:
 * a table indexed by descriptor holds the socket inode of every connection
 * handed to gRPC. When accept returns a number that is in the table, gRPC
 * closed that connection meanwhile. At the cap the table is checked with
 * fstat (closed, or now another file: inode changed) before refusing, so a
 * connection is refused only while max_connections handed to gRPC are
 * really open. A check costs one fstat per connection; under a flood at
 * the cap they are spaced so they take at most a tenth of the loop's time.
 *
 * The soft RLIMIT_NOFILE is raised to the hard limit at start
 * (attnd_srv_raise_fd_limit, from main).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>

#include "attnd_clock.h"
#include "attnd_log.h"
#include "srv.h"

#define LISTEN_MAX 4      /* addresses one --listen may resolve to */
#define TABLE_MAX (1u << 22) /* descriptors tracked at most (32 MiB of table) */

struct attnd_srv_listener {
    attnd_srv *srv;
    int fd[LISTEN_MAX];
    int n_fd;
    int stop_fd;  /* eventfd: attnd_srv_listener_stop */
    int spare_fd; /* /dev/null, given up to shed a connection when out of fds */
    pthread_t tid;
    int running;
    grpc_server_credentials *creds;
    /* connections handed to gRPC: ino[fd] is the socket's inode, 0 none
     * (sockfs numbers its inodes from 1) */
    uint64_t *ino;
    size_t n_ino, hi;     /* table size; 1 + the highest fd entered */
    int64_t conns, max_conns;
    int64_t next_check_ns;
    int64_t logged_ms[2]; /* last log of: refused at the cap, out of fds */
    uint64_t refused, shed;
};

uint64_t attnd_srv_raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t soft = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl)) {
            attnd_log_warn("listener", "cannot raise the fd limit from %llu to %llu: %s",
                           (unsigned long long)soft, (unsigned long long)rl.rlim_max,
                           strerror(errno));
            rl.rlim_cur = soft;
        }
    }
    return (uint64_t)rl.rlim_cur;
}

int64_t attnd_srv_default_max_connections(uint64_t nofile)
{
    uint64_t reserve = nofile / 4 > 64 ? nofile / 4 : 64;
    return nofile > reserve + 1 ? (int64_t)(nofile - reserve) : 1;
}

/* ---- the loop ---------------------------------------------------------------------------- */

/* Log at most once a second per kind. */
static void log_limited(attnd_srv_listener *l, int kind, const char *what)
{
    int64_t ms = attnd_clock_ms();
    if (ms - l->logged_ms[kind] < 1000 && l->logged_ms[kind])
        return;
    l->logged_ms[kind] = ms;
    attnd_log_warn("listener", "%s (%llu refused at the cap, %llu shed for want of fds so far)",
                   what, (unsigned long long)l->refused, (unsigned long long)l->shed);
}

/* Forget table entries whose connection gRPC has closed. */
static void check_table(attnd_srv_listener *l)
{
    int64_t t0 = (int64_t)attnd_clock_ns();
    if (t0 < l->next_check_ns)
        return;
    for (size_t fd = 0; fd < l->hi; fd++) {
        struct stat st;
        if (l->ino[fd] && (fstat((int)fd, &st) || (uint64_t)st.st_ino != l->ino[fd])) {
            l->ino[fd] = 0;
            l->conns--;
        }
    }
    int64_t t1 = (int64_t)attnd_clock_ns();
    l->next_check_ns = t1 + 9 * (t1 - t0);
}

static void refuse(attnd_srv_listener *l, int fd)
{
    close(fd);
    l->refused++;
    log_limited(l, 0, "connections at --max-connections: closing new ones");
}

/* A new connection: count it and hand it to gRPC, or refuse it. */
static void take(attnd_srv_listener *l, int fd)
{
    struct stat st;
    int one = 1;

    if ((size_t)fd >= l->n_ino || fstat(fd, &st)) {
        refuse(l, fd);
        return;
    }
    if (l->ino[fd]) { /* the number came back: its old connection is gone */
        l->ino[fd] = 0;
        l->conns--;
    }
    if (l->conns >= l->max_conns)
        check_table(l);
    if (l->conns >= l->max_conns) {
        refuse(l, fd);
        return;
    }
    l->ino[fd] = (uint64_t)st.st_ino;
    l->conns++;
    if ((size_t)fd >= l->hi)
        l->hi = (size_t)fd + 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    grpc_server_add_channel_from_fd(l->srv->server, fd, l->creds);
}

/* Out of descriptors with a connection waiting: close the spare, take the
 * connection off the backlog and close it, take the spare back. 0 when the
 * backlog moved, 1 when nothing could be done (back off). */
static int shed(attnd_srv_listener *l, int lfd)
{
    log_limited(l, 1, "out of file descriptors: closing new connections until some are released");
    if (l->spare_fd < 0)
        return 1;
    close(l->spare_fd);
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    int moved = fd >= 0 || errno == EAGAIN || errno == EWOULDBLOCK;
    if (fd >= 0) {
        close(fd);
        l->shed++;
    }
    l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    return !moved;
}

/* Accept until the backlog is empty. 0, 1 to back off (out of fds), -1
 * when the socket itself failed (errno set). */
static int accept_all(attnd_srv_listener *l, int lfd)
{
    if (l->spare_fd < 0)
        l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            take(l, fd);
            continue;
        }
        switch (errno) {
        case EAGAIN:
#if EWOULDBLOCK != EAGAIN
        case EWOULDBLOCK:
#endif
            return 0;
        /* one connection's trouble (accept(2) on Linux): go on */
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
        case EPERM:
        case ENETDOWN:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case EOPNOTSUPP:
        case ENETUNREACH:
        case ETIMEDOUT:
            continue;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
            if (shed(l, lfd))
                return 1;
            continue;
        default:
            return -1;
        }
    }
}

static void die(attnd_srv_listener *l, const char *what)
{
    attnd_log_error("listener", "the gRPC accept loop failed (%s: %s): no new connections; "
                    "health is NOT_SERVING", what, strerror(errno));
    atomic_store(&l->srv->listener_dead, 1);
    attnd_srv_health_end_watches(l->srv);
}

static void *accept_main(void *arg)
{
    attnd_srv_listener *l = arg;
    struct pollfd p[LISTEN_MAX + 1];
    const int n = l->n_fd;

    for (;;) {
        for (int i = 0; i < n; i++)
            p[i] = (struct pollfd){.fd = l->fd[i], .events = POLLIN};
        p[n] = (struct pollfd){.fd = l->stop_fd, .events = POLLIN};
        if (poll(p, (nfds_t)n + 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            die(l, "poll");
            return NULL;
        }
        if (p[n].revents)
            return NULL;
        int back_off = 0;
        for (int i = 0; i < n; i++) {
            if (!p[i].revents)
                continue;
            int rc = accept_all(l, l->fd[i]);
            if (rc < 0) {
                die(l, "accept");
                return NULL;
            }
            back_off |= rc;
        }
        /* the sockets stay readable: wait on the stop fd alone */
        if (back_off && poll(&p[n], 1, 100) > 0)
            return NULL;
    }
}

/* ---- setup --------------------------------------------------------------------------------- */

/* Split "host:port" ("[v6]:port" too): host (may be empty) and port. */
static int split(const char *hostport, char *host, size_t cap, const char **port_p)
{
    const char *colon = strrchr(hostport, ':');
    if (!colon)
        return -1;
    size_t hl = (size_t)(colon - hostport);
    if (hl >= 2 && hostport[0] == '[' && hostport[hl - 1] == ']') {
        hostport++;
        hl -= 2;
    }
    if (hl + 1 > cap)
        return -1;
    memcpy(host, hostport, hl);
    host[hl] = '\0';
    *port_p = colon + 1;
    return 0;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len))
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

static void set_port(struct sockaddr *a, int port)
{
    if (a->sa_family == AF_INET)
        ((struct sockaddr_in *)a)->sin_port = htons((uint16_t)port);
    else if (a->sa_family == AF_INET6)
        ((struct sockaddr_in6 *)a)->sin6_port = htons((uint16_t)port);
}

/* A listening socket on a; -1 with errno set. */
static int listen_on(struct sockaddr *a, socklen_t len, int v6only)
{
    int one = 1;
    int fd = socket(a->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* SO_REUSEADDR only: restarts may bind over TIME_WAIT; two servers
     * never share a port (no SO_REUSEPORT) */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (a->sa_family == AF_INET6 && v6only)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, a, len) || listen(fd, SOMAXCONN)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Bind every address `listen` resolves to (the same port on all). */
static attnd_status bind_all(attnd_srv_listener *l, const char *listen, int *port_p,
                             attnd_error *err)
{
    char host[256];
    const char *port;
    struct addrinfo hints, *ai = NULL;
    int n4 = 0, n6 = 0, e, bound = 0;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    e = 0;
    if (split(listen, host, sizeof host, &port) ||
        (e = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai)) != 0 || !ai)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--listen: cannot resolve \"%s\" (expected HOST:PORT)%s%s",
                               listen, e ? ": " : "", e ? gai_strerror(e) : "");
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        n4 += a->ai_family == AF_INET;
        n6 += a->ai_family == AF_INET6;
    }
    e = 0;
    for (struct addrinfo *a = ai; a && l->n_fd < LISTEN_MAX; a = a->ai_next) {
        if (a->ai_family != AF_INET && a->ai_family != AF_INET6)
            continue;
        if (bound)
            set_port(a->ai_addr, bound);
        int fd = listen_on(a->ai_addr, a->ai_addrlen, n4 && n6);
        if (fd < 0) {
            e = errno;
            if (e == EAFNOSUPPORT || e == EADDRNOTAVAIL)
                continue; /* a family this host lacks */
            break;
        }
        l->fd[l->n_fd++] = fd;
        if (!bound)
            bound = bound_port(fd);
    }
    freeaddrinfo(ai);
    if ((e && e != EAFNOSUPPORT && e != EADDRNOTAVAIL) || !l->n_fd || bound <= 0)
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                               "--listen: cannot listen on %s (in use, or not a local "
                               "address?): %s", listen, strerror(e ? e : EADDRNOTAVAIL));
    *port_p = bound;
    return ATTND_OK;
}

static void listener_free(attnd_srv_listener *l)
{
    for (int i = 0; i < l->n_fd; i++)
        close(l->fd[i]);
    if (l->stop_fd >= 0)
        close(l->stop_fd);
    if (l->spare_fd >= 0)
        close(l->spare_fd);
    if (l->creds)
        grpc_server_credentials_release(l->creds);
    free(l->ino);
    free(l);
}

attnd_status attnd_srv_listener_open(attnd_srv *srv, attnd_error *err)
{
    const attnd_srv_config *cfg = srv->cfg;
    struct rlimit rl;
    attnd_srv_listener *l;
    attnd_status st;

    if (!(l = calloc(1, sizeof *l)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--listen: out of memory");
    l->srv = srv;
    l->stop_fd = l->spare_fd = -1;
    uint64_t nofile = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (uint64_t)rl.rlim_cur : 1024;
    l->n_ino = nofile < TABLE_MAX ? (size_t)nofile : TABLE_MAX;
    l->max_conns = cfg->max_connections > 0 ? cfg->max_connections
                                            : attnd_srv_default_max_connections(nofile);
    if ((uint64_t)l->max_conns + 32 > nofile)
        attnd_log_warn("listener", "--max-connections %lld leaves (almost) no descriptors under "
                       "the fd limit %llu for anything else; connections beyond what fits "
                       "are closed", (long long)l->max_conns, (unsigned long long)nofile);
    if (!(l->ino = calloc(l->n_ino, sizeof *l->ino)) ||
        !(l->creds = grpc_insecure_server_credentials_create())) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--listen: out of memory");
        goto err_free;
    }
    if ((l->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
        (l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--listen: %s",
                             strerror(errno));
        goto err_free;
    }
    if ((st = bind_all(l, cfg->listen, &srv->port, err)))
        goto err_free;
    srv->max_connections = l->max_conns;
    srv->listener = l;
    return ATTND_OK;

err_free:
    listener_free(l);
    return st;
}

attnd_status attnd_srv_listener_start(attnd_srv *srv, attnd_error *err)
{
    attnd_srv_listener *l = srv->listener;
    int rc = pthread_create(&l->tid, NULL, accept_main, l);
    if (rc)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "--listen: cannot start the accept thread: %s", strerror(rc));
    l->running = 1;
    return ATTND_OK;
}

void attnd_srv_listener_stop(attnd_srv *srv)
{
    attnd_srv_listener *l = srv->listener;
    uint64_t one = 1;

    if (!l)
        return;
    if (l->running) {
        if (write(l->stop_fd, &one, sizeof one) < 0)
            attnd_log_error("listener", "waking the accept thread: %s", strerror(errno));
        pthread_join(l->tid, NULL);
        l->running = 0;
    }
    srv->listener = NULL;
    listener_free(l);
}
