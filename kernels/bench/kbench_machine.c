/* attnd-kbench: the machine's own limits, measured in the same run as the
 * kernels so that a kernel's bandwidth is judged against what this host
 * (and its current neighbours) actually delivers:
 *   - read bandwidth: every thread of the kernel pool streams its slice of
 *     a buffer many times the last-level cache and sums it (vector loads,
 *     independent accumulators: one load per 64 bytes and nothing else);
 *   - FMA peak: every thread runs independent register-resident FMA chains
 *     (enough chains to cover latency x ports), at the vector width of the
 *     kernel path in use (scalar: plain float multiply-adds);
 *   - vdpbf16ps peak, where avx512_bf16 exists: the rate the avx512bf16
 *     path's dot products can reach (dispatch.c's calibration asks the
 *     same question on one core to pick the default path).
 * SIMD functions carry target attributes so the bench builds anywhere and
 * only calls what the CPU runs (checked through the kernels' dispatch). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(ATTND_HAVE_X86_SIMD)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "attnd_clock.h"
#include "kbench.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double kb_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

size_t kb_llc_bytes(void)
{
    long s = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (s > 0)
        return (size_t)s;
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    if (f) {
        unsigned long kb = 0;
        char unit = 0;
        if (fscanf(f, "%lu%c", &kb, &unit) >= 1) {
            fclose(f);
            return (size_t)kb * (unit == 'M' ? 1024 * 1024 : 1024);
        }
        fclose(f);
    }
    return (size_t)32 << 20;
}

void kb_cpu_model(char *buf, size_t n)
{
    char line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    snprintf(buf, n, "unknown CPU");
    if (!f)
        return;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            char *c = strchr(line, ':');
            if (c) {
                snprintf(buf, n, "%s", c + 2);
                buf[strcspn(buf, "\n")] = '\0';
            }
            break;
        }
    fclose(f);
}

/* ---- streaming read ----------------------------------------------------- */

#if defined(ATTND_HAVE_X86_SIMD)
__attribute__((target("avx512f"))) static uint64_t sum_avx512(const char *p, size_t n)
{
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 256 <= n; i += 256) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512((const void *)(p + i)));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512((const void *)(p + i + 64)));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512((const void *)(p + i + 128)));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512((const void *)(p + i + 192)));
    }
    a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
    return (uint64_t)_mm512_reduce_add_epi64(a0);
}

__attribute__((target("avx2"))) static uint64_t sum_avx2(const char *p, size_t n)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const void *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const void *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const void *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const void *)(p + i + 96)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)(void *)out, a0);
    return out[0] + out[1] + out[2] + out[3];
}
#endif

static uint64_t sum_scalar(const char *p, size_t n)
{
    const uint64_t *q = (const uint64_t *)(const void *)p;
    uint64_t a = 0, b = 0;
    for (size_t i = 0; i + 2 <= n / 8; i += 2) {
        a += q[i];
        b += q[i + 1];
    }
    return a + b;
}

typedef struct stream_ctx {
    const char *buf;
    size_t bytes;
    int n_threads;
    int touch; /* first pass: write the pages (fault them in) */
    volatile uint64_t sink;
} stream_ctx;

static void stream_job(void *p, int32_t tid)
{
    stream_ctx *c = p;
    if (tid >= c->n_threads)
        return;
    size_t per = c->bytes / (size_t)c->n_threads / 4096 * 4096;
    const char *s = c->buf + per * (size_t)tid;
    if (c->touch) {
        memset((char *)s, 1 + tid, per);
        return;
    }
    uint64_t r;
#if defined(ATTND_HAVE_X86_SIMD)
    if (attnd_kernel_path_supported(ATTND_KERNEL_PATH_AVX512))
        r = sum_avx512(s, per);
    else if (attnd_kernel_path_supported(ATTND_KERNEL_PATH_AVX2))
        r = sum_avx2(s, per);
    else
#endif
        r = sum_scalar(s, per);
    c->sink += r;
}

