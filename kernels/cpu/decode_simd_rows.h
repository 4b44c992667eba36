/* The row I/O of the SIMD decode unit: its queries in (widened, scaled,
 * reordered and packed for the score shape) and its outputs out
 * (normalized, put back in natural order, the non-finite rule applied).
 * Part of decode_simd.h (which defines TILE, LOG2E, LN2F and includes this
 * after decode_simd_tile.h); include it nowhere else.
 *
 * At short contexts this is most of a unit's work: DeepSeek-V3 at one
 * token per sequence moves 128 x 576 query elements in and 128 x 512
 * outputs out for 128 x 1088 multiply-adds. So everything here is vector
 * code: bf16 queries are widened pairwise straight into the KV's element
 * order, other dtypes reordered with two permutes per 2 * VW elements, the
 * wide (transposed) packing done by VW x VW register transposes, and the
 * outputs put back in natural order by two permutes per 2 * VW. (The
 * scalar versions cost 1.5 us per unit more than the attention itself.) */

/* Widen one query row into t (dkp floats, zero-padded), scaled by sc, in
 * the KV's element order: with perm, each chunk of 2 * VW as [even | odd]
 * (see cvt_row_perm_cm). With perm, dk is a multiple of 2 * VW (= dkp). */
static void q_row(float *t, const void *src, int32_t dk, int32_t dkp, attnd_dtype qt, int perm,
                  float sc)
{
    const vf scv = v_set1(sc);

    if (perm && qt == ATTND_DTYPE_BF16) {
        const uint16_t *s = src;
        for (int32_t i = 0; i < dk; i += PERM_CHUNK) {
            vf e, o;
            v_bf16_pair(s + i, &e, &o);
            v_store(t + i, v_mul(e, scv));
            v_store(t + i + VW, v_mul(o, scv));
        }
        return;
    }
    cvt_row(t, src, dk, dkp, qt);
    if (perm) {
        for (int32_t i = 0; i < dk; i += PERM_CHUNK) {
            vf e, o;
            v_deinterleave(v_load(t + i), v_load(t + i + VW), &e, &o);
            v_store(t + i, v_mul(e, scv));
            v_store(t + i + VW, v_mul(o, scv));
        }
        return;
    }
    for (int32_t i = 0; i < dkp; i += VW)
        v_store(t + i, v_mul(v_load(t + i), scv));
}

/* The unit's queries, widened, scaled by scale * log2(e), in the KV order
 * (perm) and packed for the score shape: wide q [dk][rows_pad] (padding
 * rows zero), narrow q [rows][dk_pad]. Also each row's visible length
 * (padding rows 0). tmp holds VW rows of dk_pad floats. */
static void pack_queries(const attnd_kernel_decode_batch *b, const attnd__unit *u,
                         const attnd__simd_dims *dm, int wide, int perm, int64_t L, float *q,
                         float *tmp, int32_t *vis)
{
    const int32_t G = b->n_q_heads / b->kv->n_kv_heads, S = b->q_tokens;
    const int32_t rp = dm->rows_pad, dk = dm->dk, dkp = dm->dk_pad;
    const float sc = (float)((double)b->scale * LOG2E);
    const size_t qes = attnd_dtype_size(b->q_dtype);
    const char *q0 = (const char *)b->q;

    for (int32_t r = 0; r < rp; r++) {
        int32_t si = r / G;
        vis[r] = r < dm->rows ? (int32_t)(L - (S - 1 - si)) : 0;
    }
    for (int32_t r0 = 0; r0 < rp; r0 += wide ? VW : 1) {
        int32_t nb = wide ? VW : 1;
        for (int32_t rr = 0; rr < nb; rr++) {
            int32_t r = r0 + rr, si = r / G, g = r % G;
            float *t = wide ? tmp + (size_t)rr * dkp : q + (size_t)r * dkp;
            if (r >= dm->rows) { /* padding rows: zero queries */
                memset(t, 0, sizeof(float) * (size_t)dkp);
                continue;
            }
            size_t off =
                (((size_t)u->seq * S + si) * b->n_q_heads + (size_t)u->kv_head * G + g) *
                (size_t)dk;
            q_row(t, q0 + off * qes, dk, dkp, b->q_dtype, perm, sc);
        }
        if (wide) /* transpose the block into columns r0..r0 + VW of q */
            for (int32_t d0 = 0; d0 < dk; d0 += VW)
                v_transpose_block(tmp + d0, (size_t)dkp, q + (size_t)d0 * rp + r0, (size_t)rp,
                                  dk - d0 < VW ? dk - d0 : VW);
    }
}

/* Normalize the unit's rows into their destinations, back in natural order
 * (perm: 0 natural, 1 pairwise [even | odd] chunks of 2 * VW, 2 the bf16
 * unit's V-pair order of chunks of 32, see decode_simd_tile.h): out = O / l,
 * lse = (m + log2 l) ln 2. A row that saw no
 * token (l = 0) gets 0 and -inf; a poisoned row (l NaN: a non-finite score
 * or a guarded tail, or a non-finite output: a non-finite V) gets NaN in
 * every element and in lse (attnd_kernels.h's rule). */
static void write_rows(const attnd__unit *u, const attnd__simd_dims *dm, int32_t G, int perm,
                       const float *o, const float *m, const float *lsum)
{
    const int32_t dv = dm->dv;

    for (int32_t r = 0; r < dm->rows; r++) {
        int32_t si = r / G, g = r % G;
        float *dst = u->out + si * u->out_s + (int64_t)g * dv;
        float *lse = u->lse ? u->lse + si * u->lse_s + g : NULL;
        const float *orow = o + (size_t)r * dm->dv_pad;
        const float l = lsum[r];
        int32_t e = 0;

        if (l > 0.0f) {
            const float inv = 1.0f / l;
            const vf iv = v_set1(inv);
            int bad = 0;
#if defined(DPBF16)
            if (perm == 2) {
                for (; e < dv; e += 32) {
                    vf lo, hi;
                    v_unpair(v_mul(v_load(orow + e), iv), v_mul(v_load(orow + e + 16), iv), &lo,
                             &hi);
                    bad |= v_any_nonfinite(lo) | v_any_nonfinite(hi);
                    v_store(dst + e, lo);
                    v_store(dst + e + 16, hi);
                }
            }
#endif
            if (perm == 1) {
                for (; e < dv; e += PERM_CHUNK) {
                    vf lo, hi;
                    v_interleave(v_mul(v_load(orow + e), iv), v_mul(v_load(orow + e + VW), iv),
                                 &lo, &hi);
                    bad |= v_any_nonfinite(lo) | v_any_nonfinite(hi);
                    v_store(dst + e, lo);
                    v_store(dst + e + VW, hi);
                }
            }
            for (; e + VW <= dv; e += VW) {
                vf x = v_mul(v_load(orow + e), iv);
                bad |= v_any_nonfinite(x);
                v_store(dst + e, x);
            }
            for (; e < dv; e++) {
                dst[e] = orow[e] * inv;
                bad |= !isfinite(dst[e]);
            }
            if (bad)
                attnd__nan_row(dst, dv, lse);
            else if (lse)
                *lse = (m[r] + log2f(l)) * LN2F;
        } else if (l == 0.0f) {
            memset(dst, 0, sizeof(float) * (size_t)dv);
            if (lse)
                *lse = -INFINITY;
        } else {
            attnd__nan_row(dst, dv, lse);
        }
    }
}
