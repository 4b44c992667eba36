/* attnd_buf (common/attnd_buf.h): growing keeps the contents, capacity
 * only grows and covers what was asked, a request within capacity never
 * reallocates, and a size whose bytes overflow is refused with the buffer
 * untouched. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>

#include "attnd_buf.h"

START_TEST(test_reserve_keeps_contents_and_covers_the_request)
{
    int32_t *a = NULL;
    size_t cap = 0;
    for (size_t n = 1; n <= 5000; n = n * 3 + 1) {
        size_t old = cap;
        ck_assert_int_eq(ATTND_BUF_RESERVE(a, cap, n), 0);
        ck_assert_uint_ge(cap, n);
        ck_assert_uint_ge(cap, old);
        for (size_t i = 0; i < old && i < n; i++)
            ck_assert_int_eq(a[i], (int32_t)(i * 7));
        for (size_t i = 0; i < cap; i++)
            a[i] = (int32_t)(i * 7);
    }
    free(a);
}
END_TEST

START_TEST(test_reserve_within_capacity_keeps_the_same_memory)
{
    attnd_buf b = {0};
    ck_assert_int_eq(attnd_buf_fit(&b, 1000), 0);
    uint8_t *p = b.p;
    size_t cap = b.cap;
    ck_assert_int_eq(attnd_buf_fit(&b, cap), 0);
    ck_assert_int_eq(attnd_buf_fit(&b, 1), 0);
    ck_assert_ptr_eq(b.p, p);
    ck_assert_uint_eq(b.cap, cap);
    attnd_buf_free(&b);
    ck_assert_ptr_null(b.p);
    ck_assert_uint_eq(b.cap, 0);
}
END_TEST

START_TEST(test_reserve_refuses_an_overflowing_size_and_changes_nothing)
{
    double *a = NULL;
    size_t cap = 0;
    ck_assert_int_eq(ATTND_BUF_RESERVE(a, cap, 10), 0);
    double *before = a;
    size_t cap_before = cap;
    ck_assert_int_eq(ATTND_BUF_RESERVE(a, cap, SIZE_MAX / 4), -1);
    ck_assert_int_eq(ATTND_BUF_RESERVE(a, cap, SIZE_MAX), -1);
    ck_assert_ptr_eq(a, before);
    ck_assert_uint_eq(cap, cap_before);
    free(a);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("common_buf");
    TCase *tc = tcase_create("buf");
    tcase_add_test(tc, test_reserve_keeps_contents_and_covers_the_request);
    tcase_add_test(tc, test_reserve_within_capacity_keeps_the_same_memory);
    tcase_add_test(tc, test_reserve_refuses_an_overflowing_size_and_changes_nothing);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
