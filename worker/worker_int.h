/* Internal interfaces of the worker room (not for service/ or client/):
 * the paged KV pool and the session table the engine is built from, the
 * engine object itself, and what engine.c and stage.c share. */
#ifndef ATTND_WORKER_INT_H
#define ATTND_WORKER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "attnd_buf.h"
#include "attnd_worker.h"

/* ---- KV pool (kv_pool.c) --------------------------------------------------
 * One anonymous mapping carved into n_pages fixed-size pages ("memory
 * pages", the fast tier: host RAM, or GPU HBM whose bytes the backend
 * keeps). Pages are handed out from a free stack; a page's state byte says
 * whether it is in use.
 *
 * Two accounts: memory pages (n_pages, n_free), and logical pages: the
 * pages sessions hold in any tier (`held`, a page on disk counts as one)
 * against the capacity of all tiers together (`cap` = memory pages plus
 * the tier below's slots; tier_int.h). Reservations are promises against
 * logical capacity: `reserved` pages are held back for sessions that asked
 * for them, and only the rest can go to appends beyond a reservation.
 * Without a tier below, cap = n_pages and both accounts move together. */

enum { ATTND_PAGE_FREE = 0, ATTND_PAGE_RESIDENT = 1 };

typedef struct attnd_kv_pool {
    char *base;
    size_t map_bytes;
    size_t page_bytes;
    int32_t n_pages;
    int32_t n_free;
    int64_t reserved;
    int64_t cap;         /* logical pages the tiers hold at most */
    int64_t held;        /* logical pages sessions (and stages) hold */
    int64_t below;       /* of cap, the tier below's slots (figures) */
    struct attnd__tier *tier; /* the tier below, or NULL (session.c gives
                                 back a freed session's slots through it) */
    int32_t *free_stack; /* [n_pages]; top n_free entries are free pages */
    uint8_t *state;      /* [n_pages] */
    pthread_mutex_t mu;
    pthread_t prefault_tid; /* attnd_kv_pool_prefault_start's thread */
    int prefault_running;
    atomic_int prefault_stop;
} attnd_kv_pool;

attnd_status attnd_kv_pool_init(attnd_kv_pool *p, size_t page_bytes,
                                int32_t n_pages, attnd_error *err);
/* The pool's bookkeeping only (free stack, states, reservations); base stays
 * NULL: the page bytes live elsewhere (the GPU backend's device memory). */
attnd_status attnd_kv_pool_init_meta(attnd_kv_pool *p, size_t page_bytes,
                                     int32_t n_pages, attnd_error *err);
void attnd_kv_pool_cleanup(attnd_kv_pool *p);
/* `bytes` of private anonymous memory, address space only until written
 * (MAP_NORESERVE), asked for transparent huge pages when huge (a hint);
 * NULL when the map fails (errno says why). Freed with munmap. */
void *attnd__map_anon(size_t bytes, int huge);
/* Fault the mapping in from a background thread, lowest pages (the first
 * allocated) first, so appends do not pay the first-touch cost (see
 * attnd_engine_config.prefault for what it buys and costs). The
 * bytes are not changed (MADV_POPULATE_WRITE), so it races harmlessly with
 * appends. Skipped when the pool is more than 80% of the memory available
 * now (no OOM risk), without a mapping, or on kernels without the advice.
 * Cleanup stops and joins it. */
void attnd_kv_pool_prefault_start(attnd_kv_pool *p);
/* Promise n logical pages to a caller (fails unless n unpromised ones are
 * free in the tiers together). */
attnd_status attnd_kv_pool_reserve(attnd_kv_pool *p, int64_t n, attnd_error *err);
void attnd_kv_pool_unreserve(attnd_kv_pool *p, int64_t n);
/* Take n memory pages into pages_out, each a new logical page;
 * from_reserved of them redeem the caller's promise, the rest must be
 * unpromised. All or nothing. RESOURCE_EXHAUSTED (with the figures) when
 * the tiers together cannot hold them; UNAVAILABLE when they could but too
 * few memory pages are free now (the engine then moves cold pages to the
 * tier below and tries again: attnd__engine_alloc). */
