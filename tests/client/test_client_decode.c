/* Client integration suite: real attnd servers, libattnd, every output
 * checked against the float64 reference.
 *
 * Each test runs for four configurations (a Check loop test): tiny-mla and
 * tiny-gqa, with KV stored as f32 (--kv-dtype f32, everything sent in f32,
 * bound 1e-5) and as bf16 (the models' default, everything sent in bf16,
 * bound 1e-2). Prefills are 1000+ tokens, not a multiple of the page size
 * (64), sent over AppendKV in chunks of uneven sizes; decode runs 20 steps
 * over all layers with new KV and positions in every Attend. The unary,
 * async and AttendStream paths are checked the same way, and a two-token
 * query against the causal rule of kernels/include/attnd_kernels.h.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "client_testutil.h"

typedef struct config {
    const char *model;
    const char *kv_dtype; /* --kv-dtype */
    attnd_dtype dt;       /* what the test sends */
} config;

static const config configs[] = {
    {"tiny-mla", "f32", ATTND_DTYPE_F32},
    {"tiny-mla", "bf16", ATTND_DTYPE_BF16},
    {"tiny-gqa", "f32", ATTND_DTYPE_F32},
    {"tiny-gqa", "bf16", ATTND_DTYPE_BF16},
};
#define N_CONFIGS ((int)(sizeof configs / sizeof configs[0]))

#define N_SEQS 3
#define STEPS 20
static const uint32_t chunk_sizes[] = {100, 37, 256, 1, 64, 0};

/* Start the config's server, connect, open N_SEQS sessions and prefill
 * 1000 + 17 i tokens into session i. */
static attnd_client *setup_config(int i, cu_seqs *s)
{
    const config *cf = &configs[i];
    fprintf(stderr, "[config] %s, KV stored as %s\n", cf->model, cf->kv_dtype);
    cu_must_start("--model", cf->model, "--kv-dtype", cf->kv_dtype);
    attnd_client *c = cu_must_connect();
    cu_must_open(s, c, N_SEQS, cf->dt);
    ck_assert_str_eq(s->m.name, cf->model);
    ck_assert_int_eq(s->m.kv_dtype, cf->dt);
    for (uint32_t k = 0; k < N_SEQS; k++)
        cu_must_prefill(s, k, 1000 + 17 * k, chunk_sizes);
    return c;
}

static void finish(attnd_client *c, cu_seqs *s)
{
    cu_seqs_close(s);
    attnd_client_destroy(c);
}

static void assert_within(const cu_seqs *s, const attnd_refcheck_result *res, uint64_t rows,
                          int lse)
{
    ck_assert_uint_eq(res->rows, rows);
    ck_assert_msg(res->max_err <= cu_bound(s->dt), "max error %g beyond %g", res->max_err,
                  cu_bound(s->dt));
    if (lse)
        ck_assert_msg(res->max_lse_err <= CU_LSE_BOUND, "max LSE error %g", res->max_lse_err);
    fprintf(stderr, "  %llu rows, max error %.3g, max LSE error %.3g\n",
            (unsigned long long)res->rows, res->max_err, res->max_lse_err);
}

START_TEST(test_prefill_then_unary_decode_matches_the_reference)
{
    cu_seqs s;
    attnd_client *c = setup_config(_i, &s);
    attnd_refcheck_result res = {0};

    for (int k = 0; k < STEPS; k++)
        for (uint32_t l = 0; l < s.m.n_layers; l++) {
            cu_step st;
            attnd_error err;
            int lse = (k + (int)l) % 2; /* LSE asked for on half the calls */
            attnd_error_clear(&err);
            cu_step_make(&s, &st, l, 0, N_SEQS, 1, 1, lse, ATTND_DTYPE_INVALID);
            attnd_status rc = attnd_client_attend(c, &st.a, &err);
            ck_assert_msg(rc == ATTND_OK, "step %d layer %u: %s", k, l, err.msg);
            ck_assert(!cu_step_untouched(&st));
            ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
            cu_step_free(&st);
        }
    assert_within(&s, &res, (uint64_t)STEPS * s.m.n_layers * N_SEQS * s.m.n_q_heads, 1);
    for (uint32_t k = 0; k < N_SEQS; k++)
        for (uint32_t l = 0; l < s.m.n_layers; l++)
            ck_assert_uint_eq(attnd_refcheck_len(&s.rc, k, l), 1000 + 17 * k + STEPS);
    finish(c, &s);
}
END_TEST

