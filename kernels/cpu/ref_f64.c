/* The float64 reference: unpaged, two-pass softmax, every sum in double.
 * Deliberately the plainest code that states the formula of
 * attnd_kernels.h, so that tests and demos can trust it as the oracle. */
#include <math.h>

#include "attnd_kernels.h"

void attnd_kernel_ref_attention_f64(int32_t hq, int32_t hkv, int32_t dk, int32_t dv,
                                    int64_t t, double scale, const double *q,
                                    const double *k, const double *v, double *out,
                                    double *lse)
{
    int32_t group = hq / hkv;

    for (int32_t h = 0; h < hq; h++) {
        int32_t g = h / group;
        const double *qh = q + (int64_t)h * dk;
        double *oh = out + (int64_t)h * dv;
        double m = -INFINITY, sum = 0.0;

        for (int32_t e = 0; e < dv; e++)
            oh[e] = 0.0;
        for (int64_t j = 0; j < t; j++) {
            const double *kj = k + (j * hkv + g) * dk;
            double s = 0.0;
            for (int32_t d = 0; d < dk; d++)
                s += qh[d] * kj[d];
            s *= scale;
            if (s > m)
                m = s;
        }
        for (int64_t j = 0; j < t; j++) {
            const double *kj = k + (j * hkv + g) * dk;
            const double *vj = v + (j * hkv + g) * dv;
            double s = 0.0;
            for (int32_t d = 0; d < dk; d++)
                s += qh[d] * kj[d];
            double p = exp(s * scale - m);
            sum += p;
            for (int32_t e = 0; e < dv; e++)
                oh[e] += p * vj[e];
        }
        if (t > 0)
            for (int32_t e = 0; e < dv; e++)
                oh[e] /= sum;
        if (lse)
            lse[h] = t > 0 ? m + log(sum) : -INFINITY;
    }
}
