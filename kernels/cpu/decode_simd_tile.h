/* The tile loader of the SIMD decode unit: widening KV rows of any dtype
 * into float32 scratch, and the software pipeline that keeps memory busy
 * while decode_simd.h computes. Part of decode_simd.h (which defines TILE,
 * AI and includes this after the ISA vocabulary); include it nowhere else.
 *
 * Scratch rows are chunk-major: element d of token t of a tile lives at
 * (d / VW) * CS + t * VW + d % VW, so the score and output loops reach a
 * token's chunk at a constant offset t * VW from one base pointer (with a
 * [TILE][d] layout they needed a pointer per token and spilled). */

/* ---- load: a row of any dtype into float32, zero-padded to npad --------- */

AI void cvt_row(float *dst, const void *src, int32_t n, int32_t npad, attnd_dtype t)
{
    int32_t i = 0;

    switch (t) {
    case ATTND_DTYPE_BF16: {
        const uint16_t *s = src;
        for (; i + VW <= n; i += VW)
            v_store(dst + i, v_load_bf16(s + i));
        for (; i < n; i++)
            dst[i] = attnd_dtype_bf16_to_f32(s[i]);
        break;
    }
    case ATTND_DTYPE_F16: {
        const uint16_t *s = src;
        for (; i + VW <= n; i += VW)
            v_store(dst + i, v_load_f16(s + i));
        for (; i < n; i++)
            dst[i] = attnd_dtype_f16_to_f32(s[i]);
        break;
    }
    default: {
        const float *s = src;
        for (; i + VW <= n; i += VW)
            v_store(dst + i, v_load(s + i));
        for (; i < n; i++)
            dst[i] = s[i];
        break;
    }
    }
    for (; i < npad; i++)
        dst[i] = 0.0f;
}

/* Floats between chunk c and c + 1 of a tile row in scratch. */
#define CS (TILE * VW)

/* Widen one row into chunk-major scratch: element i goes to
 * dst[(i / VW) * CS + i % VW]; zero-padded to npad. */
AI void cvt_row_cm(float *dst, const void *src, int32_t n, int32_t npad, attnd_dtype t)
{
    int32_t i = 0;

    float *d = dst;

    switch (t) {
    case ATTND_DTYPE_BF16:
        for (; i + VW <= n; i += VW, d += CS)
            v_store(d, v_load_bf16((const uint16_t *)src + i));
        for (; i < n; i++)
            dst[(size_t)(i / VW) * CS + i % VW] = attnd_dtype_bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    case ATTND_DTYPE_F16:
        for (; i + VW <= n; i += VW, d += CS)
            v_store(d, v_load_f16((const uint16_t *)src + i));
        for (; i < n; i++)
            dst[(size_t)(i / VW) * CS + i % VW] = attnd_dtype_f16_to_f32(((const uint16_t *)src)[i]);
        break;
    default:
        for (; i + VW <= n; i += VW, d += CS)
            v_store(d, v_load((const float *)src + i));
        for (; i < n; i++)
            dst[(size_t)(i / VW) * CS + i % VW] = ((const float *)src)[i];
        break;
    }
    for (; i < npad; i++)
        dst[(size_t)(i / VW) * CS + i % VW] = 0.0f;
}

/* bf16 rows whose length is a multiple of 2 * VW are widened pairwise: one
 * vector of 2 * VW bf16, read as VW 32-bit lanes, gives the even elements
 * (shift left 16) and the odd ones (mask the high half): two ALU ops per
 * 2 * VW elements instead of four. Each chunk of 2 * VW then sits in
 * scratch as [even VW | odd VW]. Q is packed in the same order (a dot
 * product does not care), and so is V, so the output rows come out in that
 * order and are put back when the unit writes them. */
#define PERM_CHUNK (2 * VW)

AI void cvt_row_perm_cm(float *dst, const uint16_t *src, int32_t n)
{
    for (const uint16_t *end = src + n; src < end; src += PERM_CHUNK, dst += 2 * CS)
        v_load_bf16_pair(src, dst, dst + CS);
}

