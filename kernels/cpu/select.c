/* Page selection for the top-k pages policy (Quest): the scoring of every
 * candidate page against a list's query rows, and the top-k that keeps the
 * best pages in sequence order (attnd_kernels.h, "page selection", has the
 * math).
 *
 * Two steps, like the decode's plan and run. Scoring (the bulk: it reads
 * every candidate's bounds once and does 2 * d_k multiply-adds per row and
 * page) is cut into units of ATTND__SEL_CHUNK candidates of one list and
 * spread over the pool's threads; each unit writes its ub rows and its
 * per-row maximum. Selection then runs one list per unit: the rows' global
 * maxima, each candidate's score (its best row's distance below that row's
 * best page) as an order-preserving key, and the top-k of select_topk.c
 * (a radix selection for the threshold, one ordered scan that writes the
 * kept pages). Scratch comes from the caller (ub, maxima, keys:
 * attnd_kernel_select_prepare says how much) and from the pool's per-thread
 * buffers (packed queries), so a steady decode allocates nothing here. */
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "attnd_assert.h"
#include "cpu_int.h"
#include "select_int.h"

/* Query rows per KV head, KV heads per list, and rows (query token x head,
 * or x run of head_agg heads) of one list: every KV head of its group. */
static int32_t head_rows(const attnd_kernel_select_batch *b)
{
    return attnd__select_head_rows(b);
}

static int32_t list_heads(const attnd_kernel_select_batch *b)
{
    return b->kv->n_kv_heads / (b->list_groups > 1 ? b->list_groups : 1);
}

static int32_t list_rows(const attnd_kernel_select_batch *b)
{
    return head_rows(b) * list_heads(b);
}

/* The list's scratch: packed queries [heads][attnd__select_pack_floats],
 * ub [n_cand][rows], chunk maxima [chunks][rows], keys [n_cand], the
 * threshold's scratch [n_cand]. */
static int64_t list_work(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl)
{
    int64_t c = attnd_kernel_select_list_units(sl), rows = list_rows(b);
    if (c == 0)
        return 0;
    return (int64_t)list_heads(b) * attnd__select_pack_floats(head_rows(b), b->kv->d_k) +
           ((int64_t)sl->n_cand + c) * rows + 2 * (int64_t)sl->n_cand;
}

/* Where the list's parts of the scratch start. */
static float *list_q(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                     int32_t hh)
{
    return b->work + sl->work0 +
           (size_t)hh * (size_t)attnd__select_pack_floats(head_rows(b), b->kv->d_k);
}

static float *list_ub(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl)
{
    return list_q(b, sl, list_heads(b));
}

