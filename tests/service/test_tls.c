/* Check suite of TLS on the gRPC port (issue 15, items 1, 6 and 8), with
 * certificates the test makes with openssl: a client trusting the right
 * CA is served; one trusting another CA or only the system's, or speaking
 * plaintext, never gets a connection; with --tls-client-ca a client
 * without a certificate, or with one of another CA, fails and one with
 * the right certificate is served (and its certificate's identity can
 * name its tenant); certificates reload on SIGHUP for new connections; a
 * peer that never finishes its handshake is dropped; and when the process
 * runs out of descriptors (gRPC 1.51's listener then stops for good) the
 * watchdog logs it and health says NOT_SERVING on the connections that
 * are left. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include "secsvc.h"

static void boot_tls(const char *e1, const char *e2, const char *e3, const char *e4)
{
    const char *args[] = {"--tls-cert", sec_path("server.pem"), "--tls-key",
                          sec_path("server.key"), e1, e2, e3, e4, NULL};
    sec_boot(args);
}

/* Health over chn: the gRPC status (-1: no answer at all). */
static int health_of(grpc_channel *chn)
{
    int serving;
    return health(chn, "", &serving, NULL);
}

/* A call over chn that cannot connect ends UNAVAILABLE. */
static void refused_over(grpc_channel *chn)
{
    ck_assert_int_eq(health_of(chn), GRPC_STATUS_UNAVAILABLE);
    grpc_channel_destroy(chn);
}

