/* The one-time calibration behind the default kernel path: does this core
 * multiply-add faster with vdpbf16ps (two bf16 products per float32 lane)
 * than with float32 FMA? The answer differs by vendor: an AMD EPYC host
 * measured 469 against 234 GFLOP/s (two threads), the Intel VM attnd is
 * developed on 86 against 175 per core (vdpbf16ps issues every other
 * cycle there and blocks the FMA ports). Nothing but a measurement tells,
 * so dispatch.c runs this once, on first use, where the CPU has
 * avx512_bf16: a warm-up, then five interleaved rounds of 12 independent
 * register-resident chains of each instruction (about a millisecond in
 * all); the best round of each counts. Compiled for any x86-64: the loops
 * carry target attributes and run only after dispatch.c checked CPUID; they
 * are noinline and begin with an empty volatile asm, a side effect, so no
 * compiler may take them for pure and move the calls across the clock
 * reads (gcc did: it measured them at 27 ns). Not gcc's noipa: clang, which
 * builds the fuzz targets, does not know it. */
#include <immintrin.h>

#include "attnd_clock.h"
#include "cpu_int.h"

#define CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define ITERS 16384

__attribute__((target("avx512f"), noinline)) static float run_fma(long n)
{
    __asm__ __volatile__("" ::: "memory");
#define D(i) __m512 a##i = _mm512_set1_ps((float)(i));
#define F(i) a##i = _mm512_fmadd_ps(a##i, m, c);
#define S(i) s = _mm512_add_ps(s, a##i);
    CHAINS(D)
    __m512 m = _mm512_set1_ps(0.99999f), c = _mm512_set1_ps(1e-7f), s = _mm512_setzero_ps();
    for (long k = 0; k < n; k++) {
        CHAINS(F)
    }
    CHAINS(S)
    return _mm512_reduce_add_ps(s);
#undef D
#undef F
#undef S
}

__attribute__((target("avx512f,avx512bf16"), noinline)) static float run_dpbf16(long n)
{
    __asm__ __volatile__("" ::: "memory");
#define D(i) __m512 a##i = _mm512_set1_ps((float)(i));
#define F(i) a##i = _mm512_dpbf16_ps(a##i, m, c);
#define S(i) s = _mm512_add_ps(s, a##i);
    CHAINS(D)
    __m512bh m = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3c00);
    __m512 s = _mm512_setzero_ps();
    for (long k = 0; k < n; k++) {
        CHAINS(F)
    }
    CHAINS(S)
    return _mm512_reduce_add_ps(s);
#undef D
#undef F
#undef S
}

void attnd__calibrate(attnd__calib *c)
{
    volatile float sink = 0.0f;
    double best_fma = 0.0, best_dp = 0.0;

    sink += run_fma(ITERS) + run_dpbf16(ITERS); /* warm-up (and clock ramp) */
    for (int r = 0; r < 5; r++) {
        double t0 = attnd_clock_s();
        sink += run_fma(ITERS);
        double t1 = attnd_clock_s();
        sink += run_dpbf16(ITERS);
        double t2 = attnd_clock_s();
        /* 12 chains x 16 lanes x 2 flops; x 32 pairs x 2 flops */
        double fma = (double)ITERS * 12 * 32 / (t1 - t0) / 1e9;
        double dp = (double)ITERS * 12 * 64 / (t2 - t1) / 1e9;
        best_fma = fma > best_fma ? fma : best_fma;
        best_dp = dp > best_dp ? dp : best_dp;
    }
    (void)sink;
    c->fma_gflops = best_fma;
    c->dpbf16_gflops = best_dp;
}
