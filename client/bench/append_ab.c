/* attnd-append-ab: AppendKV round trips through libattnd against several
 * running attnd workers at once, one call to each in turn, for the tiers
 * benchmark (worker/bench/tiers_bench.sh, section 6). Not a test: it
 * prints numbers.
 *
 * Why interleaved: on a shared, loaded machine two runs measured seconds
 * apart differ more than the durable log's cost (worker/TIERS.md,
 * "Figures": attnd-bench's AppendKV p50 with --durable=off ranged 0.28 to
 * 0.66 ms between rounds of one run). Calls to workers that differ only
 * in a flag, issued alternately from one thread, see the same load.
 *
 * Each worker gets one session; call i appends `tokens` tokens (random
 * bf16 in [-1, 1)) to layer i mod n_layers of it, at that layer's end:
 * one AppendKV stream of one chunk, the shape of attnd-bench's prefill
 * with --chunk equal to the prompt. The first worker of call i is i mod
 * the number of workers, so no worker always goes first. `warmup` calls
 * to each are made first and not counted. It prints, per target, one line:
 * target=... p10_us p50_us p90_us p99_us mean_us calls.
 *
 * usage: attnd-append-ab ITERS TOKENS WARMUP TARGET...
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnd/client.h"

#define MOST_TARGETS 8

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int fail(const char *what, const attnd_error *err)
{
    fprintf(stderr, "attnd-append-ab: %s: %s\n", what, err->msg);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: attnd-append-ab ITERS TOKENS WARMUP TARGET...\n");
        return 2;
    }
    const long iters = atol(argv[1]), tokens = atol(argv[2]), warmup = atol(argv[3]);
    const int k = argc - 4;
    if (iters < 1 || tokens < 1 || warmup < 0 || k > MOST_TARGETS) {
        fprintf(stderr, "attnd-append-ab: ITERS, TOKENS >= 1, WARMUP >= 0, at most %d targets\n",
                MOST_TARGETS);
        return 2;
    }
    attnd_client *c[MOST_TARGETS];
    attnd_session_id id[MOST_TARGETS];
    attnd_model_info m;
    attnd_error err;
    for (int t = 0; t < k; t++) {
        attnd_error_clear(&err);
        if (attnd_client_connect(argv[4 + t], NULL, &c[t], &err))
            return fail(argv[4 + t], &err);
        if (attnd_client_create_session(c[t], "", 0, &id[t], &m, &err))
            return fail("CreateSession", &err);
    }
    /* random bf16 in [-1, 1): the upper half of a float's bits */
    const size_t elems = (size_t)tokens * m.kv_token_elems;
    uint16_t *kv = malloc(elems * sizeof *kv);
    double *lat = malloc((size_t)k * (size_t)iters * sizeof *lat);
    if (!kv || !lat) {
        fprintf(stderr, "attnd-append-ab: out of memory\n");
        return 1;
    }
    srand(1);
    for (size_t i = 0; i < elems; i++) {
        float f = 2.0f * (float)rand() / ((float)RAND_MAX + 1.0f) - 1.0f;
        uint32_t b;
        memcpy(&b, &f, sizeof b);
        kv[i] = (uint16_t)(b >> 16);
    }
    for (long i = -warmup; i < iters; i++) {
        const long call = i + warmup;
        attnd_kv_chunk ch = {.layer = (uint32_t)(call % m.n_layers),
                             .start = (uint64_t)(call / m.n_layers) * (uint64_t)tokens,
                             .n_tokens = (uint32_t)tokens,
                             .kv_token_elems = m.kv_token_elems,
                             .dtype = ATTND_DTYPE_BF16,
                             .data = kv};
        for (int j = 0; j < k; j++) {
            const int t = (int)((call + j) % k);
            ch.session = id[t];
            attnd_error_clear(&err);
            double a = now_us();
            if (attnd_client_append_kv(c[t], &ch, 1, NULL, &err))
                return fail("AppendKV", &err);
            if (i >= 0)
                lat[(size_t)t * (size_t)iters + (size_t)i] = now_us() - a;
        }
    }
    for (int t = 0; t < k; t++) {
        double *x = lat + (size_t)t * (size_t)iters, sum = 0;
        for (long i = 0; i < iters; i++)
            sum += x[i];
        qsort(x, (size_t)iters, sizeof *x, cmp_double);
        printf("target=%s p10_us=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f mean_us=%.1f calls=%ld\n",
               argv[4 + t], x[iters / 10], x[iters / 2], x[iters * 9 / 10], x[iters * 99 / 100],
               sum / (double)iters, iters);
        attnd_client_close_session(c[t], &id[t], &err);
        attnd_client_destroy(c[t]);
    }
    free(kv);
    free(lat);
    return 0;
}
