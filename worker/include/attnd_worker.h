/* attnd worker engine: the public header of worker/.
 *
 * The engine holds one model's KV cache for many sessions in a paged pool and
 * answers attention over it. It knows nothing of gRPC: the service decodes
 * and validates wire messages, then calls these functions with plain
 * pointers. Every function here is thread-safe; calls on different sessions
 * run concurrently, calls on one session are serialized by its lock.
 *
 * Ownership: the engine owns its pool, sessions and page tables. Callers own
 * every buffer they pass in; the engine copies what it keeps. Output buffers
 * of attnd_engine_attend live in the caller's attnd_engine_ws.
 */
#ifndef ATTND_WORKER_H
#define ATTND_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include "attnd/status.h"
#include "attnd/types.h"
#include "attnd_kernels.h"

/* ---- model presets ------------------------------------------------------ */

typedef struct attnd_model_spec {
    const char *name;
    attnd_attn_kind kind;
    int32_t n_layers;
    int32_t n_q_heads;
    int32_t n_kv_heads; /* 1 for MLA */
    int32_t head_dim;   /* GQA; 0 for MLA */
    int32_t d_latent;   /* MLA d_c; 0 for GQA */
    int32_t d_rope;     /* MLA d_r; 0 for GQA */
    float scale;        /* softmax scale, as the model defines it */
    attnd_dtype kv_dtype;
} attnd_model_spec;

/* The preset named `name`, or NULL. Presets are static; never freed. */
const attnd_model_spec *attnd_model_find(const char *name);
/* Preset i for i < attnd_model_count(), for listing. */
size_t attnd_model_count(void);
const attnd_model_spec *attnd_model_at(size_t i);
/* Per-token query width d_k, output width d_v, and wire KV entry size. */
int32_t attnd_model_d_k(const attnd_model_spec *m);
int32_t attnd_model_d_v(const attnd_model_spec *m);
int64_t attnd_model_kv_token_elems(const attnd_model_spec *m);

/* ---- engine --------------------------------------------------------------- */

typedef struct attnd_engine attnd_engine;