#if defined(DPBF16)
/* ---- bf16 scratch (the bf16 dot-product unit, decode_bf16.h) -------------
 * K rows are copied as bf16 into chunk-major scratch, chunks of 32: element
 * d of token t at (d / 32) * CSB + t * 32 + d % 32 (zero-padded to a whole
 * chunk). V rows are interleaved by token pairs (2p, 2p + 1) for
 * vdpbf16ps, which multiplies and adds element pairs: pair p's row is dv
 * 32-bit words, each chunk of 32 elements as the 16 words of
 * unpacklo_epi16(v_2p, v_2p+1) then the 16 of unpackhi (elements 0-3,
 * 8-11, 16-19, 24-27, then 4-7, 12-15, 20-23, 28-31: write_rows puts them
 * back). */
#define CSB (TILE * 32)

AI void cp_row_bf16_cm(uint16_t *dst, const uint16_t *src, int32_t n)
{
    int32_t i = 0;
    for (; i + 32 <= n; i += 32, dst += CSB)
        _mm512_storeu_si512((void *)dst, _mm512_loadu_si512((const void *)(src + i)));
    if (i < n)
        _mm512_storeu_si512((void *)dst, _mm512_maskz_loadu_epi16(
                                             (__mmask32)((1ull << (n - i)) - 1), src + i));
}

/* Pair V rows a (token 2p) and b (token 2p + 1, or NULL: zeros) of n
 * elements (a multiple of 32) into dst (n words). */
AI void pair_rows_bf16(uint16_t *dst, const uint16_t *a, const uint16_t *b, int32_t n)
{
    for (int32_t i = 0; i < n; i += 32, dst += 64) {
        __m512i x = _mm512_loadu_si512((const void *)(a + i));
        __m512i y = b ? _mm512_loadu_si512((const void *)(b + i)) : _mm512_setzero_si512();
        _mm512_storeu_si512((void *)dst, _mm512_unpacklo_epi16(x, y));
        _mm512_storeu_si512((void *)(dst + 32), _mm512_unpackhi_epi16(x, y));
    }
}
#endif

/* ---- the tile loader ------------------------------------------------------
 *
 * Widens a tile's rows into chunk-major scratch, k [dk_pad / VW][TILE][VW]
 * and (GQA) v [dv_pad / VW][TILE][VW]; rows past the tile's tokens are
 * zero. It is software-pipelined: while tile i is computed, the loader
 * widens tile i + 1 into the other half of a double buffer a few rows at a
 * time (ld_step, called from inside the compute loops) and prefetches tile
 * i + 2 into L2 the same way. One KV head's tile is a 4 KB run, too short
 * for the hardware streamers to get ahead of, so the software prefetches
 * carry the memory parallelism (GQA on one core here: 6.6 GB/s without
 * them, 10 with); spread out they keep the fill buffers busy, where a
 * burst would stall on them just like demand misses. */
typedef struct tile_loader {
    const attnd_kernel_decode_batch *b;
    const int32_t *pages;
    const attnd__simd_dims *dm;
    int32_t kvh, perm;
    int32_t fuse_v;    /* V is not converted: P V reads it from the pool */
    int32_t bf16;      /* bf16 scratch (K copied, V paired: see above) */
    const char *vprev; /* bf16: the V row of the even token of a pair */
    float *k, *v;      /* destination of the tile being converted */
    const char **vrow; /* fuse_v: the tile's V row pointers [TILE] */
    int64_t pg, slot;  /* list position of its next row */
    const char *kr, *vr; /* its K and V rows (valid while j < n) */
    size_t kstep, vstep; /* bytes from one token's row to the next's */
    int32_t j, n;      /* rows converted, rows in the tile */
    int32_t quota;     /* rows per ld_step */
    const char *pf_row[2 * TILE]; /* rows of the tile after, to prefetch */
    int32_t pf_rows, pf_next, pf_quota, pf_lines;
} tile_loader;

