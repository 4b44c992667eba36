/* Check suite of the narrow MLA wire in worker groups, in one process: N
 * ranks (each an engine and an attnd_group, as attnd runs them) connected
 * over UCX on loopback, weights loaded through attnd_group_load_weights,
 * heads-form attends through attnd_group_attend led by every rank:
 *
 *   sequence  equals the float64 narrow formula (tests/common/narrow_ref.h)
 *             over 1, 2 and 3 ranks, with new KV and multi-token queries,
 *             bf16 and float32 queries and weights (exact: float32 bounds);
 *   latent    equals the TPLA formula with the projections (absorb,
 *             rotate, per-rank softmax, rotate back, W_UV) over 2 ranks
 *             (RoPE replicated, mu 1) and 4 (RoPE split, mu 1.5);
 *   refusals  a rank without the weights (as after a restart) fails the
 *             call FAILED_PRECONDITION naming q_form; the leader without
 *             them sends nothing and appends nothing; weights for GQA or
 *             head mode are refused naming the field.
 *
 * KV travels as bf16 and is stored as float32 (--kv-dtype f32: latent mode
 * stores rotated entries, which bf16 would round), so the float64 shadows
 * hold exactly what the ranks hold; bounds: normwise relative error per
 * row <= 1e-5, LSE within 1e-4. The
 * wire (gRPC, UCX, libattnd) is tests/service/test_narrow_rpc.c's. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attnd_dtype.h"
#include "attnd_group.h"
#include "narrow_ref.h"
#include "testutil.h"

#define MAXR 4
#define B 3
#define CAP 400
enum { DN = 24, DVO = 20 };

typedef struct ng {
    int n;
    char dir[64];
    attnd_group_config cfg[MAXR];
    attnd_engine *eng[MAXR];
    attnd_group *grp[MAXR];
    const attnd_model_spec *m;
    int32_t H, dc, dr, dk;
    attnd_session_id ids[B];
    double *kv[B][4]; /* [CAP][dk] per session and layer */
    int64_t len[B][4];
    double *wuk[4], *wuv[4];
    tu_rng r;
} ng;

/* Tokens of the first x that rank r of n holds in sequence mode (pages of
 * 8 dealt round-robin: worker/GROUPS.md). */
static uint64_t seq_count(uint64_t x, int r, int n)
{
    uint64_t cycle = 8u * (uint64_t)n, rem = x % cycle, lo = 8u * (uint64_t)r;
    return x / cycle * 8u + (rem <= lo ? 0 : (rem - lo < 8 ? rem - lo : 8));
}

static void *start_rank(void *arg)
{
    void **a = arg;
    ng *g = a[0];
    int r = (int)(intptr_t)a[1];
    attnd_engine_config ec = {.page_size = 8, .max_sessions = 16, .kernel_threads = 1,
                              .kv_memory = 16 << 20};
    attnd_error err;
    if (attnd_group_shard_model(&g->cfg[r], &ec.model, &err) ||
        attnd_engine_create(&ec, &g->eng[r], &err) ||
        attnd_group_create(&g->cfg[r], g->eng[r], &g->grp[r], &err)) {
        fprintf(stderr, "rank %d: %s\n", r, err.msg);
        return (void *)1;
    }
    return NULL;
}

