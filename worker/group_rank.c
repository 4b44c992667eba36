/* One rank's part of a group Attend, run the same way by the leader for
 * itself (on views of the client's request: attnd__gpart.kv_whole) and by
 * a peer's executor for a request off the wire (AppendKV's part:
 * group_stage.c).
 *
 * ATTEND data layout (offsets 64-byte aligned, attnd__gpart_layout_of):
 *   ids  [n][16]            the sessions
 *   glen [n] uint64         their global lengths before this request
 *   q    [n][S][hq_r][qw] of the part's query dtype (qw: attnd__gpart_qw)
 *   kv   (with new KV) sequence mode: the entries this rank holds of each
 *        session's S new ones, in (session, token) order; head and latent:
 *        [n][S][kv_elems_r]; of the part's KV dtype
 *   given (header flag ATTND__GATT_GIVEN) the rank's given lists
 *        (group_given.c)
 * Reply data: out [n][S][hq_r][d_v_r] (up-projected: [..][d_vo]) then lse
 * [n][S][hq_r], float32; with ATTND__GATT_PAGES then, 8-aligned, the
 * pages it attended (the chosen section, group_given.c).
 *
 * Sequence mode appends each session's share separately (a session may get
 * none), then attends with a visible-length override when S > 1: query
 * token s sees the global prefix [0, L' - (S-1-s)), L' the length after the
 * append, which on rank r is its first count_r(L' - (S-1-s)) tokens. Head
 * and latent modes hold every token and append with the engine's own
 * all-or-nothing Attend; sequence mode stages every session's share and
 * commits them together (all or nothing as well). The global lengths
 * advance only on success.
 */
#include <string.h>

#include "attnd_assert.h"
#include "group_int.h"

static size_t align64(size_t x)
{
    return (x + 63) & ~(size_t)63;
}

int32_t attnd__gpart_qw(const attnd_group *g, int32_t d_nope)
{
    return d_nope > 0 ? d_nope + g->shard.d_rope : g->d_k_r;
}

void attnd__gpart_layout_of(const attnd_group *g, uint32_t n, int32_t S, attnd_dtype qt,
                            int32_t d_nope, attnd_dtype kt, uint64_t kv_entries,
                            size_t given_bytes, attnd__gpart_layout *l)
{
    l->ids = 0;
    l->glen = align64((size_t)n * ATTND_SESSION_ID_BYTES);
    l->q = align64(l->glen + (size_t)n * sizeof(uint64_t));
    l->q_bytes = (size_t)n * (size_t)S * (size_t)g->hq_r * (size_t)attnd__gpart_qw(g, d_nope) *
                 attnd_dtype_size(qt);
    l->kv = align64(l->q + l->q_bytes);
    l->kv_bytes = kt == ATTND_DTYPE_INVALID
                      ? 0
                      : (size_t)kv_entries * (size_t)g->kv_elems_r * attnd_dtype_size(kt);
    l->given = align64(l->kv + l->kv_bytes);
    l->given_bytes = given_bytes;
    l->total = given_bytes ? l->given + given_bytes : l->kv + l->kv_bytes;
}

size_t attnd__gpart_reply_bytes(const attnd_group *g, uint32_t n, int32_t S, int32_t width)
{
    size_t rows = (size_t)n * (size_t)S * (size_t)g->hq_r;
    return rows * ((size_t)width + 1) * sizeof(float);
}

/* The leader's view (kv_whole): stage this rank's tokens [lo, hi) of
 * session i straight from the request's entries, one run of its pages at
 * a time (one run unless the S new tokens cross several of its pages). */
static attnd_status stage_view(attnd_group *g, const attnd__gpart *p, attnd_engine_stage *stage,
                               uint32_t i, uint64_t lo, uint64_t hi, attnd_error *err)
{
    const size_t es = (size_t)g->kv_elems_r * attnd_dtype_size(p->kv_dtype);
    const uint64_t S = (uint64_t)p->q_tokens, end = p->glen[i] + S;
    const char *src = (const char *)p->kv + (size_t)i * S * es;
    attnd_status st = ATTND_OK;
    uint64_t t = p->glen[i], at = lo;

    while (st == ATTND_OK && at < hi) {
        uint64_t off = 0, run = attnd__gplace_first_run(g, g->me, t, end - t, &off);
        ATTND_ASSERT(run > 0 && at + run <= hi); /* placement agrees with the counts */
        st = attnd_engine_stage_append(stage, &p->ids[i], p->layer, at, run, p->kv_dtype,
                                       src + (t + off - p->glen[i]) * es, err);
        at += run;
        t += off + run;
    }
    return st;
}

