/* Check suite of the sparse side of the kernels: decode over page lists
 * that skip pages (per sequence, and per group of KV heads), token lists
 * read through the token view, the per-page key bounds, and the page
 * selection (Quest scores and top-k).
 *
 * Decode over a sparse list must equal exact attention over exactly the
 * listed tokens: every path this CPU runs (forced through
 * ATTND_KERNEL_PATH) and every split count of the threaded run is checked
 * against the float64 reference over the listed tokens, on fresh random
 * problems whose unlisted pages and slots hold NaN (paged_problem.h), so a
 * kernel that reads one unlisted token fails. Bounds as in
 * test_kernel_paths.c: 1e-5 normwise and 1e-4 LSE, but avx512bf16 on bf16
 * KV (P rounded to bf16 for P V) is held to the 1e-2 bf16 bound of the GPU
 * kernels' tests for its outputs. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_kernels.h"
#include "paged_problem.h"

/* Force path p; 0 when this CPU cannot run it. */
static int use_path(int p)
{
    setenv("ATTND_KERNEL_PATH", attnd_kernel_path_str((attnd_kernel_path)p), 1);
    attnd_kernel_path got = attnd_kernel_path_reset();
    return attnd_kernel_path_supported((attnd_kernel_path)p) && (int)got == p;
}

static void reset_path(void)
{
    unsetenv("ATTND_KERNEL_PATH");
    attnd_kernel_path_reset();
}

/* Sparse lists over a dense problem: for each (sequence, list group) a
 * random subset of the sequence's pages in order, always with its last
 * pages (those holding its last S tokens), as the sparse policies make. */
typedef struct sparse_lists {
    int32_t groups;
    int32_t *indptr, *idx, *last;
    /* per list: logical pages kept, to rebuild the reference */
    int32_t *logical;
} sparse_lists;

static void make_lists(sparse_lists *sl, const pp_problem *p, int32_t groups, double keep,
                       tu_rng *r)
{
    const int32_t n = p->sp.n_seqs, ps = p->sp.page_size, S = p->sp.q_tokens;
    int32_t total = p->indptr[n];
    sl->groups = groups;
    sl->indptr = calloc((size_t)n * groups + 1, sizeof(int32_t));
    sl->last = calloc((size_t)n * groups + 1, sizeof(int32_t));
    sl->idx = malloc(sizeof(int32_t) * ((size_t)total * groups + 1));
    sl->logical = malloc(sizeof(int32_t) * ((size_t)total * groups + 1));
    int32_t w = 0;
    for (int32_t i = 0; i < n; i++)
        for (int32_t g = 0; g < groups; g++) {
            int32_t li = i * groups + g, np = p->indptr[i + 1] - p->indptr[i];
            int64_t len = p->sp.lens[i];
            /* the pages holding the last S tokens are always kept */
            int32_t tail0 = len > S ? (int32_t)((len - S) / ps) : 0;
            for (int32_t j = 0; j < np; j++)
                if (j >= tail0 || tu_unif(r) < keep) {
                    sl->idx[w] = p->idx[p->indptr[i] + j];
                    sl->logical[w] = j;
                    w++;
                }
            sl->indptr[li + 1] = w;
            sl->last[li] = np ? p->last[i] : 0;
        }
}

static void free_lists(sparse_lists *sl)
{
    free(sl->indptr);
    free(sl->idx);
    free(sl->last);
    free(sl->logical);
}

/* Worst errors against the float64 reference over each list's tokens. */
static void check_lists(const pp_problem *p, const sparse_lists *sl, double *out_err,
                        double *lse_err)
{
    const pp_spec *sp = &p->sp;
    const int32_t hq = sp->hq, hkv = p->l.n_kv_heads, dk = p->l.d_k, dv = p->l.d_v;
    const int32_t G = hq / hkv, ps = sp->page_size, S = sp->q_tokens;
    double worst = 0.0, worst_lse = 0.0;
    int64_t most = 1;
    for (int32_t i = 0; i < sp->n_seqs; i++)
        most = sp->lens[i] > most ? sp->lens[i] : most;
    double *k = malloc(sizeof(double) * (size_t)most * dk);
    double *v = malloc(sizeof(double) * (size_t)most * dv);
    double *ref = malloc(sizeof(double) * (size_t)G * dv), rlse[512];

    for (int32_t i = 0; i < sp->n_seqs; i++)
        for (int32_t h = 0; h < hkv; h++) {
            int32_t li = i * sl->groups + h / (hkv / sl->groups);
            /* gather the listed tokens of KV head h, in list order */
            int64_t t = 0;
            for (int32_t e = sl->indptr[li]; e < sl->indptr[li + 1]; e++) {
                int32_t j = sl->logical[e];
                int64_t n_tok = (int64_t)j * ps + ps <= sp->lens[i] ? ps : sp->lens[i] - (int64_t)j * ps;
                for (int64_t c = 0; c < n_tok; c++, t++) {
                    int64_t src = (int64_t)j * ps + c;
                    memcpy(k + t * dk, p->k64[i] + (src * hkv + h) * dk, sizeof(double) * dk);
                    memcpy(v + t * dv, p->v64[i] + (src * hkv + h) * dv, sizeof(double) * dv);
                }
            }
            for (int32_t s = 0; s < S; s++) {
                int64_t vis = t - (S - 1 - s);
                size_t row = ((size_t)i * S + s) * hq + (size_t)h * G;
                attnd_kernel_ref_attention_f64(G, 1, dk, dv, vis < 0 ? 0 : vis, p->b.scale,
                                               p->q64 + row * dk, k, v, ref, rlse);
                for (int32_t g = 0; g < G; g++) {
                    double e = tu_rel_err_f32(p->out + (row + g) * dv, ref + (size_t)g * dv,
                                              (size_t)dv);
                    float got = p->lse[row + g];
                    double le = isinf(rlse[g]) ? (isinf(got) && got < 0 ? 0.0 : INFINITY)
                                               : (isnan(got) ? INFINITY : fabs(got - rlse[g]));
                    worst = e > worst ? e : worst;
                    worst_lse = le > worst_lse ? le : worst_lse;
                }
            }
        }
    free(k);
    free(v);
    free(ref);
    *out_err = worst;
    *lse_err = worst_lse;
}

static void poison(pp_problem *p)
{
    size_t rows = (size_t)p->sp.n_seqs * p->sp.q_tokens * p->sp.hq;
    for (size_t j = 0; j < rows * (size_t)p->l.d_v; j++)
        p->out[j] = NAN;
    for (size_t j = 0; j < rows; j++)
        p->lse[j] = NAN;
}

