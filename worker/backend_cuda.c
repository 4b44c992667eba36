/* The CUDA backend of the engine: KV pages in GPU memory, decode on
 * kernels/cuda (see backend.h for the contract).
 *
 * Memory: one cudaMalloc of n_pages * page_bytes holds every page, laid out
 * exactly as the CPU pool's pages (attnd_kernel_kv_layout), so page numbers from
 * the host bookkeeping index it directly. Appends convert on the host into
 * a pinned staging ring, packed (only the tokens written), and copy each
 * page slice with one cudaMemcpy2DAsync: MLA pages are token-major, so a
 * slice is one run of bytes; GQA pages are [2][Hkv][page_size][D], so a
 * slice is 2 * Hkv runs at a pitch of page_size * D elements. The ring is
 * reused from its start after every synchronization of the stream (each
 * decode ends with one; a full ring forces one), so appends between
 * decodes cost no synchronization.
 *
 * Decode: bf16 queries are uploaded straight from the caller's buffer
 * (others are converted into pinned staging first), page indices through
 * pinned staging; the split-KV plan is made on the host from the page lists
 * (kernels/cuda uploads its units on the same stream); one decode launch
 * (MLA adds the combine when a stream was split) writes float32 outputs and
 * LSE, downloaded straight into the caller's buffers (the engine gives
 * page-locked ones: attnd_engine_ws.pinned, from attnd__gpu_host_alloc);
 * one synchronization. Measured on an H200 (tests/gpu/run.sh engine,
 * 2026-12-01; kernels/cuda/NOTES.md): at DeepSeek-V3 batch 128 x 4K the
 * kernel takes 0.3 ms of a 4-5 ms call; the rest is PCIe traffic (19 MB of
 * queries in, 34 MB of float32 outputs out) and the appends' copies.
 * Copying between pageable buffers and the device beat pinned staging
 * plus a host memcpy (6.9 against 9.9 ms at batch 128), so queries are
 * not staged. Device and pinned buffers grow to the largest batch seen
 * and are reused.
 *
 * The narrow MLA wire (attnd__gpu_proj): a heads-form query is uploaded as
 * it came (bf16, else converted to bf16 in pinned staging), absorbed on
 * the GPU by one cuBLAS strided batched GEMM over the heads (bf16 x bf16
 * -> bf16 with float32 accumulation, written straight into the absorbed
 * query buffer the kernel reads; q_rope follows by a strided device copy),
 * and the kernel's float32 latent output is up-projected by a float32
 * strided batched GEMM (no TF32: CUBLAS_DEFAULT_MATH) into a device buffer
 * that is downloaded instead of the latent output: 4x fewer bytes cross
 * PCIe at DeepSeek-V3. Both on the backend's stream, before its one
 * synchronization. The weights are device buffers the engine uploaded
 * once (attnd__gpu_upload). cuBLAS is loaded with dlopen when the first
 * weights arrive (libcublas.so.<major> of the toolkit compiled against,
 * found through the loader's path): attnd does not link it, so a CUDA
 * build runs where cuBLAS is absent (absorbed form only; LoadWeights then
 * fails naming the library), and the GPU bundle does not carry its ~600
 * MB. Not run in the session that wrote it (no GPU was lent): compiled
 * only; tests/gpu/test_gpu_narrow.c is its test.
 *
 * Sparse policies (attnd__gpu_decode_select): the page selection runs on
 * the stream after the query is where the kernel reads it, so a heads-form
 * query is scored absorbed (the absorb GEMM first, then the selection,
 * the decode, the up-projection): the pages are chosen by the same q.k
 * bounds as for the absorbed form.
 *
 * Concurrency: one mutex serializes every call (the staging buffers, the
 * plan and its workspace are shared). A GPU runs one of these launches at a
 * time anyway; the cost is that host-side conversion of one call does not
 * overlap another's kernel. */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_assert.h"
#include "attnd_clock.h"
#include "attnd_cuda.h"
#include "backend.h"

_Static_assert(ATTND__GPU_COMPACT_MAX_DK <= ATTND_CUDA_SELECT8_MAX_DK,
               "the GPU selection takes the compact bounds the engine makes");

/* Pinned bytes of the write ring (at least one page). */
#define GPU_STAGE_BYTES ((size_t)32 << 20)
/* Appends waiting for the next reader of the pool (at most), and the
 * ring's bytes kept free for their descriptors. */
#define GPU_PEND_CAP 1024
#define GPU_PEND_RESERVE \
    ((size_t)GPU_PEND_CAP * (sizeof(attnd_cuda_copy) + sizeof(attnd_cuda_fold)) + 32)
/* An append slice of at least this many bytes is copied at once (a DMA
 * copy), not left for the scatter kernel to read over the bus. */
#define GPU_PEND_DIRECT ((size_t)64 << 10)
/* A bf16 query of at most this many bytes goes up through the pinned
 * half (a memcpy, then an asynchronous copy); a larger one straight from
 * the caller's memory. A pageable host-to-device copy returns only once
 * its data are staged by the driver: 23 us for a 131 KB GQA batch-16
 * query on an H100, the GPU idle meanwhile. */
#define GPU_Q_STAGE_MAX ((size_t)1 << 20)

/* A device buffer and, when asked for, a pinned host one of the same
 * capacity. */
typedef struct gpu_buf {
    void *h, *d;
    size_t cap; /* bytes */
} gpu_buf;

enum { EV_SEL0, EV_SEL1, EV_CALL0, EV_CALL1, GPU_EVENTS };

struct attnd__gpu {
    pthread_mutex_t mu; /* one call at a time: guards everything below */
    int32_t device;
    attnd_kernel_kv_layout layout;
    int32_t n_pages;
    size_t page_bytes;
    size_t run_bytes;   /* bytes of one token in one contiguous run */
    size_t run_pitch;   /* bytes between a page's runs */
    int32_t runs;       /* runs per page slice: 1 (MLA) or 2 * Hkv (GQA) */
    int64_t token_elems;
    attnd_cuda_ctx *ctx;
    attnd_cuda_plan *plan;
    cudaStream_t stream;
    char *pool;         /* device: the pages */
    char *stage;        /* pinned write ring */
    size_t stage_cap, stage_used;
    /* Appends (KV slices, pages' key bounds) staged in the ring and not yet
     * enqueued: the next reader of the pool (a decode, a page copy, a
     * sync) enqueues them all as one scatter kernel (pend_flush): one
     * launch per decode step instead of a copy call per session and kind.
     * pend_page[i]: the page of pend[i]; per page, pend_bnd: its pending
     * bounds copy (or -1), pend_kv: its pending token slots as lo | hi << 32
     * (0: none). Host memory (malloc). */
    attnd_cuda_copy *pend;
    int32_t *pend_page, pend_n;
    int32_t *pend_bnd;
    uint64_t *pend_kv;
    gpu_buf q, idx;     /* pinned halves: queries not in bf16 (made on first
                           need), page indices */
    gpu_buf out, lse;   /* device only */
    cublasHandle_t blas; /* on stream, made with the first weights; NULL
                            until then */
    gpu_buf qn;         /* heads-form queries (pinned half: not bf16) */
    gpu_buf proj;       /* up-projected outputs, device only */
    /* sparse policies: the key bounds (head-major, as the host's), and the
     * selection's lists, candidates, scratch and positions */
    uint16_t *bounds;
    /* their compact form, which the selection scores (the CPU's integer
     * scoring: the same pages as a CPU engine), made on the GPU from the
     * bf16 rows when a selection next runs: b8_list[0 .. b8_n) the pages
     * whose bf16 rows changed since (b8_dirty[page] set). NULL where d_k
     * does not suit (attnd_cuda_select: bf16 scoring then). */
    uint8_t *bounds8;
    uint8_t *b8_dirty;
    int32_t *b8_list, b8_n;
    /* Folds of appended keys into the bounds waiting for the next flush
     * (attnd__gpu_bounds_fold), after the scatter that writes the keys;
     * fold_at[page]: its fold's index, or -1. Host memory, made with the
     * bounds. */
    attnd_cuda_fold *fold;
    int32_t *fold_at, fold_n;
    gpu_buf sel_lists, sel_work, sel_pos; /* sel_lists: lists, units' lists, candidates */
    /* token lists (attnd__gpu_decode_gather): the tokens' sources (pinned
     * half) and the pages they are gathered into (device only) */
    gpu_buf gsrc, gpool;
    /* timing events, made on first use (events_ready): the selection's
     * start and end, a decode's first and last queued operation */
    cudaEvent_t ev[GPU_EVENTS];
    int n_ev; /* made so far */
};

