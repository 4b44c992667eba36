/* The worker engine: sessions over a paged KV pool, and the calls the
 * service makes on them (create, append, close, stats; the staged appends
 * of AppendKV streams, and attnd_engine_append with them, are in stage.c;
 * attend, with its workspace, is in attend.c; the tiers below memory and
 * durability are set up in engine_tiers.c).
 *
 * Every call validates what it depends on (layer range, session existence,
 * append position) itself, whatever the service checked before, and fails
 * without side effects: appends allocate all the pages they need in one pool
 * call before writing anything, so an exhausted pool leaves every session as
 * it was; an Attend with new KV on a layer an open stage holds is ABORTED.
 * Attend is in attend.c. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "attnd_assert.h"
#include "attnd_buf.h"
#include "backend.h"
#include "sparse.h"
#include "tier_int.h"

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
    const int32_t G = m->n_q_heads / (m->kind == ATTND_ATTN_MLA ? 1 : m->n_kv_heads);
    if (cfg->select_head_agg < 0 || (cfg->select_head_agg > 1 && G % cfg->select_head_agg))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "select_head_agg: %d does not divide the %d query heads of a KV "
                               "head", cfg->select_head_agg, G);
    if (cfg->kernel_path[0] && (st = attnd_kernel_path_select(cfg->kernel_path, err)))
        return st;
    e = calloc(1, sizeof *e);
    if (!e)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "engine: out of memory");
    e->model = *m;
    snprintf(e->model_name, sizeof e->model_name, "%s", m->name ? m->name : "custom");
    e->model.name = e->model_name;
    if (m->kind == ATTND_ATTN_MLA)
        attnd_kernel_kv_layout_mla(&e->layout, m->d_latent, m->d_rope, cfg->page_size, m->kv_dtype);
    else
        attnd_kernel_kv_layout_gqa(&e->layout, m->n_kv_heads, m->head_dim, cfg->page_size,
                                   m->kv_dtype);
    e->entry_elems = attnd_kernel_kv_layout_token_elems(&e->layout);
    /* 8 scoring rows per KV head and token unless asked (attnd_worker.h) */
    e->select_head_agg = cfg->select_head_agg ? cfg->select_head_agg : G % 8 ? 1 : G / 8;
    e->entry_bytes = (size_t)e->entry_elems * attnd_dtype_size(m->kv_dtype);

    size_t page_bytes = attnd_kernel_kv_layout_page_bytes(&e->layout);
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
    attnd__owner_table_init(&e->owners);
    if ((st = attnd__sparse_engine_init(e, err))) {
        attnd__owner_table_cleanup(&e->owners);
        attnd__gpu_destroy(e->gpu);
        attnd_kv_pool_cleanup(&e->pool);
        goto err_pool;
    }
    st = attnd__session_table_init(&e->table, cfg->max_sessions, err);
    if (st)
        goto err_table;
    /* with a GPU the CPU kernels never run: no worker threads */
    st = attnd_kernel_pool_create(e->gpu ? 1 : cfg->kernel_threads, &e->kpool, err);
    if (st)
        goto err_kpool;
    st = attnd__weights_init(e, err);
    if (st)
        goto err_weights;
    pthread_mutex_init(&e->stage_mu, NULL);
    /* the tier below and durability last: recovery fills the table */
    st = attnd__engine_tiers_open(e, cfg, err);
    if (st)
        goto err_tiers;
    attnd__weights_restore(e); /* --durable: W_UK / W_UV kept in --kv-dir */
    *engine_p = e;
    return ATTND_OK;

err_tiers:
    pthread_mutex_destroy(&e->stage_mu);
    attnd__weights_cleanup(e);
err_weights:
    attnd_kernel_pool_destroy(e->kpool);
err_kpool:
    attnd__session_table_cleanup(&e->table, &e->pool);
    attnd__engine_tiers_free(e);
