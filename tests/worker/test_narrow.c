/* Check suite of the engine's narrow MLA wire (attnd_engine_load_weights,
 * attnd_attend_req.q_form / d_vo): heads-form attends against the float64
 * formula of tests/common/narrow_ref.h on fresh random KV, queries and
 * weights (bf16 and float32 of each), with new KV and multi-token queries;
 * the up-projection alone; the refusals with their codes and no side
 * effects; loads that replace one matrix; attends racing reloads; a
 * topk-pages layer in the heads form selecting as the absorbed form does.
 *
 * Bound: per (sequence, token, head) normwise relative error <= 1e-5 and
 * LSE within 1e-4 (float32 products and kernel over exact inputs: the
 * reference sees the very values the engine stores, bf16-rounded where
 * they travel as bf16), the engine decode test's bounds. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_dtype.h"
#include "attnd_worker.h"
#include "narrow_ref.h"
#include "testutil.h"

enum { DN = 24, DVO = 20, CAP = 1200 };

/* An engine of tiny-mla (H 8, d_c 64, d_r 16) and float64 shadows of what
 * it holds: each session's KV per layer, each layer's weights. */
typedef struct nfx {
    attnd_engine *e;
    const attnd_model_spec *m;
    int32_t H, dc, dr, dk;
    int n;
    attnd_session_id ids[4];
    double *kv[4][4];   /* [session][layer]: [CAP][dk] */
    int64_t len[4][4];
    double *wuk[4], *wuv[4]; /* [layer] */
    tu_rng r;
} nfx;

static void fx_init(nfx *f, const char *what, int n)
{
    attnd_engine_config cfg = {.model = *attnd_model_find("tiny-mla"), .page_size = 16,
                               .kv_memory = 32 << 20, .max_sessions = 8,
                               .kernel_threads = 2};
    attnd_error err;
    memset(f, 0, sizeof *f);
    tu_rng_init(&f->r, what);
    ck_assert_int_eq(attnd_engine_create(&cfg, &f->e, &err), ATTND_OK);
    f->m = attnd_engine_model(f->e);
    f->H = f->m->n_q_heads;
    f->dc = f->m->d_latent;
    f->dr = f->m->d_rope;
    f->dk = f->dc + f->dr;
    f->n = n;
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(attnd_engine_session_create(f->e, 0, &f->ids[i], &err), ATTND_OK);
        for (int l = 0; l < f->m->n_layers; l++)
            f->kv[i][l] = malloc(sizeof(double) * CAP * (size_t)f->dk);
    }
}

static void fx_free(nfx *f)
{
    for (int i = 0; i < f->n; i++)
        for (int l = 0; l < f->m->n_layers; l++)
            free(f->kv[i][l]);
    for (int l = 0; l < 4; l++) {
        free(f->wuk[l]);
        free(f->wuv[l]);
    }
    attnd_engine_destroy(f->e);
}

/* n random entries for session i, layer l, bf16 on the wire (wire gets
 * them), recorded in the shadow. */
static void fx_draw_kv(nfx *f, int i, int l, int64_t n, uint16_t *wire)
{
    for (int64_t t = 0; t < n; t++)
        for (int32_t e = 0; e < f->dk; e++) {
            uint16_t b = attnd_dtype_f32_to_bf16((float)tu_normal(&f->r));
            wire[t * f->dk + e] = b;
            f->kv[i][l][(f->len[i][l] + t) * f->dk + e] = attnd_dtype_bf16_to_f32(b);
        }
    f->len[i][l] += n;
}

static void fx_prefill(nfx *f, int l, int64_t lo, int64_t hi)
{
    uint16_t *wire = malloc(sizeof(uint16_t) * CAP * (size_t)f->dk);
    attnd_error err;
    for (int i = 0; i < f->n; i++) {
        int64_t n = tu_int(&f->r, lo, hi);
        uint64_t start = (uint64_t)f->len[i][l];
        fx_draw_kv(f, i, l, n, wire);
        ck_assert_int_eq(attnd_engine_append(f->e, &f->ids[i], (uint32_t)l, start, (uint64_t)n,
                                             ATTND_DTYPE_BF16, wire, &err), ATTND_OK);
    }
    free(wire);
}