static attnd_status cuda_fail(attnd_error *err, cudaError_t rc, const char *what)
{
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "cuda: %s: %s", what, cudaGetErrorString(rc));
}

/* The timing events, made once; those made before a failure are counted
 * (destroy frees them) and not made again. Caller holds g->mu. */
static attnd_status events_ready(attnd__gpu *g, attnd_error *err)
{
    cudaError_t rc;
    for (; g->n_ev < GPU_EVENTS; g->n_ev++)
        if ((rc = cudaEventCreate(&g->ev[g->n_ev])) != cudaSuccess)
            return cuda_fail(err, rc, "cudaEventCreate");
    return ATTND_OK;
}

/* ---- cuBLAS, loaded at run time ------------------------------------------------ */

#define BLAS_STR_(x) #x
#define BLAS_STR(x) BLAS_STR_(x)
#define BLAS_LIB "libcublas.so." BLAS_STR(CUBLAS_VER_MAJOR)

/* The entry points used, typed from cublas_v2.h. */
static struct blas_api {
    pthread_once_t once;
    void *lib;
    char why[160];   /* why loading failed */
    __typeof__(cublasCreate_v2) *create;
    __typeof__(cublasDestroy_v2) *destroy;
    __typeof__(cublasSetStream_v2) *set_stream;
    __typeof__(cublasSetMathMode) *set_math_mode;
    __typeof__(cublasGemmStridedBatchedEx) *gemm_ex;
    __typeof__(cublasSgemmStridedBatched) *sgemm;
    __typeof__(cublasGetStatusString) *status_string;
} blas = {.once = PTHREAD_ONCE_INIT};

static void *blas_sym(const char *name)
{
    void *f = dlsym(blas.lib, name);
    if (!f && !blas.why[0])
        snprintf(blas.why, sizeof blas.why, "%s has no %s", BLAS_LIB, name);
    return f;
}

static void blas_load(void)
{
    blas.lib = dlopen(BLAS_LIB, RTLD_NOW | RTLD_LOCAL);
    if (!blas.lib) {
        const char *e = dlerror();
        snprintf(blas.why, sizeof blas.why, "%s", e ? e : BLAS_LIB ": not found");
        return;
    }
    blas.create = (__typeof__(blas.create))blas_sym("cublasCreate_v2");
    blas.destroy = (__typeof__(blas.destroy))blas_sym("cublasDestroy_v2");
    blas.set_stream = (__typeof__(blas.set_stream))blas_sym("cublasSetStream_v2");
    blas.set_math_mode = (__typeof__(blas.set_math_mode))blas_sym("cublasSetMathMode");
    blas.gemm_ex = (__typeof__(blas.gemm_ex))blas_sym("cublasGemmStridedBatchedEx");
    blas.sgemm = (__typeof__(blas.sgemm))blas_sym("cublasSgemmStridedBatched");
    blas.status_string = (__typeof__(blas.status_string))blas_sym("cublasGetStatusString");
    if (blas.why[0]) {
        dlclose(blas.lib);
        blas.lib = NULL;
    }
}

static attnd_status blas_fail(attnd_error *err, cublasStatus_t rc, const char *what)
{
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "cublas: %s: %s (%d)", what,
                           blas.status_string ? blas.status_string(rc) : "?", (int)rc);
}

/* g's cuBLAS handle on its stream, made on first need. Caller holds g->mu
 * with g's device current. UNIMPLEMENTED naming the library when it cannot
 * be loaded. */
static attnd_status blas_ready(attnd__gpu *g, attnd_error *err)
{
    cublasStatus_t brc;
    if (g->blas)
        return ATTND_OK;
    pthread_once(&blas.once, blas_load);
    if (!blas.lib)
        return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                               "w_uk: the GPU backend multiplies the narrow wire's weights with "
                               "cuBLAS, which could not be loaded (%s); put the CUDA toolkit's "
                               "lib directory on the loader's path", blas.why);
    if ((brc = blas.create(&g->blas)) != CUBLAS_STATUS_SUCCESS) {
        g->blas = NULL;
        return blas_fail(err, brc, "cublasCreate");
    }
    if ((brc = blas.set_stream(g->blas, g->stream)) != CUBLAS_STATUS_SUCCESS ||
        (brc = blas.set_math_mode(g->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS) {
        blas.destroy(g->blas);
        g->blas = NULL;
        return blas_fail(err, brc, "cublasSetStream");
    }
    return ATTND_OK;
}

/* The kernels' shapes (see attnd_cuda.h), with the model's names. */
static attnd_status check_layout(const attnd_kernel_kv_layout *l, attnd_error *err)
{
    attnd_kernel_kv_layout want;
    if (l->dtype != ATTND_DTYPE_BF16)
        return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                               "kv-dtype: %s; the CUDA backend stores bf16 only",
                               attnd_dtype_name(l->dtype));
    if (l->page_size < 64 || l->page_size % 64)
        return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                               "page-size: %d; the CUDA kernels need a multiple of 64", l->page_size);
    if (l->v_in_k) {
        int32_t d_c = l->d_v, d_r = l->d_k - l->d_v;
        if (d_r != 64 || (d_c != 512 && d_c != 256 && d_c != 128))
            return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                                   "model: MLA d_latent %d, d_rope %d; the CUDA kernels need "
                                   "d_latent 512, 256 or 128 and d_rope 64", d_c, d_r);
        attnd_kernel_kv_layout_mla(&want, d_c, d_r, l->page_size, l->dtype);
    } else {
        if (l->d_k != l->d_v || (l->d_k != 64 && l->d_k != 128))
            return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                                   "model: GQA head_dim %d; the CUDA kernels need 64 or 128",
                                   l->d_k);
        attnd_kernel_kv_layout_gqa(&want, l->n_kv_heads, l->d_k, l->page_size, l->dtype);
    }
    if (memcmp(&want, l, sizeof want) != 0)
        return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                               "kv: page layout differs from attnd_kernel_kv_layout_%s's",
                               l->v_in_k ? "mla" : "gqa");
    return ATTND_OK;
}

static void buf_free(gpu_buf *b)
{
    cudaFreeHost(b->h);
    cudaFree(b->d);
    memset(b, 0, sizeof *b);
}

/* Make b hold at least `bytes` (contents not kept), with a pinned host half
 * when `host`; capacity doubles, up to `max` (0: no bound) when bytes fit
 * under it. The stream must be idle (nothing queued may use b). */
