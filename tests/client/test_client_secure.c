/* Check suite of libattnd's security options (issue 15): a client with
 * tls_ca_file and a token decodes against an attnd with --tls-cert and
 * --token-file, every output checked against the float64 reference; a CA
 * that did not sign the server's certificate fails connect UNAVAILABLE;
 * mutual TLS works with tls_cert_file/tls_key_file and fails without;
 * a missing file is INVALID_ARGUMENT naming the option; a wrong token
 * makes calls UNAUTHENTICATED; tokens keep tenants apart through the
 * typed API too. Certificates are made per test with openssl. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client_testutil.h"

#ifndef ATTND_MKCERTS
#error "ATTND_MKCERTS must name tests/service/mkcerts.sh"
#endif

#define ALICE "alice-0123456789abcdef"
#define BOB "bob-0123456789abcdef01"

static char dir[64];

static const char *path(const char *name)
{
    static char buf[8][128];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, sizeof buf[0], "%s/%s", dir, name);
    return p;
}

static void setup(void)
{
    char cmd[256];
    snprintf(dir, sizeof dir, "/tmp/attnd-csec-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(cmd, sizeof cmd, "%s %s", ATTND_MKCERTS, dir);
    ck_assert_int_eq(system(cmd), 0);
    FILE *f = fopen(path("tokens"), "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, ALICE " alice\n" BOB " bob\n");
    fclose(f);
    chmod(path("tokens"), 0600);
}

static void teardown(void)
{
    char cmd[256];
    cu_teardown();
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd))
        fprintf(stderr, "could not remove %s\n", dir);
}

static attnd_status connect_with(const attnd_client_options *o, attnd_client **c_p,
                                 attnd_error *err)
{
    attnd_error_clear(err);
    return attnd_client_connect(cu_srv.target, o, c_p, err);
}

static void opts_for(attnd_client_options *o, const char *ca, const char *token)
{
    attnd_client_options_init(o);
    o->connect_timeout_ms = 5000;
    o->tls_ca_file = ca ? path(ca) : NULL;
    o->token = token;
}

START_TEST(test_tls_and_a_token_decode_exactly)
{
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;
    cu_seqs s;
    attnd_refcheck_result res = {0};
    cu_must_start("--model", "tiny-mla", "--tls-cert", path("server.pem"), "--tls-key", path("server.key"),
                  "--token-file", path("tokens"));
    opts_for(&o, "ca1.pem", ALICE);
    ck_assert_int_eq(connect_with(&o, &c, &err), ATTND_OK);
    cu_must_open(&s, c, 2, ATTND_DTYPE_F32);
    cu_must_prefill(&s, 0, 20, NULL);
    cu_must_prefill(&s, 1, 9, NULL);
    for (int step = 0; step < 3; step++)
        ck_assert_int_eq(cu_decode_step(&s, &res, &err), ATTND_OK);
    ck_assert_msg(res.max_err <= cu_bound(ATTND_DTYPE_F32), "max error %g", res.max_err);
    attnd_stats st;
    ck_assert_int_eq(attnd_client_get_stats(c, &st, NULL, &err), ATTND_OK);
    ck_assert_str_eq(st.stats_scope, "tenant alice");
    ck_assert_uint_eq(st.sessions, 2);
    cu_seqs_close(&s);
    attnd_client_destroy(c);
}
END_TEST

START_TEST(test_a_ca_that_did_not_sign_the_server_fails_connect)
{
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;
    cu_must_start("--model", "tiny-mla", "--tls-cert", path("server.pem"), "--tls-key", path("server.key"));
    opts_for(&o, "ca2.pem", NULL);
    o.connect_timeout_ms = 1500; /* a refused connect waits all of it */
    ck_assert_int_eq(connect_with(&o, &c, &err), ATTND_ERR_UNAVAILABLE);
    opts_for(&o, NULL, NULL); /* plaintext to a TLS port */
    o.connect_timeout_ms = 1500;
    ck_assert_int_eq(connect_with(&o, &c, &err), ATTND_ERR_UNAVAILABLE);
    opts_for(&o, "ca1.pem", NULL);
    ck_assert_int_eq(connect_with(&o, &c, &err), ATTND_OK);
    attnd_client_destroy(c);
}
END_TEST

START_TEST(test_mutual_tls_needs_the_client_certificate)
{
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;
    int serving = 0;
    cu_must_start("--model", "tiny-mla", "--tls-cert", path("server.pem"), "--tls-key", path("server.key"),
                  "--tls-client-ca", path("ca1.pem"));
    opts_for(&o, "ca1.pem", NULL);
    o.connect_timeout_ms = 1500;
    if (connect_with(&o, &c, &err) == ATTND_OK) {
        /* TLS 1.3: the client may finish before the server refuses it */
        ck_assert_int_ne(attnd_client_health(c, "", &serving, &err), ATTND_OK);
        attnd_client_destroy(c);
        c = NULL;
    }
    o.connect_timeout_ms = 5000;
    o.tls_cert_file = path("client.pem");
    o.tls_key_file = path("client.key");
    ck_assert_int_eq(connect_with(&o, &c, &err), ATTND_OK);
    ck_assert_int_eq(attnd_client_health(c, "", &serving, &err), ATTND_OK);
    ck_assert_int_eq(serving, 1);
    attnd_client_destroy(c);
}
END_TEST

