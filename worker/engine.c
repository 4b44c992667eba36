/* The worker engine: sessions over a paged KV pool, and the calls the
 * service makes on them (create, append, attend, close, stats).
 *
 * Every call validates what it depends on (layer range, session existence,
 * append position) itself, whatever the service checked before, and fails
 * without side effects: appends allocate all the pages they need in one pool
 * call before writing anything, so an exhausted pool leaves every session as
 * it was. Attend resolves and locks its sessions in address order, appends
 * the new entries, builds the batch's page lists in the caller's workspace
 * and runs the kernel on the engine's thread pool (attnd_cpu_pool: split-KV
 * over all its threads; concurrent attend calls take turns on it, and its
 * workers take none of our locks, so waiting for it with session locks held
 * cannot deadlock). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "backend.h"
#include "worker_int.h"

struct attnd_engine {
    attnd_model_spec model;
    char model_name[64];
    attnd_kv_layout layout;
    int64_t entry_elems;  /* wire elements per token */
    size_t entry_bytes;   /* stored bytes per token (what attention reads) */
    attnd_kv_pool pool;
    attnd__session_table table;
    attnd_cpu_pool *kpool; /* kernel threads, shared by every attend call */
    attnd__gpu *gpu;       /* --device cuda:N: page bytes and kernels on the GPU
                              (pool.base is then NULL); NULL: the CPU */
    atomic_uint_fast64_t attend_calls, attend_seqs;
    atomic_uint_fast64_t append_calls, tokens_appended, kv_bytes_read;
};

static int64_t div_up(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

attnd_status attnd_engine_create(const attnd_engine_config *cfg,
                                 attnd_engine **engine_p, attnd_error *err)
{
    const attnd_model_spec *m = &cfg->model;
    attnd_status st;
    attnd_engine *e;

    if (m->kind != ATTND_ATTN_MLA && m->kind != ATTND_ATTN_GQA)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "model: unknown attention kind");
    if (m->n_layers < 1 || m->n_q_heads < 1 || m->n_kv_heads < 1 ||
        m->n_q_heads % m->n_kv_heads || attnd_model_d_k(m) < 1 || attnd_model_d_v(m) < 1)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "model %s: inconsistent shape", m->name ? m->name : "?");
    if (attnd_dtype_size(m->kv_dtype) == 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "kv_dtype: invalid");
    if (cfg->page_size < 1 || cfg->page_size > 4096)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "page_size: %d not in [1, 4096]", cfg->page_size);
    if (cfg->kernel_path[0] && (st = attnd_kernel_path_select(cfg->kernel_path, err)))
        return st;
    e = calloc(1, sizeof *e);
    if (!e)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "engine: out of memory");
    e->model = *m;
    snprintf(e->model_name, sizeof e->model_name, "%s", m->name ? m->name : "custom");
    e->model.name = e->model_name;
    if (m->kind == ATTND_ATTN_MLA)
        attnd_kv_layout_mla(&e->layout, m->d_latent, m->d_rope, cfg->page_size, m->kv_dtype);
    else
        attnd_kv_layout_gqa(&e->layout, m->n_kv_heads, m->head_dim, cfg->page_size,
                            m->kv_dtype);
    e->entry_elems = attnd_kv_layout_token_elems(&e->layout);
    e->entry_bytes = (size_t)e->entry_elems * attnd_dtype_size(m->kv_dtype);

    size_t page_bytes = attnd_kv_layout_page_bytes(&e->layout);
    uint64_t n_pages = cfg->kv_memory / page_bytes;
    if (n_pages > INT32_MAX)
        n_pages = INT32_MAX;
    int32_t device;
    st = attnd__device_parse(cfg->device, &device, err);
    if (st)
        goto err_pool;
    if (device >= 0) { /* the pool's bookkeeping here, its bytes on the GPU */
        st = attnd_kv_pool_init_meta(&e->pool, page_bytes, (int32_t)n_pages, err);
        if (st == ATTND_OK &&
            (st = attnd__gpu_create(device, &e->layout, (int32_t)n_pages, &e->gpu, err)))
            attnd_kv_pool_cleanup(&e->pool);
    } else {
        st = attnd_kv_pool_init(&e->pool, page_bytes, (int32_t)n_pages, err);
        if (st == ATTND_OK && cfg->prefault)
            attnd_kv_pool_prefault_start(&e->pool);
    }
    if (st)
        goto err_pool;
    st = attnd__session_table_init(&e->table, cfg->max_sessions, err);
    if (st)
        goto err_table;
    /* with a GPU the CPU kernels never run: no worker threads */
    st = attnd_cpu_pool_create(e->gpu ? 1 : cfg->kernel_threads, &e->kpool, err);
    if (st)
        goto err_kpool;
    *engine_p = e;
    return ATTND_OK;