double kb_read_bandwidth(attnd_kernel_pool *pool, int n_threads, size_t bytes, int reps)
{
    stream_ctx c = {.n_threads = n_threads, .bytes = bytes, .touch = 1};
    char *buf = aligned_alloc(4096, bytes);
    double t[64], gbs;
    if (!buf)
        return 0.0;
    c.buf = buf;
    attnd__pool_run(pool, 0, stream_job, &c);
    c.touch = 0;
    if (reps > 64)
        reps = 64;
    size_t per = bytes / (size_t)n_threads / 4096 * 4096;
    for (int r = -1; r < reps; r++) {
        double t0 = attnd_clock_s();
        attnd__pool_run(pool, 0, stream_job, &c);
        if (r >= 0)
            t[r] = attnd_clock_s() - t0;
    }
    gbs = (double)(per * (size_t)n_threads) / kb_median(t, reps) / 1e9;
    free(buf);
    return gbs;
}

/* ---- moving q and out ------------------------------------------------------ */

typedef struct move_ctx {
    const char *q;
    char *out;
    size_t q_bytes, out_bytes;
    int n_threads;
    volatile uint64_t sink;
} move_ctx;

static void move_job(void *p, int32_t tid)
{
    move_ctx *c = p;
    size_t qs = c->q_bytes / (size_t)c->n_threads / 64 * 64;
    size_t os = c->out_bytes / (size_t)c->n_threads / 64 * 64;
    uint64_t r;
#if defined(ATTND_HAVE_X86_SIMD)
    if (attnd_kernel_path_supported(ATTND_KERNEL_PATH_AVX512))
        r = sum_avx512(c->q + qs * (size_t)tid, qs);
    else
#endif
        r = sum_scalar(c->q + qs * (size_t)tid, qs);
    memset(c->out + os * (size_t)tid, (int)(r & 0x7f), os);
    c->sink += r;
}

double kb_move_seconds(attnd_kernel_pool *pool, size_t q_bytes, size_t out_bytes, int reps)
{
    move_ctx c = {.q_bytes = q_bytes, .out_bytes = out_bytes,
                  .n_threads = attnd_kernel_pool_threads(pool)};
    char *q = aligned_alloc(4096, (q_bytes + 4095) / 4096 * 4096);
    char *out = aligned_alloc(4096, (out_bytes + 4095) / 4096 * 4096);
    double t[64], sec = 0.0;
    if (q && out) {
        memset(q, 1, q_bytes);
        c.q = q;
        c.out = out;
        reps = reps > 64 ? 64 : reps;
        for (int r = -1; r < reps; r++) {
            double t0 = attnd_clock_s();
            attnd__pool_run(pool, 0, move_job, &c);
            if (r >= 0)
                t[r] = attnd_clock_s() - t0;
        }
        sec = kb_median(t, reps);
    }
    free(q);
    free(out);
    return sec;
}

/* ---- FMA and dpbf16 peaks ------------------------------------------------ */

#define R12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define FMA_ITERS 20000000L

#if defined(ATTND_HAVE_X86_SIMD)
__attribute__((target("avx512f"))) static float fma_avx512(long n)
{
#define D(i) __m512 a##i = _mm512_set1_ps((float)(i));
#define F(i) a##i = _mm512_fmadd_ps(a##i, m, c);
#define S(i) s = _mm512_add_ps(s, a##i);
    R12(D)
    __m512 m = _mm512_set1_ps(0.99999f), c = _mm512_set1_ps(1e-7f), s = _mm512_setzero_ps();
    for (long k = 0; k < n; k++) {
        R12(F)
    }
    R12(S)
    return _mm512_reduce_add_ps(s);
#undef D
#undef F
#undef S
}