err_table:
    attnd__owner_table_cleanup(&e->owners);
    attnd__sparse_engine_cleanup(e);
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
    attnd__engine_tiers_close(e); /* threads stopped, a last checkpoint */
    attnd_kernel_pool_destroy(e->kpool);
    attnd__session_table_cleanup(&e->table, &e->pool);
    attnd__engine_tiers_free(e);
    attnd__weights_cleanup(e); /* before the GPU: device copies */
    attnd__owner_table_cleanup(&e->owners); /* after the sessions that point at owners */
    attnd__sparse_engine_cleanup(e);
    attnd__gpu_destroy(e->gpu);
    attnd_kv_pool_cleanup(&e->pool);
    attnd__stages_cleanup(e);
    pthread_mutex_destroy(&e->stage_mu);
    free(e);
}

const attnd_model_spec *attnd_engine_model(const attnd_engine *e)
{
    return &e->model;
}

const attnd_kernel_kv_layout *attnd_engine_kv_layout(const attnd_engine *e)
{
    return &e->layout;
}

int32_t attnd_engine_page_size(const attnd_engine *e)
{
    return e->layout.page_size;
}

attnd_status attnd__engine_session_make(attnd_engine *e, uint64_t owner,
                                       const attnd_session_id *id, uint64_t max_tokens,
                                       const attnd_session_policy *pol, int lenient,
                                       attnd__session **s_p, attnd_error *err)
{
    int64_t per_layer = div_up((int64_t)(max_tokens > (1ull << 40) ? (1ull << 40) : max_tokens),
                               e->layout.page_size);
    int64_t reserve = per_layer * e->model.n_layers, cap, held;
    attnd__owner *o = NULL;
    attnd_status st;

    if (per_layer > INT32_MAX) /* only a streaming layer could hold it: it reserves less */
        per_layer = INT32_MAX;
    reserve = per_layer * e->model.n_layers;
    attnd_kv_pool_logical(&e->pool, &held, &cap);
    /* with a policy, its reservation is checked when it is given (streaming
     * layers reserve less) */
    if (!pol && reserve > cap && !lenient)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "max_tokens: %llu tokens need %lld KV pages; the tiers hold %lld "
                               "(%d in memory)",
                               (unsigned long long)max_tokens, (long long)reserve,
                               (long long)cap, e->pool.n_pages);
    if (pol) /* made without a reservation, then given the policy's */
        reserve = 0;
    if (owner && !(o = attnd__owner_get(&e->owners, owner, e->pool.page_bytes, err)))
        return err ? err->code : ATTND_ERR_RESOURCE_EXHAUSTED;
    /* the owner's KV counts pages wherever they are (memory or below): the
     * reservation now, the pages as they are allocated, all given back when
     * the session is freed (session.c) */
    if ((st = attnd__owner_charge(o, 1, reserve, 0, 0, "max_tokens", err)))
        return st;
    st = attnd_kv_pool_reserve(&e->pool, reserve, err);
    if (st && !lenient)
        goto err_owner;
    if (st) { /* a recovered session keeps its KV, without the promise */
        attnd__owner_refund(o, 0, reserve, 0, 0);
        reserve = per_layer = 0;
    }
    attnd__session *s = attnd__session_new(id, e->model.n_layers, e->layout.page_size, reserve,
                                           (int32_t)(pol ? 0 : per_layer),
                                           e->tier != NULL);
    if (!s) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "max_tokens: no memory for the session's page tables");
        goto err_reserve;
    }
    s->res_per_layer = pol ? 0 : (int32_t)per_layer;
    s->max_tokens = max_tokens;
    s->owner = o; /* before it can be found */
    atomic_store(&s->last_used, e->tier ? atomic_fetch_add(&e->tier->tick, 1) + 1 : 0);
    /* the policy before the session can be found: from here on, its end
     * (session_free) gives back whatever it holds and reserves */
    if (pol && (st = attnd__sparse_apply(e, s, pol, (int32_t)per_layer, lenient, err)))
        goto err_session;
    if (s_p)
        s->refs++; /* not in a table yet: ours to count */
    st = attnd__session_table_insert(&e->table, s, err);
    if (st) {
        if (s_p)
            s->refs--;
        goto err_session;
    }
    if (s_p)
        *s_p = s;
    return ATTND_OK;

err_session:
    attnd__session_put(&e->table, &e->pool, s); /* its reservation and charge go back */
    return st;
