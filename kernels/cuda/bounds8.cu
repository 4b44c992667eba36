/* Page key bounds on the GPU. attnd_cuda_bounds_fold: appended keys
 * folded into their pages' bf16 bounds (the host's bf16 path, bitwise).
 * attnd_cuda_bounds8_make: pages' compact bounds from their bf16 bounds on
 * the GPU, bitwise what attnd_kernel_kv_bounds8_make (kernels/cpu/bounds.c)
 * makes on the host: a warp per (page, KV head) row, the same float64
 * arithmetic (power-of-two steps, so every quotient is exact), the minimum
 * and maximum taken as the CPU's ordered scan takes them (of equal values,
 * -0 and +0 included, the first). */
#include <math.h>
#include <stdint.h>

#include "../cpu/bounds8_step.h"
#include "ctx_int.h"

namespace {

__device__ __forceinline__ float bf16f(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

/* (value, index) of the first minimum (less: the smaller value, on equal
 * values the lower index); the maximum likewise. */
__device__ __forceinline__ void take_min(float &v, int &i, float v2, int i2)
{
    if (v2 < v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

__device__ __forceinline__ void take_max(float &v, int &i, float v2, int i2)
{
    if (v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

/* The compact row of one (page, KV head) from its bf16 rows lo, hi = lo +
 * dk, by one warp: lane reads only elements lane + 32 i. */
__device__ void row8_make(const uint16_t *lo, uint8_t *row, int32_t dk, int64_t row8, int32_t lane)
{
    float m = INFINITY, M = -INFINITY;
    int mi = 0x7fffffff, Mi = 0x7fffffff;
    bool bad = false;
    for (int32_t d = lane; d < dk; d += 32) {
        const float l = bf16f(lo[d]), hv = bf16f(lo[dk + d]);
        bad |= !(fabsf(l) < 0x1p100f) || !(fabsf(hv) < 0x1p100f);
        take_min(m, mi, l, d);
        take_max(M, Mi, hv, d);
    }
    uint32_t *words = reinterpret_cast<uint32_t *>(row);
    if (__any_sync(0xffffffffu, bad)) { /* bounds8_unbounded: off 0, step NaN, codes 0 */
        for (int32_t i = lane; i < (int32_t)(row8 / 4); i += 32)
            words[i] = i == 1 ? 0x7fc00000u : 0u; /* C's NAN */
        return;
    }
    for (int o = 16; o > 0; o /= 2) {
        take_min(m, mi, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, mi, o));
        take_max(M, Mi, __shfl_xor_sync(0xffffffffu, M, o), __shfl_xor_sync(0xffffffffu, Mi, o));
    }
    double k;
    const int e = attnd__bounds8_step(m, M, &k); /* the host's function */
    const double sc = ldexp(1.0, e);
    if (lane == 0) {
        reinterpret_cast<float *>(row)[0] = (float)(k * sc);
        reinterpret_cast<float *>(row)[1] = (float)sc;
    }
    uint8_t *cl = row + 8, *ch = cl + dk;
    const double inv = ldexp(1.0, -e);
    for (int32_t d = lane; d < dk; d += 32)
        attnd__bounds8_codes((double)bf16f(lo[d]) * inv, (double)bf16f(lo[dk + d]) * inv, k,
                             &cl[d], &ch[d]);
    for (int64_t i = 8 + 2 * (int64_t)dk + lane; i < row8; i += 32) /* the padding */
        row[i] = 0;
}

__global__ void bounds8_kernel(const uint16_t *bounds, uint8_t *bounds8, int64_t bounds_pages,
                               int32_t hkv, int32_t dk, int64_t row8, const int32_t *pages,
                               int32_t n)
{
    const int32_t lane = (int32_t)threadIdx.x % 32;
    const int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (w >= (int64_t)n * hkv)
        return; /* the whole warp */
    const int32_t h = (int32_t)(w % hkv), pg = pages[w / hkv]; /* may be pinned host memory */
    const int64_t at = (int64_t)h * bounds_pages + pg;
    row8_make(bounds + at * 2 * dk, bounds8 + at * row8, dk, row8, lane);
}

/* A warp per (fold, KV head), lane d the elements d + 32 i: the tokens in
 * order, as the host's bf16 path takes them (a bound becomes a key's own
 * bits when the key compares below / above it; NaN never gets in; of -0
 * and +0 the one there first stays); then, with bounds8, the row's compact
 * form from the lane's own elements. */
__global__ void fold_kernel(const uint16_t *pool, int64_t page_elems, attnd_kernel_kv_layout kv,
                            uint16_t *bounds, uint8_t *bounds8, int64_t row8, int64_t bounds_pages,
                            const attnd_cuda_fold *folds, int32_t n)
{
    const int32_t lane = (int32_t)threadIdx.x % 32, hkv = kv.n_kv_heads, dk = kv.d_k;
    const int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (w >= (int64_t)n * hkv)
        return; /* the whole warp */
    const attnd_cuda_fold f = folds[w / hkv]; /* may be pinned host memory */
    if (f.n <= 0)
        return; /* dropped after it was queued */
    const int32_t h = (int32_t)(w % hkv);
    const int64_t at = (int64_t)h * bounds_pages + f.page;
    uint16_t *lo = bounds + at * 2 * dk, *hi = lo + dk;
    const uint16_t *k0 = pool + (int64_t)f.page * page_elems + (int64_t)h * kv.k_head_stride;
    for (int32_t d = lane; d < dk; d += 32) {
        uint16_t l = f.slot0 == 0 ? (uint16_t)0x7f80 : lo[d], u = f.slot0 == 0 ? (uint16_t)0xff80 : hi[d];
        for (int32_t t = f.slot0; t < f.slot0 + f.n; t++) {
            const uint16_t kb = k0[(int64_t)t * kv.k_token_stride + d];
            const float kf = bf16f(kb);
            l = kf < bf16f(l) ? kb : l;
            u = kf > bf16f(u) ? kb : u;
        }
        lo[d] = l;
        hi[d] = u;
    }
    if (bounds8)
        row8_make(lo, bounds8 + at * row8, dk, row8, lane);
}

/* Both kernels above: a warp per (page, KV head) row of n pages. */
constexpr int ROW_THREADS = 256;

unsigned row_blocks(int32_t n, const attnd_kernel_kv_layout *kv)
{
    const int64_t warps = (int64_t)n * kv->n_kv_heads, per = ROW_THREADS / 32;
    return (unsigned)((warps + per - 1) / per);
}

} /* namespace */

extern "C" attnd_status attnd_cuda_bounds_fold(attnd_cuda_ctx *ctx, const attnd_kernel_kv_layout *kv,
                                               const void *pool, size_t page_bytes,
                                               uint16_t *bounds, uint8_t *bounds8,
                                               int64_t bounds_pages, const attnd_cuda_fold *folds,
                                               int32_t n, attnd_error *err)
{
    if (!ctx || !kv)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "bounds_fold: ctx and kv are required");
    if (n < 0 || (n > 0 && (!pool || !bounds || !folds)) || kv->n_kv_heads < 1 || kv->d_k < 1 ||
        kv->dtype != ATTND_DTYPE_BF16 || page_bytes % 2)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "bounds_fold: n %d (>= 0), pool, bounds and folds non-NULL, and a "
                               "bf16 layout expected", n);
    if (n == 0)
        return ATTND_OK;
    fold_kernel<<<row_blocks(n, kv), ROW_THREADS, 0, ctx->stream>>>(
        static_cast<const uint16_t *>(pool), (int64_t)(page_bytes / 2), *kv, bounds, bounds8,
        (int64_t)attnd_kernel_kv_bounds8_row(kv), bounds_pages, folds, n);
    return attnd__cuda_launched(err, "bounds_fold launch");
}

extern "C" attnd_status attnd_cuda_bounds8_make(attnd_cuda_ctx *ctx,
                                                const attnd_kernel_kv_layout *kv,
                                                const uint16_t *bounds, uint8_t *bounds8,
                                                int64_t bounds_pages, const int32_t *pages,
                                                int32_t n, attnd_error *err)
{
    if (!ctx || !kv)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "bounds8: ctx and kv are required");
    if (n < 0 || (n > 0 && (!bounds || !bounds8 || !pages)) || kv->n_kv_heads < 1 || kv->d_k < 1)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "bounds8: n %d (>= 0), bounds, bounds8 and pages non-NULL, and a "
                               "layout expected", n);
    if (n == 0)
        return ATTND_OK;
    bounds8_kernel<<<row_blocks(n, kv), ROW_THREADS, 0, ctx->stream>>>(
        bounds, bounds8, bounds_pages, kv->n_kv_heads, kv->d_k,
        (int64_t)attnd_kernel_kv_bounds8_row(kv), pages, n);
    return attnd__cuda_launched(err, "bounds8 launch");
}
