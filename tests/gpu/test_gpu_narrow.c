/* GPU suite of the narrow MLA wire: an engine on cuda:0 (KV pages in GPU
 * memory, kernels/cuda) holding bf16 W_UK and float32 W_UV
 * (attnd_engine_load_weights: the backend's device copies), heads-form
 * attends (absorbed and up-projected with cuBLAS on the GPU: worker/
 * backend_cuda.c) and an absorbed attend with d_vo alone, every row
 * against the float64 narrow formula (tests/common/narrow_ref.h) over the
 * stored KV. DeepSeek-V3's shapes (128 heads, d_c 512, d_r 64; d_nope 128,
 * d_v 128), 2 layers, sessions of 1, 70 and 700 tokens, new KV, 1 and 2
 * query tokens, bf16 and float32 queries; and a topk-pages layer in the
 * heads form choosing the pages the absorbed form chooses (the selection
 * scores with the absorbed query, after the cuBLAS absorb).
 *
 * Bounds (the bf16 bounds of test_gpu_e2e): outputs 1e-2 normwise relative
 * per row, LSE 1e-2 (the absorbed query is rounded to bf16 before the
 * kernel, as any query the kernel reads). Exit 77 (skipped) without a
 * usable GPU. Written without a GPU at hand: not run when it was written. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_dtype.h"
#include "attnd_worker.h"
#include "narrow_ref.h"
#include "gpu_engine_main.h"
#include "testutil.h"

enum { L = 2, NS = 3, DN = 128, DVO = 128, CAP = 800 };
static const int64_t prefill[NS] = {1, 70, 700};

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

START_TEST(test_gpu_heads_form_matches_the_f64_narrow_formula)
{
    attnd_engine_config cfg = {.model = *attnd_model_find("deepseek-v3"), .page_size = 64,
                               .kv_memory = 256 << 20, .max_sessions = 8};
    cfg.model.n_layers = L;
    snprintf(cfg.device, sizeof cfg.device, "cuda:0");
    attnd_engine *e = NULL;
    attnd_error err;
    tu_rng r;
    tu_rng_init(&r, "gpu-narrow");
    ck_assert_msg(attnd_engine_create(&cfg, &e, &err) == ATTND_OK, "engine: %s", err.msg);
    const attnd_model_spec *m = attnd_engine_model(e);
    const int32_t H = m->n_q_heads, dc = m->d_latent, dr = m->d_rope, dk = dc + dr;
    const int32_t dq = DN + dr;
    attnd_session_id ids[NS];
    double *kv[NS][L];
    int64_t len[NS][L];
    uint16_t *wire = malloc(sizeof(uint16_t) * CAP * (size_t)dk);
    for (int i = 0; i < NS; i++) {
        ck_assert_int_eq(attnd_engine_session_create(e, 0, &ids[i], &err), ATTND_OK);
        for (int l = 0; l < L; l++) {
            kv[i][l] = malloc(sizeof(double) * CAP * (size_t)dk);
            for (int64_t t = 0; t < prefill[i] * dk; t++) {
                wire[t] = attnd_dtype_f32_to_bf16((float)tu_normal(&r));
                kv[i][l][t] = attnd_dtype_bf16_to_f32(wire[t]);
            }
            len[i][l] = prefill[i];
            ck_assert_int_eq(attnd_engine_append(e, &ids[i], (uint32_t)l, 0,
                                                 (uint64_t)prefill[i], ATTND_DTYPE_BF16, wire,
                                                 &err), ATTND_OK);
        }
    }
    void *xk, *xv;
    double *wk[L], *wv[L];
    for (int l = 0; l < L; l++) {
        rand_both(&r, ATTND_DTYPE_BF16, (size_t)H * DN * (size_t)dc, 1.0 / sqrt(DN), &xk, &wk[l]);
        rand_both(&r, l ? ATTND_DTYPE_F32 : ATTND_DTYPE_BF16, (size_t)H * (size_t)dc * DVO,
                  1.0 / sqrt(dc), &xv, &wv[l]);
        attnd_engine_weights w = {DN, ATTND_DTYPE_BF16, xk, DVO,
                                  l ? ATTND_DTYPE_F32 : ATTND_DTYPE_BF16, xv};
        ck_assert_msg(attnd_engine_load_weights(e, (uint32_t)l, &w, NULL, &err) == ATTND_OK,
                      "load: %s", err.msg);
        free(xk);
        free(xv);
    }
    attnd_engine_ws ws;
    attnd_engine_ws_init(&ws);
    double *ref = malloc(sizeof(double) * (size_t)H * DVO), *rlse = malloc(sizeof(double) * H);
    double worst = 0.0, worst_lse = 0.0;
    for (int l = 0; l < L; l++)
        for (int32_t S = 1; S <= 2; S++) {
            const attnd_dtype qt = S == 1 ? ATTND_DTYPE_BF16 : ATTND_DTYPE_F32;
            uint64_t pos[NS];
            for (int i = 0; i < NS; i++) { /* S new entries per session */
                pos[i] = (uint64_t)len[i][l];
                for (int64_t t = 0; t < S * dk; t++) {
                    uint16_t b = attnd_dtype_f32_to_bf16((float)tu_normal(&r));
                    wire[(size_t)i * (size_t)S * (size_t)dk + (size_t)t] = b;
                    kv[i][l][len[i][l] * dk + t] = attnd_dtype_bf16_to_f32(b);
                }
                len[i][l] += S;
            }
            void *q;
            double *q64;
            rand_both(&r, qt, (size_t)NS * (size_t)S * (size_t)H * (size_t)dq, 1.0, &q, &q64);
            attnd_attend_req req = {.layer = (uint32_t)l, .n_seqs = NS, .ids = ids,
                                    .q_tokens = S, .q_dtype = qt, .q = q,
                                    .new_kv_dtype = ATTND_DTYPE_BF16, .new_kv = wire,
                                    .positions = pos, .want_lse = 1, .q_form = ATTND_Q_HEADS,
                                    .d_nope = DN, .d_vo = DVO};
            const float *out, *lse;
            ck_assert_msg(attnd_engine_attend(e, &req, &ws, &out, &lse, &err) == ATTND_OK,
                          "attend: %s", err.msg);
            for (int i = 0; i < NS; i++)
                for (int32_t s = 0; s < S; s++) {
                    size_t row = ((size_t)i * (size_t)S + (size_t)s) * (size_t)H;
                    nr_ref_heads_q(H, DN, dc, dr, DVO, len[i][l] - (S - 1 - s), m->scale,
                                   q64 + row * (size_t)dq, kv[i][l], wk[l], wv[l], ref, rlse,
                                   1);
                    for (int32_t h = 0; h < H; h++) {
                        double er = tu_rel_err_f32(out + (row + (size_t)h) * DVO,
                                                   ref + (size_t)h * DVO, DVO);
                        worst = er > worst ? er : worst;
                        ck_assert_msg(er <= 1e-2, "layer %d seq %d token %d head %d: %.3g", l,
                                      i, s, h, er);
                        /* the reference rounds q and the absorbed q_c to
                         * bf16 as the GPU does (its kernel reads a bf16
                         * query); against an all-float64 absorb the LSE
                         * was off by up to ~0.015 (H200, 2026-12-05) */
                        double el = fabs(lse[row + (size_t)h] - rlse[h]);
                        worst_lse = el > worst_lse ? el : worst_lse;
                        ck_assert_msg(el <= 1e-2,
                                      "layer %d seq %d token %d head %d: lse %.6g, f64 %.6g", l,
                                      i, s, h, (double)lse[row + (size_t)h], rlse[h]);
                    }
                }
            free(q);
            free(q64);
        }
    fprintf(stderr, "gpu narrow: max rel err %.3g, max lse err %.3g\n", worst, worst_lse);
    attnd_engine_ws_cleanup(&ws);
    for (int l = 0; l < L; l++) {
        free(wk[l]);
        free(wv[l]);
        for (int i = 0; i < NS; i++)
            free(kv[i][l]);
    }
    free(ref);
    free(rlse);
    free(wire);
    attnd_engine_destroy(e);
}
END_TEST

