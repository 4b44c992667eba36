/* attnd CUDA kernels: paged MLA and GQA decode on Hopper GPUs, the LSE
 * combine, and the TPLA Hadamard rotation. A plain C header (no CUDA
 * headers, no extern "C" tricks needed by callers): streams and device
 * pointers travel as void *. The implementation is the .cu files beside it.
 *
 * ## The decode contract
 *
 * The same function as attnd_kernels.h ("MLA and GQA in one form"), on the
 * GPU, with bf16 queries and KV, float32 accumulation, and bf16 or float32
 * outputs. For query token s of sequence i and query head h, with KV head
 * kvh = h / (Hq / Hkv) (MLA: Hkv = 1):
 *
 *   score[t] = scale * sum_{d < d_k} q[i][s][h][d] * K[kvh][t][d]
 *   lse      = log sum_{t < vis} exp(score[t])                 natural log
 *   out[e]   = sum_{t < vis} exp(score[t] - lse) * V[kvh][t][e]   e < d_v
 *
 * over the tokens t of the page list the head reads, in list order, with
 * vis = L - (S - 1 - s) for S = q_tokens query tokens and L the list's
 * token count (vis <= 0: out = 0, lse = -inf; a non-finite value in what
 * the row attends: out and lse NaN, attnd_kernels.h's non-finite rule,
 * which the CPU kernels follow too). GQA: K and V per KV head,
 * d_k = d_v = head_dim in {64, 128}. MLA (absorbed): one KV head, K = [c,
 * k_rope] with d_k = d_c + 64, V = c (the first d_v = d_c elements of K),
 * d_c in {512, 256, 128} (256 and 128: TPLA latent shards).
 *
 * ## Layouts (all in elements of bf16 unless said; every array contiguous)
 *
 *   q    [n_seqs][q_tokens][Hq][d_k]
 *   out  [n_seqs][q_tokens][Hq][d_v]   of out_dtype (BF16 or F32)
 *   lse  [n_seqs][q_tokens][Hq]        float32, or NULL
 *   pool pool_pages pages, page p at pool + p * page_stride, laid out as
 *        kv (attnd_kernel_kv_layout_mla: [page_size][d_c + d_r], token-major, V
 *        aliasing K; attnd_kernel_kv_layout_gqa: [2][Hkv][page_size][D]); the
 *        layout must be exactly what those two functions produce, dtype
 *        BF16, page_size a multiple of 64; pool 16-byte aligned.
 *
 * ## Page lists (the CSR form of attnd_kernels.h, with head groups)
 *
 * Each sequence has list_groups page lists; list j of sequence i is number
 * li = i * list_groups + j, its pages page_idx[page_indptr[li] ..
 * page_indptr[li + 1]), every page full except the last, which holds
 * last_page_len[li] tokens (1..page_size; ignored for an empty list).
 * list_groups = 1 is the contract's per-sequence form (dense decode, or a
 * sparse policy's page selection per sequence). list_groups > 1 is the
 * gather form per head group: GQA: a divisor of Hkv, list j read by KV heads
 * [j * Hkv / G, (j + 1) * Hkv / G); MLA: a divisor of Hq, list j read by
 * query heads [j * Hq / G, (j + 1) * Hq / G). Entries past a list's end are
 * never read, nor are pages not listed, nor page slots past a list's last
 * token: they may hold anything (NaN included).
 *
 * ## Who owns what
 *
 * The caller owns every buffer of attnd_cuda_batch (device memory from
 * cudaMalloc, bf16 inputs) and the host copies of page_indptr and
 * last_page_len that plan_make reads; device inputs must be complete when
 * the context's stream reaches the decode (write them on that stream, or
 * synchronize: pageable cudaMemcpy on another stream is not enough). A context owns its stream (unless one
 * was given) and nothing else. A plan owns its device metadata and its
 * split-KV workspace (float32 partial states), grown by plan_make only when
 * a batch needs more than any before it; decode_run allocates nothing.
 *
 * ## Plan and run
 *
 * plan_make partitions the batch on the host, from the host copies of
 * page_indptr and last_page_len: each (sequence, list head group) is a
 * stream of 64-token tiles; the plan cuts the streams into work units spread
 * over one persistent CTA per SM (per row block) so that every CTA gets
 * about the same number of tiles plus a fixed cost per unit (long sequences
 * split, short ones packed together), and uploads the units, each with its
 * list's offset in page_idx and token count, on the context's stream. A
 * stream cut into several units writes float32 partial states to the plan's
 * workspace, merged in a fixed order (deterministic for a given plan): by
 * the last of its units to finish (GQA) or by a combine kernel right after
 * the decode (MLA). decode_run enqueues one or two kernels and returns at
 * once (kernel errors surface at attnd_cuda_sync). The same plan may be run
 * again, with other q / pool / page_idx / out pointers, for batches whose
 * page_indptr and last_page_len hold the same values (every layer of a
 * step, say): the kernels read page_idx only, never the device copies of
 * page_indptr and last_page_len (which may be NULL). Results do not depend
 * on the split count beyond float32 rounding. */
