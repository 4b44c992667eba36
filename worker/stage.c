/* Staged appends: the chunks of one AppendKV stream become visible all at
 * once, at the commit, or never (attnd_worker.h has the contract).
 *
 * How: a stage's first chunk for a (session, layer) claims the layer
 * (stager[layer] = the stage, staged[layer] = its length) and keeps a
 * reference to the session. Chunks are written straight into pool pages:
 * the free slots of the layer's last committed page, then new pages
 * appended to the layer's page table past its committed ones. Attention
 * reads only the first len[layer] tokens, so none of it shows. The commit
 * locks every session involved in address order (the engine's lock order,
 * as Attend), checks that none was closed, and advances every length; an
 * abort gives the pages back (with the reservation they redeemed) and
 * releases the claims. Lengths never move before the commit, so a stream
 * that fails anywhere (a bad chunk, a cancel, a deadline, a shutdown)
 * leaves every layer as it was.
 *
 * Why a claim (one writer per layer while a stream is open) rather than
 * checking at the commit that the length did not move: staged tokens fill
 * the free slots of the last committed page, which any other writer would
 * fill too, and a conflicting writer learns of the conflict at once
 * (ABORTED) instead of after its whole stream. Readers never wait.
 *
 * Memory: staged tokens live in ordinary pool pages (RESOURCE_EXHAUSTED
 * comes at the chunk that does not fit), the stage itself holds one
 * (session, layer) entry per layer it touched, and closed stages are kept
 * by the engine for reuse: a steady stream of streams allocates nothing
 * per chunk (only page tables that outgrow their reservation grow).
 *
 * Tiers and durability (TIERS.md): a layer is loaded back into memory
 * before the stage claims it (and, claimed, is never moved down); with a
 * durable log each chunk is logged as it is staged (a transaction of the
 * stage's own) and the commit logs COMMIT while its sessions are locked,
 * then waits for the log (sync mode) after unlocking them; an abort logs
 * ABORT. Recovery applies a transaction's chunks only if its COMMIT made
 * it to the log.
 */
#include <stdlib.h>
#include <string.h>

#include "sparse.h"
#include "tier_int.h"

/* Closed stages the engine keeps for reuse; more are freed. */
#define STAGES_KEPT 64

#define NO_NOTE UINT64_MAX

typedef struct stage_ent {
    attnd__session *s; /* one reference held */
    int32_t layer;
    uint64_t note;     /* the layer's user length at the commit, or NO_NOTE */
} stage_ent;

struct attnd_engine_stage {
    attnd_engine *e;
    struct attnd_engine_stage *next; /* the engine's free list */
    stage_ent *ent;           /* layers claimed, one reference each */
    size_t n_ent, cap_ent;
    uint64_t chunks, tokens;  /* staged */
    attnd__wtxn tx;           /* its transaction in the durable log */
};

static int32_t pages_of(const attnd_engine *e, uint64_t tokens)
{
    const uint64_t ps = (uint64_t)e->layout.page_size;
    return (int32_t)((tokens + ps - 1) / ps);
}

attnd_status attnd_engine_stage_open(attnd_engine *e, attnd_engine_stage **stage_p,
                                     attnd_error *err)
{
    pthread_mutex_lock(&e->stage_mu);
    attnd_engine_stage *s = e->free_stages;
    if (s) {
        e->free_stages = s->next;
        e->n_free_stages--;
    }
    pthread_mutex_unlock(&e->stage_mu);
    if (!s && !(s = calloc(1, sizeof *s)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "AppendKV: no memory for a stream's stage");
    s->e = e;
    s->next = NULL;
    s->n_ent = 0;
    s->chunks = s->tokens = 0;
    memset(&s->tx, 0, sizeof s->tx);
    *stage_p = s;
    return ATTND_OK;
}

/* Room for one more entry (grown before any lock is taken). */
static attnd_status ents_fit(attnd_engine_stage *s, attnd_error *err)
{
    if (s->n_ent < s->cap_ent)
        return ATTND_OK;
    size_t cap = s->cap_ent ? 2 * s->cap_ent : 16;
    stage_ent *p = realloc(s->ent, cap * sizeof *p);
    if (!p)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv: no memory to stage a layer more (%zu staged)", s->n_ent);
    s->ent = p;
    s->cap_ent = cap;
    return ATTND_OK;
}

/* Where the layer's next chunk must start for stage s, or an error (the
 * layer claimed by another stage). Caller holds ss->mu. */
static attnd_status next_start(attnd_engine_stage *s, attnd__session *ss, uint32_t layer,
                               uint64_t start, int *fresh_p, attnd_error *err)
{
    const int32_t l = (int32_t)layer;
    if (ss->stager[l] && ss->stager[l] != s)
        return attnd_error_set(err, ATTND_ERR_ABORTED,
                               "layer: layer %u of that session is being appended to by "
                               "another AppendKV stream that is still open; retry after it ends",
                               layer);
    *fresh_p = ss->stager[l] == NULL;
    if (*fresh_p && start != ss->len[l])
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                               "start: layer %u holds %llu tokens; an append must start there, "
                               "got %llu", layer, (unsigned long long)ss->len[l],
                               (unsigned long long)start);
    if (!*fresh_p && start != ss->staged[l])
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                               "start: layer %u holds %llu tokens and this stream has %llu more "
                               "before this chunk; the chunk must start at %llu, got %llu",
                               layer, (unsigned long long)ss->len[l],
                               (unsigned long long)(ss->staged[l] - ss->len[l]),
                               (unsigned long long)ss->staged[l], (unsigned long long)start);
    return ATTND_OK;
}