static attnd_status buf_fit_max(gpu_buf *b, size_t bytes, size_t max, int host,
                                const char *what, attnd_error *err)
{
    cudaError_t rc;
    if (bytes <= b->cap && (!host || b->h))
        return ATTND_OK;
    size_t c = b->cap ? b->cap : 4096;
    while (c < bytes)
        c *= 2;
    if (max && c > max && bytes <= max)
        c = max;
    buf_free(b);
    if ((host && (rc = cudaMallocHost(&b->h, c)) != cudaSuccess) ||
        (rc = cudaMalloc(&b->d, c)) != cudaSuccess) {
        (void)cudaGetLastError();
        buf_free(b);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "%s: no memory for %zu bytes of staging: %s", what, c,
                               cudaGetErrorString(rc));
    }
    b->cap = c;
    return ATTND_OK;
}

static attnd_status buf_fit(gpu_buf *b, size_t bytes, int host, const char *what,
                            attnd_error *err)
{
    return buf_fit_max(b, bytes, 0, host, what, err);
}

attnd_status attnd__gpu_create(int32_t device, const attnd_kernel_kv_layout *l, int32_t n_pages,
                               attnd__gpu **gpu_p, attnd_error *err)
{
    int32_t n_dev = attnd_cuda_device_count();
    if (device >= n_dev)
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                               "device: cuda:%d asked for, but %d CUDA device%s usable here",
                               device, n_dev, n_dev == 1 ? " is" : "s are");
    attnd_status st = check_layout(l, err);
    cudaError_t rc;
    if (st)
        return st;
    attnd__gpu *g = calloc(1, sizeof *g);
    if (!g)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "device: out of memory");
    g->device = device;
    g->layout = *l;
    g->n_pages = n_pages;
    g->page_bytes = attnd_kernel_kv_layout_page_bytes(l);
    g->token_elems = attnd_kernel_kv_layout_token_elems(l);
    g->runs = l->v_in_k ? 1 : 2 * l->n_kv_heads;
    g->run_bytes = (size_t)l->k_token_stride * 2;
    g->run_pitch = l->v_in_k ? g->page_bytes : (size_t)l->k_head_stride * 2;

    st = attnd_cuda_ctx_create(device, NULL, &g->ctx, err);
    if (st)
        goto err_ctx;
    g->stream = (cudaStream_t)attnd_cuda_ctx_stream(g->ctx);
    st = attnd_cuda_plan_create(g->ctx, &g->plan, err);
    if (st)
        goto err_plan;
    if ((rc = cudaMalloc((void **)&g->pool, g->page_bytes * (size_t)n_pages)) != cudaSuccess) {
        (void)cudaGetLastError();
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "kv-memory: cannot allocate %zu bytes (%d pages) on cuda:%d: %s",
                             g->page_bytes * (size_t)n_pages, n_pages, device,
                             cudaGetErrorString(rc));
        goto err_pool;
    }
    g->stage_cap = (g->page_bytes > GPU_STAGE_BYTES ? g->page_bytes : GPU_STAGE_BYTES) +
                   GPU_PEND_RESERVE;
    if ((rc = cudaMallocHost((void **)&g->stage, g->stage_cap)) != cudaSuccess) {
        (void)cudaGetLastError();
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "device: no pinned memory for %zu bytes of staging: %s",
                             g->stage_cap, cudaGetErrorString(rc));
        goto err_stage;
    }
    g->pend = malloc(GPU_PEND_CAP * sizeof *g->pend);
    g->pend_page = malloc(GPU_PEND_CAP * sizeof *g->pend_page);
    g->pend_bnd = malloc((size_t)n_pages * sizeof *g->pend_bnd);
    g->pend_kv = calloc((size_t)n_pages, sizeof *g->pend_kv);
    if (!g->pend || !g->pend_page || !g->pend_bnd || !g->pend_kv) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "device: out of memory for %d pages' append marks", n_pages);
        goto err_pend;
    }
    for (int32_t p = 0; p < n_pages; p++)
        g->pend_bnd[p] = -1;
    pthread_mutex_init(&g->mu, NULL);
    *gpu_p = g;
    return ATTND_OK;

err_pend:
    free(g->pend);
    free(g->pend_page);
    free(g->pend_bnd);
    free(g->pend_kv);
    cudaFreeHost(g->stage);
err_stage:
    cudaFree(g->pool);
err_pool:
    attnd_cuda_plan_destroy(g->plan);
err_plan:
    attnd_cuda_ctx_destroy(g->ctx);
err_ctx:
    free(g);
    return st;
}

void attnd__gpu_destroy(attnd__gpu *g)
{
    if (!g)
        return;
    cudaSetDevice(g->device);
    cudaStreamSynchronize(g->stream);
    buf_free(&g->q);
    buf_free(&g->idx);
    buf_free(&g->out);
    buf_free(&g->lse);
    buf_free(&g->qn);
    buf_free(&g->proj);
    buf_free(&g->sel_lists);
    buf_free(&g->sel_work);
    buf_free(&g->sel_pos);
    buf_free(&g->gsrc);
    buf_free(&g->gpool);
    cudaFree(g->bounds);
    cudaFree(g->bounds8);
    free(g->b8_dirty);
    free(g->b8_list);
    free(g->fold);
    free(g->fold_at);
    for (int i = 0; i < g->n_ev; i++)
        cudaEventDestroy(g->ev[i]);
    cudaFreeHost(g->stage);
    free(g->pend);
    free(g->pend_page);
    free(g->pend_bnd);
    free(g->pend_kv);
    cudaFree(g->pool);
    if (g->blas)
        blas.destroy(g->blas);
    attnd_cuda_plan_destroy(g->plan);
    attnd_cuda_ctx_destroy(g->ctx);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

attnd_status attnd__gpu_host_alloc(size_t bytes, void **p, attnd_error *err)
{
    cudaError_t rc = cudaMallocHost(p, bytes);
    if (rc != cudaSuccess) {
        (void)cudaGetLastError();
        *p = NULL;
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "q: no page-locked memory for %zu bytes of outputs: %s", bytes,
                               cudaGetErrorString(rc));
    }
    return ATTND_OK;
}

void attnd__gpu_host_free(void *p)
{
    if (p)
        cudaFreeHost(p);
}

/* bytes of src copied to a 16-byte aligned place in the ring, which the
 * caller has made room for (ring_room, or GPU_PEND_RESERVE for the
 * descriptors); that place. Caller holds g->mu. */
static void *ring_put(attnd__gpu *g, const void *src, size_t bytes)
{
    g->stage_used = (g->stage_used + 15) & ~(size_t)15;
    ATTND_ASSERT(g->stage_used + bytes <= g->stage_cap);
    void *d = g->stage + g->stage_used;
    memcpy(d, src, bytes);
    g->stage_used += bytes;
    return d;
}

/* Enqueue the pending appends as one scatter, their descriptors copied
 * into the ring behind them (it stays untouched until the stream has
 * passed: gpu_sync), and clear their marks. Caller holds g->mu. */
