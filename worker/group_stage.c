/* One rank's part of AppendKV streams in a worker group: what a stream
 * staged here, until its leader commits or aborts it.
 *
 * A stream (group_append.c) sends every chunk to every rank, numbered
 * 0, 1, 2, ... (hdr.n_seqs). On each rank its part is a stage found by
 * (leading rank, stream id): chunk 0 makes it, each chunk claims its layer
 * in the group table (no other writer there until the end; the start
 * checked against the stream's own staged length) and stages this rank's
 * tokens in an engine stage (attnd_engine_stage: pool pages, invisible
 * until the commit). COMMIT (carrying the number of chunks sent, so a rank that
 * missed one refuses) commits the engine stage and sets the global
 * lengths; ABORT drops both. Either leaves a tombstone, so a message of
 * the stream that comes late (a chunk that timed out at the leader and
 * still sat in this rank's queue) fails instead of staging anew.
 *
 * Messages of one stream run one at a time, in order (a stage is busy
 * while one runs; others wait), though the executors run different
 * streams at once.
 *
 * Expiry: a leader that dies or hangs mid-stream never commits or aborts.
 * Parts with no message for GSTAGE_EXPIRE_MS are aborted here (checked at
 * most once a second, when stages are looked up); the leader never sends
 * the next message of a stream that has been quiet for half that long
 * (ATTND__GSTREAM_IDLE_MS), so no part can expire under a commit that is
 * still to come. Tombstones go after GSTAGE_TOMB_MS.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "attnd_clock.h"
#include "attnd_log.h"
#include "group_int.h"

#define GSTAGE_EXPIRE_MS (2 * ATTND__GSTREAM_IDLE_MS)
#define GSTAGE_TOMB_MS 30000
#define GSTAGES_KEPT 64

/* What acquire does when the stream has no stage here. */
enum { ABSENT_FAILS, ABSENT_OPENS, ABSENT_TOMB };

void attnd__gstages_init(attnd_group *g)
{
    pthread_mutex_init(&g->stage_mu, NULL);
    pthread_cond_init(&g->stage_cv, NULL);
    if (getrandom(&g->stream_base, sizeof g->stream_base, 0) != (ssize_t)sizeof g->stream_base)
        g->stream_base = (uint64_t)attnd_clock_ms() << 20; /* ids need only differ */
    atomic_store(&g->stream_next, 0);
}

static uint32_t bucket_of(int32_t src, uint64_t stream)
{
    return (uint32_t)(((stream ^ (uint64_t)src) * 0x9e3779b97f4a7c15ull) >> 56) %
           ATTND__GSTAGE_BUCKETS;
}

/* Caller holds stage_mu. */
static attnd__gstage *find(attnd_group *g, int32_t src, uint64_t stream)
{
    for (attnd__gstage *s = g->stages[bucket_of(src, stream)]; s; s = s->next)
        if (s->src == src && s->stream == stream)
            return s;
    return NULL;
}

/* Drop what s staged here (engine pages, layer claims); s becomes a
 * tombstone. Caller: s is busy, or stage_mu is held and s is not busy. */
static void abort_part(attnd_group *g, attnd__gstage *s)
{
    attnd_engine_stage_close(s->es);
    s->es = NULL;
    for (size_t i = 0; i < s->n_claim; i++)
        attnd__gtable_unstage(&g->table, &s->claim[i].id, s->claim[i].layer, s->stream, 0);
    s->n_claim = 0;
    s->done = 1;
}

/* Caller holds stage_mu; s is unlinked and done. */
static void stage_free(attnd_group *g, attnd__gstage *s)
{
    if (g->n_free_stages < GSTAGES_KEPT) {
        s->next = g->free_stages;
        g->free_stages = s;
        g->n_free_stages++;
        return;
    }
    free(s->claim);
    free(s);
}

