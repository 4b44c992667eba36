/* The split-KV scheduler of the CUDA decode: which CTA runs which tiles.
 *
 * The decode kernels are persistent: one CTA per SM (per row block), each
 * running the list of units of its part. AUTO balances the work the way
 * FlashMLA's metadata does: every unit costs its tiles plus a fixed
 * unit_cost (loading the queries, writing the outputs, its share of the
 * combine), each part gets a budget of total / max_parts + unit_cost, and
 * the streams are laid end to end and dealt out in order, a stream cut
 * wherever a part's budget ends. Long sequences thus spread over many CTAs
 * and short ones share a CTA, and no CTA gets more than its budget.
 * Forced split counts (tests, benchmarks) cut each stream evenly and deal
 * whole units out in order. An empty stream gets one unit of no tiles,
 * which writes its outputs (0, lse -inf). Everything here is host C over list lengths;
 * the plan uploads the result. */
#include <stdlib.h>
#include <string.h>

#include "attnd_buf.h"
#include "cuda_int.h"

void attnd__cuda_partition_init(attnd__cuda_partition *pt)
{
    memset(pt, 0, sizeof *pt);
}

void attnd__cuda_partition_cleanup(attnd__cuda_partition *pt)
{
    free(pt->units);
    free(pt->part_ptr);
    free(pt->stream_nsplit);
    free(pt->stream_slot0);
    memset(pt, 0, sizeof *pt);
}

static int push_unit(attnd__cuda_partition *pt, int32_t stream, int32_t t0, int32_t t1)
{
    if (ATTND_BUF_RESERVE(pt->units, pt->cap_units, (size_t)pt->n_units + 1))
        return -1;
    attnd__cuda_unit *u = &pt->units[pt->n_units++];
    u->stream = stream;
    u->tile0 = t0;
    u->tile1 = t1;
    u->slot = -1;
    return 0;
}

/* AUTO: deal the streams' tiles out in order, budget by budget. Parts are
 * closed when their budget is spent; the last part takes what is left. */
static int deal_balanced(attnd__cuda_partition *pt, const int32_t *tiles, int32_t n,
                         int32_t max_parts, int64_t cost)
{
    int64_t total = 0;
    for (int32_t i = 0; i < n; i++)
        total += tiles[i] + cost;
    /* a part closes with less than cost + 1 left, so budgets of total / P
     * + cost fit everything into P parts; no part holds more than that */
    int64_t budget = (total + max_parts - 1) / max_parts + cost;
    if (budget < cost + 1)
        budget = cost + 1;

    int32_t part = 0;
    int64_t left = budget;
    pt->part_ptr[0] = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t t = 0;
        if (tiles[i] == 0) { /* an empty stream: one unit writes its zeros */
            if (left < cost + 1 && part < max_parts - 1 && pt->part_ptr[part] < pt->n_units) {
                pt->part_ptr[++part] = pt->n_units;
                left = budget;
            }
            if (push_unit(pt, i, 0, 0))
                return -1;
            left -= cost;
            continue;
        }
        while (t < tiles[i]) {
            int64_t rest = tiles[i] - t;
            int64_t take;
            if (part == max_parts - 1 || rest + cost <= left) {
                take = rest;
            } else if (left - cost >= 1) {
                take = left - cost;
            } else { /* this part is full: close it */
                pt->part_ptr[++part] = pt->n_units;
                left = budget;
                continue;
            }
            if (push_unit(pt, i, t, (int32_t)(t + take)))
                return -1;
            t += (int32_t)take;
            left -= take + cost;
            if (left <= cost && part < max_parts - 1) {
                pt->part_ptr[++part] = pt->n_units;
                left = budget;
            }
        }
    }
    /* close the part in progress if it holds units */
    if (pt->part_ptr[part] < pt->n_units)
        pt->part_ptr[++part] = pt->n_units;
    pt->n_parts = part;
    return 0;
}

