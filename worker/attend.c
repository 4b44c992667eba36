/* The engine's attend (attnd_engine_attend) and its per-thread workspace.
 *
 * A heads-form MLA query (the narrow wire) is first absorbed with the
 * layer's W_UK into the workspace (attnd_proj.h, on the kernel pool,
 * before any session is locked); a request with d_vo is up-projected with
 * W_UV after the sessions are unlocked. On a GPU engine both products run
 * on the GPU inside the backend's call. The matrices are held by
 * reference for the whole call (weights.c).
 *
 * Attend resolves and locks its sessions in address order, appends the new
 * entries all or nothing (an exhausted pool leaves every session as it was;
 * a layer an open AppendKV stage holds is ABORTED), builds the batch's page
 * lists in the caller's workspace and runs the kernel on the engine's
 * thread pool (attnd_kernel_pool: split-KV over all its threads; concurrent
 * attend calls take turns on it, and its workers take none of our locks, so
 * waiting for it with session locks held cannot deadlock) or on the GPU
 * backend. The workspace grows to the largest batch seen and is reused:
 * steady-state decode allocates nothing.
 *
 * With a tier below memory, the layer is brought into memory for every
 * session of the batch first and the next layers are queued for prefetch
 * (attnd__tier_attend); with durability, the new entries are logged before
 * they are applied (a transaction of the call's own) and, in sync mode,
 * the call waits for the log after its locks are released. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_assert.h"
#include "attnd_buf.h"
#include "attnd_clock.h"
#include "attnd_proj.h"
#include "backend.h"
#include "sparse.h"
#include "tier_int.h"

void attnd_engine_ws_init(attnd_engine_ws *ws)
{
    memset(ws, 0, sizeof *ws);
}

void attnd_engine_ws_cleanup(attnd_engine_ws *ws)
{
    free(ws->sessions);
    free(ws->order);
    free(ws->page_indptr);
    free(ws->last_page_len);
    free(ws->new_pages);
    free(ws->page_idx);
    free(ws->out);
    free(ws->lse);
    free(ws->qa);
    free(ws->proj);
    attnd__sparse_ws_free(ws->sparse);
    if (ws->pinned_free)
        ws->pinned_free(ws->pinned);
    memset(ws, 0, sizeof *ws);
}

/* Make ws->pinned hold `bytes` of page-locked memory (keeps nothing). */
static attnd_status ws_fit_pinned(attnd_engine_ws *ws, size_t bytes, attnd_error *err)
{
    if (bytes <= ws->cap_pinned)
        return ATTND_OK;
    size_t c = ws->cap_pinned ? ws->cap_pinned : 4096;
    while (c < bytes)
        c *= 2;
    if (ws->pinned_free)
        ws->pinned_free(ws->pinned);
    ws->pinned = NULL;
    ws->cap_pinned = 0;
    attnd_status st = attnd__gpu_host_alloc(c, &ws->pinned, err);
    if (st)
        return st;
    ws->pinned_free = attnd__gpu_host_free;
    ws->cap_pinned = c;
    return ATTND_OK;
}

static attnd_status ws_fit_seqs(attnd_engine_ws *ws, size_t n, attnd_error *err)
{
    if (n + 1 <= ws->cap_seqs)
        return ATTND_OK;
    size_t c1 = ws->cap_seqs, c2 = ws->cap_seqs, c3 = ws->cap_seqs, c4 = ws->cap_seqs;
    if (ATTND_BUF_RESERVE(ws->sessions, c1, n + 1) ||
        ATTND_BUF_RESERVE(ws->order, c2, n + 1) ||
        ATTND_BUF_RESERVE(ws->page_indptr, c3, n + 1) ||
        ATTND_BUF_RESERVE(ws->last_page_len, c4, n + 1))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "session_ids: no memory for a batch of %zu", n);
    ws->cap_seqs = c1 < c2 ? c1 : c2;
    ws->cap_seqs = ws->cap_seqs < c3 ? ws->cap_seqs : c3;
    ws->cap_seqs = ws->cap_seqs < c4 ? ws->cap_seqs : c4;
    return ATTND_OK;
}

