/* Sparse attention policies inside the worker (internal to worker/): what a
 * session's policy table resolves to, and the hooks the engine calls.
 *
 * Files: sparse_policy.c (checking a table, resolving it per layer and KV
 * head, reservations), sparse_kv.c (key bounds kept on append, streaming
 * eviction, freeing a layer's pages around the holes eviction leaves),
 * sparse_attend.c (an Attend's page lists under the policies: selection,
 * given indices, token lists, what was attended), sparse_given.c (checking
 * given indices, for an engine and for a group's leader).
 *
 * A layer whose every head streams loses its middle pages for good: its
 * page table keeps logical numbering (page j holds tokens [j * ps, (j+1) *
 * ps)) with the entries [sink_pages, hole_end) set to -1, pages that went
 * back to the pool. Nothing reads them: streaming lists skip them, a
 * streaming layer never takes another policy (set only before the first
 * token), and freeing walks around them. */
#ifndef ATTND_WORKER_SPARSE_H
#define ATTND_WORKER_SPARSE_H

#include <stdint.h>

#include "backend.h"
#include "worker_int.h"

typedef struct attnd__sparse {
    int32_t n_layers, n_heads;  /* policies per layer: Hkv (GQA) or 1 (MLA) */
    attnd_policy *pol;          /* [n_layers][n_heads], resolved */
    uint8_t *uniform;           /* [n_layers]: every head has the same policy */
    uint8_t *dense;             /* [n_layers]: every head is full */
    uint8_t *bounds;            /* [n_layers]: some head is topk-pages */
    uint8_t *evict;             /* [n_layers]: every head streams: pages freed */
    uint32_t *sink, *window;    /* [n_layers]: what eviction keeps (max over heads) */
    int32_t *hole_end;          /* [n_layers]: pages [sink pages, hole_end) freed */
    int32_t *res;               /* [n_layers]: pages reserved */
    /* the policy as given (the durable log and checkpoints record it) */
    attnd_policy dflt;
    attnd_policy_rule *rules;   /* [n_rules] */
    uint32_t n_rules;
} attnd__sparse;

/* Give session s policy p (checked by the caller) with a reservation of
 * per_layer pages per layer (streaming layers less): the promise it holds
 * (in the pool and on its owner's account) changes by the difference;
 * RESOURCE_EXHAUSTED (nothing changed) when the pool or the owner's quota
 * cannot promise more, unless lenient (recovery: the session keeps its
 * policy without a promise). s holds no token; s->mu held or s not yet
 * shared. */
attnd_status attnd__sparse_apply(attnd_engine *e, attnd__session *s,
                                 const attnd_session_policy *p, int32_t per_layer, int lenient,
                                 attnd_error *err);
/* The policy of s as the log and the manifest record it: written to buf
 * (NULL: only measured); returns its bytes (0: dense). Little-endian u32s:
 * the default (kind, sink, window, topk, topk_fraction's bits), the
 * number of rules, 0, then per rule layer_begin, layer_end, head_begin,
 * head_end and its policy as above. */
size_t attnd__sparse_encode(const attnd__session *s, void *buf);
/* Read a policy encode wrote: *p (its rules malloc'd into *rules_p, the
 * caller frees; NULL when none). -1: malformed. */
int attnd__sparse_decode(const void *buf, size_t n, attnd_session_policy *p,
                         attnd_policy_rule **rules_p);

/* Free a session's policy state (NULL: no-op). */
void attnd__sparse_free(attnd__sparse *sp);
/* Pages of the first `sink` tokens. */
static inline int32_t attnd__sparse_sink_pages(uint32_t sink, int32_t page_size)
{
    return (int32_t)(((int64_t)sink + page_size - 1) / page_size);
}
/* Pages of a layer freed by eviction. */
static inline int32_t attnd__sparse_holes(const attnd__sparse *sp, int32_t layer,
                                          int32_t page_size)
{
    int32_t sp0 = attnd__sparse_sink_pages(sp->sink[layer], page_size);
    return sp->hole_end[layer] > sp0 ? sp->hole_end[layer] - sp0 : 0;
}

/* Is page j of layer l one that streaming freed (its page table entry is
 * -1 but, unlike a page below memory, it has no slot: it is held nowhere)?
 * The tiers (worker/tier*.c) skip such pages. */
