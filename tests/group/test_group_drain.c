/* SIGTERM drains a worker-group leader: health turns NOT_SERVING at once;
 * every call it had received (one running, others queued behind it) is
 * answered normally, outputs checked against the float64 reference; a call
 * that arrives after the signal gets UNAVAILABLE saying the server is
 * shutting down; then the leader exits 0. Over gRPC and over UCX.
 *
 * A stopped rank (SIGSTOP) is the tool that holds calls in flight for as
 * long as the test needs, without any timing: the leader's Attends wait
 * for it until the test resumes it (SIGCONT). The leader counts its own
 * part of an Attend before waiting (GetStats attend_calls), which tells the
 * test that a call is running. The leader has one executor and one io
 * thread, so calls sent after the running one queue; a health check sent
 * on the same connection after them is answered by the io thread after it
 * has taken them (one queue, in order), which marks them received before
 * the signal. Old attnd left such calls in gRPC's queue, which its
 * shutdown cancelled.
 */
#include <check.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "group_testutil.h"

#define QUEUED 8

static const char *const flags_grpc[] = {
    "--model", "tiny-mla", "--kv-dtype", "f32", "--page-size", "8", "--threads", "1",
    "--io-threads", "1", "--kernel-threads", "1", "--shard", "sequence",
    "--group-timeout-ms", "600000", "--shutdown-grace-ms", "120000", NULL};
static const char *const flags_ucx[] = {
    "--model", "tiny-mla", "--kv-dtype", "f32", "--page-size", "8", "--threads", "1",
    "--io-threads", "1", "--kernel-threads", "1", "--shard", "sequence",
    "--group-timeout-ms", "600000", "--shutdown-grace-ms", "120000", "--ucx-listen", "auto",
    NULL};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static uint64_t attend_calls(attnd_client *c)
{
    attnd_stats st;
    attnd_error err;
    attnd_error_clear(&err);
    attnd_status s = attnd_client_get_stats(c, &st, NULL, &err);
    ck_assert_msg(s == ATTND_OK, "GetStats: %s: %s", attnd_status_string(s), err.msg);
    return st.attend_calls;
}

static void wait_attend_calls(attnd_client *c, uint64_t want)
{
    for (int waited = 0; attend_calls(c) < want; waited += 10) {
        ck_assert_msg(waited < 60000, "the Attend never started");
        sleep_ms(10);
    }
}

/* Poll health with new connections until NOT_SERVING; each must answer. */
static void wait_not_serving(const cu_server *srv)
{
    for (int waited = 0;; waited += 10) {
        attnd_client *c = gt_connect_opts(srv, 10000, ATTND_TRANSPORT_GRPC);
        attnd_error err;
        int serving = -1;
        ck_assert_ptr_nonnull(c);
        attnd_error_clear(&err);
        attnd_status s = attnd_client_health(c, "", &serving, &err);
        attnd_client_destroy(c);
        ck_assert_msg(s == ATTND_OK, "health after SIGTERM: %s: %s", attnd_status_string(s),
                      err.msg);
        if (!serving)
            return;
        ck_assert_msg(waited < 60000, "health still SERVING long after SIGTERM");
        sleep_ms(10);
    }
}

/* Wait for rank r to exit on its own; require status 0. */
static void expect_exit_zero(gt_group *g, int r)
{
    int status = 0;
    for (int waited = 0;; waited += 10) {
        pid_t p = waitpid(g->rank[r].pid, &status, WNOHANG);
        if (p == g->rank[r].pid)
            break;
        ck_assert_msg(waited < 60000, "rank %d did not exit after its drain", r);
        sleep_ms(10);
    }
    g->rank[r].pid = 0;
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "rank %d: wait status 0x%x",
                  r, status);
}

/* The drain, over `transport`, with `queued` calls sent after the running
 * one (0 over UCX: its executors take requests in any order). */
