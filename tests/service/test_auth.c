/* Check suite of tenants (issue 15, items 2, 3 and 8) over the wire, with
 * raw gRPC calls to a real attnd running --token-file: a call without a
 * token or with a wrong one is UNAUTHENTICATED (Health answers everyone);
 * another tenant's Attend, AppendKV and CloseSession on a session answer
 * NOT_FOUND exactly as an unknown id does, and the owner's outputs stay
 * those of the float64 reference over the KV it wrote; GetStats shows a
 * tenant its own figures and an admin the worker's; tenant quotas refuse
 * with RESOURCE_EXHAUSTED naming the limit and the usage; the token file
 * reloads on SIGHUP; idle sessions expire and their pages come back. */
#include <signal.h>

#include "secsvc.h"

static void boot_auth(const char *extra1, const char *extra2, const char *extra3,
                      const char *extra4)
{
    const char *args[] = {"--token-file", sec_path("tokens"), extra1, extra2, extra3, extra4,
                          NULL};
    sec_boot(args);
    ch = rg_channel(srv.target);
}

START_TEST(test_calls_without_a_token_are_unauthenticated_and_health_answers)
{
    static const char *const methods[] = {
        "/attnd.v1.Attnd/CreateSession", "/attnd.v1.Attnd/CloseSession",
        "/attnd.v1.Attnd/Attend",        "/attnd.v1.Attnd/GetStats",
        "/attnd.v1.Attnd/LoadWeights",   "/attnd.v1.Attnd/GetEndpoint",
        "/attnd.v1.Attnd/NoSuchMethod",
    };
    char details[256];
    uint8_t id[16];
    int serving;
    sec_tokens_default();
    boot_auth(NULL, NULL, NULL, NULL);
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        int code = sec_unary(ch, methods[i], NULL, "", 0, NULL, NULL, details, sizeof details);
        ck_assert_msg(code == GRPC_STATUS_UNAUTHENTICATED, "%s: status %d (%s)", methods[i],
                      code, details);
        ck_assert_msg(strstr(details, "authorization") != NULL, "%s: %s", methods[i], details);
    }
    /* the streams too */
    memset(id, 1, sizeof id);
    ck_assert_int_eq(sec_append(ch, NULL, id, 0, 0, 1, details, sizeof details),
                     GRPC_STATUS_UNAUTHENTICATED);
    rg_call c;
    size_t len;
    uint8_t *req = attend_req(id, 0, 0, -1, 1, &len), *resp = NULL;
    ck_assert_int_ge(sec_call_open(&c, ch, "/attnd.v1.Attnd/AttendStream", NULL, RG_WAIT_MS), 0);
    rg_send(&c, req, len, 1);
    rg_recv(&c, &resp, &len);
    ck_assert_int_gt(rg_finish(&c), 0);
    ck_assert_int_eq(c.code, GRPC_STATUS_UNAUTHENTICATED);
    ck_assert_ptr_null(resp);
    rg_call_close(&c);
    free(req);
    /* probes carry no token */
    ck_assert_int_eq(health(ch, "", &serving, NULL), GRPC_STATUS_OK);
    ck_assert_int_eq(serving, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    stop_cleanly();
}
END_TEST