static attnd_status pend_flush(attnd__gpu *g, attnd_error *err)
{
    attnd_status st = ATTND_OK;
    if (g->pend_n > 0) {
        const attnd_cuda_copy *d = ring_put(g, g->pend, (size_t)g->pend_n * sizeof *g->pend);
        for (int32_t i = 0; i < g->pend_n; i++) {
            g->pend_bnd[g->pend_page[i]] = -1;
            g->pend_kv[g->pend_page[i]] = 0;
        }
        const int32_t n = g->pend_n;
        g->pend_n = 0;
        st = attnd_cuda_scatter(g->ctx, d, n, err);
    }
    if (st == ATTND_OK && g->fold_n > 0) { /* the keys are in place: fold them */
        const attnd_cuda_fold *d = ring_put(g, g->fold, (size_t)g->fold_n * sizeof *g->fold);
        for (int32_t i = 0; i < g->fold_n; i++)
            g->fold_at[g->fold[i].page] = -1;
        const int32_t n = g->fold_n;
        g->fold_n = 0;
        st = attnd_cuda_bounds_fold(g->ctx, &g->layout, g->pool, g->page_bytes, g->bounds,
                                    g->bounds8, g->n_pages, d, n, err);
    }
    return st;
}

/* Enqueue the pending appends and wait for the stream (the ring is free
 * again after). Caller holds g->mu. */
static attnd_status gpu_sync(attnd__gpu *g, attnd_error *err)
{
    attnd_status st = pend_flush(g, err);
    attnd_error e2;
    attnd_status st2 = attnd_cuda_sync(g->ctx, st ? &e2 : err);
    if (st == ATTND_OK && st2 == ATTND_OK)
        g->stage_used = 0;
    return st ? st : st2;
}

/* `bytes` more at a 16-byte aligned g->stage + g->stage_used, the
 * descriptors' reserve kept: when the ring is full, enqueue and wait.
 * Caller holds g->mu. */
static attnd_status ring_room(attnd__gpu *g, size_t bytes, attnd_error *err)
{
    g->stage_used = (g->stage_used + 15) & ~(size_t)15;
    if (g->stage_used + bytes + GPU_PEND_RESERVE > g->stage_cap)
        return gpu_sync(g, err);
    return ATTND_OK;
}

/* One more pending copy, of page pg; its index. Room checked by the
 * caller (pend_n < GPU_PEND_CAP). */
static int32_t pend_add(attnd__gpu *g, int32_t pg, void *dst, const void *src,
                        uint64_t dst_pitch, uint64_t src_pitch, size_t row_bytes, size_t rows)
{
    ATTND_ASSERT(g->pend_n < GPU_PEND_CAP && row_bytes <= UINT32_MAX && rows <= UINT32_MAX);
    const int32_t i = g->pend_n++;
    g->pend[i] = (attnd_cuda_copy){.dst = dst,
                                   .src = src,
                                   .dst_pitch = dst_pitch,
                                   .src_pitch = src_pitch,
                                   .row_bytes = (uint32_t)row_bytes,
                                   .rows = (uint32_t)rows};
    g->pend_page[i] = pg;
    return i;
}

attnd_status attnd__gpu_write(attnd__gpu *g, const int32_t *pages, uint64_t t0, uint64_t n,
                              attnd_dtype dt, const void *src, attnd_error *err)
{
    const attnd_kernel_kv_layout *l = &g->layout;
    const uint64_t ps = (uint64_t)l->page_size;
    const size_t src_bytes = (size_t)g->token_elems * attnd_dtype_size(dt);
    const size_t dst_bytes = (size_t)g->token_elems * 2;
    const char *s = src;
    attnd_status st = ATTND_OK;
    cudaError_t rc;

    pthread_mutex_lock(&g->mu);
    if ((rc = cudaSetDevice(g->device)) != cudaSuccess) {
        st = cuda_fail(err, rc, "cudaSetDevice");
        goto out;
    }
    for (uint64_t t = t0, end = t0 + n; t < end;) {
        int32_t slot = (int32_t)(t % ps);
        int32_t cnt = (int32_t)(end - t < ps - (uint64_t)slot ? end - t : ps - (uint64_t)slot);
        size_t chunk = (size_t)cnt * dst_bytes;
        const int32_t pg = pages[t / ps];
        const uint64_t lo = (uint64_t)slot, hi = lo + (uint64_t)cnt, mark = g->pend_kv[pg];
        /* a large slice goes at once (after what is pending: order kept);
         * a small one waits for the scatter, unless its page has pending
         * slots it overlaps (a rewrite: the scatter keeps no order) */
        const int direct = chunk >= GPU_PEND_DIRECT;
        if ((direct || g->pend_n == GPU_PEND_CAP ||
             (mark && lo < mark >> 32 && (mark & 0xffffffffu) < hi)) &&
            (st = pend_flush(g, err)))
            goto out;
        if ((st = ring_room(g, chunk, err)))
            goto out;
        /* the slice in packed form: a page of cnt tokens, same layout */
        attnd_kernel_kv_layout packed;
        if (l->v_in_k)
            attnd_kernel_kv_layout_mla(&packed, l->d_v, l->d_k - l->d_v, cnt, l->dtype);
        else
            attnd_kernel_kv_layout_gqa(&packed, l->n_kv_heads, l->d_k, cnt, l->dtype);
        char *buf = g->stage + g->stage_used;
        attnd_kernel_kv_write_tokens(&packed, buf, 0, cnt, dt, s);
        char *dst = g->pool + (size_t)pg * g->page_bytes + (size_t)slot * g->run_bytes;
        size_t w = (size_t)cnt * g->run_bytes;
        if (direct) {
            rc = cudaMemcpy2DAsync(dst, g->run_pitch, buf, w, w, (size_t)g->runs,
                                   cudaMemcpyHostToDevice, g->stream);
            if (rc != cudaSuccess) {
                st = cuda_fail(err, rc, "cudaMemcpy2DAsync (KV append)");
                goto out;
            }
        } else {
            const uint64_t m = g->pend_kv[pg]; /* 0 again if flushed above */
            const uint64_t mlo = m ? (m & 0xffffffffu) : lo, mhi = m ? m >> 32 : hi;
            pend_add(g, pg, dst, buf, g->run_pitch, w, w, (size_t)g->runs);
            g->pend_kv[pg] = (mlo < lo ? mlo : lo) | (mhi > hi ? mhi : hi) << 32;
        }
        g->stage_used += chunk;
        s += (size_t)cnt * src_bytes;
        t += (uint64_t)cnt;
    }
out:
    pthread_mutex_unlock(&g->mu);
    return st;
}

/* One page between the device pool and host memory, on the stream (after
 * every append enqueued before it), waited for: the tier below HBM
 * (worker/tier.c) moves whole layers page by page through its bounce
 * buffers. */
static attnd_status page_copy(attnd__gpu *g, int32_t page, void *host, int to_host,
                              attnd_error *err)
{
    attnd_status st = ATTND_OK;
    cudaError_t rc;

    if (page < 0 || page >= g->n_pages)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "device: page %d not in [0, %d)", page,
                               g->n_pages);
    pthread_mutex_lock(&g->mu);
    if ((rc = cudaSetDevice(g->device)) != cudaSuccess) {
        st = cuda_fail(err, rc, "cudaSetDevice");
        goto out;
    }
    if ((st = pend_flush(g, err))) /* the page's appends first */
        goto out;
    char *dev = g->pool + (size_t)page * g->page_bytes;
    rc = to_host ? cudaMemcpyAsync(host, dev, g->page_bytes, cudaMemcpyDeviceToHost, g->stream)
                 : cudaMemcpyAsync(dev, host, g->page_bytes, cudaMemcpyHostToDevice, g->stream);
    if (rc != cudaSuccess) {
        st = cuda_fail(err, rc, to_host ? "cudaMemcpyAsync (page to host)"
                                        : "cudaMemcpyAsync (page to device)");
        goto out;
    }
    st = gpu_sync(g, err); /* host is the caller's buffer: done before return */
