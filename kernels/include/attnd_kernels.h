/* attnd kernels: the attention math, and the one public header of kernels/.
 *
 * Everything here is pure computation over caller-owned memory: no I/O, no
 * allocation in the decode path, and no threads but those of an
 * attnd_kernel_pool (which owns them). The worker owns sessions and pages;
 * these functions only see a pool base pointer, page lists and strides.
 *
 * ## The decode contract (MLA and GQA in one form)
 *
 * Both kinds are "attention of Hq query heads over Hkv KV heads", query head
 * h reading KV head h / (Hq / Hkv):
 *
 *   score[h][t] = scale * sum_d q[h][d] * K[kvh][t][d]          d < d_k
 *   lse[h]      = log sum_t exp(score[h][t])                   natural log
 *   out[h][e]   = sum_t exp(score[h][t] - lse[h]) * V[kvh][t][e] e < d_v
 *
 *   GQA: K and V are separate per KV head, d_k = d_v = head dim.
 *   MLA (absorbed): one KV head; K = [c, k_rope] (d_k = d_c + d_r), and V is
 *   the latent c itself, i.e. the first d_v = d_c elements of K. The query's
 *   nope part has already been multiplied by W_UK; the caller applies W_UV.
 *
 * A sequence with no tokens has lse = -inf and out = 0 (the identity of the
 * merge below). Accumulation is float32; outputs are float32.
 *
 * ## Non-finite values (one rule on every path: scalar, SIMD, CUDA)
 *
 * Stored KV and queries are normally finite (the service rejects
 * non-finite tensors on the wire); whatever is stored, every path agrees:
 *   - a query row (query token s, head h) whose computation meets a
 *     non-finite value comes back with every out element NaN and lse NaN:
 *     a score that is NaN or +-inf (a non-finite element of its query, or
 *     of the K of a token it attends, or an overflowing dot product), or a
 *     non-finite output element (a non-finite V element of a token it
 *     attends, or an overflowing sum);
 *   - nothing a row does not attend (tokens past its visible length, other
 *     KV heads, other sequences, unlisted pages) affects it, whatever it
 *     holds;
 *   - a row that sees no token has out 0 and lse -inf ("no KV"), and only
 *     such a row: a non-empty row never comes back as 0 / -inf;
 *   - merging partial states carries NaN: a NaN part makes the union NaN
 *     (split-KV inside a rank, sequence-sharded ranks, the CUDA combines).
 *
 * ## Paged KV
 *
 * KV lives in pages of page_size tokens inside one pool. For page p (its
 * physical number), KV head h, token slot t of the page and dim d, in
 * elements of layout->dtype from `pool`:
 *   K: p*page_stride +            h*k_head_stride + t*k_token_stride + d
 *   V: p*page_stride + v_offset + h*v_head_stride + t*v_token_stride + d
 * MLA pages are [page_size][d_c + d_r] with V aliasing K (v_offset 0);
 * GQA pages are [2][Hkv][page_size][D] (K block, then V block: each KV head's
 * tokens contiguous).
 *
 * A batch names, per sequence, a list of pages (page_indptr/page_idx, CSR
 * form) whose tokens are attended in list order: every listed page is full
 * except the last, which holds last_page_len[i] tokens (1..page_size). A
 * dense decode lists a session's whole page table; a sparse policy lists the
 * pages it keeps (the last one partial only if it is the session's tail).
 * GQA may give each group of KV heads a list of its own (list_groups below:
 * a policy that selects pages per KV head); the lists of one sequence may
 * then differ in pages and lengths.
 *
 * Multi-token queries (q_tokens = S > 1, speculative decode): query token s
 * attends to the first L - (S - 1 - s) listed tokens, L the listed total.
 */
#ifndef ATTND_KERNELS_H
#define ATTND_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "attnd/status.h"
#include "attnd/types.h"
#include "attnd_dtype.h"

/* ---- KV page layout --------------------------------------------------- */