/* Random values of dtype t (n of them) into *x (malloc'd), their float64
 * values into *d (malloc'd). */
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

/* Load fresh random W_UK and/or W_UV of dtype t into layer l (and the
 * shadow); *bytes_p the engine's report. */
static void fx_load(nfx *f, int l, int uk, int uv, attnd_dtype t, uint64_t *bytes_p)
{
    attnd_engine_weights w = {0};
    void *xk = NULL, *xv = NULL;
    attnd_error err;
    if (uk) {
        free(f->wuk[l]);
        rand_both(&f->r, t, (size_t)f->H * DN * (size_t)f->dc, 1.0 / sqrt(DN), &xk, &f->wuk[l]);
        w.d_nope = DN;
        w.uk_dtype = t;
        w.w_uk = xk;
    }
    if (uv) {
        free(f->wuv[l]);
        rand_both(&f->r, t, (size_t)f->H * (size_t)f->dc * DVO, 1.0 / sqrt(f->dc), &xv,
                  &f->wuv[l]);
        w.d_vo = DVO;
        w.uv_dtype = t;
        w.w_uv = xv;
    }
    ck_assert_int_eq(attnd_engine_load_weights(f->e, (uint32_t)l, &w, bytes_p, &err), ATTND_OK);
    free(xk);
    free(xv);
}

/* One heads-form attend of every session on layer l, S query tokens, with
 * new KV (positions checked), q of dtype qt; every row against the
 * formula. Returns the worst relative error. */
static double fx_check_heads(nfx *f, int l, int32_t S, attnd_dtype qt, attnd_engine_ws *ws)
{
    const int32_t dq = DN + f->dr;
    const size_t qn = (size_t)f->n * (size_t)S * (size_t)f->H * (size_t)dq;
    uint16_t *wire = malloc(sizeof(uint16_t) * (size_t)f->n * (size_t)S * (size_t)f->dk);
    uint64_t pos[4];
    void *q;
    double *q64, worst = 0.0;
    double *ref = malloc(sizeof(double) * (size_t)f->H * DVO);
    double *rlse = malloc(sizeof(double) * (size_t)f->H);
    const float *out, *lse;
    attnd_error err;

    for (int i = 0; i < f->n; i++) {
        pos[i] = (uint64_t)f->len[i][l];
        fx_draw_kv(f, i, l, S, wire + (size_t)i * (size_t)S * (size_t)f->dk);
    }
    rand_both(&f->r, qt, qn, 1.0, &q, &q64);
    attnd_attend_req req = {.layer = (uint32_t)l, .n_seqs = (uint32_t)f->n, .ids = f->ids,
                            .q_tokens = S, .q_dtype = qt, .q = q,
                            .new_kv_dtype = ATTND_DTYPE_BF16, .new_kv = wire,
                            .positions = pos, .want_lse = 1,
                            .q_form = ATTND_Q_HEADS, .d_nope = DN, .d_vo = DVO};
    ck_assert_int_eq(attnd_engine_attend(f->e, &req, ws, &out, &lse, &err), ATTND_OK);
    for (int i = 0; i < f->n; i++)
        for (int32_t s = 0; s < S; s++) {
            size_t row = ((size_t)i * (size_t)S + (size_t)s) * (size_t)f->H;
            int64_t vis = f->len[i][l] - (S - 1 - s);
            nr_ref_heads(f->H, DN, f->dc, f->dr, DVO, vis, f->m->scale, q64 + row * (size_t)dq,
                         f->kv[i][l], f->wuk[l], f->wuv[l], ref, rlse);
            for (int32_t h = 0; h < f->H; h++) {
                double e = tu_rel_err_f32(out + (row + (size_t)h) * DVO, ref + (size_t)h * DVO,
                                          DVO);
                worst = e > worst ? e : worst;
                ck_assert_msg(e <= 1e-5, "layer %d seq %d token %d head %d: rel err %.3g", l, i,
                              s, h, e);
                ck_assert_msg(fabs(lse[row + (size_t)h] - rlse[h]) <= 1e-4, "lse");
            }
        }
    free(wire);
    free(q);
    free(q64);
    free(ref);
    free(rlse);
    return worst;
}

