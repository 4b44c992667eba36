/* Internal interface of the page-selection kernels (select.c and the SIMD
 * scoring of select_simd.h): the scoring unit every path implements.
 *
 * A scoring unit is (list, KV head of its group, candidate range [p0, p1)).
 * It packs the R = q_tokens * Hq / Hkv query rows of that KV head (row r =
 * s * G + g) and writes ub[p][row0 + r] = sum_d max(q_r,d lo_d, q_r,d hi_d)
 * for every candidate p of the range, ub being the list's block of
 * [n_cand][rows] floats (rows: all of the list's rows, every KV head of its
 * group, KV head after KV head). */
#ifndef ATTND_SELECT_INT_H
#define ATTND_SELECT_INT_H

#include <stdint.h>

#include "attnd_kernels.h"

/* Candidates per scoring unit. */
#define ATTND__SEL_CHUNK 64

typedef void (*attnd__ub_fn)(const attnd_select_batch *b, const attnd_select_list *sl,
                             int32_t kvh, int32_t p0, int32_t p1, float *ub, int32_t row0,
                             int32_t rows, float *scratch);

void attnd__select_ub_scalar(const attnd_select_batch *b, const attnd_select_list *sl,
                             int32_t kvh, int32_t p0, int32_t p1, float *ub, int32_t row0,
                             int32_t rows, float *scratch);
#if defined(ATTND_HAVE_X86_SIMD)
void attnd__select_ub_avx2(const attnd_select_batch *b, const attnd_select_list *sl,
                           int32_t kvh, int32_t p0, int32_t p1, float *ub, int32_t row0,
                           int32_t rows, float *scratch);
void attnd__select_ub_avx512(const attnd_select_batch *b, const attnd_select_list *sl,
                             int32_t kvh, int32_t p0, int32_t p1, float *ub, int32_t row0,
                             int32_t rows, float *scratch);
#endif

/* Floats of per-thread scratch a scoring unit needs (any path): packed
 * queries (two copies, padded to 16) and one page's bounds widened, plus
 * alignment slack. */
static inline size_t attnd__select_unit_floats(const attnd_select_batch *b)
{
    size_t R = (size_t)b->q_tokens * (size_t)(b->n_q_heads / b->kv->n_kv_heads);
    size_t rp = (R + 15) / 16 * 16, dkp = ((size_t)b->kv->d_k + 15) / 16 * 16;
    return 2 * rp * dkp + 2 * dkp + 16 * 4;
}

/* The query row r of (sequence seq, KV head kvh), widened to float32 into
 * dst (dk floats). */
void attnd__select_q_row(const attnd_select_batch *b, int32_t seq, int32_t kvh, int32_t r,
                         float *dst);

#endif /* ATTND_SELECT_INT_H */