/* The f64 bound on outputs of path p on KV of dtype kv (file comment). */
static double out_bound(int p, attnd_dtype kv)
{
    return p == ATTND_KERNEL_PATH_AVX512_BF16 && kv == ATTND_DTYPE_BF16 ? 1e-2 : 1e-5;
}

/* Every path, single-threaded and split 1 / 2 / 7 / max / auto on a pool
 * of 3 threads, over the sparse lists. */
static void check_sparse_problem(const pp_spec *sp, int32_t groups, tu_rng *r, const char *what)
{
    pp_problem p;
    sparse_lists sl;
    attnd_error err;
    attnd_kernel_pool *pool;
    attnd_kernel_decode_plan plan;
    static const int32_t splits[] = {1, 2, 7, ATTND_KERNEL_DECODE_SPLITS_MAX,
                                     ATTND_KERNEL_DECODE_SPLITS_AUTO};

    pp_build(&p, sp, r);
    make_lists(&sl, &p, groups, 0.4, r);
    p.b.page_indptr = sl.indptr;
    p.b.page_idx = sl.idx;
    p.b.last_page_len = sl.last;
    p.b.list_groups = groups;
    ck_assert_int_eq(attnd_kernel_decode_batch_check(&p.b, &err), ATTND_OK);
    ck_assert_int_eq(attnd_kernel_pool_create(3, &pool, &err), ATTND_OK);
    attnd_kernel_decode_plan_init(&plan);
    int ran = 0;
    for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
        if (!use_path(path))
            continue;
        double e_out, e_lse;
        poison(&p);
        attnd_kernel_decode(&p.b);
        check_lists(&p, &sl, &e_out, &e_lse);
        ck_assert_msg(e_out <= out_bound(path, sp->kv_t) && e_lse <= 1e-4,
                      "%s %s: rel err %g, lse err %g",
                      attnd_kernel_path_str((attnd_kernel_path)path), what, e_out, e_lse);
        for (size_t k = 0; k < sizeof splits / sizeof *splits; k++) {
            attnd_kernel_decode_plan_opts o = {.n_threads = 3, .splits = splits[k]};
            poison(&p);
            ck_assert_int_eq(attnd_kernel_decode_plan_make(&plan, &p.b, &o, &err), ATTND_OK);
            ck_assert_int_eq(attnd_kernel_decode_run(pool, &plan, &p.b, &err), ATTND_OK);
            check_lists(&p, &sl, &e_out, &e_lse);
            ck_assert_msg(e_out <= out_bound(path, sp->kv_t) && e_lse <= 1e-4,
                          "%s %s splits %d: rel err %g, lse err %g",
                          attnd_kernel_path_str((attnd_kernel_path)path), what, splits[k],
                          e_out, e_lse);
        }
        ran++;
    }
    ck_assert_int_ge(ran, 1);
    reset_path();
    attnd_kernel_decode_plan_cleanup(&plan);
    attnd_kernel_pool_destroy(pool);
    free_lists(&sl);
    pp_free(&p);
}

START_TEST(test_gqa_lists_per_kv_head_skipping_pages_match_f64_on_every_path_and_split)
{
    tu_rng r;
    tu_rng_init(&r, "sparse-gqa");
    const int64_t lens[] = {700, 333, 1, 517};
    for (int32_t S = 1; S <= 3; S += 2) {
        pp_spec sp = {.kind = ATTND_ATTN_GQA, .hq = 8, .hkv = 4, .head_dim = 64,
                      .page_size = 16, .q_tokens = S, .kv_t = ATTND_DTYPE_BF16,
                      .q_t = ATTND_DTYPE_F32, .n_seqs = 4, .lens = lens};
        check_sparse_problem(&sp, 4, &r, "gqa per kv head");
        check_sparse_problem(&sp, 2, &r, "gqa per 2 kv heads");
        check_sparse_problem(&sp, 1, &r, "gqa per sequence");
        sp.kv_t = ATTND_DTYPE_F32;
        sp.q_t = ATTND_DTYPE_BF16;
        check_sparse_problem(&sp, 4, &r, "gqa f32 kv per kv head");
    }
}
END_TEST

START_TEST(test_mla_lists_skipping_pages_match_f64_on_every_path_and_split)
{
    tu_rng r;
    tu_rng_init(&r, "sparse-mla");
    const int64_t lens[] = {900, 65};
    for (int32_t S = 1; S <= 2; S++) {
        pp_spec sp = {.kind = ATTND_ATTN_MLA, .hq = 16, .d_c = 128, .d_r = 32,
                      .page_size = 64, .q_tokens = S, .kv_t = ATTND_DTYPE_BF16,
                      .q_t = ATTND_DTYPE_BF16, .n_seqs = 2, .lens = lens};
        check_sparse_problem(&sp, 1, &r, "mla");
    }
}
END_TEST

START_TEST(test_list_groups_that_do_not_divide_the_kv_heads_are_invalid)
{
    tu_rng r;
    tu_rng_init(&r, "sparse-bad-groups");
    const int64_t lens[] = {40};
    pp_spec sp = {.kind = ATTND_ATTN_GQA, .hq = 8, .hkv = 4, .head_dim = 16,
                  .page_size = 16, .q_tokens = 1, .kv_t = ATTND_DTYPE_F32,
                  .q_t = ATTND_DTYPE_F32, .n_seqs = 1, .lens = lens};
    pp_problem p;
    attnd_error err;
    pp_build(&p, &sp, &r);
    p.b.list_groups = 3;
    ck_assert_int_eq(attnd_kernel_decode_batch_check(&p.b, &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "list_groups"));
    pp_free(&p);
}
END_TEST

/* Token lists (given-tokens) through the token view: any tokens of the
 * sequence, in order, equal exact attention over exactly those tokens. */
