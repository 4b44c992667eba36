/* The SIMD decode unit, written once over a small vector vocabulary and
 * compiled per instruction set: simd_avx512.c, simd_avx512bf16.c (via
 * simd_avx512_ops.h) and simd_avx2.c define the primitives (vf, VW lanes,
 * v_load, v_fma, v_exp2, ...), the register blocking (WIDE_TB/WIDE_RB,
 * PV_RB/PV_EB and their case lists) and SFX(), then include this file. Not
 * a public header; include it nowhere else. Its parts: the tile loader
 * (decode_simd_tile.h), the row I/O (decode_simd_rows.h), the softmax and
 * the multi-token guard (decode_simd_softmax.h), the float32 GEMMs and
 * unit here, and with DPBF16 the bf16 dot-product unit (decode_bf16.h).
 *
 * One unit = (sequence, KV head, token range), R = S * G query rows. Per
 * tile of TILE tokens:
 *   1. load:    the tile's K (and GQA V) rows, widened to float32 into
 *               chunk-major scratch by the pipelined loader of
 *               decode_simd_tile.h (which meanwhile prefetches ahead);
 *   2. scores:  S = Q K^T, with Q pre-scaled by scale * log2(e), as a small
 *               GEMM [R x d_k] x [d_k x TILE]. Two shapes:
 *               wide (many rows, MLA): vectors run over query rows, Q is
 *               packed transposed [d_k][R] and each K element is broadcast;
 *               a WIDE_TB x WIDE_RB block of accumulators stays in
 *               registers across all of d_k, so K is read once per tile
 *               and Q streams from L2;
 *               narrow (few rows, GQA): vectors run over d_k, VW tokens'
 *               dot products are reduced together by a transpose-add;
 *   3. softmax: online, in base 2 (decode_simd_softmax.h);
 *   4. output:  O = alpha O + P V, a GEMM [R x TILE] x [TILE x d_v] with a
 *               PV_RB x PV_EB accumulator block (vectors over d_v) kept in
 *               registers across the tile's tokens (GQA bf16 with few rows:
 *               V read from the pool and widened in registers).
 * The unit ends with out = O / l, lse = (m + log2 l) ln 2, or out 0 and
 * lse -inf for a row that saw no token, or NaN in both for a row that met
 * a non-finite value (attnd_kernels.h's rule: softmax and guard_tail). */

#define TILE ATTND_KERNEL_DECODE_TILE
#define AI static inline __attribute__((always_inline))
#define LOG2E 1.4426950408889634
#define LN2F 0.69314718f

#include "decode_simd_tile.h"
#include "decode_simd_rows.h"
#include "decode_simd_softmax.h"

/* ---- scores, wide: s [TILE][rows_pad] = k [TILE][dk] x qt [dk][rows_pad] ---- */

/* The accumulators of every microkernel are named variables, not arrays:
 * gcc does not scalarize arrays of vectors (even fully unrolled), and a
 * block that lives in memory instead of registers runs at a third of the
 * speed. Each block is written for its largest shape; the constant RB / TB
 * / EB of an always-inlined call removes the unused parts. */
#if WIDE_TB > 8 || WIDE_TB1 > 16 || WIDE_RB > 3 || PV_RB > 4 || PV_EB > 4
#error "register blocks larger than the microkernels are written for"
#endif

#define QKW_DECL(t) vf c##t##0 = v_zero(), c##t##1 = v_zero(), c##t##2 = v_zero();
#define QKW_FMA(t)                                                                     \
    if (TB > t) {                                                                      \
        vf kb = v_set1(kd[t * VW]);                                                    \
        c##t##0 = v_fma(kb, q0, c##t##0);                                              \
        if (RB > 1)                                                                    \
            c##t##1 = v_fma(kb, q1, c##t##1);                                          \
        if (RB > 2)                                                                    \
            c##t##2 = v_fma(kb, q2, c##t##2);                                          \
    }
