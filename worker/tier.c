/* Moving KV between memory and the tier below, down: which pages go
 * (eviction), and allocation that evicts for room (attnd__engine_alloc).
 * Back up (loads, prefetch) and the mover thread: tier_load.c.
 *
 * Unit: the layers of a session. Decode touches a session's layers in
 * order, so a layer is what one Attend needs (all of its pages in memory)
 * and what the next ones will: an eviction moves a victim's layers down
 * whole, so the I/O goes in batches of many pages (the queue stays full),
 * except when the tier below has room for only part of one (then the
 * pages that fit go: the accounting is exact to the page).
 *
 * When: an allocation that finds too few free memory pages
 * (attnd__engine_alloc, or a load), or the mover finding fewer than its
 * low water. Who: the least recently used sessions (their last Attend or
 * append, by an engine-wide tick; the 16 coldest of up to 4096 scanned)
 * give up every layer they can: each page without a slot copy is written
 * to a new slot, then its memory page is freed. Victims are taken by
 * trylock, so a session in use (locked by an Attend, a stage's chunk, a
 * load) is never moved and no eviction waits on another call's locks;
 * layers an open AppendKV stream holds, or being loaded, are skipped. When
 * that is not enough, an Attend's own sessions give up their other layers,
 * the one attended last first (decode reads layers in a cycle).
 *
 * Without durability a page's slot is freed when it comes back up (the
 * disk holds only what memory does not); with it the slot stays as the
 * page's durable copy until the page changes (attnd__tier_dirty), so
 * moving a checkpointed page down again costs no write.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnd_assert.h"
#include "sparse.h"
#include "tier_int.h"

static int32_t layer_pages(const attnd__session *s, int32_t l)
{
    return attnd__session_layer_pages(s, l);
}

/* Can layer l of s give pages up now? (some in memory, no stage writing
 * it, no load reading it) */
static int evictable(const attnd__session *s, int32_t l)
{
    int32_t np = layer_pages(s, l);
    if (s->stager[l] || s->where[l] == ATTND__LAYER_LOADING || np == 0)
        return 0;
    if (s->where[l] == ATTND__LAYER_RESIDENT)
        return 1;
    for (int32_t j = 0; j < np; j++)
        if (s->pages[l][j] >= 0)
            return 1;
    return 0;
}

static const char *store_name(const attnd__tier *t)
{
    return t->kind == ATTND__STORE_DISK ? t->path
           : t->kind == ATTND__STORE_HOST ? "host RAM" : "host RAM or its disk";
}

/* After an eviction round that freed nothing: wait a little and say
 * whether to try again (1) or give up (0). */
int attnd__tier_busy_wait(int *idle, int32_t free_before, int32_t free_now)
{
    if (++*idle > 20)
        return 0;
    if (free_now > free_before) /* someone else freed pages: look again */
        return 1;
    struct timespec ts = {0, (long)(*idle < 10 ? *idle : 10) * 1000000L};
    nanosleep(&ts, NULL);
    return 1;
}

/* ---- down ------------------------------------------------------------------- */

/* The i-th layer an eviction of s looks at: all in order (keep < 0), or
 * for the caller's own session, attending layer keep, every layer but it,
 * the one just attended first: decode reads layers in a cycle, so the
 * layer used last is needed last. */
static int32_t nth_layer(const attnd__session *s, int32_t keep, int32_t i)
{
    return keep < 0 ? i : (keep - 1 - i + 2 * s->n_layers) % s->n_layers;
}

/* Move pages of s below (caller holds s->mu): the evictable layers, in
 * nth_layer's order, until about `want` pages are freed; pages without a
 * copy are written to new slots first. Returns memory pages freed; a
 * failure's message goes to why (first one kept). */
