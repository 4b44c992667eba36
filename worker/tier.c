/* Moving KV between memory and the tier below: which layers go down
 * (evict), how they come back (load, prefetch), and the mover thread.
 *
 * Unit: the layers of a session. Decode touches a session's layers in
 * order, so a layer is what one Attend needs (all of its pages in memory)
 * and what the next ones will: an eviction moves a victim's layers down
 * whole, so the I/O goes in batches of many pages (the queue stays full),
 * except when the tier below has room for only part of one (then those
 * pages go: accounting is exact to the page); a load brings back every
 * page of a layer that is below.
 *
 * Down: when an allocation finds too few free memory pages
 * (attnd__engine_alloc), or the mover finds fewer than its low water, the
 * least recently used sessions (their last Attend or append, by an
 * engine-wide tick; the 16 coldest of up to 4096 scanned) give up every
 * layer they can: each page without a slot copy is written to a new slot,
 * then its memory page is freed. Victims are taken by trylock, so a
 * session in use (locked by an Attend, a stage's chunk, a load) is never
 * moved and no eviction waits on another call's locks; layers an open
 * AppendKV stream holds, or being loaded, are skipped.
 *
 * Up: an Attend locks its sessions and asks for the layer
 * (attnd__tier_attend). Layers below are marked LOADING and queued for
 * the mover together, so one batch of reads serves the whole Attend; the
 * Attend waits on each session's condition variable (releasing only that
 * session's lock). Then it queues the prefetch of the next `prefetch`
 * layers (wrapping to the next step's first ones) of every session with
 * layers below, and computes while the mover reads them: the mover reads
 * a LOADING layer's slots without the session lock (nothing changes a
 * LOADING layer: writers wait, evictions skip it) and takes the lock only
 * to install the pages. Every page read is checked (its header names the
 * page, its CRC-32C is the one written); a page that fails makes its
 * session lost (DATA_LOSS, naming it) and touches nothing else. A load
 * that finds no memory leaves the layer below; the call that needs it
 * loads it itself, or gets RESOURCE_EXHAUSTED.
 *
 * Without durability a loaded layer's slots are freed at once (the disk
 * holds only what memory does not); with it they stay as the pages'
 * durable copies until a page changes (attnd__tier_dirty), so moving a
 * checkpointed layer down again costs no write.
 *
 * Hot path: for sessions wholly in memory an Attend adds one store (the
 * tick) and one load (n_below) per session; nothing is allocated. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnd_assert.h"
#include "tier_int.h"

/* Most jobs the mover reads in one batch. */
#define MOVER_BATCH 64

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
    return t->kind == ATTND__STORE_DISK ? t->path : "host RAM";
}

/* After an eviction round that freed nothing: wait a little and say
 * whether to try again (1) or give up (0). */
static int busy_wait(int *idle, int32_t free_before, int32_t free_now)
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

/* Move what it can of s below (caller holds s->mu): every evictable
 * layer's pages, written to new slots where they have no copy. Returns
 * memory pages freed; a failure's message goes to why (first one kept). */
