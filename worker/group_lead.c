/* The leader side of session calls, and the helpers every leader uses
 * (attnd__glead_*; AppendKV streams: group_append.c; Attend:
 * group_attend.c, in plan, scatter, run-local, combine): the rank a client
 * called validates what only the group knows, sends each peer its part,
 * does its own, waits for the peers (up to the deadline).
 *
 * Errors: the leader's own checks first (unknown session NOT_FOUND, wrong
 * position FAILED_PRECONDITION, a peer not connected UNAVAILABLE before
 * anything is sent); then the first failing rank in rank order. A peer
 * answering NOT_FOUND for a session the leader holds has lost its shard
 * (it restarted empty): DATA_LOSS. A peer that breaks or does not answer
 * in time: UNAVAILABLE.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "attnd_assert.h"
#include "attnd_clock.h"
#include "group_int.h"

int64_t attnd__glead_deadline(const attnd_group *g, int64_t timeout_ms)
{
    int64_t t = g->cfg.timeout_ms;
    if (timeout_ms > 0 && timeout_ms < t)
        t = timeout_ms;
    return attnd_clock_ms() + t;
}

/* A peer that is reconnecting (after a timeout closed its endpoint, or a
 * blip) is usually back within a retry period: wait that long, at most,
 * before answering UNAVAILABLE. */
#define RECONNECT_GRACE_MS 500

attnd_status attnd__glead_peers_up(attnd_group *g, attnd_error *err)
{
    for (int32_t r = 0; r < g->N; r++)
        if (r != g->me && !attnd__gnet_peer_up(g, r)) {
            int64_t grace = g->cfg.timeout_ms < RECONNECT_GRACE_MS ? g->cfg.timeout_ms
                                                                    : RECONNECT_GRACE_MS;
            attnd__gnet_wait_connected(g, attnd_clock_ms() + grace);
            break;
        }
    for (int32_t r = 0; r < g->N; r++)
        if (r != g->me && !attnd__gnet_peer_up(g, r)) {
            atomic_fetch_add(&g->peer_failures, 1);
            return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                                   "group: rank %d (%s) is not connected", r, g->cfg.addrs[r]);
        }
    return ATTND_OK;
}

/* The first failed peer slot, as the call's status. */
attnd_status attnd__glead_collect(attnd_group *g, attnd__gcall *c, attnd_error *err)
{
    for (int32_t r = 0; r < g->N; r++) {
        attnd__gslot *s = &c->slot[r];
        if (!s->expect || s->st == ATTND_OK)
            continue;
        if (s->st == ATTND_ERR_NOT_FOUND)
            return attnd_error_set(err, ATTND_ERR_DATA_LOSS,
                                   "session_ids: rank %d lost its shard of the session (it "
                                   "restarted?): %s", r, s->msg);
        if (s->st == ATTND_ERR_UNAVAILABLE)
            atomic_fetch_add(&g->peer_failures, 1);
        if (strncmp(s->msg, "group:", 6) == 0)
            return attnd_error_set(err, s->st, "%s", s->msg);
        return attnd_error_set(err, s->st, "rank %d: %s", r, s->msg);
    }
    return ATTND_OK;
}

/* Send b to rank r as part of call c, expecting `want` reply bytes. */
void attnd__glead_send(attnd_group *g, attnd__gcall *c, int32_t r, attnd__gbuf *b,
                       size_t want)
{
    attnd__glead_send_upto(g, c, r, b, want, want);
}