typedef struct attnd_kernel_kv_layout {
    attnd_dtype dtype;
    int32_t page_size;  /* tokens per page */
    int32_t n_kv_heads; /* 1 for MLA */
    int32_t d_k;
    int32_t d_v;
    int32_t v_in_k;     /* 1: V is the first d_v elements of K (MLA) */
    int64_t page_stride; /* all strides in elements */
    int64_t k_head_stride, k_token_stride;
    int64_t v_offset, v_head_stride, v_token_stride;
} attnd_kernel_kv_layout;

/* Fill *l for MLA pages [page_size][d_c + d_r]. */
void attnd_kernel_kv_layout_mla(attnd_kernel_kv_layout *l, int32_t d_c, int32_t d_r,
                                int32_t page_size, attnd_dtype dtype);
/* Fill *l for GQA pages [2][n_kv_heads][page_size][head_dim]. */
void attnd_kernel_kv_layout_gqa(attnd_kernel_kv_layout *l, int32_t n_kv_heads,
                                int32_t head_dim, int32_t page_size,
                                attnd_dtype dtype);
size_t attnd_kernel_kv_layout_page_bytes(const attnd_kernel_kv_layout *l);
/* Elements of one token's wire entry: MLA d_k; GQA 2 * Hkv * D. */
int64_t attnd_kernel_kv_layout_token_elems(const attnd_kernel_kv_layout *l);
/* The token view of layout l: the same pool read as pages of one token, so
 * that a list of tokens is a page list (given-tokens policies). Token slot
 * of page p is view page p * ratio + slot, ratio = *ratio_p = page_stride /
 * k_token_stride; pool_pages becomes pool_pages * ratio. 0 (nothing set)
 * when l's token rows cannot be addressed so (they can for both layouts
 * above). */
int attnd_kernel_kv_layout_token_view(const attnd_kernel_kv_layout *l, attnd_kernel_kv_layout *view,
                                      int64_t *ratio_p);

/* Store n tokens given in wire form ([n][token_elems] of src_t, MLA
 * [c, k_rope], GQA [2][Hkv][D]) into `page` at token slots slot..slot+n-1,
 * converting to l->dtype. Requires slot + n <= page_size. */
void attnd_kernel_kv_write_tokens(const attnd_kernel_kv_layout *l, void *page, int32_t slot,
                                  int32_t n, attnd_dtype src_t, const void *src);

/* ---- decode ------------------------------------------------------------ */

typedef struct attnd_kernel_decode_batch {
    int32_t n_seqs;
    int32_t q_tokens;  /* S >= 1 query tokens per sequence */
    int32_t n_q_heads; /* Hq, a multiple of kv->n_kv_heads */
    float scale;

    /* Queries [n_seqs][q_tokens][Hq][d_k] of q_dtype, contiguous. */
    attnd_dtype q_dtype;
    const void *q;

    /* Paged KV (see the file comment). */
    const attnd_kernel_kv_layout *kv;
    const void *pool;
    int64_t pool_pages;           /* pages in the pool: bound for page_idx */
    const int32_t *page_indptr;   /* [n_seqs + 1] */
    const int32_t *page_idx;      /* [page_indptr[n_seqs]] */
    const int32_t *last_page_len; /* [n_seqs] */
    /* Lists per sequence. 0 or 1: list i, read by every KV head. GQA: a
     * divisor G of n_kv_heads, list i * G + j read by KV heads
     * [j * Hkv / G, (j + 1) * Hkv / G) (attnd_kernel_decode_list); page_indptr
     * then has n_seqs * G + 1 entries and last_page_len n_seqs * G. MLA
     * (one KV head): 0 or 1. */
    int32_t list_groups;

    /* Outputs, float32: out [n_seqs][q_tokens][Hq][d_v]; lse
     * [n_seqs][q_tokens][Hq] or NULL when not wanted. */
    float *out;
    float *lse;

    /* Scratch of attnd_kernel_decode_work_floats(b) floats for the calling thread
     * of attnd_kernel_decode (float32 query rows, one KV tile, scores,
     * softmax state, unnormalized output rows); any alignment. */
    float *work;
} attnd_kernel_decode_batch;