static int64_t evict_locked(attnd_engine *e, attnd__tio *io, attnd__session *s,
                            attnd_error *why)
{
    attnd__tier *t = e->tier;
    int64_t n_ops = 0, k = 0, freed = 0;
    int32_t last = -1; /* layers [0, last] take part */

    if (s->closed)
        return 0;
    for (int32_t l = 0; l < s->n_layers; l++)
        if (evictable(s, l))
            n_ops += layer_pages(s, l);
    attnd__tio_op *ops;
    if (n_ops == 0 || attnd__tio_ops(io, n_ops, &ops, why))
        return 0;
    int out_of_slots = 0;
    for (int32_t l = 0; l < s->n_layers && !out_of_slots; l++) {
        if (!evictable(s, l))
            continue;
        int64_t k0 = k;
        int32_t np = layer_pages(s, l);
        for (int32_t j = 0; j < np; j++)
            if (s->pages[l][j] >= 0 && s->slots[l][j] < 0)
                ops[k++] = (attnd__tio_op){
                    .slot = -1, .mem = s->pages[l][j], .id = s->id, .layer = l, .page = j,
                    .tokens = (int32_t)(j + 1 < np ? (uint64_t)s->page_size
                                                   : s->len[l] - (uint64_t)j * (uint64_t)s->page_size)};
        int64_t got[64], want = k - k0, have = 0;
        while (have < want) { /* as many as there are slots */
            int64_t m = attnd__tier_slots_take(t, want - have < 64 ? want - have : 64, got);
            for (int64_t x = 0; x < m; x++)
                ops[k0 + have + x].slot = got[x];
            have += m;
            if (m == 0)
                break;
        }
        if (have < want) {
            attnd_error err;
            attnd_status st = attnd__tier_slots_alloc(t, 1, got, &err); /* for the message */
            if (st == ATTND_OK)
                attnd__tier_slot_release(t, got[0]);
            else if (!why->code)
                *why = err;
            k = k0 + have;
            out_of_slots = 1;
        }
        last = l;
    }
    int r = k ? attnd__tio_write(io, ops, k) : 0;
    if (r && !why->code)
        attnd_error_set(why, ATTND_ERR_RESOURCE_EXHAUSTED, "kv-disk: writing to %s failed: %s",
                        store_name(t), strerror(-r));
    int64_t i = 0;
    for (int32_t l = 0; l <= last; l++) {
        if (!evictable(s, l))
            continue;
        for (; i < k && ops[i].layer == l; i++) {
            if (ops[i].res == 0)
                s->slots[l][ops[i].page] = (int32_t)ops[i].slot;
            else
                attnd__tier_slot_release(t, ops[i].slot);
        }
        /* every page with a copy below leaves memory */
        int32_t np = layer_pages(s, l), moved = 0;
        for (int32_t j = 0; j < np; j++)
            if (s->pages[l][j] >= 0 && s->slots[l][j] >= 0) {
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

/* The coldest sessions with something in memory, references held. */
typedef struct victims {
    attnd_engine *e;
    attnd__session *s[16];
    uint64_t used[16];
    int n;
    int64_t scanned;
} victims;

static int collect(attnd__session *s, void *arg)
{
    victims *v = arg;
    const int cap = (int)(sizeof v->s / sizeof v->s[0]);
    uint64_t u = atomic_load_explicit(&s->last_used, memory_order_relaxed);

    if (++v->scanned > 4096)
        return 1;
    if (atomic_load_explicit(&s->n_below, memory_order_relaxed) >= s->n_layers)
        return 0;
    if (v->n == cap && u >= v->used[cap - 1])
        return 0;
    /* something it could give up now? (busy: skip it) */
    if (pthread_mutex_trylock(&s->mu) != 0)
        return 0;
    int any = 0;
    for (int32_t l = 0; l < s->n_layers && !any; l++)
        any = evictable(s, l);
    pthread_mutex_unlock(&s->mu);
    if (!any)
        return 0;
    if (v->n == cap) {
        attnd__session_put(&v->e->table, &v->e->pool, v->s[--v->n]);
    }
    int i = v->n++;
    for (; i > 0 && v->used[i - 1] > u; i--) { /* insertion: coldest first */
        v->s[i] = v->s[i - 1];
        v->used[i] = v->used[i - 1];
    }
    attnd__session_ref(&v->e->table, s);
    v->s[i] = s;
    v->used[i] = u;
    return 0;
}

/* Evict until `want` pages are freed; why (may be NULL) gets the reason
 * of a shortfall. io: the caller's context (its op scratch is used), or
 * NULL to take one (a thread never waits for a second context while it
 * holds one: that could deadlock the set). */
static int64_t evict(attnd_engine *e, attnd__tio *io, int64_t want, attnd_error *why)
{
    attnd__tier *t = e->tier;
    attnd_error dummy = {0};
    victims v = {.e = e};
    int64_t freed = 0;
    int own = 0;

    if (!why)
        why = &dummy;
    attnd__session_each(&e->table, &e->pool, atomic_load(&t->cursor), collect, &v);
    atomic_fetch_add(&t->cursor, (unsigned)v.scanned); /* where the next scan starts */
    if (v.n && !io) {
        io = attnd__tio_get(t);
        own = 1;
    }
    for (int i = 0; i < v.n; i++) {
        attnd__session *s = v.s[i];
        if (freed < want && pthread_mutex_trylock(&s->mu) == 0) {
            freed += evict_locked(e, io, s, why);
            pthread_mutex_unlock(&s->mu);
        }
        attnd__session_put(&e->table, &e->pool, s);
    }
    if (own)
        attnd__tio_put(t, io);
    if (freed)
        atomic_fetch_add(&t->n_evict, 1);
    return freed;
}

int64_t attnd__tier_evict(attnd_engine *e, int64_t want)
{
    return e->tier ? evict(e, NULL, want, NULL) : 0;
}

int64_t attnd__tier_evict_session(attnd_engine *e, attnd__session *s, attnd_error *err)
{
    attnd_error why = {0};
    if (!e->tier)
        return 0;
    attnd__tio *io = attnd__tio_get(e->tier);
    pthread_mutex_lock(&s->mu);
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
        if (e->tier && evict(e, NULL, short_by > 0 ? short_by : 1, &why) > 0) {
            idle = 0;
            continue;
        }
        /* the victims may be busy a moment (the mover or a checkpoint
         * holding them, a load): retry for up to ~0.1 s before giving up */
        if (e->tier && busy_wait(&idle, before, e->pool.n_free))
            continue;
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "kv: KV memory: needs %d pages now, %d free of %d; the others "
                                   "belong to sessions in use%s%s",
                                   n, e->pool.n_free, e->pool.n_pages,
                                   why.code ? ", or cannot move below: " : "",
                                   why.code ? why.msg : "");
    }
}

/* ---- up --------------------------------------------------------------------- */

/* Memory pages for a load of n, evicting for them (with io's op scratch:
 * build the load's ops after this). */
static attnd_status take_pages(attnd_engine *e, attnd__tio *io, int32_t n, int32_t *pages,
                               attnd_error *err)
{
    attnd_error why = {0};
    for (int idle = 0;;) {
        if (attnd_kv_pool_take(&e->pool, n, pages) == ATTND_OK)
            return ATTND_OK;
        int32_t before = e->pool.n_free;
        int64_t short_by = n - before;
        if (evict(e, io, short_by > 0 ? short_by : 1, &why) > 0) {
            idle = 0;
            continue;
        }
        /* the victims may be busy a moment (the mover or a checkpoint
         * holding them, a load): retry for up to ~0.1 s before giving up */
        if (busy_wait(&idle, before, e->pool.n_free))
            continue;
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "kv: no memory to load a layer back: needs %d pages, %d free "
                                   "of %d, the others belong to sessions in use%s%s",
                                   n, e->pool.n_free, e->pool.n_pages,
                                   why.code ? "; " : "", why.code ? why.msg : "");
    }
}

