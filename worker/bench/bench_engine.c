/* bench_engine: per-layer Attend latency of the worker engine itself (no
 * RPC), GPU backend against CPU backend, at DeepSeek-V3 shapes.
 *
 *   bench_engine [--model NAME] [--ctx T] [--iters N] [--cpu-iters N]
 *                [--batches 1,16,64,128] [--no-cpu] [--device cuda:0]
 *                [--no-append]
 *
 * For each batch size B: an engine of one layer of the model (the cost of a
 * layer does not depend on how many the model has), B sessions of T tokens
 * of random bf16 KV (AppendKV's engine call), then timed attnd_engine_attend
 * calls exactly as the service makes them: bf16 queries, each session's new
 * entry appended in the call, float32 outputs and LSE. Warm-up 3 calls, then
 * the median and p90 of --iters calls (wall clock around the call: it
 * returns only when the outputs are on the host). KV bandwidth counts the
 * KV the call attends over (B x (T + calls so far) x entry bytes) over the
 * median; set it beside the kernel-only time of attnd_cuda_bench in the same
 * run to see the backend's transfer and conversion overhead. Prints numbers
 * only; correctness is tests/gpu/test_gpu_e2e's job. Exit 77 without a GPU
 * when --device names one. --no-append: the calls append nothing (contexts
 * stay at T tokens). `--device cpu --no-cpu --ctx 1 --no-append` times the
 * CPU backend alone at 1-token contexts: the engine's per-call fixed cost
 * (kernels/BENCHMARKS.md, issue 18).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnd_worker.h"

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Random bf16 in about [-1, 1) (xorshift64*); never zeros. */
static void fill_bf16(uint16_t *p, size_t n, uint64_t *s)
{
    for (size_t i = 0; i < n; i++) {
        *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
        uint64_t r = *s * 0x2545F4914F6CDD1Dull;
        float f = (float)((double)(r >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f;
        p[i] = attnd_dtype_f32_to_bf16(f);
    }
}

typedef struct run_result {
    double p50_us, p90_us, kv_bytes;
} run_result;

/* One engine, B sessions of ctx tokens, iters timed calls. 0 or -1. */
static int no_append; /* --no-append */

static int run_one(const char *model, const char *device, int32_t B, int32_t ctx, int iters,
                   run_result *r)
{
    const attnd_model_spec *m = attnd_model_find(model);
    attnd_engine_config cfg = {0};
    attnd_engine *e = NULL;
    attnd_error err;
    attnd_engine_ws ws;
    int rc = -1, warm = 3;
    uint64_t seed = 0x9E3779B97F4A7C15ull;

    attnd_error_clear(&err);
    attnd_engine_ws_init(&ws);
    cfg.model = *m;
    cfg.model.n_layers = 1;
    cfg.page_size = 64;
    cfg.max_sessions = (uint32_t)B;
    snprintf(cfg.device, sizeof cfg.device, "%s", device);
    int64_t te = attnd_model_kv_token_elems(m);
    size_t entry_bytes = (size_t)te * 2;
    int64_t max_tok = ctx + warm + iters + 1;
    cfg.kv_memory = (uint64_t)B * (uint64_t)((max_tok + 63) / 64 + 1) * 64 * entry_bytes;
    size_t q_elems = (size_t)B * (size_t)m->n_q_heads * (size_t)attnd_model_d_k(m);
    attnd_session_id *ids = calloc((size_t)B, sizeof *ids);
    uint16_t *kv = malloc((size_t)ctx * entry_bytes + 2);
    uint16_t *q = malloc(q_elems * 2);
    uint16_t *nkv = malloc((size_t)B * entry_bytes);
    double *lat = calloc((size_t)iters, sizeof *lat);
    if (!ids || !kv || !q || !nkv || !lat)
        goto out;
    if (attnd_engine_create(&cfg, &e, &err))
        goto fail;
    fill_bf16(kv, (size_t)ctx * (size_t)te, &seed);
    for (int32_t i = 0; i < B; i++) {
        if (attnd_engine_session_create(e, (uint64_t)max_tok, &ids[i], &err) ||
            attnd_engine_append(e, &ids[i], 0, 0, (uint64_t)ctx, ATTND_DTYPE_BF16, kv, &err))
            goto fail;
    }
    attnd_attend_req req = {
        .layer = 0,
        .n_seqs = (uint32_t)B,
        .ids = ids,
        .q_tokens = 1,
        .q_dtype = ATTND_DTYPE_BF16,
        .q = q,
        .new_kv_dtype = ATTND_DTYPE_BF16,
        .new_kv = no_append ? NULL : nkv,
        .want_lse = 1,
    };
    double kv_sum = 0;
    for (int k = 0; k < warm + iters; k++) {
        const float *out, *lse;
        fill_bf16(q, q_elems, &seed);
        fill_bf16(nkv, (size_t)B * (size_t)te, &seed);
        double t0 = now_us();
        if (attnd_engine_attend(e, &req, &ws, &out, &lse, &err))
            goto fail;
        double t1 = now_us();
        if (k >= warm) {
            lat[k - warm] = t1 - t0;
            kv_sum += (double)B * (double)(no_append ? ctx : ctx + k + 1) * (double)entry_bytes;
        }
    }
    qsort(lat, (size_t)iters, sizeof *lat, cmp_double);
    r->p50_us = lat[iters / 2];
    r->p90_us = lat[(iters * 9) / 10 < iters ? (iters * 9) / 10 : iters - 1];
    r->kv_bytes = kv_sum / iters;
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "bench_engine: %s B=%d: %s: %s\n", device, B, attnd_status_string(err.code),
            err.msg);
out:
    attnd_engine_ws_cleanup(&ws);
    attnd_engine_destroy(e);
    free(ids);
    free(kv);
    free(q);
    free(nkv);
    free(lat);
    return rc;
}

int main(int argc, char **argv)
{
    const char *model = "deepseek-v3", *device = "cuda:0";
    char batches[128] = "1,16,64,128";
    int32_t ctx = 4096;
    int iters = 30, cpu_iters = 5, cpu = 1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--no-cpu") == 0) {
            cpu = 0;
            continue;
        }
        if (strcmp(a, "--no-append") == 0) {
            no_append = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "usage: bench_engine [--model NAME] [--ctx T] [--iters N] "
                            "[--cpu-iters N] [--batches 1,16,64] [--device cuda:N] [--no-cpu] "
                            "[--no-append]\n");
            return 2;
        }
        i++;
        if (strcmp(a, "--model") == 0)
            model = v;
        else if (strcmp(a, "--device") == 0)
            device = v;
        else if (strcmp(a, "--ctx") == 0)
            ctx = atoi(v);
        else if (strcmp(a, "--iters") == 0)
            iters = atoi(v);
        else if (strcmp(a, "--cpu-iters") == 0)
            cpu_iters = atoi(v);
        else if (strcmp(a, "--batches") == 0)
            snprintf(batches, sizeof batches, "%s", v);
        else {
            fprintf(stderr, "bench_engine: unknown option %s\n", a);
            return 2;
        }
    }
    if (!attnd_model_find(model) || ctx < 1 || iters < 1 || cpu_iters < 1) {
        fprintf(stderr, "bench_engine: bad --model, --ctx or --iters\n");
        return 2;
    }
    printf("| model | device | batch x context | p50 us per layer | p90 us | KV MB per call | "
           "KV GB/s at p50 |\n| --- | --- | --- | ---: | ---: | ---: | ---: |\n");
    int status = 0, first = 1;
    for (char *tok = strtok(batches, ","); tok; tok = strtok(NULL, ",")) {
        int32_t B = atoi(tok);
        if (B < 1)
            continue;
        for (int pass = 0; pass < 1 + cpu; pass++) {
            const char *dev = pass ? "cpu" : device;
            run_result r;
            if (run_one(model, dev, B, ctx, pass ? cpu_iters : iters, &r)) {
                if (first && pass == 0 && strcmp(dev, "cpu") != 0)
                    return 77; /* the first GPU engine failed: no usable GPU */
                status = 1;
                continue;
            }
            printf("| %s | %s | %d x %d | %.0f | %.0f | %.1f | %.1f |\n", model, dev, B, ctx,
                   r.p50_us, r.p90_us, r.kv_bytes / 1e6, r.kv_bytes / r.p50_us / 1e3);
            fflush(stdout);
        }
        first = 0;
    }
    return status;
}