static void ng_start(ng *g, const char *what, const char *model, int n, const char *mode,
                     int rope_split, float mu)
{
    pthread_t tid[MAXR];
    void *args[MAXR][2];
    memset(g, 0, sizeof *g);
    tu_rng_init(&g->r, what);
    g->n = n;
    g->m = attnd_model_find(model);
    snprintf(g->dir, sizeof g->dir, "/tmp/attnd-gnarrow-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g->dir));
    for (int r = 0; r < n; r++) {
        attnd_group_config *c = &g->cfg[r];
        c->rank = r;
        c->size = n;
        for (int i = 0; i < n; i++)
            snprintf(c->addrs[i], sizeof c->addrs[i], "127.0.0.1:0");
        snprintf(c->addr_dir, sizeof c->addr_dir, "%s", g->dir);
        c->mode = (attnd_group_mode)attnd_group_mode_parse(mode);
        c->rope_split = rope_split;
        c->mu = mu;
        c->connect_ms = 30000;
        c->timeout_ms = 30000;
        c->model = *g->m;
        c->model.kv_dtype = ATTND_DTYPE_F32; /* latent mode stores rotated entries */
        c->page_size = 8;
        args[r][0] = g;
        args[r][1] = (void *)(intptr_t)r;
        ck_assert_int_eq(pthread_create(&tid[r], NULL, start_rank, args[r]), 0);
    }
    int failed = 0;
    for (int r = 0; r < n; r++) {
        void *ret;
        pthread_join(tid[r], &ret);
        failed |= ret != NULL;
    }
    ck_assert_msg(!failed, "a rank did not start");
    attnd_error err;
    for (int i = 0; i < B; i++)
        ck_assert_int_eq(attnd_group_session_create(g->grp[0], 0, &g->ids[i], &err), ATTND_OK);
    g->H = g->m->n_q_heads;
    g->dc = g->m->d_latent;
    g->dr = g->m->d_rope;
    g->dk = g->dc + g->dr;
}

static void ng_stop(ng *g)
{
    for (int r = 0; r < g->n; r++)
        attnd_group_destroy(g->grp[r]);
    for (int r = 0; r < g->n; r++)
        attnd_engine_destroy(g->eng[r]);
    for (int i = 0; i < B; i++)
        for (int l = 0; l < 4; l++)
            free(g->kv[i][l]);
    for (int l = 0; l < 4; l++) {
        free(g->wuk[l]);
        free(g->wuv[l]);
    }
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g->dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* n random bf16 entries of session i, layer l, into wire and the shadow. */
static void draw_kv(ng *g, int i, int l, int64_t n, uint16_t *wire)
{
    if (!g->kv[i][l])
        g->kv[i][l] = malloc(sizeof(double) * CAP * (size_t)g->dk);
    ck_assert(g->len[i][l] + n <= CAP);
    for (int64_t t = 0; t < n; t++)
        for (int32_t e = 0; e < g->dk; e++) {
            uint16_t b = attnd_dtype_f32_to_bf16((float)tu_normal(&g->r));
            wire[t * g->dk + e] = b;
            g->kv[i][l][(g->len[i][l] + t) * g->dk + e] = attnd_dtype_bf16_to_f32(b);
        }
    g->len[i][l] += n;
}

/* B sessions with lo..hi tokens in layer l, one AppendKV stream through
 * rank 0. */
static void ng_prefill(ng *g, int l, int64_t lo, int64_t hi)
{
    uint16_t *wire = malloc(sizeof(uint16_t) * CAP * (size_t)g->dk);
    attnd_group_stream *s = NULL;
    attnd_error err;
    ck_assert_int_eq(attnd_group_stream_open(g->grp[0], &s, &err), ATTND_OK);
    for (int i = 0; i < B; i++) {
        int64_t n = tu_int(&g->r, lo, hi);
        uint64_t start = (uint64_t)g->len[i][l];
        draw_kv(g, i, l, n, wire);
        ck_assert_msg(attnd_group_stream_append(s, &g->ids[i], (uint32_t)l, start, (uint64_t)n,
                                                ATTND_DTYPE_BF16, wire, &err) == ATTND_OK,
                      "append: %s", err.msg);
    }
    uint64_t chunks = 0, tokens = 0;
    ck_assert_int_eq(attnd_group_stream_commit(s, &chunks, &tokens, &err), ATTND_OK);
    ck_assert_uint_eq(chunks, B);
    attnd_group_stream_close(s);
    free(wire);
}

static void rand_both(tu_rng *r, attnd_dtype t, size_t n, double sd, void **x, double **d)
{
    float *f = calloc(n, sizeof(float));
    *x = malloc(n * attnd_dtype_size(t));
    *d = malloc(sizeof(double) * n);
    ck_assert(f && *x && *d);
    for (size_t i = 0; i < n; i++)
        f[i] = (float)(sd * tu_normal(r));
    attnd_dtype_convert(t, *x, ATTND_DTYPE_F32, f, n);
    for (size_t i = 0; i < n; i++)
        (*d)[i] = attnd_dtype_load_f64(t, *x, i);
    free(f);
}

/* Fresh random W_UK and W_UV of dtype t for layer l, loaded through rank
 * `via` (both in one load). */
static void ng_load(ng *g, int via, int l, attnd_dtype t)
{
    void *xk, *xv;
    attnd_error err;
    uint64_t bytes = 0;
    free(g->wuk[l]);
    free(g->wuv[l]);
    rand_both(&g->r, t, (size_t)g->H * DN * (size_t)g->dc, 1.0 / sqrt(DN), &xk, &g->wuk[l]);
    rand_both(&g->r, t, (size_t)g->H * (size_t)g->dc * DVO, 1.0 / sqrt(g->dc), &xv, &g->wuv[l]);
    attnd_engine_weights w = {DN, t, xk, DVO, t, xv};
    ck_assert_msg(attnd_group_load_weights(g->grp[via], (uint32_t)l, &w, &bytes, &err) ==
                      ATTND_OK, "load: %s", err.msg);
    ck_assert_uint_gt(bytes, 0);
    free(xk);
    free(xv);
}

/* One heads-form attend of every session on layer l (S tokens, new KV),
 * led by rank `lead`, every row against the narrow formula (TPLA over n
 * ranks in latent mode). */
static double ng_check(ng *g, int lead, int l, int32_t S, attnd_dtype qt)
{
    const int latent = g->cfg[0].mode == ATTND_GROUP_LATENT;
    const int32_t dq = DN + g->dr;
    const size_t qn = (size_t)B * (size_t)S * (size_t)g->H * (size_t)dq;
    uint16_t *wire = malloc(sizeof(uint16_t) * B * (size_t)S * (size_t)g->dk);
    double *ref = malloc(sizeof(double) * (size_t)g->H * DVO);
    double *rlse = malloc(sizeof(double) * (size_t)g->H);
    uint64_t pos[B];
    void *q;
    double *q64, worst = 0.0;
    const float *out, *lse;
    attnd_engine_ws ws;
    attnd_error err;
    attnd_engine_ws_init(&ws);
    for (int i = 0; i < B; i++) {
        pos[i] = (uint64_t)g->len[i][l];
        draw_kv(g, i, l, S, wire + (size_t)i * (size_t)S * (size_t)g->dk);
    }
    rand_both(&g->r, qt, qn, 1.0, &q, &q64);
    attnd_attend_req req = {.layer = (uint32_t)l, .n_seqs = B, .ids = g->ids, .q_tokens = S,
                            .q_dtype = qt, .q = q, .new_kv_dtype = ATTND_DTYPE_BF16,
                            .new_kv = wire, .positions = pos, .want_lse = 1,
                            .q_form = ATTND_Q_HEADS, .d_nope = DN, .d_vo = DVO};
    ck_assert_msg(attnd_group_attend(g->grp[lead], &req, &ws, 0, &out, &lse, NULL, &err) ==
                      ATTND_OK, "attend led by %d: %s", lead, err.msg);
    for (int i = 0; i < B; i++)
        for (int32_t s = 0; s < S; s++) {
            size_t row = ((size_t)i * (size_t)S + (size_t)s) * (size_t)g->H;
            int64_t vis = g->len[i][l] - (S - 1 - s);
            if (latent)
                nr_ref_tpla_heads(g->H, DN, g->dc, g->dr, DVO, g->n, g->cfg[0].rope_split,
                                  g->cfg[0].mu, vis, g->m->scale, q64 + row * (size_t)dq,
                                  g->kv[i][l], g->wuk[l], g->wuv[l], ref, rlse);
            else
                nr_ref_heads(g->H, DN, g->dc, g->dr, DVO, vis, g->m->scale,
                             q64 + row * (size_t)dq, g->kv[i][l], g->wuk[l], g->wuv[l], ref,
                             rlse);
            for (int32_t h = 0; h < g->H; h++) {
                double e = tu_rel_err_f32(out + (row + (size_t)h) * DVO, ref + (size_t)h * DVO,
                                          DVO);
                worst = e > worst ? e : worst;
                ck_assert_msg(e <= 1e-5, "lead %d layer %d seq %d token %d head %d: %.3g", lead,
                              l, i, s, h, e);
                ck_assert_msg(fabs(lse[row + (size_t)h] - rlse[h]) <= 1e-4, "lse");
            }
        }
    attnd_engine_ws_cleanup(&ws);
    free(wire);
    free(ref);
    free(rlse);
    free(q);
    free(q64);
    return worst;
}

static void run_group(const char *what, int n, const char *mode, int rope_split, float mu)
{
    ng g;
    double worst = 0.0, e;
    ng_start(&g, what, "tiny-mla", n, mode, rope_split, mu);
    for (int l = 0; l < 2; l++) {
        ng_prefill(&g, l, 1, 60); /* pages of 8 tokens: every rank holds some */
        ng_load(&g, n - 1, l, l ? ATTND_DTYPE_BF16 : ATTND_DTYPE_F32);
        for (int lead = 0; lead < n; lead++) {
            e = ng_check(&g, lead, l, 1, lead & 1 ? ATTND_DTYPE_BF16 : ATTND_DTYPE_F32);
            worst = e > worst ? e : worst;
        }
        e = ng_check(&g, n - 1, l, 3, ATTND_DTYPE_BF16);
        worst = e > worst ? e : worst;
    }
    /* a reload through another rank replaces both matrices everywhere */
    ng_load(&g, 0, 1, ATTND_DTYPE_F32);
    e = ng_check(&g, n - 1, 1, 1, ATTND_DTYPE_F32);
    worst = e > worst ? e : worst;
    fprintf(stderr, "%s: max rel err %.3g\n", what, worst);
    ng_stop(&g);
}

START_TEST(test_sequence_group_heads_form_equals_the_narrow_formula)
{
    run_group("narrow sequence x1", 1, "sequence", 0, 1.0f);
    run_group("narrow sequence x2", 2, "sequence", 0, 1.0f);
    run_group("narrow sequence x3", 3, "sequence", 0, 1.0f);
}
END_TEST

START_TEST(test_latent_group_heads_form_equals_the_tpla_formula_with_projections)
{
    run_group("narrow latent x2", 2, "latent", 0, 1.0f);
    run_group("narrow latent x4 split", 4, "latent", 1, 1.5f);
}
END_TEST

START_TEST(test_a_rank_without_the_weights_fails_the_call_naming_q_form)
{
    ng g;
    attnd_engine_ws ws;
    attnd_error err;
    const float *out, *lse;
    ng_start(&g, "narrow missing", "tiny-mla", 2, "sequence", 0, 1.0f);
    ng_prefill(&g, 2, 10, 30);
    attnd_engine_ws_init(&ws);
    const size_t qn = (size_t)B * (size_t)g.H * (DN + (size_t)g.dr);
    float *q = calloc(qn, sizeof(float));
    uint16_t *wire = calloc((size_t)B * (size_t)g.dk, 2);
    uint64_t pos[B];
    for (int i = 0; i < B; i++)
        pos[i] = (uint64_t)g.len[i][2];
    /* only rank 0's engine holds layer 2's weights: rank 1 is as after a
     * restart (or a load that did not reach it) */
    void *xk, *xv;
    double *dk, *dv;
    rand_both(&g.r, ATTND_DTYPE_F32, (size_t)g.H * DN * (size_t)g.dc, 0.2, &xk, &dk);
    rand_both(&g.r, ATTND_DTYPE_F32, (size_t)g.H * (size_t)g.dc * DVO, 0.1, &xv, &dv);
    attnd_engine_weights w = {DN, ATTND_DTYPE_F32, xk, DVO, ATTND_DTYPE_F32, xv};
    ck_assert_int_eq(attnd_engine_load_weights(g.eng[0], 2, &w, NULL, &err), ATTND_OK);
    attnd_attend_req req = {.layer = 2, .n_seqs = B, .ids = g.ids, .q_tokens = 1,
                            .q_dtype = ATTND_DTYPE_F32, .q = q, .want_lse = 1,
                            .q_form = ATTND_Q_HEADS, .d_nope = DN, .d_vo = DVO};
    ck_assert_int_eq(attnd_group_attend(g.grp[0], &req, &ws, 0, &out, &lse, NULL, &err),
                     ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(err.msg, "q_form"));
    ck_assert_ptr_nonnull(strstr(err.msg, "rank 1"));
    /* led by rank 1, which lacks them: refused before anything is sent or
     * appended (new KV included) */
    req.new_kv = wire;
    req.new_kv_dtype = ATTND_DTYPE_BF16;
    req.positions = pos;
    ck_assert_int_eq(attnd_group_attend(g.grp[1], &req, &ws, 0, &out, &lse, NULL, &err),
                     ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(err.msg, "q_form"));
    for (int r = 0; r < 2; r++) { /* no rank appended */
        uint64_t len = 0;
        ck_assert_int_eq(attnd_engine_length(g.eng[r], &g.ids[0], 2, &len, &err), ATTND_OK);
        ck_assert_uint_eq(len, seq_count((uint64_t)g.len[0][2], r, 2));
    }
    /* loaded through the group, the same call succeeds */
    ck_assert_int_eq(attnd_group_load_weights(g.grp[1], 2, &w, NULL, &err), ATTND_OK);
    ck_assert_int_eq(attnd_group_attend(g.grp[1], &req, &ws, 0, &out, &lse, NULL, &err),
                     ATTND_OK);
    free(xk);
    free(xv);
    free(dk);
    free(dv);
    free(q);
    free(wire);
    attnd_engine_ws_cleanup(&ws);
    ng_stop(&g);
}
END_TEST

START_TEST(test_group_load_weights_refuses_what_the_group_cannot_use)
{
    ng g;
    attnd_error err;
    float w[24 * 32 * 2] = {0};
    attnd_engine_weights ok = {2, ATTND_DTYPE_F32, w, 0, ATTND_DTYPE_INVALID, NULL};
    ng_start(&g, "narrow head mode", "tiny-gqa", 2, "head", 0, 1.0f);
    ck_assert_int_eq(attnd_group_load_weights(g.grp[0], 0, &ok, NULL, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "w_uk"));
    ng_stop(&g);

    ng_start(&g, "narrow load refusals", "tiny-mla", 2, "latent", 0, 1.0f);
    ck_assert_int_eq(attnd_group_load_weights(g.grp[1], 4, &ok, NULL, &err),
                     ATTND_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(err.msg, "layer"));
    attnd_engine_weights none = {0};
    ck_assert_int_eq(attnd_group_load_weights(g.grp[1], 0, &none, NULL, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    attnd_engine_weights wide = {0, ATTND_DTYPE_INVALID, NULL, ATTND_ENGINE_MAX_PROJ_DIM + 1,
                                 ATTND_DTYPE_F32, w};
    ck_assert_int_eq(attnd_group_load_weights(g.grp[1], 0, &wide, NULL, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "w_uv"));
    for (int r = 0; r < 2; r++) { /* nothing reached any engine */
        int32_t dn = -1, dv = -1;
        attnd_group_weights_dims(g.grp[r], 0, &dn, &dv);
        ck_assert_int_eq(dn + dv, 0);
    }
    ng_stop(&g);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("group_narrow");
    TCase *tc = tcase_create("narrow");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_sequence_group_heads_form_equals_the_narrow_formula);
    tcase_add_test(tc, test_latent_group_heads_form_equals_the_tpla_formula_with_projections);
    tcase_add_test(tc, test_a_rank_without_the_weights_fails_the_call_naming_q_form);
    tcase_add_test(tc, test_group_load_weights_refuses_what_the_group_cannot_use);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