/* Pages of layer l of s below memory. */
static int32_t missing(const attnd__session *s, int32_t l)
{
    int32_t np = layer_pages(s, l), m = 0;
    for (int32_t j = 0; j < np; j++)
        m += s->pages[l][j] < 0;
    return m;
}

/* The ops that read the pages of layer l of s below memory into pages[]
 * (as many as missing()); -1 when one has no slot (recovery: its
 * checkpoint's log record never came), with *hole_p that page. */
static int load_ops(const attnd__session *s, int32_t l, const int32_t *pages,
                    attnd__tio_op *ops, int32_t *hole_p)
{
    int32_t np = layer_pages(s, l), k = 0;
    for (int32_t j = 0; j < np; j++) {
        if (s->pages[l][j] >= 0)
            continue;
        if (s->slots[l][j] < 0) {
            *hole_p = j;
            return -1;
        }
        if (ops)
            ops[k] = (attnd__tio_op){.slot = s->slots[l][j], .mem = pages[k], .id = s->id,
                                     .layer = l, .page = j};
        k++;
    }
    return 0;
}

/* After the m reads of layer l of s (caller holds s->mu): install the
 * pages, or on failure give them back and lose s if a page was bad. */
static attnd_status install(attnd_engine *e, attnd__session *s, int32_t l, const int32_t *pages,
                            const attnd__tio_op *ops, int32_t m, int res, attnd_error *err)
{
    attnd__tier *t = e->tier;
    if (res) {
        char why[PATH_MAX + 256];
        int32_t i = 0;
        while (i < m - 1 && ops[i].res == 0)
            i++;
        attnd_kv_pool_put(&e->pool, pages, m);
        s->where[l] = ATTND__LAYER_BELOW;
        if (res == ATTND__TIO_BAD)
            snprintf(why, sizeof why, "KV page %d of layer %d failed its checksum on reload "
                     "(slot %lld of %s); its KV is lost, close it",
                     ops[i].page, l, (long long)ops[i].slot, store_name(t));
        else
            snprintf(why, sizeof why, "KV page %d of layer %d could not be read back from %s "
                     "(slot %lld): %s; its KV is lost, close it",
                     ops[i].page, l, store_name(t), (long long)ops[i].slot, strerror(-res));
        attnd__session_lose(s, why);
        return attnd_error_set(err, ATTND_ERR_DATA_LOSS, "%s", s->lost);
    }
    for (int32_t i = 0; i < m; i++) {
        int32_t j = ops[i].page;
        s->pages[l][j] = pages[i];
        if (!t->keep) {
            attnd__tier_slot_release(t, s->slots[l][j]);
            s->slots[l][j] = -1;
        }
    }
    atomic_fetch_add(&t->n_in, (uint64_t)m);
    if (missing(s, l) == 0) {
        s->where[l] = ATTND__LAYER_RESIDENT;
        atomic_fetch_sub(&s->n_below, 1);
    } else {
        s->where[l] = ATTND__LAYER_BELOW; /* part of it (load_now goes on) */
    }
    return ATTND_OK;
}

