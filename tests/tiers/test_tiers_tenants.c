/* Durability with tenants through a real attnd (--durable with
 * --token-file; worker/TIERS.md): the log and the checkpoints record each
 * session's tenant, so after kill -9 and a restart every session belongs
 * to the tenant that created it (another tenant gets NOT_FOUND for it, as
 * before the crash), every acknowledged append is there (outputs equal
 * the float64 reference), and each tenant's figures and quota (GetStats in
 * the tenant's scope: sessions, pages held, pages reserved) are the same
 * as before the crash; a tenant's streaming session reserves its sink and
 * window only and gives the pages it frees back to the tenant's quota,
 * before and after a crash. */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tiers_testutil.h"

#define ALICE_TOKEN "alice-0123456789abcdef"
#define BOB_TOKEN "bob-0123456789abcdef01"
#define PS 16

static char dir[64], tdir[64], tokens[128];

static void teardown(void)
{
    cu_teardown();
    tt_rmdir(dir);
    tt_rmdir(tdir);
    dir[0] = tdir[0] = '\0';
}

/* alice may hold `alice_kv` bytes of KV (NULL: no limit) */
static void write_tokens(const char *alice_kv)
{
    tt_must_mkdir(tdir);
    snprintf(tokens, sizeof tokens, "%s/tokens", tdir);
    FILE *f = fopen(tokens, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "%s alice%s%s\n%s bob\n", ALICE_TOKEN, alice_kv ? " kv=" : "",
            alice_kv ? alice_kv : "", BOB_TOKEN);
    ck_assert_int_eq(fclose(f), 0);
}

static void start(const char *mem)
{
    const char *const flags[] = {"--durable", "--durable-segment", "1Mi", "--durable-checkpoint",
                                 "128Ki", "--kv-disk", "16Mi", "--token-file", tokens, NULL};
    tt_must_start(dir, mem, flags);
}

static attnd_client *connect_as(const char *token)
{
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;
    attnd_client_options_init(&o);
    o.deadline_ms = 120000; /* hang guards only */
    o.connect_timeout_ms = 30000;
    o.token = token;
    ck_assert_msg(attnd_client_connect(cu_srv.target, &o, &c, &err) == ATTND_OK, "connect: %s",
                  err.msg);
    return c;
}

static void reconnect_as(cu_seqs *s, const char *token)
{
    attnd_client_destroy(s->c);
    s->c = connect_as(token);
}

/* The tenant's own figures (GetStats in its scope). */
static attnd_stats tenant_stats(attnd_client *c)
{
    attnd_stats st;
    attnd_error err;
    ck_assert_msg(attnd_client_get_stats(c, &st, NULL, &err) == ATTND_OK, "stats: %s", err.msg);
    return st;
}

/* What the tenant of s's dense sessions, each reserving `reserved` tokens,
 * must hold by the mirror: every layer's pages, and what is left of each
 * layer's reservation. */
static void expect_figures(const cu_seqs *s, uint32_t reserved, const attnd_stats *st)
{
    uint64_t used = 0, res = 0, per_layer = (reserved + PS - 1) / PS;
    for (uint32_t i = 0; i < s->n; i++)
        for (uint32_t l = 0; l < s->m.n_layers; l++) {
            uint64_t pages = (attnd_refcheck_len(&s->rc, i, l) + PS - 1) / PS;
            used += pages;
            res += pages < per_layer ? per_layer - pages : 0;
        }
    ck_assert_uint_eq(st->sessions, s->n);
    ck_assert_uint_eq(st->pages_used, used);
    ck_assert_uint_eq(st->pages_reserved, res);
}

/* bob may not see, attend, read or close any of alice's sessions: NOT_FOUND,
 * the words of an unknown id. */
static void assert_hidden_from(attnd_client *bob, const cu_seqs *alice)
{
    attnd_error err;
    attnd_tier_stats ts;
    for (uint32_t i = 0; i < alice->n; i++) {
        cu_step st;
        cu_step_make((cu_seqs *)alice, &st, 0, i, 1, 1, 0, 0, ATTND_DTYPE_F32);
        cu_assert_fails(attnd_client_attend(bob, &st.a, &err), err, ATTND_ERR_NOT_FOUND,
                        "session");
        cu_step_free(&st);
        cu_assert_fails(attnd_client_get_tier_stats(bob, &alice->ids[i], &ts, &err), err,
                        ATTND_ERR_NOT_FOUND, "session_id");
        cu_assert_fails(attnd_client_close_session(bob, &alice->ids[i], &err), err,
                        ATTND_ERR_NOT_FOUND, "session_id");
    }
}

/* 8 rounds: alice's appends (AppendKV streams, Attends with new KV) until a
 * SIGKILL 2-40 ms in cuts one; restart; the cut one sent again applies
 * whole or is FAILED_PRECONDITION whole; then every layer of alice's
 * sessions equals the float64 reference of the acknowledged appends,
 * alice's figures are exactly what her sessions hold and reserve, bob's
 * session is his and intact, and neither sees the other's. */
