/* Page-selection scoring on AVX-512 (16 float32 lanes): the vector
 * vocabulary select_simd.h is written in, and the integer scoring of
 * compact bounds (select_int.h; vpdpbusd where the CPU has AVX512-VNNI,
 * checked at run time). Compiled with the avx512 flags
 * (kernels/CMakeLists.txt); called only when dispatch.c chose that path. */
#include <immintrin.h>

#include "cpu_int.h"

typedef __m512 vf;
#define VW 16
#define SFX(name) name##_avx512

static inline vf v_zero(void) { return _mm512_setzero_ps(); }
static inline vf v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void v_store(float *p, vf x) { _mm512_storeu_ps(p, x); }
static inline vf v_set1(float x) { return _mm512_set1_ps(x); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline float v_hsum(vf x) { return _mm512_reduce_add_ps(x); }
/* 16 bf16 widened exactly (a bf16 is the high half of its float32) */
static inline vf v_bf16(const uint16_t *p)
{
    __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

#include "select_simd.h"

/* ---- compact bounds: exact integer sums (select_int.h) ----------------- */

/* acc += the 4-byte dot products of codes c (u8) and query q (s8):
 * vpdpbusd where AVX512-VNNI is there (written as asm: the rest of this
 * file must run without it), else both widened to 16 bits and summed in
 * pairs (vpmaddwd), exactly the same integers. */
static inline __m512i dp_vnni(__m512i acc, __m512i c, __m512i q)
{
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(c), "v"(q));
    return acc;
}
static inline __m512i dp_bw(__m512i acc, __m512i c, __m512i q)
{
    const __m512i z = _mm512_setzero_si512();
    __m512i cl = _mm512_unpacklo_epi8(c, z), ch = _mm512_unpackhi_epi8(c, z);
    __m512i ql = _mm512_srai_epi16(_mm512_unpacklo_epi8(q, q), 8);
    __m512i qh = _mm512_srai_epi16(_mm512_unpackhi_epi8(q, q), 8);
    return _mm512_add_epi32(acc, _mm512_add_epi32(_mm512_madd_epi16(cl, ql),
                                                  _mm512_madd_epi16(ch, qh)));
}

/* The four sums of a0..a3, in one vector. */
static inline __m128i hsum4(__m512i a0, __m512i a1, __m512i a2, __m512i a3)
{
    __m512i x = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
    __m512i y = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
    __m512i z = _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
    __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(z), _mm512_extracti64x4_epi64(z, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* Rows [r0, r0 + nr) of NPG pages (1 or 2: two pages share each query
 * load and give the core two independent chains): codes c[k] (n bytes
 * each), int8 rows q (width w, zero past n), integer sums into dot[k]. */
#define UB8_DP(acc, cv, qv) acc = VNNI ? dp_vnni(acc, cv, qv) : dp_bw(acc, cv, qv)
#define UB8_ROW(j)                                                                    \
    if (nr > j) {                                                                     \
        const __m512i qv = _mm512_loadu_si512(q + (size_t)j * w + i);                  \
        UB8_DP(a##j, c0, qv);                                                         \
        if (NPG > 1)                                                                  \
            UB8_DP(b##j, c1, qv);                                                     \
    }
static inline __attribute__((always_inline)) void
ub8_block(const uint8_t *const *c, int32_t n, const int8_t *q, size_t w, int32_t (*dot)[4],
          const int nr, const int NPG, const int VNNI, const int FULL)
{
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    __m512i b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int32_t i = 0; i < n; i += 64) {
        __m512i c0, c1;
        if (FULL) { /* n a multiple of 64: no masks */
            c0 = _mm512_loadu_si512(c[0] + i);
            c1 = NPG > 1 ? _mm512_loadu_si512(c[1] + i) : c0;
        } else {
            const __mmask64 m = n - i >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (n - i)) - 1;
            c0 = _mm512_maskz_loadu_epi8(m, c[0] + i);
            c1 = NPG > 1 ? _mm512_maskz_loadu_epi8(m, c[1] + i) : c0;
        }
        UB8_ROW(0)
        UB8_ROW(1)
        UB8_ROW(2)
        UB8_ROW(3)
    }
    _mm_storeu_si128((__m128i *)(void *)dot[0], hsum4(a0, a1, a2, a3));
    if (NPG > 1)
        _mm_storeu_si128((__m128i *)(void *)dot[1], hsum4(b0, b1, b2, b3));
}
#undef UB8_ROW
#undef UB8_DP

/* A page's four rows' float ub from their sums (attnd__select_ub8_value,
 * four at once), or nr of them. */
static inline void ub8_out(const uint8_t *brow, const float *qpk, int32_t R, int32_t r0,
                           const int32_t *dot, float *dst, int32_t nr)
{
    if (nr < 4) {
        for (int32_t j = 0; j < nr; j++)
            dst[j] = attnd__select_ub8_value(brow, qpk, R, r0 + j, dot[j]);
        return;
    }
    float off, step;
    memcpy(&off, brow, sizeof off);
    memcpy(&step, brow + sizeof off, sizeof step);
    __m128 t = _mm_mul_ps(_mm_set1_ps(step), _mm_loadu_ps(qpk + r0));
    __m128 v = _mm_add_ps(
            _mm_mul_ps(_mm_set1_ps(off), _mm_loadu_ps(qpk + R + r0)),
            _mm_mul_ps(t, _mm_cvtepi32_ps(_mm_loadu_si128((const __m128i *)(const void *)dot))));
    _mm_storeu_ps(dst, v);
}

/* Candidates whose compact bounds are prefetched ahead of the one scored:
 * a page scores in ~40 cycles, so 16 pages (4 KB at d_k 128) cover a
 * memory latency; the bounds arrive cold, after the decode of the layer
 * before streamed its KV through the caches. */
#ifndef UB8_AHEAD
#define UB8_AHEAD 16
#endif

static inline __attribute__((always_inline)) void
ub8_run(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl, int32_t kvh,
        int32_t p0, int32_t p1, const float *qpk, float *ub, int32_t row0, int32_t rows,
        const int VNNI, const int FULL)
{
    const int32_t R = attnd__select_head_rows(b), n = 2 * b->kv->d_k;
    const size_t w = attnd__select_q8_width(b->kv->d_k);
    const size_t row8 = attnd_kernel_kv_bounds8_row(b->kv);
    /* KV head kvh's rows, one per page (attnd_kernel_kv_bounds8_at) */
    const uint8_t *head = b->bounds8 + attnd_kernel_kv_bounds8_at(b->kv, b->bounds_pages, kvh, 0);
    const int32_t *cand = b->cand_idx + sl->cand0;
    const int8_t *q8 = attnd__select_q8_rows((float *)(uintptr_t)qpk, R);
    int32_t dot[2][4];
    for (int32_t p = p0; p < p1; p += 2) {
        const int two = p + 1 < p1;
        const uint8_t *brow[2], *c[2];
        for (int k = 0; k < 1 + two; k++) {
            brow[k] = head + (size_t)cand[p + k] * row8;
            c[k] = brow[k] + 2 * sizeof(float);
            if (p + k + UB8_AHEAD < p1) {
                const char *nx = (const char *)head + (size_t)cand[p + k + UB8_AHEAD] * row8;
                for (size_t off = 0; off < row8; off += 64)
                    __builtin_prefetch(nx + off);
            }
        }
        for (int32_t r0 = 0; r0 < R; r0 += 4) {
            const int32_t nr = R - r0 < 4 ? R - r0 : 4;
            const int8_t *q = q8 + (size_t)r0 * w;
#define UB8_CASE(N)                                                                   \
    case N:                                                                           \
        if (two)                                                                      \
            ub8_block(c, n, q, w, dot, N, 2, VNNI, FULL);                             \
        else                                                                          \
            ub8_block(c, n, q, w, dot, N, 1, VNNI, FULL);                             \
        break;
            switch (nr) {
                UB8_CASE(1)
                UB8_CASE(2)
                UB8_CASE(3)
                default:
                UB8_CASE(4)
            }
#undef UB8_CASE
            for (int k = 0; k < 1 + two; k++)
                ub8_out(brow[k], qpk, R, r0, dot[k], ub + (size_t)(p + k) * rows + row0 + r0, nr);
        }
    }
}

/* ---- four pages x four rows at once (GQA: 4 rows per KV head) ----------
 * The query rows r0..r0+3 sit in NB registers, block b holding the four
 * rows' bytes [16 b, 16 b + 16) in its four 128-bit lanes; a page's 16
 * code bytes of block b are broadcast to the four lanes, so one vpdpbusd
 * serves the four rows, and a page's sums end up in one register per page
 * (lane r: row r's four partial sums), not one per row and page. Four
 * pages' registers reduce together in 6 instructions to lane r = row r's
 * sums of the four pages, which take their float ub in one go (the same
 * operations as attnd__select_ub8_value, so the same floats) and are
 * stored page-major. Against a register per row and page (ub8_block): the
 * same dot products, a quarter of the reductions; the per-page work left
 * is the 16 multiply-adds, which is what the compact bounds cost. */
#define Q4_MAX_NB 16

/* Rows r0..r0+3 of the int8 query rows (width w) as NB lane-interleaved
 * blocks. */
static inline __attribute__((always_inline)) void q4_load(const int8_t *q, size_t w, __m512i *qv,
                                                          const int NB)
{
    for (int b = 0; b < NB; b++) {
        __m512i x = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(const void *)(q + 16 * b)));
        x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(const void *)(q + w + 16 * b)), 1);
        x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(const void *)(q + 2 * w + 16 * b)), 2);
        x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(const void *)(q + 3 * w + 16 * b)), 3);
        qv[b] = x;
    }
}

