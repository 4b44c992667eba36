/* Check suite of the kernel paths: every dispatch path this CPU can run
 * (forced through ATTND_KERNEL_PATH, as a user would) against the float64
 * reference on fresh random paged problems, and the threaded split-KV run
 * against itself for every split count the planner can choose.
 *
 * Paths the CPU lacks are skipped one by one, with a note; the program
 * returns 77 (skipped) only if no path could run at all. The float32 SIMD
 * paths widen bf16/f16 exactly and compute in float32, so they are held to
 * the same bounds as the scalar path: normwise relative error <= 1e-5, LSE
 * within 1e-4 absolute. avx512bf16 rounds P to bf16 for P V on bf16 KV: its
 * outputs there are held to the bf16 bound of the GPU kernels' tests
 * (1e-2 normwise), its LSE (float32 sums, q kept exact) to the same 1e-4;
 * on other KV it is the avx512 unit, held to 1e-5. Split counts forced to
 * 1, 2, 7 and max (and auto) agree with the unsplit result within float32
 * rounding (1e-5 normwise, on every path: avx512bf16 rounds P relative to
 * each tile's own max) and repeat bit for bit. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_kernels.h"
#include "paged_problem.h"

static const attnd_dtype dtypes[] = {ATTND_DTYPE_BF16, ATTND_DTYPE_F16, ATTND_DTYPE_F32};

/* Force path p through the environment; 0 if this CPU cannot run it. */
static int use_path(attnd_kernel_path p)
{
    setenv("ATTND_KERNEL_PATH", attnd_kernel_path_str(p), 1);
    attnd_kernel_path got = attnd_kernel_path_reset();
    if (!attnd_kernel_path_supported(p)) {
        ck_assert_int_eq(got, ATTND_KERNEL_PATH_SCALAR); /* falls back */
        return 0;
    }
    ck_assert_int_eq(got, p);
    ck_assert_str_eq(attnd_kernel_path_name(), attnd_kernel_path_str(p));
    return 1;
}

static void poison_outputs(pp_problem *p)
{
    size_t rows = (size_t)p->sp.n_seqs * p->sp.q_tokens * p->sp.hq;
    for (size_t j = 0; j < rows * (size_t)p->l.d_v; j++)
        p->out[j] = NAN;
    for (size_t j = 0; j < rows; j++)
        p->lse[j] = NAN;
}

/* The f64 bounds of path p on KV of dtype kv (see the file comment). */
static double out_bound(int p, attnd_dtype kv)
{
    return p == ATTND_KERNEL_PATH_AVX512_BF16 && kv == ATTND_DTYPE_BF16 ? 1e-2 : 1e-5;
}

/* Single-threaded decode on every runnable path, checked against f64. */
static void check_all_paths(const pp_spec *sp, tu_rng *r, const char *what)
{
    pp_problem p;
    attnd_error err;

    pp_build(&p, sp, r);
    ck_assert_int_eq(attnd_kernel_decode_batch_check(&p.b, &err), ATTND_OK);
    for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
        if (!use_path((attnd_kernel_path)path))
            continue;
        double e_out, e_lse;
        poison_outputs(&p);
        attnd_kernel_decode(&p.b);
        pp_check(&p, &e_out, &e_lse);
        fprintf(stderr, "%-7s %s kv=%s q=%s hq=%d hkv=%d S=%d: rel err %.3g, lse err %.3g\n",
                attnd_kernel_path_str((attnd_kernel_path)path), what,
                attnd_dtype_name(sp->kv_t), attnd_dtype_name(sp->q_t), sp->hq,
                p.l.n_kv_heads, sp->q_tokens, e_out, e_lse);
        ck_assert_msg(e_out <= out_bound(path, sp->kv_t), "%s %s: rel err %g > %g",
                      attnd_kernel_path_str((attnd_kernel_path)path), what, e_out,
                      out_bound(path, sp->kv_t));
        ck_assert_msg(e_lse <= 1e-4, "%s %s: lse err %g > 1e-4",
                      attnd_kernel_path_str((attnd_kernel_path)path), what, e_lse);
    }
    pp_free(&p);
}

