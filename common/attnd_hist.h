/* attnd_hist: a log-linear histogram of non-negative integers (latencies in
 * nanoseconds, sizes in bytes) with a bounded relative error.
 *
 * Layout (the HdrHistogram idea, fixed at 2^7 sub-buckets): values below
 * 2^7 get one bucket each (exact); a value v >= 2^7 whose highest set bit is
 * k falls in one of 2^7 equal buckets covering [2^k, 2^(k+1)), each 2^(k-7)
 * wide. A bucket's width is therefore at most 1/128 of the values in it; a
 * percentile is reported as its bucket's midpoint (clamped to the exact
 * min and max), so it is within 1/256 (0.4%) of a value that really holds
 * that rank. Count, min, max and sum are exact.
 *
 * Percentiles use the nearest-rank definition: the p-th percentile of n
 * values is the value of rank ceil(p/100 * n) (1-based; rank 1 for p = 0).
 *
 * Ownership: an attnd_hist is caller-owned (init allocates its buckets,
 * cleanup frees them). Not thread-safe: record into one histogram per
 * thread and merge afterwards. No dependency beyond libc, so that the
 * service can reuse it.
 */
#ifndef ATTND_HIST_H
#define ATTND_HIST_H

#include <stddef.h>
#include <stdint.h>

#define ATTND_HIST_SUB_BITS 7
#define ATTND_HIST_SUB (1u << ATTND_HIST_SUB_BITS)
/* buckets for the whole uint64_t range */
#define ATTND_HIST_BUCKETS ((size_t)ATTND_HIST_SUB * (64 - ATTND_HIST_SUB_BITS + 1))

typedef struct attnd_hist {
    uint64_t count, min, max;
    double sum;
    uint64_t *buckets; /* [ATTND_HIST_BUCKETS] */
} attnd_hist;

/* 0, or -1 when out of memory (then h needs no cleanup, though it is safe). */
int attnd_hist_init(attnd_hist *h);
void attnd_hist_cleanup(attnd_hist *h);
void attnd_hist_reset(attnd_hist *h);

void attnd_hist_record(attnd_hist *h, uint64_t v);
/* Add every value of src to dst. */
void attnd_hist_merge(attnd_hist *dst, const attnd_hist *src);

/* Nearest-rank percentile, p in [0, 100]; 0 when empty. */
uint64_t attnd_hist_percentile(const attnd_hist *h, double p);
double attnd_hist_mean(const attnd_hist *h);

/* The bucket index of v, and the range [lo, hi] a bucket covers. */
size_t attnd_hist_index(uint64_t v);
void attnd_hist_bucket_range(size_t i, uint64_t *lo_p, uint64_t *hi_p);

#endif /* ATTND_HIST_H */
