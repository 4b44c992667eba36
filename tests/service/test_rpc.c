/* Check suite of attnd's RPCs over the wire, with raw gRPC core calls: a
 * session's whole life (create, attend, stats, close), AppendKV streams
 * applied all or nothing (a failed, cancelled or still open stream shows
 * none of its chunks; its layers refuse other writers), AttendStream
 * answering in order and ending on a failed request, and INVALID_ARGUMENT /
 * RESOURCE_EXHAUSTED for bad bytes, non-finite tensors and oversized
 * messages. Outputs are checked against a float64 softmax. */
#include "svc_server.h"
#include "testutil.h"

START_TEST(test_undecodable_request_is_invalid_argument)
{
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0x01, 0x02};
    char details[256];
    boot(NULL, NULL);
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/Attend", junk, sizeof junk, NULL, NULL,
                              details, 256),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(details, "attnd.v1.AttendRequest"));
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/CreateSession", junk, sizeof junk, NULL,
                              NULL, details, 256),
                     GRPC_STATUS_INVALID_ARGUMENT);
    stop_cleanly();
}
END_TEST

START_TEST(test_oversized_message_is_resource_exhausted)
{
    size_t n = 200 * 1024;
    uint8_t *big = calloc(1, n);
    boot("--max-message", "64Ki");
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/Attend", big, n, NULL, NULL, NULL, 0),
                     GRPC_STATUS_RESOURCE_EXHAUSTED);
    free(big);
    stop_cleanly();
}
END_TEST

START_TEST(test_session_lifecycle_over_raw_calls)
{
    uint8_t id[16], *resp = NULL;
    size_t len, rlen;
    char details[256];
    boot(NULL, NULL);
    create_session(id);

    /* first decode step: one new token, attended at once */
    uint8_t *req = attend_req(id, 2, 0, 0, 77, &len);
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/Attend", req, len, &resp, &rlen, details,
                              sizeof details),
                     GRPC_STATUS_OK);
    check_attend_reply(resp, rlen, 0, 1, 77);
    free(req);
    free(resp);

    Attnd__V1__GetStatsResponse *st = get_stats();
    ck_assert_uint_eq(st->sessions, 1);
    ck_assert_uint_eq(st->attend_calls, 1);
    ck_assert_uint_eq(st->tokens_appended, 1);
    ck_assert_uint_eq(st->errors, 0);
    ck_assert_str_eq(st->model->name, "tiny-mla");
    attnd__v1__get_stats_response__free_unpacked(st, NULL);

    /* a session for another model */
    Attnd__V1__CreateSessionRequest cm = ATTND__V1__CREATE_SESSION_REQUEST__INIT;
    cm.model = "tiny-gqa";
    req = rg_pack(&cm.base, &len);
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/CreateSession", req, len, NULL, NULL, details,
                              sizeof details),
                     GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(details, "model"));
    free(req);
    st = get_stats();
    ck_assert_uint_eq(st->errors, 1);
    attnd__v1__get_stats_response__free_unpacked(st, NULL);

    Attnd__V1__CloseSessionRequest xm = ATTND__V1__CLOSE_SESSION_REQUEST__INIT;
    xm.session_id.len = 16;
    xm.session_id.data = id;
    req = rg_pack(&xm.base, &len);
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/CloseSession", req, len, &resp, &rlen, NULL,
                              0),
                     GRPC_STATUS_OK);
    Attnd__V1__CloseSessionResponse *xr =
        attnd__v1__close_session_response__unpack(NULL, rlen, resp);
    ck_assert_uint_eq(xr->pages_freed, 1);
    attnd__v1__close_session_response__free_unpacked(xr, NULL);
    free(resp);
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/CloseSession", req, len, NULL, NULL, details,
                              sizeof details),
                     GRPC_STATUS_NOT_FOUND);
    free(req);

    req = attend_req(id, 2, 1, -1, 78, &len);
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/Attend", req, len, NULL, NULL, details,
                              sizeof details),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(details, "session_ids[0]"));
    free(req);
    stop_cleanly();
}
END_TEST

