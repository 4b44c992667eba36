/* The bf16 dot-product decode unit (path "avx512bf16"): decode_simd.h's
 * unit with both small GEMMs on vdpbf16ps, which multiplies pairs of bf16
 * and adds them into float32 lanes: 32 multiply-adds per instruction
 * where a float32 FMA does 16. Included at the end of decode_simd.h by
 * simd_avx512bf16.c only; it reuses that file's loader (in bf16 mode),
 * softmax (in reference mode) and row output.
 *
 * For bf16 KV with d_v a multiple of 32 (every model attnd serves); any
 * other batch takes unit_f32, the avx512 path's exact float32 unit.
 *
 *   K        copied as bf16 (chunk-major, chunks of 32), never widened;
 *   scores   S = Q K^T in float32 lanes. Q must be bf16 for vdpbf16ps: a
 *            bf16 query is used as is; any other is split into hi =
 *            bf16(q) and lo = bf16(q - hi) and both are multiplied (twice
 *            the score instructions, q kept to ~2^-17 relative), so the
 *            scores, the softmax and lse stay within float32 rounding of
 *            the float32 paths;
 *   softmax  float32, online, in reference mode (see REF_FLOOR);
 *   P V      P rounded to bf16 (the only rounding this unit adds: ~2^-9
 *            relative per weight, outputs within the bf16 bounds of the
 *            tests, lse unaffected: l sums the float32 P), V interleaved
 *            by token pairs, O accumulated in float32.
 * Register blocking as the float32 unit's (WIDE_TB x WIDE_RB scores, PV_RB
 * x PV_EB outputs): vdpbf16ps needs no more registers than an FMA. */

/* ---- scratch ------------------------------------------------------------- */

/* q and K in bf16 are padded to chunks of 32 elements (16 pairs). */
static inline int32_t dk32_of(const attnd__simd_dims *dm)
{
    return (int32_t)attnd__round_up(dm->dk, 32);
}

static inline __m512bh bh_load(const void *p)
{
    return (__m512bh)_mm512_loadu_si512(p);
}

static inline __m512bh bh_set1(uint32_t pair)
{
    return (__m512bh)_mm512_set1_epi32((int)pair);
}

/* ---- queries --------------------------------------------------------------- */

/* One query row as bf16, natural order, zero-padded to dk32: hi = bf16(q)
 * (round to nearest even); lo = bf16(q - hi) unless lo is NULL (then q
 * must be bf16 and is copied). tmp: dk32 floats. */
static void q_row_bf16(uint16_t *hi, uint16_t *lo, const void *src, int32_t dk, int32_t dk32,
                       attnd_dtype qt, float *tmp)
{
    if (!lo) {
        memcpy(hi, src, sizeof(uint16_t) * (size_t)dk);
        memset(hi + dk, 0, sizeof(uint16_t) * (size_t)(dk32 - dk));
        return;
    }
    cvt_row(tmp, src, dk, dk32, qt);
    for (int32_t i = 0; i < dk32; i += 32) {
        vf a = v_load(tmp + i), b = v_load(tmp + i + 16);
        _mm512_storeu_si512((void *)(hi + i), (__m512i)_mm512_cvtne2ps_pbh(b, a));
        vf ah = v_load_bf16(hi + i), bh = v_load_bf16(hi + i + 16);
        _mm512_storeu_si512((void *)(lo + i),
                            (__m512i)_mm512_cvtne2ps_pbh(v_sub(b, bh), v_sub(a, ah)));
    }
}

/* The unit's queries in bf16 (and their low halves when split), packed for
 * the score shape: wide [dk32 / 2][rows_pad] pairs (32-bit words: the
 * register transposes of decode_simd_rows.h move them as floats, bits
 * untouched), narrow [rows_pad][dk32] elements; padding rows zero. Also
 * each row's visible length. tmp: 2 * VW rows of dk32 bf16 and dk32
 * floats. */
