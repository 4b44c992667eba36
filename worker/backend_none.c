/* The CUDA backend's stand-in for builds without CUDA (nvcc not found, or
 * ATTND_CUDA=OFF): creating it fails with a message that says so, so that
 * `attnd --device cuda:N` stops at start instead of serving on the CPU. */
#include "backend.h"

attnd_status attnd__gpu_create(int32_t device, const attnd_kernel_kv_layout *l, int32_t n_pages,
                               attnd__gpu **gpu_p, attnd_error *err)
{
    (void)l;
    (void)n_pages;
    (void)gpu_p;
    return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                           "device: cuda:%d asked for, but this attnd was built without CUDA "
                           "(nvcc not found, or ATTND_CUDA=OFF); use --device cpu",
                           device);
}

void attnd__gpu_destroy(attnd__gpu *g)
{
    (void)g;
}

attnd_status attnd__gpu_write(attnd__gpu *g, const int32_t *pages, uint64_t t0, uint64_t n,
                              attnd_dtype dt, const void *src, attnd_error *err)
{
    (void)g, (void)pages, (void)t0, (void)n, (void)dt, (void)src;
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "device: no CUDA backend in this build");
}

attnd_status attnd__gpu_host_alloc(size_t bytes, void **p, attnd_error *err)
{
    (void)bytes;
    *p = NULL;
    return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED, "device: no CUDA backend in this build");
}

void attnd__gpu_host_free(void *p)
{
    (void)p;
}

attnd_status attnd__gpu_decode(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                               const attnd__gpu_proj *proj, const attnd__gpu_overlap *ov,
                               attnd_error *err)
{
    (void)g, (void)b, (void)proj, (void)ov;
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "device: no CUDA backend in this build");
}

attnd_status attnd__gpu_decode_gather(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                                      const attnd__gpu_proj *proj, const attnd__gpu_gather *gath,
                                      const attnd__gpu_overlap *ov, attnd_error *err)
{
    (void)g, (void)b, (void)proj, (void)gath, (void)ov;
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "device: no CUDA backend in this build");
}

attnd_status attnd__gpu_select_pages(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                                     const attnd__gpu_proj *proj,
                                     const attnd_kernel_select_batch *sel, size_t sel_work,
                                     int32_t *pages_out, int32_t *pos_out, uint64_t *select_ns_p,
                                     attnd_error *err)
{
    (void)g, (void)b, (void)proj, (void)sel, (void)sel_work, (void)pages_out, (void)pos_out;
    (void)select_ns_p;
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "device: no CUDA backend in this build");
}

attnd_status attnd__gpu_page_read(attnd__gpu *g, int32_t page, void *dst, attnd_error *err)
{
    (void)g, (void)page, (void)dst;
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "device: no CUDA backend in this build");
}

attnd_status attnd__gpu_page_write(attnd__gpu *g, int32_t page, const void *src,
                                   attnd_error *err)
{
    (void)g, (void)page, (void)src;
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "device: no CUDA backend in this build");
}

attnd_status attnd__gpu_upload(attnd__gpu *g, attnd_dtype dst_t, attnd_dtype src_t,
                               const void *src, size_t n, void **dev_p, attnd_error *err)
{
    (void)g, (void)dst_t, (void)src_t, (void)src, (void)n, (void)dev_p;
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "device: no CUDA backend in this build");
}

void attnd__gpu_free(attnd__gpu *g, void *dev)
{
    (void)g, (void)dev;
}

attnd_status attnd__gpu_bounds_upload(attnd__gpu *g, const uint16_t *bounds, int32_t p,
                                      attnd_error *err)
{
    (void)g, (void)bounds, (void)p;
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "device: no CUDA backend in this build");
}

attnd_status attnd__gpu_kick(attnd__gpu *g, attnd_error *err)
{
    (void)g;
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "device: no CUDA backend in this build");
}

attnd_status attnd__gpu_bounds_fold(attnd__gpu *g, int32_t p, int32_t slot0, int32_t n,
                                    attnd_error *err)
{
    (void)g, (void)p, (void)slot0, (void)n;
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "device: no CUDA backend in this build");
}

attnd_status attnd__gpu_decode_select(attnd__gpu *g, const attnd_kernel_decode_batch *b,
                                      const attnd__gpu_proj *proj, const attnd_kernel_select_batch *sel,
                                      size_t sel_work, int32_t *pos_out, uint64_t *select_ns_p,
                                      const attnd__gpu_overlap *ov, attnd_error *err)
{
    (void)g, (void)b, (void)proj, (void)sel, (void)sel_work, (void)pos_out, (void)select_ns_p;
    (void)ov;
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "device: no CUDA backend in this build");
}
