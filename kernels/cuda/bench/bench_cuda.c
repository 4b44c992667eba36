/* Timing of the CUDA decode kernels beside anchors measured in the same run.
 *
 * Anchors: a streaming read-only kernel and a device-to-device copy (bytes
 * read + written), and, when torch_anchors.py ran first and wrote its TSV
 * (--torch FILE), torch SDPA (GQA, best backend) and torch-eager MLA
 * (bmm-softmax-bmm) on the same shapes.
 *
 * Each shape: KV filled on the device, page lists shuffled over the pool,
 * rotating among enough input sets to exceed 256 MB (L2 is 50 MB); one AUTO
 * plan; warm-up runs for at least 30 ms (clocks ramp up), then 30 timed
 * runs (CUDA events around the decode and combine, queued behind a 2 ms
 * busy spin on every SM so that host launch gaps stay out and the clocks
 * stay up), median reported. Bytes count as FlashMLA does: queries + KV listed
 * (read once) + outputs and LSE; FLOPs 2 * rows * visible tokens * (d_k +
 * d_v). A spot check compares two sequences' outputs (first heads) with the
 * float64 reference. Prints a markdown table last. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnd_cuda.h"
#include "bench_kernels.h"
#include "testutil.h"

#define CK(call)                                                                          \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess) {                                                          \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                 \
                    cudaGetErrorString(e_));                                              \
            exit(2);                                                                      \
        }                                                                                 \
    } while (0)

#define AK(call)                                                                          \
    do {                                                                                  \
        attnd_error err_ = {0};                                                           \
        attnd_status st_ = (call);                                                        \
        (void)err_;                                                                       \
        if (st_ != ATTND_OK) {                                                            \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, attnd_status_string(st_)); \
            exit(2);                                                                      \
        }                                                                                 \
    } while (0)

#define WARMUP 5
#define REPS 30

static attnd_cuda_ctx *ctx;
static cudaStream_t stream;
static tu_rng rng;
static double read_gbs, copy_gbs;

typedef struct shape {
    int mla;
    int32_t batch, hq, hkv, dim, S, ctx_len, varied;
} shape;

typedef struct result {
    char name[64], key[64];
    double us, gbs, tflops, err;
    int32_t ctas, units;
} result;

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Median time (ms) of REPS runs of fn(i) queued behind a spin. */
typedef void (*run_fn)(void *arg, int i);
static float time_median(run_fn fn, void *arg)
{
    cudaEvent_t ev[2 * REPS];
    for (int i = 0; i < 2 * REPS; i++)
        CK(cudaEventCreate(&ev[i]));
    /* warm up for WARMUP runs and at least 30 ms (clocks ramp up) */
    cudaEvent_t w0, w1;
    CK(cudaEventCreate(&w0));
    CK(cudaEventCreate(&w1));
    CK(cudaEventRecord(w0, stream));
    for (int i = 0;; i++) {
        fn(arg, i);
        if (i + 1 >= WARMUP && (i + 1) % WARMUP == 0) {
            float ms = 0;
            CK(cudaEventRecord(w1, stream));
            CK(cudaEventSynchronize(w1));
            CK(cudaEventElapsedTime(&ms, w0, w1));
            if (ms >= 30.f || i > 100000)
                break;
        }
    }
    CK(cudaEventDestroy(w0));
    CK(cudaEventDestroy(w1));
    /* 2 ms of busy SMs to queue the timed runs behind */
    CK((cudaError_t)bench_spin(2ull * 1000 * 1000, attnd_cuda_ctx_sm_count(ctx), stream));
    for (int i = 0; i < REPS; i++) {
        CK(cudaEventRecord(ev[2 * i], stream));
        fn(arg, i);
        CK(cudaEventRecord(ev[2 * i + 1], stream));
    }
    CK(cudaStreamSynchronize(stream));
    CK(cudaGetLastError());
    float t[REPS];
    for (int i = 0; i < REPS; i++) {
        CK(cudaEventElapsedTime(&t[i], ev[2 * i], ev[2 * i + 1]));
    }
    for (int i = 0; i < 2 * REPS; i++)
        CK(cudaEventDestroy(ev[i]));
    qsort(t, REPS, sizeof(float), cmp_f);
    return (t[REPS / 2 - 1] + t[REPS / 2]) / 2;
}

