/* Sparse policies on a durable worker through a real attnd (--durable;
 * worker/TIERS.md, "Sparse policies and the tiers"): the log and the
 * checkpoints record each session's policy table and the pages streaming
 * freed, and recovery rebuilds topk-pages key bounds from the pages' keys,
 * so a session recovered after kill -9 attends exactly as before: the same
 * pages chosen, the same output bits, outputs equal to the float64
 * reference over exactly the pages attended; every acknowledged append is
 * there after a crash at any point of a stream of appends, and streaming
 * goes on freeing pages after the restart. */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tiers_testutil.h"

#define PS 16
#define SINK 16
#define WINDOW 64
#define TOPK 4
#define MAX_LISTS 64
#define MAX_CHOSEN 1024
/* an Attend needs its layer of every session it names in memory: the crash
 * loop grows 3 sessions as fast as the machine sends appends */
#define MEM "4Mi"

static char dir[64];

static void teardown(void)
{
    cu_teardown();
    tt_rmdir(dir);
    dir[0] = '\0';
}

static const char *const flags[] = {"--durable", "--durable-segment", "1Mi",
                                    "--durable-checkpoint", "128Ki", "--kv-disk", "32Mi", NULL};

/* tiny-gqa (3 layers, 2 KV heads): layer 0 streams (every head: pages
 * freed), layer 1 is topk-pages, layer 2 topk-pages on KV head 0 and
 * streaming on KV head 1 (nothing freed, bounds kept). */
static const attnd_sparse_policy streaming = {.kind = ATTND_SPARSE_STREAMING, .sink = SINK,
                                              .window = WINDOW};
static const attnd_sparse_rule rules[2] = {
    {.layer_begin = 1, .layer_end = 3,
     .policy = {.kind = ATTND_SPARSE_TOPK_PAGES, .sink = SINK, .topk_pages = TOPK}},
    {.layer_begin = 2, .layer_end = 3, .head_begin = 1, .head_end = 2,
     .policy = {.kind = ATTND_SPARSE_STREAMING, .sink = SINK, .window = WINDOW}},
};

/* The cu_seqs' n sessions (no KV yet) replaced by ones with the policies. */
static void open_sparse(cu_seqs *s, uint32_t n)
{
    attnd_error err;
    cu_must_open(s, cu_must_connect(), n, ATTND_DTYPE_BF16);
    for (uint32_t i = 0; i < s->n; i++) {
        ck_assert_int_eq(attnd_client_close_session(s->c, &s->ids[i], &err), ATTND_OK);
        ck_assert_msg(attnd_client_create_session_policy(s->c, "", 0, &streaming, rules, 2,
                                                         &s->ids[i], NULL, &err) == ATTND_OK,
                      "%s", err.msg);
    }
}

/* The pages st's reply reported for each session and KV head: layer 0's
 * (and layer 2's KV head 1) exactly the sink and window pages, the
 * topk-pages lists TOPK pages with the sink and newest page; then the
 * outputs against the float64 reference over exactly those pages. */
static void check_chosen(cu_seqs *s, const cu_step *st, const attnd_sparse_args *sp,
                         uint32_t layer)
{
    const attnd_model_info *m = &s->m;
    for (uint32_t i = 0; i < st->a.n_seqs; i++) {
        const uint64_t len = attnd_refcheck_len(&s->rc, st->first + i, layer);
        const uint64_t np = (len + PS - 1) / PS;
        for (uint32_t h = 0; h < m->n_kv_heads; h++) {
            uint32_t k = i * sp->chosen_groups + (sp->chosen_groups == 1 ? 0 : h);
            const uint64_t *ch = sp->chosen + sp->chosen_indptr[k];
            const uint32_t n = sp->chosen_indptr[k + 1] - sp->chosen_indptr[k];
            if (layer == 0 || (layer == 2 && h == 1)) { /* sink, then the last WINDOW tokens */
                uint64_t first = len > WINDOW ? (len - WINDOW) / PS : 0, want = 0;
                for (uint64_t p = 0; p < np; p++)
                    if (p < (SINK + PS - 1) / PS || p >= first) {
                        ck_assert_uint_lt(want, n);
                        ck_assert_uint_eq(ch[want], p);
                        want++;
                    }
                ck_assert_uint_eq(want, n);
            } else if (np > TOPK) {
                ck_assert_uint_eq(n, TOPK);
                ck_assert_uint_eq(ch[0], 0);
                ck_assert_uint_eq(ch[n - 1], np - 1);
            }
        }
    }
    tt_must_check_reported(s, st, sp, layer, PS);
}

/* What one probe of every layer saw: the chosen lists and output bytes. */
typedef struct probe {
    uint32_t indptr[3][MAX_LISTS];
    uint64_t chosen[3][MAX_CHOSEN];
    size_t n_lists[3], n_chosen[3];
    unsigned char *out[3];
    size_t out_bytes;
} probe;

