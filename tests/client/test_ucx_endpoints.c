/* UCX endpoints of attnd against real servers on loopback: the limits of
 * one connection (issue 10 item 8), the same-host path over shared memory
 * and CMA with a client killed in the middle of large transfers (issue 12
 * item 1) and clients killed in the middle of sends, and what the server tells about its endpoints (GetStats, the
 * warning for a same-host client on TCP).
 */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client_testutil.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static attnd_client *connect_ucx_deadline(int64_t deadline_ms)
{
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;

    attnd_client_options_init(&o);
    o.transport = ATTND_TRANSPORT_UCX;
    o.deadline_ms = deadline_ms;
    o.connect_timeout_ms = 30000;
    attnd_error_clear(&err);
    attnd_status st = attnd_client_connect(cu_srv.target, &o, &c, &err);
    ck_assert_msg(st == ATTND_OK, "connect over UCX: %s", err.msg);
    return c;
}

static attnd_client *connect_ucx(void)
{
    return connect_ucx_deadline(120000); /* hang guards only */
}

/* Decode steps on c, each output checked. */
static void must_decode(attnd_client *c, int steps)
{
    attnd_refcheck_result res = {0};
    attnd_error err;
    cu_seqs s;

    cu_must_open(&s, c, 2, ATTND_DTYPE_F32);
    cu_must_prefill(&s, 0, 40, NULL);
    cu_must_prefill(&s, 1, 23, NULL);
    attnd_error_clear(&err);
    for (int k = 0; k < steps; k++) {
        attnd_status st = cu_decode_step(&s, &res, &err);
        ck_assert_msg(st == ATTND_OK, "step %d: %s: %s", k, attnd_status_string(st), err.msg);
    }
    ck_assert_uint_eq(res.rows, (uint64_t)steps * s.m.n_layers * 2 * s.m.n_q_heads);
    ck_assert_msg(res.max_err <= 1e-5, "max error %g", res.max_err);
    cu_seqs_close(&s);
}

/* The server's UCX endpoints now (GetStats through c). */
static attnd_stats stats_of(attnd_client *c)
{
    attnd_stats st;
    attnd_error err;
    attnd_error_clear(&err);
    ck_assert_msg(attnd_client_get_stats(c, &st, NULL, &err) == ATTND_OK, "%s", err.msg);
    return st;
}

/* Wait (30 s hang guard) until the server holds `want` UCX endpoints. */
static attnd_stats wait_endpoints(attnd_client *c, uint32_t want)
{
    attnd_stats st = stats_of(c);
    for (int waited = 0; st.ucx_endpoints != want && waited < 30000; waited += 20) {
        sleep_ms(20);
        st = stats_of(c);
    }
    ck_assert_msg(st.ucx_endpoints == want, "the server holds %u UCX endpoints, want %u: %s",
                  st.ucx_endpoints, want, st.ucx_transports);
    return st;
}

/* ---- limits of one connection ---------------------------------------------------------- */

enum { FLOOD = 48 };

/* FLOOD async Attends of 8 sequences on one connection; each either
 * matches the reference or is RESOURCE_EXHAUSTED naming `flag`. Returns
 * how many were refused. */
static int flood(attnd_client *c, const char *flag)
{
    static cu_step st[FLOOD];
    attnd_call *calls[FLOOD];
    attnd_refcheck_result res = {0};
    attnd_error err;
    cu_seqs s;
    int ok = 0, refused = 0;

    cu_must_open(&s, c, 8, ATTND_DTYPE_F32);
    for (uint32_t i = 0; i < 8; i++)
        cu_must_prefill(&s, i, 2000, NULL);
    attnd_error_clear(&err);
    for (int k = 0; k < FLOOD; k++) {
        cu_step_make(&s, &st[k], (uint32_t)k % s.m.n_layers, 0, 8, 1, 0, 1,
                     ATTND_DTYPE_INVALID);
        ck_assert_int_eq(attnd_client_attend_async(c, &st[k].a, &calls[k], &err), ATTND_OK);
    }
    for (int k = 0; k < FLOOD; k++) {
        attnd_error_clear(&err);
        attnd_status rc = attnd_call_wait(calls[k], &err);
        if (rc == ATTND_OK) {
            ck_assert_int_eq(cu_step_commit(&s, &st[k], &res), 0);
            ok++;
        } else {
            cu_assert_fails(rc, err, ATTND_ERR_RESOURCE_EXHAUSTED, flag);
            ck_assert(cu_step_untouched(&st[k]));
            refused++;
        }
        cu_step_free(&st[k]);
    }
    ck_assert_msg(ok >= 1, "no call of the flood was served");
    ck_assert_uint_eq(res.rows, (uint64_t)ok * 8 * s.m.n_q_heads);
    ck_assert_msg(res.max_err <= 1e-5, "max error %g", res.max_err);
    cu_seqs_close(&s);
    return refused;
}

