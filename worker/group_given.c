/* Given indices and return_pages on a worker group (issue 13): the
 * caller's page or token lists carried to the ranks that hold them, and
 * what the ranks attended merged back into one answer (group_int.h has the
 * section layouts).
 *
 * Check. The leader checks the request's lists against the group before
 * anything is planned or sent, with the engine's own check
 * (attnd__sparse_check_given) over the group's view: the policy kinds of
 * every layer and KV head of the whole model (kept in the group table at
 * CreateSession, group_sparse.c) and the sessions' global lengths. A rank
 * whose shard would refuse a list so never sees one after another rank
 * applied its new KV; each rank's engine checks its own lists again.
 *
 * Split, per mode:
 *   sequence  rank r attends exactly its part of each list: the given
 *             pages p with p mod N = r as its local page p / N, the given
 *             tokens t it holds as their local positions, and likewise the
 *             pages / tokens of the newest S tokens of the layer that lie
 *             on it (the lone worker's rule, applied globally: each rank
 *             adding its own newest page would attend pages the caller did
 *             not name). The engine takes such lists as they are
 *             (attnd_attend_req.given_only), so the ranks' partial states
 *             cover exactly the caller's tokens and the leader's LSE merge
 *             is exact. Where the heads of a layer mix page and token
 *             lists, every rank gets one list per KV head.
 *   head      rank r the lists of its KV heads (one list for all heads: as
 *             it is); the engine adds the newest tokens as a lone worker
 *             does, every rank holding every token.
 *   latent    every rank every list.
 *
 * Merge (return_pages). Each rank reports its engine's lists (the chosen
 * section after its result); the leader maps them to the session's global
 * numbering (sequence: local page j of rank r is global page j N + r) and
 * merges them per (session, group) in ascending order without duplicates:
 * sequence mode the ranks' disjoint parts, head mode the list of the rank
 * holding the group's KV head, latent mode the union (ranks that select
 * with their latent slice may choose different pages: the union is every
 * page some rank read). The shape is the lone worker's: one list per
 * session, or one per KV head where the layer's policy is per head or the
 * request gave lists per KV head; tokens where some head is given-tokens
 * (a rank that reported pages then has its pages spelled out as tokens).
 * The merged lists live in the caller's workspace (attnd__sparse_chosen_
 * room), so steady decode allocates nothing here after warm-up.
 */
#include <string.h>

#include "attnd_assert.h"
#include "group_int.h"
#include "sparse.h"

#define SEC_HDR 16

static size_t align8(size_t x)
{
    return (x + 7) & ~(size_t)7;
}

static int is_given(uint8_t k)
{
    return k == ATTND_POLICY_GIVEN_PAGES || k == ATTND_POLICY_GIVEN_TOKENS;
}

/* ---- the check ---------------------------------------------------------------- */

typedef struct gctx {
    const uint8_t *kinds;
    size_t stride;
    const uint64_t *glen;
} gctx;

static attnd_policy_kind kind_of(const void *ctx, uint32_t i, uint32_t h)
{
    const gctx *c = ctx;
    return (attnd_policy_kind)c->kinds[i * c->stride + h];
}

static uint64_t len_of(const void *ctx, uint32_t i)
{
    return ((const gctx *)ctx)->glen[i];
}

/* Sequence mode: one kind for every head of each session's layer? */
static int one_kind(const attnd__ggiven *gv, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t h = 1; h < gv->H; h++)
            if (gv->kinds[i * gv->stride + h] != gv->kinds[i * gv->stride])
                return 0;
    return 1;
}

/* Rank r's list (session i, its group gr): written to dst unless NULL;
 * its length. */