/* Attend every layer for all sessions (fresh queries, no new KV), check
 * against the reference; into p (if given). */
static void probe_all(cu_seqs *s, probe *p)
{
    attnd_error err;
    for (uint32_t l = 0; l < s->m.n_layers; l++) {
        uint32_t ip[MAX_LISTS];
        uint64_t ch[MAX_CHOSEN];
        attnd_sparse_args sp = {.return_pages = 1, .chosen_indptr = ip,
                                .chosen_indptr_capacity = MAX_LISTS, .chosen = ch,
                                .chosen_capacity = MAX_CHOSEN};
        cu_step st;
        cu_step_make(s, &st, l, 0, s->n, 1, 0, 0, ATTND_DTYPE_F32);
        attnd_status rc = attnd_client_attend_sparse(s->c, &st.a, &sp, &err);
        ck_assert_msg(rc == ATTND_OK, "layer %u: %s: %s", l, attnd_status_string(rc), err.msg);
        check_chosen(s, &st, &sp, l);
        if (p) {
            memcpy(p->indptr[l], ip, sizeof ip);
            memcpy(p->chosen[l], ch, sizeof ch);
            p->n_lists[l] = sp.n_chosen_lists;
            p->n_chosen[l] = sp.n_chosen;
            p->out_bytes = st.out_bytes;
            p->out[l] = malloc(st.out_bytes);
            ck_assert_ptr_nonnull(p->out[l]);
            memcpy(p->out[l], st.out, st.out_bytes);
        }
        cu_step_free(&st);
    }
}

static void probe_free(probe *p)
{
    for (int l = 0; l < 3; l++)
        free(p->out[l]);
}

/* Appends that keep every layer going: streams and Attends with new KV
 * (their outputs are not dense: not checked here, probe_all does). */
static void grow(cu_seqs *s, int ops)
{
    attnd_error err;
    for (int k = 0; k < ops; k++) {
        tt_op op;
        uint64_t r = attnd_rng_next(&s->rng);
        if (k % 2 == 0)
            tt_op_stream(s, &op, 0, s->n, 48);
        else
            tt_op_attend(s, &op, (uint32_t)(r >> 16) % s->m.n_layers, 0, s->n);
        ck_assert_msg(tt_op_send(s, &op, &err) == ATTND_OK, "grow: %s", err.msg);
        tt_op_mirror(s, &op, 0);
        tt_op_free(&op);
    }
}

/* An AppendKV stream whose second chunk is refused (a gap): the first, of
 * keys far larger than any other, was staged into the last page of layer
 * 1 of session 0 and is aborted with the stream. */
static void aborted_stream(cu_seqs *s)
{
    const size_t elems = s->m.kv_token_elems;
    uint16_t big[4 * 128], small[128];
    attnd_error err;
    ck_assert_uint_le(elems, 128);
    for (size_t i = 0; i < 4 * elems; i++)
        big[i] = i % 2 ? 0x4220 : 0xc220; /* bf16 40 and -40 */
    memset(small, 0, sizeof small);
    uint64_t len = attnd_refcheck_len(&s->rc, 0, 1);
    ck_assert_uint_ne(len % PS, 0);
    attnd_kv_chunk ch[2] = {
        {.session = s->ids[0], .layer = 1, .start = len, .n_tokens = 4,
         .kv_token_elems = (uint32_t)elems, .dtype = ATTND_DTYPE_BF16, .data = big},
        {.session = s->ids[0], .layer = 1, .start = len + 9, .n_tokens = 1,
         .kv_token_elems = (uint32_t)elems, .dtype = ATTND_DTYPE_BF16, .data = small},
    };
    ck_assert_int_eq(attnd_client_append_kv(s->c, ch, 2, NULL, &err),
                     ATTND_ERR_FAILED_PRECONDITION);
}

/* Two sessions: streaming, topk-pages and mixed layers grown over several
 * checkpoints (streaming's freed pages in the manifests), an aborted
 * stream's keys staged into a topk-pages page, then probed; kill -9; the
 * same probe after the restart chooses the same pages with the same output
 * bits; the worker's pages are the same; appends go on (streaming freeing
 * pages as before) and stay exact. */