/* One executor, at most 2 requests waiting per connection: a client that
 * puts 48 in flight at once gets RESOURCE_EXHAUSTED naming the flag for
 * those beyond; the rest are right, the same connection works afterwards,
 * and another connection is served. */
START_TEST(test_a_flooding_ucx_client_gets_resource_exhausted_naming_the_queue_limit)
{
    cu_must_start("--model", "tiny-mla", "--kv-dtype", "f32", "--ucx-listen", "auto",
                  "--ucx-exec-threads", "1", "--ucx-conn-queue", "2");
    attnd_client *c = connect_ucx(), *other = connect_ucx();
    int refused = flood(c, "--ucx-conn-queue");
    ck_assert_msg(refused >= 1, "48 requests at once, 2 may wait: none was refused");
    must_decode(c, 2);
    must_decode(other, 2);
    attnd_client_destroy(c);
    attnd_client_destroy(other);
}
END_TEST

/* The same with the bytes a connection may hold before its requests run
 * (each request here is ~21 KB; 30000 hold one). */
START_TEST(test_ucx_requests_beyond_the_connection_byte_limit_are_resource_exhausted)
{
    cu_must_start("--model", "tiny-mla", "--kv-dtype", "f32", "--ucx-listen", "auto",
                  "--ucx-exec-threads", "1", "--ucx-conn-bytes", "30000");
    attnd_client *c = connect_ucx(), *other = connect_ucx();
    int refused = flood(c, "--ucx-conn-bytes");
    ck_assert_msg(refused >= 1, "48 requests of ~21 KB at once, 30000 bytes may wait: none "
                                "was refused");
    must_decode(c, 2);
    must_decode(other, 2);
    attnd_client_destroy(c);
    attnd_client_destroy(other);
}
END_TEST

/* ---- the same-host path ---------------------------------------------------------------- */

/* A UCX client on this host uses shared memory with the CMA lane, and
 * both ends say so: the client (attnd_client_transport_info) and the
 * server (GetStats, one endpoint per client, gone once a client is
 * destroyed). */
START_TEST(test_a_same_host_ucx_client_uses_shared_memory_and_the_server_lists_it)
{
    char info[256];

    if (getenv("ATTND_UCX_SHM") && strcmp(getenv("ATTND_UCX_SHM"), "0") == 0)
        return; /* shared memory switched off for this run */
    cu_must_start("--model", "tiny-mla", "--kv-dtype", "f32", "--ucx-listen", "auto");
    attnd_client *c = connect_ucx();
    ck_assert_int_eq(attnd_client_transport_info(c, info, sizeof info), ATTND_OK);
    ck_assert_msg(strncmp(info, "ucx ", 4) == 0 && strstr(info, "cma/memory") &&
                      strstr(info, "same host") && !strstr(info, "tcp/"),
                  "client transports: %s", info);
    attnd_stats st = wait_endpoints(c, 1);
    ck_assert_msg(strstr(st.ucx_transports, "client") && strstr(st.ucx_transports, "cma/memory"),
                  "server's endpoints: %s", st.ucx_transports);
    attnd_client *c2 = connect_ucx();
    wait_endpoints(c, 2);
    must_decode(c2, 1);
    attnd_client_destroy(c2);
    wait_endpoints(c, 1); /* its BYE closed the server's side */
    attnd_client_destroy(c);
}
END_TEST

typedef struct decoder {
    attnd_client *c;
    atomic_int stop;
    attnd_status st;
    attnd_error err;
    int steps;
    double max_err;
} decoder;

/* Decode steps, each checked, until stop (at least 2). */
static void *decode_thread(void *p)
{
    decoder *d = p;
    attnd_refcheck_result res = {0};
    cu_seqs s;

    d->st = cu_seqs_open(&s, d->c, 2, ATTND_DTYPE_F32, 0, &d->err);
    for (uint32_t i = 0; d->st == ATTND_OK && i < 2; i++)
        d->st = cu_prefill(&s, i, 5 + 3 * i, NULL, &d->err);
    while (d->st == ATTND_OK && (d->steps < 2 || !atomic_load(&d->stop)))
        if ((d->st = cu_decode_step(&s, &res, &d->err)) == ATTND_OK)
            d->steps++;
    d->max_err = res.max_err;
    if (d->st == ATTND_OK)
        cu_seqs_close(&s);
    return NULL;
}

