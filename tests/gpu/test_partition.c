/* The split-KV scheduler of the CUDA decode, on the CPU (runs in CI, no GPU
 * needed): for random and edge-case batches, every tile of every stream is
 * covered exactly once, in order; parts are within their bounds; slots are
 * numbered consecutively per split stream; AUTO balances (no part above
 * total / parts + one unit cost); forced splits give min(k, tiles) units. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_int.h"
#include "testutil.h"

static int fails;

#define EXPECT(cond, ...)                                       \
    do {                                                        \
        if (!(cond)) {                                          \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                       \
            fprintf(stderr, "\n");                              \
            fails++;                                            \
            return;                                             \
        }                                                       \
    } while (0)

static void check(const int32_t *tiles, int32_t n, int32_t max_parts, int32_t splits,
                  int32_t cost)
{
    attnd__cuda_partition pt;
    attnd__cuda_partition_init(&pt);
    attnd_status st = attnd__cuda_partition_make(&pt, tiles, n, max_parts, splits, cost);
    EXPECT(st == ATTND_OK, "partition_make: %d", st);
    EXPECT(pt.n_parts >= 0 && pt.n_parts <= max_parts, "n_parts %d of %d", pt.n_parts, max_parts);
    EXPECT(pt.part_ptr[0] == 0 && pt.part_ptr[pt.n_parts] == pt.n_units, "part_ptr ends");
    for (int32_t p = 0; p < pt.n_parts; p++)
        EXPECT(pt.part_ptr[p] < pt.part_ptr[p + 1], "part %d empty", p);

    /* coverage: per stream, units in order and contiguous */
    int32_t *next = calloc((size_t)n + 1, sizeof(int32_t));
    int32_t *seen = calloc((size_t)n + 1, sizeof(int32_t));
    int64_t total = 0;
    for (int32_t i = 0; i < n; i++)
        total += tiles[i];
    int64_t worst = 0;
    for (int32_t p = 0; p < pt.n_parts; p++) {
        int64_t load = 0;
        for (int32_t u = pt.part_ptr[p]; u < pt.part_ptr[p + 1]; u++) {
            const attnd__cuda_unit *un = &pt.units[u];
            EXPECT(un->stream >= 0 && un->stream < n, "unit %d stream %d", u, un->stream);
            EXPECT(un->tile0 == next[un->stream] &&
                       (un->tile1 > un->tile0 || (tiles[un->stream] == 0 && un->tile1 == 0)) &&
                       un->tile1 <= tiles[un->stream],
                   "unit %d [%d,%d) of stream %d (next %d, tiles %d)", u, un->tile0, un->tile1,
                   un->stream, next[un->stream], tiles[un->stream]);
            int32_t k = pt.stream_nsplit[un->stream];
            if (k >= 2)
                EXPECT(un->slot == pt.stream_slot0[un->stream] + seen[un->stream],
                       "unit %d slot %d", u, un->slot);
            else
                EXPECT(un->slot == -1, "unit %d of a one-unit stream has slot %d", u, un->slot);
            next[un->stream] = un->tile1;
            seen[un->stream]++;
            load += un->tile1 - un->tile0 + cost;
        }
        if (load > worst)
            worst = load;
    }
    int32_t slots = 0;
    for (int32_t i = 0; i < n; i++) {
        EXPECT(next[i] == tiles[i], "stream %d covered to %d of %d", i, next[i], tiles[i]);
        EXPECT(seen[i] == pt.stream_nsplit[i], "stream %d: %d units, nsplit %d", i, seen[i],
               pt.stream_nsplit[i]);
        int32_t want = splits > 0 ? (tiles[i] < splits ? tiles[i] : splits) : tiles[i];
        if (want < 1)
            want = 1; /* an empty stream has one unit of no tiles */
        if (splits != 0)
            EXPECT(seen[i] == want, "stream %d: %d units, want %d", i, seen[i], want);
        EXPECT(seen[i] >= 1, "stream %d has no unit", i);
        if (pt.stream_nsplit[i] >= 2) {
            EXPECT(pt.stream_slot0[i] == slots, "stream %d slot0 %d, want %d", i,
                   pt.stream_slot0[i], slots);
            slots += pt.stream_nsplit[i];
        }
    }
    EXPECT(slots == pt.n_slots, "n_slots %d, want %d", pt.n_slots, slots);
    if (splits == 0 && total + n > 0) {
        int64_t all = 0;
        for (int32_t i = 0; i < n; i++)
            all += tiles[i] + cost;
        int64_t budget = (all + max_parts - 1) / max_parts + cost;
        if (budget < cost + 1)
            budget = cost + 1;
        EXPECT(worst <= budget, "AUTO: a part holds %lld, budget %lld", (long long)worst,
               (long long)budget);
    }
    free(next);
    free(seen);
    attnd__cuda_partition_cleanup(&pt);
}

int main(void)
{
    tu_rng r;
    tu_rng_init(&r, "test_partition");
    const int32_t edge[] = {0, 1, 0, 64, 512, 1, 1, 2048, 0};
    for (int32_t splits = -1; splits <= 7; splits++)
        for (int32_t parts = 1; parts <= 200; parts = parts * 3 + 1)
            check(edge, 9, parts, splits, 2);
    for (int iter = 0; iter < 300; iter++) {
        int32_t n = (int32_t)tu_int(&r, 0, 300);
        int32_t *t = malloc(sizeof(int32_t) * ((size_t)n + 1));
        int64_t maxt = tu_int(&r, 1, 3000);
        for (int32_t i = 0; i < n; i++)
            t[i] = tu_unif(&r) < 0.1 ? 0 : (int32_t)tu_int(&r, 1, maxt);
        int32_t parts = (int32_t)tu_int(&r, 1, 264);
        int32_t splits = (int32_t)tu_int(&r, -1, 9);
        if (tu_unif(&r) < 0.5)
            splits = 0;
        check(t, n, parts, splits, (int32_t)tu_int(&r, 0, 3));
        free(t);
    }
    /* one long stream among short ones spreads over many parts */
    {
        int32_t t[5] = {1, 3, 1000, 2, 1};
        attnd__cuda_partition pt;
        attnd__cuda_partition_init(&pt);
        attnd__cuda_partition_make(&pt, t, 5, 132, 0, 2);
        if (pt.stream_nsplit[2] < 60) {
            fprintf(stderr, "FAIL: long stream in %d units only\n", pt.stream_nsplit[2]);
            fails++;
        }
        attnd__cuda_partition_cleanup(&pt);
    }
    printf("test_partition: %s\n", fails ? "FAILED" : "passed");
    return fails ? 1 : 0;
}