int64_t attnd_kernel_select_prepare(attnd_kernel_select_batch *b, attnd_error *err)
{
    const attnd_kernel_kv_layout *l = b->kv;
    if (!l || (b->n_lists > 0 && (!b->lists || !b->q || (!b->bounds && !b->bounds8) ||
                                  !b->cand_idx || !b->sel_pages)))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "select: kv, lists, q, bounds (or bounds8), cand_idx and "
                               "sel_pages are required"),
               -1;
    const int32_t lg = b->list_groups > 1 ? b->list_groups : 1;
    if (b->n_lists < 0 || b->q_tokens < 1 || l->n_kv_heads < 1 || b->n_q_heads < 1 ||
        b->n_q_heads % l->n_kv_heads || l->n_kv_heads % lg || l->d_k < 1 ||
        attnd_dtype_size(b->q_dtype) == 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "select: n_lists %d, q_tokens %d, heads %d/%d, list_groups %d, "
                               "d_k %d, q dtype %d",
                               b->n_lists, b->q_tokens, b->n_q_heads, l->n_kv_heads,
                               b->list_groups, l->d_k, b->q_dtype),
               -1;
    if (b->head_agg < 0 ||
        (b->head_agg > 1 && (b->n_q_heads / l->n_kv_heads) % b->head_agg))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "head_agg: %d does not divide the %d query heads of a KV head",
                               b->head_agg, b->n_q_heads / l->n_kv_heads),
               -1;
    int64_t work = 0, chunks = 0;
    for (int32_t i = 0; i < b->n_lists; i++) {
        attnd_kernel_select_list *sl = &b->lists[i];
        if (sl->seq < 0 || sl->seq >= b->n_seqs || sl->group < 0 || sl->group >= lg ||
            sl->cand0 < 0 || sl->n_cand < 0 || sl->out0 < 0 || sl->n_head < 0 ||
            sl->n_tail < 0 || sl->n_head + sl->n_tail > sl->keep || sl->keep > sl->n_cand)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "lists[%d]: seq %d, group %d, candidates %d at %d, keep %d "
                                   "(head %d, tail %d)",
                                   i, sl->seq, sl->group, sl->n_cand, sl->cand0, sl->keep,
                                   sl->n_head, sl->n_tail),
                   -1;
        /* the lists of one session's KV head groups share its candidates:
         * checked once (a GQA batch of 4 x 8 lists of 2048 spent 33 us here) */
        const int same = i > 0 && b->lists[i - 1].cand0 == sl->cand0 &&
                         b->lists[i - 1].n_cand == sl->n_cand;
        for (int32_t p = 0; !same && p < sl->n_cand; p++) {
            int32_t pg = b->cand_idx[sl->cand0 + p];
            if (pg < 0 || pg >= b->bounds_pages)
                return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                       "cand_idx[%d]: %d not in [0, %lld)", sl->cand0 + p, pg,
                                       (long long)b->bounds_pages),
                       -1;
        }
        sl->work0 = work;
        sl->chunk0 = (int32_t)chunks;
        work += list_work(b, sl);
        chunks += attnd_kernel_select_list_units(sl);
        if (chunks > INT32_MAX)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "select: too many candidates"),
                   -1;
    }
    /* the parallel run's list states, the calling thread's scratch
     * (packing, attnd_kernel_select's units) */
    return work + b->n_lists + (int64_t)attnd__select_unit_floats(b);
}

void attnd__select_q_row(const attnd_kernel_select_batch *b, int32_t seq, int32_t kvh, int32_t r,
                         float *dst)
{
    const int32_t G = b->n_q_heads / b->kv->n_kv_heads, dk = b->kv->d_k;
    const int32_t A = b->head_agg > 1 ? b->head_agg : 1, runs = G / A;
    const int32_t s = r / runs, g = r % runs * A;
    const size_t esz = attnd_dtype_size(b->q_dtype);
    const char *q0 = (const char *)b->q +
                     (((size_t)seq * b->q_tokens + s) * b->n_q_heads + (size_t)kvh * G + g) *
                         (size_t)dk * esz;
    attnd_dtype_convert(ATTND_DTYPE_F32, dst, b->q_dtype, q0, (size_t)dk);
    /* the run's other heads, widened a slice at a time and added in order */
    for (int32_t j = 1; j < A; j++)
        for (int32_t d0 = 0; d0 < dk; d0 += 64) {
            float t[64];
            const int32_t n = dk - d0 < 64 ? dk - d0 : 64;
            attnd_dtype_convert(ATTND_DTYPE_F32, t, b->q_dtype,
                                q0 + ((size_t)j * dk + (size_t)d0) * esz, (size_t)n);
            for (int32_t d = 0; d < n; d++)
                dst[d0 + d] += t[d];
        }
}

/* The int8 query of one row x (dk floats) for compact bounds (select_int.h):
 * sq at or above max |x| / 127, every element rounded up to a multiple of
 * it (checked exactly in float64), lo part (x < 0) then hi part (x > 0). */
