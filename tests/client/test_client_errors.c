/* Client error suite: every bad input a client can send gets its exact
 * status, a message that names the field, untouched result buffers, and no
 * side effect (the sessions it touched decode on, checked against the
 * reference, at the positions they had before).
 *
 * TCase bad_input runs each case of bad_inputs.c in a test of its own on a
 * fresh tiny-mla server with two prefilled sessions. TCase limits starts
 * servers with small --max-message, --kv-memory and --max-sessions.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bad_inputs.h"

static attnd_client *g_c;
static cu_seqs g_s;
static const bad_limits no_limits = {0, 0, 0};
static const uint32_t chunks_50[] = {50, 0};

/* Both sessions decode one more step over all layers, every output within
 * the bound: the failed call changed nothing they hold. */
static void assert_intact(cu_seqs *s)
{
    attnd_refcheck_result res = {0};
    attnd_error err;
    attnd_error_clear(&err);
    attnd_status st = cu_decode_step(s, &res, &err);
    ck_assert_msg(st == ATTND_OK, "the sessions no longer decode: %s: %s",
                  attnd_status_string(st), err.msg);
    ck_assert_msg(res.max_err <= cu_bound(s->dt), "max error %g", res.max_err);
    ck_assert_msg(res.max_lse_err <= CU_LSE_BOUND, "max LSE error %g", res.max_lse_err);
    ck_assert_uint_eq(res.rows, (uint64_t)s->m.n_layers * s->n * s->m.n_q_heads);
}

static void setup_sessions(cu_seqs *s, attnd_client **c)
{
    *c = cu_must_connect();
    cu_must_open(s, *c, 2, ATTND_DTYPE_BF16);
    cu_must_prefill(s, 0, 70, chunks_50);
    cu_must_prefill(s, 1, 131, chunks_50);
}

static void bad_input_setup(void)
{
    cu_must_start("--model", "tiny-mla");
    setup_sessions(&g_s, &g_c);
}

static void bad_input_teardown(void)
{
    cu_seqs_close(&g_s);
    attnd_client_destroy(g_c);
    g_c = NULL;
    cu_teardown();
}

static void run_case(const char *name, const bad_limits *lim)
{
    const bad_case *bc = bad_case_find(name);
    char why[512] = "";
    ck_assert_msg(bc != NULL, "no case %s", name);
    ck_assert_msg(bad_case_run(bc, &g_s, lim, why, sizeof why) == 0, "%s", why);
    assert_intact(&g_s);
}

#define BAD_INPUT_TEST(test, case_name) \
    START_TEST(test)                    \
    {                                   \
        run_case(case_name, &no_limits);\
    }                                   \
    END_TEST

