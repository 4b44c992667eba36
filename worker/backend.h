/* The engine's compute backends (internal to worker/).
 *
 * The CPU backend is the engine itself: pages in a host mapping, the
 * kernels of attnd_kernels.h on its thread pool. The CUDA backend
 * (backend_cuda.c, built only when ATTND_HAVE_CUDA) keeps the page bytes in
 * one cudaMalloc on a GPU, carved into pages of the same layout as the CPU
 * pool, and runs kernels/cuda. The engine keeps the page bookkeeping (free
 * stack, reservations, page tables) on the host in both cases; the backend
 * only moves bytes and computes. Without CUDA, backend_none.c answers every
 * create with UNIMPLEMENTED, so `--device cuda:N` fails at start.
 *
 * Thread safety: every call may come from any thread. The CUDA backend runs
 * one call at a time (one mutex around each call: uploads, launches and
 * downloads of one Attend never interleave with another's); its work is
 * ordered on one stream, so a write is visible to every later decode. */
#ifndef ATTND_WORKER_BACKEND_H
#define ATTND_WORKER_BACKEND_H

#include <stdint.h>

#include "attnd_kernels.h"
#include "attnd_worker.h"

/* "cpu" (or "") -> -1; "cuda" -> 0; "cuda:N" -> N. INVALID_ARGUMENT names
 * the field "device" otherwise. */
attnd_status attnd__device_parse(const char *s, int32_t *device_p, attnd_error *err);

typedef struct attnd__gpu attnd__gpu;

/* A GPU pool of n_pages pages of layout l on CUDA device `device`, with
 * its stream, plan and staging buffers. UNAVAILABLE when there is no such
 * device, UNIMPLEMENTED when this build has no CUDA or the kernels do not
 * handle the layout (the message names the model dimension), and
 * RESOURCE_EXHAUSTED when device or pinned memory runs out. The layout is
 * copied. Caller frees with attnd__gpu_destroy. */
attnd_status attnd__gpu_create(int32_t device, const attnd_kernel_kv_layout *l, int32_t n_pages,
                               attnd__gpu **gpu_p, attnd_error *err);
void attnd__gpu_destroy(attnd__gpu *g);

/* Store n wire-form entries ([n][token_elems] of dt, caller-owned, read
 * before return) at token positions t0 .. t0 + n - 1 of a layer whose page
 * table is `pages` (the pages must already be there). Converts on the host
 * into pinned staging and enqueues the copies of the page slices; the next
 * decode sees them (same stream). INTERNAL on a CUDA error. */
attnd_status attnd__gpu_write(attnd__gpu *g, const int32_t *pages, uint64_t t0, uint64_t n,
                              attnd_dtype dt, const void *src, attnd_error *err);

/* The narrow MLA wire's products on the GPU (cuBLAS, one strided batched
 * GEMM over the heads each), for attnd__gpu_decode:
 *   d_nope > 0  b->q is the heads-form query [rows][Hq][d_nope + d_r] (any
 *               dtype, uploaded as bf16); the absorbed query the kernel
 *               reads is q_nope . uk per head (bf16 [Hq][d_nope][d_c],
 *               float32 accumulation, rounded to bf16 as any query the
 *               kernel reads) followed by q_rope;
 *   d_vo > 0    b->out receives [rows][Hq][d_vo] = the kernel's float32
 *               latent output . uv per head (float32 [Hq][d_c][d_vo]).
 * uk and uv are device buffers from attnd__gpu_upload. */
typedef struct attnd__gpu_proj {
    int32_t d_nope;
    const void *uk;
    int32_t d_vo;
    const void *uv;
} attnd__gpu_proj;

