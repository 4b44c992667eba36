/* Check suite of the engine's staged appends (attnd_engine_stage: one AppendKV
 * stream, all or nothing): staged tokens are not attended over until the
 * commit and are exact after it; an abort gives back every page and
 * reservation; a layer a stage holds refuses every other writer with
 * ABORTED; a session closed under a stage fails its commit NOT_FOUND with
 * nothing applied; RESOURCE_EXHAUSTED comes at the chunk that does not
 * fit. Outputs are checked against the float64 reference (tiny-gqa, bf16
 * KV, pages of 16 tokens). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_worker.h"
#include "testutil.h"

enum { PS = 16, CAP = 256 };

/* One layer's tokens as sent (bf16 wire entries) and as the reference
 * reads them (float64 K and V). */
typedef struct layer_kv {
    const attnd_model_spec *m;
    int32_t hkv, d;
    int64_t entry, n;
    uint16_t *wire;  /* [CAP][entry] */
    double *k, *v;   /* [CAP][hkv][d] */
} layer_kv;

static void layer_init(layer_kv *x, const attnd_model_spec *m, tu_rng *r)
{
    x->m = m;
    x->hkv = m->n_kv_heads;
    x->d = m->head_dim;
    x->entry = attnd_model_kv_token_elems(m);
    x->n = CAP;
    x->wire = malloc(sizeof(uint16_t) * CAP * (size_t)x->entry);
    x->k = malloc(sizeof(double) * CAP * (size_t)(x->hkv * x->d));
    x->v = malloc(sizeof(double) * CAP * (size_t)(x->hkv * x->d));
    ck_assert(x->wire && x->k && x->v);
    for (int64_t t = 0; t < CAP; t++)
        for (int64_t e = 0; e < x->entry; e++) {
            uint16_t w = attnd_dtype_f32_to_bf16((float)tu_normal(r));
            x->wire[t * x->entry + e] = w;
            int64_t half = x->hkv * x->d; /* the entry is [2][hkv][d]: K then V */
            (e < half ? x->k : x->v)[t * half + e % half] = attnd_dtype_bf16_to_f32(w);
        }
}

static void layer_free(layer_kv *x)
{
    free(x->wire);
    free(x->k);
    free(x->v);
}

static const void *tokens_at(const layer_kv *x, uint64_t t)
{
    return x->wire + t * (uint64_t)x->entry;
}

/* Attend over the layer (no new KV) and check the output against the
 * reference over its first n tokens (n = 0: out 0, lse -inf). */
static void assert_attends_over(attnd_engine *e, const attnd_session_id *id, uint32_t layer,
                                const layer_kv *x, int64_t n, tu_rng *r)
{
    const int32_t hq = x->m->n_q_heads;
    float q[64 * 64];
    double q64[64 * 64], ref[64 * 64], rlse[64];
    const float *out, *lse;
    attnd_engine_ws ws;
    attnd_error err;
    ck_assert_int_le(hq * x->d, 64 * 64);
    for (int32_t j = 0; j < hq * x->d; j++)
        q64[j] = q[j] = (float)tu_normal(r);
    attnd_attend_req req = {.layer = layer, .n_seqs = 1, .ids = id, .q_tokens = 1,
                            .q_dtype = ATTND_DTYPE_F32, .q = q, .want_lse = 1};
    attnd_engine_ws_init(&ws);
    ck_assert_int_eq(attnd_engine_attend(e, &req, &ws, &out, &lse, &err), ATTND_OK);
    attnd_kernel_ref_attention_f64(hq, x->hkv, x->d, x->d, n, x->m->scale, q64, x->k, x->v, ref,
                                   rlse);
    for (int32_t h = 0; h < hq; h++) {
        if (n == 0) {
            ck_assert(isinf(lse[h]) && lse[h] < 0);
            continue;
        }
        double er = tu_rel_err_f32(out + (size_t)h * x->d, ref + (size_t)h * x->d, (size_t)x->d);
        ck_assert_msg(er <= 1e-5, "layer %u head %d over %lld tokens: rel err %g", layer, h,
                      (long long)n, er);
        ck_assert(fabs(lse[h] - rlse[h]) <= 1e-4);
    }
    attnd_engine_ws_cleanup(&ws);
}