#ifndef ATTND_CUDA_H
#define ATTND_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "attnd_kernels.h"

/* ---- context -------------------------------------------------------------- */

typedef struct attnd_cuda_ctx attnd_cuda_ctx;

/* Number of CUDA devices usable here (0 when none, or no driver). */
int32_t attnd_cuda_device_count(void);

/* Create a context on `device` (which must be compute capability 9.x:
 * UNIMPLEMENTED otherwise). stream: a cudaStream_t to enqueue on, or NULL
 * to have the context create (and later destroy) its own non-blocking
 * stream. Caller frees with attnd_cuda_ctx_destroy. */
attnd_status attnd_cuda_ctx_create(int32_t device, void *stream, attnd_cuda_ctx **ctx_p,
                                   attnd_error *err);
/* Synchronize the stream and free the context (not the caller's stream). */
void attnd_cuda_ctx_destroy(attnd_cuda_ctx *ctx);
/* The cudaStream_t every call of this context enqueues on. */
void *attnd_cuda_ctx_stream(const attnd_cuda_ctx *ctx);
int32_t attnd_cuda_ctx_sm_count(const attnd_cuda_ctx *ctx);
/* Wait for the stream; report the first error of anything enqueued. */
attnd_status attnd_cuda_sync(attnd_cuda_ctx *ctx, attnd_error *err);

/* ---- decode --------------------------------------------------------------- */

typedef struct attnd_cuda_batch {
    int32_t n_seqs;
    int32_t q_tokens;    /* S: 1..16 (tested: 1 and 2) */
    int32_t n_q_heads;   /* Hq >= 1 (MLA; tested 1..128), a multiple of Hkv (GQA) */
    int32_t list_groups; /* page lists per sequence (see the file comment) */
    float scale;
    attnd_kernel_kv_layout kv;  /* see "Layouts" */
    int64_t pool_pages;

    /* device pointers */
    const void *q;
    const void *pool;
    const int32_t *page_indptr;   /* [n_seqs * list_groups + 1] (not read: see Plan) */
    const int32_t *page_idx;      /* [page_indptr[last]] */
    const int32_t *last_page_len; /* [n_seqs * list_groups] (not read: see Plan) */
    attnd_dtype out_dtype;        /* ATTND_DTYPE_BF16 or ATTND_DTYPE_F32 */
    void *out;
    float *lse; /* or NULL */
} attnd_cuda_batch;

/* attnd_cuda_plan_opts.splits: */
#define ATTND_CUDA_SPLITS_AUTO 0   /* balance tiles over the SMs */
#define ATTND_CUDA_SPLITS_MAX (-1) /* one 64-token tile per unit */
/* k >= 1: cut every stream into min(k, its tiles) near-equal units. */

typedef struct attnd_cuda_plan_opts {
    int32_t splits;
    int32_t max_ctas; /* 0: one per SM; else at most this many CTAs */
} attnd_cuda_plan_opts;

typedef struct attnd_cuda_plan attnd_cuda_plan;

/* A plan bound to ctx (and its stream); caller frees with
 * attnd_cuda_plan_destroy (which synchronizes the stream). */
attnd_status attnd_cuda_plan_create(attnd_cuda_ctx *ctx, attnd_cuda_plan **plan_p,
                                    attnd_error *err);
void attnd_cuda_plan_destroy(attnd_cuda_plan *plan);

/* Check batch b (shapes, layout, dtypes; pointers only for NULL) and
 * partition it, reading the list lengths from host copies of its
 * page_indptr and last_page_len; opts may be NULL (AUTO). Uploads the units
 * on the stream; may cudaMalloc (growing only). INVALID_ARGUMENT names the
 * bad field; UNIMPLEMENTED for shapes no kernel here handles. */
attnd_status attnd_cuda_plan_make(attnd_cuda_plan *plan, const attnd_cuda_batch *b,
                                  const int32_t *h_page_indptr,
                                  const int32_t *h_last_page_len,
                                  const attnd_cuda_plan_opts *opts, attnd_error *err);

