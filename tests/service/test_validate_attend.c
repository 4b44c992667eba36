/* Check suite of AttendRequest validation: every bad input gives its exact
 * status and a message naming the field; good inputs of fresh random
 * shapes (MLA and GQA models, 3-D and 4-D q, new_kv in both forms) pass and
 * come out as the engine request they mean; random corruptions never crash;
 * and what only the engine can decide (unknown session, wrong position)
 * comes back from a validated request with the status the service passes
 * through. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_kernels.h"
#include "codec.h"
#include "svc_testutil.h"
#include "testutil.h"
#include "validate.h"

#define MAX_B 8

static tu_rng rng;
static attnd_srv_arena arena;

static void setup(void)
{
    tu_rng_init(&rng, "service_validate_attend");
    attnd_srv_arena_init(&arena, 0);
}

static void teardown(void)
{
    attnd_srv_arena_cleanup(&arena);
}



/* A valid AttendRequest for a model, with the buffers it points to. */
typedef struct fx {
    attnd_srv_model model;
    Attnd__V1__AttendRequest m;
    Attnd__V1__Tensor q, kv;
    int64_t qshape[4], kvshape[5];
    uint8_t ids[MAX_B][16];
    ProtobufCBinaryData idv[MAX_B];
    uint64_t pos[MAX_B];
    uint8_t *qdata, *kvdata;
} fx;

/* b sessions, s query tokens (q 4-D when s4d, else 3-D with s = 1), new_kv
 * (4-D form [B, S, entry] when kv_s) when with_kv. */
static void fx_attend(fx *f, const char *model, uint32_t b, int32_t s, int s4d, int with_kv,
                      int kv_s, attnd_dtype dt)
{
    memset(f, 0, sizeof *f);
    const attnd_model_spec *spec = attnd_model_find(model);
    ck_assert_ptr_nonnull(spec);
    attnd_srv_model_init(&f->model, spec, 64, 16);
    attnd__v1__attend_request__init(&f->m);
    f->m.layer = (uint32_t)tu_int(&rng, 0, spec->n_layers - 1);
    for (uint32_t i = 0; i < b; i++) {
        for (int k = 0; k < 16; k++)
            f->ids[i][k] = (uint8_t)tu_next(&rng);
        f->idv[i].len = 16;
        f->idv[i].data = f->ids[i];
        f->pos[i] = (uint64_t)tu_int(&rng, 0, 1000);
    }
    f->m.n_session_ids = b;
    f->m.session_ids = f->idv;

    attnd__v1__tensor__init(&f->q);
    f->q.dtype = (Attnd__V1__DType)dt;
    size_t n = 0;
    f->qshape[n++] = b;
    if (s4d)
        f->qshape[n++] = s;
    f->qshape[n++] = spec->n_q_heads;
    f->qshape[n++] = f->model.d_k;
    f->q.n_shape = n;
    f->q.shape = f->qshape;
    f->q.data.len = (size_t)b * (size_t)s * (size_t)spec->n_q_heads * (size_t)f->model.d_k *
                    attnd_dtype_size(dt);
    f->qdata = calloc(1, f->q.data.len);
    f->q.data.data = f->qdata;
    f->m.q = &f->q;

    if (with_kv) {
        attnd__v1__tensor__init(&f->kv);
        f->kv.dtype = (Attnd__V1__DType)dt;
        n = 0;
        f->kvshape[n++] = b;
        if (kv_s)
            f->kvshape[n++] = s;
        if (spec->kind == ATTND_ATTN_MLA) {
            f->kvshape[n++] = f->model.d_k;
        } else {
            f->kvshape[n++] = 2;
            f->kvshape[n++] = spec->n_kv_heads;
            f->kvshape[n++] = spec->head_dim;
        }
        f->kv.n_shape = n;
        f->kv.shape = f->kvshape;
        f->kv.data.len = (size_t)b * (size_t)s * (size_t)f->model.kv_elems * attnd_dtype_size(dt);
        f->kvdata = calloc(1, f->kv.data.len);
        f->kv.data.data = f->kvdata;
        f->m.new_kv = &f->kv;
        f->m.n_positions = b;
        f->m.positions = f->pos;
    }
    f->m.request_id = tu_next(&rng);
}

static void fx_free(fx *f)
{
    free(f->qdata);
    free(f->kvdata);
}

