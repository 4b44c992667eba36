/* Check suite of attnd_kernels.h's non-finite rule, on every kernel path
 * this CPU has and through split-KV: one NaN, +inf or -inf planted in the
 * stored K or V of one random token (or in one query element) of a fresh
 * random paged problem makes exactly the (query token, head) rows that
 * attend it come back NaN in every output element and in lse; every other
 * row still matches the float64 reference on the clean data; an empty
 * sequence still gives out 0, lse -inf; no non-empty row ever comes back
 * as "no KV" (0 / -inf). Split-KV (forced 2 and max ranges, and auto, on
 * a 3-thread pool) must carry the poisoned range through the merge, and
 * attnd_kernel_merge_states itself must carry a NaN state, whichever side
 * holds it.
 *
 * Bounds for the clean rows are the paths' own (see path_bounds): 1e-5
 * normwise / 1e-4 LSE for float32 arithmetic; the bf16 dot-product path
 * rounds P to bf16 on bf16 KV and is held to 1e-2 there. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_kernels.h"
#include "paged_problem.h"

enum { AT_K, AT_V, AT_Q };

typedef struct plant {
    int where; /* AT_K, AT_V (stored KV) or AT_Q (one query element) */
    int32_t seq, kvh, tok, dim;
    int32_t s, head; /* AT_Q: the query row */
    float value;     /* NaN, +inf or -inf */
} plant;

static const char *value_name(float v)
{
    return isnan(v) ? "NaN" : v > 0 ? "+inf" : "-inf";
}

/* Force path p through the environment; 0 if this CPU cannot run it. */
static int use_path(attnd_kernel_path p)
{
    setenv("ATTND_KERNEL_PATH", attnd_kernel_path_str(p), 1);
    attnd_kernel_path got = attnd_kernel_path_reset();
    return attnd_kernel_path_supported(p) && got == p;
}

/* As test_kernel_paths.c: avx512bf16 rounds P to bf16 on bf16 KV. */
static void path_bounds(attnd_kernel_path p, attnd_dtype kv, double *out_b, double *lse_b)
{
    *out_b = p == ATTND_KERNEL_PATH_AVX512_BF16 && kv == ATTND_DTYPE_BF16 ? 1e-2 : 1e-5;
    *lse_b = 1e-4;
}

/* Store v at element `off` of a typed array. */
static void store_value(attnd_dtype t, void *base, size_t off, float v)
{
    if (t == ATTND_DTYPE_F32)
        ((float *)base)[off] = v;
    else if (t == ATTND_DTYPE_BF16)
        ((uint16_t *)base)[off] = attnd_dtype_f32_to_bf16(v);
    else
        ((uint16_t *)base)[off] = attnd_dtype_f32_to_f16(v);
}

/* Write the planted value into the problem's pool (or q). The float64
 * copies stay clean: they are the reference for the rows it must not
 * touch. */
static void plant_value(pp_problem *p, const plant *pl)
{
    const attnd_kernel_kv_layout *l = &p->l;
    if (pl->where == AT_Q) {
        size_t off = (((size_t)pl->seq * p->sp.q_tokens + pl->s) * p->sp.hq + pl->head) *
                         (size_t)l->d_k + (size_t)pl->dim;
        store_value(p->sp.q_t, p->q, off, pl->value);
        return;
    }
    int64_t page = p->idx[p->indptr[pl->seq] + pl->tok / l->page_size];
    int64_t slot = pl->tok % l->page_size;
    int64_t off = page * l->page_stride;
    if (pl->where == AT_K)
        off += pl->kvh * l->k_head_stride + slot * l->k_token_stride + pl->dim;
    else
        off += l->v_offset + pl->kvh * l->v_head_stride + slot * l->v_token_stride + pl->dim;
    store_value(l->dtype, p->pool, (size_t)off, pl->value);
}

/* Whether query row (i, s, head h) attends the planted value. */
static int row_sees(const pp_problem *p, const plant *pl, int32_t i, int32_t s, int32_t h)
{
    int64_t vis = p->sp.lens[i] - (p->sp.q_tokens - 1 - s);
    int32_t G = p->sp.hq / p->l.n_kv_heads;
    if (i != pl->seq || vis <= 0)
        return 0;
    if (pl->where == AT_Q)
        return s == pl->s && h == pl->head;
    return h / G == pl->kvh && pl->tok < vis;
}