/* Floats of scratch one thread needs to run this batch's work units on any
 * path (the largest of the paths' needs, alignment slack included). */
size_t attnd_kernel_decode_work_floats(const attnd_kernel_decode_batch *b);

/* Check the batch's shapes, strides and page lists against each other
 * (pages are not dereferenced). Fills err naming the field on failure. */
attnd_status attnd_kernel_decode_batch_check(const attnd_kernel_decode_batch *b,
                                             attnd_error *err);

/* Decode attention for the whole batch on the calling thread with the best
 * path this machine has (see attnd_kernel_path_name), one unsplit work unit
 * per (sequence, KV head); every path computes the same function as the
 * scalar one below, within float32 rounding (avx512bf16: within the bf16
 * rounding of P, see below). b->work must hold
 * attnd_kernel_decode_work_floats(b) floats (enough for every path). For threads
 * and split-KV see attnd_kernel_decode_parallel below. */
void attnd_kernel_decode(const attnd_kernel_decode_batch *b);
/* Name of the path attnd_kernel_decode uses ("scalar", "avx2", "avx512",
 * "avx512bf16"). attnd_kernel_path_select (below) forces a path; without
 * it the environment variable ATTND_KERNEL_PATH does, for tests and
 * benchmarks ("auto": as unset; "exact" as below); an unknown name, or one
 * this CPU cannot run, falls back to scalar with a note on stderr. */
const char *attnd_kernel_path_name(void);

/* Decode attention for the whole batch on the calling thread, with the
 * portable scalar path: one pass over each KV head's tokens per query group
 * (all query heads of a KV head read each K/V row together), online
 * softmax, float32 accumulation. The batch must pass the check above. */
void attnd_kernel_decode_scalar(const attnd_kernel_decode_batch *b);

/* Partial states over listed-token range [t0, t1) of sequence i, KV head
 * kvh, query token s: writes the Hq/Hkv heads' out rows (stride d_v) and
 * lse. The unit of work a split-KV scheduler hands out; the token range is
 * in list order (page j of the list covers [j*page_size, ...)). Multi-token
 * causality applies against the sequence's full listed length. lse may be
 * NULL; work is attnd_kernel_decode_work_floats(b) floats of scratch. */
void attnd_kernel_decode_range_scalar(const attnd_kernel_decode_batch *b, int32_t i,
                                      int32_t kvh, int32_t s, int64_t t0,
                                      int64_t t1, float *out, float *lse,
                                      float *work);

/* Index of the page list KV head kvh of sequence i reads. */
static inline int32_t attnd_kernel_decode_list(const attnd_kernel_decode_batch *b, int32_t i,
                                               int32_t kvh)
{
    int32_t g = b->list_groups > 1 ? b->list_groups : 1;
    return i * g + (g > 1 ? kvh / (b->kv->n_kv_heads / g) : 0);
}
/* Tokens listed for KV head kvh of sequence i, and how many of them query
 * token s sees. */
int64_t attnd_kernel_decode_seq_len(const attnd_kernel_decode_batch *b, int32_t i, int32_t kvh);
int64_t attnd_kernel_decode_visible_len(const attnd_kernel_decode_batch *b, int32_t i,
                                        int32_t kvh, int32_t s);