START_TEST(test_append_kv_commits_its_chunks_and_counts_them)
{
    uint8_t id[16], *msg, *resp;
    size_t len, rlen;
    rg_call c;
    boot(NULL, NULL);
    create_session(id);

    ck_assert_int_eq(rg_call_open(&c, ch, "/attnd.v1.Attnd/AppendKV", RG_WAIT_MS), 0);
    ck_assert_int_eq(rg_send_md(&c), 1);
    msg = append_chunk(id, 0, 0, 5, ATTND_DTYPE_BF16, &len);
    ck_assert_int_eq(rg_send(&c, msg, len, 0), 1);
    free(msg);
    msg = append_chunk(id, 0, 5, 3, ATTND_DTYPE_F32, &len);
    ck_assert_int_eq(rg_send(&c, msg, len, 1), 1);
    free(msg);
    ck_assert_int_eq(rg_recv(&c, &resp, &rlen), 1);
    ck_assert_ptr_nonnull(resp);
    Attnd__V1__AppendKVResponse *ar = attnd__v1__append_kvresponse__unpack(NULL, rlen, resp);
    ck_assert_uint_eq(ar->chunks, 2);
    ck_assert_uint_eq(ar->tokens, 8);
    attnd__v1__append_kvresponse__free_unpacked(ar, NULL);
    free(resp);
    ck_assert_int_eq(rg_finish(&c), 1);
    ck_assert_int_eq(c.code, GRPC_STATUS_OK);
    rg_call_close(&c);

    /* what was appended is what attention reads */
    msg = attend_req(id, 0, 3, -1, 5, &len);
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/Attend", msg, len, &resp, &rlen, NULL, 0),
                     GRPC_STATUS_OK);
    check_attend_reply(resp, rlen, 3, 8, 5);
    free(msg);
    free(resp);

    stop_cleanly();
}
END_TEST

/* pages_used from GetStats. */
static uint64_t pages_used(void)
{
    Attnd__V1__GetStatsResponse *st = get_stats();
    uint64_t n = st->pages_used;
    attnd__v1__get_stats_response__free_unpacked(st, NULL);
    return n;
}

/* Wait until pages_used is `want` (staged pages count: this is how a test
 * sees that the server took an open stream's chunks, or dropped them);
 * the deadline is only a hang guard. */
static void wait_pages_used(uint64_t want)
{
    int64_t end = rg_now_ms() + RG_WAIT_MS;
    uint64_t n;
    while ((n = pages_used()) != want && rg_now_ms() < end) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    ck_assert_msg(n == want, "pages_used %llu, waited for %llu", (unsigned long long)n,
                  (unsigned long long)want);
}

/* Open an AppendKV stream and send chunks (layer, start, n) without the
 * half-close. */
static void stream_open(rg_call *c, const uint8_t id[16], const int (*chunks)[3], int n)
{
    ck_assert_int_eq(rg_call_open(c, ch, "/attnd.v1.Attnd/AppendKV", RG_WAIT_MS), 0);
    ck_assert_int_eq(rg_send_md(c), 1);
    for (int i = 0; i < n; i++) {
        size_t len;
        uint8_t *msg = append_chunk(id, (uint32_t)chunks[i][0], chunks[i][1], chunks[i][2],
                                    ATTND_DTYPE_BF16, &len);
        ck_assert_int_eq(rg_send(c, msg, len, 0), 1);
        free(msg);
    }
}

/* Half-close c and expect `code`; with OK, the reply's counts. */
static void stream_end(rg_call *c, int code, uint64_t chunks, uint64_t tokens)
{
    uint8_t *resp;
    size_t rlen;
    rg_half_close(c);
    rg_recv(c, &resp, &rlen);
    ck_assert_int_eq(rg_finish(c), 1);
    ck_assert_msg((int)c->code == code, "AppendKV: %d %s, want %d", c->code, c->details, code);
    if (code == GRPC_STATUS_OK) {
        ck_assert_ptr_nonnull(resp);
        Attnd__V1__AppendKVResponse *r = attnd__v1__append_kvresponse__unpack(NULL, rlen, resp);
        ck_assert_ptr_nonnull(r);
        ck_assert_uint_eq(r->chunks, chunks);
        ck_assert_uint_eq(r->tokens, tokens);
        attnd__v1__append_kvresponse__free_unpacked(r, NULL);
    } else {
        ck_assert_ptr_null(resp);
    }
    free(resp);
}

/* Attend (no new KV) over layer `layer` with the query of `step`, checked
 * against the float64 answer over its first n tokens. */
