/* Helper kernels of the GPU benchmark: the streaming read-only anchor (the
 * bandwidth a kernel that only reads can reach: every byte once, 16-byte
 * loads, four in flight per thread) and a device-side fill of bf16 buffers
 * with hashed values in [-2, 2) (gigabytes of KV without a host copy), and
 * a busy spin on every SM that keeps the clocks up while timed launches are
 * queued behind it. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "bench_kernels.h"

__global__ void bench_read_kernel(const uint4 *__restrict__ p, size_t n, unsigned *sink)
{
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned acc = 0;
    for (; i + 3 * stride < n; i += 4 * stride) {
        uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride);
        uint4 c = __ldcs(p + i + 2 * stride), d = __ldcs(p + i + 3 * stride);
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w;
        acc ^= c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n; i += stride) {
        uint4 a = __ldcs(p + i);
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    if (acc == 0x9e3779b9u) /* practically never: keeps the loads alive */
        *sink = acc;
}

__global__ void bench_fill_kernel(uint16_t *p, size_t n, uint64_t seed)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = seed + i * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        float f = (float)(z >> 40) * (4.0f / 16777216.0f) - 2.0f;
        p[i] = (uint16_t)(__float_as_uint(f) >> 16);
    }
}

/* Busy-wait (no sleep) on every SM so that the clocks stay up while the
 * timed launches are queued behind it. */
__global__ void bench_spin_kernel(unsigned long long ns)
{
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

extern "C" int bench_spin(unsigned long long ns, int blocks, void *stream)
{
    bench_spin_kernel<<<blocks, 128, 0, (cudaStream_t)stream>>>(ns);
    return (int)cudaGetLastError();
}

extern "C" int bench_read(const void *p, size_t bytes, unsigned *sink, int blocks, void *stream)
{
    bench_read_kernel<<<blocks, 512, 0, (cudaStream_t)stream>>>((const uint4 *)p, bytes / 16, sink);
    return (int)cudaGetLastError();
}

extern "C" int bench_fill_bf16(void *p, size_t n, uint64_t seed, void *stream)
{
    bench_fill_kernel<<<1024, 256, 0, (cudaStream_t)stream>>>((uint16_t *)p, n, seed);
    return (int)cudaGetLastError();
}