attnd_status attnd_kv_pool_alloc(attnd_kv_pool *p, int32_t n,
                                 int32_t from_reserved, int32_t *pages_out,
                                 attnd_error *err);
/* Give back n memory pages with their logical pages. */
void attnd_kv_pool_free(attnd_kv_pool *p, const int32_t *pages, int32_t n);
/* Memory pages only, the logical pages staying held (a tier moving pages
 * down or up): take n (UNAVAILABLE when fewer are free; all or nothing),
 * give n back. */
attnd_status attnd_kv_pool_take(attnd_kv_pool *p, int32_t n, int32_t *pages_out);
/* Up to n memory pages (as many as are free); returns how many. */
int32_t attnd_kv_pool_take_upto(attnd_kv_pool *p, int32_t n, int32_t *pages_out);
void attnd_kv_pool_put(attnd_kv_pool *p, const int32_t *pages, int32_t n);
/* Logical pages only (pages that live in the tier below): give n back,
 * to_reserved of which renew a promise. */
void attnd_kv_pool_forget(attnd_kv_pool *p, int64_t n, int64_t to_reserved);
/* Logical pages that recovery finds below memory: held from the start. */
void attnd_kv_pool_hold(attnd_kv_pool *p, int64_t n);
/* Logical capacity: memory pages plus `below` slots of the tier below, or
 * (durable: every page has a home on disk) `below` alone. */
void attnd_kv_pool_set_cap(attnd_kv_pool *p, int64_t cap, int64_t below);
/* Undo attnd_kv_pool_alloc calls: return n pages, to_reserved of which had
 * redeemed a promise that is made again (one lock: the promise cannot be
 * lost to a concurrent alloc in between). */
void attnd_kv_pool_unalloc(attnd_kv_pool *p, const int32_t *pages, int32_t n,
                           int32_t to_reserved);
static inline void *attnd_kv_pool_page(const attnd_kv_pool *p, int32_t idx)
{
    return p->base + (size_t)idx * p->page_bytes;
}
void attnd_kv_pool_counts(attnd_kv_pool *p, int64_t *used_p,
                          int64_t *reserved_p);
/* Logical pages held, and the capacity of all tiers. */
void attnd_kv_pool_logical(attnd_kv_pool *p, int64_t *held_p, int64_t *cap_p);

/* ---- sessions (session.c) ---------------------------------------------------
 * A session is one sequence's KV across all layers: per layer a length and
 * a page table (logical page j -> physical page). The table maps ids to
 * sessions; lookups take a reference, and a closed session is freed (its
 * pages returned) when its last reference goes. */

struct attnd__owner;

