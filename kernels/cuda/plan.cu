/* Decode plans: check a batch, choose the kernel, partition the work
 * (partition.c), upload it, and enqueue the kernels.
 *
 * A plan owns, and grows only when a batch needs more than before: the host
 * partition arrays, a pinned staging buffer and a device copy of the units
 * (uploaded with one async copy; the next plan_make waits for that copy
 * before reusing the staging buffer), and the float32 workspace of split
 * streams' partial states. decode_run only encodes the pool's tensor map
 * (host, microseconds) and launches the decode kernel over (row blocks,
 * parts); GQA merges split streams inside it (unit.cuh), MLA with the
 * combine kernel launched after it. */
#include <cuda.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx_int.h"
#include "cuda_int.h"

/* Tile-equivalents a unit costs besides its tiles (query load, output
 * write, its share of the combine). */
#define MLA_UNIT_COST 2
#define GQA_UNIT_COST 1

struct attnd_cuda_plan {
    attnd_cuda_ctx *ctx;
    attnd__cuda_partition pt;
    int made;
    /* the shape the plan was made for */
    int is_mla, dim, nmt, n_row_blocks;
    int32_t n_split; /* MLA: split streams the combine kernel merges */
    size_t split_at; /* their offset in d_meta (int32) */
    int32_t n_seqs, q_tokens, n_q_heads, list_groups;
    attnd_kernel_kv_layout kv;
    attnd__dec_params prm; /* shape fields and plan buffers; run adds the rest */
    char name[24];
    /* buffers */
    int32_t *tiles;  /* [streams] */
    int32_t *lens, *bases; /* [streams]: list tokens, first page_idx entry */
    size_t cap_tiles;
    int32_t *h_meta, *d_meta;
    size_t cap_h, cap_d; /* int32 elements */
    float *d_work;   /* part_o, part_lse, then the arrival counters */
    size_t cap_work; /* floats */
    cudaEvent_t uploaded;
    int upload_pending;
};

#define CK(call, what)                                  \
    do {                                                \
        int rc_ = (int)(call);                          \
        if (rc_ != cudaSuccess)                         \
            return attnd__cuda_fail(err, rc_, what);    \
    } while (0)

static int same_layout(const attnd_kernel_kv_layout *a, const attnd_kernel_kv_layout *b)
{
    return a->dtype == b->dtype && a->page_size == b->page_size &&
           a->n_kv_heads == b->n_kv_heads && a->d_k == b->d_k && a->d_v == b->d_v &&
           a->v_in_k == b->v_in_k && a->page_stride == b->page_stride &&
           a->k_head_stride == b->k_head_stride && a->k_token_stride == b->k_token_stride &&
           a->v_offset == b->v_offset && a->v_head_stride == b->v_head_stride &&
           a->v_token_stride == b->v_token_stride;
}