static void pack_row8(const float *x, int32_t dk, float *sq_p, float *sum_p, int8_t *qi)
{
    float mx = 0.0f, sum = 0.0f;
    for (int32_t d = 0; d < dk; d++) {
        float a = fabsf(x[d]);
        mx = a > mx ? a : mx;
        sum += x[d];
    }
    memset(qi, 0, attnd__select_q8_width(dk));
    *sum_p = sum;
    if (!isfinite(mx)) { /* NaN or inf in the query: every score NaN (kept) */
        *sq_p = NAN;
        return;
    }
    float sq = mx / 127.0f;
    while ((double)sq * 127.0 < (double)mx)
        sq = nextafterf(sq, INFINITY);
    if (sq == 0.0f) {
        *sq_p = 1.0f; /* a zero query: every integer 0 */
        return;
    }
    for (int32_t d = 0; d < dk; d++) {
        /* ceil(x / sq) (|x / sq| <= 127): the quotient truncated, plus one
         * where that is below it (libm's ceil was a call per element);
         * then up while c sq (exact in double) is under x */
        const double t = (double)x[d] / (double)sq;
        int32_t c = (int32_t)t;
        c += (double)c < t;
        while ((double)c * (double)sq < (double)x[d])
            c++;
        ATTND_ASSERT(c >= -127 && c <= 127);
        qi[x[d] < 0.0f ? d : dk + d] = (int8_t)c;
    }
    *sq_p = sq;
}

/* Pack every KV head of list sl for compact bounds: per KV head sq [R],
 * Qsum [R], the rows [R][q8_width] int8. tmp holds d_k floats. */
static void pack_list8(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                       float *tmp)
{
    const int32_t R = head_rows(b), dk = b->kv->d_k, hpg = list_heads(b);
    const size_t w = attnd__select_q8_width(dk);
    /* it fits the list's packed-query area of each KV head */
    ATTND_ASSERT(2 * (size_t)R + (size_t)R * w / 4 <= (size_t)attnd__select_pack_floats(R, dk));
    for (int32_t hh = 0; hh < hpg; hh++) {
        float *qpk = list_q(b, sl, hh);
        int8_t *rows = attnd__select_q8_rows(qpk, R);
        for (int32_t r = 0; r < R; r++) {
            attnd__select_q_row(b, sl->seq, sl->group * hpg + hh, r, tmp);
            pack_row8(tmp, dk, &qpk[r], &qpk[R + r], rows + (size_t)r * w);
        }
    }
}

/* Pack the queries of every KV head of list sl (see select_int.h); tmp
 * holds 16 rows of d_k floats. Wide packing widens 16 rows at a time and
 * writes them column by column, so each store run fills a cache line. */
static void pack_list(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                      float *tmp)
{
    const int32_t R = head_rows(b), dk = b->kv->d_k, hpg = list_heads(b);
    const size_t rp = ((size_t)R + 15) / 16 * 16, dkp = ((size_t)dk + 15) / 16 * 16;
    const int wide = attnd__select_wide(R);
    const size_t half = (wide ? rp : (size_t)R) * dkp;

    if (b->bounds8) {
        pack_list8(b, sl, tmp);
        return;
    }
    for (int32_t hh = 0; hh < hpg; hh++) {
        float *qp = list_q(b, sl, hh), *qm = qp + half;
        const int32_t kvh = sl->group * hpg + hh;
        memset(qp, 0, sizeof(float) * 2 * half);
        for (int32_t r0 = 0; r0 < R; r0 += 16) {
            int32_t nb = R - r0 < 16 ? R - r0 : 16;
            for (int32_t rr = 0; rr < nb; rr++)
                attnd__select_q_row(b, sl->seq, kvh, r0 + rr, tmp + (size_t)rr * dkp);
            for (int32_t d = 0; d < dk; d++)
                for (int32_t rr = 0; rr < nb; rr++) {
                    float x = tmp[(size_t)rr * dkp + d];
                    size_t at = wide ? (size_t)d * rp + (size_t)(r0 + rr)
                                     : (size_t)(r0 + rr) * dkp + (size_t)d;
                    qp[at] = x > 0.0f ? x : 0.0f;
                    qm[at] = x < 0.0f ? x : 0.0f;
                }
        }
    }
}

