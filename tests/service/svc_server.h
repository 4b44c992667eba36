/* The fixture of the service room's over-the-wire suites: start attnd
 * (tiny-mla, ephemeral port) as a child, stop it requiring exit 0, and
 * build and check attnd.v1 messages with raw gRPC core calls. Expected
 * outputs come from a float64 softmax over KV values that are exact in
 * bf16, so what the server stored is what was sent. Header-only, for
 * test_server.c and test_rpc.c. */
#ifndef ATTND_SVC_SERVER_H
#define ATTND_SVC_SERVER_H

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd.pb-c.h"
#include "attnd_kernels.h"
#include "attnd_worker.h"
#include "health.pb-c.h"
#include "rawgrpc.h"

#ifndef ATTND_BIN
#error "ATTND_BIN must name the attnd executable"
#endif

#define HQ 8  /* tiny-mla */
#define DK 80
#define DV 64

static rg_server srv;
static grpc_channel *ch;

static inline void setup(void)
{
    memset(&srv, 0, sizeof srv);
    srv.out_fd = -1;
    ch = NULL;
    grpc_init();
}

static inline void teardown(void)
{
    if (ch)
        grpc_channel_destroy(ch);
    ch = NULL;
    rg_kill(&srv);
    grpc_shutdown();
}

/* Start attnd serving tiny-mla on an ephemeral port, plus extra flags,
 * with RLIMIT_NOFILE soft/hard when hard is nonzero. */
static inline void boot_nofile(const char *extra1, const char *extra2, rlim_t soft, rlim_t hard)
{
    const char *args[] = {"--listen", "127.0.0.1:0", "--model", "tiny-mla", "--kv-memory",
                          "64M", "--threads", "2", "--shutdown-grace-ms", "60000",
                          extra1, extra2, NULL};
    ck_assert_int_eq(rg_spawn_nofile(&srv, ATTND_BIN, args, soft, hard), 0);
    ck_assert_msg(rg_read_port(&srv) == 0, "no listening line from attnd");
    ch = rg_channel(srv.target);
}

static inline void boot(const char *extra1, const char *extra2)
{
    boot_nofile(extra1, extra2, 0, 0);
}

/* SIGTERM; attnd's wait status (-1: it did not exit in time). */
static inline int stop_status(void)
{
    if (ch)
        grpc_channel_destroy(ch);
    ch = NULL;
    kill(srv.pid, SIGTERM);
    return rg_wait_exit(&srv, RG_WAIT_MS);
}

/* Require stop_status to be a clean exit 0. */
static inline void assert_exited_cleanly(int status)
{
    ck_assert_msg(status != -1, "attnd did not exit after SIGTERM");
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "attnd ended with wait status 0x%x", status);
}

/* SIGTERM, then require a clean exit 0. */
static inline void stop_cleanly(void)
{
    assert_exited_cleanly(stop_status());
}

/* ---- message builders ---------------------------------------------------------- */

/* Token t's MLA entry and head h's query: small multiples of 1/8 and 1/16,
 * exact in bf16, so stored KV equals what was sent. */
static inline float kv_val(int t, int e)
{
    return (float)((t * 7 + e * 3) % 17 - 8) / 8.0f;
}

static inline float q_val(int step, int h, int e)
{
    return (float)((step * 3 + h * 5 + e) % 11 - 5) / 16.0f;
}

/* The float64 answer for head h over tokens 0..n-1 with query of `step`. */
static inline void expected(int step, int h, int n, double *out, double *lse)
{
    double scale = attnd_model_find("tiny-mla")->scale, s[64], mx = -INFINITY, sum = 0;
    for (int t = 0; t < n; t++) {
        s[t] = 0;
        for (int e = 0; e < DK; e++)
            s[t] += (double)q_val(step, h, e) * kv_val(t, e);
        s[t] *= scale;
        mx = s[t] > mx ? s[t] : mx;
    }
    for (int t = 0; t < n; t++)
        sum += exp(s[t] - mx);
    for (int d = 0; d < DV; d++) {
        out[d] = 0;
        for (int t = 0; t < n; t++)
            out[d] += exp(s[t] - mx) / sum * kv_val(t, d);
    }
    *lse = mx + log(sum);
}

