/* Check suite of the narrow MLA wire through libattnd against a real
 * attnd (lone worker; the worker-group suites are in tests/group):
 * LoadWeights of W_UK and W_UV (attnd_client_load_mla_weights), then
 * Attend with q_form ATTND_Q_HEADS -- q [B, S, Hq, d_nope + d_rope], out
 * [B, S, Hq, d_v] -- unary, async and over an AttendStream, with new KV,
 * positions and LSE, every (sequence, token, head) row against the float64
 * reference of the narrow formula (attnd_refcheck_token_heads: absorb with
 * W_UK, attend over the mirrored KV, up-project with W_UV); up_project with
 * an absorbed query; and the refusals, each naming its field, with nothing
 * appended. Registered twice: over gRPC (test_client_narrow) and with
 * Attend over UCX (test_ucx_narrow, ATTND_TEST_TRANSPORT=ucx).
 *
 * tiny-mla: 8 heads, d_c 64, d_rope 16; here d_nope 24 and d_v 20 (all
 * distinct, so a mixed-up axis fails a shape check). Bounds: cu_bound of
 * the output dtype (float32 1e-5, bf16 1e-2), LSE CU_LSE_BOUND. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client_narrow.h"

enum { DN = 24, DVO = 20, B = 3 };

static void check_bounds(const cu_seqs *s, const attnd_refcheck_result *res, const char *what)
{
    fprintf(stderr, "%s (%s): %llu rows, max rel err %.3g, lse %.3g\n", what,
            attnd_dtype_name(s->dt), (unsigned long long)res->rows, res->max_err,
            res->max_lse_err);
    ck_assert_uint_gt(res->rows, 0);
    ck_assert_msg(res->max_err <= cu_bound(s->dt), "%s: rel err %g", what, res->max_err);
    ck_assert_msg(res->max_lse_err <= CU_LSE_BOUND, "%s: lse err %g", what, res->max_lse_err);
}

static void run_heads(attnd_dtype dt)
{
    attnd_client *c = cu_must_connect();
    cu_seqs s;
    cu_wset w[2];
    attnd_error err;
    uint64_t bytes = 0;
    attnd_refcheck_result res = {0};
    cu_must_open(&s, c, B, dt);
    for (uint32_t i = 0; i < B; i++)
        cu_must_prefill(&s, i, 1 + 97 * i, (const uint32_t[]){13, 40, 0});
    /* layer 1: float32 weights (kept float32), layer 3: bf16 (kept bf16) */
    cu_wset_make(&s, &w[0], DN, DVO, ATTND_DTYPE_F32);
    cu_wset_make(&s, &w[1], DN, DVO, ATTND_DTYPE_BF16);
    ck_assert_int_eq(cu_wset_load(&s, &w[0], 1, &bytes, &err), ATTND_OK);
    ck_assert_uint_eq(bytes, (uint64_t)s.m.n_q_heads * s.m.d_latent * (DN + DVO) * 4);
    ck_assert_int_eq(cu_wset_load(&s, &w[1], 3, &bytes, &err), ATTND_OK);
    ck_assert_uint_eq(bytes, (uint64_t)s.m.n_q_heads * s.m.d_latent * (DN + DVO) * 2);

    for (int k = 0; k < 2; k++) { /* unary, S = 1 and 3 */
        cu_hstep h;
        cu_hstep_make(&s, &h, &w[k], k ? 3 : 1, B, k ? 3 : 1);
        ck_assert_msg(attnd_client_attend(c, &h.a, &err) == ATTND_OK, "attend: %s", err.msg);
        cu_hstep_check(&s, &h, &w[k], &res);
        cu_hstep_free(&h);
    }
    { /* async: two layers in flight */
        cu_hstep h1, h3;
        attnd_call *c1 = NULL, *c3 = NULL;
        cu_hstep_make(&s, &h1, &w[0], 1, B, 1);
        cu_hstep_make(&s, &h3, &w[1], 3, B, 2);
        ck_assert_int_eq(attnd_client_attend_async(c, &h1.a, &c1, &err), ATTND_OK);
        ck_assert_int_eq(attnd_client_attend_async(c, &h3.a, &c3, &err), ATTND_OK);
        ck_assert_int_eq(attnd_call_wait(c1, &err), ATTND_OK);
        ck_assert_int_eq(attnd_call_wait(c3, &err), ATTND_OK);
        cu_hstep_check(&s, &h1, &w[0], &res);
        cu_hstep_check(&s, &h3, &w[1], &res);
        cu_hstep_free(&h1);
        cu_hstep_free(&h3);
    }
    { /* a stream, alternating layers */
        attnd_stream *st = NULL;
        ck_assert_int_eq(attnd_client_stream_open(c, &st, &err), ATTND_OK);
        for (int k = 0; k < 4; k++) {
            cu_hstep h;
            cu_hstep_make(&s, &h, &w[k & 1], k & 1 ? 3 : 1, B, 1);
            ck_assert_msg(attnd_stream_attend(st, &h.a, &err) == ATTND_OK, "stream: %s",
                          err.msg);
            cu_hstep_check(&s, &h, &w[k & 1], &res);
            cu_hstep_free(&h);
        }
        ck_assert_int_eq(attnd_stream_close(st, &err), ATTND_OK);
    }
    check_bounds(&s, &res, "heads form");
    cu_wset_free(&w[0]);
    cu_wset_free(&w[1]);
    cu_seqs_close(&s);
    attnd_client_destroy(c);
}