START_TEST(test_every_path_matches_f64_reference_for_mla)
{
    tu_rng r;
    tu_rng_init(&r, "paths-mla");
    static const int32_t heads[] = {1, 3, 8, 16, 128};
    for (size_t h = 0; h < 5; h++)
        for (int32_t S = 1; S <= 2; S++) {
            size_t d = (h + (size_t)S) % 3;
            int64_t lens[3] = {tu_int(&r, 1, 2), tu_int(&r, 65, heads[h] == 128 ? 300 : 700),
                               tu_int(&r, 2, 63)};
            pp_spec sp = {.kind = ATTND_ATTN_MLA, .hq = heads[h], .d_c = 512, .d_r = 64,
                          .page_size = 64, .q_tokens = S, .kv_t = dtypes[d],
                          .q_t = dtypes[(d + h) % 3], .n_seqs = 3, .lens = lens};
            check_all_paths(&sp, &r, "mla 512+64");
        }
    /* a TPLA shard's latent width and a page size off every vector width */
    int64_t lens[2] = {tu_int(&r, 100, 1100), 17};
    pp_spec sp = {.kind = ATTND_ATTN_MLA, .hq = 16, .d_c = 128, .d_r = 64, .page_size = 13,
                  .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_F32,
                  .n_seqs = 2, .lens = lens};
    check_all_paths(&sp, &r, "mla 128+64 ps13");
    /* dims that are not multiples of the vector width */
    int64_t lens2[2] = {tu_int(&r, 30, 300), 5};
    pp_spec odd = {.kind = ATTND_ATTN_MLA, .hq = 20, .d_c = 40, .d_r = 9, .page_size = 16,
                   .q_tokens = 2, .kv_t = ATTND_DTYPE_F16, .q_t = ATTND_DTYPE_BF16,
                   .n_seqs = 2, .lens = lens2};
    check_all_paths(&odd, &r, "mla 40+9");
}
END_TEST

START_TEST(test_every_path_matches_f64_reference_for_gqa)
{
    tu_rng r;
    tu_rng_init(&r, "paths-gqa");
    /* hq, hkv, head dim: llama GQA, small GQA, MHA, MQA, odd ratio and dim,
     * one query head, and groups wide enough for the row-vector scores */
    static const int32_t shapes[][3] = {{32, 8, 128}, {8, 2, 32}, {4, 4, 64}, {6, 1, 64},
                                        {9, 3, 20},   {1, 1, 128}, {16, 1, 128}, {128, 2, 64},
                                        {24, 3, 48}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int32_t S = 1; S <= 2; S++) {
            size_t d = (s + (size_t)S) % 3;
            int64_t lens[3] = {tu_int(&r, 200, 1500), tu_int(&r, 1, 63), 64};
            pp_spec sp = {.kind = ATTND_ATTN_GQA, .hq = shapes[s][0], .hkv = shapes[s][1],
                          .head_dim = shapes[s][2], .page_size = s == 4 ? 7 : 64,
                          .q_tokens = S, .kv_t = dtypes[d], .q_t = dtypes[(d + s) % 3],
                          .n_seqs = 3, .lens = lens};
            check_all_paths(&sp, &r, "gqa");
        }
    /* bf16 KV with whole vector chunks and few rows per KV head: the paths
     * that read V straight from the pool (R = S * G of 1 to 4), S = 1, 2 */
    static const int32_t bf[][4] = {{32, 8, 128, 1}, {8, 4, 64, 2}, {12, 4, 128, 1},
                                    {2, 2, 256, 2}};
    for (size_t s = 0; s < sizeof bf / sizeof bf[0]; s++) {
        int64_t lens[3] = {tu_int(&r, 300, 1300), tu_int(&r, 1, 40), 16};
        pp_spec sp = {.kind = ATTND_ATTN_GQA, .hq = bf[s][0], .hkv = bf[s][1],
                      .head_dim = bf[s][2], .page_size = s % 2 ? 16 : 64,
                      .q_tokens = bf[s][3], .kv_t = ATTND_DTYPE_BF16,
                      .q_t = dtypes[s % 3], .n_seqs = 3, .lens = lens};
        check_all_paths(&sp, &r, "gqa bf16");
    }
}
END_TEST