/* ---- anchors ---------------------------------------------------------------- */

typedef struct anchor_arg {
    void *a, *b;
    size_t bytes;
    unsigned *sink;
    int blocks;
} anchor_arg;

static void run_read(void *arg, int i)
{
    anchor_arg *a = arg;
    (void)i;
    CK((cudaError_t)bench_read(a->a, a->bytes, a->sink, a->blocks, stream));
}

static void run_copy(void *arg, int i)
{
    anchor_arg *a = arg;
    (void)i;
    CK(cudaMemcpyAsync(a->b, a->a, a->bytes, cudaMemcpyDeviceToDevice, stream));
}

static void anchors(void)
{
    anchor_arg a = {0};
    a.bytes = (size_t)2 << 30;
    CK(cudaMalloc(&a.a, 2 * a.bytes));
    CK(cudaMalloc(&a.b, a.bytes));
    CK(cudaMalloc((void **)&a.sink, 64));
    CK((cudaError_t)bench_fill_bf16(a.a, a.bytes, 1, stream));
    int sms = attnd_cuda_ctx_sm_count(ctx);
    read_gbs = 0;
    a.bytes *= 2; /* read 4 GiB */
    for (int k = 1; k <= 8; k *= 2) {
        a.blocks = sms * 4 * k / 4;
        float ms = time_median(run_read, &a);
        double g = (double)a.bytes / (ms * 1e-3) / 1e9;
        printf("anchor read-only blocks=%d: %.3f ms, %.0f GB/s\n", a.blocks, ms, g);
        if (g > read_gbs)
            read_gbs = g;
    }
    a.bytes /= 2;
    float ms = time_median(run_copy, &a);
    copy_gbs = 2.0 * (double)a.bytes / (ms * 1e-3) / 1e9;
    printf("anchor d2d copy %zu MiB: %.3f ms, %.0f GB/s (read + write)\n", a.bytes >> 20, ms,
           copy_gbs);
    cudaFree(a.a);
    cudaFree(a.b);
    cudaFree(a.sink);
}

/* ---- decode shapes ------------------------------------------------------------ */

typedef struct dec_set {
    attnd_cuda_batch b;
    int32_t *d_idx;
    void *d_q, *d_out;
    float *d_lse;
} dec_set;

typedef struct dec_arg {
    attnd_cuda_plan *plan;
    dec_set *sets;
    int n_sets;
} dec_arg;

static void run_decode(void *arg, int i)
{
    dec_arg *d = arg;
    attnd_error err = {0};
    attnd_status st = attnd_cuda_decode_run(d->plan, &d->sets[i % d->n_sets].b, &err);
    if (st) {
        fprintf(stderr, "decode_run: %s\n", err.msg);
        exit(2);
    }
}

