/* The leader side of every group call (AppendKV streams: group_append.c,
 * which shares the helpers named attnd__glead_*): the rank a client
 * called validates what only the group knows, sends each peer its part,
 * does its own, waits for the peers (up to the deadline) and combines.
 *
 * Errors: the leader's own checks first (unknown session NOT_FOUND, wrong
 * position FAILED_PRECONDITION, a peer not connected UNAVAILABLE before
 * anything is sent); then the first failing rank in rank order. A peer
 * answering NOT_FOUND for a session the leader holds has lost its shard
 * (it restarted empty): DATA_LOSS. A peer that breaks or does not answer
 * in time: UNAVAILABLE.
 *
 * Combine (Attend), into the caller's engine workspace: sequence mode
 * merges the partial states of ranks 0, 1, ..., N-1 in that order whoever
 * leads (deterministic for a given N); head mode places each rank's query
 * heads; latent mode places each rank's rotated latent slice and rotates
 * every output row back (its LSE: the mean of the shards'). With
 * up_project every rank first multiplies its partial rows by its part of
 * W_UV (group_weights.c): sequence merges the projected rows, latent sums
 * them in rank order.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

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
    attnd_error e;
    b->hdr.src_rank = g->me;
    b->hdr.req_id = c->id;
    if (attnd__gcall_expect(g, c, r, want)) {
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
 * applied, 0 it failed, -1 our part is one of c's slots; lost: parts that
 * could not even be sent (nothing applied there). */