err_reserve:
    attnd_kv_pool_unreserve(&e->pool, reserve);
err_owner:
    attnd__owner_refund(o, 1, reserve, 0, 0);
    return st;
}

/* A session made for owner (0: none) with policy pol (NULL: dense) and
 * logged (its CREATE, with the owner and the policy, durable in sync mode). */
static attnd_status create_logged(attnd_engine *e, uint64_t owner, const attnd_session_id *id,
                                  uint64_t max_tokens, const attnd_session_policy *pol,
                                  attnd_error *err)
{
    attnd__session *s;
    attnd_status st = attnd__engine_session_make(e, owner, id, max_tokens, pol, 0,
                                                 e->dur ? &s : NULL, err);
    if (st || !e->dur)
        return st;
    pthread_mutex_lock(&s->mu);
    st = attnd__engine_log_create(e, s, err);
    pthread_mutex_unlock(&s->mu);
    attnd__session_put(&e->table, &e->pool, s);
    if (st) { /* not in the log: not made */
        if ((s = attnd__session_remove(&e->table, id)))
            attnd__session_put(&e->table, &e->pool, s);
    }
    return st;
}

/* Create a session for owner (0: none) with policy pol (NULL: dense) under
 * id `want` (NULL: a random one, retried on the unlikely collision). */
attnd_status attnd__engine_session_create(attnd_engine *e, uint64_t owner, uint64_t max_tokens,
                                          const attnd_session_policy *pol,
                                          const attnd_session_id *want, attnd_session_id *id_p,
                                          attnd_error *err)
{
    attnd_session_id id;
    attnd_status st;

    if (want)
        st = create_logged(e, owner, want, max_tokens, pol, err);
    else
        for (int tries = 0;; tries++) {
            if (getrandom(id.bytes, sizeof id.bytes, 0) != (ssize_t)sizeof id.bytes)
                return attnd_error_set(err, ATTND_ERR_INTERNAL, "session_id: getrandom failed");
            st = create_logged(e, owner, &id, max_tokens, pol, err);
            if (st != ATTND_ERR_ALREADY_EXISTS || tries > 3)
                break;
        }
    if (st == ATTND_OK && id_p)
        *id_p = want ? *want : id;
    return st;
}

attnd_status attnd_engine_session_create(attnd_engine *e, uint64_t max_tokens,
                                         attnd_session_id *id_p, attnd_error *err)
{
    return attnd__engine_session_create(e, 0, max_tokens, NULL, NULL, id_p, err);
}

attnd_status attnd_engine_session_create_id(attnd_engine *e, uint64_t max_tokens,
                                            const attnd_session_id *id, attnd_error *err)
{
    return attnd__engine_session_create(e, 0, max_tokens, NULL, id, NULL, err);
}

attnd_status attnd_engine_session_create_owned(attnd_engine *e, uint64_t owner,
                                               uint64_t max_tokens, const attnd_session_id *id,
                                               attnd_session_id *id_p, attnd_error *err)
{
    return attnd__engine_session_create(e, owner, max_tokens, NULL, id, id_p, err);
}

attnd_status attnd_engine_session_close(attnd_engine *e, const attnd_session_id *id,
                                        uint64_t *pages_freed_p, attnd_error *err)
{
    attnd__session *s = attnd__session_remove(&e->table, id);
    if (!s)
        return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_id: no such session");
    pthread_mutex_lock(&s->mu);
    s->closed = 1; /* an open stage's commit now fails (stage.c) */
    uint64_t freed = (uint64_t)s->pages_held;
    pthread_mutex_unlock(&s->mu);
    attnd__session_put(&e->table, &e->pool, s);
    /* a close that does not reach the log comes back after a restart:
     * the caller hears of it (it may close again) */
    attnd_status st = e->dur ? attnd__engine_log_session(e, ATTND__WREC_CLOSE, id, 0, err) : 0;
    if (st == ATTND_OK && pages_freed_p)
        *pages_freed_p = freed;
    return st;
}

