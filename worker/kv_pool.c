/* The paged KV pool: fixed-size pages carved from one anonymous mapping.
 *
 * The mapping is made once at start-up (kv_memory bytes, rounded down to
 * whole pages) and asked for transparent huge pages, so the kernels stream
 * KV with few TLB misses; its memory is committed as pages are first
 * written (or by attnd_kv_pool_prefault_start's background thread, ahead
 * of the appends). Allocation is a pop from a free stack under one mutex: a decode
 * step takes at most one page per session per layer, so the lock is cold. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "attnd_assert.h"
#include "worker_int.h"

attnd_status attnd_kv_pool_init(attnd_kv_pool *p, size_t page_bytes,
                                int32_t n_pages, attnd_error *err)
{
    memset(p, 0, sizeof *p);
    if (n_pages < 1 || page_bytes == 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "kv_memory: room for %d pages of %zu bytes; need at least 1",
                               n_pages, page_bytes);
    p->page_bytes = page_bytes;
    p->n_pages = n_pages;
    p->map_bytes = page_bytes * (size_t)n_pages;
    p->base = mmap(NULL, p->map_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p->base == MAP_FAILED) {
        p->base = NULL;
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv_memory: cannot map %zu bytes: %s", p->map_bytes,
                               strerror(errno));
    }
    madvise(p->base, p->map_bytes, MADV_HUGEPAGE); /* a hint; fine if refused */
    p->free_stack = malloc(sizeof(int32_t) * (size_t)n_pages);
    p->state = calloc((size_t)n_pages, 1);
    if (!p->free_stack || !p->state)
        goto err_alloc;
    /* pop order 0, 1, 2...: low pages first, so memory is touched in order */
    for (int32_t i = 0; i < n_pages; i++)
        p->free_stack[i] = n_pages - 1 - i;
    p->n_free = n_pages;
    pthread_mutex_init(&p->mu, NULL);
    return ATTND_OK;

err_alloc:
    free(p->free_stack);
    free(p->state);
    munmap(p->base, p->map_bytes);
    memset(p, 0, sizeof *p);
    return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                           "kv_memory: no memory for the page table of %d pages", n_pages);
}

attnd_status attnd_kv_pool_init_meta(attnd_kv_pool *p, size_t page_bytes, int32_t n_pages,
                                     attnd_error *err)
{
    memset(p, 0, sizeof *p);
    if (n_pages < 1 || page_bytes == 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "kv_memory: room for %d pages of %zu bytes; need at least 1",
                               n_pages, page_bytes);
    p->page_bytes = page_bytes;
    p->n_pages = n_pages;
    p->free_stack = malloc(sizeof(int32_t) * (size_t)n_pages);
    p->state = calloc((size_t)n_pages, 1);
    if (!p->free_stack || !p->state) {
        free(p->free_stack);
        free(p->state);
        memset(p, 0, sizeof *p);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv_memory: no memory for the page table of %d pages", n_pages);
    }
    for (int32_t i = 0; i < n_pages; i++)
        p->free_stack[i] = n_pages - 1 - i;
    p->n_free = n_pages;
    pthread_mutex_init(&p->mu, NULL);
    return ATTND_OK;
}

/* Populate in 2 MiB steps (one huge page), so a stop waits for one step. */
#define PREFAULT_STEP ((size_t)2 << 20)

static void *prefault_main(void *arg)
{
    attnd_kv_pool *p = arg;
#ifdef MADV_POPULATE_WRITE
    /* normal priority on purpose: an append that faults on the huge page
     * this thread is populating waits for it (niced, it stalled appends
     * for seconds on a loaded host) */
    for (size_t off = 0; off < p->map_bytes && !atomic_load(&p->prefault_stop);
         off += PREFAULT_STEP) {
        size_t n = p->map_bytes - off < PREFAULT_STEP ? p->map_bytes - off : PREFAULT_STEP;
        if (madvise(p->base + off, n, MADV_POPULATE_WRITE) != 0)
            break; /* an old kernel (EINVAL) or no memory: leave the rest lazy */
    }
#else
    (void)p;
#endif
    return NULL;
}

void attnd_kv_pool_prefault_start(attnd_kv_pool *p)
{
    long avail = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (!p->base || p->prefault_running || avail <= 0 || psz <= 0 ||
        (double)p->map_bytes > 0.8 * (double)avail * (double)psz)
        return;
    atomic_store(&p->prefault_stop, 0);
    if (pthread_create(&p->prefault_tid, NULL, prefault_main, p) == 0)
        p->prefault_running = 1;
}

