/* Ranks prove the group secret to each other (issue 15 item 4): real
 * attnd ranks on loopback with --group-secret-file.
 *
 * Ranks holding the same secret form the group and decode exactly. A rank
 * with another secret, or with none, never joins: both sides log why, no
 * peer is ever connected, and neither can lead a call (CreateSession needs
 * every rank: UNAVAILABLE). A stranger speaking the rendezvous protocol
 * itself, without the secret (a plain HELLO; a CHALLENGE answered with a
 * made-up proof; the rank's own proof sent back to it), gets only bare
 * refusals: no UCX address, no token, not even the group's settings, and
 * the group stays whole and serving.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "group_int.h"
#include "group_testutil.h"
#include "testutil.h"

#define WAIT_MS 30000 /* hang guard */

static tu_rng rng;
static char dir[] = "/tmp/attnd-gsecret-XXXXXX";
static char secret_a[128], secret_b[128], log_path[128];

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A secret file of 64 random hex digits (mode 0600) at path. */
static void write_secret(const char *path)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 4; i++)
        fprintf(f, "%016llx", (unsigned long long)tu_next(&rng));
    fputc('\n', f);
    fclose(f);
    chmod(path, 0600);
}

static void setup(void)
{
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(secret_a, sizeof secret_a, "%s/secret-a", dir);
    snprintf(secret_b, sizeof secret_b, "%s/secret-b", dir);
    snprintf(log_path, sizeof log_path, "%s/stderr", dir);
    write_secret(secret_a);
    write_secret(secret_b);
}

static void teardown(void)
{
    unlink(secret_a);
    unlink(secret_b);
    unlink(log_path);
    rmdir(dir);
    memcpy(dir + strlen(dir) - 6, "XXXXXX", 6);
}

/* Start a 2-rank group by hand: rank r gets --group-secret-file secret[r]
 * (NULL: none), both write stderr to log_path; nothing waits for the
 * peers. */
static void start_pair(gt_group *g, const char *const secret[2])
{
    const char *base[] = {"--model", "tiny-gqa", "--threads", "2", "--kernel-threads", "1"};
    memset(g, 0, sizeof *g);
    snprintf(g->dir, sizeof g->dir, "/tmp/attnd-gtest-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g->dir));
    g->n = 2;
    snprintf(g->group, sizeof g->group, "127.0.0.1:0,127.0.0.1:0");
    int saved = dup(STDERR_FILENO);
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    ck_assert_int_ge(fd, 0);
    dup2(fd, STDERR_FILENO); /* the ranks inherit it */
    for (int r = 0; r < 2; r++) {
        g->n_flags = 0;
        for (size_t i = 0; i < sizeof base / sizeof base[0]; i++)
            g->flags[g->n_flags++] = base[i];
        if (secret[r]) {
            g->flags[g->n_flags++] = "--group-secret-file";
            g->flags[g->n_flags++] = secret[r];
        }
        int rc = gt_rank_start(g, r);
        if (rc) {
            dup2(saved, STDERR_FILENO);
            ck_abort_msg("rank %d did not start", r);
        }
    }
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fd);
}