START_TEST(test_a_wrong_or_malformed_token_is_unauthenticated)
{
    Attnd__V1__GetStatsRequest m = ATTND__V1__GET_STATS_REQUEST__INIT;
    char details[256], value[64];
    size_t len;
    uint8_t *req = rg_pack(&m.base, &len), id[16];
    sec_tokens_default();
    boot_auth(NULL, NULL, NULL, NULL);
    ck_assert_int_eq(sec_unary(ch, "/attnd.v1.Attnd/GetStats", "alice-0123456789abcdeX", req,
                               len, NULL, NULL, details, sizeof details),
                     GRPC_STATUS_UNAUTHENTICATED);
    ck_assert_str_eq(details, "authorization: unknown bearer token");
    /* a prefix of a real token, and a real token with one more character */
    ck_assert_int_eq(sec_unary(ch, "/attnd.v1.Attnd/GetStats", "alice-0123456789abcde", req, len,
                               NULL, NULL, details, sizeof details),
                     GRPC_STATUS_UNAUTHENTICATED);
    snprintf(value, sizeof value, "%sx", ALICE_TOKEN);
    ck_assert_int_eq(sec_create(ch, value, id, details, sizeof details),
                     GRPC_STATUS_UNAUTHENTICATED);
    /* not a bearer token at all */
    rg_call c;
    grpc_metadata md;
    grpc_op op;
    ck_assert_int_eq(rg_call_open(&c, ch, "/attnd.v1.Attnd/GetStats", RG_WAIT_MS), 0);
    memset(&md, 0, sizeof md);
    memset(&op, 0, sizeof op);
    md.key = grpc_slice_from_static_string("authorization");
    md.value = grpc_slice_from_static_string("Basic YWxpY2U6c2VjcmV0");
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    op.data.send_initial_metadata.count = 1;
    op.data.send_initial_metadata.metadata = &md;
    ck_assert_int_gt(rg_batch(&c, &op, 1), 0);
    uint8_t *resp = NULL;
    size_t rlen;
    rg_send(&c, req, len, 1);
    rg_recv(&c, &resp, &rlen);
    ck_assert_int_gt(rg_finish(&c), 0);
    ck_assert_int_eq(c.code, GRPC_STATUS_UNAUTHENTICATED);
    ck_assert_str_eq(c.details, "authorization: expected \"Bearer TOKEN\"");
    rg_call_close(&c);
    /* the right one works */
    Attnd__V1__GetStatsResponse *r = sec_stats(ch, ALICE_TOKEN);
    ck_assert_str_eq(r->stats_scope, "tenant alice");
    attnd__v1__get_stats_response__free_unpacked(r, NULL);
    free(req);
    stop_cleanly();
}
END_TEST

/* alice writes 5 tokens into layer 1 and attends; bob, who knows the id,
 * is told it does not exist by Attend (with and without new KV), AppendKV
 * and CloseSession, in the words an unknown id gets; alice's session is
 * untouched: the same float64 answer over its 5 tokens, and its next
 * position is still 5. */
