/* The chain's middle step (TIERS.md, "Three levels"): pages in host RAM
 * move on to disk when host RAM runs short.
 *
 * A chain (--kv-host with --kv-dir) has one slot space in two bands: the
 * file's slots, then a band in host RAM (tier_int.h). Evictions take the
 * band's slots first, so the pages memory gives up land in host RAM; the
 * mover, when fewer than host_low of the band's slots are free, calls
 * attnd__tier_demote, which moves the pages of the least recently used
 * sessions from the band to the file: each slot is read back and checked
 * (header and CRC, as a reload checks it), written to a new file slot
 * (the same bytes under a new header), and then, under the session's
 * lock, the page's slot becomes the file slot (its topk-pages key bounds
 * copied to the file slot's place) and the band's slot is freed. Loads
 * read a page from either band straight into memory (tier_io.c), so a
 * page comes back up in one step.
 *
 * Victims are taken by trylock, as evictions take theirs: a session in
 * use is not touched; its layers being loaded (the mover reads their
 * slots without the session's lock) and layers an AppendKV stream holds
 * are skipped. A page whose band slot fails its check makes its session
 * lost (DATA_LOSS), as a failed reload does. */
#include <stdio.h>
#include <string.h>

#include "attnd_assert.h"
#include "sparse.h"
#include "tier_int.h"

/* Can page j of layer l of s move from the band now? (caller holds s->mu) */
static int in_band(const attnd__tier *t, const attnd__session *s, int32_t l, int32_t j)
{
    return s->slots[l][j] >= t->n_slots && s->pages[l][j] < 0;
}

static int layer_movable(const attnd__session *s, int32_t l)
{
    return s->where[l] != ATTND__LAYER_LOADING && !s->stager[l];
}

/* Pages of s that could move now (caller holds s->mu). */
static int64_t band_pages(const attnd__tier *t, const attnd__session *s)
{
    int64_t n = 0;
    if (s->closed || s->lost || !s->slots)
        return 0;
    for (int32_t l = 0; l < s->n_layers; l++) {
        if (!layer_movable(s, l))
            continue;
        int32_t np = attnd__session_layer_pages(s, l);
        for (int32_t j = 0; j < np; j++)
            n += in_band(t, s, l, j);
    }
    return n;
}

/* The coldest sessions with pages in the host-RAM band. */
static int collect(attnd__session *s, void *arg)
{
    attnd__tier_cold *v = arg;
    uint64_t u = atomic_load_explicit(&s->last_used, memory_order_relaxed);

    if (++v->scanned > 4096)
        return 1;
    if (atomic_load_explicit(&s->n_below, memory_order_relaxed) == 0 ||
        !attnd__tier_cold_wants(v, u) || pthread_mutex_trylock(&s->mu) != 0)
        return 0;
    int64_t n = band_pages(v->e->tier, s);
    pthread_mutex_unlock(&s->mu);
    if (n != 0)
        attnd__tier_cold_add(v, s, u);
    return 0;
}

/* Move up to want of s's band pages to the file (caller holds s->mu).
 * Returns pages moved. */
static int64_t demote_session(attnd_engine *e, attnd__tio *io, attnd__session *s, int64_t want)
{
    attnd__tier *t = e->tier;
    const int64_t ps = s->page_size;
    int64_t n = band_pages(t, s), k = 0, moved = 0;
    attnd__tio_op *ops;
    attnd_error err;

    n = n < want ? n : want;
    if (n == 0 || attnd__tio_ops(io, n, &ops, &err))
        return 0;
    for (int32_t l = 0; l < s->n_layers && k < n; l++) {
        if (!layer_movable(s, l))
            continue;
        int32_t np = attnd__session_layer_pages(s, l);
        for (int32_t j = 0; j < np && k < n; j++)
            if (in_band(t, s, l, j))
                ops[k++] = (attnd__tio_op){
                    .slot = s->slots[l][j], .mem = -1, .id = s->id, .layer = l, .page = j,
                    .tokens = (int32_t)(j + 1 < np ? ps : (int64_t)s->len[l] - (int64_t)j * ps)};
    }
    /* read back and checked, as a reload checks a slot */
    if (attnd__tio_read(io, ops, k)) {
        for (int64_t i = 0; i < k; i++)
            if (ops[i].res) {
                char why[160];
                snprintf(why, sizeof why, "KV page %d of layer %d failed its checksum in host "
                         "RAM (slot %lld) on its way to disk; its KV is lost, close it",
                         ops[i].page, ops[i].layer, (long long)ops[i].slot);
                attnd__session_lose(s, why);
                return 0;
            }
    }
    /* the same bytes into new file slots (as many as there are) */
    int64_t band[64], got = 0;
    for (int64_t i0 = 0; i0 < k; i0 += 64) {
        int64_t m = k - i0 < 64 ? k - i0 : 64, f[64];
        int64_t g = attnd__tier_file_slots_take(t, m, f);
        for (int64_t i = 0; i < g; i++) {
            attnd__tio_op *op = &ops[i0 + i];
            band[i] = op->slot;
            op->src = attnd__tier_host_slot(t, op->slot) + ATTND__SLOT_DATA;
            op->slot = f[i];
        }
        got = g;
        attnd__tio_write(io, ops + i0, g);
        for (int64_t i = 0; i < g; i++) {
            attnd__tio_op *op = &ops[i0 + i];
            if (op->res) {
                attnd__tier_slot_release(t, op->slot);
                continue;
            }
            if (s->sparse && s->sparse->bounds[op->layer]) { /* the bounds go along */
                const size_t be = attnd_kernel_kv_bounds_elems(&e->layout);
                memcpy(t->bounds + (size_t)op->slot * be, t->bounds + (size_t)band[i] * be,
                       be * sizeof(uint16_t));
            }
            s->slots[op->layer][op->page] = (int32_t)op->slot;
            attnd__tier_slot_release(t, band[i]);
            moved++;
        }
        if (got < m) /* the file is full */
            break;
    }
    atomic_fetch_add(&t->n_demoted, (uint64_t)moved);
    return moved;
}

int64_t attnd__tier_demote(attnd_engine *e, int64_t want)
{
    attnd__tier *t = e->tier;
    attnd__tier_cold v = {.e = e};
    attnd__tio *io = NULL;
    int64_t moved = 0;

    if (!t || !t->n_host)
        return 0;
    attnd__session_each(&e->table, &e->pool, atomic_load(&t->cursor), collect, &v);
    for (int i = 0; i < v.n; i++) {
        attnd__session *s = v.s[i];
        if (moved < want && pthread_mutex_trylock(&s->mu) == 0) {
            if (!io) /* its lock first, then a context (tier.c) */
                io = attnd__tio_get(t);
            moved += demote_session(e, io, s, want - moved);
            pthread_mutex_unlock(&s->mu);
        }
        attnd__session_put(&e->table, &e->pool, s);
    }
    if (io)
        attnd__tio_put(t, io);
    return moved;
}