typedef struct attnd_engine_config {
    attnd_model_spec model;  /* copied; kv_dtype is what the pool stores */
    int32_t page_size;       /* tokens per page; default 64 */
    uint64_t kv_memory;      /* bytes of KV pages the engine may hold */
    uint32_t max_sessions;
    /* Threads of the engine's one kernel pool (attnd_kernel_pool), counting
     * the calling thread: 0 = one per online CPU, 1 = compute on the
     * calling thread only. Attend calls from several threads share the
     * pool and take turns on it (each batch gets all its threads), so the
     * kernels never run more than this many threads at once. */
    int32_t kernel_threads;
    /* The CPU kernels' path (attnd_kernel_path_select, process-wide): ""
     * leaves ATTND_KERNEL_PATH or the default; "auto" the default; else a
     * path name ("avx512", "avx512bf16", ...). Creating fails with
     * INVALID_ARGUMENT when this CPU cannot run it. */
    char kernel_path[16];
    /* 1: a background thread faults the whole host pool in from the start
     * (attnd_kv_pool_prefault_start); 0 (default): pages are faulted in by
     * the appends that first write them. Measured on the 2-vCPU VM,
     * llama3-8b, 2 GiB of prefill into a 4 GiB pool: 0.55 GB/s with the
     * pool prefaulted vs 0.42 GB/s without, and no first-touch stalls in
     * decode; but a prefill that starts while the prefault still runs
     * competes with it (0.14 vs 0.49 GB/s, stalls of 0.3-2.4 s), and the
     * whole pool is resident at once. */
    int prefault;
    /* How topk-pages scores pages (worker/SPARSE.md, "Page selection"): a
     * scoring row is a query token and a run of this many query heads of
     * one KV head, their queries summed. 1: a row per query head (Quest's
     * bound per head, the engine's rule before 2026-12-05; 19-23% of an MLA
     * sparse call at a 1/8 budget and 128K on the 2-vCPU VM); else a
     * divisor of n_q_heads / n_kv_heads (INVALID_ARGUMENT otherwise); 0
     * (default): the longest runs that leave 8 rows per KV head and token,
     * G / 8 heads where 8 divides G = n_q_heads / n_kv_heads, else 1 (a row
     * per head): DeepSeek-V3 16 (8 rows, 1/16 of the per-head scoring),
     * Kimi-K2 8, the GQA presets 1. */
    int32_t select_head_agg;
    /* Where KV pages live and attention runs: "cpu" (or "") for host memory
     * and the CPU kernels; "cuda:N" (or "cuda" = cuda:0) for one
     * cudaMalloc on CUDA device N and kernels/cuda (bf16 KV, page_size a
     * multiple of 64, MLA d_latent 512/256/128 with d_rope 64 or GQA
     * head_dim 64/128). Creating fails with UNIMPLEMENTED when this build
     * has no CUDA or the model's shape has no GPU kernel, UNAVAILABLE when
     * the device does not exist. */
    char device[32];
    /* Tiers below memory (worker/TIERS.md). kv_dir: a directory on local
     * disk where pages that memory cannot hold go ("": none), at most
     * kv_disk bytes of it (0: 4 x kv_memory). kv_host: bytes of host RAM
     * below the pool instead (0: none; meant for a GPU's HBM, which the
     * service requires; the engine takes it below its CPU pool too), or,
     * with kv_dir, above the disk: a chain, pages go to host RAM first and
     * on to disk as it fills (not with durable: UNIMPLEMENTED). Cold
     * layers (least recently used sessions) move down when memory runs
     * short and come back before an Attend reads them; the kv_prefetch
     * layers after the one attended are read ahead (0: no prefetch).
     * kv_io_depth: I/Os in flight per context (0: 32). */
    char kv_dir[256];
    uint64_t kv_disk;
    uint64_t kv_host;
    int32_t kv_io_depth;
    int32_t kv_prefetch;
    /* Durability (needs kv_dir): every acknowledged change is in a
     * write-ahead log in kv_dir before the call returns (SYNC), or within
     * durable_window_ms (BATCH); a worker started on the same kv_dir
     * rebuilds its sessions. wal_segment: bytes per log segment (0: 64
     * MiB); checkpoint_bytes: log written between checkpoints (0: 256
     * MiB). shard_tag: what the files record of the engine's place in a
     * worker group (0: a lone worker), checked at recovery. */
    int durable; /* ATTND_ENGINE_DURABLE_* */
    int32_t durable_window_ms;
    uint64_t wal_segment;
    uint64_t checkpoint_bytes;
    uint32_t shard_tag;
} attnd_engine_config;

enum {
    ATTND_ENGINE_DURABLE_OFF = 0,
    ATTND_ENGINE_DURABLE_SYNC = 1,
    ATTND_ENGINE_DURABLE_BATCH = 2,
};

/* Create an engine; the pool (kv_memory bytes, rounded down to whole pages)
 * is allocated here. Caller frees with attnd_engine_destroy. */
attnd_status attnd_engine_create(const attnd_engine_config *cfg,
                                 attnd_engine **engine_p, attnd_error *err);
/* Free the engine, its sessions and pool. No call may be in flight. */
void attnd_engine_destroy(attnd_engine *e);

const attnd_model_spec *attnd_engine_model(const attnd_engine *e);
const attnd_kernel_kv_layout *attnd_engine_kv_layout(const attnd_engine *e);
int32_t attnd_engine_page_size(const attnd_engine *e);

/* Create a session. max_tokens > 0 reserves the pages that many tokens need
 * in every layer (RESOURCE_EXHAUSTED if the pool cannot promise them);
 * appends beyond it use unreserved free pages. Too many sessions:
 * RESOURCE_EXHAUSTED. */
attnd_status attnd_engine_session_create(attnd_engine *e, uint64_t max_tokens,
                                         attnd_session_id *id_p,
                                         attnd_error *err);
/* The same with an id chosen by the caller (a worker group creates one
 * session under one id on every rank): ALREADY_EXISTS when it is taken. */
attnd_status attnd_engine_session_create_id(attnd_engine *e, uint64_t max_tokens,
                                            const attnd_session_id *id,
                                            attnd_error *err);