/* Decode batch b on the GPU and wait for it. b is as for attnd_kernel_decode
 * with host pointers throughout (q of any dtype, converted to bf16 here; the
 * page lists; float32 out and lse, lse may be NULL) except pool, which is
 * ignored (the GPU pool is used), and kv, which must be the layout the
 * backend was created with. proj (may be NULL): the projections above.
 * Allocates only when a batch is larger than any before it. Errors name
 * the field (q_tokens over 16: UNIMPLEMENTED). ov (may be NULL): host work
 * run once while the GPU works; a call that fails before its work is
 * enqueued does not run it (ov->run can tell by what it clears). */
/* Enqueue the appends and folds waiting for the next reader of the pool
 * now (they run while the host builds the decode's lists). INTERNAL on a
 * CUDA error. */
attnd_status attnd__gpu_kick(attnd__gpu *g, attnd_error *err);

/* Host work run while the GPU decodes: after everything is enqueued,
 * before the wait (run NULL: none); and where the call's time went: when
 * times is not NULL the decode fills its enqueue, overlap, wait and gpu
 * phases, counted from t_call (attnd_clock_ns when the batch was handed
 * over). */
typedef struct attnd__gpu_overlap {
    void (*run)(void *arg);
    void *arg;
    uint64_t t_call;
    attnd_engine_phases *times;
} attnd__gpu_overlap;

attnd_status attnd__gpu_decode(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                               const attnd__gpu_proj *proj, const attnd__gpu_overlap *ov,
                               attnd_error *err);

/* n elements of src (src_t, host, read before return) into a new device
 * buffer of dst_t (BF16 or F32), converted on the host: *dev_p, freed with
 * attnd__gpu_free. RESOURCE_EXHAUSTED, or INTERNAL on a CUDA error. */
attnd_status attnd__gpu_upload(attnd__gpu *g, attnd_dtype dst_t, attnd_dtype src_t,
                               const void *src, size_t n, void **dev_p, attnd_error *err);
void attnd__gpu_free(attnd__gpu *g, void *dev);

/* Copy GPU page `page` to host memory dst / from host memory src
 * (page_bytes), waiting for the copy: the tier below HBM moves pages this
 * way (worker/TIERS.md). INTERNAL on a CUDA error. */
attnd_status attnd__gpu_page_read(attnd__gpu *g, int32_t page, void *dst, attnd_error *err);
attnd_status attnd__gpu_page_write(attnd__gpu *g, int32_t page, const void *src,
                                   attnd_error *err);

/* Sparse policies. Keep the GPU's copy of page p's key bounds (every KV
 * head) equal to the host's (bounds: the engine's head-major array of
 * n_pages pages, attnd_kernel_kv_bounds_at); made on first use. The upload
 * waits in the pinned ring for the next decode (one scatter kernel for
 * all); where attnd__gpu_bounds_compact holds, the GPU also makes the
 * page's compact rows (bitwise the host's attnd_kernel_kv_bounds8_make)
 * before its next selection, and scores those. INTERNAL on a CUDA error,
 * RESOURCE_EXHAUSTED without device memory for it. */
attnd_status attnd__gpu_bounds_upload(attnd__gpu *g, const uint16_t *bounds, int32_t p,
                                      attnd_error *err);
/* Fold the keys of tokens [slot0, slot0 + n) of page p (bf16, written by
 * attnd__gpu_write) into the GPU's copy of p's key bounds, on the GPU
 * (attnd_cuda_bounds_fold: bitwise what the host's fold of bf16 keys
 * gives; slot0 0 starts them over), right after the keys' copies; the
 * compact rows follow as above. The host's copy is the caller's to fold,
 * before any later attnd__gpu_bounds_upload of p (which drops a fold still
 * waiting: the host's rows hold it). Made on first use as above. */
attnd_status attnd__gpu_bounds_fold(attnd__gpu *g, int32_t p, int32_t slot0, int32_t n,
                                    attnd_error *err);