/* Shapes, layout and dtypes of b; chooses the kernel (is_mla, dim). */
static attnd_status check_shape(const attnd_cuda_batch *b, int *is_mla_p, int *dim_p,
                                attnd_error *err)
{
    if (!b)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "batch: must not be NULL");
    const attnd_kernel_kv_layout *l = &b->kv;
    if (b->n_seqs < 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "n_seqs: %d, expected >= 0",
                               b->n_seqs);
    if (b->q_tokens < 1 || b->q_tokens > 16)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "q_tokens: %d, expected 1..16",
                               b->q_tokens);
    if (!(b->scale > 0.f) || isinf(b->scale))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "scale: %g, expected finite and > 0", (double)b->scale);
    if (l->dtype != ATTND_DTYPE_BF16)
        return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED, "kv.dtype: %s, the GPU kernels take bf16",
                               attnd_dtype_name(l->dtype));
    if (l->page_size < 64 || l->page_size % 64)
        return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                               "kv.page_size: %d, the GPU kernels take multiples of 64",
                               l->page_size);
    if (b->out_dtype != ATTND_DTYPE_BF16 && b->out_dtype != ATTND_DTYPE_F32)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "out_dtype: %s, expected bf16 or f32", attnd_dtype_name(b->out_dtype));
    if (b->pool_pages < 1 || b->pool_pages > 0x7fffffff)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "pool_pages: %lld, expected 1..2^31-1", (long long)b->pool_pages);
    if (b->list_groups < 1)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "list_groups: %d, expected >= 1",
                               b->list_groups);
    attnd_kernel_kv_layout want;
    if (l->v_in_k) {
        int d_c = l->d_v;
        if (l->d_k - l->d_v != 64 || (d_c != 512 && d_c != 256 && d_c != 128))
            return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                                   "kv: MLA d_c %d, d_r %d; the GPU kernels take d_c 512/256/128, d_r 64",
                                   l->d_v, l->d_k - l->d_v);
        attnd_kernel_kv_layout_mla(&want, d_c, 64, l->page_size, ATTND_DTYPE_BF16);
        if (!same_layout(l, &want))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "kv: strides differ from attnd_kernel_kv_layout_mla's");
        if (b->n_q_heads < 1 || b->n_q_heads % b->list_groups)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "n_q_heads: %d, expected >= 1 and a multiple of list_groups %d",
                                   b->n_q_heads, b->list_groups);
        *is_mla_p = 1;
        *dim_p = d_c;
    } else {
        int hkv = l->n_kv_heads, d = l->d_k;
        if (d != l->d_v || (d != 64 && d != 128))
            return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                                   "kv: head dim %d/%d; the GPU kernels take 64 or 128", l->d_k, l->d_v);
        if (hkv < 1)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "kv.n_kv_heads: %d, expected >= 1",
                                   hkv);
        attnd_kernel_kv_layout_gqa(&want, hkv, d, l->page_size, ATTND_DTYPE_BF16);
        if (!same_layout(l, &want))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "kv: strides differ from attnd_kernel_kv_layout_gqa's");
        if (b->n_q_heads < hkv || b->n_q_heads % hkv)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "n_q_heads: %d, expected a multiple of n_kv_heads %d",
                                   b->n_q_heads, hkv);
        if (hkv % b->list_groups)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "list_groups: %d, expected a divisor of n_kv_heads %d",
                                   b->list_groups, hkv);
        if ((int64_t)2 * hkv * l->page_size > 0x7fffffff)
            return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED, "kv: pages too large");
        *is_mla_p = 0;
        *dim_p = d;
    }
    return ATTND_OK;
}

extern "C" attnd_status attnd_cuda_plan_create(attnd_cuda_ctx *ctx, attnd_cuda_plan **plan_p,
                                               attnd_error *err)
{
    if (!ctx || !plan_p)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "ctx, plan_p: must not be NULL");
    attnd_cuda_plan *pl = (attnd_cuda_plan *)calloc(1, sizeof *pl);
    if (!pl)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "plan: out of memory");
    pl->ctx = ctx;
    attnd__cuda_partition_init(&pl->pt);
    int rc = cudaEventCreateWithFlags(&pl->uploaded, cudaEventDisableTiming);
    if (rc != cudaSuccess) {
        free(pl);
        return attnd__cuda_fail(err, rc, "cudaEventCreateWithFlags");
    }
    *plan_p = pl;
    return ATTND_OK;
}

extern "C" void attnd_cuda_plan_destroy(attnd_cuda_plan *pl)
{
    if (!pl)
        return;
    cudaStreamSynchronize(pl->ctx->stream);
    cudaEventDestroy(pl->uploaded);
    cudaFreeHost(pl->h_meta);
    cudaFree(pl->d_meta);
    cudaFree(pl->d_work);
    free(pl->tiles);
    free(pl->lens);
    free(pl->bases);
    attnd__cuda_partition_cleanup(&pl->pt);
    free(pl);
}

