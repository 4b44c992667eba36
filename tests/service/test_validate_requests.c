/* Check suite of the other requests' validation: AppendKV chunks (good
 * ones of random sizes pass with their token count; every malformed field
 * is named), CreateSession's model rules, CloseSession's id, the health
 * service names; and, behind validation, the engine's wrong-position and
 * out-of-memory answers. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_kernels.h"
#include "codec.h"
#include "svc_testutil.h"
#include "testutil.h"
#include "validate.h"

static tu_rng rng;
static attnd_srv_arena arena;

static void setup(void)
{
    tu_rng_init(&rng, "service_validate_requests");
    attnd_srv_arena_init(&arena, 0);
}

static void teardown(void)
{
    attnd_srv_arena_cleanup(&arena);
}

/* ---- AppendKV --------------------------------------------------------------------------------- */

typedef struct afx {
    attnd_srv_model model;
    Attnd__V1__AppendKVRequest m;
    Attnd__V1__Tensor kv;
    int64_t shape[4];
    uint8_t id[16];
    uint8_t *data;
} afx;

static void afx_init(afx *f, const char *model, int64_t t, attnd_dtype dt)
{
    const attnd_model_spec *spec = attnd_model_find(model);
    memset(f, 0, sizeof *f);
    attnd_srv_model_init(&f->model, spec, 16, 8);
    attnd__v1__append_kvrequest__init(&f->m);
    attnd__v1__tensor__init(&f->kv);
    for (int i = 0; i < 16; i++)
        f->id[i] = (uint8_t)tu_next(&rng);
    f->m.session_id.len = 16;
    f->m.session_id.data = f->id;
    f->m.layer = (uint32_t)(spec->n_layers - 1);
    f->m.start = 5;
    size_t n = 0;
    f->shape[n++] = t;
    if (spec->kind == ATTND_ATTN_MLA) {
        f->shape[n++] = f->model.d_k;
    } else {
        f->shape[n++] = 2;
        f->shape[n++] = spec->n_kv_heads;
        f->shape[n++] = spec->head_dim;
    }
    f->kv.dtype = (Attnd__V1__DType)dt;
    f->kv.n_shape = n;
    f->kv.shape = f->shape;
    f->kv.data.len = (size_t)t * (size_t)f->model.kv_elems * attnd_dtype_size(dt);
    f->data = calloc(1, f->kv.data.len + 1);
    f->kv.data.data = f->data;
    f->m.kv = &f->kv;
}

#define expect_append(f, want, field)                                                      \
    do {                                                                                   \
        attnd_error e_;                                                                    \
        attnd_srv_append_req r_;                                                           \
        attnd_error_clear(&e_);                                                            \
        attnd_status st_ = attnd_srv_validate_append(&(f)->m, &(f)->model, &r_, &e_);      \
        ck_assert_fails(st_, e_, (want), (field));                                         \
    } while (0)

START_TEST(test_good_append_chunks_pass_with_their_token_count)
{
    for (int iter = 0; iter < 100; iter++) {
        afx f;
        int64_t t = tu_int(&rng, 1, 300);
        attnd_dtype dt = (attnd_dtype)tu_int(&rng, 1, 3);
        afx_init(&f, iter % 2 ? "tiny-gqa" : "kimi-k2", t, dt);
        attnd_srv_append_req r;
        attnd_error err;
        ck_assert_int_eq(attnd_srv_validate_append(&f.m, &f.model, &r, &err), ATTND_OK);
        ck_assert_uint_eq(r.n_tokens, (uint64_t)t);
        ck_assert_int_eq(r.dtype, dt);
        ck_assert_ptr_eq(r.kv, f.data);
        ck_assert_uint_eq(r.layer, f.m.layer);
        ck_assert_uint_eq(r.start, 5);
        ck_assert_int_eq(memcmp(r.id.bytes, f.id, 16), 0);
        free(f.data);
    }
}
END_TEST

START_TEST(test_append_with_bad_session_id_length_is_invalid_argument)
{
    afx f;
    afx_init(&f, "tiny-mla", 4, ATTND_DTYPE_F32);
    f.m.session_id.len = 17;
    expect_append(&f, ATTND_ERR_INVALID_ARGUMENT, "session_id: expected 16 bytes (an id from CreateSession), got 17");
    free(f.data);
}
END_TEST

START_TEST(test_append_layer_past_model_is_out_of_range)
{
    afx f;
    afx_init(&f, "tiny-mla", 4, ATTND_DTYPE_F32);
    f.m.layer = 4;
    expect_append(&f, ATTND_ERR_OUT_OF_RANGE, "layer: expected < 4");
    free(f.data);
}
END_TEST