/* Large requests and replies (DeepSeek-V3, 8 sequences in f32: 2.4 MB
 * each way, rendezvous over CMA) keep one client's connection busy; the
 * client is SIGKILLed while they are in flight. Another client, decoding
 * all along, gets only correct answers; the server drops the dead
 * client's endpoint (its pidfd) and exits 0 at the end. */
START_TEST(test_a_client_killed_mid_transfer_over_shared_memory_leaves_others_correct)
{
    enum { INFLIGHT = 4 };
    int pfd[2];

    cu_must_start("--model", "deepseek-v3", "--kv-dtype", "f32", "--ucx-listen", "auto");
    ck_assert_int_eq(pipe(pfd), 0);
    pid_t child = fork(); /* before this process starts gRPC: it does not survive a fork */
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        /* the child: no Check asserts (its exit status is not looked at) */
        static cu_step st[INFLIGHT];
        attnd_call *calls[INFLIGHT];
        attnd_client_options o;
        attnd_client *cc = NULL;
        attnd_error err;
        cu_seqs s;
        char info[256] = "";
        close(pfd[0]);
        attnd_client_options_init(&o);
        o.transport = ATTND_TRANSPORT_UCX;
        if (attnd_client_connect(cu_srv.target, &o, &cc, &err) ||
            cu_seqs_open(&s, cc, 8, ATTND_DTYPE_F32, 1, &err))
            _exit(1);
        for (uint32_t i = 0; i < 8; i++)
            if (cu_prefill(&s, i, 2, NULL, &err))
                _exit(1);
        attnd_client_transport_info(cc, info, sizeof info);
        for (int k = 0; k < INFLIGHT; k++) {
            cu_step_make(&s, &st[k], (uint32_t)k, 0, 8, 1, 0, 1, ATTND_DTYPE_INVALID);
            if (attnd_client_attend_async(cc, &st[k].a, &calls[k], &err))
                _exit(1);
        }
        if (write(pfd[1], info, sizeof info) != (ssize_t)sizeof info)
            _exit(1);
        for (uint64_t n = 0;; n++) { /* keep INFLIGHT large calls going */
            int k = (int)(n % INFLIGHT);
            attnd_call_wait(calls[k], NULL);
            if (attnd_client_attend_async(cc, &st[k].a, &calls[k], &err))
                _exit(1);
        }
    }
    close(pfd[1]);
    char info[256];
    ssize_t n = read(pfd[0], info, sizeof info);
    close(pfd[0]);
    attnd_client *c = connect_ucx();
    decoder d = {.c = c};
    pthread_t tid;
    if (n == (ssize_t)sizeof info)
        ck_assert_int_eq(pthread_create(&tid, NULL, decode_thread, &d), 0);
    sleep_ms(300); /* transfers of the child in flight, the decoder going */
    kill(child, SIGKILL);
    int status;
    ck_assert_int_eq(waitpid(child, &status, 0), child);
    ck_assert_msg(n == (ssize_t)sizeof info, "the child failed before its calls were in flight");
    ck_assert_msg(strstr(info, "cma/memory") != NULL, "the child's transports: %s", info);
    atomic_store(&d.stop, 1);
    pthread_join(tid, NULL);
    ck_assert_msg(d.st == ATTND_OK, "the other client: %s: %s", attnd_status_string(d.st),
                  d.err.msg);
    ck_assert_msg(d.max_err <= 1e-5, "the other client: max error %g", d.max_err);
    wait_endpoints(c, 1); /* the dead client's endpoint is gone */
    must_decode(c, 1);
    attnd_client_destroy(c);
}
END_TEST

