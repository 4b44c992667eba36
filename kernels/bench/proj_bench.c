/* attnd-proj-bench: the narrow MLA wire's two projections at a model's
 * shapes, beside nothing but themselves (the engine-level comparison with
 * the attention kernel is worker/bench/bench_engine_narrow.c).
 *
 *   attnd-proj-bench [--heads 128] [--d-nope 128] [--d-c 512] [--d-v 128]
 *                    [--d-rope 64] [--batch 1,32] [--threads 1,2]
 *                    [--iters 50] [--path scalar|avx2|avx512]
 *
 * For each batch, thread count and weight dtype (float32, bf16): the
 * absorb (bf16 q [B][H][d_nope + d_rope] -> float32 [B][H][d_c + d_rope])
 * and the up-projection (float32 [B][H][d_c] -> [B][H][d_v]) on a kernel
 * pool, median of --iters calls after 3 warm-up calls; the weights' read
 * rate (bytes of W_UK + W_UV over the two medians) and GFLOP/s. Inputs are
 * random; weights are 1 GB of distinct copies cycled through, so that
 * every call reads them from memory as a server holding 61 layers does
 * (the last level cache would otherwise hold one layer's). cpu_us: the
 * process's CPU time per call pair (every pool thread), steadier than wall
 * time on a shared machine. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnd_clock.h"
#include "attnd_dtype.h"
#include "attnd_proj.h"

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t cpu_ns(void) /* every thread of the process */
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int parse_list(const char *s, int32_t *v, int max)
{
    int n = 0;
    while (s && *s && n < max) {
        v[n++] = (int32_t)strtol(s, (char **)&s, 10);
        if (*s == ',')
            s++;
    }
    return n;
}

static void fill(void *x, attnd_dtype t, size_t n, uint64_t seed)
{
    float *f = malloc(4096 * sizeof *f);
    for (size_t i = 0; i < 4096; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        f[i] = (float)((int64_t)(seed >> 40) - (1 << 23)) / (float)(1 << 23);
    }
    for (size_t i = 0; i < n; i += 4096)
        attnd_dtype_convert(t, (char *)x + i * attnd_dtype_size(t), ATTND_DTYPE_F32, f,
                            n - i < 4096 ? n - i : 4096);
    free(f);
}

