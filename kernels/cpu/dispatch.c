/* Kernel path selection: which implementation the decode calls run.
 *
 * The path is resolved once, on first use, from the CPU's features: CPUID
 * says what the core implements and XGETBV whether the OS saves the ymm /
 * zmm state (both are needed; a hypervisor may hide AVX-512 state). The
 * best float32 path is the widest the CPU runs; where avx512_bf16 exists,
 * a one-time calibration (calibrate.c) decides between avx512 and
 * avx512bf16: the bf16 dot products are taken only where they multiply-
 * add at least BF16_MIN_GAIN times as fast as float32 FMA (they round P to
 * bf16, so a tie goes to the exact path). "exact" names the widest float32
 * path (what test suites that assert float32 results through the whole
 * stack ask for). attnd_kernel_path_select (the engine's --kernel-path)
 * forces a path, "auto" or "exact"; without it, the environment variable
 * ATTND_KERNEL_PATH does (same names), and an unknown name, or one this CPU
 * cannot run, falls back to scalar with a note on stderr (once). attnd_kernel_path_reset drops a
 * selection and resolves again, so that a test can walk every path by
 * setting the variable.
 *
 * attnd_kernel_decode is the single-threaded entry: one unsplit unit per
 * (sequence, KV head) on the calling thread with the current path. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(ATTND_HAVE_X86_SIMD)
#include <cpuid.h>
#endif

#include "cpu_int.h"

static const char *const path_names[ATTND_KERNEL_PATH_COUNT] = {"scalar", "avx2", "avx512",
                                                                 "avx512bf16"};

/* avx512bf16 by default only where vdpbf16ps is this much faster */
#define BF16_MIN_GAIN 1.25

#define SELECT_NONE (-1) /* no attnd_kernel_path_select: the environment */
#define SELECT_AUTO (-2)
#define SELECT_EXACT (-3) /* the widest float32 path: never bf16 rounding */

static atomic_int current_path = -1; /* -1: not resolved yet */
static atomic_int selected = SELECT_NONE;
static atomic_int warned;
static atomic_int how; /* how the current path was chosen: a HOW_ value */
enum { HOW_AUTO, HOW_ENV, HOW_SELECT, HOW_FALLBACK };

static pthread_once_t calib_once = PTHREAD_ONCE_INIT;
static attnd__calib calib; /* zeros where not measured */

const char *attnd_kernel_path_str(attnd_kernel_path p)
{
    return (unsigned)p < ATTND_KERNEL_PATH_COUNT ? path_names[p] : "?";
}

#if defined(ATTND_HAVE_X86_SIMD)
static uint64_t read_xcr0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* Whether the CPU implements, and the OS enables, what path p needs. Cheap
 * enough to ask again on every resolve. */
static int cpu_supports(attnd_kernel_path p)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    int avx = (c >> 28) & 1;
    if (!osxsave || !avx)
        return 0;
    uint64_t xcr0 = read_xcr0();
    int ymm_os = (xcr0 & 0x6) == 0x6;
    int zmm_os = (xcr0 & 0xe6) == 0xe6;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    int avx2 = (b >> 5) & 1;
    int avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1;
    int avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    int avx512 = ymm_os && zmm_os && avx2 && fma && f16c && avx512f && avx512dq && avx512bw &&
                 avx512vl;

    switch (p) {
    case ATTND_KERNEL_PATH_AVX2:
        return ymm_os && avx2 && fma && f16c;
    case ATTND_KERNEL_PATH_AVX512:
        return avx512;
    case ATTND_KERNEL_PATH_AVX512_BF16:
        __cpuid_count(7, 1, a, b, c, d);
        return avx512 && ((a >> 5) & 1); /* CPUID.(7,1):EAX.AVX512_BF16 */
    default:
        return 0;
    }
}

static void calibrate_once(void)
{
    attnd__calibrate(&calib);
}
#endif

int attnd_kernel_path_supported(attnd_kernel_path p)
{
    switch (p) {
    case ATTND_KERNEL_PATH_SCALAR:
        return 1;
#if defined(ATTND_HAVE_X86_SIMD)
    case ATTND_KERNEL_PATH_AVX2:
    case ATTND_KERNEL_PATH_AVX512:
    case ATTND_KERNEL_PATH_AVX512_BF16:
        return cpu_supports(p);
#endif
    default:
        return 0;
    }
}

/* The widest path that computes in float32 throughout ("exact"). */
static attnd_kernel_path resolve_exact(void)
{
    for (int p = ATTND_KERNEL_PATH_AVX512; p > 0; p--)
        if (attnd_kernel_path_supported((attnd_kernel_path)p))
            return (attnd_kernel_path)p;
    return ATTND_KERNEL_PATH_SCALAR;
}

/* The best path with no one asking for a particular one ("auto"). */
static attnd_kernel_path resolve_auto(void)
{
    attnd_kernel_path best = resolve_exact();
#if defined(ATTND_HAVE_X86_SIMD)
    if (attnd_kernel_path_supported(ATTND_KERNEL_PATH_AVX512_BF16)) {
        pthread_once(&calib_once, calibrate_once);
        if (calib.dpbf16_gflops >= BF16_MIN_GAIN * calib.fma_gflops)
            best = ATTND_KERNEL_PATH_AVX512_BF16;
    }
#endif
    return best;
}

/* Path index of `name`, SELECT_AUTO for "auto" (or ""), SELECT_EXACT for
 * "exact", or SELECT_NONE for anything else. */
