/* GPU suite of a GPU engine's page selection on the host: an engine on
 * cuda:0 scores pages on the GPU, except for an attend with visible
 * lengths (a sequence-sharded group's rank with a multi-token query),
 * whose selection runs on the host over the compact 8-bit key bounds. A
 * GPU engine makes those only when that selection reads them
 * (worker/sparse_kv.c, attnd__sparse_bounds8_fresh): here the same
 * sessions in a CPU engine and a GPU engine, topk-pages at 1/8 (llama3-8b's
 * GQA shape, a list per KV head), appended in chunks, then decode steps of
 * two new tokens, with visible lengths (the host's selection) and without
 * (the GPU's, on compact bounds: the CPU's integer scoring), in turn, each
 * page's bounds changed between the steps: both engines must choose the
 * same pages for every (session, KV head), and their outputs agree within
 * bf16 rounding (1e-2 normwise per row: the CUDA and CPU decodes of the
 * same pages). The steps without visible lengths fold the new keys into
 * the bounds on the GPU and into the host's copy while the GPU decodes
 * (attnd__sparse_note_gpu / _note_host): the GPU's choice checks the
 * first, the next step's host selection the second.
 *
 * given-tokens on a GPU engine (its decode reads whole pages: the listed
 * tokens are gathered into pages of their own first, sparse_attend.c's
 * to_gathered): llama3-8b and deepseek-v3 sessions whose tokens are given
 * (a list per session, per KV head, and the given list alone with visible
 * lengths), beside a session whose KV heads 4..7 (GQA) or every head (MLA)
 * select topk-pages on the host in the same batch; both engines must
 * attend the same tokens and agree as above. Exit 77 (skipped) without a
 * usable GPU. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_dtype.h"
#include "attnd_worker.h"
#include "gpu_engine_main.h"
#include "testutil.h"

enum { NS = 3, S = 2, STEPS = 6 };
static const int64_t prefill[NS] = {3000, 1700, 4100};

static attnd_engine *engine_of(const char *model, const char *device)
{
    attnd_engine_config cfg = {.model = *attnd_model_find(model), .page_size = 64,
                               .kv_memory = 96 << 20, .max_sessions = NS};
    cfg.model.n_layers = 1;
    snprintf(cfg.device, sizeof cfg.device, "%s", device);
    attnd_engine *e = NULL;
    attnd_error err;
    ck_assert_msg(attnd_engine_create(&cfg, &e, &err) == ATTND_OK, "%s: %s", device, err.msg);
    return e;
}

static attnd_engine *engine(const char *device)
{
    return engine_of("llama3-8b", device);
}

static void fill(tu_rng *r, uint16_t *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = attnd_dtype_f32_to_bf16((float)tu_normal(r));
}

/* Session i of policy pol[i] (pol[0] for all when one) in both engines,
 * the same random KV of prefill[i] tokens appended to each in chunks that
 * end mid-page; len[i] its length. */
static void open_pairs(attnd_engine *e[2], const attnd_session_policy *pol, int one, tu_rng *r,
                       attnd_session_id ids[2][NS], int64_t len[NS])
{
    const size_t te = (size_t)attnd_model_kv_token_elems(attnd_engine_model(e[0]));
    const int64_t chunk = 700;
    uint16_t *kv = malloc(sizeof(uint16_t) * (size_t)chunk * te);
    attnd_error err;
    for (int i = 0; i < NS; i++) {
        for (int k = 0; k < 2; k++)
            ck_assert_int_eq(attnd_engine_session_create_policy(e[k], 0, &pol[one ? 0 : i], NULL,
                                                                &ids[k][i], &err),
                             ATTND_OK);
        for (int64_t t = 0; t < prefill[i]; t += chunk) {
            int64_t n = prefill[i] - t < chunk ? prefill[i] - t : chunk;
            fill(r, kv, (size_t)n * te);
            for (int k = 0; k < 2; k++)
                ck_assert_msg(attnd_engine_append(e[k], &ids[k][i], 0, (uint64_t)t, (uint64_t)n,
                                                  ATTND_DTYPE_BF16, kv, &err) == ATTND_OK,
                              "append: %s", err.msg);
        }
        len[i] = prefill[i];
    }
    free(kv);
}