int main(int argc, char **argv)
{
    int32_t H = 128, dn = 128, dc = 512, dv = 128, dr = 64, iters = 50;
    int32_t batch[8] = {1, 32}, threads[8] = {1, 2};
    int nb = 2, nt = 2;
    attnd_error err;

    for (int i = 1; i + 1 < argc; i += 2) {
        const char *f = argv[i], *v = argv[i + 1];
        if (!strcmp(f, "--heads")) H = atoi(v);
        else if (!strcmp(f, "--d-nope")) dn = atoi(v);
        else if (!strcmp(f, "--d-c")) dc = atoi(v);
        else if (!strcmp(f, "--d-v")) dv = atoi(v);
        else if (!strcmp(f, "--d-rope")) dr = atoi(v);
        else if (!strcmp(f, "--iters")) iters = atoi(v);
        else if (!strcmp(f, "--batch")) nb = parse_list(v, batch, 8);
        else if (!strcmp(f, "--threads")) nt = parse_list(v, threads, 8);
        else if (!strcmp(f, "--path")) setenv("ATTND_KERNEL_PATH", v, 1);
        else {
            fprintf(stderr, "attnd-proj-bench: unknown flag %s\n", f);
            return 2;
        }
    }
    if (iters < 1 || H < 1 || dn < 1 || dc < 1 || dv < 1 || dr < 0 || nb < 1 || nt < 1) {
        fprintf(stderr, "attnd-proj-bench: bad sizes\n");
        return 2;
    }
    int32_t bmax = 0;
    for (int i = 0; i < nb; i++)
        bmax = batch[i] > bmax ? batch[i] : bmax;
    const size_t per_layer = (size_t)H * (size_t)dc * (size_t)(dn + dv); /* elements */
    size_t copies = ((size_t)1 << 30) / (per_layer * 4);
    copies = copies > 2 ? copies : 2;
    float *wf = malloc(per_layer * copies * 4);
    uint16_t *wb = malloc(per_layer * copies * 2);
    uint16_t *q = malloc((size_t)bmax * (size_t)H * (size_t)(dn + dr) * 2);
    float *qa = malloc((size_t)bmax * (size_t)H * (size_t)(dc + dr) * 4);
    float *o = malloc((size_t)bmax * (size_t)H * (size_t)dc * 4);
    float *v = malloc((size_t)bmax * (size_t)H * (size_t)dv * 4);
    uint64_t *t_abs = malloc((size_t)iters * 8), *t_up = malloc((size_t)iters * 8);
    uint64_t *t_cpu = malloc((size_t)iters * 8);
    if (!wf || !wb || !q || !qa || !o || !v || !t_abs || !t_up || !t_cpu) {
        fprintf(stderr, "attnd-proj-bench: out of memory\n");
        return 1;
    }
    fill(wf, ATTND_DTYPE_F32, per_layer * copies, 1);
    fill(wb, ATTND_DTYPE_BF16, per_layer * copies, 2);
    fill(q, ATTND_DTYPE_BF16, (size_t)bmax * (size_t)H * (size_t)(dn + dr), 3);
    fill(o, ATTND_DTYPE_F32, (size_t)bmax * (size_t)H * (size_t)dc, 4);
    printf("attnd-proj-bench: path %s, H %d, d_nope %d, d_c %d, d_v %d, d_rope %d, "
           "%zu weight copies cycled, median of %d\n",
           attnd_kernel_path_str(attnd_kernel_path_current()), H, dn, dc, dv, dr, copies, iters);
    printf("%6s %7s %5s %10s %10s %10s %10s %8s %10s %12s\n", "batch", "threads", "w",
           "absorb_us", "up_us", "both_us", "cpu_us", "w_GB/s", "GFLOP/s", "GFLOP/cpu-s");
    for (int ti = 0; ti < nt; ti++) {
        attnd_kernel_pool *pool = NULL;
        if (attnd_kernel_pool_create(threads[ti], &pool, &err)) {
            fprintf(stderr, "attnd-proj-bench: %s\n", err.msg);
            return 1;
        }
        for (int bi = 0; bi < nb; bi++)
            for (int wi = 0; wi < 2; wi++) {
                const int32_t B = batch[bi];
                const attnd_dtype wt = wi ? ATTND_DTYPE_BF16 : ATTND_DTYPE_F32;
                const size_t es = attnd_dtype_size(wt);
                size_t c = 0;
                for (int it = -3; it < iters; it++, c = (c + 1) % copies) {
                    const char *base = (const char *)(wi ? (void *)wb : (void *)wf) +
                                       c * per_layer * es;
                    attnd_kernel_proj a = {.rows = B, .heads = H, .k = dn, .j = dc, .pass = dr,
                                    .src_dtype = ATTND_DTYPE_BF16, .src = q,
                                    .src_row = (int64_t)H * (dn + dr), .src_head = dn + dr,
                                    .w_dtype = wt, .w = base, .dst = qa,
                                    .dst_row = (int64_t)H * (dc + dr), .dst_head = dc + dr};
                    attnd_kernel_proj u = {.rows = B, .heads = H, .k = dc, .j = dv,
                                    .src_dtype = ATTND_DTYPE_F32, .src = o,
                                    .src_row = (int64_t)H * dc, .src_head = dc,
                                    .w_dtype = wt,
                                    .w = base + (size_t)H * (size_t)dn * (size_t)dc * es,
                                    .dst = v, .dst_row = (int64_t)H * dv, .dst_head = dv};
                    uint64_t c0 = cpu_ns(), t0 = attnd_clock_ns();
                    attnd_kernel_proj_parallel(pool, &a, &err);
                    uint64_t t1 = attnd_clock_ns();
                    attnd_kernel_proj_parallel(pool, &u, &err);
                    uint64_t t2 = attnd_clock_ns(), c2 = cpu_ns();
                    if (it >= 0) {
                        t_cpu[it] = c2 - c0;
                        t_abs[it] = t1 - t0;
                        t_up[it] = t2 - t1;
                    }
                }
                qsort(t_abs, (size_t)iters, 8, cmp_u64);
                qsort(t_up, (size_t)iters, 8, cmp_u64);
                qsort(t_cpu, (size_t)iters, 8, cmp_u64);
                double tc = (double)t_cpu[iters / 2] / 1e3;
                double ta = (double)t_abs[iters / 2] / 1e3, tu = (double)t_up[iters / 2] / 1e3;
                double flop = 2.0 * B * H * ((double)dn * dc + (double)dc * dv);
                printf("%6d %7d %5s %10.1f %10.1f %10.1f %10.1f %8.2f %10.1f %12.1f\n", B,
                       threads[ti], attnd_dtype_name(wt), ta, tu, ta + tu, tc,
                       (double)per_layer * (double)es / ((ta + tu) * 1e3),
                       flop / ((ta + tu) * 1e3), flop / (tc * 1e3));
            }
        attnd_kernel_pool_destroy(pool);
    }
    return 0;
}
