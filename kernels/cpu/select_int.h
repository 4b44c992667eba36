/* Internal interface of the page-selection kernels (select.c and the SIMD
 * scoring of select_simd.h): the scoring unit every path implements.
 *
 * A scoring unit is (list, KV head of its group, candidate range [p0, p1)).
 * For the R = q_tokens * (Hq / Hkv) / head_agg query rows of that KV head
 * (attnd__select_head_rows), packed once per list (select.c; a row sums
 * head_agg heads' queries), it writes ub[p][row0 + r] =
 * sum_d max(q_r,d lo_d, q_r,d hi_d) for every candidate p of the range, ub
 * being the list's block of [n_cand][rows] floats (rows: all of the list's
 * rows, every KV head of its group, KV head after KV head). */
#ifndef ATTND_SELECT_INT_H
#define ATTND_SELECT_INT_H

#include <stdint.h>

#include "attnd_kernels.h"
#include "select_pack.h" /* attnd__select_wide, _pack_floats, _q8_width */

/* Candidates per scoring unit. */
#define ATTND__SEL_CHUNK ATTND_KERNEL_SELECT_CHUNK
/* Score candidates [p0, p1) of list sl against KV head kvh's packed
 * queries qpk: ub[p][row0 + r] for its R rows (rows per candidate in ub).
 * scratch: attnd__select_unit_floats floats, 64-byte alignable. */
typedef void (*attnd__ub_fn)(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                             int32_t kvh, int32_t p0, int32_t p1, const float *qpk, float *ub,
                             int32_t row0, int32_t rows, float *scratch);

void attnd__select_ub_scalar(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                             int32_t kvh, int32_t p0, int32_t p1, const float *qpk, float *ub,
                             int32_t row0, int32_t rows, float *scratch);
#if defined(ATTND_HAVE_X86_SIMD)
void attnd__select_ub_avx2(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                           int32_t kvh, int32_t p0, int32_t p1, const float *qpk, float *ub,
                           int32_t row0, int32_t rows, float *scratch);
void attnd__select_ub_avx512(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                             int32_t kvh, int32_t p0, int32_t p1, const float *qpk, float *ub,
                             int32_t row0, int32_t rows, float *scratch);
#endif

/* Scoring on compact bounds (the formula above) for candidates [p0, p1):
 * the same contract as attnd__ub_fn, qpk the packed int8 rows. */
void attnd__select_ub8_scalar(const attnd_kernel_select_batch *b,
                              const attnd_kernel_select_list *sl, int32_t kvh, int32_t p0,
                              int32_t p1, const float *qpk, float *ub, int32_t row0, int32_t rows);
#if defined(ATTND_HAVE_X86_SIMD)
void attnd__select_ub8_avx2(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                            int32_t kvh, int32_t p0, int32_t p1, const float *qpk, float *ub,
                            int32_t row0, int32_t rows);
void attnd__select_ub8_avx512(const attnd_kernel_select_batch *b,
                              const attnd_kernel_select_list *sl, int32_t kvh, int32_t p0,
                              int32_t p1, const float *qpk, float *ub, int32_t row0, int32_t rows);
#endif

/* The row's float ub from its exact integer sum (every path alike). */
static inline float attnd__select_ub8_value(const uint8_t *brow, const float *qpk, int32_t R,
                                            int32_t r, int32_t dot)
{
    float off, step;
    __builtin_memcpy(&off, brow, sizeof off);
    __builtin_memcpy(&step, brow + sizeof off, sizeof step);
    return off * qpk[R + r] + (step * qpk[r]) * (float)dot;
}

/* Compact bounds (b->bounds8): every path scores a row r with integers,
 *   ub = off Qsum_r + (step sq_r) sum_i c[i] qi_r[i]
 * over the 2 d_k codes c of a page's row ([lo codes][hi codes]) and the
 * row's int8 query qi_r = [ceil(q-/sq_r)][ceil(q+/sq_r)] (q- = min(q, 0),
 * q+ = max(q, 0), sq_r >= max_d |q_r,d| / 127, so |qi| <= 127), Qsum_r =
 * sum_d q_r,d. With every bound off + step c and c >= 0, rounding the
 * query up only raises the sum: ub bounds Quest's score on the compact
 * bounds from above (attnd_kernels.h), and the integer sum is exact, the
 * same on every path. Packed per KV head of a list (in its packed-query
 * area): sq [R] and Qsum [R] floats, then the rows qi [R][q8_width] int8
 * (zero past 2 d_k). */
static inline int8_t *attnd__select_q8_rows(float *qpk, int32_t R)
{
    return (int8_t *)(qpk + 2 * (size_t)R);
}

/* Query rows per KV head: q_tokens x (G / head_agg), G = Hq / Hkv (row r =
 * s x (G / head_agg) + a: token s, run a of head_agg heads). */
static inline int32_t attnd__select_head_rows(const attnd_kernel_select_batch *b)
{
    const int32_t G = b->n_q_heads / b->kv->n_kv_heads;
    return b->q_tokens * (G / (b->head_agg > 1 ? b->head_agg : 1));
}

/* ---- the top-k (select_topk.c) ------------------------------------------
 * A candidate's score as an order-preserving unsigned key: a larger key is
 * a better score, NaN (an infinite bound met a zero or an opposite
 * infinity) ranks as +inf, so such a page is always kept, and -0 as +0, as
 * float comparisons see them. */
static inline uint32_t attnd__select_key(float v)
{
    uint32_t u;
    v = v != v ? __builtin_inff() : v + 0.0f;
    __builtin_memcpy(&u, &v, sizeof u);
    return u ^ ((uint32_t)((int32_t)u >> 31) | 0x80000000u);
}

/* Keep candidates [0, n_head) and [n - n_tail, n) of a list of n, and of
 * the others the keep - n_head - n_tail with the largest keys (key [n],
 * only [n_head, n - n_tail) read; ties: the earlier candidate first); write
 * the kept cand[p] to out and p to pos (NULL: not wanted) in candidate
 * order; returns how many (keep). n_head + n_tail <= keep <= n. tmp: n
 * uint32 of scratch. */
int32_t attnd__select_topk(const uint32_t *key, int32_t n, int32_t keep, int32_t n_head,
                           int32_t n_tail, const int32_t *cand, int32_t *out, int32_t *pos,
                           uint32_t *tmp);

/* Pages a wide scoring block widens and scores at once. */
#define ATTND__SEL_TB 4

/* Floats of per-thread scratch a scoring unit needs (the bounds of
 * ATTND__SEL_TB pages widened to float32) and packing needs (16 query rows
 * widened), plus alignment slack. */
static inline size_t attnd__select_unit_floats(const attnd_kernel_select_batch *b)
{
    size_t dkp = ((size_t)b->kv->d_k + 15) / 16 * 16;
    size_t unit = 2 * ATTND__SEL_TB * dkp, pack = 16 * dkp;
    return (unit > pack ? unit : pack) + 16 * 4;
}

/* The query row r of (sequence seq, KV head kvh), widened to float32 into
 * dst (dk floats): one head's query, or the float32 sum of head_agg heads'
 * (in head order). */
void attnd__select_q_row(const attnd_kernel_select_batch *b, int32_t seq, int32_t kvh, int32_t r,
                         float *dst);

#endif /* ATTND_SELECT_INT_H */