/* Whether a GPU engine of layout l selects on compact bounds (the CPU's
 * integer scoring, so the same pages as a CPU engine), else on bf16 ones:
 * GQA layouts with d_k a multiple of 4, at most ATTND__GPU_COMPACT_MAX_DK.
 * MLA keeps the bf16 bounds: its scoring is arithmetic-bound either way
 * (ncu, H100, DeepSeek-V3 batch 4: 21.0 us compact, 21.7 us bf16) and the
 * compact rows cost a kernel more per selection (9 us); GQA's scoring
 * reads half the bytes. */
#define ATTND__GPU_COMPACT_MAX_DK 1024
static inline int attnd__gpu_bounds_compact(const attnd_kernel_kv_layout *l)
{
    return !l->v_in_k && l->d_k % 4 == 0 && l->d_k <= ATTND__GPU_COMPACT_MAX_DK;
}
/* attnd__gpu_decode after running page selection sel on the GPU (the
 * kernels/cuda selection of the lists sel describes, prepared on the host
 * by attnd_kernel_select_prepare: its kept pages land in the uploaded page_idx at
 * each list's out0, so b->page_idx holds anything there), with the bounds
 * uploaded above. The selection scores pages with the query the kernel
 * reads: with proj->d_nope > 0 the absorbed one (the heads-form query
 * after the W_UK product, on the GPU), so sel's q is not read. pos_out
 * (host, may be NULL): the kept candidates' positions (sel_pos); sel_work:
 * the floats attnd_kernel_select_prepare returned; *select_ns_p: the selection's
 * GPU time; ov as for attnd__gpu_decode. */
attnd_status attnd__gpu_decode_select(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                                      const attnd__gpu_proj *proj, const attnd_kernel_select_batch *sel,
                                      size_t sel_work, int32_t *pos_out, uint64_t *select_ns_p,
                                      const attnd__gpu_overlap *ov, attnd_error *err);

/* A batch of token lists (given-tokens policies): the CUDA decode reads
 * 64-token tiles of whole pages, so the listed tokens are first copied
 * into whole pages of a device buffer (attnd_cuda_gather), which the
 * decode reads instead of the pool; b's page lists then index those n_pages
 * pages. src: [n_pages][n_heads][page_size] pool tokens (page * page_size
 * + slot) or -1 (host, read before return), n_heads 1 (whole tokens) or
 * the layout's KV heads (GQA lists per KV head: a session's lists share
 * pages, each head's rows from its own list). */
typedef struct attnd__gpu_gather {
    int64_t n_pages;
    int32_t n_heads;
    const int32_t *src;
} attnd__gpu_gather;

/* attnd__gpu_decode over the pages gath gathers (above); the device
 * buffer grows to the largest batch (RESOURCE_EXHAUSTED naming given_idx
 * when it cannot). */
attnd_status attnd__gpu_decode_gather(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                                      const attnd__gpu_proj *proj, const attnd__gpu_gather *gath,
                                      const attnd__gpu_overlap *ov, attnd_error *err);

/* The page selection of attnd__gpu_decode_select alone, for lists the
 * host must cut or gather after it: the query uploaded (and absorbed, with
 * proj->d_nope > 0: the selection scores the absorbed query), sel run,
 * b's page lists (b->page_idx with sel's kept pages at each list's out0)
 * downloaded into pages_out ([page_indptr[n_seqs * list_groups]] host
 * ints), the kept positions into pos_out (may be NULL); no decode. */
attnd_status attnd__gpu_select_pages(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                                     const attnd__gpu_proj *proj,
                                     const attnd_kernel_select_batch *sel, size_t sel_work,
                                     int32_t *pages_out, int32_t *pos_out, uint64_t *select_ns_p,
                                     attnd_error *err);

/* Page-locked host memory of `bytes` for *p (RESOURCE_EXHAUSTED, or
 * UNIMPLEMENTED without CUDA); free with attnd__gpu_host_free (NULL: no-op).
 * The engine's workspaces hold GPU outputs in it. */
attnd_status attnd__gpu_host_alloc(size_t bytes, void **p, attnd_error *err);
void attnd__gpu_host_free(void *p);

#endif /* ATTND_WORKER_BACKEND_H */