/* Row-wise agreement of the GPU engine's outputs with the CPU engine's. */
static void agree(const float *gpu, const float *cpu, size_t rows, size_t dv, const char *what,
                  int step)
{
    for (size_t row = 0; row < rows; row++) {
        double num = 0.0, den = 0.0;
        for (size_t d = 0; d < dv; d++) {
            double a = gpu[row * dv + d], b = cpu[row * dv + d];
            num += (a - b) * (a - b);
            den += b * b;
        }
        ck_assert_msg(num <= 1e-4 * den, "%s step %d row %zu: GPU and CPU outputs differ by %.3g "
                      "normwise", what, step, row, den > 0 ? num / den : num);
    }
}

START_TEST(test_gpu_engine_host_selection_chooses_the_cpu_engines_pages)
{
    attnd_engine *e[2] = {engine("cpu"), engine("cuda:0")};
    const attnd_model_spec *m = attnd_engine_model(e[0]);
    const size_t te = (size_t)attnd_model_kv_token_elems(m);
    const size_t qe = (size_t)m->n_q_heads * (size_t)attnd_model_d_k(m);
    const size_t dv = (size_t)attnd_model_d_v(m);
    attnd_session_policy pol = {
        .dflt = {.kind = ATTND_POLICY_TOPK_PAGES, .topk_fraction = 0.125f, .sink = 64}};
    attnd_session_id ids[2][NS];
    attnd_error err;
    tu_rng r;
    tu_rng_init(&r, "gpu-sparse-engine");
    int64_t len[NS];
    open_pairs(e, &pol, 1, &r, ids, len);
    uint16_t *q = malloc(sizeof(uint16_t) * NS * S * qe);
    uint16_t *nk = malloc(sizeof(uint16_t) * NS * S * te);
    attnd_engine_ws ws[2];
    attnd_engine_ws_init(&ws[0]);
    attnd_engine_ws_init(&ws[1]);
    float *out0 = malloc(sizeof(float) * NS * S * (size_t)m->n_q_heads * dv);
    uint64_t vis[NS * S];
    int64_t differ = 0, lists = 0;
    for (int step = 0; step < STEPS; step++) {
        fill(&r, q, NS * S * qe);
        fill(&r, nk, NS * S * te);
        for (int i = 0; i < NS; i++) {
            len[i] += S;
            for (int s = 0; s < S; s++) /* the causal rule, spelled out */
                vis[i * S + s] = (uint64_t)(len[i] - (S - 1 - s));
        }
        const int32_t *ip[2];
        const int64_t *ch[2];
        for (int k = 0; k < 2; k++) {
            attnd_attend_req req = {.layer = 0, .n_seqs = NS, .ids = ids[k], .q_tokens = S,
                                    .q_dtype = ATTND_DTYPE_BF16, .q = q,
                                    .new_kv_dtype = ATTND_DTYPE_BF16, .new_kv = nk,
                                    .visible = step % 2 ? vis : NULL, .want_pages = 1};
            const float *out, *lse;
            ck_assert_msg(attnd_engine_attend(e[k], &req, &ws[k], &out, &lse, &err) == ATTND_OK,
                          "attend on %s: %s", k ? "cuda:0" : "cpu", err.msg);
            ck_assert_uint_eq(ws[k].chosen_groups, (uint32_t)m->n_kv_heads);
            ck_assert_int_eq(ws[k].chosen_tokens, 0);
            ip[k] = ws[k].chosen_indptr;
            ch[k] = ws[k].chosen;
            if (k == 0)
                memcpy(out0, out, sizeof(float) * NS * S * (size_t)m->n_q_heads * dv);
            else
                agree(out, out0, (size_t)NS * S * (size_t)m->n_q_heads, dv, "topk-pages", step);
        }
        /* what each (session, KV head) attended */
        const int64_t nl = (int64_t)NS * m->n_kv_heads;
        ck_assert_int_eq(ip[0][nl], ip[1][nl]);
        for (int64_t li = 0; li < nl; li++) {
            ck_assert_int_eq(ip[0][li + 1] - ip[0][li], ip[1][li + 1] - ip[1][li]);
            lists++;
            differ += memcmp(ch[0] + ip[0][li], ch[1] + ip[1][li],
                             sizeof(int64_t) * (size_t)(ip[0][li + 1] - ip[0][li])) != 0;
        }
    }
    ck_assert_msg(differ == 0, "%lld of %lld lists chose other pages on the GPU engine",
                  (long long)differ, (long long)lists);
    fprintf(stderr, "gpu sparse engine: %lld lists, the same pages on both engines\n",
            (long long)lists);
    free(out0);
    attnd_engine_ws_cleanup(&ws[0]);
    attnd_engine_ws_cleanup(&ws[1]);
    free(q);
    free(nk);
    attnd_engine_destroy(e[0]);
    attnd_engine_destroy(e[1]);
}
END_TEST

