/* The online softmax of the SIMD decode units, and the guard of the
 * tokens only some rows see (multi-token queries). Part of decode_simd.h
 * (which defines TILE, AI and includes this after the ISA vocabulary and
 * the tile loader); include it nowhere else. Both decode_simd.h's float32
 * unit and decode_bf16.h's unit use them.
 *
 * Base 2: the units fold log2(e) into the scores, so m is a running max in
 * log2 units, alpha = 2^(m_old - m_new), P = 2^(S - m_new), l = alpha l +
 * sum P; masked scores (past a row's visible length) are -inf and give
 * P = 0. */

/* ---- online softmax ---------------------------------------------------------
 * Both return 1 when some row's alpha is not 1 (O must be rescaled). A
 * score that is not finite becomes NaN before masking (attnd_kernels.h's
 * rule), so that it poisons l of exactly the rows that see its token:
 * 2^(NaN - m) is NaN, and a -inf score could otherwise pass for a masked
 * one (or, alone, for "no token"). */

/* Reference mode (mr not NULL; the bf16 dot-product unit, which rounds P
 * to bf16): P = 2^(S - ref) with ref the tile's own row max, rounded up to
 * an integer, unless that is more than REF_FLOOR below the running max mr;
 * O and l are kept relative to m = ref (alpha may then exceed 1, by at most
 * 2^REF_FLOOR). P's rounding then depends on the tile alone, and every
 * rescale is an exact power of two, so results agree across split counts
 * and sequence-sharded ranks to float32 rounding (the CUDA kernels keep a
 * tile reference too). */
#define REF_FLOOR 20.0f

/* wide: s, p [TILE][rows_pad]; vectors over rows. Token t (absolute tabs+t)
 * is masked for rows whose visible length is <= tabs + t (only checked when
 * the tile reaches past the shortest visible length). */
static int softmax_wide(float *s, float *p, const attnd__simd_dims *dm, int32_t n,
                        const int32_t *vis, int64_t tabs, int need_mask, float *m, float *l,
                        float *alpha, float *mr)
{
    const int32_t rp = dm->rows_pad;
    int rescale = 0;

    for (int32_t j = 0; j < rp; j += VW) {
        vf mo = v_load(m + j), tm = v_set1(-INFINITY);
        for (int32_t t = 0; t < n; t++) {
            float *st = s + (size_t)t * rp + j;
            vf x = v_nonfinite_to_nan(v_load(st));
            if (need_mask)
                x = v_mask_vis(x, vis + j, (int32_t)(tabs + t));
            v_store(st, x);
            tm = v_max(tm, x);
        }
        vf mn = v_max(mo, tm);
        if (mr) { /* reference mode: see REF_FLOOR */
            vf mrn = v_max(v_load(mr + j), tm);
            v_store(mr + j, mrn);
            mn = v_ceil(v_max(tm, v_sub(mrn, v_set1(REF_FLOOR))));
        }
        vf ms = v_ninf_to_zero(mn);
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
                          const int32_t *vis, int64_t tabs, float *m, float *l, float *alpha,
                          float *mr)
{
    int rescale = 0;

    for (int32_t r = 0; r < dm->rows; r++) {
        int64_t lim64 = vis[r] - tabs;
        int32_t lim = lim64 < n ? (lim64 > 0 ? (int32_t)lim64 : 0) : n;
        const float *sr = s + (size_t)r * TILE;
        vf x0 = v_mask_tail(v_nonfinite_to_nan(v_load(sr)), lim);
        float tm = v_hmax(x0);
#if TILE / VW == 2
        vf x1 = v_mask_tail(v_nonfinite_to_nan(v_load(sr + VW)), lim - VW);
        float h1 = v_hmax(x1);
        tm = h1 > tm ? h1 : tm;
#endif
        float mn = m[r] > tm ? m[r] : tm;
        if (mr) { /* reference mode: see REF_FLOOR */
            float mrn = mr[r] > tm ? mr[r] : tm;
            mr[r] = mrn;
            mn = ceilf(tm > mrn - REF_FLOOR ? tm : mrn - REF_FLOOR);
        }
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

/* Multi-token queries (S > 1): tokens [L - S + 1, L) are seen by some rows
 * of the unit and not by others, whose P for them is exactly 0. But 0 *
 * NaN is NaN, so a non-finite V element of such a token would poison rows
 * that do not attend it. Before P V, those tokens' V rows in this tile
 * (j0..n-1) are checked; a non-finite one (rare: stored KV is normally
 * finite) poisons the rows that do see its token (l = NaN) and is zeroed
 * where P V reads it: in scratch (chunk-major v), or for fuse_v in a copy
 * in `spare` that vrow is pointed at. */
static void guard_tail(const attnd__simd_dims *dm, int32_t j0, int32_t n, int64_t tabs,
                       const int32_t *vis, float *v, const char **vrow, uint16_t *spare,
                       float *lsum)
{
    const int32_t dv = dm->dv, chunks = (dv + VW - 1) / VW;

    for (int32_t j = j0; j < n; j++) {
        int bad = 0;
        if (vrow) {
            const uint16_t *x = (const uint16_t *)(const void *)vrow[j];
            for (int32_t e = 0; e < dv; e++)
                bad |= (x[e] & 0x7f80) == 0x7f80;
        } else {
            for (int32_t c = 0; c < chunks; c++)
                bad |= v_any_nonfinite(v_load(v + (size_t)c * CS + (size_t)j * VW));
        }
        if (!bad)
            continue;
        for (int32_t r = 0; r < dm->rows; r++)
            if (vis[r] > tabs + j)
                lsum[r] = NAN;
        if (vrow) {
            const uint16_t *x = (const uint16_t *)(const void *)vrow[j];
            uint16_t *y = spare + (size_t)j * dv;
            for (int32_t e = 0; e < dv; e++)
                y[e] = (x[e] & 0x7f80) == 0x7f80 ? 0 : x[e];
            vrow[j] = (const char *)y;
        } else {
            for (int32_t c = 0; c < chunks; c++) {
                float *x = v + (size_t)c * CS + (size_t)j * VW;
                for (int32_t i = 0; i < VW; i++)
                    x[i] = isfinite(x[i]) ? x[i] : 0.0f;
            }
        }
    }
}