static attnd_status run_attend(fx *f, attnd_srv_attend_req *out, attnd_error *err)
{
    attnd_srv_attend_req tmp;
    attnd_srv_arena_reset(&arena);
    attnd_error_clear(err);
    return attnd_srv_validate_attend(&f->m, &f->model, NULL, &arena.pc, NULL, out ? out : &tmp,
                                     err);
}


/* Validate f's request and require the failure. */
#define expect_attend(f, want, field)                                                      \
    do {                                                                                   \
        attnd_error e_;                                                                    \
        attnd_status st_ = run_attend((f), NULL, &e_);                                     \
        ck_assert_fails(st_, e_, (want), (field));                                         \
    } while (0)

/* ---- Attend: good inputs -------------------------------------------------------------- */

START_TEST(test_random_good_attend_requests_pass_as_the_engine_request_they_mean)
{
    static const char *models[] = {"tiny-mla", "tiny-gqa", "deepseek-v3", "llama3-8b"};
    for (int iter = 0; iter < 200; iter++) {
        fx f;
        const char *model = models[iter % 4];
        uint32_t b = (uint32_t)tu_int(&rng, 1, MAX_B);
        int s4d = (int)tu_int(&rng, 0, 1);
        int32_t s = s4d ? (int32_t)tu_int(&rng, 1, 4) : 1;
        int with_kv = (int)tu_int(&rng, 0, 1);
        int kv_s = s > 1 ? 1 : (int)tu_int(&rng, 0, 1);
        attnd_dtype dt = (attnd_dtype)tu_int(&rng, 1, 3);
        fx_attend(&f, model, b, s, s4d, with_kv, kv_s, dt);
        f.m.return_lse = (protobuf_c_boolean)tu_int(&rng, 0, 1);
        f.m.out_dtype = (Attnd__V1__DType)tu_int(&rng, 0, 3);

        attnd_srv_attend_req r;
        attnd_error err;
        ck_assert_msg(run_attend(&f, &r, &err) == ATTND_OK, "%s: %s", model, err.msg);
        ck_assert_uint_eq(r.eng.layer, f.m.layer);
        ck_assert_uint_eq(r.eng.n_seqs, b);
        ck_assert_int_eq(r.eng.q_tokens, s);
        ck_assert_int_eq(r.eng.q_dtype, dt);
        ck_assert_ptr_eq(r.eng.q, f.qdata);
        for (uint32_t i = 0; i < b; i++)
            ck_assert_int_eq(memcmp(r.eng.ids[i].bytes, f.ids[i], 16), 0);
        if (with_kv) {
            ck_assert_ptr_eq(r.eng.new_kv, f.kvdata);
            ck_assert_int_eq(r.eng.new_kv_dtype, dt);
            ck_assert_ptr_eq(r.eng.positions, f.pos);
        } else {
            ck_assert_ptr_null(r.eng.new_kv);
            ck_assert_ptr_null(r.eng.positions);
        }
        ck_assert_int_eq(r.eng.want_lse, f.m.return_lse);
        ck_assert_int_eq(r.out_dtype, f.m.out_dtype ? (attnd_dtype)f.m.out_dtype : dt);
        ck_assert_uint_eq(r.request_id, f.m.request_id);
        int64_t want[4] = {b, s, f.model.spec->n_q_heads, f.model.d_v};
        for (int i = 0; i < 4; i++)
            ck_assert_int_eq(r.out_shape[i], want[i]);
        for (int i = 0; i < 3; i++)
            ck_assert_int_eq(r.lse_shape[i], want[i]);
        fx_free(&f);
    }
}
END_TEST

/* ---- Attend: the request ---------------------------------------------------------------- */

START_TEST(test_layer_past_model_is_out_of_range)
{
    fx f;
    fx_attend(&f, "deepseek-v3", 1, 1, 0, 0, 0, ATTND_DTYPE_BF16);
    f.m.layer = 61;
    expect_attend(&f, ATTND_ERR_OUT_OF_RANGE, "layer: expected < 61");
    f.m.layer = UINT32_MAX;
    expect_attend(&f, ATTND_ERR_OUT_OF_RANGE, "layer");
    fx_free(&f);
}
END_TEST

START_TEST(test_empty_or_oversized_batch_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-mla", 2, 1, 0, 0, 0, ATTND_DTYPE_F32);
    f.m.n_session_ids = 0;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "session_ids: expected 1 to 16");
    f.m.n_session_ids = 2;
    f.model.max_batch = 1;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "session_ids");
    fx_free(&f);
}
END_TEST