/* An AttendRequest for one session: q of `step`, and token `pos`'s entry as
 * new_kv at position pos (pos < 0: no new_kv). */
static inline uint8_t *attend_req(const uint8_t id[16], uint32_t layer, int step, int pos,
                           uint64_t rid, size_t *len)
{
    static float q[HQ * DK], kv[DK];
    static int64_t qshape[] = {1, HQ, DK}, kvshape[] = {1, DK};
    uint64_t position = (uint64_t)pos;
    for (int h = 0; h < HQ; h++)
        for (int e = 0; e < DK; e++)
            q[h * DK + e] = q_val(step, h, e);
    for (int e = 0; e < DK; e++)
        kv[e] = kv_val(pos, e);
    Attnd__V1__AttendRequest m = ATTND__V1__ATTEND_REQUEST__INIT;
    Attnd__V1__Tensor tq = ATTND__V1__TENSOR__INIT, tk = ATTND__V1__TENSOR__INIT;
    ProtobufCBinaryData sid = {16, (uint8_t *)id};
    tq.dtype = ATTND__V1__DTYPE__DTYPE_F32;
    tq.n_shape = 3;
    tq.shape = qshape;
    tq.data.len = sizeof q;
    tq.data.data = (uint8_t *)q;
    tk.dtype = ATTND__V1__DTYPE__DTYPE_F32;
    tk.n_shape = 2;
    tk.shape = kvshape;
    tk.data.len = sizeof kv;
    tk.data.data = (uint8_t *)kv;
    m.layer = layer;
    m.n_session_ids = 1;
    m.session_ids = &sid;
    m.q = &tq;
    if (pos >= 0) {
        m.new_kv = &tk;
        m.n_positions = 1;
        m.positions = &position;
    }
    m.return_lse = 1;
    m.request_id = rid;
    return rg_pack(&m.base, len);
}

/* Check an AttendResponse against the float64 answer over n tokens. */
static inline void check_attend_reply(const uint8_t *data, size_t len, int step, int n, uint64_t rid)
{
    Attnd__V1__AttendResponse *r = attnd__v1__attend_response__unpack(NULL, len, data);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->request_id, rid);
    ck_assert_ptr_nonnull(r->out);
    ck_assert_int_eq(r->out->dtype, ATTND__V1__DTYPE__DTYPE_F32);
    ck_assert_uint_eq(r->out->n_shape, 4);
    int64_t want[] = {1, 1, HQ, DV};
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(r->out->shape[i], want[i]);
    ck_assert_uint_eq(r->out->data.len, sizeof(float) * HQ * DV);
    ck_assert_ptr_nonnull(r->lse);
    ck_assert_uint_eq(r->lse->data.len, sizeof(float) * HQ);
    const float *out = (const float *)r->out->data.data, *lse = (const float *)r->lse->data.data;
    for (int h = 0; h < HQ; h++) {
        double e[DV], el;
        expected(step, h, n, e, &el);
        for (int d = 0; d < DV; d++)
            ck_assert_msg(fabs(out[h * DV + d] - e[d]) < 1e-5, "out[%d][%d] = %g, want %g", h,
                          d, out[h * DV + d], e[d]);
        ck_assert_msg(fabs(lse[h] - el) < 1e-5 * (1 + fabs(el)), "lse[%d] = %g, want %g", h,
                      lse[h], el);
    }
    attnd__v1__attend_response__free_unpacked(r, NULL);
}