/* The portable scoring unit (and the reference the SIMD ones match). */
void attnd__select_ub_scalar(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                             int32_t kvh, int32_t p0, int32_t p1, const float *qpk, float *ub,
                             int32_t row0, int32_t rows, float *scratch)
{
    const int32_t R = head_rows(b), dk = b->kv->d_k;
    const size_t rp = ((size_t)R + 15) / 16 * 16, dkp = ((size_t)dk + 15) / 16 * 16;
    const int wide = attnd__select_wide(R);
    const float *qp = qpk, *qm = qpk + (wide ? rp : (size_t)R) * dkp;

    (void)scratch;
    for (int32_t p = p0; p < p1; p++) {
        const uint16_t *lo = b->bounds + attnd_kernel_kv_bounds_at(b->kv, b->bounds_pages, kvh,
                                                                   b->cand_idx[sl->cand0 + p]);
        const uint16_t *hi = lo + dk;
        for (int32_t r = 0; r < R; r++) {
            float acc = 0.0f;
            for (int32_t d = 0; d < dk; d++) {
                size_t at = wide ? (size_t)d * rp + (size_t)r : (size_t)r * dkp + (size_t)d;
                acc += qp[at] * attnd_dtype_bf16_to_f32(hi[d]) +
                       qm[at] * attnd_dtype_bf16_to_f32(lo[d]);
            }
            ub[(size_t)p * rows + row0 + r] = acc;
        }
    }
}

void attnd__select_ub8_scalar(const attnd_kernel_select_batch *b,
                              const attnd_kernel_select_list *sl, int32_t kvh, int32_t p0,
                              int32_t p1, const float *qpk, float *ub, int32_t row0, int32_t rows)
{
    const int32_t R = head_rows(b), n = 2 * b->kv->d_k;
    const size_t w = attnd__select_q8_width(b->kv->d_k);
    const int8_t *q8 = attnd__select_q8_rows((float *)(uintptr_t)qpk, R);
    for (int32_t p = p0; p < p1; p++) {
        const uint8_t *brow = b->bounds8 + attnd_kernel_kv_bounds8_at(b->kv, b->bounds_pages, kvh,
                                                                      b->cand_idx[sl->cand0 + p]);
        const uint8_t *c = brow + 2 * sizeof(float);
        for (int32_t r = 0; r < R; r++) {
            const int8_t *qi = q8 + (size_t)r * w;
            int32_t dot = 0;
            for (int32_t i = 0; i < n; i++)
                dot += (int32_t)c[i] * (int32_t)qi[i];
            ub[(size_t)p * rows + row0 + r] = attnd__select_ub8_value(brow, qpk, R, r, dot);
        }
    }
}

/* The compact-bounds unit of a path, as an attnd__ub_fn. */
static void ub8_scalar(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                       int32_t kvh, int32_t p0, int32_t p1, const float *qpk, float *ub,
                       int32_t row0, int32_t rows, float *scratch)
{
    (void)scratch;
    attnd__select_ub8_scalar(b, sl, kvh, p0, p1, qpk, ub, row0, rows);
}
#if defined(ATTND_HAVE_X86_SIMD)
static void ub8_avx2(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                     int32_t kvh, int32_t p0, int32_t p1, const float *qpk, float *ub,
                     int32_t row0, int32_t rows, float *scratch)
{
    (void)scratch;
    attnd__select_ub8_avx2(b, sl, kvh, p0, p1, qpk, ub, row0, rows);
}
static void ub8_avx512(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                       int32_t kvh, int32_t p0, int32_t p1, const float *qpk, float *ub,
                       int32_t row0, int32_t rows, float *scratch)
{
    (void)scratch;
    attnd__select_ub8_avx512(b, sl, kvh, p0, p1, qpk, ub, row0, rows);
}
#endif

static attnd__ub_fn ub8_fn(void)
{
    switch (attnd_kernel_path_current()) {
#if defined(ATTND_HAVE_X86_SIMD)
    case ATTND_KERNEL_PATH_AVX2: return ub8_avx2;
    case ATTND_KERNEL_PATH_SCALAR: return ub8_scalar;
    default: return ub8_avx512;
#else
    default: return ub8_scalar;
#endif
    }
}

static attnd__ub_fn ub_fn(const attnd_kernel_select_batch *b)
{
    if (b->bounds8)
        return ub8_fn();
    switch (attnd_kernel_path_current()) {
#if defined(ATTND_HAVE_X86_SIMD)
    case ATTND_KERNEL_PATH_AVX2: return attnd__select_ub_avx2;
    case ATTND_KERNEL_PATH_SCALAR: return attnd__select_ub_scalar;
    default: return attnd__select_ub_avx512;
#else
    default: return attnd__select_ub_scalar;
#endif
    }
}