static void assert_layer_holds(const uint8_t id[16], uint32_t layer, int step, int n)
{
    size_t len, rlen;
    uint8_t *resp = NULL, *req = attend_req(id, layer, step, -1, 7, &len);
    char details[256];
    ck_assert_msg(rg_unary(ch, "/attnd.v1.Attnd/Attend", req, len, &resp, &rlen, details,
                           sizeof details) == GRPC_STATUS_OK, "Attend: %s", details);
    check_attend_reply(resp, rlen, step, n, 7);
    free(req);
    free(resp);
}

/* The robustness issue's case: chunk 1 at 0 (4 tokens), chunk 2 at 99.
 * The stream fails at chunk 2 and applies nothing (no page held, no token
 * counted), so the same stream, corrected, goes through from chunk 1. */
START_TEST(test_append_kv_stream_failing_midway_applies_nothing_and_its_retry_succeeds)
{
    static const int bad[][3] = {{0, 0, 4}, {0, 99, 2}}, good[][3] = {{0, 0, 4}, {0, 4, 2}};
    uint8_t id[16];
    rg_call c;
    boot(NULL, NULL);
    create_session(id);

    stream_open(&c, id, bad, 2);
    stream_end(&c, GRPC_STATUS_FAILED_PRECONDITION, 0, 0);
    ck_assert_ptr_nonnull(strstr(c.details, "start"));
    ck_assert_ptr_null(strstr(c.trailer, "applied"));
    rg_call_close(&c);
    Attnd__V1__GetStatsResponse *st = get_stats();
    ck_assert_uint_eq(st->pages_used, 0);
    ck_assert_uint_eq(st->tokens_appended, 0);
    ck_assert_uint_eq(st->append_calls, 0);
    attnd__v1__get_stats_response__free_unpacked(st, NULL);

    stream_open(&c, id, good, 2);
    stream_end(&c, GRPC_STATUS_OK, 2, 6);
    rg_call_close(&c);
    assert_layer_holds(id, 0, 3, 6);
    stop_cleanly();
}
END_TEST

/* Chunks an open stream has staged (their pages taken) are not attended
 * over until the stream commits at its half-close. */
START_TEST(test_attend_during_an_open_append_kv_stream_sees_only_committed_kv)
{
    static const int first[][3] = {{0, 0, 60}}, open[][3] = {{0, 60, 4}, {1, 0, 3}};
    uint8_t id[16];
    rg_call c;
    boot(NULL, NULL);
    create_session(id);
    stream_open(&c, id, first, 1);
    stream_end(&c, GRPC_STATUS_OK, 1, 60);
    rg_call_close(&c);

    stream_open(&c, id, open, 2);
    wait_pages_used(2); /* layer 1's page: both chunks are staged */
    assert_layer_holds(id, 0, 1, 60);
    stream_end(&c, GRPC_STATUS_OK, 2, 7);
    rg_call_close(&c);
    assert_layer_holds(id, 0, 2, 64);
    assert_layer_holds(id, 1, 2, 3);
    stop_cleanly();
}
END_TEST

/* While a stream holds a layer, another stream's chunk there and an
 * Attend appending there fail ABORTED and change nothing; once it ends,
 * they go through at the committed length. */
START_TEST(test_a_layer_an_open_append_kv_stream_holds_refuses_other_writers_aborted)
{
    static const int open[][3] = {{0, 0, 4}, {1, 0, 1}}, other[][3] = {{0, 0, 2}},
                     after[][3] = {{0, 4, 2}};
    uint8_t id[16], *req;
    size_t len;
    char details[256];
    rg_call c, d;
    boot(NULL, NULL);
    create_session(id);
    stream_open(&c, id, open, 2);
    wait_pages_used(2);

    stream_open(&d, id, other, 1);
    stream_end(&d, GRPC_STATUS_ABORTED, 0, 0);
    ck_assert_ptr_nonnull(strstr(d.details, "another AppendKV stream"));
    rg_call_close(&d);
    req = attend_req(id, 0, 0, 0, 5, &len);
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/Attend", req, len, NULL, NULL, details,
                              sizeof details),
                     GRPC_STATUS_ABORTED);
    ck_assert_ptr_nonnull(strstr(details, "new_kv"));
    free(req);
    ck_assert_uint_eq(pages_used(), 2);

    stream_end(&c, GRPC_STATUS_OK, 2, 5);
    rg_call_close(&c);
    stream_open(&d, id, after, 1);
    stream_end(&d, GRPC_STATUS_OK, 1, 2);
    rg_call_close(&d);
    assert_layer_holds(id, 0, 4, 6);
    stop_cleanly();
}
END_TEST