/* Float64 check of sequence i, query heads [0, nh), every query token. */
static double spot_check(const shape *sh, const attnd_cuda_batch *b, const int32_t *indptr,
                         const int32_t *idx, const int32_t *last, int32_t i, int32_t nh)
{
    const attnd_kernel_kv_layout *l = &b->kv;
    const int32_t ps = l->page_size, dk = l->d_k, dv = l->d_v, S = sh->S, hq = sh->hq;
    const int32_t hkv = sh->mla ? 1 : sh->hkv, G = hq / hkv;
    int32_t np = indptr[i + 1] - indptr[i];
    int64_t T = np ? (int64_t)(np - 1) * ps + last[i] : 0;
    if (nh > hq)
        nh = hq;
    int32_t nkv = sh->mla ? 1 : (nh + G - 1) / G;
    size_t pe = (size_t)l->page_stride;
    uint16_t *page = malloc(pe * 2);
    double *k = malloc(sizeof(double) * (size_t)(T * nkv * dk + 1));
    double *v = malloc(sizeof(double) * (size_t)(T * nkv * dv + 1));
    for (int32_t j = 0; j < np; j++) {
        CK(cudaMemcpy(page, (const char *)b->pool + (size_t)idx[indptr[i] + j] * pe * 2, pe * 2,
                      cudaMemcpyDeviceToHost));
        for (int32_t s = 0; s < ps && (int64_t)j * ps + s < T; s++) {
            int64_t t = (int64_t)j * ps + s;
            for (int32_t h = 0; h < nkv; h++) {
                for (int32_t d = 0; d < dk; d++)
                    k[(t * nkv + h) * dk + d] =
                        attnd_dtype_bf16_to_f32(page[h * l->k_head_stride + s * l->k_token_stride + d]);
                for (int32_t d = 0; d < dv; d++)
                    v[(t * nkv + h) * dv + d] =
                        sh->mla ? k[(t * nkv + h) * dk + d]
                                : attnd_dtype_bf16_to_f32(page[l->v_offset + h * l->v_head_stride +
                                                         s * l->v_token_stride + d]);
            }
        }
    }
    uint16_t *qh = malloc(sizeof(uint16_t) * (size_t)hq * dk);
    uint16_t *oh = malloc(sizeof(uint16_t) * (size_t)hq * dv);
    double *q = malloc(sizeof(double) * (size_t)nh * dk), *ref = malloc(sizeof(double) * (size_t)nh * dv);
    float *got = malloc(sizeof(float) * dv);
    double worst = 0;
    for (int32_t s = 0; s < S; s++) {
        size_t row = ((size_t)i * S + s) * hq;
        CK(cudaMemcpy(qh, (const uint16_t *)b->q + row * dk, sizeof(uint16_t) * (size_t)hq * dk,
                      cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(oh, (const uint16_t *)b->out + row * dv, sizeof(uint16_t) * (size_t)hq * dv,
                      cudaMemcpyDeviceToHost));
        for (int32_t j = 0; j < nh * dk; j++)
            q[j] = attnd_dtype_bf16_to_f32(qh[j]);
        int64_t vis = T - (S - 1 - s);
        attnd_kernel_ref_attention_f64(nh, nkv, dk, dv, vis < 0 ? 0 : vis, b->scale, q, k, v, ref,
                                       NULL);
        for (int32_t h = 0; h < nh; h++) {
            for (int32_t d = 0; d < dv; d++)
                got[d] = attnd_dtype_bf16_to_f32(oh[(size_t)h * dv + d]);
            double e = tu_rel_err_f32(got, ref + (size_t)h * dv, (size_t)dv);
            if (!(e <= worst))
                worst = e;
        }
    }
    free(page);
    free(k);
    free(v);
    free(qh);
    free(oh);
    free(q);
    free(ref);
    free(got);
    return worst;
}

static void bench_decode(const shape *sh, result *res)
{
    const int32_t n = sh->batch, S = sh->S, hq = sh->hq, ps = 64;
    attnd_kernel_kv_layout l;
    if (sh->mla)
        attnd_kernel_kv_layout_mla(&l, sh->dim, 64, ps, ATTND_DTYPE_BF16);
    else
        attnd_kernel_kv_layout_gqa(&l, sh->hkv, sh->dim, ps, ATTND_DTYPE_BF16);
    int32_t *indptr = calloc((size_t)n + 1, sizeof(int32_t)), *last = calloc((size_t)n, sizeof(int32_t));
    int64_t tokens = 0;
    double flops = 0;
    for (int32_t i = 0; i < n; i++) {
        int64_t len = sh->ctx_len;
        if (sh->varied) {
            len = (int64_t)llround(sh->ctx_len + 0.5 * sh->ctx_len * tu_normal(&rng));
            if (len < 1)
                len = 1;
            if (len > 4 * (int64_t)sh->ctx_len)
                len = 4 * (int64_t)sh->ctx_len;
        }
        int32_t np = (int32_t)((len + ps - 1) / ps);
        indptr[i + 1] = indptr[i] + np;
        last[i] = (int32_t)(len - (int64_t)(np - 1) * ps);
        tokens += len;
        for (int32_t s = 0; s < S; s++)
            flops += 2.0 * hq * (double)(len - (S - 1 - s)) * (l.d_k + l.d_v);
    }
    const int64_t pages = indptr[n];
    const size_t page_bytes = attnd_kernel_kv_layout_page_bytes(&l);
    const double tok_bytes = sh->mla ? 2.0 * l.d_k : 4.0 * sh->hkv * sh->dim;
    const double kv_bytes = tok_bytes * (double)tokens;
    int n_sets = (int)ceil(256e6 / ((double)pages * page_bytes));
    if (n_sets < 1)
        n_sets = 1;
    if (n_sets > 32)
        n_sets = 32;
    const size_t q_elems = (size_t)n * S * hq * l.d_k, o_elems = (size_t)n * S * hq * l.d_v;
    const double bytes = kv_bytes + 2.0 * q_elems + 2.0 * o_elems + 4.0 * n * S * hq;

    void *pool;
    CK(cudaMalloc(&pool, (size_t)pages * n_sets * page_bytes));
    CK((cudaError_t)bench_fill_bf16(pool, (size_t)pages * n_sets * page_bytes / 2, 7, stream));
    int32_t *d_indptr, *d_last;
    CK(cudaMalloc((void **)&d_indptr, sizeof(int32_t) * ((size_t)n + 1)));
    CK(cudaMalloc((void **)&d_last, sizeof(int32_t) * (size_t)n));
    CK(cudaMemcpy(d_indptr, indptr, sizeof(int32_t) * ((size_t)n + 1), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_last, last, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice));
    dec_set *sets = calloc((size_t)n_sets, sizeof *sets);
    int32_t *idx0 = malloc(sizeof(int32_t) * (size_t)(pages + 1));
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)(pages + 1));
    for (int k = 0; k < n_sets; k++) {
        dec_set *st = &sets[k];
        for (int64_t j = 0; j < pages; j++)
            perm[j] = (int32_t)(k * pages + j);
        for (int64_t j = pages - 1; j > 0; j--) {
            int64_t r = tu_int(&rng, 0, j);
            int32_t t = perm[j];
            perm[j] = perm[r];
            perm[r] = t;
        }
        if (k == 0)
            memcpy(idx0, perm, sizeof(int32_t) * (size_t)pages);
        CK(cudaMalloc((void **)&st->d_idx, sizeof(int32_t) * (size_t)(pages + 1)));
        CK(cudaMemcpy(st->d_idx, perm, sizeof(int32_t) * (size_t)pages, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&st->d_q, q_elems * 2));
        CK((cudaError_t)bench_fill_bf16(st->d_q, q_elems, 100 + k, stream));
        CK(cudaMalloc(&st->d_out, o_elems * 2));
        CK(cudaMalloc((void **)&st->d_lse, sizeof(float) * (size_t)n * S * hq));
        attnd_cuda_batch *b = &st->b;
        b->n_seqs = n;
        b->q_tokens = S;
        b->n_q_heads = hq;
        b->list_groups = 1;
        b->scale = (float)(sh->mla ? 1.0 / sqrt(192.0) : 1.0 / sqrt((double)sh->dim));
        b->kv = l;
        b->pool_pages = pages * n_sets;
        b->q = st->d_q;
        b->pool = pool;
        b->page_indptr = d_indptr;
        b->page_idx = st->d_idx;
        b->last_page_len = d_last;
        b->out_dtype = ATTND_DTYPE_BF16;
        b->out = st->d_out;
        b->lse = st->d_lse;
    }
    CK(cudaDeviceSynchronize()); /* pageable copies run on the legacy stream */
    attnd_cuda_plan *plan;
    attnd_error err = {0};
    AK(attnd_cuda_plan_create(ctx, &plan, &err));
    if (attnd_cuda_plan_make(plan, &sets[0].b, indptr, last, NULL, &err)) {
        fprintf(stderr, "plan_make: %s\n", err.msg);
        exit(2);
    }
    dec_arg da = {plan, sets, n_sets};
    float ms = time_median(run_decode, &da);

    res->us = ms * 1e3;
    res->gbs = bytes / (ms * 1e-3) / 1e9;
    res->tflops = flops / (ms * 1e-3) / 1e12;
    res->ctas = attnd_cuda_plan_ctas(plan);
    res->units = attnd_cuda_plan_units(plan);
    /* the last timed run used set (REPS - 1) % n_sets: check set 0 again */
    run_decode(&da, 0);
    CK(cudaStreamSynchronize(stream));
    double e0 = spot_check(sh, &sets[0].b, indptr, idx0, last, 0, 8);
    double e1 = spot_check(sh, &sets[0].b, indptr, idx0, last, n - 1, 8);
    res->err = e0 > e1 ? e0 : e1;
    if (sh->mla)
        snprintf(res->name, sizeof res->name, "%s B=%d H=%d S=%d L=%d%s", attnd_cuda_plan_kernel(plan),
                 n, hq, S, sh->ctx_len, sh->varied ? "~" : "");
    else
        snprintf(res->name, sizeof res->name, "%s B=%d %d/%d L=%d%s", attnd_cuda_plan_kernel(plan), n,
                 hq, sh->hkv, sh->ctx_len, sh->varied ? "~" : "");
    if (sh->mla)
        snprintf(res->key, sizeof res->key, "mla %d %d %d %d%s", n, hq, S, sh->ctx_len,
                 sh->varied ? "~" : "");
    else
        snprintf(res->key, sizeof res->key, "gqa %d %d", n, sh->ctx_len);
    printf("%-40s %9.1f us %7.0f GB/s %6.1f TFLOP/s  %d CTAs %d units  sets=%d  check %.1e\n",
           res->name, res->us, res->gbs, res->tflops, res->ctas, res->units, n_sets, res->err);
    fflush(stdout);

    attnd_cuda_plan_destroy(plan);
    for (int k = 0; k < n_sets; k++) {
        cudaFree(sets[k].d_idx);
        cudaFree(sets[k].d_q);
        cudaFree(sets[k].d_out);
        cudaFree(sets[k].d_lse);
    }
    cudaFree(pool);
    cudaFree(d_indptr);
    cudaFree(d_last);
    free(sets);
    free(idx0);
    free(perm);
    free(indptr);
    free(last);
}