static uint64_t rank_list(const attnd_group *g, const attnd_attend_req *req, const uint64_t *glen,
                          const attnd__ggiven *gv, int32_t r, uint32_t i, uint32_t gr,
                          uint64_t *dst)
{
    const uint32_t gg = req->given_groups, ggr = gv->groups[r];
    const uint32_t src = gg == 1 ? 0 : g->cfg.mode == ATTND_GROUP_HEAD ? (uint32_t)r * ggr + gr : gr;
    const uint32_t k0 = req->given_indptr[i * gg + src], k1 = req->given_indptr[i * gg + src + 1];
    const uint64_t *v = req->given_idx + k0;
    const uint32_t nv = k1 - k0;
    if (g->cfg.mode != ATTND_GROUP_SEQUENCE) {
        if (dst && nv)
            memcpy(dst, v, sizeof *v * nv);
        return nv;
    }
    const uint8_t k = gv->kinds[i * gv->stride + (ggr == 1 ? 0 : gr)];
    if (!is_given(k))
        return 0; /* the check made it empty: the engine ignores it */
    const uint64_t P = (uint64_t)g->cfg.page_size, N = (uint64_t)g->N, S = (uint64_t)req->q_tokens;
    const uint64_t L = glen[i] + (req->new_kv ? S : 0), newest = L < S ? L : S;
    const uint64_t R = (uint64_t)r;
    uint64_t c = 0;
    if (k == ATTND_POLICY_GIVEN_PAGES) {
        const uint64_t np = (L + P - 1) / P, tail0 = newest ? (L - newest) / P : np;
        for (uint32_t j = 0; j < nv && v[j] < tail0; j++)
            if (v[j] % N == R) {
                if (dst)
                    dst[c] = v[j] / N;
                c++;
            }
        for (uint64_t p = tail0 + (R + N - tail0 % N) % N; p < np; p += N) {
            if (dst)
                dst[c] = p / N;
            c++;
        }
        return c;
    }
    const uint64_t cut = L - newest;
    for (uint32_t j = 0; j < nv && v[j] < cut; j++)
        if (attnd__gplace_owner(g, v[j]) == r) {
            if (dst)
                dst[c] = attnd__gplace_count(g, r, v[j]);
            c++;
        }
    for (uint64_t t = cut; t < L; t++)
        if (attnd__gplace_owner(g, t) == r) {
            if (dst)
                dst[c] = attnd__gplace_count(g, r, t);
            c++;
        }
    return c;
}

attnd_status attnd__ggiven_plan(const attnd_group *g, const attnd_attend_req *req,
                                const uint64_t *glen, const uint8_t *kinds, attnd__ggiven *gv,
                                attnd_error *err)
{
    const uint32_t n = req->n_seqs;
    memset(gv, 0, sizeof *gv);
    gv->stride = attnd__gkinds_stride(g);
    gv->H = (uint32_t)gv->stride - 1;
    gv->kinds = kinds;
    gv->want_pages = req->want_pages;
    gctx c = {kinds, gv->stride, glen};
    attnd__given_view v = {
        .n_heads = gv->H,
        .page_size = g->cfg.page_size,
        .kind = kind_of,
        .len = len_of,
        .ctx = &c,
    };
    attnd_status st = attnd__sparse_check_given(req, &v, err);
    if (st)
        return st;
    if (!req->given_groups)
        return ATTND_OK;
    gv->on = 1;
    for (int32_t r = 0; r < g->N; r++) {
        switch (g->cfg.mode) {
        case ATTND_GROUP_SEQUENCE:
            gv->groups[r] = gv->H > 1 && (req->given_groups > 1 || !one_kind(gv, n)) ? gv->H : 1;
            break;
        case ATTND_GROUP_HEAD:
            gv->groups[r] = req->given_groups > 1 ? (uint32_t)g->shard.n_kv_heads : 1;
            break;
        case ATTND_GROUP_LATENT:
            gv->groups[r] = req->given_groups;
            break;
        }
        uint64_t total = 0;
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t gr = 0; gr < gv->groups[r]; gr++)
                total += rank_list(g, req, glen, gv, r, i, gr, NULL);
        if (total > UINT32_MAX)
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "given_idx: %llu entries for rank %d",
                                   (unsigned long long)total, r);
        gv->n_idx[r] = total;
    }
    return ATTND_OK;
}

/* ---- the given section ---------------------------------------------------------- */

static size_t sec_bytes(size_t lists, uint64_t entries)
{
    return align8(SEC_HDR + 4 * (lists + 1)) + 8 * (size_t)entries;
}

size_t attnd__ggiven_bytes(const attnd__ggiven *gv, uint32_t n, int32_t r)
{
    if (!gv || !gv->on)
        return 0;
    return sec_bytes((size_t)n * gv->groups[r], gv->n_idx[r]);
}