START_TEST(test_a_streaming_and_topk_pages_session_attends_as_before_kill_9)
{
    cu_seqs s;
    attnd_error err;
    tt_must_mkdir(dir);
    tt_must_start(dir, MEM, flags);
    open_sparse(&s, 2);
    while (attnd_refcheck_len(&s.rc, 0, 0) <= 8 * WINDOW || /* pages were freed */
           attnd_refcheck_len(&s.rc, 0, 1) % PS == 0)
        grow(&s, 1);
    aborted_stream(&s);
    grow(&s, 4); /* the aborted keys' page is no longer the newest */
    attnd_tier_stats t0;
    ck_assert_int_eq(attnd_client_get_tier_stats(s.c, NULL, &t0, &err), ATTND_OK);
    ck_assert_uint_gt(t0.checkpoints, 1);
    attnd_rng saved = s.rng;
    probe before = {0}, after = {0};
    probe_all(&s, &before);
    ck_assert_int_eq(attnd_client_get_tier_stats(s.c, NULL, &t0, &err), ATTND_OK);

    tt_must_restart(&s, dir, MEM, flags);
    attnd_tier_stats t1;
    ck_assert_int_eq(attnd_client_get_tier_stats(s.c, NULL, &t1, &err), ATTND_OK);
    ck_assert_uint_eq(t1.sessions_recovered, 2);
    ck_assert_uint_eq(t1.sessions_lost, 0);
    ck_assert_uint_eq(t1.pages_held, t0.pages_held);
    s.rng = saved;
    probe_all(&s, &after);
    for (uint32_t l = 0; l < 3; l++) {
        ck_assert_uint_eq(after.n_lists[l], before.n_lists[l]);
        ck_assert_uint_eq(after.n_chosen[l], before.n_chosen[l]);
        ck_assert_msg(memcmp(after.indptr[l], before.indptr[l],
                             sizeof(uint32_t) * (before.n_lists[l] + 1)) == 0 &&
                          memcmp(after.chosen[l], before.chosen[l],
                                 sizeof(uint64_t) * before.n_chosen[l]) == 0,
                      "layer %u: other pages chosen after the restart", l);
        ck_assert_msg(memcmp(after.out[l], before.out[l], before.out_bytes) == 0,
                      "layer %u: other output bits after the restart", l);
    }
    probe_free(&before);
    probe_free(&after);
    /* appends go on; streaming keeps freeing; still exact */
    grow(&s, 8);
    probe_all(&s, NULL);
    tt_seqs_done(&s);
}
END_TEST

/* 8 rounds of appends to sparse sessions cut by a SIGKILL 2-40 ms in; the
 * cut one sent again applies whole or is FAILED_PRECONDITION whole; then
 * every layer attends exactly its policy's pages of the acknowledged
 * appends (float64 reference over the pages reported). */
START_TEST(test_kill_9_mid_stream_loses_no_acknowledged_append_of_a_sparse_session)
{
    cu_seqs s;
    attnd_error err;
    tt_must_mkdir(dir);
    tt_must_start(dir, MEM, flags);
    open_sparse(&s, 3);
    grow(&s, 6);
    for (int round = 0; round < 8; round++) {
        tt_op op;
        tt_must_cut(&s, &op, round, 24, 0);
        tt_must_start(dir, MEM, flags);
        tt_must_reconnect(&s);
        tt_must_resend(&s, &op, round, 0);
        probe_all(&s, NULL);
    }
    attnd_tier_stats t;
    ck_assert_int_eq(attnd_client_get_tier_stats(s.c, NULL, &t, &err), ATTND_OK);
    ck_assert_uint_eq(t.sessions_recovered, 3);
    ck_assert_uint_eq(t.sessions_lost, 0);
    tt_seqs_done(&s);
}
END_TEST

static attnd_tier_stats tiers(cu_seqs *s, const attnd_session_id *id)
{
    attnd_tier_stats t;
    attnd_error err;
    ck_assert_int_eq(attnd_client_get_tier_stats(s->c, id, &t, &err), ATTND_OK);
    return t;
}

/* Session 0's topk-pages layer 0 (18 pages) and one query; the sparse
 * Attend's lists and output bytes into ip / ch / out. */
static void attend_kept(cu_seqs *s, cu_step *st, uint32_t *ip, uint64_t *ch, size_t *n_p,
                        void *out)
{
    attnd_error err;
    attnd_sparse_args sp = {.return_pages = 1, .chosen_indptr = ip,
                            .chosen_indptr_capacity = MAX_LISTS, .chosen = ch,
                            .chosen_capacity = MAX_CHOSEN};
    memset(st->out, 0xA5, st->out_bytes);
    ck_assert_msg(attnd_client_attend_sparse(s->c, &st->a, &sp, &err) == ATTND_OK, "%s",
                  err.msg);
    ck_assert_uint_eq(sp.chosen_groups, s->m.n_kv_heads);
    tt_must_check_reported(s, st, &sp, 0, PS);
    *n_p = sp.n_chosen;
    memcpy(out, st->out, st->out_bytes);
}

/* A topk-pages layer resident without slot copies, copied to slots by a
 * checkpoint, then sent below by other sessions' decode (its pages leave
 * memory without a write: their copies are there) and read back: the
 * same query chooses the same pages with the same output bits (the key
 * bounds went below with the pages, not only with pages written then). */