/* Close a session and free its pages (once no call uses it). NOT_FOUND for
 * an unknown id. *pages_freed_p (may be NULL) gets the pages it held. */
attnd_status attnd_engine_session_close(attnd_engine *e,
                                        const attnd_session_id *id,
                                        uint64_t *pages_freed_p,
                                        attnd_error *err);

/* ---- owners: sessions bound to a tenant, its quota, idle expiry -----------
 * An owner is a nonzero 64-bit tag the caller picks for a tenant (the
 * service hashes the tenant's name; the same on every rank of a group); 0
 * means none. A session created for an owner counts against that owner's
 * limits and figures, and attnd_engine_sessions_check finds it only for
 * that owner: to any other caller it does not exist. Calls without a
 * check (the functions above and below) do not look at owners. */

/* Name owner (for messages and stats) and set its limits: sessions open
 * at once and KV bytes held (pages held and reserved, counted in whole
 * pages; in a worker group each rank counts its own share); 0: no limit.
 * Lowering a limit below the usage refuses new growth only. */
attnd_status attnd_engine_owner_set(attnd_engine *e, uint64_t owner, const char *name,
                                    uint64_t max_sessions, uint64_t max_kv_bytes,
                                    attnd_error *err);
/* attnd_engine_session_create (id NULL: a random id) or _create_id (id
 * given) for owner (0: none). Beyond the owner's limits:
 * RESOURCE_EXHAUSTED naming the limit and the usage, nothing created. */
attnd_status attnd_engine_session_create_owned(attnd_engine *e, uint64_t owner,
                                               uint64_t max_tokens,
                                               const attnd_session_id *id,
                                               attnd_session_id *id_p, attnd_error *err);
/* OK when every one of ids[0..n) is an open session of owner; else
 * NOT_FOUND "session_id: no such session" (indexed: "session_ids[i]: ..."),
 * the same words whether the session is absent or another owner's. */
attnd_status attnd_engine_sessions_check(attnd_engine *e, uint64_t owner,
                                         const attnd_session_id *ids, uint32_t n,
                                         int indexed, attnd_error *err);
/* Close every session that no call holds and that no call named for
 * idle_ms (a lookup of any kind touches a session): their pages go back
 * to the pool, and they count as expired in the stats. Up to cap of them;
 * their ids go to ids[0..*n_p) (may be NULL with cap 0: closes none). */
void attnd_engine_reap_idle(attnd_engine *e, uint64_t idle_ms, attnd_session_id *ids,
                            size_t cap, size_t *n_p);

/* Append n_tokens wire-form KV entries ([n][kv_token_elems] of `dtype`) to
 * one layer of a session. start must equal the layer's length
 * (FAILED_PRECONDITION otherwise); unknown session NOT_FOUND; layer past the
 * model OUT_OF_RANGE; no pages RESOURCE_EXHAUSTED; a layer an open stage
 * holds ABORTED. All or nothing (a stage of one chunk, committed). */
attnd_status attnd_engine_append(attnd_engine *e, const attnd_session_id *id,
                                 uint32_t layer, uint64_t start,
                                 uint64_t n_tokens, attnd_dtype dtype,
                                 const void *kv, attnd_error *err);

/* ---- staged appends (one AppendKV stream: all or nothing) -------------------
 * A stage collects the chunks of one stream, for any sessions and layers,
 * and makes them visible together at the commit, or not at all. Each chunk
 * must start at its layer's length as this stage has it (committed length
 * plus what the stage holds for that layer). Staged tokens are written
 * into ordinary pool pages as they come (taken under the usual accounting:
 * the chunk that does not fit gets RESOURCE_EXHAUSTED), so staging needs no
 * memory of its own; they stay invisible to Attend until the commit.
 *
 * Conflicts: the first chunk for a layer makes the stage that layer's only
 * writer until it commits or aborts. Meanwhile any other append to that
 * layer (another stage, attnd_engine_append, an Attend with new_kv) fails
 * ABORTED, changing nothing; an Attend without new KV reads the committed
 * tokens only. A session closed while staged makes the commit fail
 * NOT_FOUND (nothing applied).
 *
 * Thread safety: one stage is used by one thread at a time; different
 * stages run concurrently. Ownership: attnd_engine_stage_open takes a
 * stage from the engine (reused, so a steady stream of streams allocates
 * nothing); attnd_engine_stage_close gives it back, aborting whatever it
 * still holds. Every stage must be closed before attnd_engine_destroy. */