/* Stage tokens [start, start + n) of x on layer of id. */
static attnd_status stage_at(attnd_engine_stage *s, const attnd_session_id *id, uint32_t layer,
                             uint64_t start, uint64_t n, const layer_kv *x, attnd_error *err)
{
    return attnd_engine_stage_append(s, id, layer, start, n, ATTND_DTYPE_BF16, tokens_at(x, start),
                                     err);
}

static attnd_engine *make_engine(uint64_t kv_memory)
{
    attnd_engine_config cfg = {.model = *attnd_model_find("tiny-gqa"),
                               .page_size = PS,
                               .kv_memory = kv_memory,
                               .max_sessions = 8};
    attnd_engine *e = NULL;
    attnd_error err;
    ck_assert_int_eq(attnd_engine_create(&cfg, &e, &err), ATTND_OK);
    return e;
}

static uint64_t length_of(attnd_engine *e, const attnd_session_id *id, uint32_t layer)
{
    uint64_t len = 99;
    attnd_error err;
    ck_assert_int_eq(attnd_engine_length(e, id, layer, &len, &err), ATTND_OK);
    return len;
}

static attnd_engine_stats stats_of(attnd_engine *e)
{
    attnd_engine_stats st;
    attnd_engine_get_stats(e, &st);
    return st;
}

/* 10 committed tokens, then a stage of 23 more in two chunks (across
 * pages, the first filling the last committed page's free slots) and 7 on
 * another layer: attention reads the 10 until the commit, all 33 after. */
START_TEST(test_staged_chunks_are_invisible_until_the_commit_and_exact_after)
{
    tu_rng r;
    tu_rng_init(&r, "stage visibility");
    attnd_engine *e = make_engine(1 << 20);
    layer_kv x0, x1;
    layer_init(&x0, attnd_engine_model(e), &r);
    layer_init(&x1, attnd_engine_model(e), &r);
    attnd_session_id id;
    attnd_engine_stage *s;
    attnd_error err;
    uint64_t chunks = 0, tokens = 0;
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &id, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_append(e, &id, 0, 0, 10, ATTND_DTYPE_BF16, tokens_at(&x0, 0),
                                         &err), ATTND_OK);

    ck_assert_int_eq(attnd_engine_stage_open(e, &s, &err), ATTND_OK);
    ck_assert_int_eq(stage_at(s, &id, 0, 10, 15, &x0, &err), ATTND_OK);
    ck_assert_int_eq(stage_at(s, &id, 1, 0, 7, &x1, &err), ATTND_OK);
    ck_assert_int_eq(stage_at(s, &id, 0, 25, 8, &x0, &err), ATTND_OK);
    ck_assert_uint_eq(stats_of(e).pages_used, 4); /* 3 for 33 tokens, 1 for 7 */
    ck_assert_uint_eq(length_of(e, &id, 0), 10);
    ck_assert_uint_eq(length_of(e, &id, 1), 0);
    assert_attends_over(e, &id, 0, &x0, 10, &r);
    assert_attends_over(e, &id, 1, &x1, 0, &r);

    ck_assert_int_eq(attnd_engine_stage_commit(s, &chunks, &tokens, &err), ATTND_OK);
    ck_assert_uint_eq(chunks, 3);
    ck_assert_uint_eq(tokens, 30);
    ck_assert_uint_eq(length_of(e, &id, 0), 33);
    ck_assert_uint_eq(length_of(e, &id, 1), 7);
    assert_attends_over(e, &id, 0, &x0, 33, &r);
    assert_attends_over(e, &id, 1, &x1, 7, &r);
    ck_assert_uint_eq(stats_of(e).tokens_appended, 40);
    uint64_t freed = 0;
    attnd_engine_stage_close(s);
    ck_assert_int_eq(attnd_engine_session_close(e, &id, &freed, &err), ATTND_OK);
    ck_assert_uint_eq(freed, 4);
    layer_free(&x0);
    layer_free(&x1);
    attnd_engine_destroy(e);
}
END_TEST

/* A session reserving 2 pages a layer; a stage taking 5 pages of one layer
 * (2 of them from the reservation) and aborting gives back all 5 and the
 * promise: pool counts as before, lengths untouched, and the same chunks
 * stage and commit afterwards. */
