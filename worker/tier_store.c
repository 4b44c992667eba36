/* The store below memory: slots of one page each, in a file on local disk
 * (DIR/kv.pages) or, below a GPU's HBM, in host RAM, and its slot
 * allocator. Moving pages in and out of slots: tier_io.c.
 *
 * File: slot k is bytes [k * slot_bytes, (k + 1) * slot_bytes) of
 * kv.pages (format in tier_int.h and TIERS.md). The file is opened with
 * O_DIRECT when the filesystem takes it (a 4 KiB read at open tells;
 * tmpfs does not), so spilled pages do not crowd the page cache; else
 * buffered. It is fallocated ahead of the writes (tier_io.c), so a full
 * disk or a file size limit shows as a failed fallocate or write: that
 * slot and every one past it are no longer handed out
 * (attnd__tier_slots_full), which shrinks the logical capacity, and the
 * call that needed room gets RESOURCE_EXHAUSTED.
 *
 * Chain (tier_int.h): the file's slots, then a band of slots in host RAM
 * with a free list of its own; allocation takes the band's slots first
 * (an eviction lands in host RAM), the file's once the band is empty, and
 * the mover drains the band to the file (attnd__tier_demote, tier_demote.c).
 *
 * Allocator: a free list and two pending lists threaded through one link
 * array (4 bytes a slot), plus never-used slots from next_new up. Without
 * durability a released slot is free at once. With it, a slot the last
 * checkpoint names must survive until a newer checkpoint no longer does:
 * released slots wait on the current pending list, and a checkpoint swaps
 * lists before it looks at the sessions and frees the old list once it is
 * durable (ckpt.c). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "attnd_assert.h"
#include "attnd_log.h"
#include "tier_int.h"

#define N_TIO 4

static size_t round_up(size_t x, size_t a)
{
    return (x + a - 1) / a * a;
}

/* ---- slots ------------------------------------------------------------------ */

static void update_cap(attnd__tier *t)
{
    attnd_kv_pool *p = &t->e->pool;
    attnd_kv_pool_set_cap(p, t->keep ? t->limit : (int64_t)p->n_pages + t->limit + t->n_host,
                          t->limit + t->n_host);
}

/* Free slots of the host band / of the file (caller holds slot_mu). */
static int64_t host_avail(const attnd__tier *t)
{
    return t->hn_free + (t->n_host - t->h_next_new);
}

static int64_t file_avail(const attnd__tier *t)
{
    return t->n_free_slots + (t->limit - t->next_new);
}

/* One free slot of the file, LIVE now (caller holds slot_mu; one is free). */
static int64_t take_file(attnd__tier *t)
{
    int64_t s;
    if (t->free_head >= 0) {
        s = t->free_head;
        t->free_head = t->link[s];
        t->n_free_slots--;
    } else {
        s = t->next_new++;
    }
    ATTND_ASSERT(s < t->limit && t->state[s] == ATTND__SLOT_FREE);
    t->state[s] = ATTND__SLOT_LIVE;
    t->used++;
    return s;
}

/* The same from the host band. */
static int64_t take_host(attnd__tier *t)
{
    int64_t s;
    if (t->hfree_head >= 0) {
        s = t->hfree_head;
        t->hfree_head = t->link[s];
        t->hn_free--;
    } else {
        s = t->n_slots + t->h_next_new++;
    }
    ATTND_ASSERT(s >= t->n_slots && s < t->n_slots + t->n_host &&
                 t->state[s] == ATTND__SLOT_FREE);
    t->state[s] = ATTND__SLOT_LIVE;
    t->used++;
    return s;
}

attnd_status attnd__tier_slots_alloc(attnd__tier *t, int64_t n, int64_t *out, attnd_error *err)
{
    attnd_status st = ATTND_OK;
    pthread_mutex_lock(&t->slot_mu);
    int64_t avail = file_avail(t), hav = host_avail(t);
    if (n > avail + hav) {
        char band[96] = "";
        if (t->n_host)
            snprintf(band, sizeof band, " and %lld free of the %lld in host RAM above it",
                     (long long)hav, (long long)t->n_host);
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "kv-disk: needs %lld slots of %zu bytes, %lld free of %lld "
                             "(%lld waiting for a checkpoint)%s%s%s",
                             (long long)n, t->slot_bytes, (long long)avail, (long long)t->limit,
                             (long long)(t->n_pend[0] + t->n_pend[1]), band,
                             t->full_msg[0] ? "; " : "", t->full_msg);
        goto out;
    }
    for (int64_t i = 0; i < n; i++) /* host RAM first: the chain's upper band */
        out[i] = host_avail(t) > 0 ? take_host(t) : take_file(t);