/* ---- kernel paths (run-time dispatch) ------------------------------------
 *
 * One implementation of the decode math per instruction set, chosen at run
 * time from CPUID (and XGETBV: the OS must save the vector state):
 *   scalar      portable C, the reference the others are tested against;
 *   avx2        AVX2 + FMA + F16C, 8 float32 lanes;
 *   avx512      AVX-512 F/BW/VL/DQ, 16 float32 lanes;
 *   avx512bf16  avx512 + AVX512_BF16: for bf16 KV (d_v a multiple of 32)
 *               both small GEMMs on vdpbf16ps (two bf16 products per
 *               float32 lane). K is never widened; a bf16 query is used as
 *               is, any other split into two bf16 halves (hi + lo, ~2^-17
 *               relative), so scores and lse stay within float32 rounding;
 *               P is rounded to bf16 for P V (outputs within ~1e-3
 *               normwise relative, the bf16 bounds of the tests), relative
 *               to each tile's own max so that split counts still agree to
 *               float32 rounding. Other KV: the avx512 unit.
 * The float32 paths widen KV to float32 and multiply-add in float32. The
 * default is the widest float32 path the CPU runs, or avx512bf16 where a
 * one-time calibration (about a millisecond, on first use) measures
 * vdpbf16ps at >= 1.25x float32 FMA on this core (AMD EPYC: 2x; the Intel
 * development VM: 0.5x, see kernels/BENCHMARKS.md). The SIMD paths fold
 * scale * log2(e) into the query (avx512bf16: into the scores), use exp2,
 * and block work in tiles of ATTND_KERNEL_DECODE_TILE tokens: per tile S = Q K^T
 * as a small GEMM, the online softmax, then O += P V. */

typedef enum attnd_kernel_path {
    ATTND_KERNEL_PATH_SCALAR = 0,
    ATTND_KERNEL_PATH_AVX2 = 1,
    ATTND_KERNEL_PATH_AVX512 = 2,
    ATTND_KERNEL_PATH_AVX512_BF16 = 3,
    ATTND_KERNEL_PATH_COUNT
} attnd_kernel_path;

/* "scalar", "avx2", "avx512", "avx512bf16" (or "?" out of range). */
const char *attnd_kernel_path_str(attnd_kernel_path p);
/* 1 when this build and this CPU can run path p, else 0. */
int attnd_kernel_path_supported(attnd_kernel_path p);
/* The path decode calls use now (resolved on first use). */
attnd_kernel_path attnd_kernel_path_current(void);
/* Drop any attnd_kernel_path_select, resolve the path again from
 * ATTND_KERNEL_PATH and the CPU, as on first use, and return it. For tests
 * and benchmarks that set the variable; a decode already running keeps the
 * path it started with. */
attnd_kernel_path attnd_kernel_path_reset(void);
/* Force the process's path by name (the engine's --kernel-path), above
 * ATTND_KERNEL_PATH: "auto" (or NULL / ""): the default choice above;
 * "exact": the widest float32 path (never avx512bf16: results within
 * float32 rounding of the scalar path on any host); a path name: that
 * path. INVALID_ARGUMENT naming the paths this CPU runs when the name is
 * unknown or the CPU cannot run it (nothing changes). */
attnd_status attnd_kernel_path_select(const char *name, attnd_error *err);
/* One line for logs: the current path, how it was chosen, and the
 * calibration's figures where it ran, e.g. "avx512 (auto; one core:
 * vdpbf16ps 86 GFLOP/s, float32 FMA 175 GFLOP/s)". */
void attnd_kernel_path_describe(char *buf, size_t n);

/* ---- threads, plan and run (split-KV) -------------------------------------
 *
 * A batch is cut into work units (sequence, KV head, listed-token range
 * [t0, t1)); a unit computes the partial state of all S * Hq/Hkv query rows
 * of its KV head over its range, reading each K/V row of the range once.
 * The plan (attnd_kernel_decode_plan_make) only partitions; the run hands units to
 * the threads of a pool, longest first, and each thread computes tiles with
 * the current path and its own pre-allocated scratch. A (sequence, KV head)
 * cut into several ranges writes partial states to the plan's buffers; the
 * thread that finishes the group's last unit merges them in range order with
 * attnd_kernel_merge_states (deterministic for a given plan, whatever thread
 * ran what) into out/lse. Unsplit units write out/lse directly. */

/* Tokens per tile; split boundaries fall on multiples of it. */
#define ATTND_KERNEL_DECODE_TILE 16
/* attnd_kernel_decode_plan_opts.splits: choose from the batch and thread count. */
#define ATTND_KERNEL_DECODE_SPLITS_AUTO 0
/* attnd_kernel_decode_plan_opts.splits: one tile per unit (the most there can be). */
#define ATTND_KERNEL_DECODE_SPLITS_MAX (-1)

