/* An Attend's page lists under the sessions' sparse policies (sparse.h).
 *
 * The batch gets one list per (session, head group): one group when every
 * session's layer has one policy for all heads and none selects per KV
 * head, else one per KV head (GQA; the decode's list_groups). Each list is
 * built from its policy: full (the page table), streaming (sink pages and
 * window pages), topk-pages (a selection problem over the page table, run
 * for the whole batch by the selection kernel straight into the lists),
 * given-pages / given-tokens (the request's indices, checked, plus the
 * pages or tokens of the newest query tokens). Every page list ends with
 * the layer's tail page, so only its last page is partial and the causal
 * rule over the newest S tokens holds. When some list is given-tokens the
 * whole batch becomes token lists over the token view of the pool (each
 * page list spelled out token by token): one decode call, the same kernels.
 * A GPU engine's decode reads whole pages: there the token lists are
 * gathered into pages of their own first (attnd__gpu_decode_gather), and
 * the batch's topk-pages lists, if any, are selected on the host.
 *
 * Bytes: a list of T tokens for one of G groups reads T entries' worth of
 * its KV heads, T * entry_bytes / G; the dense figure is what the whole
 * layer would have cost; the selection reads every candidate's bounds.
 *
 * Scratch lives in the workspace (struct attnd__sparse_ws), grown to the
 * largest batch and reused: after warm-up nothing here allocates. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_assert.h"
#include "attnd_buf.h"
#include "attnd_clock.h"
#include "backend.h"
#include "sparse.h"

struct attnd__sparse_ws {
    int32_t *indptr, *last;   /* [lists + 1], [lists] */
    uint8_t *tok;             /* [lists]: a given-tokens list */
    int32_t *ngiv;            /* [lists]: its given entries (the rest: the newest tokens) */
    int32_t *pidx, *pos;      /* page entries: physical, selection positions */
    int64_t *plog;            /* logical page (or token) of each entry */
    int32_t *cand;            /* candidates of topk lists: the page tables */
    attnd_kernel_select_list *sel;
    float *work;
    int32_t *tindptr, *tidx;  /* token mode */
    int32_t *tlast;
    int64_t *tlog;
    int32_t *vindptr, *vidx, *vlast; /* visible-length lists (group ranks) */
    /* token mode on a GPU engine: each gathered slot's pool token, and the
     * page lists over the gathered pages */
    int32_t *gsrc, *gpindptr, *gpidx, *gplast;
    size_t c_gsrc, c_gpindptr, c_gpidx, c_gplast;
    attnd__gpu_gather gather;
    int gpu_gather; /* this batch decodes gathered pages */
    int32_t *gindptr;         /* a group leader's merged chosen lists */
    int64_t *gchosen;
    size_t c_gindptr, c_gchosen;
    size_t c_ngiv;
    size_t c_lists, c_last, c_tok, c_pidx, c_pos, c_plog, c_cand, c_sel, c_work;
    size_t c_tindptr, c_tidx, c_tlast, c_tlog, c_vindptr, c_vidx, c_vlast;
    attnd_kernel_kv_layout view;
    /* a GPU engine's selection, prepared here and run by the backend */
    attnd_kernel_select_batch gpu_sel;
    int64_t gpu_sel_work;
    int32_t gpu_lists;
    int gpu_want; /* the request wants the pages attended: download them */
};

void attnd__sparse_ws_free(struct attnd__sparse_ws *w)
{
    if (!w)
        return;
    free(w->indptr);
    free(w->last);
    free(w->tok);
    free(w->ngiv);
    free(w->pidx);
    free(w->pos);
    free(w->plog);
    free(w->cand);
    free(w->sel);
    free(w->work);
    free(w->tindptr);
    free(w->tidx);
    free(w->tlast);
    free(w->tlog);
    free(w->vindptr);
    free(w->vidx);
    free(w->vlast);
    free(w->gsrc);
    free(w->gpindptr);
    free(w->gpidx);
    free(w->gplast);
    free(w->gindptr);
    free(w->gchosen);
    free(w);
}

static int32_t heads_of(const attnd_engine *e)
{
    return e->layout.n_kv_heads;
}

int attnd__sparse_needed(const attnd_engine *e, const attnd_attend_req *req,
                         attnd_engine_ws *ws)
{
    (void)e;
    if (req->given_groups || req->want_pages)
        return 1;
    for (uint32_t i = 0; i < req->n_seqs; i++) {
        const attnd__session *s = ws->sessions[i];
        if (s->sparse && !s->sparse->dense[req->layer])
            return 1;
    }
    return 0;
}

#define FIT(arr, cap, n)                                                              \
    do {                                                                              \
        if (ATTND_BUF_RESERVE(w->arr, w->cap, (size_t)(n) + 1))                       \
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,                 \
                                   "session_ids: no memory for the batch's page lists"); \
    } while (0)

