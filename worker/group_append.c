/* AppendKV streams in a worker group, the leader's side: every rank
 * stages its share of each chunk, and the stream commits everywhere at its
 * end or nowhere.
 *
 * A stream has an id unique to this rank's run (a random base plus a
 * counter). Each chunk is checked here first (session, start as this
 * stream staged it, no other stream on the layer: nothing is sent for a
 * chunk that cannot stage), then sent to every peer as APPEND (stream id,
 * chunk number, the peer's share: sequence mode its tokens, head and
 * latent modes its slice of every token) while this rank stages its own
 * share (group_stage.c); the leader waits for every rank before the next
 * chunk, so chunks reach each rank in order. Nothing is visible yet.
 *
 * Commit: COMMIT (with the number of chunks sent) to every peer, our own
 * commit, wait. Every rank commits all of the stream or none of it (an
 * engine stage), so the shards agree when every rank committed or none
 * did; a rank that failed while others committed, or whose answer did not
 * come, leaves them disagreeing: the sessions of the stream are marked
 * diverged (DATA_LOSS from then on, GROUPS.md). A commit that fails
 * before any rank commits (a peer not connected) applies nothing.
 *
 * Abort (a chunk failed, the client went away, the commit was never
 * reached): ABORT to every peer and our own part dropped, waiting for the
 * peers (bounded by the group's timeout) so that a retry finds the layers
 * free. A stream idle for ATTND__GSTREAM_IDLE_MS fails ABORTED at its
 * next message: ranks drop parts that sent nothing for twice that long.
 */
#include <stdlib.h>
#include <string.h>

#include "attnd_clock.h"
#include "group_int.h"

struct attnd_group_stream {
    attnd_group *g;
    uint64_t id;
    uint32_t sent;          /* chunks sent to every rank */
    int finished;           /* committed everywhere: nothing to abort */
    int64_t last_ms;        /* when the last chunk went out */
    uint64_t chunks, tokens;
    attnd_session_id *ids;  /* the sessions it touched (marked diverged
                               when a commit splits) */
    size_t n_ids, cap_ids;
};

attnd_status attnd_group_stream_open(attnd_group *g, attnd_group_stream **s_p,
                                     attnd_error *err)
{
    attnd_group_stream *s = calloc(1, sizeof *s);
    if (!s)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
    s->g = g;
    do /* 0 means "no stream" in the group table */
        s->id = g->stream_base + atomic_fetch_add(&g->stream_next, 1);
    while (s->id == 0);
    *s_p = s;
    return ATTND_OK;
}

static attnd_status check_idle(const attnd_group_stream *s, attnd_error *err)
{
    int64_t quiet = attnd_clock_ms() - s->last_ms;
    if (s->sent && quiet > ATTND__GSTREAM_IDLE_MS)
        return attnd_error_set(err, ATTND_ERR_ABORTED,
                               "AppendKV: %lld s since the last chunk; in a worker group a "
                               "stream may pause at most %d s (its ranks drop what an idle "
                               "stream staged); nothing of it was applied",
                               (long long)(quiet / 1000), ATTND__GSTREAM_IDLE_MS / 1000);
    return ATTND_OK;
}

/* Remember id among the stream's sessions (consecutive chunks are mostly
 * of one session: the last is checked first). */
static attnd_status note_session(attnd_group_stream *s, const attnd_session_id *id,
                                 attnd_error *err)
{
    for (size_t i = s->n_ids; i-- > 0;)
        if (memcmp(s->ids[i].bytes, id->bytes, sizeof id->bytes) == 0)
            return ATTND_OK;
    if (s->n_ids == s->cap_ids) {
        size_t cap = s->cap_ids ? 2 * s->cap_ids : 8;
        attnd_session_id *p = realloc(s->ids, cap * sizeof *p);
        if (!p)
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
        s->ids = p;
        s->cap_ids = cap;
    }
    s->ids[s->n_ids++] = *id;
    return ATTND_OK;
}

/* Send a data-less stream message (COMMIT, ABORT) to every peer as part of
 * call c; returns the peers it could not even be sent to. */
static int send_all(attnd_group_stream *s, attnd__gcall *c, uint32_t type)
{
    attnd_group *g = s->g;
    int lost = 0;
    for (int32_t r = 0; r < g->N; r++) {
        if (r == g->me)
            continue;
        attnd__gbuf *b = attnd__gbuf_get(g, 0);
        if (!b) {
            lost++;
            continue;
        }
        b->hdr.type = type;
        b->hdr.stream = s->id;
        b->hdr.n_seqs = s->sent;
        attnd__glead_send(g, c, r, b, 0);
    }
    return lost;
}