/* Score chunk c of list sl over every KV head of its group, and record the
 * chunk's per-row maxima. */
static void score_chunk(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                        int32_t c, attnd__ub_fn fn, float *scratch)
{
    const int32_t hpg = list_heads(b), rows = list_rows(b), R = head_rows(b);
    const int32_t p0 = c * ATTND__SEL_CHUNK;
    const int32_t p1 = p0 + ATTND__SEL_CHUNK < sl->n_cand ? p0 + ATTND__SEL_CHUNK : sl->n_cand;
    float *ub = list_ub(b, sl);
    float *cmax = ub + (size_t)sl->n_cand * rows + (size_t)c * rows;

    for (int32_t h = 0; h < hpg; h++)
        fn(b, sl, sl->group * hpg + h, p0, p1, list_q(b, sl, h), ub, h * R, rows, scratch);
    for (int32_t r = 0; r < rows; r++)
        cmax[r] = -INFINITY;
#if defined(__SSE2__)
    if (rows % 4 == 0) { /* four rows a vector (GQA: 4 per KV head, MLA 8) */
        for (int32_t r = 0; r < rows; r += 4) {
            /* four chains (one was bound by the max's latency); max is
             * order-free here but for the sign of a zero maximum, which
             * no score sees (ub - cmax, then +0 and -0 rank the same) */
            __m128 m0 = _mm_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
            int32_t p = p0;
            for (; p + 4 <= p1; p += 4) { /* v > m ? v : m */
                m0 = _mm_max_ps(_mm_loadu_ps(ub + (size_t)p * rows + r), m0);
                m1 = _mm_max_ps(_mm_loadu_ps(ub + (size_t)(p + 1) * rows + r), m1);
                m2 = _mm_max_ps(_mm_loadu_ps(ub + (size_t)(p + 2) * rows + r), m2);
                m3 = _mm_max_ps(_mm_loadu_ps(ub + (size_t)(p + 3) * rows + r), m3);
            }
            for (; p < p1; p++)
                m0 = _mm_max_ps(_mm_loadu_ps(ub + (size_t)p * rows + r), m0);
            _mm_storeu_ps(cmax + r, _mm_max_ps(_mm_max_ps(m0, m1), _mm_max_ps(m2, m3)));
        }
        return;
    }
#endif
    for (int32_t p = p0; p < p1; p++)
        for (int32_t r = 0; r < rows; r++) {
            float v = ub[(size_t)p * rows + r];
            cmax[r] = v > cmax[r] ? v : cmax[r]; /* a NaN never gets in */
        }
}

/* The keys (attnd__select_key) of candidates [m0, m1): each one's score,
 * max over the rows r of ub[p][r] - cmax[r] (how close it comes to the
 * best page of the row it suits best; NaN ranks +inf). */
static void list_keys(const float *ub, const float *cmax, int32_t rows, int32_t m0, int32_t m1,
                      uint32_t *key)
{
    int32_t p = m0;
#if defined(__SSE2__)
    if (rows % 4 == 0) { /* four rows a vector, four candidates at once */
        const __m128 inf = _mm_set1_ps(INFINITY), ninf = _mm_set1_ps(-INFINITY);
        const __m128i top = _mm_set1_epi32((int32_t)0x80000000u);
#define LK_ROW(j)                                                                     \
    {                                                                                 \
        __m128 v = _mm_sub_ps(_mm_loadu_ps(ub + (size_t)(p + j) * rows + r), c);      \
        __m128 nan = _mm_cmpunord_ps(v, v);                                           \
        v = _mm_or_ps(_mm_andnot_ps(nan, v), _mm_and_ps(nan, inf));                   \
        b##j = _mm_max_ps(v, b##j);                                                   \
    }
        for (; p + 4 <= m1; p += 4) {
            __m128 b0 = ninf, b1 = ninf, b2 = ninf, b3 = ninf;
            for (int32_t r = 0; r < rows; r += 4) {
                const __m128 c = _mm_loadu_ps(cmax + r);
                LK_ROW(0)
                LK_ROW(1)
                LK_ROW(2)
                LK_ROW(3)
            }
            _MM_TRANSPOSE4_PS(b0, b1, b2, b3); /* lane j: candidate p + j */
            __m128 best = _mm_max_ps(_mm_max_ps(b0, b1), _mm_max_ps(b2, b3));
            /* attnd__select_key, four at once (no NaN left) */
            __m128i u = _mm_castps_si128(_mm_add_ps(best, _mm_setzero_ps()));
            u = _mm_xor_si128(u, _mm_or_si128(_mm_srai_epi32(u, 31), top));
            _mm_storeu_si128((__m128i *)(void *)(key + p), u);
        }
#undef LK_ROW
    }
#endif
    for (; p < m1; p++) {
        const float *u = ub + (size_t)p * rows;
        float best = -INFINITY;
        for (int32_t r = 0; r < rows; r++) {
            float v = u[r] - cmax[r];
            v = isnan(v) ? INFINITY : v;
            best = v > best ? v : best;
        }
        key[p] = attnd__select_key(best);
    }
}