START_TEST(test_tls_with_the_servers_ca_is_served)
{
    int serving;
    boot_tls(NULL, NULL, NULL, NULL);
    ch = sec_tls_channel(srv.target, "ca1.pem", NULL, NULL);
    ck_assert_int_eq(health(ch, "", &serving, NULL), GRPC_STATUS_OK);
    ck_assert_int_eq(serving, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    /* a whole decode step over TLS, checked */
    uint8_t id[16];
    char details[256];
    ck_assert_int_eq(sec_create(ch, NULL, id, details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_append(ch, NULL, id, 0, 0, 7, details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_attend(ch, NULL, id, 0, 2, 7, 8, details, sizeof details),
                     GRPC_STATUS_OK);
    stop_cleanly();
}
END_TEST

/* ca NULL: gRPC's default roots (the system's), which do not hold the
 * test's CA */
START_TEST(test_tls_with_a_wrong_ca_no_ca_or_plaintext_fails_to_connect)
{
    boot_tls(NULL, NULL, NULL, NULL);
    refused_over(sec_tls_channel(srv.target, "ca2.pem", NULL, NULL));
    refused_over(sec_tls_channel(srv.target, NULL, NULL, NULL));
    refused_over(rg_channel(srv.target));
    /* the right one still is served */
    ch = sec_tls_channel(srv.target, "ca1.pem", NULL, NULL);
    ck_assert_int_eq(health_of(ch), GRPC_STATUS_OK);
    stop_cleanly();
}
END_TEST

START_TEST(test_mtls_without_a_client_certificate_or_with_a_strangers_fails)
{
    boot_tls("--tls-client-ca", sec_path("ca1.pem"), NULL, NULL);
    refused_over(sec_tls_channel(srv.target, "ca1.pem", NULL, NULL));
    refused_over(sec_tls_channel(srv.target, "ca1.pem", "stranger.pem", "stranger.key"));
    ch = sec_tls_channel(srv.target, "ca1.pem", "client.pem", "client.key");
    ck_assert_int_eq(health_of(ch), GRPC_STATUS_OK);
    stop_cleanly();
}
END_TEST

/* "cert:client-a alice": alice's certificate is her credential; a token
 * still wins over it; without either the call is UNAUTHENTICATED. */
START_TEST(test_an_mtls_identity_in_the_token_file_names_the_tenant)
{
    uint8_t id[16];
    char details[256];
    sec_tokens_default();
    boot_tls("--tls-client-ca", sec_path("ca1.pem"), "--token-file", sec_path("tokens"));
    ch = sec_tls_channel(srv.target, "ca1.pem", "client.pem", "client.key");
    Attnd__V1__GetStatsResponse *r = sec_stats(ch, NULL);
    ck_assert_str_eq(r->stats_scope, "tenant alice");
    attnd__v1__get_stats_response__free_unpacked(r, NULL);
    r = sec_stats(ch, BOB_TOKEN);
    ck_assert_str_eq(r->stats_scope, "tenant bob");
    attnd__v1__get_stats_response__free_unpacked(r, NULL);
    /* what alice creates with her certificate is hers, not bob's */
    ck_assert_int_eq(sec_create(ch, NULL, id, details, sizeof details), GRPC_STATUS_OK);
    ck_assert_int_eq(sec_close(ch, BOB_TOKEN, id, details, sizeof details),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_int_eq(sec_close(ch, ALICE_TOKEN, id, details, sizeof details), GRPC_STATUS_OK);
    stop_cleanly();
}
END_TEST

START_TEST(test_a_certificate_without_a_line_is_unauthenticated_with_tokens)
{
    char details[256];
    uint8_t id[16];
    sec_write("tokens", ALICE_TOKEN " alice\n");
    boot_tls("--tls-client-ca", sec_path("ca1.pem"), "--token-file", sec_path("tokens"));
    ch = sec_tls_channel(srv.target, "ca1.pem", "client.pem", "client.key");
    ck_assert_int_eq(sec_create(ch, NULL, id, details, sizeof details),
                     GRPC_STATUS_UNAUTHENTICATED);
    stop_cleanly();
}
END_TEST

/* The server's files are replaced by a certificate of CA2 and SIGHUP
 * comes: new connections need CA2; a bad file after that changes
 * nothing. */
START_TEST(test_certificates_reload_on_sighup_for_new_connections)
{
    char cmd[1024];
    boot_tls(NULL, NULL, NULL, NULL);
    ch = sec_tls_channel(srv.target, "ca1.pem", NULL, NULL);
    ck_assert_int_eq(health_of(ch), GRPC_STATUS_OK);
    snprintf(cmd, sizeof cmd, "cp %s %s && cp %s %s", sec_path("server2.pem"),
             sec_path("server.pem"), sec_path("server2.key"), sec_path("server.key"));
    ck_assert_int_eq(system(cmd), 0);
    kill(srv.pid, SIGHUP);
    ck_assert(sec_stderr_has("TLS certificates reloaded for new connections"));
    grpc_channel *two = sec_tls_channel(srv.target, "ca2.pem", NULL, NULL);
    ck_assert_int_eq(health_of(two), GRPC_STATUS_OK);
    grpc_channel_destroy(two);
    refused_over(sec_tls_channel(srv.target, "ca1.pem", NULL, NULL));

    /* a key that is not the certificate's: refused, the last one stays */
    snprintf(cmd, sizeof cmd, "cp %s %s", sec_path("client.key"), sec_path("server.key"));
    ck_assert_int_eq(system(cmd), 0);
    kill(srv.pid, SIGHUP);
    ck_assert(sec_stderr_has("not the key of the first certificate"));
    two = sec_tls_channel(srv.target, "ca2.pem", NULL, NULL);
    ck_assert_int_eq(health_of(two), GRPC_STATUS_OK);
    grpc_channel_destroy(two);
    stop_cleanly();
}
END_TEST

START_TEST(test_a_bad_certificate_stops_attnd_from_starting)
{
    const char *args[] = {"--listen", "127.0.0.1:0", "--model", "tiny-mla", "--tls-cert",
                          NULL, "--tls-key", NULL, NULL};
    args[5] = sec_path("server.pem");
    args[7] = sec_path("client.key");
    ck_assert_int_eq(rg_spawn(&srv, ATTND_BIN, args), 0);
    int status = rg_wait_exit(&srv, RG_WAIT_MS);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
}
END_TEST

/* Connect and never speak: the connection is closed once the handshake
 * timeout passes (TLS) or the keepalive ping goes unanswered (plaintext,
 * attnd's own accept loop). Hang guard only. */
static void silent_peer_is_dropped(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)srv.port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    int64_t end = rg_now_ms() + RG_WAIT_MS;
    char b[256];
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) == 1 && read(fd, b, sizeof b) <= 0)
            break; /* closed by attnd */
        ck_assert_msg(rg_now_ms() < end, "a silent connection was never closed");
    }
    close(fd);
}