/* Tiles of every stream from the host list lengths; fills pl->tiles. */
static attnd_status stream_tiles(attnd_cuda_plan *pl, const attnd_cuda_batch *b, int32_t sps,
                                 int32_t lpg, const int32_t *indptr, const int32_t *last,
                                 attnd_error *err)
{
    int64_t n_lists = (int64_t)b->n_seqs * b->list_groups;
    int64_t n_streams = (int64_t)b->n_seqs * sps;
    if (n_streams > 0x7fffffff || n_lists > 0x7ffffffe)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "n_seqs: %d, too many streams",
                               b->n_seqs);
    for (int64_t li = 0; li < n_lists; li++) {
        int64_t np = (int64_t)indptr[li + 1] - indptr[li];
        if (np < 0 || indptr[li] < 0)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "page_indptr[%lld..%lld]: %d, %d, expected non-negative and "
                                   "non-decreasing",
                                   (long long)li, (long long)li + 1, indptr[li], indptr[li + 1]);
        if (np > 0 && (last[li] < 1 || last[li] > b->kv.page_size))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "last_page_len[%lld]: %d, expected 1..%d", (long long)li,
                                   last[li], b->kv.page_size);
        if (np * b->kv.page_size > 0x7fffff00LL)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "page list %lld: %lld pages, too long", (long long)li, (long long)np);
    }
    if ((size_t)n_streams > pl->cap_tiles) {
        size_t c = (size_t)n_streams;
        int32_t *t = (int32_t *)realloc(pl->tiles, c * sizeof *t);
        if (t)
            pl->tiles = t;
        int32_t *l = t ? (int32_t *)realloc(pl->lens, c * sizeof *l) : NULL;
        if (l)
            pl->lens = l;
        int32_t *bs = l ? (int32_t *)realloc(pl->bases, c * sizeof *bs) : NULL;
        if (!bs)
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "plan: out of memory");
        pl->bases = bs;
        pl->cap_tiles = c;
    }
    for (int64_t i = 0; i < n_streams; i++) {
        int64_t seq = i / sps, li = seq * b->list_groups + (i % sps) / lpg;
        int64_t np = (int64_t)indptr[li + 1] - indptr[li];
        int64_t len = np > 0 ? (np - 1) * b->kv.page_size + last[li] : 0;
        pl->tiles[i] = (int32_t)((len + ATTND__CUDA_TILE - 1) / ATTND__CUDA_TILE);
        pl->lens[i] = (int32_t)len;
        pl->bases[i] = indptr[li];
    }
    return ATTND_OK;
}

/* Grow the device buffer *p (cudaMalloc) to n elements of size es. */
static attnd_status grow_dev(void **p, size_t *cap, size_t n, size_t es, attnd_error *err)
{
    if (n <= *cap)
        return ATTND_OK;
    size_t c = *cap ? *cap : 1024;
    while (c < n)
        c *= 2;
    cudaFree(*p); /* synchronizes: the old buffer may be in use */
    *p = NULL;
    *cap = 0;
    int rc = cudaMalloc(p, c * es);
    if (rc != cudaSuccess)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "plan: cudaMalloc of %zu bytes: %s",
                               c * es, cudaGetErrorString((cudaError_t)rc));
    *cap = c;
    return ATTND_OK;
}