/* Every row against the rule; returns the number of poisoned rows. */
static int check_rule(const pp_problem *p, const plant *pl, attnd_kernel_path path,
                      const char *what)
{
    const pp_spec *sp = &p->sp;
    const int32_t hq = sp->hq, hkv = p->l.n_kv_heads, dk = p->l.d_k, dv = p->l.d_v;
    double *ref = malloc(sizeof(double) * (size_t)hq * dv);
    double *rlse = malloc(sizeof(double) * (size_t)hq);
    double out_b, lse_b;
    int poisoned = 0;

    path_bounds(path, p->l.dtype, &out_b, &lse_b);
    for (int32_t i = 0; i < sp->n_seqs; i++)
        for (int32_t s = 0; s < sp->q_tokens; s++) {
            int64_t vis = sp->lens[i] - (sp->q_tokens - 1 - s);
            vis = vis < 0 ? 0 : vis;
            size_t row = ((size_t)i * sp->q_tokens + s) * hq;
            attnd_kernel_ref_attention_f64(hq, hkv, dk, dv, vis, p->b.scale, p->q64 + row * dk,
                                           p->k64[i], p->v64[i], ref, rlse);
            for (int32_t h = 0; h < hq; h++) {
                const float *o = p->out + (row + h) * dv;
                float lse = p->lse[row + h];
                if (row_sees(p, pl, i, s, h)) {
                    for (int32_t e = 0; e < dv; e++)
                        ck_assert_msg(isnan(o[e]), "%s: seq %d s %d head %d out[%d] = %g, "
                                      "want NaN", what, i, s, h, e, o[e]);
                    ck_assert_msg(isnan(lse), "%s: seq %d s %d head %d lse %g, want NaN",
                                  what, i, s, h, lse);
                    poisoned++;
                } else if (vis == 0) {
                    ck_assert_msg(isinf(lse) && lse < 0, "%s: empty row lse %g", what, lse);
                    for (int32_t e = 0; e < dv; e++)
                        ck_assert(o[e] == 0.0f);
                } else {
                    double eo = tu_rel_err_f32(o, ref + (size_t)h * dv, (size_t)dv);
                    ck_assert_msg(eo <= out_b, "%s: clean row seq %d s %d head %d: rel err %g",
                                  what, i, s, h, eo);
                    ck_assert_msg(isfinite(lse) && fabs(lse - rlse[h]) <= lse_b,
                                  "%s: clean row seq %d s %d head %d: lse %g, ref %g", what,
                                  i, s, h, lse, rlse[h]);
                }
            }
        }
    free(ref);
    free(rlse);
    return poisoned;
}

static void poison_outputs(pp_problem *p)
{
    size_t rows = (size_t)p->sp.n_seqs * p->sp.q_tokens * p->sp.hq;
    for (size_t j = 0; j < rows * (size_t)p->l.d_v; j++)
        p->out[j] = 12345.0f; /* neither NaN nor 0: a row left unwritten shows */
    for (size_t j = 0; j < rows; j++)
        p->lse[j] = 12345.0f;
}

/* Build sp, plant pl, and run every path single-threaded and split. */
static void run_case(const pp_spec *sp, plant *pl, tu_rng *r, attnd_kernel_pool *pool,
                     const char *what)
{
    static const int32_t splits[] = {2, ATTND_KERNEL_DECODE_SPLITS_MAX,
                                     ATTND_KERNEL_DECODE_SPLITS_AUTO};
    pp_problem p;
    attnd_kernel_decode_plan plan;
    attnd_error err;
    char desc[256];

    pp_build(&p, sp, r);
    plant_value(&p, pl);
    attnd_kernel_decode_plan_init(&plan);
    for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
        if (!use_path((attnd_kernel_path)path))
            continue;
        snprintf(desc, sizeof desc, "%s %s at %s seq %d tok %d dim %d, %s",
                 attnd_kernel_path_str((attnd_kernel_path)path), value_name(pl->value),
                 pl->where == AT_K ? "K" : pl->where == AT_V ? "V" : "q", pl->seq, pl->tok,
                 pl->dim, what);
        poison_outputs(&p);
        attnd_kernel_decode(&p.b);
        int n = check_rule(&p, pl, (attnd_kernel_path)path, desc);
        ck_assert_msg(n > 0, "%s: no row attends the planted value", desc);
        for (int k = 0; k < 3; k++) {
            attnd_kernel_decode_plan_opts o = {.n_threads = attnd_kernel_pool_threads(pool),
                                               .splits = splits[k]};
            ck_assert_int_eq(attnd_kernel_decode_plan_make(&plan, &p.b, &o, &err), ATTND_OK);
            poison_outputs(&p);
            ck_assert_int_eq(attnd_kernel_decode_run(pool, &plan, &p.b, &err), ATTND_OK);
            char d2[300];
            snprintf(d2, sizeof d2, "%s, splits %d (%d units)", desc, splits[k], plan.n_units);
            check_rule(&p, pl, (attnd_kernel_path)path, d2);
        }
    }
    attnd_kernel_decode_plan_cleanup(&plan);
    pp_free(&p);
}