static inline int attnd__sparse_gone(const attnd__session *s, int32_t l, int64_t j)
{
    const attnd__sparse *sp = s->sparse;
    return sp && j < sp->hole_end[l] && j >= attnd__sparse_sink_pages(sp->sink[l], s->page_size);
}

/* Before tokens [t0, t0 + n) of a layer are written (attnd__engine_write;
 * session locked): fold them into their pages' key bounds when the layer
 * keeps them (a page's bounds start empty at its first slot); a GPU
 * engine's copy follows (INTERNAL on a CUDA error). */
attnd_status attnd__sparse_note_write(attnd_engine *e, attnd__session *s, int32_t layer,
                                      uint64_t t0, uint64_t n, attnd_dtype dtype,
                                      const void *kv, attnd_error *err);
/* The same in two halves for a GPU engine's Attend (bf16 entries): the
 * GPU folds the keys itself once they are up (attnd__gpu_bounds_fold,
 * bitwise the host's fold), and the host's own copy is folded later, by
 * attnd__sparse_note_host, while the GPU decodes: the host's fold cost a
 * batch of 16 llama3-8b sessions 80 us before anything was enqueued (an
 * H100's host, trace of attnd-sparse-bench). note_host must run before
 * the sessions are unlocked and before the host's bounds are next read. */
attnd_status attnd__sparse_note_gpu(attnd_engine *e, attnd__session *s, int32_t layer,
                                    uint64_t t0, uint64_t n, attnd_error *err);
void attnd__sparse_note_host(attnd_engine *e, attnd__session *s, int32_t layer, uint64_t t0,
                             uint64_t n, attnd_dtype dtype, const void *kv);
/* Before the CPU selection of a GPU engine reads the compact bounds of
 * pages[0..n) (their sessions locked): those stale made again (a GPU
 * engine only marks them on change; a no-op on a CPU engine). */
void attnd__sparse_bounds8_fresh(attnd_engine *e, const int32_t *pages, int64_t n);
/* After a layer's length grew (an Attend's append, a stage's commit;
 * session locked): free the pages that left every head's sink + window
 * when the layer evicts. Never fails. */
void attnd__sparse_evict(attnd_engine *e, attnd__session *s, int32_t layer);
/* Key bounds across the tier below (worker/TIERS.md): a page's bounds
 * belong to its memory page, so a page of a layer that keeps them, written
 * to slot `slot`, leaves a copy beside the slot (the tier's bounds array),
 * and one read back into memory page `page` gets it back (a GPU engine's
 * copy follows: INTERNAL on a CUDA error). No-ops for other layers. The
 * session is locked. */
void attnd__sparse_bounds_out(attnd_engine *e, const attnd__session *s, int32_t layer,
                              int32_t page, int64_t slot);
attnd_status attnd__sparse_bounds_in(attnd_engine *e, const attnd__session *s, int32_t layer,
                                     int64_t slot, int32_t page, attnd_error *err);
/* Page j of a layer that keeps key bounds: its bounds made again from the
 * keys it holds (its first min(page_size, len - j * page_size) tokens, as
 * stored), so they equal what appending exactly those keys gave (bounds do
 * not depend on how the tokens were chunked). Recovery (the tier below
 * keeps no bounds on disk) and an aborted stage (whose staged keys had
 * widened the last page's bounds) use it. The page is in memory; session
 * locked. INTERNAL on a GPU error, RESOURCE_EXHAUSTED without memory. */
attnd_status attnd__sparse_bounds_rebuild(attnd_engine *e, const attnd__session *s,
                                          int32_t layer, int32_t j, attnd_error *err);
/* Return a layer's pages [0, n) to the pool, skipping freed ones
 * (session_free). */
void attnd__sparse_free_layer(attnd_kv_pool *pool, attnd__session *s, int32_t layer,
                              int32_t n);

/* The policy head h of session s has in layer l (dense sessions: full). */
static inline attnd_policy attnd__sparse_policy_of(const attnd__session *s, int32_t l, int32_t h)
{
    attnd_policy full = {.kind = ATTND_POLICY_FULL};
    if (!s->sparse)
        return full;
    return s->sparse->pol[(size_t)l * s->sparse->n_heads + (s->sparse->n_heads > 1 ? h : 0)];
}

/* The given list of (session i, group g) of req: *p, *n entries from
 * given_idx[*at]; an empty one when the request gives none. */
