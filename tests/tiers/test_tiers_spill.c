/* The KV tier below memory, through a real attnd (tiny-gqa, pages of 16
 * tokens = 4 KiB, slots of 8 KiB): sessions beyond memory move to --kv-dir
 * and come back exact; the layers after the attended one are prefetched
 * (and are not with --kv-prefetch 0); what fits in no tier is
 * RESOURCE_EXHAUSTED with the figures; a page corrupted on disk fails its
 * session with DATA_LOSS naming it and no other session; a file size limit
 * (a full disk) is RESOURCE_EXHAUSTED, not a crash. Every output is
 * checked against the float64 reference of what the test sent. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "tiers_testutil.h"

static char dir[64];

static void teardown(void)
{
    cu_teardown();
    tt_rmdir(dir);
    dir[0] = '\0';
}

static attnd_tier_stats tiers(cu_seqs *s, const attnd_session_id *id)
{
    attnd_tier_stats t;
    attnd_error err;
    attnd_error_clear(&err);
    ck_assert_msg(attnd_client_get_tier_stats(s->c, id, &t, &err) == ATTND_OK, "stats: %s",
                  err.msg);
    return t;
}

/* n sessions of `tokens` in every layer, prefilled one stream each. */
static void open_prefilled(cu_seqs *s, uint32_t n, uint64_t tokens)
{
    static const uint32_t chunks[] = {24, 40, 0};
    cu_must_open(s, cu_must_connect(), n, ATTND_DTYPE_BF16);
    for (uint32_t i = 0; i < n; i++)
        cu_must_prefill(s, i, tokens, chunks);
}

static void decode_steps(cu_seqs *s, int steps, uint32_t batch)
{
    attnd_error err;
    attnd_error_clear(&err);
    for (int k = 0; k < steps; k++)
        for (uint32_t l = 0; l < s->m.n_layers; l++)
            for (uint32_t first = 0; first < s->n; first += batch) {
                tt_op op;
                tt_op_attend(s, &op, l, first, s->n - first < batch ? s->n - first : batch);
                attnd_status st = tt_op_send(s, &op, &err);
                ck_assert_msg(st == ATTND_OK, "decode: %s", err.msg);
                tt_op_mirror(s, &op, 1);
                tt_op_free(&op);
            }
}

/* 16 sessions of 100 tokens a layer: 336 pages, memory 64. */
START_TEST(test_sessions_beyond_memory_move_to_disk_and_attend_as_the_reference)
{
    const char *const extra[] = {"--kv-disk", "8Mi", NULL};
    cu_seqs s;
    tt_must_mkdir(dir);
    tt_must_start(dir, "256Ki", extra);
    open_prefilled(&s, 16, 100);
    decode_steps(&s, 2, 4);
    tt_must_check_all(&s, 4);
    attnd_tier_stats t = tiers(&s, NULL);
    ck_assert_str_eq(t.below, "disk");
    ck_assert_uint_eq(t.memory_pages_total, 64);
    ck_assert_uint_ge(t.pages_held, 16 * 3 * 7);
    ck_assert_uint_le(t.memory_pages_used, 64);
    ck_assert_uint_gt(t.pages_moved_down, 0);
    ck_assert_uint_gt(t.pages_moved_up, 0);
    ck_assert_uint_eq(t.pages_bad, 0);
    attnd_client *c = s.c;
    cu_seqs_close(&s);
    /* closed: their pages in every tier are free again, once no load in
     * flight holds them (prefetches are let go within milliseconds; 30 s
     * is a hang guard) */
    for (int waited = 0; waited < 30000; waited += 10) {
        t = tiers(&(cu_seqs){.c = c}, NULL);
        if (t.pages_held == 0)
            break;
        struct timespec ts = {0, 10000000L};
        nanosleep(&ts, NULL);
    }
    ck_assert_uint_eq(t.pages_held, 0);
    ck_assert_uint_eq(t.below_slots_used, 0);
    attnd_client_destroy(c);
}
END_TEST

/* Decode one session at a time over sessions that live on disk. */
static attnd_tier_stats decode_from_disk(const char *prefetch)
{
    cu_seqs s;
    const char *const extra[] = {"--kv-prefetch", prefetch, NULL};
    tt_must_start(dir, "256Ki", extra);
    open_prefilled(&s, 8, 100);
    decode_steps(&s, 2, 1);
    tt_must_check_all(&s, 1);
    attnd_tier_stats t = tiers(&s, NULL);
    tt_seqs_done(&s);
    return t;
}