void attnd__ggiven_write(const attnd_group *g, const attnd_attend_req *req, const uint64_t *glen,
                         const attnd__ggiven *gv, int32_t r, void *dst)
{
    const uint32_t n = req->n_seqs, ggr = gv->groups[r];
    const size_t lists = (size_t)n * ggr;
    uint8_t *p = dst;
    uint32_t hdr[2] = {ggr, 0};
    uint64_t entries = gv->n_idx[r];
    memcpy(p, hdr, sizeof hdr);
    memcpy(p + 8, &entries, sizeof entries);
    uint32_t *indptr = (uint32_t *)(p + SEC_HDR);
    uint64_t *idx = (uint64_t *)(p + align8(SEC_HDR + 4 * (lists + 1)));
    uint64_t at = 0;
    indptr[0] = 0;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t gr = 0; gr < ggr; gr++) {
            at += rank_list(g, req, glen, gv, r, i, gr, idx + at);
            indptr[i * ggr + gr + 1] = (uint32_t)at;
        }
    ATTND_ASSERT(at == entries); /* the plan counted what was written */
}

attnd_status attnd__ggiven_read(const void *sec, size_t len, uint32_t n, uint32_t *groups_p,
                                const uint32_t **indptr_p, const uint64_t **idx_p,
                                size_t *bytes_p, attnd_error *err)
{
    const uint8_t *p = sec;
    uint32_t hdr[2];
    uint64_t entries;
    if (len < SEC_HDR)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "group: given section truncated");
    memcpy(hdr, p, sizeof hdr);
    memcpy(&entries, p + 8, sizeof entries);
    const size_t lists = (size_t)n * hdr[0];
    if (hdr[0] == 0 || hdr[0] > 65536 || entries > len / 8 ||
        sec_bytes(lists, entries) != len)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "group: given section of %zu bytes does not match its header", len);
    const uint32_t *indptr = (const uint32_t *)(p + SEC_HDR);
    if (indptr[0] != 0 || indptr[lists] != entries)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "group: given section offsets do not match its entries");
    *groups_p = hdr[0];
    *indptr_p = indptr;
    *idx_p = (const uint64_t *)(p + align8(SEC_HDR + 4 * (lists + 1)));
    *bytes_p = len;
    return ATTND_OK;
}

/* ---- the chosen section --------------------------------------------------------- */

/* Most lists per session a rank's engine reports: its policy heads. */
static uint32_t rank_heads(const attnd_group *g)
{
    return g->cfg.model.kind == ATTND_ATTN_GQA ? (uint32_t)g->shard.n_kv_heads : 1;
}

size_t attnd__gchosen_max(const attnd_group *g, const attnd_attend_req *req,
                          const uint64_t *glen, int32_t r)
{
    const uint64_t extra = req->new_kv ? (uint64_t)req->q_tokens : 0;
    const uint32_t G = rank_heads(g);
    uint64_t tokens = 0; /* a token list is never longer than the layer */
    for (uint32_t i = 0; i < req->n_seqs; i++)
        tokens += g->cfg.mode == ATTND_GROUP_SEQUENCE
                      ? attnd__gplace_count(g, r, glen[i] + extra)
                      : glen[i] + extra;
    return sec_bytes((size_t)req->n_seqs * G, tokens * G);
}

size_t attnd__gchosen_bytes(const attnd_engine_ws *ws, uint32_t n)
{
    const size_t lists = (size_t)n * ws->chosen_groups;
    return sec_bytes(lists, ws->chosen_groups ? (uint64_t)ws->chosen_indptr[lists] : 0);
}

void attnd__gchosen_write(const attnd_engine_ws *ws, uint32_t n, void *dst)
{
    const size_t lists = (size_t)n * ws->chosen_groups;
    const uint64_t entries = ws->chosen_groups ? (uint64_t)ws->chosen_indptr[lists] : 0;
    uint8_t *p = dst;
    uint32_t hdr[2] = {ws->chosen_groups, ws->chosen_tokens ? 1u : 0u};
    memcpy(p, hdr, sizeof hdr);
    memcpy(p + 8, &entries, sizeof entries);
    if (!ws->chosen_groups) {
        memset(p + SEC_HDR, 0, 4);
        return;
    }
    memcpy(p + SEC_HDR, ws->chosen_indptr, 4 * (lists + 1));
    memcpy(p + align8(SEC_HDR + 4 * (lists + 1)), ws->chosen, 8 * (size_t)entries);
}