out:
    pthread_mutex_unlock(&g->mu);
    return st;
}

attnd_status attnd__gpu_page_read(attnd__gpu *g, int32_t page, void *dst, attnd_error *err)
{
    return page_copy(g, page, dst, 1, err);
}

attnd_status attnd__gpu_page_write(attnd__gpu *g, int32_t page, const void *src,
                                   attnd_error *err)
{
    return page_copy(g, page, (void *)src, 0, err);
}

/* Heads form: q_nope . uk per head into the absorbed query g->q.d (bf16
 * [rows][H][d_k]), q_rope copied behind it. In column-major terms, per head
 * h: Q_c^T (d_c x q_rows, ld H d_k) = W^T (d_c x d_nope, ld d_c) .
 * Q_nope^T (d_nope x q_rows, ld H dq): one strided batched GEMM over the
 * heads (strides d_nope d_c, dq, d_k). Caller holds g->mu. */
static attnd_status absorb(attnd__gpu *g, const attnd__gpu_proj *p, int32_t q_rows,
                           int32_t H, attnd_error *err)
{
    const attnd_kernel_kv_layout *l = &g->layout;
    const int32_t dc = l->d_v, dr = l->d_k - l->d_v, dk = l->d_k, dq = p->d_nope + dr;
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t brc = blas.gemm_ex(
        g->blas, CUBLAS_OP_N, CUBLAS_OP_N, dc, q_rows, p->d_nope, &one,
        p->uk, CUDA_R_16BF, dc, (long long)p->d_nope * dc,
        g->qn.d, CUDA_R_16BF, H * dq, dq, &zero,
        g->q.d, CUDA_R_16BF, H * dk, dk, H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (brc != CUBLAS_STATUS_SUCCESS)
        return blas_fail(err, brc, "absorb (q_nope . W_UK)");
    cudaError_t rc = cudaMemcpy2DAsync((char *)g->q.d + (size_t)dc * 2, (size_t)dk * 2,
                                       (const char *)g->qn.d + (size_t)p->d_nope * 2,
                                       (size_t)dq * 2, (size_t)dr * 2, (size_t)q_rows * H,
                                       cudaMemcpyDeviceToDevice, g->stream);
    return rc == cudaSuccess ? ATTND_OK : cuda_fail(err, rc, "cudaMemcpy2DAsync (q_rope)");
}

/* d_vo: the latent output g->out.d (float32 [rows][H][d_c]) . uv per head
 * into g->proj.d (float32 [rows][H][d_vo]): P^T (d_vo x q_rows, ld H d_vo)
 * = V^T (d_vo x d_c, ld d_vo) . O^T (d_c x q_rows, ld H d_c), batched over
 * the heads (strides d_c d_vo, d_c, d_vo). Caller holds g->mu. */
static attnd_status up_project(attnd__gpu *g, const attnd__gpu_proj *p, int32_t q_rows,
                               int32_t H, attnd_error *err)
{
    const int32_t dc = g->layout.d_v;
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t brc = blas.sgemm(
        g->blas, CUBLAS_OP_N, CUBLAS_OP_N, p->d_vo, q_rows, dc, &one,
        (const float *)p->uv, p->d_vo, (long long)dc * p->d_vo,
        (const float *)g->out.d, H * dc, dc, &zero,
        (float *)g->proj.d, H * p->d_vo, p->d_vo, H);
    return brc == CUBLAS_STATUS_SUCCESS ? ATTND_OK
                                        : blas_fail(err, brc, "up-projection (o . W_UV)");
}

/* Upload what page selection sel needs and enqueue it, its kept pages
 * into g->idx.d (the batch's page_idx, uploaded before). Under g->mu, the
 * stream idle when buffers must grow. */
static attnd_status select_enqueue(attnd__gpu *g, const attnd_kernel_select_batch *sel, size_t work,
                                   size_t n_idx, attnd_error *err)
{
    size_t n_out = 0, n_cand = 0;
    int32_t n_chunks = 0;
    cudaError_t rc;
    attnd_status st;

    for (int32_t i = 0; i < sel->n_lists; i++) {
        const attnd_kernel_select_list *sl = &sel->lists[i];
        size_t c = (size_t)sl->cand0 + (size_t)sl->n_cand, o = (size_t)sl->out0 + (size_t)sl->keep;
        n_out = o > n_out ? o : n_out;
        ATTND_ASSERT(o <= n_idx); /* each list's pages inside the batch's page_idx */
        n_cand = c > n_cand ? c : n_cand;
        int32_t ch = attnd_kernel_select_list_units(sl);
        n_chunks = sl->chunk0 + ch > n_chunks ? sl->chunk0 + ch : n_chunks;
    }
    if (!g->bounds)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "select: no key bounds on the GPU");
    const size_t lists_bytes = (size_t)sel->n_lists * sizeof(attnd_kernel_select_list);
    const size_t meta_bytes = lists_bytes + ((size_t)n_chunks + n_cand) * 4;
    if (meta_bytes > g->sel_lists.cap || work * 4 > g->sel_work.cap || n_idx * 4 > g->sel_pos.cap ||
        !g->sel_lists.h) {
        if ((rc = cudaStreamSynchronize(g->stream)) != cudaSuccess)
            return cuda_fail(err, rc, "cudaStreamSynchronize");
    }
    /* the lists, each scoring unit's list and the candidates in one copy
     * through a pinned half: a copy from pageable memory first waits for
     * the stream (CUDA's documented behaviour for pageable host-to-device
     * copies), here for the query's upload */
    if ((st = buf_fit(&g->sel_lists, meta_bytes, 1, "select", err)) ||
        (st = buf_fit(&g->sel_work, work * 4 + 4, 0, "select", err)) ||
        (st = buf_fit(&g->sel_pos, n_idx * 4 + 4, 0, "select", err)))
        return st;
    if ((st = events_ready(g, err)))
        return st;
    /* the stream was idle when decode_locked began: nothing queued reads the
     * pinned halves of an earlier call */
    memcpy(g->sel_lists.h, sel->lists, lists_bytes);
    int32_t *unit_list = (int32_t *)(void *)((char *)g->sel_lists.h + lists_bytes);
    for (int32_t i = 0; i < sel->n_lists; i++)
        for (int32_t u = 0, ch = attnd_kernel_select_list_units(&sel->lists[i]); u < ch; u++)
            unit_list[sel->lists[i].chunk0 + u] = i;
    memcpy(unit_list + n_chunks, sel->cand_idx, n_cand * 4);
    if ((rc = cudaMemcpyAsync(g->sel_lists.d, g->sel_lists.h, meta_bytes, cudaMemcpyHostToDevice,
                              g->stream)) != cudaSuccess)
        return cuda_fail(err, rc, "cudaMemcpyAsync (selection)");
    const int32_t *d_units = (const int32_t *)(const void *)((const char *)g->sel_lists.d + lists_bytes);
    attnd_cuda_select cs = {
        .n_lists = sel->n_lists,
        .n_chunks = n_chunks,
        .lists = g->sel_lists.d,
        .n_seqs = sel->n_seqs,
        .q_tokens = sel->q_tokens,
        .n_q_heads = sel->n_q_heads,
        .list_groups = sel->list_groups,
        .head_agg = sel->head_agg,
        .kv = g->layout,
        .q = g->q.d,
        .bounds = g->bounds,
        .bounds8 = g->bounds8,
        .bounds_pages = g->n_pages,
        .cand_idx = d_units + n_chunks,
        .sel_pages = g->idx.d,
        .sel_pos = g->sel_pos.d,
        .work = g->sel_work.d,
        .unit_list = d_units,
    };
    cudaEventRecord(g->ev[EV_SEL0], g->stream);
    if (g->bounds8 && g->b8_n) { /* the changed pages' compact rows (their bf16 rows are up) */
        const size_t nb = (size_t)g->b8_n * sizeof *g->b8_list;
        if ((st = ring_room(g, nb, err)))
            return st;
        const int32_t *list = ring_put(g, g->b8_list, nb);
        for (int32_t i = 0; i < g->b8_n; i++)
            g->b8_dirty[g->b8_list[i]] = 0;
        const int32_t n = g->b8_n;
        g->b8_n = 0;
        if ((st = attnd_cuda_bounds8_make(g->ctx, &g->layout, g->bounds, g->bounds8, g->n_pages,
                                          list, n, err)))
            return st;
    }
    if ((st = attnd_cuda_select_run(g->ctx, &cs, err)))
        return st;
    cudaEventRecord(g->ev[EV_SEL1], g->stream);
    return ATTND_OK;
}