/* The file descriptors process pid holds. */
static int fds_of(pid_t pid)
{
    char path[64];
    int n = 0;
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    ck_assert_ptr_nonnull(d);
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* A same-host client SIGKILLed in the middle of a send, ROUNDS times at
 * random moments of a flood of ~150 KB eager requests (many
 * shared-memory fragments each; tests/client/ucx_flooder.c), never stops
 * another same-host client's calls reaching the server: each round the
 * other client decodes a step, checked. With one UCX worker for all
 * clients, a sender killed between reserving a slot of the worker's
 * shared-memory receive FIFO and filling it left the server receiving
 * nothing more from anyone on this host (about one kill in five): the
 * checked step then ends DEADLINE_EXCEEDED. Each dead client's worker
 * goes away (its descriptors: event fd, shared memory), also when its
 * sends stay queued in it. */
START_TEST(test_same_host_ucx_clients_killed_mid_send_never_stop_the_others)
{
    enum { ROUNDS = 16 };
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();

    fprintf(stderr, "  kill times from seed %u\n", seed);
    cu_must_start("--model", "tiny-mla512", "--kv-dtype", "f32", "--ucx-listen", "auto");
    attnd_client *c = connect_ucx_deadline(20000); /* a wedge shows as DEADLINE_EXCEEDED */
    must_decode(c, 1);
    int fds0 = -1;
    for (int r = 0; r < ROUNDS; r++) {
        int pfd[2];
        char ready[8] = "";
        ck_assert_int_eq(pipe(pfd), 0);
        pid_t child = fork(); /* exec at once: nothing of gRPC runs in it */
        ck_assert_int_ge(child, 0);
        if (child == 0) {
            dup2(pfd[1], 1);
            close(pfd[0]);
            close(pfd[1]);
            execl(ATTND_UCX_FLOODER, ATTND_UCX_FLOODER, cu_srv.target, (char *)NULL);
            _exit(127);
        }
        close(pfd[1]);
        ssize_t n = read(pfd[0], ready, 6);
        close(pfd[0]);
        sleep_ms(1 + (int)(rand_r(&seed) % 40)); /* into the flood */
        kill(child, SIGKILL);
        int status;
        ck_assert_int_eq(waitpid(child, &status, 0), child);
        ck_assert_msg(n == 6 && memcmp(ready, "ready\n", 6) == 0,
                      "round %d: the flooder failed before its calls were in flight", r);
        must_decode(c, 1);
        if (r == 0) { /* one client has come and gone: the server is warm */
            wait_endpoints(c, 1);
            sleep_ms(500);
            fds0 = fds_of(cu_srv.pid);
        }
    }
    wait_endpoints(c, 1); /* every killed client's endpoint is gone */
    int fds = fds_of(cu_srv.pid); /* and its worker (200 ms after, at most) */
    for (int waited = 0; fds > fds0 + 2 && waited < 30000; waited += 50) {
        sleep_ms(50);
        fds = fds_of(cu_srv.pid);
    }
    ck_assert_msg(fds <= fds0 + 2, "the server holds %d descriptors after %d dead clients, "
                  "%d after the first", fds, ROUNDS, fds0);
    attnd_client_destroy(c);
}
END_TEST

/* A same-host client that UCX cannot reach by shared memory (the server
 * runs with UCX_TLS=tcp,self) is served over TCP, and attnd logs a
 * warning naming the transport. */
START_TEST(test_a_same_host_ucx_client_on_tcp_is_served_and_logged_as_a_warning)
{
    char log[] = "/tmp/attnd-ucx-log-XXXXXX", buf[8192];
    int fd = mkstemp(log), saved = dup(STDERR_FILENO);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_ge(saved, 0);
    setenv("UCX_TLS", "tcp,self", 1); /* the server inherits it at fork */
    dup2(fd, STDERR_FILENO);          /* and writes its log there */
    cu_must_start("--model", "tiny-mla", "--kv-dtype", "f32", "--ucx-listen", "auto");
    dup2(saved, STDERR_FILENO);
    close(saved);
    unsetenv("UCX_TLS");
    attnd_client *c = connect_ucx();
    must_decode(c, 1);
    attnd_stats st = wait_endpoints(c, 1);
    ck_assert_msg(strstr(st.ucx_transports, "tcp/"), "server's endpoints: %s",
                  st.ucx_transports);
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    ck_assert_int_ge(n, 0);
    buf[n] = '\0';
    close(fd);
    unlink(log);
    ck_assert_msg(strstr(buf, "warn  ucx: client") &&
                      strstr(buf, "runs on this host but UCX uses tcp/"),
                  "attnd's log has no warning: %s", buf);
    attnd_client_destroy(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ucx_endpoints");
    TCase *tc = tcase_create("ucx");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, NULL, cu_teardown);
    tcase_add_test(tc, test_a_flooding_ucx_client_gets_resource_exhausted_naming_the_queue_limit);
    tcase_add_test(tc, test_ucx_requests_beyond_the_connection_byte_limit_are_resource_exhausted);
    tcase_add_test(tc, test_a_same_host_ucx_client_uses_shared_memory_and_the_server_lists_it);
    tcase_add_test(tc, test_a_client_killed_mid_transfer_over_shared_memory_leaves_others_correct);
    tcase_add_test(tc, test_same_host_ucx_clients_killed_mid_send_never_stop_the_others);
    tcase_add_test(tc, test_a_same_host_ucx_client_on_tcp_is_served_and_logged_as_a_warning);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
