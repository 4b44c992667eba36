/* What an attnd process listens on, and that no stranger can take it
 * down through it (issue 10 item 1, issue 15 item 5). Real processes on
 * loopback: a lone worker with Attend over UCX, and a 2-rank group whose
 * ranks also serve UCX clients.
 *
 * The ports are found, not listed by hand: every socket of the process
 * (/proc/<pid>/fd) that /proc/<pid>/net/tcp{,6} shows in LISTEN state. Each
 * gets raw garbage: 17 zero bytes (what aborted UCX 1.13's sockaddr
 * listener), 4 KiB of random bytes, an HTTP request, a card header of the
 * group rendezvous announcing a huge payload, a connection reset, and two
 * connections left half-open (silent; a partial card header) for the rest
 * of the test. Afterwards every process must still serve: decode steps
 * over UCX equal the float64 reference, the group stays whole, and each
 * process exits 0 on SIGTERM (the checked teardown).
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "group_testutil.h"
#include "testutil.h"

#define MAX_PORTS 32
#define MAX_HELD 128

typedef struct lport {
    int family;         /* AF_INET / AF_INET6 */
    unsigned char a[16];
    int port;
    char text[64];
} lport;

/* ---- finding the listening ports ---------------------------------------------------- */

static unsigned long long socket_inode(const char *link)
{
    unsigned long long ino = 0;
    return sscanf(link, "socket:[%llu]", &ino) == 1 ? ino : 0;
}

/* Is inode ino one of pid's file descriptors? */
static int pid_has_socket(pid_t pid, unsigned long long ino)
{
    char dir[64], path[320], link[64];
    struct dirent *e;
    int found = 0;

    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    while (!found && (e = readdir(d))) {
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0)
            continue;
        link[n] = '\0';
        found = socket_inode(link) == ino;
    }
    closedir(d);
    return found;
}

/* One /proc/net/tcp{,6} table: its LISTEN rows that are pid's sockets. */
static int scan_table(pid_t pid, int family, lport *out, int n, int cap)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/net/%s", (int)pid, family == AF_INET ? "tcp" : "tcp6");
    FILE *f = fopen(path, "r");
    if (!f)
        return n;
    if (!fgets(line, sizeof line, f)) { /* the header */
        fclose(f);
        return n;
    }
    while (n < cap && fgets(line, sizeof line, f)) {
        char local[64], remote[64], st[8];
        unsigned long long ino = 0;
        unsigned port;
        int k = sscanf(line, " %*s %63s %63s %7s %*s %*s %*s %*s %*s %llu", local, remote, st,
                       &ino);
        char *colon = strchr(local, ':');
        if (k != 4 || strcmp(st, "0A") != 0 || !colon || !pid_has_socket(pid, ino))
            continue;
        *colon = '\0';
        sscanf(colon + 1, "%x", &port);
        lport *p = &out[n++];
        memset(p, 0, sizeof *p);
        p->family = family;
        p->port = (int)port;
        /* the kernel prints each 32-bit word in host (little-endian) order */
        for (size_t w = 0; w < strlen(local) / 8; w++) {
            unsigned v;
            char word[9];
            memcpy(word, local + 8 * w, 8);
            word[8] = '\0';
            sscanf(word, "%x", &v);
            memcpy(p->a + 4 * w, &v, 4);
        }
        char ip[INET6_ADDRSTRLEN];
        inet_ntop(family, p->a, ip, sizeof ip);
        snprintf(p->text, sizeof p->text, family == AF_INET ? "%s:%d" : "[%s]:%d", ip, p->port);
    }
    fclose(f);
    return n;
}

/* Every TCP port pid listens on; how many. */
static int listen_ports(pid_t pid, lport *out, int cap)
{
    int n = scan_table(pid, AF_INET, out, 0, cap);
    return scan_table(pid, AF_INET6, out, n, cap);
}

static int is_loopback(const lport *p)
{
    static const unsigned char v6_lo[16] = {[15] = 1};
    static const unsigned char mapped[12] = {[10] = 0xff, [11] = 0xff};
    if (p->family == AF_INET)
        return p->a[0] == 127;
    return memcmp(p->a, v6_lo, 16) == 0 || (memcmp(p->a, mapped, 12) == 0 && p->a[12] == 127);
}

/* ---- garbage ---------------------------------------------------------------------------- */