/* A client that cancels its stream midway: the server drops what the
 * stream staged (its pages go back) and applies none of it. */
START_TEST(test_append_kv_stream_cancelled_by_the_client_applies_nothing)
{
    static const int chunks[][3] = {{0, 0, 4}, {1, 0, 3}};
    uint8_t id[16];
    rg_call c;
    boot(NULL, NULL);
    create_session(id);
    stream_open(&c, id, chunks, 2);
    wait_pages_used(2);
    grpc_call_cancel(c.call, NULL);
    ck_assert_int_eq(rg_finish(&c), 1);
    ck_assert_int_eq(c.code, GRPC_STATUS_CANCELLED);
    rg_call_close(&c);
    wait_pages_used(0);

    /* the same stream again: every chunk at its layer's start */
    stream_open(&c, id, chunks, 2);
    stream_end(&c, GRPC_STATUS_OK, 2, 7);
    rg_call_close(&c);
    assert_layer_holds(id, 0, 5, 4);
    assert_layer_holds(id, 1, 5, 3);
    Attnd__V1__GetStatsResponse *st = get_stats();
    ck_assert_uint_eq(st->tokens_appended, 7);
    attnd__v1__get_stats_response__free_unpacked(st, NULL);
    stop_cleanly();
}
END_TEST

START_TEST(test_attend_stream_answers_each_request_in_order)
{
    uint8_t id[16], *msg, *resp;
    size_t len, rlen;
    rg_call c;
    boot(NULL, NULL);
    create_session(id);

    ck_assert_int_eq(rg_call_open(&c, ch, "/attnd.v1.Attnd/AttendStream", RG_WAIT_MS), 0);
    ck_assert_int_eq(rg_send_md(&c), 1);
    for (int step = 0; step < 4; step++) {
        msg = attend_req(id, 1, step, step, 100 + (uint64_t)step, &len);
        ck_assert_int_eq(rg_send(&c, msg, len, 0), 1);
        free(msg);
        ck_assert_int_eq(rg_recv(&c, &resp, &rlen), 1);
        if (!resp && rg_finish(&c) > 0)
            ck_abort_msg("step %d: stream ended: %d %s", step, c.code, c.details);
        ck_assert_ptr_nonnull(resp);
        check_attend_reply(resp, rlen, step, step + 1, 100 + (uint64_t)step);
        free(resp);
    }
    /* a replayed position fails the request and ends the stream */
    msg = attend_req(id, 1, 9, 2, 200, &len);
    rg_send(&c, msg, len, 0);
    free(msg);
    rg_recv(&c, &resp, &rlen);
    ck_assert_ptr_null(resp);
    ck_assert_int_eq(rg_finish(&c), 1);
    ck_assert_int_eq(c.code, GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(c.details, "positions[0]"));
    rg_call_close(&c);
    stop_cleanly();
}
END_TEST

START_TEST(test_streams_closed_without_a_message_end_ok)
{
    static const char *const methods[] = {"/attnd.v1.Attnd/AttendStream",
                                          "/attnd.v1.Attnd/AppendKV"};
    boot(NULL, NULL);
    for (int i = 0; i < 2; i++) {
        rg_call c;
        ck_assert_int_eq(rg_call_open(&c, ch, methods[i], RG_WAIT_MS), 0);
        ck_assert_int_eq(rg_send_md(&c), 1);
        ck_assert_int_eq(rg_half_close(&c), 1);
        uint8_t *resp;
        size_t rlen = 0;
        ck_assert_int_eq(rg_recv(&c, &resp, &rlen), 1);
        if (i == 1) { /* AppendKV answers, counting no chunks */
            ck_assert_ptr_nonnull(resp);
            Attnd__V1__AppendKVResponse *r = attnd__v1__append_kvresponse__unpack(NULL, rlen, resp);
            ck_assert_uint_eq(r->chunks, 0);
            ck_assert_uint_eq(r->tokens, 0);
            attnd__v1__append_kvresponse__free_unpacked(r, NULL);
        } else {
            ck_assert_ptr_null(resp);
        }
        free(resp);
        ck_assert_int_eq(rg_finish(&c), 1);
        ck_assert_msg(c.code == GRPC_STATUS_OK, "%s: %d %s", methods[i], c.code, c.details);
        rg_call_close(&c);
    }
    stop_cleanly();
}
END_TEST