typedef struct attnd_engine_stage attnd_engine_stage;

attnd_status attnd_engine_stage_open(attnd_engine *e, attnd_engine_stage **stage_p,
                                     attnd_error *err);
/* Stage one chunk (the arguments as for attnd_engine_append). On failure
 * the chunk is not staged and the rest stays staged (callers abort). */
attnd_status attnd_engine_stage_append(attnd_engine_stage *s, const attnd_session_id *id,
                                       uint32_t layer, uint64_t start, uint64_t n_tokens,
                                       attnd_dtype dtype, const void *kv, attnd_error *err);
/* Record that at the commit, layer's user length (what the session's
 * user counts: a worker group's global length in sequence mode, where this
 * engine holds some of the tokens) becomes ulen; claims the layer as a
 * chunk would. Without a note a committed layer's user length is its
 * length. Logged when durable, so a recovered group knows its lengths. */
attnd_status attnd_engine_stage_note(attnd_engine_stage *s, const attnd_session_id *id,
                                     uint32_t layer, uint64_t ulen, attnd_error *err);
/* Make every staged chunk visible at once (every session involved is
 * locked while lengths advance). *chunks_p and *tokens_p (may be NULL):
 * what was committed. On failure (NOT_FOUND: a session was closed)
 * nothing is applied and the stage is aborted. Either way the stage is
 * empty afterwards and may stage again. */
attnd_status attnd_engine_stage_commit(attnd_engine_stage *s, uint64_t *chunks_p,
                                       uint64_t *tokens_p, attnd_error *err);
/* Drop every staged chunk: pages back to the pool (and to the sessions'
 * reservations), layers free for other writers, lengths untouched. */
void attnd_engine_stage_abort(attnd_engine_stage *s);
/* Abort, then give the stage back to its engine. NULL: no-op. */
void attnd_engine_stage_close(attnd_engine_stage *s);

/* ---- sparse attention policies ------------------------------------------------
 * A session attends densely unless given a policy (before its first token:
 * attnd_engine_session_set_policy): a default for every layer and head,
 * overridden per layer range and, for GQA, per range of KV heads (the query
 * heads reading them) by a table whose later rules win. MLA heads share one
 * latent cache, so MLA policies apply per layer: a rule with a head range
 * is INVALID_ARGUMENT (a per-head selection would read the union of the
 * heads' pages, and per-head streaming could free nothing).
 *
 *   full          every token (the default).
 *   streaming     the pages holding the first `sink` tokens and those
 *                 holding the last `window` tokens (so between window and
 *                 window + page_size - 1 of them): StreamingLLM's sink +
 *                 window at page granularity. window >= ATTND_POLICY_MIN_WINDOW.
 *                 Where every head of a layer streams, the pages in between
 *                 are freed as the window moves on (back in the pool, off
 *                 the session's count) and the layer's reservation shrinks
 *                 to what sink + window need; a layer whose other heads
 *                 attend more keeps them (one GQA page holds every KV head).
 *   topk-pages    Quest: per page and KV head (MLA: the latent), the
 *                 element-wise min and max of the keys are kept as they are
 *                 appended; each Attend scores every page by the upper bound
 *                 of q . k it allows and attends to the best `topk` pages
 *                 (or ceil(topk_fraction * pages)), always including the
 *                 sink pages and the pages of the newest query tokens. GQA
 *                 selects per KV head (from its query heads' scores; see
 *                 attnd_kernels.h "page selection"), MLA per layer.
 *   given-pages   the pages (logical numbers: page j holds tokens
 *   given-tokens  [j * page_size, (j + 1) * page_size)) or token positions
 *                 the caller names in the request (attnd_attend_req.given_*:
 *                 a selection returned by a topk-pages layer and reused on
 *                 later ones, TidalDecode-style, or a caller's own indexer),
 *                 plus the pages / tokens of the newest query tokens.
 * Multi-token queries keep the causal rule: the newest S tokens are always
 * attended, and query token s sees the attended tokens up to its own. */