static int64_t evict_some(attnd_engine *e, attnd__tio *io, attnd__session *s, int32_t keep,
                          int64_t want, attnd_error *why)
{
    attnd__tier *t = e->tier;
    const int32_t nl = keep < 0 ? s->n_layers : s->n_layers - 1;
    int64_t n_ops = 0, k = 0, freed = 0;
    int32_t last = -1; /* layers nth [0, last] take part */

    if (s->closed)
        return 0;
    for (int32_t i = 0; i < nl && n_ops < want; i++)
        if (evictable(s, nth_layer(s, keep, i)))
            n_ops += layer_pages(s, nth_layer(s, keep, i));
    attnd__tio_op *ops;
    if (n_ops == 0 || attnd__tio_ops(io, n_ops, &ops, why))
        return 0;
    int out_of_slots = 0;
    for (int32_t i = 0, taken = 0; i < nl && !out_of_slots && taken < want; i++) {
        int32_t l = nth_layer(s, keep, i);
        if (!evictable(s, l))
            continue;
        taken += layer_pages(s, l);
        int64_t k0 = k;
        int32_t np = layer_pages(s, l);
        for (int32_t j = 0; j < np; j++)
            if (s->pages[l][j] >= 0 && s->slots[l][j] < 0)
                ops[k++] = (attnd__tio_op){
                    .slot = -1, .mem = s->pages[l][j], .id = s->id, .layer = l, .page = j,
                    .tokens = (int32_t)(j + 1 < np ? (uint64_t)s->page_size
                                                   : s->len[l] - (uint64_t)j * (uint64_t)s->page_size)};
        int64_t got[64], need = k - k0, have = 0;
        while (have < need) { /* as many as there are slots */
            int64_t m = attnd__tier_slots_take(t, need - have < 64 ? need - have : 64, got);
            for (int64_t x = 0; x < m; x++)
                ops[k0 + have + x].slot = got[x];
            have += m;
            if (m == 0)
                break;
        }
        if (have < need) {
            attnd_error err;
            attnd_status st = attnd__tier_slots_alloc(t, 1, got, &err); /* for the message */
            if (st == ATTND_OK)
                attnd__tier_slot_release(t, got[0]);
            else if (!why->code)
                *why = err;
            k = k0 + have;
            out_of_slots = 1;
        }
        last = i;
    }
    int r = k ? attnd__tio_write(io, ops, k) : 0;
    if (r && !why->code)
        attnd_error_set(why, ATTND_ERR_RESOURCE_EXHAUSTED, "kv-disk: writing to %s failed: %s",
                        store_name(t), strerror(-r));
    int64_t i = 0;
    for (int32_t x = 0; x <= last; x++) {
        int32_t l = nth_layer(s, keep, x);
        if (!evictable(s, l))
            continue;
        for (; i < k && ops[i].layer == l; i++) {
            if (ops[i].res == 0)
                s->slots[l][ops[i].page] = (int32_t)ops[i].slot;
            else
                attnd__tier_slot_release(t, ops[i].slot);
        }
        /* every page with a copy below leaves memory, its topk-pages key
         * bounds beside its slot: also a page whose copy was made before
         * (a checkpoint's, a page read back on a durable engine), which
         * no write here carried them with */
        int32_t np = layer_pages(s, l), moved = 0;
        for (int32_t j = 0; j < np; j++)
            if (s->pages[l][j] >= 0 && s->slots[l][j] >= 0) {
                attnd__sparse_bounds_out(e, s, l, s->pages[l][j], s->slots[l][j]);
                attnd_kv_pool_put(&e->pool, &s->pages[l][j], 1);
                s->pages[l][j] = -1;
                moved++;
            }
        if (moved && s->where[l] == ATTND__LAYER_RESIDENT) {
            s->where[l] = ATTND__LAYER_BELOW;
            atomic_fetch_add(&s->n_below, 1);
        }
        freed += moved;
    }
    atomic_fetch_add(&t->n_out, (uint64_t)k);
    return freed;
}

static int64_t evict_locked(attnd_engine *e, attnd__tio *io, attnd__session *s,
                            attnd_error *why)
{
    return evict_some(e, io, s, -1, INT64_MAX, why);
}

/* The sessions this thread holds locked for an Attend, and the layer it
 * attends: when memory is short and no other session gives pages up,
 * their other layers do (attnd__tier_own). */
typedef struct own_ctx {
    attnd__session **ss;
    uint32_t n;
    int32_t keep;
} own_ctx;

static _Thread_local own_ctx own;

void attnd__tier_own(attnd__session **ss, uint32_t n, int32_t keep_layer)
{
    own = (own_ctx){ss, n, keep_layer};
}

int attnd__tier_own_loading(attnd_engine *e)
{
    attnd__tier *t = e->tier;
    int busy = 0;
    pthread_mutex_lock(&t->mv_mu);
    for (uint32_t i = 0; i < own.n && !busy; i++)
        for (int32_t l = 0; l < own.ss[i]->n_layers && !busy; l++)
            busy = own.ss[i]->where[l] == ATTND__LAYER_LOADING && own.ss[i]->job[l] &&
                   !own.ss[i]->job[l]->done;
    pthread_mutex_unlock(&t->mv_mu);
    return busy;
}

void attnd__tier_cold_add(attnd__tier_cold *v, attnd__session *s, uint64_t u)
{
    const int cap = (int)(sizeof v->s / sizeof v->s[0]);
    ATTND_ASSERT(attnd__tier_cold_wants(v, u));
    if (v->n == cap)
        attnd__session_put(&v->e->table, &v->e->pool, v->s[--v->n]);
    int i = v->n++;
    for (; i > 0 && v->used[i - 1] > u; i--) { /* insertion: coldest first */
        v->s[i] = v->s[i - 1];
        v->used[i] = v->used[i - 1];
    }
    attnd__session_ref(&v->e->table, s);
    v->s[i] = s;
    v->used[i] = u;
}