/* A fixed set of threads for decode. The thread that calls a run is one of
 * them, so n threads start n - 1 workers. Runs on one pool are serialized
 * (a caller waits for the run in flight to end), so several server threads
 * may share one pool without oversubscribing the cores; workers never take
 * a caller's locks, so a caller may hold its own while it waits. Workers
 * block on a condition variable between runs. */
typedef struct attnd_kernel_pool attnd_kernel_pool;

/* Create a pool of n_threads (0: one per online CPU; at most 1024). The
 * pool owns its threads, their scratch and a plan for
 * attnd_kernel_decode_parallel; caller frees with attnd_kernel_pool_destroy. */
attnd_status attnd_kernel_pool_create(int32_t n_threads, attnd_kernel_pool **pool_p,
                                      attnd_error *err);
/* Join the workers and free the pool. No run may be in flight. */
void attnd_kernel_pool_destroy(attnd_kernel_pool *pool);
int32_t attnd_kernel_pool_threads(const attnd_kernel_pool *pool);

typedef struct attnd_kernel_decode_plan_opts {
    int32_t n_threads; /* threads that will run the plan (>= 1) */
    /* ATTND_KERNEL_DECODE_SPLITS_AUTO: cut (sequence, KV head) pairs into ranges
     * of at most a quarter of one thread's share of the batch's tokens
     * (and at least 256 tokens), so that a long sequence is spread over
     * the threads and short ones stay whole; one thread never splits.
     * k >= 1: cut each pair into min(k, tiles) ranges of whole tiles;
     * ATTND_KERNEL_DECODE_SPLITS_MAX: one tile per range. */
    int32_t splits;
} attnd_kernel_decode_plan_opts;

typedef struct attnd_kernel_decode_unit {
    int32_t seq, kv_head;
    int64_t t0, t1; /* listed-token range [t0, t1) */
    int32_t group;  /* split group, or -1: the unit writes out/lse itself */
    int32_t part;   /* partial-state slot when group >= 0 */
} attnd_kernel_decode_unit;

typedef struct attnd_kernel_decode_group {
    int32_t seq, kv_head;
    int32_t first_part, n_parts; /* its units' slots, in range order */
} attnd_kernel_decode_group;

/* A partition of one batch into work units, plus the buffers its split
 * groups need. Caller-owned: attnd_kernel_decode_plan_init before first use,
 * attnd_kernel_decode_plan_cleanup after; attnd_kernel_decode_plan_make reuses the arrays
 * and grows them only when a batch needs more, so steady-state decode does
 * not allocate. */
typedef struct attnd_kernel_decode_plan {
    int32_t n_units, n_groups, n_parts;
    int32_t rows;       /* query rows per unit: q_tokens * Hq / Hkv */
    int32_t d_v;
    attnd_kernel_decode_unit *units;   /* [n_units], longest first */
    attnd_kernel_decode_group *groups; /* [n_groups] */
    int32_t *pending;           /* [n_groups] run state: units not done */
    float *part_out;            /* [n_parts][rows][d_v] */
    float *part_lse;            /* [n_parts][rows] */
    size_t cap_units, cap_groups, cap_pending, cap_part_out, cap_part_lse;
} attnd_kernel_decode_plan;

void attnd_kernel_decode_plan_init(attnd_kernel_decode_plan *plan);
void attnd_kernel_decode_plan_cleanup(attnd_kernel_decode_plan *plan);
/* Partition batch b (which must pass attnd_kernel_decode_batch_check) for
 * opts->n_threads threads. Only page_indptr and last_page_len are read. On
 * failure (RESOURCE_EXHAUSTED, or INVALID_ARGUMENT for bad opts) the plan
 * holds no units. */
attnd_status attnd_kernel_decode_plan_make(attnd_kernel_decode_plan *plan,
                                           const attnd_kernel_decode_batch *b,
                                           const attnd_kernel_decode_plan_opts *opts,
                                           attnd_error *err);
