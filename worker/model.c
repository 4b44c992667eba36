/* Model presets: the attention shapes of the models attnd serves.
 *
 * Only what attention needs: layer count, kind, head counts and widths, the
 * softmax scale and the KV dtype. Scales are the models' own: DeepSeek-V3
 * and Kimi-K2 use 1/sqrt(qk_nope + qk_rope = 192) times the square of the
 * YaRN mscale 0.1 ln(factor) + 1 (factor 40 and 32), never 1/sqrt(576). */
#include <string.h>

#include "attnd_worker.h"

static const attnd_model_spec presets[] = {
    {.name = "deepseek-v3", .kind = ATTND_ATTN_MLA, .n_layers = 61, .n_q_heads = 128,
     .n_kv_heads = 1, .d_latent = 512, .d_rope = 64, .scale = 0.1352337788608801f,
     .kv_dtype = ATTND_DTYPE_BF16},
    {.name = "kimi-k2", .kind = ATTND_ATTN_MLA, .n_layers = 61, .n_q_heads = 64,
     .n_kv_heads = 1, .d_latent = 512, .d_rope = 64, .scale = 0.13086079996295008f,
     .kv_dtype = ATTND_DTYPE_BF16},
    {.name = "llama3-8b", .kind = ATTND_ATTN_GQA, .n_layers = 32, .n_q_heads = 32,
     .n_kv_heads = 8, .head_dim = 128, .scale = 0.08838834764831845f,
     .kv_dtype = ATTND_DTYPE_BF16},
    {.name = "llama3-70b", .kind = ATTND_ATTN_GQA, .n_layers = 80, .n_q_heads = 64,
     .n_kv_heads = 8, .head_dim = 128, .scale = 0.08838834764831845f,
     .kv_dtype = ATTND_DTYPE_BF16},
    /* test models: small, but every dimension distinct so a mixed-up axis
     * cannot pass a shape check by accident */
    {.name = "tiny-mla", .kind = ATTND_ATTN_MLA, .n_layers = 4, .n_q_heads = 8,
     .n_kv_heads = 1, .d_latent = 64, .d_rope = 16, .scale = 0.14433756729740644f,
     .kv_dtype = ATTND_DTYPE_BF16},
    {.name = "tiny-gqa", .kind = ATTND_ATTN_GQA, .n_layers = 3, .n_q_heads = 8,
     .n_kv_heads = 2, .head_dim = 32, .scale = 0.17677669529663687f,
     .kv_dtype = ATTND_DTYPE_BF16},
    /* DeepSeek-V3's latent widths (512 + 64, scale 1/sqrt(128 + 64)) on 4
     * heads and 3 layers: the Python fidelity tests decode a tiny
     * DeepSeek-V3-architecture model with its attention on this preset */
    {.name = "tiny-mla512", .kind = ATTND_ATTN_MLA, .n_layers = 3, .n_q_heads = 4,
     .n_kv_heads = 1, .d_latent = 512, .d_rope = 64, .scale = 0.07216878364870323f,
     .kv_dtype = ATTND_DTYPE_BF16},
    /* 6 KV heads (groups of 4): head sharding over 2 and 3 ranks */
    {.name = "tiny-gqa6", .kind = ATTND_ATTN_GQA, .n_layers = 2, .n_q_heads = 24,
     .n_kv_heads = 6, .head_dim = 32, .scale = 0.17677669529663687f,
     .kv_dtype = ATTND_DTYPE_BF16},
};

const attnd_model_spec *attnd_model_find(const char *name)
{
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (name && strcmp(presets[i].name, name) == 0)
            return &presets[i];
    return NULL;
}

size_t attnd_model_count(void)
{
    return sizeof presets / sizeof presets[0];
}

const attnd_model_spec *attnd_model_at(size_t i)
{
    return i < attnd_model_count() ? &presets[i] : NULL;
}

int32_t attnd_model_d_k(const attnd_model_spec *m)
{
    return m->kind == ATTND_ATTN_MLA ? m->d_latent + m->d_rope : m->head_dim;
}

int32_t attnd_model_d_v(const attnd_model_spec *m)
{
    return m->kind == ATTND_ATTN_MLA ? m->d_latent : m->head_dim;
}

int64_t attnd_model_kv_token_elems(const attnd_model_spec *m)
{
    if (m->kind == ATTND_ATTN_MLA)
        return m->d_latent + m->d_rope;
    return 2 * (int64_t)m->n_kv_heads * m->head_dim;
}