/* The batch's list groups and whether it needs token lists. */
static void batch_shape(const attnd_engine *e, const attnd_attend_req *req, attnd_engine_ws *ws,
                        int32_t *groups_p, int *tokens_p)
{
    const int32_t H = heads_of(e), l = (int32_t)req->layer;
    int32_t G = req->given_groups > 1 ? H : 1;
    int tokens = 0;
    for (uint32_t i = 0; i < req->n_seqs; i++) {
        const attnd__sparse *sp = ((const attnd__session *)ws->sessions[i])->sparse;
        if (!sp || sp->dense[l])
            continue;
        const attnd_policy *lp = sp->pol + (size_t)l * sp->n_heads;
        if (!sp->uniform[l] || (lp[0].kind == ATTND_POLICY_TOPK_PAGES && H > 1))
            G = H;
        for (int32_t h = 0; h < sp->n_heads; h++)
            tokens |= lp[h].kind == ATTND_POLICY_GIVEN_TOKENS;
    }
    *groups_p = G;
    *tokens_p = tokens;
}

/* Entries of list (session s, policy p) and, for topk-pages, its
 * selection problem (keep, mandatory counts). */
typedef struct list_plan {
    int64_t len;
    int32_t np, tail0, sink_pages, window_page;
    int32_t keep, n_head, n_tail;
    uint32_t n_given; /* given-*: the given entries listed */
    int64_t count;    /* entries: pages, or tokens for a given-tokens list */
} list_plan;

/* Entries of the ascending v[0 .. n) below `limit` (a binary search: the
 * given lists were checked ascending). */
static uint32_t count_below(const uint64_t *v, uint32_t n, uint64_t limit)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (v[mid] < limit)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static list_plan plan_list(const attnd__session *s, int32_t l, const attnd_policy *p, int32_t S,
                           const uint64_t *given, uint32_t n_given, int only)
{
    const int32_t ps = s->page_size;
    list_plan lp = {.len = (int64_t)s->len[l]};
    lp.np = (int32_t)((lp.len + ps - 1) / ps);
    int64_t newest = lp.len < S ? lp.len : S; /* tokens always attended */
    lp.tail0 = lp.np ? (int32_t)((lp.len - newest) / ps) : 0;
    if (newest == 0)
        lp.tail0 = lp.np; /* no token at all */
    lp.sink_pages = attnd__sparse_sink_pages(p->sink, ps);
    if (lp.sink_pages > lp.tail0)
        lp.sink_pages = lp.tail0;
    switch (p->kind) {
    case ATTND_POLICY_STREAMING: {
        int64_t wp = lp.len > (int64_t)p->window ? (lp.len - p->window) / ps : 0;
        wp = wp < lp.sink_pages ? lp.sink_pages : wp;
        lp.window_page = (int32_t)(wp < lp.tail0 ? wp : lp.tail0);
        lp.count = lp.sink_pages + (lp.np - lp.window_page);
        break;
    }
    case ATTND_POLICY_TOPK_PAGES: {
        int64_t k = p->topk ? (int64_t)p->topk : (int64_t)ceil((double)p->topk_fraction * lp.np);
        lp.n_head = lp.sink_pages;
        lp.n_tail = lp.np - lp.tail0;
        if (k < lp.n_head + lp.n_tail)
            k = lp.n_head + lp.n_tail;
        lp.keep = (int32_t)(k < lp.np ? k : lp.np);
        lp.count = lp.keep;
        break;
    }
    case ATTND_POLICY_GIVEN_PAGES:
        lp.n_given = only ? n_given : count_below(given, n_given, (uint64_t)lp.tail0);
        lp.count = lp.n_given + (only ? 0 : lp.np - lp.tail0); /* given_only: all of it */
        break;
    case ATTND_POLICY_GIVEN_TOKENS:
        lp.n_given = only ? n_given : count_below(given, n_given, (uint64_t)(lp.len - newest));
        lp.count = lp.n_given + (only ? 0 : newest);
        break;
    default:
        lp.count = lp.np;
    }
    return lp;
}

/* Page lists of the batch (token lists hold logical tokens in plog for
 * now); the topk-pages problems in w->sel. */