START_TEST(test_append_without_kv_is_invalid_argument)
{
    afx f;
    afx_init(&f, "tiny-gqa", 4, ATTND_DTYPE_F32);
    f.m.kv = NULL;
    expect_append(&f, ATTND_ERR_INVALID_ARGUMENT, "kv: missing; expected a tensor of shape [T, 2, 2, 32]");
    free(f.data);
}
END_TEST

START_TEST(test_append_kv_of_wrong_shape_dtype_or_length_is_invalid_argument)
{
    afx f;
    afx_init(&f, "tiny-gqa", 4, ATTND_DTYPE_F16);
    f.kv.dtype = ATTND__V1__DTYPE__DTYPE_UNSPECIFIED;
    expect_append(&f, ATTND_ERR_INVALID_ARGUMENT, "kv.dtype");
    f.kv.dtype = ATTND__V1__DTYPE__DTYPE_F16;
    f.kv.n_shape = 2;
    expect_append(&f, ATTND_ERR_INVALID_ARGUMENT, "kv.shape: expected [T, 2, 2, 32]");
    f.kv.n_shape = 4;
    f.shape[0] = 0;
    expect_append(&f, ATTND_ERR_INVALID_ARGUMENT, "kv.shape[0]: expected at least 1 token");
    f.shape[0] = 4;
    f.shape[1] = 1;
    expect_append(&f, ATTND_ERR_INVALID_ARGUMENT, "kv.shape[1]: expected 2");
    f.shape[1] = 2;
    f.shape[3] = 16;
    expect_append(&f, ATTND_ERR_INVALID_ARGUMENT, "kv.shape[3]: expected 32 head_dim");
    f.shape[3] = 32;
    f.kv.data.len += 1;
    expect_append(&f, ATTND_ERR_INVALID_ARGUMENT, "kv.data");
    f.kv.data.len -= 1;
    f.shape[0] = INT64_MAX; /* no overflow on the way to saying so */
    expect_append(&f, ATTND_ERR_INVALID_ARGUMENT, "kv.data");
    free(f.data);
}
END_TEST

/* ---- CreateSession, CloseSession, health --------------------------------------------------------- */

START_TEST(test_create_session_accepts_empty_or_served_model)
{
    attnd_srv_model model;
    attnd_srv_model_init(&model, attnd_model_find("llama3-70b"), 64, 4);
    Attnd__V1__CreateSessionRequest m = ATTND__V1__CREATE_SESSION_REQUEST__INIT;
    attnd_srv_create_req r;
    attnd_error err;
    m.max_tokens = 77;
    ck_assert_int_eq(attnd_srv_validate_create(&m, &model, &r, &err), ATTND_OK);
    ck_assert_uint_eq(r.max_tokens, 77);
    m.model = "llama3-70b";
    ck_assert_int_eq(attnd_srv_validate_create(&m, &model, &r, &err), ATTND_OK);
}
END_TEST

START_TEST(test_create_session_for_another_preset_is_failed_precondition)
{
    attnd_srv_model model;
    attnd_srv_model_init(&model, attnd_model_find("deepseek-v3"), 64, 4);
    Attnd__V1__CreateSessionRequest m = ATTND__V1__CREATE_SESSION_REQUEST__INIT;
    attnd_srv_create_req r;
    attnd_error err;
    m.model = "kimi-k2";
    attnd_status st = attnd_srv_validate_create(&m, &model, &r, &err);
    ck_assert_fails(st, err, ATTND_ERR_FAILED_PRECONDITION,
                    "model: this worker serves deepseek-v3, not kimi-k2");
}
END_TEST

START_TEST(test_create_session_for_unknown_preset_is_invalid_argument)
{
    attnd_srv_model model;
    attnd_srv_model_init(&model, attnd_model_find("deepseek-v3"), 64, 4);
    Attnd__V1__CreateSessionRequest m = ATTND__V1__CREATE_SESSION_REQUEST__INIT;
    attnd_srv_create_req r;
    attnd_error err;
    m.model = "gpt-5";
    attnd_status st = attnd_srv_validate_create(&m, &model, &r, &err);
    ck_assert_fails(st, err, ATTND_ERR_INVALID_ARGUMENT, "model: expected a preset name");
    ck_assert_ptr_nonnull(strstr(err.msg, "gpt-5"));
}
END_TEST

START_TEST(test_close_session_with_bad_id_length_is_invalid_argument)
{
    Attnd__V1__CloseSessionRequest m = ATTND__V1__CLOSE_SESSION_REQUEST__INIT;
    attnd_session_id id;
    attnd_error err;
    attnd_status st = attnd_srv_validate_close(&m, &id, &err);
    ck_assert_fails(st, err, ATTND_ERR_INVALID_ARGUMENT, "session_id: expected 16 bytes (an id from CreateSession), got 0");
    uint8_t b[16] = {1, 2, 3};
    m.session_id.len = 16;
    m.session_id.data = b;
    ck_assert_int_eq(attnd_srv_validate_close(&m, &id, &err), ATTND_OK);
    ck_assert_int_eq(memcmp(id.bytes, b, 16), 0);
}
END_TEST