/* Forced: k near-equal units per stream (k = -1: one per tile), dealt out
 * to the parts in order, as evenly as whole units allow. */
static int deal_forced(attnd__cuda_partition *pt, const int32_t *tiles, int32_t n,
                       int32_t max_parts, int32_t k)
{
    for (int32_t i = 0; i < n; i++) {
        int32_t nt = tiles[i];
        if (nt <= 0) { /* an empty stream: one unit writes its zeros */
            if (push_unit(pt, i, 0, 0))
                return -1;
            continue;
        }
        int32_t ku = k < 0 ? nt : (k < nt ? k : nt);
        for (int32_t j = 0; j < ku; j++) {
            int32_t t0 = (int32_t)((int64_t)nt * j / ku);
            int32_t t1 = (int32_t)((int64_t)nt * (j + 1) / ku);
            if (push_unit(pt, i, t0, t1))
                return -1;
        }
    }
    int32_t parts = pt->n_units < max_parts ? pt->n_units : max_parts;
    for (int32_t p = 0; p <= parts; p++)
        pt->part_ptr[p] = (int32_t)((int64_t)pt->n_units * p / (parts ? parts : 1));
    pt->n_parts = parts;
    return 0;
}

attnd_status attnd__cuda_partition_make(attnd__cuda_partition *pt, const int32_t *stream_tiles,
                                        int32_t n_streams, int32_t max_parts, int32_t splits,
                                        int32_t unit_cost)
{
    if (n_streams < 0 || max_parts < 1 || splits < -1 || unit_cost < 0)
        return ATTND_ERR_INVALID_ARGUMENT;
    for (int32_t i = 0; i < n_streams; i++)
        if (stream_tiles[i] < 0)
            return ATTND_ERR_INVALID_ARGUMENT;

    pt->n_units = pt->n_parts = pt->n_slots = 0;
    pt->n_streams = n_streams;
    if (ATTND_BUF_RESERVE(pt->part_ptr, pt->cap_parts, (size_t)max_parts + 1) ||
        ATTND_BUF_RESERVE(pt->stream_nsplit, pt->cap_streams, (size_t)n_streams + 1))
        return ATTND_ERR_RESOURCE_EXHAUSTED;
    /* stream_slot0 shares cap_streams: grow it to the same capacity */
    int32_t *s0 = realloc(pt->stream_slot0, pt->cap_streams * sizeof *s0);
    if (!s0)
        return ATTND_ERR_RESOURCE_EXHAUSTED;
    pt->stream_slot0 = s0;

    int rc = splits == 0 ? deal_balanced(pt, stream_tiles, n_streams, max_parts, unit_cost)
                         : deal_forced(pt, stream_tiles, n_streams, max_parts, splits);
    if (rc) {
        pt->n_units = pt->n_parts = 0;
        return ATTND_ERR_RESOURCE_EXHAUSTED;
    }

    /* count units per stream (units of a stream are consecutive, in tile
     * order) and give split streams their slots */
    for (int32_t i = 0; i < n_streams; i++) {
        pt->stream_nsplit[i] = 0;
        pt->stream_slot0[i] = -1;
    }
    for (int32_t u = 0; u < pt->n_units; u++)
        pt->stream_nsplit[pt->units[u].stream]++;
    for (int32_t i = 0; i < n_streams; i++)
        if (pt->stream_nsplit[i] >= 2) {
            pt->stream_slot0[i] = pt->n_slots;
            pt->n_slots += pt->stream_nsplit[i];
        }
    /* number the units of each split stream 0..k-1 in order */
    for (int32_t u = 0, prev = -1, k = 0; u < pt->n_units; u++) {
        attnd__cuda_unit *un = &pt->units[u];
        if (pt->stream_nsplit[un->stream] < 2)
            continue;
        k = un->stream == prev ? k + 1 : 0;
        prev = un->stream;
        un->slot = pt->stream_slot0[un->stream] + k;
    }
    return ATTND_OK;
}