attnd_status attnd_group_stream_append(attnd_group_stream *s, const attnd_session_id *id,
                                       uint32_t layer, uint64_t start, uint64_t n_tokens,
                                       attnd_dtype dtype, const void *kv, attnd_error *err)
{
    attnd_group *g = s->g;
    const attnd_dtype pt = attnd__gpart_kv_dtype(g, dtype);
    const size_t pes = (size_t)g->kv_elems_r * attnd_dtype_size(pt);
    attnd__gbuf *rot = NULL, *own = NULL;
    attnd__gcall *c = NULL;
    int fresh, lost = 0;
    attnd_status st;

    if ((st = check_idle(s, err)) ||
        (st = attnd__gtable_stage(&g->table, id, layer, s->id, start, 0, &fresh, err)) ||
        (st = attnd__glead_peers_up(g, err)) || (st = note_session(s, id, err)))
        return st;
    if (g->cfg.mode == ATTND_GROUP_LATENT) {
        if (!(rot = attnd__gbuf_get(g, n_tokens * (size_t)g->kv_elems * sizeof(float))))
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "kv: out of memory");
        attnd__grotate_kv(g, n_tokens, dtype, kv, (float *)rot->data);
        kv = rot->data;
        dtype = ATTND_DTYPE_F32;
    }
    if (!(c = attnd__gcall_new(g))) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
        goto out;
    }
    for (int32_t r = 0; r < g->N; r++) {
        if (r == g->me)
            continue;
        uint64_t k = attnd__glead_kv_share(g, r, start, n_tokens, dtype, kv, NULL);
        attnd__gbuf *b = attnd__gbuf_get(g, 64 + k * pes);
        if (!b) {
            lost++;
            continue;
        }
        b->hdr.type = ATTND__GMSG_APPEND;
        b->hdr.layer = layer;
        b->hdr.kv_dtype = pt;
        b->hdr.a = start;
        b->hdr.b = n_tokens;
        b->hdr.stream = s->id;
        b->hdr.n_seqs = s->sent;
        memcpy(b->data, id->bytes, sizeof id->bytes);
        attnd__glead_kv_share(g, r, start, n_tokens, dtype, kv, b->data + 64);
        b->len = 64 + k * pes;
        attnd__glead_send(g, c, r, b, 0);
    }
    uint64_t k = attnd__glead_kv_share(g, g->me, start, n_tokens, dtype, kv, NULL);
    if (!(own = attnd__gbuf_get(g, k * pes + 1))) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "kv: out of memory");
    } else {
        attnd__glead_kv_share(g, g->me, start, n_tokens, dtype, kv, own->data);
        st = attnd__gstage_chunk(g, g->me, s->id, s->sent, id, layer, start, n_tokens, pt,
                                 own->data, err);
    }
    s->sent++;
    s->last_ms = attnd_clock_ms();
    attnd__gcall_wait(g, c, attnd__glead_deadline(g, 0));
    if (st == ATTND_OK)
        st = attnd__glead_collect(g, c, err);
    if (st == ATTND_OK && lost)
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "kv: out of memory for %d ranks' parts", lost);
    if (st == ATTND_OK) {
        s->chunks++;
        s->tokens += n_tokens;
    }
out:
    if (c)
        attnd__gcall_release(g, c);
    attnd__gbuf_put(g, own);
    attnd__gbuf_put(g, rot);
    return st;
}

attnd_status attnd_group_stream_commit(attnd_group_stream *s, uint64_t *chunks_p,
                                       uint64_t *tokens_p, attnd_error *err)
{
    attnd_group *g = s->g;
    attnd_status st;

    if (s->sent == 0) { /* nothing staged anywhere */
        s->finished = 1;
        *chunks_p = *tokens_p = 0;
        return ATTND_OK;
    }
    if ((st = check_idle(s, err)) || (st = attnd__glead_peers_up(g, err)))
        return st; /* nothing committed anywhere; the close aborts */
    attnd__gcall *c = attnd__gcall_new(g);
    if (!c)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
    int lost = send_all(s, c, ATTND__GMSG_COMMIT);
    st = attnd__gstage_commit(g, g->me, s->id, s->sent, err);
    int own_applied = st == ATTND_OK;
    attnd__gcall_wait(g, c, attnd__glead_deadline(g, 0));
    if (st == ATTND_OK)
        st = attnd__glead_collect(g, c, err);
    if (st == ATTND_OK && lost)
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "group: out of memory for %d ranks' commits", lost);
    if (st && attnd__glead_diverged(g, c, own_applied, lost))
        attnd__glead_break(g, s->ids, (uint32_t)s->n_ids, 0);
    attnd__gcall_release(g, c);
    if (st)
        return st; /* the close aborts what is still open anywhere */
    s->finished = 1;
    *chunks_p = s->chunks;
    *tokens_p = s->tokens;
    return ATTND_OK;
}

void attnd_group_stream_close(attnd_group_stream *s)
{
    if (!s)
        return;
    attnd_group *g = s->g;
    if (!s->finished && s->sent) {
        attnd__gcall *c = attnd__gcall_new(g);
        if (c) /* else the peers' parts expire */
            send_all(s, c, ATTND__GMSG_ABORT);
        attnd__gstage_abort(g, g->me, s->id);
        if (c) {
            attnd__gcall_wait(g, c, attnd__glead_deadline(g, 0));
            attnd__gcall_release(g, c);
        }
    }
    free(s->ids);
    free(s);
}
