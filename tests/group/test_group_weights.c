/* LoadWeights and Attend with up_project on worker groups: each rank
 * up-projects its own partial result with its part of W_UV and the leader
 * merges (sequence) or sums (latent, the all-reduce) d_v-wide rows. The
 * up-projected output must equal the plain Attend's latent output times
 * W_UV, computed here in float64, for the very same query (no new KV, so
 * both calls see the same cache). W_UV goes in through libattnd
 * (attnd_client_load_weights); up_project Attends go out both through
 * libattnd (attend_args.up_project) and as raw gRPC (tests/service/rawgrpc.h),
 * which also checks the reply's shape on the wire. W_UV holding a NaN or an
 * infinity is refused naming the element, and the weights loaded before
 * stay. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "group_testutil.h"
#include "rawgrpc.h"

#include "attnd.pb-c.h"

#define B 2
#define D_VO 16

/* LoadWeights of w [H][d_c][D_VO] f32 for `layer`; the gRPC code. */
static int load_weights(grpc_channel *ch, uint32_t layer, const float *w, int64_t H, int64_t dc,
                        int64_t dvo, uint64_t *bytes_p, char *details)
{
    Attnd__V1__LoadWeightsRequest req = ATTND__V1__LOAD_WEIGHTS_REQUEST__INIT;
    Attnd__V1__Tensor t = ATTND__V1__TENSOR__INIT;
    int64_t shape[3] = {H, dc, dvo};
    uint8_t *resp = NULL;
    size_t len, rlen = 0;
    t.dtype = ATTND__V1__DTYPE__DTYPE_F32;
    t.n_shape = 3;
    t.shape = shape;
    t.data.data = (uint8_t *)w;
    t.data.len = (size_t)(H * dc * dvo) * sizeof(float);
    req.layer = layer;
    req.w_uv = &t;
    uint8_t *bytes = rg_pack(&req.base, &len);
    int code = rg_unary(ch, "/attnd.v1.Attnd/LoadWeights", bytes, len, &resp, &rlen, details,
                        ATTND_ERROR_MSG_MAX);
    if (code == 0 && bytes_p) {
        Attnd__V1__LoadWeightsResponse *r =
            attnd__v1__load_weights_response__unpack(NULL, rlen, resp);
        ck_assert_ptr_nonnull(r);
        *bytes_p = r->bytes;
        attnd__v1__load_weights_response__free_unpacked(r, NULL);
    }
    free(bytes);
    free(resp);
    return code;
}

/* Attend with up_project for B sessions, q [B][H][d_k] f32; out gets
 * [B][H][d_vo] f32. The gRPC code. */
static int attend_up(grpc_channel *ch, const attnd_session_id *ids, uint32_t layer,
                     const float *q, int64_t H, int64_t dk, float *out, size_t out_floats,
                     char *details)
{
    Attnd__V1__AttendRequest req = ATTND__V1__ATTEND_REQUEST__INIT;
    Attnd__V1__Tensor t = ATTND__V1__TENSOR__INIT;
    ProtobufCBinaryData sid[B];
    int64_t shape[3] = {B, H, dk};
    uint8_t *resp = NULL;
    size_t len, rlen = 0;
    for (int i = 0; i < B; i++)
        sid[i] = (ProtobufCBinaryData){ATTND_SESSION_ID_BYTES, (uint8_t *)ids[i].bytes};
    t.dtype = ATTND__V1__DTYPE__DTYPE_F32;
    t.n_shape = 3;
    t.shape = shape;
    t.data.data = (uint8_t *)q;
    t.data.len = (size_t)(B * H * dk) * sizeof(float);
    req.layer = layer;
    req.n_session_ids = B;
    req.session_ids = sid;
    req.q = &t;
    req.up_project = 1;
    uint8_t *bytes = rg_pack(&req.base, &len);
    int code = rg_unary(ch, "/attnd.v1.Attnd/Attend", bytes, len, &resp, &rlen, details,
                        ATTND_ERROR_MSG_MAX);
    if (code == 0) {
        Attnd__V1__AttendResponse *r = attnd__v1__attend_response__unpack(NULL, rlen, resp);
        ck_assert_ptr_nonnull(r);
        ck_assert_ptr_nonnull(r->out);
        ck_assert_uint_eq(r->out->n_shape, 4);
        ck_assert_int_eq(r->out->shape[3], D_VO);
        ck_assert_uint_eq(r->out->data.len, out_floats * sizeof(float));
        memcpy(out, r->out->data.data, r->out->data.len);
        attnd__v1__attend_response__free_unpacked(r, NULL);
    }
    free(bytes);
    free(resp);
    return code;
}

