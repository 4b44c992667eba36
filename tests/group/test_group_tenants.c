/* Tenants in a worker group (issue 15 item 2): a session alice creates
 * through rank 0 is alice's on every rank. Through rank 1, bob's Attend,
 * AppendKV and CloseSession on it get NOT_FOUND (worded as for an unknown
 * id) and change nothing; alice's calls through rank 1 work and match the
 * float64 reference over exactly what alice wrote; GetStats through either
 * rank shows alice her own session. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "group_testutil.h"

#define ALICE "alice-0123456789abcdef"
#define BOB "bob-0123456789abcdef01"
#define OPS "ops-0123456789abcdef012"

/* A 2-rank sequence group of tiny-mla serving alice, bob and ops (admin)
 * from the token file written to tokens (a mkstemp template). */
static void start_tenants(gt_group *g, char *tokens)
{
    int fd = mkstemp(tokens);
    ck_assert_int_ge(fd, 0);
    const char text[] = ALICE " alice\n" BOB " bob\n" OPS " ops admin\n";
    ck_assert_int_eq(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    const char *flags[] = {"--model", "tiny-mla", "--kv-dtype", "f32", "--page-size", "8",
                           "--kernel-threads", "1", "--shard", "sequence", "--token-file",
                           tokens, NULL};
    gt_token = OPS; /* the start waits for the ranks with GetStats: an admin's */
    ck_assert_int_eq(gt_group_start(g, 2, flags), 0);
}

START_TEST(test_a_session_is_its_tenants_on_every_rank)
{
    char tokens[] = "/tmp/attnd-gtok-XXXXXX";
    gt_group g;
    cu_seqs s;
    attnd_error err, unknown;
    attnd_refcheck_result res = {0};

    start_tenants(&g, tokens);
    gt_token = ALICE;
    attnd_client *alice[2] = {gt_connect(&g.rank[0]), gt_connect(&g.rank[1])};
    gt_token = BOB;
    attnd_client *bob = gt_connect(&g.rank[1]);
    gt_token = NULL;
    ck_assert(alice[0] && alice[1] && bob);
    cu_must_open(&s, alice[0], 1, ATTND_DTYPE_F32); /* alice, through rank 0 */
    cu_must_prefill(&s, 0, 19, NULL);               /* pages on both ranks */

    /* bob, through rank 1: the session does not exist */
    attnd_session_id nobody;
    memset(&nobody, 0x3c, sizeof nobody);
    ck_assert_int_eq(attnd_client_close_session(bob, &nobody, &unknown), ATTND_ERR_NOT_FOUND);
    ck_assert_int_eq(attnd_client_close_session(bob, &s.ids[0], &err), ATTND_ERR_NOT_FOUND);
    ck_assert_str_eq(err.msg, unknown.msg);
    cu_step st;
    cu_step_make(&s, &st, 2, 0, 1, 1, 1, 1, ATTND_DTYPE_INVALID);
    ck_assert_int_eq(attnd_client_attend(bob, &st.a, &err), ATTND_ERR_NOT_FOUND);
    ck_assert(cu_step_untouched(&st));
    attnd_kv_chunk chunk = {.session = s.ids[0], .layer = 1, .start = 19, .n_tokens = 1,
                            .kv_token_elems = s.m.kv_token_elems, .dtype = ATTND_DTYPE_F32,
                            .data = st.kv};
    ck_assert_int_eq(attnd_client_append_kv(bob, &chunk, 1, NULL, &err), ATTND_ERR_NOT_FOUND);

    /* alice, through rank 1: the same step works, over exactly her tokens */
    s.c = alice[1];
    ck_assert_int_eq(attnd_client_attend(alice[1], &st.a, &err), ATTND_OK);
    ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
    cu_step_free(&st);
    ck_assert_msg(res.max_err <= cu_bound(ATTND_DTYPE_F32), "max error %g", res.max_err);
    for (int r = 0; r < 2; r++) {
        attnd_stats sa;
        ck_assert_int_eq(attnd_client_get_stats(alice[r], &sa, NULL, &err), ATTND_OK);
        ck_assert_str_eq(sa.stats_scope, "tenant alice");
        ck_assert_uint_eq(sa.sessions, 1);
        ck_assert_uint_eq(sa.group_size, 0); /* the worker's figures are an admin's */
        ck_assert_uint_eq(sa.ucx_endpoints, 0); /* so are the UCX endpoints */
        ck_assert_str_eq(sa.ucx_transports, "");
    }
    attnd_stats so; /* the admin's: the peer's endpoint */
    ck_assert_int_eq(attnd_client_get_stats(g.c[0], &so, NULL, &err), ATTND_OK);
    ck_assert_str_eq(so.stats_scope, "global");
    ck_assert_uint_eq(so.ucx_endpoints, 1);
    ck_assert_msg(strstr(so.ucx_transports, "rank 1"), "%s", so.ucx_transports);
    attnd_stats sb;
    ck_assert_int_eq(attnd_client_get_stats(bob, &sb, NULL, &err), ATTND_OK);
    ck_assert_uint_eq(sb.sessions, 0);
    attnd_client_destroy(bob);
    cu_seqs_close(&s);
    attnd_client_destroy(alice[0]);
    attnd_client_destroy(alice[1]);
    ck_assert_int_eq(gt_group_stop(&g), 0);
    unlink(tokens);
}
END_TEST

/* A tenant's session with a sparse policy (streaming, a window wider than
 * the context, so it attends as dense) created through rank 0 is the
 * tenant's on rank 1 too: bob gets NOT_FOUND there, alice's Attend through
 * rank 1 matches float64, and each rank counts it as alice's. */
START_TEST(test_a_tenants_sparse_session_is_its_own_on_every_rank)
{
    char tokens[] = "/tmp/attnd-gtok-XXXXXX";
    gt_group g;
    cu_seqs s;
    attnd_error err;
    attnd_refcheck_result res = {0};

    start_tenants(&g, tokens);
    gt_token = ALICE;
    attnd_client *alice[2] = {gt_connect(&g.rank[0]), gt_connect(&g.rank[1])};
    gt_token = BOB;
    attnd_client *bob = gt_connect(&g.rank[1]);
    gt_token = NULL;
    ck_assert(alice[0] && alice[1] && bob);
    cu_must_open(&s, alice[0], 1, ATTND_DTYPE_F32);
    ck_assert_int_eq(attnd_client_close_session(alice[0], &s.ids[0], &err), ATTND_OK);
    const attnd_sparse_policy pol = {.kind = ATTND_SPARSE_STREAMING, .sink = 8, .window = 1024};
    ck_assert_msg(attnd_client_create_session_policy(alice[0], NULL, 0, &pol, NULL, 0, &s.ids[0],
                                                     NULL, &err) == ATTND_OK, "%s", err.msg);
    cu_must_prefill(&s, 0, 19, NULL); /* pages on both ranks */

    cu_step st;
    cu_step_make(&s, &st, 2, 0, 1, 1, 1, 1, ATTND_DTYPE_INVALID);
    cu_assert_fails(attnd_client_attend(bob, &st.a, &err), err, ATTND_ERR_NOT_FOUND, "session");
    ck_assert(cu_step_untouched(&st));
    s.c = alice[1];
    ck_assert_msg(attnd_client_attend(alice[1], &st.a, &err) == ATTND_OK, "%s", err.msg);
    ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
    cu_step_free(&st);
    ck_assert_msg(res.max_err <= cu_bound(ATTND_DTYPE_F32), "max error %g", res.max_err);
    for (int r = 0; r < 2; r++) {
        attnd_stats sa;
        ck_assert_int_eq(attnd_client_get_stats(alice[r], &sa, NULL, &err), ATTND_OK);
        ck_assert_uint_eq(sa.sessions, 1);
    }
    attnd_stats sb;
    ck_assert_int_eq(attnd_client_get_stats(bob, &sb, NULL, &err), ATTND_OK);
    ck_assert_uint_eq(sb.sessions, 0);
    ck_assert_int_eq(attnd_client_close_session(bob, &s.ids[0], &err), ATTND_ERR_NOT_FOUND);
    attnd_client_destroy(bob);
    cu_seqs_close(&s);
    attnd_client_destroy(alice[0]);
    attnd_client_destroy(alice[1]);
    ck_assert_int_eq(gt_group_stop(&g), 0);
    unlink(tokens);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("group_tenants");
    TCase *tc = tcase_create("tenants");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_a_session_is_its_tenants_on_every_rank);
    tcase_add_test(tc, test_a_tenants_sparse_session_is_its_own_on_every_rank);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