static attnd_status fill_lists(attnd_engine *e, const attnd_attend_req *req,
                               attnd_engine_ws *ws, struct attnd__sparse_ws *w, int32_t G,
                               int32_t *n_sel_p, int64_t *n_cand_p, attnd_error *err)
{
    const int32_t l = (int32_t)req->layer, H = heads_of(e), S = req->q_tokens;
    const uint32_t n = req->n_seqs;
    const int32_t lists = (int32_t)n * G;
    int64_t total = 0, cand = 0;
    int32_t n_sel = 0;

    FIT(indptr, c_lists, lists + 1);
    FIT(last, c_last, lists);
    FIT(tok, c_tok, lists);
    FIT(ngiv, c_ngiv, lists);
    /* sizes first */
    w->indptr[0] = 0;
    for (uint32_t i = 0; i < n; i++) {
        const attnd__session *s = ws->sessions[i];
        int has_topk = 0;
        for (int32_t g = 0; g < G; g++) {
            attnd_policy p = attnd__sparse_policy_of(s, l, g * (H / G));
            const uint64_t *gv;
            uint32_t gn, at;
            attnd__sparse_given_list(req, i, g, &gv, &gn, &at);
            list_plan lp = plan_list(s, l, &p, S, gv, gn, req->given_only);
            total += lp.count;
            if (total > INT32_MAX)
                return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                       "session_ids: the batch lists too many pages");
            w->indptr[i * G + g + 1] = (int32_t)total;
            has_topk |= p.kind == ATTND_POLICY_TOPK_PAGES;
            n_sel += p.kind == ATTND_POLICY_TOPK_PAGES;
        }
        if (has_topk)
            cand += attnd__session_layer_pages(s, l);
    }
    FIT(pidx, c_pidx, total);
    FIT(pos, c_pos, total);
    FIT(plog, c_plog, total);
    FIT(cand, c_cand, cand);
    FIT(sel, c_sel, n_sel);
    /* then the entries */
    int32_t c0 = 0, k = 0;
    for (uint32_t i = 0; i < n; i++) {
        const attnd__session *s = ws->sessions[i];
        const int32_t *tab = s->pages[l];
        int32_t my_cand = -1;
        for (int32_t g = 0; g < G; g++) {
            const int32_t li = (int32_t)i * G + g;
            attnd_policy p = attnd__sparse_policy_of(s, l, g * (H / G));
            const uint64_t *gv;
            uint32_t gn, at;
            attnd__sparse_given_list(req, i, g, &gv, &gn, &at);
            list_plan lp = plan_list(s, l, &p, S, gv, gn, req->given_only);
            int32_t o = w->indptr[li];
            w->tok[li] = p.kind == ATTND_POLICY_GIVEN_TOKENS;
            w->ngiv[li] = (int32_t)lp.n_given;
            w->last[li] = lp.np ? (int32_t)(lp.len - (int64_t)(lp.np - 1) * s->page_size) : 0;
            switch (p.kind) {
            case ATTND_POLICY_STREAMING:
                for (int32_t j = 0; j < lp.sink_pages; j++, o++)
                    w->pidx[o] = tab[j], w->plog[o] = j;
                for (int32_t j = lp.window_page; j < lp.np; j++, o++)
                    w->pidx[o] = tab[j], w->plog[o] = j;
                break;
            case ATTND_POLICY_TOPK_PAGES:
                if (my_cand < 0) { /* the session's page table, once */
                    my_cand = c0;
                    if (lp.np)
                        memcpy(w->cand + c0, tab, sizeof(int32_t) * (size_t)lp.np);
                    c0 += lp.np;
                }
                w->sel[k++] = (attnd_kernel_select_list){
                    .seq = (int32_t)i, .group = g, .cand0 = my_cand, .n_cand = lp.np,
                    .keep = lp.keep, .n_head = lp.n_head, .n_tail = lp.n_tail, .out0 = o};
                break;
            case ATTND_POLICY_GIVEN_PAGES:
                for (uint32_t j = 0; j < lp.n_given; j++, o++)
                    w->pidx[o] = tab[gv[j]], w->plog[o] = (int64_t)gv[j];
                if (req->given_only) { /* exactly these; only the layer's last page is partial */
                    if (!gn || gv[gn - 1] != (uint64_t)lp.np - 1)
                        w->last[li] = gn ? s->page_size : 0;
                    break;
                }
                for (int32_t j = lp.tail0; j < lp.np; j++, o++)
                    w->pidx[o] = tab[j], w->plog[o] = j;
                break;
            case ATTND_POLICY_GIVEN_TOKENS: {
                if (e->gpu) /* to_gathered reads them from the request */
                    break;
                /* the given positions as they came (uint64 below 2^63: int64) */
                if (lp.n_given)
                    memcpy(w->plog + o, gv, sizeof(int64_t) * lp.n_given);
                o += (int32_t)lp.n_given;
                if (req->given_only)
                    break;
                for (int64_t t = lp.len - (lp.count - lp.n_given); t < lp.len; t++, o++)
                    w->plog[o] = t;
                break;
            }
            default:
                for (int32_t j = 0; j < lp.np; j++, o++)
                    w->pidx[o] = tab[j], w->plog[o] = j;
            }
            if (p.kind != ATTND_POLICY_TOPK_PAGES && p.kind != ATTND_POLICY_GIVEN_TOKENS)
                ATTND_ASSERT(o == w->indptr[li + 1]);
        }
    }
    *n_sel_p = k;
    *n_cand_p = c0;
    return ATTND_OK;
}