/* Order sessions by handle address (the lock order); duplicates adjacent. */
static void sort_by_handle(attnd_engine_ws *ws, uint32_t n)
{
    for (uint32_t i = 1; i < n; i++) { /* insertion sort: batches are small */
        int32_t v = ws->order[i];
        uint32_t j = i;
        while (j > 0 && (uintptr_t)ws->sessions[ws->order[j - 1]] > (uintptr_t)ws->sessions[v]) {
            ws->order[j] = ws->order[j - 1];
            j--;
        }
        ws->order[j] = v;
    }
}

/* Resolve every id (taking references); on failure put those taken. */
static attnd_status resolve_sessions(attnd_engine *e, const attnd_attend_req *req,
                                     attnd_engine_ws *ws, attnd_error *err)
{
    for (uint32_t i = 0; i < req->n_seqs; i++) {
        ws->sessions[i] = attnd__session_get(&e->table, &req->ids[i]);
        if (!ws->sessions[i]) {
            for (uint32_t j = 0; j < i; j++)
                attnd__session_put(&e->table, &e->pool, ws->sessions[j]);
            return attnd_error_set(err, ATTND_ERR_NOT_FOUND,
                                   "session_ids[%u]: no such session", i);
        }
        ws->order[i] = (int32_t)i;
    }
    sort_by_handle(ws, req->n_seqs);
    for (uint32_t k = 1; k < req->n_seqs; k++)
        if (ws->sessions[ws->order[k]] == ws->sessions[ws->order[k - 1]]) {
            int32_t a = ws->order[k - 1], b = ws->order[k];
            for (uint32_t j = 0; j < req->n_seqs; j++)
                attnd__session_put(&e->table, &e->pool, ws->sessions[j]);
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "session_ids[%d]: duplicate of session_ids[%d]",
                                   a > b ? a : b, a < b ? a : b);
        }
    return ATTND_OK;
}

/* Log the batch's new entries (durable) as one transaction; on failure
 * nothing of it counts. *end_p: the log position to wait for. */
static attnd_status log_new_entries(attnd_engine *e, const attnd_attend_req *req,
                                    attnd_engine_ws *ws, uint64_t *end_p, attnd_error *err)
{
    const uint64_t S = (uint64_t)req->q_tokens;
    const size_t entry_bytes = (size_t)e->entry_elems * attnd_dtype_size(req->new_kv_dtype);
    attnd__wtxn tx = {0};
    attnd_status st = ATTND_OK;

    for (uint32_t i = 0; i < req->n_seqs && st == ATTND_OK; i++) {
        attnd__session *s = ws->sessions[i];
        st = attnd__engine_log_data(e, &tx, &s->id, (int32_t)req->layer, s->len[req->layer], S,
                                    UINT64_MAX, req->new_kv_dtype,
                                    (const char *)req->new_kv + (size_t)i * S * entry_bytes,
                                    end_p, err);
    }
    if (st == ATTND_OK)
        st = attnd__engine_log_mark(e, &tx, ATTND__WREC_COMMIT, end_p, err);
    if (st && tx.txn)
        attnd__engine_log_mark(e, &tx, ATTND__WREC_ABORT, end_p, NULL);
    return st;
}

/* Give sessions [0, n) of the batch's owners back the pages their new
 * entries would take. */
static void refund_owners(attnd_engine *e, const attnd_attend_req *req, attnd_engine_ws *ws,
                          uint32_t n)
{
    const int32_t layer = (int32_t)req->layer;
    for (uint32_t i = 0; i < n; i++) {
        attnd__session *s = ws->sessions[i];
        int64_t need = attnd__engine_pages_for_append(e, s, layer, (uint64_t)req->q_tokens);
        if (s->owner && need > 0)
            attnd__owner_refund(s->owner, 0, 0, need,
                                attnd__session_from_reserved(
                                    s, layer, attnd__session_layer_pages(s, layer), need));
    }
}

