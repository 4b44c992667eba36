/* Check suite of the kernels room: the scalar decode path against the
 * float64 reference on fresh random inputs (MLA and GQA, several head
 * counts, lengths off the page grid, bf16/f16/f32), split ranges merged
 * equal the unsplit result, and the dtype conversions round correctly.
 *
 * Bounds: the reference sees exactly the rounded values the kernel sees, so
 * what remains is float32 accumulation: normwise relative error <= 1e-5 for
 * every dtype (tighter than the 1e-2 allowed where outputs are rounded to
 * bf16), LSE within 1e-4 absolute. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_kernels.h"
#include "paged_problem.h"

static const attnd_dtype all_dtypes[] = {ATTND_DTYPE_BF16, ATTND_DTYPE_F16,
                                         ATTND_DTYPE_F32};

static void run_and_check(const pp_spec *sp, tu_rng *r, const char *what)
{
    pp_problem p;
    attnd_error err;
    double e_out, e_lse;

    pp_build(&p, sp, r);
    ck_assert_int_eq(attnd_kernel_decode_batch_check(&p.b, &err), ATTND_OK);
    attnd_kernel_decode_scalar(&p.b);
    pp_check(&p, &e_out, &e_lse);
    fprintf(stderr, "%s kv=%s q=%s hq=%d S=%d: max rel err %.3g, lse err %.3g\n", what,
            attnd_dtype_name(sp->kv_t), attnd_dtype_name(sp->q_t), sp->hq, sp->q_tokens,
            e_out, e_lse);
    ck_assert_msg(e_out <= 1e-5, "%s: rel err %g > 1e-5", what, e_out);
    ck_assert_msg(e_lse <= 1e-4, "%s: lse err %g > 1e-4", what, e_lse);
    pp_free(&p);
}

START_TEST(test_mla_decode_matches_f64_reference)
{
    tu_rng r;
    tu_rng_init(&r, "mla");
    static const int32_t heads[] = {1, 3, 16, 128};
    for (size_t d = 0; d < 3; d++)
        for (size_t h = 0; h < 4; h++) {
            int64_t lens[3] = {1, tu_int(&r, 65, 700), tu_int(&r, 2, 63)};
            if (heads[h] == 128)
                lens[1] = tu_int(&r, 65, 200);
            pp_spec sp = {.kind = ATTND_ATTN_MLA, .hq = heads[h], .d_c = 512, .d_r = 64,
                          .page_size = 64, .q_tokens = 1, .kv_t = all_dtypes[d],
                          .q_t = all_dtypes[(d + h) % 3], .n_seqs = 3, .lens = lens};
            run_and_check(&sp, &r, "mla 512+64");
        }
    /* small latent dims (a TPLA shard's shape) and odd page sizes */
    int64_t lens[2] = {tu_int(&r, 100, 1100), 17};
    pp_spec sp = {.kind = ATTND_ATTN_MLA, .hq = 9, .d_c = 128, .d_r = 64,
                  .page_size = 16, .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16,
                  .q_t = ATTND_DTYPE_F32, .n_seqs = 2, .lens = lens};
    run_and_check(&sp, &r, "mla 128+64 ps16");
}
END_TEST

START_TEST(test_gqa_decode_matches_f64_reference)
{
    tu_rng r;
    tu_rng_init(&r, "gqa");
    static const int32_t shapes[][3] = {
        {32, 8, 128}, {8, 2, 32}, {4, 4, 64} /* MHA */, {6, 1, 64} /* MQA */, {9, 3, 16}};
    for (size_t s = 0; s < 5; s++)
        for (size_t d = 0; d < 3; d++) {
            int64_t lens[3] = {tu_int(&r, 1000, 1500), tu_int(&r, 1, 63), 64};
            pp_spec sp = {.kind = ATTND_ATTN_GQA, .hq = shapes[s][0], .hkv = shapes[s][1],
                          .head_dim = shapes[s][2], .page_size = s == 4 ? 7 : 64,
                          .q_tokens = 1, .kv_t = all_dtypes[d], .q_t = all_dtypes[(d + s) % 3],
                          .n_seqs = 3, .lens = lens};
            run_and_check(&sp, &r, "gqa");
        }
}
END_TEST