typedef enum attnd_policy_kind {
    ATTND_POLICY_FULL = 0,
    ATTND_POLICY_STREAMING = 1,
    ATTND_POLICY_TOPK_PAGES = 2,
    ATTND_POLICY_GIVEN_PAGES = 3,
    ATTND_POLICY_GIVEN_TOKENS = 4,
} attnd_policy_kind;

#define ATTND_POLICY_KIND_COUNT 5
/* Smallest streaming window: the most query tokens of one Attend. */
#define ATTND_POLICY_MIN_WINDOW ATTND_ENGINE_MAX_Q_TOKENS
/* Most rules in one policy table. */
#define ATTND_POLICY_MAX_RULES 4096

typedef struct attnd_policy {
    attnd_policy_kind kind;
    uint32_t sink;       /* streaming, topk-pages: first tokens always attended */
    uint32_t window;     /* streaming: last tokens attended */
    uint32_t topk;       /* topk-pages: pages attended, mandatory ones included
                            (named topk_pages in messages and on the wire) */
    float topk_fraction; /* topk-pages with topk 0: fraction (0, 1] of the pages */
} attnd_policy;

typedef struct attnd_policy_rule {
    uint32_t layer_begin, layer_end; /* layers [begin, end) */
    uint32_t head_begin, head_end;   /* GQA KV heads [begin, end); 0, 0: all */
    attnd_policy policy;
} attnd_policy_rule;

typedef struct attnd_session_policy {
    attnd_policy dflt;               /* every layer and head */
    const attnd_policy_rule *rules;  /* [n_rules], later rules win */
    uint32_t n_rules;
} attnd_session_policy;

/* "full", "streaming", "topk-pages", "given-pages", "given-tokens", or "?". */
const char *attnd_policy_kind_name(attnd_policy_kind k);
/* The kind named s (as above), or -1. */
int attnd_policy_kind_parse(const char *s);
/* Check a policy against the engine's model: INVALID_ARGUMENT naming the
 * field ("policy.window", "policy_table[2].head_end", ...). A durable
 * engine (attnd --durable) records a session's policy with it, so a
 * recovered session attends as before (worker/TIERS.md). */
attnd_status attnd_engine_policy_check(const attnd_engine *e, const attnd_session_policy *p,
                                       attnd_error *err);
/* The same against a model spec (a worker group's whole model). */
attnd_status attnd_policy_check(const attnd_model_spec *m, const attnd_session_policy *p,
                                attnd_error *err);
/* Give a session its policy (checked as above; copied). The session must
 * hold no token yet (FAILED_PRECONDITION); NOT_FOUND for an unknown id. A
 * durable engine records policies at creation only: FAILED_PRECONDITION
 * (use attnd_engine_session_create_policy).
 * Streaming layers give back the part of the session's reservation they
 * will never hold. A policy that is full everywhere makes it dense again. */
attnd_status attnd_engine_session_set_policy(attnd_engine *e, const attnd_session_id *id,
                                             const attnd_session_policy *p, attnd_error *err);
/* Create a session with policy p (checked first) and the reservation it
 * needs for max_tokens (streaming layers: their sink + window only, so a
 * streaming session may promise any length), under id (NULL: a random one,
 * written to *id_p). Errors as the two creates above and the check. */
attnd_status attnd_engine_session_create_policy(attnd_engine *e, uint64_t max_tokens,
                                                const attnd_session_policy *p,
                                                const attnd_session_id *id,
                                                attnd_session_id *id_p, attnd_error *err);
/* The same for owner (0: none; attnd_engine_session_create_owned): the
 * owner's KV counts the policy's reservation (streaming layers: their sink
 * and window) and gets back the pages streaming frees. Beyond the owner's
 * limits: RESOURCE_EXHAUSTED naming the limit, nothing created. */