static inline void attnd__sparse_given_list(const attnd_attend_req *req, uint32_t i, int32_t g,
                                            const uint64_t **p, uint32_t *n, uint32_t *at)
{
    *p = NULL;
    *n = 0;
    *at = 0;
    if (!req->given_groups)
        return;
    uint32_t k = i * req->given_groups + (req->given_groups > 1 ? (uint32_t)g : 0);
    *at = req->given_indptr[k];
    *n = req->given_indptr[k + 1] - req->given_indptr[k];
    *p = req->given_idx + *at;
}

/* Does this Attend need the sparse path (some session's layer is not
 * dense, or the request carries given indices or wants pages)? */
int attnd__sparse_needed(const attnd_engine *e, const attnd_attend_req *req,
                         attnd_engine_ws *ws);
/* Check the request's given_* fields against the sessions' policies and
 * layers (sessions locked, before the append: lengths count the new
 * tokens). INVALID_ARGUMENT names the field. */
attnd_status attnd__sparse_check(const attnd_engine *e, const attnd_attend_req *req,
                                 attnd_engine_ws *ws, attnd_error *err);
/* Build the batch's page lists under the sessions' policies (sessions
 * locked, appends done): fills the page list fields of *b (and, for token
 * lists, its kv layout and pool_pages), runs the page selection, and
 * counts the bytes. The selection scores pages with the query the kernel
 * reads, b->q (a heads-form query: absorbed already on the CPU, attend.c);
 * a GPU engine absorbs on the GPU (proj: its projections, NULL for the
 * absorbed form), so where its lists must be known on the host (cut to
 * visible lengths, gathered as tokens) a heads-form batch's selection runs
 * on the GPU first (attnd__gpu_select_pages). INVALID_ARGUMENT names a bad
 * given_* field. */
attnd_status attnd__sparse_lists(attnd_engine *e, const attnd_attend_req *req,
                                 attnd_engine_ws *ws, attnd_kernel_decode_batch *b,
                                 const attnd__gpu_proj *proj, uint64_t *kv_bytes_p,
                                 uint64_t *dense_bytes_p, attnd_error *err);
/* The GPU decode of a batch attnd__sparse_lists built: its page selection
 * (when it has one) runs on the GPU first, into the uploaded page lists,
 * scoring with the absorbed query when proj absorbs (attnd__gpu_proj). */
attnd_status attnd__sparse_gpu_decode(attnd_engine *e, attnd_engine_ws *ws,
                                      const attnd_kernel_decode_batch *b, const attnd__gpu_proj *proj,
                                      const attnd__gpu_overlap *ov, attnd_error *err);
/* The check above against any view of the batch (a worker group's leader
 * checks with the group's policies and global lengths, so that no rank
 * refuses what another has applied): n_heads policies per session's layer
 * (GQA: KV heads, MLA: 1), kind(ctx, i, h) the policy of session i's
 * layer for head h, len(ctx, i) its tokens before the append. The
 * messages are the engine's. */
typedef struct attnd__given_view {
    uint32_t n_heads;
    int32_t page_size;
    attnd_policy_kind (*kind)(const void *ctx, uint32_t i, uint32_t h);
    uint64_t (*len)(const void *ctx, uint32_t i);
    const void *ctx;
} attnd__given_view;
attnd_status attnd__sparse_check_given(const attnd_attend_req *req, const attnd__given_view *v,
                                       attnd_error *err);
/* Room in ws's sparse scratch (made if needed, kept until cleanup) for a
 * worker group leader's merged chosen lists: lists + 1 offsets and
 * `entries` entries, which ws->chosen_indptr / chosen then point at.
 * RESOURCE_EXHAUSTED naming return_pages. */
attnd_status attnd__sparse_chosen_room(attnd_engine_ws *ws, size_t lists, size_t entries,
                                       int32_t **indptr_p, int64_t **chosen_p, attnd_error *err);
/* Free the workspace's sparse scratch. */
void attnd__sparse_ws_free(struct attnd__sparse_ws *w);

/* The engine's bounds array (engine create / destroy). */
attnd_status attnd__sparse_engine_init(attnd_engine *e, attnd_error *err);
void attnd__sparse_engine_cleanup(attnd_engine *e);

#endif /* ATTND_WORKER_SPARSE_H */