/* Row pointers of token (pg, slot). */
static inline const char *ld_krow(const tile_loader *ld, int64_t pg, int64_t slot)
{
    const attnd_kernel_kv_layout *l = ld->b->kv;
    const size_t es = attnd_dtype_size(l->dtype);
    const char *page =
        (const char *)ld->b->pool + (size_t)((int64_t)ld->pages[pg] * l->page_stride) * es;
    return page + (size_t)(ld->kvh * l->k_head_stride + slot * l->k_token_stride) * es;
}

static inline const char *ld_vrow(const tile_loader *ld, int64_t pg, int64_t slot)
{
    const attnd_kernel_kv_layout *l = ld->b->kv;
    const size_t es = attnd_dtype_size(l->dtype);
    const char *page =
        (const char *)ld->b->pool + (size_t)((int64_t)ld->pages[pg] * l->page_stride) * es;
    return page + (size_t)(l->v_offset + ld->kvh * l->v_head_stride +
                           slot * l->v_token_stride) * es;
}

static void ld_begin(tile_loader *ld, int64_t t, int64_t t_end, float *k, float *v,
                     const char **vrow, int32_t calls)
{
    const attnd_kernel_kv_layout *l = ld->b->kv;
    ld->k = k;
    ld->v = v;
    ld->vrow = vrow;
    ld->n = t_end - t < TILE ? (t_end > t ? (int32_t)(t_end - t) : 0) : TILE;
    ld->j = 0;
    ld->pg = t / l->page_size;
    ld->slot = t % l->page_size;
    ld->quota = (ld->n + calls - 1) / calls;
    ld->kstep = (size_t)l->k_token_stride * attnd_dtype_size(l->dtype);
    ld->vstep = (size_t)l->v_token_stride * attnd_dtype_size(l->dtype);
    if (ld->n > 0) {
        ld->kr = ld_krow(ld, ld->pg, ld->slot);
        ld->vr = ld_vrow(ld, ld->pg, ld->slot);
    }
}

/* Convert up to `rows` more rows of the tile. */
static void ld_rows(tile_loader *ld, int32_t rows)
{
    const attnd_kernel_kv_layout *l = ld->b->kv;
    const attnd__simd_dims *dm = ld->dm;
    int32_t end = ld->j + rows < ld->n ? ld->j + rows : ld->n;

    for (; ld->j < end; ld->j++) {
        float *kd = ld->k + (size_t)ld->j * VW, *vd = ld->v + (size_t)ld->j * VW;
#if defined(DPBF16)
        if (ld->bf16) {
            cp_row_bf16_cm((uint16_t *)(void *)ld->k + (size_t)ld->j * 32,
                           (const uint16_t *)(const void *)ld->kr, dm->dk);
            if (ld->j & 1)
                pair_rows_bf16((uint16_t *)(void *)ld->v + (size_t)(ld->j / 2) * 2 * dm->dv,
                               (const uint16_t *)(const void *)ld->vprev,
                               (const uint16_t *)(const void *)ld->vr, dm->dv);
            else
                ld->vprev = ld->vr;
        } else
#endif
        if (ld->fuse_v) {
            cvt_row_perm_cm(kd, (const uint16_t *)(const void *)ld->kr, dm->dk);
            ld->vrow[ld->j] = ld->vr;
        } else if (ld->perm) {
            cvt_row_perm_cm(kd, (const uint16_t *)(const void *)ld->kr, dm->dk);
            if (!l->v_in_k)
                cvt_row_perm_cm(vd, (const uint16_t *)(const void *)ld->vr, dm->dv);
        } else {
            cvt_row_cm(kd, ld->kr, dm->dk, dm->dk_pad, l->dtype);
            if (!l->v_in_k)
                cvt_row_cm(vd, ld->vr, dm->dv, dm->dv_pad, l->dtype);
        }
        if (++ld->slot == l->page_size) {
            ld->slot = 0;
            ld->pg++;
            if (ld->j + 1 < ld->n) {
                ld->kr = ld_krow(ld, ld->pg, 0);
                ld->vr = ld_vrow(ld, ld->pg, 0);
            }
        } else {
            ld->kr += ld->kstep;
            ld->vr += ld->vstep;
        }
    }
}

