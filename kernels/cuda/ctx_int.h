/* Internal to kernels/cuda: the context struct and the host helpers that
 * ctx.cu gives plan.cu (CUDA error reporting, tensor-map encoding). C++
 * only (included by .cu files). */
#ifndef ATTND_CUDA_CTX_INT_H
#define ATTND_CUDA_CTX_INT_H

#include <cuda_runtime.h>

/* attnd_cuda.h is a plain C header: give its functions C linkage here. */
extern "C" {
#include "attnd_cuda.h"
}

struct attnd_cuda_ctx {
    int device;
    int sm_count;
    int own_stream;
    cudaStream_t stream;
    void *encode_tiled; /* PFN_cuTensorMapEncodeTiled_v12000 */
};

/* Report CUDA error rc of `what` in err; returns ATTND_ERR_INTERNAL. */
attnd_status attnd__cuda_fail(attnd_error *err, int rc, const char *what);

/* After a launch: ATTND_OK, or attnd__cuda_fail with the launch's error. */
attnd_status attnd__cuda_launched(attnd_error *err, const char *what);

/* Encode a bf16 tensor map (a CUtensorMap at map, 64-byte aligned) over
 * pages x rows x inner elements at base, 64 x 64 boxes, 128-byte swizzle. */
attnd_status attnd__cuda_tensor_map(attnd_cuda_ctx *ctx, void *map, const void *base,
                                    uint64_t inner, uint64_t rows, uint64_t pages,
                                    attnd_error *err);

#endif /* ATTND_CUDA_CTX_INT_H */