/* Run a plan made for batch b (same sequences and lengths) on the pool's
 * threads with the current path; returns when out/lse are complete. b->work
 * is not used (each thread has its own scratch, grown here when a batch
 * needs more: RESOURCE_EXHAUSTED if that fails, with nothing computed). */
attnd_status attnd_kernel_decode_run(attnd_kernel_pool *pool,
                                     attnd_kernel_decode_plan *plan,
                                     const attnd_kernel_decode_batch *b,
                                     attnd_error *err);
/* Plan (ATTND_KERNEL_DECODE_SPLITS_AUTO, into the pool's own plan) and run. */
attnd_status attnd_kernel_decode_parallel(attnd_kernel_pool *pool,
                                          const attnd_kernel_decode_batch *b,
                                          attnd_error *err);

/* ---- partial-state merge (the LSE combine) ------------------------------ */

/* Merge state b into state a, row by row, for n_rows rows of d elements:
 *   lse = log(exp(lse_a) + exp(lse_b))
 *   o_a = exp(lse_a - lse) o_a + exp(lse_b - lse) o_b
 * A row with lse -inf is empty and merging it changes nothing; a row with
 * lse NaN on either side is poisoned: o_a and lse_a become NaN. */
void attnd_kernel_merge_states(float *o_a, float *lse_a, const float *o_b,
                               const float *lse_b, int64_t n_rows, int32_t d);

/* ---- normalized Walsh-Hadamard rotation (TPLA) --------------------------- */

/* 1 when n is a power of two (the sizes the transform below accepts). */
int attnd_kernel_fwht_supported(int32_t n);
/* x <- H_n x / sqrt(n) in place, n a power of two: an orthonormal,
 * symmetric rotation, hence its own inverse. */
void attnd_kernel_fwht_f32(float *x, int32_t n);

/* ---- float64 reference ------------------------------------------------- */

/* Unpaged attention in float64, the oracle tests and demos check against.
 * q [hq][dk], k [t][hkv][dk], v [t][hkv][dv], out [hq][dv], lse [hq]
 * (lse may be NULL). t == 0 gives out 0, lse -inf. */
void attnd_kernel_ref_attention_f64(int32_t hq, int32_t hkv, int32_t dk, int32_t dv,
                                    int64_t t, double scale, const double *q,
                                    const double *k, const double *v, double *out,
                                    double *lse);

/* ---- page selection (sparse policies: Quest top-k pages) -----------------
 *
 * Key bounds. Every page carries, per KV head, the element-wise bounds of
 * the keys written into it, lo[d] <= K[t][d] <= hi[d] for each of its
 * tokens t, as bf16 rounded outward (lo toward -inf, hi toward +inf: they
 * bound the stored keys whatever the KV dtype). An array of bounds for
 * bounds_pages pages is head-major, [n_kv_heads][bounds_pages][2][d_k]
 * uint16 (the lo row, then the hi row), so that one KV head's selection
 * reads its pages' bounds as one stream when the pages are consecutive. An
 * empty page has lo = +inf, hi = -inf. Keeping them costs 2 * d_k * 2
 * bytes per page and KV head: 1/32 of a 64-token bf16 MLA page, 1/64 of a
 * GQA one (K and V).
 *
 * Scores. For query row r (a query token and head reading KV head kvh):
 *   ub[r][p]  = sum_d max(q[r][d] lo[p][kvh][d], q[r][d] hi[p][kvh][d])
 * bounds q[r] . k from above for every key k of page p (Quest). With
 * head_agg = A > 1 a row is instead a query token and a run of A
 * consecutive heads of one KV head, q[r] = sum_{j < A} q[s][kvh G + a A + j]
 * (G = Hq / Hkv, run a): ub[r][p] then bounds the heads' summed score
 * sum_j q_j . k (max is subadditive, so it is also at most the sum of the
 * heads' own bounds), and a KV head has q_tokens G / A rows instead of
 * q_tokens G: A times less scoring, one row per KV head and token with
 * A = G (for MLA, one for the whole layer). The rows R
 * of a list (every query token and head of its KV heads) rank a page by
 *   score[p] = max_{r in R} (ub[r][p] - max_{p'} ub[r][p'])     (<= 0)
 * how close the page can come to a row's best page, for the row it suits
 * best; with one row this is Quest's order. A NaN bound scores +inf.
 *
 * Selection. A list of n candidates (physical pages, in sequence order)
 * keeps its first n_head and last n_tail candidates whatever their scores
 * (the sink pages, the pages of the newest tokens), then of the others the
 * keep - n_head - n_tail best (ties: earlier candidate first), and writes
 * the kept pages in candidate order, so the result is a page list for the
 * decode contract (the last candidate is the sequence's tail page). */

