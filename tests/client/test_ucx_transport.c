/* The UCX transport of libattnd against real attnd servers (loopback):
 * what the decode and bad-input suites (re-run over UCX as test_ucx_decode
 * and test_ucx_errors) do not cover: the handshake, a client vanishing
 * with requests in flight, a call outliving its deadline, and threads
 * sharing one client's UCX worker.
 */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client_testutil.h"

static attnd_client *connect_ucx(int64_t deadline_ms)
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

/* Sessions with a short prefill, then decode steps checked against the
 * reference. */
static void must_decode(attnd_client *c, int steps)
{
    cu_seqs s;
    attnd_refcheck_result res = {0};
    attnd_error err;

    cu_must_open(&s, c, 2, ATTND_DTYPE_F32);
    cu_must_prefill(&s, 0, 100, NULL);
    cu_must_prefill(&s, 1, 67, NULL);
    attnd_error_clear(&err);
    for (int k = 0; k < steps; k++) {
        attnd_status st = cu_decode_step(&s, &res, &err);
        ck_assert_msg(st == ATTND_OK, "step %d: %s: %s", k, attnd_status_string(st), err.msg);
    }
    ck_assert_uint_eq(res.rows, (uint64_t)steps * s.m.n_layers * 2 * s.m.n_q_heads);
    ck_assert_msg(res.max_err <= 1e-5, "max error %g", res.max_err);
    ck_assert_msg(res.max_lse_err <= CU_LSE_BOUND, "max LSE error %g", res.max_lse_err);
    cu_seqs_close(&s);
}

START_TEST(test_ucx_transport_to_a_server_without_ucx_listen_is_unavailable)
{
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;

    cu_must_start("--model", "tiny-mla");
    attnd_client_options_init(&o);
    o.transport = ATTND_TRANSPORT_UCX;
    attnd_error_clear(&err);
    attnd_status st = attnd_client_connect(cu_srv.target, &o, &c, &err);
    cu_assert_fails(st, err, ATTND_ERR_UNAVAILABLE, "--ucx-listen");
    ck_assert_ptr_null(c);
}
END_TEST

START_TEST(test_an_unknown_transport_is_invalid_argument_naming_the_option)
{
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;

    cu_must_start("--model", "tiny-mla", "--ucx-listen", "auto");
    attnd_client_options_init(&o);
    o.transport = (attnd_transport)7;
    attnd_error_clear(&err);
    attnd_status st = attnd_client_connect(cu_srv.target, &o, &c, &err);
    cu_assert_fails(st, err, ATTND_ERR_INVALID_ARGUMENT, "opts.transport");
    ck_assert_ptr_null(c);
}
END_TEST

/* A child process connects over UCX, puts many Attend calls in flight and
 * is killed (SIGKILL: no goodbye on the endpoint). The server must drop
 * them, stay up, serve another UCX client correctly and stop cleanly
 * (cu_teardown asserts exit status 0). */
