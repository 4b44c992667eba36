/* Check suite of the narrow MLA wire through a worker group's service:
 * real attnd ranks on loopback, LoadWeights of W_UK and W_UV through
 * libattnd, heads-form Attends (q_form HEADS) through libattnd over gRPC
 * and over UCX, every row checked:
 *
 *   sequence, 2 ranks   against the float64 narrow formula of the mirrored
 *                       KV (attnd_refcheck_token_heads), led by either
 *                       rank, over gRPC and UCX, with new KV;
 *   latent, 2 ranks     against the TPLA formula with the projections
 *                       (tests/common/narrow_ref.h);
 *   restart             a restarted rank holds no weights: the call fails
 *                       FAILED_PRECONDITION naming q_form and the rank
 *                       until they are loaded again.
 *
 * tiny-mla (8 heads, d_c 64, d_rope 16), d_nope 24, d_v 20; --kv-dtype f32
 * (latent mode stores rotated entries exactly) and pages of 8 tokens, so
 * that every rank holds part of every session. Float32 queries and
 * outputs: bound 1e-5 (cu_bound), LSE CU_LSE_BOUND. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "group_testutil.h"
#include "narrow_ref.h"

enum { DN = 24, DVO = 20, NS = 3 };

typedef struct wts {
    float *uk, *uv;
    attnd_refcheck_proj p;
} wts;

static void wts_make(cu_seqs *s, wts *w)
{
    const attnd_model_info *m = &s->m;
    size_t nk = (size_t)m->n_q_heads * DN * m->d_latent;
    size_t nv = (size_t)m->n_q_heads * m->d_latent * DVO;
    w->uk = malloc(nk * sizeof(float));
    w->uv = malloc(nv * sizeof(float));
    ck_assert(w->uk && w->uv);
    attnd_rng_fill(&s->rng, ATTND_DTYPE_F32, w->uk, nk);
    attnd_rng_fill(&s->rng, ATTND_DTYPE_F32, w->uv, nv);
    w->p = (attnd_refcheck_proj){DN, DVO, ATTND_DTYPE_F32, w->uk, w->uv};
}

static attnd_status wts_load(attnd_client *c, const attnd_model_info *m, const wts *w,
                             uint32_t layer, attnd_error *err)
{
    attnd_tensor tk = {ATTND_DTYPE_F32, 3, {m->n_q_heads, DN, m->d_latent}, w->uk};
    attnd_tensor tv = {ATTND_DTYPE_F32, 3, {m->n_q_heads, m->d_latent, DVO}, w->uv};
    return attnd_client_load_mla_weights(c, layer, &tk, &tv, NULL, err);
}

/* One heads-form call through client c on layer `layer` for the NS
 * sessions, S tokens, new KV (mirrored after success; kv NULL: none);
 * outputs and LSE into out / lse. The call's status. */
static attnd_status heads_call(attnd_client *c, cu_seqs *s, uint32_t layer, uint32_t S,
                               float *q, float *kv, float *out, float *lse, attnd_error *err)
{
    const attnd_model_info *m = &s->m;
    const size_t dq = DN + m->d_rope, rows = (size_t)NS * S * m->n_q_heads;
    uint64_t pos[NS];
    attnd_rng_fill(&s->rng, ATTND_DTYPE_F32, q, rows * dq);
    if (kv)
        attnd_rng_fill(&s->rng, ATTND_DTYPE_F32, kv, (size_t)NS * S * m->kv_token_elems);
    for (uint32_t i = 0; i < NS; i++)
        pos[i] = attnd_refcheck_len(&s->rc, i, layer);
    attnd_attend_args a = {
        .layer = layer, .n_seqs = NS, .sessions = s->ids,
        .q = {ATTND_DTYPE_F32, 4, {NS, S, m->n_q_heads, (int64_t)dq}, q},
        .new_kv = {ATTND_DTYPE_F32, 3, {NS, S, m->kv_token_elems}, kv},
        .positions = kv ? pos : NULL, .out_dtype = ATTND_DTYPE_F32,
        .out = out, .out_capacity = rows * DVO * sizeof(float),
        .lse = lse, .lse_capacity = rows, .q_form = ATTND_Q_HEADS,
    };
    if (!kv)
        a.new_kv = (attnd_tensor){0};
    attnd_status st = attnd_client_attend(c, &a, err);
    if (st == ATTND_OK && kv)
        for (uint32_t i = 0; i < NS; i++)
            ck_assert_int_eq(attnd_refcheck_append(&s->rc, i, layer, S, ATTND_DTYPE_F32,
                                                   kv + (size_t)i * S * m->kv_token_elems),
                             0);
    return st;
}

