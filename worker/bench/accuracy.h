/* The accuracy harness's core (attnd-sparse-accuracy): one attention problem
 * in, every policy's figures at every budget out; and the captured-workload
 * file it reads with --load. Internal to worker/bench (and its test).
 *
 * A case is one KV head (or MLA's latent) with the hq query heads that read
 * it, at one query position: the keys [T][dk] (already rounded to bf16, as
 * the pool stores them), the values [T][dv] (or the first dv of each key
 * when v_in_k: MLA's latent), the queries [hq][dk] and the softmax scale.
 * attnd__acc_eval folds the keys into per-page key bounds with the worker's
 * own code (attnd_kernel_kv_bounds_add, then the compact 8-bit form the CPU
 * engine scores, attnd_kernel_kv_bounds8_make), chooses topk-pages with the
 * worker's selection kernel (attnd_kernel_select) on the compact bounds
 * with the engine's rows and with a row per head, and on the bf16 bounds
 * (what the GPU scores) with the engine's rows, streaming's sink + window, the oracle's pages of
 * most dense mass and the sequence-sharded ranks' shares, then measures per
 * query head, in float64 against dense attention over the T tokens:
 *   recall  the dense attention mass on the tokens attended,
 *   error   ||o_sparse - o_dense|| / ||o_dense|| (L2 over dv),
 *   read    the bytes attended (and the key bounds selection reads) over
 *           the dense call's,
 * and adds them to a table (means over everything added, worst recall,
 * worst error).
 *
 * The captured-workload file (little-endian; written by
 * tests/gpu/capture_attn.py, read by attnd__acc_load_file):
 *
 *   file    char magic[8] = "ATTNDQKV"; uint32 version = 1; uint32 n_records;
 *           then n_records records, nothing after the last
 *   record  header, 16 x uint32/int32/float32 (64 bytes):
 *             [0] n_q_heads  [1] n_kv_heads  [2] T (tokens of K and V)
 *             [3] d_k  [4] d_v  [5] n_queries  [6] flags (bit 0: LATENT,
 *             V is the first d_v of each key and no V array follows; MLA)
 *             [7] scale (float32)  [8] layer (int32, a label)
 *             [9..15] zero
 *           float32 K [n_kv_heads][T][d_k]       (post-RoPE keys)
 *           float32 V [n_kv_heads][T][d_v]       (absent when LATENT)
 *           uint32  ctx[n_queries]               (query j attends keys
 *                                                 0 .. ctx[j] - 1; 1..T)
 *           float32 Q [n_queries][n_q_heads][d_k] (post-RoPE queries;
 *                                                 head h reads KV head
 *                                                 h / (n_q_heads / n_kv_heads))
 * For MLA's latent: d_k = kv_lora + rope (576), d_v = kv_lora (512), one KV
 * head, Q the absorbed query (q_nope W_UK, then q_rope), the output the
 * latent softmax . c that the worker returns. */
#ifndef ATTND_BENCH_ACCURACY_H
#define ATTND_BENCH_ACCURACY_H

#include <stdint.h>
#include <stdio.h>

#include "attnd/status.h"

typedef struct attnd__acc_case {
    int64_t T;
    int32_t hq, dk, dv, v_in_k;
    double scale;
    const double *k; /* [T][dk] */
    const double *v; /* [T][dv], or k when v_in_k */
    const double *q; /* [hq][dk] */
} attnd__acc_case;

enum {
    ATTND__ACC_TOPK,   /* the engine's rows (runs of head_agg heads) */
    ATTND__ACC_HEAD,   /* a row per query head */
    ATTND__ACC_STREAM, /* sink 64 tokens + the window filling the budget */
    ATTND__ACC_ORACLE, /* per head, the pages of most dense mass */
    ATTND__ACC_RANKS,  /* sequence sharding: each rank its own share */
    ATTND__ACC_B16,    /* the engine's rows on bf16 bounds (the GPU's) */
    ATTND__ACC_NPOL
};
#define ATTND__ACC_NB 5 /* budgets 1/64, 1/32, 1/16, 1/8, 1/4 of the pages */
extern const double attnd__acc_budgets[ATTND__ACC_NB];

typedef struct attnd__acc {
    double recall, recall_min, err, err_max, bytes;
    int64_t n;
} attnd__acc;

/* Zero it before the first attnd__acc_eval. */
typedef struct attnd__acc_table {
    attnd__acc a[ATTND__ACC_NPOL][ATTND__ACC_NB];
} attnd__acc_table;

typedef struct attnd__acc_opts {
    int32_t page_size;
    int32_t ranks;    /* for ATTND__ACC_RANKS */
    int32_t head_agg; /* the engine's run of heads per row (attnd__acc_default_agg) */
} attnd__acc_opts;

/* The engine's default select_head_agg for hq heads on one KV head (G / 8
 * where 8 divides G, else 1), or agg_opt where it divides hq. */
int32_t attnd__acc_default_agg(int32_t hq, int32_t agg_opt);

/* Add case c's figures to *t (see the file comment). Fails
 * (INVALID_ARGUMENT, err says why) where the selection kernel refuses the
 * shape; *t is then unchanged. Allocates scratch, frees it. */
attnd_status attnd__acc_eval(const attnd__acc_case *c, const attnd__acc_opts *o,
                             attnd__acc_table *t, attnd_error *err);

/* The table's rows, as Markdown: | label | policy | 1/B | recall mean (min)
 * | error mean (max) | KV read vs dense |. Header lines when header != 0. */
void attnd__acc_print(FILE *f, const char *label, const attnd__acc_table *t, int header);

/* --load: read the captured-workload file at path, evaluate every record
 * (every KV head, every query) with opts (head_agg 0: the engine's default
 * per record, or agg_opt where it divides), print a table per record and
 * one over the file to f. A bad file (size, magic, version, shape, a
 * non-finite value) fails INVALID_ARGUMENT with err naming the record and
 * field; NOT_FOUND where it cannot be opened. */
attnd_status attnd__acc_load_file(const char *path, const attnd__acc_opts *opts, int32_t agg_opt,
                                  FILE *f, attnd_error *err);

#endif