START_TEST(test_multi_token_queries_are_causal_within_the_tail)
{
    tu_rng r;
    tu_rng_init(&r, "multi-token");
    int64_t lens[3] = {tu_int(&r, 100, 400), 2, 1};
    pp_spec mla = {.kind = ATTND_ATTN_MLA, .hq = 16, .d_c = 512, .d_r = 64, .page_size = 64,
                   .q_tokens = 2, .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_BF16,
                   .n_seqs = 3, .lens = lens};
    run_and_check(&mla, &r, "mla S=2");
    pp_spec gqa = {.kind = ATTND_ATTN_GQA, .hq = 8, .hkv = 2, .head_dim = 64, .page_size = 64,
                   .q_tokens = 3, .kv_t = ATTND_DTYPE_F32, .q_t = ATTND_DTYPE_F32,
                   .n_seqs = 3, .lens = lens};
    run_and_check(&gqa, &r, "gqa S=3");
}
END_TEST

START_TEST(test_empty_sequence_gives_zero_output_and_neg_inf_lse)
{
    tu_rng r;
    tu_rng_init(&r, "empty");
    int64_t lens[2] = {0, 70};
    pp_spec sp = {.kind = ATTND_ATTN_GQA, .hq = 4, .hkv = 2, .head_dim = 32, .page_size = 64,
                  .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_F32,
                  .n_seqs = 2, .lens = lens};
    pp_problem p;
    pp_build(&p, &sp, &r);
    attnd_kernel_decode_scalar(&p.b);
    for (int32_t h = 0; h < 4; h++) {
        ck_assert(isinf(p.lse[h]) && p.lse[h] < 0);
        for (int32_t e = 0; e < 32; e++)
            ck_assert(p.out[h * 32 + e] == 0.0f);
    }
    double e_out, e_lse;
    pp_check(&p, &e_out, &e_lse);
    ck_assert(e_out <= 1e-5 && e_lse <= 1e-4);
    pp_free(&p);
}
END_TEST

/* Split one sequence's tokens at random cut points, run each range, merge
 * the partial states left to right: equal to the unsplit result. */
START_TEST(test_split_ranges_merged_equal_unsplit_result)
{
    tu_rng r;
    tu_rng_init(&r, "split-merge");
    for (int kind = 0; kind < 2; kind++) {
        int64_t lens[1] = {tu_int(&r, 300, 1200)};
        pp_spec sp = {.kind = kind ? ATTND_ATTN_GQA : ATTND_ATTN_MLA, .hq = 8, .hkv = 2,
                      .head_dim = 64, .d_c = 512, .d_r = 64, .page_size = 64, .q_tokens = 1,
                      .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_F32, .n_seqs = 1,
                      .lens = lens};
        pp_problem p;
        pp_build(&p, &sp, &r);
        attnd_kernel_decode_scalar(&p.b);
        int32_t hkv = p.l.n_kv_heads, group = 8 / hkv, dv = p.l.d_v;
        float *acc_o = malloc(sizeof(float) * (size_t)group * dv);
        float *part_o = malloc(sizeof(float) * (size_t)group * dv);
        float acc_l[8], part_l[8];
        for (int32_t g = 0; g < hkv; g++) {
            int64_t cuts[6] = {0, 0, 0, 0, 0, lens[0]};
            for (int c = 1; c < 5; c++)
                cuts[c] = tu_int(&r, 0, lens[0]);
            for (int a = 1; a < 5; a++) /* sort */
                for (int c = a; c > 0 && cuts[c] < cuts[c - 1]; c--) {
                    int64_t t = cuts[c];
                    cuts[c] = cuts[c - 1];
                    cuts[c - 1] = t;
                }
            for (int32_t h = 0; h < group; h++)
                acc_l[h] = -INFINITY;
            memset(acc_o, 0, sizeof(float) * (size_t)group * dv);
            for (int c = 0; c < 5; c++) {
                attnd_kernel_decode_range_scalar(&p.b, 0, g, 0, cuts[c], cuts[c + 1], part_o,
                                                 part_l, p.work);
                attnd_kernel_merge_states(acc_o, acc_l, part_o, part_l, group, dv);
            }
            for (int32_t h = 0; h < group; h++) {
                size_t row = (size_t)g * group + h;
                ck_assert_float_eq_tol(acc_l[h], p.lse[row], 1e-5f * fabsf(p.lse[row]) + 1e-6f);
                double ref[512];
                for (int32_t e = 0; e < dv; e++)
                    ref[e] = p.out[row * dv + e];
                double err = tu_rel_err_f32(acc_o + (size_t)h * dv, ref, (size_t)dv);
                /* float32 rounding of two different summation orders over up to
                 * 1200 tokens: the same 1e-5 the f64 comparison allows */
                ck_assert_msg(err <= 1e-5, "split/merge rel err %g", err);
            }
        }
        free(acc_o);
        free(part_o);
        pp_free(&p);
    }
}
END_TEST