START_TEST(test_token_lists_through_the_token_view_match_f64)
{
    tu_rng r;
    tu_rng_init(&r, "sparse-tokens");
    const int64_t lens[] = {300, 77};
    for (int kind = 0; kind < 2; kind++) {
        pp_spec sp = {.kind = kind ? ATTND_ATTN_MLA : ATTND_ATTN_GQA, .hq = 8, .hkv = 2,
                      .head_dim = 32, .d_c = 64, .d_r = 16, .page_size = 16, .q_tokens = 1,
                      .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_F32, .n_seqs = 2,
                      .lens = lens};
        pp_problem p;
        attnd_error err;
        attnd_kernel_kv_layout view;
        int64_t ratio;
        pp_build(&p, &sp, &r);
        ck_assert_int_eq(attnd_kernel_kv_layout_token_view(&p.l, &view, &ratio), 1);
        int32_t *indptr = calloc(3, sizeof(int32_t)), *idx = malloc(sizeof(int32_t) * 400);
        int32_t *last = calloc(2, sizeof(int32_t));
        int64_t *toks[2], nl[2];
        int32_t w = 0;
        for (int32_t i = 0; i < 2; i++) {
            toks[i] = malloc(sizeof(int64_t) * 400);
            int32_t n = 0;
            for (int64_t t = 0; t < lens[i]; t++)
                if (tu_unif(&r) < 0.3 || t == lens[i] - 1) {
                    int32_t page = p.idx[p.indptr[i] + t / sp.page_size];
                    idx[w++] = (int32_t)(page * ratio + t % sp.page_size);
                    toks[i][n++] = t;
                }
            indptr[i + 1] = w;
            last[i] = 1;
            /* the reference: the chosen tokens' rows, compacted in place */
            for (int32_t j = 0; j < n; j++) {
                memmove(p.k64[i] + (size_t)j * p.l.n_kv_heads * p.l.d_k,
                        p.k64[i] + (size_t)toks[i][j] * p.l.n_kv_heads * p.l.d_k,
                        sizeof(double) * p.l.n_kv_heads * p.l.d_k);
                memmove(p.v64[i] + (size_t)j * p.l.n_kv_heads * p.l.d_v,
                        p.v64[i] + (size_t)toks[i][j] * p.l.n_kv_heads * p.l.d_v,
                        sizeof(double) * p.l.n_kv_heads * p.l.d_v);
            }
            nl[i] = n;
        }
        p.sp.lens = nl; /* pp_check's reference: the chosen tokens only */
        p.b.kv = &view;
        p.b.pool_pages *= ratio;
        p.b.page_indptr = indptr;
        p.b.page_idx = idx;
        p.b.last_page_len = last;
        ck_assert_int_eq(attnd_kernel_decode_batch_check(&p.b, &err), ATTND_OK);
        for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
            if (!use_path(path))
                continue;
            double e_out, e_lse;
            poison(&p);
            attnd_kernel_decode(&p.b);
            pp_check(&p, &e_out, &e_lse);
            ck_assert_msg(e_out <= out_bound(path, p.sp.kv_t) && e_lse <= 1e-4,
                          "%s kind %d: %g %g",
                          attnd_kernel_path_str((attnd_kernel_path)path), kind, e_out, e_lse);
        }
        reset_path();
        p.sp.lens = lens;
        free(indptr);
        free(idx);
        free(last);
        free(toks[0]);
        free(toks[1]);
        pp_free(&p);
    }
}
END_TEST

/* ---- bounds and selection ------------------------------------------------ */

/* Fold every page of sequence i of problem p into bounds (indexed by
 * physical page), from its stored keys. */
static uint16_t *build_bounds(const pp_problem *p)
{
    const attnd_kernel_kv_layout *l = &p->l;
    const size_t pe = attnd_kernel_kv_bounds_elems(l);
    const int32_t ps = p->sp.page_size, hkv = l->n_kv_heads, dk = l->d_k;
    uint16_t *bd = malloc(sizeof(uint16_t) * pe * (size_t)p->b.pool_pages);
    float *wire = calloc((size_t)p->entry, sizeof(float));
    for (int64_t pg = 0; pg < p->b.pool_pages; pg++)
        attnd_kernel_kv_bounds_reset(l, bd, p->b.pool_pages, pg);
    for (int32_t i = 0; i < p->sp.n_seqs; i++)
        for (int64_t t = 0; t < p->sp.lens[i]; t++) {
            for (int32_t h = 0; h < hkv; h++)
                for (int32_t d = 0; d < dk; d++)
                    wire[h * dk + d] = (float)p->k64[i][(t * hkv + h) * dk + d];
            int32_t pg = p->idx[p->indptr[i] + t / ps];
            attnd_kernel_kv_bounds_add(l, bd, p->b.pool_pages, pg, 1, ATTND_DTYPE_F32, wire);
        }
    free(wire);
    return bd;
}

START_TEST(test_bounds_hold_every_stored_key_and_are_its_outward_rounded_min_and_max)
{
    tu_rng r;
    tu_rng_init(&r, "sparse-bounds");
    const int64_t lens[] = {200};
    pp_spec sp = {.kind = ATTND_ATTN_GQA, .hq = 4, .hkv = 2, .head_dim = 32, .page_size = 16,
                  .q_tokens = 1, .kv_t = ATTND_DTYPE_F32, .q_t = ATTND_DTYPE_F32,
                  .n_seqs = 1, .lens = lens};
    pp_problem p;
    pp_build(&p, &sp, &r);
    uint16_t *bd = build_bounds(&p);
    for (int32_t j = 0; j < p.indptr[1]; j++) {
        for (int32_t h = 0; h < 2; h++)
            for (int32_t d = 0; d < 32; d++) {
                const uint16_t *pb =
                        bd + attnd_kernel_kv_bounds_at(&p.l, p.b.pool_pages, h, p.idx[j]);
                double mn = INFINITY, mx = -INFINITY;
                for (int64_t t = (int64_t)j * 16; t < lens[0] && t < (int64_t)j * 16 + 16; t++) {
                    double x = p.k64[0][(t * 2 + h) * 32 + d];
                    mn = x < mn ? x : mn;
                    mx = x > mx ? x : mx;
                }
                double lo = attnd_dtype_bf16_to_f32(pb[d]);
                double hi = attnd_dtype_bf16_to_f32(pb[32 + d]);
                ck_assert(lo <= mn && mx <= hi);
                /* tight: within one bf16 step (2^-7 relative) */
                ck_assert(mn - lo <= fabs(mn) * 0x1p-7 && hi - mx <= fabs(mx) * 0x1p-7);
            }
    }
    free(bd);
    pp_free(&p);
}
END_TEST

/* The compact bounds of every page of bd. Caller frees. */
static uint8_t *build_bounds8(const pp_problem *p, const uint16_t *bd)
{
    const attnd_kernel_kv_layout *l = &p->l;
    uint8_t *b8 = malloc(attnd_kernel_kv_bounds8_row(l) * (size_t)l->n_kv_heads *
                         (size_t)p->b.pool_pages);
    for (int64_t pg = 0; pg < p->b.pool_pages; pg++)
        attnd_kernel_kv_bounds8_make(l, bd, b8, p->b.pool_pages, pg);
    return b8;
}