/* Enqueue decode of b (same shape, page_indptr and last_page_len values as
 * the plan's batch). Asynchronous; allocates nothing. The plan's workspace
 * is in use until the decode completes: runs of one plan must stay on its
 * context's stream (they do). */
attnd_status attnd_cuda_decode_run(attnd_cuda_plan *plan, const attnd_cuda_batch *b,
                                   attnd_error *err);

/* Units and CTAs of the last plan_make (for tests and benchmarks). */
int32_t attnd_cuda_plan_units(const attnd_cuda_plan *plan);
int32_t attnd_cuda_plan_ctas(const attnd_cuda_plan *plan);
/* Name of the kernel the plan launches ("mla512", "gqa128x1", ...). */
const char *attnd_cuda_plan_kernel(const attnd_cuda_plan *plan);

/* ---- combine of partial states (sequence-sharded ranks) -------------------
 *
 * For each row r < n_rows, parts p < n_parts of float32 (part_o
 * [n_parts][n_rows][d], part_lse [n_parts][n_rows], natural log, -inf =
 * empty, NaN = poisoned):
 *   lse[r] = log sum_p exp(part_lse[p][r])
 *   out[r] = sum_p exp(part_lse[p][r] - lse[r]) * part_o[p][r]
 * (all parts empty: out 0, lse -inf; any part NaN: out and lse NaN, never
 * dropped), summed in part order. out is
 * [n_rows][d] of out_dtype (BF16 or F32); out_lse may be NULL. d % 4 == 0.
 * Device pointers; asynchronous. */
attnd_status attnd_cuda_combine_states(attnd_cuda_ctx *ctx, int32_t n_parts, int64_t n_rows,
                                       int32_t d, const float *part_o, const float *part_lse,
                                       attnd_dtype out_dtype, void *out, float *out_lse,
                                       attnd_error *err);

/* ---- TPLA Hadamard rotation -------------------------------------------------
 *
 * In place, for each of n_rows rows of dim elements (row r at x + r *
 * row_stride elements), x <- H x / sqrt(dim) with H the Sylvester Hadamard
 * matrix (H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]]): orthonormal and its
 * own inverse. dim a power of two, 2..8192; dtype BF16 or F32 (float32
 * arithmetic, one rounding at the end). Device pointer; asynchronous. */
attnd_status attnd_cuda_hadamard(attnd_cuda_ctx *ctx, attnd_dtype dtype, void *x,
                                 int64_t n_rows, int32_t dim, int64_t row_stride,
                                 attnd_error *err);

/* ---- page selection (sparse policies) ---------------------------------------
 *
 * attnd_kernels.h's page selection ("page selection": Quest scores, the
 * mandatory first n_head and last n_tail candidates, the best of the rest,
 * kept pages in candidate order) on the GPU, for lists laid out on the
 * host by attnd_kernel_select_prepare (its chunk0 and work0; units of
 * ATTND_KERNEL_SELECT_CHUNK candidates) and uploaded. Device pointers: q bf16
 * [n_seqs][q_tokens][Hq][d_k]; bounds bf16 head-major [Hkv][bounds_pages]
 * [2][d_k]; lists [n_lists]; cand_idx; sel_pages (the decode's page_idx,
 * say: each list writes its keep entries from out0); sel_pos (or NULL);
 * work: the floats attnd_kernel_select_prepare asked for, in the same layout as
 * the CPU's (select.c). Scores are float32 sums in another order than the
 * CPU's, so near-ties may resolve differently. With bounds8 (compact
 * bounds laid out as attnd_kernel_kv_bounds8_at says, bounds_pages pages)
 * the scoring is the CPU's on compact bounds instead (attnd_kernels.h:
 * int8 queries, exact integer sums, the same float32 roundings), so the
 * kept pages are exactly the CPU's with the same bounds8; d_k then a
 * multiple of 4 up to ATTND_CUDA_SELECT8_MAX_DK. Asynchronous on the
 * context's stream. */
#define ATTND_CUDA_SELECT8_MAX_DK 1024
typedef struct attnd_cuda_select {
    int32_t n_lists, n_chunks; /* n_chunks: the last list's chunk0 + its chunks */
    const attnd_kernel_select_list *lists;
    int32_t n_seqs, q_tokens, n_q_heads, list_groups;
    int32_t head_agg; /* as attnd_kernel_select_batch.head_agg (0 or 1: per head) */
    attnd_kernel_kv_layout kv;
    const void *q;
    const uint16_t *bounds; /* bf16 bounds, or NULL with bounds8 */
    const uint8_t *bounds8; /* compact bounds, or NULL */
    int64_t bounds_pages;
    const int32_t *cand_idx;
    int32_t *sel_pages, *sel_pos;
    float *work;
    /* optional: [n_chunks], the list of each scoring unit (else the scoring
     * looks it up in lists, a chain of dependent loads per CTA) */
    const int32_t *unit_list;
} attnd_cuda_select;

