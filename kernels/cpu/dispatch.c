/* Kernel path selection: which implementation the decode calls run.
 *
 * The path is resolved once, on first use, from the CPU's features: CPUID
 * says what the core implements and XGETBV whether the OS saves the ymm /
 * zmm state (both are needed; a hypervisor may hide AVX-512 state). The
 * environment variable ATTND_KERNEL_PATH=scalar|avx2|avx512 forces a path;
 * an unknown name, or one this CPU cannot run, falls back to scalar with a
 * note on stderr (once). attnd_kernel_path_reset resolves again, so that a
 * test can walk every path by setting the variable.
 *
 * attnd_kernel_decode is the single-threaded entry: one unsplit unit per
 * (sequence, KV head) on the calling thread with the current path. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(ATTND_HAVE_X86_SIMD)
#include <cpuid.h>
#endif

#include "cpu_int.h"

static const char *const path_names[ATTND_KERNEL_PATH_COUNT] = {"scalar", "avx2", "avx512"};

static atomic_int current_path = -1; /* -1: not resolved yet */
static atomic_int warned;

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

    switch (p) {
    case ATTND_KERNEL_PATH_AVX2:
        return ymm_os && avx2 && fma && f16c;
    case ATTND_KERNEL_PATH_AVX512:
        return ymm_os && zmm_os && avx2 && fma && f16c && avx512f && avx512dq && avx512bw &&
               avx512vl;
    default:
        return 0;
    }
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
        return cpu_supports(p);
#endif
    default:
        return 0;
    }
}

static attnd_kernel_path resolve(void)
{
    const char *want = getenv("ATTND_KERNEL_PATH");

    if (want && *want) {
        for (int p = 0; p < ATTND_KERNEL_PATH_COUNT; p++)
            if (strcmp(want, path_names[p]) == 0 &&
                attnd_kernel_path_supported((attnd_kernel_path)p))
                return (attnd_kernel_path)p;
        if (!atomic_exchange(&warned, 1))
            fprintf(stderr, "attnd: kernel path '%s' not available, using scalar\n", want);
        return ATTND_KERNEL_PATH_SCALAR;
    }
    for (int p = ATTND_KERNEL_PATH_COUNT - 1; p > 0; p--)
        if (attnd_kernel_path_supported((attnd_kernel_path)p))
            return (attnd_kernel_path)p;
    return ATTND_KERNEL_PATH_SCALAR;
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
    int p = (int)resolve();
    atomic_store_explicit(&current_path, p, memory_order_release);
    return (attnd_kernel_path)p;
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
#endif
    default: return attnd__decode_unit_scalar;
    }
}

void attnd_kernel_decode(const attnd_decode_batch *b)
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
                .t1 = attnd_decode_seq_len(b, i, g),
                .out = b->out + h0 * dv,
                .out_s = (int64_t)hq * dv,
                .lse = b->lse ? b->lse + h0 : NULL,
                .lse_s = hq,
            };
            fn(b, &u, b->work);
        }
    }
}