typedef struct attnd__session {
    attnd_session_id id;
    struct attnd__owner *owner; /* the tenant it counts against (owner.c);
                                   NULL: none. Set at creation, never changed */
    atomic_int_fast64_t touched_ms; /* last lookup (attnd_clock_ms): idle expiry */
    pthread_mutex_t mu; /* guards everything below */
    int32_t refs;       /* guarded by the table's lock */
    int32_t n_layers;
    int32_t page_size;
    int32_t res_per_layer; /* pages reserved in each layer (max_tokens) */
    int64_t reserved_left; /* pages of the reservation not yet used */
    int64_t pages_held;
    uint64_t *len;      /* [n_layers] tokens */
    int32_t **pages;    /* [n_layers] page tables */
    int32_t *cap;       /* [n_layers] page table capacity */
    /* AppendKV staging (stage.c): the stage that holds a layer's tail, or
     * NULL; while one does, the layer's page table goes on past len to
     * the staged tokens' pages (owned by that stage, invisible to
     * attention, which reads len tokens) and staged[layer] is the length
     * the layer gets at the commit. No other writer touches such a layer. */
    struct attnd_engine_stage **stager; /* [n_layers] */
    uint64_t *staged;            /* [n_layers] */
    int closed;         /* removed from the table by a close */
    uint64_t max_tokens; /* as created (the durable log records it) */
    /* The length its user sees per layer: a worker group's global length
     * in sequence mode (a rank holds some of the tokens), else len. Kept
     * so that a rank recovered from its log knows the group's lengths. */
    uint64_t *ulen;     /* [n_layers] */
    /* Tiers (tier.c; all NULL/0 without a tier below memory). Page j of
     * layer l is in memory (pages[l][j] >= 0) or below (-1, its bytes in
     * slot slots[l][j]). A layer is RESIDENT (every page in memory: what
     * Attend and appends need), BELOW (some pages below), or LOADING (a
     * load is reading its pages in; wait on cv, touch nothing). slots[l][j]
     * is the slot holding a copy of page j, or -1; a page in memory keeps
     * its copy only while unchanged and only when the tier keeps copies
     * (durable): a write into the page drops it. */
    int32_t **slots;    /* [n_layers] page tables' twins */
    uint8_t *where;     /* [n_layers] ATTND__LAYER_* */
    struct attnd__tjob **job; /* [n_layers] a LOADING layer's load */
    atomic_int n_below; /* layers not RESIDENT (changed under mu; read
                           without it as a hint) */
    atomic_uint_fast64_t last_used; /* the engine's tick at its last use
                                       (eviction picks the smallest) */
    pthread_cond_t cv;  /* a LOADING layer of it settled (with mu) */
    /* DATA_LOSS: its KV failed a checksum or its log is incomplete; every
     * call naming it fails with this message until it is closed. */
    char *lost;
    struct attnd__sparse *sparse; /* its policies (sparse.h); NULL: dense */
} attnd__session;

enum { ATTND__LAYER_RESIDENT = 0, ATTND__LAYER_BELOW = 1, ATTND__LAYER_LOADING = 2 };

typedef struct attnd__session_table {
    pthread_mutex_t mu;
    attnd__session **slots; /* open addressing, linear probing */
    uint32_t mask;          /* capacity - 1, capacity a power of two */
    uint32_t count, max;
} attnd__session_table;

attnd_status attnd__session_table_init(attnd__session_table *t, uint32_t max,
                                       attnd_error *err);
/* Frees every session still in the table, returning their pages. */
void attnd__session_table_cleanup(attnd__session_table *t, attnd_kv_pool *pool);
/* Insert s (refs 1 for the table). ALREADY_EXISTS or RESOURCE_EXHAUSTED. */
attnd_status attnd__session_table_insert(attnd__session_table *t,
                                         attnd__session *s, attnd_error *err);
/* Take one more reference to s (the caller holds one, or s->mu). */
void attnd__session_ref(attnd__session_table *t, attnd__session *s);
/* Look up and take a reference, or NULL. */
attnd__session *attnd__session_get(attnd__session_table *t,
                                   const attnd_session_id *id);
/* Remove from the table (drops the table's reference); NULL if absent.
 * The caller holds the returned reference and must put it. */
attnd__session *attnd__session_remove(attnd__session_table *t,
                                      const attnd_session_id *id);
/* Remove up to cap sessions that nobody holds (the table's reference is
 * the only one: no call, no stage) and that no lookup touched since
 * cutoff_ms; their references pass to the caller (out[0..return)), who
 * closes and puts them. Lookups touch (attnd__session_get). */
size_t attnd__session_table_reap(attnd__session_table *t, int64_t cutoff_ms,
                                 attnd__session **out, size_t cap);
/* Drop a reference; the last one frees the session and its pages. */
void attnd__session_put(attnd__session_table *t, attnd_kv_pool *pool,
                        attnd__session *s);

/* Create a session object (not yet in a table); its reservation must
 * already be held. with_slots: the engine has a tier below memory (slot
 * tables are kept beside the page tables). */
attnd__session *attnd__session_new(const attnd_session_id *id,
                                   int32_t n_layers, int32_t page_size,
                                   int64_t reserved, int32_t initial_cap,
                                   int with_slots);
/* Call f on every session in the table, each under a reference of its own
 * (taken under the table lock, f runs without it); f returns nonzero to
 * stop. The order is the table's, from slot `from` on, wrapping. */
