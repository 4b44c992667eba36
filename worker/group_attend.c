/* The leader of a group Attend: the rank the client called, in four steps.
 *
 *   plan       what every rank receives and answers (group_plan.c), with
 *              the caller's given lists checked against every shard and
 *              split among the ranks (group_given.c);
 *   scatter    encode and send the peers' parts; the leader's own part as
 *              views of the request (group_scatter.c);
 *   run-local  the leader's part on its own engine, through the same
 *              attnd__grank_attend a peer runs for a message (appends,
 *              visible lengths, global lengths; with the narrow wire the
 *              engine's absorption and up-projection); meanwhile the peers
 *              compute theirs;
 *   combine    after waiting for every peer (even when the local part
 *              failed: with new KV some peers may have applied theirs, and
 *              then the sessions are marked diverged), the ranks' results
 *              straight into the caller's workspace (group_combine.c);
 *              with return_pages, what the ranks attended merged into
 *              the session's global numbering (group_given.c).
 *
 * The leader's engine writes its result into a workspace of its own (the
 * combine reads it while writing the caller's): a free list of engine
 * workspaces, one per concurrent leader after warm-up, so that steady
 * decode allocates nothing (the buffers come from the group's pools too).
 * One case needs none: in sequence mode rank 0's result is the first the
 * merge takes, so rank 0 leading runs its share in the caller's workspace
 * and the combine merges the others into it in place (plain outputs on a
 * host engine: a GPU engine leaves its result in pinned memory).
 *
 * Timing: *kernel_ns_p is the run-local step alone (the leader's engine,
 * projections included); everything else of the call -- checks, plan,
 * scatter, waiting for the peers beyond the local step, combine -- is the
 * group's fan-out, so that kernel + fan-out is the call's wall time,
 * counted once (service/attend_exec.c).
 */
#include <stdlib.h>
#include <string.h>

#include "attnd_assert.h"
#include "attnd_clock.h"
#include "group_int.h"

/* ---- the leaders' engine workspaces --------------------------------------------- */

typedef struct attnd__glws {
    struct attnd__glws *next;
    attnd_engine_ws ws;
} attnd__glws;

/* A workspace from the free list, or a new one (NULL: out of memory). */
static attnd__glws *lws_get(attnd_group *g)
{
    pthread_mutex_lock(&g->buf_mu);
    attnd__glws *w = g->free_lws;
    if (w)
        g->free_lws = w->next;
    pthread_mutex_unlock(&g->buf_mu);
    if (!w && (w = calloc(1, sizeof *w)))
        attnd_engine_ws_init(&w->ws);
    return w;
}

static void lws_put(attnd_group *g, attnd__glws *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&g->buf_mu);
    w->next = g->free_lws;
    g->free_lws = w;
    pthread_mutex_unlock(&g->buf_mu);
}

void attnd__glws_cleanup(attnd_group *g)
{
    attnd__glws *w = g->free_lws, *next;
    for (; w; w = next) {
        next = w->next;
        attnd_engine_ws_cleanup(&w->ws);
        free(w);
    }
    g->free_lws = NULL;
}

/* ---- the call ------------------------------------------------------------------- */

/* The leader's own checks, before anything is planned or sent: every
 * session known (their global lengths into glen), new entries where the
 * sessions end and no AppendKV stream staging their layer here, every peer
 * connected, the projections possible (the leader's own weights; a peer
 * without them fails its part the same way). */
static attnd_status check_call(attnd_group *g, const attnd_attend_req *req, uint64_t *glen,
                               attnd_error *err)
{
    const int heads = req->q_form == ATTND_Q_HEADS;
    const uint32_t n = req->n_seqs;
    attnd_status st = attnd__gtable_lens(&g->table, req->ids, n, req->layer, glen, err);
    if (st)
        return st;
    for (uint32_t i = 0; req->new_kv && req->positions && i < n; i++)
        if (req->positions[i] != glen[i])
            return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                                   "positions[%u]: layer %u of that session holds %llu tokens; "
                                   "the new entry must land there, got %llu", i, req->layer,
                                   (unsigned long long)glen[i],
                                   (unsigned long long)req->positions[i]);
    if (req->new_kv && (st = attnd__gtable_check_unstaged(&g->table, req->ids, n, req->layer,
                                                          err)))
        return st;
    if ((st = attnd__glead_peers_up(g, err)))
        return st;
    if (!heads && req->d_vo <= 0)
        return ATTND_OK;
    const char *field = heads ? "q_form" : "up_project";
    if (g->cfg.model.kind != ATTND_ATTN_MLA || g->cfg.mode == ATTND_GROUP_HEAD)
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                               "%s: the narrow wire's projections serve MLA models in sequence "
                               "or latent mode", field);
    int32_t dn = 0, dv = 0;
    attnd_group_weights_dims(g, req->layer, &dn, &dv);
    if ((heads && dn != req->d_nope) || (req->d_vo > 0 && dv != req->d_vo))
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                               "%s: layer %u needs %s of width %d loaded (LoadWeights); this "
                               "rank holds width %d", field, req->layer,
                               heads && dn != req->d_nope ? "W_UK" : "W_UV",
                               heads && dn != req->d_nope ? req->d_nope : req->d_vo,
                               heads && dn != req->d_nope ? dn : dv);
    return ATTND_OK;
}

