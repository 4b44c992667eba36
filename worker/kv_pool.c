/* The paged KV pool: fixed-size pages carved from one anonymous mapping,
 * and the logical-page account over every tier (worker_int.h).
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

void *attnd__map_anon(size_t bytes, int huge)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    if (huge)
        madvise(p, bytes, MADV_HUGEPAGE); /* a hint; fine if refused */
    return p;
}

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
    if (!(p->base = attnd__map_anon(p->map_bytes, 1)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv_memory: cannot map %zu bytes: %s", p->map_bytes,
                               strerror(errno));
    p->free_stack = malloc(sizeof(int32_t) * (size_t)n_pages);
    p->state = calloc((size_t)n_pages, 1);
    if (!p->free_stack || !p->state)
        goto err_alloc;
    /* pop order 0, 1, 2...: low pages first, so memory is touched in order */
    for (int32_t i = 0; i < n_pages; i++)
        p->free_stack[i] = n_pages - 1 - i;
    p->n_free = n_pages;
    p->cap = n_pages;
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
    p->cap = n_pages;
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

/* The figures of a refusal: what the tiers hold. Caller holds p->mu. */
static void tiers_msg(const attnd_kv_pool *p, char *buf, size_t n)
{
    if (p->cap == p->n_pages && !p->below)
        snprintf(buf, n, "a pool of %d pages of %zu bytes in memory", p->n_pages,
                 p->page_bytes);
    else if (p->cap == p->below)
        snprintf(buf, n, "%lld pages of %zu bytes held of %lld (durable: every page has a "
                 "home on the disk tier; %d of them fit in memory)",
                 (long long)p->held, p->page_bytes, (long long)p->cap, p->n_pages);
    else
        snprintf(buf, n, "%lld pages of %zu bytes held of %lld: %d in memory + %lld in the "
                 "tier below",
                 (long long)p->held, p->page_bytes, (long long)p->cap, p->n_pages,
                 (long long)p->below);
}

attnd_status attnd_kv_pool_reserve(attnd_kv_pool *p, int64_t n, attnd_error *err)
{
    attnd_status st = ATTND_OK;
    char figs[192];
    pthread_mutex_lock(&p->mu);
    int64_t left = p->cap - p->held - p->reserved;
    if (n > left) {
        tiers_msg(p, figs, sizeof figs);
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "max_tokens: needs %lld KV pages, only %lld free and unreserved "
                             "(%s, %lld reserved)",
                             (long long)n, (long long)(left > 0 ? left : 0), figs,
                             (long long)p->reserved);
    } else {
        p->reserved += n;
    }
    pthread_mutex_unlock(&p->mu);
    return st;
}

void attnd_kv_pool_unreserve(attnd_kv_pool *p, int64_t n)
{
    pthread_mutex_lock(&p->mu);
    p->reserved -= n;
    ATTND_ASSERT(p->reserved >= 0);
    pthread_mutex_unlock(&p->mu);
}

/* Pop n free memory pages. Caller holds p->mu and checked n <= n_free. */
static void pop_pages(attnd_kv_pool *p, int32_t n, int32_t *pages_out)
{
    ATTND_ASSERT(n <= p->n_free);
    for (int32_t i = 0; i < n; i++) {
        int32_t pg = p->free_stack[--p->n_free];
        ATTND_ASSERT(p->state[pg] == ATTND_PAGE_FREE);
        p->state[pg] = ATTND_PAGE_RESIDENT;
        pages_out[i] = pg;
    }
}

/* Push n memory pages back. Caller holds p->mu. */
static void push_pages(attnd_kv_pool *p, const int32_t *pages, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        /* a page freed twice would be handed to two sessions */
        ATTND_ASSERT(pages[i] >= 0 && pages[i] < p->n_pages);
        ATTND_ASSERT(p->state[pages[i]] != ATTND_PAGE_FREE);
        p->state[pages[i]] = ATTND_PAGE_FREE;
        p->free_stack[p->n_free++] = pages[i];
    }
}

