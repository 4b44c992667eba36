/* Check suite of the narrow MLA wire's projections (attnd_proj.h): every
 * path this CPU runs, and the pool's head split, against a float64
 * reference on fresh random inputs: src in bf16, f16 and f32, weights in
 * float32 and bf16, row counts 1..9 (every row-block remainder), column
 * counts that leave every kind of tail (4-vector blocks, single vectors, a
 * scalar remainder), strided rows and heads, and a copied-through tail.
 *
 * Bound: per output row, normwise relative error <= 1e-5 (float32
 * accumulation over K <= 600 terms of inputs in [-1, 1]); copied elements
 * exactly equal; nothing outside dst's rows is written (a NaN canary). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_dtype.h"
#include "attnd_proj.h"
#include "testutil.h"

typedef struct prob {
    attnd_kernel_proj p;
    void *src, *w;
    float *dst;
    size_t dst_floats;
} prob;

/* Random [-1, 1] values of dtype t, n elements. */
static void *rand_tensor(tu_rng *r, attnd_dtype t, size_t n)
{
    void *x = malloc(n * attnd_dtype_size(t) + 1);
    float *f = malloc(n * sizeof *f + 1);
    ck_assert(x && f);
    for (size_t i = 0; i < n; i++)
        f[i] = (float)(2.0 * tu_unif(r) - 1.0);
    attnd_dtype_convert(t, x, ATTND_DTYPE_F32, f, n);
    free(f);
    return x;
}

/* rows x heads with padded strides: src [rows][heads][k + pass + gap],
 * dst [rows][heads][j + pass + gap] (gaps stay NaN). */
static void build(prob *q, tu_rng *r, int32_t rows, int32_t heads, int32_t k, int32_t j,
                  int32_t pass, attnd_dtype st, attnd_dtype wt)
{
    const int64_t sgap = tu_int(r, 0, 3), dgap = tu_int(r, 0, 3);
    memset(q, 0, sizeof *q);
    q->p = (attnd_kernel_proj){.rows = rows, .heads = heads, .k = k, .j = j, .pass = pass,
                        .src_dtype = st, .src_head = k + pass + sgap,
                        .w_dtype = wt, .dst_head = j + pass + dgap};
    q->p.src_row = q->p.src_head * heads;
    q->p.dst_row = q->p.dst_head * heads;
    q->src = rand_tensor(r, st, (size_t)(q->p.src_row * rows));
    q->w = rand_tensor(r, wt, (size_t)heads * (size_t)k * (size_t)j);
    q->dst_floats = (size_t)(q->p.dst_row * rows);
    q->dst = malloc(q->dst_floats * sizeof(float));
    ck_assert(q->dst);
    q->p.src = q->src;
    q->p.w = q->w;
    q->p.dst = q->dst;
}

static void poison(prob *q)
{
    for (size_t i = 0; i < q->dst_floats; i++)
        q->dst[i] = NAN;
}

static void drop(prob *q)
{
    free(q->src);
    free(q->w);
    free(q->dst);
}

/* dst against float64 sums; copied elements exact; gaps untouched. */
static void check(const prob *q, const char *what)
{
    const attnd_kernel_proj *p = &q->p;
    double *ref = malloc(sizeof(double) * (size_t)p->j);
    ck_assert(ref);
    for (int32_t r = 0; r < p->rows; r++)
        for (int32_t h = 0; h < p->heads; h++) {
            size_t s0 = (size_t)(r * p->src_row + h * p->src_head);
            size_t d0 = (size_t)(r * p->dst_row + h * p->dst_head);
            for (int32_t j = 0; j < p->j; j++) {
                double acc = 0.0;
                for (int32_t k = 0; k < p->k; k++)
                    acc += attnd_dtype_load_f64(p->src_dtype, p->src, s0 + (size_t)k) *
                           attnd_dtype_load_f64(p->w_dtype, p->w,
                                                ((size_t)h * (size_t)p->k + (size_t)k) *
                                                        (size_t)p->j + (size_t)j);
                ref[j] = acc;
            }
            double e = tu_rel_err_f32(q->dst + d0, ref, (size_t)p->j);
            ck_assert_msg(e <= 1e-5, "%s: row %d head %d: rel err %.3g", what, r, h, e);
            for (int32_t e2 = 0; e2 < p->pass; e2++)
                ck_assert_msg(q->dst[d0 + (size_t)p->j + (size_t)e2] ==
                                  attnd_dtype_load_f32(p->src_dtype, p->src,
                                                       s0 + (size_t)p->k + (size_t)e2),
                              "%s: copied element %d of row %d head %d", what, e2, r, h);
            for (int64_t g = p->j + p->pass; g < p->dst_head; g++)
                ck_assert_msg(isnan(q->dst[d0 + (size_t)g]), "%s: gap written", what);
        }
    free(ref);
}