/* Candidates per scoring unit (attnd_kernel_select_list.chunk0 counts them; the
 * CUDA selection scores the same units). */
#define ATTND_KERNEL_SELECT_CHUNK 128

/* uint16 elements of one page's bounds: n_kv_heads * 2 * d_k. */
size_t attnd_kernel_kv_bounds_elems(const attnd_kernel_kv_layout *l);
/* Where the lo row of KV head h of page p starts in an array of
 * bounds_pages pages (the hi row follows it). */
static inline size_t attnd_kernel_kv_bounds_at(const attnd_kernel_kv_layout *l,
                                               int64_t bounds_pages, int32_t h, int64_t p)
{
    return ((size_t)h * (size_t)bounds_pages + (size_t)p) * 2 * (size_t)l->d_k;
}
/* Make page p's bounds empty (before its first token is folded in). */
void attnd_kernel_kv_bounds_reset(const attnd_kernel_kv_layout *l, uint16_t *bounds,
                                  int64_t bounds_pages, int64_t p);
/* Fold n wire-form tokens ([n][token_elems] of src_t, as for
 * attnd_kernel_kv_write_tokens) into page p's bounds, each key first rounded to
 * l->dtype as the page stores it. */
void attnd_kernel_kv_bounds_add(const attnd_kernel_kv_layout *l, uint16_t *bounds,
                                int64_t bounds_pages, int64_t p, int32_t n, attnd_dtype src_t,
                                const void *src);

/* Compact (8-bit) key bounds, what the CPU selection reads: per page and
 * KV head a row of attnd_kernel_kv_bounds8_row bytes, [float off][float
 * step][lo codes: d_k uint8][hi codes: d_k uint8] (padded to 8 bytes),
 * standing for the bounds off + step c. They are made from the bf16 bounds
 * above (attnd_kernel_kv_bounds8_make) and rounded outward again: step is a
 * power of two and off a multiple of it, so every off + step c is exact in
 * float32, and lo codes are floor((lo - off) / step), hi codes ceil(...):
 * they bound whatever the bf16 bounds bound, within one step (step <
 * 2 (max hi - min lo) / 255 but at least 2^-16 of the largest magnitude).
 * A row of an empty page, or one with an infinite or huge (>= 2^100)
 * bound, has step NaN: its every score is NaN, ranked +inf (always chosen),
 * as the bf16 bounds of such a page score. Half the bytes of bf16 bounds
 * (264 against 512 per page and KV head for d_k 128). On these the CPU
 * kernels score a row with exact integer sums, its query rounded up to
 * int8 steps of max |q| / 127 (kernels/cpu/select_int.h):
 *   ub[r][p] = off Q_r + step sq_r sum_i c_i ceil(q'_r,i / sq_r)
 * (q' = [min(q, 0) | max(q, 0)] against [lo codes | hi codes], Q_r the
 * sum of q_r), at or above the Quest score of the same bounds (codes are
 * >= 0), so still an upper bound of q . k on the page, a little looser.
 * Array layout head-major like the bf16 bounds: [n_kv_heads][bounds_pages]
 * [row]. */
size_t attnd_kernel_kv_bounds8_row(const attnd_kernel_kv_layout *l);
/* Where the row of KV head h of page p starts (bytes). */
static inline size_t attnd_kernel_kv_bounds8_at(const attnd_kernel_kv_layout *l,
                                                int64_t bounds_pages, int32_t h, int64_t p)
{
    return ((size_t)h * (size_t)bounds_pages + (size_t)p) * attnd_kernel_kv_bounds8_row(l);
}
/* Make page p's compact bounds (every KV head) from its bf16 bounds; both
 * arrays hold bounds_pages pages. */