BAD_INPUT_TEST(test_q_with_an_unknown_dtype_value_is_invalid_argument, "q_dtype")
BAD_INPUT_TEST(test_q_with_two_dims_is_invalid_argument, "q_dims")
BAD_INPUT_TEST(test_q_with_the_wrong_head_count_is_invalid_argument, "q_heads")
BAD_INPUT_TEST(test_q_with_the_wrong_head_width_is_invalid_argument, "q_width")
BAD_INPUT_TEST(test_q_for_fewer_sequences_than_sessions_is_invalid_argument, "q_batch")
BAD_INPUT_TEST(test_q_whose_byte_length_disagrees_with_its_shape_is_invalid_argument, "q_bytes")
BAD_INPUT_TEST(test_new_kv_with_the_wrong_entry_width_is_invalid_argument, "new_kv_width")
BAD_INPUT_TEST(test_new_kv_with_extra_dims_is_invalid_argument, "new_kv_dims")
BAD_INPUT_TEST(test_new_kv_with_an_unknown_dtype_value_is_invalid_argument, "new_kv_dtype")
BAD_INPUT_TEST(test_attend_on_an_unknown_session_is_not_found, "unknown_session")
BAD_INPUT_TEST(test_attend_on_a_closed_session_is_not_found, "closed_session")
BAD_INPUT_TEST(test_session_id_of_the_wrong_length_is_invalid_argument, "short_session_id")
BAD_INPUT_TEST(test_a_session_twice_in_one_batch_is_invalid_argument, "duplicate_session")
BAD_INPUT_TEST(test_an_empty_batch_is_invalid_argument, "empty_batch")
BAD_INPUT_TEST(test_attend_on_a_layer_past_the_model_is_out_of_range, "layer_past_the_model")
BAD_INPUT_TEST(test_attend_position_behind_the_layer_is_failed_precondition, "position_behind")
BAD_INPUT_TEST(test_attend_position_ahead_of_the_layer_is_failed_precondition, "position_ahead")
BAD_INPUT_TEST(test_positions_without_new_kv_are_invalid_argument, "positions_without_new_kv")
BAD_INPUT_TEST(test_out_capacity_too_small_is_refused_before_sending, "out_capacity_too_small")
BAD_INPUT_TEST(test_lse_capacity_too_small_is_refused_before_sending, "lse_capacity_too_small")
BAD_INPUT_TEST(test_a_null_out_buffer_is_invalid_argument, "out_null")
BAD_INPUT_TEST(test_append_kv_behind_the_layer_is_failed_precondition, "append_start_behind")
BAD_INPUT_TEST(test_append_kv_ahead_of_the_layer_is_failed_precondition, "append_start_ahead")
BAD_INPUT_TEST(test_append_kv_to_a_layer_past_the_model_is_out_of_range,
               "append_layer_past_the_model")
BAD_INPUT_TEST(test_append_kv_to_an_unknown_session_is_not_found, "append_unknown_session")
BAD_INPUT_TEST(test_append_kv_with_the_wrong_entry_width_is_invalid_argument,
               "append_entry_width")
BAD_INPUT_TEST(test_append_kv_with_an_invalid_dtype_is_invalid_argument, "append_dtype")
BAD_INPUT_TEST(test_close_of_an_unknown_session_is_not_found, "close_unknown_session")
BAD_INPUT_TEST(test_close_with_an_id_of_the_wrong_length_is_invalid_argument,
               "close_short_session_id")
BAD_INPUT_TEST(test_create_session_for_another_model_is_failed_precondition,
               "create_for_another_model")
BAD_INPUT_TEST(test_create_session_for_an_unknown_model_is_invalid_argument,
               "create_for_an_unknown_model")
BAD_INPUT_TEST(test_a_reservation_beyond_the_pool_is_resource_exhausted,
               "reservation_beyond_the_pool")
BAD_INPUT_TEST(test_a_non_finite_query_element_is_invalid_argument_naming_its_index,
               "q_nonfinite")
BAD_INPUT_TEST(test_a_non_finite_new_kv_element_is_invalid_argument_naming_its_index,
               "new_kv_nonfinite")
BAD_INPUT_TEST(test_a_non_finite_append_kv_element_is_invalid_argument_naming_its_index,
               "append_nonfinite")
BAD_INPUT_TEST(test_a_length_prefix_protobuf_c_refuses_is_invalid_argument,
               "long_length_prefix")
BAD_INPUT_TEST(test_a_malformed_field_nested_in_q_is_invalid_argument, "long_nested_key")

/* Closing twice: the second close finds nothing. */
START_TEST(test_closing_a_session_twice_is_not_found_the_second_time)
{
    attnd_session_id id;
    attnd_error err;
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_create_session(g_c, NULL, 0, &id, NULL, &err), ATTND_OK);
    ck_assert_int_eq(attnd_client_close_session(g_c, &id, &err), ATTND_OK);
    cu_assert_fails(attnd_client_close_session(g_c, &id, &err), err, ATTND_ERR_NOT_FOUND,
                    "session_id");
    assert_intact(&g_s);
}
END_TEST

/* ---- limits -------------------------------------------------------------------- */

START_TEST(test_messages_beyond_max_message_are_resource_exhausted)
{
    const bad_limits lim = {.max_message = 65536};
    cu_must_start("--model", "tiny-mla", "--max-message", "64Ki");
    setup_sessions(&g_s, &g_c);
    run_case("oversized_append", &lim);
    run_case("oversized_attend", &lim);
    bad_input_teardown();
}
END_TEST

