/* Owners: the tenant each session counts against (issue 15).
 *
 * The service binds every session to the tenant that created it by giving
 * the engine an owner tag (a hash of the tenant's name); the engine keeps
 * one attnd__owner per tag with the tenant's limits, its usage and its
 * figures. Usage is counted where the pool is: a session's reservation at
 * creation, every page taken for it (an append, a staged chunk, an
 * Attend's new KV), every page given back (an aborted stage, the session's
 * end). A charge that would pass a limit fails before the pool is asked,
 * so a refused call changes nothing. Counts live under one mutex per
 * engine (a charge happens once per new page, not per token).
 *
 * Idle expiry (attnd_engine_reap_idle) closes sessions that no call named
 * for a while: a crashed client's pages come back without a restart.
 *
 * Owners are never freed while the engine lives (sessions point at them);
 * there are at most OWNERS_MAX of them. */
#include <stdlib.h>
#include <string.h>

#include "attnd_assert.h"
#include "attnd_clock.h"
#include "tier_int.h"

#define OWNERS_MAX (1u << 16)
#define REAP_BATCH 64

void attnd__owner_table_init(attnd__owner_table *t)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
}

void attnd__owner_table_cleanup(attnd__owner_table *t)
{
    for (uint32_t i = 0; i < t->cap; i++)
        free(t->slots[i]);
    free(t->slots);
    pthread_mutex_destroy(&t->mu);
    memset(t, 0, sizeof *t);
}

static uint32_t slot_of(const attnd__owner_table *t, uint64_t tag)
{
    uint32_t i = (uint32_t)((tag * 0x9e3779b97f4a7c15ull) >> 32) & (t->cap - 1);
    while (t->slots[i] && t->slots[i]->tag != tag)
        i = (i + 1) & (t->cap - 1);
    return i;
}

/* Double the table (caller holds t->mu). -1: out of memory. */
static int grow(attnd__owner_table *t)
{
    uint32_t cap = t->cap ? 2 * t->cap : 64;
    attnd__owner **old = t->slots;
    uint32_t old_cap = t->cap;
    if (!(t->slots = calloc(cap, sizeof *t->slots))) {
        t->slots = old;
        return -1;
    }
    t->cap = cap;
    for (uint32_t i = 0; i < old_cap; i++)
        if (old[i])
            t->slots[slot_of(t, old[i]->tag)] = old[i];
    free(old);
    return 0;
}

attnd__owner *attnd__owner_get(attnd__owner_table *t, uint64_t tag, size_t page_bytes,
                               attnd_error *err)
{
    attnd__owner *o = NULL;

    if (!tag) {
        attnd_error_set(err, ATTND_ERR_INTERNAL, "owner: tag 0 is no owner");
        return NULL;
    }
    pthread_mutex_lock(&t->mu);
    if (t->cap && (o = t->slots[slot_of(t, tag)]))
        goto out;
    if (t->count >= OWNERS_MAX || ((t->count + 1) * 2 > t->cap && grow(t)) ||
        !(o = calloc(1, sizeof *o))) {
        attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                        "owner: no room for another tenant (%u at most)", OWNERS_MAX);
        goto out;
    }
    o->table = t;
    o->page_bytes = page_bytes;
    o->tag = tag;
    t->slots[slot_of(t, tag)] = o;
    t->count++;
out:
    pthread_mutex_unlock(&t->mu);
    return o;
}

static const char *owner_name(const attnd__owner *o)
{
    return o->name[0] ? o->name : "(unnamed)";
}

attnd_status attnd__owner_charge(attnd__owner *o, int64_t sessions, int64_t reserve,
                                 int64_t take, int64_t from_reserved, const char *field,
                                 attnd_error *err)
{
    attnd_status st = ATTND_OK;

    if (!o)
        return ATTND_OK;
    pthread_mutex_lock(&o->table->mu);
    int64_t grow_pages = reserve + take - from_reserved;
    uint64_t have = (uint64_t)(o->held + o->reserved) * o->page_bytes;
    if (sessions > 0 && o->max_sessions &&
        (uint64_t)(o->sessions + sessions) > o->max_sessions) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "sessions: tenant %s has %lld open sessions; its limit (tenant "
                             "quota: sessions) is %llu",
                             owner_name(o), (long long)o->sessions,
                             (unsigned long long)o->max_sessions);
    } else if (grow_pages > 0 && o->max_kv_bytes &&
               have + (uint64_t)grow_pages * o->page_bytes > o->max_kv_bytes) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "%s: tenant %s holds %llu bytes of KV and this needs %llu more; "
                             "its limit (tenant quota: kv) is %llu bytes",
                             field, owner_name(o), (unsigned long long)have,
                             (unsigned long long)grow_pages * o->page_bytes,
                             (unsigned long long)o->max_kv_bytes);
    } else {
        o->sessions += sessions;
        o->reserved += reserve - from_reserved;
        o->held += take;
    }
    pthread_mutex_unlock(&o->table->mu);
    return st;
}