START_TEST(test_kill_9_mid_stream_keeps_each_tenants_sessions_appends_and_figures)
{
    cu_seqs a, b;
    attnd_error err;
    tt_must_mkdir(dir);
    write_tokens(NULL);
    start("1Mi");
    ck_assert_msg(cu_seqs_open_reserved(&a, connect_as(ALICE_TOKEN), 3, ATTND_DTYPE_BF16, 0, 64,
                                        &err) == ATTND_OK, "%s", err.msg);
    ck_assert_msg(cu_seqs_open(&b, connect_as(BOB_TOKEN), 1, ATTND_DTYPE_BF16, 0, &err) ==
                  ATTND_OK, "%s", err.msg);
    cu_must_prefill(&b, 0, 40, NULL);
    for (int round = 0; round < 8; round++) {
        tt_op op;
        tt_must_cut(&a, &op, round, 16, 1);
        start("1Mi");
        reconnect_as(&a, ALICE_TOKEN);
        reconnect_as(&b, BOB_TOKEN);
        tt_must_resend(&a, &op, round, 1);
        tt_must_check_all(&a, 3);
        tt_must_check_all(&b, 1);
        attnd_stats as = tenant_stats(a.c), bs = tenant_stats(b.c);
        expect_figures(&a, 64, &as);
        expect_figures(&b, 0, &bs);
        assert_hidden_from(b.c, &a);
        assert_hidden_from(a.c, &b);
    }
    attnd_client *ac = a.c, *bc = b.c;
    cu_seqs_close(&a);
    cu_seqs_close(&b);
    ck_assert_uint_eq(tenant_stats(ac).sessions + tenant_stats(bc).sessions, 0);
    attnd_client_destroy(ac);
    attnd_client_destroy(bc);
}
END_TEST

/* At rest: alice's figures read before a kill -9 equal those read after the
 * restart, and her KV quota counts the recovered sessions: with 27 pages
 * of her 32-page quota held or reserved, a session reserving 6 more is
 * refused (recovery that forgot her pages would admit it), one of 3 fits. */
START_TEST(test_a_tenants_figures_and_quota_are_the_same_after_kill_9)
{
    cu_seqs a;
    attnd_error err;
    tt_must_mkdir(dir);
    write_tokens("128Ki"); /* 32 pages of 4 KiB */
    start("256Ki");
    /* 64 tokens reserved: 4 pages a layer; 40 tokens hold 3 of them (4 a
     * layer with the rest of the promise), 70 tokens 5 (one past it) */
    ck_assert_msg(cu_seqs_open_reserved(&a, connect_as(ALICE_TOKEN), 2, ATTND_DTYPE_BF16, 0, 64,
                                        &err) == ATTND_OK, "%s", err.msg);
    cu_must_prefill(&a, 0, 40, NULL);
    cu_must_prefill(&a, 1, 70, NULL);
    attnd_stats before = tenant_stats(a.c);
    ck_assert_uint_eq(before.pages_used + before.pages_reserved, 3 * 4 + 3 * 5);
    tt_kill9();
    start("256Ki");
    reconnect_as(&a, ALICE_TOKEN);
    attnd_stats after = tenant_stats(a.c);
    ck_assert_uint_eq(after.sessions, before.sessions);
    ck_assert_uint_eq(after.pages_used, before.pages_used);
    ck_assert_uint_eq(after.pages_reserved, before.pages_reserved);
    tt_must_check_all(&a, 2);
    attnd_session_id id;
    /* 3 layers x 2 pages = 6 > 32 - 27; 3 x 1 fits */
    cu_assert_fails(attnd_client_create_session(a.c, NULL, 32, &id, NULL, &err), err,
                    ATTND_ERR_RESOURCE_EXHAUSTED, "tenant alice");
    ck_assert_msg(attnd_client_create_session(a.c, NULL, 16, &id, NULL, &err) == ATTND_OK, "%s",
                  err.msg);
    ck_assert_int_eq(attnd_client_close_session(a.c, &id, &err), ATTND_OK);
    attnd_client *ac = a.c;
    cu_seqs_close(&a);
    attnd_client_destroy(ac);
}
END_TEST

/* Attend every layer of session 0 of s (no new KV, float32 outputs) and
 * check it attends exactly its sink and window pages (streaming, every
 * layer), against the float64 reference over them. */
static void check_streaming(cu_seqs *s, uint32_t sink, uint32_t window)
{
    attnd_error err;
    for (uint32_t l = 0; l < s->m.n_layers; l++) {
        uint32_t ip[8];
        uint64_t ch[64];
        attnd_sparse_args sp = {.return_pages = 1, .chosen_indptr = ip,
                                .chosen_indptr_capacity = 8, .chosen = ch,
                                .chosen_capacity = 64};
        cu_step st;
        cu_step_make(s, &st, l, 0, 1, 1, 0, 0, ATTND_DTYPE_F32);
        ck_assert_msg(attnd_client_attend_sparse(s->c, &st.a, &sp, &err) == ATTND_OK, "%s",
                      err.msg);
        uint64_t len = attnd_refcheck_len(&s->rc, 0, l), first = (len - window) / PS, want = 0;
        for (uint32_t k = 0; k < sp.n_chosen_lists; k++)
            for (uint32_t j = ip[k]; j < ip[k + 1]; j++) {
                while (want >= (sink + PS - 1) / PS && want < first)
                    want++;
                ck_assert_uint_eq(ch[j], want);
                want++;
            }
        ck_assert_uint_eq(want, (len + PS - 1) / PS);
        tt_must_check_reported(s, &st, &sp, l, PS);
        cu_step_free(&st);
    }
}

