/* attnd_refcheck: local checking of a worker's attention outputs.
 *
 * A client that wants to know its outputs are right keeps its own copy of
 * every KV entry it sent, exactly as the worker stores it (converted to the
 * model's kv_dtype, so bf16 rounding is part of the copy), and computes the
 * float64 reference (attnd_kernel_ref_attention_f64 of kernels/) over that copy for
 * the queries it sent. attnd-cli demo and the client tests use it; it is
 * not part of libattnd.
 *
 * Error measure, per (sequence, query token, head): normwise relative,
 *   max_e |out[e] - ref[e]| / max_e |ref[e]|
 * (absolute when the reference is all zero), and for LSE
 *   |lse - ref_lse| / max(1, |ref_lse|).
 *
 * Ownership: an attnd_refcheck is caller-owned (init / cleanup); it owns
 * its copies and scratch. Not thread-safe: one per thread.
 */
#ifndef ATTND_REFCHECK_H
#define ATTND_REFCHECK_H

#include <stddef.h>
#include <stdint.h>

#include "attnd/client.h"

typedef struct attnd_refcheck_seq {
    unsigned char *data; /* [len][kv_token_elems] of kv_dtype */
    uint64_t len, cap;
} attnd_refcheck_seq;

typedef struct attnd_refcheck {
    attnd_model_info model;
    uint32_t n_seqs;
    attnd_refcheck_seq *seqs; /* [n_seqs][n_layers] */
    double *q, *k, *v, *out, *lse; /* float64 scratch, grown on demand */
    size_t cap_q, cap_k, cap_v, cap_out, cap_lse;
} attnd_refcheck;

/* Outcome of checks, accumulated: the worst errors seen and how many
 * (sequence, query token, head) rows were compared. */
typedef struct attnd_refcheck_result {
    double max_err;     /* output, normwise relative */
    double max_lse_err; /* LSE, relative to max(1, |ref|) */
    uint64_t rows;
} attnd_refcheck_result;

/* 0, or -1 when out of memory. */
int attnd_refcheck_init(attnd_refcheck *rc, const attnd_model_info *model,
                        uint32_t n_seqs);
void attnd_refcheck_cleanup(attnd_refcheck *rc);

/* Record n entries ([n][kv_token_elems] of src_t, the wire form) appended
 * to layer `layer` of sequence `seq`, converted to kv_dtype as the worker
 * stores them. 0, or -1 when out of memory or seq/layer is out of range. */
int attnd_refcheck_append(attnd_refcheck *rc, uint32_t seq, uint32_t layer,
                          uint64_t n, attnd_dtype src_t, const void *src);
/* Entries recorded for that layer of that sequence (0 when out of range). */
uint64_t attnd_refcheck_len(const attnd_refcheck *rc, uint32_t seq,
                            uint32_t layer);

/* Check query heads [h0, h1) of one query token of sequence `seq`: q is
 * [Hq][d_k] of q_t, out [Hq][d_v] of out_t, lse [Hq] float32 or NULL; the
 * reference attends over the first `visible` entries of the layer. The
 * worst errors are folded into *res. 0, or -1 when out of memory or an
 * index is out of range. */
int attnd_refcheck_token(attnd_refcheck *rc, uint32_t seq, uint32_t layer,
                         uint64_t visible, attnd_dtype q_t, const void *q,
                         attnd_dtype out_t, const void *out, const float *lse,
                         uint32_t h0, uint32_t h1, attnd_refcheck_result *res);

/* The narrow MLA wire's weights of a layer, caller-owned (read during a
 * check): w_uk [Hq][d_nope][d_c], w_uv [Hq][d_c][d_v] of w_t. */
typedef struct attnd_refcheck_proj {
    uint32_t d_nope, d_v;
    attnd_dtype w_t;
    const void *w_uk, *w_uv;
} attnd_refcheck_proj;

/* attnd_refcheck_token for a heads-form query (MLA): q [Hq][d_nope +
 * d_rope] of q_t is absorbed with p->w_uk in float64 (q_nope . W_UK[h],
 * then q_rope), the reference's latent output up-projected with p->w_uv,
 * and compared with out [Hq][d_v] of out_t. */
int attnd_refcheck_token_heads(attnd_refcheck *rc, uint32_t seq, uint32_t layer,
                               uint64_t visible, const attnd_refcheck_proj *p, attnd_dtype q_t,
                               const void *q, attnd_dtype out_t, const void *out,
                               const float *lse, uint32_t h0, uint32_t h1,
                               attnd_refcheck_result *res);

/* A small deterministic generator (xorshift64*), for inputs. */
typedef struct attnd_rng {
    uint64_t s;
} attnd_rng;

void attnd_rng_seed(attnd_rng *r, uint64_t seed);
uint64_t attnd_rng_next(attnd_rng *r);
/* n values uniform in [-1, 1), stored as dtype t. */
void attnd_rng_fill(attnd_rng *r, attnd_dtype t, void *dst, size_t n);

#endif /* ATTND_REFCHECK_H */