attnd_status attnd_engine_stage_append(attnd_engine_stage *s, const attnd_session_id *id,
                                       uint32_t layer, uint64_t start, uint64_t n_tokens,
                                       attnd_dtype dtype, const void *kv, attnd_error *err)
{
    attnd_engine *e = s->e;
    const int32_t l = (int32_t)layer;
    const uint64_t most = ((uint64_t)INT32_MAX * (uint64_t)e->layout.page_size) / 2;
    int fresh = 0, kept = 0;
    attnd_status st = attnd__engine_check_layer(e, layer, err);

    if (st)
        return st;
    if (attnd_dtype_size(dtype) == 0 || (n_tokens && !kv))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "kv: missing or invalid dtype");
    if ((st = ents_fit(s, err)))
        return st;
    attnd__session *ss = attnd__session_get(&e->table, id);
    if (!ss)
        return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_id: no such session");
    pthread_mutex_lock(&ss->mu);
    if ((st = attnd__session_check(ss, err)) || (st = next_start(s, ss, layer, start, &fresh, err)))
        goto out;
    if (n_tokens == 0) { /* nothing to stage or claim */
        s->chunks++;
        goto out;
    }
    if (e->tier) { /* the layer in memory before it is written (claimed, it stays) */
        atomic_store_explicit(&ss->last_used, atomic_fetch_add(&e->tier->tick, 1) + 1,
                              memory_order_relaxed);
        /* short of memory, this session's other layers give room too (it
         * is locked here: no other eviction can move them) */
        attnd__tier_own(&ss, 1, l);
        if ((st = attnd__tier_load(e, ss, l, err)))
            goto out;
    }
    if (n_tokens > most || start > most - n_tokens) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "kv: %llu tokens at %llu is too many for one layer",
                             (unsigned long long)n_tokens, (unsigned long long)start);
        goto out;
    }
    int32_t have = pages_of(e, start);
    int64_t need = (int64_t)pages_of(e, start + n_tokens) - have;
    if (need > e->pool.n_pages) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "kv: KV memory exhausted: needs %lld pages, the pool has %d",
                             (long long)need, e->pool.n_pages);
        goto out;
    }
    if ((st = attnd__session_grow(ss, l, have + need, err)))
        goto out;
    int32_t from_res = (int32_t)attnd__session_from_reserved(ss, l, have, need);
    if ((st = attnd__owner_charge(ss->owner, 0, 0, need, from_res, "kv", err)))
        goto out;
    if ((st = attnd__engine_alloc(e, (int32_t)need, from_res, ss->pages[l] + have, err))) {
        attnd__owner_refund(ss->owner, 0, 0, need, from_res);
        goto out;
    }
    attnd__session_no_slots(ss, l, have, have + need);
    ss->reserved_left -= from_res;
    if (fresh) {
        ss->stager[l] = s;
        s->ent[s->n_ent++] = (stage_ent){ss, l, NO_NOTE};
        kept = 1; /* the entry keeps our reference */
    }
    ss->staged[l] = start + n_tokens;
    /* a GPU write or log error leaves the tokens staged (their pages
     * accounted) and fails the chunk: the caller aborts */
    uint64_t end = 0;
    if ((st = attnd__engine_write(e, ss, l, start, n_tokens, dtype, kv, 0, err)) ||
        (st = attnd__engine_log_data(e, &s->tx, id, l, start, n_tokens, NO_NOTE, dtype, kv,
                                     &end, err)))
        goto out;
    s->chunks++;
    s->tokens += n_tokens;
