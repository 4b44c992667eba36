/* Check suite of the service codec: every attnd.v1 and health message
 * survives pack -> grpc byte buffer (one slice or many) -> flatten -> unpack
 * into the arena with its tensors' bytes intact; the hand-written
 * AttendResponse encoder produces exactly what protobuf-c would; the arena
 * stops allocating once it has seen a cycle's size; garbage is refused with
 * INVALID_ARGUMENT naming the message type. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/slice.h>

#include "attnd_kernels.h"
#include "codec.h"
#include "testutil.h"
#include "validate.h"

/* ---- helpers ------------------------------------------------------------------ */

/* Pack m, cut the bytes into n_slices slices, wrap them in a byte buffer. */
static grpc_byte_buffer *bb_of(const ProtobufCMessage *m, size_t n_slices)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len + 1);
    ck_assert_uint_eq(protobuf_c_message_pack(m, buf), len);
    grpc_slice slices[8];
    if (n_slices > 8)
        n_slices = 8;
    if (n_slices > len)
        n_slices = len ? len : 1;
    size_t off = 0;
    for (size_t i = 0; i < n_slices; i++) {
        size_t end = i + 1 == n_slices ? len : len * (i + 1) / n_slices;
        slices[i] = grpc_slice_from_copied_buffer((const char *)buf + off, end - off);
        off = end;
    }
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(slices, n_slices);
    for (size_t i = 0; i < n_slices; i++)
        grpc_slice_unref(slices[i]);
    free(buf);
    return bb;
}

/* Round trip m through a byte buffer of n_slices slices into arena a. */
static ProtobufCMessage *round_trip(const ProtobufCMessage *m, size_t n_slices,
                                    attnd_srv_arena *a, attnd_srv_buf *flat)
{
    grpc_byte_buffer *bb = bb_of(m, n_slices);
    const uint8_t *data;
    size_t len;
    attnd_error err;
    ck_assert_int_eq(attnd_srv_bb_flatten(bb, flat, &data, &len, &err), ATTND_OK);
    ck_assert_uint_eq(len, protobuf_c_message_get_packed_size(m));
    ProtobufCMessage *out = attnd_srv_unpack(m->descriptor, a, data, len, &err);
    ck_assert_ptr_nonnull(out);
    grpc_byte_buffer_destroy(bb);
    return out;
}

static void fill_random(tu_rng *r, uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)tu_next(r);
}

/* A random tensor: dtype, 1..5 dims, matching random bytes (owned by t). */
static void random_tensor(tu_rng *r, Attnd__V1__Tensor *t, int64_t *shape)
{
    attnd__v1__tensor__init(t);
    t->dtype = (Attnd__V1__DType)tu_int(r, 1, 3);
    t->n_shape = (size_t)tu_int(r, 1, 5);
    t->shape = shape;
    size_t n = attnd_dtype_size((attnd_dtype)t->dtype);
    for (size_t i = 0; i < t->n_shape; i++) {
        shape[i] = tu_int(r, 1, 7);
        n *= (size_t)shape[i];
    }
    t->data.len = n;
    t->data.data = malloc(n);
    fill_random(r, t->data.data, n);
}

static void assert_tensor_eq(const Attnd__V1__Tensor *a, const Attnd__V1__Tensor *b)
{
    ck_assert_int_eq(a->dtype, b->dtype);
    ck_assert_uint_eq(a->n_shape, b->n_shape);
    for (size_t i = 0; i < a->n_shape; i++)
        ck_assert_int_eq(a->shape[i], b->shape[i]);
    ck_assert_uint_eq(a->data.len, b->data.len);
    ck_assert_int_eq(memcmp(a->data.data, b->data.data, a->data.len), 0);
}

static attnd_srv_arena arena;
static attnd_srv_buf flat;
static tu_rng rng;

static void setup(void)
{
    attnd_srv_arena_init(&arena, 0);
    memset(&flat, 0, sizeof flat);
    tu_rng_init(&rng, "service_codec");
}

static void teardown(void)
{
    attnd_srv_arena_cleanup(&arena);
    attnd_srv_buf_cleanup(&flat);
}

/* ---- round trips -------------------------------------------------------------- */