int attnd__glead_diverged(attnd_group *g, attnd__gcall *c, int own, int lost)
{
    int applied = own == 1, failed = (own == 0) + lost, unknown = 0;

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

static uint64_t rank_max_tokens(const attnd_group *g, int32_t r, uint64_t max_tokens)
{
    return g->cfg.mode == ATTND_GROUP_SEQUENCE ? attnd__gplace_count(g, r, max_tokens)
                                               : max_tokens;
}

/* Send `type` for id to every peer and wait. */
static attnd_status broadcast_id(attnd_group *g, uint32_t type, const attnd_session_id *id,
                                 uint64_t max_tokens, uint64_t *sum_a, attnd_error *err)
{
    attnd__gcall *c = attnd__gcall_new(g);
    if (!c)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
    for (int32_t r = 0; r < g->N; r++) {
        if (r == g->me)
            continue;
        attnd__gbuf *b = attnd__gbuf_get(g, sizeof id->bytes);
        if (!b)
            continue;
        b->hdr.type = type;
        b->hdr.a = rank_max_tokens(g, r, max_tokens);
        memcpy(b->data, id->bytes, sizeof id->bytes);
        b->len = sizeof id->bytes;
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
    attnd_session_id id;
    attnd_status st = attnd__glead_peers_up(g, err);

    if (st)
        return st;
    if (getrandom(id.bytes, sizeof id.bytes, 0) != (ssize_t)sizeof id.bytes)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "session_id: getrandom failed");
    st = attnd_engine_session_create_id(g->engine, rank_max_tokens(g, g->me, max_tokens), &id,
                                        err);
    if (st)
        return st;
    if ((st = attnd__gtable_add(&g->table, &id, err))) {
        attnd_engine_session_close(g->engine, &id, NULL, NULL);
        return st;
    }
    st = broadcast_id(g, ATTND__GMSG_CREATE, &id, max_tokens, NULL, err);
    if (st) { /* undo everywhere (ranks that never created it answer NOT_FOUND) */
        attnd_error ignored;
        broadcast_id(g, ATTND__GMSG_CLOSE, &id, 0, NULL, &ignored);
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
    broadcast_id(g, ATTND__GMSG_CLOSE, id, 0, &peers, &ignored);
    if (st == ATTND_OK && pages_freed_p)
        *pages_freed_p = freed + peers;
    return st;
}

/* Rank r's share of n entries starting at global `start` (AppendKV and
 * Attend with new KV alike). */
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

/* ---- attend --------------------------------------------------------------------- */

/* Build rank r's ATTEND message for req into a new buffer (NULL: no
 * memory). q/kv are the client's tensors or, in latent mode, rotated f32. */
static attnd__gbuf *build_part(attnd_group *g, int32_t r, const attnd_attend_req *req,
                               const uint64_t *glen, attnd_dtype qt, const void *q,
                               attnd_dtype kt, const void *kv)
{
    const uint32_t n = req->n_seqs;
    const uint64_t S = (uint64_t)req->q_tokens;
    const attnd_dtype pq = attnd__gpart_q_dtype(g, qt);
    const attnd_dtype pk = kv ? attnd__gpart_kv_dtype(g, kt) : ATTND_DTYPE_INVALID;
    const size_t es = kv ? (size_t)g->kv_elems * attnd_dtype_size(kt) : 0;
    const size_t pes = kv ? (size_t)g->kv_elems_r * attnd_dtype_size(pk) : 0;
    attnd__gpart_layout l;
    uint64_t entries = 0;

    for (uint32_t i = 0; kv && i < n; i++)
        entries += attnd__glead_kv_share(g, r, glen[i], S, kt, NULL, NULL);
    attnd__gpart_layout_of(g, n, (int32_t)S, pq, pk, entries, &l);
    attnd__gbuf *b = attnd__gbuf_get(g, l.total);
    if (!b)
        return NULL;
    memcpy(b->data + l.ids, req->ids, (size_t)n * ATTND_SESSION_ID_BYTES);
    memcpy(b->data + l.glen, glen, (size_t)n * sizeof *glen);
    attnd__gplace_slice_q(g, r, (size_t)n * S, qt, q, b->data + l.q);
    unsigned char *dst = b->data + l.kv;
    for (uint32_t i = 0; kv && i < n; i++)
        dst += pes * attnd__glead_kv_share(g, r, glen[i], S, kt,
                                           (const char *)kv + (size_t)i * S * es, dst);
    b->len = l.total;
    b->hdr.type = ATTND__GMSG_ATTEND;
    b->hdr.layer = req->layer;
    b->hdr.n_seqs = n;
    b->hdr.q_tokens = req->q_tokens;
    b->hdr.q_dtype = pq;
    b->hdr.kv_dtype = pk;
    return b;
}

/* Combine the ranks' partial results (slot buffers) into ws. d_vo > 0:
 * they are up-projected rows of that width (sequence: merged; latent:
 * summed in rank order, no rotation left to undo). */
static attnd_status combine(attnd_group *g, attnd__gcall *c, size_t rows, int32_t d_vo,
                            attnd_engine_ws *ws, attnd_error *err)
{
    const size_t H = (size_t)g->hq, Hr = (size_t)g->hq_r;
    const size_t dv = d_vo ? (size_t)d_vo : (size_t)g->d_v;
    const size_t dvr = d_vo ? (size_t)d_vo : (size_t)g->d_v_r;
    if (ATTND_BUF_RESERVE(ws->out, ws->cap_out, rows * H * dv) ||
        ATTND_BUF_RESERVE(ws->lse, ws->cap_lse, rows * H))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "q: no memory for outputs");
    float *out = ws->out, *lse = ws->lse;
    for (int32_t r = 0; r < g->N; r++) {
        const float *o = (const float *)c->slot[r].buf->data;
        const float *l = o + rows * Hr * dvr;
        switch (g->cfg.mode) {
        case ATTND_GROUP_SEQUENCE:
            if (r == 0) {
                memcpy(out, o, sizeof(float) * rows * H * dv);
                memcpy(lse, l, sizeof(float) * rows * H);
            } else {
                attnd_kernel_merge_states(out, lse, o, l, (int64_t)(rows * H), (int32_t)dv);
            }
            break;
        case ATTND_GROUP_HEAD:
            for (size_t i = 0; i < rows; i++) {
                memcpy(out + (i * H + (size_t)r * Hr) * dv, o + i * Hr * dv,
                       sizeof(float) * Hr * dv);
                memcpy(lse + i * H + (size_t)r * Hr, l + i * Hr, sizeof(float) * Hr);
            }
            break;
        case ATTND_GROUP_LATENT:
            for (size_t i = 0; i < rows * H; i++) {
                if (!d_vo)
                    memcpy(out + i * dv + (size_t)r * dvr, o + i * dvr, sizeof(float) * dvr);
                else if (r == 0)
                    memcpy(out + i * dv, o + i * dv, sizeof(float) * dv);
                else
                    for (size_t e = 0; e < dv; e++)
                        out[i * dv + e] += o[i * dv + e];
                lse[i] = (r ? lse[i] : 0.0f) + l[i] / (float)g->N;
            }
            break;
        }
    }
    if (g->cfg.mode == ATTND_GROUP_LATENT && !d_vo)
        for (size_t i = 0; i < rows * H; i++)
            attnd_kernel_fwht_f32(out + i * dv, (int32_t)dv);
    return ATTND_OK;
}

attnd_status attnd_group_attend(attnd_group *g, const attnd_attend_req *req,
                                attnd_engine_ws *ws, int64_t timeout_ms, int32_t up_project,
                                const float **out_p, const float **lse_p, attnd_error *err)
{
    const uint32_t n = req->n_seqs;
    const size_t rows = (size_t)n * (size_t)req->q_tokens;
    attnd__gbuf *lens = NULL, *rq = NULL, *rkv = NULL, *own = NULL;
    attnd__gcall *c = NULL;
    const float *o = NULL, *l = NULL;
    attnd_status st;

    if (n == 0 || !req->ids || req->q_tokens < 1 ||
        req->q_tokens > ATTND_ENGINE_MAX_Q_TOKENS || !req->q)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "q: missing, or q_tokens %d not in [1, %d]", req->q_tokens,
                               ATTND_ENGINE_MAX_Q_TOKENS);
    if (!(lens = attnd__gbuf_get(g, sizeof(uint64_t) * n)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "session_ids: out of memory");
    uint64_t *glen = (uint64_t *)lens->data;
    if ((st = attnd__gtable_lens(&g->table, req->ids, n, req->layer, glen, err)))
        goto out;
    for (uint32_t i = 0; req->new_kv && req->positions && i < n; i++)
        if (req->positions[i] != glen[i]) {
            st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                                 "positions[%u]: layer %u of that session holds %llu tokens; "
                                 "the new entry must land there, got %llu", i, req->layer,
                                 (unsigned long long)glen[i],
                                 (unsigned long long)req->positions[i]);
            goto out;
        }
    if (req->new_kv && (st = attnd__gtable_check_unstaged(&g->table, req->ids, n, req->layer,
                                                          err)))
        goto out;
    if ((st = attnd__glead_peers_up(g, err)))
        goto out;
    const int32_t d_vo = up_project; /* the width the caller expects */
    if (d_vo && (g->cfg.model.kind != ATTND_ATTN_MLA || g->cfg.mode == ATTND_GROUP_HEAD ||
                 attnd_group_weights_dv(g, req->layer) != d_vo)) {
        st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                             "up_project: no W_UV of width %d loaded for layer %u (LoadWeights; "
                             "MLA in sequence or latent mode only)", d_vo, req->layer);
        goto out;
    }

    attnd_dtype qt = req->q_dtype, kt = req->new_kv_dtype;
    const void *q = req->q, *kv = req->new_kv;
    if (g->cfg.mode == ATTND_GROUP_LATENT) {
        rq = attnd__gbuf_get(g, rows * (size_t)g->hq * (size_t)g->d_k * sizeof(float));
        rkv = kv ? attnd__gbuf_get(g, rows * (size_t)g->kv_elems * sizeof(float)) : NULL;
        if (!rq || (kv && !rkv)) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "q: out of memory");
            goto out;
        }
        attnd__grotate_q(g, rows, qt, q, (float *)rq->data);
        q = rq->data;
        qt = ATTND_DTYPE_F32;
        if (kv) {
            attnd__grotate_kv(g, rows, kt, kv, (float *)rkv->data);
            kv = rkv->data;
            kt = ATTND_DTYPE_F32;
        }
    }
    if (!(c = attnd__gcall_new(g))) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
        goto out;
    }
    const size_t reply =
        attnd__gpart_reply_bytes(g, n, req->q_tokens, d_vo ? d_vo : g->d_v_r);
    for (int32_t r = 0; r < g->N; r++) {
        if (r == g->me)
            continue;
        attnd__gbuf *b = build_part(g, r, req, glen, qt, q, kt, kv);
        if (!b) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "q: out of memory");
            goto out;
        }
        b->hdr.b = (uint64_t)d_vo;
        attnd__glead_send(g, c, r, b, reply);
    }
    /* our own part, through the same layout as a peer's */
    if (!(own = build_part(g, g->me, req, glen, qt, q, kt, kv)) ||
        attnd__gcall_expect(g, c, g->me, reply)) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "q: out of memory");
        goto out;
    }
    attnd__gpart_layout pl;
    attnd__gpart_layout_of(g, n, req->q_tokens, (attnd_dtype)own->hdr.q_dtype,
                           (attnd_dtype)own->hdr.kv_dtype, 0, &pl); /* q, kv offsets */
    attnd__gpart p = {
        .layer = req->layer,
        .n_seqs = n,
        .q_tokens = req->q_tokens,
        .q_dtype = (attnd_dtype)own->hdr.q_dtype,
        .kv_dtype = (attnd_dtype)own->hdr.kv_dtype,
        .ids = req->ids,
        .glen = glen,
        .q = own->data + pl.q,
        .kv = kv ? own->data + pl.kv : NULL,
    };
    st = attnd__grank_attend(g, &p, ws, &o, &l, err);
    size_t rr = rows * (size_t)g->hq_r, width = d_vo ? (size_t)d_vo : (size_t)g->d_v_r;
    float *mine = (float *)c->slot[g->me].buf->data;
    if (st == ATTND_OK && d_vo)
        st = attnd__gweights_project(g, req->layer, d_vo, rows, o, mine, err);
    else if (st == ATTND_OK)
        memcpy(mine, o, rr * width * sizeof(float));
    pthread_mutex_lock(&g->call_mu);
    if (st == ATTND_OK) {
        memcpy(mine + rr * width, l, rr * sizeof(float));
        c->slot[g->me].done = 1;
        c->n_left--;
    } else {
        attnd__gslot_fail(g, c, g->me, st, err->msg);
    }
    pthread_mutex_unlock(&g->call_mu);
    /* wait for the peers even when our part failed: with new KV, some of
     * them may have appended, and then the session must be marked */
    attnd__gcall_wait(g, c, attnd__glead_deadline(g, timeout_ms));
    if (st == ATTND_OK)
        st = attnd__glead_collect(g, c, err);
    if (st) {
        if (kv && attnd__glead_diverged(g, c, -1, 0))
            attnd__glead_break(g, req->ids, n, timeout_ms);
        goto out;
    }
    if ((st = combine(g, c, rows, d_vo, ws, err)))
        goto out;
    *out_p = ws->out;
    *lse_p = req->want_lse ? ws->lse : NULL;

out:
    if (c) /* answers still on their way are dropped when they come */
        attnd__gcall_release(g, c);
    attnd__gbuf_put(g, own);
    attnd__gbuf_put(g, rkv);
    attnd__gbuf_put(g, rq);
    attnd__gbuf_put(g, lens);
    return st;
}