/* Scores and the top-k of one list; writes its kept pages. */
static void select_list(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl)
{
    const int32_t rows = list_rows(b), n = sl->n_cand, chunks = attnd_kernel_select_list_units(sl);
    const int32_t *cand = b->cand_idx + sl->cand0;
    int32_t *out = b->sel_pages + sl->out0;
    int32_t *pos = b->sel_pos ? b->sel_pos + sl->out0 : NULL;

    if (chunks == 0) { /* every candidate kept, or only the mandatory ones */
        attnd__select_topk(NULL, n, sl->keep >= n ? n : sl->n_head + sl->n_tail, sl->n_head,
                           sl->n_tail, cand, out, pos, NULL);
        return;
    }
    float *ub = list_ub(b, sl);
    float *cmax = ub + (size_t)n * rows;
    uint32_t *key = (uint32_t *)(cmax + (size_t)chunks * rows), *tmp = key + n;
    /* the rows' best pages: fold the chunk maxima into chunk 0's */
    for (int32_t c = 1; c < chunks; c++)
        for (int32_t r = 0; r < rows; r++)
            if (cmax[(size_t)c * rows + r] > cmax[r])
                cmax[r] = cmax[(size_t)c * rows + r];
    list_keys(ub, cmax, rows, sl->n_head, n - sl->n_tail, key);
    attnd__select_topk(key, n, sl->keep, sl->n_head, sl->n_tail, cand, out, pos, tmp);
}

/* Where the lists' scratch ends: the parallel run's list states (one int
 * per list), then the calling thread's scratch. */
static float *lists_end(const attnd_kernel_select_batch *b)
{
    int64_t tail = 0;
    for (int32_t i = 0; i < b->n_lists; i++)
        tail += list_work(b, &b->lists[i]);
    return b->work + tail;
}

/* The calling thread's scratch at the end of b->work, 64-byte aligned. */
static float *tail_scratch(const attnd_kernel_select_batch *b)
{
    return (float *)(((uintptr_t)(lists_end(b) + b->n_lists) + 63) & ~(uintptr_t)63);
}

static void pack_all(const attnd_kernel_select_batch *b, float *tmp)
{
    for (int32_t i = 0; i < b->n_lists; i++)
        if (attnd_kernel_select_list_units(&b->lists[i]))
            pack_list(b, &b->lists[i], tmp);
}

void attnd_kernel_select(const attnd_kernel_select_batch *b)
{
    attnd__ub_fn fn = ub_fn(b);
    float *scratch = tail_scratch(b);
    pack_all(b, scratch);
    for (int32_t i = 0; i < b->n_lists; i++)
        for (int32_t c = 0; c < attnd_kernel_select_list_units(&b->lists[i]); c++)
            score_chunk(b, &b->lists[i], c, fn, scratch);
    for (int32_t i = 0; i < b->n_lists; i++)
        select_list(b, &b->lists[i]);
}