/* Run the batch's selection problems into the lists, scoring with the
 * query the kernel reads (b->q: a heads-form query absorbed already on the
 * CPU; on the GPU the backend scores with its absorbed device copy), a row
 * per query token and run of the engine's select_head_agg heads (their
 * queries summed). */
/* The bytes of bounds a GPU selection reads per candidate of a list. */
static uint64_t gpu_bound_bytes(const attnd_engine *e, int32_t G)
{
    return (attnd__gpu_bounds_compact(&e->layout)
                ? (uint64_t)attnd_kernel_kv_bounds8_row(&e->layout) * (uint64_t)e->layout.n_kv_heads
                : (uint64_t)attnd_kernel_kv_bounds_elems(&e->layout) * 2) /
           (uint64_t)(G > 1 ? G : 1);
}

/* A GPU selection's figures, and each kept page's logical number (its
 * position) where the host reads the lists (want: positions downloaded). */
static void gpu_selected(attnd_engine *e, attnd_engine_ws *ws, struct attnd__sparse_ws *w,
                         const attnd_kernel_select_batch *sb, int32_t G, int want, uint64_t ns)
{
    uint64_t bytes = 0;
    const uint64_t per = gpu_bound_bytes(e, G);
    for (int32_t k = 0; k < sb->n_lists; k++) {
        const attnd_kernel_select_list *sl = &sb->lists[k];
        if (want) /* what each list kept (positions widen to int64) */
            for (int32_t j = 0; j < sl->keep; j++)
                w->plog[sl->out0 + j] = w->pos[sl->out0 + j];
        bytes += (uint64_t)sl->n_cand * per;
    }
    ws->select_ns = ns;
    atomic_fetch_add(&e->select_ns, ns);
    atomic_fetch_add(&e->select_calls, 1);
    atomic_fetch_add(&e->select_bytes, bytes);
}

static attnd_status run_selection(attnd_engine *e, const attnd_attend_req *req,
                                  attnd_engine_ws *ws, struct attnd__sparse_ws *w, int32_t G,
                                  int32_t n_sel, int tokens, const attnd_kernel_decode_batch *b,
                                  const attnd__gpu_proj *proj, attnd_error *err)
{
    attnd_kernel_select_batch sb = {
        .n_lists = n_sel,
        .lists = w->sel,
        .n_seqs = (int32_t)req->n_seqs,
        .q_tokens = req->q_tokens,
        .n_q_heads = e->model.n_q_heads,
        .list_groups = G,
        .head_agg = e->select_head_agg,
        .q_dtype = b->q_dtype,
        .q = b->q,
        .kv = &e->layout,
        .bounds = e->bounds,
        .bounds8 = e->bounds8, /* the CPU kernels' (a GPU engine's selection on
                                  the GPU scores its own device copy) */
        .bounds_pages = e->pool.n_pages,
        .cand_idx = w->cand,
        .sel_pages = w->pidx,
        .sel_pos = w->pos,
    };
    uint64_t t0 = attnd_clock_ns();
    int64_t wf = attnd_kernel_select_prepare(&sb, err);
    if (wf < 0)
        return ATTND_ERR_INTERNAL; /* the lists were built here: a bug */
    /* a GPU engine's lists must be known on the host when they are cut to
     * visible lengths or gathered as tokens */
    const int host = req->visible || tokens;
    if (e->gpu && host && req->q_form == ATTND_Q_HEADS) {
        /* the absorbed query exists on the GPU only: select there first,
         * bring the lists back, decode later (the query goes up twice) */
        attnd_kernel_decode_batch sbb = *b;
        sbb.n_seqs = (int32_t)req->n_seqs;
        sbb.q_tokens = req->q_tokens;
        sbb.list_groups = G;
        sbb.page_indptr = w->indptr;
        sbb.page_idx = w->pidx;
        sbb.last_page_len = w->last;
        uint64_t ns = 0;
        attnd_status st = attnd__gpu_select_pages(e->gpu, &sbb, proj, &sb, (size_t)wf, w->pidx,
                                                  w->pos, &ns, err);
        if (st)
            return st;
        gpu_selected(e, ws, w, &sb, G, 1, ns);
        return ATTND_OK;
    }
    if (e->gpu && !host) { /* on the GPU, with the decode */
        w->gpu_sel = sb;
        w->gpu_sel_work = wf;
        w->gpu_lists = n_sel;
        w->gpu_want = req->want_pages;
        return ATTND_OK;
    }
    /* a GPU engine makes them when read: once per candidate range (a
     * session's KV-head lists share theirs; a page's rows of every head
     * are made at once) */
    for (int32_t k = 0; k < n_sel; k++)
        if (k == 0 || w->sel[k].cand0 != w->sel[k - 1].cand0 ||
            w->sel[k].n_cand != w->sel[k - 1].n_cand)
            attnd__sparse_bounds8_fresh(e, w->cand + w->sel[k].cand0, w->sel[k].n_cand);
    FIT(work, c_work, wf);
    sb.work = w->work;
    attnd_status st = attnd_kernel_select_parallel(e->kpool, &sb, err);
    if (st)
        return st;
    uint64_t bytes = 0; /* the compact bounds of every candidate */
    const uint64_t per = (uint64_t)attnd_kernel_kv_bounds8_row(&e->layout) *
                         (uint64_t)e->layout.n_kv_heads / (uint64_t)G;
    for (int32_t k = 0; k < n_sel; k++) {
        const attnd_kernel_select_list *sl = &w->sel[k];
        for (int32_t j = 0; j < sl->keep; j++)
            w->plog[sl->out0 + j] = w->pos[sl->out0 + j];
        bytes += (uint64_t)sl->n_cand * per;
    }
    ws->select_ns = attnd_clock_ns() - t0;
    atomic_fetch_add(&e->select_ns, ws->select_ns);
    atomic_fetch_add(&e->select_calls, 1);
    atomic_fetch_add(&e->select_bytes, bytes);
    return ATTND_OK;
}