/* A connected socket to p (loopback for a wildcard or loopback address). */
static int dial(const lport *p)
{
    struct sockaddr_storage ss;
    socklen_t len;
    static const unsigned char zero[16];
    memset(&ss, 0, sizeof ss);
    if (p->family == AF_INET6 && !is_loopback(p) && memcmp(p->a, zero, 16) != 0) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)p->port);
        memcpy(&s6->sin6_addr, p->a, 16);
        len = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)p->port);
        if (p->family == AF_INET && !is_loopback(p) && (p->a[0] | p->a[1] | p->a[2] | p->a[3]))
            memcpy(&s4->sin_addr, p->a, 4);
        else
            s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *s4;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_msg(connect(fd, (struct sockaddr *)&ss, len) == 0, "connect %s: %s", p->text,
                  strerror(errno));
    return fd;
}

/* Send n bytes, read whatever comes back for a moment, close. */
static void hit(const lport *p, const void *buf, size_t n)
{
    int fd = dial(p);
    if (n && send(fd, buf, n, MSG_NOSIGNAL) < 0)
        ck_assert_msg(errno == EPIPE || errno == ECONNRESET, "send %s: %s", p->text,
                      strerror(errno));
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    char sink[4096];
    if (poll(&pf, 1, 100) > 0)
        (void)recv(fd, sink, sizeof sink, MSG_DONTWAIT);
    close(fd);
}

typedef struct held {
    int fd[MAX_HELD];
    int n;
} held;

/* Every kind of garbage to port p; the half-open connections go to *h. */
static void garbage(const lport *p, tu_rng *rng, held *h)
{
    static const unsigned char zeros[17];
    static const char http[] = "GET / HTTP/1.1\r\nHost: attnd\r\nConnection: close\r\n\r\n";
    unsigned char rnd[4096], card[160];

    hit(p, zeros, sizeof zeros);
    for (size_t i = 0; i < sizeof rnd; i++)
        rnd[i] = (unsigned char)tu_next(rng);
    hit(p, rnd, sizeof rnd);
    hit(p, http, sizeof http - 1);
    /* a rendezvous card that announces a 4 GiB payload */
    memset(card, 0, sizeof card);
    memcpy(card, "ATTNDGRP\x01\x00\x01\x00", 12);
    memset(card + 140, 0xff, 4);
    hit(p, card, sizeof card);
    /* a reset instead of a close */
    int fd = dial(p);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    (void)send(fd, rnd, 17, MSG_NOSIGNAL);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    /* half-open: silent, and a partial card header, held to the end */
    ck_assert_int_lt(h->n + 2, MAX_HELD);
    h->fd[h->n++] = dial(p);
    fd = dial(p);
    (void)send(fd, "ATTNDGRP\x01", 9, MSG_NOSIGNAL);
    h->fd[h->n++] = fd;
}

static void release(held *h)
{
    for (int i = 0; i < h->n; i++)
        close(h->fd[i]);
    h->n = 0;
}

/* ---- serving afterwards ------------------------------------------------------------------ */

static attnd_client *connect_ucx(const char *target)
{
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;

    attnd_client_options_init(&o);
    o.transport = ATTND_TRANSPORT_UCX;
    o.deadline_ms = 120000; /* hang guards only */
    o.connect_timeout_ms = 30000;
    attnd_error_clear(&err);
    attnd_status st = attnd_client_connect(target, &o, &c, &err);
    ck_assert_msg(st == ATTND_OK, "connect over UCX to %s: %s", target, err.msg);
    return c;
}

/* Decode steps over UCX to target, each output checked. */
static void must_decode(const char *target, double bound)
{
    attnd_client *c = connect_ucx(target);
    attnd_refcheck_result res = {0};
    attnd_error err;
    cu_seqs s;

    cu_must_open(&s, c, 2, ATTND_DTYPE_F32);
    cu_must_prefill(&s, 0, 90, NULL);
    cu_must_prefill(&s, 1, 131, NULL);
    attnd_error_clear(&err);
    for (int k = 0; k < 3; k++) {
        attnd_status st = cu_decode_step(&s, &res, &err);
        ck_assert_msg(st == ATTND_OK, "%s step %d: %s: %s", target, k, attnd_status_string(st),
                      err.msg);
    }
    ck_assert_uint_eq(res.rows, 3ull * s.m.n_layers * 2 * s.m.n_q_heads);
    ck_assert_msg(res.max_err <= bound, "max error %g", res.max_err);
    cu_seqs_close(&s);
    attnd_client_destroy(c);
}