START_TEST(test_a_checkpointed_topk_pages_layer_chooses_the_same_pages_after_a_trip_below)
{
    static const char *const ck_flags[] = {"--durable", "--durable-segment", "1Mi",
                                           "--durable-checkpoint", "64Ki", "--kv-disk", "32Mi",
                                           NULL};
    static const uint32_t chunks[] = {24, 40, 0};
    const attnd_sparse_policy topk = {.kind = ATTND_SPARSE_TOPK_PAGES, .sink = SINK,
                                      .topk_pages = TOPK};
    cu_seqs s;
    attnd_error err;
    tt_must_mkdir(dir);
    tt_must_start(dir, "512Ki", ck_flags); /* 128 pages */
    cu_must_open(&s, cu_must_connect(), 4, ATTND_DTYPE_BF16);
    ck_assert_int_eq(attnd_client_close_session(s.c, &s.ids[0], &err), ATTND_OK);
    ck_assert_msg(attnd_client_create_session_policy(s.c, "", 0, &topk, NULL, 0, &s.ids[0], NULL,
                                                     &err) == ATTND_OK, "%s", err.msg);
    for (uint32_t i = 1; i < 4; i++) /* 75 pages each: they fill memory */
        cu_must_prefill(&s, i, 400, chunks);
    tt_must_append_layer(&s, 0, 0, 18 * PS - 5); /* last: resident, no slot copies */
    ck_assert_uint_eq(tiers(&s, &s.ids[0]).session_below_bytes, 0);
    cu_step st;
    cu_step_make(&s, &st, 0, 0, 1, 1, 0, 1, ATTND_DTYPE_F32);
    uint32_t ip0[MAX_LISTS], ip1[MAX_LISTS];
    static uint64_t ch0[MAX_CHOSEN], ch1[MAX_CHOSEN];
    size_t n0, n1;
    void *out0 = malloc(st.out_bytes), *out1 = malloc(st.out_bytes);
    ck_assert(out0 && out1);
    attend_kept(&s, &st, ip0, ch0, &n0, out0);
    /* two checkpoints begun after the Attend: the later copied its full
     * pages (session 1 writes the log that calls them) */
    const uint64_t c0 = tiers(&s, NULL).checkpoints;
    for (int k = 0; k < 1000 && tiers(&s, NULL).checkpoints < c0 + 2; k++) {
        tt_must_append_layer(&s, 1, (uint32_t)k % 3, 16); /* 4 KiB of log */
        struct timespec ts = {0, 10000000L};
        nanosleep(&ts, NULL);
    }
    ck_assert_uint_ge(tiers(&s, NULL).checkpoints, c0 + 2);
    ck_assert_uint_gt(tiers(&s, &s.ids[0]).session_below_bytes, 0);
    /* the others decode every layer twice: session 0, the coldest, goes
     * below whole */
    for (int k = 0; k < 2; k++)
        for (uint32_t l = 0; l < s.m.n_layers; l++) {
            cu_step o;
            attnd_refcheck_result res = {0};
            cu_step_make(&s, &o, l, 1, 3, 1, 0, 0, ATTND_DTYPE_F32);
            ck_assert_msg(attnd_client_attend(s.c, &o.a, &err) == ATTND_OK, "%s", err.msg);
            ck_assert_int_eq(cu_step_commit(&s, &o, &res), 0);
            ck_assert_msg(res.max_err <= cu_bound(s.dt), "rel err %g", res.max_err);
            cu_step_free(&o);
        }
    attnd_tier_stats t = tiers(&s, &s.ids[0]);
    ck_assert_msg(t.session_memory_bytes == 0, "session 0 still has %llu bytes in memory",
                  (unsigned long long)t.session_memory_bytes);
    attend_kept(&s, &st, ip1, ch1, &n1, out1);
    ck_assert_uint_eq(n1, n0);
    ck_assert_msg(memcmp(ip1, ip0, sizeof(uint32_t) * (s.m.n_kv_heads + 1)) == 0 &&
                      memcmp(ch1, ch0, sizeof(uint64_t) * n0) == 0,
                  "other pages chosen after the trip below");
    ck_assert_msg(memcmp(out1, out0, st.out_bytes) == 0, "other output bits after the trip below");
    free(out0);
    free(out1);
    cu_step_free(&st);
    tt_seqs_done(&s);
}
END_TEST

static Suite *sparse_suite(void)
{
    Suite *su = suite_create("tiers_sparse");
    TCase *tc = tcase_create("durable");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, test_a_streaming_and_topk_pages_session_attends_as_before_kill_9);
    tcase_add_test(tc, test_kill_9_mid_stream_loses_no_acknowledged_append_of_a_sparse_session);
    tcase_add_test(tc,
                   test_a_checkpointed_topk_pages_layer_chooses_the_same_pages_after_a_trip_below);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(sparse_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