/* Every layer of a step in flight at once, waited on in reverse order. */
START_TEST(test_async_attend_of_all_layers_at_once_matches_the_reference)
{
    cu_seqs s;
    attnd_client *c = setup_config(_i, &s);
    attnd_refcheck_result res = {0};
    cu_step st[8];
    attnd_call *calls[8];

    ck_assert_uint_le(s.m.n_layers, 8);
    for (int k = 0; k < STEPS; k++) {
        for (uint32_t l = 0; l < s.m.n_layers; l++) {
            attnd_error err;
            attnd_error_clear(&err);
            cu_step_make(&s, &st[l], l, 0, N_SEQS, 1, 1, 1, ATTND_DTYPE_INVALID);
            attnd_status rc = attnd_client_attend_async(c, &st[l].a, &calls[l], &err);
            ck_assert_msg(rc == ATTND_OK, "step %d layer %u: %s", k, l, err.msg);
        }
        for (uint32_t l = s.m.n_layers; l-- > 0;) {
            attnd_error err;
            attnd_error_clear(&err);
            attnd_status rc = attnd_call_wait(calls[l], &err);
            ck_assert_msg(rc == ATTND_OK, "step %d layer %u: %s", k, l, err.msg);
        }
        for (uint32_t l = 0; l < s.m.n_layers; l++) {
            ck_assert_int_eq(cu_step_commit(&s, &st[l], &res), 0);
            cu_step_free(&st[l]);
        }
    }
    assert_within(&s, &res, (uint64_t)STEPS * s.m.n_layers * N_SEQS * s.m.n_q_heads, 1);
    finish(c, &s);
}
END_TEST

/* The async form copies the request before returning: q and new_kv may be
 * reused at once. The test overwrites them with garbage after starting
 * each call and checks against what was sent. */
START_TEST(test_async_attend_lets_the_caller_reuse_its_inputs_at_once)
{
    cu_seqs s;
    attnd_client *c = setup_config(_i, &s);
    attnd_refcheck_result res = {0};

    for (int k = 0; k < 4; k++)
        for (uint32_t l = 0; l < s.m.n_layers; l++) {
            cu_step st;
            attnd_call *call;
            attnd_error err;
            attnd_error_clear(&err);
            cu_step_make(&s, &st, l, 0, N_SEQS, 1, 1, 0, ATTND_DTYPE_INVALID);
            void *q_sent = malloc(st.q_bytes), *kv_sent = malloc(st.kv_bytes);
            memcpy(q_sent, st.q, st.q_bytes);
            memcpy(kv_sent, st.kv, st.kv_bytes);
            ck_assert_int_eq(attnd_client_attend_async(c, &st.a, &call, &err), ATTND_OK);
            memset(st.q, 0x7f, st.q_bytes);
            memset(st.kv, 0x7f, st.kv_bytes);
            ck_assert_msg(attnd_call_wait(call, &err) == ATTND_OK, "%s", err.msg);
            memcpy(st.q, q_sent, st.q_bytes);
            memcpy(st.kv, kv_sent, st.kv_bytes);
            ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
            free(q_sent);
            free(kv_sent);
            cu_step_free(&st);
        }
    assert_within(&s, &res, 4ull * s.m.n_layers * N_SEQS * s.m.n_q_heads, 0);
    finish(c, &s);
}
END_TEST

START_TEST(test_attend_stream_decode_matches_the_reference)
{
    cu_seqs s;
    attnd_client *c = setup_config(_i, &s);
    attnd_refcheck_result res = {0};
    attnd_stream *stream;
    attnd_error err;

    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_stream_open(c, &stream, &err), ATTND_OK);
    for (int k = 0; k < STEPS; k++)
        for (uint32_t l = 0; l < s.m.n_layers; l++) {
            cu_step st;
            /* alternate batches: all sessions, then the last two only */
            uint32_t first = k % 2 ? 1 : 0, n = N_SEQS - first;
            cu_step_make(&s, &st, l, first, n, 1, 1, (int)(l % 2), ATTND_DTYPE_INVALID);
            attnd_status rc = attnd_stream_attend(stream, &st.a, &err);
            ck_assert_msg(rc == ATTND_OK, "step %d layer %u: %s", k, l, err.msg);
            ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
            cu_step_free(&st);
        }
    ck_assert_msg(attnd_stream_close(stream, &err) == ATTND_OK, "%s", err.msg);
    uint64_t rows = 0;
    for (int k = 0; k < STEPS; k++)
        rows += (uint64_t)s.m.n_layers * (k % 2 ? N_SEQS - 1 : N_SEQS) * s.m.n_q_heads;
    assert_within(&s, &res, rows, 1);
    finish(c, &s);
}
END_TEST

/* S = 2: each session appends two entries; query token s sees the first
 * L - (S - 1 - s) tokens of the layer (L counted after the append). */