out:
    pthread_mutex_unlock(&t->slot_mu);
    return st;
}

int64_t attnd__tier_file_slots_take(attnd__tier *t, int64_t n, int64_t *out)
{
    int64_t k = 0;
    pthread_mutex_lock(&t->slot_mu);
    for (; k < n && file_avail(t) > 0; k++)
        out[k] = take_file(t);
    pthread_mutex_unlock(&t->slot_mu);
    return k;
}

int64_t attnd__tier_host_free(attnd__tier *t)
{
    if (!t->n_host)
        return 0;
    pthread_mutex_lock(&t->slot_mu);
    int64_t n = host_avail(t);
    pthread_mutex_unlock(&t->slot_mu);
    return n;
}

int64_t attnd__tier_slots_take(attnd__tier *t, int64_t n, int64_t *out)
{
    pthread_mutex_lock(&t->slot_mu);
    int64_t avail = file_avail(t) + host_avail(t);
    pthread_mutex_unlock(&t->slot_mu);
    if (n > avail)
        n = avail;
    attnd_error err;
    /* (another thread may take some meanwhile: then fewer) */
    while (n > 0 && attnd__tier_slots_alloc(t, n, out, &err))
        n /= 2;
    return n;
}

/* Caller holds slot_mu. A slot past a lowered limit is never handed out
 * again: it leaves the lists. */
static void slot_free(attnd__tier *t, int32_t s)
{
    t->state[s] = ATTND__SLOT_FREE;
    t->used--;
    if (s >= t->n_slots) { /* the chain's host band */
        t->link[s] = t->hfree_head;
        t->hfree_head = s;
        t->hn_free++;
        return;
    }
    if (s >= t->limit)
        return;
    t->link[s] = t->free_head;
    t->free_head = s;
    t->n_free_slots++;
}

void attnd__tier_slot_release(attnd__tier *t, int64_t slot)
{
    pthread_mutex_lock(&t->slot_mu);
    ATTND_ASSERT(slot >= 0 && slot < t->n_slots + t->n_host &&
                 t->state[slot] == ATTND__SLOT_LIVE);
    ATTND_ASSERT(!t->keep || slot < t->n_slots); /* a chain is never durable */
    if (t->keep) {
        int g = t->cur_pend;
        t->state[slot] = ATTND__SLOT_PENDING;
        t->link[slot] = t->pend_head[g];
        t->pend_head[g] = (int32_t)slot;
        t->n_pend[g]++;
    } else {
        slot_free(t, (int32_t)slot);
    }
    pthread_mutex_unlock(&t->slot_mu);
}

void attnd__tier_slot_claim(attnd__tier *t, int64_t slot, uint32_t crc)
{
    pthread_mutex_lock(&t->slot_mu);
    /* recovery claims before anything is allocated (then settles) */
    ATTND_ASSERT(t->free_head < 0);
    ATTND_ASSERT(slot >= 0 && slot < t->n_slots && t->state[slot] == ATTND__SLOT_FREE);
    t->state[slot] = ATTND__SLOT_LIVE;
    t->used++;
    t->crc[slot] = crc;
    if (slot >= t->next_new)
        t->next_new = slot + 1;
    pthread_mutex_unlock(&t->slot_mu);
}

void attnd__tier_slots_settle(attnd__tier *t)
{
    pthread_mutex_lock(&t->slot_mu);
    for (int64_t s = t->next_new; s-- > 0;)
        if (t->state[s] == ATTND__SLOT_FREE) {
            t->link[s] = t->free_head;
            t->free_head = (int32_t)s;
            t->n_free_slots++;
        }
    pthread_mutex_unlock(&t->slot_mu);
}

void attnd__tier_pending_swap(attnd__tier *t, int *gen_p)
{
    pthread_mutex_lock(&t->slot_mu);
    *gen_p = t->cur_pend;
    t->cur_pend ^= 1;
    pthread_mutex_unlock(&t->slot_mu);
}

void attnd__tier_pending_free(attnd__tier *t, int gen)
{
    pthread_mutex_lock(&t->slot_mu);
    for (int32_t s = t->pend_head[gen], next; s >= 0; s = next) {
        next = t->link[s];
        ATTND_ASSERT(t->state[s] == ATTND__SLOT_PENDING);
        slot_free(t, s);
    }
    t->pend_head[gen] = -1;
    t->n_pend[gen] = 0;
    pthread_mutex_unlock(&t->slot_mu);
}

