/* Internal interface of the projection kernels (attnd_proj.h): one head
 * range function per instruction set, called by proj.c's dispatch. */
#ifndef ATTND_PROJ_INT_H
#define ATTND_PROJ_INT_H

#include "attnd_proj.h"

/* Heads [h0, h1) of p; work: attnd_kernel_proj_work_floats(p) floats. */
typedef void (*attnd__proj_fn)(const attnd_kernel_proj *p, int32_t h0, int32_t h1, float *work);

void attnd__proj_heads_scalar(const attnd_kernel_proj *p, int32_t h0, int32_t h1, float *work);
#if defined(ATTND_HAVE_X86_SIMD)
void attnd__proj_heads_avx2(const attnd_kernel_proj *p, int32_t h0, int32_t h1, float *work);
void attnd__proj_heads_avx512(const attnd_kernel_proj *p, int32_t h0, int32_t h1, float *work);
#endif

/* The rows [r0, r0 + nr) of head h as float32 [nr][lda]: src itself when it
 * is float32 at float alignment (lda its row stride), else converted into
 * work (lda k; work
 * holds attnd_kernel_proj_work_floats(p) floats: every row of a head). */
const float *attnd__proj_rows(const attnd_kernel_proj *p, int32_t h, int32_t r0, int32_t nr,
                              float *work, int64_t *lda_p);
/* dst[r][h][j + e] = src[r][h][k + e] for e < pass, rows [r0, r0 + nr). */
void attnd__proj_pass(const attnd_kernel_proj *p, int32_t h, int32_t r0, int32_t nr);

#endif /* ATTND_PROJ_INT_H */