/* One page's sums against the four rows: lane r holds row r's partial
 * sums (two chains, for the multiply-add's latency). */
#define Q4_DP(acc, cv, qv) acc = VNNI ? dp_vnni(acc, cv, qv) : dp_bw(acc, cv, qv)
static inline __attribute__((always_inline)) __m512i q4_page(const uint8_t *c, const __m512i *qv,
                                                             const int NB, const int VNNI)
{
    __m512i a = _mm512_setzero_si512(), b = a;
    for (int k = 0; k < NB; k += 2) {
        Q4_DP(a, _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)(c + 16 * k))),
              qv[k]);
        if (k + 1 < NB)
            Q4_DP(b, _mm512_broadcast_i32x4(
                             _mm_loadu_si128((const __m128i *)(const void *)(c + 16 * k + 16))),
                  qv[k + 1]);
    }
    return _mm512_add_epi32(a, b);
}
#undef Q4_DP

/* ub of rows r0..r0+3 (R rows in all) for candidates [p0, p1) of KV head
 * kvh's rows `head` (row8 bytes a page); ub[p][row0 + r0 + r], `rows` per
 * candidate. Candidates past the last whole four: ub8_block. */
static inline __attribute__((always_inline)) void
q4_run(const int32_t *cand, const uint8_t *head, size_t row8,
       int32_t p0, int32_t p1, const float *qpk, int32_t R, int32_t r0, const int8_t *q8,
       size_t w, float *ub, int32_t row0, int32_t rows, const int NB, const int VNNI)
{
    __m512i qv[Q4_MAX_NB];
    q4_load(q8 + (size_t)r0 * w, w, qv, NB);
    /* lane r: row r0 + r's sq and Qsum */
    const __m512 sqv = _mm512_castsi512_ps(_mm512_permutexvar_epi32(
            _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
            _mm512_castsi128_si512(_mm_castps_si128(_mm_loadu_ps(qpk + r0)))));
    const __m512 qsv = _mm512_castsi512_ps(_mm512_permutexvar_epi32(
            _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
            _mm512_castsi128_si512(_mm_castps_si128(_mm_loadu_ps(qpk + R + r0)))));
    /* lane r element p -> page p row r (page-major) */
    const __m512i pm = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    int32_t p = p0;
    for (; p + 4 <= p1; p += 4) {
        const uint8_t *br[4];
        for (int k = 0; k < 4; k++) {
            br[k] = head + (size_t)cand[p + k] * row8;
            if (p + k + UB8_AHEAD < p1) {
                const char *nx = (const char *)head + (size_t)cand[p + k + UB8_AHEAD] * row8;
                for (size_t off = 0; off < row8; off += 64)
                    __builtin_prefetch(nx + off);
            }
        }
        const __m512i A = q4_page(br[0] + 8, qv, NB, VNNI), B = q4_page(br[1] + 8, qv, NB, VNNI);
        const __m512i C = q4_page(br[2] + 8, qv, NB, VNNI), D = q4_page(br[3] + 8, qv, NB, VNNI);
        /* lane r: [A_r, B_r, C_r, D_r], each the sum of its four partials */
        const __m512i x = _mm512_add_epi32(_mm512_unpacklo_epi32(A, B), _mm512_unpackhi_epi32(A, B));
        const __m512i y = _mm512_add_epi32(_mm512_unpacklo_epi32(C, D), _mm512_unpackhi_epi32(C, D));
        const __m512i z = _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
        /* the pages' off and step, [A, B, C, D] in every lane */
        const __m128i ab = _mm_unpacklo_epi32(_mm_loadl_epi64((const __m128i *)(const void *)br[0]),
                                              _mm_loadl_epi64((const __m128i *)(const void *)br[1]));
        const __m128i cd = _mm_unpacklo_epi32(_mm_loadl_epi64((const __m128i *)(const void *)br[2]),
                                              _mm_loadl_epi64((const __m128i *)(const void *)br[3]));
        const __m512 offv = _mm512_broadcast_f32x4(_mm_castsi128_ps(_mm_unpacklo_epi64(ab, cd)));
        const __m512 stepv = _mm512_broadcast_f32x4(_mm_castsi128_ps(_mm_unpackhi_epi64(ab, cd)));
        /* off Qsum + (step sq) dot, as attnd__select_ub8_value */
        const __m512 v = _mm512_add_ps(_mm512_mul_ps(offv, qsv),
                                       _mm512_mul_ps(_mm512_mul_ps(stepv, sqv), _mm512_cvtepi32_ps(z)));
        const __m512 o = _mm512_permutexvar_ps(pm, v);
        if (rows == 4) {
            _mm512_storeu_ps(ub + (size_t)p * 4, o);
        } else {
            float *d = ub + (size_t)p * rows + row0 + r0;
            _mm_storeu_ps(d, _mm512_castps512_ps128(o));
            _mm_storeu_ps(d + rows, _mm512_extractf32x4_ps(o, 1));
            _mm_storeu_ps(d + 2 * (size_t)rows, _mm512_extractf32x4_ps(o, 2));
            _mm_storeu_ps(d + 3 * (size_t)rows, _mm512_extractf32x4_ps(o, 3));
        }
    }
    for (; p < p1; p++) { /* the last pages, one at a time */
        const uint8_t *c[1] = {head + (size_t)cand[p] * row8 + 8};
        int32_t dot[1][4];
        ub8_block(c, 16 * NB, q8 + (size_t)r0 * w, w, dot, 4, 1, VNNI, 0);
        ub8_out(c[0] - 8, qpk, R, r0, dot[0], ub + (size_t)p * rows + row0 + r0, 4);
    }
}