void attnd__tier_slots_full(attnd__tier *t, int64_t slot, int res)
{
    pthread_mutex_lock(&t->slot_mu);
    if (slot < t->limit) {
        t->limit = slot;
        if (t->next_new > slot)
            t->next_new = slot;
        /* free slots past it leave the free list */
        for (int32_t *pp = &t->free_head; *pp >= 0;)
            if (*pp >= slot) {
                *pp = t->link[*pp];
                t->n_free_slots--;
            } else {
                pp = &t->link[*pp];
            }
        snprintf(t->full_msg, sizeof t->full_msg,
                 "writing slot %lld of %.80s failed (%s): the tier below now holds at most %lld "
                 "slots", (long long)slot, t->kind == ATTND__STORE_DISK ? t->path : "host RAM",
                 strerror(-res), (long long)slot);
        attnd_log_warn("tier", "kv-disk: %s", t->full_msg);
        update_cap(t);
    }
    pthread_mutex_unlock(&t->slot_mu);
}

void attnd__tier_slot_counts(attnd__tier *t, int64_t *used_p, int64_t *limit_p)
{
    pthread_mutex_lock(&t->slot_mu);
    *used_p = t->used;
    *limit_p = t->limit + t->n_host;
    pthread_mutex_unlock(&t->slot_mu);
}

/* ---- create / destroy -------------------------------------------------------- */

/* Open DIR/kv.pages, O_DIRECT if a 4 KiB read through it works. */
static attnd_status open_file(attnd__tier *t, int truncate, attnd_error *err)
{
    int flags = O_RDWR | O_CREAT | O_CLOEXEC;
    snprintf(t->path, sizeof t->path, "%s/kv.pages", t->dir);
    t->fd = open(t->path, flags | O_DIRECT, 0644);
    t->direct = t->fd >= 0;
    if (t->fd >= 0) {
        void *probe = aligned_alloc(4096, 4096);
        if (probe && pread(t->fd, probe, 4096, 0) < 0 && errno == EINVAL) {
            close(t->fd);
            t->fd = -1;
            t->direct = 0;
        }
        free(probe);
    }
    if (t->fd < 0)
        t->fd = open(t->path, flags, 0644);
    if (t->fd < 0)
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION, "kv-dir: cannot open %s: %s",
                               t->path, strerror(errno));
    if (truncate && ftruncate(t->fd, 0) != 0)
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                               "kv-dir: cannot truncate %s: %s", t->path, strerror(errno));
    struct stat sb;
    if (fstat(t->fd, &sb) == 0) /* a durable store's file: written already */
        t->prealloc = (uint64_t)sb.st_size;
    return ATTND_OK;
}

