/* Worker groups under concurrency and failure: several clients leading
 * through different ranks at once (every output checked against the
 * float64 reference), and a rank killed while Attend calls are in flight
 * (each call either succeeds with a checked output or fails UNAVAILABLE;
 * none hangs into the client's deadline, no leader dies). */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <string.h>

#include "group_testutil.h"

#define THREADS 4

typedef struct worker {
    gt_group *g;
    int index;
    int steps;
    int kill_mode;        /* 1: loop until a call fails (a rank gets killed) */
    attnd_status final;   /* the first failure, else OK */
    char msg[ATTND_ERROR_MSG_MAX];
    double max_err;
    int calls_ok;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    attnd_client *c = gt_connect(&w->g->rank[w->index % w->g->n]);
    attnd_refcheck_result res = {0};
    attnd_error err;
    cu_seqs s;

    w->final = ATTND_ERR_INTERNAL;
    snprintf(w->msg, sizeof w->msg, "no client");
    if (!c)
        return NULL;
    attnd_error_clear(&err);
    w->final = cu_seqs_open(&s, c, 2, ATTND_DTYPE_F32, 1000 + (uint64_t)w->index, &err);
    if (w->final == ATTND_OK)
        w->final = cu_prefill(&s, 0, 40, (const uint32_t[]){17, 0}, &err);
    if (w->final == ATTND_OK)
        w->final = cu_prefill(&s, 1, 23, NULL, &err);
    for (int k = 0; w->final == ATTND_OK && (w->kill_mode || k < w->steps); k++) {
        w->final = cu_decode_step(&s, &res, &err);
        if (w->final == ATTND_OK)
            w->calls_ok++;
        if (w->kill_mode && k > 2000)
            break; /* the kill never came: the test fails on status */
    }
    w->max_err = res.max_err;
    snprintf(w->msg, sizeof w->msg, "%s", err.msg);
    cu_seqs_close(&s);
    attnd_client_destroy(c);
    return NULL;
}

START_TEST(test_concurrent_leaders_on_every_rank_give_exact_outputs)
{
    const char *flags[] = {"--model", "tiny-mla", "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "3", "--kernel-threads", "1", NULL};
    gt_group g;
    worker w[THREADS];
    pthread_t tid[THREADS];
    ck_assert_int_eq(gt_group_start(&g, 3, flags), 0);
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.g = &g, .index = i, .steps = 25};
        ck_assert_int_eq(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(tid[i], NULL);
        fprintf(stderr, "  client %d: %d decode steps, max rel err %.3g\n", i, w[i].calls_ok,
                w[i].max_err);
        ck_assert_msg(w[i].final == ATTND_OK, "client %d: %s", i, w[i].msg);
        ck_assert_int_eq(w[i].calls_ok, 25);
        ck_assert_msg(w[i].max_err <= cu_bound(ATTND_DTYPE_F32), "client %d: error %g", i,
                      w[i].max_err);
    }
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

START_TEST(test_a_rank_killed_under_load_fails_calls_unavailable_without_hangs)
{
    const char *flags[] = {"--model", "tiny-gqa", "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "3", "--kernel-threads", "1", "--group-timeout-ms",
                           "3000", NULL};
    gt_group g;
    worker w[2];
    pthread_t tid[2];
    attnd_error err;
    int serving = 0;
    ck_assert_int_eq(gt_group_start(&g, 3, flags), 0);
    for (int i = 0; i < 2; i++) { /* clients on ranks 0 and 1 */
        w[i] = (worker){.g = &g, .index = i, .kill_mode = 1};
        ck_assert_int_eq(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
    }
    /* let them get going, then kill rank 2 in the middle of their calls */
    for (int waited = 0; waited < 30000 && (w[0].calls_ok < 3 || w[1].calls_ok < 3);
         waited += 10)
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    gt_rank_kill(&g, 2);
    for (int i = 0; i < 2; i++) {
        pthread_join(tid[i], NULL);
        fprintf(stderr, "  client %d: %d decode steps, then %s: %s\n", i, w[i].calls_ok,
                attnd_status_string(w[i].final), w[i].msg);
        ck_assert_msg(w[i].final == ATTND_ERR_UNAVAILABLE, "client %d ended with %s: %s", i,
                      attnd_status_string(w[i].final), w[i].msg);
        ck_assert_ptr_nonnull(strstr(w[i].msg, "rank 2"));
        ck_assert_msg(w[i].max_err <= cu_bound(ATTND_DTYPE_F32), "client %d: error %g", i,
                      w[i].max_err);
    }
    for (int r = 0; r < 2; r++) {
        ck_assert_int_eq(attnd_client_health(g.c[r], "", &serving, &err), 0);
        ck_assert_int_eq(serving, 1);
    }
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("group_stress");
    TCase *tc = tcase_create("stress");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_concurrent_leaders_on_every_rank_give_exact_outputs);
    tcase_add_test(tc, test_a_rank_killed_under_load_fails_calls_unavailable_without_hangs);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