static const float values[] = {NAN, INFINITY, -INFINITY};

/* A random token of sequence `seq` (or its last when `last`). */
static plant random_kv_plant(tu_rng *r, const pp_spec *sp, const attnd_kernel_kv_layout *l,
                             int where, int32_t seq, int last, int32_t hkv)
{
    plant pl = {.where = where, .seq = seq};
    pl.kvh = (int32_t)tu_int(r, 0, hkv - 1);
    pl.tok = last ? (int32_t)(sp->lens[seq] - 1) : (int32_t)tu_int(r, 0, sp->lens[seq] - 1);
    pl.dim = (int32_t)tu_int(r, 0, (where == AT_K ? l->d_k : l->d_v) - 1);
    pl.value = values[tu_int(r, 0, 2)];
    return pl;
}

START_TEST(test_one_non_finite_kv_value_poisons_exactly_the_rows_that_attend_it_for_mla)
{
    tu_rng r;
    attnd_kernel_pool *pool;
    attnd_error err;
    tu_rng_init(&r, "nonfinite-mla");
    ck_assert_int_eq(attnd_kernel_pool_create(3, &pool, &err), ATTND_OK);
    for (int trial = 0; trial < 4; trial++) {
        int32_t S = trial % 2 ? 2 : 1;
        int64_t lens[4] = {trial < 2 ? tu_int(&r, 600, 1200) : tu_int(&r, 150, 400), 0, 64,
                           tu_int(&r, 2, 300)};
        pp_spec sp = {.kind = ATTND_ATTN_MLA, .hq = trial < 2 ? 16 : 128, .d_c = 512,
                      .d_r = 64, .page_size = 64, .q_tokens = S,
                      .kv_t = trial == 2 ? ATTND_DTYPE_F16 : ATTND_DTYPE_BF16,
                      .q_t = trial == 3 ? ATTND_DTYPE_F32 : ATTND_DTYPE_BF16, .n_seqs = 4,
                      .lens = lens};
        attnd_kernel_kv_layout l;
        attnd_kernel_kv_layout_mla(&l, sp.d_c, sp.d_r, sp.page_size, sp.kv_t);
        /* K: anywhere in [c, k_rope]; odd trials: the latent (also V) of
         * the last token, which with S = 2 only query token 1 attends */
        int32_t seq = trial % 3 == 0 ? 0 : trial % 3 == 1 ? 2 : 3;
        plant pl = random_kv_plant(&r, &sp, &l, AT_K, seq, trial % 2, 1);
        if (trial % 2)
            pl.dim = (int32_t)tu_int(&r, 0, sp.d_c - 1);
        run_case(&sp, &pl, &r, pool, "mla");
    }
    attnd_kernel_pool_destroy(pool);
}
END_TEST

START_TEST(test_one_non_finite_kv_value_poisons_exactly_the_rows_that_attend_it_for_gqa)
{
    tu_rng r;
    attnd_kernel_pool *pool;
    attnd_error err;
    tu_rng_init(&r, "nonfinite-gqa");
    ck_assert_int_eq(attnd_kernel_pool_create(3, &pool, &err), ATTND_OK);
    /* hq, hkv, head dim, S: llama (V read from the pool), S = 2 with V
     * read from the pool, a wide group (row-vector scores), odd dims */
    static const int32_t shapes[][4] = {{32, 8, 128, 1}, {8, 4, 128, 2}, {64, 2, 64, 1},
                                        {9, 3, 20, 2}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++)
        for (int where = AT_K; where <= AT_V; where++) {
            int64_t lens[3] = {tu_int(&r, 300, 900), 0, tu_int(&r, 17, 200)};
            pp_spec sp = {.kind = ATTND_ATTN_GQA, .hq = shapes[c][0], .hkv = shapes[c][1],
                          .head_dim = shapes[c][2], .page_size = c == 3 ? 7 : 64,
                          .q_tokens = shapes[c][3],
                          .kv_t = c == 2 ? ATTND_DTYPE_F32 : ATTND_DTYPE_BF16,
                          .q_t = c == 3 ? ATTND_DTYPE_F16 : ATTND_DTYPE_BF16, .n_seqs = 3,
                          .lens = lens};
            attnd_kernel_kv_layout l;
            attnd_kernel_kv_layout_gqa(&l, sp.hkv, sp.head_dim, sp.page_size, sp.kv_t);
            /* S = 2: V of the last token (seen by query token 1 only) */
            int last = sp.q_tokens == 2 && where == AT_V;
            plant pl = random_kv_plant(&r, &sp, &l, where, c % 2 ? 2 : 0, last, sp.hkv);
            run_case(&sp, &pl, &r, pool, "gqa");
        }
    attnd_kernel_pool_destroy(pool);
}
END_TEST

