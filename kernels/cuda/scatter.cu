/* attnd_cuda_scatter: many small copies in one kernel (attnd_cuda.h,
 * "scattered copies"). A CTA per copy; each thread moves 16, 4 or 1 bytes
 * at a time, the widest every address, pitch and row length of its copy
 * allows. Sources may be pinned host memory: the kernel then reads it over
 * the bus (zero-copy), so a batch of appends costs one launch instead of a
 * copy call each. */
#include <stdint.h>

#include "ctx_int.h"

namespace {

template <typename W>
__device__ __forceinline__ void copy_rows(const attnd_cuda_copy &c)
{
    const uint64_t per_row = c.row_bytes / sizeof(W);
    const uint64_t n = per_row * c.rows;
    const char *src = static_cast<const char *>(c.src);
    char *dst = static_cast<char *>(c.dst);
    for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const uint64_t r = i / per_row, k = i % per_row;
        *reinterpret_cast<W *>(dst + r * c.dst_pitch + k * sizeof(W)) =
            *reinterpret_cast<const W *>(src + r * c.src_pitch + k * sizeof(W));
    }
}

__global__ void scatter_kernel(const attnd_cuda_copy *copies)
{
    const attnd_cuda_copy c = copies[blockIdx.x];
    const uint64_t a = (uint64_t)(uintptr_t)c.dst | (uint64_t)(uintptr_t)c.src | c.dst_pitch |
                       c.src_pitch | c.row_bytes;
    if (a % 16 == 0)
        copy_rows<uint4>(c);
    else if (a % 4 == 0)
        copy_rows<uint32_t>(c);
    else
        copy_rows<unsigned char>(c);
}

} /* namespace */

extern "C" attnd_status attnd_cuda_scatter(attnd_cuda_ctx *ctx, const attnd_cuda_copy *copies,
                                           int32_t n, attnd_error *err)
{
    if (!ctx)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "ctx: must not be NULL");
    if (n < 0 || n > ATTND_CUDA_SCATTER_MAX || (n > 0 && !copies))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "scatter: n %d (0..%d), copies non-NULL expected", n,
                               ATTND_CUDA_SCATTER_MAX);
    if (n == 0)
        return ATTND_OK;
    scatter_kernel<<<(unsigned)n, 256, 0, ctx->stream>>>(copies);
    return attnd__cuda_launched(err, "scatter launch");
}
