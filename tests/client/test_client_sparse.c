/* Client suite of sparse attention over the wire (gRPC; again over UCX as
 * test_ucx_sparse): CreateSession with a policy, Attend with the pages a
 * topk-pages layer returns handed to a given-pages layer, both checked
 * against the float64 reference over exactly the tokens attended, GetStats'
 * sparse figures, and the refusals (bad policies, out-of-range and
 * unordered given indices) with INVALID_ARGUMENT naming the field and no
 * side effect; a rendezvous UCX reply carrying chosen pages decoded whole.
 * The pipelined forms (async, AttendStream): test_client_sparse_pipelined.c. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "client_sparse.h"

#define PS 16

static attnd_client *g_c;
static cu_seqs g_s;

static void setup(void)
{
    cu_must_start("--model", "tiny-gqa", "--page-size", "16");
    g_c = cu_must_connect();
}

static void teardown(void)
{
    cu_seqs_close(&g_s);
    attnd_client_destroy(g_c);
    g_c = NULL;
    cu_teardown();
}

/* TidalDecode over the wire: layer 0 selects (topk-pages) and returns its
 * pages; layers 1 and 2 attend exactly those (given-pages); every output
 * equals the float64 reference over the pages reported. */
START_TEST(test_pages_chosen_on_one_layer_are_attended_on_the_next_over_the_wire)
{
    attnd_sparse_policy p = {.kind = ATTND_SPARSE_TOPK_PAGES, .sink = 16, .topk_fraction = 0.25f};
    attnd_error err;
    cu_open_policy(&g_s, g_c, &p, 2);
    cu_must_prefill(&g_s, 0, 300, NULL);
    cu_must_prefill(&g_s, 1, 517, NULL);
    uint32_t ip[64];
    uint64_t ch[256];
    attnd_refcheck_result res = {0};
    for (int step = 0; step < 3; step++) {
        attnd_sparse_args sp = {.return_pages = 1, .chosen_indptr = ip,
                                .chosen_indptr_capacity = 64, .chosen = ch,
                                .chosen_capacity = 256};
        for (uint32_t layer = 0; layer < 3; layer++) {
            cu_step st;
            cu_step_make(&g_s, &st, layer, 0, 2, 1, 1, 0, ATTND_DTYPE_INVALID);
            if (layer > 0) { /* the layer 0 lists as given pages */
                sp.given_groups = sp.chosen_groups;
                sp.given_indptr = ip;
                sp.given_idx = ch;
                sp.n_given_idx = sp.n_chosen;
            }
            attnd_status rc = attnd_client_attend_sparse(g_c, &st.a, &sp, &err);
            ck_assert_msg(rc == ATTND_OK, "%s", err.msg);
            /* GQA topk-pages selects per KV head: 2 lists per session */
            ck_assert_uint_eq(sp.chosen_groups, g_s.m.n_kv_heads);
            ck_assert_uint_eq(sp.n_chosen_lists, 2 * g_s.m.n_kv_heads);
            /* record the new entry, then check over the pages reported */
            for (uint32_t i = 0; i < 2; i++)
                ck_assert_int_eq(attnd_refcheck_append(&g_s.rc, i, layer, 1, g_s.dt,
                                                       (const char *)st.kv + i * st.kv_bytes / 2),
                                 0);
            cu_check_chosen(&g_s, &st, &sp, layer, &res);
            cu_step_free(&st);
        }
        /* a quarter of the pages (and the sink and newest pages) */
        uint32_t np = (uint32_t)((301 + step + PS - 1) / PS);
        ck_assert_uint_eq(ip[1] - ip[0], (np + 3) / 4);
        ck_assert_uint_eq(ch[0], 0); /* the sink page */
        ck_assert_uint_eq(ch[ip[1] - 1], np - 1); /* the newest page */
    }
    ck_assert_msg(res.max_err <= cu_bound(g_s.dt), "max error %g", res.max_err);
    ck_assert_uint_eq(res.rows, 3 * 3 * 2 * g_s.m.n_q_heads);
    attnd_stats stats;
    ck_assert_int_eq(attnd_client_get_stats(g_c, &stats, NULL, &err), ATTND_OK);
    ck_assert_uint_eq(stats.select_calls, 3);
    ck_assert_uint_gt(stats.select_bytes_read, 0);
    ck_assert_uint_gt(stats.kv_bytes_dense, stats.kv_bytes_read);
}
END_TEST