/* A reply beyond the client's own limit fails on the client; the server
 * computed it (this Attend appends nothing, so nothing is lost). */
START_TEST(test_a_reply_beyond_the_clients_max_message_is_resource_exhausted)
{
    attnd_client_options o;
    attnd_client *small = NULL;
    attnd_error err;
    cu_step st;

    cu_must_start("--model", "tiny-mla");
    setup_sessions(&g_s, &g_c);
    attnd_client_options_init(&o);
    o.max_message_bytes = 4096;
    if (cu_use_ucx())
        o.transport = ATTND_TRANSPORT_UCX;
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_connect(cu_srv.target, &o, &small, &err), ATTND_OK);
    /* 3 query tokens: 3840 bytes of bf16 query, 6144 bytes of f32 output */
    cu_step_make(&g_s, &st, 0, 0, 1, 3, 0, 0, ATTND_DTYPE_F32);
    ck_assert_uint_gt(st.out_bytes, 4096);
    ck_assert_uint_lt(st.q_bytes, 4096 - 128);
    cu_assert_fails(attnd_client_attend(small, &st.a, &err), err, ATTND_ERR_RESOURCE_EXHAUSTED,
                    "larger than max");
    cu_step_free(&st);
    attnd_client_destroy(small);
    assert_intact(&g_s);
    bad_input_teardown();
}
END_TEST

static uint64_t pages_used(attnd_client *c)
{
    attnd_stats st;
    attnd_error err;
    attnd_error_clear(&err);
    ck_assert_msg(attnd_client_get_stats(c, &st, NULL, &err) == ATTND_OK, "%s", err.msg);
    return st.pages_used;
}

/* Attend over the cache as it is (no new KV) for every layer of sequences
 * [first, first + n), checked. */
static void assert_reads_back(cu_seqs *s, uint32_t first, uint32_t n, uint32_t layers)
{
    attnd_refcheck_result res = {0};
    attnd_error err;
    for (uint32_t l = 0; l < layers; l++) {
        cu_step st;
        attnd_error_clear(&err);
        cu_step_make(s, &st, l, first, n, 1, 0, 1, ATTND_DTYPE_INVALID);
        ck_assert_msg(attnd_client_attend(s->c, &st.a, &err) == ATTND_OK, "%s", err.msg);
        ck_assert_int_eq(cu_step_commit(s, &st, &res), 0);
        cu_step_free(&st);
    }
    ck_assert_msg(res.max_err <= cu_bound(s->dt), "max error %g", res.max_err);
    ck_assert_msg(res.max_lse_err <= CU_LSE_BOUND, "max LSE error %g", res.max_lse_err);
}

/* Attend over layer l of sequence i, which holds no KV: out 0, lse -inf. */
static void assert_layer_empty(cu_seqs *s, uint32_t l, uint32_t i)
{
    attnd_error err;
    cu_step st;
    cu_step_make(s, &st, l, i, 1, 1, 0, 1, ATTND_DTYPE_INVALID);
    ck_assert_msg(attnd_client_attend(s->c, &st.a, &err) == ATTND_OK, "%s", err.msg);
    for (uint32_t h = 0; h < s->m.n_q_heads; h++)
        ck_assert(isinf(st.lse[h]) && st.lse[h] < 0);
    for (size_t b = 0; b < st.out_bytes; b++)
        ck_assert_uint_eq(((unsigned char *)st.out)[b], 0);
    cu_step_free(&st);
}

/* tiny-mla pages are 64 tokens x 80 bf16 = 10240 bytes; the pool holds 40.
 * B (session 1) takes 5 pages per layer (20); A (session 0) asks for 6 per
 * layer in one stream: its fourth chunk does not fit, and the stream
 * applies nothing (the 18 pages its first three chunks staged go back);
 * three layers in a stream of their own then fit. */