static void run(const char *shard, int n, const char *rope)
{
    const char *flags[] = {"--model", "tiny-mla", "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "2", "--kernel-threads", "1", "--shard", shard,
                           "--tpla-rope", rope, NULL};
    gt_group g;
    cu_seqs s;
    attnd_error err;
    char details[ATTND_ERROR_MSG_MAX];
    uint64_t bytes = 0;

    fprintf(stderr, "up_project, %s sharding over %d ranks:\n", shard, n);
    grpc_init(); /* in the test's own (forked) process: gRPC does not survive fork */
    ck_assert_int_eq(gt_group_start(&g, n, flags), 0);
    attnd_error_clear(&err);
    ck_assert_int_eq(cu_seqs_open(&s, g.c[n - 1], B, ATTND_DTYPE_F32, 0, &err), ATTND_OK);
    for (uint32_t i = 0; i < B; i++)
        ck_assert_int_eq(cu_prefill(&s, i, 29 + 11 * i, (const uint32_t[]){13, 0}, &err),
                         ATTND_OK);
    const int64_t H = s.m.n_q_heads, dc = s.m.d_latent, dk = s.m.d_k;
    float *w = malloc(sizeof(float) * (size_t)(H * dc * D_VO));
    float *q = malloc(sizeof(float) * (size_t)(B * H * dk));
    float *o = malloc(sizeof(float) * (size_t)(B * H * dc));
    float *p = malloc(sizeof(float) * (size_t)(B * H * D_VO));
    float *ref = malloc(sizeof(float) * (size_t)(B * H * D_VO));
    ck_assert(w && q && o && p && ref);
    grpc_channel *ch0 = rg_channel(g.rank[0].target);

    /* W_UV of layer 2 loaded through the last rank; layer 1 has none */
    attnd_rng_fill(&s.rng, ATTND_DTYPE_F32, w, (size_t)(H * dc * D_VO));
    grpc_channel *chl = rg_channel(g.rank[n - 1].target);
    attnd_tensor wt = {ATTND_DTYPE_F32, 3, {H, dc, D_VO}, w};
    ck_assert_int_eq(attnd_client_load_weights(g.c[n - 1], 2, &wt, &bytes, &err), ATTND_OK);
    ck_assert_uint_eq(bytes, (uint64_t)(H * (dc / (strcmp(shard, "latent") ? 1 : n)) * D_VO *
                                        (int64_t)sizeof(float)));
    /* the same layer again with a NaN or an infinity somewhere: refused by
     * the leader, which converts the weights, before any rank gets them
     * (the checks below still find the first W_UV) */
    {
        static const float bad[3] = {NAN, INFINITY, -INFINITY};
        static const char *const name[3] = {"NaN", "+Inf", "-Inf"};
        size_t nw = (size_t)(H * dc * D_VO), at = (size_t)(attnd_rng_next(&s.rng) % nw);
        int k = (int)(attnd_rng_next(&s.rng) % 3);
        float *w2 = malloc(sizeof(float) * nw);
        char want[64];
        memcpy(w2, w, sizeof(float) * nw);
        w2[at] = bad[k];
        attnd_tensor wt2 = {ATTND_DTYPE_F32, 3, {H, dc, D_VO}, w2};
        snprintf(want, sizeof want, "w_uv: element %zu is %s", at, name[k]);
        cu_assert_fails(attnd_client_load_weights(g.c[0], 2, &wt2, NULL, &err), err,
                        ATTND_ERR_INVALID_ARGUMENT, want);
        free(w2);
    }
    attnd_rng_fill(&s.rng, ATTND_DTYPE_F32, q, (size_t)(B * H * dk));
    int code = attend_up(ch0, s.ids, 1, q, H, dk, p, (size_t)(B * H * D_VO), details);
    ck_assert_int_eq(code, -ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(details, "up_project"));

    for (int k = 0; k < 3; k++) {
        attnd_rng_fill(&s.rng, ATTND_DTYPE_F32, q, (size_t)(B * H * dk));
        attnd_attend_args a = {.layer = 2, .n_seqs = B, .sessions = s.ids,
                               .q = {ATTND_DTYPE_F32, 3, {B, H, dk}, q},
                               .out = o, .out_capacity = sizeof(float) * (size_t)(B * H * dc)};
        ck_assert_int_eq(attnd_client_attend(g.c[k % n], &a, &err), ATTND_OK);
        code = attend_up(ch0, s.ids, 2, q, H, dk, p, (size_t)(B * H * D_VO), details);
        ck_assert_msg(code == 0, "Attend up_project: %d %s", code, details);
        for (int64_t r = 0; r < B * H; r++) /* ref = o[r] . W[h] */
            for (int64_t j = 0; j < D_VO; j++) {
                double acc = 0.0;
                for (int64_t c = 0; c < dc; c++)
                    acc += (double)o[r * dc + c] * w[((r % H) * dc + c) * D_VO + j];
                ref[r * D_VO + j] = (float)acc;
            }
        double e = gt_max_row_err(p, ref, (size_t)(B * H), D_VO);
        fprintf(stderr, "  call %d: max rel err %.3g\n", k, e);
        ck_assert_msg(e <= 1e-5, "up-projected output off by %g", e);
        /* the same through libattnd, led by another rank */
        memset(p, 0xff, sizeof(float) * (size_t)(B * H * D_VO)); /* NaN: unwritten */
        a.up_project = 1;
        a.out = p;
        a.out_capacity = sizeof(float) * (size_t)(B * H * D_VO);
        ck_assert_msg(attnd_client_attend(g.c[(k + 1) % n], &a, &err) == ATTND_OK,
                      "libattnd up_project: %s", err.msg);
        e = gt_max_row_err(p, ref, (size_t)(B * H), D_VO);
        ck_assert_msg(e <= 1e-5, "libattnd up-projected output off by %g", e);
    }
    grpc_channel_destroy(ch0);
    grpc_channel_destroy(chl);
    cu_seqs_close(&s);
    free(w);
    free(q);
    free(o);
    free(p);
    free(ref);
    ck_assert_int_eq(gt_group_stop(&g), 0);
    grpc_shutdown();
}