out:
    attnd__tier_own(NULL, 0, -1);
    pthread_mutex_unlock(&ss->mu);
    if (!kept)
        attnd__session_put(&e->table, &e->pool, ss);
    return st;
}

attnd_status attnd_engine_stage_note(attnd_engine_stage *s, const attnd_session_id *id,
                                     uint32_t layer, uint64_t ulen, attnd_error *err)
{
    attnd_engine *e = s->e;
    const int32_t l = (int32_t)layer;
    attnd_status st = attnd__engine_check_layer(e, layer, err);
    int fresh = 0, kept = 0;

    if (st || (st = ents_fit(s, err)))
        return st;
    attnd__session *ss = attnd__session_get(&e->table, id);
    if (!ss)
        return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_id: no such session");
    pthread_mutex_lock(&ss->mu);
    uint64_t at = ss->stager[l] == s ? ss->staged[l] : ss->len[l];
    if ((st = attnd__session_check(ss, err)) || (st = next_start(s, ss, layer, at, &fresh, err)))
        goto out;
    stage_ent *en = NULL; /* (a note writes no page: the layer may stay below) */
    if (fresh) {
        ss->stager[l] = s;
        ss->staged[l] = ss->len[l];
        en = &s->ent[s->n_ent++];
        *en = (stage_ent){ss, l, NO_NOTE};
        kept = 1;
    } else {
        for (size_t i = 0; i < s->n_ent && !en; i++)
            if (s->ent[i].s == ss && s->ent[i].layer == l)
                en = &s->ent[i];
    }
    en->note = ulen;
    uint64_t end = 0;
    st = attnd__engine_log_data(e, &s->tx, id, l, ss->staged[l], 0, ulen, e->model.kv_dtype,
                                NULL, &end, err);
out:
    pthread_mutex_unlock(&ss->mu);
    if (!kept)
        attnd__session_put(&e->table, &e->pool, ss);
    return st;
}

/* Give one claimed layer's staged pages back and release it. Caller holds
 * its session's lock. */
static void drop_ent(attnd_engine *e, const stage_ent *en)
{
    attnd__session *ss = en->s;
    const int32_t l = en->layer;
    int32_t have = pages_of(e, ss->len[l]), extra = pages_of(e, ss->staged[l]) - have;
    /* what these pages redeemed, chunk by chunk, sums to this */
    int32_t r = (int32_t)attnd__session_from_reserved(ss, l, have, extra);
    attnd_kv_pool_unalloc(&e->pool, ss->pages[l] + have, extra, r);
    attnd__owner_refund(ss->owner, 0, 0, extra, r);
    ss->reserved_left += r;
    /* a topk-pages layer's last committed page had the staged keys folded
     * into its bounds: back to those of its own keys, so bounds are always
     * a function of the committed keys (as recovery rebuilds them). A
     * failure leaves them wider: still bounds. */
    if (ss->sparse && ss->sparse->bounds[l] && ss->staged[l] > ss->len[l] &&
        ss->len[l] % (uint64_t)e->layout.page_size && (!ss->where || ss->where[l] ==
                                                           ATTND__LAYER_RESIDENT)) {
        attnd_error err;
        attnd__sparse_bounds_rebuild(e, ss, l, have - 1, &err);
    }
    ss->staged[l] = ss->len[l];
    ss->stager[l] = NULL;
}

/* Drop the entries' references; the stage is empty again. */
static void put_all(attnd_engine_stage *s)
{
    for (size_t i = 0; i < s->n_ent; i++)
        attnd__session_put(&s->e->table, &s->e->pool, s->ent[i].s);
    s->n_ent = 0;
    s->chunks = s->tokens = 0;
}

static int ent_cmp(const void *a, const void *b)
{
    const stage_ent *x = a, *y = b;
    uintptr_t px = (uintptr_t)x->s, py = (uintptr_t)y->s;
    if (px != py)
        return px < py ? -1 : 1;
    return (x->layer > y->layer) - (x->layer < y->layer);
}

/* The entries sorted by session: is entry i its session's first? */
static int first_of_session(const attnd_engine_stage *s, size_t i)
{
    return i == 0 || s->ent[i].s != s->ent[i - 1].s;
}

