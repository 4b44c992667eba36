/* The TPLA rotation: a normalized fast Walsh-Hadamard transform of each row,
 * in place: x <- H x / sqrt(n), H the Sylvester-ordered Hadamard matrix of
 * order n = 2^k (symmetric, H H = n I, so the rotation is its own inverse).
 *
 * One CTA per row: the row is widened to float32 in shared memory, then
 * log2(n) butterfly stages (a, b) -> (a + b, a - b) at distance 1, 2, 4,
 * ..., each stage a barrier apart, then scaled and rounded once on the way
 * out. The transform is tiny next to decode (latent rows of 512); it is
 * written to be obviously right, not fast. */
#include <cuda_runtime.h>
#include <math.h>

#include "cuda_int.h"
#include "ptx.cuh"

namespace {

template <typename T> __device__ __forceinline__ float load_elem(const T *p);
template <> __device__ __forceinline__ float load_elem<float>(const float *p) { return *p; }
template <> __device__ __forceinline__ float load_elem<uint16_t>(const uint16_t *p)
{
    return __uint_as_float((uint32_t)*p << 16);
}

template <typename T> __device__ __forceinline__ void store_elem(T *p, float v);
template <> __device__ __forceinline__ void store_elem<float>(float *p, float v) { *p = v; }
template <> __device__ __forceinline__ void store_elem<uint16_t>(uint16_t *p, float v)
{
    __nv_bfloat16 b = __float2bfloat16_rn(v);
    *p = *reinterpret_cast<uint16_t *>(&b);
}

template <typename T>
__global__ void attnd__hadamard_kernel(T *x, int dim, int64_t row_stride, float norm)
{
    extern __shared__ float buf[];
    T *row = x + (int64_t)blockIdx.x * row_stride;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        buf[i] = load_elem<T>(row + i);
    __syncthreads();
    for (int h = 1; h < dim; h <<= 1) {
        for (int i = threadIdx.x; i < dim / 2; i += blockDim.x) {
            const int j = (i / h) * 2 * h + (i % h);
            const float a = buf[j], b = buf[j + h];
            buf[j] = a + b;
            buf[j + h] = a - b;
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        store_elem<T>(row + i, buf[i] * norm);
}

} /* namespace */

extern "C" int attnd__hadamard_launch(int is_f32, void *x, int64_t n_rows, int32_t dim,
                                      int64_t row_stride, void *stream)
{
    if (n_rows == 0)
        return 0;
    const float norm = (float)(1.0 / sqrt((double)dim));
    const int threads = dim / 2 < 256 ? (dim / 2 < 32 ? 32 : dim / 2) : 256;
    const size_t smem = (size_t)dim * sizeof(float);
    if (smem > 48 * 1024)
        return (int)cudaErrorInvalidValue;
    if (is_f32)
        attnd__hadamard_kernel<float><<<(unsigned)n_rows, threads, smem, (cudaStream_t)stream>>>(
            static_cast<float *>(x), dim, row_stride, norm);
    else
        attnd__hadamard_kernel<uint16_t><<<(unsigned)n_rows, threads, smem, (cudaStream_t)stream>>>(
            static_cast<uint16_t *>(x), dim, row_stride, norm);
    return (int)cudaGetLastError();
}
