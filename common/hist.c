/* The log-linear histogram (see attnd_hist.h for the layout and its error bound). */
#include <stdlib.h>
#include <string.h>

#include "attnd_hist.h"

int attnd_hist_init(attnd_hist *h)
{
    memset(h, 0, sizeof *h);
    h->buckets = calloc(ATTND_HIST_BUCKETS, sizeof *h->buckets);
    return h->buckets ? 0 : -1;
}

void attnd_hist_cleanup(attnd_hist *h)
{
    free(h->buckets);
    memset(h, 0, sizeof *h);
}

void attnd_hist_reset(attnd_hist *h)
{
    if (h->buckets)
        memset(h->buckets, 0, ATTND_HIST_BUCKETS * sizeof *h->buckets);
    h->count = h->min = h->max = 0;
    h->sum = 0;
}

size_t attnd_hist_index(uint64_t v)
{
    if (v < ATTND_HIST_SUB)
        return (size_t)v;
    unsigned k = 63u - (unsigned)__builtin_clzll(v); /* k >= SUB_BITS */
    unsigned shift = k - ATTND_HIST_SUB_BITS;
    size_t sub = (size_t)(v >> shift) - ATTND_HIST_SUB; /* [0, SUB) */
    return (size_t)ATTND_HIST_SUB * (shift + 1) + sub;
}

void attnd_hist_bucket_range(size_t i, uint64_t *lo_p, uint64_t *hi_p)
{
    if (i < ATTND_HIST_SUB) {
        *lo_p = *hi_p = i;
        return;
    }
    unsigned shift = (unsigned)(i / ATTND_HIST_SUB) - 1;
    uint64_t sub = i % ATTND_HIST_SUB;
    uint64_t lo = (ATTND_HIST_SUB + sub) << shift;
    *lo_p = lo;
    *hi_p = lo + ((1ull << shift) - 1);
}

void attnd_hist_record(attnd_hist *h, uint64_t v)
{
    h->buckets[attnd_hist_index(v)]++;
    if (h->count == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->count++;
    h->sum += (double)v;
}

void attnd_hist_merge(attnd_hist *dst, const attnd_hist *src)
{
    if (src->count == 0)
        return;
    for (size_t i = 0; i < ATTND_HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    if (dst->count == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->count += src->count;
    dst->sum += src->sum;
}

uint64_t attnd_hist_percentile(const attnd_hist *h, double p)
{
    if (h->count == 0)
        return 0;
    if (p <= 0)
        return h->min;
    if (p >= 100)
        return h->max;
    /* nearest rank, computed so that p * n / 100 landing on an integer is
     * not pushed up by rounding */
    double r = p / 100.0 * (double)h->count;
    uint64_t rank = (uint64_t)r;
    if ((double)rank < r - 1e-9)
        rank++;
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < ATTND_HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t lo, hi;
            attnd_hist_bucket_range(i, &lo, &hi);
            uint64_t mid = lo + (hi - lo) / 2;
            if (mid < h->min)
                mid = h->min;
            if (mid > h->max)
                mid = h->max;
            return mid;
        }
    }
    return h->max;
}

double attnd_hist_mean(const attnd_hist *h)
{
    return h->count ? h->sum / (double)h->count : 0;
}