START_TEST(test_health_of_unknown_service_is_not_found)
{
    Grpc__Health__V1__HealthCheckRequest m = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    attnd_error err;
    ck_assert_int_eq(attnd_srv_validate_health(&m, &err), ATTND_OK);
    m.service = "attnd.v1.Attnd";
    ck_assert_int_eq(attnd_srv_validate_health(&m, &err), ATTND_OK);
    m.service = "foo.Bar";
    attnd_status st = attnd_srv_validate_health(&m, &err);
    ck_assert_fails(st, err, ATTND_ERR_NOT_FOUND, "service");
}
END_TEST

/* ---- what the engine decides, behind validation ---------------------------------- */

START_TEST(test_append_at_wrong_position_is_failed_precondition)
{
    efx x;
    afx f;
    attnd_session_id id;
    attnd_srv_append_req r;
    attnd_error err;
    efx_init(&x, "tiny-mla", 1 << 20, 8);
    ck_assert_int_eq(attnd_engine_session_create(x.e, 0, &id, &err), ATTND_OK);
    afx_init(&f, "tiny-mla", 3, ATTND_DTYPE_BF16);
    memcpy(f.id, id.bytes, 16);
    f.model = x.model;
    ck_assert_int_eq(attnd_srv_validate_append(&f.m, &f.model, &r, &err), ATTND_OK);
    attnd_status st = attnd_engine_append(x.e, &r.id, r.layer, r.start, r.n_tokens, r.dtype,
                                          r.kv, &err);
    ck_assert_fails(st, err, ATTND_ERR_FAILED_PRECONDITION, "start");
    free(f.data);
    attnd_engine_destroy(x.e);
}
END_TEST

START_TEST(test_pool_or_session_limit_exhausted_is_resource_exhausted)
{
    efx x;
    attnd_session_id id;
    attnd_error err;
    /* tiny-mla pages of 16 tokens x 80 bf16: 2560 bytes; 4 pages in all */
    efx_init(&x, "tiny-mla", 4 * 2560, 2);
    attnd_status st = attnd_engine_session_create(x.e, 1000, &id, &err);
    ck_assert_fails(st, err, ATTND_ERR_RESOURCE_EXHAUSTED, "max_tokens");
    ck_assert_int_eq(attnd_engine_session_create(x.e, 0, &id, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_create(x.e, 0, &id, &err), ATTND_OK);
    st = attnd_engine_session_create(x.e, 0, &id, &err);
    ck_assert_int_eq(st, ATTND_ERR_RESOURCE_EXHAUSTED);

    afx f;
    attnd_srv_append_req r;
    afx_init(&f, "tiny-mla", 100, ATTND_DTYPE_BF16); /* 7 pages: more than the pool */
    memcpy(f.id, id.bytes, 16);
    f.m.start = 0;
    f.model = x.model;
    ck_assert_int_eq(attnd_srv_validate_append(&f.m, &f.model, &r, &err), ATTND_OK);
    st = attnd_engine_append(x.e, &r.id, r.layer, r.start, r.n_tokens, r.dtype, r.kv, &err);
    ck_assert_fails(st, err, ATTND_ERR_RESOURCE_EXHAUSTED, "kv");
    free(f.data);
    attnd_engine_destroy(x.e);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("service_validate_requests");
    TCase *tc = tcase_create("append");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_good_append_chunks_pass_with_their_token_count);
    tcase_add_test(tc, test_append_with_bad_session_id_length_is_invalid_argument);
    tcase_add_test(tc, test_append_layer_past_model_is_out_of_range);
    tcase_add_test(tc, test_append_without_kv_is_invalid_argument);
    tcase_add_test(tc, test_append_kv_of_wrong_shape_dtype_or_length_is_invalid_argument);
    suite_add_tcase(s, tc);

    tc = tcase_create("session_health");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_create_session_accepts_empty_or_served_model);
    tcase_add_test(tc, test_create_session_for_another_preset_is_failed_precondition);
    tcase_add_test(tc, test_create_session_for_unknown_preset_is_invalid_argument);
    tcase_add_test(tc, test_close_session_with_bad_id_length_is_invalid_argument);
    tcase_add_test(tc, test_health_of_unknown_service_is_not_found);
    suite_add_tcase(s, tc);

    tc = tcase_create("engine");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_append_at_wrong_position_is_failed_precondition);
    tcase_add_test(tc, test_pool_or_session_limit_exhausted_is_resource_exhausted);
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