void attnd__glead_send_upto(attnd_group *g, attnd__gcall *c, int32_t r, attnd__gbuf *b,
                            size_t want, size_t max)
{
    attnd_error e;
    b->hdr.src_rank = g->me;
    b->hdr.req_id = c->id;
    if (attnd__gcall_expect(g, c, r, want, max)) {
        attnd__gbuf_put(g, b);
        pthread_mutex_lock(&g->call_mu);
        c->slot[r].expect = 1;
        c->n_left++;
        attnd__gslot_fail(g, c, r, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
        pthread_mutex_unlock(&g->call_mu);
        return;
    }
    if (attnd__gnet_send_req(g, r, b, &e)) {
        pthread_mutex_lock(&g->call_mu);
        attnd__gslot_fail(g, c, r, e.code, e.msg);
        pthread_mutex_unlock(&g->call_mu);
    }
}

/* Did a call that changes sessions leave them different on different
 * ranks? Each rank applies its part all or nothing, so the shards still
 * agree when every part failed or every part succeeded; a part that timed
 * out or broke in flight may have gone either way. own: 1 our part
 * applied, 0 it failed; lost: parts that could not even be sent (nothing
 * applied there). */
int attnd__glead_diverged(attnd_group *g, attnd__gcall *c, int own, int lost)
{
    int applied = own == 1, failed = (own == 0) + lost, unknown = 0;

    ATTND_ASSERT(own == 0 || own == 1);
    ATTND_ASSERT(!c->slot[g->me].expect); /* the leader's part is never a slot */
    pthread_mutex_lock(&g->call_mu);
    for (int32_t r = 0; r < g->N; r++) {
        const attnd__gslot *s = &c->slot[r];
        if (!s->expect)
            continue;
        if (s->done && s->st == ATTND_OK)
            applied++;
        else if (s->st == ATTND_ERR_UNAVAILABLE || s->st == ATTND_ERR_DEADLINE_EXCEEDED)
            unknown++;
        else
            failed++;
    }
    pthread_mutex_unlock(&g->call_mu);
    return (failed || unknown) && (applied || unknown);
}

/* Mark sessions diverged here and on every peer that can be reached (a
 * peer that cannot is told by the DATA_LOSS its part gets from the others
 * on the next call). */
void attnd__glead_break(attnd_group *g, const attnd_session_id *ids, uint32_t n,
                        int64_t timeout_ms)
{
    attnd__gtable_break(&g->table, ids, n);
    attnd__gcall *c = attnd__gcall_new(g);
    if (!c)
        return;
    for (int32_t r = 0; r < g->N; r++) {
        if (r == g->me)
            continue;
        attnd__gbuf *b = attnd__gbuf_get(g, (size_t)n * sizeof ids[0].bytes);
        if (!b)
            continue;
        b->hdr.type = ATTND__GMSG_BREAK;
        b->hdr.n_seqs = n;
        for (uint32_t i = 0; i < n; i++)
            memcpy(b->data + (size_t)i * sizeof ids[0].bytes, ids[i].bytes, sizeof ids[0].bytes);
        b->len = (size_t)n * sizeof ids[0].bytes;
        attnd__glead_send(g, c, r, b, 0);
    }
    attnd__gcall_wait(g, c, attnd__glead_deadline(g, timeout_ms));
    attnd__gcall_release(g, c);
}

/* ---- sessions ------------------------------------------------------------------- */

uint64_t attnd__glead_rank_tokens(const attnd_group *g, int32_t r, uint64_t max_tokens)
{
    return g->cfg.mode == ATTND_GROUP_SEQUENCE ? attnd__gplace_count(g, r, max_tokens)
                                               : max_tokens;
}

/* Send `type` for id (and, for CREATE, its owner after it) to every peer
 * and wait. */
static attnd_status broadcast_id(attnd_group *g, uint32_t type, const attnd_session_id *id,
                                 uint64_t owner, uint64_t max_tokens, uint64_t *sum_a,
                                 attnd_error *err)
{
    attnd__gcall *c = attnd__gcall_new(g);
    if (!c)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
    for (int32_t r = 0; r < g->N; r++) {
        if (r == g->me)
            continue;
        attnd__gbuf *b = attnd__gbuf_get(g, sizeof id->bytes + sizeof owner);
        if (!b)
            continue;
        b->hdr.type = type;
        b->hdr.a = attnd__glead_rank_tokens(g, r, max_tokens);
        memcpy(b->data, id->bytes, sizeof id->bytes);
        b->len = sizeof id->bytes;
        if (type == ATTND__GMSG_CREATE && owner) { /* b = 1: an owner follows */
            memcpy(b->data + b->len, &owner, sizeof owner);
            b->len += sizeof owner;
            b->hdr.b = 1;
        }
        attnd__glead_send(g, c, r, b, 0);
    }
    attnd__gcall_wait(g, c, attnd__glead_deadline(g, 0));
    attnd_status st = attnd__glead_collect(g, c, err);
    for (int32_t r = 0; sum_a && r < g->N; r++)
        if (c->slot[r].expect && c->slot[r].st == ATTND_OK)
            *sum_a += c->slot[r].a;
    attnd__gcall_release(g, c);
    return st;
}

attnd_status attnd_group_session_create(attnd_group *g, uint64_t max_tokens,
                                        attnd_session_id *id_p, attnd_error *err)
{
    return attnd_group_session_create_owned(g, 0, max_tokens, id_p, err);
}

attnd_status attnd_group_session_create_owned(attnd_group *g, uint64_t owner,
                                              uint64_t max_tokens, attnd_session_id *id_p,
                                              attnd_error *err)
{
    attnd_session_id id;
    attnd_status st = attnd__glead_peers_up(g, err);

    if (st)
        return st;
    if (getrandom(id.bytes, sizeof id.bytes, 0) != (ssize_t)sizeof id.bytes)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "session_id: getrandom failed");
    st = attnd_engine_session_create_owned(g->engine, owner,
                                           attnd__glead_rank_tokens(g, g->me, max_tokens), &id,
                                           NULL, err);
    if (st)
        return st;
    if ((st = attnd__gtable_add(&g->table, &id, err))) {
        attnd_engine_session_close(g->engine, &id, NULL, NULL);
        return st;
    }
    st = broadcast_id(g, ATTND__GMSG_CREATE, &id, owner, max_tokens, NULL, err);
    if (st) { /* undo everywhere (ranks that never created it answer NOT_FOUND) */
        attnd_error ignored;
        broadcast_id(g, ATTND__GMSG_CLOSE, &id, 0, 0, NULL, &ignored);
        attnd__gtable_remove(&g->table, &id);
        attnd_engine_session_close(g->engine, &id, NULL, NULL);
        return st;
    }
    *id_p = id;
    return ATTND_OK;
}