START_TEST(test_decode_over_sessions_on_disk_prefetches_the_next_layers)
{
    tt_must_mkdir(dir);
    attnd_tier_stats t = decode_from_disk("4");
    ck_assert_uint_gt(t.pages_moved_up, 0);
    ck_assert_uint_gt(t.pages_prefetched, 0);
}
END_TEST

START_TEST(test_without_prefetch_each_layer_is_read_when_attended)
{
    tt_must_mkdir(dir);
    attnd_tier_stats t = decode_from_disk("0");
    ck_assert_uint_gt(t.pages_moved_up, 0);
    ck_assert_uint_eq(t.pages_prefetched, 0);
}
END_TEST

/* One Attend holds every session: 4 sessions of 13 pages a layer, so one
 * layer of all of them is 52 of the 64 memory pages and the prefetched
 * next layers (read for sessions the Attend holds locked) are what memory
 * must be taken back from. Layers in random order (decode's and not):
 * every Attend answers, exact. */
START_TEST(test_attends_holding_every_session_take_memory_back_from_their_prefetches)
{
    cu_seqs s;
    attnd_error err;
    attnd_error_clear(&err);
    tt_must_mkdir(dir);
    tt_must_start(dir, "256Ki", NULL);
    open_prefilled(&s, 4, 200);
    for (int k = 0; k < 60; k++) {
        tt_op op;
        uint32_t l = (uint32_t)(attnd_rng_next(&s.rng) % s.m.n_layers);
        tt_op_attend(&s, &op, l, 0, 4);
        attnd_status st = tt_op_send(&s, &op, &err);
        ck_assert_msg(st == ATTND_OK, "attend %d, layer %u: %s: %s", k, l,
                      attnd_status_string(st), err.msg);
        tt_op_mirror(&s, &op, 1);
        tt_op_free(&op);
    }
    tt_must_check_all(&s, 4);
    attnd_tier_stats t = tiers(&s, NULL);
    ck_assert_uint_gt(t.pages_moved_up, 0);
    tt_seqs_done(&s);
}
END_TEST

/* Memory 32 pages, disk 16 slots: 48 pages in all. */
START_TEST(test_what_fits_in_no_tier_is_resource_exhausted_with_the_figures)
{
    const char *const extra[] = {"--kv-disk", "128Ki", NULL};
    attnd_session_id id;
    attnd_error err;
    cu_seqs s;

    tt_must_mkdir(dir);
    tt_must_start(dir, "128Ki", extra);
    cu_must_open(&s, cu_must_connect(), 3, ATTND_DTYPE_BF16);
    attnd_error_clear(&err);
    /* 300 tokens: 19 pages in each of 3 layers */
    cu_assert_fails(attnd_client_create_session(s.c, NULL, 300, &id, NULL, &err), err,
                    ATTND_ERR_RESOURCE_EXHAUSTED, "max_tokens");
    ck_assert_msg(strstr(err.msg, "57 KV pages") && strstr(err.msg, "hold 48") &&
                      strstr(err.msg, "32 in memory"),
                  "figures missing: %s", err.msg);
    /* two sessions of 21 pages fit, a third does not */
    cu_must_prefill(&s, 0, 100, NULL);
    cu_must_prefill(&s, 1, 100, NULL);
    cu_assert_fails(cu_prefill(&s, 2, 100, NULL, &err), err, ATTND_ERR_RESOURCE_EXHAUSTED,
                    "every tier");
    ck_assert_msg(strstr(err.msg, "32 in memory + 16 in the tier below"), "figures: %s",
                  err.msg);
    /* nothing of it applied, the others intact */
    ck_assert_uint_eq(attnd_refcheck_len(&s.rc, 2, 0), 0);
    tt_must_check_all(&s, 1);
    attnd_tier_stats t = tiers(&s, NULL);
    ck_assert_uint_eq(t.pages_capacity, 48);
    ck_assert_uint_eq(t.pages_held, 42);
    tt_seqs_done(&s);
}
END_TEST