START_TEST(test_heads_form_matches_the_f64_narrow_formula)
{
    static const attnd_dtype types[] = {ATTND_DTYPE_F32, ATTND_DTYPE_BF16};
    nfx f;
    attnd_engine_ws ws;
    double worst = 0.0;
    fx_init(&f, "narrow-engine", 3);
    attnd_engine_ws_init(&ws);
    for (int l = 0; l < 2; l++) {
        fx_prefill(&f, l, 1, 300);
        if (l == 0) /* one long session: split-KV inside the kernel */
            fx_prefill(&f, l, 700, 800);
        fx_load(&f, l, 1, 1, types[l], NULL);
        for (size_t qt = 0; qt < 2; qt++)
            for (int32_t S = 1; S <= 3; S += 2) {
                double e = fx_check_heads(&f, l, S, types[qt], &ws);
                worst = e > worst ? e : worst;
            }
    }
    fprintf(stderr, "narrow engine: max rel err %.3g\n", worst);
    attnd_engine_ws_cleanup(&ws);
    fx_free(&f);
}
END_TEST

START_TEST(test_up_project_alone_projects_the_latent_output)
{
    nfx f;
    attnd_engine_ws ws;
    attnd_error err;
    const float *lat, *proj, *lse;
    fx_init(&f, "narrow-up", 2);
    attnd_engine_ws_init(&ws);
    fx_prefill(&f, 1, 1, 200);
    fx_load(&f, 1, 0, 1, ATTND_DTYPE_BF16, NULL);
    const size_t rows = (size_t)f.n * (size_t)f.H, dc = (size_t)f.dc;
    float *q = malloc(sizeof(float) * rows * (size_t)f.dk);
    float *o = malloc(sizeof(float) * rows * dc);
    for (size_t j = 0; j < rows * (size_t)f.dk; j++)
        q[j] = (float)tu_normal(&f.r);
    attnd_attend_req req = {.layer = 1, .n_seqs = (uint32_t)f.n, .ids = f.ids, .q_tokens = 1,
                            .q_dtype = ATTND_DTYPE_F32, .q = q};
    ck_assert_int_eq(attnd_engine_attend(f.e, &req, &ws, &lat, &lse, &err), ATTND_OK);
    memcpy(o, lat, sizeof(float) * rows * dc);
    req.d_vo = DVO;
    ck_assert_int_eq(attnd_engine_attend(f.e, &req, &ws, &proj, &lse, &err), ATTND_OK);
    for (size_t r = 0; r < rows; r++) {
        double ref[DVO];
        for (int32_t j = 0; j < DVO; j++) {
            ref[j] = 0.0;
            for (size_t c = 0; c < dc; c++)
                ref[j] += (double)o[r * dc + c] *
                          f.wuv[1][((r % (size_t)f.H) * dc + c) * DVO + (size_t)j];
        }
        ck_assert_double_le(tu_rel_err_f32(proj + r * DVO, ref, DVO), 1e-5);
    }
    free(q);
    free(o);
    attnd_engine_ws_cleanup(&ws);
    fx_free(&f);
}
END_TEST