/* A compact row's off, step and the bounds its codes stand for. */
static void bounds8_read(const uint8_t *row, int32_t dk, double *off_p, double *step_p,
                         double *lo, double *hi)
{
    float off, step;
    memcpy(&off, row, sizeof off);
    memcpy(&step, row + sizeof off, sizeof step);
    *off_p = off;
    *step_p = step;
    for (int32_t d = 0; d < dk; d++) {
        lo[d] = (double)off + (double)step * row[8 + d];
        hi[d] = (double)off + (double)step * row[8 + dk + d];
    }
}

/* Pages of every kind a compact row must hold: random keys of scales from
 * 2^-20 to 2^20 (off-centre too), a constant page, a zero page; each
 * compact bound at or outside its bf16 bound by less than one step, the
 * step a power of two no coarser than 2 (max hi - min lo) / 255 (or 2^-15
 * of the largest magnitude), off a multiple of it; an empty page, and one
 * with an infinite or a 2^101 bound, get step NaN (always chosen). */
START_TEST(test_compact_bounds_hold_the_bf16_bounds_within_one_power_of_two_step)
{
    tu_rng r;
    tu_rng_init(&r, "sparse-bounds8");
    enum { DK = 40, NP = 64 };
    attnd_kernel_kv_layout l;
    attnd_kernel_kv_layout_gqa(&l, 1, DK, 16, ATTND_DTYPE_BF16);
    uint16_t *bd = malloc(sizeof(uint16_t) * 2 * DK * NP);
    uint8_t *b8 = malloc(attnd_kernel_kv_bounds8_row(&l) * NP);
    float key[2 * DK]; /* a wire entry: K then V */
    double lo[DK], hi[DK];
    for (int32_t p = 0; p < NP; p++) {
        attnd_kernel_kv_bounds_reset(&l, bd, NP, p);
        double scale = ldexp(1.0, (int)tu_int(&r, -20, 20)), centre = p % 3 ? 0.0 : 5 * scale;
        for (int32_t t = 0; t < 16 && p != NP - 1; t++) {
            for (int32_t d = 0; d < 2 * DK; d++)
                key[d] = p == 1 ? 0.0f : p == 2 ? 3.25f : (float)(centre + scale * tu_normal(&r));
            if (p == 3 && t == 5)
                key[7] = INFINITY;
            if (p == 4 && t == 0)
                key[9] = 0x1p101f;
            attnd_kernel_kv_bounds_add(&l, bd, NP, p, 1, ATTND_DTYPE_F32, key);
        }
        attnd_kernel_kv_bounds8_make(&l, bd, b8, NP, p);
    }
    for (int32_t p = 0; p < NP; p++) {
        double off, step, m = INFINITY, M = -INFINITY, mag = 0;
        bounds8_read(b8 + attnd_kernel_kv_bounds8_at(&l, NP, 0, p), DK, &off, &step, lo, hi);
        if (p == 3 || p == 4 || p == NP - 1) {
            ck_assert_msg(isnan(step), "page %d: step %g, want NaN", p, step);
            continue;
        }
        ck_assert_msg(step > 0 && frexp(step, &(int){0}) == 0.5, "page %d: step %g", p, step);
        ck_assert_msg(off / step == floor(off / step), "page %d: off %g, step %g", p, off, step);
        for (int32_t d = 0; d < DK; d++) {
            const uint16_t *row = bd + attnd_kernel_kv_bounds_at(&l, NP, 0, p);
            double l16 = attnd_dtype_bf16_to_f32(row[d]);
            double h16 = attnd_dtype_bf16_to_f32(row[DK + d]);
            ck_assert_msg(lo[d] <= l16 && l16 - lo[d] < step, "page %d d %d: lo %g, bf16 %g", p,
                          d, lo[d], l16);
            ck_assert_msg(hi[d] >= h16 && hi[d] - h16 < step, "page %d d %d: hi %g, bf16 %g", p,
                          d, hi[d], h16);
            m = fmin(m, l16);
            M = fmax(M, h16);
            mag = fmax(mag, fmax(fabs(l16), fabs(h16)));
        }
        ck_assert_msg(step <= fmax(fmax(2 * (M - m) / 255, mag * 0x1p-15), 0x1p-126),
                      "page %d: step %g for [%g, %g]", p, step, m, M);
    }
    free(bd);
    free(b8);
}
END_TEST

/* The score of a row on compact bounds as select_int.h defines it: the
 * row's query (agg heads of q0 summed in float32, in order), sq the
 * smallest float32 at or above max |q| / 127, every element rounded up to
 * a multiple of it, then off sum q + step sq (c . qi) with the codes c =
 * (bound - off) / step, in float64. */
static double ub8_ref(const double *q0, int32_t agg, int32_t dk, double off, double step,
                      const double *blo, const double *bhi)
{
    float *qf = malloc(sizeof(float) * (size_t)dk);
    float mx = 0.0f;
    double sum = 0, dot = 0;
    for (int32_t d = 0; d < dk; d++) {
        qf[d] = (float)q0[d];
        for (int32_t j = 1; j < agg; j++)
            qf[d] += (float)q0[(size_t)j * dk + d];
        mx = fmaxf(mx, fabsf(qf[d]));
        sum += qf[d];
    }
    float sq = mx / 127.0f;
    while ((double)sq * 127.0 < (double)mx)
        sq = nextafterf(sq, INFINITY);
    for (int32_t d = 0; d < dk && sq > 0; d++) {
        double c = ceil((double)qf[d] / sq);
        while (c * sq < qf[d])
            c += 1;
        dot += c * (qf[d] < 0 ? (blo[d] - off) / step : (bhi[d] - off) / step);
    }
    free(qf);
    return off * sum + step * sq * dot;
}

/* Float64 Quest scores of list (seq i, group g) over its candidates, a row
 * per query token and run of agg heads of a KV head (their queries summed;
 * agg 1: a row per head). */
