/* Moving KV back up from the tier below: loads before an Attend reads a
 * layer, prefetch of the layers after it, and the mover thread that reads
 * them (and keeps a few memory pages free). Down: tier.c.
 *
 * An Attend locks its sessions and asks for the layer (attnd__tier_attend).
 * A layer with pages below becomes LOADING and is queued for the mover, the
 * whole batch's together, so one run of reads serves the Attend; then the
 * next `prefetch` layers (wrapping to the next step's first ones) of every
 * session with pages below are queued too, and the Attend waits for its
 * own loads (a condition variable of the mover's) and installs their pages
 * itself, holding its locks throughout. The mover takes no session lock to
 * read (a LOADING layer does not change: writers wait for it, evictions
 * skip it, page tables stay put) and never waits for one: a read load is
 * installed by whoever holds the session's lock next (the Attend waiting,
 * a later call that touches the layer), or by the mover when a trylock
 * finds the session free (prefetches nobody waited for). So no lock cycle
 * exists between Attends holding several sessions and the mover.
 *
 * Every page read is checked (its header names the page; its CRC-32C is the
 * one written); a page that fails makes its session lost (DATA_LOSS naming
 * it) and touches nothing else. A load the mover finds no memory for is
 * done by the caller that needs it (load_now), which evicts with its own
 * sessions' other layers as a last resort and fills memory as it frees,
 * page by page, so a layer comes back even when every tier is full; if
 * even that fails, RESOURCE_EXHAUSTED.
 *
 * Hot path: for sessions wholly in memory an Attend adds one store (the
 * tick) and one load (n_below) per session; nothing is allocated. Loads
 * take job records from a free list (allocation only while it grows). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnd_assert.h"
#include "sparse.h"
#include "tier_int.h"

/* Most loads the mover reads in one run. */
#define MOVER_BATCH 64

static int32_t layer_pages(const attnd__session *s, int32_t l)
{
    return attnd__session_layer_pages(s, l);
}

/* Where slot k is, for a message. */
static const char *store_name(const attnd__tier *t, int64_t k)
{
    return attnd__tier_host_slot(t, k) ? "host RAM" : t->path;
}

/* Pages of layer l of s below memory. */
static int32_t missing(const attnd__session *s, int32_t l)
{
    int32_t np = layer_pages(s, l), m = 0;
    for (int32_t j = 0; j < np; j++)
        m += s->pages[l][j] < 0 && !attnd__sparse_gone(s, l, j);
    return m;
}

/* A page of layer l below memory without a slot (recovery: its
 * checkpoint's log record never came), or -1. */
static int32_t hole(const attnd__session *s, int32_t l)
{
    int32_t np = layer_pages(s, l);
    for (int32_t j = 0; j < np; j++)
        if (s->pages[l][j] < 0 && s->slots[l][j] < 0 && !attnd__sparse_gone(s, l, j))
            return j;
    return -1;
}

static attnd_status lose_hole(attnd__session *s, int32_t l, int32_t j, attnd_error *err)
{
    char why[200];
    snprintf(why, sizeof why, "layer %d misses KV page %d, which its last checkpoint left in "
             "the log, and the log does not hold it; its KV is lost, close it", l, j);
    attnd__session_lose(s, why);
    return attnd_error_set(err, ATTND_ERR_DATA_LOSS, "%s", s->lost);
}

/* Memory pages for the mover's load of n, evicting for them (with io's op
 * scratch: build the load's ops after this). It does not wait for pages
 * that evictions cannot free now: those belong to sessions in use, most
 * often the very Attend that waits for this run (its locks held), whose
 * own load_now then makes room from its other layers; a mover that waited
 * would hold the run's loads, and their layers' pages, meanwhile. */