attnd_status attnd_group_attend(attnd_group *g, const attnd_attend_req *req,
                                attnd_engine_ws *ws, int64_t timeout_ms, const float **out_p,
                                const float **lse_p, uint64_t *kernel_ns_p, attnd_error *err)
{
    const uint32_t n = req->n_seqs;
    attnd__gbuf *lens = NULL, *scratch = NULL;
    attnd__glws *lws = NULL;
    attnd__gcall *c = NULL;
    attnd__gplan plan;
    attnd__gpart local;
    attnd__ggiven gv;
    const float *out[ATTND_GROUP_MAX_RANKS], *lse[ATTND_GROUP_MAX_RANKS];
    attnd_status st;

    if (n == 0 || !req->ids || req->q_tokens < 1 ||
        req->q_tokens > ATTND_ENGINE_MAX_Q_TOKENS || !req->q)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "q: missing, or q_tokens %d not in [1, %d]", req->q_tokens,
                               ATTND_ENGINE_MAX_Q_TOKENS);
    const size_t stride = attnd__gkinds_stride(g);
    if (!(lens = attnd__gbuf_get(g, (sizeof(uint64_t) + stride) * n)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "session_ids: out of memory");
    uint64_t *glen = (uint64_t *)lens->data;
    uint8_t *kinds = lens->data + sizeof(uint64_t) * n;
    if ((st = check_call(g, req, glen, err)))
        goto out;
    /* sparse: the given lists against every shard, split among the ranks */
    int sparse = attnd__gtable_kinds(&g->table, req->ids, n, req->layer, stride, kinds);
    memset(&gv, 0, sizeof gv);
    if ((sparse || req->given_groups || req->want_pages) &&
        (st = attnd__ggiven_plan(g, req, glen, kinds, &gv, err)))
        goto out;

    /* plan; everything the call needs is taken before the first send */
    attnd__gplan_make(g, req, glen, &gv, &plan);
    /* rank 0 of a sequence group merges the others into its own result in
     * place (a projected one lies in the workspace's proj and is copied
     * into its out by the combine) */
    const int in_place = g->cfg.mode == ATTND_GROUP_SEQUENCE && g->me == 0;
    if ((!in_place && !(lws = lws_get(g))) || !(c = attnd__gcall_new(g))) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
        goto out;
    }
    /* scatter */
    if ((st = attnd__gscatter(g, c, req, glen, &plan, &gv, &local, &scratch, err)))
        goto out; /* nothing was sent */

    /* run-local */
    uint64_t t0 = attnd_clock_ns();
    attnd_engine_ws *local_ws = in_place ? ws : &lws->ws;
    st = attnd__grank_attend(g, &local, local_ws, &out[g->me], &lse[g->me], err);
    const int applied = st == ATTND_OK; /* its new KV went in */
    uint64_t kernel_ns = attnd_clock_ns() - t0;

    /* wait for the peers even when our part failed: with new KV, some of
     * them may have appended, and then the session must be marked */
    attnd__gcall_wait(g, c, attnd__glead_deadline(g, timeout_ms));
    if (st == ATTND_OK)
        st = attnd__glead_collect(g, c, err);
    if (st) {
        if (req->new_kv && attnd__glead_diverged(g, c, applied, 0))
            attnd__glead_break(g, req->ids, n, timeout_ms);
        goto out;
    }

    /* combine */
    const size_t out_floats = plan.rows * (size_t)g->hq_r * plan.width;
    const size_t pages_at = (plan.reply + 7) & ~(size_t)7;
    attnd__gchosen chosen[ATTND_GROUP_MAX_RANKS];
    chosen[g->me] = (attnd__gchosen){local_ws->chosen_groups, local_ws->chosen_tokens,
                                     local_ws->chosen_indptr, local_ws->chosen};
    for (int32_t r = 0; r < g->N; r++) {
        if (r == g->me)
            continue;
        const attnd__gslot *s = &c->slot[r];
        ATTND_ASSERT(s->expect && s->done && s->st == ATTND_OK &&
                     (s->buf->len == plan.reply || (gv.want_pages && s->buf->len > pages_at)));
        out[r] = (const float *)s->buf->data;
        lse[r] = out[r] + out_floats;
        if (gv.want_pages && (st = attnd__gchosen_read(s->buf->data + pages_at,
                                                       s->buf->len - pages_at, n, &chosen[r],
                                                       err)))
            goto out;
    }
    if (gv.want_pages && !chosen[g->me].groups) {
        st = attnd_error_set(err, ATTND_ERR_INTERNAL, "return_pages: no pages from this rank");
        goto out;
    }
    /* the ranks' reports are read before the combine's workspace is
     * written (rank 0 leading: its report lies in ws) */
    if (gv.want_pages && (st = attnd__gchosen_merge(g, req, glen, &gv, chosen, ws, err)))
        goto out;
    if ((st = attnd__gcombine(g, &plan, out, lse, ws, err)))
        goto out;
    *out_p = ws->out;
    *lse_p = req->want_lse ? ws->lse : NULL;
    if (kernel_ns_p)
        *kernel_ns_p = kernel_ns;

out:
    if (c) /* answers still on their way are dropped when they come */
        attnd__gcall_release(g, c);
    attnd__gbuf_put(g, scratch);
    lws_put(g, lws);
    attnd__gbuf_put(g, lens);
    return st;
}
