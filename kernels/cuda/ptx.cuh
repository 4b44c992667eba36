/* Inline-PTX helpers shared by the CUDA kernels: shared-memory addresses,
 * mbarriers, the bulk tensor copy (TMA), named barriers, proxy fences,
 * wgmma descriptors and fences (sm_90a), ldmatrix and mma.sync (sm_80+),
 * and the fast exp2. Each wrapper is one instruction or a tiny fixed
 * sequence; the kernels own all ordering decisions. */
#ifndef ATTND_PTX_CUH
#define ATTND_PTX_CUH

#include <cuda.h>
#include <cuda_bf16.h>
#include <stdint.h>

#define ATTND_LOG2E 1.4426950408889634f
#define ATTND_LN2 0.6931471805599453f

static __device__ __forceinline__ uint32_t attnd__smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* ---- mbarrier ------------------------------------------------------------ */

static __device__ __forceinline__ void attnd__mbar_init(uint64_t *bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(attnd__smem_u32(bar)),
                 "r"(count)
                 : "memory");
}

/* Make initialized barriers visible to the async proxy (the copy engine). */
static __device__ __forceinline__ void attnd__mbar_init_fence(void)
{
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

/* Arrive once and add `bytes` to the transaction count the phase waits for. */
static __device__ __forceinline__ void attnd__mbar_expect_tx(uint64_t *bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(
                     attnd__smem_u32(bar)),
                 "r"(bytes)
                 : "memory");
}

static __device__ __forceinline__ void attnd__mbar_arrive(uint64_t *bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(attnd__smem_u32(bar))
                 : "memory");
}

/* Wait until the phase with the given parity has completed. */
static __device__ __forceinline__ void attnd__mbar_wait(uint64_t *bar, uint32_t parity)
{
    asm volatile("{\n"
                 ".reg .pred P1;\n"
                 "LAB_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                 "@P1 bra DONE;\n"
                 "bra LAB_WAIT;\n"
                 "DONE:\n"
                 "}\n" ::"r"(attnd__smem_u32(bar)),
                 "r"(parity)
                 : "memory");
}

/* ---- bulk tensor copy (TMA), global -> shared, completing on an mbarrier -- */

static __device__ __forceinline__ void attnd__tma_load_3d(void *dst, const CUtensorMap *map,
                                                          uint64_t *bar, int32_t c0,
                                                          int32_t c1, int32_t c2)
{
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(attnd__smem_u32(dst)),
                 "l"((uint64_t)map), "r"(attnd__smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
                 : "memory");
}

static __device__ __forceinline__ void attnd__tma_prefetch_desc(const CUtensorMap *map)
{
    asm volatile("prefetch.tensormap [%0];" ::"l"((uint64_t)map) : "memory");
}

/* ---- named barriers and fences -------------------------------------------- */

static __device__ __forceinline__ void attnd__bar_sync(uint32_t id, uint32_t n)
{
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory");
}

static __device__ __forceinline__ void attnd__bar_arrive(uint32_t id, uint32_t n)
{
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(n) : "memory");
}

/* Order this thread's generic-proxy shared-memory writes before later reads
 * by the async proxy (wgmma operands, the copy engine). */
static __device__ __forceinline__ void attnd__fence_proxy_async(void)
{
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

/* ---- wgmma (sm_90a) -------------------------------------------------------- */

/* Shared-memory matrix descriptor for a 128-byte-swizzled tile whose base is
 * 1024-byte aligned: start address, leading and stride byte offsets (bytes,
 * multiples of 16), layout type 1 = SWIZZLE_128B. K-major operands use
 * lbo = 16 (ignored) and sbo = 1024 (8 rows of 128 B); MN-major operands use
 * lbo = the byte stride between 64-element column blocks and sbo = 1024. */
static __device__ __forceinline__ uint64_t attnd__wgmma_desc(uint32_t saddr, uint32_t lbo,
                                                             uint32_t sbo)
{
    uint64_t d = 0;
    d |= (uint64_t)((saddr & 0x3ffff) >> 4);
    d |= (uint64_t)((lbo >> 4) & 0x3fff) << 16;
    d |= (uint64_t)((sbo >> 4) & 0x3fff) << 32;
    d |= (uint64_t)1 << 62;
    return d;
}

static __device__ __forceinline__ void attnd__wgmma_fence(void)
{
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}

static __device__ __forceinline__ void attnd__wgmma_commit(void)
{
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}

template <int N> static __device__ __forceinline__ void attnd__wgmma_wait(void)
{
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

/* Keep the compiler from moving accesses of an accumulator register across
 * the asynchronous wgmma region. */
static __device__ __forceinline__ void attnd__reg_fence(float &x)
{
    asm volatile("" : "+f"(x)::"memory");
}

static __device__ __forceinline__ void attnd__reg_fence(uint32_t &x)
{
    asm volatile("" : "+r"(x)::"memory");
}

/* ---- ldmatrix and mma.sync (sm_80+) ---------------------------------------- */

static __device__ __forceinline__ void attnd__ldsm_x4(uint32_t (&r)[4], uint32_t saddr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(saddr));
}

static __device__ __forceinline__ void attnd__ldsm_x4_trans(uint32_t (&r)[4], uint32_t saddr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(saddr));
}

/* D[16x8] += A[16x16] * B[16x8], bf16 inputs, float32 accumulators. */
static __device__ __forceinline__ void attnd__mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4],
                                                             uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* ---- numbers ---------------------------------------------------------------- */

/* 2^x (ex2.approx: relative error ~2^-22; ex2(-inf) = 0). */
static __device__ __forceinline__ float attnd__exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* Two floats -> packed bf16x2 (round to nearest even), lo in the low half. */
static __device__ __forceinline__ uint32_t attnd__pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

#endif /* ATTND_PTX_CUH */
