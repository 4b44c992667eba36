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
 * infinite, which selection treats as +inf (always chosen).
 *
 * The compact (8-bit) bounds the CPU selection reads are made from the
 * bf16 ones page by page (attnd_kernel_kv_bounds8_make), in float64 with a
 * power-of-two step so that every step is exact: the codes are floors and
 * ceilings of exact quotients, and the bounds they stand for are exact
 * float32 values at or outside the bf16 ones. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attnd_kernels.h"
#include "bounds8_step.h"

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
    return (uint16_t)(h + ((rest != 0) & neg)); /* no branch: signs are random */
}

/* bf16 at or above f (f not NaN). */
static uint16_t bf16_up(float f)
{
    uint32_t rest;
    int neg;
    uint16_t h = f32_bits_hi(f, &rest, &neg);
    return (uint16_t)(h + ((rest != 0) & !neg));
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
    float flo[BOUNDS_CHUNK], fhi[BOUNDS_CHUNK], x[BOUNDS_CHUNK];
    float kv[BOUNDS_CHUNK]; /* one chunk in l->dtype (at most 4 bytes each) */

    /* the keys lead each wire entry, [Hkv][d_k]: each head's row in
     * chunks, its bounds' address found once (per element it was most of
     * a decode step's append) */
    for (int32_t h = 0; h < l->n_kv_heads; h++) {
        uint16_t *lo = bounds + attnd_kernel_kv_bounds_at(l, bounds_pages, h, p), *hi = lo + l->d_k;
        if (src_t == ATTND_DTYPE_BF16 && l->dtype == ATTND_DTYPE_BF16) {
            /* bf16 keys stored as bf16: a bound becomes a key's own bits
             * or stays (what the float path below rounds to, exactly;
             * a NaN compares false and never gets in) */
            for (int32_t t = 0; t < n; t++) {
                /* the wire's bytes need not be 2-byte aligned */
                const char *k = (const char *)src + (size_t)t * entry +
                                (size_t)h * (size_t)l->d_k * sizeof(uint16_t);
                for (int32_t d = 0; d < l->d_k; d++) {
                    uint16_t kb;
                    memcpy(&kb, k + (size_t)d * sizeof kb, sizeof kb);
                    const float kf = attnd_dtype_bf16_to_f32(kb);
                    lo[d] = kf < attnd_dtype_bf16_to_f32(lo[d]) ? kb : lo[d];
                    hi[d] = kf > attnd_dtype_bf16_to_f32(hi[d]) ? kb : hi[d];
                }
            }
            continue;
        }
        for (int32_t d0 = 0; d0 < l->d_k; d0 += BOUNDS_CHUNK) {
            const int32_t nc = l->d_k - d0 < BOUNDS_CHUNK ? l->d_k - d0 : BOUNDS_CHUNK;
            for (int32_t j = 0; j < nc; j++) {
                flo[j] = attnd_dtype_bf16_to_f32(lo[d0 + j]);
                fhi[j] = attnd_dtype_bf16_to_f32(hi[d0 + j]);
            }
            for (int32_t t = 0; t < n; t++) {
                const char *k = (const char *)src + (size_t)t * entry +
                                ((size_t)h * (size_t)l->d_k + (size_t)d0) * ss;
                attnd_dtype_convert(l->dtype, kv, src_t, k, (size_t)nc);
                attnd_dtype_convert(ATTND_DTYPE_F32, x, l->dtype, kv, (size_t)nc);
                /* a NaN compares false: it never gets in */
                for (int32_t j = 0; j < nc; j++) {
                    flo[j] = x[j] < flo[j] ? x[j] : flo[j];
                    fhi[j] = x[j] > fhi[j] ? x[j] : fhi[j];
                }
            }
            for (int32_t j = 0; j < nc; j++) {
                lo[d0 + j] = bf16_down(flo[j]); /* an empty bound stays infinite */
                hi[d0 + j] = bf16_up(fhi[j]);
            }
        }
    }
}

size_t attnd_kernel_kv_bounds8_row(const attnd_kernel_kv_layout *l)
{
    return (2 * sizeof(float) + 2 * (size_t)l->d_k + 7) / 8 * 8;
}

/* A row of compact bounds whose every score is NaN (always chosen). */
static void bounds8_unbounded(uint8_t *row, int32_t dk)
{
    const float off = 0.0f, step = NAN;
    memcpy(row, &off, sizeof off);
    memcpy(row + sizeof off, &step, sizeof step);
    memset(row + 2 * sizeof(float), 0, 2 * (size_t)dk);
}

/* One KV head's compact bounds from its bf16 lo and hi rows. */
static void bounds8_row_make(const uint16_t *lo, int32_t dk, uint8_t *row)
{
    float m = INFINITY, M = -INFINITY;
    for (int32_t d = 0; d < dk; d++) {
        const float l = attnd_dtype_bf16_to_f32(lo[d]), h = attnd_dtype_bf16_to_f32(lo[dk + d]);
        if (!(fabsf(l) < 0x1p100f) || !(fabsf(h) < 0x1p100f)) { /* also inf and NaN */
            bounds8_unbounded(row, dk);
            return;
        }
        m = l < m ? l : m;
        M = h > M ? h : M;
    }
    double k;
    const int e = attnd__bounds8_step(m, M, &k);
    const double s = ldexp(1.0, e);
    const float off = (float)(k * s), step = (float)s; /* both exact */
    memcpy(row, &off, sizeof off);
    memcpy(row + sizeof off, &step, sizeof step);
    uint8_t *cl = row + 2 * sizeof(float), *ch = cl + dk;
    /* x / s is x * 2^-e exactly (s a power of two, |x / s| <= 2^17), the
     * quotients the codes floor and ceil */
    const double inv = ldexp(1.0, -e);
    for (int32_t d = 0; d < dk; d++)
        attnd__bounds8_codes((double)attnd_dtype_bf16_to_f32(lo[d]) * inv,
                             (double)attnd_dtype_bf16_to_f32(lo[dk + d]) * inv, k, &cl[d], &ch[d]);
}

void attnd_kernel_kv_bounds8_make(const attnd_kernel_kv_layout *l, const uint16_t *bounds,
                                  uint8_t *bounds8, int64_t bounds_pages, int64_t p)
{
    for (int32_t h = 0; h < l->n_kv_heads; h++)
        bounds8_row_make(bounds + attnd_kernel_kv_bounds_at(l, bounds_pages, h, p), l->d_k,
                         bounds8 + attnd_kernel_kv_bounds8_at(l, bounds_pages, h, p));
}