START_TEST(test_a_peer_that_never_finishes_its_handshake_is_dropped)
{
    boot_tls("--handshake-timeout-ms", "500", NULL, NULL);
    silent_peer_is_dropped();
    ch = sec_tls_channel(srv.target, "ca1.pem", NULL, NULL);
    ck_assert_int_eq(health_of(ch), GRPC_STATUS_OK);
    stop_cleanly();
}
END_TEST

START_TEST(test_a_plaintext_peer_that_never_speaks_is_dropped)
{
    const char *args[] = {"--grpc-keepalive-ms", "300", "--grpc-keepalive-timeout-ms", "300",
                          NULL};
    sec_boot(args);
    silent_peer_is_dropped();
    ch = rg_channel(srv.target);
    ck_assert_int_eq(health_of(ch), GRPC_STATUS_OK);
    stop_cleanly();
}
END_TEST

/* 128 descriptors and a crowd of 300 connections: gRPC's listener fails an
 * accept4 and never accepts again. attnd must say so: a log line, and
 * NOT_SERVING on a connection made before. */
START_TEST(test_a_tls_listener_that_runs_out_of_descriptors_turns_health_not_serving)
{
    const char *args[] = {"--listen", "127.0.0.1:0", "--model", "tiny-mla", "--kv-memory", "64M",
                          "--threads", "2", "--tls-cert", sec_path("server.pem"), "--tls-key",
                          sec_path("server.key"), NULL};
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fds[300], serving = -1;
    int err_fd = open(sec_path("stderr"), O_WRONLY | O_CREAT | O_APPEND, 0600);
    int saved = dup(STDERR_FILENO);
    dup2(err_fd, STDERR_FILENO);
    ck_assert_int_eq(rg_spawn_nofile(&srv, ATTND_BIN, args, 128, 128), 0);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(err_fd);
    ck_assert_int_eq(rg_read_port(&srv), 0);
    ch = sec_tls_channel(srv.target, "ca1.pem", NULL, NULL);
    ck_assert_int_eq(health(ch, "", &serving, NULL), GRPC_STATUS_OK);
    ck_assert_int_eq(serving, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);

    a.sin_port = htons((uint16_t)srv.port);
    for (int i = 0; i < 300; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fds[i] >= 0 && connect(fds[i], (struct sockaddr *)&a, sizeof a) &&
            errno != EINPROGRESS) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
    ck_assert(sec_stderr_has("the gRPC listener stopped accepting"));
    int64_t end = rg_now_ms() + RG_WAIT_MS;
    do {
        ck_assert_int_eq(health(ch, "", &serving, NULL), GRPC_STATUS_OK);
    } while (serving != GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING &&
             rg_now_ms() < end);
    ck_assert_int_eq(serving,
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    for (int i = 0; i < 300; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    sec_stop_cleanly(); /* once (of 17 CI runs) it ended on SIGABRT here under ASan */
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("service_tls");
    TCase *tc = tcase_create("tls");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, sec_setup, sec_teardown);
    tcase_add_test(tc, test_tls_with_the_servers_ca_is_served);
    tcase_add_test(tc, test_tls_with_a_wrong_ca_no_ca_or_plaintext_fails_to_connect);
    tcase_add_test(tc, test_mtls_without_a_client_certificate_or_with_a_strangers_fails);
    tcase_add_test(tc, test_an_mtls_identity_in_the_token_file_names_the_tenant);
    tcase_add_test(tc, test_a_certificate_without_a_line_is_unauthenticated_with_tokens);
    tcase_add_test(tc, test_certificates_reload_on_sighup_for_new_connections);
    tcase_add_test(tc, test_a_bad_certificate_stops_attnd_from_starting);
    tcase_add_test(tc, test_a_peer_that_never_finishes_its_handshake_is_dropped);
    tcase_add_test(tc, test_a_plaintext_peer_that_never_speaks_is_dropped);
    tcase_add_test(tc, test_a_tls_listener_that_runs_out_of_descriptors_turns_health_not_serving);
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