/* Rows that see no token (an empty sequence; a 1-token sequence's first
 * query token when S = 2) give out 0 and lse -inf on every path. */
START_TEST(test_rows_without_tokens_are_empty_states_on_every_path)
{
    tu_rng r;
    tu_rng_init(&r, "paths-empty");
    int64_t lens[3] = {0, 1, 40};
    for (int kind = 0; kind < 2; kind++) {
        pp_spec sp = {.kind = kind ? ATTND_ATTN_GQA : ATTND_ATTN_MLA, .hq = 16, .hkv = 4,
                      .head_dim = 64, .d_c = 64, .d_r = 16, .page_size = 16, .q_tokens = 2,
                      .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_F32, .n_seqs = 3,
                      .lens = lens};
        pp_problem p;
        pp_build(&p, &sp, &r);
        int32_t dv = p.l.d_v;
        for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
            if (!use_path((attnd_kernel_path)path))
                continue;
            poison_outputs(&p);
            attnd_kernel_decode(&p.b);
            /* seq 0: both query tokens; seq 1: query token 0 */
            for (int32_t row = 0; row < 3 * 16; row++) {
                ck_assert(isinf(p.lse[row]) && p.lse[row] < 0);
                for (int32_t e = 0; e < dv; e++)
                    ck_assert(p.out[(size_t)row * dv + e] == 0.0f);
            }
            double e_out, e_lse;
            pp_check(&p, &e_out, &e_lse);
            ck_assert(e_out <= out_bound(path, sp.kv_t) && e_lse <= 1e-4);
        }
        pp_free(&p);
    }
}
END_TEST

/* Forced split counts cut every pair into min(k, tiles) ranges of whole
 * tiles that cover its listed tokens in order; auto with one thread does
 * not split. */