attnd_status attnd__engine_check_layer(const attnd_engine *e, uint32_t layer, attnd_error *err)
{
    if (layer >= (uint32_t)e->model.n_layers)
        return attnd_error_set(err, ATTND_ERR_OUT_OF_RANGE, "layer: %u not in [0, %d) for %s",
                               layer, e->model.n_layers, e->model.name);
    return ATTND_OK;
}

/* Pages the layer needs after n more tokens, beyond those it has. */
attnd_status attnd__engine_write(attnd_engine *e, attnd__session *s, int32_t layer, uint64_t t0,
                                 uint64_t n, attnd_dtype dtype, const void *kv, int host_later,
                                 attnd_error *err)
{
    ATTND_ASSERT(!host_later || (e->gpu && dtype == ATTND_DTYPE_BF16));
    attnd_status st = host_later ? ATTND_OK
                                 : attnd__sparse_note_write(e, s, layer, t0, n, dtype, kv, err);
    if (st)
        return st;
    const int32_t ps = e->layout.page_size;
    if (e->tier && n) /* the first page may have had a copy below; the rest are new */
        attnd__tier_dirty(e, s, layer, (int64_t)(t0 / (uint64_t)ps));
    if (e->gpu) {
        st = attnd__gpu_write(e->gpu, s->pages[layer], t0, n, dtype, kv, err);
        /* the keys are up (in stream order): the GPU folds them from there */
        return st || !host_later ? st : attnd__sparse_note_gpu(e, s, layer, t0, n, err);
    }
    size_t src_bytes = (size_t)e->entry_elems * attnd_dtype_size(dtype);
    const char *src = kv;
    uint64_t t = t0, end = t0 + n;

    while (t < end) {
        int32_t slot = (int32_t)(t % (uint64_t)ps);
        int32_t cnt = (int32_t)(end - t < (uint64_t)(ps - slot) ? end - t : (uint64_t)(ps - slot));
        void *page = attnd_kv_pool_page(&e->pool, s->pages[layer][t / (uint64_t)ps]);
        attnd_kernel_kv_write_tokens(&e->layout, page, slot, cnt, dtype, src);
        src += (size_t)cnt * src_bytes;
        t += (uint64_t)cnt;
    }
    return ATTND_OK;
}

/* One chunk is a stage of one chunk, committed at once: the same checks,
 * the same all-or-nothing page allocation, one write path. */
attnd_status attnd_engine_append(attnd_engine *e, const attnd_session_id *id, uint32_t layer,
                                 uint64_t start, uint64_t n_tokens, attnd_dtype dtype,
                                 const void *kv, attnd_error *err)
{
    attnd_engine_stage *stage;
    attnd_status st = attnd_engine_stage_open(e, &stage, err);
    if (st)
        return st;
    st = attnd_engine_stage_append(stage, id, layer, start, n_tokens, dtype, kv, err);
    if (st == ATTND_OK)
        st = attnd_engine_stage_commit(stage, NULL, NULL, err);
    attnd_engine_stage_close(stage); /* aborts what a failure left staged */
    return st;
}

attnd_status attnd_engine_length(attnd_engine *e, const attnd_session_id *id, uint32_t layer,
                                 uint64_t *len_p, attnd_error *err)
{
    attnd_status st = attnd__engine_check_layer(e, layer, err);
    if (st)
        return st;
    attnd__session *s = attnd__session_get(&e->table, id);
    if (!s)
        return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_id: no such session");
    pthread_mutex_lock(&s->mu);
    if (!(st = attnd__session_check(s, err)))
        *len_p = s->len[layer];
    pthread_mutex_unlock(&s->mu);
    attnd__session_put(&e->table, &e->pool, s);
    return st;
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
    attnd__engine_tiers_stats(e, st);
    st->sessions_expired = atomic_load(&e->sessions_expired);
    st->pages_expired = atomic_load(&e->pages_expired);
    st->kv_bytes_dense = atomic_load(&e->kv_bytes_dense);
    st->select_bytes_read = atomic_load(&e->select_bytes);
    st->select_ns = atomic_load(&e->select_ns);
    st->select_calls = atomic_load(&e->select_calls);
    st->pages_evicted = atomic_load(&e->pages_evicted);
}