attnd_status attnd_kv_pool_alloc(attnd_kv_pool *p, int32_t n,
                                 int32_t from_reserved, int32_t *pages_out,
                                 attnd_error *err)
{
    attnd_status st = ATTND_OK;
    char figs[192];
    pthread_mutex_lock(&p->mu);
    int64_t unpromised = p->cap - p->held - p->reserved;
    if ((int64_t)(n - from_reserved) > unpromised) {
        tiers_msg(p, figs, sizeof figs);
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "kv: KV memory exhausted in every tier: needs %d pages, %lld free "
                             "and unreserved (%s, %lld reserved)",
                             n - from_reserved, (long long)(unpromised > 0 ? unpromised : 0),
                             figs, (long long)p->reserved);
        goto out;
    }
    if (n > p->n_free) {
        st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                             "kv: needs %d memory pages now, %d free", n, p->n_free);
        goto out;
    }
    ATTND_ASSERT(from_reserved <= p->reserved);
    pop_pages(p, n, pages_out);
    p->held += n;
    p->reserved -= from_reserved;
out:
    pthread_mutex_unlock(&p->mu);
    return st;
}

void attnd_kv_pool_free(attnd_kv_pool *p, const int32_t *pages, int32_t n)
{
    pthread_mutex_lock(&p->mu);
    push_pages(p, pages, n);
    p->held -= n;
    ATTND_ASSERT(p->held >= 0);
    pthread_mutex_unlock(&p->mu);
}

/* An allocation undone: held + reserved never grows here (to_reserved <=
 * n). It need not be within cap: a full disk lowers cap below what is
 * already held and reserved (attnd_kv_pool_set_cap), and the alloc being
 * undone may have come before that. */
void attnd_kv_pool_unalloc(attnd_kv_pool *p, const int32_t *pages, int32_t n,
                           int32_t to_reserved)
{
    pthread_mutex_lock(&p->mu);
    ATTND_ASSERT(to_reserved >= 0 && to_reserved <= n);
    push_pages(p, pages, n);
    p->held -= n;
    p->reserved += to_reserved;
    ATTND_ASSERT(p->held >= 0);
    pthread_mutex_unlock(&p->mu);
}

attnd_status attnd_kv_pool_take(attnd_kv_pool *p, int32_t n, int32_t *pages_out)
{
    attnd_status st = ATTND_OK;
    pthread_mutex_lock(&p->mu);
    if (n > p->n_free)
        st = ATTND_ERR_UNAVAILABLE;
    else
        pop_pages(p, n, pages_out);
    pthread_mutex_unlock(&p->mu);
    return st;
}

int32_t attnd_kv_pool_take_upto(attnd_kv_pool *p, int32_t n, int32_t *pages_out)
{
    pthread_mutex_lock(&p->mu);
    if (n > p->n_free)
        n = p->n_free;
    pop_pages(p, n, pages_out);
    pthread_mutex_unlock(&p->mu);
    return n;
}

void attnd_kv_pool_put(attnd_kv_pool *p, const int32_t *pages, int32_t n)
{
    pthread_mutex_lock(&p->mu);
    push_pages(p, pages, n);
    pthread_mutex_unlock(&p->mu);
}

void attnd_kv_pool_forget(attnd_kv_pool *p, int64_t n, int64_t to_reserved)
{
    pthread_mutex_lock(&p->mu);
    p->held -= n;
    p->reserved += to_reserved;
    ATTND_ASSERT(p->held >= 0);
    pthread_mutex_unlock(&p->mu);
}

void attnd_kv_pool_hold(attnd_kv_pool *p, int64_t n)
{
    pthread_mutex_lock(&p->mu);
    p->held += n;
    pthread_mutex_unlock(&p->mu);
}

void attnd_kv_pool_set_cap(attnd_kv_pool *p, int64_t cap, int64_t below)
{
    pthread_mutex_lock(&p->mu);
    p->cap = cap;
    p->below = below;
    pthread_mutex_unlock(&p->mu);
}

void attnd_kv_pool_counts(attnd_kv_pool *p, int64_t *used_p, int64_t *reserved_p)
{
    pthread_mutex_lock(&p->mu);
    *used_p = p->n_pages - p->n_free;
    *reserved_p = p->reserved;
    pthread_mutex_unlock(&p->mu);
}

void attnd_kv_pool_logical(attnd_kv_pool *p, int64_t *held_p, int64_t *cap_p)
{
    pthread_mutex_lock(&p->mu);
    *held_p = p->held;
    *cap_p = p->cap;
    pthread_mutex_unlock(&p->mu);
}