/* log2 of a page size that is a power of two, else -1; and the page of
 * token t with it (given tokens are far apart: a page each, and a 64-bit
 * division costs more than the rest of a token's work). */
static int page_shift(int32_t P)
{
    return P > 0 && (P & (P - 1)) == 0 ? __builtin_ctz((unsigned)P) : -1;
}

static inline int64_t page_of(int64_t t, int32_t P, int shift)
{
    return shift >= 0 ? t >> shift : t / P;
}

/* Gathered pages of session i's lists: a list's own pages each (hs 1),
 * else shared: as many as its longest list needs. */
static int64_t session_pages(const struct attnd__sparse_ws *w, int32_t i, int32_t G, int32_t hs)
{
    int64_t sum = 0, most = 0;
    for (int32_t g = 0; g < G; g++) {
        int64_t np = w->gpindptr[i * G + g + 1] - w->gpindptr[i * G + g];
        sum += np;
        most = np > most ? np : most;
    }
    return hs == 1 ? sum : most;
}

/* Token mode on a GPU engine: each listed token's pool position (page * P
 * + slot) put in the slot it is gathered into (gsrc, -1 elsewhere), the
 * page lists over the gathered pages (gpindptr, gpidx, gplast), and, when
 * return_pages or visible lengths (cut_visible) read them back, the lists
 * spelled out as logical tokens (tindptr, tlog). A given-tokens list's tokens come from
 * the request (fill_lists leaves them out of plog on a GPU engine). A list
 * has pages of its own, except GQA lists per KV head: a session's lists
 * share pages, each list's tokens in its head's rows (head slot = KV
 * head). */