attnd_status attnd_engine_session_create_policy_owned(attnd_engine *e, uint64_t owner,
                                                      uint64_t max_tokens,
                                                      const attnd_session_policy *p,
                                                      const attnd_session_id *id,
                                                      attnd_session_id *id_p, attnd_error *err);

/* Length of a layer of a session, in tokens. */
attnd_status attnd_engine_length(attnd_engine *e, const attnd_session_id *id,
                                 uint32_t layer, uint64_t *len_p,
                                 attnd_error *err);

/* Most query tokens per session in one attend (speculative/multi-token
 * decode); the service validates against the same number. */
#define ATTND_ENGINE_MAX_Q_TOKENS 64

/* One decode step of one layer for a batch of distinct sessions. */
typedef struct attnd_attend_req {
    uint32_t layer;
    uint32_t n_seqs;
    const attnd_session_id *ids; /* [n_seqs], distinct */
    int32_t q_tokens;            /* S >= 1 */
    attnd_dtype q_dtype;
    const void *q;               /* [n_seqs][S][Hq][d_k] */
    attnd_dtype new_kv_dtype;
    const void *new_kv;          /* NULL, or [n_seqs][S][kv_token_elems]:
                                    each session's S new entries, appended
                                    before attending (causal over them) */
    const uint64_t *positions;   /* NULL, or [n_seqs]: where each new entry
                                    must land (FAILED_PRECONDITION if not) */
    int want_lse;
    const uint64_t *visible;     /* NULL, or [n_seqs][S]: how many of the
                                    layer's first tokens (after the append)
                                    query token s of sequence i sees,
                                    replacing the causal rule L - (S-1-s);
                                    for a worker group whose rank holds a
                                    subset of each session's tokens */
    /* MLA projections (attnd_engine_load_weights). ATTND_Q_HEADS: q is
     * [n_seqs][S][Hq][d_nope + d_rope] and is absorbed with the layer's
     * W_UK (whose width must be d_nope) before the kernel. d_vo > 0: the
     * output is [n_seqs][S][Hq][d_vo], the latent output times the layer's
     * W_UV (whose width must be d_vo). Zeros: the absorbed form, latent
     * output. */
    attnd_q_form q_form;
    int32_t d_nope;
    int32_t d_vo;
    /* given-pages / given-tokens layers: the caller's indices. given_groups
     * lists per session (1: one for every head; GQA n_kv_heads: one per KV
     * head), list i * given_groups + g holding given_idx[given_indptr[k] ..
     * given_indptr[k + 1]): strictly ascending logical pages (given-pages)
     * or token positions (given-tokens) of the layer after the append. A
     * session whose layer has no given policy takes empty lists. 0: none. */
    uint32_t given_groups;
    const uint32_t *given_indptr; /* [n_seqs * given_groups + 1] */
    const uint64_t *given_idx;
    int want_pages;               /* report what was attended (ws->chosen_*) */
    int given_only;               /* the given lists are all a given-* list
                                     attends: no page or token of the newest
                                     query tokens is added, the last page
                                     listed is partial only if it is the
                                     layer's last (a sequence-sharded
                                     group's rank: its leader lists the
                                     newest tokens where they lie); with
                                     S > 1 only under `visible` */
} attnd_attend_req;

/* ---- MLA projections (the narrow wire) -------------------------------------
 * An engine serving an MLA model holds, per layer, W_UK [Hq][d_nope][d_c]
 * (q_nope -> absorbed latent query) and W_UV [Hq][d_c][d_vo] (latent output
 * -> value), Hq and d_c the engine's model's (a worker group's rank: its
 * shard's, e.g. its latent slice), so that an attend in the heads form
 * absorbs and up-projects where the KV is (attnd_attend_req.q_form, d_vo;
 * the math is attnd_proj.h's). Storage: bf16 when given as bf16 (exact,
 * and half the bytes each call streams), else float32; on a GPU engine
 * W_UK in bf16 and W_UV in float32 in device memory (cuBLAS products). A
 * load replaces what it carries and keeps the other matrix; it may run
 * while attends run (each attend uses the matrices it started with). */