START_TEST(test_kv_memory_exhausted_is_resource_exhausted_and_other_sessions_stay_intact)
{
    static const uint32_t chunk_384[] = {384, 0};
    attnd_refcheck_result res = {0};
    attnd_error err;
    cu_step st;

    cu_must_start("--model", "tiny-mla", "--kv-memory", "409600");
    g_c = cu_must_connect();
    cu_must_open(&g_s, g_c, 2, ATTND_DTYPE_BF16);
    cu_must_prefill(&g_s, 1, 320, chunks_50);
    ck_assert_uint_eq(pages_used(g_c), 20);

    /* A's prefill: one chunk per layer, the fourth refused, none applied */
    attnd_error_clear(&err);
    cu_assert_fails(cu_prefill(&g_s, 0, 384, chunk_384, &err), err,
                    ATTND_ERR_RESOURCE_EXHAUSTED, "KV memory exhausted");
    ck_assert_uint_eq(pages_used(g_c), 20);
    for (uint32_t l = 0; l < 4; l++) {
        ck_assert_uint_eq(attnd_refcheck_len(&g_s.rc, 0, l), 0);
        assert_layer_empty(&g_s, l, 0);
    }
    assert_reads_back(&g_s, 1, 1, 4);

    /* layers 0..2 alone fit (18 pages); A's empty layer 3 gives out 0 and
     * lse -inf */
    void *pre = malloc((size_t)3 * 384 * g_s.m.kv_token_elems * 2);
    attnd_rng_fill(&g_s.rng, ATTND_DTYPE_BF16, pre, (size_t)3 * 384 * g_s.m.kv_token_elems);
    attnd_kv_chunk pc[3];
    for (uint32_t l = 0; l < 3; l++)
        pc[l] = (attnd_kv_chunk){.session = g_s.ids[0], .layer = l, .start = 0, .n_tokens = 384,
                                 .kv_token_elems = g_s.m.kv_token_elems,
                                 .dtype = ATTND_DTYPE_BF16,
                                 .data = (char *)pre + (size_t)l * 384 * g_s.m.kv_token_elems * 2};
    ck_assert_msg(attnd_client_append_kv(g_c, pc, 3, NULL, &err) == ATTND_OK, "%s", err.msg);
    for (uint32_t l = 0; l < 3; l++)
        ck_assert_int_eq(attnd_refcheck_append(&g_s.rc, 0, l, 384, ATTND_DTYPE_BF16,
                                               pc[l].data), 0);
    free(pre);
    ck_assert_uint_eq(pages_used(g_c), 38);
    assert_reads_back(&g_s, 0, 2, 4);
    assert_layer_empty(&g_s, 3, 0);

    /* B's new token on layer 0 takes one of the last two pages */
    cu_step_make(&g_s, &st, 0, 1, 1, 1, 1, 1, ATTND_DTYPE_INVALID);
    ck_assert_msg(attnd_client_attend(g_c, &st.a, &err) == ATTND_OK, "%s", err.msg);
    ck_assert_int_eq(cu_step_commit(&g_s, &st, &res), 0);
    cu_step_free(&st);
    ck_assert_uint_eq(pages_used(g_c), 39);

    /* A and B on layer 1 need a page each; one is left: all or nothing */
    cu_step_make(&g_s, &st, 1, 0, 2, 1, 1, 1, ATTND_DTYPE_INVALID);
    cu_assert_fails(attnd_client_attend(g_c, &st.a, &err), err, ATTND_ERR_RESOURCE_EXHAUSTED,
                    "new_kv");
    ck_assert(cu_step_untouched(&st));
    cu_step_free(&st);
    ck_assert_uint_eq(pages_used(g_c), 39);
    assert_reads_back(&g_s, 0, 2, 4);
    ck_assert_msg(res.max_err <= cu_bound(g_s.dt), "max error %g", res.max_err);

    /* closing B frees its pages: A's layer 3 fits now */
    attnd_client_close_session(g_c, &g_s.ids[1], &err);
    ck_assert_uint_eq(pages_used(g_c), 18);
    void *buf = malloc((size_t)384 * g_s.m.kv_token_elems * 2);
    attnd_rng_fill(&g_s.rng, ATTND_DTYPE_BF16, buf, (size_t)384 * g_s.m.kv_token_elems);
    attnd_kv_chunk ch = {.session = g_s.ids[0], .layer = 3, .start = 0, .n_tokens = 384,
                         .kv_token_elems = g_s.m.kv_token_elems, .dtype = ATTND_DTYPE_BF16,
                         .data = buf};
    ck_assert_msg(attnd_client_append_kv(g_c, &ch, 1, NULL, &err) == ATTND_OK, "%s", err.msg);
    ck_assert_int_eq(attnd_refcheck_append(&g_s.rc, 0, 3, 384, ATTND_DTYPE_BF16, buf), 0);
    free(buf);
    ck_assert_uint_eq(pages_used(g_c), 24);
    assert_reads_back(&g_s, 0, 1, 4);
    g_s.n = 1; /* B is closed */
    bad_input_teardown();
}
END_TEST