/* Does log_path hold `what`, within the hang guard? */
static int log_has(const char *what)
{
    static char buf[1 << 16];
    for (int waited = 0; waited < WAIT_MS; waited += 20) {
        FILE *f = fopen(log_path, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = '\0';
        if (strstr(buf, what))
            return 1;
        sleep_ms(20);
    }
    fprintf(stderr, "log_has: no \"%s\" in:\n%s\n", what, buf);
    return 0;
}

static void assert_connected(gt_group *g, uint32_t want)
{
    for (int r = 0; r < g->n; r++) {
        attnd_stats st;
        attnd_error err;
        ck_assert_int_eq(attnd_client_get_stats(g->c[r], &st, NULL, &err), ATTND_OK);
        ck_assert_msg(st.group_connected == want, "rank %d: %u peers connected, want %u", r,
                      st.group_connected, want);
    }
}

START_TEST(test_ranks_holding_one_secret_form_the_group_and_decode_exactly)
{
    const char *const secret[2] = {secret_a, secret_a};
    static const uint32_t chunks[] = {13, 0};
    gt_group g;
    cu_seqs s;
    attnd_error err;

    start_pair(&g, secret);
    for (int r = 0; r < 2; r++)
        ck_assert_int_eq(gt_wait_connected(&g, r, 1), 0);
    attnd_error_clear(&err);
    ck_assert_int_eq(cu_seqs_open(&s, g.c[1], 2, ATTND_DTYPE_F32, 0, &err), ATTND_OK);
    ck_assert_int_eq(cu_prefill(&s, 0, 37, chunks, &err), ATTND_OK);
    ck_assert_int_eq(cu_prefill(&s, 1, 20, chunks, &err), ATTND_OK);
    for (int i = 0; i < 2; i++) {
        s.c = g.c[i]; /* led by either rank */
        attnd_refcheck_result res = {0};
        ck_assert_int_eq(cu_decode_step(&s, &res, &err), ATTND_OK);
        ck_assert_msg(res.max_err <= cu_bound(s.dt), "max error %g", res.max_err);
        ck_assert_uint_eq(res.rows, (uint64_t)s.m.n_layers * s.n * s.m.n_q_heads);
    }
    cu_seqs_close(&s);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

/* _i: 0 another secret, 1 none on rank 1. Each rank refuses the other
 * (logged: what the test waits for; with two secrets each connector
 * already fails the acceptor's proof), after which neither has a peer nor
 * can lead. */
START_TEST(test_a_rank_with_another_secret_or_none_never_joins_or_leads)
{
    const char *const secret[2] = {secret_a, _i == 0 ? secret_b : NULL};
    gt_group g;
    attnd_session_id id;
    attnd_error err;

    start_pair(&g, secret);
    if (_i == 0) {
        ck_assert(log_has("rank 0: rank 1 failed the group secret's proof"));
        ck_assert(log_has("rank 1: rank 0 failed the group secret's proof"));
    } else {
        ck_assert(log_has("got a HELLO without its proof"));
        ck_assert(log_has("runs without a group secret"));
    }
    assert_connected(&g, 0);
    for (int r = 0; r < 2; r++) {
        attnd_status st = attnd_client_create_session(g.c[r], NULL, 64, &id, NULL, &err);
        ck_assert_msg(st == ATTND_ERR_UNAVAILABLE, "rank %d led CreateSession: %s", r,
                      attnd_status_string(st));
    }
    for (int r = 0; r < 2; r++) {
        attnd_stats st;
        ck_assert_int_eq(attnd_client_get_stats(g.c[r], &st, NULL, &err), ATTND_OK);
        ck_assert_uint_eq(st.sessions, 0);
    }
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

/* ---- a stranger on the rendezvous port ------------------------------------------------ */

/* Connect to rank r's rendezvous port (its address in the group dir). */
static int dial_rank(const gt_group *g, int r)
{
    char path[128], addr[128] = "";
    snprintf(path, sizeof path, "%s/rank-%d", g->dir, r);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(fgets(addr, sizeof addr, f));
    fclose(f);
    char *colon = strrchr(addr, ':');
    ck_assert_ptr_nonnull(colon);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
    ck_assert_int_eq(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Read n bytes (hang guard WAIT_MS); the count read (short at EOF). */
static size_t recv_n(int fd, unsigned char *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        ck_assert_int_eq(poll(&pf, 1, WAIT_MS), 1);
        ssize_t k = recv(fd, p + got, n - got, 0);
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    return got;
}

/* Read one card: its header into *c, its payload into payload. */
static void recv_card(int fd, attnd__gcard *c, unsigned char *payload)
{
    unsigned char hdr[ATTND__GCARD_HDR];
    ck_assert_uint_eq(recv_n(fd, hdr, sizeof hdr), sizeof hdr);
    ck_assert_int_eq(attnd__gcard_decode(hdr, sizeof hdr, c), 1);
    ck_assert_uint_eq(recv_n(fd, payload, c->payload_len), c->payload_len);
}

/* What a refusal may say: a bare ANSWER whose payload is a message, and
 * then the connection ends. */
static void expect_bare_refusal(int fd, const char *why)
{
    attnd__gcard c;
    unsigned char payload[ATTND_UCXW_ADDR_MAX + 1], more;
    recv_card(fd, &c, payload);
    payload[c.payload_len] = '\0';
    ck_assert_uint_eq(c.kind, ATTND__GCARD_ANSWER);
    ck_assert_int_eq(c.status, ATTND_ERR_UNAUTHENTICATED);
    ck_assert_uint_eq(c.token, 0);
    ck_assert_int_eq(c.size, 0);
    ck_assert_uint_eq(c.mode | c.page_size | c.n_layers | c.n_q_heads | c.kv_elems, 0);
    ck_assert_uint_eq(c.host.pid_ns | c.host.ipc_ns | c.host.net_ns, 0);
    ck_assert_int_eq(c.host.pid, 0);
    ck_assert_msg(strstr((const char *)payload, why), "refusal \"%s\"", payload);
    ck_assert_uint_eq(recv_n(fd, &more, 1), 0); /* closed */
}

/* A HELLO as a rank would send it (rank 1, a made-up address). */
static size_t stranger_hello(unsigned char *out)
{
    attnd__gcard c;
    memset(&c, 0, sizeof c);
    c.version = ATTND__GCARD_VERSION;
    c.kind = ATTND__GCARD_HELLO;
    c.rank = 1;
    c.size = 2;
    c.token = tu_next(&rng);
    c.payload_len = 64;
    unsigned char addr[64];
    for (size_t i = 0; i < sizeof addr; i++)
        addr[i] = (unsigned char)tu_next(&rng);
    return attnd__gcard_encode(&c, addr, out);
}

/* The rank's PROOF for our CHALLENGE: bare, a MAC as payload. */
static void recv_proof(int fd, unsigned char mac[ATTND__GCARD_MAC])
{
    attnd__gcard c;
    unsigned char payload[ATTND_UCXW_ADDR_MAX];
    recv_card(fd, &c, payload);
    ck_assert_uint_eq(c.kind, ATTND__GCARD_PROOF);
    ck_assert_uint_eq(c.token, 0);
    ck_assert_int_eq(c.size, 0);
    ck_assert_uint_eq(c.payload_len, ATTND__GCARD_MAC);
    memcpy(mac, payload, ATTND__GCARD_MAC);
}

START_TEST(test_a_stranger_without_the_secret_learns_no_address_token_or_settings)
{
    const char *const secret[2] = {secret_a, secret_a};
    unsigned char buf[3 * ATTND__GCARD_HDR + ATTND_UCXW_ADDR_MAX], mac[ATTND__GCARD_MAC];
    gt_group g;
    size_t n;

    start_pair(&g, secret);
    for (int r = 0; r < 2; r++)
        ck_assert_int_eq(gt_wait_connected(&g, r, 1), 0);
    for (int r = 0; r < 2; r++) {
        /* a HELLO straight away */
        int fd = dial_rank(&g, r);
        send_all(fd, buf, stranger_hello(buf));
        expect_bare_refusal(fd, "without its proof");
        close(fd);
        /* a CHALLENGE, then a made-up proof and a HELLO */
        fd = dial_rank(&g, r);
        attnd__gcard_bare(ATTND__GCARD_CHALLENGE, 1 - r, 0, 0, buf);
        send_all(fd, buf, ATTND__GCARD_HDR);
        recv_proof(fd, mac);
        attnd__gcard_bare(ATTND__GCARD_PROOF, 1 - r, 0, ATTND__GCARD_MAC, buf);
        for (size_t i = 0; i < ATTND__GCARD_MAC; i++)
            buf[ATTND__GCARD_HDR + i] = (unsigned char)tu_next(&rng);
        n = ATTND__GCARD_HDR + ATTND__GCARD_MAC;
        n += stranger_hello(buf + n);
        send_all(fd, buf, n);
        expect_bare_refusal(fd, "proof is wrong");
        close(fd);
        /* the rank's own proof sent back as ours */
        fd = dial_rank(&g, r);
        attnd__gcard_bare(ATTND__GCARD_CHALLENGE, 1 - r, 0, 0, buf);
        send_all(fd, buf, ATTND__GCARD_HDR);
        recv_proof(fd, mac);
        attnd__gcard_bare(ATTND__GCARD_PROOF, 1 - r, 0, ATTND__GCARD_MAC, buf);
        memcpy(buf + ATTND__GCARD_HDR, mac, ATTND__GCARD_MAC);
        n = ATTND__GCARD_HDR + ATTND__GCARD_MAC;
        n += stranger_hello(buf + n);
        send_all(fd, buf, n);
        expect_bare_refusal(fd, "proof is wrong");
        close(fd);
    }
    /* the group is still whole and serving */
    assert_connected(&g, 1);
    static const uint32_t chunks[] = {13, 0};
    cu_seqs s;
    attnd_error err;
    attnd_refcheck_result res = {0};
    ck_assert_int_eq(cu_seqs_open(&s, g.c[0], 1, ATTND_DTYPE_F32, 0, &err), ATTND_OK);
    ck_assert_int_eq(cu_prefill(&s, 0, 20, chunks, &err), ATTND_OK);
    ck_assert_int_eq(cu_decode_step(&s, &res, &err), ATTND_OK);
    ck_assert_msg(res.max_err <= cu_bound(s.dt), "max error %g", res.max_err);
    cu_seqs_close(&s);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

int main(void)
{
    tu_rng_init(&rng, "group secret");
    Suite *s = suite_create("group_secret");
    TCase *tc = tcase_create("secret");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_ranks_holding_one_secret_form_the_group_and_decode_exactly);
    tcase_add_loop_test(tc, test_a_rank_with_another_secret_or_none_never_joins_or_leads, 0, 2);
    tcase_add_test(tc, test_a_stranger_without_the_secret_learns_no_address_token_or_settings);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