START_TEST(test_server_stays_up_when_a_ucx_client_dies_with_calls_in_flight)
{
    enum { CALLS = 48 };
    int pfd[2];

    cu_must_start("--model", "tiny-mla", "--kv-dtype", "f32", "--ucx-listen", "auto");
    ck_assert_int_eq(pipe(pfd), 0);
    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        /* the child: no Check asserts (its exit status is not looked at) */
        attnd_client_options o;
        attnd_client *c = NULL;
        cu_seqs s;
        attnd_error err;
        static cu_step st[CALLS];
        attnd_call *calls[CALLS];
        close(pfd[0]);
        attnd_client_options_init(&o);
        o.transport = ATTND_TRANSPORT_UCX;
        if (attnd_client_connect(cu_srv.target, &o, &c, &err) ||
            cu_seqs_open(&s, c, 8, ATTND_DTYPE_F32, 1, &err))
            _exit(1);
        for (uint32_t i = 0; i < 8; i++)
            if (cu_prefill(&s, i, 2000, NULL, &err))
                _exit(1);
        for (int k = 0; k < CALLS; k++) {
            cu_step_make(&s, &st[k], (uint32_t)k % s.m.n_layers, 0, 8, 4, 0, 1,
                         ATTND_DTYPE_INVALID);
            if (attnd_client_attend_async(c, &st[k].a, &calls[k], &err))
                _exit(1);
        }
        if (write(pfd[1], "x", 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    close(pfd[1]);
    char x;
    ssize_t n = read(pfd[0], &x, 1);
    close(pfd[0]);
    kill(child, SIGKILL);
    int status;
    ck_assert_int_eq(waitpid(child, &status, 0), child);
    ck_assert_msg(n == 1, "the child failed before its calls were in flight");

    attnd_client *c = connect_ucx(120000);
    must_decode(c, 3);
    int serving = 0;
    attnd_error err;
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_health(c, "", &serving, &err), ATTND_OK);
    ck_assert_int_eq(serving, 1);
    attnd_client_destroy(c);
}
END_TEST

/* A frozen server (SIGSTOP) never answers: the call fails
 * DEADLINE_EXCEEDED (the client withdraws it). Once the server runs again
 * its late reply finds no call and is dropped, and the server decodes
 * correctly for the next client. Sessions are made by a client with a
 * generous deadline; only the frozen call uses the short one. */
START_TEST(test_a_ucx_call_past_its_deadline_is_deadline_exceeded_and_the_server_goes_on)
{
    cu_seqs s;
    cu_step st;
    attnd_error err;

    cu_must_start("--model", "tiny-mla", "--kv-dtype", "f32", "--ucx-listen", "auto");
    attnd_client *c = connect_ucx(120000);
    attnd_client *c_short = connect_ucx(1000);
    cu_must_open(&s, c, 1, ATTND_DTYPE_F32);
    cu_must_prefill(&s, 0, 50, NULL);
    cu_step_make(&s, &st, 0, 0, 1, 1, 0, 0, ATTND_DTYPE_INVALID);
    /* c_short learns the model now: the frozen call must not need gRPC */
    attnd_stats stats;
    attnd_error_clear(&err);
    ck_assert_msg(attnd_client_get_stats(c_short, &stats, NULL, &err) == ATTND_OK, "%s", err.msg);
    ck_assert_int_eq(kill(cu_srv.pid, SIGSTOP), 0);
    /* kill() only queues the stop: wait until the server has really
     * stopped, or it may still answer the call below */
    int wst = 0;
    ck_assert_int_eq(waitpid(cu_srv.pid, &wst, WUNTRACED), cu_srv.pid);
    ck_assert(WIFSTOPPED(wst));
    attnd_error_clear(&err);
    attnd_status rc = attnd_client_attend(c_short, &st.a, &err);
    ck_assert_int_eq(kill(cu_srv.pid, SIGCONT), 0);
    cu_assert_fails(rc, err, ATTND_ERR_DEADLINE_EXCEEDED, "UCX reply");
    ck_assert(cu_step_untouched(&st));
    cu_step_free(&st);
    cu_seqs_close(&s);
    attnd_client_destroy(c_short);
    must_decode(c, 2);
    attnd_client_destroy(c);
}
END_TEST

/* The server goes away (stopped cleanly) under a connected UCX client:
 * the next call fails UNAVAILABLE, well before its (long) deadline. */
START_TEST(test_a_ucx_call_after_the_server_stopped_is_unavailable)
{
    cu_seqs s;
    cu_step st;
    attnd_error err;

    cu_must_start("--model", "tiny-mla", "--kv-dtype", "f32", "--ucx-listen", "auto");
    attnd_client *c = connect_ucx(120000);
    cu_must_open(&s, c, 1, ATTND_DTYPE_F32);
    cu_must_prefill(&s, 0, 20, NULL);
    cu_step_make(&s, &st, 0, 0, 1, 1, 0, 0, ATTND_DTYPE_INVALID);
    ck_assert_int_eq(cu_server_stop(&cu_srv), 0);
    attnd_error_clear(&err);
    attnd_status rc = attnd_client_attend(c, &st.a, &err);
    cu_assert_fails(rc, err, ATTND_ERR_UNAVAILABLE, "UCX");
    cu_step_free(&st);
    cu_seqs_close(&s); /* frees the mirror; the sessions went with the server */
    attnd_client_destroy(c);
}
END_TEST

/* DeepSeek-V3-sized messages (2 sequences in f32: 590 KB of queries,
 * 524 KB of outputs) go by rendezvous both ways (attnd's eager limit is
 * 256K): sync (gather list), async (packed copy) and stream calls must
 * all match the reference. */
START_TEST(test_rendezvous_sized_attends_match_the_reference)
{
    cu_seqs s;
    attnd_refcheck_result res = {0};
    attnd_stream *stream;
    attnd_error err;

    cu_must_start("--model", "deepseek-v3", "--kv-dtype", "f32", "--ucx-listen", "auto");
    attnd_client *c = connect_ucx(120000);
    cu_must_open(&s, c, 2, ATTND_DTYPE_F32);
    cu_must_prefill(&s, 0, 9, NULL);
    cu_must_prefill(&s, 1, 4, NULL);
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_stream_open(c, &stream, &err), ATTND_OK);
    for (int k = 0; k < 3; k++)
        for (uint32_t l = 0; l < s.m.n_layers; l += 7) {
            cu_step st;
            attnd_call *call;
            attnd_status rc;
            cu_step_make(&s, &st, l, 0, 2, 1, 1, 1, ATTND_DTYPE_INVALID);
            ck_assert_uint_gt(st.q_bytes, 256 << 10);
            if (k == 0)
                rc = attnd_client_attend(c, &st.a, &err);
            else if (k == 1)
                rc = attnd_stream_attend(stream, &st.a, &err);
            else if ((rc = attnd_client_attend_async(c, &st.a, &call, &err)) == ATTND_OK)
                rc = attnd_call_wait(call, &err);
            ck_assert_msg(rc == ATTND_OK, "round %d layer %u: %s", k, l, err.msg);
            ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
            cu_step_free(&st);
        }
    ck_assert_msg(attnd_stream_close(stream, &err) == ATTND_OK, "%s", err.msg);
    ck_assert_uint_eq(res.rows, 3ull * ((s.m.n_layers + 6) / 7) * 2 * s.m.n_q_heads);
    ck_assert_msg(res.max_err <= 1e-5, "max error %g", res.max_err);
    ck_assert_msg(res.max_lse_err <= CU_LSE_BOUND, "max LSE error %g", res.max_lse_err);
    cu_seqs_close(&s);
    attnd_client_destroy(c);
}
END_TEST

