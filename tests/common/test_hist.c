/* The log-linear histogram (common/attnd_hist.h) against exact answers:
 * nearest-rank percentiles of sorted random data within the stated 1/256 relative
 * bound, exact count/min/max/mean, merge equal to recording everything in
 * one, and the bucket map consistent with the ranges it reports.
 * ATTND_TEST_SEED replays a run. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "attnd_hist.h"

static uint64_t rng_s;

static uint64_t rnd(void)
{
    rng_s ^= rng_s >> 12;
    rng_s ^= rng_s << 25;
    rng_s ^= rng_s >> 27;
    return rng_s * 0x2545f4914f6cdd1dull;
}

static void seed_rng(void)
{
    const char *e = getenv("ATTND_TEST_SEED");
    uint64_t s = e ? strtoull(e, NULL, 10) : (uint64_t)time(NULL);
    printf("ATTND_TEST_SEED=%llu\n", (unsigned long long)s);
    rng_s = s * 0x9e3779b97f4a7c15ull + 1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The exact nearest-rank percentile of sorted v[0..n). */
static uint64_t exact_pct(const uint64_t *v, size_t n, double p)
{
    if (p <= 0)
        return v[0];
    size_t rank = (size_t)ceil(p / 100.0 * (double)n - 1e-9);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

/* n values: log-uniform over [1, 2^max_bits) (latencies span decades). */
static uint64_t *make_values(size_t n, unsigned max_bits)
{
    uint64_t *v = malloc(n * sizeof *v);
    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < n; i++) {
        unsigned bits = 1 + (unsigned)(rnd() % max_bits);
        v[i] = rnd() >> (64 - bits);
    }
    return v;
}

static const double test_pcts[] = {0, 0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100};

static void check_against_exact(uint64_t *v, size_t n)
{
    attnd_hist h;
    double sum = 0;

    ck_assert_int_eq(attnd_hist_init(&h), 0);
    for (size_t i = 0; i < n; i++) {
        attnd_hist_record(&h, v[i]);
        sum += (double)v[i];
    }
    qsort(v, n, sizeof *v, cmp_u64);
    ck_assert_uint_eq(h.count, n);
    ck_assert_uint_eq(h.min, v[0]);
    ck_assert_uint_eq(h.max, v[n - 1]);
    ck_assert(fabs(attnd_hist_mean(&h) - sum / (double)n) <= 1e-9 * sum / (double)n);
    for (size_t i = 0; i < sizeof test_pcts / sizeof test_pcts[0]; i++) {
        uint64_t got = attnd_hist_percentile(&h, test_pcts[i]);
        uint64_t want = exact_pct(v, n, test_pcts[i]);
        double err = fabs((double)got - (double)want);
        ck_assert_msg(err <= (double)want / 256.0 + 0.5,
                      "p%g: histogram %llu, exact %llu (relative error %.4g > 1/256)",
                      test_pcts[i], (unsigned long long)got, (unsigned long long)want,
                      err / (double)want);
    }
    attnd_hist_cleanup(&h);
}

START_TEST(test_percentiles_are_within_1_in_256_of_exact_nearest_rank)
{
    size_t n = 200000;
    uint64_t *v = make_values(n, 40);
    check_against_exact(v, n);
    free(v);
}
END_TEST

START_TEST(test_small_samples_and_narrow_ranges_are_exact_enough)
{
    for (size_t n = 1; n <= 300; n += 37) {
        uint64_t *v = malloc(n * sizeof *v);
        ck_assert_ptr_nonnull(v);
        for (size_t i = 0; i < n; i++)
            v[i] = 1000000 + rnd() % 5000; /* one millisecond, +- jitter */
        check_against_exact(v, n);
        free(v);
    }
}
END_TEST

START_TEST(test_values_below_128_are_recorded_exactly)
{
    attnd_hist h;
    ck_assert_int_eq(attnd_hist_init(&h), 0);
    for (uint64_t v = 0; v < 128; v++)
        attnd_hist_record(&h, v);
    for (int p = 1; p <= 100; p++) {
        uint64_t rank = (uint64_t)ceil(p / 100.0 * 128 - 1e-9);
        ck_assert_uint_eq(attnd_hist_percentile(&h, p), rank - 1);
    }
    attnd_hist_cleanup(&h);
}
END_TEST

START_TEST(test_merge_equals_recording_into_one)
{
    attnd_hist a, b, all;
    ck_assert_int_eq(attnd_hist_init(&a), 0);
    ck_assert_int_eq(attnd_hist_init(&b), 0);
    ck_assert_int_eq(attnd_hist_init(&all), 0);
    for (int i = 0; i < 50000; i++) {
        uint64_t v = rnd() >> (24 + rnd() % 30);
        attnd_hist_record(i % 3 ? &a : &b, v);
        attnd_hist_record(&all, v);
    }
    attnd_hist_merge(&a, &b);
    ck_assert_uint_eq(a.count, all.count);
    ck_assert_uint_eq(a.min, all.min);
    ck_assert_uint_eq(a.max, all.max);
    for (size_t i = 0; i < ATTND_HIST_BUCKETS; i++)
        ck_assert_uint_eq(a.buckets[i], all.buckets[i]);
    attnd_hist_cleanup(&a);
    attnd_hist_cleanup(&b);
    attnd_hist_cleanup(&all);
}
END_TEST

START_TEST(test_every_value_lies_in_its_buckets_range)
{
    for (int i = 0; i < 100000; i++) {
        uint64_t v = rnd() >> (rnd() % 64);
        uint64_t lo, hi;
        size_t k = attnd_hist_index(v);
        ck_assert_uint_lt(k, ATTND_HIST_BUCKETS);
        attnd_hist_bucket_range(k, &lo, &hi);
        ck_assert_msg(lo <= v && v <= hi, "v %llu in bucket %zu [%llu, %llu]",
                      (unsigned long long)v, k, (unsigned long long)lo, (unsigned long long)hi);
        ck_assert_uint_eq(attnd_hist_index(lo), k);
        ck_assert_uint_eq(attnd_hist_index(hi), k);
        /* the width bound behind the error bound */
        ck_assert((double)(hi - lo) <= (double)lo / 128.0);
    }
    ck_assert_uint_eq(attnd_hist_index(UINT64_MAX), ATTND_HIST_BUCKETS - 1);
}
END_TEST

START_TEST(test_empty_histogram_reports_zeroes)
{
    attnd_hist h;
    ck_assert_int_eq(attnd_hist_init(&h), 0);
    ck_assert_uint_eq(attnd_hist_percentile(&h, 50), 0);
    ck_assert(attnd_hist_mean(&h) == 0);
    attnd_hist_record(&h, 42);
    attnd_hist_reset(&h);
    ck_assert_uint_eq(h.count, 0);
    ck_assert_uint_eq(attnd_hist_percentile(&h, 99), 0);
    attnd_hist_cleanup(&h);
}
END_TEST

int main(void)
{
    seed_rng();
    Suite *s = suite_create("common_hist");
    TCase *tc = tcase_create("hist");
    tcase_add_test(tc, test_percentiles_are_within_1_in_256_of_exact_nearest_rank);
    tcase_add_test(tc, test_small_samples_and_narrow_ranges_are_exact_enough);
    tcase_add_test(tc, test_values_below_128_are_recorded_exactly);
    tcase_add_test(tc, test_merge_equals_recording_into_one);
    tcase_add_test(tc, test_every_value_lies_in_its_buckets_range);
    tcase_add_test(tc, test_empty_histogram_reports_zeroes);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