static void ref_scores(const pp_problem *p, const uint16_t *bd, const uint8_t *b8, int32_t i,
                       int32_t g, int32_t groups, int32_t agg, const int32_t *cand, int32_t n,
                       double *score)
{
    const attnd_kernel_kv_layout *l = &p->l;
    const int32_t hkv = l->n_kv_heads, dk = l->d_k, G = p->sp.hq / hkv / agg, S = p->sp.q_tokens;
    const int32_t hpg = hkv / groups, rows = S * G * hpg;
    double *ub = malloc(sizeof(double) * (size_t)rows * n), *mx = malloc(sizeof(double) * rows);
    double *q = malloc(sizeof(double) * (size_t)dk);
    double *blo = malloc(sizeof(double) * (size_t)dk), *bhi = malloc(sizeof(double) * (size_t)dk);
    for (int32_t rr = 0; rr < rows; rr++)
        mx[rr] = -INFINITY;
    for (int32_t c = 0; c < n; c++)
        for (int32_t hh = 0; hh < hpg; hh++) {
            int32_t h = g * hpg + hh;
            const uint16_t *lo = bd + attnd_kernel_kv_bounds_at(l, p->b.pool_pages, h, cand[c]);
            double off = 0, step = 0;
            for (int32_t d = 0; d < dk; d++) {
                blo[d] = attnd_dtype_bf16_to_f32(lo[d]);
                bhi[d] = attnd_dtype_bf16_to_f32(lo[dk + d]);
            }
            if (b8) {
                bounds8_read(b8 + attnd_kernel_kv_bounds8_at(l, p->b.pool_pages, h, cand[c]), dk,
                             &off, &step, blo, bhi);
            }
            for (int32_t s = 0; s < S; s++)
                for (int32_t gq = 0; gq < G; gq++) {
                    const double *q0 =
                        p->q64 + (((size_t)i * S + s) * p->sp.hq + (h * G + gq) * agg) * dk;
                    for (int32_t d = 0; d < dk; d++) {
                        q[d] = 0;
                        for (int32_t j = 0; j < agg; j++)
                            q[d] += q0[(size_t)j * dk + d];
                    }
                    double a = 0;
                    for (int32_t d = 0; d < dk; d++) {
                        double x = q[d] * blo[d];
                        double y = q[d] * bhi[d];
                        a += x > y ? x : y;
                    }
                    if (b8) {
                        /* an upper bound of Quest's on the bf16 bounds
                         * (so of every key's score) */
                        double a16 = 0;
                        for (int32_t d = 0; d < dk; d++) {
                            double x = q[d] * attnd_dtype_bf16_to_f32(lo[d]);
                            double y = q[d] * attnd_dtype_bf16_to_f32(lo[dk + d]);
                            a16 += x > y ? x : y;
                        }
                        a = ub8_ref(q0, agg, dk, off, step, blo, bhi);
                        ck_assert_msg(a >= a16 - 1e-5 * (1 + fabs(a16)),
                                      "compact score %g under the bf16 one %g", a, a16);
                    }
                    int32_t rr = (hh * S + s) * G + gq;
                    ub[(size_t)c * rows + rr] = a;
                    mx[rr] = a > mx[rr] ? a : mx[rr];
                }
        }
    for (int32_t c = 0; c < n; c++) {
        double best = -INFINITY;
        for (int32_t rr = 0; rr < rows; rr++)
            best = fmax(best, ub[(size_t)c * rows + rr] - mx[rr]);
        score[c] = best;
    }
    free(blo);
    free(bhi);
    free(q);
    free(ub);
    free(mx);
}

/* Select k of every list of a random problem on the path now in force, on
 * one thread and on a pool, scoring rows of agg heads (head_agg); check
 * mandatory pages, order, count, and that no page left out scores clearly
 * above one kept (float64 scores; a margin of 1e-4 of the score scale
 * absorbs float32 rounding). */
static void check_select_on(const pp_spec *sp, int32_t groups, int32_t agg, int compact,
                            tu_rng *r, const char *what)
{
    pp_problem p;
    attnd_error err;
    pp_build(&p, sp, r);
    uint16_t *bd = build_bounds(&p);
    uint8_t *b8 = compact ? build_bounds8(&p, bd) : NULL;
    const int32_t n = sp->n_seqs, nl = n * groups;
    const int32_t ps = sp->page_size;
    attnd_kernel_select_list *lists = calloc((size_t)nl, sizeof *lists);
    int32_t out = 0;
    for (int32_t i = 0; i < n; i++)
        for (int32_t g = 0; g < groups; g++) {
            attnd_kernel_select_list *L = &lists[i * groups + g];
            int32_t np = p.indptr[i + 1] - p.indptr[i];
            L->seq = i;
            L->group = g;
            L->cand0 = p.indptr[i];
            L->n_cand = np;
            L->n_head = np > 2 ? 1 : 0;
            L->n_tail = np > 0 ? 1 : 0;
            int32_t k = (int32_t)tu_int(r, L->n_head + L->n_tail, np);
            L->keep = k;
            L->out0 = out;
            out += k;
        }
    int32_t *sel1 = malloc(sizeof(int32_t) * (size_t)(out + 1));
    int32_t *pos1 = malloc(sizeof(int32_t) * (size_t)(out + 1));
    int32_t *sel2 = malloc(sizeof(int32_t) * (size_t)(out + 1));
    attnd_kernel_select_batch b = {.n_lists = nl, .lists = lists, .n_seqs = n,
                                   .q_tokens = sp->q_tokens, .n_q_heads = sp->hq,
                                   .list_groups = groups, .head_agg = agg, .q_dtype = sp->q_t,
                                   .q = p.q, .kv = &p.l,
                                   .bounds = compact ? NULL : bd, .bounds8 = b8,
                                   .bounds_pages = p.b.pool_pages, .cand_idx = p.idx,
                                   .sel_pages = sel1, .sel_pos = pos1};
    int64_t wf = attnd_kernel_select_prepare(&b, &err);
    ck_assert_int_ge(wf, 0);
    b.work = malloc(sizeof(float) * (size_t)(wf + 1));
    attnd_kernel_select(&b);
    attnd_kernel_pool *pool;
    ck_assert_int_eq(attnd_kernel_pool_create(3, &pool, &err), ATTND_OK);
    b.sel_pages = sel2;
    b.sel_pos = NULL;
    ck_assert_int_eq(attnd_kernel_select_parallel(pool, &b, &err), ATTND_OK);
    ck_assert_msg(memcmp(sel1, sel2, sizeof(int32_t) * (size_t)out) == 0,
                  "%s: the pool's selection differs from one thread's", what);
    for (int32_t li = 0; li < nl; li++) {
        const attnd_kernel_select_list *L = &lists[li];
        double *score = malloc(sizeof(double) * (size_t)(L->n_cand + 1));
        ref_scores(&p, bd, b8, L->seq, L->group, groups, agg, p.idx + L->cand0, L->n_cand, score);
        char *kept = calloc((size_t)L->n_cand + 1, 1);
        for (int32_t j = 0; j < L->keep; j++) {
            int32_t c = pos1[L->out0 + j];
            ck_assert_int_eq(sel1[L->out0 + j], p.idx[L->cand0 + c]);
            if (j > 0)
                ck_assert_int_gt(c, pos1[L->out0 + j - 1]); /* candidate order */
            kept[c] = 1;
        }
        for (int32_t c = 0; c < L->n_head; c++)
            ck_assert(kept[c]);
        for (int32_t c = L->n_cand - L->n_tail; c < L->n_cand; c++)
            ck_assert(kept[c]);
        double min_kept = INFINITY, max_left = -INFINITY;
        for (int32_t c = L->n_head; c < L->n_cand - L->n_tail; c++) {
            if (kept[c])
                min_kept = fmin(min_kept, score[c]);
            else
                max_left = fmax(max_left, score[c]);
        }
        ck_assert_msg(max_left <= min_kept + 1e-4 * (1 + fabs(min_kept)),
                      "%s list %d: a page left out scores %g, one kept %g", what, li, max_left,
                      min_kept);
        free(kept);
        free(score);
    }
    (void)ps;
    attnd_kernel_pool_destroy(pool);
    free(b.work);
    free(sel1);
    free(sel2);
    free(pos1);
    free(lists);
    free(b8);
    free(bd);
    pp_free(&p);
}