static const attnd_dtype src_types[] = {ATTND_DTYPE_BF16, ATTND_DTYPE_F16, ATTND_DTYPE_F32};
static const attnd_dtype w_types[] = {ATTND_DTYPE_F32, ATTND_DTYPE_BF16};

START_TEST(test_every_path_matches_f64_for_every_shape_and_dtype)
{
    tu_rng r;
    tu_rng_init(&r, "proj-paths");
    /* k, j: DeepSeek-V3's absorb (128 -> 512) and up-projection (512 ->
     * 128), a latent shard's (128 -> 64), and odd sizes with tails */
    static const int32_t kj[][2] = {{128, 512}, {512, 128}, {128, 64}, {24, 72}, {7, 5},
                                    {33, 17}, {16, 80}};
    for (size_t s = 0; s < sizeof kj / sizeof kj[0]; s++)
        for (int32_t rows = 1; rows <= 9; rows += (kj[s][0] >= 128 ? 4 : 1))
            for (size_t a = 0; a < 3; a++)
                for (size_t b = 0; b < 2; b++) {
                    prob q;
                    int32_t heads = (int32_t)tu_int(&r, 1, 3), pass = (int32_t)tu_int(&r, 0, 2) * 8;
                    build(&q, &r, rows, heads, kj[s][0], kj[s][1], pass, src_types[a], w_types[b]);
                    float *work = malloc(sizeof(float) * attnd_kernel_proj_work_floats(&q.p) + 1);
                    ck_assert_ptr_nonnull(work);
                    for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
                        if (!attnd_kernel_path_supported((attnd_kernel_path)path))
                            continue;
                        char what[128];
                        snprintf(what, sizeof what, "%s k %d j %d rows %d src %s w %s",
                                 attnd_kernel_path_str((attnd_kernel_path)path), kj[s][0],
                                 kj[s][1], rows, attnd_dtype_name(src_types[a]),
                                 attnd_dtype_name(w_types[b]));
                        poison(&q);
                        attnd_kernel_proj_range((attnd_kernel_path)path, &q.p, 0, heads, work);
                        check(&q, what);
                    }
                    free(work);
                    drop(&q);
                }
}
END_TEST

START_TEST(test_pool_split_over_heads_matches_f64)
{
    tu_rng r;
    attnd_error err;
    attnd_kernel_pool *pool = NULL;
    tu_rng_init(&r, "proj-pool");
    for (int32_t threads = 1; threads <= 3; threads++) {
        ck_assert_int_eq(attnd_kernel_pool_create(threads, &pool, &err), ATTND_OK);
        /* fewer heads than threads, as many, more */
        for (int32_t heads = 1; heads <= 5; heads += 2) {
            prob q;
            build(&q, &r, (int32_t)tu_int(&r, 1, 6), heads, 64, 48, 16, ATTND_DTYPE_BF16,
                  ATTND_DTYPE_F32);
            poison(&q);
            ck_assert_int_eq(attnd_kernel_proj_parallel(pool, &q.p, &err), ATTND_OK);
            check(&q, "pool");
            drop(&q);
        }
        attnd_kernel_pool_destroy(pool);
    }
}
END_TEST

