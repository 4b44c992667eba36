/* The decode plan: how a batch is cut into work units, FlashInfer-style
 * "plan" kept apart from the per-tile math that runs them.
 *
 * Every (sequence, KV head) pair is one unit unless it is cut into ranges
 * of whole tiles (split-KV). Automatic cutting aims at every thread having
 * work to the end: units are handed out longest first from a shared
 * counter, so the run ends at most one unit after the ideal total/threads;
 * ranges are therefore kept to at most a quarter of a thread's fair share
 * (and at least 256 tokens, below which the merge and the query packing
 * stop being negligible). One long sequence among short ones thus gets cut
 * and the short ones not. Forced counts (tests, benchmarks) cut every pair
 * into min(k, tiles) ranges as equal as whole tiles allow.
 *
 * Storage is the plan's own, reused across calls and grown only when a
 * batch needs more (so steady-state decode allocates nothing). */
#include <stdlib.h>
#include <string.h>

#include "attnd_buf.h"
#include "cpu_int.h"

#define AUTO_MIN_RANGE 256
#define AUTO_UNITS_PER_THREAD 4

void attnd_kernel_decode_plan_init(attnd_kernel_decode_plan *plan)
{
    memset(plan, 0, sizeof *plan);
}

void attnd_kernel_decode_plan_cleanup(attnd_kernel_decode_plan *plan)
{
    free(plan->units);
    free(plan->groups);
    free(plan->pending);
    free(plan->part_out);
    free(plan->part_lse);
    memset(plan, 0, sizeof *plan);
}

static int cmp_units(const void *pa, const void *pb)
{
    const attnd_kernel_decode_unit *a = pa, *b = pb;
    int64_t la = a->t1 - a->t0, lb = b->t1 - b->t0;
    if (la != lb)
        return la > lb ? -1 : 1;
    if (a->seq != b->seq)
        return a->seq < b->seq ? -1 : 1;
    if (a->kv_head != b->kv_head)
        return a->kv_head < b->kv_head ? -1 : 1;
    return a->t0 < b->t0 ? -1 : a->t0 > b->t0;
}

/* Ranges for a pair of `tiles` tiles under the options. */
static int64_t ranges_for(int64_t tiles, const attnd_kernel_decode_plan_opts *o, int64_t auto_tiles)
{
    int64_t k;
    if (tiles <= 1)
        return 1;
    if (o->splits == ATTND_KERNEL_DECODE_SPLITS_MAX)
        k = tiles;
    else if (o->splits > 0)
        k = o->splits;
    else
        k = (tiles + auto_tiles - 1) / auto_tiles;
    return k < tiles ? k : tiles;
}

attnd_status attnd_kernel_decode_plan_make(attnd_kernel_decode_plan *plan,
                                           const attnd_kernel_decode_batch *b,
                                           const attnd_kernel_decode_plan_opts *opts,
                                           attnd_error *err)
{
    const int32_t hkv = b->kv->n_kv_heads, group = b->n_q_heads / hkv;
    const int32_t rows = b->q_tokens * group, dv = b->kv->d_v;
    int64_t total = 0, n_units = 0, n_groups = 0, n_parts = 0;

    plan->n_units = plan->n_groups = plan->n_parts = 0;
    if (opts->n_threads < 1 || opts->splits < ATTND_KERNEL_DECODE_SPLITS_MAX)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "plan opts: n_threads %d (need >= 1), splits %d (need >= -1)",
                               opts->n_threads, opts->splits);

    for (int32_t i = 0; i < b->n_seqs; i++)
        for (int32_t h = 0; h < hkv; h++)
            total += attnd_kernel_decode_seq_len(b, i, h);
    /* automatic range: a quarter of a thread's share, whole tiles, >= 256 */
    int64_t share = total / ((int64_t)opts->n_threads * AUTO_UNITS_PER_THREAD);
    int64_t auto_tiles = share < AUTO_MIN_RANGE ? AUTO_MIN_RANGE : share;
    auto_tiles = (auto_tiles + ATTND_KERNEL_DECODE_TILE - 1) / ATTND_KERNEL_DECODE_TILE;
    if (opts->splits == ATTND_KERNEL_DECODE_SPLITS_AUTO && opts->n_threads == 1)
        auto_tiles = INT64_MAX / 2;

    for (int32_t i = 0; i < b->n_seqs; i++)
        for (int32_t h = 0; h < hkv; h++) {
            int64_t len = attnd_kernel_decode_seq_len(b, i, h);
            int64_t k = ranges_for((len + ATTND_KERNEL_DECODE_TILE - 1) / ATTND_KERNEL_DECODE_TILE,
                                   opts, auto_tiles);
            n_units += k;
            if (k > 1) {
                n_groups++;
                n_parts += k;
            }
        }
    if (n_units > INT32_MAX || n_parts * rows * (int64_t)dv > INT64_MAX / 8 ||
        ATTND_BUF_RESERVE(plan->units, plan->cap_units, (size_t)n_units) ||
        ATTND_BUF_RESERVE(plan->groups, plan->cap_groups, (size_t)n_groups) ||
        ATTND_BUF_RESERVE(plan->pending, plan->cap_pending, (size_t)n_groups) ||
        ATTND_BUF_RESERVE(plan->part_out, plan->cap_part_out, (size_t)(n_parts * rows * dv)) ||
        ATTND_BUF_RESERVE(plan->part_lse, plan->cap_part_lse, (size_t)(n_parts * rows)))
        goto err_mem;

    int32_t u = 0, g = 0, part = 0;
    for (int32_t i = 0; i < b->n_seqs; i++) {
        for (int32_t h = 0; h < hkv; h++) {
            /* per KV head: with list_groups its list may be its own */
            int64_t len = attnd_kernel_decode_seq_len(b, i, h);
            int64_t tiles = (len + ATTND_KERNEL_DECODE_TILE - 1) / ATTND_KERNEL_DECODE_TILE;
            int64_t k = ranges_for(tiles, opts, auto_tiles);
            if (k > 1) {
                plan->groups[g] = (attnd_kernel_decode_group){i, h, part, (int32_t)k};
                plan->pending[g] = (int32_t)k;
            }
            for (int64_t j = 0; j < k; j++) {
                int64_t a = j * tiles / k * ATTND_KERNEL_DECODE_TILE;
                int64_t z = (j + 1) * tiles / k * ATTND_KERNEL_DECODE_TILE;
                plan->units[u++] = (attnd_kernel_decode_unit){
                    .seq = i,
                    .kv_head = h,
                    .t0 = a,
                    .t1 = z < len ? z : len,
                    .group = k > 1 ? g : -1,
                    .part = k > 1 ? part++ : -1,
                };
            }
            if (k > 1)
                g++;
        }
    }
    qsort(plan->units, (size_t)u, sizeof *plan->units, cmp_units);
    plan->n_units = u;
    plan->n_groups = g;
    plan->n_parts = part;
    plan->rows = rows;
    plan->d_v = dv;
    return ATTND_OK;

err_mem:
    return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                           "plan: no memory for %lld work units", (long long)n_units);
}