err_kpool:
    attnd__session_table_cleanup(&e->table, &e->pool);
err_table:
    attnd__gpu_destroy(e->gpu);
    attnd_kv_pool_cleanup(&e->pool);
err_pool:
    free(e);
    return st;
}

void attnd_engine_destroy(attnd_engine *e)
{
    if (!e)
        return;
    attnd_cpu_pool_destroy(e->kpool);
    attnd__session_table_cleanup(&e->table, &e->pool);
    attnd__gpu_destroy(e->gpu);
    attnd_kv_pool_cleanup(&e->pool);
    free(e);
}

const attnd_model_spec *attnd_engine_model(const attnd_engine *e)
{
    return &e->model;
}

const attnd_kv_layout *attnd_engine_kv_layout(const attnd_engine *e)
{
    return &e->layout;
}

int32_t attnd_engine_page_size(const attnd_engine *e)
{
    return e->layout.page_size;
}

attnd_status attnd_engine_session_create(attnd_engine *e, uint64_t max_tokens,
                                         attnd_session_id *id_p, attnd_error *err)
{
    int64_t per_layer = div_up((int64_t)(max_tokens > (1ull << 40) ? (1ull << 40) : max_tokens),
                               e->layout.page_size);
    int64_t reserve = per_layer * e->model.n_layers;
    attnd_session_id id;
    attnd_status st;

    if (reserve > e->pool.n_pages)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "max_tokens: %llu tokens need %lld KV pages; the pool has %d",
                               (unsigned long long)max_tokens, (long long)reserve,
                               e->pool.n_pages);
    st = attnd_kv_pool_reserve(&e->pool, reserve, err);
    if (st)
        return st;
    for (int tries = 0;; tries++) {
        if (getrandom(id.bytes, sizeof id.bytes, 0) != (ssize_t)sizeof id.bytes) {
            st = attnd_error_set(err, ATTND_ERR_INTERNAL, "session_id: getrandom failed");
            goto err_id;
        }
        attnd__session *s = attnd__session_new(&id, e->model.n_layers, e->layout.page_size,
                                               reserve, (int32_t)per_layer);
        if (s)
            s->res_per_layer = (int32_t)per_layer;
        if (!s) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                 "max_tokens: no memory for the session's page tables");
            goto err_id;
        }
        st = attnd__session_table_insert(&e->table, s, err);
        if (st == ATTND_OK)
            break;
        s->reserved_left = 0; /* the reservation is still ours to return */
        attnd__session_put(&e->table, &e->pool, s);
        if (st != ATTND_ERR_ALREADY_EXISTS || tries > 3)
            goto err_id;
    }
    *id_p = id;
    return ATTND_OK;

err_id:
    attnd_kv_pool_unreserve(&e->pool, reserve);
    return st;
}