/* The device bounds (both forms where compact ones apply, or neither)
 * and the fold list, on first use. Caller holds g->mu. */
static attnd_status bounds_alloc(attnd__gpu *g, attnd_error *err)
{
    const attnd_kernel_kv_layout *l = &g->layout;
    if (g->bounds)
        return ATTND_OK;
    size_t bytes = attnd_kernel_kv_bounds_elems(l) * sizeof(uint16_t) * (size_t)g->n_pages;
    size_t b8 = attnd_kernel_kv_bounds8_row(l) * (size_t)l->n_kv_heads * (size_t)g->n_pages;
    if (!g->fold) /* kept if the device's part fails below */
        g->fold = malloc(GPU_PEND_CAP * sizeof *g->fold);
    if (!g->fold_at)
        g->fold_at = malloc((size_t)g->n_pages * sizeof *g->fold_at);
    if (!g->fold || !g->fold_at) {
        free(g->fold);
        free(g->fold_at);
        g->fold = NULL;
        g->fold_at = NULL;
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv: no memory for the pages' bound folds");
    }
    for (int32_t p = 0; p < g->n_pages; p++)
        g->fold_at[p] = -1;
    if (cudaMalloc((void **)&g->bounds, bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        g->bounds = NULL;
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv: no GPU memory for %zu bytes of page key bounds", bytes);
    }
    if (attnd__gpu_bounds_compact(l)) {
        g->b8_dirty = calloc((size_t)g->n_pages, 1);
        g->b8_list = malloc((size_t)g->n_pages * sizeof *g->b8_list);
        if (!g->b8_dirty || !g->b8_list || cudaMalloc((void **)&g->bounds8, b8) != cudaSuccess) {
            (void)cudaGetLastError();
            free(g->b8_dirty);
            free(g->b8_list);
            cudaFree(g->bounds);
            g->b8_dirty = NULL;
            g->b8_list = NULL;
            g->bounds8 = NULL;
            g->bounds = NULL;
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "kv: no memory for %zu bytes of compact page key bounds", b8);
        }
    }
    return ATTND_OK;
}

/* Page p's compact rows are to be made again at the next selection. */
static void b8_mark(attnd__gpu *g, int32_t p)
{
    if (g->bounds8 && !g->b8_dirty[p]) {
        g->b8_dirty[p] = 1;
        g->b8_list[g->b8_n++] = p;
    }
}

attnd_status attnd__gpu_bounds_upload(attnd__gpu *g, const uint16_t *bounds, int32_t p,
                                      attnd_error *err)
{
    const attnd_kernel_kv_layout *l = &g->layout;
    const size_t row = (size_t)2 * l->d_k * sizeof(uint16_t);
    attnd_status st = ATTND_OK;
    cudaError_t rc;

    pthread_mutex_lock(&g->mu);
    /* the tiers' mover installs pages read back from its own thread */
    if ((rc = cudaSetDevice(g->device)) != cudaSuccess) {
        st = cuda_fail(err, rc, "cudaSetDevice");
        goto out;
    }
    if ((st = bounds_alloc(g, err)))
        goto out;
    b8_mark(g, p); /* its compact rows, at the next selection */
    if (g->fold_at[p] >= 0) /* the host's rows below hold what it would fold */
        g->fold[g->fold_at[p]].n = 0;
    /* the page's rows of every KV head into the pinned ring, for the next
     * scatter (pend_flush); a page already pending gets its rows
     * rewritten in place. A pageable copy per head held the caller ~5 us
     * each (GQA llama3-8b, 8 heads x 4 sessions per decode step: ~170 us
     * of a 390 us sparse call on an H100), a strided copy per page ~2-3 */
    const size_t all = row * (size_t)l->n_kv_heads;
    char *buf;
    if (g->pend_bnd[p] >= 0) {
        buf = (char *)(uintptr_t)g->pend[g->pend_bnd[p]].src;
    } else {
        if (g->pend_n == GPU_PEND_CAP && (st = pend_flush(g, err)))
            goto out;
        if ((st = ring_room(g, all, err)))
            goto out;
        buf = g->stage + g->stage_used;
        g->stage_used += all;
        g->pend_bnd[p] = pend_add(g, p, g->bounds + attnd_kernel_kv_bounds_at(l, g->n_pages, 0, p),
                                  buf, row * (size_t)g->n_pages, row, row, (size_t)l->n_kv_heads);
    }
    for (int32_t h = 0; h < l->n_kv_heads; h++)
        memcpy(buf + row * (size_t)h, bounds + attnd_kernel_kv_bounds_at(l, g->n_pages, h, p), row);
out:
    pthread_mutex_unlock(&g->mu);
    return st;
}

attnd_status attnd__gpu_kick(attnd__gpu *g, attnd_error *err)
{
    attnd_status st = ATTND_OK;
    cudaError_t rc;

    pthread_mutex_lock(&g->mu);
    if ((rc = cudaSetDevice(g->device)) != cudaSuccess)
        st = cuda_fail(err, rc, "cudaSetDevice");
    else
        st = pend_flush(g, err);
    pthread_mutex_unlock(&g->mu);
    return st;
}

attnd_status attnd__gpu_bounds_fold(attnd__gpu *g, int32_t p, int32_t slot0, int32_t n,
                                    attnd_error *err)
{
    attnd_status st = ATTND_OK;
    cudaError_t rc;

    pthread_mutex_lock(&g->mu);
    if ((rc = cudaSetDevice(g->device)) != cudaSuccess) {
        st = cuda_fail(err, rc, "cudaSetDevice");
        goto out;
    }
    if ((st = bounds_alloc(g, err)))
        goto out;
    const int32_t at = g->fold_at[p]; /* the fold makes the compact rows too */
    if (at >= 0 && g->fold[at].n > 0 && g->fold[at].slot0 + g->fold[at].n == slot0) {
        g->fold[at].n += n; /* the same run of tokens, longer */
        goto out;
    }
    /* a page once per launch: a fold of p still waiting goes first */
    if ((at >= 0 || g->fold_n == GPU_PEND_CAP) && (st = pend_flush(g, err)))
        goto out;
    g->fold_at[p] = g->fold_n;
    g->fold[g->fold_n++] = (attnd_cuda_fold){.page = p, .slot0 = slot0, .n = n};
out:
    pthread_mutex_unlock(&g->mu);
    return st;
}

