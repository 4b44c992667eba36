/* The KV side of sparse policies: per-page key bounds kept on append, and
 * streaming eviction.
 *
 * Bounds live in one array beside the pool, indexed by physical page
 * ([Hkv][n_pages][2][d_k] bf16, attnd_kernel_kv_bounds_at), followed in
 * the same mapping by their compact 8-bit form ([Hkv][n_pages] rows of
 * attnd_kernel_kv_bounds8_row bytes), which the CPU selection reads (half
 * the bytes: SPARSE.md, "Speed"). The compact rows of a page are made
 * again from its bf16 bounds whenever those change (bounds_changed,
 * below), so the tiers and recovery move and rebuild bf16 bounds only.
 * A GPU engine only marks them stale (the GPU keeps its own copy of both
 * forms) and makes them when its CPU selection is about to read them
 * (attnd__sparse_bounds8_fresh): a compact row cost ~20 us of every GQA
 * session's append there, a quarter of a sparse call at batch 4. The
 * address space is reserved at start (MAP_NORESERVE) and filled in only
 * by layers with a topk-pages head, so a server without such sessions
 * commits none of it (at most 1/32 + 1/64 of the pool for MLA pages of 64
 * tokens, 1/64 + 1/124 for GQA with d_k 128). They are folded in from
 * the wire entries as attnd__engine_write stores them (both backends: the
 * GPU's selection reads a copy), a page's bounds starting over when its
 * first slot is written, so a page reused from the pool never carries old
 * keys. A GPU engine's Attend with bf16 entries and its selection on the
 * GPU splits that in two (attnd__sparse_note_gpu / _note_host): the GPU
 * folds the keys from its pool as soon as they are up, and the host folds
 * its copy while the GPU decodes, so the host's fold (80 us of a batch of
 * 16 llama3-8b sessions on an H100's host) is off the call's path. Staged AppendKV tokens are folded in as they are staged: committed
 * they are covered; if their stage aborts, the last committed page may keep
 * bounds a little wider than its keys (still bounds: selection stays
 * correct, only less sharp). A page's bounds belong to its physical page,
 * so whatever moves page contents elsewhere must move them: the tiers copy
 * them beside a page's slot whenever the page leaves memory (written below,
 * or already there because a checkpoint wrote it) and back into the memory
 * page it is read into (attnd__sparse_bounds_out / _in, below).
 *
 * Eviction: see sparse.h. With a tier below memory the evicted pages are
 * resident (just appended to); a durable engine's may have a copy in a
 * slot (a checkpoint wrote it), released with them. The freed pages return
 * to the pool, and to the owner's account, with the part of the session's
 * reservation they had used, so a streaming layer's next pages come from
 * its own promise and never fail for lack of the pages it just gave back.
 *
 * Bounds are not written to disk: a durable engine's recovery rebuilds
 * them from the pages' keys (attnd__sparse_bounds_rebuild), which gives
 * the same bits as the appends did, whatever their chunks. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "attnd_assert.h"
#include "backend.h"
#include "sparse.h"
#include "tier_int.h"

attnd_status attnd__sparse_engine_init(attnd_engine *e, attnd_error *err)
{
    size_t b16 =
            attnd_kernel_kv_bounds_elems(&e->layout) * sizeof(uint16_t) * (size_t)e->pool.n_pages;
    size_t b8 = attnd_kernel_kv_bounds8_row(&e->layout) * (size_t)e->layout.n_kv_heads *
                (size_t)e->pool.n_pages;
    size_t bytes = b16 + b8 + (e->gpu ? (size_t)e->pool.n_pages : 0);
    /* huge pages as the pool's: the selection streams the compact rows of
     * every candidate (4.3 MB for a 128K llama3-8b sequence), a TLB miss
     * every 4 KiB without them */
    void *p = attnd__map_anon(bytes, 1);
    if (!p)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv_memory: cannot map %zu bytes of page key bounds", bytes);
    e->bounds = p;
    e->bounds8 = (uint8_t *)p + b16;
    e->bounds8_stale = e->gpu ? e->bounds8 + b8 : NULL;
    e->bounds_map_bytes = bytes;
    return ATTND_OK;
}