static inline int health(grpc_channel *c, const char *service, int *serving_p, char *details)
{
    Grpc__Health__V1__HealthCheckRequest m = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    m.service = (char *)service;
    size_t len, rlen = 0;
    uint8_t *req = rg_pack(&m.base, &len), *resp = NULL;
    int code = rg_unary(c, "/grpc.health.v1.Health/Check", req, len, &resp, &rlen, details, 256);
    *serving_p = -1;
    if (resp) {
        Grpc__Health__V1__HealthCheckResponse *r =
            grpc__health__v1__health_check_response__unpack(NULL, rlen, resp);
        ck_assert_ptr_nonnull(r);
        *serving_p = r->status;
        grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    }
    free(req);
    free(resp);
    return code;
}

static inline void create_session(uint8_t id[16])
{
    Attnd__V1__CreateSessionRequest m = ATTND__V1__CREATE_SESSION_REQUEST__INIT;
    size_t len, rlen;
    uint8_t *req = rg_pack(&m.base, &len), *resp = NULL;
    char details[256];
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/CreateSession", req, len, &resp, &rlen,
                              details, sizeof details),
                     GRPC_STATUS_OK);
    Attnd__V1__CreateSessionResponse *r =
        attnd__v1__create_session_response__unpack(NULL, rlen, resp);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->session_id.len, 16);
    memcpy(id, r->session_id.data, 16);
    ck_assert_ptr_nonnull(r->model);
    ck_assert_str_eq(r->model->name, "tiny-mla");
    ck_assert_int_eq(r->model->kind, ATTND__V1__ATTENTION_KIND__ATTENTION_KIND_MLA);
    ck_assert_uint_eq(r->model->n_layers, 4);
    ck_assert_uint_eq(r->model->n_q_heads, HQ);
    ck_assert_uint_eq(r->model->n_kv_heads, 1);
    ck_assert_uint_eq(r->model->d_latent, 64);
    ck_assert_uint_eq(r->model->d_rope, 16);
    ck_assert_float_eq(r->model->scale, attnd_model_find("tiny-mla")->scale);
    ck_assert_int_eq(r->model->kv_dtype, ATTND__V1__DTYPE__DTYPE_BF16);
    ck_assert_uint_eq(r->model->page_size, 64);
    attnd__v1__create_session_response__free_unpacked(r, NULL);
    free(req);
    free(resp);
}

static inline Attnd__V1__GetStatsResponse *get_stats(void)
{
    Attnd__V1__GetStatsRequest m = ATTND__V1__GET_STATS_REQUEST__INIT;
    size_t len, rlen;
    uint8_t *req = rg_pack(&m.base, &len), *resp = NULL;
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/GetStats", req, len, &resp, &rlen, NULL, 0),
                     GRPC_STATUS_OK);
    Attnd__V1__GetStatsResponse *r = attnd__v1__get_stats_response__unpack(NULL, rlen, resp);
    ck_assert_ptr_nonnull(r);
    free(req);
    free(resp);
    return r;
}

/* An AppendKV chunk of tokens [start, start + n) of layer, in dtype. */
static inline uint8_t *append_chunk(const uint8_t id[16], uint32_t layer, int start, int n,
                             attnd_dtype dt, size_t *len)
{
    static uint8_t data[64 * DK * 4];
    int64_t shape[] = {n, DK};
    float f[DK];
    for (int t = 0; t < n; t++) {
        for (int e = 0; e < DK; e++)
            f[e] = kv_val(start + t, e);
        attnd_dtype_convert(dt, data + (size_t)t * DK * attnd_dtype_size(dt), ATTND_DTYPE_F32, f, DK);
    }
    Attnd__V1__AppendKVRequest m = ATTND__V1__APPEND_KVREQUEST__INIT;
    Attnd__V1__Tensor kv = ATTND__V1__TENSOR__INIT;
    kv.dtype = (Attnd__V1__DType)dt;
    kv.n_shape = 2;
    kv.shape = shape;
    kv.data.len = (size_t)n * DK * attnd_dtype_size(dt);
    kv.data.data = data;
    m.session_id.len = 16;
    m.session_id.data = (uint8_t *)id;
    m.layer = layer;
    m.start = (uint64_t)start;
    m.kv = &kv;
    return rg_pack(&m.base, len);
}

#endif /* ATTND_SVC_SERVER_H */