static void check_select_agg(const pp_spec *sp, int32_t groups, int32_t agg, tu_rng *r,
                             const char *what)
{
    check_select_on(sp, groups, agg, 0, r, what);
}

static void check_select(const pp_spec *sp, int32_t groups, tu_rng *r, const char *what)
{
    check_select_agg(sp, groups, 1, r, what);
}

START_TEST(test_selection_keeps_mandatory_pages_and_the_best_scores_on_every_path)
{
    tu_rng r;
    tu_rng_init(&r, "sparse-select");
    const int64_t lens[] = {2000, 130, 1, 777};
    for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
        if (!use_path(path))
            continue;
        pp_spec g = {.kind = ATTND_ATTN_GQA, .hq = 8, .hkv = 4, .head_dim = 64,
                     .page_size = 16, .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16,
                     .q_t = ATTND_DTYPE_F32, .n_seqs = 4, .lens = lens};
        check_select(&g, 4, &r, "gqa per kv head");
        check_select(&g, 1, &r, "gqa one list");
        g.q_tokens = 3;
        check_select(&g, 2, &r, "gqa S=3 per 2 kv heads");
        pp_spec m = {.kind = ATTND_ATTN_MLA, .hq = 40, .d_c = 64, .d_r = 16, .page_size = 32,
                     .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_BF16,
                     .n_seqs = 4, .lens = lens};
        check_select(&m, 1, &r, "mla 40 heads");
    }
    reset_path();
}
END_TEST

/* Rows of summed heads (head_agg): the kept pages are the best by the
 * float64 bound of the heads' summed query, on every path, for GQA runs
 * (narrow rows) and MLA layers summed whole or in runs (narrow and wide
 * rows), bf16 and float32 queries. */
START_TEST(test_selection_over_summed_heads_keeps_the_best_summed_bounds_on_every_path)
{
    tu_rng r;
    tu_rng_init(&r, "sparse-select-agg");
    const int64_t lens[] = {2000, 130, 1, 777};
    for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
        if (!use_path(path))
            continue;
        pp_spec g = {.kind = ATTND_ATTN_GQA, .hq = 16, .hkv = 4, .head_dim = 64,
                     .page_size = 16, .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16,
                     .q_t = ATTND_DTYPE_F32, .n_seqs = 4, .lens = lens};
        check_select_agg(&g, 4, 4, &r, "gqa per kv head, its 4 heads summed");
        check_select_agg(&g, 1, 2, &r, "gqa one list, runs of 2 heads");
        g.q_tokens = 3;
        g.q_t = ATTND_DTYPE_BF16;
        check_select_agg(&g, 2, 4, &r, "gqa S=3 per 2 kv heads, 4 heads summed");
        g.q_tokens = 1;
        g.head_dim = 40; /* not a multiple of 16: the vector loops' tails */
        check_select_agg(&g, 4, 4, &r, "gqa d 40 per kv head, its 4 heads summed");
        check_select_agg(&g, 4, 1, &r, "gqa d 40 per kv head, per head");
        pp_spec m = {.kind = ATTND_ATTN_MLA, .hq = 40, .d_c = 64, .d_r = 16, .page_size = 32,
                     .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_BF16,
                     .n_seqs = 4, .lens = lens};
        check_select_agg(&m, 1, 40, &r, "mla 40 heads summed");
        check_select_agg(&m, 1, 5, &r, "mla runs of 5 heads");
        m.hq = 96;
        m.q_t = ATTND_DTYPE_F32;
        check_select_agg(&m, 1, 3, &r, "mla 96 heads in runs of 3 (wide rows)");
        m.q_tokens = 2;
        check_select_agg(&m, 1, 96, &r, "mla S=2, 96 heads summed");
    }
    reset_path();
}
END_TEST

/* Compact bounds (the CPU engine's): the kept pages are the best by the
 * float64 score of select_int.h (Quest's on the compact bounds, the query
 * rounded up to int8 steps), on every path, for one head and summed heads, narrow
 * and many rows, d_k not a multiple of 64 (the codes' masked tail). */
START_TEST(test_selection_on_compact_bounds_keeps_the_best_scores_on_every_path)
{
    tu_rng r;
    tu_rng_init(&r, "sparse-select-b8");
    const int64_t lens[] = {2000, 130, 1, 777};
    for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
        if (!use_path(path))
            continue;
        pp_spec g = {.kind = ATTND_ATTN_GQA, .hq = 16, .hkv = 4, .head_dim = 64,
                     .page_size = 16, .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16,
                     .q_t = ATTND_DTYPE_F32, .n_seqs = 4, .lens = lens};
        check_select_on(&g, 4, 1, 1, &r, "compact, gqa per kv head");
        check_select_on(&g, 1, 4, 1, &r, "compact, gqa one list, 4 heads summed");
        g.q_tokens = 3;
        g.q_t = ATTND_DTYPE_BF16;
        check_select_on(&g, 2, 1, 1, &r, "compact, gqa S=3 per 2 kv heads");
        g.q_tokens = 1;
        g.head_dim = 40;
        check_select_on(&g, 4, 1, 1, &r, "compact, gqa d 40 per kv head");
        pp_spec m = {.kind = ATTND_ATTN_MLA, .hq = 40, .d_c = 64, .d_r = 16, .page_size = 32,
                     .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_BF16,
                     .n_seqs = 4, .lens = lens};
        check_select_on(&m, 1, 1, 1, &r, "compact, mla 40 heads");
        check_select_on(&m, 1, 5, 1, &r, "compact, mla runs of 5 heads");
    }
    reset_path();
}
END_TEST