/* Decode batch b, with the projections of proj, the page selection sel
 * and the token gather gath when given (not both of the last two), in
 * stream order: upload the query (and the page lists, the gather's
 * sources), the gather (the decode then reads g->gpool.d), the absorb GEMM
 * (heads form: g->q.d becomes the absorbed query), the selection (scores
 * with g->q.d, writes the kept pages into g->idx.d), the decode, the
 * up-projection, the downloads; one synchronization. pages_out (with sel):
 * the selection only: no decode, the batch's page lists as the selection
 * left them downloaded there instead of the outputs. */
static attnd_status decode_locked(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                                  const attnd__gpu_proj *proj, const attnd_kernel_select_batch *sel,
                                  size_t sel_work, int32_t *pos_out, uint64_t *select_ns_p,
                                  const attnd__gpu_gather *gath, int32_t *pages_out,
                                  const attnd__gpu_overlap *ov, attnd_error *err)
{
    const attnd_kernel_kv_layout *l = &g->layout;
    const int32_t q_rows = b->n_seqs * b->q_tokens, H = b->n_q_heads;
    const size_t rows = (size_t)q_rows * (size_t)H;
    const size_t q_elems = rows * (size_t)l->d_k, out_elems = rows * (size_t)l->d_v;
    const int32_t lg = b->list_groups > 1 ? b->list_groups : 1; /* sparse: per KV head group */
    const size_t n_idx = (size_t)b->page_indptr[(size_t)b->n_seqs * lg];
    const int heads = proj && proj->d_nope > 0, vo = proj && proj->d_vo > 0;
    const size_t qn_elems = heads ? rows * (size_t)(proj->d_nope + l->d_k - l->d_v) : 0;
    const size_t proj_elems = vo ? rows * (size_t)proj->d_vo : 0;
    /* the gather's entries and pages (none: the decode reads the pool) */
    const size_t g_entries = gath ? (size_t)gath->n_pages * (size_t)gath->n_heads *
                                        (size_t)l->page_size : 0;
    const size_t g_bytes = gath ? (size_t)gath->n_pages * g->page_bytes : 0;
    /* gathered pages: at most a quarter of the pool's bytes (64 MiB at
     * least), so that token lists cannot take the GPU's memory from the
     * pool's other users */
    const size_t pool_bytes = g->page_bytes * (size_t)g->n_pages;
    const size_t g_max = pool_bytes / 4 > ((size_t)64 << 20) ? pool_bytes / 4 : (size_t)64 << 20;
    attnd_status st = ATTND_OK;
    cudaError_t rc;

    if (g_bytes > g_max)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "given_idx: the batch's token lists fill %zu pages (%zu bytes); "
                               "a call gathers at most %zu bytes (a quarter of the KV pool): "
                               "send fewer tokens or a smaller batch",
                               (size_t)gath->n_pages, g_bytes, g_max);

    ATTND_ASSERT(!(gath && sel) && (!pages_out || sel));

    if (b->q_tokens > 16)
        return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                               "q_tokens: %d; the CUDA backend takes 1..16", b->q_tokens);
    if ((heads || vo) && (!l->v_in_k || !g->blas)) /* weights were uploaded: blas exists */
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "q_form: the narrow wire's projections apply to MLA models "
                               "whose weights were loaded");
    attnd_engine_phases *ph = ov ? ov->times : NULL;
    pthread_mutex_lock(&g->mu);
    if ((rc = cudaSetDevice(g->device)) != cudaSuccess) {
        st = cuda_fail(err, rc, "cudaSetDevice");
        goto out;
    }
    if (ph && (st = events_ready(g, err)))
        goto out;
    if (ph)
        cudaEventRecord(g->ev[EV_CALL0], g->stream);
    if ((st = pend_flush(g, err))) /* this step's appends, one launch */
        goto out;
    gpu_buf *qin = heads ? &g->qn : &g->q; /* where the query as sent lands */
    const size_t qin_elems = heads ? qn_elems : q_elems;
    /* the query through the pinned half: converted to bf16, or a small
     * bf16 one copied (GPU_Q_STAGE_MAX) */
    const int q_conv = b->q_dtype != ATTND_DTYPE_BF16;
    const int q_stage = q_conv || qin_elems * 2 <= GPU_Q_STAGE_MAX;
    /* the page lists go up unless the selections write all of them (in
     * order, side by side: anything else uploads) */
    size_t sel_end = 0;
    for (int32_t i = 0; sel && i < sel->n_lists; i++)
        sel_end = (size_t)sel->lists[i].out0 == sel_end ? sel_end + (size_t)sel->lists[i].keep
                                                         : SIZE_MAX;
    const int idx_up = !sel || sel_end != n_idx;
    /* growing frees buffers a queued copy may read: drain the stream first */
    if ((q_elems * 2 > g->q.cap || qin_elems * 2 > qin->cap || (q_stage && !qin->h) ||
         (n_idx + 1) * 4 > g->idx.cap || out_elems * 4 > g->out.cap || rows * 4 > g->lse.cap ||
         proj_elems * 4 > g->proj.cap || g_entries * 4 > g->gsrc.cap ||
         g_bytes > g->gpool.cap) &&
        (st = gpu_sync(g, err)))
        goto out;
    if ((st = buf_fit(&g->q, q_elems * 2, !heads && q_stage, "q", err)) ||
        (heads && (st = buf_fit(&g->qn, qn_elems * 2, q_stage, "q", err))) ||
        (st = buf_fit(&g->idx, (n_idx + 1) * 4, 1, "session_ids", err)) ||
        (st = buf_fit(&g->out, out_elems * 4, 0, "q", err)) ||
        (st = buf_fit(&g->lse, rows * 4, 0, "q", err)) ||
        (vo && (st = buf_fit(&g->proj, proj_elems * 4, 0, "q", err))) ||
        (g_entries && (st = buf_fit(&g->gsrc, g_entries * 4, 1, "given_idx", err))) ||
        (g_bytes && (st = buf_fit_max(&g->gpool, g_bytes, g_max, 0, "given_idx", err))))
        goto out;
    if (q_conv)
        attnd_dtype_convert(ATTND_DTYPE_BF16, qin->h, b->q_dtype, b->q, qin_elems);
    else if (q_stage)
        memcpy(qin->h, b->q, qin_elems * 2);
    if ((rc = cudaMemcpyAsync(qin->d, q_stage ? qin->h : b->q, qin_elems * 2,
                              cudaMemcpyHostToDevice, g->stream)) != cudaSuccess) {
        st = cuda_fail(err, rc, "cudaMemcpyAsync (query)");
        goto out;
    }
    if (idx_up) {
        memcpy(g->idx.h, b->page_idx, n_idx * 4);
        if ((rc = cudaMemcpyAsync(g->idx.d, g->idx.h, n_idx * 4, cudaMemcpyHostToDevice,
                                  g->stream)) != cudaSuccess) {
            st = cuda_fail(err, rc, "cudaMemcpyAsync (page lists)");
            goto out;
        }
    }
    if (g_entries) { /* the listed tokens into whole pages */
        memcpy(g->gsrc.h, gath->src, g_entries * 4);
        if ((rc = cudaMemcpyAsync(g->gsrc.d, g->gsrc.h, g_entries * 4, cudaMemcpyHostToDevice,
                                  g->stream)) != cudaSuccess) {
            st = cuda_fail(err, rc, "cudaMemcpyAsync (token lists)");
            goto out;
        }
        if ((st = attnd_cuda_gather(g->ctx, l, g->pool, g->n_pages, g->gpool.d, gath->n_pages,
                                    gath->n_heads, g->gsrc.d, err)))
            goto out;
    }
    attnd_cuda_batch cb = {
        .n_seqs = b->n_seqs,
        .q_tokens = b->q_tokens,
        .n_q_heads = b->n_q_heads,
        .list_groups = lg,
        .scale = b->scale,
        .kv = *l,
        .pool_pages = g_entries ? gath->n_pages : g->n_pages,
        .q = g->q.d,
        .pool = g_entries ? g->gpool.d : g->pool,
        .page_idx = g->idx.d,
        .out_dtype = ATTND_DTYPE_F32,
        .out = g->out.d,
        .lse = g->lse.d,
    };
    /* the decode's plan (its host lists: the kept pages' counts are known)
     * goes up now, while the host prepares the selection, so the decode
     * follows the selection's kernels at once */
    if (!pages_out &&
        (st = attnd_cuda_plan_make(g->plan, &cb, b->page_indptr, b->last_page_len, NULL, err)))
        goto out;
    /* the absorbed query before the selection: it scores with g->q.d */
    if (heads && (st = absorb(g, proj, q_rows, H, err)))
        goto out;
    if (sel && (st = select_enqueue(g, sel, sel_work, n_idx, err))) /* pages into g->idx.d */
        goto out;
    if (pages_out) { /* the selection only: the lists it completed */
        if (n_idx && (rc = cudaMemcpyAsync(pages_out, g->idx.d, n_idx * 4, cudaMemcpyDeviceToHost,
                                           g->stream)) != cudaSuccess) {
            st = cuda_fail(err, rc, "cudaMemcpyAsync (selected pages)");
            goto out;
        }
    } else {
        if ((st = attnd_cuda_decode_run(g->plan, &cb, err)))
            goto out;
        if (vo && (st = up_project(g, proj, q_rows, H, err)))
            goto out;
        if ((rc = cudaMemcpyAsync(b->out, vo ? g->proj.d : g->out.d,
                                  (vo ? proj_elems : out_elems) * 4, cudaMemcpyDeviceToHost,
                                  g->stream)) != cudaSuccess ||
            (b->lse && (rc = cudaMemcpyAsync(b->lse, g->lse.d, rows * 4,
                                             cudaMemcpyDeviceToHost, g->stream)) != cudaSuccess)) {
            st = cuda_fail(err, rc, "cudaMemcpyAsync (download)");
            goto out;
        }
    }
    if (sel && pos_out && n_idx &&
        (rc = cudaMemcpyAsync(pos_out, g->sel_pos.d, n_idx * 4, cudaMemcpyDeviceToHost,
                              g->stream)) != cudaSuccess) {
        st = cuda_fail(err, rc, "cudaMemcpyAsync (selection positions)");
        goto out;
    }
    if (ph)
        cudaEventRecord(g->ev[EV_CALL1], g->stream);
    const uint64_t t_enq = ph ? attnd_clock_ns() : 0;
    if (ov && ov->run) /* the host's share, while the GPU works */
        ov->run(ov->arg);
    const uint64_t t_ov = ph ? attnd_clock_ns() : 0;
    st = gpu_sync(g, err);
    if (st == ATTND_OK && sel && select_ns_p) {
        float ms = 0.f;
        cudaEventElapsedTime(&ms, g->ev[EV_SEL0], g->ev[EV_SEL1]);
        *select_ns_p = (uint64_t)((double)ms * 1e6);
    }
    if (st == ATTND_OK && ph) {
        float ms = 0.f;
        cudaEventElapsedTime(&ms, g->ev[EV_CALL0], g->ev[EV_CALL1]);
        ph->gpu_ns = (uint64_t)((double)ms * 1e6);
        ph->enqueue_ns = t_enq - ov->t_call;
        ph->overlap_ns = t_ov - t_enq;
        ph->wait_ns = attnd_clock_ns() - t_ov;
    }