/* Read the missing pages of layer l of s in now (caller holds s->mu; the
 * layer BELOW), as memory frees: whatever pages are free are filled first,
 * and their slots (without durability) freed, so that the other pages
 * evicted for the rest have room below even when every tier is full. */
static attnd_status load_now(attnd_engine *e, attnd__session *s, int32_t l, attnd_error *err)
{
    attnd__tier *t = e->tier;
    int32_t m, *pages, hole = -1;
    attnd__tio_op *ops;
    attnd_error why = {0};
    attnd_status st = ATTND_OK;
    attnd__tio *io = attnd__tio_get(t);

    if (load_ops(s, l, NULL, NULL, &hole)) {
        char msg[160];
        snprintf(msg, sizeof msg, "layer %d misses KV page %d, which its last checkpoint "
                 "left in the log, and the log does not hold it; its KV is lost, close it",
                 l, hole);
        attnd__session_lose(s, msg);
        st = attnd_error_set(err, ATTND_ERR_DATA_LOSS, "%s", s->lost);
        goto out;
    }
    for (int idle = 0; (m = missing(s, l)) > 0;) {
        if ((st = attnd__tio_pages(io, m, &pages, err)))
            goto out;
        int32_t got = attnd_kv_pool_take_upto(&e->pool, m, pages);
        if (got == 0) {
            int32_t before = e->pool.n_free;
            if (evict(e, io, m, &why) > 0 || busy_wait(&idle, before, e->pool.n_free))
                continue;
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                 "kv: no memory to load a layer back: needs %d pages, %d free "
                                 "of %d, the others belong to sessions in use%s%s",
                                 m, e->pool.n_free, e->pool.n_pages, why.code ? "; " : "",
                                 why.code ? why.msg : "");
            goto out;
        }
        idle = 0;
        if ((st = attnd__tio_ops(io, m, &ops, err))) {
            attnd_kv_pool_put(&e->pool, pages, got);
            goto out;
        }
        load_ops(s, l, pages, ops, &hole); /* the first `got` of them */
        if ((st = install(e, s, l, pages, ops, got, attnd__tio_read(io, ops, got), err)))
            goto out;
    }
out:
    attnd__tio_put(t, io);
    return st;
}

/* Queue a load of layer l of s for the mover (caller holds s->mu; the
 * layer BELOW). 0: queued (LOADING now); -1: the queue is full. */
