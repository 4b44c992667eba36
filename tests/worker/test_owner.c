/* Check suite of session owners (issue 15): a session is found only for
 * the owner that created it; an owner's limits on sessions and KV bytes
 * refuse growth with RESOURCE_EXHAUSTED and no side effect; its usage
 * follows reservations, appends, Attend's new KV, aborted stages and
 * closes page by page (and agrees with the pool's own counts), sparse
 * sessions' too (a policy's reservation, the pages streaming frees); idle
 * expiry closes the sessions nobody holds and gives their pages back. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_worker.h"
#include "testutil.h"

#define ALICE 0x1111111111111111ull
#define BOB 0x2222222222222222ull

/* tiny-gqa: 3 layers, 8 q heads, 2 kv heads of 32; pages of 16 tokens */
static attnd_engine *make_engine(uint64_t kv_memory)
{
    attnd_engine_config cfg = {.model = *attnd_model_find("tiny-gqa"),
                               .page_size = 16,
                               .kv_memory = kv_memory,
                               .max_sessions = 16,
                               .kernel_threads = 1};
    attnd_engine *e = NULL;
    attnd_error err;
    ck_assert_int_eq(attnd_engine_create(&cfg, &e, &err), ATTND_OK);
    return e;
}

static uint16_t *kv_of(const attnd_engine *e, size_t tokens)
{
    return calloc(tokens * (size_t)attnd_model_kv_token_elems(attnd_engine_model(e)), 2);
}

static uint64_t layer_len(attnd_engine *e, const attnd_session_id *id, uint32_t layer)
{
    uint64_t len = 0;
    attnd_error err;
    ck_assert_int_eq(attnd_engine_length(e, id, layer, &len, &err), ATTND_OK);
    return len;
}

/* One decode step of one session at `layer` with a new entry. */
static attnd_status attend_new(attnd_engine *e, const attnd_session_id *id, uint32_t layer,
                               attnd_error *err)
{
    const attnd_model_spec *m = attnd_engine_model(e);
    size_t q_elems = (size_t)m->n_q_heads * (size_t)attnd_model_d_k(m);
    float *q = calloc(q_elems, sizeof *q);
    uint16_t *kv = kv_of(e, 1);
    attnd_engine_ws ws;
    const float *out, *lse;
    attnd_attend_req req = {.layer = layer, .n_seqs = 1, .ids = id, .q_tokens = 1,
                            .q_dtype = ATTND_DTYPE_F32, .q = q,
                            .new_kv_dtype = ATTND_DTYPE_BF16, .new_kv = kv};
    attnd_engine_ws_init(&ws);
    attnd_status st = attnd_engine_attend(e, &req, &ws, &out, &lse, err);
    attnd_engine_ws_cleanup(&ws);
    free(q);
    free(kv);
    return st;
}

