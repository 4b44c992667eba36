/* Per-page key bounds for Quest-style page selection (attnd_kernels.h,
 * "page selection"), and the token view of a page layout.
 *
 * Bounds are folded in as tokens are appended, from the wire form the
 * append carries: each key is first rounded to the pool's KV dtype (what
 * attention will read), the chunk's element-wise min and max are taken in
 * float32, and merged into the page's bf16 bounds with outward rounding
 * (min toward -inf, max toward +inf), so the stored bounds hold every
 * stored key whatever the KV dtype. NaN keys are ignored (they compare
 * false: they cannot make a page look better or worse than its finite keys); an
 * infinite key makes its bound infinite, and the page's score then NaN or
 * infinite, which selection treats as +inf (always chosen). */
#include <math.h>
#include <string.h>

#include "attnd_kernels.h"

/* Dims converted per step (stack buffers). */
#define BOUNDS_CHUNK 1024

int attnd_kernel_kv_layout_token_view(const attnd_kernel_kv_layout *l, attnd_kernel_kv_layout *view,
                                      int64_t *ratio_p)
{
    if (l->k_token_stride < 1 || l->page_stride % l->k_token_stride != 0 ||
        (!l->v_in_k && l->v_token_stride != l->k_token_stride))
        return 0;
    *view = *l;
    view->page_size = 1;
    view->page_stride = l->k_token_stride;
    *ratio_p = l->page_stride / l->k_token_stride;
    return 1;
}

size_t attnd_kernel_kv_bounds_elems(const attnd_kernel_kv_layout *l)
{
    return (size_t)l->n_kv_heads * 2 * (size_t)l->d_k;
}

static uint16_t f32_bits_hi(float f, uint32_t *rest_p, int *neg_p)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    *rest_p = u & 0xffffu;
    *neg_p = (int)(u >> 31);
    return (uint16_t)(u >> 16);
}

/* bf16 at or below f (f not NaN). Truncation rounds toward zero: down for
 * positive values, up for negative ones, whose magnitude then grows by one
 * step (the largest finite magnitude steps to -inf, still below). */
static uint16_t bf16_down(float f)
{
    uint32_t rest;
    int neg;
    uint16_t h = f32_bits_hi(f, &rest, &neg);
    return (uint16_t)(rest && neg ? h + 1 : h);
}

/* bf16 at or above f (f not NaN). */
static uint16_t bf16_up(float f)
{
    uint32_t rest;
    int neg;
    uint16_t h = f32_bits_hi(f, &rest, &neg);
    return (uint16_t)(rest && !neg ? h + 1 : h);
}

void attnd_kernel_kv_bounds_reset(const attnd_kernel_kv_layout *l, uint16_t *bounds,
                                  int64_t bounds_pages, int64_t p)
{
    const uint16_t pinf = 0x7f80, ninf = 0xff80;
    for (int32_t h = 0; h < l->n_kv_heads; h++) {
        uint16_t *lo = bounds + attnd_kernel_kv_bounds_at(l, bounds_pages, h, p), *hi = lo + l->d_k;
        for (int32_t d = 0; d < l->d_k; d++) {
            lo[d] = pinf;
            hi[d] = ninf;
        }
    }
}

void attnd_kernel_kv_bounds_add(const attnd_kernel_kv_layout *l, uint16_t *bounds,
                                int64_t bounds_pages, int64_t p, int32_t n, attnd_dtype src_t,
                                const void *src)
{
    const size_t ss = attnd_dtype_size(src_t);
    const size_t entry = (size_t)attnd_kernel_kv_layout_token_elems(l) * ss;
    const int32_t nk = l->n_kv_heads * l->d_k; /* the keys lead each wire entry */
    float flo[BOUNDS_CHUNK], fhi[BOUNDS_CHUNK], x[BOUNDS_CHUNK];
    float kv[BOUNDS_CHUNK]; /* one chunk in l->dtype (at most 4 bytes each) */

    /* chunks of the concatenated keys [Hkv][d_k], each head's bounds a
     * row of their own */
    for (int32_t c0 = 0; c0 < nk; c0 += BOUNDS_CHUNK) {
        const int32_t nc = nk - c0 < BOUNDS_CHUNK ? nk - c0 : BOUNDS_CHUNK;
        for (int32_t j = 0; j < nc; j++) {
            int32_t h = (c0 + j) / l->d_k, d = (c0 + j) % l->d_k;
            const uint16_t *lo = bounds + attnd_kernel_kv_bounds_at(l, bounds_pages, h, p);
            flo[j] = attnd_dtype_bf16_to_f32(lo[d]);
            fhi[j] = attnd_dtype_bf16_to_f32(lo[l->d_k + d]);
        }
        for (int32_t t = 0; t < n; t++) {
            const char *k = (const char *)src + (size_t)t * entry + (size_t)c0 * ss;
            attnd_dtype_convert(l->dtype, kv, src_t, k, (size_t)nc);
            attnd_dtype_convert(ATTND_DTYPE_F32, x, l->dtype, kv, (size_t)nc);
            /* a NaN compares false: it never gets in */
            for (int32_t j = 0; j < nc; j++) {
                flo[j] = x[j] < flo[j] ? x[j] : flo[j];
                fhi[j] = x[j] > fhi[j] ? x[j] : fhi[j];
            }
        }
        for (int32_t j = 0; j < nc; j++) {
            int32_t h = (c0 + j) / l->d_k, d = (c0 + j) % l->d_k;
            uint16_t *lo = bounds + attnd_kernel_kv_bounds_at(l, bounds_pages, h, p);
            lo[d] = bf16_down(flo[j]); /* an empty bound stays infinite */
            lo[l->d_k + d] = bf16_up(fhi[j]);
        }
    }
}