void attnd__sparse_engine_cleanup(attnd_engine *e)
{
    if (e->bounds)
        munmap(e->bounds, e->bounds_map_bytes);
    e->bounds = NULL;
    e->bounds8 = NULL;
    e->bounds8_stale = NULL;
    e->bounds_map_bytes = 0;
}

void attnd__session_layer_res(const attnd__session *s, int32_t layer, int64_t *res_p,
                              int64_t *holes_p)
{
    *res_p = s->sparse->res[layer];
    *holes_p = attnd__sparse_holes(s->sparse, layer, s->page_size);
}

/* Page pg's bf16 bounds changed: make its compact ones again (a GPU
 * engine: mark them stale, and keep the GPU's copy of the bf16 rows, from
 * which the GPU makes its own compact ones). Under the lock of the page's
 * session. */
static attnd_status bounds_changed(attnd_engine *e, int32_t pg, attnd_error *err)
{
    if (!e->gpu) {
        attnd_kernel_kv_bounds8_make(&e->layout, e->bounds, e->bounds8, e->pool.n_pages, pg);
        return ATTND_OK;
    }
    e->bounds8_stale[pg] = 1;
    return attnd__gpu_bounds_upload(e->gpu, e->bounds, pg, err);
}

void attnd__sparse_bounds8_fresh(attnd_engine *e, const int32_t *pages, int64_t n)
{
    if (!e->bounds8_stale)
        return;
    for (int64_t i = 0; i < n; i++) {
        const int32_t pg = pages[i];
        if (e->bounds8_stale[pg]) {
            attnd_kernel_kv_bounds8_make(&e->layout, e->bounds, e->bounds8, e->pool.n_pages, pg);
            e->bounds8_stale[pg] = 0;
        }
    }
}

/* Fold cnt entries at slot of page pg into the host's bounds. */
static void fold_host(attnd_engine *e, int32_t pg, uint64_t slot, uint64_t cnt, attnd_dtype dtype,
                      const char *src)
{
    if (slot == 0)
        attnd_kernel_kv_bounds_reset(&e->layout, e->bounds, e->pool.n_pages, pg);
    attnd_kernel_kv_bounds_add(&e->layout, e->bounds, e->pool.n_pages, pg, (int32_t)cnt, dtype,
                               src);
}

attnd_status attnd__sparse_note_write(attnd_engine *e, attnd__session *s, int32_t layer,
                                      uint64_t t0, uint64_t n, attnd_dtype dtype,
                                      const void *kv, attnd_error *err)
{
    if (!s->sparse || !s->sparse->bounds[layer])
        return ATTND_OK;
    const uint64_t ps = (uint64_t)e->layout.page_size;
    const size_t src_bytes = (size_t)e->entry_elems * attnd_dtype_size(dtype);
    const char *src = kv;
    for (uint64_t t = t0, end = t0 + n; t < end;) {
        uint64_t slot = t % ps, cnt = end - t < ps - slot ? end - t : ps - slot;
        int32_t pg = s->pages[layer][t / ps];
        fold_host(e, pg, slot, cnt, dtype, src);
        attnd_status st = bounds_changed(e, pg, err);
        if (st)
            return st;
        src += cnt * src_bytes;
        t += cnt;
    }
    return ATTND_OK;
}

attnd_status attnd__sparse_note_gpu(attnd_engine *e, attnd__session *s, int32_t layer,
                                    uint64_t t0, uint64_t n, attnd_error *err)
{
    if (!s->sparse || !s->sparse->bounds[layer])
        return ATTND_OK;
    const uint64_t ps = (uint64_t)e->layout.page_size;
    for (uint64_t t = t0, end = t0 + n; t < end;) {
        uint64_t slot = t % ps, cnt = end - t < ps - slot ? end - t : ps - slot;
        attnd_status st = attnd__gpu_bounds_fold(e->gpu, s->pages[layer][t / ps], (int32_t)slot,
                                                 (int32_t)cnt, err);
        if (st)
            return st;
        t += cnt;
    }
    return ATTND_OK;
}