START_TEST(test_attend_request_round_trips_with_tensor_bytes_intact)
{
    for (int iter = 0; iter < 20; iter++) {
        Attnd__V1__AttendRequest m = ATTND__V1__ATTEND_REQUEST__INIT;
        Attnd__V1__Tensor q, kv;
        int64_t qs[5], ks[5];
        uint8_t ids[4][16];
        ProtobufCBinaryData idv[4];
        uint64_t pos[4];
        random_tensor(&rng, &q, qs);
        random_tensor(&rng, &kv, ks);
        m.layer = (uint32_t)tu_int(&rng, 0, 100);
        m.n_session_ids = (size_t)tu_int(&rng, 1, 4);
        for (size_t i = 0; i < m.n_session_ids; i++) {
            fill_random(&rng, ids[i], 16);
            idv[i].len = 16;
            idv[i].data = ids[i];
            pos[i] = tu_next(&rng);
        }
        m.session_ids = idv;
        m.q = &q;
        m.new_kv = iter % 2 ? &kv : NULL;
        m.n_positions = iter % 2 ? m.n_session_ids : 0;
        m.positions = pos;
        m.return_lse = iter % 3 == 0;
        m.out_dtype = (Attnd__V1__DType)(iter % 4);
        m.request_id = tu_next(&rng);

        attnd_srv_arena_reset(&arena);
        Attnd__V1__AttendRequest *g =
            (Attnd__V1__AttendRequest *)round_trip(&m.base, 1 + (size_t)iter % 5, &arena, &flat);
        ck_assert_uint_eq(g->layer, m.layer);
        ck_assert_uint_eq(g->n_session_ids, m.n_session_ids);
        for (size_t i = 0; i < m.n_session_ids; i++)
            ck_assert_int_eq(memcmp(g->session_ids[i].data, ids[i], 16), 0);
        assert_tensor_eq(g->q, &q);
        if (m.new_kv) {
            assert_tensor_eq(g->new_kv, &kv);
            ck_assert_uint_eq(g->n_positions, m.n_positions);
            for (size_t i = 0; i < m.n_positions; i++)
                ck_assert_uint_eq(g->positions[i], pos[i]);
        } else {
            ck_assert_ptr_null(g->new_kv);
        }
        ck_assert_int_eq(g->return_lse, m.return_lse);
        ck_assert_int_eq(g->out_dtype, m.out_dtype);
        ck_assert_uint_eq(g->request_id, m.request_id);
        free(q.data.data);
        free(kv.data.data);
    }
}
END_TEST

START_TEST(test_append_kv_request_and_response_round_trip)
{
    Attnd__V1__AppendKVRequest m = ATTND__V1__APPEND_KVREQUEST__INIT;
    Attnd__V1__Tensor kv;
    int64_t ks[5];
    uint8_t id[16];
    fill_random(&rng, id, 16);
    random_tensor(&rng, &kv, ks);
    m.session_id.len = 16;
    m.session_id.data = id;
    m.layer = 3;
    m.start = 1ull << 40;
    m.kv = &kv;
    Attnd__V1__AppendKVRequest *g =
        (Attnd__V1__AppendKVRequest *)round_trip(&m.base, 3, &arena, &flat);
    ck_assert_int_eq(memcmp(g->session_id.data, id, 16), 0);
    ck_assert_uint_eq(g->layer, 3);
    ck_assert_uint_eq(g->start, 1ull << 40);
    assert_tensor_eq(g->kv, &kv);
    free(kv.data.data);

    Attnd__V1__AppendKVResponse r = ATTND__V1__APPEND_KVRESPONSE__INIT;
    r.chunks = 7;
    r.tokens = 1234567;
    Attnd__V1__AppendKVResponse *gr =
        (Attnd__V1__AppendKVResponse *)round_trip(&r.base, 1, &arena, &flat);
    ck_assert_uint_eq(gr->chunks, 7);
    ck_assert_uint_eq(gr->tokens, 1234567);
}
END_TEST

