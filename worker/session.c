/* Sessions and the session table.
 *
 * A session owns, per layer, a length and a page table. The table is an
 * open-addressing hash keyed by the 128-bit id (its first 8 bytes are random,
 * so they are the hash), sized to twice the session limit so probes stay
 * short; deletion shifts later entries back instead of leaving tombstones.
 *
 * Lifetime: the table holds one reference; every lookup takes another.
 * Closing removes the session from the table and drops the table's
 * reference; whoever drops the last one frees the pages. A call already
 * holding a session therefore finishes safely even if it is closed
 * meanwhile. Lock order: table lock, then (never while holding it) session
 * locks in address order.
 *
 * Every lookup touches the session (touched_ms), which is what idle expiry
 * (attnd__session_table_reap) goes by; a session's owner (owner.c) gets
 * back what the session held when it is freed, wherever its pages were
 * (memory or the tier below). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_assert.h"
#include "attnd_clock.h"
#include "sparse.h"
#include "tier_int.h"

static uint32_t id_hash(const attnd_session_id *id)
{
    uint64_t h;
    memcpy(&h, id->bytes, sizeof h);
    return (uint32_t)((h * 0x9e3779b97f4a7c15ull) >> 32);
}

/* attnd__session_lose's message when there is no memory for one. */
static char lost_no_memory[] = "session: its KV is lost (and no memory for the details)";

static void session_arrays_free(attnd__session *s)
{
    for (int32_t l = 0; l < s->n_layers; l++) {
        if (s->pages)
            free(s->pages[l]);
        if (s->slots)
            free(s->slots[l]);
    }
    free(s->len);
    free(s->pages);
    free(s->slots);
    free(s->cap);
    free(s->stager);
    free(s->staged);
    free(s->ulen);
    free(s->where);
    free(s->job);
    if (s->lost != lost_no_memory)
        free(s->lost);
}

attnd__session *attnd__session_new(const attnd_session_id *id,
                                   int32_t n_layers, int32_t page_size,
                                   int64_t reserved, int32_t initial_cap,
                                   int with_slots)
{
    attnd__session *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->id = *id;
    s->refs = 1;
    atomic_init(&s->touched_ms, attnd_clock_ms());
    s->n_layers = n_layers;
    s->page_size = page_size;
    s->reserved_left = reserved;
    s->len = calloc((size_t)n_layers, sizeof *s->len);
    s->pages = calloc((size_t)n_layers, sizeof *s->pages);
    s->cap = calloc((size_t)n_layers, sizeof *s->cap);
    s->stager = calloc((size_t)n_layers, sizeof *s->stager);
    s->staged = calloc((size_t)n_layers, sizeof *s->staged);
    s->ulen = calloc((size_t)n_layers, sizeof *s->ulen);
    if (!s->len || !s->pages || !s->cap || !s->stager || !s->staged || !s->ulen)
        goto err_arrays;
    if (with_slots) {
        s->slots = calloc((size_t)n_layers, sizeof *s->slots);
        s->where = calloc((size_t)n_layers, sizeof *s->where); /* all RESIDENT */
        s->job = calloc((size_t)n_layers, sizeof *s->job);
        if (!s->slots || !s->where || !s->job)
            goto err_arrays;
    }
    for (int32_t l = 0; l < n_layers && initial_cap > 0; l++) {
        s->pages[l] = malloc(sizeof(int32_t) * (size_t)initial_cap);
        if (!s->pages[l])
            goto err_arrays;
        if (with_slots) {
            if (!(s->slots[l] = malloc(sizeof(int32_t) * (size_t)initial_cap)))
                goto err_arrays;
            for (int32_t j = 0; j < initial_cap; j++)
                s->slots[l][j] = -1;
        }
        s->cap[l] = initial_cap;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    return s;

err_arrays:
    session_arrays_free(s);
    free(s);
    return NULL;
}

attnd_status attnd__session_grow(attnd__session *s, int32_t layer,
                                 int64_t pages, attnd_error *err)
{
    if (pages <= s->cap[layer])
        return ATTND_OK;
    int64_t cap = s->cap[layer] ? s->cap[layer] : 16;
    while (cap < pages)
        cap *= 2;
    if (cap > INT32_MAX)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv: layer %d would hold %lld pages", layer, (long long)pages);
    int32_t *np = realloc(s->pages[layer], sizeof(int32_t) * (size_t)cap);
    if (!np)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv: no memory for a page table of %lld pages", (long long)cap);
    s->pages[layer] = np;
    if (s->slots) {
        int32_t *ns = realloc(s->slots[layer], sizeof(int32_t) * (size_t)cap);
        if (!ns) /* the page table's growth stays: harmless */
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "kv: no memory for a slot table of %lld pages",
                                   (long long)cap);
        for (int64_t j = s->cap[layer]; j < cap; j++)
            ns[j] = -1;
        s->slots[layer] = ns;
    }
    s->cap[layer] = (int32_t)cap;
    return ATTND_OK;
}