/* Count the pages the new entries take against each session's owner: all
 * or none (a refused one gives back those counted before it). */
static attnd_status charge_owners(attnd_engine *e, const attnd_attend_req *req,
                                  attnd_engine_ws *ws, attnd_error *err)
{
    const int32_t layer = (int32_t)req->layer;
    for (uint32_t i = 0; i < req->n_seqs; i++) {
        attnd__session *s = ws->sessions[i];
        int64_t need = attnd__engine_pages_for_append(e, s, layer, (uint64_t)req->q_tokens);
        attnd_status st;
        if (!s->owner || need <= 0)
            continue;
        st = attnd__owner_charge(
            s->owner, 0, 0, need,
            attnd__session_from_reserved(s, layer, attnd__session_layer_pages(s, layer), need),
            "new_kv", err);
        if (st) {
            refund_owners(e, req, ws, i);
            return st;
        }
    }
    return ATTND_OK;
}

/* A GPU engine's key bounds of this Attend's new entries: folded on the
 * GPU at once, on the host while the GPU decodes (attnd__sparse_note_gpu
 * / _note_host). when: the Attend does so (bf16 entries, the selection on
 * the GPU, no tier moving pages); pending: the entries are written and the
 * host's fold is still to do. */
typedef struct host_fold {
    attnd_engine *e;
    const attnd_attend_req *req;
    attnd_engine_ws *ws;
    int when, pending;
} host_fold;

static void host_fold_run(void *arg)
{
    host_fold *hf = arg;
    if (!hf->pending)
        return;
    hf->pending = 0;
    const attnd_attend_req *req = hf->req;
    const uint64_t S = (uint64_t)req->q_tokens;
    const size_t entry_bytes = (size_t)hf->e->entry_elems * attnd_dtype_size(req->new_kv_dtype);
    for (uint32_t i = 0; i < req->n_seqs; i++) {
        attnd__session *s = hf->ws->sessions[i];
        attnd__sparse_note_host(hf->e, s, (int32_t)req->layer, s->len[req->layer] - S, S,
                                req->new_kv_dtype,
                                (const char *)req->new_kv + (size_t)i * S * entry_bytes);
    }
}