START_TEST(test_session_messages_round_trip_with_model_info)
{
    Attnd__V1__CreateSessionRequest cq = ATTND__V1__CREATE_SESSION_REQUEST__INIT;
    cq.model = "deepseek-v3";
    cq.max_tokens = 4096;
    Attnd__V1__CreateSessionRequest *gcq =
        (Attnd__V1__CreateSessionRequest *)round_trip(&cq.base, 2, &arena, &flat);
    ck_assert_str_eq(gcq->model, "deepseek-v3");
    ck_assert_uint_eq(gcq->max_tokens, 4096);

    attnd_srv_model model;
    attnd_srv_model_init(&model, attnd_model_find("deepseek-v3"), 64, 1024);
    Attnd__V1__ModelInfo info = ATTND__V1__MODEL_INFO__INIT;
    info.name = "deepseek-v3";
    info.kind = ATTND__V1__ATTENTION_KIND__ATTENTION_KIND_MLA;
    info.n_layers = 61;
    info.n_q_heads = 128;
    info.n_kv_heads = 1;
    info.d_latent = 512;
    info.d_rope = 64;
    info.scale = model.spec->scale;
    info.kv_dtype = ATTND__V1__DTYPE__DTYPE_BF16;
    info.page_size = 64;
    Attnd__V1__CreateSessionResponse cr = ATTND__V1__CREATE_SESSION_RESPONSE__INIT;
    uint8_t id[16];
    fill_random(&rng, id, 16);
    cr.session_id.len = 16;
    cr.session_id.data = id;
    cr.model = &info;
    Attnd__V1__CreateSessionResponse *g =
        (Attnd__V1__CreateSessionResponse *)round_trip(&cr.base, 4, &arena, &flat);
    ck_assert_uint_eq(g->session_id.len, 16);
    ck_assert_int_eq(memcmp(g->session_id.data, id, 16), 0);
    ck_assert_str_eq(g->model->name, "deepseek-v3");
    ck_assert_int_eq(g->model->kind, ATTND__V1__ATTENTION_KIND__ATTENTION_KIND_MLA);
    ck_assert_uint_eq(g->model->n_q_heads, 128);
    ck_assert_uint_eq(g->model->d_latent, 512);
    ck_assert_uint_eq(g->model->d_rope, 64);
    ck_assert_float_eq(g->model->scale, model.spec->scale);
    ck_assert_uint_eq(g->model->page_size, 64);

    Attnd__V1__CloseSessionRequest xq = ATTND__V1__CLOSE_SESSION_REQUEST__INIT;
    xq.session_id.len = 16;
    xq.session_id.data = id;
    Attnd__V1__CloseSessionRequest *gxq =
        (Attnd__V1__CloseSessionRequest *)round_trip(&xq.base, 1, &arena, &flat);
    ck_assert_int_eq(memcmp(gxq->session_id.data, id, 16), 0);
    Attnd__V1__CloseSessionResponse xr = ATTND__V1__CLOSE_SESSION_RESPONSE__INIT;
    xr.pages_freed = 99;
    ck_assert_uint_eq(
        ((Attnd__V1__CloseSessionResponse *)round_trip(&xr.base, 1, &arena, &flat))->pages_freed,
        99);
}
END_TEST