static attnd_status take_pages(attnd_engine *e, attnd__tio *io, int32_t n, int32_t *pages,
                               attnd_error *err)
{
    attnd_error why = {0};
    for (;;) {
        if (attnd_kv_pool_take(&e->pool, n, pages) == ATTND_OK)
            return ATTND_OK;
        int64_t short_by = n - e->pool.n_free;
        if (attnd__tier_evict_for(e, io, short_by > 0 ? short_by : 1, &why) > 0)
            continue;
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv: no memory to load a layer back: needs %d pages, %d free "
                               "of %d, the others belong to sessions in use%s%s",
                               n, e->pool.n_free, e->pool.n_pages, why.code ? "; " : "",
                               why.code ? why.msg : "");
    }
}

/* The read ops of the (up to m) pages of layer l of s below memory, into
 * pages[]. */
static int32_t load_ops(const attnd__session *s, int32_t l, const int32_t *pages, int32_t m,
                        attnd__tio_op *ops)
{
    int32_t np = layer_pages(s, l), k = 0;
    for (int32_t j = 0; j < np && k < m; j++)
        if (s->pages[l][j] < 0 && !attnd__sparse_gone(s, l, j)) {
            ops[k] = (attnd__tio_op){.slot = s->slots[l][j], .mem = pages[k], .id = s->id,
                                     .layer = l, .page = j};
            k++;
        }
    return k;
}

/* Pages read for layer l of s (caller holds s->mu): pages[i] holds page
 * page_j[i]. res: the reads' outcome (bad_j / bad_slot: the failure);
 * on failure the pages go back and s is lost. */
static attnd_status install(attnd_engine *e, attnd__session *s, int32_t l, int32_t m,
                            const int32_t *pages, const int32_t *page_j, int res, int32_t bad_j,
                            int64_t bad_slot, attnd_error *err)
{
    attnd__tier *t = e->tier;
    if (res) {
        char why[PATH_MAX + 256];
        attnd_kv_pool_put(&e->pool, pages, m);
        s->where[l] = ATTND__LAYER_BELOW;
        if (res == ATTND__TIO_BAD)
            snprintf(why, sizeof why, "KV page %d of layer %d failed its checksum on reload "
                     "(slot %lld of %s); its KV is lost, close it",
                     bad_j, l, (long long)bad_slot, store_name(t, bad_slot));
        else
            snprintf(why, sizeof why, "KV page %d of layer %d could not be read back from %s "
                     "(slot %lld): %s; its KV is lost, close it",
                     bad_j, l, store_name(t, bad_slot), (long long)bad_slot, strerror(-res));
        attnd__session_lose(s, why);
        return attnd_error_set(err, ATTND_ERR_DATA_LOSS, "%s", s->lost);
    }
    attnd_status st = ATTND_OK;
    for (int32_t i = 0; i < m; i++) {
        int32_t j = page_j[i];
        ATTND_ASSERT(s->pages[l][j] < 0);
        s->pages[l][j] = pages[i];
        /* topk-pages: the page's key bounds come back with it */
        attnd_status bst = attnd__sparse_bounds_in(e, s, l, s->slots[l][j], pages[i], err);
        if (bst && st == ATTND_OK)
            st = bst;
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
    return st;
}

/* The first failure among n ops: its result, page and slot. */
static int first_failure(const attnd__tio_op *ops, int32_t n, int32_t *j_p, int64_t *slot_p)
{
    for (int32_t i = 0; i < n; i++)
        if (ops[i].res) {
            *j_p = ops[i].page;
            *slot_p = ops[i].slot;
            return ops[i].res;
        }
    return 0;
}

/* Read the pages of layer l of s below memory now (caller holds s->mu; the
 * layer BELOW), as memory frees: whatever pages are free are filled first,
 * and their slots (without durability) freed, so that the pages evicted
 * for the rest have room below even when every tier is full. */
static attnd_status load_now(attnd_engine *e, attnd__session *s, int32_t l, attnd_error *err)
{
    attnd__tier *t = e->tier;
    int32_t m, *pages, bad_j = -1;
    int64_t bad_slot = -1;
    attnd__tio_op *ops;
    attnd_error why = {0};
    attnd_status st = ATTND_OK;

    if ((bad_j = hole(s, l)) >= 0)
        return lose_hole(s, l, bad_j, err);
    attnd__tio *io = attnd__tio_get(t);
    for (int idle = 0, own_waits = 0; (m = missing(s, l)) > 0;) {
        if ((st = attnd__tio_pages(io, 2 * (int64_t)m, &pages, err))) /* + their places */
            break;
        int32_t got = attnd_kv_pool_take_upto(&e->pool, m, pages);
        if (got == 0) {
            int32_t before = e->pool.n_free;
            if (attnd__tier_evict_for(e, io, m, &why) > 0)
                continue;
            /* the mover reading layers of this Attend's sessions (they
             * pin their pages): once read, they are installed and can go
             * down again (attnd__tier_evict_for). The mover never waits
             * for memory, but it may wait for an I/O context (all held by
             * threads like this one): 2 s at most */
            if (own_waits < 10000 && attnd__tier_own_loading(e)) {
                own_waits++;
                struct timespec ts = {0, 200000L};
                nanosleep(&ts, NULL);
                continue;
            }
            if (attnd__tier_busy_wait(&idle, before, e->pool.n_free))
                continue;
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                 "kv: no memory to load a layer back: needs %d pages, %d free "
                                 "of %d, the others belong to sessions in use%s%s",
                                 m, e->pool.n_free, e->pool.n_pages, why.code ? "; " : "",
                                 why.code ? why.msg : "");
            break;
        }
        idle = 0;
        if ((st = attnd__tio_ops(io, got, &ops, err))) {
            attnd_kv_pool_put(&e->pool, pages, got);
            break;
        }
        load_ops(s, l, pages, got, ops);
        int res = attnd__tio_read(io, ops, got);
        if (res)
            first_failure(ops, got, &bad_j, &bad_slot);
        int32_t *pj = pages + m;
        for (int32_t i = 0; i < got; i++)
            pj[i] = ops[i].page;
        if ((st = install(e, s, l, got, pages, pj, res, bad_j, bad_slot, err)))
            break;
    }
    attnd__tio_put(t, io);
    /* a layer below with nothing left to read is resident: recovery puts a
     * checkpoint's PAGE records straight into memory, so a layer may be
     * BELOW with every page in memory (streaming's eviction, next, wants
     * a resident layer) */
    if (st == ATTND_OK && s->where[l] == ATTND__LAYER_BELOW && missing(s, l) == 0) {
        s->where[l] = ATTND__LAYER_RESIDENT;
        atomic_fetch_sub(&s->n_below, 1);
    }
    return st;
}