/* Convert what is left and zero the K rows past the tile's tokens that
 * the narrow scores read (up to the power of two qk_narrow_few rounds n to,
 * or the whole tile): their scores are masked, but garbage there could be
 * slow (subnormals). Wide scores and every P V read only the first n rows. */
static void ld_finish(tile_loader *ld)
{
    const attnd__simd_dims *dm = ld->dm;
    ld_rows(ld, TILE);
    if (ld->n > 0 && ld->n < TILE) { /* an empty tile is never read */
        int32_t z = ld->n <= VW ? 1 : TILE;
        while (z < ld->n)
            z *= 2;
#if defined(DPBF16)
        if (ld->bf16) {
            if (ld->n & 1) /* the last pair's odd token: zeros */
                pair_rows_bf16((uint16_t *)(void *)ld->v + (size_t)(ld->n / 2) * 2 * dm->dv,
                               (const uint16_t *)(const void *)ld->vprev, NULL, dm->dv);
            for (int32_t c = 0; c < (dm->dk + 31) / 32 && z > ld->n; c++)
                memset((uint16_t *)(void *)ld->k + (size_t)c * CSB + (size_t)ld->n * 32, 0,
                       sizeof(uint16_t) * 32 * (size_t)(z - ld->n));
            return;
        }
#endif
        size_t rest = sizeof(float) * (size_t)(z - ld->n) * VW;
        for (int32_t c = 0; c < dm->dk_pad / VW && rest; c++)
            memset(ld->k + (size_t)c * CS + (size_t)ld->n * VW, 0, rest);
    }
}

/* List the rows of tokens [t, t_end) (at most a tile) for prefetching. */
static void ld_prefetch_begin(tile_loader *ld, int64_t t, int64_t t_end, int32_t calls)
{
    const attnd_kernel_kv_layout *l = ld->b->kv;
    int64_t n = t_end - t < TILE ? t_end - t : TILE;

    ld->pf_rows = ld->pf_next = 0;
    ld->pf_lines = (int32_t)(((size_t)l->d_k * attnd_dtype_size(l->dtype) + 63) / 64);
    if (n <= 0)
        return;
    const size_t es = attnd_dtype_size(l->dtype);
    const size_t kstep = (size_t)l->k_token_stride * es, vstep = (size_t)l->v_token_stride * es;
    int64_t pg = t / l->page_size, slot = t % l->page_size;
    const char *kr = ld_krow(ld, pg, slot), *vr = ld_vrow(ld, pg, slot);
    for (int64_t j = 0; j < n; j++) {
        ld->pf_row[ld->pf_rows++] = kr;
        if (!l->v_in_k)
            ld->pf_row[ld->pf_rows++] = vr;
        if (++slot == l->page_size) {
            slot = 0;
            pg++;
            if (j + 1 < n) {
                kr = ld_krow(ld, pg, 0);
                vr = ld_vrow(ld, pg, 0);
            }
        } else {
            kr += kstep;
            vr += vstep;
        }
    }
    ld->pf_quota = (ld->pf_rows + calls - 1) / calls;
}

/* One slice of the pipeline: some rows of the next tile, some prefetches
 * of the one after. */
static inline void ld_step(tile_loader *ld)
{
    ld_rows(ld, ld->quota);
    int32_t end = ld->pf_next + ld->pf_quota;
    end = end < ld->pf_rows ? end : ld->pf_rows;
    for (; ld->pf_next < end; ld->pf_next++)
        for (int32_t i = 0; i < ld->pf_lines; i++)
            _mm_prefetch(ld->pf_row[ld->pf_next] + 64 * i, _MM_HINT_T1);
}