/* Compact bounds: every path computes the same integer sums and the same
 * float ub from them (select_int.h), so every path, on one thread and on
 * a pool, must keep exactly the pages the scalar path keeps. Shapes cover
 * the AVX-512 four-row path (4 and 8 rows per KV head, d_k 128 and 64, a
 * list of one KV head or of several, candidates not a multiple of four)
 * and those it leaves to the general one (d_k 40, 2 and 3 rows); a few
 * pages have an unbounded row (step NaN: scores NaN, always kept). */
static void check_paths_agree(const pp_spec *sp, int32_t groups, tu_rng *r, const char *what)
{
    pp_problem p;
    attnd_error err;
    pp_build(&p, sp, r);
    uint16_t *bd = build_bounds(&p);
    uint8_t *b8 = build_bounds8(&p, bd);
    for (int j = 0; j < 3; j++) { /* step NaN on a few rows */
        int64_t pg = tu_int(r, 0, p.b.pool_pages - 1);
        int32_t h = (int32_t)tu_int(r, 0, p.l.n_kv_heads - 1);
        const float nan = NAN;
        memcpy(b8 + attnd_kernel_kv_bounds8_at(&p.l, p.b.pool_pages, h, pg) + sizeof(float), &nan,
               sizeof nan);
    }
    const int32_t n = sp->n_seqs, nl = n * groups;
    attnd_kernel_select_list *lists = calloc((size_t)nl, sizeof *lists);
    int32_t out = 0;
    for (int32_t i = 0; i < n; i++)
        for (int32_t g = 0; g < groups; g++) {
            attnd_kernel_select_list *L = &lists[i * groups + g];
            int32_t np = p.indptr[i + 1] - p.indptr[i];
            *L = (attnd_kernel_select_list){.seq = i, .group = g, .cand0 = p.indptr[i],
                                            .n_cand = np, .n_head = np > 2 ? 1 : 0,
                                            .n_tail = np > 0 ? 1 : 0, .out0 = out};
            L->keep = (int32_t)tu_int(r, L->n_head + L->n_tail, np);
            out += L->keep;
        }
    const size_t ob = sizeof(int32_t) * (size_t)(out + 1);
    int32_t *ref = malloc(ob), *ref_pos = malloc(ob), *sel = malloc(ob), *pos = malloc(ob);
    attnd_kernel_select_batch b = {.n_lists = nl, .lists = lists, .n_seqs = n,
                                   .q_tokens = sp->q_tokens, .n_q_heads = sp->hq,
                                   .list_groups = groups, .q_dtype = sp->q_t, .q = p.q,
                                   .kv = &p.l, .bounds8 = b8, .bounds_pages = p.b.pool_pages,
                                   .cand_idx = p.idx, .sel_pages = ref, .sel_pos = ref_pos};
    int64_t wf = attnd_kernel_select_prepare(&b, &err);
    ck_assert_int_ge(wf, 0);
    b.work = malloc(sizeof(float) * (size_t)(wf + 1));
    ck_assert(use_path(ATTND_KERNEL_PATH_SCALAR));
    attnd_kernel_select(&b);
    attnd_kernel_pool *pool;
    ck_assert_int_eq(attnd_kernel_pool_create(3, &pool, &err), ATTND_OK);
    b.sel_pages = sel;
    b.sel_pos = pos;
    for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
        if (!use_path(path))
            continue;
        for (int par = 0; par < 2; par++) {
            memset(sel, 0xff, ob);
            memset(pos, 0xff, ob);
            if (par)
                ck_assert_int_eq(attnd_kernel_select_parallel(pool, &b, &err), ATTND_OK);
            else
                attnd_kernel_select(&b);
            for (int32_t j = 0; j < out; j++)
                ck_assert_msg(sel[j] == ref[j] && pos[j] == ref_pos[j],
                              "%s, path %s, %s: kept[%d] = page %d (candidate %d), the scalar "
                              "path's %d (%d)",
                              what, attnd_kernel_path_str((attnd_kernel_path)path),
                              par ? "pool" : "one thread", j, sel[j], pos[j], ref[j], ref_pos[j]);
        }
    }
    attnd_kernel_pool_destroy(pool);
    free(b.work);
    free(pos);
    free(sel);
    free(ref_pos);
    free(ref);
    free(lists);
    free(b8);
    free(bd);
    pp_free(&p);
}

START_TEST(test_selection_on_compact_bounds_keeps_the_scalar_paths_pages_on_every_path)
{
    tu_rng r;
    tu_rng_init(&r, "sparse-select-b8-paths");
    const int64_t lens[] = {3000, 130, 1, 777, 2051};
    pp_spec g = {.kind = ATTND_ATTN_GQA, .hq = 16, .hkv = 4, .head_dim = 128, .page_size = 16,
                 .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_BF16, .n_seqs = 5,
                 .lens = lens};
    check_paths_agree(&g, 4, &r, "d 128, 4 rows per kv head");
    check_paths_agree(&g, 1, &r, "d 128, one list of 4 kv heads");
    g.q_tokens = 2;
    g.q_t = ATTND_DTYPE_F32;
    check_paths_agree(&g, 2, &r, "d 128, 8 rows per kv head, 2 kv heads a list");
    g.q_tokens = 3;
    check_paths_agree(&g, 4, &r, "d 128, 12 rows per kv head");
    g.q_tokens = 1;
    g.head_dim = 64;
    check_paths_agree(&g, 4, &r, "d 64, 4 rows per kv head");
    g.head_dim = 40;
    check_paths_agree(&g, 4, &r, "d 40, 4 rows per kv head");
    g.hq = 8;
    g.head_dim = 128;
    check_paths_agree(&g, 4, &r, "d 128, 2 rows per kv head");
    g.q_tokens = 3;
    g.hq = 4;
    check_paths_agree(&g, 4, &r, "d 128, 3 rows per kv head");
    reset_path();
}
END_TEST

/* The threshold's edge cases, on every path, one thread and a pool: 40
 * pages with equal bounds tie, page 5 bounds lower, page 9 has a NaN bound
 * (scores +inf); keeping the sink page, the newest and 6 more must take
 * page 9 and then the earliest tied pages (1, 2, 3, 4, 6). */
