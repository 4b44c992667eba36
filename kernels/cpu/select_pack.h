/* The packed-query room's layout of the page selection, one definition for
 * the host (kernels/cpu/select_int.h and the paths behind it) and the GPU
 * (kernels/cuda/select.cu), which fill the same work area. Plain C and
 * CUDA alike. */
#ifndef ATTND_SELECT_PACK_H
#define ATTND_SELECT_PACK_H

#include <stddef.h>
#include <stdint.h>

#include "attnd_hd.h"

/* Rows from which a KV head's queries are packed "wide" (transposed,
 * vectors over rows) rather than "narrow" (row-major, vectors over d_k). */
#define ATTND__SEL_WIDE_ROWS 32

/* Packed queries of one KV head of a list: q+ = max(q, 0) and q- = min(q,
 * 0) of its R rows, wide [d_k][R_pad] or narrow [R][d_k_pad] (pads 16,
 * zero), q- right after q+. */
static inline ATTND__HD int attnd__select_wide(int32_t R)
{
    return R >= ATTND__SEL_WIDE_ROWS;
}
static inline ATTND__HD int64_t attnd__select_pack_floats(int32_t R, int32_t dk)
{
    const int64_t rp = (R + 15) / 16 * 16, dkp = (dk + 15) / 16 * 16;
    return 2 * (attnd__select_wide(R) ? rp : (int64_t)R) * dkp;
}

/* Bytes of a row of int8 queries for compact bounds (2 d_k codes, padded
 * to 64): select_int.h says how they are packed. (int32 arithmetic: the
 * GPU's scoring kernels keep their registers.) */
static inline ATTND__HD int32_t attnd__select_q8_width(int32_t dk)
{
    return (dk * 2 + 63) / 64 * 64;
}

#endif /* ATTND_SELECT_PACK_H */