/* ---- load jobs --------------------------------------------------------------- */

/* A job record from the free list (or new). Caller holds mv_mu. */
static attnd__tjob *job_get(attnd__tier *t)
{
    attnd__tjob *j = t->spare;
    if (j)
        t->spare = j->next;
    else if (!(j = calloc(1, sizeof *j)))
        return NULL;
    j->next = NULL;
    j->done = j->installed = 0;
    j->res = 0;
    j->m = 0;
    return j;
}

/* Queue a load of layer l of s (caller holds s->mu; the layer BELOW).
 * 0: queued (LOADING now); -1: not (no mover, no memory for a record). */
static int enqueue(attnd_engine *e, attnd__session *s, int32_t l, int prefetch)
{
    attnd__tier *t = e->tier;
    attnd__tjob *j = NULL;
    if (hole(s, l) >= 0)
        return -1; /* the caller finds it and reports */
    attnd__session_ref(&e->table, s);
    pthread_mutex_lock(&t->mv_mu);
    if (t->mover_running && !t->stop && (j = job_get(t))) {
        j->s = s;
        j->layer = l;
        j->prefetch = prefetch;
        if (t->queue_tail)
            t->queue_tail->next = j;
        else
            t->queue = j;
        t->queue_tail = j;
        t->n_queued++;
        s->where[l] = ATTND__LAYER_LOADING;
        s->job[l] = j;
        pthread_cond_signal(&t->mv_cv);
    }
    pthread_mutex_unlock(&t->mv_mu);
    if (!j)
        attnd__session_put(&e->table, &e->pool, s);
    return j ? 0 : -1;
}

