/* Client suite of sparse attention through the pipelined forms a serving
 * engine uses (gRPC; again over UCX as test_ucx_sparse_pipelined): async
 * calls of two micro-batches in flight at once
 * (attnd_client_attend_sparse_async) and an AttendStream
 * (attnd_stream_attend_sparse). A TidalDecode loop (layer 0 topk-pages
 * returns its pages, layers 1 and 2 are given them) with every output
 * checked against the float64 reference over the pages reported; bad
 * sparse arguments refused by every form with the blocking call's status
 * and message, nothing appended; return_pages on a full layer. */
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

/* One micro-batch of the pipelined loops: sessions [first, first + 2),
 * its step and sparse arguments in flight, and the pages its layer 0
 * chose (ip0 / ch0), given to its later layers. */
typedef struct mbatch {
    uint32_t first;
    cu_step st;
    attnd_sparse_args sp;
    attnd_call *call;
    uint32_t ip0[16], ip[16];
    uint64_t ch0[256], ch[256];
    uint32_t groups0;
    size_t n0;
} mbatch;

/* Make b's step of `layer` and its sparse arguments: return_pages always;
 * layers after 0 are given the pages layer 0 chose. */
static void mb_make(mbatch *b, uint32_t layer)
{
    cu_step_make(&g_s, &b->st, layer, b->first, 2, 1, 1, 0, ATTND_DTYPE_INVALID);
    b->sp = (attnd_sparse_args){.return_pages = 1,
                                .chosen_indptr = layer ? b->ip : b->ip0,
                                .chosen_indptr_capacity = 16,
                                .chosen = layer ? b->ch : b->ch0,
                                .chosen_capacity = 256};
    if (layer) {
        b->sp.given_groups = b->groups0;
        b->sp.given_indptr = b->ip0;
        b->sp.given_idx = b->ch0;
        b->sp.n_given_idx = b->n0;
    }
}

/* After b's call of `layer` succeeded: what it attended is layer 0's
 * choice (a quarter of the pages, the sink and the newest page; on later
 * layers exactly the pages given), and its outputs equal the float64
 * reference over those pages. */
static void mb_check(mbatch *b, uint32_t layer, attnd_refcheck_result *res)
{
    const attnd_sparse_args *sp = &b->sp;
    ck_assert_uint_eq(sp->chosen_groups, g_s.m.n_kv_heads);
    ck_assert_uint_eq(sp->n_chosen_lists, 2 * g_s.m.n_kv_heads);
    if (layer == 0) {
        b->groups0 = sp->chosen_groups;
        b->n0 = sp->n_chosen;
        uint64_t len = attnd_refcheck_len(&g_s.rc, b->first, 0) + 1;
        uint32_t np = (uint32_t)((len + PS - 1) / PS);
        ck_assert_uint_eq(b->ip0[1] - b->ip0[0], (np + 3) / 4);
        ck_assert_uint_eq(b->ch0[0], 0);                  /* the sink page */
        ck_assert_uint_eq(b->ch0[b->ip0[1] - 1], np - 1); /* the newest page */
    } else {
        ck_assert_uint_eq(sp->n_chosen, b->n0);
        ck_assert(memcmp(b->ip, b->ip0, (sp->n_chosen_lists + 1) * sizeof b->ip[0]) == 0);
        ck_assert(memcmp(b->ch, b->ch0, sp->n_chosen * sizeof b->ch[0]) == 0);
    }
    for (uint32_t i = 0; i < 2; i++)
        ck_assert_int_eq(attnd_refcheck_append(&g_s.rc, b->first + i, layer, 1, g_s.dt,
                                               (const char *)b->st.kv + i * b->st.kv_bytes / 2),
                         0);
    cu_check_chosen(&g_s, &b->st, sp, layer, res);
    cu_step_free(&b->st);
}

/* Four sessions in two micro-batches, topk-pages on layer 0 and
 * given-pages on layers 1 and 2, prefilled to different lengths. */
static void open_pipeline(mbatch mb[2])
{
    attnd_sparse_policy p = {.kind = ATTND_SPARSE_TOPK_PAGES, .sink = 16, .topk_fraction = 0.25f};
    static const uint64_t len[4] = {300, 517, 410, 263};
    cu_open_policy(&g_s, g_c, &p, 4);
    for (uint32_t i = 0; i < 4; i++)
        cu_must_prefill(&g_s, i, len[i], NULL);
    memset(mb, 0, 2 * sizeof *mb);
    mb[1].first = 2;
}