attnd_status attnd_engine_stage_commit(attnd_engine_stage *s, uint64_t *chunks_p,
                                       uint64_t *tokens_p, attnd_error *err)
{
    attnd_engine *e = s->e;
    attnd_status st = ATTND_OK;

    if (s->n_ent > 1)
        qsort(s->ent, s->n_ent, sizeof *s->ent, ent_cmp);
    for (size_t i = 0; i < s->n_ent; i++)
        if (first_of_session(s, i))
            pthread_mutex_lock(&s->ent[i].s->mu);
    for (size_t i = 0; i < s->n_ent && st == ATTND_OK; i++)
        if (s->ent[i].s->closed)
            st = attnd_error_set(err, ATTND_ERR_NOT_FOUND,
                                 "session_id: a session this stream appended to was closed "
                                 "before the stream ended; nothing was applied");
        else if (s->ent[i].s->lost)
            st = attnd_error_set(err, ATTND_ERR_DATA_LOSS, "%s", s->ent[i].s->lost);
    /* in the log before it is applied: a COMMIT that cannot be logged
     * applies nothing */
    uint64_t end = 0;
    if (st == ATTND_OK && s->tx.txn)
        st = attnd__engine_log_mark(e, &s->tx, ATTND__WREC_COMMIT, &end, err);
    for (size_t i = 0; i < s->n_ent; i++) {
        const stage_ent *en = &s->ent[i];
        attnd__session *ss = en->s;
        const int32_t l = en->layer;
        if (st) {
            drop_ent(e, en);
            continue;
        }
        ss->pages_held += pages_of(e, ss->staged[l]) - pages_of(e, ss->len[l]);
        ss->len[l] = ss->staged[l];
        ss->ulen[l] = en->note != NO_NOTE ? en->note : ss->len[l];
        ss->stager[l] = NULL;
        attnd__sparse_evict(e, ss, l); /* streaming: pages out of the window */
    }
    for (size_t i = s->n_ent; i-- > 0;)
        if (first_of_session(s, i))
            pthread_mutex_unlock(&s->ent[i].s->mu);
    uint64_t chunks = s->chunks, tokens = s->tokens;
    if (st && s->tx.txn) /* closes its transaction in the log */
        attnd__engine_log_mark(e, &s->tx, ATTND__WREC_ABORT, &end, NULL);
    /* a stream's sessions are one caller's (the service checks each chunk's
     * owner): its figures go to the first one's owner */
    attnd__owner *o = s->n_ent ? s->ent[0].s->owner : NULL;
    put_all(s);
    if (st == ATTND_OK)
        st = attnd__engine_log_wait(e, end, err);
    if (st)
        return st;
    atomic_fetch_add(&e->append_calls, chunks);
    atomic_fetch_add(&e->tokens_appended, tokens);
    if (o) {
        atomic_fetch_add(&o->append_calls, chunks);
        atomic_fetch_add(&o->tokens_appended, tokens);
    }
    if (chunks_p)
        *chunks_p = chunks;
    if (tokens_p)
        *tokens_p = tokens;
    return ATTND_OK;
}

void attnd_engine_stage_abort(attnd_engine_stage *s)
{
    uint64_t end;
    if (s->tx.txn) /* closes its transaction in the log */
        attnd__engine_log_mark(s->e, &s->tx, ATTND__WREC_ABORT, &end, NULL);
    for (size_t i = 0; i < s->n_ent; i++) {
        pthread_mutex_lock(&s->ent[i].s->mu);
        drop_ent(s->e, &s->ent[i]);
        pthread_mutex_unlock(&s->ent[i].s->mu);
    }
    put_all(s);
}

void attnd_engine_stage_close(attnd_engine_stage *s)
{
    if (!s)
        return;
    attnd_engine *e = s->e;
    attnd_engine_stage_abort(s);
    pthread_mutex_lock(&e->stage_mu);
    if (e->n_free_stages < STAGES_KEPT) {
        s->next = e->free_stages;
        e->free_stages = s;
        e->n_free_stages++;
        s = NULL;
    }
    pthread_mutex_unlock(&e->stage_mu);
    if (s) {
        free(s->ent);
        free(s);
    }
}

void attnd__stages_cleanup(attnd_engine *e)
{
    for (attnd_engine_stage *s = e->free_stages, *next; s; s = next) {
        next = s->next;
        free(s->ent);
        free(s);
    }
    e->free_stages = NULL;
    e->n_free_stages = 0;
}