/* Wire data sits at any alignment: float32 rows at an odd address are
 * copied into the scratch (so the call asks for it), never loaded in place,
 * and every path still matches float64 (UBSan flags a misaligned load). */
START_TEST(test_float32_src_at_an_odd_address_is_copied_and_matches_f64)
{
    tu_rng r;
    attnd_error err;
    attnd_kernel_pool *pool = NULL;
    tu_rng_init(&r, "proj-unaligned");
    prob q;
    build(&q, &r, 5, 3, 24, 72, 16, ATTND_DTYPE_F32, ATTND_DTYPE_BF16);
    ck_assert_uint_eq(attnd_kernel_proj_work_floats(&q.p), 0); /* aligned: in place */
    const size_t bytes = (size_t)(q.p.src_row * q.p.rows) * sizeof(float);
    char *odd = malloc(bytes + 1);
    ck_assert_ptr_nonnull(odd);
    memcpy(odd + 1, q.src, bytes);
    q.p.src = odd + 1;
    ck_assert_uint_eq(attnd_kernel_proj_work_floats(&q.p), (size_t)q.p.rows * (size_t)q.p.k);
    float *work = malloc(sizeof(float) * attnd_kernel_proj_work_floats(&q.p));
    ck_assert_ptr_nonnull(work);
    prob aligned = q; /* the reference reads the same values where they align */
    aligned.p.src = q.src;
    for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
        if (!attnd_kernel_path_supported((attnd_kernel_path)path))
            continue;
        poison(&q);
        attnd_kernel_proj_range((attnd_kernel_path)path, &q.p, 0, q.p.heads, work);
        check(&aligned, attnd_kernel_path_str((attnd_kernel_path)path));
    }
    ck_assert_int_eq(attnd_kernel_pool_create(2, &pool, &err), ATTND_OK);
    poison(&q);
    ck_assert_int_eq(attnd_kernel_proj_parallel(pool, &q.p, &err), ATTND_OK);
    check(&aligned, "pool, odd address");
    attnd_kernel_pool_destroy(pool);
    free(work);
    free(odd);
    drop(&q);
}
END_TEST

START_TEST(test_check_refuses_bad_sizes_and_dtypes)
{
    attnd_error err;
    float x = 0.0f;
    attnd_kernel_proj ok = {.rows = 1, .heads = 1, .k = 1, .j = 1, .src_dtype = ATTND_DTYPE_F32,
                     .src = &x, .w_dtype = ATTND_DTYPE_F32, .w = &x, .dst = &x};
    ck_assert_int_eq(attnd_kernel_proj_check(&ok, &err), ATTND_OK);
    attnd_kernel_proj p = ok;
    p.k = 0;
    ck_assert_int_eq(attnd_kernel_proj_check(&p, &err), ATTND_ERR_INVALID_ARGUMENT);
    p = ok;
    p.w_dtype = ATTND_DTYPE_F16;
    ck_assert_int_eq(attnd_kernel_proj_check(&p, &err), ATTND_ERR_INVALID_ARGUMENT);
    p = ok;
    p.src_dtype = ATTND_DTYPE_INVALID;
    ck_assert_int_eq(attnd_kernel_proj_check(&p, &err), ATTND_ERR_INVALID_ARGUMENT);
    p = ok;
    p.dst = NULL;
    ck_assert_int_eq(attnd_kernel_proj_check(&p, &err), ATTND_ERR_INVALID_ARGUMENT);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("proj");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_every_path_matches_f64_for_every_shape_and_dtype);
    tcase_add_test(tc, test_pool_split_over_heads_matches_f64);
    tcase_add_test(tc, test_float32_src_at_an_odd_address_is_copied_and_matches_f64);
    tcase_add_test(tc, test_check_refuses_bad_sizes_and_dtypes);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