attnd_status attnd_engine_session_create_id(attnd_engine *e, uint64_t max_tokens,
                                            const attnd_session_id *id, attnd_error *err)
{
    int64_t per_layer = div_up((int64_t)(max_tokens > (1ull << 40) ? (1ull << 40) : max_tokens),
                               e->layout.page_size);
    int64_t reserve = per_layer * e->model.n_layers;
    attnd_status st;

    if (reserve > e->pool.n_pages)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "max_tokens: %llu tokens need %lld KV pages; the pool has %d",
                               (unsigned long long)max_tokens, (long long)reserve,
                               e->pool.n_pages);
    st = attnd_kv_pool_reserve(&e->pool, reserve, err);
    if (st)
        return st;
    attnd__session *s = attnd__session_new(id, e->model.n_layers, e->layout.page_size, reserve,
                                           (int32_t)per_layer);
    if (!s) {
        attnd_kv_pool_unreserve(&e->pool, reserve);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "max_tokens: no memory for the session's page tables");
    }
    s->res_per_layer = (int32_t)per_layer;
    st = attnd__session_table_insert(&e->table, s, err);
    if (st) {
        s->reserved_left = 0; /* the reservation is still ours to return */
        attnd__session_put(&e->table, &e->pool, s);
        attnd_kv_pool_unreserve(&e->pool, reserve);
    }
    return st;
}

attnd_status attnd_engine_session_close(attnd_engine *e, const attnd_session_id *id,
                                        uint64_t *pages_freed_p, attnd_error *err)
{
    attnd__session *s = attnd__session_remove(&e->table, id);
    if (!s)
        return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_id: no such session");
    if (pages_freed_p) {
        pthread_mutex_lock(&s->mu);
        *pages_freed_p = (uint64_t)s->pages_held;
        pthread_mutex_unlock(&s->mu);
    }
    attnd__session_put(&e->table, &e->pool, s);
    return ATTND_OK;
}

static attnd_status check_layer(const attnd_engine *e, uint32_t layer, attnd_error *err)
{
    if (layer >= (uint32_t)e->model.n_layers)
        return attnd_error_set(err, ATTND_ERR_OUT_OF_RANGE, "layer: %u not in [0, %d) for %s",
                               layer, e->model.n_layers, e->model.name);
    return ATTND_OK;
}

/* Pages the layer needs after n more tokens, beyond those it has. */
static int64_t pages_for_append(const attnd_engine *e, const attnd__session *s, int32_t layer,
                                uint64_t n)
{
    int64_t ps = e->layout.page_size;
    return div_up((int64_t)(s->len[layer] + n), ps) - attnd__session_layer_pages(s, layer);
}

/* Write n entries at the layer's end (pages already in the table); advance
 * its length. Caller holds s->mu. Only the GPU backend can fail (INTERNAL,
 * a CUDA error: sticky, the worker must restart); the length advances
 * anyway, so the page bookkeeping stays consistent. */
static attnd_status write_entries(attnd_engine *e, attnd__session *s, int32_t layer,
                                  uint64_t n, attnd_dtype dtype, const void *kv,
                                  attnd_error *err)
{
    if (e->gpu) {
        attnd_status st = attnd__gpu_write(e->gpu, s->pages[layer], s->len[layer], n, dtype,
                                           kv, err);
        s->len[layer] += n;
        return st;
    }
    const int32_t ps = e->layout.page_size;
    size_t src_bytes = (size_t)e->entry_elems * attnd_dtype_size(dtype);
    const char *src = kv;
    uint64_t t = s->len[layer], end = t + n;

    while (t < end) {
        int32_t slot = (int32_t)(t % (uint64_t)ps);
        int32_t cnt = (int32_t)(end - t < (uint64_t)(ps - slot) ? end - t : (uint64_t)(ps - slot));
        void *page = attnd_kv_pool_page(&e->pool, s->pages[layer][t / (uint64_t)ps]);
        attnd_kv_write_tokens(&e->layout, page, slot, cnt, dtype, src);
        src += (size_t)cnt * src_bytes;
        t += (uint64_t)cnt;
    }
    s->len[layer] = end;
    return ATTND_OK;
}