void attnd__session_each(attnd__session_table *t, attnd_kv_pool *pool, uint32_t from,
                         int (*f)(attnd__session *s, void *arg), void *arg);
/* Mark s lost (caller holds s->mu): DATA_LOSS with "session <id>: why"
 * from then on. The first reason stays. */
void attnd__session_lose(attnd__session *s, const char *why);
/* The id as 32 hex digits (buf of 33 bytes). */
const char *attnd__session_hex(const attnd_session_id *id, char buf[33]);
/* Pages reserved for a layer and pages a streaming policy freed from it
 * (sparse_kv.c; res_per_layer and 0 for a dense session). */
void attnd__session_layer_res(const attnd__session *s, int32_t layer, int64_t *res_p,
                              int64_t *holes_p);
/* Of `need` new pages for a layer whose page table now reaches `have`
 * pages, how many redeem the session's reservation for that layer (pages
 * it holds count against it; pages a streaming policy freed do not). */
static inline int64_t attnd__session_from_reserved(const attnd__session *s, int32_t layer,
                                                   int32_t have, int64_t need)
{
    int64_t res = s->res_per_layer, holes = 0;
    if (s->sparse)
        attnd__session_layer_res(s, layer, &res, &holes);
    int64_t left = res - (have - holes);
    return left <= 0 ? 0 : (left < need ? left : need);
}

/* Pages a layer of s holds: ceil(len / page_size). */
static inline int32_t attnd__session_layer_pages(const attnd__session *s,
                                                 int32_t layer)
{
    return (int32_t)((s->len[layer] + (uint64_t)s->page_size - 1) /
                     (uint64_t)s->page_size);
}
/* Make room for `pages` entries in layer's page table (and slot table;
 * RESOURCE_EXHAUSTED on allocation failure); caller holds s->mu. */
attnd_status attnd__session_grow(attnd__session *s, int32_t layer,
                                 int64_t pages, attnd_error *err);

/* ---- MLA projections (weights.c) -------------------------------------------
 * One matrix of a layer, [Hq][rows][cols]: W_UK (rows d_nope, cols d_c) or
 * W_UV (rows d_c, cols d_vo). Shared by reference: the engine's slot holds
 * one, every attend using it another, so a load that replaces it never
 * frees what a running attend reads. host: CPU engines (bf16 or float32);
 * dev: GPU engines (device memory; host then NULL). */
typedef struct attnd__wmat {
    atomic_int refs;
    int32_t rows, cols;
    attnd_dtype dtype;
    void *host;
    void *dev;
    size_t bytes;
} attnd__wmat;

/* ---- owners (owner.c) ------------------------------------------------------
 * The tenant a session counts against: its limits and its figures. An
 * owner is created on first use of its tag and lives as long as the engine
 * (sessions point at it). Pages are counted as the pool counts them: a
 * session's reservation (`reserved`) and the pages it holds (`held`,
 * staged ones included). */

struct attnd__owner_table;

typedef struct attnd__owner {
    struct attnd__owner_table *table; /* its mutex guards the counts */
    size_t page_bytes;
    uint64_t tag;               /* nonzero */
    char name[64];              /* for messages; "" until attnd_engine_owner_set */
    /* limits (0: none) and counts, guarded by the engine's owner_mu */
    uint64_t max_sessions;
    uint64_t max_kv_bytes;
    int64_t sessions, held, reserved;
    /* figures (relaxed atomics) */
    atomic_uint_fast64_t attend_calls, attend_seqs, append_calls, tokens_appended;
    atomic_uint_fast64_t kv_bytes_read, sessions_expired, pages_expired;
} attnd__owner;

typedef struct attnd__owner_table {
    pthread_mutex_t mu;
    attnd__owner **slots; /* open addressing by tag; NULL: empty */
    uint32_t cap, count;
} attnd__owner_table;

void attnd__owner_table_init(attnd__owner_table *t);
void attnd__owner_table_cleanup(attnd__owner_table *t);
/* The owner of tag, made on first use (never freed before the table).
 * NULL with RESOURCE_EXHAUSTED in err when out of memory or owners; tag 0
 * is no owner (INTERNAL: callers pass none). */