START_TEST(test_session_id_of_wrong_length_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-mla", 3, 1, 0, 0, 0, ATTND_DTYPE_F32);
    f.idv[1].len = 15;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "session_ids[1]: expected 16 bytes");
    f.idv[1].len = 0;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "session_ids[1]");
    fx_free(&f);
}
END_TEST

START_TEST(test_duplicate_session_in_batch_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-gqa", 5, 1, 0, 0, 0, ATTND_DTYPE_F32);
    memcpy(f.ids[3], f.ids[1], 16);
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "session_ids[3]: duplicate of session_ids[1]");
    fx_free(&f);
}
END_TEST

/* ---- Attend: q ---------------------------------------------------------------------------- */

START_TEST(test_missing_q_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-mla", 1, 1, 0, 0, 0, ATTND_DTYPE_F32);
    f.m.q = NULL;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q: missing");
    fx_free(&f);
}
END_TEST

START_TEST(test_q_with_invalid_dtype_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-mla", 1, 1, 0, 0, 0, ATTND_DTYPE_F32);
    f.q.dtype = ATTND__V1__DTYPE__DTYPE_UNSPECIFIED;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.dtype");
    f.q.dtype = (Attnd__V1__DType)7;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.dtype");
    fx_free(&f);
}
END_TEST

START_TEST(test_q_of_wrong_rank_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-mla", 1, 1, 0, 0, 0, ATTND_DTYPE_F32);
    f.q.n_shape = 2;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.shape: expected");
    fx_free(&f);
}
END_TEST

START_TEST(test_q_heads_of_another_model_name_the_expected_count)
{
    fx f;
    fx_attend(&f, "deepseek-v3", 2, 1, 1, 0, 0, ATTND_DTYPE_BF16);
    f.qshape[2] = 64;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.shape[2]: expected 128 heads, got 64");
    fx_free(&f);
}
END_TEST

START_TEST(test_q_batch_dim_not_matching_session_ids_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-gqa", 2, 1, 0, 0, 0, ATTND_DTYPE_F32);
    f.qshape[0] = 3;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.shape[0]: expected 2");
    f.qshape[0] = -2;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.shape[0]");
    fx_free(&f);
}
END_TEST

START_TEST(test_q_width_not_d_k_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "deepseek-v3", 1, 1, 0, 0, 0, ATTND_DTYPE_BF16);
    f.qshape[2] = 512;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.shape[2]: expected 576");
    fx_free(&f);
    fx_attend(&f, "llama3-8b", 1, 1, 1, 0, 0, ATTND_DTYPE_BF16);
    f.qshape[3] = 64;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.shape[3]: expected head_dim 128");
    fx_free(&f);
}
END_TEST

START_TEST(test_query_tokens_outside_one_to_64_are_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-mla", 1, 1, 1, 0, 0, ATTND_DTYPE_F32);
    f.qshape[1] = 0;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.shape[1]: expected 1 to 64");
    f.qshape[1] = 65;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.shape[1]");
    fx_free(&f);
}
END_TEST

START_TEST(test_q_data_of_wrong_length_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-mla", 2, 3, 1, 0, 0, ATTND_DTYPE_BF16);
    f.q.data.len -= 1;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.data: expected 7680 bytes");
    f.q.data.len += 2;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.data");
    f.q.data.len -= 1;
    f.q.dtype = ATTND__V1__DTYPE__DTYPE_F32; /* same bytes, other dtype */
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "q.data: expected 15360 bytes");
    fx_free(&f);
}
END_TEST

/* ---- Attend: new_kv and positions ---------------------------------------------------------- */

START_TEST(test_new_kv_with_invalid_dtype_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-gqa", 1, 1, 0, 1, 0, ATTND_DTYPE_F32);
    f.kv.dtype = (Attnd__V1__DType)4;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "new_kv.dtype");
    fx_free(&f);
}
END_TEST

START_TEST(test_new_kv_of_wrong_rank_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-gqa", 2, 1, 0, 1, 0, ATTND_DTYPE_F32);
    f.kv.n_shape = 3; /* [B, 2, Hkv] */
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "new_kv.shape: expected [B, 2, Hkv, D]");
    fx_free(&f);
}
END_TEST

START_TEST(test_new_kv_batch_dim_not_matching_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-mla", 2, 1, 0, 1, 0, ATTND_DTYPE_F32);
    f.kvshape[0] = 1;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "new_kv.shape[0]: expected 2");
    fx_free(&f);
}
END_TEST