/* Sequence mode: append each session's share of the new entries (a
 * session may have none here), all or nothing: one stage, committed
 * together. */
static attnd_status append_shares(attnd_group *g, const attnd__gpart *p, attnd_error *err)
{
    const size_t es = (size_t)g->kv_elems_r * attnd_dtype_size(p->kv_dtype);
    const uint64_t S = (uint64_t)p->q_tokens;
    const char *kp = p->kv;
    attnd_engine_stage *stage = NULL;
    attnd_status st = attnd_engine_stage_open(g->engine, &stage, err);

    for (uint32_t i = 0; st == ATTND_OK && i < p->n_seqs; i++) {
        uint64_t lo = attnd__gplace_count(g, g->me, p->glen[i]);
        uint64_t hi = attnd__gplace_count(g, g->me, p->glen[i] + S);
        if (hi > lo && p->kv_whole)
            st = stage_view(g, p, stage, i, lo, hi, err);
        else if (hi > lo)
            st = attnd_engine_stage_append(stage, &p->ids[i], p->layer, lo, hi - lo,
                                           p->kv_dtype, kp, err);
        kp += (hi - lo) * es;
        /* the group's length too, for a rank that recovers from its log */
        if (st == ATTND_OK)
            st = attnd_engine_stage_note(stage, &p->ids[i], p->layer, p->glen[i] + S, err);
    }
    if (st == ATTND_OK)
        st = attnd_engine_stage_commit(stage, NULL, NULL, err);
    attnd_engine_stage_close(stage);
    return st;
}

attnd_status attnd__grank_attend(attnd_group *g, const attnd__gpart *p, attnd_engine_ws *ws,
                                 const float **out_p, const float **lse_p, attnd_error *err)
{
    const uint32_t n = p->n_seqs, S = (uint32_t)p->q_tokens;
    const int with_kv = p->kv_dtype != ATTND_DTYPE_INVALID;
    attnd__gbuf *vis = NULL;
    attnd_status st;

    st = attnd__gtable_check(&g->table, p->ids, n, p->layer, p->glen, "positions", err);
    if (st == ATTND_OK && with_kv)
        st = attnd__gtable_check_unstaged(&g->table, p->ids, n, p->layer, err);
    if (st)
        return st;
    attnd_attend_req r = {
        .layer = p->layer,
        .n_seqs = n,
        .ids = p->ids,
        .q_tokens = p->q_tokens,
        .q_dtype = p->q_dtype,
        .q = p->q,
        .want_lse = 1,
        .q_form = p->d_nope > 0 ? ATTND_Q_HEADS : ATTND_Q_ABSORBED,
        .d_nope = p->d_nope,
        .d_vo = p->d_vo,
        .given_groups = p->given_groups,
        .given_indptr = p->given_indptr,
        .given_idx = p->given_idx,
        .want_pages = p->want_pages,
        /* sequence: the lists are the rank's exact part (group_given.c) */
        .given_only = p->given_groups && g->cfg.mode == ATTND_GROUP_SEQUENCE,
    };
    if (g->cfg.mode == ATTND_GROUP_SEQUENCE) {
        if (with_kv && (st = append_shares(g, p, err)))
            return st;
        if (S > 1) {
            if (!(vis = attnd__gbuf_get(g, sizeof(uint64_t) * n * S)))
                return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                       "q: no memory for the visible lengths");
            uint64_t *v = (uint64_t *)vis->data;
            for (uint32_t i = 0; i < n; i++) {
                uint64_t after = p->glen[i] + (with_kv ? S : 0);
                for (uint32_t s = 0; s < S; s++) {
                    uint64_t hide = S - 1 - s;
                    v[i * S + s] = attnd__gplace_count(g, g->me, after >= hide ? after - hide : 0);
                }
            }
            r.visible = v;
        }
    } else if (with_kv) {
        r.new_kv_dtype = p->kv_dtype;
        r.new_kv = p->kv;
        r.positions = p->glen;
    }
    st = attnd_engine_attend(g->engine, &r, ws, out_p, lse_p, err);
    attnd__gbuf_put(g, vis);
    if (st == ATTND_OK && with_kv)
        attnd__gtable_advance(&g->table, p->ids, n, p->layer, p->glen, S);
    return st;
}