void attnd__sparse_note_host(attnd_engine *e, attnd__session *s, int32_t layer, uint64_t t0,
                             uint64_t n, attnd_dtype dtype, const void *kv)
{
    if (!s->sparse || !s->sparse->bounds[layer])
        return;
    const uint64_t ps = (uint64_t)e->layout.page_size;
    const size_t src_bytes = (size_t)e->entry_elems * attnd_dtype_size(dtype);
    const char *src = kv;
    for (uint64_t t = t0, end = t0 + n; t < end;) {
        uint64_t slot = t % ps, cnt = end - t < ps - slot ? end - t : ps - slot;
        const int32_t pg = s->pages[layer][t / ps];
        fold_host(e, pg, slot, cnt, dtype, src);
        e->bounds8_stale[pg] = 1; /* the host's compact rows, made when next read */
        src += cnt * src_bytes;
        t += cnt;
    }
}

void attnd__sparse_evict(attnd_engine *e, attnd__session *s, int32_t layer)
{
    attnd__sparse *sp = s->sparse;
    if (!sp || !sp->evict[layer])
        return;
    const int64_t ps = e->layout.page_size, len = (int64_t)s->len[layer];
    const int32_t sink_pages = attnd__sparse_sink_pages(sp->sink[layer], (int32_t)ps);
    /* the window's first page, and never the tail page (appends go on
     * filling it) */
    int64_t end = len > (int64_t)sp->window[layer] ? (len - sp->window[layer]) / ps : 0;
    if (end > len / ps)
        end = len / ps;
    int64_t start = sp->hole_end[layer] > sink_pages ? sp->hole_end[layer] : sink_pages;
    if (end <= start)
        return;
    int32_t n = (int32_t)(end - start);
    /* the part of the layer's reservation these pages had redeemed */
    int64_t res = sp->res[layer];
    int64_t held = (len + ps - 1) / ps - attnd__sparse_holes(sp, layer, (int32_t)ps);
    int64_t d = (held < res ? held : res) - (held - n < res ? held - n : res);
    attnd_kv_pool_unalloc(&e->pool, s->pages[layer] + start, n, (int32_t)d);
    /* the owner gets them back too (its quota follows the session's pages) */
    attnd__owner_refund(s->owner, 0, 0, n, d);
    if (s->slots) {
        /* a tier below: the layer was just appended to, so it is in memory;
         * a durable engine keeps copies of resident full pages below (a
         * checkpoint wrote them): they go too, once the next checkpoint no
         * longer names them */
        ATTND_ASSERT(s->where[layer] == ATTND__LAYER_RESIDENT);
        for (int64_t j = start; j < end; j++)
            if (s->slots[layer][j] >= 0) {
                attnd__tier_slot_release(e->tier, s->slots[layer][j]);
                s->slots[layer][j] = -1;
            }
    }
    for (int64_t j = start; j < end; j++)
        s->pages[layer][j] = -1;
    s->reserved_left += d;
    s->pages_held -= n;
    sp->hole_end[layer] = (int32_t)end;
    atomic_fetch_add(&e->pages_evicted, (uint64_t)n);
}