__attribute__((target("avx2,fma"))) static float fma_avx2(long n)
{
#define D(i) __m256 a##i = _mm256_set1_ps((float)(i));
#define F(i) a##i = _mm256_fmadd_ps(a##i, m, c);
#define S(i) s = _mm256_add_ps(s, a##i);
    R12(D)
    __m256 m = _mm256_set1_ps(0.99999f), c = _mm256_set1_ps(1e-7f), s = _mm256_setzero_ps();
    for (long k = 0; k < n; k++) {
        R12(F)
    }
    R12(S)
    float o[8];
    _mm256_storeu_ps(o, s);
    return o[0];
#undef D
#undef F
#undef S
}

__attribute__((target("avx512f,avx512bf16"))) static float dpbf16_avx512(long n)
{
#define D(i) __m512 a##i = _mm512_set1_ps((float)(i));
#define F(i) a##i = _mm512_dpbf16_ps(a##i, m, c);
#define S(i) s = _mm512_add_ps(s, a##i);
    R12(D)
    __m512bh m = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3c00);
    __m512 s = _mm512_setzero_ps();
    for (long k = 0; k < n; k++) {
        R12(F)
    }
    R12(S)
    return _mm512_reduce_add_ps(s);
#undef D
#undef F
#undef S
}

static int has_avx512_bf16(void)
{
    unsigned a, b, c, d;
    if (!attnd_kernel_path_supported(ATTND_KERNEL_PATH_AVX512) || __get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 1, a, b, c, d);
    return (a >> 5) & 1;
}
#endif

static float fma_scalar(long n)
{
    float a[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    for (long k = 0; k < n; k++)
        for (int i = 0; i < 8; i++)
            a[i] = a[i] * 0.99999f + 1e-7f;
    return a[0] + a[7];
}

typedef struct peak_ctx {
    int kind; /* 0 scalar, 1 avx2, 2 avx512, 3 dpbf16 */
    volatile float sink;
} peak_ctx;

static void peak_job(void *p, int32_t tid)
{
    peak_ctx *c = p;
    float r = 0.0f;
    (void)tid;
    switch (c->kind) {
#if defined(ATTND_HAVE_X86_SIMD)
    case 1: r = fma_avx2(FMA_ITERS); break;
    case 2: r = fma_avx512(FMA_ITERS); break;
    case 3: r = dpbf16_avx512(FMA_ITERS / 2); break;
#endif
    default: r = fma_scalar(FMA_ITERS / 8); break;
    }
    c->sink += r;
}

static double run_peak(attnd_kernel_pool *pool, int kind, double flops_per_thread)
{
    peak_ctx c = {.kind = kind};
    double t[5];
    attnd__pool_run(pool, 0, peak_job, &c); /* warm-up (and clock ramp) */
    for (int r = 0; r < 5; r++) {
        double t0 = attnd_clock_s();
        attnd__pool_run(pool, 0, peak_job, &c);
        t[r] = attnd_clock_s() - t0;
    }
    return flops_per_thread * attnd_kernel_pool_threads(pool) / kb_median(t, 5) / 1e9;
}

double kb_fma_peak(attnd_kernel_pool *pool, int *lanes_p)
{
#if defined(ATTND_HAVE_X86_SIMD)
    attnd_kernel_path p = attnd_kernel_path_current();
    if (p == ATTND_KERNEL_PATH_AVX512 || p == ATTND_KERNEL_PATH_AVX512_BF16) {
        *lanes_p = 16;
        return run_peak(pool, 2, (double)FMA_ITERS * 12 * 16 * 2);
    }
    if (p == ATTND_KERNEL_PATH_AVX2) {
        *lanes_p = 8;
        return run_peak(pool, 1, (double)FMA_ITERS * 12 * 8 * 2);
    }
#endif
    *lanes_p = 1;
    return run_peak(pool, 0, (double)(FMA_ITERS / 8) * 8 * 2);
}

double kb_dpbf16_peak(attnd_kernel_pool *pool)
{
#if defined(ATTND_HAVE_X86_SIMD)
    if (has_avx512_bf16())
        return run_peak(pool, 3, (double)(FMA_ITERS / 2) * 12 * 64);
#endif
    (void)pool;
    return 0.0;
}