/* Apply layer l's load, once read (caller holds s->mu; the layer LOADING):
 * waits for the mover when `wait`, else returns if it is not read yet. */
static attnd_status settle(attnd_engine *e, attnd__session *s, int32_t l, int wait,
                           attnd_error *err)
{
    attnd__tier *t = e->tier;
    attnd__tjob *j = s->job[l];
    ATTND_ASSERT(j && j->s == s && j->layer == l);
    pthread_mutex_lock(&t->mv_mu);
    if (!j->done && wait)
        atomic_fetch_add(&t->n_waits, 1);
    while (!j->done && wait)
        pthread_cond_wait(&t->done_cv, &t->mv_mu);
    int done = j->done;
    pthread_mutex_unlock(&t->mv_mu);
    if (!done)
        return ATTND_OK;
    attnd_status st = ATTND_OK;
    s->job[l] = NULL;
    if (j->res == -ENOMEM) /* nothing read: the caller loads it */
        s->where[l] = ATTND__LAYER_BELOW;
    else
        st = install(e, s, l, j->m, j->pages, j->page_j, j->res, j->bad_j, j->bad_slot, err);
    if (st == ATTND_OK && j->prefetch && j->res == 0)
        atomic_fetch_add(&t->n_prefetched, (uint64_t)j->m);
    pthread_mutex_lock(&t->mv_mu);
    j->installed = 1; /* the mover recycles it */
    pthread_cond_signal(&t->mv_cv);
    pthread_mutex_unlock(&t->mv_mu);
    return st;
}

int32_t attnd__tier_settle_read(attnd_engine *e, attnd__session *s)
{
    attnd_error err;
    int32_t n = 0;
    for (int32_t l = 0; l < s->n_layers; l++)
        if (s->where[l] == ATTND__LAYER_LOADING && s->job[l]) {
            settle(e, s, l, 0, &err); /* a failure loses s: its next call says so */
            n += s->where[l] != ATTND__LAYER_LOADING;
        }
    return n;
}

attnd_status attnd__tier_load(attnd_engine *e, attnd__session *s, int32_t layer,
                              attnd_error *err)
{
    attnd_status st = attnd__session_check(s, err);
    if (st || !e->tier)
        return st;
    if (s->where[layer] == ATTND__LAYER_LOADING && (st = settle(e, s, layer, 1, err)))
        return st;
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
        /* every load of this Attend in one run of the mover's */
        if (s->where[layer] == ATTND__LAYER_BELOW)
            enqueue(e, s, layer, 0);
    }
    if (!below)
        return ATTND_OK;
    /* prefetch what decode reads next: the following layers, wrapping
     * round to the next step's first ones */
    for (uint32_t i = 0; i < n && t->prefetch > 0; i++) {
        attnd__session *s = ss[i];
        for (int32_t d = 1; d <= t->prefetch && d < s->n_layers; d++) {
            int32_t l = (layer + d) % s->n_layers;
            if (s->where[l] == ATTND__LAYER_BELOW && enqueue(e, s, l, 1))
                break;
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        attnd_status st = attnd__tier_load(e, ss[i], layer, err);
        if (st) {
            if (st == ATTND_ERR_DATA_LOSS)
                attnd_error_set(err, st, "session_ids[%u]: %s", i, ss[i]->lost);
            return st;
        }
    }
    return ATTND_OK;
}

attnd_status attnd__tier_load_all(attnd_engine *e, attnd__session **ss, uint32_t n,
                                  attnd_error *err)
{
    attnd_status st = ATTND_OK;
    for (uint32_t i = 0; i < n; i++) /* (the caller orders them by address) */
        pthread_mutex_lock(&ss[i]->mu);
    for (uint32_t i = 0; i < n; i++)
        for (int32_t l = 0; l < ss[i]->n_layers; l++)
            if (ss[i]->where[l] == ATTND__LAYER_BELOW)
                enqueue(e, ss[i], l, 0);
    for (uint32_t i = 0; i < n; i++)
        for (int32_t l = 0; l < ss[i]->n_layers && st == ATTND_OK; l++)
            st = attnd__tier_load(e, ss[i], l, err);
    for (uint32_t i = n; i-- > 0;)
        pthread_mutex_unlock(&ss[i]->mu);
    return st;
}