static void mb_start(mbatch *b, uint32_t layer)
{
    attnd_error err;
    mb_make(b, layer);
    ck_assert_msg(attnd_client_attend_sparse_async(g_c, &b->st.a, &b->sp, &b->call, &err) ==
                      ATTND_OK, "%s", err.msg);
}

static void mb_wait(mbatch *b, uint32_t layer, attnd_refcheck_result *res)
{
    attnd_error err;
    attnd_status rc = attnd_call_wait(b->call, &err);
    b->call = NULL;
    ck_assert_msg(rc == ATTND_OK, "layer %u, sessions %u..: %s", layer, b->first, err.msg);
    mb_check(b, layer, res);
}

/* TidalDecode pipelined the way a serving engine runs it: two
 * micro-batches always in flight; when micro-batch A's layer l is done,
 * its layer l + 1 starts with the pages A's layer 0 returned while B's
 * layer l is still out. Every output against float64 over the pages
 * reported, every later layer attending exactly layer 0's pages. */
START_TEST(test_pages_chosen_by_an_async_call_are_given_to_the_next_layers_pipelined)
{
    mbatch mb[2];
    attnd_refcheck_result res = {0};
    open_pipeline(mb);
    const uint32_t L = g_s.m.n_layers;
    for (int step = 0; step < 3; step++) {
        mb_start(&mb[0], 0);
        mb_start(&mb[1], 0);
        for (uint32_t layer = 0; layer < L; layer++)
            for (int k = 0; k < 2; k++) {
                mb_wait(&mb[k], layer, &res);
                if (layer + 1 < L)
                    mb_start(&mb[k], layer + 1);
            }
    }
    ck_assert_msg(res.max_err <= cu_bound(g_s.dt), "max error %g", res.max_err);
    ck_assert_uint_eq(res.rows, 3 * L * 4 * g_s.m.n_q_heads);
    attnd_error err;
    attnd_stats stats;
    ck_assert_int_eq(attnd_client_get_stats(g_c, &stats, NULL, &err), ATTND_OK);
    ck_assert_uint_eq(stats.select_calls, 3 * 2); /* layer 0 of each micro-batch */
}
END_TEST

/* The same loop over one AttendStream: the micro-batches' requests in
 * turn, layer by layer, on one open call. */
START_TEST(test_pages_chosen_on_a_stream_are_given_to_the_next_layers_on_it)
{
    mbatch mb[2];
    attnd_refcheck_result res = {0};
    attnd_stream *stream;
    attnd_error err;
    open_pipeline(mb);
    const uint32_t L = g_s.m.n_layers;
    ck_assert_msg(attnd_client_stream_open(g_c, &stream, &err) == ATTND_OK, "%s", err.msg);
    for (int step = 0; step < 3; step++)
        for (uint32_t layer = 0; layer < L; layer++)
            for (int k = 0; k < 2; k++) {
                mb_make(&mb[k], layer);
                ck_assert_msg(attnd_stream_attend_sparse(stream, &mb[k].st.a, &mb[k].sp, &err) ==
                                  ATTND_OK, "layer %u: %s", layer, err.msg);
                mb_check(&mb[k], layer, &res);
            }
    ck_assert_msg(attnd_stream_close(stream, &err) == ATTND_OK, "%s", err.msg);
    ck_assert_msg(res.max_err <= cu_bound(g_s.dt), "max error %g", res.max_err);
    ck_assert_uint_eq(res.rows, 3 * L * 4 * g_s.m.n_q_heads);
}
END_TEST

/* Run the sparse Attend (st, sp) as a blocking call, an async call and on
 * a fresh AttendStream; every form must fail with `want`, the same message
 * naming `field`, write nothing into the results, and append nothing. A
 * request refused before sending (client_side) leaves the stream usable:
 * a plain Attend on it then works; one the server refused ends it. */
