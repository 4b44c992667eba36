/* The normalized fast Walsh-Hadamard transform on the CPU: the orthonormal
 * rotation of TPLA latent sharding (worker groups rotate the stored latent
 * and the query's latent part with it, and rotate the concatenated output
 * back). H_n / sqrt(n) is symmetric and orthonormal, so it is its own
 * inverse. In place, float32, n log2 n butterflies. */
#include <math.h>

#include "attnd_kernels.h"

int attnd_kernel_fwht_supported(int32_t n)
{
    return n >= 1 && (n & (n - 1)) == 0;
}

void attnd_kernel_fwht_f32(float *x, int32_t n)
{
    for (int32_t h = 1; h < n; h *= 2)
        for (int32_t i = 0; i < n; i += 2 * h)
            for (int32_t j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    float s = 1.0f / sqrtf((float)n);
    for (int32_t i = 0; i < n; i++)
        x[i] *= s;
}