START_TEST(test_heads_form_without_its_weights_fails_and_appends_nothing)
{
    nfx f;
    attnd_engine_ws ws;
    attnd_error err;
    const float *out, *lse;
    uint64_t len;
    fx_init(&f, "narrow-refused", 1);
    attnd_engine_ws_init(&ws);
    fx_prefill(&f, 2, 5, 5);
    uint16_t *wire = calloc((size_t)f.dk, 2);
    float *q = calloc((size_t)f.H * (DN + 64), sizeof(float));
    uint64_t pos = 5;
    attnd_attend_req req = {.layer = 2, .n_seqs = 1, .ids = f.ids, .q_tokens = 1,
                            .q_dtype = ATTND_DTYPE_F32, .q = q,
                            .new_kv_dtype = ATTND_DTYPE_BF16, .new_kv = wire, .positions = &pos,
                            .q_form = ATTND_Q_HEADS, .d_nope = DN, .d_vo = DVO};
    /* nothing loaded */
    ck_assert_int_eq(attnd_engine_attend(f.e, &req, &ws, &out, &lse, &err),
                     ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(err.msg, "q_form"));
    ck_assert_ptr_nonnull(strstr(err.msg, "W_UK"));
    /* W_UK only: W_UV missing */
    fx_load(&f, 2, 1, 0, ATTND_DTYPE_F32, NULL);
    ck_assert_int_eq(attnd_engine_attend(f.e, &req, &ws, &out, &lse, &err),
                     ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(err.msg, "W_UV"));
    /* both, but the request states other widths */
    fx_load(&f, 2, 0, 1, ATTND_DTYPE_F32, NULL);
    req.d_nope = DN + 1;
    ck_assert_int_eq(attnd_engine_attend(f.e, &req, &ws, &out, &lse, &err),
                     ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(err.msg, "d_nope"));
    req.d_nope = DN;
    req.d_vo = DVO + 1;
    ck_assert_int_eq(attnd_engine_attend(f.e, &req, &ws, &out, &lse, &err),
                     ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(err.msg, "W_UV of width"));
    /* an unknown form */
    req.d_vo = DVO;
    req.q_form = (attnd_q_form)7;
    ck_assert_int_eq(attnd_engine_attend(f.e, &req, &ws, &out, &lse, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "q_form"));
    /* none of the refused calls appended its entry */
    ck_assert_int_eq(attnd_engine_length(f.e, &f.ids[0], 2, &len, &err), ATTND_OK);
    ck_assert_uint_eq(len, 5);
    req.q_form = ATTND_Q_HEADS;
    ck_assert_int_eq(attnd_engine_attend(f.e, &req, &ws, &out, &lse, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_length(f.e, &f.ids[0], 2, &len, &err), ATTND_OK);
    ck_assert_uint_eq(len, 6);
    free(wire);
    free(q);
    attnd_engine_ws_cleanup(&ws);
    fx_free(&f);
}
END_TEST

START_TEST(test_load_weights_refuses_what_the_engine_cannot_use)
{
    attnd_engine_config cfg = {.model = *attnd_model_find("tiny-gqa"), .page_size = 16,
                               .kv_memory = 1 << 20, .max_sessions = 2};
    attnd_engine *g = NULL;
    attnd_error err;
    float w[8 * 64 * 4] = {0};
    ck_assert_int_eq(attnd_engine_create(&cfg, &g, &err), ATTND_OK);
    attnd_engine_weights ok = {.d_nope = 4, .uk_dtype = ATTND_DTYPE_F32, .w_uk = w};
    ck_assert_int_eq(attnd_engine_load_weights(g, 0, &ok, NULL, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "w_uk"));
    ck_assert_ptr_nonnull(strstr(err.msg, "MLA"));
    attnd_engine_destroy(g);

    nfx f;
    fx_init(&f, "narrow-load-refused", 1);
    uint64_t bytes = 7;
    ck_assert_int_eq(attnd_engine_load_weights(f.e, 4, &ok, &bytes, &err),
                     ATTND_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(err.msg, "layer"));
    attnd_engine_weights none = {0};
    ck_assert_int_eq(attnd_engine_load_weights(f.e, 0, &none, &bytes, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    attnd_engine_weights wide = {.d_vo = ATTND_ENGINE_MAX_PROJ_DIM + 1,
                                 .uv_dtype = ATTND_DTYPE_F32, .w_uv = w};
    ck_assert_int_eq(attnd_engine_load_weights(f.e, 0, &wide, &bytes, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "w_uv"));
    attnd_engine_weights bad_t = {.d_nope = 4, .uk_dtype = ATTND_DTYPE_INVALID, .w_uk = w};
    ck_assert_int_eq(attnd_engine_load_weights(f.e, 0, &bad_t, &bytes, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_uint_eq(bytes, 7); /* untouched on failure */
    int32_t dn = -1, dv = -1;
    attnd_engine_weights_dims(f.e, 0, &dn, &dv);
    ck_assert_int_eq(dn, 0);
    ck_assert_int_eq(dv, 0);
    fx_free(&f);
}
END_TEST

START_TEST(test_a_load_replaces_only_the_matrix_it_carries)
{
    nfx f;
    attnd_engine_ws ws;
    uint64_t bytes = 0;
    int32_t dn, dv;
    fx_init(&f, "narrow-replace", 2);
    attnd_engine_ws_init(&ws);
    fx_prefill(&f, 3, 1, 100);
    const uint64_t uk_f32 = (uint64_t)f.H * DN * (uint64_t)f.dc * 4;
    const uint64_t uv_bf16 = (uint64_t)f.H * (uint64_t)f.dc * DVO * 2;
    fx_load(&f, 3, 1, 0, ATTND_DTYPE_F32, &bytes);
    ck_assert_uint_eq(bytes, uk_f32);
    attnd_engine_weights_dims(f.e, 3, &dn, &dv);
    ck_assert_int_eq(dn, DN);
    ck_assert_int_eq(dv, 0);
    fx_load(&f, 3, 0, 1, ATTND_DTYPE_BF16, &bytes); /* stored as bf16: half the bytes */
    ck_assert_uint_eq(bytes, uk_f32 + uv_bf16);
    fx_check_heads(&f, 3, 1, ATTND_DTYPE_F32, &ws);
    fx_load(&f, 3, 0, 1, ATTND_DTYPE_F32, &bytes); /* a new W_UV; W_UK stays */
    ck_assert_uint_eq(bytes, uk_f32 + 2 * uv_bf16);
    fx_check_heads(&f, 3, 1, ATTND_DTYPE_F32, &ws);
    fx_load(&f, 3, 1, 0, ATTND_DTYPE_BF16, &bytes); /* a new W_UK; W_UV stays */
    fx_check_heads(&f, 3, 1, ATTND_DTYPE_BF16, &ws);
    attnd_engine_weights_dims(f.e, 3, &dn, &dv);
    ck_assert_int_eq(dn, DN);
    ck_assert_int_eq(dv, DVO);
    attnd_engine_ws_cleanup(&ws);
    fx_free(&f);
}
END_TEST

/* Attends racing reloads of both matrices: every answer is the formula of
 * one whole set (W_UK and W_UV of the same load), never a mix and never
 * read from a matrix released under it (checked: freeing or clearing the
 * replaced matrix at once fails this test within a few attends; under
 * ASan a use after free is reported). The loader alternates between two
 * sets A and B, each loaded in one call. */
typedef struct race {
    nfx *f;
    attnd_engine_weights set[2];
    atomic_int stop;
} race;

static void *reloader(void *p)
{
    race *r = p;
    attnd_error err;
    for (int k = 0; !atomic_load(&r->stop); k++)
        ck_assert_int_eq(attnd_engine_load_weights(r->f->e, 0, &r->set[k & 1], NULL, &err),
                         ATTND_OK);
    return NULL;
}

START_TEST(test_attends_racing_reloads_see_one_whole_set_of_weights)
{
    nfx f;
    race rc = {.f = &f};
    attnd_engine_ws ws;
    attnd_error err;
    const float *out, *lse;
    void *xk[2], *xv[2];
    double *dk[2], *dv[2];
    fx_init(&f, "narrow-race", 2);
    attnd_engine_ws_init(&ws);
    fx_prefill(&f, 0, 20, 60);
    for (int s = 0; s < 2; s++) {
        rand_both(&f.r, ATTND_DTYPE_F32, (size_t)f.H * DN * (size_t)f.dc, 0.2, &xk[s], &dk[s]);
        rand_both(&f.r, ATTND_DTYPE_F32, (size_t)f.H * (size_t)f.dc * DVO, 0.1, &xv[s], &dv[s]);
        rc.set[s] = (attnd_engine_weights){DN, ATTND_DTYPE_F32, xk[s], DVO, ATTND_DTYPE_F32,
                                           xv[s]};
    }
    ck_assert_int_eq(attnd_engine_load_weights(f.e, 0, &rc.set[0], NULL, &err), ATTND_OK);
    const int32_t dq = DN + f.dr;
    const size_t rows = (size_t)f.n * (size_t)f.H;
    void *q;
    double *q64, *ref[2];
    rand_both(&f.r, ATTND_DTYPE_F32, rows * (size_t)dq, 1.0, &q, &q64);
    for (int s = 0; s < 2; s++) {
        ref[s] = malloc(sizeof(double) * rows * DVO);
        for (int i = 0; i < f.n; i++)
            nr_ref_heads(f.H, DN, f.dc, f.dr, DVO, f.len[i][0], f.m->scale,
                         q64 + (size_t)i * (size_t)f.H * (size_t)dq, f.kv[i][0], dk[s], dv[s],
                         ref[s] + (size_t)i * (size_t)f.H * DVO, NULL);
    }
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, reloader, &rc), 0);
    attnd_attend_req req = {.layer = 0, .n_seqs = (uint32_t)f.n, .ids = f.ids, .q_tokens = 1,
                            .q_dtype = ATTND_DTYPE_F32, .q = q, .q_form = ATTND_Q_HEADS,
                            .d_nope = DN, .d_vo = DVO};
    int seen[2] = {0, 0};
    for (int it = 0; it < 300; it++) {
        ck_assert_int_eq(attnd_engine_attend(f.e, &req, &ws, &out, &lse, &err), ATTND_OK);
        int which = -1;
        for (int s = 0; s < 2 && which < 0; s++) {
            int all = 1;
            for (size_t r = 0; r < rows && all; r++)
                all = tu_rel_err_f32(out + r * DVO, ref[s] + r * DVO, DVO) <= 1e-5;
            which = all ? s : -1;
        }
        ck_assert_msg(which >= 0, "attend %d matches neither whole set of weights", it);
        seen[which]++;
    }
    atomic_store(&rc.stop, 1);
    pthread_join(t, NULL);
    fprintf(stderr, "narrow race: %d answers from set A, %d from set B\n", seen[0], seen[1]);
    for (int s = 0; s < 2; s++) {
        free(xk[s]);
        free(xv[s]);
        free(dk[s]);
        free(dv[s]);
        free(ref[s]);
    }
    free(q);
    free(q64);
    attnd_engine_ws_cleanup(&ws);
    fx_free(&f);
}
END_TEST

/* Sparse policies with the heads form (worker/SPARSE.md): a topk-pages
 * layer scores its pages with the query the kernel reads, the absorbed one
 * (q_nope . W_UK, then q_rope). The same query sent in the heads form and
 * absorbed by hand (exactly: q_nope in small integers, W_UK in eighths, so
 * every absorbed element is a float32 whatever the summation order) must
 * choose the same pages and give the same bits, and the heads form's
 * output equals the float64 narrow formula over exactly the pages chosen. */
START_TEST(test_heads_form_with_topk_pages_selects_with_the_absorbed_query)
{
    enum { NS = 3, T = 700, PS = 16, KEEP = 5 };
    attnd_engine_config cfg = {.model = *attnd_model_find("tiny-mla"), .page_size = PS,
                               .kv_memory = 32 << 20, .max_sessions = 8,
                               .kernel_threads = 2};
    attnd_session_policy pol = {.dflt = {.kind = ATTND_POLICY_TOPK_PAGES, .sink = PS,
                                         .topk = KEEP}};
    attnd_engine *e;
    attnd_engine_ws wh, wa;
    attnd_error err;
    tu_rng r;
    tu_rng_init(&r, "narrow-topk");
    ck_assert_int_eq(attnd_engine_create(&cfg, &e, &err), ATTND_OK);
    const attnd_model_spec *m = attnd_engine_model(e);
    const int32_t H = m->n_q_heads, dc = m->d_latent, dr = m->d_rope, dk = dc + dr;
    const int32_t dq = DN + dr, l = 1;
    attnd_session_id ids[2 * NS]; /* [0, NS): heads form; [NS, 2 NS): absorbed */
    double *kv[NS];
    int64_t len[NS];
    uint16_t *wire = malloc(sizeof(uint16_t) * T * (size_t)dk);
    for (int i = 0; i < NS; i++) {
        len[i] = T - 97 * i;
        kv[i] = malloc(sizeof(double) * (size_t)len[i] * (size_t)dk);
        for (int64_t t = 0; t < len[i] * dk; t++) {
            wire[t] = attnd_dtype_f32_to_bf16((float)tu_normal(&r));
            kv[i][t] = attnd_dtype_bf16_to_f32(wire[t]);
        }
        for (int k = 0; k < 2; k++) {
            attnd_session_id *id = &ids[i + k * NS];
            ck_assert_msg(attnd_engine_session_create_policy(e, 0, &pol, NULL, id, &err) ==
                              ATTND_OK, "%s", err.msg);
            ck_assert_int_eq(attnd_engine_append(e, id, (uint32_t)l, 0, (uint64_t)len[i],
                                                 ATTND_DTYPE_BF16, wire, &err), ATTND_OK);
        }
    }
    /* W_UK in eighths of [-1, 1], W_UV random; float32 both */
    const size_t nk = (size_t)H * DN * (size_t)dc, nv = (size_t)H * (size_t)dc * DVO;
    float *uk = malloc(sizeof(float) * nk);
    double *uk64 = malloc(sizeof(double) * nk), *uv64;
    void *uv;
    for (size_t k = 0; k < nk; k++)
        uk64[k] = uk[k] = (float)tu_int(&r, -8, 8) / 8.0f;
    rand_both(&r, ATTND_DTYPE_F32, nv, 1.0 / sqrt(dc), &uv, &uv64);
    attnd_engine_weights w = {.d_nope = DN, .uk_dtype = ATTND_DTYPE_F32, .w_uk = uk,
                              .d_vo = DVO, .uv_dtype = ATTND_DTYPE_F32, .w_uv = uv};
    ck_assert_int_eq(attnd_engine_load_weights(e, (uint32_t)l, &w, NULL, &err), ATTND_OK);
    /* the query: heads form, and absorbed by hand */
    float *qh = malloc(sizeof(float) * NS * (size_t)H * (size_t)dq);
    float *qa = malloc(sizeof(float) * NS * (size_t)H * (size_t)dk);
    double *q64 = malloc(sizeof(double) * NS * (size_t)H * (size_t)dq);
    for (size_t k = 0; k < (size_t)NS * (size_t)H; k++) {
        float *h = qh + k * (size_t)dq, *a = qa + k * (size_t)dk;
        for (int32_t j = 0; j < dq; j++)
            h[j] = j < DN ? (float)tu_int(&r, -2, 2) : (float)tu_normal(&r);
        for (int32_t c = 0; c < dc; c++) {
            double x = 0.0;
            for (int32_t j = 0; j < DN; j++)
                x += (double)h[j] *
                     uk64[((k % (size_t)H) * DN + (size_t)j) * (size_t)dc + (size_t)c];
            a[c] = (float)x;
            ck_assert(a[c] == x); /* exact */
        }
        memcpy(a + dc, h + DN, sizeof(float) * (size_t)dr);
        for (int32_t j = 0; j < dq; j++)
            q64[k * (size_t)dq + (size_t)j] = h[j];
    }
    attnd_attend_req rh = {.layer = (uint32_t)l, .n_seqs = NS, .ids = ids, .q_tokens = 1,
                           .q_dtype = ATTND_DTYPE_F32, .q = qh, .want_lse = 1,
                           .q_form = ATTND_Q_HEADS, .d_nope = DN, .d_vo = DVO,
                           .want_pages = 1};
    attnd_attend_req ra = {.layer = (uint32_t)l, .n_seqs = NS, .ids = ids + NS, .q_tokens = 1,
                           .q_dtype = ATTND_DTYPE_F32, .q = qa, .want_lse = 1, .d_vo = DVO,
                           .want_pages = 1};
    const float *oh, *lh, *oa, *la;
    attnd_engine_ws_init(&wh);
    attnd_engine_ws_init(&wa);
    ck_assert_msg(attnd_engine_attend(e, &rh, &wh, &oh, &lh, &err) == ATTND_OK, "%s", err.msg);
    ck_assert_msg(attnd_engine_attend(e, &ra, &wa, &oa, &la, &err) == ATTND_OK, "%s", err.msg);
    /* the same pages: KEEP per session, the sink page first, the newest last */
    ck_assert_uint_eq(wh.chosen_groups, 1);
    ck_assert_uint_eq(wa.chosen_groups, 1);
    ck_assert(!wh.chosen_tokens);
    for (int i = 0; i < NS; i++) {
        ck_assert_int_eq(wh.chosen_indptr[i + 1] - wh.chosen_indptr[i], KEEP);
        ck_assert_int_eq(wa.chosen_indptr[i + 1], wh.chosen_indptr[i + 1]);
        for (int32_t j = wh.chosen_indptr[i]; j < wh.chosen_indptr[i + 1]; j++)
            ck_assert_msg(wh.chosen[j] == wa.chosen[j],
                          "session %d: heads form chose page %lld, absorbed form %lld", i,
                          (long long)wh.chosen[j], (long long)wa.chosen[j]);
        ck_assert_int_eq(wh.chosen[wh.chosen_indptr[i]], 0);
        ck_assert_int_eq(wh.chosen[wh.chosen_indptr[i + 1] - 1], (len[i] - 1) / PS);
    }
    ck_assert(memcmp(oh, oa, sizeof(float) * NS * (size_t)H * DVO) == 0);
    ck_assert(memcmp(lh, la, sizeof(float) * NS * (size_t)H) == 0);
    /* against float64 over exactly those pages */
    double *sel = malloc(sizeof(double) * KEEP * PS * (size_t)dk);
    double *ref = malloc(sizeof(double) * (size_t)H * DVO);
    double *rlse = malloc(sizeof(double) * (size_t)H);
    for (int i = 0; i < NS; i++) {
        int64_t n = 0;
        for (int32_t j = wh.chosen_indptr[i]; j < wh.chosen_indptr[i + 1]; j++) {
            int64_t t0 = wh.chosen[j] * PS, t1 = t0 + PS < len[i] ? t0 + PS : len[i];
            memcpy(sel + n * dk, kv[i] + t0 * dk, sizeof(double) * (size_t)((t1 - t0) * dk));
            n += t1 - t0;
        }
        nr_ref_heads(H, DN, dc, dr, DVO, n, m->scale, q64 + (size_t)i * (size_t)H * (size_t)dq,
                     sel, uk64, uv64, ref, rlse);
        for (int32_t h = 0; h < H; h++) {
            double er = tu_rel_err_f32(oh + ((size_t)i * (size_t)H + (size_t)h) * DVO,
                                       ref + (size_t)h * DVO, DVO);
            ck_assert_msg(er <= 1e-5, "session %d head %d: rel err %.3g", i, h, er);
            ck_assert(fabs(lh[(size_t)i * (size_t)H + (size_t)h] - rlse[h]) <= 1e-4);
        }
    }
    attnd_engine_stats st;
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.select_calls, 2);
    free(sel);
    free(ref);
    free(rlse);
    free(qh);
    free(qa);
    free(q64);
    free(uk);
    free(uk64);
    free(uv);
    free(uv64);
    free(wire);
    for (int i = 0; i < NS; i++)
        free(kv[i]);
    attnd_engine_ws_cleanup(&wh);
    attnd_engine_ws_cleanup(&wa);
    attnd_engine_destroy(e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("narrow");
    TCase *tc = tcase_create("engine");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_heads_form_matches_the_f64_narrow_formula);
    tcase_add_test(tc, test_up_project_alone_projects_the_latent_output);
    tcase_add_test(tc, test_heads_form_without_its_weights_fails_and_appends_nothing);
    tcase_add_test(tc, test_load_weights_refuses_what_the_engine_cannot_use);
    tcase_add_test(tc, test_a_load_replaces_only_the_matrix_it_carries);
    tcase_add_test(tc, test_attends_racing_reloads_see_one_whole_set_of_weights);
    tcase_add_test(tc, test_heads_form_with_topk_pages_selects_with_the_absorbed_query);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