extern "C" attnd_status attnd_cuda_plan_make(attnd_cuda_plan *pl, const attnd_cuda_batch *b,
                                             const int32_t *h_page_indptr,
                                             const int32_t *h_last_page_len,
                                             const attnd_cuda_plan_opts *opts, attnd_error *err)
{
    if (!pl)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "plan: must not be NULL");
    pl->made = 0;
    int is_mla = 0, dim = 0;
    attnd_status st = check_shape(b, &is_mla, &dim, err);
    if (st)
        return st;
    if (b->n_seqs > 0 && (!h_page_indptr || !h_last_page_len))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "h_page_indptr, h_last_page_len: must not be NULL");
    int32_t splits = opts ? opts->splits : ATTND_CUDA_SPLITS_AUTO;
    if (splits < -1)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "opts.splits: %d, expected >= -1",
                               splits);

    const int32_t hq = b->n_q_heads, lg = b->list_groups;
    const int32_t sps = is_mla ? lg : b->kv.n_kv_heads; /* streams per sequence */
    const int32_t lpg = is_mla ? 1 : b->kv.n_kv_heads / lg;
    const int32_t hs = hq / sps, rows = b->q_tokens * hs;
    int nmt = 0, rb_rows;
    if (is_mla) {
        rb_rows = 64;
    } else {
        nmt = rows <= 16 ? 1 : 2;
        rb_rows = 16 * nmt;
    }
    const int nrb = (rows + rb_rows - 1) / rb_rows;
    st = stream_tiles(pl, b, sps, lpg, h_page_indptr, h_last_page_len, err);
    if (st)
        return st;

    int sms = pl->ctx->sm_count;
    if (opts && opts->max_ctas > 0 && opts->max_ctas < sms)
        sms = opts->max_ctas;
    int32_t max_parts = sms / nrb > 0 ? sms / nrb : 1;
    st = attnd__cuda_partition_make(&pl->pt, pl->tiles, b->n_seqs * sps, max_parts, splits,
                                    is_mla ? MLA_UNIT_COST : GQA_UNIT_COST);
    if (st)
        return attnd_error_set(err, st, "plan: partition failed (%s)", attnd_status_string(st));
    const attnd__cuda_partition *pt = &pl->pt;

    /* device metadata: units (8 int32 each: attnd__unit), part_ptr, then
     * (MLA) the split streams for the combine, 4 int32 each (16-byte
     * aligned: padded) */
    int32_t n_split = 0;
    if (is_mla)
        for (int32_t i = 0; i < pt->n_streams; i++)
            n_split += pt->stream_nsplit[i] >= 2;
    const size_t split_at = (8 * (size_t)pt->n_units + (size_t)pt->n_parts + 1 + 3) & ~(size_t)3;
    const size_t n_meta = split_at + 4 * (size_t)n_split;
    const int d_v = dim;
    const size_t n_part = (size_t)pt->n_slots * rows * ((size_t)d_v + 1);
    const size_t n_ctr = (size_t)pt->n_slots * nrb;
    if ((st = grow_dev((void **)&pl->d_meta, &pl->cap_d, n_meta, sizeof(int32_t), err)) ||
        (st = grow_dev((void **)&pl->d_work, &pl->cap_work, n_part + n_ctr, sizeof(float), err)))
        return st;
    if (pl->upload_pending) {
        CK(cudaEventSynchronize(pl->uploaded), "cudaEventSynchronize");
        pl->upload_pending = 0;
    }
    if (n_meta > pl->cap_h) {
        size_t c = pl->cap_h ? pl->cap_h : 1024;
        while (c < n_meta)
            c *= 2;
        cudaFreeHost(pl->h_meta);
        pl->h_meta = NULL;
        pl->cap_h = 0;
        CK(cudaMallocHost((void **)&pl->h_meta, c * sizeof(int32_t)), "cudaMallocHost");
        pl->cap_h = c;
    }
    int32_t *h = pl->h_meta;
    for (int32_t u = 0; u < pt->n_units; u++) {
        const attnd__cuda_unit *un = &pt->units[u];
        int32_t *o = h + 8 * (size_t)u;
        o[0] = un->stream;
        o[1] = un->tile0;
        o[2] = un->tile1;
        o[3] = un->slot;
        o[4] = pl->bases[un->stream];
        o[5] = pl->lens[un->stream];
        o[6] = pt->stream_nsplit[un->stream];
        o[7] = pt->stream_slot0[un->stream];
    }
    memcpy(h + 8 * (size_t)pt->n_units, pt->part_ptr, sizeof(int32_t) * ((size_t)pt->n_parts + 1));
    for (int32_t i = 0, j = 0; is_mla && i < pt->n_streams; i++)
        if (pt->stream_nsplit[i] >= 2) {
            int32_t *o = h + split_at + 4 * (size_t)j++;
            o[0] = i;
            o[1] = pt->stream_slot0[i];
            o[2] = pt->stream_nsplit[i];
            o[3] = 0;
        }
    CK(cudaMemcpyAsync(pl->d_meta, h, n_meta * sizeof(int32_t), cudaMemcpyHostToDevice,
                       pl->ctx->stream),
       "cudaMemcpyAsync(plan)");
    CK(cudaEventRecord(pl->uploaded, pl->ctx->stream), "cudaEventRecord");
    pl->upload_pending = 1;
    /* arrival counters start at 0 (the kernels leave them at 0) */
    if (n_ctr)
        CK(cudaMemsetAsync(pl->d_work + n_part, 0, n_ctr * sizeof(int), pl->ctx->stream),
           "cudaMemsetAsync(counters)");

    attnd__dec_params *p = &pl->prm;
    memset(p, 0, sizeof *p);
    p->units = pl->d_meta;
    p->part_ptr = pl->d_meta + 8 * (size_t)pt->n_units;
    p->part_o = pl->d_work;
    p->part_lse = pl->d_work + (size_t)pt->n_slots * rows * d_v;
    p->counters = (int *)(pl->d_work + n_part);
    p->q_tokens = b->q_tokens;
    p->n_q_heads = hq;
    p->sps = sps;
    p->hs = hs;
    p->rows = rows;
    p->n_row_blocks = nrb;
    p->page_size = b->kv.page_size;
    p->hkv = b->kv.n_kv_heads;
    p->d_v = d_v;

    pl->is_mla = is_mla;
    pl->n_split = n_split;
    pl->split_at = split_at;
    pl->dim = dim;
    pl->nmt = nmt;
    pl->n_row_blocks = nrb;
    pl->n_seqs = b->n_seqs;
    pl->q_tokens = b->q_tokens;
    pl->n_q_heads = hq;
    pl->list_groups = lg;
    pl->kv = b->kv;
    if (is_mla)
        snprintf(pl->name, sizeof pl->name, "mla%d", dim);
    else
        snprintf(pl->name, sizeof pl->name, "gqa%dx%d", dim, nmt);
    pl->made = 1;
    return ATTND_OK;
}

