/* Kernel path selection: which implementation attnd_kernel_decode runs.
 *
 * Chosen once, on first use, from the CPU's features; ATTND_KERNEL_PATH
 * overrides (an unknown or unsupported name falls back to scalar, with a
 * note on stderr). Today the portable scalar path is the only one; SIMD
 * paths register here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_kernels.h"

const char *attnd_kernel_path_name(void)
{
    static int warned;
    const char *want = getenv("ATTND_KERNEL_PATH");
    if (want && strcmp(want, "scalar") != 0 && !warned) {
        warned = 1;
        fprintf(stderr, "attnd: kernel path '%s' not available, using scalar\n", want);
    }
    return "scalar";
}

void attnd_kernel_decode(const attnd_decode_batch *b)
{
    attnd_kernel_decode_scalar(b);
}
