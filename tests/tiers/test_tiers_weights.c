/* The narrow MLA wire's matrices in a durable worker's --kv-dir
 * (worker/weights_store.c), through a real attnd (tiny-mla) killed with
 * SIGKILL: W_UK and W_UV loaded before the crash serve heads-form Attends
 * after the restart without a new LoadWeights, every row checked against
 * the float64 narrow reference over the recovered KV; a kept matrix whose
 * bytes were changed while the worker was down is not loaded (a warning),
 * so that layer's heads-form Attend is FAILED_PRECONDITION naming q_form,
 * never numbers from a corrupted matrix, while the intact layer serves. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_narrow.h"
#include "tiers_testutil.h"

enum { DN = 24, DVO = 20, B = 3 };

static char dir[64];

static void teardown(void)
{
    cu_teardown();
    tt_rmdir(dir);
    dir[0] = '\0';
}

static void start_mla(void)
{
    cu_must_start("--model", "tiny-mla", "--page-size", "16", "--kv-memory", "1Mi", "--kv-dir",
                  dir, "--durable", "--threads", "2");
}

/* One heads-form step at layer over every session, checked. */
static void step(cu_seqs *s, const cu_wset *w, uint32_t layer, attnd_refcheck_result *res)
{
    cu_hstep h;
    attnd_error err;
    cu_hstep_make(s, &h, w, layer, s->n, 1);
    ck_assert_msg(attnd_client_attend(s->c, &h.a, &err) == ATTND_OK, "layer %u: %s", layer,
                  err.msg);
    cu_hstep_check(s, &h, w, res);
    cu_hstep_free(&h);
}

/* Sessions of different lengths, W_UK/W_UV on layers 1 (float32) and 3
 * (bf16), one checked step on each; then a crash. */
static void load_and_crash(cu_seqs *s, cu_wset w[2], attnd_refcheck_result *res)
{
    attnd_error err;
    tt_must_mkdir(dir);
    start_mla();
    cu_must_open(s, cu_must_connect(), B, ATTND_DTYPE_F32);
    for (uint32_t i = 0; i < B; i++)
        cu_must_prefill(s, i, 5 + 41 * i, (const uint32_t[]){13, 40, 0});
    cu_wset_make(s, &w[0], DN, DVO, ATTND_DTYPE_F32);
    cu_wset_make(s, &w[1], DN, DVO, ATTND_DTYPE_BF16);
    ck_assert_int_eq(cu_wset_load(s, &w[0], 1, NULL, &err), ATTND_OK);
    ck_assert_int_eq(cu_wset_load(s, &w[1], 3, NULL, &err), ATTND_OK);
    step(s, &w[0], 1, res);
    step(s, &w[1], 3, res);
    tt_kill9();
}

static void finish(cu_seqs *s, cu_wset w[2])
{
    cu_wset_free(&w[0]);
    cu_wset_free(&w[1]);
    tt_seqs_done(s);
}

START_TEST(test_matrices_loaded_before_a_crash_serve_after_the_restart)
{
    cu_seqs s;
    cu_wset w[2];
    attnd_refcheck_result res = {0};
    load_and_crash(&s, w, &res);
    start_mla();
    tt_must_reconnect(&s);
    for (int k = 0; k < 2; k++) { /* no LoadWeights since the restart */
        step(&s, &w[0], 1, &res);
        step(&s, &w[1], 3, &res);
    }
    fprintf(stderr, "heads form across kill -9: %llu rows, max rel err %.3g, lse %.3g\n",
            (unsigned long long)res.rows, res.max_err, res.max_lse_err);
    ck_assert_msg(res.max_err <= cu_bound(ATTND_DTYPE_F32), "rel err %g", res.max_err);
    ck_assert_msg(res.max_lse_err <= CU_LSE_BOUND, "lse err %g", res.max_lse_err);
    finish(&s, w);
}
END_TEST

START_TEST(test_a_matrix_changed_on_disk_is_not_served)
{
    cu_seqs s;
    cu_wset w[2];
    attnd_refcheck_result res = {0};
    attnd_error err;
    char path[128];
    load_and_crash(&s, w, &res);
    /* one byte of layer 3's W_UK tensor (past its header) flipped */
    snprintf(path, sizeof path, "%s/weights/layer-00003-uk.bin", dir);
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, 72 + 100, SEEK_SET), 0);
    int b = fgetc(f);
    ck_assert_int_ne(b, EOF);
    ck_assert_int_eq(fseek(f, 72 + 100, SEEK_SET), 0);
    ck_assert_int_ne(fputc(b ^ 0x40, f), EOF);
    ck_assert_int_eq(fclose(f), 0);

    start_mla();
    tt_must_reconnect(&s);
    cu_hstep h;
    cu_hstep_make(&s, &h, &w[1], 3, s.n, 1);
    ck_assert_int_eq(attnd_client_attend(s.c, &h.a, &err), ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_msg(strstr(err.msg, "q_form"), "%s", err.msg);
    cu_hstep_free(&h);
    step(&s, &w[0], 1, &res); /* the intact layer serves, exactly */
    ck_assert_msg(res.max_err <= cu_bound(ATTND_DTYPE_F32), "rel err %g", res.max_err);
    finish(&s, w);
}
END_TEST

static Suite *weights_suite(void)
{
    Suite *su = suite_create("tiers_weights");
    TCase *tc = tcase_create("weights");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_matrices_loaded_before_a_crash_serve_after_the_restart);
    tcase_add_test(tc, test_a_matrix_changed_on_disk_is_not_served);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(weights_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