/* The parallel run is one pool job over one task counter: tasks [0,
 * n_lists) pack a list's queries (or, for a list with nothing to score,
 * write its pages), the rest are the scoring units, list after list. A
 * list's state counts its progress: LIST_PACKED once packed, then
 * LIST_CHUNK per scored unit; the thread that scores a list's last unit
 * runs its top-k right away. So the packing is spread over the threads
 * instead of running before the job on the calling one, the top-k of the
 * first lists overlaps the scoring of the last ones, and the pool is
 * woken once, not twice (GQA at 128K: 8 lists of 16 units). A unit whose
 * list is still being packed waits for it: packs are the first tasks, so
 * that is at most one pack's time (GQA ~2 us: 4 rows of d_k 128), and only
 * at the start. */
enum { LIST_PACKED = 1, LIST_CHUNK = 2 };

typedef struct sel_ctx {
    const attnd_kernel_select_batch *b;
    attnd_kernel_pool *pool;
    attnd__ub_fn fn;
    atomic_int *state;  /* [n_lists] */
    int32_t n_tasks;    /* n_lists + scoring units */
    atomic_int next;
} sel_ctx;

/* The list a global chunk number belongs to (lists ordered by chunk0). */
static int32_t list_of_chunk(const attnd_kernel_select_batch *b, int32_t k)
{
    int32_t lo = 0, hi = b->n_lists - 1;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo + 1) / 2;
        if (b->lists[mid].chunk0 <= k)
            lo = mid;
        else
            hi = mid - 1;
    }
    /* lists without chunks share chunk0 with the next: step to the owner */
    while (attnd_kernel_select_list_units(&b->lists[lo]) <= k - b->lists[lo].chunk0)
        lo++;
    return lo;
}

/* Wait until list li is packed (acquire: its packed queries are seen). */
static void wait_packed(atomic_int *st)
{
    for (unsigned spin = 0; !(atomic_load_explicit(st, memory_order_acquire) & LIST_PACKED);
         spin++) {
#if defined(__SSE2__)
        _mm_pause();
#endif
        if (spin >= 1024) /* the packing thread lost its core: let it run */
            sched_yield();
    }
}

static void select_job(void *p, int32_t tid)
{
    sel_ctx *c = p;
    const attnd_kernel_select_batch *b = c->b;
    float *scratch = attnd__pool_scratch(c->pool, tid);
    for (;;) {
        const int k = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed);
        if (k >= c->n_tasks)
            return;
        if (k < b->n_lists) { /* pack, or nothing to score */
            const attnd_kernel_select_list *sl = &b->lists[k];
            if (attnd_kernel_select_list_units(sl)) {
                pack_list(b, sl, scratch);
                atomic_fetch_add_explicit(&c->state[k], LIST_PACKED, memory_order_release);
            } else {
                select_list(b, sl);
            }
            continue;
        }
        const int32_t li = list_of_chunk(b, k - b->n_lists);
        const attnd_kernel_select_list *sl = &b->lists[li];
        wait_packed(&c->state[li]);
        score_chunk(b, sl, k - b->n_lists - sl->chunk0, c->fn, scratch);
        /* acq_rel: the last unit's thread sees every unit's ub and maxima */
        const int was = atomic_fetch_add_explicit(&c->state[li], LIST_CHUNK,
                                                  memory_order_acq_rel);
        if (was == LIST_PACKED + LIST_CHUNK * (attnd_kernel_select_list_units(sl) - 1))
            select_list(b, sl);
    }
}

attnd_status attnd_kernel_select_parallel(attnd_kernel_pool *pool,
                                          const attnd_kernel_select_batch *b, attnd_error *err)
{
    if (b->n_lists == 0)
        return ATTND_OK;
    const attnd_kernel_select_list *last = &b->lists[b->n_lists - 1];
    sel_ctx c = {.b = b, .pool = pool, .fn = ub_fn(b),
                 .state = (atomic_int *)(void *)lists_end(b),
                 .n_tasks = b->n_lists + last->chunk0 + attnd_kernel_select_list_units(last)};
    for (int32_t i = 0; i < b->n_lists; i++)
        atomic_init(&c.state[i], 0);
    atomic_init(&c.next, 0);
    if (attnd__pool_run(pool, attnd__select_unit_floats(b), select_job, &c))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "select scratch: no memory for %zu floats per thread",
                               attnd__select_unit_floats(b));
    return ATTND_OK;
}