void attnd__owner_refund(attnd__owner *o, int64_t sessions, int64_t reserve, int64_t take,
                         int64_t from_reserved)
{
    if (!o)
        return;
    pthread_mutex_lock(&o->table->mu);
    o->sessions -= sessions;
    o->reserved -= reserve - from_reserved;
    o->held -= take;
    ATTND_ASSERT(o->sessions >= 0 && o->reserved >= 0 && o->held >= 0);
    pthread_mutex_unlock(&o->table->mu);
}

void attnd__owner_hold(attnd__owner *o, int64_t take, int64_t from_reserved)
{
    if (!o)
        return;
    pthread_mutex_lock(&o->table->mu);
    o->held += take;
    o->reserved -= from_reserved;
    ATTND_ASSERT(o->held >= 0 && o->reserved >= 0);
    pthread_mutex_unlock(&o->table->mu);
}

/* ---- the public calls ---------------------------------------------------------- */

attnd_status attnd_engine_owner_set(attnd_engine *e, uint64_t owner, const char *name,
                                    uint64_t max_sessions, uint64_t max_kv_bytes,
                                    attnd_error *err)
{
    attnd__owner *o = attnd__owner_get(&e->owners, owner, e->pool.page_bytes, err);
    if (!o)
        return err ? err->code : ATTND_ERR_RESOURCE_EXHAUSTED;
    pthread_mutex_lock(&e->owners.mu);
    snprintf(o->name, sizeof o->name, "%s", name ? name : "");
    o->max_sessions = max_sessions;
    o->max_kv_bytes = max_kv_bytes;
    pthread_mutex_unlock(&e->owners.mu);
    return ATTND_OK;
}

attnd_status attnd_engine_sessions_check(attnd_engine *e, uint64_t owner,
                                         const attnd_session_id *ids, uint32_t n, int indexed,
                                         attnd_error *err)
{
    int64_t bad = attnd__session_table_owned(&e->table, owner, ids, n);
    if (bad < 0)
        return ATTND_OK;
    if (indexed)
        return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_ids[%lld]: no such session",
                               (long long)bad);
    return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_id: no such session");
}

void attnd_engine_owner_stats(attnd_engine *e, uint64_t owner, attnd_engine_stats *st)
{
    attnd__owner *o = NULL;

    memset(st, 0, sizeof *st);
    st->page_bytes = e->pool.page_bytes;
    st->pages_total = (uint64_t)e->pool.n_pages;
    pthread_mutex_lock(&e->owners.mu);
    if (owner && e->owners.cap)
        o = e->owners.slots[slot_of(&e->owners, owner)];
    if (o) {
        st->sessions = (uint64_t)o->sessions;
        st->max_sessions = o->max_sessions;
        st->pages_used = (uint64_t)o->held;
        st->pages_reserved = (uint64_t)o->reserved;
        st->pages_held = (uint64_t)o->held; /* in every tier (as pages_used) */
        if (o->max_kv_bytes && o->max_kv_bytes / e->pool.page_bytes < st->pages_total)
            st->pages_total = o->max_kv_bytes / e->pool.page_bytes;
    }
    pthread_mutex_unlock(&e->owners.mu);
    if (!o)
        return;
    st->attend_calls = atomic_load(&o->attend_calls);
    st->attend_sequences = atomic_load(&o->attend_seqs);
    st->append_calls = atomic_load(&o->append_calls);
    st->tokens_appended = atomic_load(&o->tokens_appended);
    st->kv_bytes_read = atomic_load(&o->kv_bytes_read);
    st->sessions_expired = atomic_load(&o->sessions_expired);
    st->pages_expired = atomic_load(&o->pages_expired);
}

void attnd_engine_reap_idle(attnd_engine *e, uint64_t idle_ms, attnd_session_id *ids, size_t cap,
                            size_t *n_p)
{
    attnd__session *batch[REAP_BATCH];
    int64_t cutoff = attnd_clock_ms() - (int64_t)(idle_ms > INT64_MAX / 2 ? INT64_MAX / 2
                                                                           : idle_ms);
    size_t done = 0, got;

    do {
        size_t want = cap - done < REAP_BATCH ? cap - done : REAP_BATCH;
        got = want ? attnd__session_table_reap(&e->table, cutoff, batch, want) : 0;
        for (size_t i = 0; i < got; i++) {
            attnd__session *s = batch[i];
            pthread_mutex_lock(&s->mu);
            s->closed = 1;
            uint64_t pages = (uint64_t)s->pages_held + (uint64_t)s->reserved_left;
            pthread_mutex_unlock(&s->mu);
            atomic_fetch_add(&e->sessions_expired, 1);
            atomic_fetch_add(&e->pages_expired, pages);
            if (s->owner) {
                atomic_fetch_add(&s->owner->sessions_expired, 1);
                atomic_fetch_add(&s->owner->pages_expired, pages);
            }
            ids[done + i] = s->id;
            /* frees, its slots in the tier below too: no one else holds it */
            attnd__session_put(&e->table, &e->pool, s);
            /* durable: closed in the log too, else a restart brings it back
             * (should that write fail, the recovered session is simply
             * expired again after another idle period) */
            if (e->dur)
                attnd__engine_log_session(e, ATTND__WREC_CLOSE, &ids[done + i], 0, NULL);
        }
        done += got;
    } while (got == REAP_BATCH && done < cap);
    if (n_p)
        *n_p = done;
}