static attnd_status to_gathered(attnd_engine *e, const attnd_attend_req *req, attnd_engine_ws *ws,
                                struct attnd__sparse_ws *w, int32_t G, attnd_kernel_decode_batch *b,
                                attnd_error *err)
{
    const int32_t l = (int32_t)req->layer, lists = (int32_t)req->n_seqs * G;
    const int32_t P = e->layout.page_size;
    const int32_t hs = !e->layout.v_in_k && G > 1 ? G : 1; /* head slots per page */
    const int shift = page_shift(P);
    int64_t total = 0, pages = 0, entries = 0;

    ATTND_ASSERT(hs == 1 || G == e->layout.n_kv_heads);
    if ((int64_t)e->pool.n_pages * P > INT32_MAX)
        return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                               "given_idx: token lists need a pool of at most 2^31 tokens");
    FIT(tindptr, c_tindptr, lists + 1);
    FIT(gpindptr, c_gpindptr, lists + 1);
    FIT(gplast, c_gplast, lists);
    w->tindptr[0] = w->gpindptr[0] = 0;
    for (int32_t li = 0; li < lists; li++) {
        int32_t n = w->indptr[li + 1] - w->indptr[li];
        int64_t t = w->tok[li] ? n : (n ? (int64_t)(n - 1) * P + w->last[li] : 0);
        int64_t np = (t + P - 1) / P;
        total += t;
        entries += np;
        if (total > INT32_MAX)
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "session_ids: the batch lists too many tokens");
        w->tindptr[li + 1] = (int32_t)total;
        w->gpindptr[li + 1] = (int32_t)entries;
        w->gplast[li] = t ? (int32_t)(t - (np - 1) * P) : 0;
    }
    /* the gathered pages: a list's own, or its session's shared ones */
    for (uint32_t i = 0; i < req->n_seqs; i++)
        pages += session_pages(w, (int32_t)i, G, hs);
    if (pages * hs * P > INT32_MAX)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "given_idx: the batch gathers too many tokens");
    /* the logical tokens only where they are read back */
    const int keep = req->want_pages || req->visible;
    if (keep)
        FIT(tlog, c_tlog, total);
    FIT(gpidx, c_gpidx, entries);
    FIT(gsrc, c_gsrc, pages * hs * P);
    int64_t next = 0, first = 0, own = 0; /* the list's pages, its head slot's region */
    for (int32_t li = 0; li < lists; li++) {
        const int32_t g = li % G;
        const attnd__session *s = ws->sessions[li / G];
        const int32_t *tab = s->pages[l];
        const int32_t np = w->gpindptr[li + 1] - w->gpindptr[li];
        if (hs == 1 || g == 0) {
            own = hs == 1 ? np : session_pages(w, li / G, G, hs);
            first = next;
            next += own;
        }
        for (int32_t j = 0; j < np; j++)
            w->gpidx[w->gpindptr[li] + j] = (int32_t)(first + j);
        /* the list's k-th token into slot k % P of its k / P-th page (as
         * counters: these loops are the host's share of a given-tokens
         * call, a pass over memory each), then -1 in the rest of its
         * region */
        int64_t *tl = keep ? w->tlog + w->tindptr[li] : NULL;
        int32_t *dst = w->gsrc + (first * hs + (hs > 1 ? g : 0)) * P, slot = 0;
        const int64_t step = (int64_t)hs * P;
        int64_t lo = 0, hi = 0, base = 0; /* tokens [lo, hi) are at base + t */
#define GATHER_PUT(t, v)                       \
    do {                                       \
        if (tl)                                \
            *tl++ = (t);                       \
        dst[slot] = (int32_t)(v);              \
        if (++slot == P)                       \
            slot = 0, dst += step;             \
    } while (0)
#define GATHER_PAGE(t)                                                   \
    do {                                                                 \
        if ((t) < lo || (t) >= hi) {                                     \
            int64_t pg_ = page_of((t), P, shift);                        \
            lo = pg_ * P, hi = lo + P, base = (int64_t)tab[pg_] * P - lo; \
        }                                                                \
    } while (0)
        if (w->tok[li]) { /* the given tokens, then the newest */
            const uint64_t *gv;
            uint32_t gn, at;
            attnd__sparse_given_list(req, (uint32_t)(li / G), g, &gv, &gn, &at);
            for (int32_t j = 0; j < w->ngiv[li]; j++) {
                const int64_t t = (int64_t)gv[j];
                GATHER_PAGE(t);
                GATHER_PUT(t, base + t);
            }
            const int64_t len = (int64_t)s->len[l];
            for (int64_t t = len - (w->indptr[li + 1] - w->indptr[li] - w->ngiv[li]); t < len;
                 t++) {
                GATHER_PAGE(t);
                GATHER_PUT(t, base + t);
            }
        } else {
            for (int32_t e0 = w->indptr[li]; e0 < w->indptr[li + 1]; e0++) {
                const int32_t cnt = e0 == w->indptr[li + 1] - 1 ? w->last[li] : P;
                const int64_t t0 = w->plog[e0] * P, at = (int64_t)w->pidx[e0] * P;
                for (int32_t c = 0; c < cnt; c++)
                    GATHER_PUT(t0 + c, at + c);
            }
        }
        const int64_t listed = w->tindptr[li + 1] - w->tindptr[li];
        ATTND_ASSERT(!keep || tl == w->tlog + w->tindptr[li + 1]);
        tl = NULL;
        for (int64_t k = listed; k < own * P; k++)
            GATHER_PUT(0, -1);
#undef GATHER_PAGE
#undef GATHER_PUT
    }
    ATTND_ASSERT(next == pages);
    w->gather = (attnd__gpu_gather){.n_pages = pages, .n_heads = hs, .src = w->gsrc};
    w->gpu_gather = pages > 0;
    b->page_indptr = w->gpindptr;
    b->page_idx = w->gpidx;
    b->last_page_len = w->gplast;
    return ATTND_OK;
}