/* Streams of appends to every layer of session 0 until layer 0 holds
 * `tokens`, each acknowledged and mirrored. */
static void append_until(cu_seqs *s, uint64_t n_tokens)
{
    attnd_error err;
    while (attnd_refcheck_len(&s->rc, 0, 0) < n_tokens) {
        tt_op op;
        tt_op_stream(s, &op, 0, 1, 32);
        ck_assert_msg(tt_op_send(s, &op, &err) == ATTND_OK, "append at %llu: %s",
                      (unsigned long long)attnd_refcheck_len(&s->rc, 0, 0), err.msg);
        tt_op_mirror(s, &op, 0);
        tt_op_free(&op);
    }
}

/* A tenant's streaming session (sink 16, window 64) reserves its sink and
 * window only (3 layers x 10 pages of alice's 40), whatever max_tokens
 * says, and the pages it frees come back to alice's quota: it appends 800
 * tokens a layer (150 pages) without a refusal, and her figures stay at
 * the 30 pages it holds or reserves, exactly enough to leave room for a
 * 9-page session and not a 12-page one. After kill -9 the same figures,
 * the same room, the session attends its sink and window, and appends go
 * on; closed, it gives everything back. */
START_TEST(test_a_tenants_streaming_session_gives_freed_pages_back_to_its_quota_across_kill_9)
{
    const attnd_sparse_policy streaming = {.kind = ATTND_SPARSE_STREAMING, .sink = 16,
                                           .window = 64};
    cu_seqs a;
    attnd_session_id id;
    attnd_error err;
    tt_must_mkdir(dir);
    write_tokens("160Ki"); /* 40 pages */
    start("1Mi");
    cu_must_open(&a, connect_as(ALICE_TOKEN), 1, ATTND_DTYPE_BF16);
    ck_assert_int_eq(attnd_client_close_session(a.c, &a.ids[0], &err), ATTND_OK);
    ck_assert_msg(attnd_client_create_session_policy(a.c, NULL, 1u << 30, &streaming, NULL, 0,
                                                     &a.ids[0], NULL, &err) == ATTND_OK,
                  "%s", err.msg);
    attnd_stats st = tenant_stats(a.c);
    ck_assert_uint_eq(st.pages_reserved, 30);
    append_until(&a, 800);
    attnd_stats before = tenant_stats(a.c);
    ck_assert_uint_le(before.pages_used, 30);
    ck_assert_uint_eq(before.pages_used + before.pages_reserved, 30);
    for (int round = 0; round < 2; round++) {
        cu_assert_fails(attnd_client_create_session(a.c, NULL, 64, &id, NULL, &err), err,
                        ATTND_ERR_RESOURCE_EXHAUSTED, "tenant alice");
        ck_assert_msg(attnd_client_create_session(a.c, NULL, 48, &id, NULL, &err) == ATTND_OK,
                      "%s", err.msg);
        ck_assert_int_eq(attnd_client_close_session(a.c, &id, &err), ATTND_OK);
        if (round == 1)
            break;
        tt_kill9();
        start("1Mi");
        reconnect_as(&a, ALICE_TOKEN);
        attnd_stats after = tenant_stats(a.c);
        ck_assert_uint_eq(after.sessions, before.sessions);
        ck_assert_uint_eq(after.pages_used, before.pages_used);
        ck_assert_uint_eq(after.pages_reserved, before.pages_reserved);
    }
    check_streaming(&a, 16, 64);
    append_until(&a, 1200);
    check_streaming(&a, 16, 64);
    st = tenant_stats(a.c);
    ck_assert_uint_eq(st.pages_used + st.pages_reserved, 30);
    attnd_client *ac = a.c;
    cu_seqs_close(&a);
    st = tenant_stats(ac);
    ck_assert_uint_eq(st.sessions + st.pages_used + st.pages_reserved, 0);
    attnd_client_destroy(ac);
}
END_TEST

static Suite *tenants_suite(void)
{
    Suite *su = suite_create("tiers_tenants");
    TCase *tc = tcase_create("durable");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, test_kill_9_mid_stream_keeps_each_tenants_sessions_appends_and_figures);
    tcase_add_test(tc, test_a_tenants_figures_and_quota_are_the_same_after_kill_9);
    tcase_add_test(tc,
                   test_a_tenants_streaming_session_gives_freed_pages_back_to_its_quota_across_kill_9);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(tenants_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