/* ---- the mover ---------------------------------------------------------------- */

/* Read a run of queued loads (no session lock taken: their layers are
 * LOADING) and mark them read. */
static void read_jobs(attnd_engine *e, attnd__tjob **jobs, int n)
{
    attnd__tier *t = e->tier;
    attnd__tio *io = attnd__tio_get(t);
    attnd__tio_op *ops = NULL;
    attnd_error err;
    int64_t total = 0, at[MOVER_BATCH];

    for (int i = 0; i < n; i++) {
        attnd__tjob *j = jobs[i];
        j->m = missing(j->s, j->layer);
        if (j->m > j->cap) {
            int32_t c = j->cap ? j->cap : 16;
            while (c < j->m)
                c *= 2;
            int32_t *p = realloc(j->pages, sizeof *p * (size_t)c);
            if (p)
                j->pages = p;
            int32_t *q = p ? realloc(j->page_j, sizeof *q * (size_t)c) : NULL;
            if (q)
                j->page_j = q;
            if (p && q)
                j->cap = c;
        }
        /* memory first (evicting with io's scratch), then the ops. A page
         * being loaded holds its memory page and its slot at once, so a
         * prefetch evicts colder sessions for room only while the tiers
         * together have that much to spare; nearly full, it takes only
         * memory free beyond the low water, leaving the room to the loads
         * an Attend waits for */
        at[i] = -1;
        j->res = -ENOMEM;
        int ok = j->m <= j->cap;
        if (ok && j->prefetch) {
            int64_t held, cap;
            attnd_kv_pool_logical(&e->pool, &held, &cap);
            if (cap - held - e->pool.reserved >= (int64_t)j->m + t->low_water)
                ok = take_pages(e, io, j->m, j->pages, &err) == ATTND_OK;
            else
                ok = e->pool.n_free >= j->m + t->low_water &&
                     attnd_kv_pool_take(&e->pool, j->m, j->pages) == ATTND_OK;
        } else if (ok) {
            ok = take_pages(e, io, j->m, j->pages, &err) == ATTND_OK;
        }
        if (ok) {
            at[i] = total;
            total += j->m;
        }
    }
    if (total && attnd__tio_ops(io, total, &ops, &err)) {
        for (int i = 0; i < n; i++)
            if (at[i] >= 0) {
                attnd_kv_pool_put(&e->pool, jobs[i]->pages, jobs[i]->m);
                at[i] = -1;
            }
        total = 0;
    }
    for (int i = 0; i < n; i++)
        if (at[i] >= 0)
            load_ops(jobs[i]->s, jobs[i]->layer, jobs[i]->pages, jobs[i]->m, ops + at[i]);
    if (total)
        attnd__tio_read(io, ops, total);
    for (int i = 0; i < n; i++) {
        attnd__tjob *j = jobs[i];
        if (at[i] < 0)
            continue;
        j->res = first_failure(ops + at[i], j->m, &j->bad_j, &j->bad_slot);
        for (int32_t k = 0; k < j->m; k++)
            j->page_j[k] = ops[at[i] + k].page;
    }
    attnd__tio_put(t, io);
}

/* Read loads nobody waited for: install them when their session is free
 * (trylock); recycle installed ones. Caller holds mv_mu (dropped inside). */