/* Return every page (memory pages, and the slots of the tier below) and
 * the unused reservation to the pool; free s. (No stage holds a layer of
 * it: a stage holds a reference, except at engine destroy, when the pool
 * goes too; no prefetch is in flight: a prefetch job holds one too.) */
static void session_free(attnd__session *s, attnd_kv_pool *pool)
{
    int64_t held = 0;
    for (int32_t l = 0; l < s->n_layers; l++) {
        /* what the owner is refunded: the pages really held, in memory or
         * below (not streaming's holes) */
        held += attnd__session_layer_pages(s, l) -
                (s->sparse ? attnd__sparse_holes(s->sparse, l, s->page_size) : 0);
        int32_t np = attnd__session_layer_pages(s, l);
        if (!s->where || s->where[l] == ATTND__LAYER_RESIDENT) {
            attnd__sparse_free_layer(pool, s, l, np); /* around streaming's holes */
        } else { /* some pages below: those give back logical pages only */
            ATTND_ASSERT(s->where[l] == ATTND__LAYER_BELOW);
            int32_t below = 0;
            for (int32_t j = 0; j < np; j++)
                if (attnd__sparse_gone(s, l, j))
                    continue; /* freed by streaming: held nowhere */
                else if (s->pages[l][j] >= 0)
                    attnd_kv_pool_free(pool, &s->pages[l][j], 1);
                else
                    below++;
            attnd_kv_pool_forget(pool, below, 0);
        }
        if (s->slots && pool->tier)
            attnd__tier_forget_layer(pool->tier, s, l);
    }
    attnd__owner_refund(s->owner, 1, s->reserved_left > 0 ? s->reserved_left : 0, held, 0);
    if (s->reserved_left > 0)
        attnd_kv_pool_unreserve(pool, s->reserved_left);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    attnd__sparse_free(s->sparse);
    session_arrays_free(s);
    free(s);
}

attnd_status attnd__session_table_init(attnd__session_table *t, uint32_t max,
                                       attnd_error *err)
{
    uint32_t cap = 16;
    memset(t, 0, sizeof *t);
    if (max < 1 || max > (1u << 24))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "max_sessions: %u not in [1, %u]", max, 1u << 24);
    while (cap < 2 * max)
        cap <<= 1;
    t->slots = calloc(cap, sizeof *t->slots);
    if (!t->slots)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "max_sessions: no memory for %u slots", cap);
    t->mask = cap - 1;
    t->max = max;
    pthread_mutex_init(&t->mu, NULL);
    return ATTND_OK;
}

void attnd__session_table_cleanup(attnd__session_table *t, attnd_kv_pool *pool)
{
    if (!t->slots)
        return;
    for (uint32_t i = 0; i <= t->mask; i++)
        if (t->slots[i])
            session_free(t->slots[i], pool);
    free(t->slots);
    pthread_mutex_destroy(&t->mu);
    memset(t, 0, sizeof *t);
}

/* Slot holding id, or the empty slot where it would go. Caller holds t->mu. */
static uint32_t find_slot(const attnd__session_table *t, const attnd_session_id *id)
{
    uint32_t i = id_hash(id) & t->mask;
    while (t->slots[i] && memcmp(t->slots[i]->id.bytes, id->bytes, sizeof id->bytes) != 0)
        i = (i + 1) & t->mask;
    return i;
}

attnd_status attnd__session_table_insert(attnd__session_table *t,
                                         attnd__session *s, attnd_error *err)
{
    attnd_status st = ATTND_OK;
    pthread_mutex_lock(&t->mu);
    uint32_t i = find_slot(t, &s->id);
    if (t->slots[i])
        st = attnd_error_set(err, ATTND_ERR_ALREADY_EXISTS, "session_id: already exists");
    else if (t->count >= t->max)
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "sessions: limit of %u open sessions reached (--max-sessions)",
                             t->max);
    else {
        t->slots[i] = s;
        t->count++;
    }
    pthread_mutex_unlock(&t->mu);
    return st;
}

void attnd__session_ref(attnd__session_table *t, attnd__session *s)
{
    pthread_mutex_lock(&t->mu);
    ATTND_ASSERT(s->refs > 0);
    s->refs++;
    pthread_mutex_unlock(&t->mu);
}

