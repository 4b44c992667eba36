/* The CUDA context of attnd: one device, one stream, the driver's tensor-map
 * encoder (fetched through the runtime, so nothing links libcuda), and the
 * small public entry points that need no plan (combine, Hadamard, sync).
 * Every CUDA call is checked; a failure is reported once, here, with the
 * call and the runtime's message. */
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>
#include <stdlib.h>

#include "ctx_int.h"
#include "cuda_int.h"

attnd_status attnd__cuda_fail(attnd_error *err, int rc, const char *what)
{
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "cuda: %s: %s", what,
                           cudaGetErrorString((cudaError_t)rc));
}

attnd_status attnd__cuda_launched(attnd_error *err, const char *what)
{
    const cudaError_t rc = cudaGetLastError();
    return rc == cudaSuccess ? ATTND_OK : attnd__cuda_fail(err, (int)rc, what);
}

extern "C" int32_t attnd_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky-free error */
        return 0;
    }
    return n;
}

extern "C" attnd_status attnd_cuda_ctx_create(int32_t device, void *stream, attnd_cuda_ctx **ctx_p,
                                              attnd_error *err)
{
    if (!ctx_p)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "ctx_p: must not be NULL");
    int n = attnd_cuda_device_count();
    if (device < 0 || device >= n)
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                               "device: %d, expected 0..%d (CUDA devices here: %d)", device,
                               n - 1, n);
    cudaDeviceProp prop;
    int rc = cudaGetDeviceProperties(&prop, device);
    if (rc != cudaSuccess)
        return attnd__cuda_fail(err, rc, "cudaGetDeviceProperties");
    if (prop.major != 9)
        return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                               "device %d: compute capability %d.%d, the kernels need 9.x (Hopper)",
                               device, prop.major, prop.minor);

    attnd_cuda_ctx *ctx = (attnd_cuda_ctx *)calloc(1, sizeof *ctx);
    if (!ctx)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "context: out of memory");
    ctx->device = device;
    ctx->sm_count = prop.multiProcessorCount;
    attnd_status st;
    if ((rc = cudaSetDevice(device)) != cudaSuccess) {
        st = attnd__cuda_fail(err, rc, "cudaSetDevice");
        goto err_free;
    }
    if (stream) {
        ctx->stream = (cudaStream_t)stream;
    } else {
        if ((rc = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking)) != cudaSuccess) {
            st = attnd__cuda_fail(err, rc, "cudaStreamCreateWithFlags");
            goto err_free;
        }
        ctx->own_stream = 1;
    }
    {
        cudaDriverEntryPointQueryResult q;
        void *fn = NULL;
        rc = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                              cudaEnableDefault, &q);
        if (rc != cudaSuccess || q != cudaDriverEntryPointSuccess || !fn) {
            st = rc != cudaSuccess ? attnd__cuda_fail(err, rc, "cudaGetDriverEntryPointByVersion")
                                   : attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                                                     "driver: no cuTensorMapEncodeTiled");
            goto err_stream;
        }
        ctx->encode_tiled = fn;
    }
    /* raise the shared-memory limit of every kernel instantiation once */
    {
        static const int mla[] = {512, 256, 128};
        for (int i = 0; i < 3; i++)
            if ((rc = attnd__mla_prepare(mla[i])) != cudaSuccess) {
                st = attnd__cuda_fail(err, rc, "cudaFuncSetAttribute(mla)");
                goto err_stream;
            }
        for (int d = 64; d <= 128; d += 64)
            for (int nmt = 1; nmt <= 2; nmt++)
                if ((rc = attnd__gqa_prepare(d, nmt)) != cudaSuccess) {
                    st = attnd__cuda_fail(err, rc, "cudaFuncSetAttribute(gqa)");
                    goto err_stream;
                }
    }
    *ctx_p = ctx;
    return ATTND_OK;

err_stream:
    if (ctx->own_stream)
        cudaStreamDestroy(ctx->stream);
err_free:
    free(ctx);
    return st;
}

extern "C" void attnd_cuda_ctx_destroy(attnd_cuda_ctx *ctx)
{
    if (!ctx)
        return;
    cudaSetDevice(ctx->device);
    cudaStreamSynchronize(ctx->stream);
    if (ctx->own_stream)
        cudaStreamDestroy(ctx->stream);
    free(ctx);
}

extern "C" void *attnd_cuda_ctx_stream(const attnd_cuda_ctx *ctx)
{
    return (void *)ctx->stream;
}

extern "C" int32_t attnd_cuda_ctx_sm_count(const attnd_cuda_ctx *ctx)
{
    return ctx->sm_count;
}

