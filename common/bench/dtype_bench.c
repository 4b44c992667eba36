/* attnd-dtype-bench: what refusing non-finite inputs costs on the request
 * path (issue 10, item 2). Not a test: it prints a table.
 *
 * For a tensor of DeepSeek-V3 queries ([B, 128, 576], B = 1 and 32) in
 * bf16 and f32 it times, per call, a memcpy of the bytes (the yardstick:
 * one pass over them), attnd_dtype_find_nonfinite (the check where no
 * conversion happens: q and new_kv on the request path), attnd_dtype_convert
 * to float32 and attnd_dtype_convert_checked (the check fused into a
 * conversion: W_UV in LoadWeights). "warm": the same buffer again and again
 * (in cache, as bytes just received are); "cold": a different buffer each
 * call out of a pool larger than the last-level cache is likely to keep.
 * Median of REPS calls, ns and GB/s of source bytes.
 *
 * usage: attnd-dtype-bench [REPS (200)]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_clock.h"
#include "attnd_dtype.h"

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

enum { OP_MEMCPY, OP_FIND, OP_CONVERT, OP_CONVERT_CHECKED, N_OPS };
static const char *const op_name[N_OPS] = {"memcpy", "find_nonfinite", "convert -> f32",
                                           "convert_checked -> f32"};

static volatile size_t sink;

static uint64_t run(int op, attnd_dtype t, const unsigned char *src, size_t n, float *dst)
{
    uint64_t t0 = attnd_clock_ns();
    switch (op) {
    case OP_MEMCPY: memcpy(dst, src, n * attnd_dtype_size(t)); break;
    case OP_FIND: sink = attnd_dtype_find_nonfinite(t, src, n); break;
    case OP_CONVERT: attnd_dtype_convert(ATTND_DTYPE_F32, dst, t, src, n); break;
    default: sink = attnd_dtype_convert_checked(ATTND_DTYPE_F32, dst, t, src, n);
    }
    return attnd_clock_ns() - t0;
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 200;
    static const attnd_dtype ts[] = {ATTND_DTYPE_BF16, ATTND_DTYPE_F32};
    static const int batches[] = {1, 32};
    uint64_t *ns = malloc(sizeof *ns * (size_t)reps);

    printf("| B | dtype | bytes | op | warm ns | warm GB/s | cold ns | cold GB/s |\n");
    printf("|---|---|---|---|---|---|---|---|\n");
    for (int bi = 0; bi < 2; bi++)
        for (int ti = 0; ti < 2; ti++) {
            attnd_dtype t = ts[ti];
            size_t n = (size_t)batches[bi] * 128 * 576, bytes = n * attnd_dtype_size(t);
            size_t pool = (size_t)1 << 30, k = pool / bytes > 1 ? pool / bytes : 2;
            unsigned char *src = malloc(bytes * k);
            float *dst = malloc(n * sizeof(float));
            for (size_t i = 0; i < n * k; i++) {
                float f = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
                attnd_dtype_convert(t, src + i * attnd_dtype_size(t), ATTND_DTYPE_F32, &f, 1);
            }
            memset(dst, 0, n * sizeof(float));
            for (int op = 0; op < N_OPS; op++) {
                double med[2];
                for (int cold = 0; cold < 2; cold++) {
                    for (int r = 0; r < reps; r++)
                        ns[r] = run(op, t, src + (cold ? (size_t)(r + 1) % k * bytes : 0), n, dst);
                    qsort(ns, (size_t)reps, sizeof *ns, cmp_u64);
                    med[cold] = (double)ns[reps / 2];
                }
                printf("| %d | %s | %zu | %s | %.0f | %.1f | %.0f | %.1f |\n", batches[bi],
                       attnd_dtype_name(t), bytes, op_name[op], med[0], bytes / med[0], med[1],
                       bytes / med[1]);
            }
            free(src);
            free(dst);
        }
    free(ns);
    return 0;
}