static void pack_queries_bf16(const attnd_kernel_decode_batch *b, const attnd__unit *u,
                              const attnd__simd_dims *dm, int wide, int split, int64_t L,
                              uint16_t *qh, uint16_t *ql, uint16_t *tmp, float *ftmp,
                              int32_t *vis)
{
    const int32_t G = b->n_q_heads / b->kv->n_kv_heads, S = b->q_tokens;
    const int32_t rp = dm->rows_pad, dk = dm->dk, dk32 = dk32_of(dm), dk2 = dk32 / 2;
    const size_t qes = attnd_dtype_size(b->q_dtype);
    const char *q0 = (const char *)b->q;
    uint16_t *th = tmp, *tl = tmp + (size_t)VW * dk32;

    for (int32_t r = 0; r < rp; r++)
        vis[r] = r < dm->rows ? (int32_t)(L - (S - 1 - r / G)) : 0;
    for (int32_t r0 = 0; r0 < rp; r0 += wide ? VW : 1) {
        int32_t nb = wide ? VW : 1;
        for (int32_t rr = 0; rr < nb; rr++) {
            int32_t r = r0 + rr, si = r / G, g = r % G;
            uint16_t *h = wide ? th + (size_t)rr * dk32 : qh + (size_t)r * dk32;
            uint16_t *lo = !split ? NULL : wide ? tl + (size_t)rr * dk32 : ql + (size_t)r * dk32;
            if (r >= dm->rows) {
                memset(h, 0, sizeof(uint16_t) * (size_t)dk32);
                if (lo)
                    memset(lo, 0, sizeof(uint16_t) * (size_t)dk32);
                continue;
            }
            size_t off =
                (((size_t)u->seq * S + si) * b->n_q_heads + (size_t)u->kv_head * G + g) *
                (size_t)dk;
            q_row_bf16(h, lo, q0 + off * qes, dk, dk32, b->q_dtype, ftmp);
        }
        if (!wide)
            continue;
        for (int32_t w0 = 0; w0 < dk2; w0 += VW) {
            int32_t nc = dk2 - w0 < VW ? dk2 - w0 : VW;
            v_transpose_block((const float *)(const void *)th + w0, (size_t)dk2,
                              (float *)(void *)qh + (size_t)w0 * rp + r0, (size_t)rp, nc);
            if (split)
                v_transpose_block((const float *)(const void *)tl + w0, (size_t)dk2,
                                  (float *)(void *)ql + (size_t)w0 * rp + r0, (size_t)rp, nc);
        }
    }
}

/* ---- scores, wide: s [TILE][rows_pad] = K [TILE][dk] x Q^T, bf16 pairs ------
 * Vectors over rows; each K pair (token t, dims 2j, 2j+1) is broadcast. */

#define QBW_DOT(t)                                                                      \
    if (TB > t) {                                                                       \
        __m512bh kb = bh_set1(kd[t * 16]);                                              \
        c##t##0 = _mm512_dpbf16_ps(c##t##0, q0, kb);                                    \
        if (RB > 1)                                                                     \
            c##t##1 = _mm512_dpbf16_ps(c##t##1, q1, kb);                                \
        if (RB > 2)                                                                     \
            c##t##2 = _mm512_dpbf16_ps(c##t##2, q2, kb);                                \
    }
