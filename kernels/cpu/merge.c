/* The LSE combine: merging two partial attention states over disjoint token
 * sets into the state over their union. Split-KV inside a rank and the
 * sequence-sharded combine across ranks both reduce with this function; it
 * is exact up to float32 rounding and deterministic for a given order.
 *
 * A poisoned state (lse NaN: its tokens held a non-finite value, see
 * attnd_kernels.h) poisons the union: NaN is carried, never dropped, so a
 * split or a rank holding the bad token cannot vanish from the answer. An
 * empty state (lse -inf) is the identity. */
#include <math.h>

#include "cpu_int.h"

void attnd_kernel_merge_states(float *o_a, float *lse_a, const float *o_b,
                               const float *lse_b, int64_t n_rows, int32_t d)
{
    for (int64_t r = 0; r < n_rows; r++) {
        float la = lse_a[r], lb = lse_b[r];
        float *oa = o_a + r * d;
        const float *ob = o_b + r * d;

        if (isnan(la) || isnan(lb)) {
            attnd__nan_row(oa, d, &lse_a[r]);
            continue;
        }
        if (lb == -INFINITY)
            continue;
        if (la == -INFINITY) {
            for (int32_t e = 0; e < d; e++)
                oa[e] = ob[e];
            lse_a[r] = lb;
            continue;
        }
        float m = la > lb ? la : lb;
        float wa = expf(la - m), wb = expf(lb - m);
        float sum = wa + wb;
        float ca = wa / sum, cb = wb / sum;
        for (int32_t e = 0; e < d; e++)
            oa[e] = ca * oa[e] + cb * ob[e];
        lse_a[r] = m + logf(sum);
    }
}