attnd_status attnd__sparse_bounds_rebuild(attnd_engine *e, const attnd__session *s,
                                          int32_t layer, int32_t j, attnd_error *err)
{
    const attnd_kernel_kv_layout *l = &e->layout;
    const uint64_t ps = (uint64_t)l->page_size, at = (uint64_t)j * ps;
    const int32_t page = s->pages[layer][j];
    const size_t ds = attnd_dtype_size(l->dtype), kb = (size_t)l->d_k * ds;
    attnd_status st = ATTND_OK;

    ATTND_ASSERT(page >= 0 && at < s->len[layer]);
    int32_t n = (int32_t)(s->len[layer] - at < ps ? s->len[layer] - at : ps);
    /* the page as stored, and its tokens' keys in wire form (keys lead an
     * entry: [Hkv][d_k]) */
    char *copy = e->gpu ? malloc(e->pool.page_bytes) : NULL;
    char *wire = malloc((size_t)n * e->entry_bytes);
    if (!wire || (e->gpu && !copy)) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "kv: no memory to rebuild a page's key bounds");
        goto out;
    }
    const char *src = copy;
    if (e->gpu) {
        if ((st = attnd__engine_page_out(e, page, copy, err)))
            goto out;
    } else {
        src = attnd_kv_pool_page(&e->pool, page);
    }
    for (int32_t t = 0; t < n; t++)
        for (int32_t h = 0; h < l->n_kv_heads; h++)
            memcpy(wire + (size_t)t * e->entry_bytes + (size_t)h * kb,
                   src + (size_t)(h * l->k_head_stride + t * l->k_token_stride) * ds, kb);
    attnd_kernel_kv_bounds_reset(l, e->bounds, e->pool.n_pages, page);
    attnd_kernel_kv_bounds_add(l, e->bounds, e->pool.n_pages, page, n, l->dtype, wire);
    st = bounds_changed(e, page, err);
out:
    free(wire);
    free(copy);
    return st;
}

void attnd__sparse_free_layer(attnd_kv_pool *pool, attnd__session *s, int32_t layer, int32_t n)
{
    const attnd__sparse *sp = s->sparse;
    int32_t holes = sp ? attnd__sparse_holes(sp, layer, s->page_size) : 0;
    if (holes == 0) {
        attnd_kv_pool_free(pool, s->pages[layer], n);
        return;
    }
    int32_t sink_pages = sp->hole_end[layer] - holes;
    attnd_kv_pool_free(pool, s->pages[layer], sink_pages < n ? sink_pages : n);
    if (n > sp->hole_end[layer])
        attnd_kv_pool_free(pool, s->pages[layer] + sp->hole_end[layer], n - sp->hole_end[layer]);
}

void attnd__sparse_bounds_out(attnd_engine *e, const attnd__session *s, int32_t layer,
                              int32_t page, int64_t slot)
{
    if (!s->sparse || !s->sparse->bounds[layer])
        return;
    /* the tier's array is slot-major: [n_slots][Hkv][2][d_k] */
    const attnd_kernel_kv_layout *l = &e->layout;
    const size_t row = 2 * (size_t)l->d_k;
    uint16_t *dst = e->tier->bounds + (size_t)slot * attnd_kernel_kv_bounds_elems(l);
    for (int32_t h = 0; h < l->n_kv_heads; h++)
        memcpy(dst + (size_t)h * row,
               e->bounds + attnd_kernel_kv_bounds_at(l, e->pool.n_pages, h, page),
               row * sizeof(uint16_t));
}

attnd_status attnd__sparse_bounds_in(attnd_engine *e, const attnd__session *s, int32_t layer,
                                     int64_t slot, int32_t page, attnd_error *err)
{
    if (!s->sparse || !s->sparse->bounds[layer])
        return ATTND_OK;
    const attnd_kernel_kv_layout *l = &e->layout;
    const size_t row = 2 * (size_t)l->d_k;
    const uint16_t *src = e->tier->bounds + (size_t)slot * attnd_kernel_kv_bounds_elems(l);
    for (int32_t h = 0; h < l->n_kv_heads; h++)
        memcpy(e->bounds + attnd_kernel_kv_bounds_at(l, e->pool.n_pages, h, page),
               src + (size_t)h * row, row * sizeof(uint16_t));
    return bounds_changed(e, page, err);
}