/* torch_anchors.py output: "key<TAB>metric<TAB>value" lines. */
static double torch_value(const char *file, const char *key, const char *metric)
{
    if (!file)
        return NAN;
    FILE *f = fopen(file, "r");
    if (!f)
        return NAN;
    char line[256];
    double v = NAN;
    while (fgets(line, sizeof line, f)) {
        char *k = strtok(line, "\t"), *m = strtok(NULL, "\t"), *x = strtok(NULL, "\t\n");
        if (k && m && x && !strcmp(k, key) && !strcmp(m, metric))
            v = atof(x);
    }
    fclose(f);
    return v;
}

int main(int argc, char **argv)
{
    /* bench_cuda [--torch FILE] [--no-anchors] [all|mla|gqa|INDEX] */
    const char *torch = NULL, *only = "all";
    int no_anchors = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--torch") && i + 1 < argc)
            torch = argv[++i];
        else if (!strcmp(argv[i], "--no-anchors"))
            no_anchors = 1;
        else
            only = argv[i];
    }
    if (attnd_cuda_device_count() < 1) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    attnd_error err = {0};
    if (attnd_cuda_ctx_create(0, NULL, &ctx, &err)) {
        printf("SKIP: %s\n", err.msg);
        return 77;
    }
    stream = (cudaStream_t)attnd_cuda_ctx_stream(ctx);
    tu_rng_init(&rng, "bench_cuda");
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount,
           prop.l2CacheSize >> 20);
    if (!no_anchors)
        anchors();

    static const shape shapes[] = {
        /* MLA memory-bound: 16 heads per rank, one query token */
        {1, 128, 16, 1, 512, 1, 4096, 0},
        {1, 128, 16, 1, 512, 1, 8192, 0},
        {1, 128, 16, 1, 512, 1, 4096, 1},
        {1, 128, 16, 1, 512, 1, 8192, 1},
        /* MLA compute-bound: 128 heads */
        {1, 64, 128, 1, 512, 1, 4096, 0},
        {1, 128, 128, 1, 512, 1, 4096, 0},
        {1, 64, 128, 1, 512, 2, 4096, 0},
        {1, 128, 128, 1, 512, 2, 4096, 0},
        /* GQA 32/8/128 */
        {0, 1, 32, 8, 128, 1, 1024, 0},
        {0, 1, 32, 8, 128, 1, 8192, 0},
        {0, 1, 32, 8, 128, 1, 32768, 0},
        {0, 1, 32, 8, 128, 1, 131072, 0},
        {0, 16, 32, 8, 128, 1, 8192, 0},
        {0, 16, 32, 8, 128, 1, 32768, 0},
        {0, 64, 32, 8, 128, 1, 4096, 0},
        {0, 64, 32, 8, 128, 1, 16384, 0},
        {0, 128, 32, 8, 128, 1, 1024, 0},
        {0, 128, 32, 8, 128, 1, 4096, 0},
        {0, 128, 32, 8, 128, 1, 8192, 0},
    };
    const int ns = (int)(sizeof shapes / sizeof *shapes);
    result res[64];
    int nr = 0;
    for (int i = 0; i < ns; i++) {
        char num[16];
        snprintf(num, sizeof num, "%d", i);
        if (strcmp(only, "all") && strcmp(only, shapes[i].mla ? "mla" : "gqa") && strcmp(only, num))
            continue;
        bench_decode(&shapes[i], &res[nr++]);
    }

    printf("\n## GPU decode benchmark (%s, %d SMs)\n\n", prop.name, prop.multiProcessorCount);
    printf("Anchors, same run: streaming read-only kernel %.0f GB/s; d2d copy %.0f GB/s "
           "(read + write).\n\n",
           read_gbs, copy_gbs);
    printf("| shape | CTAs / units | time (us) | GB/s | %% of read-only | TFLOP/s | torch (best) | "
           "speedup | check |\n");
    printf("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |\n");
    for (int i = 0; i < nr; i++) {
        const result *r = &res[i];
        int mla = !strncmp(r->key, "mla", 3);
        char tcol[64] = "-", ratio[32] = "-";
        double tus = torch_value(torch, r->key, "us"); /* speedup: time over time */
        if (mla) {
            double tf = torch_value(torch, r->key, "tflops");
            if (!isnan(tf) && !isnan(tus)) {
                snprintf(tcol, sizeof tcol, "eager %.0f TFLOP/s, %.1f us", tf, tus);
                snprintf(ratio, sizeof ratio, "%.2fx", tus / r->us);
            }
        } else {
            double gb = torch_value(torch, r->key, "gbs");
            if (!isnan(gb) && !isnan(tus)) {
                snprintf(tcol, sizeof tcol, "SDPA %.0f GB/s, %.1f us", gb, tus);
                snprintf(ratio, sizeof ratio, "%.2fx", tus / r->us);
            }
        }
        printf("| %s | %d / %d | %.1f | %.0f | %.1f%% | %.1f | %s | %s | %.1e |\n", r->name, r->ctas,
               r->units, r->us, r->gbs, 100.0 * r->gbs / read_gbs, r->tflops, tcol, ratio, r->err);
    }
    attnd_cuda_ctx_destroy(ctx);
    return 0;
}