attnd__owner *attnd__owner_get(attnd__owner_table *t, uint64_t tag, size_t page_bytes,
                               attnd_error *err);
/* Count `sessions` new sessions, `reserve` pages newly reserved and `take`
 * pages taken, `from_reserved` of which redeem the owner's reservations,
 * against o's limits: RESOURCE_EXHAUSTED naming the limit and the usage
 * (and `field` for KV bytes, "sessions" for the count), nothing counted,
 * when a limit would be passed. o NULL: OK. */
attnd_status attnd__owner_charge(attnd__owner *o, int64_t sessions, int64_t reserve,
                                 int64_t take, int64_t from_reserved, const char *field,
                                 attnd_error *err);
/* Undo a charge (the same arguments; a session's end: 1, what is left of
 * its reservation, the pages it holds, 0). o NULL: no-op. */
void attnd__owner_refund(attnd__owner *o, int64_t sessions, int64_t reserve, int64_t take,
                         int64_t from_reserved);
/* Recovery: `take` pages a recovered session holds, `from_reserved` of
 * which redeem its reservation, counted without looking at limits (the
 * owner had them before the crash; limits are set after recovery). o NULL:
 * no-op. */
void attnd__owner_hold(attnd__owner *o, int64_t take, int64_t from_reserved);
/* Session lookups with the table lock held once for all (session.c):
 * index of the first of ids[0..n) that is not an open session of owner
 * tag `owner` (0: sessions without an owner), or -1; each found one is
 * touched. */
int64_t attnd__session_table_owned(attnd__session_table *t, uint64_t owner,
                                   const attnd_session_id *ids, uint32_t n);

/* ---- the engine (engine.c; stage.c adds the staged appends) --------------- */

typedef struct attnd__gpu attnd__gpu;

struct attnd_engine {
    attnd_model_spec model;
    char model_name[64];
    attnd_kernel_kv_layout layout;
    int64_t entry_elems;  /* wire elements per token */
    size_t entry_bytes;   /* stored bytes per token (what attention reads) */
    attnd_kv_pool pool;
    attnd__session_table table;
    attnd_kernel_pool *kpool; /* kernel threads, shared by every attend call */
    attnd__gpu *gpu;       /* --device cuda:N: page bytes and kernels on the GPU
                              (pool.base is then NULL); NULL: the CPU */
    atomic_uint_fast64_t attend_calls, attend_seqs;
    atomic_uint_fast64_t append_calls, tokens_appended, kv_bytes_read;
    attnd__owner_table owners;       /* owner.c */
    atomic_uint_fast64_t sessions_expired, pages_expired;
    /* sparse policies (sparse*.c): key bounds of every page, reserved
     * address space that fills in as topk-pages layers write pages
     * ([n_pages][attnd_kernel_kv_bounds_elems] bf16), their compact 8-bit
     * form the CPU selection reads (bounds8: attnd_kernel_kv_bounds8_row
     * bytes per page and KV head, made from bounds whenever they change;
     * in the same mapping, after bounds; a GPU engine, whose selection
     * reads bf16 bounds, makes them only when its CPU selection reads
     * them: bounds8_stale, [n_pages] after bounds8, 1 where a page's
     * bounds changed since), and the counters of stats */
    uint16_t *bounds;
    uint8_t *bounds8, *bounds8_stale;
    size_t bounds_map_bytes;
    atomic_uint_fast64_t kv_bytes_dense, select_bytes, select_ns, select_calls, pages_evicted;
    int32_t select_head_agg; /* query heads summed per scoring row (config's, resolved) */
    pthread_mutex_t stage_mu;        /* guards the two below */
    struct attnd_engine_stage *free_stages; /* closed stages kept for reuse */
    int32_t n_free_stages;
    /* tiers and durability (tier_int.h): the store below memory (NULL:
     * none) and the durable log with its checkpoints (NULL: off) */
    struct attnd__tier *tier;
    struct attnd__dur *dur;
    int recovering;  /* recover.c replays: nothing is logged */
    pthread_mutex_t w_mu;            /* guards the slots below (weights.c) */
    attnd__wmat **w_uk, **w_uv;      /* [n_layers]; NULL: none loaded */
};