START_TEST(test_heads_form_matches_the_f64_narrow_reference_in_f32)
{
    cu_must_start("--model", "tiny-mla", "--page-size", "16");
    run_heads(ATTND_DTYPE_F32);
}
END_TEST

START_TEST(test_heads_form_matches_the_f64_narrow_reference_in_bf16)
{
    cu_must_start("--model", "tiny-mla", "--page-size", "16");
    run_heads(ATTND_DTYPE_BF16);
}
END_TEST

/* up_project with an absorbed query on a lone worker: latent out . W_UV;
 * the absorbed form without it still answers the latent output. */
START_TEST(test_up_project_on_a_lone_worker_projects_the_latent_output)
{
    cu_must_start("--model", "tiny-mla");
    attnd_client *c = cu_must_connect();
    cu_seqs s;
    cu_wset w;
    attnd_error err;
    attnd_refcheck_result res = {0};
    cu_must_open(&s, c, B, ATTND_DTYPE_F32);
    for (uint32_t i = 0; i < B; i++)
        cu_must_prefill(&s, i, 30 + 20 * i, NULL);
    cu_wset_make(&s, &w, DN, DVO, ATTND_DTYPE_F32);
    attnd_tensor tv = {ATTND_DTYPE_F32, 3, {s.m.n_q_heads, s.m.d_latent, DVO}, w.uv};
    ck_assert_int_eq(attnd_client_load_weights(c, 2, &tv, NULL, &err), ATTND_OK);
    cu_step st;
    cu_step_make(&s, &st, 2, 0, B, 1, 0, 0, ATTND_DTYPE_INVALID);
    ck_assert_int_eq(attnd_client_attend(c, &st.a, &err), ATTND_OK); /* latent out */
    ck_assert_int_eq(cu_step_commit(&s, &st, &res), 0);
    float *lat = malloc(st.out_bytes), *v = malloc((size_t)B * s.m.n_q_heads * DVO * 4);
    memcpy(lat, st.out, st.out_bytes);
    st.a.up_project = 1;
    st.a.out = v;
    st.a.out_capacity = (size_t)B * s.m.n_q_heads * DVO * 4;
    ck_assert_int_eq(attnd_client_attend(c, &st.a, &err), ATTND_OK);
    for (size_t r = 0; r < (size_t)B * s.m.n_q_heads; r++) {
        double ref[DVO], num = 0, den = 0;
        for (int j = 0; j < DVO; j++) {
            ref[j] = 0;
            for (uint32_t k = 0; k < s.m.d_latent; k++)
                ref[j] += (double)lat[r * s.m.d_latent + k] *
                          ((const float *)w.uv)[((r % s.m.n_q_heads) * s.m.d_latent + k) * DVO +
                                                (size_t)j];
            num = fmax(num, fabs(v[r * DVO + (size_t)j] - ref[j]));
            den = fmax(den, fabs(ref[j]));
        }
        ck_assert_double_le(num / den, 1e-5);
    }
    ck_assert_double_le(res.max_err, cu_bound(ATTND_DTYPE_F32));
    free(lat);
    free(v);
    cu_step_free(&st);
    cu_wset_free(&w);
    cu_seqs_close(&s);
    attnd_client_destroy(c);
}
END_TEST

/* Every refusal names its field, and a refused call appends nothing: the
 * next good call's positions still hold. */