START_TEST(test_merge_with_empty_state_is_identity)
{
    tu_rng r;
    tu_rng_init(&r, "merge-empty");
    float o[2][16], l[2], eo[2][16], el[2] = {-INFINITY, -INFINITY};
    for (int i = 0; i < 2; i++) {
        l[i] = (float)tu_normal(&r);
        for (int e = 0; e < 16; e++) {
            o[i][e] = (float)tu_normal(&r);
            eo[i][e] = 0.0f;
        }
    }
    float keep_o[2][16], keep_l[2];
    memcpy(keep_o, o, sizeof o);
    memcpy(keep_l, l, sizeof l);
    attnd_kernel_merge_states(&o[0][0], l, &eo[0][0], el, 2, 16); /* a + empty */
    ck_assert(memcmp(o, keep_o, sizeof o) == 0 && memcmp(l, keep_l, sizeof l) == 0);
    attnd_kernel_merge_states(&eo[0][0], el, &o[0][0], l, 2, 16); /* empty + a */
    ck_assert(memcmp(eo, keep_o, sizeof o) == 0 && memcmp(el, keep_l, sizeof l) == 0);
}
END_TEST

/* The nearest representable neighbour test: y = round(x) must be at least
 * as close to x as the codes one above and one below. */
START_TEST(test_bf16_and_f16_round_to_nearest_even)
{
    tu_rng r;
    tu_rng_init(&r, "convert");
    for (int i = 0; i < 200000; i++) {
        float x = (float)(tu_normal(&r) * pow(2.0, (double)tu_int(&r, -30, 15)));
        uint16_t b = attnd_dtype_f32_to_bf16(x), f = attnd_dtype_f32_to_f16(x);
        double db = fabs((double)attnd_dtype_bf16_to_f32(b) - x);
        double df = fabs((double)attnd_dtype_f16_to_f32(f) - x);
        for (int d = -1; d <= 1; d += 2) {
            uint16_t nb = (uint16_t)(b + d), nf = (uint16_t)(f + d);
            if ((nb & 0x7f80) != 0x7f80)
                ck_assert_msg(db <= fabs((double)attnd_dtype_bf16_to_f32(nb) - x),
                              "bf16 not nearest for %a", (double)x);
            if ((nf & 0x7c00) != 0x7c00 && (f & 0x7c00) != 0x7c00)
                ck_assert_msg(df <= fabs((double)attnd_dtype_f16_to_f32(nf) - x),
                              "f16 not nearest for %a", (double)x);
        }
    }
    /* ties go to even; specials survive */
    ck_assert_uint_eq(attnd_dtype_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);           /* tie, even down */
    ck_assert_uint_eq(attnd_dtype_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);       /* tie, even up */
    ck_assert_uint_eq(attnd_dtype_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
    ck_assert_uint_eq(attnd_dtype_f32_to_f16(65520.0f), 0x7c00);                  /* overflow */
    ck_assert_uint_eq(attnd_dtype_f32_to_f16(0x1p-24f), 0x0001);                  /* min subnormal */
    ck_assert(attnd_dtype_f16_to_f32(0x0001) == 0x1p-24f);
    ck_assert(isnan(attnd_dtype_bf16_to_f32(attnd_dtype_f32_to_bf16(NAN))));
    ck_assert(isnan(attnd_dtype_f16_to_f32(attnd_dtype_f32_to_f16(NAN))));
    ck_assert(isinf(attnd_dtype_f16_to_f32(attnd_dtype_f32_to_f16(-INFINITY))));
    for (uint32_t h = 0; h < 0x7c00; h++) /* every finite f16 round-trips */
        ck_assert_uint_eq(attnd_dtype_f32_to_f16(attnd_dtype_f16_to_f32((uint16_t)h)), h);
}
END_TEST

/* The bulk conversions (vectorized, cloned per ISA) equal the scalar ones
 * bit for bit on random bit patterns (NaN, Inf, subnormals included), for
 * every dtype pair and misaligned buffers. */
START_TEST(test_bulk_convert_matches_scalar)
{
    enum { N = 4099 };
    static const attnd_dtype ts[3] = {ATTND_DTYPE_BF16, ATTND_DTYPE_F16, ATTND_DTYPE_F32};
    static unsigned char src[N * 4 + 8], dst[N * 4 + 8], want[N * 4];
    tu_rng r;
    tu_rng_init(&r, "bulk-convert");
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (unsigned char)tu_next(&r);
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            for (int off = 0; off < 3; off++) {
                attnd_dtype st = ts[a], dt = ts[b];
                size_t es = attnd_dtype_size(dt);
                for (size_t i = 0; i < N; i++) {
                    float x;
                    if (st == ATTND_DTYPE_F32) {
                        memcpy(&x, src + off + 4 * i, 4);
                    } else {
                        uint16_t h;
                        memcpy(&h, src + off + 2 * i, 2);
                        x = st == ATTND_DTYPE_BF16 ? attnd_dtype_bf16_to_f32(h) : attnd_dtype_f16_to_f32(h);
                    }
                    if (dt == ATTND_DTYPE_F32) {
                        memcpy(want + 4 * i, &x, 4);
                    } else if (st == dt) {
                        memcpy(want + es * i, src + off + es * i, es);
                    } else {
                        uint16_t h = dt == ATTND_DTYPE_BF16 ? attnd_dtype_f32_to_bf16(x) : attnd_dtype_f32_to_f16(x);
                        memcpy(want + 2 * i, &h, 2);
                    }
                }
                attnd_dtype_convert(dt, dst + 1 + off, st, src + off, N);
                for (size_t i = 0; i < N; i++)
                    ck_assert_msg(memcmp(dst + 1 + off + es * i, want + es * i, es) == 0,
                                  "convert %d->%d off %d: element %zu differs", (int)st, (int)dt,
                                  off, i);
            }
}
END_TEST

START_TEST(test_batch_check_rejects_bad_page_lists)
{
    tu_rng r;
    tu_rng_init(&r, "check");
    int64_t lens[2] = {100, 30};
    pp_spec sp = {.kind = ATTND_ATTN_MLA, .hq = 4, .d_c = 64, .d_r = 16, .page_size = 64,
                  .q_tokens = 1, .kv_t = ATTND_DTYPE_BF16, .q_t = ATTND_DTYPE_BF16,
                  .n_seqs = 2, .lens = lens};
    pp_problem p;
    attnd_error err;
    pp_build(&p, &sp, &r);
    ck_assert_int_eq(attnd_kernel_decode_batch_check(&p.b, &err), ATTND_OK);

    int32_t keep = p.idx[1];
    p.idx[1] = (int32_t)p.b.pool_pages;
    ck_assert_int_eq(attnd_kernel_decode_batch_check(&p.b, &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "page_idx[1]"));
    p.idx[1] = keep;

    p.last[0] = 65;
    ck_assert_int_eq(attnd_kernel_decode_batch_check(&p.b, &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "last_page_len[0]"));
    p.last[0] = 36;

    p.b.n_q_heads = 3;
    p.l.n_kv_heads = 2;
    ck_assert_int_eq(attnd_kernel_decode_batch_check(&p.b, &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "n_q_heads"));
    pp_free(&p);
}
END_TEST

/* Tokens written through attnd_kernel_kv_write_tokens are found where the layout's
 * stride formula says, for both kinds. */
START_TEST(test_layout_places_tokens_where_the_strides_say)
{
    tu_rng r;
    tu_rng_init(&r, "layout");
    attnd_kernel_kv_layout ls[2];
    attnd_kernel_kv_layout_mla(&ls[0], 24, 8, 16, ATTND_DTYPE_F32);
    attnd_kernel_kv_layout_gqa(&ls[1], 3, 8, 16, ATTND_DTYPE_F32);
    for (int k = 0; k < 2; k++) {
        const attnd_kernel_kv_layout *l = &ls[k];
        int64_t entry = attnd_kernel_kv_layout_token_elems(l);
        float *page = calloc((size_t)l->page_stride, sizeof(float));
        float *src = malloc(sizeof(float) * (size_t)entry * 5);
        for (int64_t i = 0; i < entry * 5; i++)
            src[i] = (float)tu_normal(&r);
        attnd_kernel_kv_write_tokens(l, page, 7, 5, ATTND_DTYPE_F32, src);
        for (int t = 0; t < 5; t++)
            for (int h = 0; h < l->n_kv_heads; h++) {
                for (int d = 0; d < l->d_k; d++)
                    ck_assert(page[h * l->k_head_stride + (7 + t) * l->k_token_stride + d] ==
                              src[t * entry + h * l->d_k + d]);
                for (int e = 0; e < l->d_v; e++) {
                    int64_t wire = l->v_in_k ? h * l->d_k + e
                                             : l->n_kv_heads * l->d_k + h * l->d_v + e;
                    ck_assert(page[l->v_offset + h * l->v_head_stride +
                                   (7 + t) * l->v_token_stride + e] == src[t * entry + wire]);
                }
            }
        ck_assert_uint_eq(attnd_kernel_kv_layout_page_bytes(l),
                          (size_t)(k ? 2 * 3 * 16 * 8 : 16 * 32) * sizeof(float));
        free(page);
        free(src);
    }
}
END_TEST

static Suite *kernels_suite(void)
{
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("scalar");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_mla_decode_matches_f64_reference);
    tcase_add_test(tc, test_gqa_decode_matches_f64_reference);
    tcase_add_test(tc, test_multi_token_queries_are_causal_within_the_tail);
    tcase_add_test(tc, test_empty_sequence_gives_zero_output_and_neg_inf_lse);
    tcase_add_test(tc, test_split_ranges_merged_equal_unsplit_result);
    tcase_add_test(tc, test_merge_with_empty_state_is_identity);
    tcase_add_test(tc, test_bf16_and_f16_round_to_nearest_even);
    tcase_add_test(tc, test_bulk_convert_matches_scalar);
    tcase_add_test(tc, test_batch_check_rejects_bad_page_lists);
    tcase_add_test(tc, test_layout_places_tokens_where_the_strides_say);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(kernels_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