typedef struct attnd_engine_weights {
    /* d_nope > 0: replace W_UK with w_uk, [Hq][d_nope][d_c] of uk_dtype */
    int32_t d_nope;
    attnd_dtype uk_dtype;
    const void *w_uk;
    /* d_vo > 0: replace W_UV with w_uv, [Hq][d_c][d_vo] of uv_dtype */
    int32_t d_vo;
    attnd_dtype uv_dtype;
    const void *w_uv;
} attnd_engine_weights;

/* Widths above this are refused (INVALID_ARGUMENT). */
#define ATTND_ENGINE_MAX_PROJ_DIM 4096

/* Load layer's matrices (caller-owned, read during the call). INVALID_
 * ARGUMENT naming w_uk / w_uv for a GQA model, a width out of [1,
 * ATTND_ENGINE_MAX_PROJ_DIM] or a bad dtype; OUT_OF_RANGE naming layer;
 * RESOURCE_EXHAUSTED. *bytes_p (may be NULL): the bytes the engine holds
 * for the layer afterwards (both matrices). Nothing changes on failure. */
attnd_status attnd_engine_load_weights(attnd_engine *e, uint32_t layer,
                                       const attnd_engine_weights *w, uint64_t *bytes_p,
                                       attnd_error *err);
/* The widths the layer holds now: *d_nope_p of W_UK, *d_vo_p of W_UV (0:
 * none, also for a layer out of range). Either pointer may be NULL. */
void attnd_engine_weights_dims(attnd_engine *e, uint32_t layer, int32_t *d_nope_p,
                               int32_t *d_vo_p);

/* Where a GPU engine's last attend spent its wall time (ns; all 0 on the
 * CPU backend and after a failed call). host: entry to handing the batch
 * to the GPU (checks, appends, page lists), append: the appends' part of
 * it; enqueue: the device call until its copies and kernels are queued (a
 * host selection first, where one runs); overlap: host work while the GPU
 * runs (the key bounds' fold); wait: then waiting for the GPU; gpu: the
 * GPU's span from the call's first queued operation to its last (CUDA
 * events). */
typedef struct attnd_engine_phases {
    uint64_t host_ns, append_ns, enqueue_ns, overlap_ns, wait_ns, gpu_ns;
} attnd_engine_phases;

/* Per-thread scratch of attnd_engine_attend: page lists and outputs. It
 * grows to the largest batch seen and is then reused, so steady-state
 * decode allocates nothing. Caller-owned: init before use, cleanup after. */
typedef struct attnd_engine_ws {
    void **sessions;           /* resolved session handles [cap_seqs] */
    int32_t *order;            /* lock order [cap_seqs] */
    int32_t *page_indptr;      /* [cap_seqs + 1] */
    int32_t *last_page_len;    /* [cap_seqs] */
    int32_t *new_pages;        /* pages taken for new entries [cap_new] */
    int32_t *page_idx;         /* [cap_pages] */
    float *out, *lse;
    float *qa;                 /* absorbed queries (ATTND_Q_HEADS, CPU) */
    float *proj;               /* up-projected outputs (d_vo > 0, CPU) */
    size_t cap_seqs, cap_new, cap_pages, cap_out, cap_lse, cap_qa, cap_proj;
    /* With a GPU engine, out and lse live here instead: page-locked host
     * memory (the device-to-host copy runs at full PCIe speed), out first
     * and lse after it, freed by cleanup through pinned_free. */
    void *pinned;
    size_t cap_pinned; /* bytes */
    void (*pinned_free)(void *);
    /* Sparse policies' scratch (candidates, selection, lists), made on
     * first use and reused; freed by cleanup. */
    struct attnd__sparse_ws *sparse;
    /* After an attend with want_pages: what each (session, group) attended,
     * list i * chosen_groups + g = chosen[chosen_indptr[k] ..
     * chosen_indptr[k + 1]), logical pages (chosen_tokens 0) or token
     * positions (1: some head of the batch is given-tokens), ascending;
     * valid until the workspace's next use. chosen_groups 0: not asked. */
    uint32_t chosen_groups;
    int chosen_tokens;
    const int32_t *chosen_indptr;
    const int64_t *chosen;
    uint64_t select_ns; /* the last attend's page selection time (0: none) */
    attnd_engine_phases phases; /* the last attend's, GPU engines */
} attnd_engine_ws;