START_TEST(test_an_aborted_stage_gives_back_every_page_and_reservation)
{
    tu_rng r;
    tu_rng_init(&r, "stage abort");
    attnd_engine *e = make_engine(1 << 20);
    layer_kv x;
    layer_init(&x, attnd_engine_model(e), &r);
    attnd_session_id id;
    attnd_engine_stage *s;
    attnd_error err;
    ck_assert_int_eq(attnd_engine_session_create(e, 2 * PS, &id, &err), ATTND_OK);
    attnd_engine_stats before = stats_of(e);

    ck_assert_int_eq(attnd_engine_stage_open(e, &s, &err), ATTND_OK);
    for (uint64_t t = 0; t < 5 * PS; t += 20)
        ck_assert_int_eq(stage_at(s, &id, 2, t, 20, &x, &err), ATTND_OK);
    ck_assert_uint_eq(stats_of(e).pages_used, before.pages_used + 5);
    ck_assert_uint_eq(stats_of(e).pages_reserved, before.pages_reserved - 2);
    attnd_engine_stage_abort(s);
    ck_assert_uint_eq(stats_of(e).pages_used, before.pages_used);
    ck_assert_uint_eq(stats_of(e).pages_reserved, before.pages_reserved);
    ck_assert_uint_eq(length_of(e, &id, 2), 0);
    ck_assert_uint_eq(stats_of(e).tokens_appended, 0);

    /* the same stage again: from 0, committed */
    for (uint64_t t = 0; t < 5 * PS; t += 20)
        ck_assert_int_eq(stage_at(s, &id, 2, t, 20, &x, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_stage_commit(s, NULL, NULL, &err), ATTND_OK);
    attnd_engine_stage_close(s);
    assert_attends_over(e, &id, 2, &x, 5 * PS, &r);
    ck_assert_uint_eq(stats_of(e).pages_reserved, before.pages_reserved - 2);
    layer_free(&x);
    attnd_engine_destroy(e);
}
END_TEST

/* While stage A holds layer 0: another stage's chunk there, a one-shot
 * append there and an Attend with new KV there all fail ABORTED and change
 * nothing; other layers stay free; once A ends, they go through. */
START_TEST(test_a_layer_a_stage_holds_refuses_every_other_writer_aborted)
{
    tu_rng r;
    tu_rng_init(&r, "stage conflict");
    attnd_engine *e = make_engine(1 << 20);
    layer_kv x;
    layer_init(&x, attnd_engine_model(e), &r);
    attnd_session_id id;
    attnd_engine_stage *a, *b;
    attnd_error err;
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &id, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_stage_open(e, &a, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_stage_open(e, &b, &err), ATTND_OK);
    ck_assert_int_eq(stage_at(a, &id, 0, 0, 4, &x, &err), ATTND_OK);

    ck_assert_int_eq(stage_at(b, &id, 0, 0, 4, &x, &err), ATTND_ERR_ABORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "another AppendKV stream"));
    ck_assert_int_eq(attnd_engine_append(e, &id, 0, 0, 4, ATTND_DTYPE_BF16, tokens_at(&x, 0),
                                         &err), ATTND_ERR_ABORTED);
    float q[64 * 64] = {0};
    uint64_t pos = 0;
    attnd_attend_req req = {.layer = 0, .n_seqs = 1, .ids = &id, .q_tokens = 1,
                            .q_dtype = ATTND_DTYPE_F32, .q = q,
                            .new_kv_dtype = ATTND_DTYPE_BF16, .new_kv = tokens_at(&x, 4),
                            .positions = &pos};
    attnd_engine_ws ws;
    const float *out, *lse;
    attnd_engine_ws_init(&ws);
    ck_assert_int_eq(attnd_engine_attend(e, &req, &ws, &out, &lse, &err), ATTND_ERR_ABORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "new_kv"));
    ck_assert_uint_eq(stats_of(e).pages_used, 1);
    ck_assert_int_eq(stage_at(b, &id, 1, 0, 4, &x, &err), ATTND_OK);

    ck_assert_int_eq(attnd_engine_stage_commit(a, NULL, NULL, &err), ATTND_OK);
    ck_assert_int_eq(stage_at(b, &id, 0, 4, 4, &x, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_stage_commit(b, NULL, NULL, &err), ATTND_OK);
    assert_attends_over(e, &id, 0, &x, 8, &r);
    ck_assert_uint_eq(length_of(e, &id, 1), 4);
    attnd_engine_ws_cleanup(&ws);
    attnd_engine_stage_close(a);
    attnd_engine_stage_close(b);
    layer_free(&x);
    attnd_engine_destroy(e);
}
END_TEST