static int enqueue(attnd_engine *e, attnd__session *s, int32_t l, int prefetch)
{
    attnd__tier *t = e->tier;
    int ok = 0;
    attnd__session_ref(&e->table, s);
    pthread_mutex_lock(&t->mv_mu);
    if (t->mover_running && t->job_n < t->job_cap) {
        t->jobs[(t->job_head + t->job_n++) % t->job_cap] = (struct attnd__tjob){s, l, prefetch};
        s->where[l] = ATTND__LAYER_LOADING;
        pthread_cond_signal(&t->mv_cv);
        ok = 1;
    }
    pthread_mutex_unlock(&t->mv_mu);
    if (!ok)
        attnd__session_put(&e->table, &e->pool, s);
    return ok ? 0 : -1;
}

attnd_status attnd__tier_load(attnd_engine *e, attnd__session *s, int32_t layer,
                              attnd_error *err)
{
    attnd_status st = attnd__session_check(s, err);
    if (st || !e->tier)
        return st;
    while (s->where[layer] == ATTND__LAYER_LOADING) {
        atomic_fetch_add(&e->tier->n_waits, 1);
        pthread_cond_wait(&s->cv, &s->mu);
    }
    if ((st = attnd__session_check(s, err)))
        return st;
    if (s->where[layer] == ATTND__LAYER_BELOW)
        return load_now(e, s, layer, err);
    return ATTND_OK;
}

