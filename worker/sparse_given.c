/* Checking an Attend's given indices (given-pages / given-tokens layers)
 * against the batch, before anything is appended: the shapes of the lists,
 * each list against the policy of the heads it serves and the layer's
 * length after the append. One check for two views of a batch: a lone
 * engine's (its sessions' policies and lengths, attnd__sparse_check) and a
 * worker group leader's (the group's policy kinds and global lengths,
 * worker/group_given.c), so that a group refuses with the lone worker's
 * messages, and before any rank has applied anything. */
#include "sparse.h"

/* Check a given list: strictly ascending, below `bound`. */
static attnd_status check_given(const uint64_t *v, uint32_t n, uint32_t at, uint64_t bound,
                                const char *unit, uint32_t i, attnd_error *err)
{
    for (uint32_t j = 0; j < n; j++) {
        if (v[j] >= bound)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "given_idx[%u]: %s %llu of session_ids[%u], whose layer has "
                                   "%llu", at + j, unit, (unsigned long long)v[j], i,
                                   (unsigned long long)bound);
        if (j && v[j] <= v[j - 1])
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "given_idx[%u]: %llu after %llu; indices must be strictly "
                                   "ascending", at + j, (unsigned long long)v[j],
                                   (unsigned long long)v[j - 1]);
    }
    return ATTND_OK;
}

attnd_status attnd__sparse_check_given(const attnd_attend_req *req, const attnd__given_view *v,
                                       attnd_error *err)
{
    const uint64_t extra = req->new_kv ? (uint64_t)req->q_tokens : 0; /* appended first */
    const uint32_t H = v->n_heads, gg = req->given_groups;
    const uint64_t ps = (uint64_t)v->page_size;
    for (uint32_t i = 0; i < req->n_seqs && !gg; i++)
        for (uint32_t h = 0; h < H; h++) {
            attnd_policy_kind k = v->kind(v->ctx, i, h);
            if (k == ATTND_POLICY_GIVEN_PAGES || k == ATTND_POLICY_GIVEN_TOKENS)
                return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                       "given_idx: layer %u of session_ids[%u] has policy %s "
                                       "(KV head %u), but the request gives no indices",
                                       req->layer, i, attnd_policy_kind_name(k), h);
        }
    if (!gg)
        return ATTND_OK;
    if (gg != 1 && gg != H)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "given_groups: %u, expected 1 or the model's %u KV heads", gg, H);
    if (!req->given_indptr || req->given_indptr[0] != 0 || (!req->given_idx &&
                                                            req->given_indptr[req->n_seqs * gg]))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "given_indptr: %u sessions x %u groups need %u + 1 offsets from 0",
                               req->n_seqs, gg, req->n_seqs * gg);
    for (uint32_t k = 0; k < req->n_seqs * gg; k++)
        if (req->given_indptr[k + 1] < req->given_indptr[k])
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "given_indptr[%u]: %u after %u, offsets must not decrease",
                                   k + 1, req->given_indptr[k + 1], req->given_indptr[k]);
    if (req->given_only && req->q_tokens > 1 && !req->visible)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "given_only: a multi-token query needs a visible-length override");
    for (uint32_t i = 0; i < req->n_seqs; i++) {
        const uint64_t len = v->len(v->ctx, i) + extra;
        const uint64_t np = (len + ps - 1) / ps;
        for (uint32_t g = 0; g < gg; g++) {
            const uint64_t *gv;
            uint32_t n, at;
            attnd__sparse_given_list(req, i, (int32_t)g, &gv, &n, &at);
            /* the heads this list serves must be given-* (or it is empty) */
            for (uint32_t h = (gg > 1 ? g : 0); h < (gg > 1 ? g + 1 : H) && n; h++) {
                attnd_policy_kind k = v->kind(v->ctx, i, h);
                if (k != ATTND_POLICY_GIVEN_PAGES && k != ATTND_POLICY_GIVEN_TOKENS)
                    return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                           "given_idx[%u]: layer %u of session_ids[%u] has "
                                           "policy %s for KV head %u: it takes no indices",
                                           at, req->layer, i, attnd_policy_kind_name(k), h);
            }
            int tokens = v->kind(v->ctx, i, gg > 1 ? g : 0) == ATTND_POLICY_GIVEN_TOKENS;
            attnd_status st = check_given(gv, n, at, tokens ? len : np, tokens ? "token" : "page",
                                          i, err);
            if (st)
                return st;
        }
    }
    return ATTND_OK;
}

/* The engine's view of the batch for the check: its sessions' policies
 * and lengths. */
typedef struct engine_given_ctx {
    const attnd_engine_ws *ws;
    int32_t layer;
} engine_given_ctx;

static attnd_policy_kind engine_kind(const void *ctx, uint32_t i, uint32_t h)
{
    const engine_given_ctx *c = ctx;
    return attnd__sparse_policy_of(c->ws->sessions[i], c->layer, (int32_t)h).kind;
}

static uint64_t engine_len(const void *ctx, uint32_t i)
{
    const engine_given_ctx *c = ctx;
    return ((const attnd__session *)c->ws->sessions[i])->len[c->layer];
}

attnd_status attnd__sparse_check(const attnd_engine *e, const attnd_attend_req *req,
                                 attnd_engine_ws *ws, attnd_error *err)
{
    engine_given_ctx c = {ws, (int32_t)req->layer};
    attnd__given_view v = {
        .n_heads = (uint32_t)e->layout.n_kv_heads,
        .page_size = e->layout.page_size,
        .kind = engine_kind,
        .len = engine_len,
        .ctx = &c,
    };
    return attnd__sparse_check_given(req, &v, err);
}