attnd_status attnd_group_session_close(attnd_group *g, const attnd_session_id *id,
                                       uint64_t *pages_freed_p, attnd_error *err)
{
    uint64_t freed = 0, peers = 0;
    attnd_error ignored;

    if (!attnd__gtable_has(&g->table, id))
        return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_id: no such session");
    attnd__gtable_remove(&g->table, id);
    attnd_status st = attnd_engine_session_close(g->engine, id, &freed, err);
    /* peers that are down or lost the session have nothing left to free */
    broadcast_id(g, ATTND__GMSG_CLOSE, id, 0, 0, &peers, &ignored);
    if (st == ATTND_OK && pages_freed_p)
        *pages_freed_p = freed + peers;
    return st;
}

/* Rank r's share of n entries starting at global `start` (AppendKV; an
 * Attend's scatter places its new entries the same way, group_scatter.c). */
uint64_t attnd__glead_kv_share(const attnd_group *g, int32_t r, uint64_t start, uint64_t n,
                               attnd_dtype dt, const void *src, void *dst)
{
    if (g->cfg.mode == ATTND_GROUP_SEQUENCE)
        return attnd__gplace_gather_seq(g, r, start, n,
                                        (size_t)g->kv_elems * attnd_dtype_size(dt), src, dst);
    if (dst)
        attnd__gplace_slice_kv(g, r, n, dt, src, dst);
    return n;
}
