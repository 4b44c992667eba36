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
 * locks in address order. */
#include <stdlib.h>
#include <string.h>

#include "attnd_assert.h"
#include "sparse.h"
#include "worker_int.h"

static uint32_t id_hash(const attnd_session_id *id)
{
    uint64_t h;
    memcpy(&h, id->bytes, sizeof h);
    return (uint32_t)((h * 0x9e3779b97f4a7c15ull) >> 32);
}

attnd__session *attnd__session_new(const attnd_session_id *id,
                                   int32_t n_layers, int32_t page_size,
                                   int64_t reserved, int32_t initial_cap)
{
    attnd__session *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->id = *id;
    s->refs = 1;
    s->n_layers = n_layers;
    s->page_size = page_size;
    s->reserved_left = reserved;
    s->len = calloc((size_t)n_layers, sizeof *s->len);
    s->pages = calloc((size_t)n_layers, sizeof *s->pages);
    s->cap = calloc((size_t)n_layers, sizeof *s->cap);
    s->stager = calloc((size_t)n_layers, sizeof *s->stager);
    s->staged = calloc((size_t)n_layers, sizeof *s->staged);
    if (!s->len || !s->pages || !s->cap || !s->stager || !s->staged)
        goto err_arrays;
    for (int32_t l = 0; l < n_layers && initial_cap > 0; l++) {
        s->pages[l] = malloc(sizeof(int32_t) * (size_t)initial_cap);
        if (!s->pages[l])
            goto err_arrays;
        s->cap[l] = initial_cap;
    }
    pthread_mutex_init(&s->mu, NULL);
    return s;

err_arrays:
    for (int32_t l = 0; s->pages && l < n_layers; l++)
        free(s->pages[l]);
    free(s->len);
    free(s->pages);
    free(s->cap);
    free(s->stager);
    free(s->staged);
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
    s->cap[layer] = (int32_t)cap;
    return ATTND_OK;
}

/* Return every page and the unused reservation to the pool; free s. (No
 * stage holds a layer of it: a stage holds a reference, except at engine
 * destroy, when the pool goes too.) */
static void session_free(attnd__session *s, attnd_kv_pool *pool)
{
    for (int32_t l = 0; l < s->n_layers; l++) {
        attnd__sparse_free_layer(pool, s, l, attnd__session_layer_pages(s, l));
        free(s->pages[l]);
    }
    if (s->reserved_left > 0)
        attnd_kv_pool_unreserve(pool, s->reserved_left);
    pthread_mutex_destroy(&s->mu);
    attnd__sparse_free(s->sparse);
    free(s->len);
    free(s->pages);
    free(s->cap);
    free(s->stager);
    free(s->staged);
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

attnd__session *attnd__session_get(attnd__session_table *t,
                                   const attnd_session_id *id)
{
    pthread_mutex_lock(&t->mu);
    attnd__session *s = t->slots[find_slot(t, id)];
    if (s)
        s->refs++;
    pthread_mutex_unlock(&t->mu);
    return s;
}

attnd__session *attnd__session_remove(attnd__session_table *t,
                                      const attnd_session_id *id)
{
    pthread_mutex_lock(&t->mu);
    uint32_t i = find_slot(t, id);
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
        /* the table's reference passes to the caller */
    }
    pthread_mutex_unlock(&t->mu);
    return s;
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