void attnd_kv_pool_cleanup(attnd_kv_pool *p)
{
    if (!p->free_stack)
        return;
    if (p->prefault_running) {
        atomic_store(&p->prefault_stop, 1);
        pthread_join(p->prefault_tid, NULL);
        p->prefault_running = 0;
    }
    if (p->base)
        munmap(p->base, p->map_bytes);
    free(p->free_stack);
    free(p->state);
    pthread_mutex_destroy(&p->mu);
    memset(p, 0, sizeof *p);
}

attnd_status attnd_kv_pool_reserve(attnd_kv_pool *p, int64_t n, attnd_error *err)
{
    attnd_status st = ATTND_OK;
    pthread_mutex_lock(&p->mu);
    if (n > (int64_t)p->n_free - p->reserved)
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "max_tokens: needs %lld KV pages, only %lld free and unreserved",
                             (long long)n, (long long)(p->n_free - p->reserved));
    else
        p->reserved += n;
    pthread_mutex_unlock(&p->mu);
    return st;
}

void attnd_kv_pool_unreserve(attnd_kv_pool *p, int64_t n)
{
    pthread_mutex_lock(&p->mu);
    p->reserved -= n;
    pthread_mutex_unlock(&p->mu);
}

attnd_status attnd_kv_pool_alloc(attnd_kv_pool *p, int32_t n,
                                 int32_t from_reserved, int32_t *pages_out,
                                 attnd_error *err)
{
    attnd_status st = ATTND_OK;
    pthread_mutex_lock(&p->mu);
    int64_t unpromised = (int64_t)p->n_free - p->reserved;
    if ((int64_t)(n - from_reserved) > unpromised) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "kv: KV memory exhausted: needs %d pages, %lld free and unreserved",
                             n - from_reserved, (long long)(unpromised > 0 ? unpromised : 0));
        goto out;
    }
    ATTND_ASSERT(n <= (int32_t)p->n_free && from_reserved <= p->reserved);
    for (int32_t i = 0; i < n; i++) {
        int32_t pg = p->free_stack[--p->n_free];
        ATTND_ASSERT(p->state[pg] == ATTND_PAGE_FREE);
        p->state[pg] = ATTND_PAGE_RESIDENT;
        pages_out[i] = pg;
    }
    p->reserved -= from_reserved;
out:
    pthread_mutex_unlock(&p->mu);
    return st;
}

void attnd_kv_pool_free(attnd_kv_pool *p, const int32_t *pages, int32_t n)
{
    pthread_mutex_lock(&p->mu);
    for (int32_t i = 0; i < n; i++) {
        /* a page freed twice would be handed to two sessions */
        ATTND_ASSERT(pages[i] >= 0 && pages[i] < p->n_pages);
        ATTND_ASSERT(p->state[pages[i]] != ATTND_PAGE_FREE);
        p->state[pages[i]] = ATTND_PAGE_FREE;
        p->free_stack[p->n_free++] = pages[i];
    }
    pthread_mutex_unlock(&p->mu);
}

void attnd_kv_pool_unalloc(attnd_kv_pool *p, const int32_t *pages, int32_t n,
                           int32_t to_reserved)
{
    pthread_mutex_lock(&p->mu);
    for (int32_t i = 0; i < n; i++) {
        /* a page freed twice would be handed to two sessions */
        ATTND_ASSERT(pages[i] >= 0 && pages[i] < p->n_pages);
        ATTND_ASSERT(p->state[pages[i]] != ATTND_PAGE_FREE);
        p->state[pages[i]] = ATTND_PAGE_FREE;
        p->free_stack[p->n_free++] = pages[i];
    }
    p->reserved += to_reserved;
    ATTND_ASSERT(p->reserved <= (int64_t)p->n_free);
    pthread_mutex_unlock(&p->mu);
}

void attnd_kv_pool_counts(attnd_kv_pool *p, int64_t *used_p, int64_t *reserved_p)
{
    pthread_mutex_lock(&p->mu);
    *used_p = p->n_pages - p->n_free;
    *reserved_p = p->reserved;
    pthread_mutex_unlock(&p->mu);
}