static void given_tokens_case(const char *model)
{
    attnd_engine *e[2] = {engine_of(model, "cpu"), engine_of(model, "cuda:0")};
    const attnd_model_spec *m = attnd_engine_model(e[0]);
    const size_t te = (size_t)attnd_model_kv_token_elems(m);
    const size_t qe = (size_t)m->n_q_heads * (size_t)attnd_model_d_k(m);
    const size_t dv = (size_t)attnd_model_d_v(m);
    const uint32_t H = (uint32_t)m->n_kv_heads;
    /* sessions 0 and 1: given-tokens; session 1's KV heads from H/2 up and
     * session 2 entirely topk-pages (MLA: session 2 only) */
    attnd_policy given = {.kind = ATTND_POLICY_GIVEN_TOKENS};
    attnd_policy topk = {.kind = ATTND_POLICY_TOPK_PAGES, .topk_fraction = 0.125f, .sink = 64};
    attnd_policy_rule half = {.layer_begin = 0, .layer_end = 1, .head_begin = H / 2,
                              .head_end = H, .policy = topk};
    attnd_session_policy pol[NS] = {{.dflt = given}, {.dflt = given}, {.dflt = topk}};
    if (H > 1)
        pol[1] = (attnd_session_policy){.dflt = given, .rules = &half, .n_rules = 1};
    attnd_session_id ids[2][NS];
    attnd_error err;
    tu_rng r;
    tu_rng_init(&r, model);
    int64_t len[NS];
    open_pairs(e, pol, 0, &r, ids, len);
    const size_t rows = (size_t)NS * S * (size_t)m->n_q_heads;
    uint16_t *q = malloc(sizeof(uint16_t) * NS * S * qe);
    uint16_t *nk = malloc(sizeof(uint16_t) * NS * S * te);
    float *out0 = malloc(sizeof(float) * rows * dv);
    uint32_t *indptr = malloc(sizeof(uint32_t) * (NS * H + 1));
    uint64_t *idx = malloc(sizeof(uint64_t) * (size_t)(prefill[2] + 64) * NS * H);
    attnd_engine_ws ws[2];
    attnd_engine_ws_init(&ws[0]);
    attnd_engine_ws_init(&ws[1]);
    uint64_t vis[NS * S];
    int64_t lists = 0, tokens = 0;
    for (int step = 0; step < STEPS; step++) {
        /* step % 3: 0 one list per session, 1 one per KV head, 2 the given
         * list alone (given_only, with visible lengths) */
        const int kind = step % 3, only = kind == 2;
        const int want = step != 4; /* step 4: the lists without their logical tokens */
        const uint32_t gg = kind == 1 ? H : 1;
        fill(&r, q, NS * S * qe);
        fill(&r, nk, NS * S * te);
        uint32_t n_idx = 0;
        indptr[0] = 0;
        for (int i = 0; i < NS; i++) {
            len[i] += S;
            for (int s = 0; s < S; s++)
                vis[i * S + s] = (uint64_t)(len[i] - (S - 1 - s));
            for (uint32_t g = 0; g < gg; g++) {
                /* about an eighth of the tokens (the newest among them), for
                 * lists whose heads are all given-tokens (others take none) */
                if (i == 0 || (i == 1 && (H == 1 || (gg > 1 && g < H / 2))))
                    for (int64_t t = 0; t < len[i]; t++)
                        if (tu_next(&r) % 8 == 0 || (only && t >= len[i] - S))
                            idx[n_idx++] = (uint64_t)t;
                indptr[i * gg + g + 1] = n_idx;
            }
        }
        const int32_t *ip[2];
        const int64_t *ch[2];
        for (int k = 0; k < 2; k++) {
            attnd_attend_req req = {.layer = 0, .n_seqs = NS, .ids = ids[k], .q_tokens = S,
                                    .q_dtype = ATTND_DTYPE_BF16, .q = q,
                                    .new_kv_dtype = ATTND_DTYPE_BF16, .new_kv = nk,
                                    .visible = step % 2 || only ? vis : NULL,
                                    .given_groups = gg, .given_indptr = indptr,
                                    .given_idx = idx, .given_only = only, .want_pages = want};
            const float *out, *lse;
            ck_assert_msg(attnd_engine_attend(e[k], &req, &ws[k], &out, &lse, &err) == ATTND_OK,
                          "%s step %d attend on %s: %s", model, step, k ? "cuda:0" : "cpu",
                          err.msg);
            ck_assert_int_eq(want ? ws[k].chosen_tokens : (int)ws[k].chosen_groups, want);
            ip[k] = ws[k].chosen_indptr;
            ch[k] = ws[k].chosen;
            if (k == 0)
                memcpy(out0, out, sizeof(float) * rows * dv);
            else
                agree(out, out0, rows, dv, model, step);
        }
        ck_assert_uint_eq(ws[0].chosen_groups, ws[1].chosen_groups);
        if (!want)
            continue;
        const int64_t nl = (int64_t)NS * ws[0].chosen_groups;
        ck_assert_int_eq(ip[0][nl], ip[1][nl]);
        for (int64_t li = 0; li < nl; li++) {
            ck_assert_int_eq(ip[0][li + 1] - ip[0][li], ip[1][li + 1] - ip[1][li]);
            ck_assert_msg(!memcmp(ch[0] + ip[0][li], ch[1] + ip[1][li],
                                  sizeof(int64_t) * (size_t)(ip[0][li + 1] - ip[0][li])),
                          "%s step %d list %lld: other tokens on the GPU engine", model, step,
                          (long long)li);
            lists++;
        }
        tokens += ip[1][nl];
    }
    fprintf(stderr, "gpu given-tokens %s: %lld lists, %lld tokens, the same on both engines\n",
            model, (long long)lists, (long long)tokens);
    free(idx);
    free(indptr);
    free(out0);
    attnd_engine_ws_cleanup(&ws[0]);
    attnd_engine_ws_cleanup(&ws[1]);
    free(q);
    free(nk);
    attnd_engine_destroy(e[0]);
    attnd_engine_destroy(e[1]);
}

START_TEST(test_gpu_engine_given_tokens_attend_the_cpu_engines_tokens)
{
    given_tokens_case("llama3-8b");
    given_tokens_case("deepseek-v3");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gpu_sparse_engine");
    TCase *tc = tcase_create("host selection");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_gpu_engine_host_selection_chooses_the_cpu_engines_pages);
    tcase_add_test(tc, test_gpu_engine_given_tokens_attend_the_cpu_engines_tokens);
    suite_add_tcase(s, tc);
    return gpu_engine_suite_main("test_gpu_sparse_engine", "llama3-8b", s);
}