/* Append each session's S new entries, all or nothing. Sessions locked. */
static attnd_status append_new_entries(attnd_engine *e, const attnd_attend_req *req,
                                       attnd_engine_ws *ws, uint64_t *log_end_p, host_fold *hf,
                                       attnd_error *err)
{
    const int32_t layer = (int32_t)req->layer;
    const uint64_t S = (uint64_t)req->q_tokens;
    int64_t total = 0, from_res = 0;
    attnd_status st;

    for (uint32_t i = 0; i < req->n_seqs; i++) {
        attnd__session *s = ws->sessions[i];
        if (s->stager[layer])
            return attnd_error_set(err, ATTND_ERR_ABORTED,
                                   "new_kv: layer %d of session_ids[%u] is being appended to by "
                                   "an AppendKV stream that is still open; retry after it ends",
                                   layer, i);
        if (req->positions && req->positions[i] != s->len[layer])
            return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                                   "positions[%u]: layer %d of that session holds %llu tokens; "
                                   "the new entry must land there, got %llu",
                                   i, layer, (unsigned long long)s->len[layer],
                                   (unsigned long long)req->positions[i]);
        int64_t need = attnd__engine_pages_for_append(e, s, layer, S);
        st = attnd__session_grow(s, layer, attnd__session_layer_pages(s, layer) + need, err);
        if (st)
            return st;
        total += need;
        from_res += attnd__session_from_reserved(s, layer, attnd__session_layer_pages(s, layer), need);
    }
    if (ATTND_BUF_RESERVE(ws->new_pages, ws->cap_new, (size_t)total + 1))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "new_kv: out of memory");
    if (total > 0 && (st = charge_owners(e, req, ws, err)))
        return st;
    st = attnd__engine_alloc(e, (int32_t)total, (int32_t)from_res, ws->new_pages, err);
    if (st) {
        char why[ATTND_ERROR_MSG_MAX];
        snprintf(why, sizeof why, "%s", err->msg);
        refund_owners(e, req, ws, req->n_seqs);
        attnd_error_set(err, st, "new_kv: the batch needs %lld new pages: %s", (long long)total,
                        why);
        return st;
    }
    if (e->dur && (st = log_new_entries(e, req, ws, log_end_p, err))) {
        attnd_kv_pool_unalloc(&e->pool, ws->new_pages, (int32_t)total, (int32_t)from_res);
        refund_owners(e, req, ws, req->n_seqs);
        return st;
    }
    size_t entry_bytes = (size_t)e->entry_elems * attnd_dtype_size(req->new_kv_dtype);
    int64_t taken = 0;
    for (uint32_t i = 0; i < req->n_seqs; i++) {
        attnd__session *s = ws->sessions[i];
        int64_t need = attnd__engine_pages_for_append(e, s, layer, S);
        int32_t have = attnd__session_layer_pages(s, layer);
        int64_t r = attnd__session_from_reserved(s, layer, have, need);
        memcpy(s->pages[layer] + have, ws->new_pages + taken, sizeof(int32_t) * (size_t)need);
        attnd__session_no_slots(s, layer, have, have + need);
        taken += need;
        s->reserved_left -= r;
        s->pages_held += need;
        attnd_status wst = attnd__engine_write(
            e, s, layer, s->len[layer], S, req->new_kv_dtype,
            (const char *)req->new_kv + (size_t)i * S * entry_bytes, hf->when, err);
        /* a GPU error is sticky (the worker must restart); lengths advance
         * anyway so that the page bookkeeping stays consistent */
        s->len[layer] += S;
        s->ulen[layer] = s->len[layer];
        attnd__sparse_evict(e, s, layer); /* streaming: pages out of the window */
        if (wst && st == ATTND_OK)
            st = wst;
    }
    hf->pending = hf->when;
    return st;
}

/* Fill the batch's page lists from the sessions' page tables. */
static attnd_status build_page_lists(attnd_engine *e, const attnd_attend_req *req,
                                     attnd_engine_ws *ws, uint64_t *tokens_p,
                                     attnd_error *err)
{
    const int32_t layer = (int32_t)req->layer, ps = e->layout.page_size;
    int64_t total = 0;
    uint64_t tokens = 0;

    for (uint32_t i = 0; i < req->n_seqs; i++)
        total += attnd__session_layer_pages(ws->sessions[i], layer);
    if (total > INT32_MAX ||
        ATTND_BUF_RESERVE(ws->page_idx, ws->cap_pages, (size_t)total + 1))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "session_ids: the batch lists too many pages (%lld)",
                               (long long)total);
    ws->page_indptr[0] = 0;
    for (uint32_t i = 0; i < req->n_seqs; i++) {
        attnd__session *s = ws->sessions[i];
        int32_t np = attnd__session_layer_pages(s, layer);
        if (np) /* an empty layer may have no page table yet (NULL) */
            memcpy(ws->page_idx + ws->page_indptr[i], s->pages[layer],
                   sizeof(int32_t) * (size_t)np);
        ws->page_indptr[i + 1] = ws->page_indptr[i] + np;
        ws->last_page_len[i] = np ? (int32_t)(s->len[layer] - (uint64_t)(np - 1) * (uint64_t)ps)
                                  : 0;
        ATTND_ASSERT(np == 0 || (ws->last_page_len[i] >= 1 && ws->last_page_len[i] <= ps));
        for (int32_t j = 0; j < np; j++) /* a page of this pool, held by s */
            ATTND_ASSERT(s->pages[layer][j] >= 0 && s->pages[layer][j] < e->pool.n_pages);
        tokens += s->len[layer];
    }
    ATTND_ASSERT(ws->page_indptr[req->n_seqs] == total);
    *tokens_p = tokens;
    return ATTND_OK;
}