attnd_status attnd__gchosen_read(const void *sec, size_t len, uint32_t n, attnd__gchosen *out,
                                 attnd_error *err)
{
    const uint8_t *p = sec;
    uint32_t hdr[2];
    uint64_t entries;
    if (len < SEC_HDR)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "group: a rank's pages truncated");
    memcpy(hdr, p, sizeof hdr);
    memcpy(&entries, p + 8, sizeof entries);
    const size_t lists = (size_t)n * hdr[0];
    if (hdr[0] == 0 || hdr[0] > 65536 || entries > len / 8 || sec_bytes(lists, entries) != len)
        return attnd_error_set(err, ATTND_ERR_INTERNAL,
                               "group: a rank's pages (%zu bytes) do not match their header", len);
    const int32_t *indptr = (const int32_t *)(p + SEC_HDR);
    if (indptr[0] != 0 || (uint64_t)indptr[lists] != entries)
        return attnd_error_set(err, ATTND_ERR_INTERNAL,
                               "group: a rank's page offsets do not match its pages");
    for (size_t k = 0; k < lists; k++)
        if (indptr[k + 1] < indptr[k])
            return attnd_error_set(err, ATTND_ERR_INTERNAL,
                                   "group: a rank's page offsets decrease");
    out->groups = hdr[0];
    out->tokens = hdr[1] != 0;
    out->indptr = indptr;
    out->chosen = (const int64_t *)(p + align8(SEC_HDR + 4 * (lists + 1)));
    return ATTND_OK;
}

/* ---- the merge -------------------------------------------------------------------- */

/* One rank's list as a stream of global values (pages, or tokens). */
typedef struct cursor {
    const int64_t *e;
    int64_t n, j;
    int32_t r;
    int expand;        /* pages spelled out as tokens */
    uint64_t lo, hi;   /* expand: the current page's tokens [lo, hi) */
} cursor;

/* Rank r's local entry e (a page, or a token position) as a global one. */
static uint64_t to_global(const attnd_group *g, int32_t r, int tokens, uint64_t e)
{
    const uint64_t P = (uint64_t)g->cfg.page_size, N = (uint64_t)g->N;
    if (g->cfg.mode != ATTND_GROUP_SEQUENCE)
        return e;
    if (!tokens)
        return e * N + (uint64_t)r;
    return ((e / P) * N + (uint64_t)r) * P + e % P;
}

static void cursor_load(const attnd_group *g, cursor *c, uint64_t L)
{
    const uint64_t P = (uint64_t)g->cfg.page_size;
    if (!c->expand || c->j >= c->n)
        return;
    uint64_t gp = to_global(g, c->r, 0, (uint64_t)c->e[c->j]);
    c->lo = gp * P;
    c->hi = c->lo + P < L ? c->lo + P : L;
}

static uint64_t cursor_peek(const attnd_group *g, const cursor *c, int tokens)
{
    if (c->j >= c->n)
        return UINT64_MAX;
    return c->expand ? c->lo : to_global(g, c->r, tokens, (uint64_t)c->e[c->j]);
}

static void cursor_next(const attnd_group *g, cursor *c, uint64_t L)
{
    if (c->expand && ++c->lo < c->hi)
        return;
    c->j++;
    cursor_load(g, c, L);
}

/* The global shape of the reply: a lone worker's (sparse_attend.c,
 * batch_shape). */
static void global_shape(const attnd_attend_req *req, const attnd__ggiven *gv, uint32_t *G_p,
                         int *tokens_p)
{
    uint32_t G = req->given_groups > 1 ? gv->H : 1;
    int tokens = 0;
    for (uint32_t i = 0; i < req->n_seqs; i++) {
        const uint8_t *row = gv->kinds + i * gv->stride;
        int dense = 1;
        for (uint32_t h = 0; h < gv->H; h++)
            dense &= row[h] == ATTND_POLICY_FULL;
        if (dense)
            continue;
        if (!(row[gv->H] & ATTND__GKIND_UNIFORM) || ((row[gv->H] & ATTND__GKIND_TOPK) && gv->H > 1))
            G = gv->H;
        for (uint32_t h = 0; h < gv->H; h++)
            tokens |= row[h] == ATTND_POLICY_GIVEN_TOKENS;
    }
    *G_p = G;
    *tokens_p = tokens;
}