START_TEST(test_another_tenants_session_is_not_found_and_stays_as_it_was)
{
    char details[256], unknown[256];
    uint8_t a[16], nobody[16];
    sec_tokens_default();
    boot_auth(NULL, NULL, NULL, NULL);
    memset(nobody, 0x77, sizeof nobody);
    ck_assert_int_eq(sec_create(ch, ALICE_TOKEN, a, details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_append(ch, ALICE_TOKEN, a, 1, 0, 5, details, sizeof details),
                     GRPC_STATUS_OK);
    ck_assert_int_eq(sec_attend(ch, ALICE_TOKEN, a, 1, 3, -1, 5, details, sizeof details),
                     GRPC_STATUS_OK);

    /* Attend without and with new KV */
    ck_assert_int_eq(sec_attend(ch, BOB_TOKEN, nobody, 1, 3, -1, 5, unknown, sizeof unknown),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_int_eq(sec_attend(ch, BOB_TOKEN, a, 1, 3, -1, 5, details, sizeof details),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(details, unknown);
    ck_assert_int_eq(sec_attend(ch, BOB_TOKEN, a, 1, 3, 5, 6, details, sizeof details),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(details, unknown);
    /* AppendKV and CloseSession */
    ck_assert_int_eq(sec_append(ch, BOB_TOKEN, nobody, 1, 5, 2, unknown, sizeof unknown),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_int_eq(sec_append(ch, BOB_TOKEN, a, 1, 5, 2, details, sizeof details),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(details, unknown);
    ck_assert_int_eq(sec_close(ch, BOB_TOKEN, nobody, unknown, sizeof unknown),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_int_eq(sec_close(ch, BOB_TOKEN, a, details, sizeof details),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(details, unknown);
    /* even the admin tenant does not reach it */
    ck_assert_int_eq(sec_close(ch, OPS_TOKEN, a, details, sizeof details),
                     GRPC_STATUS_NOT_FOUND);

    /* alice: nothing changed */
    ck_assert_int_eq(sec_attend(ch, ALICE_TOKEN, a, 1, 3, -1, 5, details, sizeof details),
                     GRPC_STATUS_OK);
    ck_assert_int_eq(sec_attend(ch, ALICE_TOKEN, a, 1, 4, 5, 6, details, sizeof details),
                     GRPC_STATUS_OK);
    ck_assert_int_eq(sec_close(ch, ALICE_TOKEN, a, details, sizeof details), GRPC_STATUS_OK);
    stop_cleanly();
}
END_TEST

START_TEST(test_get_stats_shows_a_tenant_its_own_figures_and_an_admin_the_workers)
{
    char details[256];
    uint8_t a1[16], a2[16], b[16];
    sec_tokens_default();
    boot_auth(NULL, NULL, NULL, NULL);
    ck_assert_int_eq(sec_create(ch, ALICE_TOKEN, a1, details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_create(ch, ALICE_TOKEN, a2, details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_create(ch, BOB_TOKEN, b, details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_append(ch, ALICE_TOKEN, a1, 0, 0, 3, details, sizeof details),
                     GRPC_STATUS_OK);
    ck_assert_int_eq(sec_attend(ch, ALICE_TOKEN, a1, 0, 1, -1, 3, details, sizeof details),
                     GRPC_STATUS_OK);
    ck_assert_int_eq(sec_attend(ch, BOB_TOKEN, a1, 0, 1, -1, 3, details, sizeof details),
                     GRPC_STATUS_NOT_FOUND);

    Attnd__V1__GetStatsResponse *ra = sec_stats(ch, ALICE_TOKEN);
    ck_assert_str_eq(ra->stats_scope, "tenant alice");
    ck_assert_uint_eq(ra->sessions, 2);
    ck_assert_uint_eq(ra->pages_used, 1);
    ck_assert_uint_eq(ra->attend_calls, 1);
    ck_assert_uint_eq(ra->tokens_appended, 3);
    ck_assert_uint_eq(ra->errors, 0);
    ck_assert_uint_eq(ra->max_sessions, 1024); /* no limit of its own: the worker's */
    Attnd__V1__GetStatsResponse *rb = sec_stats(ch, BOB_TOKEN);
    ck_assert_str_eq(rb->stats_scope, "tenant bob");
    ck_assert_uint_eq(rb->sessions, 1);
    ck_assert_uint_eq(rb->max_sessions, 2);
    ck_assert_uint_eq(rb->pages_used, 0);
    ck_assert_uint_eq(rb->attend_calls, 0);
    ck_assert_uint_eq(rb->errors, 1);
    Attnd__V1__GetStatsResponse *ro = sec_stats(ch, OPS_TOKEN);
    ck_assert_str_eq(ro->stats_scope, "global");
    ck_assert_uint_eq(ro->sessions, 3);
    ck_assert_uint_eq(ro->attend_calls, 1);
    ck_assert_uint_ge(ro->errors, 1);
    attnd__v1__get_stats_response__free_unpacked(ra, NULL);
    attnd__v1__get_stats_response__free_unpacked(rb, NULL);
    attnd__v1__get_stats_response__free_unpacked(ro, NULL);
    stop_cleanly();
}
END_TEST

/* GetStats with a session_id (its bytes per KV tier) answers only for the
 * caller's own session: another tenant's (admins included) is NOT_FOUND in
 * the words an unknown id gets. */
START_TEST(test_get_stats_of_another_tenants_session_is_not_found)
{
    char details[256], unknown[256];
    uint8_t a[16], nobody[16];
    sec_tokens_default();
    boot_auth(NULL, NULL, NULL, NULL);
    memset(nobody, 0x77, sizeof nobody);
    ck_assert_int_eq(sec_create(ch, ALICE_TOKEN, a, details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_append(ch, ALICE_TOKEN, a, 0, 0, 3, details, sizeof details),
                     GRPC_STATUS_OK);
    Attnd__V1__GetStatsRequest m = ATTND__V1__GET_STATS_REQUEST__INIT;
    size_t len, rlen = 0;
    uint8_t *resp = NULL;
    m.session_id.data = nobody;
    m.session_id.len = sizeof nobody;
    uint8_t *req = rg_pack(&m.base, &len);
    ck_assert_int_eq(sec_unary(ch, "/attnd.v1.Attnd/GetStats", BOB_TOKEN, req, len, NULL, NULL,
                               unknown, sizeof unknown),
                     GRPC_STATUS_NOT_FOUND);
    free(req);
    m.session_id.data = a;
    req = rg_pack(&m.base, &len);
    ck_assert_int_eq(sec_unary(ch, "/attnd.v1.Attnd/GetStats", BOB_TOKEN, req, len, NULL, NULL,
                               details, sizeof details),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(details, unknown);
    ck_assert_int_eq(sec_unary(ch, "/attnd.v1.Attnd/GetStats", OPS_TOKEN, req, len, NULL, NULL,
                               details, sizeof details),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(details, unknown);
    /* alice gets her session's bytes: 3 tokens, one page, in memory */
    ck_assert_int_eq(sec_unary(ch, "/attnd.v1.Attnd/GetStats", ALICE_TOKEN, req, len, &resp,
                               &rlen, details, sizeof details),
                     GRPC_STATUS_OK);
    Attnd__V1__GetStatsResponse *r = attnd__v1__get_stats_response__unpack(NULL, rlen, resp);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->session_memory_bytes, r->page_bytes);
    ck_assert_uint_eq(r->session_below_bytes, 0);
    attnd__v1__get_stats_response__free_unpacked(r, NULL);
    free(resp);
    free(req);
    stop_cleanly();
}
END_TEST

START_TEST(test_a_tenant_past_its_session_quota_gets_resource_exhausted)
{
    char details[256];
    uint8_t b[3][16], a[16];
    sec_tokens_default();
    boot_auth(NULL, NULL, NULL, NULL);
    ck_assert_int_eq(sec_create(ch, BOB_TOKEN, b[0], details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_create(ch, BOB_TOKEN, b[1], details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_create(ch, BOB_TOKEN, b[2], details, sizeof details),
                     GRPC_STATUS_RESOURCE_EXHAUSTED);
    ck_assert_msg(strstr(details, "tenant bob has 2 open sessions") &&
                      strstr(details, "(tenant quota: sessions) is 2"), "%s", details);
    /* another tenant is not held back; a close makes room */
    ck_assert_int_eq(sec_create(ch, ALICE_TOKEN, a, details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_close(ch, BOB_TOKEN, b[0], details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_create(ch, BOB_TOKEN, b[2], details, sizeof details), GRPC_STATUS_OK);
    stop_cleanly();
}
END_TEST

/* --tenant-kv-memory 20480: two pages of 10240 bytes (tiny-mla pages hold
 * 64 tokens). alice fills two layers' first pages; a third page is
 * refused, naming the limit and the usage, and nothing of it lands. */
START_TEST(test_a_tenant_past_its_kv_quota_gets_resource_exhausted_and_nothing_lands)
{
    char details[256];
    uint8_t a[16], b[16];
    sec_tokens_default();
    boot_auth("--tenant-kv-memory", "20480", NULL, NULL);
    ck_assert_int_eq(sec_create(ch, ALICE_TOKEN, a, details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_append(ch, ALICE_TOKEN, a, 0, 0, 4, details, sizeof details),
                     GRPC_STATUS_OK);
    ck_assert_int_eq(sec_append(ch, ALICE_TOKEN, a, 1, 0, 4, details, sizeof details),
                     GRPC_STATUS_OK);
    ck_assert_int_eq(sec_append(ch, ALICE_TOKEN, a, 2, 0, 4, details, sizeof details),
                     GRPC_STATUS_RESOURCE_EXHAUSTED);
    ck_assert_msg(strstr(details, "tenant alice holds 20480 bytes of KV") &&
                      strstr(details, "limit (tenant quota: kv) is 20480 bytes"), "%s", details);
    ck_assert_int_eq(sec_attend(ch, ALICE_TOKEN, a, 2, 0, 0, 1, details, sizeof details),
                     GRPC_STATUS_RESOURCE_EXHAUSTED);
    /* layer 2 is still empty: an append at 0 would be refused for quota,
     * not position; layers 0 and 1 still answer over their 4 tokens */
    ck_assert_int_eq(sec_attend(ch, ALICE_TOKEN, a, 1, 2, -1, 4, details, sizeof details),
                     GRPC_STATUS_OK);
    ck_assert_int_eq(sec_attend(ch, ALICE_TOKEN, a, 0, 2, 4, 5, details, sizeof details),
                     GRPC_STATUS_OK); /* within its page */
    /* bob has a quota of its own */
    ck_assert_int_eq(sec_create(ch, BOB_TOKEN, b, details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_append(ch, BOB_TOKEN, b, 2, 0, 4, details, sizeof details),
                     GRPC_STATUS_OK);
    Attnd__V1__GetStatsResponse *r = sec_stats(ch, ALICE_TOKEN);
    ck_assert_uint_eq(r->pages_used, 2);
    ck_assert_uint_eq(r->pages_total, 2);
    attnd__v1__get_stats_response__free_unpacked(r, NULL);
    stop_cleanly();
}
END_TEST

START_TEST(test_the_token_file_reloads_on_sighup_and_a_bad_one_changes_nothing)
{
    char details[256];
    uint8_t id[16];
    sec_tokens_default();
    boot_auth(NULL, NULL, NULL, NULL);
    ck_assert_int_eq(sec_create(ch, BOB_TOKEN, id, details, sizeof details), GRPC_STATUS_OK);

    /* bob's token goes, carol comes */
    sec_write("tokens", ALICE_TOKEN " alice\ncarol-0123456789abcdef carol\n");
    kill(srv.pid, SIGHUP);
    ck_assert(sec_stderr_has("--token-file reloaded: 2 tenants"));
    ck_assert_int_eq(sec_create(ch, BOB_TOKEN, id, details, sizeof details),
                     GRPC_STATUS_UNAUTHENTICATED);
    ck_assert_int_eq(sec_create(ch, "carol-0123456789abcdef", id, details, sizeof details),
                     GRPC_STATUS_OK);

    /* a short token: the file is refused whole, carol keeps working */
    sec_write("tokens", "short alice\ndave-0123456789abcdef dave\n");
    kill(srv.pid, SIGHUP);
    ck_assert(sec_stderr_has("line 1: the token must be at least 16"));
    ck_assert(sec_stderr_has("(the tenants stay as they were)"));
    ck_assert_int_eq(sec_create(ch, "dave-0123456789abcdef", id, details, sizeof details),
                     GRPC_STATUS_UNAUTHENTICATED);
    ck_assert_int_eq(sec_create(ch, "carol-0123456789abcdef", id, details, sizeof details),
                     GRPC_STATUS_OK);
    char *log = sec_read("stderr");
    ck_assert_msg(!strstr(log, "carol-0123456789abcdef") && !strstr(log, "short alice"),
                  "a token was logged: %s", log);
    free(log);
    stop_cleanly();
}
END_TEST

/* --session-idle-ttl 2s: an untouched session expires (GetStats counts
 * it and its pages; later calls get NOT_FOUND); one that an open AppendKV
 * stream holds does not, and the stream then commits. */
START_TEST(test_idle_sessions_expire_and_a_held_one_does_not)
{
    char details[256];
    uint8_t idle[16], held[16];
    rg_call c;
    size_t len;
    sec_tokens_default();
    boot_auth("--session-idle-ttl", "2s", NULL, NULL);
    ck_assert_int_eq(sec_create(ch, ALICE_TOKEN, idle, details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_append(ch, ALICE_TOKEN, idle, 0, 0, 3, details, sizeof details),
                     GRPC_STATUS_OK);
    ck_assert_int_eq(sec_create(ch, ALICE_TOKEN, held, details, sizeof details), GRPC_STATUS_OK);
    uint8_t *chunk = append_chunk(held, 0, 0, 2, ATTND_DTYPE_F32, &len);
    ck_assert_int_ge(sec_call_open(&c, ch, "/attnd.v1.Attnd/AppendKV", ALICE_TOKEN, RG_WAIT_MS),
                     0);
    ck_assert_int_gt(rg_send(&c, chunk, len, 0), 0);

    int64_t end = rg_now_ms() + RG_WAIT_MS;
    Attnd__V1__GetStatsResponse *r;
    for (;;) {
        r = sec_stats(ch, ALICE_TOKEN);
        if (r->sessions_expired >= 1 || rg_now_ms() > end)
            break;
        attnd__v1__get_stats_response__free_unpacked(r, NULL);
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    ck_assert_uint_eq(r->sessions_expired, 1);
    ck_assert_uint_eq(r->pages_expired, 1);
    ck_assert_uint_eq(r->sessions, 1);
    attnd__v1__get_stats_response__free_unpacked(r, NULL);
    ck_assert_int_eq(sec_attend(ch, ALICE_TOKEN, idle, 0, 0, -1, 3, details, sizeof details),
                     GRPC_STATUS_NOT_FOUND);
    /* the held one's stream commits */
    uint8_t *resp = NULL;
    ck_assert_int_gt(rg_half_close(&c), 0);
    rg_recv(&c, &resp, &len);
    ck_assert_int_gt(rg_finish(&c), 0);
    ck_assert_int_eq(c.code, GRPC_STATUS_OK);
    rg_call_close(&c);
    free(resp);
    free(chunk);
    ck_assert_int_eq(sec_attend(ch, ALICE_TOKEN, held, 0, 5, -1, 2, details, sizeof details),
                     GRPC_STATUS_OK);
    ck_assert(sec_stderr_has("sessions idle for 2000 ms closed (--session-idle-ttl)"));
    stop_cleanly();
}
END_TEST

START_TEST(test_a_malformed_token_file_stops_attnd_from_starting)
{
    const char *args[] = {"--listen", "127.0.0.1:0", "--model", "tiny-mla", "--token-file",
                          NULL, NULL};
    sec_write("tokens", ALICE_TOKEN " alice\n" ALICE_TOKEN " bob\n");
    args[5] = sec_path("tokens");
    ck_assert_int_eq(rg_spawn(&srv, ATTND_BIN, args), 0);
    int status = rg_wait_exit(&srv, RG_WAIT_MS);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("service_auth");
    TCase *tc = tcase_create("auth");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, sec_setup, sec_teardown);
    tcase_add_test(tc, test_calls_without_a_token_are_unauthenticated_and_health_answers);
    tcase_add_test(tc, test_a_wrong_or_malformed_token_is_unauthenticated);
    tcase_add_test(tc, test_another_tenants_session_is_not_found_and_stays_as_it_was);
    tcase_add_test(tc, test_get_stats_shows_a_tenant_its_own_figures_and_an_admin_the_workers);
    tcase_add_test(tc, test_get_stats_of_another_tenants_session_is_not_found);
    tcase_add_test(tc, test_a_tenant_past_its_session_quota_gets_resource_exhausted);
    tcase_add_test(tc,
                   test_a_tenant_past_its_kv_quota_gets_resource_exhausted_and_nothing_lands);
    tcase_add_test(tc, test_the_token_file_reloads_on_sighup_and_a_bad_one_changes_nothing);
    tcase_add_test(tc, test_idle_sessions_expire_and_a_held_one_does_not);
    tcase_add_test(tc, test_a_malformed_token_file_stops_attnd_from_starting);
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