/* Token mode: every list spelled out as tokens of the token view. */
static attnd_status to_tokens(attnd_engine *e, const attnd_attend_req *req, attnd_engine_ws *ws,
                              struct attnd__sparse_ws *w, int32_t G, attnd_kernel_decode_batch *b,
                              attnd_error *err)
{
    const int32_t l = (int32_t)req->layer, lists = (int32_t)req->n_seqs * G;
    const int32_t ps = e->layout.page_size;
    const int shift = page_shift(ps);
    int64_t ratio, total = 0;

    if (e->gpu)
        return to_gathered(e, req, ws, w, G, b, err);
    if (!attnd_kernel_kv_layout_token_view(&e->layout, &w->view, &ratio) ||
        (int64_t)e->pool.n_pages * ratio > INT32_MAX)
        return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                               "given_idx: token lists need a pool of at most 2^31 tokens");
    FIT(tindptr, c_tindptr, lists + 1);
    FIT(tlast, c_tlast, lists);
    w->tindptr[0] = 0;
    for (int32_t li = 0; li < lists; li++) {
        int32_t n = w->indptr[li + 1] - w->indptr[li];
        int64_t t = w->tok[li] ? n : (n ? (int64_t)(n - 1) * ps + w->last[li] : 0);
        total += t;
        if (total > INT32_MAX)
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "session_ids: the batch lists too many tokens");
        w->tindptr[li + 1] = (int32_t)total;
        w->tlast[li] = t ? 1 : 0;
    }
    FIT(tidx, c_tidx, total);
    FIT(tlog, c_tlog, total);
    for (int32_t li = 0; li < lists; li++) {
        const attnd__session *s = ws->sessions[li / G];
        const int32_t *tab = s->pages[l];
        int32_t o = w->tindptr[li];
        int64_t lo = 0, hi = 0, base = 0; /* tokens [lo, hi) are view page base + t */
        for (int32_t e0 = w->indptr[li]; e0 < w->indptr[li + 1]; e0++) {
            if (w->tok[li]) {
                int64_t t = w->plog[e0];
                if (t < lo || t >= hi) { /* once per page, not per token */
                    int64_t pg = page_of(t, ps, shift);
                    lo = pg * ps, hi = lo + ps, base = tab[pg] * ratio - lo;
                }
                w->tidx[o] = (int32_t)(base + t);
                w->tlog[o++] = t;
                continue;
            }
            int64_t j = w->plog[e0];
            int32_t cnt = e0 == w->indptr[li + 1] - 1 ? w->last[li] : ps;
            for (int32_t c = 0; c < cnt; c++) {
                w->tidx[o] = (int32_t)(w->pidx[e0] * ratio + c);
                w->tlog[o++] = j * ps + c;
            }
        }
        ATTND_ASSERT(o == w->tindptr[li + 1]);
    }
    b->kv = &w->view;
    b->pool_pages = (int64_t)e->pool.n_pages * ratio;
    b->page_indptr = w->tindptr;
    b->page_idx = w->tidx;
    b->last_page_len = w->tlast;
    return ATTND_OK;
}

/* A visible-length override (a sequence-sharded rank's multi-token query):
 * (session i, query token s, group g) becomes list (i * S + s) * G + g,
 * list (i, g) cut after the layer's first visible[i * S + s] tokens, so
 * that the batch reads as n * S sequences of one query token (as
 * attend.c's build_visible_lists does for dense sessions). The lists cut
 * are the page lists (unit: the page size) or, for a batch of token
 * lists, the token lists of the token view (unit 1); gathered (a GPU
 * engine's token batch, to_gathered): the gathered pages of each list,
 * cut after its tokens before visible[i * S + s] (tlog), whole pages and a
 * last partial one. */
static attnd_status cut_visible(const attnd_attend_req *req, struct attnd__sparse_ws *w,
                                int32_t G, int32_t ps, int tokens, int gathered,
                                attnd_kernel_decode_batch *b, attnd_error *err)
{
    const uint32_t n = req->n_seqs, S = (uint32_t)req->q_tokens;
    const int32_t lists = (int32_t)(n * S) * G, P = ps;
    const int32_t *indptr = tokens ? w->tindptr : w->indptr, *idx = tokens ? w->tidx : w->pidx;
    const int32_t *lastl = tokens ? w->tlast : w->last;
    const int64_t *plog = tokens ? w->tlog : w->plog;
    int64_t total = 0;
    if (tokens)
        ps = 1;
    FIT(vindptr, c_vindptr, lists + 1);
    FIT(vlast, c_vlast, lists);
    FIT(vidx, c_vidx, (int64_t)(gathered ? w->gpindptr : indptr)[(int32_t)n * G] * S);
    w->vindptr[0] = 0;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t s = 0; s < S; s++) {
            uint64_t v = req->visible[(size_t)i * S + s];
            for (int32_t g = 0; g < G; g++) {
                int32_t src = (int32_t)i * G + g, li = (int32_t)(i * S + s) * G + g;
                int32_t last = 0;
                if (gathered) { /* the tokens before v, in gathered pages */
                    int32_t m = 0;
                    while (indptr[src] + m < indptr[src + 1] &&
                           (uint64_t)plog[indptr[src] + m] < v)
                        m++;
                    const int32_t np = (m + P - 1) / P;
                    for (int32_t j = 0; j < np; j++)
                        w->vidx[total++] = w->gpidx[w->gpindptr[src] + j];
                    last = m ? m - (np - 1) * P : 0;
                } else { /* the entries starting before v, the last cut at v */
                    for (int32_t k = indptr[src]; k < indptr[src + 1]; k++) {
                        uint64_t first = (uint64_t)plog[k] * (uint64_t)ps;
                        if (first >= v)
                            break;
                        int32_t have = k == indptr[src + 1] - 1 ? lastl[src] : ps;
                        last = v - first < (uint64_t)have ? (int32_t)(v - first) : have;
                        w->vidx[total++] = idx[k];
                    }
                }
                w->vindptr[li + 1] = (int32_t)total;
                w->vlast[li] = last;
            }
        }
    b->page_indptr = w->vindptr;
    b->page_idx = w->vidx;
    b->last_page_len = w->vlast;
    return ATTND_OK;
}

