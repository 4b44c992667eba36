/* attnd_cuda_gather: single tokens of the pool copied into whole pages of
 * another buffer (attnd_cuda.h, "token gather"), so that the decode, which
 * reads 64-token tiles of whole pages, can attend a list of any tokens
 * (given-tokens policies). A warp per (page, head slot, slot) entry, 16
 * bytes a lane per step: every run (an MLA row, a GQA head's K or V row)
 * is a multiple of 16 bytes at a 16-byte aligned offset in its page. */
#include <stdint.h>

#include "ctx_int.h"

namespace {

constexpr int GATHER_WARPS = 8;

struct gather_args {
    const char *pool;
    char *dst;
    int64_t pool_tokens; /* pool pages * page size */
    int64_t entries;     /* n_pages * n_heads * page size */
    int64_t page_bytes;
    int32_t page_size, n_heads, hkv;
    int32_t k_run, v_run; /* 16-byte chunks of a K / V row (v_run 0: V in K) */
    int64_t k_head, k_tok, v_off, v_head, v_tok; /* bytes */
};

__device__ __forceinline__ void copy_run(const char *src, char *dst, int32_t chunks, int lane)
{
    for (int32_t c = lane; c < chunks; c += 32)
        reinterpret_cast<uint4 *>(dst)[c] = reinterpret_cast<const uint4 *>(src)[c];
}

__global__ void __launch_bounds__(GATHER_WARPS * 32)
gather_kernel(const gather_args a, const int32_t *__restrict__ src)
{
    const int64_t e = (int64_t)blockIdx.x * GATHER_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (e >= a.entries)
        return;
    const int32_t t = src[e];
    if (t < 0 || t >= a.pool_tokens) /* an empty slot (or out of the pool: never listed) */
        return;
    const int32_t s = (int32_t)(e % a.page_size);
    const int64_t ph = e / a.page_size;
    const int32_t hs = (int32_t)(ph % a.n_heads);
    const int64_t p = ph / a.n_heads;
    const char *from = a.pool + (int64_t)(t / a.page_size) * a.page_bytes;
    char *to = a.dst + p * a.page_bytes;
    const int32_t ts = t % a.page_size;
    /* one head slot of n_heads > 1 is that KV head; n_heads 1 is every head */
    const int32_t h0 = a.n_heads > 1 ? hs : 0, h1 = a.n_heads > 1 ? hs + 1 : a.hkv;
    for (int32_t h = h0; h < h1; h++) {
        copy_run(from + h * a.k_head + ts * a.k_tok, to + h * a.k_head + s * a.k_tok, a.k_run,
                 lane);
        if (a.v_run)
            copy_run(from + a.v_off + h * a.v_head + ts * a.v_tok,
                     to + a.v_off + h * a.v_head + s * a.v_tok, a.v_run, lane);
    }
}

} /* namespace */

extern "C" attnd_status attnd_cuda_gather(attnd_cuda_ctx *ctx, const attnd_kernel_kv_layout *kv,
                                          const void *pool, int64_t pool_pages, void *dst,
                                          int64_t n_pages, int32_t n_heads, const int32_t *src,
                                          attnd_error *err)
{
    if (!ctx || !kv)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "gather: ctx and kv are required");
    const int64_t es = 2; /* bf16 */
    const int64_t k_bytes = (int64_t)kv->d_k * es, v_bytes = kv->v_in_k ? 0 : (int64_t)kv->d_v * es;
    const int64_t page_bytes = kv->page_stride * es;
    if (kv->dtype != ATTND_DTYPE_BF16 || kv->page_size < 1 || kv->n_kv_heads < 1 ||
        k_bytes % 16 || v_bytes % 16 || page_bytes % 16 || (kv->k_token_stride * es) % 16 ||
        (kv->k_head_stride * es) % 16 || (kv->v_offset * es) % 16 ||
        (kv->v_head_stride * es) % 16 || (kv->v_token_stride * es) % 16)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "gather: kv: a bf16 layout whose rows are 16-byte multiples at "
                               "16-byte offsets expected");
    if (n_heads != 1 && (n_heads != kv->n_kv_heads || kv->v_in_k))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "gather: n_heads %d: 1, or the layout's %d KV heads (GQA)", n_heads,
                               kv->n_kv_heads);
    if (n_pages < 0 || pool_pages < 0 || (n_pages > 0 && (!pool || !dst || !src)) ||
        (uintptr_t)pool % 16 || (uintptr_t)dst % 16 ||
        pool_pages * kv->page_size > 0x7fffffffLL)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "gather: n_pages %lld (>= 0), pool, dst and src non-NULL and "
                               "16-byte aligned, at most 2^31 pool tokens",
                               (long long)n_pages);
    const int64_t entries = n_pages * n_heads * kv->page_size;
    if (entries == 0)
        return ATTND_OK;
    if ((entries + GATHER_WARPS - 1) / GATHER_WARPS > 0x7fffffffLL)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "gather: n_pages %lld: too many",
                               (long long)n_pages);
    gather_args a;
    a.pool = static_cast<const char *>(pool);
    a.dst = static_cast<char *>(dst);
    a.pool_tokens = pool_pages * kv->page_size;
    a.entries = entries;
    a.page_bytes = page_bytes;
    a.page_size = kv->page_size;
    a.n_heads = n_heads;
    a.hkv = kv->n_kv_heads;
    a.k_run = (int32_t)(k_bytes / 16);
    a.v_run = (int32_t)(v_bytes / 16);
    a.k_head = kv->k_head_stride * es;
    a.k_tok = kv->k_token_stride * es;
    a.v_off = kv->v_offset * es;
    a.v_head = kv->v_head_stride * es;
    a.v_tok = kv->v_token_stride * es;
    const unsigned blocks = (unsigned)((entries + GATHER_WARPS - 1) / GATHER_WARPS);
    gather_kernel<<<blocks, GATHER_WARPS * 32, 0, ctx->stream>>>(a, src);
    return attnd__cuda_launched(err, "gather launch");
}