void attnd_engine_ws_init(attnd_engine_ws *ws);
void attnd_engine_ws_cleanup(attnd_engine_ws *ws);

/* Attend: validate every session (NOT_FOUND, duplicates INVALID_ARGUMENT),
 * the layer (OUT_OF_RANGE), positions (FAILED_PRECONDITION) and the
 * projections the request names (q_form on a GQA model INVALID_ARGUMENT;
 * no W_UK / W_UV of the stated width for the layer FAILED_PRECONDITION
 * naming q_form / up_project); append the new entries all-or-nothing
 * (RESOURCE_EXHAUSTED leaves every session as it was); then compute. On
 * success *out_p points to float32 [n_seqs][S][Hq][d_v] (d_vo when
 * projecting) and *lse_p (when want_lse, else NULL) to [n_seqs][S][Hq],
 * both inside ws and valid until its next use. */
attnd_status attnd_engine_attend(attnd_engine *e, const attnd_attend_req *req,
                                 attnd_engine_ws *ws, const float **out_p,
                                 const float **lse_p, attnd_error *err);

typedef struct attnd_engine_stats {
    uint64_t sessions, max_sessions;
    uint64_t pages_total, pages_used, pages_reserved, page_bytes; /* memory */
    uint64_t attend_calls, attend_sequences;
    uint64_t append_calls, tokens_appended;
    uint64_t kv_bytes_read;
    /* every tier: pages sessions hold (wherever they are), what all tiers
     * hold together */
    uint64_t pages_held, pages_capacity;
    /* the tier below memory (all 0 / "" without one) */
    char below[8];             /* "disk", "host" or "chain" (both) */
    uint64_t below_slots, below_slots_used, below_slot_bytes;
    uint64_t pages_moved_down, pages_moved_up, pages_prefetched;
    uint64_t load_waits;       /* Attends that waited for a load in flight */
    uint64_t pages_bad;        /* reads that failed a check */
    uint64_t write_failures;
    /* durability */
    int durable;               /* ATTND_ENGINE_DURABLE_* */
    uint32_t durable_window_ms;
    uint64_t wal_durable_lsn, wal_bytes, wal_syncs;
    uint64_t checkpoints, sessions_recovered, sessions_lost;
    /* sessions closed for idleness (attnd_engine_reap_idle) and the pages
     * (held and reserved) that gave back */
    uint64_t sessions_expired, pages_expired;
    /* Sparse policies: KV bytes a dense attend of the same calls would have
     * read (equal to kv_bytes_read when every session is dense), the key
     * bounds read by page selection, its time, and the pages streaming
     * freed. */
    uint64_t kv_bytes_dense, select_bytes_read, select_ns, select_calls;
    uint64_t pages_evicted;
} attnd_engine_stats;

void attnd_engine_get_stats(attnd_engine *e, attnd_engine_stats *st);
/* One owner's figures in the same form: its sessions, pages held
 * (pages_used) and reserved, its limits (max_sessions; pages_total = its
 * KV limit in pages, or the pool's when it has none), the calls and
 * tokens of its sessions. An unknown owner: zeros (and the pool's size). */
void attnd_engine_owner_stats(attnd_engine *e, uint64_t owner, attnd_engine_stats *st);

/* Bytes of a session's KV in memory and in the tier below (a page held in
 * both counts in both). NOT_FOUND for an unknown id. */
attnd_status attnd_engine_session_bytes(attnd_engine *e, const attnd_session_id *id,
                                        uint64_t *memory_p, uint64_t *below_p,
                                        attnd_error *err);

/* Every session (recovered ones after a restart included): f gets its id,
 * the model's layer count, each layer's user length (a worker group's
 * global one: attnd_engine_stage_note) and whether it is lost (DATA_LOSS).
 * For a worker group to rebuild its own table. */
void attnd_engine_sessions(attnd_engine *e,
                           void (*f)(void *arg, const attnd_session_id *id, int32_t n_layers,
                                     const uint64_t *ulen, int lost),
                           void *arg);

#endif /* ATTND_WORKER_H */