out:
    pthread_mutex_unlock(&g->mu);
    return st;
}

attnd_status attnd__gpu_decode(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                               const attnd__gpu_proj *proj, const attnd__gpu_overlap *ov,
                               attnd_error *err)
{
    return decode_locked(g, b, proj, NULL, 0, NULL, NULL, NULL, NULL, ov, err);
}

attnd_status attnd__gpu_select_pages(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                                     const attnd__gpu_proj *proj,
                                     const attnd_kernel_select_batch *sel, size_t sel_work,
                                     int32_t *pages_out, int32_t *pos_out, uint64_t *select_ns_p,
                                     attnd_error *err)
{
    return decode_locked(g, b, proj, sel, sel_work, pos_out, select_ns_p, NULL, pages_out, NULL,
                         err);
}

attnd_status attnd__gpu_decode_gather(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                                      const attnd__gpu_proj *proj, const attnd__gpu_gather *gath,
                                      const attnd__gpu_overlap *ov, attnd_error *err)
{
    return decode_locked(g, b, proj, NULL, 0, NULL, NULL, gath, NULL, ov, err);
}

attnd_status attnd__gpu_decode_select(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                                      const attnd__gpu_proj *proj, const attnd_kernel_select_batch *sel,
                                      size_t sel_work, int32_t *pos_out, uint64_t *select_ns_p,
                                      const attnd__gpu_overlap *ov, attnd_error *err)
{
    return decode_locked(g, b, proj, sel, sel_work, pos_out, select_ns_p, NULL, NULL, ov, err);
}

attnd_status attnd__gpu_upload(attnd__gpu *g, attnd_dtype dst_t, attnd_dtype src_t,
                               const void *src, size_t n, void **dev_p, attnd_error *err)
{
    const size_t bytes = n * attnd_dtype_size(dst_t);
    void *tmp = NULL, *dev = NULL;
    attnd_status st = ATTND_OK;
    cudaError_t rc;

    if (dst_t != src_t && !(tmp = malloc(bytes)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "w_uk: no host memory for %zu bytes of conversion", bytes);
    if (tmp)
        attnd_dtype_convert(dst_t, tmp, src_t, src, n);
    pthread_mutex_lock(&g->mu);
    if ((rc = cudaSetDevice(g->device)) != cudaSuccess) {
        st = cuda_fail(err, rc, "cudaSetDevice");
        goto out;
    }
    if ((st = blas_ready(g, err))) /* weights are for the products */
        goto out;
    if ((rc = cudaMalloc(&dev, bytes)) != cudaSuccess) {
        (void)cudaGetLastError();
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "w_uk: cannot allocate %zu bytes of weights on cuda:%d: %s", bytes,
                             g->device, cudaGetErrorString(rc));
        goto out;
    }
    /* pageable source: the copy is done when the sync returns */
    if ((rc = cudaMemcpyAsync(dev, tmp ? tmp : src, bytes, cudaMemcpyHostToDevice,
                              g->stream)) != cudaSuccess) {
        st = cuda_fail(err, rc, "cudaMemcpyAsync (weights)");
        goto out;
    }
    st = gpu_sync(g, err);
out:
    if (st && dev)
        cudaFree(dev);
    pthread_mutex_unlock(&g->mu);
    free(tmp);
    if (st == ATTND_OK)
        *dev_p = dev;
    return st;
}

void attnd__gpu_free(attnd__gpu *g, void *dev)
{
    if (!g || !dev)
        return;
    pthread_mutex_lock(&g->mu);
    cudaSetDevice(g->device);
    cudaFree(dev); /* waits for work that may use it; none does: the engine
                      frees a matrix when no attend holds it */
    pthread_mutex_unlock(&g->mu);
}