/* The page lists of a request with a visible-length override (the worker
 * group's sequence sharding, where a rank holds a subset of a session's
 * tokens): (sequence i, query token s) becomes list i * S + s, the first
 * visible[i * S + s] tokens of the session's layer, so that q [n][S][Hq][d_k]
 * and out [n][S][Hq][d_v] read as n * S sequences of one query token. */
static attnd_status build_visible_lists(attnd_engine *e, const attnd_attend_req *req,
                                        attnd_engine_ws *ws, uint64_t *tokens_p,
                                        attnd_error *err)
{
    const int32_t layer = (int32_t)req->layer, ps = e->layout.page_size;
    const uint32_t S = (uint32_t)req->q_tokens;
    int64_t total = 0;
    uint64_t tokens = 0;

    for (uint32_t i = 0; i < req->n_seqs; i++) {
        attnd__session *s = ws->sessions[i];
        for (uint32_t t = 0; t < S; t++) {
            uint64_t v = req->visible[(size_t)i * S + t];
            if (v > s->len[layer])
                return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                       "visible[%u]: %llu tokens, the layer holds %llu",
                                       i * S + t, (unsigned long long)v,
                                       (unsigned long long)s->len[layer]);
            total += (int64_t)((v + (uint64_t)ps - 1) / (uint64_t)ps);
        }
    }
    if (total > INT32_MAX ||
        ATTND_BUF_RESERVE(ws->page_idx, ws->cap_pages, (size_t)total + 1))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "session_ids: the batch lists too many pages (%lld)",
                               (long long)total);
    ws->page_indptr[0] = 0;
    for (uint32_t i = 0; i < req->n_seqs; i++) {
        attnd__session *s = ws->sessions[i];
        for (uint32_t t = 0; t < S; t++) {
            size_t k = (size_t)i * S + t;
            uint64_t v = req->visible[k];
            int32_t np = (int32_t)((v + (uint64_t)ps - 1) / (uint64_t)ps);
            if (np)
                memcpy(ws->page_idx + ws->page_indptr[k], s->pages[layer],
                       sizeof(int32_t) * (size_t)np);
            ws->page_indptr[k + 1] = ws->page_indptr[k] + np;
            ws->last_page_len[k] = np ? (int32_t)(v - (uint64_t)(np - 1) * (uint64_t)ps) : 0;
            tokens += v;
        }
    }
    *tokens_p = tokens;
    return ATTND_OK;
}

/* Heads form on the CPU: q [rows][Hq][d_nope + d_r] -> ws->qa [rows][Hq][d_k],
 * the latent part q_nope . W_UK and q_rope copied behind it. */
static attnd_status absorb(attnd_engine *e, const attnd_attend_req *req, const attnd__wmat *uk,
                           size_t q_rows, attnd_engine_ws *ws, attnd_error *err)
{
    const attnd_model_spec *m = &e->model;
    const int32_t dk = attnd_model_d_k(m), dq = req->d_nope + m->d_rope;
    if (ATTND_BUF_RESERVE(ws->qa, ws->cap_qa, q_rows * (size_t)m->n_q_heads * (size_t)dk))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "q: no memory for %zu absorbed query rows", q_rows);
    attnd_kernel_proj p = {
        .rows = (int32_t)q_rows, .heads = m->n_q_heads, .k = req->d_nope, .j = m->d_latent,
        .pass = m->d_rope,
        .src_dtype = req->q_dtype, .src = req->q,
        .src_row = (int64_t)m->n_q_heads * dq, .src_head = dq,
        .w_dtype = uk->dtype, .w = uk->host,
        .dst = ws->qa, .dst_row = (int64_t)m->n_q_heads * dk, .dst_head = dk,
    };
    return attnd_kernel_proj_parallel(e->kpool, &p, err);
}