/* topk-pages in the heads form on the GPU: the backend absorbs before the
 * page selection (worker/backend_cuda.c, decode_locked), so the pages are
 * scored with the absorbed query. The same query in the heads form and
 * absorbed by hand (exactly, and exact in bf16: q_nope small integers, W_UK
 * two eighths per latent column) chooses the same pages, and each form's
 * output equals the float64 narrow formula over exactly those pages. A
 * third call sends the heads form with visible lengths (a sequence-sharded
 * rank's form: its lists are cut on the host, so the GPU selects first,
 * attnd__gpu_select_pages, then decodes): the same pages, the same
 * outputs. */
START_TEST(test_gpu_heads_form_with_topk_pages_selects_with_the_absorbed_query)
{
    enum { NT = 3, PS = 64, KEEP = 5 };
    static const int64_t tlen[NT] = {1100, 900, 700};
    attnd_engine_config cfg = {.model = *attnd_model_find("deepseek-v3"), .page_size = PS,
                               .kv_memory = 256 << 20, .max_sessions = 8};
    cfg.model.n_layers = L;
    snprintf(cfg.device, sizeof cfg.device, "cuda:0");
    attnd_session_policy pol = {.dflt = {.kind = ATTND_POLICY_TOPK_PAGES, .sink = PS,
                                         .topk = KEEP}};
    attnd_engine *e = NULL;
    attnd_error err;
    tu_rng r;
    tu_rng_init(&r, "gpu-narrow-topk");
    ck_assert_msg(attnd_engine_create(&cfg, &e, &err) == ATTND_OK, "engine: %s", err.msg);
    const attnd_model_spec *m = attnd_engine_model(e);
    const int32_t H = m->n_q_heads, dc = m->d_latent, dr = m->d_rope, dk = dc + dr;
    const int32_t dq = DN + dr, l = 1;
    attnd_session_id ids[2 * NT]; /* [0, NT): heads form; [NT, 2 NT): absorbed */
    double *kv[NT];
    uint16_t *wire = malloc(sizeof(uint16_t) * (size_t)tlen[0] * (size_t)dk);
    for (int i = 0; i < NT; i++) {
        kv[i] = malloc(sizeof(double) * (size_t)tlen[i] * (size_t)dk);
        for (int64_t t = 0; t < tlen[i] * dk; t++) {
            wire[t] = attnd_dtype_f32_to_bf16((float)tu_normal(&r));
            kv[i][t] = attnd_dtype_bf16_to_f32(wire[t]);
        }
        for (int k = 0; k < 2; k++) {
            attnd_session_id *id = &ids[i + k * NT];
            ck_assert_msg(attnd_engine_session_create_policy(e, 0, &pol, NULL, id, &err) ==
                              ATTND_OK, "%s", err.msg);
            ck_assert_int_eq(attnd_engine_append(e, id, (uint32_t)l, 0, (uint64_t)tlen[i],
                                                 ATTND_DTYPE_BF16, wire, &err), ATTND_OK);
        }
    }
    /* W_UK: column c of head h takes q_nope[c % DN] and q_nope[(7 c + 3) % DN]
     * in eighths, so that every absorbed element is a multiple of 1/8 below 4
     * in magnitude: exact in float32 and in bf16 */
    const size_t nk = (size_t)H * DN * (size_t)dc, nv = (size_t)H * (size_t)dc * DVO;
    float *uk = calloc(nk, sizeof(float));
    double *uk64 = malloc(sizeof(double) * nk), *uv64;
    void *uv;
    for (int32_t h = 0; h < H; h++)
        for (int32_t c = 0; c < dc; c++) {
            int32_t k0 = c % DN, k1 = (7 * c + 3) % DN;
            float *col = uk + (size_t)h * DN * (size_t)dc + (size_t)c;
            col[(size_t)k0 * (size_t)dc] = (float)tu_int(&r, -8, 8) / 8.0f;
            if (k1 != k0)
                col[(size_t)k1 * (size_t)dc] = (float)tu_int(&r, -8, 8) / 8.0f;
        }
    for (size_t k = 0; k < nk; k++)
        uk64[k] = uk[k];
    rand_both(&r, ATTND_DTYPE_F32, nv, 1.0 / sqrt(dc), &uv, &uv64);
    attnd_engine_weights w = {DN, ATTND_DTYPE_F32, uk, DVO, ATTND_DTYPE_F32, uv};
    ck_assert_msg(attnd_engine_load_weights(e, (uint32_t)l, &w, NULL, &err) == ATTND_OK,
                  "load: %s", err.msg);
    /* the query: heads form (bf16) and absorbed by hand (bf16, exact) */
    const size_t rows = (size_t)NT * (size_t)H;
    uint16_t *qh = malloc(sizeof(uint16_t) * rows * (size_t)dq);
    uint16_t *qa = malloc(sizeof(uint16_t) * rows * (size_t)dk);
    double *q64 = malloc(sizeof(double) * rows * (size_t)dq);
    for (size_t k = 0; k < rows; k++) {
        uint16_t *h = qh + k * (size_t)dq, *a = qa + k * (size_t)dk;
        double *h64 = q64 + k * (size_t)dq;
        for (int32_t j = 0; j < dq; j++) {
            float x = j < DN ? (float)tu_int(&r, -2, 2) : (float)tu_normal(&r);
            h[j] = attnd_dtype_f32_to_bf16(x);
            h64[j] = attnd_dtype_bf16_to_f32(h[j]);
        }
        for (int32_t c = 0; c < dc; c++) {
            double x = 0.0;
            for (int32_t j = 0; j < DN; j++)
                x += h64[j] * uk64[((k % (size_t)H) * DN + (size_t)j) * (size_t)dc + (size_t)c];
            a[c] = attnd_dtype_f32_to_bf16((float)x);
            ck_assert(attnd_dtype_bf16_to_f32(a[c]) == x); /* exact */
        }
        memcpy(a + dc, h + DN, sizeof(uint16_t) * (size_t)dr);
    }
    uint64_t vis[NT];
    for (int i = 0; i < NT; i++)
        vis[i] = (uint64_t)tlen[i];
    attnd_attend_req rq[3] = {
        {.layer = (uint32_t)l, .n_seqs = NT, .ids = ids, .q_tokens = 1,
         .q_dtype = ATTND_DTYPE_BF16, .q = qh, .want_lse = 1, .q_form = ATTND_Q_HEADS,
         .d_nope = DN, .d_vo = DVO, .want_pages = 1},
        {.layer = (uint32_t)l, .n_seqs = NT, .ids = ids + NT, .q_tokens = 1,
         .q_dtype = ATTND_DTYPE_BF16, .q = qa, .want_lse = 1, .d_vo = DVO, .want_pages = 1},
        {.layer = (uint32_t)l, .n_seqs = NT, .ids = ids, .q_tokens = 1,
         .q_dtype = ATTND_DTYPE_BF16, .q = qh, .want_lse = 1, .q_form = ATTND_Q_HEADS,
         .d_nope = DN, .d_vo = DVO, .want_pages = 1, .visible = vis},
    };
    attnd_engine_ws ws[3];
    const float *out[3], *lse[3];
    for (int f = 0; f < 3; f++) {
        attnd_engine_ws_init(&ws[f]);
        ck_assert_msg(attnd_engine_attend(e, &rq[f], &ws[f], &out[f], &lse[f], &err) == ATTND_OK,
                      "%s form: %s", f == 1 ? "absorbed" : f ? "heads, visible" : "heads",
                      err.msg);
        ck_assert_uint_eq(ws[f].chosen_groups, 1);
    }
    for (int i = 0; i <= NT; i++)
        ck_assert_int_eq(ws[2].chosen_indptr[i], ws[0].chosen_indptr[i]);
    ck_assert(!memcmp(ws[2].chosen, ws[0].chosen, sizeof(int64_t) * NT * KEEP));
    for (size_t k = 0; k < rows * DVO; k++) /* the same lists through the same decode */
        ck_assert_msg(fabsf(out[2][k] - out[0][k]) <= 1e-5f * (1.0f + fabsf(out[0][k])),
                      "visible lengths: output %zu %g, without %g", k, out[2][k], out[0][k]);
    double *sel = malloc(sizeof(double) * KEEP * PS * (size_t)dk);
    double *ref = malloc(sizeof(double) * (size_t)H * DVO), *rlse = malloc(sizeof(double) * H);
    for (int i = 0; i < NT; i++) {
        const int32_t *ip = ws[0].chosen_indptr;
        ck_assert_int_eq(ip[i + 1] - ip[i], KEEP);
        ck_assert_int_eq(ws[1].chosen_indptr[i + 1], ip[i + 1]);
        int64_t n = 0;
        for (int32_t j = ip[i]; j < ip[i + 1]; j++) {
            ck_assert_msg(ws[0].chosen[j] == ws[1].chosen[j],
                          "session %d: heads form chose page %lld, absorbed form %lld", i,
                          (long long)ws[0].chosen[j], (long long)ws[1].chosen[j]);
            int64_t t0 = ws[0].chosen[j] * PS, t1 = t0 + PS < tlen[i] ? t0 + PS : tlen[i];
            memcpy(sel + n * dk, kv[i] + t0 * dk, sizeof(double) * (size_t)((t1 - t0) * dk));
            n += t1 - t0;
        }
        ck_assert_int_eq(ws[0].chosen[ip[i]], 0);
        ck_assert_int_eq(ws[0].chosen[ip[i + 1] - 1], (tlen[i] - 1) / PS);
        nr_ref_heads(H, DN, dc, dr, DVO, n, m->scale, q64 + (size_t)i * (size_t)H * (size_t)dq,
                     sel, uk64, uv64, ref, rlse);
        for (int f = 0; f < 2; f++)
            for (int32_t h = 0; h < H; h++) {
                double er = tu_rel_err_f32(out[f] + ((size_t)i * (size_t)H + (size_t)h) * DVO,
                                           ref + (size_t)h * DVO, DVO);
                ck_assert_msg(er <= 1e-2, "%s form session %d head %d: %.3g",
                              f ? "absorbed" : "heads", i, h, er);
                ck_assert(fabs(lse[f][(size_t)i * (size_t)H + (size_t)h] - rlse[h]) <= 1e-2);
            }
    }
    for (int f = 0; f < 3; f++)
        attnd_engine_ws_cleanup(&ws[f]);
    for (int i = 0; i < NT; i++)
        free(kv[i]);
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
    attnd_engine_destroy(e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gpu_narrow");
    TCase *tc = tcase_create("narrow");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_gpu_heads_form_matches_the_f64_narrow_formula);
    tcase_add_test(tc, test_gpu_heads_form_with_topk_pages_selects_with_the_absorbed_query);
    suite_add_tcase(s, tc);
    return gpu_engine_suite_main("test_gpu_narrow", "deepseek-v3", s);
}