/* The four-row path, if it applies: R a multiple of 4 and 2 d_k code bytes
 * a multiple of 16 up to Q4_MAX_NB blocks of them (d_k 64 and 128
 * unrolled). Returns 0 when it does not apply. */
static int ub8_quads(const attnd_kernel_select_batch *b, const attnd_kernel_select_list *sl,
                     int32_t kvh, int32_t p0, int32_t p1, const float *qpk, float *ub,
                     int32_t row0, int32_t rows, const int VNNI)
{
    const int32_t R = attnd__select_head_rows(b), n = 2 * b->kv->d_k;
    if (R % 4 || (n != 256 && n != 128))
        return 0;
    const size_t w = attnd__select_q8_width(b->kv->d_k), row8 = attnd_kernel_kv_bounds8_row(b->kv);
    const uint8_t *head = b->bounds8 + attnd_kernel_kv_bounds8_at(b->kv, b->bounds_pages, kvh, 0);
    const int32_t *cand = b->cand_idx + sl->cand0;
    const int8_t *q8 = attnd__select_q8_rows((float *)(uintptr_t)qpk, R);
    for (int32_t r0 = 0; r0 < R; r0 += 4) {
        if (n == 256)
            q4_run(cand, head, row8, p0, p1, qpk, R, r0, q8, w, ub, row0, rows, 16, VNNI);
        else
            q4_run(cand, head, row8, p0, p1, qpk, R, r0, q8, w, ub, row0, rows, 8, VNNI);
    }
    return 1;
}

void attnd__select_ub8_avx512(const attnd_kernel_select_batch *b,
                              const attnd_kernel_select_list *sl, int32_t kvh, int32_t p0,
                              int32_t p1, const float *qpk, float *ub, int32_t row0, int32_t rows)
{
    const int full = b->kv->d_k % 32 == 0;
    const int vnni = __builtin_cpu_supports("avx512vnni");
    if (vnni ? ub8_quads(b, sl, kvh, p0, p1, qpk, ub, row0, rows, 1)
             : ub8_quads(b, sl, kvh, p0, p1, qpk, ub, row0, rows, 0))
        return;
    if (vnni) {
        if (full)
            ub8_run(b, sl, kvh, p0, p1, qpk, ub, row0, rows, 1, 1);
        else
            ub8_run(b, sl, kvh, p0, p1, qpk, ub, row0, rows, 1, 0);
    } else {
        if (full)
            ub8_run(b, sl, kvh, p0, p1, qpk, ub, row0, rows, 0, 1);
        else
            ub8_run(b, sl, kvh, p0, p1, qpk, ub, row0, rows, 0, 0);
    }
}