START_TEST(test_heads_form_refusals_name_the_field_and_append_nothing)
{
    cu_must_start("--model", "tiny-mla");
    attnd_client *c = cu_must_connect();
    cu_seqs s;
    cu_wset w;
    attnd_error err;
    attnd_refcheck_result res = {0};
    cu_must_open(&s, c, B, ATTND_DTYPE_F32);
    for (uint32_t i = 0; i < B; i++)
        cu_must_prefill(&s, i, 5, NULL);
    cu_wset_make(&s, &w, DN, DVO, ATTND_DTYPE_F32);
    const attnd_model_info *m = &s.m;
    cu_hstep h;
    cu_hstep_make(&s, &h, &w, 0, B, 1);
    /* no weights for layer 0 */
    cu_assert_fails(attnd_client_attend(c, &h.a, &err), err, ATTND_ERR_FAILED_PRECONDITION,
                    "q_form");
    /* W_UV alone is not enough for the heads form */
    attnd_tensor tv = {ATTND_DTYPE_F32, 3, {m->n_q_heads, m->d_latent, DVO}, w.uv};
    ck_assert_int_eq(attnd_client_load_mla_weights(c, 0, NULL, &tv, NULL, &err), ATTND_OK);
    cu_assert_fails(attnd_client_attend(c, &h.a, &err), err, ATTND_ERR_FAILED_PRECONDITION,
                    "q_form");
    ck_assert_int_eq(cu_wset_load(&s, &w, 0, NULL, &err), ATTND_OK);
    /* the absorbed query's shape with q_form HEADS: names q.shape (a
     * buffer of that shape: libattnd sends what the shape says) */
    attnd_attend_args bad = h.a;
    const size_t wide = (size_t)B * m->n_q_heads * m->d_k;
    float *qwide = malloc(wide * sizeof(float));
    ck_assert_ptr_nonnull(qwide);
    attnd_rng_fill(&s.rng, ATTND_DTYPE_F32, qwide, wide);
    bad.q.shape[3] = m->d_k;
    bad.q.data = qwide;
    cu_assert_fails(attnd_client_attend(c, &bad, &err), err, ATTND_ERR_INVALID_ARGUMENT,
                    "q.shape[3]");
    /* an unknown form */
    bad = h.a;
    bad.q_form = (attnd_q_form)7;
    cu_assert_fails(attnd_client_attend(c, &bad, &err), err, ATTND_ERR_INVALID_ARGUMENT,
                    "q_form");
    /* the heads form's shape without q_form is not taken for it: the
     * absorbed form's check refuses it (an output buffer big enough for
     * the latent output, so that the server is asked) */
    bad = h.a;
    bad.q_form = ATTND_Q_ABSORBED;
    float *big = malloc((size_t)B * m->n_q_heads * m->d_v * sizeof(float));
    bad.out = big;
    bad.out_capacity = (size_t)B * m->n_q_heads * m->d_v * sizeof(float);
    cu_assert_fails(attnd_client_attend(c, &bad, &err), err, ATTND_ERR_INVALID_ARGUMENT,
                    "q.shape[3]");
    free(big);
    free(qwide);
    /* LoadWeights: shapes, dtype, layer, neither tensor */
    attnd_tensor tk = {ATTND_DTYPE_F32, 3, {m->n_q_heads, m->d_latent, DN}, w.uk};
    cu_assert_fails(attnd_client_load_mla_weights(c, 0, &tk, NULL, NULL, &err), err,
                    ATTND_ERR_INVALID_ARGUMENT, "w_uk.shape");
    tk = (attnd_tensor){ATTND_DTYPE_INVALID, 3, {m->n_q_heads, DN, m->d_latent}, w.uk};
    cu_assert_fails(attnd_client_load_mla_weights(c, 0, &tk, NULL, NULL, &err), err,
                    ATTND_ERR_INVALID_ARGUMENT, "w_uk.dtype");
    tk.dtype = ATTND_DTYPE_F32;
    cu_assert_fails(attnd_client_load_mla_weights(c, 9, &tk, NULL, NULL, &err), err,
                    ATTND_ERR_OUT_OF_RANGE, "layer");
    cu_assert_fails(attnd_client_load_mla_weights(c, 0, NULL, NULL, NULL, &err), err,
                    ATTND_ERR_INVALID_ARGUMENT, "w_uk");
    /* after all that, the first call lands at the positions it named */
    ck_assert_msg(attnd_client_attend(c, &h.a, &err) == ATTND_OK, "attend: %s", err.msg);
    cu_hstep_check(&s, &h, &w, &res);
    ck_assert_double_le(res.max_err, cu_bound(ATTND_DTYPE_F32));
    cu_hstep_free(&h);
    cu_wset_free(&w);
    cu_seqs_close(&s);
    attnd_client_destroy(c);
}
END_TEST

START_TEST(test_heads_form_on_a_gqa_worker_is_refused_naming_q_form)
{
    cu_must_start("--model", "tiny-gqa");
    attnd_client *c = cu_must_connect();
    cu_seqs s;
    attnd_error err;
    cu_must_open(&s, c, 1, ATTND_DTYPE_F32);
    cu_step st;
    cu_step_make(&s, &st, 0, 0, 1, 1, 0, 0, ATTND_DTYPE_INVALID);
    st.a.q_form = ATTND_Q_HEADS;
    cu_assert_fails(attnd_client_attend(c, &st.a, &err), err, ATTND_ERR_FAILED_PRECONDITION,
                    "q_form");
    float w[8 * 32 * 4] = {0};
    attnd_tensor tv = {ATTND_DTYPE_F32, 3, {8, 32, 4}, w};
    cu_assert_fails(attnd_client_load_mla_weights(c, 0, NULL, &tv, NULL, &err), err,
                    ATTND_ERR_FAILED_PRECONDITION, "w_uv");
    cu_step_free(&st);
    cu_seqs_close(&s);
    attnd_client_destroy(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create(cu_use_ucx() ? "ucx_narrow" : "client_narrow");
    TCase *tc = tcase_create("narrow");
    tcase_add_checked_fixture(tc, NULL, cu_teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_heads_form_matches_the_f64_narrow_reference_in_f32);
    tcase_add_test(tc, test_heads_form_matches_the_f64_narrow_reference_in_bf16);
    tcase_add_test(tc, test_up_project_on_a_lone_worker_projects_the_latent_output);
    tcase_add_test(tc, test_heads_form_refusals_name_the_field_and_append_nothing);
    tcase_add_test(tc, test_heads_form_on_a_gqa_worker_is_refused_naming_q_form);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