/* The cursors of global list (i, gl): the ranks' lists that serve it. */
static int sources(const attnd_group *g, const attnd__gchosen *src, uint32_t G, int tokens,
                   uint32_t i, uint32_t gl, uint64_t L, cursor *cur)
{
    const uint32_t Hr = rank_heads(g);
    int k = 0;
    for (int32_t r = 0; r < g->N; r++) {
        const attnd__gchosen *s = &src[r];
        uint32_t lg;
        if (g->cfg.mode == ATTND_GROUP_HEAD && G > 1) {
            if (gl / Hr != (uint32_t)r)
                continue;
            lg = s->groups == 1 ? 0 : gl % Hr;
        } else {
            lg = s->groups == 1 ? 0 : gl;
        }
        const size_t li = (size_t)i * s->groups + lg;
        cur[k] = (cursor){.e = s->chosen + s->indptr[li], .n = s->indptr[li + 1] - s->indptr[li],
                          .r = r, .expand = tokens && !s->tokens};
        cursor_load(g, &cur[k], L);
        k++;
    }
    return k;
}

attnd_status attnd__gchosen_merge(const attnd_group *g, const attnd_attend_req *req,
                                  const uint64_t *glen, const attnd__ggiven *gv,
                                  const attnd__gchosen *src, attnd_engine_ws *ws,
                                  attnd_error *err)
{
    const uint32_t n = req->n_seqs, Hr = rank_heads(g);
    const uint64_t extra = req->new_kv ? (uint64_t)req->q_tokens : 0;
    cursor cur[ATTND_GROUP_MAX_RANKS];
    uint32_t G;
    int tokens;
    global_shape(req, gv, &G, &tokens);
    for (int32_t r = 0; r < g->N; r++) { /* each report fits that shape */
        const attnd__gchosen *s = &src[r];
        int ok = s->groups == 1 || (G > 1 && s->groups == (g->cfg.mode == ATTND_GROUP_HEAD ? Hr : G));
        if (!ok || (s->tokens && !tokens))
            return attnd_error_set(err, ATTND_ERR_INTERNAL,
                                   "return_pages: rank %d reported %u %s lists per session; "
                                   "the group expected %u of %s", r, s->groups,
                                   s->tokens ? "token" : "page", G, tokens ? "tokens" : "pages");
    }
    /* room: every source's entries, pages spelled out where needed */
    uint64_t bound = 0;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t gl = 0; gl < G; gl++) {
            const uint64_t L = glen[i] + extra;
            int k = sources(g, src, G, tokens, i, gl, L, cur);
            for (int x = 0; x < k; x++)
                for (; cur[x].j < cur[x].n; cur[x].j++, cursor_load(g, &cur[x], L))
                    bound += cur[x].expand ? cur[x].hi - cur[x].lo : 1;
        }
    int32_t *indptr;
    int64_t *out;
    if (bound > INT32_MAX)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "return_pages: %llu entries attended",
                               (unsigned long long)bound);
    attnd_status st = attnd__sparse_chosen_room(ws, (size_t)n * G, (size_t)bound, &indptr, &out,
                                                err);
    if (st)
        return st;
    int64_t at = 0;
    indptr[0] = 0;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t gl = 0; gl < G; gl++) {
            const uint64_t L = glen[i] + extra;
            int k = sources(g, src, G, tokens, i, gl, L, cur);
            uint64_t prev = UINT64_MAX;
            for (;;) { /* the smallest value of any source, once */
                uint64_t m = UINT64_MAX;
                for (int x = 0; x < k; x++) {
                    uint64_t v = cursor_peek(g, &cur[x], tokens);
                    m = v < m ? v : m;
                }
                if (m == UINT64_MAX)
                    break;
                if (m != prev)
                    out[at++] = (int64_t)m;
                prev = m;
                for (int x = 0; x < k; x++)
                    if (cursor_peek(g, &cur[x], tokens) == m)
                        cursor_next(g, &cur[x], L);
            }
            indptr[(size_t)i * G + gl + 1] = (int32_t)at;
        }
    ATTND_ASSERT((uint64_t)at <= bound);
    ws->chosen_groups = G;
    ws->chosen_tokens = tokens;
    ws->chosen_indptr = indptr;
    ws->chosen = out;
    return ATTND_OK;
}
