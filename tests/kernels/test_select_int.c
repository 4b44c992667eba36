/* Check suite of the page selection's internals (kernels/cpu/select_int.h).
 *
 * The top-k (select_topk.c): on fresh random scores, the kept candidates
 * must be exactly those of a plain reference (sort the non-mandatory
 * candidates by score, best first, ties by the earlier candidate, take the
 * wanted count, add the mandatory ones, write in candidate order), with
 * NaN ranked +inf and -0 equal to +0 as float comparisons see them.
 * The score draws make many ties, scores one ulp apart (keys that differ
 * only in the radix selection's last digit), all-equal lists, and
 * infinities; the budgets cover nothing but the mandatory candidates,
 * every candidate, and everything between.
 *
 * The scoring units on compact bounds (select.c, select_avx2.c,
 * select_avx512.c): on random code rows, steps (NaN among them) and int8
 * query rows, every SIMD path this CPU runs must write bitwise the ub the
 * scalar unit writes (the same integer sums, the same float operations),
 * and nothing else, so that every path keeps the same pages. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "select_int.h"
#include "testutil.h"

/* A score from one of several draws (mode), to make ties and near-ties. */
static float draw_score(tu_rng *r, int mode)
{
    static const float few[] = {-3.0f, -1.0f, -0.5f, -0.0f, 0.0f, 2.0f};
    switch (mode) {
    case 0: /* wide range, rarely equal */
        return (float)(tu_normal(r) * pow(10.0, (double)tu_int(r, -6, 6)));
    case 1: /* few values: many ties, -0 against +0 */
        return few[tu_int(r, 0, 5)];
    case 2: { /* a few ulps apart around one value */
        float v = -7.25f;
        for (int64_t k = tu_int(r, 0, 40); k > 0; k--)
            v = nextafterf(v, 0.0f);
        return v;
    }
    case 3: /* every score the same */
        return -1.5f;
    default: { /* the edges: NaN, infinities, a mix of the above */
        int64_t e = tu_int(r, 0, 9);
        return e == 0 ? NAN
             : e == 1 ? INFINITY
             : e == 2 ? -INFINITY
             : e == 3 ? -0.0f
                      : draw_score(r, (int)tu_int(r, 0, 2));
    }
    }
}

/* Rank order of the reference: NaN as +inf; -0 == +0 (float compare). */
static float rank_of(float v)
{
    return isnan(v) ? INFINITY : v;
}

static const float *g_score; /* for ref_cmp */

static int ref_cmp(const void *a, const void *b)
{
    const int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    const float x = rank_of(g_score[i]), y = rank_of(g_score[j]);
    if (x != y)
        return x > y ? -1 : 1;
    return i < j ? -1 : 1;
}

/* The reference's kept candidates, in candidate order: flags kept [n]. */
static void ref_topk(const float *score, int32_t n, int32_t keep, int32_t n_head, int32_t n_tail,
                     char *kept)
{
    const int32_t m0 = n_head, m1 = n - n_tail, want = keep - n_head - n_tail;
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)(n + 1));
    for (int32_t p = 0; p < n; p++)
        kept[p] = p < m0 || p >= m1;
    for (int32_t p = m0; p < m1; p++)
        idx[p - m0] = p;
    g_score = score;
    qsort(idx, (size_t)(m1 - m0), sizeof(int32_t), ref_cmp);
    for (int32_t j = 0; j < want && j < m1 - m0; j++)
        kept[idx[j]] = 1;
    free(idx);
}