attnd_status attnd__tier_create(attnd_engine *e, const attnd__tier_cfg *cfg, attnd__tier **t_p,
                                attnd_error *err)
{
    attnd_status st;
    attnd__tier *t = calloc(1, sizeof *t);
    if (!t)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "kv-dir: out of memory");
    t->e = e;
    t->fd = t->lock_fd = -1;
    t->kind = cfg->kind;
    t->keep = cfg->keep_copies;
    t->page_bytes = e->pool.page_bytes;
    t->slot_bytes = ATTND__SLOT_DATA + round_up(t->page_bytes, 4096);
    t->depth = cfg->depth > 0 ? cfg->depth : 32;
    t->prefetch = cfg->prefetch;
    uint64_t n = cfg->bytes / t->slot_bytes;
    uint64_t nh = cfg->kind == ATTND__STORE_CHAIN ? cfg->host_bytes / t->slot_bytes : 0;
    const char *what = cfg->kind == ATTND__STORE_HOST ? "kv-host" : "kv-disk";
    if (n < 1 || n > INT32_MAX || (cfg->kind == ATTND__STORE_CHAIN && nh < 1) ||
        n + nh > INT32_MAX) {
        int host = n >= 1 && cfg->kind == ATTND__STORE_CHAIN && nh < 1;
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                             "%s: %llu bytes make %llu slots of %zu bytes; need 1 to %d",
                             host ? "kv-host" : what,
                             (unsigned long long)(host ? cfg->host_bytes : cfg->bytes),
                             (unsigned long long)(host ? nh : n), t->slot_bytes, INT32_MAX);
        goto err_t;
    }
    t->n_slots = t->limit = (int64_t)n;
    t->n_host = (int64_t)nh;
    t->free_head = t->pend_head[0] = t->pend_head[1] = t->hfree_head = -1;
    n += nh; /* the arrays cover both bands */
    t->state = calloc((size_t)n, 1);
    t->crc = calloc((size_t)n, sizeof *t->crc);
    t->link = malloc(sizeof *t->link * (size_t)n);
    if (!t->state || !t->crc || !t->link) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "%s: no memory for the bookkeeping of %llu slots", what,
                             (unsigned long long)n);
        goto err_arrays;
    }
    /* the key bounds of the pages below (sparse_kv.c): address space only,
     * touched by topk-pages layers alone */
    t->bounds_bytes = (size_t)n * attnd_kernel_kv_bounds_elems(&e->layout) * sizeof(uint16_t);
    if (!(t->bounds = attnd__map_anon(t->bounds_bytes, 0))) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "%s: cannot map %zu bytes for the key bounds of %llu slots", what,
                             t->bounds_bytes, (unsigned long long)n);
        goto err_arrays;
    }
    pthread_mutex_init(&t->slot_mu, NULL);
    pthread_mutex_init(&t->tio_mu, NULL);
    pthread_cond_init(&t->tio_cv, NULL);
    pthread_mutex_init(&t->mv_mu, NULL);
    pthread_cond_init(&t->mv_cv, NULL);
    pthread_cond_init(&t->done_cv, NULL);
    if (cfg->kind != ATTND__STORE_HOST) {
        snprintf(t->dir, sizeof t->dir, "%s", cfg->dir);
        if ((st = open_file(t, !cfg->keep_copies, err)))
            goto err_store;
    }
    if (cfg->kind != ATTND__STORE_DISK) { /* host: every slot; chain: its band */
        size_t bytes = (size_t)(cfg->kind == ATTND__STORE_HOST ? n : nh) * t->slot_bytes;
        if (!(t->host = attnd__map_anon(bytes, 0))) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                 "kv-host: cannot map %zu bytes: %s", bytes, strerror(errno));
            goto err_store;
        }
        t->host_map = bytes;
    }
    if (!(t->tios = calloc(N_TIO, sizeof *t->tios))) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", what);
        goto err_store;
    }
    for (; t->n_tio < N_TIO; t->n_tio++) {
        if ((st = attnd__tio_init(t, &t->tios[t->n_tio], err)))
            goto err_tio;
        t->tios[t->n_tio].next = t->free_tio;
        t->free_tio = &t->tios[t->n_tio];
    }
    /* keep a few pages free for decode's appends: 1/32 of memory, at
     * least 2 */
    t->low_water = e->pool.n_pages / 32 > 2 ? e->pool.n_pages / 32 : 2;
    t->host_low = t->n_host / 32 > 2 ? (int32_t)(t->n_host / 32) : 2;
    /* direct transfers between pool pages and the file: O_DIRECT wants
     * block-aligned addresses and lengths (the CPU pool's pages only) */
    t->zero_copy = t->kind == ATTND__STORE_DISK && t->direct && !e->gpu && e->pool.base &&
                   t->page_bytes % 512 == 0 && (uintptr_t)e->pool.base % 4096 == 0;
    e->pool.tier = t;
    update_cap(t);
    *t_p = t;
    return ATTND_OK;

err_tio:
    for (int i = 0; i < t->n_tio; i++)
        attnd__tio_free(&t->tios[i]);
    free(t->tios);
err_store:
    if (t->fd >= 0)
        close(t->fd);
    if (t->host)
        munmap(t->host, t->host_map);
    pthread_mutex_destroy(&t->slot_mu);
    pthread_mutex_destroy(&t->tio_mu);
    pthread_cond_destroy(&t->tio_cv);
    pthread_mutex_destroy(&t->mv_mu);
    pthread_cond_destroy(&t->mv_cv);
    pthread_cond_destroy(&t->done_cv);
err_arrays:
    if (t->bounds)
        munmap(t->bounds, t->bounds_bytes);
    free(t->state);
    free(t->crc);
    free(t->link);
err_t:
    free(t);
    return st;
}

void attnd__tier_destroy(attnd__tier *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n_tio; i++)
        attnd__tio_free(&t->tios[i]);
    free(t->tios);
    if (t->fd >= 0)
        close(t->fd);
    if (t->lock_fd >= 0)
        close(t->lock_fd); /* releases the flock */
    if (t->host)
        munmap(t->host, t->host_map);
    pthread_mutex_destroy(&t->slot_mu);
    pthread_mutex_destroy(&t->tio_mu);
    pthread_cond_destroy(&t->tio_cv);
    pthread_mutex_destroy(&t->mv_mu);
    pthread_cond_destroy(&t->mv_cv);
    pthread_cond_destroy(&t->done_cv);
    for (attnd__tjob *j = t->spare, *next; j; j = next) {
        next = j->next;
        free(j->pages);
        free(j->page_j);
        free(j);
    }
    if (t->bounds)
        munmap(t->bounds, t->bounds_bytes);
    free(t->state);
    free(t->crc);
    free(t->link);
    free(t);
}