/* A session closed while a stage holds some of its layers: the commit
 * fails NOT_FOUND, applies nothing (the other session's chunk neither),
 * and every page goes back. */
START_TEST(test_a_session_closed_under_a_stage_fails_its_commit_not_found)
{
    tu_rng r;
    tu_rng_init(&r, "stage close");
    attnd_engine *e = make_engine(1 << 20);
    layer_kv x;
    layer_init(&x, attnd_engine_model(e), &r);
    attnd_session_id id, other;
    attnd_engine_stage *s;
    attnd_error err;
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &id, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &other, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_stage_open(e, &s, &err), ATTND_OK);
    ck_assert_int_eq(stage_at(s, &other, 0, 0, 20, &x, &err), ATTND_OK);
    ck_assert_int_eq(stage_at(s, &id, 0, 0, 20, &x, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_close(e, &id, NULL, &err), ATTND_OK);
    ck_assert_uint_eq(stats_of(e).pages_used, 4); /* the stage still holds them */
    ck_assert_int_eq(attnd_engine_stage_commit(s, NULL, NULL, &err), ATTND_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "session_id"));
    ck_assert_uint_eq(stats_of(e).pages_used, 0);
    ck_assert_uint_eq(length_of(e, &other, 0), 0);
    attnd_engine_stage_close(s);
    layer_free(&x);
    attnd_engine_destroy(e);
}
END_TEST

/* A pool of 4 pages: a stage's chunk needing a fifth fails
 * RESOURCE_EXHAUSTED and is not staged (the earlier ones stay staged,
 * their pages held); the abort gives all of them back. */
START_TEST(test_resource_exhausted_comes_at_the_chunk_that_does_not_fit)
{
    tu_rng r;
    tu_rng_init(&r, "stage exhausted");
    const attnd_model_spec *m = attnd_model_find("tiny-gqa");
    attnd_engine *e = make_engine(4 * (uint64_t)PS * (uint64_t)attnd_model_kv_token_elems(m) * 2);
    layer_kv x;
    layer_init(&x, attnd_engine_model(e), &r);
    attnd_session_id id;
    attnd_engine_stage *s;
    attnd_error err;
    ck_assert_uint_eq(stats_of(e).pages_total, 4);
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &id, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_stage_open(e, &s, &err), ATTND_OK);
    ck_assert_int_eq(stage_at(s, &id, 0, 0, 3 * PS, &x, &err), ATTND_OK);
    ck_assert_int_eq(stage_at(s, &id, 1, 0, 2 * PS, &x, &err), ATTND_ERR_RESOURCE_EXHAUSTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "KV memory exhausted"));
    ck_assert_uint_eq(stats_of(e).pages_used, 3);
    attnd_engine_stage_abort(s);
    ck_assert_uint_eq(stats_of(e).pages_used, 0);
    ck_assert_uint_eq(length_of(e, &id, 0), 0);
    attnd_engine_stage_close(s);
    layer_free(&x);
    attnd_engine_destroy(e);
}
END_TEST

static Suite *suite(void)
{
    Suite *su = suite_create("worker_stage");
    TCase *tc = tcase_create("stage");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_staged_chunks_are_invisible_until_the_commit_and_exact_after);
    tcase_add_test(tc, test_an_aborted_stage_gives_back_every_page_and_reservation);
    tcase_add_test(tc, test_a_layer_a_stage_holds_refuses_every_other_writer_aborted);
    tcase_add_test(tc, test_a_session_closed_under_a_stage_fails_its_commit_not_found);
    tcase_add_test(tc, test_resource_exhausted_comes_at_the_chunk_that_does_not_fit);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