/* The robustness issue's case through libattnd: a stream of a good chunk
 * and one at the wrong position fails as a whole, applying neither (the
 * sessions decode on against the reference, which mirrors nothing), and
 * the corrected stream sent again goes through. */
START_TEST(test_append_kv_stream_failing_midway_applies_nothing_and_its_retry_succeeds)
{
    const size_t e = g_s.m.kv_token_elems, eb = e * attnd_dtype_size(g_s.dt);
    char *buf = malloc(8 * eb);
    size_t applied = 99;
    attnd_error err;

    attnd_rng_fill(&g_s.rng, g_s.dt, buf, 8 * e);
    uint64_t len = attnd_refcheck_len(&g_s.rc, 0, 1);
    attnd_kv_chunk ch[2] = {
        {.session = g_s.ids[0], .layer = 1, .start = len, .n_tokens = 4, .kv_token_elems = e,
         .dtype = g_s.dt, .data = buf},
        {.session = g_s.ids[0], .layer = 1, .start = 99, .n_tokens = 4, .kv_token_elems = e,
         .dtype = g_s.dt, .data = buf + 4 * eb},
    };
    attnd_error_clear(&err);
    cu_assert_fails(attnd_client_append_kv(g_c, ch, 2, &applied, &err), err,
                    ATTND_ERR_FAILED_PRECONDITION, "start");
    ck_assert_uint_eq(applied, 0);
    assert_intact(&g_s); /* one decode step: every layer one token longer */

    len = attnd_refcheck_len(&g_s.rc, 0, 1);
    ch[0].start = len;
    ch[1].start = len + 4;
    ck_assert_msg(attnd_client_append_kv(g_c, ch, 2, &applied, &err) == ATTND_OK, "%s",
                  err.msg);
    ck_assert_uint_eq(applied, 2);
    ck_assert_int_eq(attnd_refcheck_append(&g_s.rc, 0, 1, 8, g_s.dt, buf), 0);
    assert_intact(&g_s);
    free(buf);
}
END_TEST

START_TEST(test_too_many_sessions_is_resource_exhausted)
{
    const bad_limits lim = {.max_sessions = 3};
    attnd_session_id id;
    attnd_error err;

    cu_must_start("--model", "tiny-mla", "--max-sessions", "3");
    setup_sessions(&g_s, &g_c);
    run_case("too_many_sessions", &lim);
    /* the case closed what it made: there is room for one again */
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_create_session(g_c, NULL, 0, &id, NULL, &err), ATTND_OK);
    cu_assert_fails(attnd_client_create_session(g_c, NULL, 0, &id, NULL, &err), err,
                    ATTND_ERR_RESOURCE_EXHAUSTED, "sessions");
    assert_intact(&g_s);
    bad_input_teardown();
}
END_TEST