START_TEST(test_a_bad_policy_is_invalid_argument_naming_the_field)
{
    attnd_error err;
    attnd_session_id id;
    attnd_sparse_policy p = {.kind = ATTND_SPARSE_STREAMING, .window = 10};
    ck_assert_int_eq(attnd_client_create_session_policy(g_c, "", 0, &p, NULL, 0, &id, NULL, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(err.msg, "policy.window"), "%s", err.msg);
    p = (attnd_sparse_policy){.kind = 17};
    ck_assert_int_eq(attnd_client_create_session_policy(g_c, "", 0, &p, NULL, 0, &id, NULL, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(err.msg, "policy.kind"), "%s", err.msg);
    attnd_sparse_rule r = {.layer_begin = 0, .layer_end = 1, .head_begin = 1, .head_end = 9,
                           .policy = {.kind = ATTND_SPARSE_TOPK_PAGES, .topk_pages = 4}};
    ck_assert_int_eq(attnd_client_create_session_policy(g_c, "", 0, NULL, &r, 1, &id, NULL, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(err.msg, "policy_table[0].head_end"), "%s", err.msg);
    attnd_stats stats;
    ck_assert_int_eq(attnd_client_get_stats(g_c, &stats, NULL, &err), ATTND_OK);
    ck_assert_uint_eq(stats.sessions, 0); /* nothing was created */
}
END_TEST

/* Out-of-range and unordered given pages: INVALID_ARGUMENT naming
 * given_idx, the result buffers untouched, nothing appended (the session
 * then decodes on at the same position). */
START_TEST(test_bad_given_pages_are_invalid_argument_naming_the_field)
{
    attnd_sparse_policy p = {.kind = ATTND_SPARSE_TOPK_PAGES, .topk_pages = 3};
    attnd_error err;
    cu_open_policy(&g_s, g_c, &p, 2);
    cu_must_prefill(&g_s, 0, 100, NULL);
    cu_must_prefill(&g_s, 1, 40, NULL);
    static const struct {
        uint32_t indptr[3];
        uint64_t idx[3];
        const char *field;
    } bad[] = {
        {{0, 1, 2}, {0, 3}, "given_idx[1]"},   /* session 1 has 3 pages (41 tokens) */
        {{0, 2, 3}, {4, 2, 0}, "given_idx[1]"}, /* not ascending */
        {{0, 1, 1}, {1ull << 40}, "given_idx[0]"},
        {{1, 1, 1}, {0}, "given_indptr"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        cu_step st;
        cu_step_make(&g_s, &st, 1, 0, 2, 1, 1, 0, ATTND_DTYPE_INVALID);
        attnd_sparse_args sp = {.given_groups = 1, .given_indptr = bad[k].indptr,
                                .given_idx = bad[k].idx,
                                .n_given_idx = bad[k].indptr[2]};
        ck_assert_int_eq(attnd_client_attend_sparse(g_c, &st.a, &sp, &err),
                         ATTND_ERR_INVALID_ARGUMENT);
        ck_assert_msg(strncmp(err.msg, bad[k].field, strlen(bad[k].field)) == 0,
                      "case %zu: expected '%s...', got '%s'", k, bad[k].field, err.msg);
        ck_assert(cu_step_untouched(&st));
        cu_step_free(&st);
    }
    /* layer 1 still at 100 / 40 tokens: a plain step with positions there works */
    cu_step st;
    cu_step_make(&g_s, &st, 1, 0, 2, 1, 1, 0, ATTND_DTYPE_INVALID);
    uint32_t ip[3] = {0, 1, 2};
    uint64_t idx[2] = {2, 0};
    attnd_sparse_args sp = {.given_groups = 1, .given_indptr = ip, .given_idx = idx,
                            .n_given_idx = 2};
    ck_assert_msg(attnd_client_attend_sparse(g_c, &st.a, &sp, &err) == ATTND_OK, "%s", err.msg);
    cu_step_free(&st);
}
END_TEST

/* ---- rendezvous replies with chosen lists ------------------------------------------- */

/* Every UCX message above 64 bytes goes rendezvous (client and server read
 * the variable; the server inherits it). */
static void setup_rndv(void)
{
    setenv("UCX_RNDV_THRESH", "64", 1);
    setup();
}

/* A return_pages reply received by rendezvous, into an out buffer with
 * room to spare: the chosen lists follow lse in no planned layout, so the
 * reply must be decoded whole. Swept over 1 to 11 given pages of a
 * 13-page layer (one list: a chosen section of 9 + n bytes), so that one
 * section is as long as one more bf16 column of out (8 heads x 2 bytes):
 * taken for a wider out, that reply failed INTERNAL ("framing is not what
 * attnd sends"). Blocking and async; chosen pages and outputs checked. */
START_TEST(test_a_rendezvous_reply_with_chosen_pages_is_decoded_whatever_its_length)
{
    attnd_sparse_policy full = {.kind = ATTND_SPARSE_FULL};
    attnd_refcheck_result res = {0};
    attnd_error err;
    cu_open_policy(&g_s, g_c, &full, 2);
    cu_must_prefill(&g_s, 0, 200, NULL); /* 13 pages; the newest is 12 */
    for (uint32_t n = 1; n <= 11; n++)
        for (int async = 0; async < 2; async++) {
            cu_step st;
            cu_step_make(&g_s, &st, 1, 0, 1, 1, 0, 0, ATTND_DTYPE_INVALID);
            size_t cap = 4 * st.out_bytes;
            void *big = malloc(cap);
            ck_assert_ptr_nonnull(big);
            st.a.out = big;
            st.a.out_capacity = cap;
            uint32_t gip[2] = {0, n}, ip[2];
            uint64_t given[11], ch[16];
            for (uint32_t j = 0; j < n; j++)
                given[j] = j;
            attnd_sparse_args sp = {.given_groups = 1, .given_indptr = gip, .given_idx = given,
                                    .n_given_idx = n, .return_pages = 1, .chosen_indptr = ip,
                                    .chosen_indptr_capacity = 2, .chosen = ch,
                                    .chosen_capacity = 16};
            attnd_status rc;
            if (async) {
                attnd_call *call;
                rc = attnd_client_attend_sparse_async(g_c, &st.a, &sp, &call, &err);
                if (rc == ATTND_OK)
                    rc = attnd_call_wait(call, &err);
            } else {
                rc = attnd_client_attend_sparse(g_c, &st.a, &sp, &err);
            }
            ck_assert_msg(rc == ATTND_OK, "%u given pages, %s: %s", n, async ? "async" : "sync",
                          err.msg);
            ck_assert_uint_eq(sp.n_chosen, n + 1);
            for (uint32_t j = 0; j < n; j++)
                ck_assert_uint_eq(ch[j], j);
            ck_assert_uint_eq(ch[n], 12);
            memcpy(st.out, big, st.out_bytes);
            free(big);
            cu_check_chosen(&g_s, &st, &sp, 1, &res);
            cu_step_free(&st);
        }
    ck_assert_msg(res.max_err <= cu_bound(g_s.dt), "max error %g", res.max_err);
    ck_assert_uint_eq(res.rows, 11 * 2 * g_s.m.n_q_heads);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("client_sparse");
    TCase *tc = tcase_create("sparse");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_pages_chosen_on_one_layer_are_attended_on_the_next_over_the_wire);
    tcase_add_test(tc, test_a_bad_policy_is_invalid_argument_naming_the_field);
    tcase_add_test(tc, test_bad_given_pages_are_invalid_argument_naming_the_field);
    suite_add_tcase(s, tc);
    TCase *rv = tcase_create("rendezvous");
    tcase_add_checked_fixture(rv, setup_rndv, teardown);
    tcase_set_timeout(rv, 300);
    tcase_add_test(rv, test_a_rendezvous_reply_with_chosen_pages_is_decoded_whatever_its_length);
    suite_add_tcase(s, rv);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