static void tend_done(attnd_engine *e)
{
    attnd__tier *t = e->tier;
    attnd_error err;
    for (attnd__tjob **pp = &t->done; *pp;) {
        attnd__tjob *j = *pp;
        if (!j->installed) {
            attnd__session *s = j->s;
            pthread_mutex_unlock(&t->mv_mu);
            if (pthread_mutex_trylock(&s->mu) == 0) {
                if (s->job[j->layer] == j)
                    settle(e, s, j->layer, 0, &err);
                pthread_mutex_unlock(&s->mu);
            }
            pthread_mutex_lock(&t->mv_mu);
            if (!j->installed) {
                pp = &j->next;
                continue;
            }
        }
        *pp = j->next;
        attnd__session *s = j->s;
        j->s = NULL;
        j->next = t->spare;
        t->spare = j;
        pthread_mutex_unlock(&t->mv_mu);
        attnd__session_put(&e->table, &e->pool, s);
        pthread_mutex_lock(&t->mv_mu);
        pp = &t->done; /* the list may have changed: from the start */
    }
}

static void *mover_main(void *arg)
{
    attnd_engine *e = arg;
    attnd__tier *t = e->tier;
    attnd__tjob *run[MOVER_BATCH];

    pthread_mutex_lock(&t->mv_mu);
    while (!t->stop) {
        if (t->queue) {
            int n = 0;
            while (t->queue && n < MOVER_BATCH) {
                run[n++] = t->queue;
                t->queue = t->queue->next;
                t->n_queued--;
            }
            if (!t->queue)
                t->queue_tail = NULL;
            pthread_mutex_unlock(&t->mv_mu);
            read_jobs(e, run, n);
            pthread_mutex_lock(&t->mv_mu);
            for (int i = 0; i < n; i++) {
                run[i]->done = 1;
                run[i]->next = t->done;
                t->done = run[i];
            }
            pthread_cond_broadcast(&t->done_cv);
            continue;
        }
        if (t->done)
            tend_done(e);
        int32_t free_now = e->pool.n_free; /* racy: a hint */
        if (free_now < t->low_water && !t->queue) {
            pthread_mutex_unlock(&t->mv_mu);
            int64_t freed = attnd__tier_evict_for(e, NULL, 2 * (int64_t)t->low_water - free_now,
                                                  NULL);
            pthread_mutex_lock(&t->mv_mu);
            if (freed > 0)
                continue;
        }
        /* a chain: host RAM short, its coldest pages on to disk */
        if (t->n_host && !t->queue && !t->stop) {
            int64_t hfree = attnd__tier_host_free(t);
            if (hfree < t->host_low) {
                pthread_mutex_unlock(&t->mv_mu);
                int64_t moved = attnd__tier_demote(e, 2 * (int64_t)t->host_low - hfree);
                pthread_mutex_lock(&t->mv_mu);
                if (moved > 0)
                    continue;
            }
        }
        if (t->stop || t->queue)
            continue;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (t->done ? 2 : 50) * 1000000L; /* uninstalled loads: look again soon */
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
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
    attnd_engine *e = t ? t->e : NULL;
    attnd_error err;
    if (!t || !t->mover_running)
        return;
    pthread_mutex_lock(&t->mv_mu);
    t->stop = 1;
    pthread_cond_broadcast(&t->mv_cv);
    pthread_mutex_unlock(&t->mv_mu);
    pthread_join(t->mover, NULL);
    /* no call is in flight now: loads still queued are dropped (their
     * layers stay below), read ones installed */
    pthread_mutex_lock(&t->mv_mu);
    t->mover_running = 0;
    for (attnd__tjob *j = t->queue, *next; j; j = next) {
        next = j->next;
        j->res = -ENOMEM;
        j->done = 1;
        j->next = t->done;
        t->done = j;
    }
    t->queue = t->queue_tail = NULL;
    t->n_queued = 0;
    while (t->done) {
        attnd__tjob *j = t->done;
        if (!j->installed) {
            pthread_mutex_unlock(&t->mv_mu);
            pthread_mutex_lock(&j->s->mu);
            if (j->s->job[j->layer] == j)
                settle(e, j->s, j->layer, 0, &err);
            pthread_mutex_unlock(&j->s->mu);
            pthread_mutex_lock(&t->mv_mu);
            j->installed = 1;
        }
        tend_done(e);
    }
    pthread_mutex_unlock(&t->mv_mu);
}