/* OUT_OF_RANGE naming `layer` unless it is one of the model's. */
attnd_status attnd__engine_check_layer(const attnd_engine *e, uint32_t layer,
                                       attnd_error *err);
/* Write n wire entries (kv: [n][entry_elems] of dtype) at token positions
 * t0 .. t0 + n - 1 of a layer of s, whose page table must already hold
 * their pages; lengths are the caller's to change. Caller holds s->mu.
 * Only the GPU backend fails (INTERNAL: a CUDA error, sticky). host_later
 * (a GPU engine, bf16 entries): the key bounds are folded on the GPU now
 * and the host's copy is the caller's to fold (attnd__sparse_note_host). */
attnd_status attnd__engine_write(attnd_engine *e, attnd__session *s, int32_t layer, uint64_t t0,
                                 uint64_t n, attnd_dtype dtype, const void *kv, int host_later,
                                 attnd_error *err);
/* Pages a layer of s must gain to hold n more tokens. Caller holds s->mu. */
static inline int64_t attnd__engine_pages_for_append(const attnd_engine *e,
                                                     const attnd__session *s, int32_t layer,
                                                     uint64_t n)
{
    int64_t ps = e->layout.page_size;
    return ((int64_t)(s->len[layer] + n) + ps - 1) / ps - attnd__session_layer_pages(s, layer);
}
/* Free every stage kept for reuse (engine destroy). */
void attnd__stages_cleanup(attnd_engine *e);
/* attnd_kv_pool_alloc, moving cold pages to the tier below while memory
 * is short (tier.c). Caller may hold session locks. */
attnd_status attnd__engine_alloc(attnd_engine *e, int32_t n, int32_t from_reserved,
                                 int32_t *pages_out, attnd_error *err);
/* New pages [from, to) of a layer's page table have no slot copy. */
static inline void attnd__session_no_slots(attnd__session *s, int32_t layer, int64_t from,
                                           int64_t to)
{
    if (s->slots)
        for (int64_t j = from; j < to; j++)
            s->slots[layer][j] = -1;
}
/* DATA_LOSS with s's message when it is lost. Caller holds s->mu. */
static inline attnd_status attnd__session_check(const attnd__session *s, attnd_error *err)
{
    if (!s->lost)
        return ATTND_OK;
    return attnd_error_set(err, ATTND_ERR_DATA_LOSS, "%s", s->lost);
}

/* weights.c: the slots (create) and every matrix still held (destroy). */
attnd_status attnd__weights_init(attnd_engine *e, attnd_error *err);
void attnd__weights_cleanup(attnd_engine *e);
/* attnd_engine_load_weights; persist: also keep the matrices in a durable
 * engine's --kv-dir first (weights_store.c; 0 when loading from there). */
attnd_status attnd__weights_load(attnd_engine *e, uint32_t layer, const attnd_engine_weights *w,
                                 uint64_t *bytes_p, int persist, attnd_error *err);
/* weights_store.c: write layer's given matrices under DIR/weights (no-op
 * without --durable); load every kept matrix at start-up (warnings name
 * the files that do not match). */
attnd_status attnd__weights_persist(attnd_engine *e, uint32_t layer, const attnd_engine_weights *w,
                                    attnd_error *err);
void attnd__weights_restore(attnd_engine *e);
/* References to what attend request r needs of layer r->layer: *uk_p (heads
 * form) and *uv_p (d_vo > 0), each checked against the width r states;
 * FAILED_PRECONDITION naming q_form / up_project otherwise (nothing held).
 * Put both back with attnd__weights_put (NULL: no-op). */
attnd_status attnd__weights_get(attnd_engine *e, const attnd_attend_req *r,
                                attnd__wmat **uk_p, attnd__wmat **uv_p, attnd_error *err);
void attnd__weights_put(attnd_engine *e, attnd__wmat *m);

#endif /* ATTND_WORKER_INT_H */