/* d_vo on the CPU: out [rows][Hq][d_c] -> ws->proj [rows][Hq][d_vo] (made
 * big enough before the call changed anything). Cannot fail: float32 rows
 * need no scratch, so the pool run allocates nothing. */
static void up_project(attnd_engine *e, const attnd__wmat *uv, size_t q_rows, const float *out,
                       attnd_engine_ws *ws)
{
    const attnd_model_spec *m = &e->model;
    const int32_t dv = uv->cols;
    ATTND_ASSERT(ws->cap_proj >= q_rows * (size_t)m->n_q_heads * (size_t)dv);
    attnd_kernel_proj p = {
        .rows = (int32_t)q_rows, .heads = m->n_q_heads, .k = m->d_latent, .j = dv,
        .src_dtype = ATTND_DTYPE_F32, .src = out,
        .src_row = (int64_t)m->n_q_heads * m->d_latent, .src_head = m->d_latent,
        .w_dtype = uv->dtype, .w = uv->host,
        .dst = ws->proj, .dst_row = (int64_t)m->n_q_heads * dv, .dst_head = dv,
    };
    attnd_error e2;
    ATTND_ASSERT(attnd_kernel_proj_work_floats(&p) == 0); /* so the run allocates nothing */
    attnd_status st = attnd_kernel_proj_parallel(e->kpool, &p, &e2);
    ATTND_ASSERT(st == ATTND_OK);
}