static void refuse_everywhere(cu_step *st, attnd_sparse_args *sp, attnd_status want,
                              const char *field, int client_side)
{
    attnd_error e0, e1, e2;
    attnd_call *call = NULL;
    attnd_stream *stream;

    cu_assert_fails(attnd_client_attend_sparse(g_c, &st->a, sp, &e0), e0, want, field);
    ck_assert(cu_step_untouched(st));

    attnd_status rc = attnd_client_attend_sparse_async(g_c, &st->a, sp, &call, &e1);
    if (client_side) {
        ck_assert(call == NULL);
    } else {
        ck_assert_msg(rc == ATTND_OK, "%s", e1.msg); /* refused when the reply comes */
        rc = attnd_call_wait(call, &e1);
    }
    cu_assert_fails(rc, e1, want, field);
    ck_assert_str_eq(e1.msg, e0.msg);
    ck_assert(cu_step_untouched(st));

    ck_assert_int_eq(attnd_client_stream_open(g_c, &stream, &e2), ATTND_OK);
    cu_assert_fails(attnd_stream_attend_sparse(stream, &st->a, sp, &e2), e2, want, field);
    ck_assert_str_eq(e2.msg, e0.msg);
    ck_assert(cu_step_untouched(st));
    cu_step plain;
    cu_step_make(&g_s, &plain, 0, 0, 1, 1, 0, 0, ATTND_DTYPE_INVALID);
    if (client_side) {
        ck_assert_msg(attnd_stream_attend(stream, &plain.a, &e2) == ATTND_OK, "%s", e2.msg);
        ck_assert_msg(attnd_stream_close(stream, &e2) == ATTND_OK, "%s", e2.msg);
    } else { /* the stream ended with the refusal */
        cu_assert_fails(attnd_stream_attend(stream, &plain.a, &e2), e2, want, field);
        cu_assert_fails(attnd_stream_close(stream, &e2), e2, want, field);
    }
    cu_step_free(&plain);
}

/* Bad sparse arguments through every form: the blocking call's
 * INVALID_ARGUMENT and message, from the async call's wait and from the
 * stream, nothing appended (the sessions then decode on at the same
 * positions). Layer 0 is full (dense), layers 1 and 2 given-pages. */