attnd_status attnd__tier_attend(attnd_engine *e, attnd__session **ss, uint32_t n, int32_t layer,
                                attnd_error *err)
{
    attnd__tier *t = e->tier;
    const uint64_t tick = atomic_fetch_add_explicit(&t->tick, 1, memory_order_relaxed) + 1;
    int below = 0;

    for (uint32_t i = 0; i < n; i++) {
        attnd__session *s = ss[i];
        atomic_store_explicit(&s->last_used, tick, memory_order_relaxed);
        if (s->lost)
            return attnd_error_set(err, ATTND_ERR_DATA_LOSS, "session_ids[%u]: %s", i, s->lost);
        if (atomic_load_explicit(&s->n_below, memory_order_relaxed) == 0)
            continue;
        below = 1;
        /* every load of this Attend in one batch of the mover's */
        if (s->where[layer] == ATTND__LAYER_BELOW)
            enqueue(e, s, layer, 0);
    }
    if (!below)
        return ATTND_OK;
    for (uint32_t i = 0; i < n; i++) {
        attnd_status st = attnd__tier_load(e, ss[i], layer, err);
        if (st) {
            if (st == ATTND_ERR_DATA_LOSS)
                attnd_error_set(err, st, "session_ids[%u]: %s", i, ss[i]->lost);
            return st;
        }
    }
    /* prefetch what decode reads next: the following layers, wrapping
     * round to the next step's first ones */
    for (uint32_t i = 0; i < n && t->prefetch > 0; i++) {
        attnd__session *s = ss[i];
        for (int32_t d = 1; d <= t->prefetch && d < s->n_layers; d++) {
            int32_t l = (layer + d) % s->n_layers;
            if (s->where[l] == ATTND__LAYER_BELOW && !s->lost && enqueue(e, s, l, 1))
                break; /* the queue is full */
        }
    }
    return ATTND_OK;
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

/* ---- the mover ---------------------------------------------------------------- */

/* Read a batch of queued loads and install them. */
static void run_jobs(attnd_engine *e, struct attnd__tjob *jobs, int n)
{
    attnd__tier *t = e->tier;
    attnd__tio *io = attnd__tio_get(t);
    attnd__tio_op *ops = NULL;
    int32_t *pages = NULL, hole;
    int64_t total = 0, k = 0;
    attnd_error err;
    int64_t at[MOVER_BATCH]; /* each job's first page and op: -1 none */
    int32_t cnt[MOVER_BATCH];

    for (int i = 0; i < n; i++) /* a LOADING layer does not change */
        total += cnt[i] = missing(jobs[i].s, jobs[i].layer);
    /* memory first (evicting with io's scratch), then the ops */
    int ok = attnd__tio_pages(io, total, &pages, &err) == ATTND_OK;
    for (int i = 0; i < n; i++) {
        at[i] = -1;
        if (!ok || load_ops(jobs[i].s, jobs[i].layer, NULL, NULL, &hole) ||
            take_pages(e, io, cnt[i], pages + k, &err))
            continue; /* the caller loads it (and reports) */
        at[i] = k;
        k += cnt[i];
    }
    if (attnd__tio_ops(io, k, &ops, &err)) {
        for (int i = 0; i < n; i++)
            if (at[i] >= 0) {
                attnd_kv_pool_put(&e->pool, pages + at[i], cnt[i]);
                at[i] = -1;
            }
        k = 0;
    }
    for (int i = 0; i < n; i++)
        if (at[i] >= 0)
            load_ops(jobs[i].s, jobs[i].layer, pages + at[i], ops + at[i], &hole);
    if (k)
        attnd__tio_read(io, ops, k);
    for (int i = 0; i < n; i++) {
        attnd__session *s = jobs[i].s;
        int32_t l = jobs[i].layer;
        pthread_mutex_lock(&s->mu);
        if (at[i] >= 0) {
            int res = 0;
            for (int32_t j = 0; j < cnt[i] && !res; j++)
                res = ops[at[i] + j].res;
            install(e, s, l, pages + at[i], ops + at[i], cnt[i], res, &err);
            if (jobs[i].prefetch && !res)
                atomic_fetch_add(&t->n_prefetched, (uint64_t)cnt[i]);
        } else {
            s->where[l] = ATTND__LAYER_BELOW; /* the caller loads it */
        }
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        attnd__session_put(&e->table, &e->pool, s);
    }
    attnd__tio_put(t, io);
}

static void *mover_main(void *arg)
{
    attnd_engine *e = arg;
    attnd__tier *t = e->tier;
    struct attnd__tjob batch[MOVER_BATCH];

    pthread_mutex_lock(&t->mv_mu);
    while (!t->stop) {
        if (t->job_n > 0) {
            int n = 0;
            while (t->job_n > 0 && n < MOVER_BATCH) {
                batch[n++] = t->jobs[t->job_head];
                t->job_head = (t->job_head + 1) % t->job_cap;
                t->job_n--;
            }
            pthread_mutex_unlock(&t->mv_mu);
            run_jobs(e, batch, n);
            pthread_mutex_lock(&t->mv_mu);
            continue;
        }
        int32_t free_now = e->pool.n_free; /* racy: a hint */
        int64_t freed = 0;
        if (free_now < t->low_water) {
            pthread_mutex_unlock(&t->mv_mu);
            freed = evict(e, NULL, 2 * (int64_t)t->low_water - free_now, NULL);
            pthread_mutex_lock(&t->mv_mu);
            if (freed > 0)
                continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        if (!t->stop && t->job_n == 0)
            pthread_cond_timedwait(&t->mv_cv, &t->mv_mu, &ts);
    }
    pthread_mutex_unlock(&t->mv_mu);
    return NULL;
}

attnd_status attnd__tier_start(attnd__tier *t, attnd_error *err)
{
    pthread_mutex_lock(&t->mv_mu);
    t->stop = 0;
    int rc = pthread_create(&t->mover, NULL, mover_main, t->e);
    t->mover_running = rc == 0;
    pthread_mutex_unlock(&t->mv_mu);
    if (rc)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv-dir: cannot start the mover thread: %s", strerror(rc));
    return ATTND_OK;
}

void attnd__tier_stop(attnd__tier *t)
{
    if (!t || !t->mover_running)
        return;
    pthread_mutex_lock(&t->mv_mu);
    t->stop = 1;
    pthread_cond_broadcast(&t->mv_cv);
    pthread_mutex_unlock(&t->mv_mu);
    pthread_join(t->mover, NULL);
    /* jobs queued since: give them back as they were */
    pthread_mutex_lock(&t->mv_mu);
    t->mover_running = 0;
    while (t->job_n > 0) {
        struct attnd__tjob j = t->jobs[t->job_head];
        t->job_head = (t->job_head + 1) % t->job_cap;
        t->job_n--;
        pthread_mutex_unlock(&t->mv_mu);
        pthread_mutex_lock(&j.s->mu);
        j.s->where[j.layer] = ATTND__LAYER_BELOW;
        pthread_cond_broadcast(&j.s->cv);
        pthread_mutex_unlock(&j.s->mu);
        attnd__session_put(&t->e->table, &t->e->pool, j.s);
        pthread_mutex_lock(&t->mv_mu);
    }
    pthread_mutex_unlock(&t->mv_mu);
}