attnd_status attnd_engine_attend(attnd_engine *e, const attnd_attend_req *req,
                                 attnd_engine_ws *ws, const float **out_p,
                                 const float **lse_p, attnd_error *err)
{
    const attnd_model_spec *m = &e->model;
    const uint64_t t0 = attnd_clock_ns();
    memset(&ws->phases, 0, sizeof ws->phases);
    attnd_status st = attnd__engine_check_layer(e, req->layer, err);
    uint64_t tokens = 0, kv_bytes = 0, dense_bytes = 0;
    int sparse = 0;
    host_fold hf = {.e = e, .req = req, .ws = ws};

    if (st)
        return st;
    if (req->n_seqs == 0 || !req->ids)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "session_ids: empty batch");
    if (req->n_seqs > e->table.max)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "session_ids: %u sessions in one batch; at most %u exist",
                               req->n_seqs, e->table.max);
    if (req->q_tokens < 1 || req->q_tokens > ATTND_ENGINE_MAX_Q_TOKENS || !req->q ||
        attnd_dtype_size(req->q_dtype) == 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "q: missing, bad dtype, or q_tokens %d not in [1, 64]",
                               req->q_tokens);
    if (req->new_kv && attnd_dtype_size(req->new_kv_dtype) == 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "new_kv.dtype: invalid");
    if ((req->q_form != ATTND_Q_ABSORBED && req->q_form != ATTND_Q_HEADS) ||
        (req->q_form == ATTND_Q_HEADS &&
         (req->d_nope < 1 || req->d_nope > ATTND_ENGINE_MAX_PROJ_DIM)) ||
        req->d_vo < 0 || req->d_vo > ATTND_ENGINE_MAX_PROJ_DIM)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "q_form: %d with d_nope %d, d_vo %d: expected ABSORBED (0) or "
                               "HEADS (1) with d_nope in [1, %d], d_vo in [0, %d]",
                               (int)req->q_form, req->d_nope, req->d_vo,
                               ATTND_ENGINE_MAX_PROJ_DIM, ATTND_ENGINE_MAX_PROJ_DIM);
    const size_t q_rows = (size_t)req->n_seqs * (size_t)req->q_tokens;
    const size_t rows = q_rows * (size_t)m->n_q_heads;
    const size_t d_v = (size_t)attnd_model_d_v(m);
    const size_t d_out = req->d_vo > 0 ? (size_t)req->d_vo : d_v;
    /* with a visible-length override each (sequence, query token) is one
     * list of its own (see build_visible_lists) */
    st = ws_fit_seqs(ws, (size_t)req->n_seqs * (req->visible ? (size_t)req->q_tokens : 1), err);
    if (st)
        return st;
    attnd__wmat *uk = NULL, *uv = NULL;
    if ((st = attnd__weights_get(e, req, &uk, &uv, err)))
        return st;
    float *out, *lse;
    if (e->gpu) { /* outputs in page-locked memory: see attnd_engine_ws */
        st = ws_fit_pinned(ws, rows * (d_out + 1) * sizeof(float), err);
        if (st)
            goto out_weights;
        out = ws->pinned;
        lse = out + rows * d_out;
    } else {
        if (ATTND_BUF_RESERVE(ws->out, ws->cap_out, rows * d_v) ||
            ATTND_BUF_RESERVE(ws->lse, ws->cap_lse, rows) ||
            (uv && ATTND_BUF_RESERVE(ws->proj, ws->cap_proj, rows * d_out))) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                 "q: no memory for %zu output rows", rows);
            goto out_weights;
        }
        out = ws->out;
        lse = ws->lse;
        if (uk && (st = absorb(e, req, uk, q_rows, ws, err)))
            goto out_weights;
    }
    st = resolve_sessions(e, req, ws, err);
    if (st)
        goto out_weights;
    for (uint32_t k = 0; k < req->n_seqs; k++)
        pthread_mutex_lock(&((attnd__session *)ws->sessions[ws->order[k]])->mu);

    uint64_t log_end = 0;
    if (e->tier) {
        /* memory short: the batch's other layers may go below too */
        attnd__tier_own((attnd__session **)ws->sessions, req->n_seqs, (int32_t)req->layer);
        if ((st = attnd__tier_attend(e, (attnd__session **)ws->sessions, req->n_seqs,
                                     (int32_t)req->layer, err)))
            goto out;
    }
    ws->chosen_groups = 0;
    ws->select_ns = 0;
    sparse = attnd__sparse_needed(e, req, ws);
    if (sparse && (st = attnd__sparse_check(e, req, ws, err)))
        goto out;
    hf.when = e->gpu && sparse && !req->visible && !e->tier &&
              req->new_kv_dtype == ATTND_DTYPE_BF16;
    const uint64_t t_app = attnd_clock_ns();
    if (req->new_kv) {
        st = append_new_entries(e, req, ws, &log_end, &hf, err);
        if (st)
            goto out;
        /* the GPU copies (and folds) while the host builds the lists */
        if (e->gpu && (st = attnd__gpu_kick(e->gpu, err)))
            goto out;
    }
    const uint64_t append_ns = attnd_clock_ns() - t_app;
    if (!sparse) {
        st = req->visible ? build_visible_lists(e, req, ws, &tokens, err)
                          : build_page_lists(e, req, ws, &tokens, err);
        if (st)
            goto out;
        kv_bytes = dense_bytes = tokens * e->entry_bytes;
    }

    attnd_kernel_decode_batch b = {
        .n_seqs = (int32_t)req->n_seqs * (req->visible ? req->q_tokens : 1),
        .q_tokens = req->visible ? 1 : req->q_tokens,
        .n_q_heads = m->n_q_heads,
        .scale = m->scale,
        .q_dtype = uk && !e->gpu ? ATTND_DTYPE_F32 : req->q_dtype,
        .q = uk && !e->gpu ? (const void *)ws->qa : req->q,
        .kv = &e->layout,
        .pool = e->pool.base,
        .pool_pages = e->pool.n_pages,
        .page_indptr = ws->page_indptr,
        .page_idx = ws->page_idx,
        .last_page_len = ws->last_page_len,
        .out = out,
        .lse = lse,
    };
    /* a GPU engine's projections (the narrow wire) */
    const attnd__gpu_proj gp = {
        .d_nope = uk ? uk->rows : 0, .uk = uk ? uk->dev : NULL,
        .d_vo = uv ? uv->cols : 0, .uv = uv ? uv->dev : NULL,
    };
    const attnd__gpu_proj *pp = e->gpu && (uk || uv) ? &gp : NULL;
    /* sparse policies: their own lists (sparse_attend.c); a topk-pages
     * selection scores with b.q, the absorbed query on the CPU (on a GPU
     * engine, the GPU's) */
    if (sparse &&
        (st = attnd__sparse_lists(e, req, ws, &b, pp, &kv_bytes, &dense_bytes, err)))
        goto out;
    if (e->gpu) {
        const uint64_t t_call = attnd_clock_ns();
        ws->phases.host_ns = t_call - t0;
        ws->phases.append_ns = append_ns;
        const attnd__gpu_overlap ov = {.run = host_fold_run, .arg = &hf, .t_call = t_call,
                                       .times = &ws->phases};
        st = sparse ? attnd__sparse_gpu_decode(e, ws, &b, pp, &ov, err)
                    : attnd__gpu_decode(e->gpu, &b, pp, &ov, err);
        if (st)
            memset(&ws->phases, 0, sizeof ws->phases);
    } else {
        st = attnd_kernel_decode_parallel(e->kpool, &b, err); /* its threads' own scratch */
    }
    if (st)
        goto out;
    atomic_fetch_add(&e->attend_calls, 1);
    atomic_fetch_add(&e->attend_seqs, req->n_seqs);
    atomic_fetch_add(&e->kv_bytes_read, kv_bytes);
    atomic_fetch_add(&e->kv_bytes_dense, dense_bytes);
    if (req->new_kv)
        atomic_fetch_add(&e->tokens_appended, (uint64_t)req->n_seqs * (uint64_t)req->q_tokens);
    /* one caller's sessions (the service checks their owner): its figures */
    attnd__owner *o = ((attnd__session *)ws->sessions[0])->owner;
    if (o) {
        atomic_fetch_add(&o->attend_calls, 1);
        atomic_fetch_add(&o->attend_seqs, req->n_seqs);
        atomic_fetch_add(&o->kv_bytes_read, tokens * e->entry_bytes);
        if (req->new_kv)
            atomic_fetch_add(&o->tokens_appended,
                             (uint64_t)req->n_seqs * (uint64_t)req->q_tokens);
    }

out:
    host_fold_run(&hf); /* when the decode did not get to it */
    if (e->tier)
        attnd__tier_own(NULL, 0, -1);
    for (uint32_t k = req->n_seqs; k-- > 0;)
        pthread_mutex_unlock(&((attnd__session *)ws->sessions[ws->order[k]])->mu);
    for (uint32_t i = 0; i < req->n_seqs; i++)
        attnd__session_put(&e->table, &e->pool, ws->sessions[i]);
    if (log_end) { /* sync mode: the new entries durable before the reply */
        attnd_status lst = attnd__engine_log_wait(e, log_end, err);
        if (st == ATTND_OK)
            st = lst;
    }
    /* the up-projection reads only the workspace: no session locked */
    if (st == ATTND_OK && uv && !e->gpu) {
        up_project(e, uv, q_rows, out, ws);
        out = ws->proj;
    }
    if (st == ATTND_OK) {
        *out_p = out;
        *lse_p = req->want_lse ? lse : NULL;
    }
out_weights:
    attnd__weights_put(e, uk);
    attnd__weights_put(e, uv);
    return st;
}