attnd__session *attnd__session_get(attnd__session_table *t,
                                   const attnd_session_id *id)
{
    pthread_mutex_lock(&t->mu);
    attnd__session *s = t->slots[find_slot(t, id)];
    if (s) {
        s->refs++;
        atomic_store_explicit(&s->touched_ms, attnd_clock_ms(), memory_order_relaxed);
    }
    pthread_mutex_unlock(&t->mu);
    return s;
}

int64_t attnd__session_table_owned(attnd__session_table *t, uint64_t owner,
                                   const attnd_session_id *ids, uint32_t n)
{
    int64_t bad = -1, now = attnd_clock_ms();
    pthread_mutex_lock(&t->mu);
    for (uint32_t i = 0; i < n && bad < 0; i++) {
        attnd__session *s = t->slots[find_slot(t, &ids[i])];
        if (!s || (s->owner ? s->owner->tag : 0) != owner)
            bad = i;
        else
            atomic_store_explicit(&s->touched_ms, now, memory_order_relaxed);
    }
    pthread_mutex_unlock(&t->mu);
    return bad;
}

/* Take the session in slot i out of the table, shifting later entries of
 * its probe run back (caller holds t->mu); the table's reference passes to
 * the caller. */
static attnd__session *remove_slot(attnd__session_table *t, uint32_t i)
{
    attnd__session *s = t->slots[i];
    if (s) {
        /* backward-shift deletion: move later entries of the probe run into
         * the hole when their home slot does not lie between hole and them */
        uint32_t hole = i, j = i;
        for (;;) {
            j = (j + 1) & t->mask;
            if (!t->slots[j])
                break;
            uint32_t home = id_hash(&t->slots[j]->id) & t->mask;
            if (((j - home) & t->mask) >= ((j - hole) & t->mask)) {
                t->slots[hole] = t->slots[j];
                hole = j;
            }
        }
        t->slots[hole] = NULL;
        t->count--;
    }
    return s;
}

attnd__session *attnd__session_remove(attnd__session_table *t,
                                      const attnd_session_id *id)
{
    pthread_mutex_lock(&t->mu);
    attnd__session *s = remove_slot(t, find_slot(t, id));
    pthread_mutex_unlock(&t->mu);
    return s;
}

size_t attnd__session_table_reap(attnd__session_table *t, int64_t cutoff_ms,
                                 attnd__session **out, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&t->mu);
    /* collect first: a removal moves later entries of a probe run back */
    for (uint32_t i = 0; t->slots && i <= t->mask && n < cap; i++) {
        attnd__session *s = t->slots[i];
        if (s && s->refs == 1 &&
            atomic_load_explicit(&s->touched_ms, memory_order_relaxed) <= cutoff_ms)
            out[n++] = s;
    }
    for (size_t k = 0; k < n; k++)
        remove_slot(t, find_slot(t, &out[k]->id));
    pthread_mutex_unlock(&t->mu);
    return n;
}

void attnd__session_put(attnd__session_table *t, attnd_kv_pool *pool,
                        attnd__session *s)
{
    pthread_mutex_lock(&t->mu);
    ATTND_ASSERT(s->refs > 0);
    int32_t left = --s->refs;
    pthread_mutex_unlock(&t->mu);
    if (left == 0)
        session_free(s, pool);
}

void attnd__session_each(attnd__session_table *t, attnd_kv_pool *pool, uint32_t from,
                         int (*f)(attnd__session *s, void *arg), void *arg)
{
    pthread_mutex_lock(&t->mu);
    uint32_t cap = t->mask + 1, i = from & t->mask;
    pthread_mutex_unlock(&t->mu);
    /* the table may change between visits: every visit re-checks its slot
     * under the lock; a session that moves may be seen twice or not at
     * all, which every caller tolerates (eviction, checkpoints see the
     * sessions that were there throughout) */
    for (uint32_t k = 0; k < cap; k++, i = (i + 1) & (cap - 1)) {
        pthread_mutex_lock(&t->mu);
        attnd__session *s = t->slots[i];
        if (s)
            s->refs++;
        pthread_mutex_unlock(&t->mu);
        if (!s)
            continue;
        int stop = f(s, arg);
        attnd__session_put(t, pool, s);
        if (stop)
            break;
    }
}

const char *attnd__session_hex(const attnd_session_id *id, char buf[33])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        buf[2 * i] = hex[id->bytes[i] >> 4];
        buf[2 * i + 1] = hex[id->bytes[i] & 15];
    }
    buf[32] = '\0';
    return buf;
}

void attnd__session_lose(attnd__session *s, const char *why)
{
    char hex[33], *m;
    if (s->lost)
        return;
    size_t n = strlen(why) + 64;
    if (!(m = malloc(n)))
        m = lost_no_memory;
    else
        snprintf(m, n, "session %s: %s", attnd__session_hex(&s->id, hex), why);
    s->lost = m;
}
