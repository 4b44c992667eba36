/* Client concurrency suite: a valid session keeps producing correct
 * outputs while another thread fires every bad input at the same server.
 *
 * The good thread (its own client, two sessions with reserved pages) runs
 * decode steps over all layers, every output checked, until the bad thread
 * is done. The bad thread (its own client and sessions) fires every case of
 * bad_inputs.c, round after round, each followed by a checked decode step
 * of its own sessions, plus hostile batches naming the good thread's
 * sessions. Between rounds it waits until the good thread has completed
 * another step, so the two interleave without any assumption on timing.
 * The server runs with small limits so that the oversized-message, KV
 * exhaustion and session-limit cases fire too; the good sessions' page
 * reservations keep them decoding while the pool is full.
 *
 * Threads record failures instead of asserting; the test thread asserts
 * after joining them.
 */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "bad_inputs.h"

#define ROUNDS 3
#define GOOD_PREFILL 200
#define GOOD_RESERVE 3200 /* tokens per layer the good sessions reserve */

typedef struct shared {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    attnd_session_id good_ids[2];
    int good_ready, good_stop, bad_done;
    uint64_t good_steps;
    /* results */
    char good_fail[512], bad_fail[512];
    attnd_refcheck_result good_res;
    uint64_t bad_fired;
} shared;

static const bad_limits limits = {.max_message = 128 * 1024, .max_sessions = 8, .small_pool = 1};

static void record(shared *sh, char *dst, const char *what, const attnd_error *err)
{
    pthread_mutex_lock(&sh->mu);
    if (!dst[0])
        snprintf(dst, 512, "%s: %s: %s", what, attnd_status_string(err->code), err->msg);
    pthread_mutex_unlock(&sh->mu);
}

static void *good_thread(void *arg)
{
    shared *sh = arg;
    static const uint32_t chunks[] = {64, 0};
    attnd_client *c = NULL;
    cu_seqs s;
    attnd_error err;
    int done = 0;

    memset(&s, 0, sizeof s);
    attnd_error_clear(&err);
    if (cu_connect(&c, &err)) {
        record(sh, sh->good_fail, "connect", &err);
        goto out;
    }
    if (cu_seqs_open_reserved(&s, c, 2, ATTND_DTYPE_BF16, 0, GOOD_RESERVE, &err) ||
        cu_prefill(&s, 0, GOOD_PREFILL, chunks, &err) ||
        cu_prefill(&s, 1, GOOD_PREFILL + 33, chunks, &err)) {
        record(sh, sh->good_fail, "setup", &err);
        goto out;
    }
    pthread_mutex_lock(&sh->mu);
    memcpy(sh->good_ids, s.ids, sizeof sh->good_ids);
    sh->good_ready = 1;
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);

    /* until the bad thread is done, then one step more */
    for (uint64_t step = 0; done < 2; step++) {
        attnd_status st;
        if (step < GOOD_RESERVE - GOOD_PREFILL - 100) {
            st = cu_decode_step(&s, &sh->good_res, &err);
        } else { /* past the reservation: read the cache as it is */
            st = ATTND_OK;
            for (uint32_t l = 0; st == ATTND_OK && l < s.m.n_layers; l++) {
                cu_step q;
                cu_step_make(&s, &q, l, 0, 2, 1, 0, 1, ATTND_DTYPE_INVALID);
                st = attnd_client_attend(c, &q.a, &err);
                if (st == ATTND_OK)
                    cu_step_commit(&s, &q, &sh->good_res);
                cu_step_free(&q);
            }
        }
        if (st) {
            record(sh, sh->good_fail, "decode", &err);
            break;
        }
        pthread_mutex_lock(&sh->mu);
        sh->good_steps++;
        if (sh->bad_done)
            done++;
        pthread_cond_broadcast(&sh->cv);
        pthread_mutex_unlock(&sh->mu);
    }
out:
    pthread_mutex_lock(&sh->mu);
    sh->good_stop = 1;
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
    cu_seqs_close(&s);
    attnd_client_destroy(c);
    return NULL;
}

/* Batches over the good thread's sessions that must fail without touching
 * them: positions that cannot match, the same session twice, a bad q. */
static int fire_hostile(shared *sh, cu_seqs *s, char *why, size_t n)
{
    attnd_session_id ids[2];
    attnd_error err;
    cu_step st;
    struct {
        attnd_status want;
        const char *field;
    } expect[3] = {{ATTND_ERR_FAILED_PRECONDITION, "positions[0]"},
                   {ATTND_ERR_INVALID_ARGUMENT, "session_ids[1]"},
                   {ATTND_ERR_INVALID_ARGUMENT, "q.shape[2]"}};

    for (int k = 0; k < 3; k++) {
        pthread_mutex_lock(&sh->mu);
        memcpy(ids, sh->good_ids, sizeof ids);
        pthread_mutex_unlock(&sh->mu);
        cu_step_make(s, &st, (uint32_t)k % s->m.n_layers, 0, 2, 1, 1, 1, ATTND_DTYPE_INVALID);
        st.a.sessions = ids;
        st.pos[0] = st.pos[1] = UINT64_MAX;
        if (k == 1)
            ids[1] = ids[0];
        if (k == 2)
            st.a.q.shape[2] -= 1; /* fewer bytes than the buffer holds */
        attnd_error_clear(&err);
        attnd_status rc = attnd_client_attend(s->c, &st.a, &err);
        int untouched = cu_step_untouched(&st);
        cu_step_free(&st);
        if (rc != expect[k].want || !strstr(err.msg, expect[k].field) || !untouched) {
            snprintf(why, n, "hostile batch %d: expected %s naming %s, got %s: %s", k,
                     attnd_status_string(expect[k].want), expect[k].field,
                     attnd_status_string(rc), err.msg);
            return -1;
        }
    }
    return 0;
}