START_TEST(test_a_session_is_found_only_for_the_owner_that_created_it)
{
    attnd_engine *e = make_engine(1 << 20);
    attnd_session_id a, plain, absent;
    attnd_error err, err_absent;
    memset(&absent, 0x5a, sizeof absent);

    ck_assert_int_eq(attnd_engine_session_create_owned(e, ALICE, 0, NULL, &a, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &plain, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_sessions_check(e, ALICE, &a, 1, 0, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_sessions_check(e, 0, &plain, 1, 0, &err), ATTND_OK);

    /* another owner, no owner, and an absent id read exactly alike */
    ck_assert_int_eq(attnd_engine_sessions_check(e, 0, &absent, 1, 0, &err_absent),
                     ATTND_ERR_NOT_FOUND);
    ck_assert_int_eq(attnd_engine_sessions_check(e, BOB, &a, 1, 0, &err), ATTND_ERR_NOT_FOUND);
    ck_assert_str_eq(err.msg, err_absent.msg);
    ck_assert_int_eq(attnd_engine_sessions_check(e, 0, &a, 1, 0, &err), ATTND_ERR_NOT_FOUND);
    ck_assert_str_eq(err.msg, err_absent.msg);
    ck_assert_int_eq(attnd_engine_sessions_check(e, ALICE, &plain, 1, 0, &err),
                     ATTND_ERR_NOT_FOUND);
    ck_assert_str_eq(err.msg, err_absent.msg);

    /* in a batch the first foreign one is named by its index */
    attnd_session_id batch[3] = {a, a, plain};
    ck_assert_int_eq(attnd_engine_sessions_check(e, ALICE, batch, 3, 1, &err),
                     ATTND_ERR_NOT_FOUND);
    ck_assert_str_eq(err.msg, "session_ids[2]: no such session");
    attnd_engine_destroy(e);
}
END_TEST

START_TEST(test_an_owner_past_its_session_limit_gets_resource_exhausted)
{
    attnd_engine *e = make_engine(1 << 20);
    attnd_session_id s[3], b;
    attnd_engine_stats st;
    attnd_error err;

    ck_assert_int_eq(attnd_engine_owner_set(e, ALICE, "alice", 2, 0, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_create_owned(e, ALICE, 0, NULL, &s[0], &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_create_owned(e, ALICE, 0, NULL, &s[1], &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_create_owned(e, ALICE, 0, NULL, &s[2], &err),
                     ATTND_ERR_RESOURCE_EXHAUSTED);
    ck_assert_msg(strstr(err.msg, "alice") && strstr(err.msg, "has 2 open sessions") &&
                      strstr(err.msg, "limit (tenant quota: sessions) is 2"),
                  "message: %s", err.msg);
    /* nothing of the refused one exists; another owner is not limited */
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.sessions, 2);
    ck_assert_int_eq(attnd_engine_session_create_owned(e, BOB, 0, NULL, &b, &err), ATTND_OK);
    /* a close makes room again */
    ck_assert_int_eq(attnd_engine_session_close(e, &s[0], NULL, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_create_owned(e, ALICE, 0, NULL, &s[2], &err), ATTND_OK);
    attnd_engine_owner_stats(e, ALICE, &st);
    ck_assert_uint_eq(st.sessions, 2);
    ck_assert_uint_eq(st.max_sessions, 2);
    attnd_engine_destroy(e);
}
END_TEST

/* Limit: 4 pages. A reservation of 1 page per layer (3), then appends
 * take pages beyond it until the limit refuses, with nothing applied. */
START_TEST(test_an_owner_past_its_kv_limit_gets_resource_exhausted_and_nothing_changes)
{
    attnd_engine *e = make_engine(1 << 20);
    attnd_engine_stats pool, own;
    attnd_session_id a, a2;
    attnd_error err;
    attnd_engine_get_stats(e, &pool);
    const uint64_t pb = pool.page_bytes;
    uint16_t *kv = kv_of(e, 64);

    ck_assert_int_eq(attnd_engine_owner_set(e, ALICE, "alice", 0, 4 * pb, &err), ATTND_OK);
    /* a reservation past the limit is refused */
    ck_assert_int_eq(attnd_engine_session_create_owned(e, ALICE, 32, NULL, &a2, &err),
                     ATTND_ERR_RESOURCE_EXHAUSTED);
    ck_assert_msg(strstr(err.msg, "max_tokens: tenant alice holds 0 bytes") != NULL, "%s",
                  err.msg);
    ck_assert_int_eq(attnd_engine_session_create_owned(e, ALICE, 16, NULL, &a, &err), ATTND_OK);
    attnd_engine_owner_stats(e, ALICE, &own);
    ck_assert_uint_eq(own.pages_reserved, 3);
    ck_assert_uint_eq(own.pages_used, 0);
    ck_assert_uint_eq(own.pages_total, 4);

    /* layer 0: 32 tokens = 2 pages, 1 from the reservation: 4 counted */
    ck_assert_int_eq(attnd_engine_append(e, &a, 0, 0, 32, ATTND_DTYPE_BF16, kv, &err), ATTND_OK);
    attnd_engine_owner_stats(e, ALICE, &own);
    ck_assert_uint_eq(own.pages_used, 2);
    ck_assert_uint_eq(own.pages_reserved, 2);

    /* one token more in layer 0 needs a fifth page */
    attnd_engine_get_stats(e, &pool);
    ck_assert_int_eq(attnd_engine_append(e, &a, 0, 32, 1, ATTND_DTYPE_BF16, kv, &err),
                     ATTND_ERR_RESOURCE_EXHAUSTED);
    ck_assert_msg(strstr(err.msg, "kv: tenant alice holds") &&
                      strstr(err.msg, "limit (tenant quota: kv)"), "%s", err.msg);
    ck_assert_int_eq(attend_new(e, &a, 0, &err), ATTND_ERR_RESOURCE_EXHAUSTED);
    ck_assert_msg(strstr(err.msg, "new_kv: tenant alice holds") != NULL, "%s", err.msg);
    ck_assert_uint_eq(layer_len(e, &a, 0), 32);
    attnd_engine_stats after;
    attnd_engine_get_stats(e, &after);
    ck_assert_uint_eq(after.pages_used, pool.pages_used);
    ck_assert_uint_eq(after.pages_reserved, pool.pages_reserved);

    /* its reservation in layer 1 is still its own to use */
    ck_assert_int_eq(attend_new(e, &a, 1, &err), ATTND_OK);
    ck_assert_uint_eq(layer_len(e, &a, 1), 1);
    /* a higher limit lets it grow */
    ck_assert_int_eq(attnd_engine_owner_set(e, ALICE, "alice", 0, 5 * pb, &err), ATTND_OK);
    ck_assert_int_eq(attend_new(e, &a, 0, &err), ATTND_OK);
    ck_assert_uint_eq(layer_len(e, &a, 0), 33);
    free(kv);
    attnd_engine_destroy(e);
}
END_TEST

/* Random creates, appends (staged: committed or aborted), Attends with new
 * KV and closes by two owners: each owner's counts equal what its
 * sessions hold, they add up to the pool's, and end at zero. */
/* A session for owner: dense (kind 0), streaming (1) or topk-pages (2). */
static void create_for(attnd_engine *e, uint64_t owner, int kind, tu_rng *r,
                       attnd_session_id *id)
{
    attnd_error err;
    uint64_t max_tokens = (uint64_t)tu_int(r, 0, 40);
    attnd_session_policy p = {.dflt = {.kind = ATTND_POLICY_FULL}};
    if (kind == 1)
        p.dflt = (attnd_policy){.kind = ATTND_POLICY_STREAMING, .sink = 16, .window = 64};
    else if (kind == 2)
        p.dflt = (attnd_policy){.kind = ATTND_POLICY_TOPK_PAGES, .topk = 2};
    attnd_status st = kind ? attnd_engine_session_create_policy_owned(e, owner, max_tokens, &p,
                                                                      NULL, id, &err)
                           : attnd_engine_session_create_owned(e, owner, max_tokens, NULL, id,
                                                               &err);
    ck_assert_msg(st == ATTND_OK, "%s", err.msg);
}

/* 400 random steps over 8 sessions of two owners: creates, streams of one
 * chunk committed or aborted, Attends with new KV, closes; after each the
 * owners' figures add up to the pool's. sparse: sessions 1, 4, 7 stream
 * (pages freed as the window moves), 2 and 5 are topk-pages, and closes
 * are rare (streaming frees pages only in long sessions). */
static void usage_walk(int sparse)
{
    attnd_engine *e = make_engine(4 << 20);
    attnd_session_id ids[8];
    uint64_t owner_of[8];
    int open[8] = {0};
    uint16_t *kv = kv_of(e, 40);
    attnd_error err;
    tu_rng r;
    uint64_t evicted = 0;
    tu_rng_init(&r, sparse ? "owner usage, sparse" : "owner usage");

    ck_assert_int_eq(attnd_engine_owner_set(e, ALICE, "alice", 0, 0, &err), ATTND_OK);
    for (int step = 0; step < (sparse ? 1200 : 400); step++) {
        int i = (int)tu_int(&r, 0, 7);
        if (!open[i]) {
            owner_of[i] = tu_int(&r, 0, 1) ? ALICE : BOB;
            create_for(e, owner_of[i], sparse ? i % 3 : 0, &r, &ids[i]);
            open[i] = 1;
            continue;
        }
        uint32_t layer = (uint32_t)tu_int(&r, 0, 2);
        switch (tu_int(&r, 0, 3)) {
        case 0: { /* a stream of one chunk, committed or aborted */
            attnd_engine_stage *sg;
            uint64_t n = (uint64_t)tu_int(&r, 1, 40);
            ck_assert_int_eq(attnd_engine_stage_open(e, &sg, &err), ATTND_OK);
            ck_assert_int_eq(attnd_engine_stage_append(sg, &ids[i], layer,
                                                       layer_len(e, &ids[i], layer), n,
                                                       ATTND_DTYPE_BF16, kv, &err),
                             ATTND_OK);
            if (tu_int(&r, 0, 1))
                ck_assert_int_eq(attnd_engine_stage_commit(sg, NULL, NULL, &err), ATTND_OK);
            attnd_engine_stage_close(sg);
            break;
        }
        case 1:
            ck_assert_int_eq(attend_new(e, &ids[i], layer, &err), ATTND_OK);
            break;
        case 2:
            if (sparse && tu_int(&r, 0, 49)) /* rarely: streaming needs long sessions */
                break;
            ck_assert_int_eq(attnd_engine_session_close(e, &ids[i], NULL, &err), ATTND_OK);
            open[i] = 0;
            break;
        default:
            break;
        }
        attnd_engine_stats pool, a, b;
        attnd_engine_get_stats(e, &pool);
        attnd_engine_owner_stats(e, ALICE, &a);
        attnd_engine_owner_stats(e, BOB, &b);
        ck_assert_uint_eq(a.pages_used + b.pages_used, pool.pages_used);
        ck_assert_uint_eq(a.pages_reserved + b.pages_reserved, pool.pages_reserved);
        ck_assert_uint_eq(a.sessions + b.sessions, pool.sessions);
        evicted = pool.pages_evicted;
    }
    if (sparse) /* streaming freed pages on the way */
        ck_assert_uint_gt(evicted, 0);
    for (int i = 0; i < 8; i++)
        if (open[i])
            ck_assert_int_eq(attnd_engine_session_close(e, &ids[i], NULL, &err), ATTND_OK);
    attnd_engine_stats a;
    attnd_engine_owner_stats(e, ALICE, &a);
    ck_assert_uint_eq(a.sessions, 0);
    ck_assert_uint_eq(a.pages_used, 0);
    ck_assert_uint_eq(a.pages_reserved, 0);
    free(kv);
    attnd_engine_destroy(e);
}

START_TEST(test_owner_usage_follows_every_page_and_ends_at_zero)
{
    usage_walk(0);
}
END_TEST

START_TEST(test_owner_usage_follows_sparse_sessions_page_by_page_and_ends_at_zero)
{
    usage_walk(1);
}
END_TEST

/* An owner's KV counts a policy's reservation: a streaming session
 * reserves its sink and window only, whatever max_tokens promises, and
 * the pages it frees come back to the owner, so it appends 20 times its
 * owner's quota; a topk-pages session reserving more than the quota is
 * refused naming max_tokens, nothing left behind. */
START_TEST(test_an_owners_quota_follows_a_policys_reservation_and_streamings_freed_pages)
{
    attnd_engine *e = make_engine(4 << 20);
    attnd_session_id id, t;
    attnd_engine_stats a;
    attnd_error err;
    uint16_t *kv = kv_of(e, 16);
    /* 40 pages; streaming's reservation: 3 layers x (1 sink page + 8 for
     * window and an Attend's new tokens + 1) = 30 */
    ck_assert_int_eq(attnd_engine_owner_set(e, ALICE, "alice", 0, 40 * 4096, &err), ATTND_OK);
    attnd_session_policy stream = {.dflt = {.kind = ATTND_POLICY_STREAMING, .sink = 16,
                                            .window = 64}};
    ck_assert_msg(attnd_engine_session_create_policy_owned(e, ALICE, 1 << 20, &stream, NULL, &id,
                                                           &err) == ATTND_OK, "%s", err.msg);
    attnd_engine_owner_stats(e, ALICE, &a);
    ck_assert_uint_eq(a.pages_reserved, 30);
    for (uint32_t step = 0; step < 50; step++) /* 800 tokens a layer: 150 pages in all */
        for (uint32_t l = 0; l < 3; l++)
            ck_assert_msg(attnd_engine_append(e, &id, l, 16 * step, 16, ATTND_DTYPE_BF16, kv,
                                              &err) == ATTND_OK, "step %u: %s", step, err.msg);
    attnd_engine_owner_stats(e, ALICE, &a);
    ck_assert_uint_le(a.pages_used, 3 * 10);
    ck_assert_uint_eq(a.pages_used + a.pages_reserved, 30); /* held pages redeem the promise */
    /* topk-pages reserves every page of max_tokens: 3 x 4 = 12 > 40 - 30 */
    attnd_session_policy topk = {.dflt = {.kind = ATTND_POLICY_TOPK_PAGES, .topk = 2}};
    ck_assert_int_eq(attnd_engine_session_create_policy_owned(e, ALICE, 64, &topk, NULL, &t,
                                                              &err),
                     ATTND_ERR_RESOURCE_EXHAUSTED);
    ck_assert_msg(strncmp(err.msg, "max_tokens", 10) == 0, "%s", err.msg);
    attnd_engine_owner_stats(e, ALICE, &a);
    ck_assert_uint_eq(a.sessions, 1);
    ck_assert_uint_eq(a.pages_used + a.pages_reserved, 30);
    ck_assert_int_eq(attnd_engine_session_create_policy_owned(e, ALICE, 48, &topk, NULL, &t,
                                                              &err),
                     ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_close(e, &t, NULL, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_close(e, &id, NULL, &err), ATTND_OK);
    attnd_engine_owner_stats(e, ALICE, &a);
    ck_assert_uint_eq(a.sessions + a.pages_used + a.pages_reserved, 0);
    free(kv);
    attnd_engine_destroy(e);
}
END_TEST

/* Idle expiry: with idle 0 every session nobody holds goes (one held by an
 * open stage stays); with a long idle none does. Pages come back and the
 * stats count them. */
START_TEST(test_idle_expiry_closes_the_sessions_nobody_holds_and_returns_their_pages)
{
    attnd_engine *e = make_engine(1 << 20);
    attnd_session_id a, b, held, got[8];
    attnd_engine_stats st, own;
    attnd_engine_stage *sg;
    uint16_t *kv = kv_of(e, 20);
    size_t n = 99;
    attnd_error err;

    ck_assert_int_eq(attnd_engine_session_create_owned(e, ALICE, 16, NULL, &a, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &b, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &held, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_append(e, &a, 0, 0, 20, ATTND_DTYPE_BF16, kv, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_stage_open(e, &sg, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_stage_append(sg, &held, 0, 0, 1, ATTND_DTYPE_BF16, kv, &err),
                     ATTND_OK);

    attnd_engine_reap_idle(e, 3600 * 1000, got, 8, &n);
    ck_assert_uint_eq(n, 0);
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.sessions, 3);

    attnd_engine_reap_idle(e, 0, got, 8, &n);
    ck_assert_uint_eq(n, 2);
    int saw_a = 0, saw_b = 0;
    for (size_t i = 0; i < n; i++) {
        saw_a |= memcmp(&got[i], &a, sizeof a) == 0;
        saw_b |= memcmp(&got[i], &b, sizeof b) == 0;
    }
    ck_assert(saw_a && saw_b);
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.sessions, 1);
    ck_assert_uint_eq(st.sessions_expired, 2);
    /* a held 2 pages in layer 0 (one from its reservation) and 2 reserved */
    ck_assert_uint_eq(st.pages_expired, 4);
    ck_assert_uint_eq(st.pages_reserved, 0);
    ck_assert_uint_eq(st.pages_used, 1); /* the stage's page */
    attnd_engine_owner_stats(e, ALICE, &own);
    ck_assert_uint_eq(own.sessions, 0);
    ck_assert_uint_eq(own.sessions_expired, 1);
    ck_assert_uint_eq(own.pages_used + own.pages_reserved, 0);
    /* an expired session is gone for every call */
    uint64_t len;
    ck_assert_int_eq(attnd_engine_length(e, &a, 0, &len, &err), ATTND_ERR_NOT_FOUND);

    /* the held one commits, and goes once nobody holds it */
    ck_assert_int_eq(attnd_engine_stage_commit(sg, NULL, NULL, &err), ATTND_OK);
    attnd_engine_stage_close(sg);
    attnd_engine_reap_idle(e, 0, got, 8, &n);
    ck_assert_uint_eq(n, 1);
    ck_assert_mem_eq(&got[0], &held, sizeof held);
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.sessions, 0);
    ck_assert_uint_eq(st.pages_used, 0);
    free(kv);
    attnd_engine_destroy(e);
}
END_TEST

static Suite *owner_suite(void)
{
    Suite *s = suite_create("owner");
    TCase *tc = tcase_create("owner");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_a_session_is_found_only_for_the_owner_that_created_it);
    tcase_add_test(tc, test_an_owner_past_its_session_limit_gets_resource_exhausted);
    tcase_add_test(tc,
                   test_an_owner_past_its_kv_limit_gets_resource_exhausted_and_nothing_changes);
    tcase_add_test(tc, test_owner_usage_follows_every_page_and_ends_at_zero);
    tcase_add_test(tc, test_owner_usage_follows_sparse_sessions_page_by_page_and_ends_at_zero);
    tcase_add_test(tc,
                   test_an_owners_quota_follows_a_policys_reservation_and_streamings_freed_pages);
    tcase_add_test(tc, test_idle_expiry_closes_the_sessions_nobody_holds_and_returns_their_pages);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(owner_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