START_TEST(test_selection_keeps_nan_bounds_and_breaks_ties_by_the_earlier_page_on_every_path)
{
    attnd_kernel_kv_layout l;
    attnd_kernel_kv_layout_gqa(&l, 1, 16, 16, ATTND_DTYPE_BF16);
    enum { NP = 40, DK = 16 };
    static uint16_t bd[NP * 2 * DK];
    int32_t cand[NP], sel[8], pos[8];
    float q[DK];
    for (int32_t p = 0; p < NP; p++) {
        cand[p] = p;
        for (int32_t d = 0; d < DK; d++) {
            bd[(p * 2) * DK + d] = attnd_dtype_f32_to_bf16(-1.0f);
            bd[(p * 2 + 1) * DK + d] = attnd_dtype_f32_to_bf16(p == 5 ? 0.5f : 1.0f);
        }
    }
    bd[(9 * 2 + 1) * DK + 3] = 0x7fc0; /* NaN */
    static uint8_t b8[NP * 48];
    ck_assert_uint_le(attnd_kernel_kv_bounds8_row(&l) * NP, sizeof b8);
    for (int32_t p = 0; p < NP; p++)
        attnd_kernel_kv_bounds8_make(&l, bd, b8, NP, p);
    for (int32_t d = 0; d < DK; d++)
        q[d] = 1.0f;
    const int32_t want[8] = {0, 1, 2, 3, 4, 6, 9, NP - 1};
    attnd_kernel_pool *pool;
    attnd_error err;
    ck_assert_int_eq(attnd_kernel_pool_create(2, &pool, &err), ATTND_OK);
    for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
        if (!use_path(path))
            continue;
        for (int par = 0; par < 4; par++) { /* one thread, pool; bf16, compact */
            attnd_kernel_select_list L = {.seq = 0, .group = 0, .cand0 = 0, .n_cand = NP,
                                          .keep = 8, .n_head = 1, .n_tail = 1};
            attnd_kernel_select_batch b = {.n_lists = 1, .lists = &L, .n_seqs = 1,
                                           .q_tokens = 1, .n_q_heads = 1, .list_groups = 1,
                                           .q_dtype = ATTND_DTYPE_F32, .q = q, .kv = &l,
                                           .bounds = bd, .bounds_pages = NP, .cand_idx = cand,
                                           .sel_pages = sel, .sel_pos = pos};
            if (par >= 2)
                b.bounds8 = b8;
            int64_t wf = attnd_kernel_select_prepare(&b, &err);
            ck_assert_int_ge(wf, 0);
            b.work = malloc(sizeof(float) * (size_t)(wf + 1));
            if (par & 1)
                ck_assert_int_eq(attnd_kernel_select_parallel(pool, &b, &err), ATTND_OK);
            else
                attnd_kernel_select(&b);
            for (int j = 0; j < 8; j++)
                ck_assert_msg(sel[j] == want[j] && pos[j] == want[j],
                              "path %s, %s, %s: kept[%d] = %d, want %d",
                              attnd_kernel_path_str((attnd_kernel_path)path),
                              par & 1 ? "pool" : "one thread", par >= 2 ? "compact" : "bf16", j,
                              sel[j], want[j]);
            free(b.work);
        }
    }
    attnd_kernel_pool_destroy(pool);
    reset_path();
}
END_TEST

START_TEST(test_head_agg_that_does_not_divide_the_heads_of_a_kv_head_is_invalid)
{
    tu_rng r;
    tu_rng_init(&r, "sparse-bad-agg");
    const int64_t lens[] = {100};
    pp_spec sp = {.kind = ATTND_ATTN_GQA, .hq = 8, .hkv = 2, .head_dim = 16,
                  .page_size = 16, .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16,
                  .q_t = ATTND_DTYPE_F32, .n_seqs = 1, .lens = lens};
    pp_problem p;
    pp_build(&p, &sp, &r);
    uint16_t *bd = build_bounds(&p);
    int32_t sel[16];
    attnd_kernel_select_list L = {.seq = 0, .group = 0, .cand0 = 0,
                                  .n_cand = p.indptr[1] - p.indptr[0], .keep = 3, .n_head = 1,
                                  .n_tail = 1};
    attnd_kernel_select_batch b = {.n_lists = 1, .lists = &L, .n_seqs = 1, .q_tokens = 1,
                                   .n_q_heads = 8, .list_groups = 1, .head_agg = 3,
                                   .q_dtype = ATTND_DTYPE_F32, .q = p.q, .kv = &p.l,
                                   .bounds = bd, .bounds_pages = p.b.pool_pages,
                                   .cand_idx = p.idx, .sel_pages = sel};
    attnd_error err;
    ck_assert_int_eq(attnd_kernel_select_prepare(&b, &err), -1);
    ck_assert_int_eq(err.code, ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "head_agg"));
    b.head_agg = 4; /* 4 divides the 4 heads of a KV head */
    ck_assert_int_gt(attnd_kernel_select_prepare(&b, &err), 0);
    free(bd);
    pp_free(&p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("kernel_sparse");
    TCase *tc = tcase_create("sparse");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_gqa_lists_per_kv_head_skipping_pages_match_f64_on_every_path_and_split);
    tcase_add_test(tc, test_mla_lists_skipping_pages_match_f64_on_every_path_and_split);
    tcase_add_test(tc, test_list_groups_that_do_not_divide_the_kv_heads_are_invalid);
    tcase_add_test(tc, test_token_lists_through_the_token_view_match_f64);
    tcase_add_test(tc, test_bounds_hold_every_stored_key_and_are_its_outward_rounded_min_and_max);
    tcase_add_test(tc, test_selection_keeps_mandatory_pages_and_the_best_scores_on_every_path);
    tcase_add_test(tc, test_selection_over_summed_heads_keeps_the_best_summed_bounds_on_every_path);
    tcase_add_test(tc, test_head_agg_that_does_not_divide_the_heads_of_a_kv_head_is_invalid);
    tcase_add_test(tc, test_selection_keeps_nan_bounds_and_breaks_ties_by_the_earlier_page_on_every_path);
    tcase_add_test(tc, test_compact_bounds_hold_the_bf16_bounds_within_one_power_of_two_step);
    tcase_add_test(tc, test_selection_on_compact_bounds_keeps_the_best_scores_on_every_path);
    tcase_add_test(tc, test_selection_on_compact_bounds_keeps_the_scalar_paths_pages_on_every_path);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
