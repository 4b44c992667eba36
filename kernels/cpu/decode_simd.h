/* The SIMD decode unit, written once over a small vector vocabulary and
 * compiled per instruction set: simd_avx512.c and simd_avx2.c define the
 * primitives (vf, VW lanes, v_load, v_fma, v_exp2, ...), the register
 * blocking (WIDE_TB/WIDE_RB, PV_RB/PV_EB and their case lists) and SFX(),
 * then include this file. Not a public header; include it nowhere else.
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
 *   3. softmax: online, in base 2: m = max, alpha = 2^(m_old - m_new),
 *               P = 2^(S - m_new), l = alpha l + sum P; masked scores
 *               (past a row's visible length) are -inf and give P = 0;
 *   4. output:  O = alpha O + P V, a GEMM [R x TILE] x [TILE x d_v] with a
 *               PV_RB x PV_EB accumulator block (vectors over d_v) kept in
 *               registers across the tile's tokens (GQA bf16 with few rows:
 *               V read from the pool and widened in registers).
 * The unit ends with out = O / l, lse = (m + log2 l) ln 2, or out 0 and
 * lse -inf for a row that saw no token. */

#define TILE ATTND_DECODE_TILE
#define AI static inline __attribute__((always_inline))
#define LOG2E 1.4426950408889634
#define LN2F 0.69314718f

#include "decode_simd_tile.h"

/* ---- scores, wide: s [TILE][rows_pad] = k [TILE][dk] x qt [dk][rows_pad] ---- */

/* The accumulators of every microkernel are named variables, not arrays:
 * gcc does not scalarize arrays of vectors (even fully unrolled), and a
 * block that lives in memory instead of registers runs at a third of the
 * speed. Each block is written for its largest shape; the constant RB / TB
 * / EB of an always-inlined call removes the unused parts. */
#if WIDE_TB > 8 || WIDE_RB > 3 || PV_RB > 4 || PV_EB > 4
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
#define QKW_ALL(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

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

