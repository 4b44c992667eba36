/* The plan of one group Attend: what every rank receives and answers.
 *
 * The leader computes it from the request and the sessions' global lengths
 * alone (no I/O, nothing allocated), before anything is encoded: for every
 * rank the new KV entries it gets (sequence mode: the tokens of
 * [glen_i, glen_i + S) that lie on its pages; head and latent modes: all
 * n * S entries, sliced), the dtypes its parts travel in, the byte layout
 * of its ATTEND data and the size of its result. Scatter (group_scatter.c)
 * encodes from it, the call waits for exactly p->reply bytes per peer, and
 * combine (group_combine.c) reads the results by it. The visible lengths
 * of a multi-token query (S > 1, sequence mode) are not shipped: every
 * rank derives its own from the same global lengths (group_rank.c). Given
 * lists add a section per rank (group_given.c) and return_pages a longest
 * reply.
 *
 * Unit counts are invariants, checked in every build (ATTND_ASSERT): each
 * new token goes to exactly one rank in sequence mode and every token's
 * placement agrees with the per-rank counts; each query head (head mode)
 * and each latent dim (latent mode) belongs to exactly one rank.
 */
#include "attnd_assert.h"
#include "group_int.h"

/* The shard shapes split the model's units exactly (group.c made them). */
static void check_units(const attnd_group *g)
{
    const attnd_model_spec *m = &g->cfg.model;
    switch (g->cfg.mode) {
    case ATTND_GROUP_SEQUENCE:
        ATTND_ASSERT(g->hq_r == g->hq && g->d_k_r == g->d_k && g->d_v_r == g->d_v &&
                     g->kv_elems_r == g->kv_elems);
        break;
    case ATTND_GROUP_HEAD:
        ATTND_ASSERT(g->hq_r * g->N == g->hq && g->d_k_r == g->d_k && g->d_v_r == g->d_v);
        ATTND_ASSERT(g->kv_elems_r * g->N == g->kv_elems);
        break;
    case ATTND_GROUP_LATENT: {
        const int32_t dcr = m->d_latent / g->N;
        ATTND_ASSERT(dcr * g->N == m->d_latent && g->hq_r == g->hq && g->d_v_r == dcr);
        ATTND_ASSERT(g->d_k_r == dcr + (g->cfg.rope_split ? m->d_rope / g->N : m->d_rope));
        break;
    }
    }
}

void attnd__gplan_make(const attnd_group *g, const attnd_attend_req *req,
                       const uint64_t *glen, const attnd__ggiven *gv, attnd__gplan *p)
{
    const int32_t d_vo = req->d_vo > 0 ? req->d_vo : 0;
    const uint32_t n = req->n_seqs;
    const uint64_t S = (uint64_t)req->q_tokens;
    const int with_kv = req->new_kv != NULL;

    check_units(g);
    p->n_seqs = n;
    p->S = req->q_tokens;
    p->rows = (size_t)n * (size_t)S;
    p->d_nope = req->q_form == ATTND_Q_HEADS ? req->d_nope : 0;
    p->d_vo = d_vo;
    p->qt = req->q_dtype;
    p->kt = with_kv ? req->new_kv_dtype : ATTND_DTYPE_INVALID;
    p->pq = attnd__gpart_q_dtype(g, p->qt, p->d_nope);
    p->pk = with_kv ? attnd__gpart_kv_dtype(g, p->kt) : ATTND_DTYPE_INVALID;
    p->width = d_vo ? (size_t)d_vo : (size_t)g->d_v_r;
    p->reply = attnd__gpart_reply_bytes(g, n, req->q_tokens, (int32_t)p->width);
    for (int32_t r = 0; r < g->N; r++)
        p->entries[r] = 0;
    if (with_kv && g->cfg.mode == ATTND_GROUP_SEQUENCE) {
        for (uint32_t i = 0; i < n; i++) {
            uint64_t held = 0, got = 0;
            for (int32_t r = 0; r < g->N; r++) {
                uint64_t lo = attnd__gplace_count(g, r, glen[i]);
                uint64_t hi = attnd__gplace_count(g, r, glen[i] + S);
                ATTND_ASSERT(lo <= hi); /* placement is monotonic */
                held += lo;
                got += hi - lo;
                p->entries[r] += hi - lo;
            }
            /* every stored token and every new one on exactly one rank */
            ATTND_ASSERT(held == glen[i] && got == S);
        }
    } else if (with_kv) {
        for (int32_t r = 0; r < g->N; r++)
            p->entries[r] = (uint64_t)p->rows;
    }
    uint64_t total = 0;
    for (int32_t r = 0; r < g->N; r++) {
        attnd__gpart_layout_of(g, n, req->q_tokens, p->pq, p->d_nope, p->pk, p->entries[r],
                               attnd__ggiven_bytes(gv, n, r), &p->part[r]);
        p->reply_max[r] = gv && gv->want_pages ? ((p->reply + 7) & ~(size_t)7) +
                                                     attnd__gchosen_max(g, req, glen, r)
                                               : p->reply;
        total += p->entries[r];
    }
    ATTND_ASSERT(!with_kv || total == (g->cfg.mode == ATTND_GROUP_SEQUENCE
                                           ? (uint64_t)p->rows
                                           : (uint64_t)p->rows * (uint64_t)g->N));
}
