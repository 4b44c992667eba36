/* Check suite of the attnd process: it announces its port (stdout and
 * --port-file), answers health checks (Check, and Watch until it stops),
 * refuses unknown methods with UNIMPLEMENTED, exits 2 on bad flags and 1 on
 * a busy port, and on SIGTERM drains: health says NOT_SERVING to new
 * clients at once, their calls get UNAVAILABLE (or, during
 * --drain-delay-ms, are still served), an in-flight stream runs to its
 * end, then exit 0. (tests/group/test_group_drain covers calls queued when
 * the signal comes, and UCX.) Every test that starts a server ends by
 * requiring exit status 0, which under AddressSanitizer also means no
 * leak. (libattnd's suite in tests/client runs the full RPC matrix.) */
#include "svc_server.h"

static uint8_t srv_session[16]; /* the session of the test's stream */

START_TEST(test_health_check_answers_serving)
{
    int serving;
    boot(NULL, NULL);
    ck_assert_ptr_nonnull(strstr(srv.line, "model=tiny-mla"));
    ck_assert_int_eq(health(ch, "", &serving, NULL), GRPC_STATUS_OK);
    ck_assert_int_eq(serving, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    ck_assert_int_eq(health(ch, "attnd.v1.Attnd", &serving, NULL), GRPC_STATUS_OK);
    ck_assert_int_eq(serving, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    stop_cleanly();
}
END_TEST

START_TEST(test_health_check_of_unknown_service_is_not_found)
{
    int serving;
    char details[256];
    boot(NULL, NULL);
    ck_assert_int_eq(health(ch, "no.Such", &serving, details), GRPC_STATUS_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(details, "service"));
    stop_cleanly();
}
END_TEST

START_TEST(test_unknown_method_is_unimplemented)
{
    char details[256];
    boot(NULL, NULL);
    ck_assert_int_eq(rg_unary(ch, "/attnd.v1.Attnd/Nope", "x", 1, NULL, NULL, details, 256),
                     GRPC_STATUS_UNIMPLEMENTED);
    ck_assert_ptr_nonnull(strstr(details, "/attnd.v1.Attnd/Nope"));
    ck_assert_int_eq(rg_unary(ch, "/other.Service/Call", "", 0, NULL, NULL, details, 256),
                     GRPC_STATUS_UNIMPLEMENTED);
    /* and the server still serves */
    int serving;
    ck_assert_int_eq(health(ch, "", &serving, NULL), GRPC_STATUS_OK);
    stop_cleanly();
}
END_TEST

/* Poll, with fresh channels (as a new client or a probe would), until
 * health says NOT_SERVING; the check itself must keep answering. */
static void wait_until_not_serving(void)
{
    int64_t end = rg_now_ms() + RG_WAIT_MS;
    for (;;) {
        grpc_channel *c = rg_channel(srv.target);
        int serving;
        char details[256];
        int code = health(c, "", &serving, details);
        grpc_channel_destroy(c);
        ck_assert_msg(code == GRPC_STATUS_OK, "health after SIGTERM: status %d (%s)", code,
                      details);
        if (serving == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING)
            return;
        ck_assert_int_eq(serving, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
        ck_assert_msg(rg_now_ms() < end, "health still SERVING long after SIGTERM");
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* Open an AttendStream and run step 0 on it (one token at position 0). */
static void open_stream(rg_call *c, const uint8_t id[16])
{
    uint8_t *msg, *resp;
    size_t len, rlen;
    ck_assert_int_eq(rg_call_open(c, ch, "/attnd.v1.Attnd/AttendStream", RG_WAIT_MS), 0);
    ck_assert_int_eq(rg_send_md(c), 1);
    msg = attend_req(id, 3, 0, 0, 1, &len);
    ck_assert_int_eq(rg_send(c, msg, len, 0), 1);
    free(msg);
    ck_assert_int_eq(rg_recv(c, &resp, &rlen), 1);
    check_attend_reply(resp, rlen, 0, 1, 1);
    free(resp);
}

/* Step 1 on the stream (token 1), then its end with status OK. */
static void finish_stream(rg_call *c)
{
    uint8_t *msg, *resp;
    size_t len, rlen;
    msg = attend_req(srv_session, 3, 1, 1, 2, &len);
    ck_assert_int_eq(rg_send(c, msg, len, 0), 1);
    free(msg);
    ck_assert_int_eq(rg_recv(c, &resp, &rlen), 1);
    ck_assert_ptr_nonnull(resp);
    check_attend_reply(resp, rlen, 1, 2, 2);
    free(resp);
    ck_assert_int_eq(rg_half_close(c), 1);
    ck_assert_int_eq(rg_finish(c), 1);
    ck_assert_int_eq(c->code, GRPC_STATUS_OK);
    rg_call_close(c);
}

/* Close our channel (an idle C-core client reads the server's GOAWAY only
 * when it polls, its backup poller: every 5 s; a client that is done
 * closes it) and require exit 0. */
static void expect_exit_zero(void)
{
    grpc_channel_destroy(ch);
    ch = NULL;
    int status = rg_wait_exit(&srv, RG_WAIT_MS);
    ck_assert_msg(status != -1, "attnd did not exit");
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "wait status 0x%x", status);
}

START_TEST(test_sigterm_lets_an_in_flight_stream_finish_then_exits_zero)
{
    rg_call c;
    boot(NULL, NULL);
    create_session(srv_session);
    open_stream(&c, srv_session);

    kill(srv.pid, SIGTERM);
    wait_until_not_serving();

    /* the stream that was in flight goes on to its end */
    finish_stream(&c);
    expect_exit_zero();
}
END_TEST

/* Draining (held open by a stream received before the signal): a new
 * client's health check says NOT_SERVING, its calls that need the engine
 * are UNAVAILABLE with a message saying why, GetStats still answers. */
START_TEST(test_calls_that_arrive_after_sigterm_are_unavailable)
{
    uint8_t *msg;
    size_t len;
    char details[256];
    rg_call c;
    boot(NULL, NULL);
    create_session(srv_session);
    open_stream(&c, srv_session);

    kill(srv.pid, SIGTERM);
    wait_until_not_serving();

    grpc_channel *late = rg_channel(srv.target);
    msg = attend_req(srv_session, 3, 1, 1, 7, &len);
    ck_assert_int_eq(rg_unary(late, "/attnd.v1.Attnd/Attend", msg, len, NULL, NULL, details,
                              sizeof details),
                     GRPC_STATUS_UNAVAILABLE);
    ck_assert_ptr_nonnull(strstr(details, "shutting down"));
    free(msg);
    Attnd__V1__CreateSessionRequest cs = ATTND__V1__CREATE_SESSION_REQUEST__INIT;
    msg = rg_pack(&cs.base, &len);
    ck_assert_int_eq(rg_unary(late, "/attnd.v1.Attnd/CreateSession", msg, len, NULL, NULL,
                              details, sizeof details),
                     GRPC_STATUS_UNAVAILABLE);
    ck_assert_ptr_nonnull(strstr(details, "shutting down"));
    free(msg);
    grpc_channel *keep = ch;
    ch = late; /* get_stats uses ch */
    Attnd__V1__GetStatsResponse *st = get_stats();
    ck_assert_uint_eq(st->sessions, 1);
    attnd__v1__get_stats_response__free_unpacked(st, NULL);
    ch = keep;
    grpc_channel_destroy(late);

    /* the refused Attend changed nothing: the stream's step 1 still sees
     * exactly one stored token */
    finish_stream(&c);
    expect_exit_zero();
}
END_TEST

/* --drain-delay-ms: health says NOT_SERVING at once, but new calls are
 * still served until the delay ends (here: a second signal ends it). */
START_TEST(test_drain_delay_serves_new_calls_while_health_is_not_serving)
{
    uint8_t *msg, *resp = NULL;
    size_t len, rlen;
    boot("--drain-delay-ms", "600000");
    kill(srv.pid, SIGTERM);
    wait_until_not_serving();

    grpc_channel *late = rg_channel(srv.target);
    grpc_channel *keep = ch;
    ch = late;
    create_session(srv_session);
    ch = keep;
    msg = attend_req(srv_session, 0, 0, 0, 3, &len);
    ck_assert_int_eq(rg_unary(late, "/attnd.v1.Attnd/Attend", msg, len, &resp, &rlen, NULL, 0),
                     GRPC_STATUS_OK);
    check_attend_reply(resp, rlen, 0, 1, 3);
    free(resp);
    free(msg);
    grpc_channel_destroy(late);

    kill(srv.pid, SIGTERM); /* a second signal cuts the drain short */
    expect_exit_zero();
}
END_TEST

START_TEST(test_watch_sends_serving_then_not_serving_when_the_server_stops)
{
    Grpc__Health__V1__HealthCheckRequest m = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    Grpc__Health__V1__HealthCheckResponse *r;
    uint8_t *msg, *resp;
    size_t len, rlen;
    rg_call c;
    boot(NULL, NULL);

    ck_assert_int_eq(rg_call_open(&c, ch, "/grpc.health.v1.Health/Watch", RG_WAIT_MS), 0);
    ck_assert_int_eq(rg_send_md(&c), 1);
    msg = rg_pack(&m.base, &len);
    ck_assert_int_eq(rg_send(&c, msg, len, 1), 1);
    free(msg);
    ck_assert_int_eq(rg_recv(&c, &resp, &rlen), 1);
    ck_assert_ptr_nonnull(resp);
    r = grpc__health__v1__health_check_response__unpack(NULL, rlen, resp);
    ck_assert_int_eq(r->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    free(resp);

    kill(srv.pid, SIGTERM);
    ck_assert_int_eq(rg_recv(&c, &resp, &rlen), 1);
    ck_assert_ptr_nonnull(resp);
    r = grpc__health__v1__health_check_response__unpack(NULL, rlen, resp);
    ck_assert_int_eq(r->status,
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    free(resp);
    ck_assert_int_eq(rg_finish(&c), 1);
    ck_assert_int_eq(c.code, GRPC_STATUS_OK);
    rg_call_close(&c);

    expect_exit_zero();
}
END_TEST

START_TEST(test_port_file_names_the_bound_port)
{
    char dir[] = "/tmp/attnd-test-XXXXXX", path[64], buf[32] = {0};
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/port", dir);
    boot("--port-file", path);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(fgets(buf, sizeof buf, f));
    fclose(f);
    ck_assert_int_eq(atoi(buf), srv.port);
    stop_cleanly();
    unlink(path);
    rmdir(dir);
}
END_TEST

START_TEST(test_bad_flags_exit_2)
{
    static const char *const bad[][3] = {
        {"--bogus", NULL, NULL}, {"--kv-memory", "lots", NULL}, {"--model", "gpt-5", NULL}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(rg_spawn(&srv, ATTND_BIN, bad[i]), 0);
        int status = rg_wait_exit(&srv, RG_WAIT_MS);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 2, "%s: wait status 0x%x",
                      bad[i][0], status);
    }
}
END_TEST

START_TEST(test_busy_port_exits_1_without_crashing)
{
    rg_server second;
    char listen[64];
    boot(NULL, NULL);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", srv.port);
    const char *args[] = {"--listen", listen, "--model", "tiny-mla", "--kv-memory", "1M", NULL};
    ck_assert_int_eq(rg_spawn(&second, ATTND_BIN, args), 0);
    int status = rg_wait_exit(&second, RG_WAIT_MS);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "wait status 0x%x", status);
    stop_cleanly();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("service_server");
    TCase *tc = tcase_create("server");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_health_check_answers_serving);
    tcase_add_test(tc, test_health_check_of_unknown_service_is_not_found);
    tcase_add_test(tc, test_unknown_method_is_unimplemented);
    tcase_add_test(tc, test_sigterm_lets_an_in_flight_stream_finish_then_exits_zero);
    tcase_add_test(tc, test_calls_that_arrive_after_sigterm_are_unavailable);
    tcase_add_test(tc, test_drain_delay_serves_new_calls_while_health_is_not_serving);
    tcase_add_test(tc, test_watch_sends_serving_then_not_serving_when_the_server_stops);
    tcase_add_test(tc, test_port_file_names_the_bound_port);
    tcase_add_test(tc, test_bad_flags_exit_2);
    tcase_add_test(tc, test_busy_port_exits_1_without_crashing);
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