START_TEST(test_new_kv_entry_of_wrong_size_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "deepseek-v3", 1, 1, 0, 1, 0, ATTND_DTYPE_BF16);
    f.kvshape[1] = 512; /* latent only, rope missing */
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "new_kv.shape[1]: expected 576");
    fx_free(&f);
    fx_attend(&f, "llama3-8b", 1, 1, 0, 1, 0, ATTND_DTYPE_BF16);
    f.kvshape[2] = 32; /* [B, 2, Hkv, D]: Hkv */
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "new_kv.shape[2]: expected 8 KV heads");
    fx_free(&f);
}
END_TEST

START_TEST(test_new_kv_tokens_not_matching_q_tokens_are_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-mla", 2, 3, 1, 1, 1, ATTND_DTYPE_F32);
    f.kvshape[1] = 2;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "new_kv.shape[1]: expected 3 tokens");
    fx_free(&f);
    /* [B, entry] is one token per session: wrong when q has S = 3 */
    fx_attend(&f, "tiny-mla", 2, 3, 1, 1, 1, ATTND_DTYPE_F32);
    f.kv.n_shape = 2;
    f.kvshape[1] = f.model.d_k;
    f.kv.data.len /= 3;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "new_kv.shape: expected [B, S = 3");
    fx_free(&f);
}
END_TEST

START_TEST(test_new_kv_data_of_wrong_length_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-gqa", 3, 1, 0, 1, 0, ATTND_DTYPE_BF16);
    f.kv.data.len += 2;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "new_kv.data: expected 768 bytes");
    fx_free(&f);
}
END_TEST

START_TEST(test_positions_count_mismatch_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-mla", 3, 1, 0, 1, 0, ATTND_DTYPE_F32);
    f.m.n_positions = 2;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "positions: expected 3 entries");
    fx_free(&f);
}
END_TEST

START_TEST(test_positions_without_new_kv_are_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-mla", 2, 1, 0, 0, 0, ATTND_DTYPE_F32);
    f.m.n_positions = 2;
    f.m.positions = f.pos;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "positions: expected none without new_kv");
    fx_free(&f);
}
END_TEST

START_TEST(test_invalid_out_dtype_is_invalid_argument)
{
    fx f;
    fx_attend(&f, "tiny-mla", 1, 1, 0, 0, 0, ATTND_DTYPE_F32);
    f.m.out_dtype = (Attnd__V1__DType)9;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "out_dtype");
    f.m.out_dtype = (Attnd__V1__DType)-1;
    expect_attend(&f, ATTND_ERR_INVALID_ARGUMENT, "out_dtype");
    fx_free(&f);
}
END_TEST

START_TEST(test_random_corruptions_never_crash_and_fail_cleanly)
{
    for (int iter = 0; iter < 2000; iter++) {
        fx f;
        fx_attend(&f, iter % 2 ? "tiny-mla" : "tiny-gqa", (uint32_t)tu_int(&rng, 1, 4),
                  (int32_t)tu_int(&rng, 1, 3), 1, (int)tu_int(&rng, 0, 1), 1, ATTND_DTYPE_BF16);
        int64_t *dims[] = {&f.qshape[0], &f.qshape[1], &f.qshape[2], &f.qshape[3],
                           &f.kvshape[0], &f.kvshape[1], &f.kvshape[2], &f.kvshape[3]};
        switch (tu_int(&rng, 0, 4)) {
        case 0:
            *dims[tu_int(&rng, 0, 7)] = (int64_t)tu_next(&rng);
            break;
        case 1:
            f.q.n_shape = (size_t)tu_int(&rng, 0, 4);
            break;
        case 2:
            f.q.data.len = (size_t)tu_int(&rng, 0, (int64_t)f.q.data.len * 2);
            break;
        case 3:
            f.kv.n_shape = (size_t)tu_int(&rng, 0, 5);
            break;
        default:
            f.m.n_positions = (size_t)tu_int(&rng, 0, (int64_t)f.m.n_session_ids);
            break;
        }
        attnd_error err;
        attnd_status st = run_attend(&f, NULL, &err);
        ck_assert(st == ATTND_OK || st == ATTND_ERR_INVALID_ARGUMENT);
        if (st)
            ck_assert(strlen(err.msg) > 0 && strchr(err.msg, ':'));
        fx_free(&f);
    }
}
END_TEST

/* ---- what the engine decides, behind validation ----------------------------------------------------- */