attnd_status attnd_engine_append(attnd_engine *e, const attnd_session_id *id, uint32_t layer,
                                 uint64_t start, uint64_t n_tokens, attnd_dtype dtype,
                                 const void *kv, attnd_error *err)
{
    attnd_status st = check_layer(e, layer, err);
    if (st)
        return st;
    if (attnd_dtype_size(dtype) == 0 || (n_tokens && !kv))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "kv: missing or invalid dtype");
    attnd__session *s = attnd__session_get(&e->table, id);
    if (!s)
        return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_id: no such session");
    pthread_mutex_lock(&s->mu);
    if (start != s->len[layer]) {
        st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                             "start: layer %u holds %llu tokens; an append must start there, "
                             "got %llu", layer, (unsigned long long)s->len[layer],
                             (unsigned long long)start);
        goto out;
    }
    if (n_tokens > ((uint64_t)INT32_MAX * (uint64_t)e->layout.page_size) / 2) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "kv: %llu tokens is too many",
                             (unsigned long long)n_tokens);
        goto out;
    }
    int64_t need = pages_for_append(e, s, (int32_t)layer, n_tokens);
    int32_t have = attnd__session_layer_pages(s, (int32_t)layer);
    if (need > e->pool.n_pages) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "kv: KV memory exhausted: needs %lld pages, the pool has %d",
                             (long long)need, e->pool.n_pages);
        goto out;
    }
    st = attnd__session_grow(s, (int32_t)layer, have + need, err);
    if (st)
        goto out;
    int32_t from_res = (int32_t)attnd__session_from_reserved(s, have, need);
    st = attnd_kv_pool_alloc(&e->pool, (int32_t)need, from_res, s->pages[layer] + have, err);
    if (st)
        goto out;
    s->reserved_left -= from_res;
    s->pages_held += need;
    st = write_entries(e, s, (int32_t)layer, n_tokens, dtype, kv, err);
    if (st)
        goto out;
    atomic_fetch_add(&e->append_calls, 1);
    atomic_fetch_add(&e->tokens_appended, n_tokens);
out:
    pthread_mutex_unlock(&s->mu);
    attnd__session_put(&e->table, &e->pool, s);
    return st;
}

attnd_status attnd_engine_length(attnd_engine *e, const attnd_session_id *id, uint32_t layer,
                                 uint64_t *len_p, attnd_error *err)
{
    attnd_status st = check_layer(e, layer, err);
    if (st)
        return st;
    attnd__session *s = attnd__session_get(&e->table, id);
    if (!s)
        return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_id: no such session");
    pthread_mutex_lock(&s->mu);
    *len_p = s->len[layer];
    pthread_mutex_unlock(&s->mu);
    attnd__session_put(&e->table, &e->pool, s);
    return ATTND_OK;
}

void attnd_engine_get_stats(attnd_engine *e, attnd_engine_stats *st)
{
    int64_t used, reserved;
    memset(st, 0, sizeof *st);
    attnd_kv_pool_counts(&e->pool, &used, &reserved);
    pthread_mutex_lock(&e->table.mu);
    st->sessions = e->table.count;
    pthread_mutex_unlock(&e->table.mu);
    st->max_sessions = e->table.max;
    st->pages_total = (uint64_t)e->pool.n_pages;
    st->pages_used = (uint64_t)used;
    st->pages_reserved = (uint64_t)reserved;
    st->page_bytes = e->pool.page_bytes;
    st->attend_calls = atomic_load(&e->attend_calls);
    st->attend_sequences = atomic_load(&e->attend_seqs);
    st->append_calls = atomic_load(&e->append_calls);
    st->tokens_appended = atomic_load(&e->tokens_appended);
    st->kv_bytes_read = atomic_load(&e->kv_bytes_read);
}

/* ---- attend ------------------------------------------------------------- */

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

int attnd__ws_reserve(void **buf, size_t *cap, size_t n, size_t es)
{
    if (n <= *cap)
        return 0;
    size_t c = *cap ? *cap : 16;
    while (c < n)
        c *= 2;
    void *p = malloc(c * es);
    if (!p)
        return -1;
    free(*buf);
    *buf = p;
    *cap = c;
    return 0;
}