static void *bad_thread(void *arg)
{
    shared *sh = arg;
    static const uint32_t chunks[] = {50, 0};
    attnd_client *c = NULL;
    cu_seqs s;
    attnd_error err;
    char why[512];

    memset(&s, 0, sizeof s);
    pthread_mutex_lock(&sh->mu);
    while (!sh->good_stop && !(sh->good_ready && sh->good_steps >= 1))
        pthread_cond_wait(&sh->cv, &sh->mu);
    pthread_mutex_unlock(&sh->mu);
    attnd_error_clear(&err);
    if (cu_connect(&c, &err) || cu_seqs_open(&s, c, 2, ATTND_DTYPE_BF16, 0, &err) ||
        cu_prefill(&s, 0, 70, chunks, &err) || cu_prefill(&s, 1, 131, chunks, &err)) {
        record(sh, sh->bad_fail, "setup", &err);
        goto out;
    }
    for (int r = 0; r < ROUNDS; r++) {
        for (size_t k = 0; k < n_bad_cases; k++) {
            attnd_refcheck_result res = {0};
            why[0] = '\0';
            if (bad_case_run(&bad_cases[k], &s, &limits, why, sizeof why)) {
                pthread_mutex_lock(&sh->mu);
                if (!sh->bad_fail[0])
                    snprintf(sh->bad_fail, sizeof sh->bad_fail, "round %d: %.400s", r, why);
                pthread_mutex_unlock(&sh->mu);
            }
            sh->bad_fired++;
            if (cu_decode_step(&s, &res, &err)) {
                record(sh, sh->bad_fail, bad_cases[k].name, &err);
                goto out;
            }
            if (res.max_err > cu_bound(s.dt)) {
                attnd_error_set(&err, ATTND_ERR_DATA_LOSS, "own sessions: max error %g",
                                res.max_err);
                record(sh, sh->bad_fail, bad_cases[k].name, &err);
            }
        }
        why[0] = '\0';
        if (fire_hostile(sh, &s, why, sizeof why)) {
            attnd_error_set(&err, ATTND_ERR_UNKNOWN, "%s", why);
            record(sh, sh->bad_fail, "hostile", &err);
        }
        /* let the good thread complete another step before the next round */
        pthread_mutex_lock(&sh->mu);
        uint64_t seen = sh->good_steps;
        while (!sh->good_stop && sh->good_steps == seen)
            pthread_cond_wait(&sh->cv, &sh->mu);
        pthread_mutex_unlock(&sh->mu);
    }
out:
    cu_seqs_close(&s);
    attnd_client_destroy(c);
    pthread_mutex_lock(&sh->mu);
    sh->bad_done = 1;
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
    return NULL;
}

START_TEST(test_a_valid_session_stays_correct_while_another_thread_sends_every_bad_input)
{
    shared sh;
    pthread_t good, bad;

    memset(&sh, 0, sizeof sh);
    pthread_mutex_init(&sh.mu, NULL);
    pthread_cond_init(&sh.cv, NULL);
    cu_must_start("--model", "tiny-mla", "--threads", "2", "--max-message", "128Ki",
                  "--max-sessions", "8", "--kv-memory", "16Mi");
    ck_assert_int_eq(pthread_create(&good, NULL, good_thread, &sh), 0);
    ck_assert_int_eq(pthread_create(&bad, NULL, bad_thread, &sh), 0);
    pthread_join(bad, NULL);
    pthread_join(good, NULL);

    ck_assert_msg(!sh.good_fail[0], "good thread: %s", sh.good_fail);
    ck_assert_msg(!sh.bad_fail[0], "bad thread: %s", sh.bad_fail);
    ck_assert_uint_eq(sh.bad_fired, ROUNDS * n_bad_cases);
    ck_assert_uint_ge(sh.good_steps, ROUNDS + 2);
    ck_assert_uint_eq(sh.good_res.rows, sh.good_steps * 4 * 2 * 8); /* layers x seqs x heads */
    ck_assert_msg(sh.good_res.max_err <= cu_bound(ATTND_DTYPE_BF16), "good max error %g",
                  sh.good_res.max_err);
    ck_assert_msg(sh.good_res.max_lse_err <= CU_LSE_BOUND, "good max LSE error %g",
                  sh.good_res.max_lse_err);
    fprintf(stderr, "good thread: %llu steps, %llu rows, max error %.3g; bad thread: %llu "
                    "cases fired\n",
            (unsigned long long)sh.good_steps, (unsigned long long)sh.good_res.rows,
            sh.good_res.max_err, (unsigned long long)sh.bad_fired);
    pthread_cond_destroy(&sh.cv);
    pthread_mutex_destroy(&sh.mu);
}
END_TEST

static Suite *concurrent_suite(void)
{
    Suite *su = suite_create("client_concurrent");
    TCase *tc = tcase_create("concurrent");
    tcase_add_checked_fixture(tc, NULL, cu_teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_a_valid_session_stays_correct_while_another_thread_sends_every_bad_input);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(concurrent_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