/* Validate f (re-targeted at x's model) and run it through the engine. */
static attnd_status engine_attend(efx *x, fx *f, attnd_error *err)
{
    attnd_srv_attend_req r;
    attnd_engine_ws ws;
    const float *out, *lse;
    f->model = x->model;
    attnd_status st = run_attend(f, &r, err);
    if (st)
        return st;
    attnd_engine_ws_init(&ws);
    st = attnd_engine_attend(x->e, &r.eng, &ws, &out, &lse, err);
    attnd_engine_ws_cleanup(&ws);
    return st;
}

START_TEST(test_unknown_session_is_not_found)
{
    efx x;
    fx f;
    attnd_error err;
    efx_init(&x, "tiny-mla", 1 << 20, 8);
    fx_attend(&f, "tiny-mla", 1, 1, 0, 0, 0, ATTND_DTYPE_F32);
    attnd_status st = engine_attend(&x, &f, &err);
    ck_assert_fails(st, err, ATTND_ERR_NOT_FOUND, "session_ids[0]");
    fx_free(&f);
    attnd_engine_destroy(x.e);
}
END_TEST

START_TEST(test_new_kv_at_wrong_position_is_failed_precondition)
{
    efx x;
    fx f;
    attnd_session_id id;
    attnd_error err;
    efx_init(&x, "tiny-gqa", 1 << 20, 8);
    ck_assert_int_eq(attnd_engine_session_create(x.e, 0, &id, &err), ATTND_OK);
    fx_attend(&f, "tiny-gqa", 1, 1, 0, 1, 0, ATTND_DTYPE_F32);
    memcpy(f.ids[0], id.bytes, 16);
    f.pos[0] = 3; /* the layer is empty: 0 is where it must land */
    attnd_status st = engine_attend(&x, &f, &err);
    ck_assert_fails(st, err, ATTND_ERR_FAILED_PRECONDITION, "positions[0]");
    f.pos[0] = 0;
    ck_assert_int_eq(engine_attend(&x, &f, &err), ATTND_OK);
    fx_free(&f);
    attnd_engine_destroy(x.e);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("service_validate_attend");
    TCase *tc = tcase_create("attend");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_random_good_attend_requests_pass_as_the_engine_request_they_mean);
    tcase_add_test(tc, test_layer_past_model_is_out_of_range);
    tcase_add_test(tc, test_empty_or_oversized_batch_is_invalid_argument);
    tcase_add_test(tc, test_session_id_of_wrong_length_is_invalid_argument);
    tcase_add_test(tc, test_duplicate_session_in_batch_is_invalid_argument);
    tcase_add_test(tc, test_missing_q_is_invalid_argument);
    tcase_add_test(tc, test_q_with_invalid_dtype_is_invalid_argument);
    tcase_add_test(tc, test_q_of_wrong_rank_is_invalid_argument);
    tcase_add_test(tc, test_q_heads_of_another_model_name_the_expected_count);
    tcase_add_test(tc, test_q_batch_dim_not_matching_session_ids_is_invalid_argument);
    tcase_add_test(tc, test_q_width_not_d_k_is_invalid_argument);
    tcase_add_test(tc, test_query_tokens_outside_one_to_64_are_invalid_argument);
    tcase_add_test(tc, test_q_data_of_wrong_length_is_invalid_argument);
    tcase_add_test(tc, test_new_kv_with_invalid_dtype_is_invalid_argument);
    tcase_add_test(tc, test_new_kv_of_wrong_rank_is_invalid_argument);
    tcase_add_test(tc, test_new_kv_batch_dim_not_matching_is_invalid_argument);
    tcase_add_test(tc, test_new_kv_entry_of_wrong_size_is_invalid_argument);
    tcase_add_test(tc, test_new_kv_tokens_not_matching_q_tokens_are_invalid_argument);
    tcase_add_test(tc, test_new_kv_data_of_wrong_length_is_invalid_argument);
    tcase_add_test(tc, test_positions_count_mismatch_is_invalid_argument);
    tcase_add_test(tc, test_positions_without_new_kv_are_invalid_argument);
    tcase_add_test(tc, test_invalid_out_dtype_is_invalid_argument);
    tcase_add_test(tc, test_random_corruptions_never_crash_and_fail_cleanly);
    suite_add_tcase(s, tc);

    tc = tcase_create("engine");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_unknown_session_is_not_found);
    tcase_add_test(tc, test_new_kv_at_wrong_position_is_failed_precondition);
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
