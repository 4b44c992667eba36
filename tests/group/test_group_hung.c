/* What a hung rank must not stop. A rank stopped with SIGSTOP keeps its
 * connections open and answers nothing; Attends led by a peer wait for it
 * (here: every executor of the leader), and meanwhile health checks and
 * GetStats on other connections must still answer, since the leader
 * accepts calls and answers control calls on threads that never wait for
 * work. The waiting Attends fail UNAVAILABLE naming the rank, and once it
 * runs again the group goes on exactly.
 *
 * No timing is asserted: the leader waits for the stopped rank far longer
 * (most of the Attends' 20 s deadline) than the control calls' 5 s hang
 * guard, so a control call stuck behind the Attends fails its deadline.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "group_testutil.h"

static const char *const flags[] = {"--model", "tiny-mla", "--kv-dtype", "f32",
                                    "--page-size", "8", "--threads", "2",
                                    "--kernel-threads", "1", "--shard", "sequence",
                                    "--group-timeout-ms", "600000", NULL};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Poll GetStats on c until the engine has counted `want` Attends; each
 * poll must answer. */
static void wait_attend_calls(attnd_client *c, uint64_t want)
{
    for (int waited = 0;; waited += 10) {
        attnd_stats st;
        attnd_error err;
        attnd_error_clear(&err);
        attnd_status s = attnd_client_get_stats(c, &st, NULL, &err);
        ck_assert_msg(s == ATTND_OK, "GetStats while Attends wait: %s: %s",
                      attnd_status_string(s), err.msg);
        if (st.attend_calls >= want)
            return;
        ck_assert_msg(waited < 60000, "the Attends never started");
        sleep_ms(10);
    }
}

START_TEST(test_health_and_stats_answer_while_every_executor_waits_for_a_stopped_rank)
{
    gt_group g;
    cu_seqs s;
    cu_step steps[3];
    attnd_call *calls[3];
    attnd_stats st0, st;
    attnd_error err;
    int serving = 0;

    ck_assert_int_eq(gt_group_start(&g, 2, flags), 0);
    cu_must_open(&s, g.c[0], 1, ATTND_DTYPE_F32);
    cu_must_prefill(&s, 0, 40, NULL); /* pages on both ranks */
    attnd_client *work = gt_connect_opts(&g.rank[0], 20000, ATTND_TRANSPORT_GRPC);
    attnd_client *ctl = gt_connect_opts(&g.rank[0], 5000, ATTND_TRANSPORT_GRPC);
    ck_assert_ptr_nonnull(work);
    ck_assert_ptr_nonnull(ctl);
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_get_stats(ctl, &st0, NULL, &err), ATTND_OK);

    ck_assert_int_eq(gt_rank_pause(&g, 1), 0);
    for (int i = 0; i < 3; i++) {
        cu_step_make(&s, &steps[i], 1, 0, 1, 1, 0, 1, ATTND_DTYPE_INVALID);
        ck_assert_int_eq(attnd_client_attend_async(work, &steps[i].a, &calls[i], &err),
                         ATTND_OK);
    }
    /* the leader counts its own part of each before it waits for rank 1:
     * from here both executors wait (an old attnd that ran calls on its
     * gRPC threads had them both blocked by now, and this poll hung) */
    wait_attend_calls(ctl, st0.attend_calls + 2);

    ck_assert_int_eq(attnd_client_health(ctl, "", &serving, &err), ATTND_OK);
    ck_assert_int_eq(serving, 1);
    attnd_client *fresh = gt_connect_opts(&g.rank[0], 5000, ATTND_TRANSPORT_GRPC);
    ck_assert_ptr_nonnull(fresh);
    ck_assert_int_eq(attnd_client_health(fresh, "", &serving, &err), ATTND_OK);
    ck_assert_int_eq(serving, 1);
    ck_assert_int_eq(attnd_client_get_stats(fresh, &st, NULL, &err), ATTND_OK);
    ck_assert_uint_eq(st.group_size, 2);
    ck_assert_uint_eq(st.sessions, 1);
    ck_assert_uint_ge(st.attend_calls, st0.attend_calls + 2);
    attnd_client_destroy(fresh);

    for (int i = 0; i < 3; i++) {
        attnd_status r = attnd_call_wait(calls[i], &err);
        if (r != ATTND_ERR_DEADLINE_EXCEEDED)
            cu_assert_fails(r, err, ATTND_ERR_UNAVAILABLE, "rank 1");
        ck_assert(cu_step_untouched(&steps[i]));
        cu_step_free(&steps[i]);
    }

    gt_rank_resume(&g, 1);
    for (int r = 0; r < 2; r++)
        ck_assert_int_eq(gt_wait_connected(&g, r, 1), 0);
    attnd_refcheck_result res = {0};
    cu_step q;
    cu_step_make(&s, &q, 1, 0, 1, 1, 1, 1, ATTND_DTYPE_INVALID);
    ck_assert_int_eq(attnd_client_attend(work, &q.a, &err), ATTND_OK);
    ck_assert_int_eq(cu_step_commit(&s, &q, &res), 0);
    cu_step_free(&q);
    ck_assert_msg(res.max_err <= cu_bound(ATTND_DTYPE_F32), "max error %g", res.max_err);
    ck_assert_uint_gt(res.rows, 0);

    attnd_client_destroy(ctl);
    attnd_client_destroy(work);
    cu_seqs_close(&s);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("group_hung");
    TCase *tc = tcase_create("hung");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_health_and_stats_answer_while_every_executor_waits_for_a_stopped_rank);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
