/* Small helpers shared by the Check suites: a seeded random generator (the
 * seed is printed so a failure can be replayed with ATTND_TEST_SEED), and
 * the normwise relative error every kernel check uses. Header-only. */
#ifndef ATTND_TESTUTIL_H
#define ATTND_TESTUTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct tu_rng {
    uint64_t s;
} tu_rng;

/* Seed from ATTND_TEST_SEED or the clock; prints the seed once per rng. */
static inline void tu_rng_init(tu_rng *r, const char *what)
{
    const char *env = getenv("ATTND_TEST_SEED");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r->s = env ? strtoull(env, NULL, 0)
               : (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20);
    fprintf(stderr, "[%s] ATTND_TEST_SEED=%llu\n", what, (unsigned long long)r->s);
}

static inline uint64_t tu_next(tu_rng *r) /* splitmix64 */
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static inline double tu_unif(tu_rng *r)
{
    return (double)(tu_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform in [lo, hi]. */
static inline int64_t tu_int(tu_rng *r, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(tu_next(r) % (uint64_t)(hi - lo + 1));
}

/* Standard normal (Box-Muller). */
static inline double tu_normal(tu_rng *r)
{
    double u1 = tu_unif(r), u2 = tu_unif(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Normwise relative error of one row: max|got - ref| / max|ref|
 * (absolute when ref is all zero). NaN in got gives +inf. */
static inline double tu_rel_err_f32(const float *got, const double *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (isnan(got[i]))
            return INFINITY;
        if (d > num)
            num = d;
        if (fabs(ref[i]) > den)
            den = fabs(ref[i]);
    }
    return den > 0.0 ? num / den : num;
}

#endif /* ATTND_TESTUTIL_H */
