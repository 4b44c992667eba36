/* The per-head projections of the narrow MLA wire (attnd_proj.h): checks,
 * the scalar reference path, path dispatch and the split over a pool's
 * threads.
 *
 * The SIMD paths (proj_simd.h, compiled per instruction set in
 * proj_avx2.c and proj_avx512.c) compute the same sums in the same k
 * order with fused multiply-adds; the scalar path is the reference they
 * are tested against (tests/kernels/test_proj.c). Work is split by heads:
 * every head's weights are read by one thread only, which is what bounds
 * a small batch (the weights stream from memory once per call). */
#include <stdint.h>
#include <string.h>

#include "attnd_dtype.h"
#include "cpu_int.h"
#include "proj_int.h"

attnd_status attnd_kernel_proj_check(const attnd_kernel_proj *p, attnd_error *err)
{
    if (p->rows < 1 || p->heads < 1 || p->k < 1 || p->j < 1 || p->pass < 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "proj: rows %d, heads %d, k %d, j %d, pass %d: sizes must be "
                               ">= 1 (pass >= 0)", p->rows, p->heads, p->k, p->j, p->pass);
    if (attnd_dtype_size(p->src_dtype) == 0 ||
        (p->w_dtype != ATTND_DTYPE_F32 && p->w_dtype != ATTND_DTYPE_BF16))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "proj: src dtype %d, w dtype %d: src any, w f32 or bf16",
                               (int)p->src_dtype, (int)p->w_dtype);
    if (!p->src || !p->w || !p->dst)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "proj: NULL tensor");
    return ATTND_OK;
}

/* float32 src is read in place when it sits at float alignment (strides
 * are in elements: every row then does). Wire data sits at any alignment
 * (a query inside a gRPC slice or a UCX buffer), and loading a float from
 * a misaligned address is undefined: such rows are copied into the
 * scratch like any other dtype. */
static int src_in_place(const attnd_kernel_proj *p)
{
    return p->src_dtype == ATTND_DTYPE_F32 && (uintptr_t)p->src % _Alignof(float) == 0;
}

size_t attnd_kernel_proj_work_floats(const attnd_kernel_proj *p)
{
    return src_in_place(p) ? 0 : (size_t)p->rows * (size_t)p->k;
}

const float *attnd__proj_rows(const attnd_kernel_proj *p, int32_t h, int32_t r0, int32_t nr,
                              float *work, int64_t *lda_p)
{
    const size_t es = attnd_dtype_size(p->src_dtype);
    const char *s = (const char *)p->src + ((size_t)r0 * (size_t)p->src_row +
                                            (size_t)h * (size_t)p->src_head) * es;
    if (src_in_place(p)) {
        *lda_p = p->src_row;
        return (const float *)(const void *)s;
    }
    for (int32_t r = 0; r < nr; r++)
        attnd_dtype_convert(ATTND_DTYPE_F32, work + (size_t)r * (size_t)p->k, p->src_dtype,
                            s + (size_t)r * (size_t)p->src_row * es, (size_t)p->k);
    *lda_p = p->k;
    return work;
}

void attnd__proj_pass(const attnd_kernel_proj *p, int32_t h, int32_t r0, int32_t nr)
{
    const size_t es = attnd_dtype_size(p->src_dtype);
    for (int32_t r = r0; r < r0 + nr && p->pass > 0; r++) {
        const char *s = (const char *)p->src +
                        ((size_t)r * (size_t)p->src_row + (size_t)h * (size_t)p->src_head +
                         (size_t)p->k) * es;
        float *d = p->dst + (size_t)r * (size_t)p->dst_row + (size_t)h * (size_t)p->dst_head +
                   (size_t)p->j;
        attnd_dtype_convert(ATTND_DTYPE_F32, d, p->src_dtype, s, (size_t)p->pass);
    }
}

/* The reference: row by row, dst accumulating k in increasing order. */
void attnd__proj_heads_scalar(const attnd_kernel_proj *p, int32_t h0, int32_t h1, float *work)
{
    const size_t K = (size_t)p->k, J = (size_t)p->j;
    for (int32_t h = h0; h < h1; h++) {
        const float *wf = (const float *)p->w + (size_t)h * K * J;
        const uint16_t *wb = (const uint16_t *)p->w + (size_t)h * K * J;
        for (int32_t r = 0; r < p->rows; r++) {
            int64_t lda;
            const float *a = attnd__proj_rows(p, h, r, 1, work, &lda);
            float *d = p->dst + (size_t)r * (size_t)p->dst_row + (size_t)h * (size_t)p->dst_head;
            memset(d, 0, J * sizeof *d);
            for (size_t k = 0; k < K; k++) {
                const float ak = a[k];
                if (p->w_dtype == ATTND_DTYPE_F32)
                    for (size_t j = 0; j < J; j++)
                        d[j] += ak * wf[k * J + j];
                else
                    for (size_t j = 0; j < J; j++)
                        d[j] += ak * attnd_dtype_bf16_to_f32(wb[k * J + j]);
            }
            attnd__proj_pass(p, h, r, 1);
        }
    }
}

static attnd__proj_fn path_fn(attnd_kernel_path path)
{
#if defined(ATTND_HAVE_X86_SIMD)
    if (path >= ATTND_KERNEL_PATH_AVX512 && attnd_kernel_path_supported(ATTND_KERNEL_PATH_AVX512))
        return attnd__proj_heads_avx512;
    if (path >= ATTND_KERNEL_PATH_AVX2 && attnd_kernel_path_supported(ATTND_KERNEL_PATH_AVX2))
        return attnd__proj_heads_avx2;
#else
    (void)path;
#endif
    return attnd__proj_heads_scalar;
}

void attnd_kernel_proj_range(attnd_kernel_path path, const attnd_kernel_proj *p, int32_t h0,
                             int32_t h1, float *work)
{
    path_fn(path)(p, h0, h1, work);
}

typedef struct proj_job {
    const attnd_kernel_proj *p;
    attnd__proj_fn fn;
    attnd_kernel_pool *pool;
    int32_t n_threads;
} proj_job;

static void proj_job_run(void *ctx, int32_t tid)
{
    const proj_job *j = ctx;
    const int64_t H = j->p->heads, T = j->n_threads;
    int32_t h0 = (int32_t)(H * tid / T), h1 = (int32_t)(H * (tid + 1) / T);
    if (h0 < h1)
        j->fn(j->p, h0, h1, attnd__pool_scratch(j->pool, tid));
}

attnd_status attnd_kernel_proj_parallel(attnd_kernel_pool *pool, const attnd_kernel_proj *p,
                                        attnd_error *err)
{
    proj_job j = {.p = p, .fn = path_fn(attnd_kernel_path_current()), .pool = pool,
                  .n_threads = attnd_kernel_pool_threads(pool)};
    if (attnd__pool_run(pool, attnd_kernel_proj_work_floats(p), proj_job_run, &j) != 0)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "proj: no memory for %zu floats of scratch per thread",
                               attnd_kernel_proj_work_floats(p));
    return ATTND_OK;
}
