/* The README's client example, whole: connect, create a session, prefill
 * every layer with 16 tokens of KV, run one decode step (all layers, each
 * Attend appending the new token's KV), close. Numbers are random stand-ins
 * for what a model's projections would produce; tensors are float32 (the
 * worker converts to its KV dtype).
 *
 *   attend_example [HOST:PORT]     (default 127.0.0.1:7700; exit 0 on success)
 *
 * Build against an installed libattnd:
 *   cc attend_example.c $(pkg-config --cflags --libs libattnd) -o attend_example */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <attnd/client.h>

#define PREFILL 16

static float rnd(void) { return (float)rand() / (float)RAND_MAX - 0.5f; }

static float *random_floats(size_t n)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; p && i < n; i++)
        p[i] = rnd();
    return p;
}

int main(int argc, char **argv)
{
    const char *target = argc > 1 ? argv[1] : "127.0.0.1:7700";
    attnd_client *c = NULL;
    attnd_error err = {0};
    attnd_session_id sid;
    attnd_model_info m;
    int rc = 1;

    if (attnd_client_connect(target, NULL, &c, &err))
        goto fail;
    if (attnd_client_create_session(c, NULL, PREFILL + 1, &sid, &m, &err))
        goto fail;
    printf("model %s: %u layers, %u query heads, d_k %u, d_v %u\n", m.name, m.n_layers,
           m.n_q_heads, m.d_k, m.d_v);

    /* prefill: one chunk per layer, [PREFILL, kv entry] */
    float *kv = random_floats((size_t)PREFILL * m.kv_token_elems);
    float *q = random_floats((size_t)m.n_q_heads * m.d_k);
    float *new_kv = random_floats(m.kv_token_elems);
    float *out = malloc((size_t)m.n_q_heads * m.d_v * sizeof *out);
    float lse[1024];
    attnd_kv_chunk *chunks = calloc(m.n_layers, sizeof *chunks);
    if (!kv || !q || !new_kv || !out || !chunks || m.n_q_heads > 1024)
        goto fail_free;
    for (uint32_t l = 0; l < m.n_layers; l++)
        chunks[l] = (attnd_kv_chunk){.session = sid, .layer = l, .start = 0,
                                     .n_tokens = PREFILL, .kv_token_elems = m.kv_token_elems,
                                     .dtype = ATTND_DTYPE_F32, .data = kv};
    if (attnd_client_append_kv(c, chunks, m.n_layers, NULL, &err))
        goto fail_free;

    /* one decode step: per layer, q [1, Hq, d_k] and the new token's KV */
    uint64_t position = PREFILL;
    for (uint32_t l = 0; l < m.n_layers; l++) {
        attnd_attend_args a = {
            .layer = l, .n_seqs = 1, .sessions = &sid,
            .q = {ATTND_DTYPE_F32, 3, {1, m.n_q_heads, m.d_k}, q},
            .new_kv = {ATTND_DTYPE_F32, 2, {1, m.kv_token_elems}, new_kv},
            .positions = &position,
            .out_dtype = ATTND_DTYPE_F32,
            .out = out, .out_capacity = (size_t)m.n_q_heads * m.d_v * sizeof *out,
            .lse = lse, .lse_capacity = m.n_q_heads,
        };
        if (attnd_client_attend(c, &a, &err))
            goto fail_free;
    }
    /* every head saw PREFILL + 1 tokens: its LSE is finite */
    for (uint32_t h = 0; h < m.n_q_heads; h++)
        if (!isfinite(lse[h])) {
            fprintf(stderr, "attend_example: head %u: lse %g\n", h, lse[h]);
            goto fail_free;
        }
    printf("last layer, head 0: out[0] = %.6f, lse = %.4f\n", out[0], lse[0]);
    if (attnd_client_close_session(c, &sid, &err))
        goto fail_free;
    rc = 0;

fail_free:
    free(chunks);
    free(out);
    free(new_kv);
    free(q);
    free(kv);
fail:
    if (rc && err.msg[0])
        fprintf(stderr, "attend_example: %s: %s\n", attnd_status_string(err.code), err.msg);
    attnd_client_destroy(c);
    return rc;
}