START_TEST(test_a_page_corrupted_on_disk_fails_its_session_only)
{
    attnd_error err;
    cu_seqs s;
    char hex[33];
    uint64_t offs[64];

    tt_must_mkdir(dir);
    tt_must_start(dir, "256Ki", NULL);
    open_prefilled(&s, 6, 100); /* 126 pages: the first sessions go to disk */
    attnd_tier_stats t = tiers(&s, &s.ids[0]);
    ck_assert_msg(t.session_memory_bytes == 0 && t.session_below_bytes > 0,
                  "session 0 is not wholly on disk (%llu bytes in memory)",
                  (unsigned long long)t.session_memory_bytes);
    size_t n = tt_slots_of(dir, t.below_slot_bytes, &s.ids[0], offs, 64);
    ck_assert_uint_eq(n, 21);
    tt_must_corrupt(dir, offs[n / 2]);

    attnd_error_clear(&err);
    cu_assert_fails(tt_check_one(&s, 0, &err), err, ATTND_ERR_DATA_LOSS,
                    tt_hex(&s.ids[0], hex));
    ck_assert_msg(strstr(err.msg, "checksum"), "%s", err.msg);
    /* every other session, on disk or not, is served exactly */
    for (uint32_t i = 1; i < s.n; i++) {
        attnd_status st = tt_check_one(&s, i, &err);
        ck_assert_msg(st == ATTND_OK, "session %u: %s", i, err.msg);
    }
    /* the lost one stays lost (any layer), until closed */
    cu_assert_fails(tt_check_one(&s, 0, &err), err, ATTND_ERR_DATA_LOSS, hex);
    ck_assert_uint_ge(tiers(&s, NULL).pages_bad, 1);
    ck_assert_int_eq(attnd_client_close_session(s.c, &s.ids[0], &err), ATTND_OK);
    tt_seqs_done(&s);
}
END_TEST

/* A file size limit of 128 KiB: 16 slots, then EFBIG (SIGXFSZ ignored). */
START_TEST(test_a_full_disk_is_resource_exhausted_and_the_server_keeps_serving)
{
    struct rlimit old, lim;
    attnd_error err;
    cu_seqs s;

    tt_must_mkdir(dir);
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 128 << 10;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0); /* the server inherits it */
    tt_must_start(dir, "128Ki", NULL);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    cu_must_open(&s, cu_must_connect(), 4, ATTND_DTYPE_BF16);
    attnd_error_clear(&err);
    /* 21 pages each: memory holds 32, the disk 16 before it fills */
    uint32_t ok = 0;
    attnd_status st = ATTND_OK;
    for (; ok < 4 && (st = cu_prefill(&s, ok, 100, NULL, &err)) == ATTND_OK; ok++)
        ;
    ck_assert_msg(st == ATTND_ERR_RESOURCE_EXHAUSTED, "expected RESOURCE_EXHAUSTED, got %s: %s",
                  attnd_status_string(st), err.msg);
    ck_assert_uint_ge(ok, 1);
    ck_assert_uint_lt(ok, 4);
    /* alive, and what it acknowledged is exact */
    for (uint32_t i = 0; i < ok; i++) {
        st = tt_check_one(&s, i, &err);
        ck_assert_msg(st == ATTND_OK, "session %u: %s", i, err.msg);
    }
    attnd_tier_stats t = tiers(&s, NULL);
    ck_assert_uint_ge(t.write_failures, 1);
    ck_assert_uint_le(t.below_slots, 16);
    /* room made by a close is used again */
    ck_assert_int_eq(attnd_client_close_session(s.c, &s.ids[0], &err), ATTND_OK);
    st = cu_prefill(&s, ok, 100, NULL, &err);
    ck_assert_msg(st == ATTND_OK, "after a close: %s", err.msg);
    tt_seqs_done(&s);
}
END_TEST

static Suite *spill_suite(void)
{
    Suite *su = suite_create("tiers_spill");
    TCase *tc = tcase_create("spill");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_sessions_beyond_memory_move_to_disk_and_attend_as_the_reference);
    tcase_add_test(tc, test_decode_over_sessions_on_disk_prefetches_the_next_layers);
    tcase_add_test(tc, test_without_prefetch_each_layer_is_read_when_attended);
    tcase_add_test(tc, test_attends_holding_every_session_take_memory_back_from_their_prefetches);
    tcase_add_test(tc, test_what_fits_in_no_tier_is_resource_exhausted_with_the_figures);
    tcase_add_test(tc, test_a_page_corrupted_on_disk_fails_its_session_only);
    tcase_add_test(tc, test_a_full_disk_is_resource_exhausted_and_the_server_keeps_serving);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(spill_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