START_TEST(test_random_and_mutated_bytes_never_crash_the_server)
{
    static const char *const methods[] = {
        "/attnd.v1.Attnd/CreateSession", "/attnd.v1.Attnd/AppendKV",
        "/attnd.v1.Attnd/Attend",        "/attnd.v1.Attnd/AttendStream",
        "/attnd.v1.Attnd/CloseSession",  "/attnd.v1.Attnd/GetStats",
        "/grpc.health.v1.Health/Check"};
    uint8_t id[16];
    size_t n_valid[2];
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)rg_now_ms();
    fprintf(stderr, "[service_rpc] mutation seed %llu\n", (unsigned long long)rng);
    boot(NULL, NULL);
    create_session(id);
    uint8_t *valid[2] = {attend_req(id, 0, 0, 0, 1, &n_valid[0]),
                         append_chunk(id, 1, 0, 3, ATTND_DTYPE_BF16, &n_valid[1])};
    for (int iter = 0; iter < 300; iter++) {
        const char *m = methods[iter % 7];
        int which = iter % 2;
        size_t len = n_valid[which];
        uint8_t *buf = malloc(len + 64);
        memcpy(buf, valid[which], len);
        int flips = 1 + iter % 8;
        for (int k = 0; k < flips; k++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            if (iter % 3 == 0) /* pure noise */
                buf[(rng >> 33) % len] = (uint8_t)(rng >> 17);
            else /* cut, or flip one bit near the (header-heavy) front */
                buf[(rng >> 33) % (len < 64 ? len : 64)] ^= (uint8_t)(1u << ((rng >> 20) & 7));
        }
        if (iter % 5 == 0)
            len = (rng >> 40) % len;
        int code = rg_unary(ch, m, buf, len, NULL, NULL, NULL, 0);
        ck_assert_msg(code >= 0, "%s: the call did not complete", m);
        free(buf);
    }
    /* still serving and computing right (the session itself may be gone:
     * an AppendKV chunk is also a valid CloseSessionRequest for its id) */
    int serving;
    ck_assert_int_eq(health(ch, "", &serving, NULL), GRPC_STATUS_OK);
    uint8_t *resp, *req;
    size_t len, rlen;
    create_session(id);
    req = attend_req(id, 2, 4, 0, 9, &len);
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/Attend", req, len, &resp, &rlen, NULL, 0),
                     GRPC_STATUS_OK);
    check_attend_reply(resp, rlen, 4, 1, 9);
    free(req);
    free(resp);
    free(valid[0]);
    free(valid[1]);
    stop_cleanly();
}
END_TEST

/* attend_req with one element of q (which 0) or new_kv (which 1) replaced
 * by v. */
static uint8_t *poisoned_attend(const uint8_t id[16], int step, int pos, int which, size_t at,
                                float v, size_t *len)
{
    uint8_t *m = attend_req(id, 0, step, pos, 9, len);
    Attnd__V1__AttendRequest *r = attnd__v1__attend_request__unpack(NULL, *len, m);
    ck_assert_ptr_nonnull(r);
    Attnd__V1__Tensor *t = which ? r->new_kv : r->q;
    ck_assert_uint_lt(at, t->data.len / sizeof(float));
    memcpy(t->data.data + at * sizeof(float), &v, sizeof v);
    free(m);
    m = rg_pack(&r->base, len);
    attnd__v1__attend_request__free_unpacked(r, NULL);
    return m;
}

/* A NaN or an infinity at a random element of q, new_kv or an AppendKV
 * chunk: INVALID_ARGUMENT naming the tensor and the element, and the
 * session is as before (the next step's output equals the reference over
 * the tokens appended before). */
