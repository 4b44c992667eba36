/* One rank's part of a group request, run the same way by the leader for
 * itself (on views of the client's request: attnd__gpart.kv_whole) and by
 * a peer's executor for a request off the wire.
 *
 * ATTEND data layout (offsets 64-byte aligned, attnd__gpart_layout_of):
 *   ids  [n][16]            the sessions
 *   glen [n] uint64         their global lengths before this request
 *   q    [n][S][hq_r][d_k_r] of the part's query dtype
 *   kv   (with new KV) sequence mode: the entries this rank holds of each
 *        session's S new ones, in (session, token) order; head and latent:
 *        [n][S][kv_elems_r]; of the part's KV dtype
 * Reply data: out [n][S][hq_r][d_v_r] (up-projected: [..][d_vo]) then lse
 * [n][S][hq_r], float32.
 *
 * Sequence mode appends each session's share separately (a session may get
 * none), then attends with a visible-length override when S > 1: query
 * token s sees the global prefix [0, L' - (S-1-s)), L' the length after the
 * append, which on rank r is its first count_r(L' - (S-1-s)) tokens. Head
 * and latent modes hold every token and append with the engine's own
 * all-or-nothing Attend. The global lengths advance only on success; a
 * sequence-mode batch that fails midway may leave some sessions' tokens
 * appended on this rank (the client sees the error and must not go on with
 * those sessions).
 */
#include <string.h>

#include "attnd_assert.h"
#include "group_int.h"

static size_t align64(size_t x)
{
    return (x + 63) & ~(size_t)63;
}

void attnd__gpart_layout_of(const attnd_group *g, uint32_t n, int32_t S, attnd_dtype qt,
                            attnd_dtype kt, uint64_t kv_entries, attnd__gpart_layout *l)
{
    l->ids = 0;
    l->glen = align64((size_t)n * ATTND_SESSION_ID_BYTES);
    l->q = align64(l->glen + (size_t)n * sizeof(uint64_t));
    l->q_bytes = (size_t)n * (size_t)S * (size_t)g->hq_r * (size_t)g->d_k_r *
                 attnd_dtype_size(qt);
    l->kv = align64(l->q + l->q_bytes);
    l->kv_bytes = kt == ATTND_DTYPE_INVALID
                      ? 0
                      : (size_t)kv_entries * (size_t)g->kv_elems_r * attnd_dtype_size(kt);
    l->total = l->kv + l->kv_bytes;
}

size_t attnd__gpart_reply_bytes(const attnd_group *g, uint32_t n, int32_t S, int32_t width)
{
    size_t rows = (size_t)n * (size_t)S * (size_t)g->hq_r;
    return rows * ((size_t)width + 1) * sizeof(float);
}

/* Sequence mode, the leader's view (kv_whole): this rank's k new entries
 * of session i. They are one run of the request's entries in the common
 * case (S new tokens cross one page run of this rank), used in place;
 * else they are gathered into *tmp_p (taken on first use, NULL when out of
 * memory). */
static const void *whole_share(attnd_group *g, const attnd__gpart *p, uint32_t i, uint64_t k,
                               attnd__gbuf **tmp_p)
{
    const uint64_t S = (uint64_t)p->q_tokens;
    const size_t es = (size_t)g->kv_elems_r * attnd_dtype_size(p->kv_dtype);
    const char *src = (const char *)p->kv + (size_t)i * S * es;
    uint64_t off = 0, run = attnd__gplace_first_run(g, g->me, p->glen[i], S, &off);

    ATTND_ASSERT(run > 0 && run <= k);
    if (run == k)
        return src + off * es;
    if (!*tmp_p && !(*tmp_p = attnd__gbuf_get(g, S * es)))
        return NULL;
    uint64_t got = attnd__gplace_gather_seq(g, g->me, p->glen[i], S, es, src, (*tmp_p)->data);
    ATTND_ASSERT(got == k);
    return (*tmp_p)->data;
}

attnd_status attnd__grank_attend(attnd_group *g, const attnd__gpart *p, attnd_engine_ws *ws,
                                 const float **out_p, const float **lse_p, attnd_error *err)
{
    const uint32_t n = p->n_seqs, S = (uint32_t)p->q_tokens;
    const int with_kv = p->kv_dtype != ATTND_DTYPE_INVALID;
    attnd__gbuf *vis = NULL, *tmp = NULL;
    attnd_status st;

    st = attnd__gtable_check(&g->table, p->ids, n, p->layer, p->glen, "positions", err);
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
    };
    if (g->cfg.mode == ATTND_GROUP_SEQUENCE) {
        const size_t es = (size_t)g->kv_elems_r * attnd_dtype_size(p->kv_dtype);
        const char *kp = p->kv;
        for (uint32_t i = 0; with_kv && i < n; i++) {
            uint64_t lo = attnd__gplace_count(g, g->me, p->glen[i]);
            uint64_t hi = attnd__gplace_count(g, g->me, p->glen[i] + S);
            if (hi == lo)
                continue;
            const void *src = p->kv_whole ? whole_share(g, p, i, hi - lo, &tmp) : kp;
            st = src ? attnd_engine_append(g->engine, &p->ids[i], p->layer, lo, hi - lo,
                                           p->kv_dtype, src, err)
                     : attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                       "new_kv: out of memory");
            if (st) {
                attnd__gbuf_put(g, tmp);
                return st;
            }
            kp += (hi - lo) * es;
        }
        attnd__gbuf_put(g, tmp);
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

attnd_status attnd__grank_check_start(attnd_group *g, const attnd_session_id *id,
                                      uint32_t layer, uint64_t start, attnd_error *err)
{
    attnd_status st = attnd__gtable_check(&g->table, id, 1, layer, &start, "start", err);
    if (st == ATTND_ERR_FAILED_PRECONDITION) {
        uint64_t have = 0;
        attnd__gtable_lens(&g->table, id, 1, layer, &have, NULL);
        return attnd_error_set(err, st,
                               "start: layer %u holds %llu tokens; an append must start "
                               "there, got %llu", layer, (unsigned long long)have,
                               (unsigned long long)start);
    }
    if (st == ATTND_ERR_NOT_FOUND)
        return attnd_error_set(err, st, "session_id: no such session");
    return st;
}

attnd_status attnd__grank_append(attnd_group *g, const attnd_session_id *id, uint32_t layer,
                                 uint64_t start, uint64_t n_global, attnd_dtype dt,
                                 const void *kv, attnd_error *err)
{
    attnd_status st = attnd__grank_check_start(g, id, layer, start, err);
    if (st)
        return st;
    if (g->cfg.mode == ATTND_GROUP_SEQUENCE) {
        uint64_t lo = attnd__gplace_count(g, g->me, start);
        uint64_t k = attnd__gplace_count(g, g->me, start + n_global) - lo;
        if (k)
            st = attnd_engine_append(g->engine, id, layer, lo, k, dt, kv, err);
    } else {
        st = attnd_engine_append(g->engine, id, layer, start, n_global, dt, kv, err);
    }
    if (st == ATTND_OK)
        attnd__gtable_advance(&g->table, id, 1, layer, &start, n_global);
    return st;
}