/* One random list against the reference, with and without positions. */
static void check_one(tu_rng *r, int mode, int32_t n)
{
    const int32_t n_head = (int32_t)tu_int(r, 0, n < 3 ? 0 : 2);
    const int32_t n_tail = (int32_t)tu_int(r, 0, n - n_head < 2 ? n - n_head : 2);
    int32_t keep;
    switch (tu_int(r, 0, 3)) {
    case 0: keep = n_head + n_tail; break; /* only the mandatory ones */
    case 1: keep = n; break;               /* every candidate */
    default: keep = (int32_t)tu_int(r, n_head + n_tail, n);
    }
    const size_t sz = (size_t)n + 1;
    float *score = malloc(sizeof(float) * sz);
    uint32_t *key = malloc(sizeof(uint32_t) * sz), *tmp = malloc(sizeof(uint32_t) * sz);
    int32_t *cand = malloc(sizeof(int32_t) * sz), *out = malloc(sizeof(int32_t) * sz);
    int32_t *pos = malloc(sizeof(int32_t) * sz), *out2 = malloc(sizeof(int32_t) * sz);
    char *kept = malloc(sz);
    for (int32_t p = 0; p < n; p++) {
        score[p] = draw_score(r, mode);
        key[p] = attnd__select_key(score[p]);
        cand[p] = 3 * p + (int32_t)tu_int(r, 0, 2); /* distinct, ascending */
    }
    ref_topk(score, n, keep, n_head, n_tail, kept);
    /* slots past keep must stay untouched */
    out[keep] = pos[keep] = out2[keep] = -77;
    ck_assert_int_eq(attnd__select_topk(key, n, keep, n_head, n_tail, cand, out, pos, tmp), keep);
    ck_assert_int_eq(attnd__select_topk(key, n, keep, n_head, n_tail, cand, out2, NULL, tmp),
                     keep);
    ck_assert_int_eq(out[keep], -77);
    ck_assert_int_eq(pos[keep], -77);
    ck_assert_int_eq(out2[keep], -77);
    int32_t w = 0;
    for (int32_t p = 0; p < n; p++) {
        if (!kept[p])
            continue;
        ck_assert_msg(w < keep && pos[w] == p && out[w] == cand[p] && out2[w] == cand[p],
                      "mode %d, n %d, keep %d (head %d, tail %d): kept[%d] is candidate %d "
                      "(page %d), the reference's %d",
                      mode, n, keep, n_head, n_tail, w, w < keep ? pos[w] : -1,
                      w < keep ? out[w] : -1, p);
        w++;
    }
    ck_assert_int_eq(w, keep);
    free(kept);
    free(out2);
    free(pos);
    free(out);
    free(cand);
    free(tmp);
    free(key);
    free(score);
}