static Suite *errors_suite(void)
{
    Suite *su = suite_create("client_errors");
    TCase *tc = tcase_create("bad_input");
    tcase_add_checked_fixture(tc, bad_input_setup, bad_input_teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_q_with_an_unknown_dtype_value_is_invalid_argument);
    tcase_add_test(tc, test_q_with_two_dims_is_invalid_argument);
    tcase_add_test(tc, test_q_with_the_wrong_head_count_is_invalid_argument);
    tcase_add_test(tc, test_q_with_the_wrong_head_width_is_invalid_argument);
    tcase_add_test(tc, test_q_for_fewer_sequences_than_sessions_is_invalid_argument);
    tcase_add_test(tc, test_q_whose_byte_length_disagrees_with_its_shape_is_invalid_argument);
    tcase_add_test(tc, test_new_kv_with_the_wrong_entry_width_is_invalid_argument);
    tcase_add_test(tc, test_new_kv_with_extra_dims_is_invalid_argument);
    tcase_add_test(tc, test_new_kv_with_an_unknown_dtype_value_is_invalid_argument);
    tcase_add_test(tc, test_attend_on_an_unknown_session_is_not_found);
    tcase_add_test(tc, test_attend_on_a_closed_session_is_not_found);
    tcase_add_test(tc, test_session_id_of_the_wrong_length_is_invalid_argument);
    tcase_add_test(tc, test_a_session_twice_in_one_batch_is_invalid_argument);
    tcase_add_test(tc, test_an_empty_batch_is_invalid_argument);
    tcase_add_test(tc, test_attend_on_a_layer_past_the_model_is_out_of_range);
    tcase_add_test(tc, test_attend_position_behind_the_layer_is_failed_precondition);
    tcase_add_test(tc, test_attend_position_ahead_of_the_layer_is_failed_precondition);
    tcase_add_test(tc, test_positions_without_new_kv_are_invalid_argument);
    tcase_add_test(tc, test_out_capacity_too_small_is_refused_before_sending);
    tcase_add_test(tc, test_lse_capacity_too_small_is_refused_before_sending);
    tcase_add_test(tc, test_a_null_out_buffer_is_invalid_argument);
    tcase_add_test(tc, test_append_kv_behind_the_layer_is_failed_precondition);
    tcase_add_test(tc, test_append_kv_ahead_of_the_layer_is_failed_precondition);
    tcase_add_test(tc, test_append_kv_to_a_layer_past_the_model_is_out_of_range);
    tcase_add_test(tc, test_append_kv_to_an_unknown_session_is_not_found);
    tcase_add_test(tc, test_append_kv_with_the_wrong_entry_width_is_invalid_argument);
    tcase_add_test(tc, test_append_kv_with_an_invalid_dtype_is_invalid_argument);
    tcase_add_test(tc, test_append_kv_stream_failing_midway_applies_nothing_and_its_retry_succeeds);
    tcase_add_test(tc, test_close_of_an_unknown_session_is_not_found);
    tcase_add_test(tc, test_close_with_an_id_of_the_wrong_length_is_invalid_argument);
    tcase_add_test(tc, test_create_session_for_another_model_is_failed_precondition);
    tcase_add_test(tc, test_create_session_for_an_unknown_model_is_invalid_argument);
    tcase_add_test(tc, test_a_reservation_beyond_the_pool_is_resource_exhausted);
    tcase_add_test(tc, test_a_non_finite_query_element_is_invalid_argument_naming_its_index);
    tcase_add_test(tc, test_a_non_finite_new_kv_element_is_invalid_argument_naming_its_index);
    tcase_add_test(tc, test_a_non_finite_append_kv_element_is_invalid_argument_naming_its_index);
    tcase_add_test(tc, test_a_length_prefix_protobuf_c_refuses_is_invalid_argument);
    tcase_add_test(tc, test_a_malformed_field_nested_in_q_is_invalid_argument);
    tcase_add_test(tc, test_closing_a_session_twice_is_not_found_the_second_time);
    suite_add_tcase(su, tc);

    tc = tcase_create("limits");
    tcase_add_checked_fixture(tc, NULL, cu_teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_messages_beyond_max_message_are_resource_exhausted);
    tcase_add_test(tc, test_a_reply_beyond_the_clients_max_message_is_resource_exhausted);
    tcase_add_test(tc, test_kv_memory_exhausted_is_resource_exhausted_and_other_sessions_stay_intact);
    tcase_add_test(tc, test_too_many_sessions_is_resource_exhausted);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(errors_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