extern "C" attnd_status attnd_cuda_sync(attnd_cuda_ctx *ctx, attnd_error *err)
{
    int rc = cudaStreamSynchronize(ctx->stream);
    if (rc != cudaSuccess)
        return attnd__cuda_fail(err, rc, "cudaStreamSynchronize");
    rc = cudaGetLastError();
    if (rc != cudaSuccess)
        return attnd__cuda_fail(err, rc, "kernel");
    return ATTND_OK;
}

/* L2 promotion of the tensor maps' loads (a box row is 128 bytes of a
 * longer KV row); a build-time constant so an A/B needs no run-time knob.
 * 128B: on the H200 (NOTES.md, H200 run 9) 256B promotion cost 3-8% on
 * every memory-bound shape (MLA 16 heads 4K: 159 against 148 us; GQA 128 x
 * 8K: 1024 against 950 us) and none, 64B and 128B measured the same. */
#ifndef ATTND_CUDA_L2_PROMOTION
#define ATTND_CUDA_L2_PROMOTION CU_TENSOR_MAP_L2_PROMOTION_L2_128B
#endif

/* Encode a 3-D bf16 tensor map {inner, rows, pages} with 64 x 64 boxes and
 * the 128-byte swizzle the kernels' shared-memory layouts assume. */
attnd_status attnd__cuda_tensor_map(attnd_cuda_ctx *ctx, void *map, const void *base,
                                    uint64_t inner, uint64_t rows, uint64_t pages,
                                    attnd_error *err)
{
    PFN_cuTensorMapEncodeTiled_v12000 encode = (PFN_cuTensorMapEncodeTiled_v12000)ctx->encode_tiled;
    cuuint64_t dims[3] = {inner, rows, pages};
    cuuint64_t strides[2] = {inner * 2, inner * rows * 2}; /* bytes, dims 1 and 2 */
    cuuint32_t box[3] = {64, 64, 1};
    cuuint32_t estr[3] = {1, 1, 1};
    CUresult r = encode((CUtensorMap *)map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, (void *)base,
                        dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        CU_TENSOR_MAP_SWIZZLE_128B, ATTND_CUDA_L2_PROMOTION,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "pool: cuTensorMapEncodeTiled failed (%d) for %llu x %llu x %llu "
                               "bf16 at %p (16-byte aligned base expected)",
                               (int)r, (unsigned long long)inner, (unsigned long long)rows,
                               (unsigned long long)pages, base);
    return ATTND_OK;
}

extern "C" attnd_status attnd_cuda_combine_states(attnd_cuda_ctx *ctx, int32_t n_parts,
                                                  int64_t n_rows, int32_t d, const float *part_o,
                                                  const float *part_lse, attnd_dtype out_dtype,
                                                  void *out, float *out_lse, attnd_error *err)
{
    if (!ctx)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "ctx: must not be NULL");
    if (n_parts < 1 || n_rows < 0 || d < 4 || d % 4)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "combine: n_parts %d (>= 1), n_rows %lld (>= 0), d %d (a "
                               "multiple of 4) expected",
                               n_parts, (long long)n_rows, d);
    if (out_dtype != ATTND_DTYPE_BF16 && out_dtype != ATTND_DTYPE_F32)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "out_dtype: %s, expected bf16 or f32",
                               attnd_dtype_name(out_dtype));
    if (n_rows > 0 && (!part_o || !part_lse || !out))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "combine: part_o, part_lse and out must not be NULL");
    int rc = attnd__combine_states_launch(n_parts, n_rows, d, part_o, part_lse,
                                          out_dtype == ATTND_DTYPE_F32, out, out_lse, ctx->stream);
    if (rc != cudaSuccess)
        return attnd__cuda_fail(err, rc, "combine launch");
    return ATTND_OK;
}

extern "C" attnd_status attnd_cuda_hadamard(attnd_cuda_ctx *ctx, attnd_dtype dtype, void *x,
                                            int64_t n_rows, int32_t dim, int64_t row_stride,
                                            attnd_error *err)
{
    if (!ctx)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "ctx: must not be NULL");
    if (dim < 2 || dim > 8192 || (dim & (dim - 1)))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "dim: %d, expected a power of two in 2..8192", dim);
    if (dtype != ATTND_DTYPE_BF16 && dtype != ATTND_DTYPE_F32)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "dtype: %s, expected bf16 or f32",
                               attnd_dtype_name(dtype));
    if (n_rows < 0 || n_rows > 0x7fffffff || row_stride < dim || (n_rows > 0 && !x))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "hadamard: n_rows %lld (0..2^31-1), row_stride %lld (>= dim %d), "
                               "x non-NULL expected",
                               (long long)n_rows, (long long)row_stride, dim);
    int rc = attnd__hadamard_launch(dtype == ATTND_DTYPE_F32, x, n_rows, dim, row_stride,
                                    ctx->stream);
    if (rc != cudaSuccess)
        return attnd__cuda_fail(err, rc, "hadamard launch");
    return ATTND_OK;
}