/* Abort parts idle past expiry, free old tombstones. Under stage_mu. */
static void sweep(attnd_group *g, int64_t now)
{
    if (now < g->stage_sweep_ms)
        return;
    g->stage_sweep_ms = now + 1000;
    for (int b = 0; b < ATTND__GSTAGE_BUCKETS; b++)
        for (attnd__gstage **pp = &g->stages[b], *s; (s = *pp);) {
            if (!s->busy && !s->done && now - s->last_ms > GSTAGE_EXPIRE_MS) {
                attnd_log_warn("group", "rank %d: AppendKV stream %llx of rank %d sent "
                               "nothing for %d s; dropped what it staged here", g->me,
                               (unsigned long long)s->stream, s->src, GSTAGE_EXPIRE_MS / 1000);
                abort_part(g, s);
                s->last_ms = now;
            }
            if (!s->busy && s->done && now - s->last_ms > GSTAGE_TOMB_MS) {
                *pp = s->next;
                stage_free(g, s);
                continue;
            }
            pp = &s->next;
        }
}

/* The stage of (src, stream), made busy for one message (waiting while
 * another message of the stream runs). Absent: fail, open one, or make a
 * tombstone, as `absent` says. NULL with err set: the stream is unknown
 * here, or (unless absent is ABSENT_TOMB) already ended. */
static attnd__gstage *acquire(attnd_group *g, int32_t src, uint64_t stream, int absent,
                              attnd_error *err)
{
    int64_t now = attnd_clock_ms();
    attnd__gstage *s;

    pthread_mutex_lock(&g->stage_mu);
    sweep(g, now);
    while ((s = find(g, src, stream)) && s->busy)
        pthread_cond_wait(&g->stage_cv, &g->stage_mu);
    if (!s && absent == ABSENT_FAILS) {
        attnd_error_set(err, ATTND_ERR_ABORTED,
                        "group: rank %d holds no open part of this AppendKV stream (it ended, "
                        "or sent nothing for %d s); nothing of it was applied", g->me,
                        GSTAGE_EXPIRE_MS / 1000);
    } else if (!s) {
        if ((s = g->free_stages)) {
            g->free_stages = s->next;
            g->n_free_stages--;
        } else if (!(s = calloc(1, sizeof *s))) {
            attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
        }
        if (s) {
            s->src = src;
            s->stream = stream;
            s->done = absent == ABSENT_TOMB;
            s->next_seq = 0;
            s->es = NULL;
            s->n_claim = 0;
            uint32_t b = bucket_of(src, stream);
            s->next = g->stages[b];
            g->stages[b] = s;
        }
    } else if (s->done && absent != ABSENT_TOMB) {
        attnd_error_set(err, ATTND_ERR_ABORTED,
                        "group: this AppendKV stream already ended on rank %d; nothing more "
                        "of it is applied", g->me);
        s = NULL;
    }
    if (s) {
        s->busy = 1;
        s->last_ms = now;
    }
    pthread_mutex_unlock(&g->stage_mu);
    return s;
}

static void release(attnd_group *g, attnd__gstage *s)
{
    pthread_mutex_lock(&g->stage_mu);
    s->busy = 0;
    s->last_ms = attnd_clock_ms();
    pthread_cond_broadcast(&g->stage_cv);
    pthread_mutex_unlock(&g->stage_mu);
}

static attnd_status claims_fit(attnd__gstage *s, attnd_error *err)
{
    if (s->n_claim < s->cap_claim)
        return ATTND_OK;
    size_t cap = s->cap_claim ? 2 * s->cap_claim : 16;
    attnd__gclaim *p = realloc(s->claim, cap * sizeof *p);
    if (!p)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv: no memory to stage a layer more (%zu staged)", s->n_claim);
    s->claim = p;
    s->cap_claim = cap;
    return ATTND_OK;
}