START_TEST(test_stats_and_health_messages_round_trip)
{
    Attnd__V1__GetStatsRequest sq = ATTND__V1__GET_STATS_REQUEST__INIT;
    ck_assert_ptr_nonnull(round_trip(&sq.base, 1, &arena, &flat));
    Attnd__V1__GetStatsResponse sr = ATTND__V1__GET_STATS_RESPONSE__INIT;
    uint64_t *f[] = {&sr.sessions,       &sr.max_sessions,    &sr.pages_total,
                     &sr.pages_used,     &sr.pages_reserved,  &sr.page_bytes,
                     &sr.attend_calls,   &sr.attend_sequences, &sr.append_calls,
                     &sr.tokens_appended, &sr.errors,         &sr.kv_bytes_read,
                     &sr.uptime_ms};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        *f[i] = tu_next(&rng);
    Attnd__V1__GetStatsResponse *g =
        (Attnd__V1__GetStatsResponse *)round_trip(&sr.base, 3, &arena, &flat);
    const uint64_t *gf[] = {&g->sessions,       &g->max_sessions,    &g->pages_total,
                            &g->pages_used,     &g->pages_reserved,  &g->page_bytes,
                            &g->attend_calls,   &g->attend_sequences, &g->append_calls,
                            &g->tokens_appended, &g->errors,         &g->kv_bytes_read,
                            &g->uptime_ms};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        ck_assert_uint_eq(*gf[i], *f[i]);

    Grpc__Health__V1__HealthCheckRequest hq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    hq.service = "attnd.v1.Attnd";
    ck_assert_str_eq(
        ((Grpc__Health__V1__HealthCheckRequest *)round_trip(&hq.base, 2, &arena, &flat))
            ->service,
        "attnd.v1.Attnd");
    Grpc__Health__V1__HealthCheckResponse hr = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    hr.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    ck_assert_int_eq(
        ((Grpc__Health__V1__HealthCheckResponse *)round_trip(&hr.base, 1, &arena, &flat))
            ->status,
        GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
}
END_TEST

/* ---- the AttendResponse glue (attnd_wire underneath) ------------------------------------------------- */

START_TEST(test_attend_reply_encoder_matches_protobuf_c_byte_for_byte)
{
    for (int iter = 0; iter < 40; iter++) {
        attnd_srv_attend_reply r;
        memset(&r, 0, sizeof r);
        r.desc.request_id = iter % 3 ? tu_next(&rng) >> tu_int(&rng, 0, 63) : 0;
        r.desc.out_dtype = (attnd_dtype)tu_int(&rng, 1, 3);
        for (int i = 0; i < 4; i++)
            r.desc.out_shape[i] = tu_int(&rng, 1, i == 3 ? 200 : 5);
        for (int i = 0; i < 3; i++)
            r.desc.lse_shape[i] = r.desc.out_shape[i];
        size_t n_out = (size_t)(r.desc.out_shape[0] * r.desc.out_shape[1] * r.desc.out_shape[2] * r.desc.out_shape[3]);
        size_t n_lse = (size_t)(r.desc.lse_shape[0] * r.desc.lse_shape[1] * r.desc.lse_shape[2]);
        float *out = malloc(n_out * sizeof(float)), *lse = malloc(n_lse * sizeof(float));
        for (size_t i = 0; i < n_out; i++)
            out[i] = (float)tu_normal(&rng);
        for (size_t i = 0; i < n_lse; i++)
            lse[i] = (float)tu_normal(&rng) * 10.0f;
        r.out = out;
        r.lse = iter % 2 ? lse : NULL;
        r.desc.has_lse = r.lse != NULL;

        /* the same message through protobuf-c, data converted up front */
        size_t es = attnd_dtype_size(r.desc.out_dtype);
        uint8_t *conv = malloc(n_out * es);
        attnd_dtype_convert(r.desc.out_dtype, conv, ATTND_DTYPE_F32, out, n_out);
        Attnd__V1__Tensor to = ATTND__V1__TENSOR__INIT, tl = ATTND__V1__TENSOR__INIT;
        to.dtype = (Attnd__V1__DType)r.desc.out_dtype;
        to.n_shape = 4;
        to.shape = r.desc.out_shape;
        to.data.len = n_out * es;
        to.data.data = conv;
        tl.dtype = ATTND__V1__DTYPE__DTYPE_F32;
        tl.n_shape = 3;
        tl.shape = r.desc.lse_shape;
        tl.data.len = n_lse * sizeof(float);
        tl.data.data = (uint8_t *)lse;
        Attnd__V1__AttendResponse m = ATTND__V1__ATTEND_RESPONSE__INIT;
        m.request_id = r.desc.request_id;
        m.out = &to;
        m.lse = r.lse ? &tl : NULL;

        size_t want = protobuf_c_message_get_packed_size(&m.base);
        uint8_t *a = malloc(want), *b = malloc(want + 16);
        protobuf_c_message_pack(&m.base, a);
        ck_assert_uint_eq(attnd_srv_attend_reply_size(&r), want);
        memset(b, 0xee, want + 16);
        attnd_srv_attend_reply_write(&r, b);
        ck_assert_int_eq(memcmp(a, b, want), 0);
        ck_assert_uint_eq(b[want], 0xee); /* wrote exactly `want` bytes */

        /* and through a byte buffer, decoded as any client would */
        grpc_byte_buffer *bb = attnd_srv_attend_reply_pack(&r);
        const uint8_t *data;
        size_t len;
        attnd_error err;
        ck_assert_int_eq(attnd_srv_bb_flatten(bb, &flat, &data, &len, &err), ATTND_OK);
        attnd_srv_arena_reset(&arena);
        Attnd__V1__AttendResponse *g = (Attnd__V1__AttendResponse *)attnd_srv_unpack(
            &attnd__v1__attend_response__descriptor, &arena, data, len, &err);
        ck_assert_ptr_nonnull(g);
        ck_assert_uint_eq(g->request_id, r.desc.request_id);
        assert_tensor_eq(g->out, &to);
        if (r.lse)
            assert_tensor_eq(g->lse, &tl);
        else
            ck_assert_ptr_null(g->lse);
        grpc_byte_buffer_destroy(bb);
        free(a);
        free(b);
        free(conv);
        free(out);
        free(lse);
    }
}
END_TEST

/* ---- arena and failures ------------------------------------------------------------ */

START_TEST(test_arena_stops_allocating_after_one_overflowing_cycle)
{
    attnd_srv_arena a;
    attnd_srv_arena_init(&a, 0);
    for (int cycle = 0; cycle < 3; cycle++) {
        for (int i = 0; i < 100; i++) {
            unsigned char *p = attnd_srv_arena_alloc(&a, 1000 + (size_t)i);
            ck_assert_ptr_nonnull(p);
            ck_assert_uint_eq((uintptr_t)p % 16, 0);
            memset(p, i, 1000 + (size_t)i);
        }
        if (cycle == 0)
            ck_assert_ptr_nonnull(a.overflow);
        else
            ck_assert_ptr_null(a.overflow); /* the main block held it all */
        attnd_srv_arena_reset(&a);
    }
    attnd_srv_arena_cleanup(&a);
}
END_TEST

START_TEST(test_arena_shrinks_after_a_window_of_small_messages)
{
    attnd_srv_arena a;
    attnd_srv_arena_init(&a, 0);
    ck_assert_ptr_nonnull(attnd_srv_arena_alloc(&a, 40u << 20)); /* one huge request */
    attnd_srv_arena_reset(&a);
    ck_assert_uint_ge(a.cap, 40u << 20);
    for (int i = 0; i < ATTND_SRV_TRIM_WINDOW; i++) {
        ck_assert_ptr_nonnull(attnd_srv_arena_alloc(&a, 1000));
        attnd_srv_arena_reset(&a);
    }
    ck_assert_uint_eq(a.cap, ATTND_SRV_TRIM_MIN);
    attnd_srv_arena_cleanup(&a);
}
END_TEST

START_TEST(test_garbage_bytes_are_invalid_argument_naming_the_message)
{
    uint8_t junk[64];
    attnd_error err;
    for (int iter = 0; iter < 50; iter++) {
        fill_random(&rng, junk, sizeof junk);
        junk[0] = 0xff; /* field 31, wire type 7: never valid */
        attnd_error_clear(&err);
        attnd_srv_arena_reset(&arena);
        ck_assert_ptr_null(attnd_srv_unpack(&attnd__v1__attend_request__descriptor, &arena,
                                            junk, sizeof junk, &err));
        ck_assert_int_eq(err.code, ATTND_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_nonnull(strstr(err.msg, "attnd.v1.AttendRequest"));
    }
}
END_TEST

START_TEST(test_empty_byte_buffer_flattens_to_zero_bytes)
{
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(NULL, 0);
    const uint8_t *data = NULL;
    size_t len = 99;
    attnd_error err;
    ck_assert_int_eq(attnd_srv_bb_flatten(bb, &flat, &data, &len, &err), ATTND_OK);
    ck_assert_uint_eq(len, 0);
    ck_assert_ptr_nonnull(data);
    /* an empty message is a valid (all-default) request */
    ck_assert_ptr_nonnull(
        attnd_srv_unpack(&attnd__v1__get_stats_request__descriptor, &arena, data, len, &err));
    grpc_byte_buffer_destroy(bb);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("service_codec");
    TCase *tc = tcase_create("codec");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_attend_request_round_trips_with_tensor_bytes_intact);
    tcase_add_test(tc, test_append_kv_request_and_response_round_trip);
    tcase_add_test(tc, test_session_messages_round_trip_with_model_info);
    tcase_add_test(tc, test_stats_and_health_messages_round_trip);
    tcase_add_test(tc, test_attend_reply_encoder_matches_protobuf_c_byte_for_byte);
    tcase_add_test(tc, test_arena_stops_allocating_after_one_overflowing_cycle);
    tcase_add_test(tc, test_arena_shrinks_after_a_window_of_small_messages);
    tcase_add_test(tc, test_garbage_bytes_are_invalid_argument_naming_the_message);
    tcase_add_test(tc, test_empty_byte_buffer_flattens_to_zero_bytes);
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