static int path_index(const char *name)
{
    if (!name || !*name || strcmp(name, "auto") == 0)
        return SELECT_AUTO;
    if (strcmp(name, "exact") == 0)
        return SELECT_EXACT;
    for (int p = 0; p < ATTND_KERNEL_PATH_COUNT; p++)
        if (strcmp(name, path_names[p]) == 0)
            return p;
    return SELECT_NONE;
}

/* The path a selection (or an environment value) names. */
static attnd_kernel_path resolve_index(int p)
{
    return p == SELECT_AUTO ? resolve_auto() : p == SELECT_EXACT ? resolve_exact()
                                                                 : (attnd_kernel_path)p;
}

static attnd_kernel_path resolve(void)
{
    int sel = atomic_load(&selected);
    if (sel != SELECT_NONE) {
        atomic_store(&how, HOW_SELECT);
        return resolve_index(sel);
    }
    const char *want = getenv("ATTND_KERNEL_PATH");
    int p = path_index(want);
    if (p == SELECT_NONE || (p >= 0 && !attnd_kernel_path_supported((attnd_kernel_path)p))) {
        if (!atomic_exchange(&warned, 1))
            fprintf(stderr, "attnd: kernel path '%s' not available, using scalar\n", want);
        atomic_store(&how, HOW_FALLBACK);
        return ATTND_KERNEL_PATH_SCALAR;
    }
    atomic_store(&how, want && *want ? HOW_ENV : HOW_AUTO);
    return resolve_index(p);
}

attnd_kernel_path attnd_kernel_path_current(void)
{
    int p = atomic_load_explicit(&current_path, memory_order_acquire);
    if (p < 0) {
        p = (int)resolve();
        atomic_store_explicit(&current_path, p, memory_order_release);
    }
    return (attnd_kernel_path)p;
}

attnd_kernel_path attnd_kernel_path_reset(void)
{
    atomic_store(&warned, 0);
    atomic_store(&selected, SELECT_NONE);
    int p = (int)resolve();
    atomic_store_explicit(&current_path, p, memory_order_release);
    return (attnd_kernel_path)p;
}

attnd_status attnd_kernel_path_select(const char *name, attnd_error *err)
{
    int p = path_index(name);
    if (p == SELECT_NONE || (p >= 0 && !attnd_kernel_path_supported((attnd_kernel_path)p))) {
        char runs[96] = "";
        for (int q = 0; q < ATTND_KERNEL_PATH_COUNT; q++)
            if (attnd_kernel_path_supported((attnd_kernel_path)q))
                snprintf(runs + strlen(runs), sizeof runs - strlen(runs), ", %s", path_names[q]);
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "kernel path \"%s\": %s (this CPU runs auto, exact%s)", name,
                               p == SELECT_NONE ? "no such path" : "this CPU cannot run it",
                               runs);
    }
    atomic_store(&selected, p);
    int cur = (int)resolve();
    atomic_store_explicit(&current_path, cur, memory_order_release);
    return ATTND_OK;
}

void attnd_kernel_path_describe(char *buf, size_t n)
{
    attnd_kernel_path p = attnd_kernel_path_current();
    static const char *const why[] = {"auto", "ATTND_KERNEL_PATH", "selected",
                                      "ATTND_KERNEL_PATH names no path this CPU runs"};
    int h = atomic_load(&how);
#if defined(ATTND_HAVE_X86_SIMD)
    if (attnd_kernel_path_supported(ATTND_KERNEL_PATH_AVX512_BF16))
        pthread_once(&calib_once, calibrate_once);
#endif
    if (calib.fma_gflops > 0)
        snprintf(buf, n, "%s (%s; one core: vdpbf16ps %.0f GFLOP/s, float32 FMA %.0f GFLOP/s)",
                 path_names[p], why[h], calib.dpbf16_gflops, calib.fma_gflops);
    else
        snprintf(buf, n, "%s (%s)", path_names[p], why[h]);
}

const char *attnd_kernel_path_name(void)
{
    return path_names[attnd_kernel_path_current()];
}

attnd__unit_fn attnd__path_unit_fn(attnd_kernel_path p)
{
    switch (p) {
#if defined(ATTND_HAVE_X86_SIMD)
    case ATTND_KERNEL_PATH_AVX2: return attnd__decode_unit_avx2;
    case ATTND_KERNEL_PATH_AVX512: return attnd__decode_unit_avx512;
    case ATTND_KERNEL_PATH_AVX512_BF16: return attnd__decode_unit_avx512bf16;
#endif
    default: return attnd__decode_unit_scalar;
    }
}

void attnd_kernel_decode(const attnd_kernel_decode_batch *b)
{
    const attnd__unit_fn fn = attnd__path_unit_fn(attnd_kernel_path_current());
    const int32_t hkv = b->kv->n_kv_heads, group = b->n_q_heads / hkv;
    const int32_t dv = b->kv->d_v, hq = b->n_q_heads;

    for (int32_t i = 0; i < b->n_seqs; i++) {
        size_t row = (size_t)i * b->q_tokens * hq;
        for (int32_t g = 0; g < hkv; g++) {
            size_t h0 = row + (size_t)g * group;
            attnd__unit u = {
                .seq = i,
                .kv_head = g,
                .t0 = 0,
                .t1 = attnd_kernel_decode_seq_len(b, i, g),
                .out = b->out + h0 * dv,
                .out_s = (int64_t)hq * dv,
                .lse = b->lse ? b->lse + h0 : NULL,
                .lse_s = hq,
            };
            fn(b, &u, b->work);
        }
    }
}