static void drain(const char *const *flags, attnd_transport transport, int queued)
{
    gt_group g;
    cu_seqs s;
    cu_step steps[1 + QUEUED], late;
    attnd_call *calls[1 + QUEUED];
    attnd_error err;
    int serving = 0;

    ck_assert_int_eq(gt_group_start(&g, 2, flags), 0);
    cu_must_open(&s, g.c[0], 2, ATTND_DTYPE_F32);
    cu_must_prefill(&s, 0, 40, NULL);
    cu_must_prefill(&s, 1, 27, NULL);
    attnd_client *work = gt_connect_opts(&g.rank[0], 60000, transport);
    ck_assert_ptr_nonnull(work);
    uint64_t before = attend_calls(g.c[0]);

    ck_assert_int_eq(gt_rank_pause(&g, 1), 0);
    attnd_error_clear(&err);
    cu_step_make(&s, &steps[0], 2, 0, 2, 1, 0, 1, ATTND_DTYPE_INVALID);
    ck_assert_int_eq(attnd_client_attend_async(work, &steps[0].a, &calls[0], &err), ATTND_OK);
    wait_attend_calls(g.c[0], before + 1); /* running: it waits for rank 1 */
    for (int i = 1; i <= queued; i++) {
        cu_step_make(&s, &steps[i], (uint32_t)i % 4, (uint32_t)i % 2, 1, 1, 0, 1,
                     ATTND_DTYPE_INVALID);
        ck_assert_int_eq(attnd_client_attend_async(work, &steps[i].a, &calls[i], &err),
                         ATTND_OK);
    }
    ck_assert_int_eq(attnd_client_health(work, "", &serving, &err), ATTND_OK);
    ck_assert_int_eq(serving, 1);

    kill(g.rank[0].pid, SIGTERM);
    wait_not_serving(&g.rank[0]);
    /* a call after the signal: refused, the session untouched */
    cu_step_make(&s, &late, 0, 0, 1, 1, 1, 1, ATTND_DTYPE_INVALID);
    cu_assert_fails(attnd_client_attend(work, &late.a, &err), err, ATTND_ERR_UNAVAILABLE,
                    "shutting down");
    ck_assert(cu_step_untouched(&late));
    cu_step_free(&late);

    gt_rank_resume(&g, 1);
    attnd_refcheck_result res = {0};
    for (int i = 0; i <= queued; i++) {
        attnd_status r = attnd_call_wait(calls[i], &err);
        ck_assert_msg(r == ATTND_OK, "call %d received before SIGTERM: %s: %s", i,
                      attnd_status_string(r), err.msg);
        ck_assert_int_eq(cu_step_commit(&s, &steps[i], &res), 0);
        cu_step_free(&steps[i]);
    }
    ck_assert_msg(res.max_err <= cu_bound(ATTND_DTYPE_F32), "max error %g", res.max_err);
    ck_assert_msg(res.max_lse_err <= CU_LSE_BOUND, "max LSE error %g", res.max_lse_err);
    ck_assert_uint_gt(res.rows, 0);

    /* nothing is left to wait for: the leader ends on its own (clients
     * still connected are disconnected) */
    expect_exit_zero(&g, 0);
    attnd_client_destroy(work);
    s.n = 0; /* the sessions went with the leader's process */
    cu_seqs_close(&s);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}

START_TEST(test_sigterm_answers_the_grpc_calls_it_had_received)
{
    drain(flags_grpc, ATTND_TRANSPORT_GRPC, QUEUED);
}
END_TEST

START_TEST(test_sigterm_answers_the_ucx_requests_it_had_received)
{
    drain(flags_ucx, ATTND_TRANSPORT_UCX, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("group_drain");
    TCase *tc = tcase_create("drain");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_sigterm_answers_the_grpc_calls_it_had_received);
    tcase_add_test(tc, test_sigterm_answers_the_ucx_requests_it_had_received);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