attnd_status attnd__gstage_chunk(attnd_group *g, int32_t src, uint64_t stream, uint32_t seq,
                                 const attnd_session_id *id, uint32_t layer, uint64_t start,
                                 uint64_t n_global, attnd_dtype dt, const void *kv,
                                 attnd_error *err)
{
    attnd_status st;
    int fresh = 0;

    if (src < 0 || src >= g->N)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "group: APPEND from rank %d",
                               src);
    attnd__gstage *s = acquire(g, src, stream, seq == 0 ? ABSENT_OPENS : ABSENT_FAILS, err);
    if (!s)
        return err->code;
    if (seq != s->next_seq) {
        st = attnd_error_set(err, ATTND_ERR_ABORTED,
                             "group: chunk %u of an AppendKV stream came to rank %d, which "
                             "expected chunk %u", seq, g->me, s->next_seq);
        goto out;
    }
    s->next_seq++;
    if ((st = claims_fit(s, err)) ||
        (st = attnd__gtable_stage(&g->table, id, layer, stream, start, 1, &fresh, err)))
        goto out;
    if (fresh)
        s->claim[s->n_claim++] = (attnd__gclaim){*id, layer};
    uint64_t lo = start, k = n_global;
    if (g->cfg.mode == ATTND_GROUP_SEQUENCE) {
        lo = attnd__gplace_count(g, g->me, start);
        k = attnd__gplace_count(g, g->me, start + n_global) - lo;
    }
    const int seq_mode = g->cfg.mode == ATTND_GROUP_SEQUENCE;
    if ((k || seq_mode) && !s->es && (st = attnd_engine_stage_open(g->engine, &s->es, err)))
        goto out;
    if (k && (st = attnd_engine_stage_append(s->es, id, layer, lo, k, dt, kv, err)))
        goto out;
    /* sequence mode: the group's length too, for a rank that recovers
     * from its log (worker/TIERS.md) */
    if (seq_mode && (st = attnd_engine_stage_note(s->es, id, layer, start + n_global, err)))
        goto out;
    attnd__gtable_stage_to(&g->table, id, layer, stream, start + n_global);
out:
    release(g, s);
    return st;
}

attnd_status attnd__gstage_commit(attnd_group *g, int32_t src, uint64_t stream,
                                  uint32_t n_chunks, attnd_error *err)
{
    attnd_status st = ATTND_OK;

    if (src < 0 || src >= g->N)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "group: COMMIT from rank %d",
                               src);
    attnd__gstage *s = acquire(g, src, stream, ABSENT_TOMB, err);
    if (!s)
        return err->code;
    if (s->done) {
        st = attnd_error_set(err, ATTND_ERR_ABORTED,
                             "group: rank %d holds no open part of this AppendKV stream (it "
                             "ended, or sent nothing for %d s); nothing of it was applied there",
                             g->me, GSTAGE_EXPIRE_MS / 1000);
    } else if (n_chunks != s->next_seq) {
        st = attnd_error_set(err, ATTND_ERR_ABORTED,
                             "group: rank %d staged %u chunks of the AppendKV stream, its leader "
                             "sent %u; nothing of it was applied there", g->me, s->next_seq,
                             n_chunks);
        abort_part(g, s);
    } else if (s->es && (st = attnd_engine_stage_commit(s->es, NULL, NULL, err))) {
        abort_part(g, s); /* the engine stage applied nothing */
    } else {
        for (size_t i = 0; i < s->n_claim; i++)
            attnd__gtable_unstage(&g->table, &s->claim[i].id, s->claim[i].layer, stream, 1);
        s->n_claim = 0;
        attnd_engine_stage_close(s->es); /* empty now */
        s->es = NULL;
        s->done = 1;
    }
    release(g, s);
    return st;
}

void attnd__gstage_abort(attnd_group *g, int32_t src, uint64_t stream)
{
    attnd_error err;
    if (src < 0 || src >= g->N)
        return;
    attnd__gstage *s = acquire(g, src, stream, ABSENT_TOMB, &err);
    if (!s)
        return;
    abort_part(g, s);
    release(g, s);
}

void attnd__gstages_cleanup(attnd_group *g)
{
    for (int b = 0; b < ATTND__GSTAGE_BUCKETS; b++)
        for (attnd__gstage *s = g->stages[b], *next; s; s = next) {
            next = s->next;
            abort_part(g, s);
            free(s->claim);
            free(s);
        }
    memset(g->stages, 0, sizeof g->stages);
    for (attnd__gstage *s = g->free_stages, *next; s; s = next) {
        next = s->next;
        free(s->claim);
        free(s);
    }
    g->free_stages = NULL;
    g->n_free_stages = 0;
    pthread_mutex_destroy(&g->stage_mu);
    pthread_cond_destroy(&g->stage_cv);
}
