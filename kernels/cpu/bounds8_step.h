/* The compact bounds' arithmetic (attnd_kernels.h, "compact bounds"), one
 * definition for the host (kernels/cpu/bounds.c) and the GPU
 * (kernels/cuda/bounds8.cu), so that both make the same bits: the step
 * for a row whose bounds span [m, M], and a dimension's codes. float64
 * throughout, with a power-of-two step, so every quotient is exact. Plain
 * C and CUDA alike (no contraction is possible: no product is added). */
#ifndef ATTND_BOUNDS8_STEP_H
#define ATTND_BOUNDS8_STEP_H

#include <math.h>
#include <stdint.h>

#include "attnd_hd.h"

/* x rounded to an integer, |x| < 2^51, in round-to-nearest (adding and
 * taking away 1.5 * 2^52); the codes below step back where it went past,
 * by a comparison, not a branch. With libm's floor and ceil (inline on
 * baseline x86-64, a branch per element that random keys mispredict half
 * the time) the host's loop took ~10 us a GQA page, twice what it takes
 * now. */
static inline ATTND__HD double attnd__bounds8_round(double x)
{
    return (x + 0x1.8p52) - 0x1.8p52;
}

/* The smallest power-of-two step 2^e whose 256 codes span [m, M] (finite,
 * m <= M, magnitudes below 2^100) from a multiple k 2^e of it, at least
 * 2^-16 of the largest magnitude (so k stays below 2^17 in magnitude) and
 * a normal float. Returns e; *k_p = k. */
static inline ATTND__HD int attnd__bounds8_step(float m, float M, double *k_p)
{
    const double mag = fabs((double)m) > fabs((double)M) ? fabs((double)m) : fabs((double)M);
    const double span = ((double)M - (double)m) / 255.0;
    const double want = span > mag * 0x1p-16 ? span : mag * 0x1p-16;
    int e = -126;
    if (want > 0x1p-126) {
        (void)frexp(want, &e); /* 2^(e-1) <= want < 2^e */
        if (ldexp(1.0, e - 1) >= want)
            e--;
    }
    for (;; e++) {
        const double s = ldexp(1.0, e), k = floor((double)m / s);
        if (ceil((double)M / s) - k <= 255.0) {
            *k_p = k;
            return e;
        }
    }
}

/* A dimension's codes from its bounds lo, hi times inv = 2^-e (exact):
 * the lo code a floor (off + step cl <= lo), the hi code a ceiling. */
static inline ATTND__HD void attnd__bounds8_codes(double l, double h, double k, uint8_t *cl,
                                                  uint8_t *ch)
{
    const double rl = attnd__bounds8_round(l), rh = attnd__bounds8_round(h);
    *cl = (uint8_t)((int32_t)(rl - k) - (rl > l));
    *ch = (uint8_t)((int32_t)(rh - k) + (rh < h));
}

#endif /* ATTND_BOUNDS8_STEP_H */