START_TEST(test_up_projection_in_sequence_mode_equals_output_times_w_uv)
{
    run("sequence", 2, "replicate");
}
END_TEST

START_TEST(test_up_projection_in_latent_mode_sums_to_output_times_w_uv)
{
    run("latent", 2, "replicate");
    run("latent", 4, "split");
}
END_TEST

/* A GQA worker has no latent to project; bad shapes name the field. (A
 * lone MLA worker takes weights too: tests/service/test_narrow_rpc.c.) */
START_TEST(test_load_weights_refusals_name_the_field)
{
    const char *flags[] = {"--model", "tiny-mla", "--threads", "2", NULL};
    const char *gqa[] = {"--model", "tiny-gqa", "--threads", "2", NULL};
    cu_server lone;
    gt_group g;
    char details[ATTND_ERROR_MSG_MAX];
    float w[8 * 64 * 4] = {0};
    grpc_init();
    ck_assert_int_eq(cu_server_start(&lone, gqa), 0);
    grpc_channel *ch = rg_channel(lone.target);
    ck_assert_int_eq(load_weights(ch, 0, w, 8, 64, 4, NULL, details),
                     -ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(details, "w_uv"));
    ck_assert_ptr_nonnull(strstr(details, "MLA"));
    grpc_channel_destroy(ch);
    ck_assert_int_eq(cu_server_stop(&lone), 0);

    ck_assert_int_eq(gt_group_start(&g, 2, flags), 0);
    ch = rg_channel(g.rank[1].target);
    ck_assert_int_eq(load_weights(ch, 0, w, 8, 32, 8, NULL, details),
                     -ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(details, "w_uv.shape"));
    ck_assert_int_eq(load_weights(ch, 9, w, 8, 64, 4, NULL, details), -ATTND_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(details, "layer"));
    /* libattnd: the server's answers pass through; what the wire cannot
     * carry is refused before sending */
    attnd_error err;
    attnd_tensor wt = {ATTND_DTYPE_F32, 3, {8, 32, 8}, w};
    cu_assert_fails(attnd_client_load_weights(g.c[0], 0, &wt, NULL, &err), err,
                    ATTND_ERR_INVALID_ARGUMENT, "w_uv.shape");
    wt.ndim = 2;
    cu_assert_fails(attnd_client_load_weights(g.c[0], 0, &wt, NULL, &err), err,
                    ATTND_ERR_INVALID_ARGUMENT, "w_uv.ndim");
    grpc_channel_destroy(ch);
    ck_assert_int_eq(gt_group_stop(&g), 0);
    grpc_shutdown();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("group_weights");
    TCase *tc = tcase_create("weights");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_up_projection_in_sequence_mode_equals_output_times_w_uv);
    tcase_add_test(tc, test_up_projection_in_latent_mode_sums_to_output_times_w_uv);
    tcase_add_test(tc, test_load_weights_refusals_name_the_field);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