/* The coldest sessions with something in memory. */
static int collect(attnd__session *s, void *arg)
{
    attnd__tier_cold *v = arg;
    uint64_t u = atomic_load_explicit(&s->last_used, memory_order_relaxed);

    if (++v->scanned > 4096)
        return 1;
    if (atomic_load_explicit(&s->n_below, memory_order_relaxed) >= s->n_layers)
        return 0;
    if (!attnd__tier_cold_wants(v, u))
        return 0;
    /* something it could give up now? (busy: skip it) */
    if (pthread_mutex_trylock(&s->mu) != 0)
        return 0;
    int any = 0;
    for (int32_t l = 0; l < s->n_layers && !any; l++)
        any = evictable(s, l);
    pthread_mutex_unlock(&s->mu);
    if (any)
        attnd__tier_cold_add(v, s, u);
    return 0;
}

/* Evict until `want` pages are freed; why (may be NULL) gets the reason
 * of a shortfall. io: the caller's context (its op scratch is used), or
 * NULL to take one (a thread never waits for a second context while it
 * holds one: that could deadlock the set). */
int64_t attnd__tier_evict_for(attnd_engine *e, attnd__tio *io, int64_t want, attnd_error *why)
{
    attnd__tier *t = e->tier;
    attnd_error dummy = {0};
    attnd__tier_cold v = {.e = e};
    int64_t freed = 0;
    int own_io = 0;

    if (!why)
        why = &dummy;
    attnd__session_each(&e->table, &e->pool, atomic_load(&t->cursor), collect, &v);
    atomic_fetch_add(&t->cursor, (unsigned)v.scanned); /* where the next scan starts */
    if (v.n && !io) {
        io = attnd__tio_get(t);
        own_io = 1;
    }
    for (int i = 0; i < v.n; i++) {
        attnd__session *s = v.s[i];
        if (freed < want && pthread_mutex_trylock(&s->mu) == 0) {
            freed += evict_locked(e, io, s, why);
            pthread_mutex_unlock(&s->mu);
        }
        attnd__session_put(&e->table, &e->pool, s);
    }
    /* not enough: the other layers of the sessions this thread attends */
    for (uint32_t i = 0; i < own.n && freed < want; i++) {
        if (!io) {
            io = attnd__tio_get(t);
            own_io = 1;
        }
        /* prefetches read for them wait for their locks, which this
         * thread holds: installed, their layers can go down again */
        attnd__tier_settle_read(e, own.ss[i]);
        freed += evict_some(e, io, own.ss[i], own.keep, want - freed, why);
    }
    if (own_io)
        attnd__tio_put(t, io);
    if (freed)
        atomic_fetch_add(&t->n_evict, 1);
    return freed;
}

int64_t attnd__tier_evict(attnd_engine *e, int64_t want)
{
    return e->tier ? attnd__tier_evict_for(e, NULL, want, NULL) : 0;
}

int64_t attnd__tier_evict_session(attnd_engine *e, attnd__session *s, attnd_error *err)
{
    attnd_error why = {0};
    if (!e->tier)
        return 0;
    pthread_mutex_lock(&s->mu); /* then the context: see evict() */
    attnd__tio *io = attnd__tio_get(e->tier);
    int64_t n = evict_locked(e, io, s, &why);
    int left = 0;
    for (int32_t l = 0; l < s->n_layers; l++)
        left |= evictable(s, l);
    pthread_mutex_unlock(&s->mu);
    attnd__tio_put(e->tier, io);
    if (left && why.code) {
        if (err)
            *err = why;
        return why.code;
    }
    return n;
}

attnd_status attnd__engine_alloc(attnd_engine *e, int32_t n, int32_t from_reserved,
                                 int32_t *pages_out, attnd_error *err)
{
    attnd_error why = {0};
    for (int idle = 0;;) {
        attnd_status st = attnd_kv_pool_alloc(&e->pool, n, from_reserved, pages_out, err);
        if (st != ATTND_ERR_UNAVAILABLE)
            return st;
        int32_t before = e->pool.n_free; /* racy: hints */
        int64_t short_by = n - before;
        if (e->tier && attnd__tier_evict_for(e, NULL, short_by > 0 ? short_by : 1, &why) > 0) {
            idle = 0;
            continue;
        }
        /* the victims may be busy a moment (the mover or a checkpoint
         * holding them, a load): retry for up to ~0.1 s before giving up */
        if (e->tier && attnd__tier_busy_wait(&idle, before, e->pool.n_free))
            continue;
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "kv: KV memory: needs %d pages now, %d free of %d; the others "
                                   "belong to sessions in use%s%s",
                                   n, e->pool.n_free, e->pool.n_pages,
                                   why.code ? ", or cannot move below: " : "",
                                   why.code ? why.msg : "");
    }
}

void attnd__tier_dirty(attnd_engine *e, attnd__session *s, int32_t layer, int64_t j)
{
    if (s->slots && s->slots[layer][j] >= 0) {
        attnd__tier_slot_release(e->tier, s->slots[layer][j]);
        s->slots[layer][j] = -1;
    }
}

void attnd__tier_forget_layer(attnd__tier *t, attnd__session *s, int32_t layer)
{
    int32_t np = layer_pages(s, layer);
    for (int32_t j = 0; j < np; j++)
        if (s->slots[layer][j] >= 0) {
            attnd__tier_slot_release(t, s->slots[layer][j]);
            s->slots[layer][j] = -1;
        }
}