#define QBW_STORE(t)                                                                    \
    if (TB > t) {                                                                       \
        v_store(s + (size_t)t * rp, v_mul(c##t##0, scv));                               \
        if (RB > 1)                                                                     \
            v_store(s + (size_t)t * rp + VW, v_mul(c##t##1, scv));                      \
        if (RB > 2)                                                                     \
            v_store(s + (size_t)t * rp + 2 * VW, v_mul(c##t##2, scv));                  \
    }

/* q: pairs [dk2][rp] (hi, and lo when SPLIT), already offset to the block's
 * first row; k: chunk-major bf16 as 32-bit pairs, offset to its first
 * token. */
AI void qkb_wide_blk(const uint32_t *qh, const uint32_t *ql, int32_t rp, const uint32_t *k,
                     int32_t dk2, float *s, vf scv, const int RB, const int TB, const int SPLIT)
{
    QKW_ALL(QKW_DECL)
    for (int32_t j0 = 0; j0 < dk2; j0 += 16) {
        const uint32_t *kc = k + (size_t)(j0 / 16) * (CSB / 2);
        for (int32_t i = 0; i < 16; i++) {
            const uint32_t *kd = kc + i;
            const uint32_t *qd = qh + (size_t)(j0 + i) * rp;
            __m512bh q0 = bh_load(qd);
            __m512bh q1 = RB > 1 ? bh_load(qd + VW) : q0;
            __m512bh q2 = RB > 2 ? bh_load(qd + 2 * VW) : q0;
            QKW_ALL(QBW_DOT)
            if (SPLIT) {
                qd = ql + (size_t)(j0 + i) * rp;
                q0 = bh_load(qd);
                q1 = RB > 1 ? bh_load(qd + VW) : q0;
                q2 = RB > 2 ? bh_load(qd + 2 * VW) : q0;
                QKW_ALL(QBW_DOT)
            }
        }
    }
    QKW_ALL(QBW_STORE)
}

AI void qkb_wide_tokens(const uint32_t *qh, const uint32_t *ql, int32_t rp, int32_t nv,
                        const uint32_t *kb, int32_t dk2, float *sb, vf scv, const int TB,
                        const int SPLIT)
{
    int32_t j = 0;
    for (; j + WIDE_RB <= nv; j += WIDE_RB)
        qkb_wide_blk(qh + j * VW, ql + j * VW, rp, kb, dk2, sb + j * VW, scv, WIDE_RB, TB, SPLIT);
    switch (nv - j) {
    case 1: qkb_wide_blk(qh + j * VW, ql + j * VW, rp, kb, dk2, sb + j * VW, scv, 1, TB, SPLIT); break;
    case 2: qkb_wide_blk(qh + j * VW, ql + j * VW, rp, kb, dk2, sb + j * VW, scv, 2, TB, SPLIT); break;
    default: break;
    }
}

/* The tile's first n tokens, blocks of WIDE_TB, 4, 2, 1 (as qk_wide). */
static void qkb_wide(const uint32_t *qh, const uint32_t *ql, const attnd__simd_dims *dm,
                     const uint16_t *k, float *s, int32_t n, float sc)
{
    const int32_t rp = dm->rows_pad, nv = rp / VW, dk2 = dk32_of(dm) / 2;
    const vf scv = v_set1(sc);

    for (int32_t tb = 0; tb < n;) {
        const uint32_t *kb = (const uint32_t *)(const void *)(k + (size_t)tb * 32);
        float *sb = s + (size_t)tb * rp;
        int32_t rem = n - tb, TB = rem >= WIDE_TB ? WIDE_TB : rem >= 4 ? 4 : rem >= 2 ? 2 : 1;
        if (nv == 1 && rem >= WIDE_TB1) { /* one row vector: more tokens per q load */
            if (ql)
                qkb_wide_blk(qh, ql, rp, kb, dk2, sb, scv, 1, WIDE_TB1, 1);
            else
                qkb_wide_blk(qh, qh, rp, kb, dk2, sb, scv, 1, WIDE_TB1, 0);
            tb += WIDE_TB1;
            continue;
        }
#define QBW_CASE(TB_)                                                                   \
    case TB_:                                                                           \
        if (ql)                                                                         \
            qkb_wide_tokens(qh, ql, rp, nv, kb, dk2, sb, scv, TB_, 1);                  \
        else                                                                            \
            qkb_wide_tokens(qh, qh, rp, nv, kb, dk2, sb, scv, TB_, 0);                  \
        break;
        switch (TB) {
            QBW_CASE(WIDE_TB)
            QBW_CASE(4)
            QBW_CASE(2)
            QBW_CASE(1)
        default: break;
        }
#undef QBW_CASE
        tb += TB;
    }
}

/* ---- scores, narrow: s [rows][TILE], dot products over dk32 ---------------- */

#define QBN_DOT(t) n##t = _mm512_dpbf16_ps(n##t, qv, bh_load(kc + t * 32));

AI void qkb_narrow_row(const uint16_t *qh, const uint16_t *ql, int32_t dk32, const uint16_t *k,
                       float *s, vf scv, const int SPLIT)
{
    QN_ALL(QN_DECL)
    for (int32_t c = 0; c < dk32; c += 32) {
        const uint16_t *kc = k + (size_t)(c / 32) * CSB;
        __m512bh qv = bh_load(qh + c);
        QN_ALL(QBN_DOT)
        if (SPLIT) {
            qv = bh_load(ql + c);
            QN_ALL(QBN_DOT)
        }
    }
    v_store(s, v_mul(v_reduce_lanes(QN_ARGS), scv));
}

/* A tile's first n tokens, few of them (as qk_few_blk): VW / TB rows x TB
 * tokens per reduction. */
#define QBF_DOT(i)                                                                      \
    f##i = _mm512_dpbf16_ps(f##i, bh_load(qb + (size_t)((i) / TB) * dk32 + c),          \
                            bh_load(kc + (size_t)((i) % TB) * 32));
#define QBF_DOTL(i)                                                                     \
    f##i = _mm512_dpbf16_ps(f##i, bh_load(qlb + (size_t)((i) / TB) * dk32 + c),         \
                            bh_load(kc + (size_t)((i) % TB) * 32));

AI void qkb_few_blk(const uint16_t *qb, const uint16_t *qlb, int32_t dk32, const uint16_t *k,
                    float *s, int32_t rows_left, vf scv, const int TB, const int SPLIT)
{
    QN_ALL(QF_DECL)
    for (int32_t c = 0; c < dk32; c += 32) {
        const uint16_t *kc = k + (size_t)(c / 32) * CSB;
        QN_ALL(QBF_DOT)
        if (SPLIT) {
            QN_ALL(QBF_DOTL)
        }
    }
    float red[VW];
    v_store(red, v_mul(v_reduce_lanes(QF_ARGS), scv));
    for (int32_t i = 0; i < VW && i / TB < rows_left; i++)
        s[(size_t)(i / TB) * TILE + i % TB] = red[i];
}

static void qkb_narrow(const uint16_t *qh, const uint16_t *ql, const attnd__simd_dims *dm,
                       const uint16_t *k, float *s, int32_t n, float sc, tile_loader *ld)
{
    const int32_t dk32 = dk32_of(dm);
    const vf scv = v_set1(sc);
    const int TB = n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : n <= 8 ? 8 : 16;

    for (int32_t r = 0; r < dm->rows; r += VW / TB) {
        ld_step(ld);
        const uint16_t *qb = qh + (size_t)r * dk32, *qlb = ql ? ql + (size_t)r * dk32 : qb;
        float *sb = s + (size_t)r * TILE;
        const int32_t left = dm->rows - r;
#define QBN_CASE(TB_)                                                                   \
    case TB_:                                                                           \
        if (ql)                                                                         \
            qkb_few_blk(qb, qlb, dk32, k, sb, left, scv, TB_, 1);                       \
        else                                                                            \
            qkb_few_blk(qb, qlb, dk32, k, sb, left, scv, TB_, 0);                       \
        break;
        switch (TB) {
            QBN_CASE(1)
            QBN_CASE(2)
            QBN_CASE(4)
            QBN_CASE(8)
        default:
            if (ql)
                qkb_narrow_row(qb, qlb, dk32, k, sb, scv, 1);
            else
                qkb_narrow_row(qb, qlb, dk32, k, sb, scv, 0);
            break;
        }
#undef QBN_CASE
    }
}

/* ---- P as bf16 token pairs -------------------------------------------------
 * Word (t = 2i, 2i + 1) of a row: bf16 P of token 2i in the low half, of
 * token 2i + 1 (or 0 past the tile's n tokens) in the high half: the layout
 * of the V pairs. wide: pp [TILE / 2][rows_pad]; narrow: pp [rows][TILE / 2]. */
static void p_pairs_wide(const float *p, uint32_t *pp, int32_t rp, int32_t n)
{
    for (int32_t tp = 0; 2 * tp < n; tp++)
        for (int32_t j = 0; j < rp; j += VW) {
            __m512i w = _mm512_cvtepu16_epi32(
                (__m256i)_mm512_cvtneps_pbh(v_load(p + (size_t)(2 * tp) * rp + j)));
            if (2 * tp + 1 < n)
                w = _mm512_or_si512(
                    w, _mm512_slli_epi32(
                           _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(
                               v_load(p + (size_t)(2 * tp + 1) * rp + j))),
                           16));
            _mm512_storeu_si512((void *)(pp + (size_t)tp * rp + j), w);
        }
}

static void p_pairs_narrow(const float *p, uint32_t *pp, int32_t rows)
{
    /* masked tokens past n have P = 0 (softmax_narrow) */
    for (int32_t r = 0; r < rows; r++)
        _mm256_storeu_si256((__m256i *)(void *)(pp + (size_t)r * (TILE / 2)),
                            (__m256i)_mm512_cvtneps_pbh(v_load(p + (size_t)r * TILE)));
}

/* ---- output: o [rows][dv] = alpha o + P V, bf16 pairs ------------------------ */

#define PVB_BC(r)                                                                       \
    __m512bh pb##r = bh_set1(RB > r ? pp[(size_t)r * prs + (size_t)tp * pts] : 0u);
#define PVB_DOT(r, e) a##r##e = _mm512_dpbf16_ps(a##r##e, v##e, pb##r);

/* v: V pairs [n_pairs][dv] words, offset to the block's first vector.
 * rescale < 0: the unit's first tile (O starts at zero). */
AI void pvb_blk(float *o, int32_t dvp, const uint32_t *pp, int32_t prs, int32_t pts,
                const uint32_t *v, int32_t dv, int32_t npairs, const float *alpha, int rescale,
                const int RB, const int EB)
{
    PV_DECL(0) PV_DECL(1) PV_DECL(2) PV_DECL(3)
    if (rescale >= 0) {
        PV_ALL(PV_ROW4, PV_LD)
    }
    if (rescale > 0) {
        PV_ALL(PV_ROW4, PV_SC)
    }
    for (int32_t tp = 0; tp < npairs; tp++) {
        const uint32_t *vr = v + (size_t)tp * dv;
        __m512bh v0 = bh_load(vr);
        __m512bh v1 = EB > 1 ? bh_load(vr + VW) : v0;
        __m512bh v2 = EB > 2 ? bh_load(vr + 2 * VW) : v0;
        __m512bh v3 = EB > 3 ? bh_load(vr + 3 * VW) : v0;
        PVB_BC(0) PVB_BC(1) PVB_BC(2) PVB_BC(3)
        PV_ALL(PV_ROW4, PVB_DOT)
    }
    PV_ALL(PV_ROW4, PV_ST)
}

static void pvb(float *o, const attnd__simd_dims *dm, const uint32_t *pp, int32_t prs,
                int32_t pts, const uint16_t *v, int32_t n, const float *alpha, int rescale,
                tile_loader *ld)
{
    const int32_t dv = dm->dv, nv = dv / VW, npairs = (n + 1) / 2;
    const uint32_t *vw = (const uint32_t *)(const void *)v;

    for (int32_t e = 0; e < nv; e += PV_EB) {
        int32_t eb = nv - e < PV_EB ? nv - e : PV_EB;
        for (int32_t r = 0; r < dm->rows; r += PV_RB) {
            int32_t rb = dm->rows - r < PV_RB ? dm->rows - r : PV_RB;
            ld_step(ld);
            float *ob = o + (size_t)r * dv + e * VW;
            const uint32_t *pb = pp + (size_t)r * prs, *vb = vw + e * VW;
            const float *ab = alpha + r;
#define PV_CASE(RB_, EB_)                                                              \
    case (RB_) * 8 + (EB_):                                                            \
        pvb_blk(ob, dv, pb, prs, pts, vb, dv, npairs, ab, rescale, RB_, EB_);          \
        break;
            switch (rb * 8 + eb) {
                PV_CASES
            default: break;
            }
#undef PV_CASE
        }
    }
}

/* guard_tail for the V pairs (see decode_simd.h): token j of the tile is
 * the (j & 1) half of every word of pair j / 2. */
static void guard_tail_bf16(const attnd__simd_dims *dm, int32_t j0, int32_t n, int64_t tabs,
                            const int32_t *vis, uint16_t *v, float *lsum)
{
    const int32_t dv = dm->dv;

    for (int32_t j = j0; j < n; j++) {
        uint16_t *x = v + (size_t)(j / 2) * 2 * dv + (j & 1);
        int bad = 0;
        for (int32_t e = 0; e < dv; e++)
            bad |= (x[2 * e] & 0x7f80) == 0x7f80;
        if (!bad)
            continue;
        for (int32_t r = 0; r < dm->rows; r++)
            if (vis[r] > tabs + j)
                lsum[r] = NAN;
        for (int32_t e = 0; e < dv; e++)
            if ((x[2 * e] & 0x7f80) == 0x7f80)
                x[2 * e] = 0;
    }
}

/* ---- the unit ------------------------------------------------------------------- */

static void unit_bf16(const attnd_kernel_decode_batch *b, const attnd__unit *u, float *work)
{
    const attnd_kernel_kv_layout *l = b->kv;
    const attnd__simd_dims dm = attnd__simd_dims_of(b);
    const int32_t G = b->n_q_heads / l->n_kv_heads, S = b->q_tokens, R = dm.rows;
    const int32_t rp = dm.rows_pad, dv = dm.dv, dk32 = dk32_of(&dm);
    const int split = b->q_dtype != ATTND_DTYPE_BF16;
    const int64_t L = attnd_kernel_decode_seq_len(b, u->seq, u->kv_head);
    const int64_t t1 = u->t1 < L ? u->t1 : L;
    /* by shape alone (no short-unit narrow packing as in unit_f32): P is
     * rounded to bf16, so a last-bit difference between the wide and the
     * narrow score sums could flip a rounding; one layout per batch keeps
     * P bitwise the same in every split and on every rank */
    const int wide = use_wide(&dm);
    const float sc = (float)((double)b->scale * LOG2E);
    /* carve as attnd__bf16_work_floats sizes it */
    float *cur = (float *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    uint16_t *qh = (uint16_t *)(void *)carve(&cur, (size_t)rp * dk32 / 2);
    uint16_t *ql = (uint16_t *)(void *)carve(&cur, split ? (size_t)rp * dk32 / 2 : 0);
    uint16_t *qtmp = (uint16_t *)(void *)carve(&cur, (size_t)VW * dk32);
    float *ftmp = carve(&cur, (size_t)dk32);
    float *kbuf[2] = {carve(&cur, (size_t)TILE * dk32 / 2), carve(&cur, (size_t)TILE * dk32 / 2)};
    float *vbuf[2] = {carve(&cur, (size_t)TILE * dv / 2), carve(&cur, (size_t)TILE * dv / 2)};
    float *s = carve(&cur, (size_t)TILE * rp), *p = carve(&cur, (size_t)TILE * rp);
    uint32_t *pp = (uint32_t *)(void *)carve(&cur, (size_t)TILE / 2 * rp);
    float *m = carve(&cur, (size_t)rp), *lsum = carve(&cur, (size_t)rp);
    float *alpha = carve(&cur, (size_t)rp), *mr = carve(&cur, (size_t)rp);
    int32_t *vis = (int32_t *)carve(&cur, (size_t)rp);
    float *o = carve(&cur, (size_t)R * dv);
    const char *vrow[TILE]; /* unused in bf16 mode */

    pack_queries_bf16(b, u, &dm, wide, split, L, qh, split ? ql : NULL, qtmp, ftmp, vis);
    for (int32_t r = 0; r < rp; r++) {
        m[r] = mr[r] = -INFINITY;
        lsum[r] = 0.0f;
        alpha[r] = 1.0f;
    }

    const int32_t *pages =
            b->page_idx + b->page_indptr[attnd_kernel_decode_list(b, u->seq, u->kv_head)];
    const int64_t min_vis = L - (S - 1);
    const int32_t pv_blocks = (R + PV_RB - 1) / PV_RB * ((dv / VW + PV_EB - 1) / PV_EB);
    const int32_t calls = (wide ? 1 : R) + pv_blocks;
    tile_loader ld = {.b = b, .pages = pages, .dm = &dm, .kvh = u->kv_head, .bf16 = 1};
    int cur_buf = 0;
    ld_begin(&ld, u->t0, t1, kbuf[0], vbuf[0], vrow, 1);
    ld_prefetch_begin(&ld, u->t0 + TILE, t1, 1);
    ld_finish(&ld);
    for (int64_t t = u->t0; t < t1; t += TILE) {
        int32_t n = t1 - t < TILE ? (int32_t)(t1 - t) : TILE;
        const uint16_t *kt = (const uint16_t *)(const void *)kbuf[cur_buf];
        uint16_t *vt = (uint16_t *)(void *)vbuf[cur_buf];
        int32_t prs, pts;
        int rescale;
        ld_begin(&ld, t + TILE, t1, kbuf[cur_buf ^ 1], vbuf[cur_buf ^ 1], vrow, calls);
        ld_prefetch_begin(&ld, t + 2 * TILE, t1, calls);
        if (wide) {
            ld_step(&ld);
            qkb_wide((const uint32_t *)(const void *)qh,
                     split ? (const uint32_t *)(const void *)ql : NULL, &dm, kt, s, n, sc);
            rescale = softmax_wide(s, p, &dm, n, vis, t, t + n > min_vis, m, lsum, alpha, mr);
            p_pairs_wide(p, pp, rp, n);
            prs = 1;
            pts = rp;
        } else {
            qkb_narrow(qh, split ? ql : NULL, &dm, kt, s, n, sc, &ld);
            rescale = softmax_narrow(s, p, &dm, n, vis, t, m, lsum, alpha, mr);
            p_pairs_narrow(p, pp, R);
            prs = TILE / 2;
            pts = 1;
        }
        if (t == u->t0)
            rescale = -1;
        if (t + n > min_vis) /* S > 1: tokens not every row sees */
            guard_tail_bf16(&dm, min_vis > t ? (int32_t)(min_vis - t) : 0, n, t, vis, vt, lsum);
        pvb(o, &dm, pp, prs, pts, vt, n, alpha, rescale, &ld);
        ld_finish(&ld);
        cur_buf ^= 1;
    }

    write_rows(u, &dm, G, 2, o, m, lsum);
}

void SFX(attnd__decode_unit)(const attnd_kernel_decode_batch *b, const attnd__unit *u, float *work)
{
    if (b->kv->dtype == ATTND_DTYPE_BF16 && b->kv->d_v % 32 == 0)
        unit_bf16(b, u, work);
    else
        unit_f32(b, u, work);
}