extern "C" attnd_status attnd_cuda_decode_run(attnd_cuda_plan *pl, const attnd_cuda_batch *b,
                                              attnd_error *err)
{
    if (!pl || !pl->made)
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION, "plan: not made");
    int is_mla = 0, dim = 0;
    attnd_status st = check_shape(b, &is_mla, &dim, err);
    if (st)
        return st;
    if (b->n_seqs != pl->n_seqs || b->q_tokens != pl->q_tokens || b->n_q_heads != pl->n_q_heads ||
        b->list_groups != pl->list_groups || !same_layout(&b->kv, &pl->kv))
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                               "batch: shape differs from the plan's (n_seqs %d/%d, q_tokens "
                               "%d/%d, n_q_heads %d/%d, list_groups %d/%d, or kv)",
                               b->n_seqs, pl->n_seqs, b->q_tokens, pl->q_tokens, b->n_q_heads,
                               pl->n_q_heads, b->list_groups, pl->list_groups);
    if (b->n_seqs == 0)
        return ATTND_OK;
    if (!b->q || !b->pool || !b->page_idx || !b->out)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "batch: q, pool, page_idx and out must not be NULL");
    if ((uintptr_t)b->pool % 16 || (uintptr_t)b->q % 16 || (uintptr_t)b->out % 16)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "batch: pool, q and out must be 16-byte aligned");

    attnd__dec_params p = pl->prm;
    p.q = b->q;
    p.out = b->out;
    p.out_f32 = b->out_dtype == ATTND_DTYPE_F32;
    p.lse = b->lse;
    p.page_idx = b->page_idx;
    p.scale_log2 = b->scale * 1.4426950408889634f;
    cudaStream_t s = pl->ctx->stream;

    if (pl->pt.n_units > 0) {
        alignas(64) CUtensorMap tmap;
        const attnd_kernel_kv_layout *l = &b->kv;
        if (is_mla)
            st = attnd__cuda_tensor_map(pl->ctx, &tmap, b->pool, (uint64_t)l->d_k,
                                        (uint64_t)l->page_size, (uint64_t)b->pool_pages, err);
        else
            st = attnd__cuda_tensor_map(pl->ctx, &tmap, b->pool, (uint64_t)l->d_k,
                                        (uint64_t)2 * l->n_kv_heads * l->page_size,
                                        (uint64_t)b->pool_pages, err);
        if (st)
            return st;
        int rc = is_mla ? attnd__mla_launch(dim, &p, &tmap, pl->n_row_blocks, pl->pt.n_parts, s)
                        : attnd__gqa_launch(dim, pl->nmt, &p, &tmap, pl->n_row_blocks,
                                            pl->pt.n_parts, s);
        if (rc != cudaSuccess)
            return attnd__cuda_fail(err, rc, pl->name);
    }
    if (is_mla && pl->n_split > 0) {
        int rc = attnd__combine_splits_launch(&p, pl->d_meta + pl->split_at, pl->n_split, s);
        if (rc != cudaSuccess)
            return attnd__cuda_fail(err, rc, "combine");
    }
    return ATTND_OK;
}

extern "C" int32_t attnd_cuda_plan_units(const attnd_cuda_plan *pl)
{
    return pl->made ? pl->pt.n_units : 0;
}

extern "C" int32_t attnd_cuda_plan_ctas(const attnd_cuda_plan *pl)
{
    return pl->made ? pl->pt.n_parts * pl->n_row_blocks : 0;
}

extern "C" const char *attnd_cuda_plan_kernel(const attnd_cuda_plan *pl)
{
    return pl->made ? pl->name : "none";
}