static attnd_status ws_fit_seqs(attnd_engine_ws *ws, size_t n, attnd_error *err)
{
    if (n + 1 <= ws->cap_seqs)
        return ATTND_OK;
    size_t c1 = ws->cap_seqs, c2 = ws->cap_seqs, c3 = ws->cap_seqs, c4 = ws->cap_seqs;
    if (attnd__ws_reserve((void **)&ws->sessions, &c1, n + 1, sizeof(void *)) ||
        attnd__ws_reserve((void **)&ws->order, &c2, n + 1, sizeof(int32_t)) ||
        attnd__ws_reserve((void **)&ws->page_indptr, &c3, n + 1, sizeof(int32_t)) ||
        attnd__ws_reserve((void **)&ws->last_page_len, &c4, n + 1, sizeof(int32_t)))
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

/* Append each session's S new entries, all or nothing. Sessions locked. */
static attnd_status append_new_entries(attnd_engine *e, const attnd_attend_req *req,
                                       attnd_engine_ws *ws, attnd_error *err)
{
    const int32_t layer = (int32_t)req->layer;
    const uint64_t S = (uint64_t)req->q_tokens;
    int64_t total = 0, from_res = 0;
    attnd_status st;

    for (uint32_t i = 0; i < req->n_seqs; i++) {
        attnd__session *s = ws->sessions[i];
        if (req->positions && req->positions[i] != s->len[layer])
            return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                                   "positions[%u]: layer %d of that session holds %llu tokens; "
                                   "the new entry must land there, got %llu",
                                   i, layer, (unsigned long long)s->len[layer],
                                   (unsigned long long)req->positions[i]);
        int64_t need = pages_for_append(e, s, layer, S);
        st = attnd__session_grow(s, layer, attnd__session_layer_pages(s, layer) + need, err);
        if (st)
            return st;
        total += need;
        from_res += attnd__session_from_reserved(s, attnd__session_layer_pages(s, layer), need);
    }
    if (attnd__ws_reserve((void **)&ws->new_pages, &ws->cap_new, (size_t)total + 1, sizeof(int32_t)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "new_kv: out of memory");
    st = attnd_kv_pool_alloc(&e->pool, (int32_t)total, (int32_t)from_res, ws->new_pages, err);
    if (st) {
        attnd_error_set(err, st, "new_kv: KV memory exhausted: the batch needs %lld new pages",
                        (long long)total);
        return st;
    }
    size_t entry_bytes = (size_t)e->entry_elems * attnd_dtype_size(req->new_kv_dtype);
    int64_t taken = 0;
    for (uint32_t i = 0; i < req->n_seqs; i++) {
        attnd__session *s = ws->sessions[i];
        int64_t need = pages_for_append(e, s, layer, S);
        int32_t have = attnd__session_layer_pages(s, layer);
        int64_t r = attnd__session_from_reserved(s, have, need);
        memcpy(s->pages[layer] + have, ws->new_pages + taken, sizeof(int32_t) * (size_t)need);
        taken += need;
        s->reserved_left -= r;
        s->pages_held += need;
        attnd_status wst = write_entries(e, s, layer, S, req->new_kv_dtype,
                                         (const char *)req->new_kv + (size_t)i * S * entry_bytes,
                                         err);
        if (wst && st == ATTND_OK)
            st = wst; /* the rest still advance: see write_entries */
    }
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
        attnd__ws_reserve((void **)&ws->page_idx, &ws->cap_pages, (size_t)total + 1, sizeof(int32_t)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "session_ids: the batch lists too many pages (%lld)",
                               (long long)total);
    ws->page_indptr[0] = 0;
    for (uint32_t i = 0; i < req->n_seqs; i++) {
        attnd__session *s = ws->sessions[i];
        int32_t np = attnd__session_layer_pages(s, layer);
        memcpy(ws->page_idx + ws->page_indptr[i], s->pages[layer], sizeof(int32_t) * (size_t)np);
        ws->page_indptr[i + 1] = ws->page_indptr[i] + np;
        ws->last_page_len[i] = np ? (int32_t)(s->len[layer] - (uint64_t)(np - 1) * (uint64_t)ps)
                                  : 0;
        tokens += s->len[layer];
    }
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
        attnd__ws_reserve((void **)&ws->page_idx, &ws->cap_pages, (size_t)total + 1, sizeof(int32_t)))
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

attnd_status attnd_engine_attend(attnd_engine *e, const attnd_attend_req *req,
                                 attnd_engine_ws *ws, const float **out_p,
                                 const float **lse_p, attnd_error *err)
{
    const attnd_model_spec *m = &e->model;
    attnd_status st = check_layer(e, req->layer, err);
    uint64_t tokens = 0;

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
    size_t rows = (size_t)req->n_seqs * (size_t)req->q_tokens * (size_t)m->n_q_heads;
    size_t d_v = (size_t)attnd_model_d_v(m);
    /* with a visible-length override each (sequence, query token) is one
     * list of its own (see build_visible_lists) */
    st = ws_fit_seqs(ws, (size_t)req->n_seqs * (req->visible ? (size_t)req->q_tokens : 1), err);
    if (st)
        return st;
    float *out, *lse;
    if (e->gpu) { /* outputs in page-locked memory: see attnd_engine_ws */
        st = ws_fit_pinned(ws, rows * (d_v + 1) * sizeof(float), err);
        if (st)
            return st;
        out = ws->pinned;
        lse = out + rows * d_v;
    } else {
        if (attnd__ws_reserve((void **)&ws->out, &ws->cap_out, rows * d_v, sizeof(float)) ||
            attnd__ws_reserve((void **)&ws->lse, &ws->cap_lse, rows, sizeof(float)))
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "q: no memory for %zu output rows", rows);
        out = ws->out;
        lse = ws->lse;
    }
    st = resolve_sessions(e, req, ws, err);
    if (st)
        return st;
    for (uint32_t k = 0; k < req->n_seqs; k++)
        pthread_mutex_lock(&((attnd__session *)ws->sessions[ws->order[k]])->mu);

    if (req->new_kv) {
        st = append_new_entries(e, req, ws, err);
        if (st)
            goto out;
    }
    st = req->visible ? build_visible_lists(e, req, ws, &tokens, err)
                      : build_page_lists(e, req, ws, &tokens, err);
    if (st)
        goto out;

    attnd_decode_batch b = {
        .n_seqs = (int32_t)req->n_seqs * (req->visible ? req->q_tokens : 1),
        .q_tokens = req->visible ? 1 : req->q_tokens,
        .n_q_heads = m->n_q_heads,
        .scale = m->scale,
        .q_dtype = req->q_dtype,
        .q = req->q,
        .kv = &e->layout,
        .pool = e->pool.base,
        .pool_pages = e->pool.n_pages,
        .page_indptr = ws->page_indptr,
        .page_idx = ws->page_idx,
        .last_page_len = ws->last_page_len,
        .out = out,
        .lse = lse,
    };
    if (e->gpu)
        st = attnd__gpu_decode(e->gpu, &b, err);
    else
        st = attnd_kernel_decode_parallel(e->kpool, &b, err); /* its threads' own scratch */
    if (st)
        goto out;
    *out_p = out;
    *lse_p = req->want_lse ? lse : NULL;
    atomic_fetch_add(&e->attend_calls, 1);
    atomic_fetch_add(&e->attend_seqs, req->n_seqs);
    atomic_fetch_add(&e->kv_bytes_read, tokens * e->entry_bytes);
    if (req->new_kv)
        atomic_fetch_add(&e->tokens_appended, (uint64_t)req->n_seqs * (uint64_t)req->q_tokens);

out:
    for (uint32_t k = req->n_seqs; k-- > 0;)
        pthread_mutex_unlock(&((attnd__session *)ws->sessions[ws->order[k]])->mu);
    for (uint32_t i = 0; i < req->n_seqs; i++)
        attnd__session_put(&e->table, &e->pool, ws->sessions[i]);
    return st;
}