START_TEST(test_non_finite_elements_are_invalid_argument_and_change_nothing)
{
    static const float bad[3] = {NAN, INFINITY, -INFINITY};
    static const char *const name[3] = {"NaN", "+Inf", "-Inf"};
    uint8_t id[16], *req, *resp = NULL;
    size_t len, rlen;
    char details[256], want[96];
    tu_rng rng;

    tu_rng_init(&rng, "service_rpc nonfinite");
    boot(NULL, NULL);
    create_session(id);
    req = attend_req(id, 0, 0, 0, 9, &len); /* token 0 */
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/Attend", req, len, NULL, NULL, NULL, 0),
                     GRPC_STATUS_OK);
    free(req);

    for (int which = 0; which < 2; which++) {
        int k = (int)tu_int(&rng, 0, 2);
        size_t at = (size_t)tu_int(&rng, 0, which ? DK - 1 : HQ * DK - 1);
        req = poisoned_attend(id, 1, 1, which, at, bad[k], &len);
        ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/Attend", req, len, NULL, NULL, details,
                                  sizeof details),
                         GRPC_STATUS_INVALID_ARGUMENT);
        snprintf(want, sizeof want, "%s: element %zu is %s", which ? "new_kv" : "q", at, name[k]);
        ck_assert_msg(strstr(details, want) != NULL, "want \"%s\", got \"%s\"", want, details);
        free(req);
    }

    /* AppendKV: a chunk of tokens 1..3 with one bad element */
    rg_call c;
    int k = (int)tu_int(&rng, 0, 2);
    size_t at = (size_t)tu_int(&rng, 0, 3 * DK - 1);
    uint8_t *msg = append_chunk(id, 0, 1, 3, ATTND_DTYPE_F32, &len);
    Attnd__V1__AppendKVRequest *ar = attnd__v1__append_kvrequest__unpack(NULL, len, msg);
    memcpy(ar->kv->data.data + at * sizeof(float), &bad[k], sizeof(float));
    free(msg);
    msg = rg_pack(&ar->base, &len);
    attnd__v1__append_kvrequest__free_unpacked(ar, NULL);
    ck_assert_int_eq(rg_call_open(&c, ch, "/attnd.v1.Attnd/AppendKV", RG_WAIT_MS), 0);
    ck_assert_int_eq(rg_send_md(&c), 1);
    rg_send(&c, msg, len, 1);
    free(msg);
    rg_recv(&c, &resp, &rlen);
    ck_assert_ptr_null(resp);
    ck_assert_int_eq(rg_finish(&c), 1);
    ck_assert_int_eq(c.code, GRPC_STATUS_INVALID_ARGUMENT);
    snprintf(want, sizeof want, "kv: element %zu is %s", at, name[k]);
    ck_assert_msg(strstr(c.details, want) != NULL, "want \"%s\", got \"%s\"", want, c.details);
    rg_call_close(&c);

    /* nothing of the three was applied: token 1 lands at position 1 */
    req = attend_req(id, 0, 1, 1, 10, &len);
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/Attend", req, len, &resp, &rlen, details,
                              sizeof details),
                     GRPC_STATUS_OK);
    check_attend_reply(resp, rlen, 1, 2, 10);
    free(req);
    free(resp);
    stop_cleanly();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("service_rpc");
    TCase *tc = tcase_create("rpc");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_undecodable_request_is_invalid_argument);
    tcase_add_test(tc, test_oversized_message_is_resource_exhausted);
    tcase_add_test(tc, test_session_lifecycle_over_raw_calls);
    tcase_add_test(tc, test_append_kv_commits_its_chunks_and_counts_them);
    tcase_add_test(tc, test_append_kv_stream_failing_midway_applies_nothing_and_its_retry_succeeds);
    tcase_add_test(tc, test_attend_during_an_open_append_kv_stream_sees_only_committed_kv);
    tcase_add_test(tc, test_a_layer_an_open_append_kv_stream_holds_refuses_other_writers_aborted);
    tcase_add_test(tc, test_append_kv_stream_cancelled_by_the_client_applies_nothing);
    tcase_add_test(tc, test_attend_stream_answers_each_request_in_order);
    tcase_add_test(tc, test_streams_closed_without_a_message_end_ok);
    tcase_add_test(tc, test_random_and_mutated_bytes_never_crash_the_server);
    tcase_add_test(tc, test_non_finite_elements_are_invalid_argument_and_change_nothing);
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