static void assert_alive(pid_t pid, const char *who)
{
    int status;
    ck_assert_msg(waitpid(pid, &status, WNOHANG) == 0, "%s (pid %d) died", who, (int)pid);
}

/* ---- tests ------------------------------------------------------------------------------- */

START_TEST(test_garbage_to_every_port_of_a_lone_worker_with_ucx_leaves_it_serving)
{
    lport ports[MAX_PORTS];
    held h = {.n = 0};
    tu_rng rng;

    tu_rng_init(&rng, "listen test");
    cu_must_start("--model", "tiny-mla", "--kv-dtype", "f32", "--ucx-listen", "auto",
                  "--metrics-listen", "127.0.0.1:0");
    int n = listen_ports(cu_srv.pid, ports, MAX_PORTS);
    ck_assert_msg(n >= 3, "found %d listening ports (gRPC, UCX and metrics expected)", n);
    for (int i = 0; i < n; i++) {
        fprintf(stderr, "[listen test] lone worker listens on %s\n", ports[i].text);
        garbage(&ports[i], &rng, &h);
    }
    must_decode(cu_srv.target, 1e-5);
    assert_alive(cu_srv.pid, "attnd");
    release(&h);
}
END_TEST

START_TEST(test_garbage_to_every_port_of_each_rank_leaves_the_group_serving)
{
    static const char *const flags[] = {"--model", "tiny-mla", "--kv-dtype", "f32",
                                        "--ucx-listen", "auto", NULL};
    lport ports[MAX_PORTS];
    held h = {.n = 0};
    tu_rng rng;
    gt_group g;

    tu_rng_init(&rng, "listen test");
    ck_assert_int_eq(gt_group_start(&g, 2, flags), 0);
    for (int r = 0; r < 2; r++) {
        int n = listen_ports(g.rank[r].pid, ports, MAX_PORTS);
        ck_assert_msg(n >= 3, "rank %d: found %d listening ports (gRPC, rendezvous, UCX)", r,
                      n);
        for (int i = 0; i < n; i++) {
            fprintf(stderr, "[listen test] rank %d listens on %s\n", r, ports[i].text);
            garbage(&ports[i], &rng, &h);
        }
    }
    for (int r = 0; r < 2; r++) {
        assert_alive(g.rank[r].pid, "a rank");
        ck_assert_int_eq(gt_wait_connected(&g, r, 1), 0);
    }
    must_decode(g.rank[0].target, 1e-5); /* rank 0 leads */
    must_decode(g.rank[1].target, 1e-5); /* rank 1 leads */
    for (int r = 0; r < 2; r++)
        assert_alive(g.rank[r].pid, "a rank");
    release(&h);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

/* With --listen, --ucx-listen and --group on loopback, nothing of the
 * process listens anywhere else (UCX's TCP transport included). */
START_TEST(test_no_port_listens_off_loopback_when_everything_is_on_loopback)
{
    static const char *const flags[] = {"--model", "tiny-mla", "--ucx-listen", "auto", NULL};
    lport ports[MAX_PORTS];
    gt_group g;

    cu_must_start("--model", "tiny-mla", "--ucx-listen", "auto");
    ck_assert_int_eq(gt_group_start(&g, 2, flags), 0);
    pid_t pids[3] = {cu_srv.pid, g.rank[0].pid, g.rank[1].pid};
    for (int k = 0; k < 3; k++) {
        int n = listen_ports(pids[k], ports, MAX_PORTS);
        ck_assert_msg(n >= 2, "process %d: found %d listening ports", (int)pids[k], n);
        for (int i = 0; i < n; i++)
            ck_assert_msg(is_loopback(&ports[i]), "process %d listens on %s", (int)pids[k],
                          ports[i].text);
    }
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("listen");
    TCase *tc = tcase_create("listen");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, NULL, cu_teardown);
    tcase_add_test(tc, test_garbage_to_every_port_of_a_lone_worker_with_ucx_leaves_it_serving);
    tcase_add_test(tc, test_garbage_to_every_port_of_each_rank_leaves_the_group_serving);
    tcase_add_test(tc, test_no_port_listens_off_loopback_when_everything_is_on_loopback);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