START_TEST(test_bad_security_options_are_invalid_argument_naming_the_field)
{
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;
    cu_must_start("--model", "tiny-mla", "--tls-cert", path("server.pem"), "--tls-key", path("server.key"));
    opts_for(&o, "no-such-ca.pem", NULL);
    ck_assert_int_eq(connect_with(&o, &c, &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(err.msg, "opts.tls_ca_file") != NULL, "%s", err.msg);
    opts_for(&o, "ca1.pem", NULL);
    o.tls_cert_file = path("client.pem");
    ck_assert_int_eq(connect_with(&o, &c, &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(err.msg, "opts.tls_key_file") != NULL, "%s", err.msg);
    opts_for(&o, "ca1.pem", "two\nlines");
    ck_assert_int_eq(connect_with(&o, &c, &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(err.msg, "opts.token") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(test_tokens_keep_tenants_apart_through_the_api)
{
    attnd_client_options o;
    attnd_client *a = NULL, *b = NULL, *none = NULL;
    attnd_error err;
    attnd_session_id id;
    cu_must_start("--model", "tiny-mla", "--token-file", path("tokens"));
    opts_for(&o, NULL, ALICE);
    ck_assert_int_eq(connect_with(&o, &a, &err), ATTND_OK);
    opts_for(&o, NULL, BOB);
    ck_assert_int_eq(connect_with(&o, &b, &err), ATTND_OK);
    opts_for(&o, NULL, "mallory-0123456789abc");
    ck_assert_int_eq(connect_with(&o, &none, &err), ATTND_OK); /* connecting needs no token */
    ck_assert_int_eq(attnd_client_create_session(none, NULL, 0, &id, NULL, &err),
                     ATTND_ERR_UNAUTHENTICATED);
    ck_assert_int_eq(attnd_client_create_session(a, NULL, 0, &id, NULL, &err), ATTND_OK);
    ck_assert_int_eq(attnd_client_close_session(b, &id, &err), ATTND_ERR_NOT_FOUND);
    ck_assert_str_eq(err.msg, "session_id: no such session");
    ck_assert_int_eq(attnd_client_close_session(a, &id, &err), ATTND_OK);
    attnd_client_destroy(none);
    attnd_client_destroy(b);
    attnd_client_destroy(a);
}
END_TEST

/* A tenant's session takes a sparse policy (its quota follows the
 * policy's reservation and streaming's freed pages: tests/worker/test_owner.c,
 * tests/tiers/test_tiers_tenants.c) and stays its own: another tenant
 * gets NOT_FOUND for it. */
START_TEST(test_a_tenants_session_takes_a_sparse_policy_and_stays_its_own)
{
    attnd_client_options o;
    attnd_client *a = NULL, *b = NULL;
    attnd_error err;
    attnd_session_id id;
    attnd_stats st;
    const attnd_sparse_policy streaming = {.kind = ATTND_SPARSE_STREAMING, .sink = 4,
                                           .window = 64};
    cu_must_start("--model", "tiny-gqa", "--token-file", path("tokens"));
    opts_for(&o, NULL, ALICE);
    ck_assert_int_eq(connect_with(&o, &a, &err), ATTND_OK);
    opts_for(&o, NULL, BOB);
    ck_assert_int_eq(connect_with(&o, &b, &err), ATTND_OK);
    ck_assert_msg(attnd_client_create_session_policy(a, NULL, 1000, &streaming, NULL, 0, &id,
                                                     NULL, &err) == ATTND_OK, "%s", err.msg);
    ck_assert_int_eq(attnd_client_get_stats(a, &st, NULL, &err), ATTND_OK);
    ck_assert_uint_eq(st.sessions, 1);
    ck_assert_uint_gt(st.pages_reserved, 0);
    ck_assert_int_eq(attnd_client_get_stats(b, &st, NULL, &err), ATTND_OK);
    ck_assert_uint_eq(st.sessions, 0);
    cu_assert_fails(attnd_client_close_session(b, &id, &err), err, ATTND_ERR_NOT_FOUND,
                    "session_id");
    ck_assert_int_eq(attnd_client_close_session(a, &id, &err), ATTND_OK);
    ck_assert_int_eq(attnd_client_get_stats(a, &st, NULL, &err), ATTND_OK);
    ck_assert_uint_eq(st.sessions + st.pages_reserved, 0);
    attnd_client_destroy(a);
    attnd_client_destroy(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("client_secure");
    TCase *tc = tcase_create("secure");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_tls_and_a_token_decode_exactly);
    tcase_add_test(tc, test_a_ca_that_did_not_sign_the_server_fails_connect);
    tcase_add_test(tc, test_mutual_tls_needs_the_client_certificate);
    tcase_add_test(tc, test_bad_security_options_are_invalid_argument_naming_the_field);
    tcase_add_test(tc, test_tokens_keep_tenants_apart_through_the_api);
    tcase_add_test(tc, test_a_tenants_session_takes_a_sparse_policy_and_stays_its_own);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