#define QKW_STORE(t)                                                                   \
    if (TB > t) {                                                                      \
        v_store(s + (size_t)t * rp, c##t##0);                                          \
        if (RB > 1)                                                                    \
            v_store(s + (size_t)t * rp + VW, c##t##1);                                 \
        if (RB > 2)                                                                    \
            v_store(s + (size_t)t * rp + 2 * VW, c##t##2);                             \
    }
#define QKW_ALL(X)                                                                     \
    X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)

/* k: chunk-major, already offset to the block's first token. */
AI void qk_wide_blk(const float *qt, int32_t rp, const float *k, int32_t dk, float *s,
                    const int RB, const int TB)
{
    QKW_ALL(QKW_DECL)
    for (int32_t d0 = 0; d0 < dk; d0 += VW) {
        const float *kc = k + (size_t)(d0 / VW) * CS;
        const int32_t lanes = dk - d0 < VW ? dk - d0 : VW;
        for (int32_t i = 0; i < lanes; i++) {
            const float *qd = qt + (size_t)(d0 + i) * rp, *kd = kc + i;
            vf q0 = v_load(qd);
            vf q1 = RB > 1 ? v_load(qd + VW) : q0;
            vf q2 = RB > 2 ? v_load(qd + 2 * VW) : q0;
            QKW_ALL(QKW_FMA)
        }
    }
    QKW_ALL(QKW_STORE)
}

/* One block of TB tokens, all row vectors. */
AI void qk_wide_tokens(const float *qt, int32_t rp, int32_t nv, const float *kb, int32_t dk,
                       float *sb, const int TB)
{
    int32_t j = 0;
    for (; j + WIDE_RB <= nv; j += WIDE_RB)
        qk_wide_blk(qt + j * VW, rp, kb, dk, sb + j * VW, WIDE_RB, TB);
    switch (nv - j) {
    case 1: qk_wide_blk(qt + j * VW, rp, kb, dk, sb + j * VW, 1, TB); break;
    case 2: qk_wide_blk(qt + j * VW, rp, kb, dk, sb + j * VW, 2, TB); break;
    default: break;
    }
}

/* Scores of the tile's first n tokens only: blocks of WIDE_TB, then 4, 2,
 * 1 for the rest (a 1-token context costs one token of multiply-adds, not
 * a tile's). */
static void qk_wide(const float *qt, const attnd__simd_dims *dm, const float *k, float *s,
                    int32_t n)
{
    const int32_t rp = dm->rows_pad, nv = rp / VW;

    for (int32_t tb = 0; tb < n;) {
        const float *kb = k + (size_t)tb * VW;
        float *sb = s + (size_t)tb * rp;
        int32_t rem = n - tb;
        if (nv == 1 && rem >= WIDE_TB1) { /* one row vector: more tokens per q load */
            qk_wide_blk(qt, rp, kb, dm->dk, sb, 1, WIDE_TB1);
            tb += WIDE_TB1;
        } else if (rem >= WIDE_TB) {
            qk_wide_tokens(qt, rp, nv, kb, dm->dk, sb, WIDE_TB);
            tb += WIDE_TB;
#if WIDE_TB > 4
        } else if (rem >= 4) {
            qk_wide_tokens(qt, rp, nv, kb, dm->dk, sb, 4);
            tb += 4;
#endif
        } else if (rem >= 2) {
            qk_wide_tokens(qt, rp, nv, kb, dm->dk, sb, 2);
            tb += 2;
        } else {
            qk_wide_tokens(qt, rp, nv, kb, dm->dk, sb, 1);
            tb += 1;
        }
    }
}

/* ---- scores, narrow: s [rows][TILE], dot products over dk_pad ----------- */

#define QN_DECL(t) vf n##t = v_zero();
#define QN_FMA(t) n##t = v_fma(qv, v_load(kc + t * VW), n##t);
#if VW == 16
#define QN_ALL(X)                                                                      \
    X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define QN_ARGS n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, n10, n11, n12, n13, n14, n15
#else
#define QN_ALL(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define QN_ARGS n0, n1, n2, n3, n4, n5, n6, n7
#endif

static void qk_narrow(const float *q, const attnd__simd_dims *dm, const float *k, float *s,
                      tile_loader *ld)
{
    const int32_t dkp = dm->dk_pad;

    for (int32_t r = 0; r < dm->rows; r++) {
        ld_step(ld);
        const float *qr = q + (size_t)r * dkp;
        for (int32_t tg = 0; tg < TILE; tg += VW) {
            QN_ALL(QN_DECL)
            for (int32_t c = 0; c < dkp; c += VW) {
                const float *kc = k + (size_t)(c / VW) * CS + (size_t)tg * VW;
                vf qv = v_load(qr + c);
                QN_ALL(QN_FMA)
            }
            v_store(s + (size_t)r * TILE + tg, v_reduce_lanes(QN_ARGS));
        }
    }
}

/* Scores of a tile's first n <= VW tokens (a short unit, or the last tile
 * of a long one): blocks of VW / TB rows x TB tokens, TB the smallest power
 * of two >= n, so that the VW accumulators of one transpose-add reduction
 * are all useful work (a 1-token context: VW rows per reduction instead of
 * one row and 15 wasted tokens). Lane i of the reduction is row i / TB,
 * token i % TB. q rows past `rows` are zero (pack_queries), so a block may
 * run past the last row; its scores are not stored. */
#define QF_DECL(i) vf f##i = v_zero();
#define QF_FMA(i)                                                                      \
    f##i = v_fma(v_load(qb + (size_t)((i) / TB) * dkp + c),                             \
                 v_load(kc + (size_t)((i) % TB) * VW), f##i);
#if VW == 16
#define QF_ARGS f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15
#else
#define QF_ARGS f0, f1, f2, f3, f4, f5, f6, f7
#endif

AI void qk_few_blk(const float *qb, int32_t dkp, const float *k, float *s, int32_t rows_left,
                   const int TB)
{
    QN_ALL(QF_DECL)
    for (int32_t c = 0; c < dkp; c += VW) {
        const float *kc = k + (size_t)(c / VW) * CS;
        QN_ALL(QF_FMA)
    }
    float red[VW];
    v_store(red, v_reduce_lanes(QF_ARGS));
    for (int32_t i = 0; i < VW && i / TB < rows_left; i++)
        s[(size_t)(i / TB) * TILE + i % TB] = red[i];
}

static void qk_narrow_few(const float *q, const attnd__simd_dims *dm, const float *k, float *s,
                          int32_t n, tile_loader *ld)
{
    const int32_t dkp = dm->dk_pad;
    const int TB = n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : n <= 8 ? 8 : 16;

    for (int32_t r = 0; r < dm->rows; r += VW / TB) {
        ld_step(ld);
        const float *qb = q + (size_t)r * dkp;
        float *sb = s + (size_t)r * TILE;
        switch (TB) {
        case 1: qk_few_blk(qb, dkp, k, sb, dm->rows - r, 1); break;
        case 2: qk_few_blk(qb, dkp, k, sb, dm->rows - r, 2); break;
        case 4: qk_few_blk(qb, dkp, k, sb, dm->rows - r, 4); break;
        case 8: qk_few_blk(qb, dkp, k, sb, dm->rows - r, 8); break;
        default: qk_few_blk(qb, dkp, k, sb, dm->rows - r, VW); break;
        }
    }
}

/* ---- output: o [rows][dv_pad] = alpha o + p v ---------------------------- */

#define PV_DECL(r) vf a##r##0 = v_zero(), a##r##1 = v_zero(), a##r##2 = v_zero(), a##r##3 = v_zero();
#define PV_ROW4(r, OP)                                                                 \
    if (RB > r) {                                                                      \
        OP(r, 0)                                                                       \
        if (EB > 1) {                                                                  \
            OP(r, 1)                                                                   \
        }                                                                              \
        if (EB > 2) {                                                                  \
            OP(r, 2)                                                                   \
        }                                                                              \
        if (EB > 3) {                                                                  \
            OP(r, 3)                                                                   \
        }                                                                              \
    }
#define PV_LD(r, e) a##r##e = v_load(o + (size_t)r * dvp + e * VW);
#define PV_SC(r, e) a##r##e = v_mul(a##r##e, v_set1(alpha[r]));
#define PV_FM(r, e) a##r##e = v_fma(pb##r, v##e, a##r##e);
#define PV_ST(r, e) v_store(o + (size_t)r * dvp + e * VW, a##r##e);
#define PV_BC(r) vf pb##r = RB > r ? v_set1(p[(size_t)r * prs + (size_t)t * pts]) : v0;
#define PV_ALL(X, OP) X(0, OP) X(1, OP) X(2, OP) X(3, OP)

/* v: chunk-major, already offset to the block's first chunk. rescale < 0:
 * the unit's first tile (O not loaded: it starts at zero). */
AI void pv_blk(float *o, int32_t dvp, const float *p, int32_t prs, int32_t pts, const float *v,
               int32_t n, const float *alpha, int rescale, const int RB, const int EB)
{
    PV_DECL(0) PV_DECL(1) PV_DECL(2) PV_DECL(3)
    if (rescale >= 0) {
        PV_ALL(PV_ROW4, PV_LD)
    }
    if (rescale > 0) {
        PV_ALL(PV_ROW4, PV_SC)
    }
    for (int32_t t = 0; t < n; t++) {
        const float *vr = v + (size_t)t * VW;
        vf v0 = v_load(vr);
        vf v1 = EB > 1 ? v_load(vr + CS) : v0;
        vf v2 = EB > 2 ? v_load(vr + 2 * CS) : v0;
        vf v3 = EB > 3 ? v_load(vr + 3 * CS) : v0;
        PV_BC(0) PV_BC(1) PV_BC(2) PV_BC(3)
        PV_ALL(PV_ROW4, PV_FM)
    }
    PV_ALL(PV_ROW4, PV_ST)
}

/* p is indexed p[r * prs + t * pts] (narrow: [rows][TILE]; wide:
 * [TILE][rows_pad]); v is chunk-major (V rows, or MLA's K rows). */
static void pv(float *o, const attnd__simd_dims *dm, const float *p, int32_t prs, int32_t pts,
               const float *v, int32_t n, const float *alpha, int rescale, tile_loader *ld)
{
    const int32_t dvp = dm->dv_pad, nv = dvp / VW;

    for (int32_t e = 0; e < nv; e += PV_EB) {
        int32_t eb = nv - e < PV_EB ? nv - e : PV_EB;
        for (int32_t r = 0; r < dm->rows; r += PV_RB) {
            int32_t rb = dm->rows - r < PV_RB ? dm->rows - r : PV_RB;
            ld_step(ld);
            float *ob = o + (size_t)r * dvp + e * VW;
            const float *pb = p + (size_t)r * prs, *vb = v + (size_t)e * CS;
            const float *ab = alpha + r;
#define PV_CASE(RB_, EB_)                                                              \
    case (RB_) * 8 + (EB_):                                                            \
        pv_blk(ob, dvp, pb, prs, pts, vb, n, ab, rescale, RB_, EB_);                   \
        break;
            switch (rb * 8 + eb) {
                PV_CASES
            default: break;
            }
#undef PV_CASE
        }
    }
}

/* P V with bf16 V rows read from the pool (GQA, rows <= PV_RB, pairwise
 * order): each V element is widened once, in registers, and no V scratch
 * is written or read back. EB is even: vectors come in (even, odd) pairs. */
AI void pv_raw_blk(float *o, int32_t dvp, const float *p, const char *const *vrow, int32_t e0,
                   int32_t n, const float *alpha, int rescale, const int RB, const int EB)
{
    PV_DECL(0) PV_DECL(1) PV_DECL(2) PV_DECL(3)
    if (rescale >= 0) {
        PV_ALL(PV_ROW4, PV_LD)
    }
    if (rescale > 0) {
        PV_ALL(PV_ROW4, PV_SC)
    }
    for (int32_t t = 0; t < n; t++) {
        const uint16_t *vr = (const uint16_t *)(const void *)vrow[t] + e0;
        vf v0, v1, v2, v3;
        v_bf16_pair(vr, &v0, &v1);
        if (EB > 2)
            v_bf16_pair(vr + PERM_CHUNK, &v2, &v3);
        else
            v2 = v3 = v0;
        const int32_t pts = 1, prs = TILE;
        PV_BC(0) PV_BC(1) PV_BC(2) PV_BC(3)
        PV_ALL(PV_ROW4, PV_FM)
    }
    PV_ALL(PV_ROW4, PV_ST)
}

static void pv_raw(float *o, const attnd__simd_dims *dm, const float *p, const char *const *vrow,
                   int32_t n, const float *alpha, int rescale, tile_loader *ld)
{
    const int32_t dvp = dm->dv_pad, nv = dm->dv / VW; /* dv is a multiple of 2 VW */

    for (int32_t e = 0; e < nv; e += PVR_EB) {
        ld_step(ld);
#define PVR_CASE(RB_, EB_)                                                             \
    case (RB_) * 8 + (EB_):                                                            \
        pv_raw_blk(o + e * VW, dvp, p, vrow, e * VW, n, alpha, rescale, RB_, EB_);     \
        break;
        switch (dm->rows * 8 + (nv - e < PVR_EB ? 2 : PVR_EB)) {
            PVR_CASES
        default: break;
        }
#undef PVR_CASE
    }
}

/* ---- the unit ---------------------------------------------------------------- */

/* Wide when vectors over rows waste fewer multiply-adds than reducing the
 * narrow dot products costs (the reduction is ~3 vector ops per score). */
static int use_wide(const attnd__simd_dims *dm)
{
    int64_t wide = (int64_t)(dm->rows_pad / VW) * dm->dk;
    int64_t narrow = (int64_t)dm->rows * (dm->dk_pad / VW + 3);
    return wide <= narrow;
}

static float *carve(float **cur, size_t n)
{
    float *p = *cur;
    *cur += attnd__round_up((int64_t)n, 16);
    return p;
}

/* The float32 unit (every dtype; the only one of the avx2 and avx512 paths). */
static void unit_f32(const attnd_kernel_decode_batch *b, const attnd__unit *u, float *work)
{
    const attnd_kernel_kv_layout *l = b->kv;
    const attnd__simd_dims dm = attnd__simd_dims_of(b);
    const int32_t G = b->n_q_heads / l->n_kv_heads, S = b->q_tokens, R = dm.rows;
    const int32_t rp = dm.rows_pad, dkp = dm.dk_pad, dvp = dm.dv_pad, dv = dm.dv;
    const int64_t L = attnd_kernel_decode_seq_len(b, u->seq, u->kv_head);
    const int64_t t1 = u->t1 < L ? u->t1 : L;
    /* a unit of one tile or less packs q row-major even for a wide shape:
     * transposing 128 x 576 queries cost more than their one tile of
     * scores (qk_narrow_few) */
    const int wide = use_wide(&dm) && t1 - u->t0 > TILE;
    /* bf16 widened pairwise when whole chunks cover both K and V */
    const int perm =
        l->dtype == ATTND_DTYPE_BF16 && dm.dk % PERM_CHUNK == 0 && dv % PERM_CHUNK == 0;
    /* GQA bf16 V read straight from the pool by P V when one output block
     * holds all rows (each element is then widened once) */
    const int fuse_v = perm && !wide && !l->v_in_k && R <= PV_RB;
    float *cur = (float *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    float *q = carve(&cur, (size_t)rp * dkp);
    const char *vrow[2][TILE];
    float *kbuf[2] = {carve(&cur, (size_t)TILE * dkp), carve(&cur, (size_t)TILE * dkp)};
    float *vbuf[2] = {carve(&cur, (size_t)TILE * dvp), carve(&cur, (size_t)TILE * dvp)};
    float *s = carve(&cur, (size_t)TILE * rp), *p = carve(&cur, (size_t)TILE * rp);
    float *m = carve(&cur, (size_t)rp), *lsum = carve(&cur, (size_t)rp);
    float *alpha = carve(&cur, (size_t)rp);
    int32_t *vis = (int32_t *)carve(&cur, (size_t)rp);
    float *o = carve(&cur, (size_t)R * dvp);

    pack_queries(b, u, &dm, wide, perm, L, q, kbuf[0], vis);
    for (int32_t r = 0; r < rp; r++) {
        m[r] = -INFINITY;
        lsum[r] = 0.0f;
        alpha[r] = 1.0f;
    }
    /* o is not cleared: the first tile's P V starts from zero (rescale -1) */

    const int32_t *pages =
            b->page_idx + b->page_indptr[attnd_kernel_decode_list(b, u->seq, u->kv_head)];
    const int64_t min_vis = L - (S - 1);
    /* ld_step calls per tile: once per output block, plus once per score
     * row (narrow) or once up front (wide) */
    const int32_t pv_blocks =
        fuse_v ? (dv / VW + PVR_EB - 1) / PVR_EB
               : (R + PV_RB - 1) / PV_RB * ((dvp / VW + PV_EB - 1) / PV_EB);
    const int32_t calls = (wide ? 1 : R) + pv_blocks;
    tile_loader ld = {.b = b, .pages = pages, .dm = &dm, .kvh = u->kv_head, .perm = perm,
                      .fuse_v = fuse_v};
    int cur_buf = 0;
    ld_begin(&ld, u->t0, t1, kbuf[0], vbuf[0], vrow[0], 1);
    ld_prefetch_begin(&ld, u->t0 + TILE, t1, 1);
    ld_finish(&ld);
    for (int64_t t = u->t0; t < t1; t += TILE) {
        int32_t n = t1 - t < TILE ? (int32_t)(t1 - t) : TILE;
        const float *kt = kbuf[cur_buf], *vt = l->v_in_k ? kt : vbuf[cur_buf];
        int rescale;
        ld_begin(&ld, t + TILE, t1, kbuf[cur_buf ^ 1], vbuf[cur_buf ^ 1], vrow[cur_buf ^ 1],
                 calls);
        ld_prefetch_begin(&ld, t + 2 * TILE, t1, calls);
        if (wide) {
            ld_step(&ld);
            qk_wide(q, &dm, kt, s, n);
            rescale =
                softmax_wide(s, p, &dm, n, vis, t, t + n > min_vis, m, lsum, alpha, NULL);
        } else {
            if (n < TILE && n <= VW)
                qk_narrow_few(q, &dm, kt, s, n, &ld);
            else
                qk_narrow(q, &dm, kt, s, &ld);
            rescale = softmax_narrow(s, p, &dm, n, vis, t, m, lsum, alpha, NULL);
        }
        if (t == u->t0)
            rescale = -1;
        if (t + n > min_vis) /* S > 1: tokens not every row sees */
            guard_tail(&dm, min_vis > t ? (int32_t)(min_vis - t) : 0, n, t, vis,
                       (float *)vt, ld.fuse_v ? vrow[cur_buf] : NULL,
                       (uint16_t *)(void *)vbuf[cur_buf], lsum);
        if (wide)
            pv(o, &dm, p, 1, rp, vt, n, alpha, rescale, &ld);
        else if (ld.fuse_v)
            pv_raw(o, &dm, p, vrow[cur_buf], n, alpha, rescale, &ld);
        else
            pv(o, &dm, p, TILE, 1, vt, n, alpha, rescale, &ld);
        ld_finish(&ld);
        cur_buf ^= 1;
    }

    write_rows(u, &dm, G, perm, o, m, lsum);
}

#if defined(DPBF16)
#include "decode_bf16.h" /* its own unit for bf16 KV, unit_f32 for the rest */
#else
void SFX(attnd__decode_unit)(const attnd_kernel_decode_batch *b, const attnd__unit *u, float *work)
{
    unit_f32(b, u, work);
}
#endif