START_TEST(test_a_non_finite_query_element_poisons_only_its_own_head)
{
    tu_rng r;
    attnd_kernel_pool *pool;
    attnd_error err;
    tu_rng_init(&r, "nonfinite-q");
    ck_assert_int_eq(attnd_kernel_pool_create(3, &pool, &err), ATTND_OK);
    for (int kind = 0; kind < 2; kind++) {
        int64_t lens[3] = {tu_int(&r, 300, 900), 0, 5};
        pp_spec sp = {.kind = kind ? ATTND_ATTN_GQA : ATTND_ATTN_MLA, .hq = kind ? 32 : 16,
                      .hkv = 8, .head_dim = 128, .d_c = 512, .d_r = 64, .page_size = 64,
                      .q_tokens = 2, .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_F32,
                      .n_seqs = 3, .lens = lens};
        plant pl = {.where = AT_Q, .seq = kind ? 2 : 0, .s = (int32_t)tu_int(&r, 0, 1),
                    .head = (int32_t)tu_int(&r, 0, sp.hq - 1),
                    .dim = (int32_t)tu_int(&r, 0, kind ? 127 : 575),
                    .value = values[tu_int(&r, 0, 2)]};
        run_case(&sp, &pl, &r, pool, kind ? "gqa" : "mla");
    }
    attnd_kernel_pool_destroy(pool);
}
END_TEST

/* The combine of partial states: a NaN state (either side) poisons the
 * row, an empty one (-inf) is the identity, whichever side holds it. */
START_TEST(test_merging_a_nan_state_gives_nan_and_an_empty_one_changes_nothing)
{
    tu_rng r;
    tu_rng_init(&r, "nonfinite-merge");
    enum { D = 37 };
    /* rows: a NaN + b finite, a finite + b NaN, a NaN + b empty,
     * a empty + b NaN, a empty + b finite, a finite + b empty */
    const float la[6] = {NAN, 0.5f, NAN, -INFINITY, -INFINITY, 1.5f};
    const float lb[6] = {2.0f, NAN, -INFINITY, NAN, -0.25f, -INFINITY};
    float oa[6][D], ob[6][D], lse[6], want[6][D];
    for (int row = 0; row < 6; row++)
        for (int e = 0; e < D; e++) {
            oa[row][e] = isnan(la[row]) ? NAN : la[row] == -INFINITY ? 0.0f
                                                                      : (float)tu_normal(&r);
            ob[row][e] = isnan(lb[row]) ? NAN : lb[row] == -INFINITY ? 0.0f
                                                                      : (float)tu_normal(&r);
            want[row][e] = row == 4 ? ob[row][e] : oa[row][e];
        }
    memcpy(lse, la, sizeof lse);
    attnd_kernel_merge_states(&oa[0][0], lse, &ob[0][0], lb, 6, D);
    for (int row = 0; row < 4; row++) {
        ck_assert_msg(isnan(lse[row]), "row %d: lse %g", row, lse[row]);
        for (int e = 0; e < D; e++)
            ck_assert_msg(isnan(oa[row][e]), "row %d: out[%d] %g", row, e, oa[row][e]);
    }
    ck_assert(lse[4] == lb[4] && lse[5] == la[5]);
    ck_assert(memcmp(oa[4], want[4], sizeof want[4]) == 0);
    ck_assert(memcmp(oa[5], want[5], sizeof want[5]) == 0);
}
END_TEST

static Suite *nonfinite_suite(void)
{
    Suite *s = suite_create("kernel_nonfinite");
    TCase *tc = tcase_create("rule");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_one_non_finite_kv_value_poisons_exactly_the_rows_that_attend_it_for_mla);
    tcase_add_test(tc, test_one_non_finite_kv_value_poisons_exactly_the_rows_that_attend_it_for_gqa);
    tcase_add_test(tc, test_a_non_finite_query_element_poisons_only_its_own_head);
    tcase_add_test(tc, test_merging_a_nan_state_gives_nan_and_an_empty_one_changes_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    for (int p = 0; p < ATTND_KERNEL_PATH_COUNT; p++)
        fprintf(stderr, "kernel path %-10s %s\n", attnd_kernel_path_str((attnd_kernel_path)p),
                attnd_kernel_path_supported((attnd_kernel_path)p) ? "runs here"
                                                                   : "SKIPPED: this CPU lacks it");
    SRunner *sr = srunner_create(nonfinite_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
