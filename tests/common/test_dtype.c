/* attnd_dtype's non-finite search (common/attnd_dtype.h): the first NaN or
 * infinity is found at any index, in any dtype, at any alignment, in a
 * search of its own and while converting (which still converts exactly as
 * attnd_dtype_convert does); the largest finite values, subnormals and
 * zeros are finite. Random positions are seeded (ATTND_TEST_SEED replays). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_dtype.h"
#include "testutil.h"

static tu_rng rng;

static void fill_finite(attnd_dtype t, unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float f = (float)tu_normal(&rng) * 100.0f;
        if (i % 97 == 5) /* the largest finite value of each dtype */
            f = t == ATTND_DTYPE_F16 ? 65504.0f : t == ATTND_DTYPE_BF16 ? 3.3895314e38f : 3.4028235e38f;
        if (i % 89 == 3)
            f = -0.0f;
        if (i % 83 == 7) /* subnormal in every dtype */
            f = t == ATTND_DTYPE_F16 ? 5.96e-8f : 1e-40f;
        attnd_dtype_convert(t, p + i * attnd_dtype_size(t), ATTND_DTYPE_F32, &f, 1);
    }
}

/* Write a non-finite value of kind k (0 NaN, 1 +Inf, 2 -Inf, 3 a NaN with a
 * low payload) at element i. */
static void put_bad(attnd_dtype t, unsigned char *p, size_t i, int k)
{
    unsigned char *e = p + i * attnd_dtype_size(t);
    if (k == 3) { /* payload in the lowest mantissa bit: a signalling NaN */
        uint32_t f32 = 0x7f800001u;
        uint16_t h = t == ATTND_DTYPE_F16 ? 0x7c01u : 0x7f81u;
        if (t == ATTND_DTYPE_F32)
            memcpy(e, &f32, 4);
        else
            memcpy(e, &h, 2);
        return;
    }
    float f = k == 0 ? NAN : k == 1 ? INFINITY : -INFINITY;
    attnd_dtype_convert(t, e, ATTND_DTYPE_F32, &f, 1);
}

static const char *kind_name(int k)
{
    return k == 1 ? "+Inf" : k == 2 ? "-Inf" : "NaN";
}

START_TEST(test_the_first_non_finite_element_is_found_wherever_it_is)
{
    static const attnd_dtype ts[] = {ATTND_DTYPE_BF16, ATTND_DTYPE_F16, ATTND_DTYPE_F32};
    for (int ti = 0; ti < 3; ti++)
        for (int iter = 0; iter < 60; iter++) {
            attnd_dtype t = ts[ti];
            size_t n = (size_t)tu_int(&rng, 1, 9000), es = attnd_dtype_size(t);
            size_t off = (size_t)tu_int(&rng, 0, 3); /* any alignment */
            unsigned char *buf = malloc(n * es + off), *p = buf + off;
            fill_finite(t, p, n);
            ck_assert_uint_eq(attnd_dtype_find_nonfinite(t, p, n), n);
            size_t at = (size_t)tu_int(&rng, 0, (int64_t)n - 1);
            int k = (int)tu_int(&rng, 0, 3);
            put_bad(t, p, at, k);
            if (at + 1 < n && iter % 2) /* a later one does not count */
                put_bad(t, p, (size_t)tu_int(&rng, (int64_t)at + 1, (int64_t)n - 1), 0);
            ck_assert_uint_eq(attnd_dtype_find_nonfinite(t, p, n), at);
            ck_assert_str_eq(attnd_dtype_nonfinite_name(t, p, at), kind_name(k));
            ck_assert_uint_eq(attnd_dtype_find_nonfinite(t, p, at), at); /* before it: none */
            free(buf);
        }
}
END_TEST

START_TEST(test_converting_with_the_check_converts_as_without_it)
{
    static const attnd_dtype ts[] = {ATTND_DTYPE_BF16, ATTND_DTYPE_F16, ATTND_DTYPE_F32};
    for (int si = 0; si < 3; si++)
        for (int di = 0; di < 3; di++) {
            attnd_dtype st = ts[si], dt = ts[di];
            size_t n = (size_t)tu_int(&rng, 1, 7000);
            unsigned char *src = malloc(n * 4 + 1), *a = malloc(n * 4 + 1), *b = malloc(n * 4 + 1);
            fill_finite(st, src + 1, n);
            attnd_dtype_convert(dt, a, st, src + 1, n);
            ck_assert_uint_eq(attnd_dtype_convert_checked(dt, b + 1, st, src + 1, n), n);
            ck_assert(memcmp(a, b + 1, n * attnd_dtype_size(dt)) == 0);
            size_t at = (size_t)tu_int(&rng, 0, (int64_t)n - 1);
            put_bad(st, src + 1, at, 1);
            ck_assert_uint_eq(attnd_dtype_convert_checked(dt, b + 1, st, src + 1, n), at);
            free(src);
            free(a);
            free(b);
        }
}
END_TEST

START_TEST(test_an_empty_tensor_has_no_non_finite_element)
{
    float f = NAN;
    ck_assert_uint_eq(attnd_dtype_find_nonfinite(ATTND_DTYPE_F32, &f, 0), 0);
    ck_assert_str_eq(attnd_dtype_nonfinite_name(ATTND_DTYPE_F32, &f, 0), "NaN");
    f = 1.0f;
    ck_assert_str_eq(attnd_dtype_nonfinite_name(ATTND_DTYPE_F32, &f, 0), "finite");
}
END_TEST

int main(void)
{
    tu_rng_init(&rng, "common_dtype");
    Suite *s = suite_create("common_dtype");
    TCase *tc = tcase_create("nonfinite");
    tcase_add_test(tc, test_the_first_non_finite_element_is_found_wherever_it_is);
    tcase_add_test(tc, test_converting_with_the_check_converts_as_without_it);
    tcase_add_test(tc, test_an_empty_tensor_has_no_non_finite_element);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