/* Threads sharing one UCX client: each drives its own sessions (sync,
 * async and stream calls in turn) while the others progress the same
 * worker; every reply must land in its own call, checked against the
 * reference. */
#define N_THREADS 3

typedef struct share_arg {
    attnd_client *c;
    int index;
    attnd_status st;
    attnd_error err;
    uint64_t rows;
    double max_err;
} share_arg;

static void *share_thread(void *p)
{
    share_arg *t = p;
    cu_seqs s;
    attnd_refcheck_result res = {0};
    attnd_stream *stream = NULL;

    t->st = cu_seqs_open(&s, t->c, 2, ATTND_DTYPE_F32, 0, &t->err);
    for (uint32_t i = 0; t->st == ATTND_OK && i < 2; i++)
        t->st = cu_prefill(&s, i, 60 + 7 * (uint32_t)t->index, NULL, &t->err);
    if (t->st == ATTND_OK)
        t->st = attnd_client_stream_open(t->c, &stream, &t->err);
    for (int k = 0; t->st == ATTND_OK && k < 12; k++)
        for (uint32_t l = 0; t->st == ATTND_OK && l < s.m.n_layers; l++) {
            cu_step st;
            attnd_call *call;
            cu_step_make(&s, &st, l, 0, 2, 1, 1, 1, ATTND_DTYPE_INVALID);
            if (k % 3 == 0)
                t->st = attnd_client_attend(t->c, &st.a, &t->err);
            else if (k % 3 == 1)
                t->st = attnd_stream_attend(stream, &st.a, &t->err);
            else if ((t->st = attnd_client_attend_async(t->c, &st.a, &call, &t->err)) == 0)
                t->st = attnd_call_wait(call, &t->err);
            if (t->st == ATTND_OK && cu_step_commit(&s, &st, &res))
                t->st = attnd_error_set(&t->err, ATTND_ERR_RESOURCE_EXHAUSTED, "no memory");
            cu_step_free(&st);
        }
    if (stream) {
        attnd_status cs = attnd_stream_close(stream, t->st ? NULL : &t->err);
        if (t->st == ATTND_OK)
            t->st = cs;
    }
    t->rows = res.rows;
    t->max_err = res.max_err > res.max_lse_err ? res.max_err : res.max_lse_err;
    cu_seqs_close(&s);
    return NULL;
}

START_TEST(test_threads_sharing_one_ucx_client_each_get_their_own_replies)
{
    pthread_t tid[N_THREADS];
    share_arg arg[N_THREADS];

    cu_must_start("--model", "tiny-mla", "--kv-dtype", "f32", "--ucx-listen", "auto",
                  "--threads", "2");
    attnd_client *c = connect_ucx(120000);
    for (int i = 0; i < N_THREADS; i++) {
        memset(&arg[i], 0, sizeof arg[i]);
        arg[i].c = c;
        arg[i].index = i;
        ck_assert_int_eq(pthread_create(&tid[i], NULL, share_thread, &arg[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(tid[i], NULL);
    attnd_model_info m;
    attnd_stats stats;
    attnd_error err;
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_get_stats(c, &stats, &m, &err), ATTND_OK);
    for (int i = 0; i < N_THREADS; i++) {
        ck_assert_msg(arg[i].st == ATTND_OK, "thread %d: %s: %s", i,
                      attnd_status_string(arg[i].st), arg[i].err.msg);
        ck_assert_uint_eq(arg[i].rows, 12ull * m.n_layers * 2 * m.n_q_heads);
        ck_assert_msg(arg[i].max_err <= 1e-5, "thread %d: max error %g", i, arg[i].max_err);
    }
    attnd_client_destroy(c);
}
END_TEST

static Suite *suite(void)
{
    Suite *su = suite_create("ucx_transport");
    TCase *tc = tcase_create("ucx");
    tcase_add_checked_fixture(tc, NULL, cu_teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_ucx_transport_to_a_server_without_ucx_listen_is_unavailable);
    tcase_add_test(tc, test_an_unknown_transport_is_invalid_argument_naming_the_option);
    tcase_add_test(tc, test_server_stays_up_when_a_ucx_client_dies_with_calls_in_flight);
    tcase_add_test(tc, test_a_ucx_call_past_its_deadline_is_deadline_exceeded_and_the_server_goes_on);
    tcase_add_test(tc, test_threads_sharing_one_ucx_client_each_get_their_own_replies);
    tcase_add_test(tc, test_rendezvous_sized_attends_match_the_reference);
    tcase_add_test(tc, test_a_ucx_call_after_the_server_stopped_is_unavailable);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
