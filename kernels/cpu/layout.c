/* KV page layouts: where each token's K and V live inside a page, and the
 * one routine that writes wire-form KV entries into a page.
 *
 * MLA pages are token-major [page_size][d_c + d_r], as FlashMLA stores them:
 * one token's latent and rope key are one contiguous row, V aliases K.
 * GQA pages are [2][Hkv][page_size][D]: per KV head, its tokens' keys are
 * contiguous (and its values), so a decode kernel streams each head's rows
 * and a head-sharded rank owns whole blocks. */
#include <string.h>

#include "attnd_kernels.h"

void attnd_kernel_kv_layout_mla(attnd_kernel_kv_layout *l, int32_t d_c, int32_t d_r,
                                int32_t page_size, attnd_dtype dtype)
{
    memset(l, 0, sizeof *l);
    l->dtype = dtype;
    l->page_size = page_size;
    l->n_kv_heads = 1;
    l->d_k = d_c + d_r;
    l->d_v = d_c;
    l->v_in_k = 1;
    l->k_token_stride = l->d_k;
    l->k_head_stride = (int64_t)page_size * l->d_k;
    l->v_offset = 0;
    l->v_token_stride = l->d_k;
    l->v_head_stride = l->k_head_stride;
    l->page_stride = (int64_t)page_size * l->d_k;
}

void attnd_kernel_kv_layout_gqa(attnd_kernel_kv_layout *l, int32_t n_kv_heads,
                                int32_t head_dim, int32_t page_size,
                                attnd_dtype dtype)
{
    memset(l, 0, sizeof *l);
    l->dtype = dtype;
    l->page_size = page_size;
    l->n_kv_heads = n_kv_heads;
    l->d_k = head_dim;
    l->d_v = head_dim;
    l->v_in_k = 0;
    l->k_token_stride = head_dim;
    l->k_head_stride = (int64_t)page_size * head_dim;
    l->v_token_stride = head_dim;
    l->v_head_stride = l->k_head_stride;
    l->v_offset = (int64_t)n_kv_heads * l->k_head_stride;
    l->page_stride = 2 * l->v_offset;
}

size_t attnd_kernel_kv_layout_page_bytes(const attnd_kernel_kv_layout *l)
{
    return (size_t)l->page_stride * attnd_dtype_size(l->dtype);
}

int64_t attnd_kernel_kv_layout_token_elems(const attnd_kernel_kv_layout *l)
{
    if (l->v_in_k)
        return (int64_t)l->n_kv_heads * l->d_k;
    return (int64_t)l->n_kv_heads * (l->d_k + l->d_v);
}

void attnd_kernel_kv_write_tokens(const attnd_kernel_kv_layout *l, void *page, int32_t slot,
                                  int32_t n, attnd_dtype src_t, const void *src)
{
    size_t es = attnd_dtype_size(l->dtype);
    size_t ss = attnd_dtype_size(src_t);
    int64_t entry = attnd_kernel_kv_layout_token_elems(l);
    char *base = page;
    const char *in = src;

    for (int32_t i = 0; i < n; i++, in += (size_t)entry * ss) {
        int64_t t = slot + i;
        const char *p = in;
        for (int32_t h = 0; h < l->n_kv_heads; h++, p += (size_t)l->d_k * ss) {
            int64_t off = h * l->k_head_stride + t * l->k_token_stride;
            attnd_dtype_convert(l->dtype, base + off * es, src_t, p, (size_t)l->d_k);
        }
        if (l->v_in_k)
            continue;
        for (int32_t h = 0; h < l->n_kv_heads; h++, p += (size_t)l->d_v * ss) {
            int64_t off = l->v_offset + h * l->v_head_stride + t * l->v_token_stride;
            attnd_dtype_convert(l->dtype, base + off * es, src_t, p, (size_t)l->d_v);
        }
    }
}