START_TEST(test_topk_keeps_exactly_the_reference_pages_with_ties_nan_and_any_budget)
{
    tu_rng r;
    tu_rng_init(&r, "select-topk");
    static const int32_t sizes[] = {0, 1, 2, 3, 5, 17, 130, 2048, 4099};
    for (int mode = 0; mode < 5; mode++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
            for (int t = 0; t < 12; t++)
                check_one(&r, mode, sizes[s]);
}
END_TEST

/* The keys order scores as the reference compares them. */
START_TEST(test_select_keys_order_scores_with_nan_on_top_and_signed_zeros_equal)
{
    tu_rng r;
    tu_rng_init(&r, "select-key");
    ck_assert_uint_eq(attnd__select_key(-0.0f), attnd__select_key(0.0f));
    ck_assert_uint_eq(attnd__select_key(NAN), attnd__select_key(INFINITY));
    ck_assert_uint_eq(attnd__select_key(-NAN), attnd__select_key(INFINITY));
    for (int i = 0; i < 100000; i++) {
        float x = draw_score(&r, (int)tu_int(&r, 0, 4)), y = draw_score(&r, (int)tu_int(&r, 0, 4));
        uint32_t kx = attnd__select_key(x), ky = attnd__select_key(y);
        float rx = rank_of(x), ry = rank_of(y);
        ck_assert_msg((rx > ry) == (kx > ky) && (rx == ry) == (kx == ky),
                      "scores %a, %a: keys %08x, %08x", (double)x, (double)y, kx, ky);
    }
}
END_TEST

/* One compact-bounds scoring problem: nkv KV heads of d_k dk, R rows per
 * KV head (q_tokens x heads per KV head), a random candidate range. */
static void check_units(tu_rng *r, int32_t dk, int32_t q_tokens, int32_t G)
{
    attnd_kernel_kv_layout l;
    attnd_kernel_kv_layout_gqa(&l, 2, dk, 16, ATTND_DTYPE_BF16);
    const int64_t np = 700;
    const size_t row8 = attnd_kernel_kv_bounds8_row(&l);
    uint8_t *b8 = malloc(row8 * 2 * (size_t)np);
    for (size_t i = 0; i < row8 * 2 * (size_t)np; i++)
        b8[i] = (uint8_t)tu_next(r);
    for (int64_t p = 0; p < 2 * np; p++) { /* off, step (a power of two, or NaN) */
        float off = (float)(tu_normal(r) * 4.0);
        float step = tu_int(r, 0, 50) ? ldexpf(1.0f, (int)tu_int(r, -12, 0)) : NAN;
        memcpy(b8 + (size_t)p * row8, &off, sizeof off);
        memcpy(b8 + (size_t)p * row8 + sizeof off, &step, sizeof step);
    }
    int32_t cand[600];
    for (int32_t i = 0; i < 600; i++)
        cand[i] = (int32_t)tu_int(r, 0, np - 1);
    attnd_kernel_select_list sl = {.cand0 = 17, .n_cand = 600 - 17};
    attnd_kernel_select_batch b = {.q_tokens = q_tokens, .n_q_heads = 2 * G, .kv = &l,
                                   .bounds8 = b8, .bounds_pages = np, .cand_idx = cand};
    const int32_t R = attnd__select_head_rows(&b), rows = R + 3, row0 = 2;
    const size_t w = attnd__select_q8_width(dk), qf = attnd__select_pack_floats(R, dk);
    float *qpk = calloc(qf + 16, sizeof(float));
    for (int32_t j = 0; j < R; j++) {
        qpk[j] = (float)(tu_unif(r) + 0.01); /* sq */
        qpk[R + j] = (float)tu_normal(r);    /* Qsum */
        int8_t *q8 = attnd__select_q8_rows(qpk, R) + (size_t)j * w;
        for (int32_t i = 0; i < 2 * dk; i++)
            q8[i] = (int8_t)tu_int(r, -127, 127);
    }
    const int32_t p0 = (int32_t)tu_int(r, 0, 5), p1 = (int32_t)tu_int(r, 400, sl.n_cand);
    const size_t nub = (size_t)sl.n_cand * (size_t)rows;
    float *ref = malloc(sizeof(float) * nub), *got = malloc(sizeof(float) * nub);
    for (size_t i = 0; i < nub; i++)
        ref[i] = -1234.5f;
    attnd__select_ub8_scalar(&b, &sl, 1, p0, p1, qpk, ref, row0, rows);
#if defined(ATTND_HAVE_X86_SIMD)
    for (int path = 1; path <= 2; path++) {
        if (!attnd_kernel_path_supported(path == 1 ? ATTND_KERNEL_PATH_AVX2
                                                   : ATTND_KERNEL_PATH_AVX512))
            continue;
        for (size_t i = 0; i < nub; i++)
            got[i] = -1234.5f;
        if (path == 1)
            attnd__select_ub8_avx2(&b, &sl, 1, p0, p1, qpk, got, row0, rows);
        else
            attnd__select_ub8_avx512(&b, &sl, 1, p0, p1, qpk, got, row0, rows);
        for (size_t i = 0; i < nub; i++)
            ck_assert_msg(memcmp(&got[i], &ref[i], sizeof(float)) == 0,
                          "%s, d_k %d, %d rows, candidates [%d, %d): ub[%zu][%zu] %a, the "
                          "scalar unit's %a",
                          path == 1 ? "avx2" : "avx512", dk, R, p0, p1, i / (size_t)rows,
                          i % (size_t)rows, (double)got[i], (double)ref[i]);
    }
#endif
    free(got);
    free(ref);
    free(qpk);
    free(b8);
}

START_TEST(test_compact_scoring_units_write_the_scalar_units_floats_on_every_path)
{
    tu_rng r;
    tu_rng_init(&r, "select-units");
    static const int32_t dks[] = {128, 64, 40, 16, 80};
    for (size_t i = 0; i < sizeof dks / sizeof dks[0]; i++) {
        check_units(&r, dks[i], 1, 4); /* 4 rows: the four-row path where d_k allows */
        check_units(&r, dks[i], 2, 4); /* 8 */
        check_units(&r, dks[i], 3, 4); /* 12 */
        check_units(&r, dks[i], 1, 2); /* 2 */
        check_units(&r, dks[i], 3, 1); /* 3 */
        check_units(&r, dks[i], 1, 1); /* 1 */
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("select_int");
    TCase *tc = tcase_create("select");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_topk_keeps_exactly_the_reference_pages_with_ties_nan_and_any_budget);
    tcase_add_test(tc, test_select_keys_order_scores_with_nan_on_top_and_signed_zeros_equal);
    tcase_add_test(tc, test_compact_scoring_units_write_the_scalar_units_floats_on_every_path);
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