attnd_status attnd__sparse_lists(attnd_engine *e, const attnd_attend_req *req,
                                 attnd_engine_ws *ws, attnd_kernel_decode_batch *b,
                                 const attnd__gpu_proj *proj, uint64_t *kv_bytes_p,
                                 uint64_t *dense_bytes_p, attnd_error *err)
{
    struct attnd__sparse_ws *w = ws->sparse;
    int32_t G, n_sel = 0;
    int64_t n_cand = 0;
    int tokens;
    attnd_status st;

    if (!w && !(w = ws->sparse = calloc(1, sizeof *w)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "session_ids: no memory for the sparse scratch");
    batch_shape(e, req, ws, &G, &tokens);
    if ((st = fill_lists(e, req, ws, w, G, &n_sel, &n_cand, err)))
        return st;
    ws->select_ns = 0;
    w->gpu_lists = 0;
    w->gpu_gather = 0;
    if (n_sel && (st = run_selection(e, req, ws, w, G, n_sel, tokens, b, proj, err)))
        return st;
    b->list_groups = G;
    if (tokens && (st = to_tokens(e, req, ws, w, G, b, err)))
        return st;
    if (req->visible) {
        if ((st = cut_visible(req, w, G, e->layout.page_size, tokens, tokens && e->gpu, b, err)))
            return st;
    } else if (!tokens) {
        b->page_indptr = w->indptr;
        b->page_idx = w->pidx;
        b->last_page_len = w->last;
    }
    /* bytes: listed tokens of each group's share of the KV heads */
    uint64_t listed = 0, dense = 0;
    const int32_t lists = (int32_t)req->n_seqs * G, ps = e->layout.page_size;
    for (int32_t li = 0; li < lists; li++) {
        int32_t n = w->indptr[li + 1] - w->indptr[li];
        listed += w->tok[li] ? (uint64_t)n : (n ? (uint64_t)(n - 1) * ps + (uint64_t)w->last[li] : 0);
    }
    for (uint32_t i = 0; i < req->n_seqs; i++)
        dense += ((const attnd__session *)ws->sessions[i])->len[req->layer];
    *kv_bytes_p = listed * e->entry_bytes / (uint64_t)G;
    *dense_bytes_p = dense * e->entry_bytes;
    if (req->want_pages) {
        ws->chosen_groups = (uint32_t)G;
        ws->chosen_tokens = tokens;
        ws->chosen_indptr = tokens ? w->tindptr : w->indptr;
        ws->chosen = tokens ? w->tlog : w->plog;
    }
    (void)n_cand;
    return ATTND_OK;
}

attnd_status attnd__sparse_gpu_decode(attnd_engine *e, attnd_engine_ws *ws,
                                      const attnd_kernel_decode_batch *b, const attnd__gpu_proj *proj,
                                      const attnd__gpu_overlap *ov, attnd_error *err)
{
    struct attnd__sparse_ws *w = ws->sparse;
    if (w && w->gpu_gather)
        return attnd__gpu_decode_gather(e->gpu, b, proj, &w->gather, ov, err);
    if (!w || !w->gpu_lists)
        return attnd__gpu_decode(e->gpu, b, proj, ov, err);
    uint64_t ns = 0;
    /* the kept pages' positions come back only when asked for (a download
     * the decode's result waits for) */
    attnd_status st = attnd__gpu_decode_select(e->gpu, b, proj, &w->gpu_sel,
                                               (size_t)w->gpu_sel_work,
                                               w->gpu_want ? w->pos : NULL, &ns, ov, err);
    if (st)
        return st;
    gpu_selected(e, ws, w, &w->gpu_sel, b->list_groups, w->gpu_want, ns);
    return ATTND_OK;
}

attnd_status attnd__sparse_chosen_room(attnd_engine_ws *ws, size_t lists, size_t entries,
                                       int32_t **indptr_p, int64_t **chosen_p, attnd_error *err)
{
    struct attnd__sparse_ws *w = ws->sparse;
    if (!w && !(w = ws->sparse = calloc(1, sizeof *w)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "return_pages: no memory for the pages attended");
    FIT(gindptr, c_gindptr, lists + 1);
    FIT(gchosen, c_gchosen, entries);
    *indptr_p = w->gindptr;
    *chosen_p = w->gchosen;
    return ATTND_OK;
}