attnd_status attnd_cuda_select_run(attnd_cuda_ctx *ctx, const attnd_cuda_select *s,
                                   attnd_error *err);

/* Fold appended keys into their pages' bf16 bounds on the GPU, bitwise
 * what attnd_kernel_kv_bounds_add does on the host for bf16 keys: for
 * folds[i], tokens [slot0, slot0 + n) of pool page `page` (the keys as the
 * pool holds them: pool is the device pool of bf16 pages laid out as kv,
 * page_bytes apart), token by token; a fold whose slot0 is 0 starts the
 * page's bounds over first (attnd_kernel_kv_bounds_reset); one of n 0
 * does nothing. folds in device or pinned host memory; no page twice in
 * one call. bounds8 (NULL: none): the folded pages' compact rows are made
 * too, as attnd_cuda_bounds8_make makes them. Asynchronous on the
 * context's stream (after the copies that put the keys there). */
typedef struct attnd_cuda_fold {
    int32_t page, slot0, n, pad;
} attnd_cuda_fold;

attnd_status attnd_cuda_bounds_fold(attnd_cuda_ctx *ctx, const attnd_kernel_kv_layout *kv,
                                    const void *pool, size_t page_bytes, uint16_t *bounds,
                                    uint8_t *bounds8, int64_t bounds_pages,
                                    const attnd_cuda_fold *folds, int32_t n, attnd_error *err);

/* Make the compact bounds of pages[0 .. n) (every KV head; pages in device
 * or pinned host memory) from their bf16 bounds, bitwise what
 * attnd_kernel_kv_bounds8_make makes; bounds and bounds8 device arrays of
 * bounds_pages pages each, laid out as attnd_kernels.h says. No page twice
 * in one call. Asynchronous on the context's stream. */
attnd_status attnd_cuda_bounds8_make(attnd_cuda_ctx *ctx, const attnd_kernel_kv_layout *kv,
                                     const uint16_t *bounds, uint8_t *bounds8,
                                     int64_t bounds_pages, const int32_t *pages, int32_t n,
                                     attnd_error *err);

/* ---- scattered copies ---------------------------------------------------------
 *
 * Copy j < n moves rows rows of row_bytes bytes from src + r * src_pitch to
 * dst + r * dst_pitch (r < rows), all copies in one kernel on the
 * context's stream. dst: device memory; src and copies: device memory or
 * pinned host memory (cudaMallocHost; the kernel reads it over the bus), to
 * stay unchanged until the stream has passed. Copies run in no particular
 * order: their destinations must not overlap. Asynchronous. */
#define ATTND_CUDA_SCATTER_MAX 65535
typedef struct attnd_cuda_copy {
    void *dst;
    const void *src;
    uint64_t dst_pitch, src_pitch; /* bytes */
    uint32_t row_bytes, rows;
} attnd_cuda_copy;

attnd_status attnd_cuda_scatter(attnd_cuda_ctx *ctx, const attnd_cuda_copy *copies, int32_t n,
                                attnd_error *err);

/* ---- token gather (given-tokens lists) ----------------------------------------
 *
 * Copy single tokens of pool (pool_pages pages laid out as kv: bf16,
 * attnd_kernel_kv_layout_mla / _gqa) into whole pages of dst (n_pages
 * pages of the same layout), so that the decode can attend a list of any
 * tokens as a page list over dst. For destination page p < n_pages, head
 * slot h < n_heads and slot s < P (kv->page_size), entry
 * src[(p * n_heads + h) * P + s] = t >= 0 names pool token t (page t / P,
 * slot t % P), copied to slot s of page p: with n_heads 1 the whole token
 * (MLA's row; every KV head's K and V rows for GQA), with n_heads =
 * kv->n_kv_heads (GQA) only KV head h's K and V rows (lists of different
 * KV heads then share pages). t < 0, or t past the pool: the slot is left
 * as it is. src in device memory; pool and dst device memory, 16-byte
 * aligned, not overlapping; at most 2^31 pool tokens. Asynchronous on the
 * context's stream. */
attnd_status attnd_cuda_gather(attnd_cuda_ctx *ctx, const attnd_kernel_kv_layout *kv,
                               const void *pool, int64_t pool_pages, void *dst, int64_t n_pages,
                               int32_t n_heads, const int32_t *src, attnd_error *err);

#endif /* ATTND_CUDA_H */