void attnd_kernel_kv_bounds8_make(const attnd_kernel_kv_layout *l, const uint16_t *bounds,
                                  uint8_t *bounds8, int64_t bounds_pages, int64_t p);

/* One selection problem: the rows of (sequence seq, KV head group group)
 * choosing among candidates cand_idx[cand0 .. cand0 + n_cand). */
typedef struct attnd_kernel_select_list {
    int32_t seq, group;   /* group: KV heads [group * Hkv / G, (group+1) * Hkv / G) */
    int32_t cand0, n_cand;
    int32_t keep;         /* pages kept: n_head + n_tail <= keep <= n_cand */
    int32_t n_head, n_tail;
    int32_t out0;         /* its keep pages go to sel_pages[out0 ..] */
    int32_t chunk0;       /* set by attnd_kernel_select_prepare (scoring units) */
    int64_t work0;        /* set by attnd_kernel_select_prepare (its scratch) */
} attnd_kernel_select_list;

/* Scoring units of list sl (ATTND_KERNEL_SELECT_CHUNK candidates each):
 * none when its mandatory pages fill the budget or every candidate is
 * kept. kernels/cuda/select.cu's device code has the same rule (chunks_of). */
static inline int32_t attnd_kernel_select_list_units(const attnd_kernel_select_list *sl)
{
    if (sl->keep >= sl->n_cand || sl->keep <= sl->n_head + sl->n_tail)
        return 0;
    return (sl->n_cand + ATTND_KERNEL_SELECT_CHUNK - 1) / ATTND_KERNEL_SELECT_CHUNK;
}

typedef struct attnd_kernel_select_batch {
    int32_t n_lists;
    attnd_kernel_select_list *lists; /* [n_lists]; chunk0, work0 written by prepare */
    int32_t n_seqs;           /* bound for lists[].seq */
    int32_t q_tokens;
    int32_t n_q_heads;
    int32_t list_groups;      /* G: 1, or a divisor of n_kv_heads (GQA) */
    int32_t head_agg;         /* 0 or 1: a row per query head; else a divisor of
                                 n_q_heads / n_kv_heads: that many heads summed
                                 into one row (see "Scores" above) */
    attnd_dtype q_dtype;
    const void *q;            /* [n_seqs][q_tokens][Hq][d_k], as decode */
    const attnd_kernel_kv_layout *kv;
    const uint16_t *bounds;   /* [Hkv][bounds_pages][2][d_k] */
    const uint8_t *bounds8;   /* NULL, or the same pages' compact bounds: the
                                 CPU kernels then score with these (bounds
                                 is not read; the CUDA selection reads
                                 bf16 bounds only) */
    int64_t bounds_pages;     /* its pages: bound for cand_idx */
    const int32_t *cand_idx;  /* physical pages */
    int32_t *sel_pages;       /* outputs: physical pages, candidate order */
    int32_t *sel_pos;         /* NULL, or their candidate positions */
    float *work;              /* attnd_kernel_select_prepare's floats of scratch */
} attnd_kernel_select_batch;

/* Check the batch (shapes, list ranges, candidate pages in range; bounds
 * and q are not read) and lay out its scratch: returns the floats b->work
 * must hold, or -1 with err naming the field. */
int64_t attnd_kernel_select_prepare(attnd_kernel_select_batch *b, attnd_error *err);
/* Score and select on the calling thread (after prepare). */
void attnd_kernel_select(const attnd_kernel_select_batch *b);
/* The same on the pool's threads: page chunks of every list scored in
 * parallel, then the lists selected in parallel. RESOURCE_EXHAUSTED if the
 * threads' scratch cannot grow (nothing selected). */
attnd_status attnd_kernel_select_parallel(attnd_kernel_pool *pool,
                                          const attnd_kernel_select_batch *b, attnd_error *err);

#endif /* ATTND_KERNELS_H */