START_TEST(test_bad_sparse_arguments_are_refused_alike_by_async_calls_and_streams)
{
    attnd_sparse_policy full = {.kind = ATTND_SPARSE_FULL};
    attnd_error err;
    cu_open_policy(&g_s, g_c, &full, 2);
    cu_must_prefill(&g_s, 0, 100, NULL); /* 7 pages after the step's token */
    cu_must_prefill(&g_s, 1, 40, NULL);  /* 3 */
    static const struct {
        uint32_t layer, groups, indptr[7];
        uint64_t idx[4];
        const char *field;
    } bad[] = {
        {0, 1, {0, 1, 2}, {0, 1}, "given_idx[0]"},  /* a full layer takes no indices */
        {1, 1, {0, 1, 2}, {0, 3}, "given_idx[1]"},  /* session 1 has 3 pages */
        {1, 1, {0, 2, 3}, {4, 2, 0}, "given_idx[1]"}, /* not ascending */
        {1, 0, {0}, {0}, "given_idx"},               /* a given layer without indices */
        {1, 3, {0, 1, 1, 1, 1, 1, 1}, {0}, "given_groups"}, /* tiny-gqa has 2 KV heads */
        {1, 1, {1, 1, 1}, {0}, "given_indptr"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        cu_step st;
        cu_step_make(&g_s, &st, bad[k].layer, 0, 2, 1, 1, 1, ATTND_DTYPE_INVALID);
        attnd_sparse_args sp = {.given_groups = bad[k].groups, .given_indptr = bad[k].indptr,
                                .given_idx = bad[k].idx,
                                .n_given_idx = bad[k].groups ? bad[k].indptr[2 * bad[k].groups] : 0};
        refuse_everywhere(&st, &sp, ATTND_ERR_INVALID_ARGUMENT, bad[k].field, 0);
        cu_step_free(&st);
    }
    /* refused before sending: NULL lists and buffers */
    cu_step st;
    cu_step_make(&g_s, &st, 1, 0, 2, 1, 1, 1, ATTND_DTYPE_INVALID);
    attnd_sparse_args sp = {.given_groups = 1, .n_given_idx = 2};
    refuse_everywhere(&st, &sp, ATTND_ERR_INVALID_ARGUMENT, "given_indptr", 1);
    uint32_t ip[3] = {0, 1, 2};
    sp.given_indptr = ip;
    refuse_everywhere(&st, &sp, ATTND_ERR_INVALID_ARGUMENT, "given_idx", 1);
    uint64_t idx[2] = {2, 0};
    sp.given_idx = idx;
    sp.return_pages = 1;
    sp.chosen_indptr_capacity = 3;
    refuse_everywhere(&st, &sp, ATTND_ERR_INVALID_ARGUMENT, "chosen_indptr", 1);
    cu_step_free(&st);

    /* nothing was appended: layer 1 still at 100 / 40 tokens; a reply
     * larger than the chosen buffers fails INVALID_ARGUMENT naming them
     * (after the call, which did attend: no new KV in it) */
    cu_step_make(&g_s, &st, 1, 0, 2, 1, 0, 0, ATTND_DTYPE_INVALID);
    uint32_t cip[3];
    uint64_t cch[1];
    sp = (attnd_sparse_args){.given_groups = 1, .given_indptr = ip, .given_idx = idx,
                             .n_given_idx = 2, .return_pages = 1, .chosen_indptr = cip,
                             .chosen_indptr_capacity = 3, .chosen = cch, .chosen_capacity = 1};
    attnd_call *call;
    ck_assert_int_eq(attnd_client_attend_sparse_async(g_c, &st.a, &sp, &call, &err), ATTND_OK);
    cu_assert_fails(attnd_call_wait(call, &err), err, ATTND_ERR_INVALID_ARGUMENT,
                    "chosen_capacity");
    attnd_stream *stream;
    ck_assert_int_eq(attnd_client_stream_open(g_c, &stream, &err), ATTND_OK);
    cu_assert_fails(attnd_stream_attend_sparse(stream, &st.a, &sp, &err), err,
                    ATTND_ERR_INVALID_ARGUMENT, "chosen_capacity");
    attnd_stream_close(stream, NULL);
    cu_step_free(&st);
    cu_step_make(&g_s, &st, 1, 0, 2, 1, 1, 0, ATTND_DTYPE_INVALID);
    ck_assert_uint_eq(st.pos[0], 100);
    ck_assert_uint_eq(st.pos[1], 40);
    sp = (attnd_sparse_args){.given_groups = 1, .given_indptr = ip, .given_idx = idx,
                             .n_given_idx = 2};
    ck_assert_int_eq(attnd_client_attend_sparse_async(g_c, &st.a, &sp, &call, &err), ATTND_OK);
    ck_assert_msg(attnd_call_wait(call, &err) == ATTND_OK, "%s", err.msg);
    cu_step_free(&st);
}
END_TEST

/* return_pages on a layer that attends densely (full) reports every page,
 * the same from the blocking call, the async call and the stream. */
START_TEST(test_return_pages_on_a_full_layer_reports_every_page_in_every_form)
{
    attnd_sparse_policy full = {.kind = ATTND_SPARSE_FULL};
    attnd_error err;
    cu_open_policy(&g_s, g_c, &full, 2);
    cu_must_prefill(&g_s, 0, 100, NULL);
    cu_must_prefill(&g_s, 1, 40, NULL);
    attnd_stream *stream;
    ck_assert_int_eq(attnd_client_stream_open(g_c, &stream, &err), ATTND_OK);
    for (int form = 0; form < 3; form++) {
        cu_step st;
        cu_step_make(&g_s, &st, 0, 0, 2, 1, 0, 0, ATTND_DTYPE_INVALID);
        uint32_t ip[8];
        uint64_t ch[64];
        attnd_sparse_args sp = {.return_pages = 1, .chosen_indptr = ip,
                                .chosen_indptr_capacity = 8, .chosen = ch, .chosen_capacity = 64};
        attnd_status rc;
        attnd_call *call;
        if (form == 0) {
            rc = attnd_client_attend_sparse(g_c, &st.a, &sp, &err);
        } else if (form == 1) {
            rc = attnd_client_attend_sparse_async(g_c, &st.a, &sp, &call, &err);
            if (rc == ATTND_OK)
                rc = attnd_call_wait(call, &err);
        } else {
            rc = attnd_stream_attend_sparse(stream, &st.a, &sp, &err);
        }
        ck_assert_msg(rc == ATTND_OK, "form %d: %s", form, err.msg);
        ck_assert_uint_ge(sp.chosen_groups, 1);
        ck_assert_uint_eq(sp.n_chosen_lists, 2 * sp.chosen_groups);
        for (uint32_t k = 0; k < sp.n_chosen_lists; k++) {
            uint32_t np = k / sp.chosen_groups == 0 ? 7 : 3;
            ck_assert_uint_eq(ip[k + 1] - ip[k], np);
            for (uint32_t j = 0; j < np; j++)
                ck_assert_uint_eq(ch[ip[k] + j], j);
        }
        cu_step_free(&st);
    }
    ck_assert_int_eq(attnd_stream_close(stream, &err), ATTND_OK);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("client_sparse_pipelined");
    TCase *tc = tcase_create("pipelined");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_pages_chosen_by_an_async_call_are_given_to_the_next_layers_pipelined);
    tcase_add_test(tc, test_pages_chosen_on_a_stream_are_given_to_the_next_layers_on_it);
    tcase_add_test(tc, test_bad_sparse_arguments_are_refused_alike_by_async_calls_and_streams);
    tcase_add_test(tc, test_return_pages_on_a_full_layer_reports_every_page_in_every_form);
    suite_add_tcase(s, tc);
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