START_TEST(test_two_token_queries_follow_the_causal_rule)
{
    cu_seqs s;
    attnd_client *c = setup_config(_i, &s);
    attnd_refcheck_result res = {0};
    attnd_error err;

    for (int k = 0; k < 5; k++)
        for (uint32_t l = 0; l < s.m.n_layers; l++) {
            cu_step st;
            attnd_error_clear(&err);
            cu_step_make(&s, &st, l, 0, N_SEQS, 2, 1, 1, ATTND_DTYPE_INVALID);
            attnd_status rc = attnd_client_attend(c, &st.a, &err);
            ck_assert_msg(rc == ATTND_OK, "step %d layer %u: %s", k, l, err.msg);
            ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
            cu_step_free(&st);
        }
    assert_within(&s, &res, 5ull * s.m.n_layers * N_SEQS * 2 * s.m.n_q_heads, 1);
    /* and the two-token steps left the sessions where a one-token step
     * continues */
    ck_assert_int_eq(cu_decode_step(&s, &res, &err), ATTND_OK);
    ck_assert_uint_eq(attnd_refcheck_len(&s.rc, 0, 0), 1000 + 10 + 1);
    ck_assert_msg(res.max_err <= cu_bound(s.dt), "max error %g", res.max_err);
    finish(c, &s);
}
END_TEST

/* Without new_kv the query reads the cache as it is, and nothing is
 * appended; S = 2 without new_kv follows the same causal rule. */
START_TEST(test_attend_without_new_kv_reads_the_cache_unchanged)
{
    cu_seqs s;
    attnd_client *c = setup_config(_i, &s);
    attnd_refcheck_result res = {0};
    attnd_error err;

    for (uint32_t S = 1; S <= 2; S++)
        for (uint32_t l = 0; l < s.m.n_layers; l++) {
            cu_step st;
            attnd_error_clear(&err);
            cu_step_make(&s, &st, l, 0, N_SEQS, S, 0, 1, ATTND_DTYPE_INVALID);
            ck_assert_msg(attnd_client_attend(c, &st.a, &err) == ATTND_OK, "%s", err.msg);
            ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
            cu_step_free(&st);
        }
    assert_within(&s, &res, 3ull * s.m.n_layers * N_SEQS * s.m.n_q_heads, 1);
    /* positions prove the server's lengths did not move */
    ck_assert_int_eq(cu_decode_step(&s, &res, &err), ATTND_OK);
    finish(c, &s);
}
END_TEST

/* out_dtype f32 with queries in the config's dtype: the output is the
 * float32 result, so the f32 bound holds whatever the inputs' dtype. */
START_TEST(test_out_dtype_f32_returns_float32_outputs)
{
    cu_seqs s;
    attnd_client *c = setup_config(_i, &s);
    attnd_refcheck_result res = {0};
    attnd_error err;

    for (uint32_t l = 0; l < s.m.n_layers; l++) {
        cu_step st;
        attnd_error_clear(&err);
        cu_step_make(&s, &st, l, 0, N_SEQS, 1, 1, 1, ATTND_DTYPE_F32);
        ck_assert_msg(attnd_client_attend(c, &st.a, &err) == ATTND_OK, "%s", err.msg);
        ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
        cu_step_free(&st);
    }
    ck_assert_msg(res.max_err <= 1e-5, "max error %g", res.max_err);
    ck_assert_uint_eq(res.rows, (uint64_t)s.m.n_layers * N_SEQS * s.m.n_q_heads);
    finish(c, &s);
}
END_TEST

static Suite *decode_suite(void)
{
    Suite *su = suite_create("client_decode");
    TCase *tc = tcase_create("decode");
    tcase_add_checked_fixture(tc, NULL, cu_teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_prefill_then_unary_decode_matches_the_reference, 0, N_CONFIGS);
    tcase_add_loop_test(tc, test_async_attend_of_all_layers_at_once_matches_the_reference, 0,
                        N_CONFIGS);
    tcase_add_loop_test(tc, test_async_attend_lets_the_caller_reuse_its_inputs_at_once, 0,
                        N_CONFIGS);
    tcase_add_loop_test(tc, test_attend_stream_decode_matches_the_reference, 0, N_CONFIGS);
    tcase_add_loop_test(tc, test_two_token_queries_follow_the_causal_rule, 0, N_CONFIGS);
    tcase_add_loop_test(tc, test_attend_without_new_kv_reads_the_cache_unchanged, 0,
                        N_CONFIGS);
    tcase_add_loop_test(tc, test_out_dtype_f32_returns_float32_outputs, 0, N_CONFIGS);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(decode_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