/* Check a heads call's rows against the exact narrow formula. */
static void check_exact(cu_seqs *s, const wts *w, uint32_t layer, uint32_t S, const float *q,
                        const float *out, const float *lse, attnd_refcheck_result *res)
{
    const attnd_model_info *m = &s->m;
    const size_t dq = DN + m->d_rope, H = m->n_q_heads;
    for (uint32_t i = 0; i < NS; i++) {
        uint64_t L = attnd_refcheck_len(&s->rc, i, layer);
        for (uint32_t t = 0; t < S; t++) {
            size_t row = ((size_t)i * S + t) * H;
            ck_assert_int_eq(attnd_refcheck_token_heads(&s->rc, i, layer, L - (S - 1 - t), &w->p,
                                                        ATTND_DTYPE_F32, q + row * dq,
                                                        ATTND_DTYPE_F32, out + row * DVO,
                                                        lse + row, 0, (uint32_t)H, res),
                             0);
        }
    }
}

static const char *const seq_flags[] = {"--model", "tiny-mla", "--kv-dtype", "f32",
                                        "--page-size", "8", "--threads", "2",
                                        "--kernel-threads", "1", "--ucx-listen", "auto", NULL};

START_TEST(test_sequence_group_heads_form_over_grpc_and_ucx_matches_the_narrow_formula)
{
    gt_group g;
    cu_seqs s;
    wts w;
    attnd_error err;
    attnd_refcheck_result res = {0};
    ck_assert_int_eq(gt_group_start(&g, 2, seq_flags), 0);
    attnd_client *ucx0 = gt_connect_opts(&g.rank[0], 60000, ATTND_TRANSPORT_UCX);
    ck_assert_ptr_nonnull(ucx0);
    ck_assert_int_eq(cu_seqs_open(&s, g.c[1], NS, ATTND_DTYPE_F32, 0, &err), ATTND_OK);
    for (uint32_t i = 0; i < NS; i++)
        ck_assert_int_eq(cu_prefill(&s, i, 7 + 19 * i, (const uint32_t[]){5, 0}, &err),
                         ATTND_OK);
    wts_make(&s, &w);
    ck_assert_int_eq(wts_load(g.c[0], &s.m, &w, 2, &err), ATTND_OK);
    const size_t dq = DN + s.m.d_rope, maxrows = (size_t)NS * 2 * s.m.n_q_heads;
    float *q = malloc(maxrows * dq * 4), *kv = malloc((size_t)NS * 2 * s.m.kv_token_elems * 4);
    float *out = malloc(maxrows * DVO * 4), *lse = malloc(maxrows * 4);
    attnd_client *via[3] = {g.c[1], ucx0, g.c[0]}; /* gRPC to rank 1, UCX to rank 0, gRPC 0 */
    for (int k = 0; k < 6; k++) {
        uint32_t S = k % 2 ? 2 : 1;
        ck_assert_msg(heads_call(via[k % 3], &s, 2, S, q, kv, out, lse, &err) == ATTND_OK,
                      "call %d: %s", k, err.msg);
        check_exact(&s, &w, 2, S, q, out, lse, &res);
    }
    fprintf(stderr, "sequence x2 over gRPC and UCX: %llu rows, max rel err %.3g, lse %.3g\n",
            (unsigned long long)res.rows, res.max_err, res.max_lse_err);
    ck_assert_double_le(res.max_err, cu_bound(ATTND_DTYPE_F32));
    ck_assert_double_le(res.max_lse_err, CU_LSE_BOUND);
    free(q);
    free(kv);
    free(out);
    free(lse);
    free(w.uk);
    free(w.uv);
    cu_seqs_close(&s);
    attnd_client_destroy(ucx0);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

START_TEST(test_latent_group_heads_form_matches_the_tpla_formula_with_projections)
{
    const char *flags[] = {"--model", "tiny-mla", "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "2", "--kernel-threads", "1", "--shard", "latent",
                           "--tpla-rope", "split", "--tpla-mu", "1.25", NULL};
    gt_group g;
    cu_seqs s;
    wts w;
    attnd_error err;
    ck_assert_int_eq(gt_group_start(&g, 2, flags), 0);
    ck_assert_int_eq(cu_seqs_open(&s, g.c[0], NS, ATTND_DTYPE_F32, 0, &err), ATTND_OK);
    for (uint32_t i = 0; i < NS; i++)
        ck_assert_int_eq(cu_prefill(&s, i, 11 + 13 * i, NULL, &err), ATTND_OK);
    wts_make(&s, &w);
    ck_assert_int_eq(wts_load(g.c[1], &s.m, &w, 1, &err), ATTND_OK);
    const attnd_model_info *m = &s.m;
    const int32_t H = (int32_t)m->n_q_heads, dc = (int32_t)m->d_latent, dr = (int32_t)m->d_rope;
    const size_t dq = DN + (size_t)dr, rows = (size_t)NS * (size_t)H;
    float *q = malloc(rows * dq * 4), *kv = malloc((size_t)NS * m->kv_token_elems * 4);
    float *out = malloc(rows * DVO * 4), *lse = malloc(rows * 4);
    double *q64 = malloc(sizeof(double) * dq * (size_t)H), ref[8 * DVO], rlse[8];
    double *wk = malloc(sizeof(double) * (size_t)H * DN * (size_t)dc);
    double *wv = malloc(sizeof(double) * (size_t)H * (size_t)dc * DVO);
    for (size_t j = 0; j < (size_t)H * DN * (size_t)dc; j++)
        wk[j] = w.uk[j];
    for (size_t j = 0; j < (size_t)H * (size_t)dc * DVO; j++)
        wv[j] = w.uv[j];
    double worst = 0.0;
    for (int k = 0; k < 3; k++) {
        ck_assert_msg(heads_call(g.c[k % 2], &s, 1, 1, q, kv, out, lse, &err) == ATTND_OK,
                      "call %d: %s", k, err.msg);
        for (uint32_t i = 0; i < NS; i++) {
            const attnd_refcheck_seq *sq = &s.rc.seqs[(size_t)i * m->n_layers + 1];
            double *hist = malloc(sizeof(double) * sq->len * m->kv_token_elems + 1);
            for (size_t e = 0; e < sq->len * m->kv_token_elems; e++)
                hist[e] = ((const float *)sq->data)[e];
            for (size_t e = 0; e < dq * (size_t)H; e++)
                q64[e] = q[(size_t)i * (size_t)H * dq + e];
            nr_ref_tpla_heads(H, DN, dc, dr, DVO, 2, 1, 1.25, (int64_t)sq->len, m->scale, q64,
                              hist, wk, wv, ref, rlse);
            for (int32_t h = 0; h < H; h++) {
                double num = 0, den = 0;
                for (int j = 0; j < DVO; j++) {
                    double got = out[((size_t)i * (size_t)H + (size_t)h) * DVO + (size_t)j];
                    num = fmax(num, fabs(got - ref[h * DVO + j]));
                    den = fmax(den, fabs(ref[h * DVO + j]));
                }
                worst = fmax(worst, num / den);
                ck_assert_msg(num / den <= 1e-5, "seq %u head %d: rel err %.3g", i, h, num / den);
                ck_assert(fabs(lse[(size_t)i * (size_t)H + (size_t)h] - rlse[h]) <= 1e-4);
            }
            free(hist);
        }
    }
    fprintf(stderr, "latent x2 (TPLA, rope split, mu 1.25): max rel err %.3g\n", worst);
    free(q);
    free(kv);
    free(out);
    free(lse);
    free(q64);
    free(wk);
    free(wv);
    free(w.uk);
    free(w.uv);
    cu_seqs_close(&s);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

START_TEST(test_a_restarted_rank_fails_the_heads_form_naming_q_form_until_loaded_again)
{
    gt_group g;
    cu_seqs s;
    wts w;
    attnd_error err;
    attnd_refcheck_result res = {0};
    ck_assert_int_eq(gt_group_start(&g, 2, seq_flags), 0);
    ck_assert_int_eq(cu_seqs_open(&s, g.c[0], NS, ATTND_DTYPE_F32, 0, &err), ATTND_OK);
    wts_make(&s, &w);
    ck_assert_int_eq(wts_load(g.c[0], &s.m, &w, 0, &err), ATTND_OK);
    cu_seqs_close(&s);
    gt_rank_kill(&g, 1);
    ck_assert_int_eq(gt_rank_start(&g, 1), 0);
    for (int r = 0; r < 2; r++) /* each side: the lower rank dials (GROUPS.md) */
        ck_assert_int_eq(gt_wait_connected(&g, r, 1), 0);
    /* fresh sessions (the old ones lost their shards with the rank) */
    ck_assert_int_eq(cu_seqs_open(&s, g.c[0], NS, ATTND_DTYPE_F32, 0, &err), ATTND_OK);
    for (uint32_t i = 0; i < NS; i++)
        ck_assert_int_eq(cu_prefill(&s, i, 9 + i, NULL, &err), ATTND_OK);
    const size_t dq = DN + s.m.d_rope, rows = (size_t)NS * s.m.n_q_heads;
    float *q = malloc(rows * dq * 4), *kv = malloc((size_t)NS * s.m.kv_token_elems * 4);
    float *out = malloc(rows * DVO * 4), *lse = malloc(rows * 4);
    /* without new KV (with it, the leader's own share would have been
     * appended while rank 1 refused: the sessions would diverge, as for
     * any call a restarted rank fails; worker/GROUPS.md) */
    cu_assert_fails(heads_call(g.c[0], &s, 0, 1, q, NULL, out, lse, &err), err,
                    ATTND_ERR_FAILED_PRECONDITION, "q_form");
    ck_assert_ptr_nonnull(strstr(err.msg, "rank 1"));
    ck_assert_int_eq(wts_load(g.c[1], &s.m, &w, 0, &err), ATTND_OK);
    ck_assert_msg(heads_call(g.c[0], &s, 0, 1, q, kv, out, lse, &err) == ATTND_OK, "%s",
                  err.msg);
    check_exact(&s, &w, 0, 1, q, out, lse, &res);
    ck_assert_double_le(res.max_err, cu_bound(ATTND_DTYPE_F32));
    free(q);
    free(kv);
    free(out);
    free(lse);
    free(w.uk);
    free(w.uv);
    cu_seqs_close(&s);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("group_narrow_rpc");
    TCase *tc = tcase_create("narrow");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_sequence_group_heads_form_over_grpc_and_ucx_matches_the_narrow_formula);
    tcase_add_test(tc, test_latent_group_heads_form_matches_the_tpla_formula_with_projections);
    tcase_add_test(tc, test_a_restarted_rank_fails_the_heads_form_naming_q_form_until_loaded_again);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