static void qk_wide(const float *qt, const attnd__simd_dims *dm, const float *k, float *s)
{
    const int32_t rp = dm->rows_pad, nv = rp / VW;

    for (int32_t tb = 0; tb < TILE; tb += WIDE_TB) {
        const float *kb = k + (size_t)tb * VW;
        float *sb = s + (size_t)tb * rp;
        int32_t j = 0;
        for (; j + WIDE_RB <= nv; j += WIDE_RB)
            qk_wide_blk(qt + j * VW, rp, kb, dm->dk, sb + j * VW, WIDE_RB, WIDE_TB);
        switch (nv - j) {
        case 1: qk_wide_blk(qt + j * VW, rp, kb, dm->dk, sb + j * VW, 1, WIDE_TB); break;
        case 2: qk_wide_blk(qt + j * VW, rp, kb, dm->dk, sb + j * VW, 2, WIDE_TB); break;
        default: break;
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

/* ---- online softmax ---------------------------------------------------------
 * Both return 1 when some row's alpha is not 1 (O must be rescaled). */

/* wide: s, p [TILE][rows_pad]; vectors over rows. Token t (absolute tabs+t)
 * is masked for rows whose visible length is <= tabs + t (only checked when
 * the tile reaches past the shortest visible length). */
static int softmax_wide(float *s, float *p, const attnd__simd_dims *dm, int32_t n,
                        const int32_t *vis, int64_t tabs, int need_mask, float *m, float *l,
                        float *alpha)
{
    const int32_t rp = dm->rows_pad;
    int rescale = 0;

    for (int32_t j = 0; j < rp; j += VW) {
        vf mo = v_load(m + j), tm = v_set1(-INFINITY);
        for (int32_t t = 0; t < n; t++) {
            float *st = s + (size_t)t * rp + j;
            vf x = v_load(st);
            if (need_mask) {
                x = v_mask_vis(x, vis + j, (int32_t)(tabs + t));
                v_store(st, x);
            }
            tm = v_max(tm, x);
        }
        vf mn = v_max(mo, tm), ms = v_ninf_to_zero(mn);
        vf a = v_exp2(v_sub(mo, ms)), sum = v_zero();
        for (int32_t t = 0; t < n; t++) {
            vf pt = v_exp2(v_sub(v_load(s + (size_t)t * rp + j), ms));
            v_store(p + (size_t)t * rp + j, pt);
            sum = v_add(sum, pt);
        }
        v_store(l + j, v_fma(v_load(l + j), a, sum));
        v_store(m + j, mn);
        v_store(alpha + j, a);
        rescale |= v_any_ne1(a);
    }
    return rescale;
}

/* narrow: s, p [rows][TILE]; vectors over tokens, one row at a time. */
static int softmax_narrow(const float *s, float *p, const attnd__simd_dims *dm, int32_t n,
                          const int32_t *vis, int64_t tabs, float *m, float *l, float *alpha)
{
    int rescale = 0;

    for (int32_t r = 0; r < dm->rows; r++) {
        int64_t lim64 = vis[r] - tabs;
        int32_t lim = lim64 < n ? (lim64 > 0 ? (int32_t)lim64 : 0) : n;
        const float *sr = s + (size_t)r * TILE;
        vf x0 = v_mask_tail(v_load(sr), lim);
        float tm = v_hmax(x0);
#if TILE / VW == 2
        vf x1 = v_mask_tail(v_load(sr + VW), lim - VW);
        float h1 = v_hmax(x1);
        tm = h1 > tm ? h1 : tm;
#endif
        float mn = m[r] > tm ? m[r] : tm;
        float ms = mn == -INFINITY ? 0.0f : mn;
        float a = exp2f(m[r] - ms);
        vf msv = v_set1(ms), p0 = v_exp2(v_sub(x0, msv)), sum = p0;
        v_store(p + (size_t)r * TILE, p0);
#if TILE / VW == 2
        vf p1 = v_exp2(v_sub(x1, msv));
        v_store(p + (size_t)r * TILE + VW, p1);
        sum = v_add(sum, p1);
#endif
        l[r] = l[r] * a + v_hsum(sum);
        m[r] = mn;
        alpha[r] = a;
        rescale |= a != 1.0f;
    }
    return rescale;
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

/* v: chunk-major, already offset to the block's first chunk. */
AI void pv_blk(float *o, int32_t dvp, const float *p, int32_t prs, int32_t pts, const float *v,
               int32_t n, const float *alpha, int rescale, const int RB, const int EB)
{
    PV_DECL(0) PV_DECL(1) PV_DECL(2) PV_DECL(3)
    PV_ALL(PV_ROW4, PV_LD)
    if (rescale) {
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
    PV_ALL(PV_ROW4, PV_LD)
    if (rescale) {
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

/* The unit's queries, widened, scaled by scale * log2(e), in the KV order
 * (perm) and packed for the score shape: wide q [dk][rows_pad] (padding
 * rows zero), narrow q [rows][dk_pad]. Also each row's visible length.
 * tmp holds TILE rows (TILE x dk_pad floats). */
static void pack_queries(const attnd_decode_batch *b, const attnd__unit *u,
                         const attnd__simd_dims *dm, int wide, int perm, int64_t L, float *q,
                         float *tmp /* TILE x dk_pad */, int32_t *vis)
{
    const int32_t G = b->n_q_heads / b->kv->n_kv_heads, S = b->q_tokens;
    const int32_t rp = dm->rows_pad, dk = dm->dk, dkp = dm->dk_pad;
    const float sc = (float)((double)b->scale * LOG2E);
    const size_t qes = attnd_dtype_size(b->q_dtype);

    /* wide: q is transposed ([dk][rows_pad]); rows are widened a block of
     * TILE at a time into tmp (TILE x dk_pad floats) and written d-major,
     * so each store run is a block's contiguous slice of one column
     * instead of one float per cache line (at 128 heads the row-at-a-time
     * scatter cost as much as attending to a few thousand tokens) */
    for (int32_t r0 = 0; r0 < dm->rows; r0 += wide ? TILE : 1) {
        int32_t nb = wide ? (dm->rows - r0 < TILE ? dm->rows - r0 : TILE) : 1;
        for (int32_t rr = 0; rr < nb; rr++) {
            int32_t r = r0 + rr, si = r / G, g = r % G;
            size_t off =
                (((size_t)u->seq * S + si) * b->n_q_heads + (size_t)u->kv_head * G + g) *
                (size_t)dk;
            float *t = tmp + (size_t)rr * dkp;
            cvt_row(t, (const char *)b->q + off * qes, dk, dkp, b->q_dtype);
            if (perm)
                perm_row(t, dk);
            if (!wide)
                for (int32_t d = 0; d < dkp; d += VW)
                    v_store(q + (size_t)r * dkp + d, v_mul(v_load(t + d), v_set1(sc)));
            vis[r] = (int32_t)(L - (S - 1 - si));
        }
        if (wide)
            for (int32_t d = 0; d < dk; d++) {
                float *qd = q + (size_t)d * rp + r0;
                for (int32_t rr = 0; rr < nb; rr++)
                    qd[rr] = tmp[(size_t)rr * dkp + d] * sc;
            }
    }
    if (wide)
        for (int32_t d = 0; d < dk; d++)
            for (int32_t r = dm->rows; r < rp; r++)
                q[(size_t)d * rp + r] = 0.0f;
    for (int32_t r = dm->rows; r < rp; r++)
        vis[r] = 0;
}

/* Normalize the unit's rows into their destinations (back in natural
 * order when perm): out = O / l, lse = (m + log2 l) ln 2; a row that saw no
 * token gets 0 and -inf. */
static void write_rows(const attnd__unit *u, const attnd__simd_dims *dm, int32_t G, int perm,
                       const float *o, const float *m, const float *lsum)
{
    const int32_t dv = dm->dv;

    for (int32_t r = 0; r < dm->rows; r++) {
        int32_t si = r / G, g = r % G;
        float *dst = u->out + si * u->out_s + (int64_t)g * dv;
        const float *orow = o + (size_t)r * dm->dv_pad;
        float lse = -INFINITY;
        int32_t e = 0;
        if (lsum[r] > 0.0f) {
            float inv = 1.0f / lsum[r];
            vf iv = v_set1(inv);
            if (perm) {
                for (; e < dv; e += PERM_CHUNK)
                    for (int32_t j = 0; j < VW; j++) {
                        dst[e + 2 * j] = orow[e + j] * inv;
                        dst[e + 2 * j + 1] = orow[e + VW + j] * inv;
                    }
            }
            for (; e + VW <= dv; e += VW)
                v_store(dst + e, v_mul(v_load(orow + e), iv));
            for (; e < dv; e++)
                dst[e] = orow[e] * inv;
            lse = (m[r] + log2f(lsum[r])) * LN2F;
        } else {
            for (; e < dv; e++)
                dst[e] = 0.0f;
        }
        if (u->lse)
            u->lse[si * u->lse_s + g] = lse;
    }
}

void SFX(attnd__decode_unit)(const attnd_decode_batch *b, const attnd__unit *u, float *work)
{
    const attnd_kv_layout *l = b->kv;
    const attnd__simd_dims dm = attnd__simd_dims_of(b);
    const int32_t G = b->n_q_heads / l->n_kv_heads, S = b->q_tokens, R = dm.rows;
    const int32_t rp = dm.rows_pad, dkp = dm.dk_pad, dvp = dm.dv_pad, dv = dm.dv;
    const int wide = use_wide(&dm);
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
    const int64_t L = attnd_decode_seq_len(b, u->seq, u->kv_head);
    const int64_t t1 = u->t1 < L ? u->t1 : L;

    pack_queries(b, u, &dm, wide, perm, L, q, kbuf[0], vis);
    for (int32_t r = 0; r < rp; r++) {
        m[r] = -INFINITY;
        lsum[r] = 0.0f;
        alpha[r] = 1.0f;
    }
    memset(o, 0, sizeof(float) * (size_t)R * dvp);

    const int32_t *pages = b->page_idx + b->page_indptr[attnd_decode_list(b, u->seq, u->kv_head)];
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
            qk_wide(q, &dm, kt, s);
            rescale = softmax_wide(s, p, &dm, n, vis, t, t + n > min_vis, m, lsum, alpha);
            pv(o, &dm, p, 1, rp, vt, n, alpha, rescale, &ld);
        } else {
            qk_narrow(q, &dm, kt, s, &ld);
            rescale = softmax_narrow(s, p, &dm, n, vis, t, m, lsum, alpha);
            if (ld.fuse_v)
                pv_raw(o, &dm, p, vrow[cur_buf], n, alpha, rescale, &ld);
            else
                pv(o, &dm, p, TILE, 1, vt, n, alpha, rescale, &ld);
        }
        ld_finish(&ld);
        cur_buf ^= 1;
    }

    write_rows(u, &dm, G, perm, o, m, lsum);
}