START_TEST(test_plan_cuts_pairs_into_ordered_tile_ranges)
{
    tu_rng r;
    tu_rng_init(&r, "plan");
    int64_t lens[4] = {tu_int(&r, 500, 3000), 1, 0, tu_int(&r, 17, 200)}; /* <= 188 tiles */
    pp_spec sp = {.kind = ATTND_ATTN_GQA, .hq = 8, .hkv = 2, .head_dim = 16, .page_size = 64,
                  .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_BF16,
                  .n_seqs = 4, .lens = lens};
    pp_problem p;
    attnd_kernel_decode_plan plan;
    attnd_error err;
    pp_build(&p, &sp, &r);
    attnd_kernel_decode_plan_init(&plan);
    static const int32_t splits[] = {1, 2, 7, ATTND_KERNEL_DECODE_SPLITS_MAX};
    for (int k = 0; k < 4; k++) {
        attnd_kernel_decode_plan_opts o = {.n_threads = 3, .splits = splits[k]};
        ck_assert_int_eq(attnd_kernel_decode_plan_make(&plan, &p.b, &o, &err), ATTND_OK);
        for (int32_t i = 0; i < 4; i++)
            for (int32_t h = 0; h < 2; h++) {
                int64_t tiles = (lens[i] + ATTND_KERNEL_DECODE_TILE - 1) / ATTND_KERNEL_DECODE_TILE;
                int64_t want = splits[k] < 0 ? tiles : splits[k] < tiles ? splits[k] : tiles;
                want = want < 1 ? 1 : want;
                /* this pair's units, in range order */
                const attnd_kernel_decode_unit *mine[512];
                int32_t got = 0;
                for (int32_t u = 0; u < plan.n_units; u++)
                    if (plan.units[u].seq == i && plan.units[u].kv_head == h)
                        mine[got++] = &plan.units[u];
                ck_assert_int_eq(got, want);
                for (int32_t a = 1; a < got; a++) /* insertion sort by t0 */
                    for (int32_t c = a; c > 0 && mine[c]->t0 < mine[c - 1]->t0; c--) {
                        const attnd_kernel_decode_unit *t = mine[c];
                        mine[c] = mine[c - 1];
                        mine[c - 1] = t;
                    }
                int64_t end = 0;
                for (int32_t j = 0; j < got; j++) {
                    ck_assert_int_eq(mine[j]->t0, end);
                    ck_assert(mine[j]->t0 % ATTND_KERNEL_DECODE_TILE == 0);
                    ck_assert(mine[j]->t1 > mine[j]->t0 || lens[i] == 0);
                    end = mine[j]->t1;
                    if (got == 1) {
                        ck_assert_int_eq(mine[j]->group, -1);
                    } else {
                        const attnd_kernel_decode_group *g = &plan.groups[mine[j]->group];
                        ck_assert(g->seq == i && g->kv_head == h && g->n_parts == got);
                        ck_assert_int_eq(mine[j]->part, g->first_part + j);
                    }
                }
                ck_assert_int_eq(end, lens[i]);
            }
    }
    attnd_kernel_decode_plan_opts one = {.n_threads = 1, .splits = ATTND_KERNEL_DECODE_SPLITS_AUTO};
    ck_assert_int_eq(attnd_kernel_decode_plan_make(&plan, &p.b, &one, &err), ATTND_OK);
    ck_assert_int_eq(plan.n_units, 8);
    ck_assert_int_eq(plan.n_groups, 0);
    attnd_kernel_decode_plan_opts bad = {.n_threads = 0, .splits = 0};
    ck_assert_int_eq(attnd_kernel_decode_plan_make(&plan, &p.b, &bad, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    attnd_kernel_decode_plan_cleanup(&plan);
    pp_free(&p);
}
END_TEST

/* Threaded split-KV on every path: forced 1, 2, 7, max and auto agree with
 * the unsplit result within float32 rounding, with the f64 reference, and
 * a repeated run is bit-identical. */
static void check_splits(const pp_spec *sp, tu_rng *r, attnd_kernel_pool *pool, const char *what)
{
    pp_problem p;
    attnd_kernel_decode_plan plan;
    attnd_error err;
    static const int32_t splits[] = {1, 2, 7, ATTND_KERNEL_DECODE_SPLITS_MAX,
                                     ATTND_KERNEL_DECODE_SPLITS_AUTO};

    pp_build(&p, sp, r);
    attnd_kernel_decode_plan_init(&plan);
    size_t rows = (size_t)sp->n_seqs * sp->q_tokens * sp->hq, dv = (size_t)p.l.d_v;
    float *base = malloc(sizeof(float) * rows * dv), *again = malloc(sizeof(float) * rows * dv);
    float *base_lse = malloc(sizeof(float) * rows);
    for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
        if (!use_path((attnd_kernel_path)path))
            continue;
        for (int k = 0; k < 5; k++) {
            attnd_kernel_decode_plan_opts o = {.n_threads = attnd_kernel_pool_threads(pool),
                                               .splits = splits[k]};
            ck_assert_int_eq(attnd_kernel_decode_plan_make(&plan, &p.b, &o, &err), ATTND_OK);
            poison_outputs(&p);
            ck_assert_int_eq(attnd_kernel_decode_run(pool, &plan, &p.b, &err), ATTND_OK);
            double e_out, e_lse;
            pp_check(&p, &e_out, &e_lse);
            ck_assert_msg(e_out <= out_bound(path, sp->kv_t) && e_lse <= 1e-4,
                          "%s %s splits %d: %g %g",
                          attnd_kernel_path_str((attnd_kernel_path)path), what, splits[k],
                          e_out, e_lse);
            if (k == 0) {
                memcpy(base, p.out, sizeof(float) * rows * dv);
                memcpy(base_lse, p.lse, sizeof(float) * rows);
                continue;
            }
            double worst = 0.0, worst_lse = 0.0;
            double *ref = malloc(sizeof(double) * dv);
            for (size_t row = 0; row < rows; row++) {
                for (size_t e = 0; e < dv; e++)
                    ref[e] = base[row * dv + e];
                double er = tu_rel_err_f32(p.out + row * dv, ref, dv);
                worst = er > worst ? er : worst;
                double le = isinf(base_lse[row]) ? (p.lse[row] == base_lse[row] ? 0 : INFINITY)
                                                 : fabs(p.lse[row] - base_lse[row]);
                worst_lse = le > worst_lse ? le : worst_lse;
            }
            free(ref);
            fprintf(stderr, "%-7s %s splits %2d (%3d units): vs unsplit %.3g, lse %.3g\n",
                    attnd_kernel_path_str((attnd_kernel_path)path), what, splits[k],
                    plan.n_units, worst, worst_lse);
            ck_assert_msg(worst <= 1e-5, "splits %d: %g from unsplit", splits[k], worst);
            ck_assert_msg(worst_lse <= 2e-5, "splits %d: lse %g from unsplit", splits[k],
                          worst_lse);
            /* the same plan again: bit for bit */
            memcpy(again, p.out, sizeof(float) * rows * dv);
            poison_outputs(&p);
            ck_assert_int_eq(attnd_kernel_decode_run(pool, &plan, &p.b, &err), ATTND_OK);
            ck_assert(memcmp(again, p.out, sizeof(float) * rows * dv) == 0);
        }
    }
    free(base);
    free(again);
    free(base_lse);
    attnd_kernel_decode_plan_cleanup(&plan);
    pp_free(&p);
}

START_TEST(test_split_counts_agree_within_f32_rounding_on_every_path)
{
    tu_rng r;
    tu_rng_init(&r, "paths-splits");
    attnd_kernel_pool *pool;
    attnd_error err;
    ck_assert_int_eq(attnd_kernel_pool_create(3, &pool, &err), ATTND_OK);
    int64_t lens[3] = {tu_int(&r, 600, 2000), tu_int(&r, 1, 40), tu_int(&r, 100, 300)};
    pp_spec mla = {.kind = ATTND_ATTN_MLA, .hq = 16, .d_c = 512, .d_r = 64, .page_size = 64,
                   .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_BF16,
                   .n_seqs = 3, .lens = lens};
    check_splits(&mla, &r, pool, "mla h16");
    pp_spec gqa = {.kind = ATTND_ATTN_GQA, .hq = 8, .hkv = 2, .head_dim = 128, .page_size = 16,
                   .q_tokens = 2, .kv_t = ATTND_DTYPE_F16, .q_t = ATTND_DTYPE_F32, .n_seqs = 3,
                   .lens = lens};
    check_splits(&gqa, &r, pool, "gqa 8/2 S=2");
    pp_spec gqa_bf = {.kind = ATTND_ATTN_GQA, .hq = 8, .hkv = 4, .head_dim = 128,
                      .page_size = 64, .q_tokens = 2, .kv_t = ATTND_DTYPE_BF16,
                      .q_t = ATTND_DTYPE_BF16, .n_seqs = 3, .lens = lens};
    check_splits(&gqa_bf, &r, pool, "gqa 8/4 bf16 S=2");
    attnd_kernel_pool_destroy(pool);
}
END_TEST

/* The pool-owned plan path (what the engine calls) equals the
 * single-threaded decode, for a pool of one and of several threads. */
START_TEST(test_parallel_decode_matches_single_thread_decode)
{
    tu_rng r;
    tu_rng_init(&r, "paths-parallel");
    int64_t lens[5] = {tu_int(&r, 1000, 3000), 3, tu_int(&r, 64, 129), 0, 700};
    pp_spec sp = {.kind = ATTND_ATTN_MLA, .hq = 128, .d_c = 512, .d_r = 64, .page_size = 64,
                  .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_BF16,
                  .n_seqs = 5, .lens = lens};
    pp_problem p;
    attnd_error err;
    pp_build(&p, &sp, &r);
    size_t n = (size_t)5 * 128 * 512;
    float *single = malloc(sizeof(float) * n);
    for (int threads = 1; threads <= 4; threads += 3) {
        attnd_kernel_pool *pool;
        ck_assert_int_eq(attnd_kernel_pool_create(threads, &pool, &err), ATTND_OK);
        ck_assert_int_eq(attnd_kernel_pool_threads(pool), threads);
        for (int path = 0; path < ATTND_KERNEL_PATH_COUNT; path++) {
            if (!use_path((attnd_kernel_path)path))
                continue;
            attnd_kernel_decode(&p.b);
            memcpy(single, p.out, sizeof(float) * n);
            poison_outputs(&p);
            ck_assert_int_eq(attnd_kernel_decode_parallel(pool, &p.b, &err), ATTND_OK);
            double e_out, e_lse;
            pp_check(&p, &e_out, &e_lse);
            ck_assert(e_out <= out_bound(path, sp.kv_t) && e_lse <= 1e-4);
            double ref[512], worst = 0.0;
            for (size_t row = 0; row < (size_t)5 * 128; row++) {
                for (int e = 0; e < 512; e++)
                    ref[e] = single[row * 512 + e];
                double er = tu_rel_err_f32(p.out + row * 512, ref, 512);
                worst = er > worst ? er : worst;
            }
            ck_assert_msg(worst <= 1e-5, "parallel vs single: %g", worst);
        }
        attnd_kernel_pool_destroy(pool);
    }
    free(single);
    pp_free(&p);
}
END_TEST

START_TEST(test_unknown_path_name_falls_back_to_scalar)
{
    setenv("ATTND_KERNEL_PATH", "sse9", 1);
    ck_assert_int_eq(attnd_kernel_path_reset(), ATTND_KERNEL_PATH_SCALAR);
    ck_assert_str_eq(attnd_kernel_path_name(), "scalar");
    ck_assert_str_eq(attnd_kernel_path_str(ATTND_KERNEL_PATH_COUNT), "?");
}
END_TEST

/* Unset (or "auto"): the widest float32 path this CPU runs, or avx512bf16
 * where the calibration found vdpbf16ps faster (which of the two is the
 * host's business; both must be runnable and the choice stable). */
START_TEST(test_default_path_is_the_widest_float32_path_or_the_calibrated_bf16_one)
{
    unsetenv("ATTND_KERNEL_PATH");
    attnd_kernel_path best = attnd_kernel_path_reset();
    attnd_kernel_path widest = ATTND_KERNEL_PATH_SCALAR;
    for (int p = ATTND_KERNEL_PATH_AVX512; p > 0; p--)
        if (attnd_kernel_path_supported((attnd_kernel_path)p)) {
            widest = (attnd_kernel_path)p;
            break;
        }
    ck_assert(attnd_kernel_path_supported(best));
    ck_assert_msg(best == widest || best == ATTND_KERNEL_PATH_AVX512_BF16, "default %s",
                  attnd_kernel_path_str(best));
    setenv("ATTND_KERNEL_PATH", "auto", 1);
    ck_assert_int_eq(attnd_kernel_path_reset(), best);
    ck_assert_int_eq(attnd_kernel_path_reset(), best);
    char line[256];
    attnd_kernel_path_describe(line, sizeof line);
    ck_assert_msg(strncmp(line, attnd_kernel_path_str(best), strlen(attnd_kernel_path_str(best))) == 0,
                  "%s", line);
    unsetenv("ATTND_KERNEL_PATH");
}
END_TEST

/* attnd_kernel_path_select (--kernel-path): a runnable name wins over the
 * environment, "auto" is the default choice, "exact" the widest float32
 * path, an unknown name is
 * INVALID_ARGUMENT naming the name and changes nothing, and reset drops
 * the selection. */
START_TEST(test_selecting_a_path_overrides_the_environment_and_rejects_unknown_names)
{
    attnd_error err;
    unsetenv("ATTND_KERNEL_PATH");
    attnd_kernel_path best = attnd_kernel_path_reset();
    setenv("ATTND_KERNEL_PATH", "scalar", 1);
    for (int p = 0; p < ATTND_KERNEL_PATH_COUNT; p++) {
        const char *name = attnd_kernel_path_str((attnd_kernel_path)p);
        attnd_status st = attnd_kernel_path_select(name, &err);
        if (!attnd_kernel_path_supported((attnd_kernel_path)p)) {
            ck_assert_int_eq(st, ATTND_ERR_INVALID_ARGUMENT);
            ck_assert_ptr_nonnull(strstr(err.msg, name));
            continue;
        }
        ck_assert_int_eq(st, ATTND_OK);
        ck_assert_int_eq(attnd_kernel_path_current(), p);
    }
    ck_assert_int_eq(attnd_kernel_path_select("auto", &err), ATTND_OK);
    ck_assert_int_eq(attnd_kernel_path_current(), best);
    attnd_kernel_path widest = ATTND_KERNEL_PATH_SCALAR; /* "exact": float32 throughout */
    for (int p = ATTND_KERNEL_PATH_AVX512; p > 0 && !widest; p--)
        if (attnd_kernel_path_supported((attnd_kernel_path)p))
            widest = (attnd_kernel_path)p;
    ck_assert_int_eq(attnd_kernel_path_select("exact", &err), ATTND_OK);
    ck_assert_int_eq(attnd_kernel_path_current(), widest);
    ck_assert_int_eq(attnd_kernel_path_select("auto", &err), ATTND_OK);
    ck_assert_int_eq(attnd_kernel_path_select("avx1024", &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "avx1024"));
    ck_assert_int_eq(attnd_kernel_path_current(), best);
    ck_assert_int_eq(attnd_kernel_path_reset(), ATTND_KERNEL_PATH_SCALAR); /* the env again */
    unsetenv("ATTND_KERNEL_PATH");
    attnd_kernel_path_reset();
}
END_TEST

static Suite *paths_suite(void)
{
    Suite *s = suite_create("kernel_paths");
    TCase *tc = tcase_create("paths");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_every_path_matches_f64_reference_for_mla);
    tcase_add_test(tc, test_every_path_matches_f64_reference_for_gqa);
    tcase_add_test(tc, test_rows_without_tokens_are_empty_states_on_every_path);
    tcase_add_test(tc, test_plan_cuts_pairs_into_ordered_tile_ranges);
    tcase_add_test(tc, test_split_counts_agree_within_f32_rounding_on_every_path);
    tcase_add_test(tc, test_parallel_decode_matches_single_thread_decode);
    tcase_add_test(tc, test_unknown_path_name_falls_back_to_scalar);
    tcase_add_test(tc, test_default_path_is_the_widest_float32_path_or_the_calibrated_bf16_one);
    tcase_add_test(tc, test_selecting_a_path_overrides_the_environment_and_rejects_unknown_names);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    int runnable = 0;
    for (int p = 0; p < ATTND_KERNEL_PATH_COUNT; p++) {
        int ok = attnd_kernel_path_supported((attnd_kernel_path)p);
        runnable += ok;
        fprintf(stderr, "kernel path %-7s %s\n", attnd_kernel_path_str((attnd_kernel_path)p),
                ok ? "runs here" : "SKIPPED: this CPU lacks it");
    }
    if (!runnable)
        return 77;
    SRunner *sr = srunner_create(paths_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
