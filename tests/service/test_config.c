/* Check suite of attnd's configuration: defaults, ATTND_* variables, flags
 * (which win), size suffixes, and a precise message naming the flag or
 * variable for every bad value. Each test runs in its own process (Check
 * forks), so setenv stays local to it. */
#include <check.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "srv.h"

static attnd_status load(attnd_srv_config *cfg, attnd_error *err, int argc, ...)
{
    char *argv[32];
    va_list ap;
    va_start(ap, argc);
    argv[0] = "attnd";
    for (int i = 1; i < argc && i < 32; i++)
        argv[i] = va_arg(ap, char *);
    va_end(ap);
    attnd_error_clear(err);
    return attnd_srv_config_load(cfg, argc, argv, err);
}

#define ck_assert_bad(st, err, substr)                                                       \
    do {                                                                                     \
        ck_assert_int_eq((st), ATTND_ERR_INVALID_ARGUMENT);                                  \
        ck_assert_msg(strstr((err).msg, (substr)) != NULL, "message \"%s\" lacks \"%s\"",   \
                      (err).msg, (substr));                                                  \
    } while (0)

START_TEST(test_defaults_are_the_documented_ones)
{
    attnd_srv_config c;
    attnd_error err;
    ck_assert_int_eq(load(&c, &err, 1), ATTND_OK);
    ck_assert_str_eq(c.listen, "127.0.0.1:7700");
    ck_assert_str_eq(c.model, "deepseek-v3");
    ck_assert_int_gt(c.threads, 0); /* resolved to the CPUs */
    ck_assert_uint_eq(c.max_sessions, 1024);
    ck_assert_uint_eq(c.kv_memory, 1000000000ull);
    ck_assert_int_eq(c.page_size, 64);
    ck_assert_int_eq(c.kv_dtype, ATTND_DTYPE_INVALID);
    ck_assert_uint_eq(c.max_message, 256ull << 20);
    ck_assert_str_eq(c.port_file, "");
    ck_assert_int_ge(c.io_threads, 1); /* 2, or 1 on one CPU */
    ck_assert_int_le(c.io_threads, 2);
    ck_assert_int_eq(c.shutdown_grace_ms, 10000);
    ck_assert_int_eq(c.drain_delay_ms, 0);
    ck_assert_int_eq(c.max_connections, 0); /* resolved from the fd limit at listen */
}
END_TEST

START_TEST(test_drain_and_connection_flags_set_their_fields)
{
    attnd_srv_config c;
    attnd_error err;
    setenv("ATTND_DRAIN_DELAY_MS", "1500", 1);
    ck_assert_int_eq(load(&c, &err, 7, "--io-threads", "3", "--max-connections", "900",
                          "--shutdown-grace-ms", "20000"),
                     ATTND_OK);
    unsetenv("ATTND_DRAIN_DELAY_MS");
    ck_assert_int_eq(c.io_threads, 3);
    ck_assert_int_eq(c.max_connections, 900);
    ck_assert_int_eq(c.shutdown_grace_ms, 20000);
    ck_assert_int_eq(c.drain_delay_ms, 1500);
    ck_assert_bad(load(&c, &err, 3, "--drain-delay-ms", "-1"), err, "--drain-delay-ms");
    ck_assert_bad(load(&c, &err, 3, "--max-connections", "many"), err, "--max-connections");
}
END_TEST

START_TEST(test_default_max_connections_keeps_a_quarter_of_the_fd_limit)
{
    ck_assert_int_eq(attnd_srv_default_max_connections(1048576), 786432);
    ck_assert_int_eq(attnd_srv_default_max_connections(1024), 768);
    ck_assert_int_eq(attnd_srv_default_max_connections(128), 64); /* at least 64 kept */
}
END_TEST

START_TEST(test_every_flag_sets_its_field)
{
    attnd_srv_config c;
    attnd_error err;
    ck_assert_int_eq(load(&c, &err, 22, "--listen", "0.0.0.0:0", "--model", "tiny-gqa",
                          "--threads", "3", "--kernel-threads", "4", "--max-sessions=7", "--kv-memory", "64Mi",
                          "--page-size", "16", "--kv-dtype", "f32", "--max-message", "1M",
                          "--port-file", "/tmp/p", "--kernel-path", "scalar"),
                     ATTND_OK);
    ck_assert_str_eq(c.listen, "0.0.0.0:0");
    ck_assert_str_eq(c.model, "tiny-gqa");
    ck_assert_int_eq(c.threads, 3);
    ck_assert_int_eq(c.kernel_threads, 4);
    ck_assert_uint_eq(c.max_sessions, 7);
    ck_assert_uint_eq(c.kv_memory, 64ull << 20);
    ck_assert_int_eq(c.page_size, 16);
    ck_assert_int_eq(c.kv_dtype, ATTND_DTYPE_F32);
    ck_assert_uint_eq(c.max_message, 1000000);
    ck_assert_str_eq(c.port_file, "/tmp/p");
    ck_assert_str_eq(c.kernel_path, "scalar");

    attnd_engine_config e;
    attnd_srv_config_engine(&c, &e);
    ck_assert_str_eq(e.model.name, "tiny-gqa");
    ck_assert_int_eq(e.model.kv_dtype, ATTND_DTYPE_F32);
    ck_assert_int_eq(e.page_size, 16);
    ck_assert_uint_eq(e.kv_memory, 64ull << 20);
    ck_assert_uint_eq(e.max_sessions, 7);
    ck_assert_int_eq(e.kernel_threads, 4);
    ck_assert_str_eq(e.kernel_path, "scalar");
}
END_TEST

START_TEST(test_environment_sets_and_flags_win)
{
    attnd_srv_config c;
    attnd_error err;
    setenv("ATTND_MODEL", "tiny-mla", 1);
    setenv("ATTND_THREADS", "5", 1);
    setenv("ATTND_KV_MEMORY", "2Gi", 1);
    setenv("ATTND_LISTEN", "127.0.0.1:9", 1);
    ck_assert_int_eq(load(&c, &err, 3, "--threads", "2"), ATTND_OK);
    ck_assert_str_eq(c.model, "tiny-mla");
    ck_assert_int_eq(c.threads, 2);
    ck_assert_uint_eq(c.kv_memory, 2ull << 30);
    ck_assert_str_eq(c.listen, "127.0.0.1:9");
}
END_TEST

START_TEST(test_bad_environment_value_names_the_variable)
{
    attnd_srv_config c;
    attnd_error err;
    setenv("ATTND_PAGE_SIZE", "big", 1);
    ck_assert_bad(load(&c, &err, 1), err, "ATTND_PAGE_SIZE");
}
END_TEST

START_TEST(test_sizes_take_si_and_binary_suffixes)
{
    static const struct {
        const char *s;
        uint64_t v;
    } ok[] = {{"0", 0}, {"4096", 4096}, {"1K", 1000}, {"1Ki", 1024}, {"64M", 64000000},
              {"64Mi", 64ull << 20}, {"1G", 1000000000ull}, {"1Gi", 1ull << 30},
              {"3GiB", 3ull << 30}, {"5mi", 5ull << 20}, {"7B", 7}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint64_t v = 0;
        ck_assert_msg(attnd_srv_parse_size(ok[i].s, &v) == 0, "%s", ok[i].s);
        ck_assert_uint_eq(v, ok[i].v);
    }
    static const char *bad[] = {"", "G", "-1", "1X", "1.5G", "1 G", "99999999999999999999",
                                "20000000000Gi"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v;
        ck_assert_msg(attnd_srv_parse_size(bad[i], &v) == -1, "\"%s\" parsed", bad[i]);
    }
}
END_TEST

START_TEST(test_unknown_flag_is_refused)
{
    attnd_srv_config c;
    attnd_error err;
    ck_assert_bad(load(&c, &err, 2, "--bogus"), err, "unknown flag --bogus");
    ck_assert_bad(load(&c, &err, 2, "stray"), err, "unexpected argument");
}
END_TEST

START_TEST(test_bad_values_name_the_flag)
{
    attnd_srv_config c;
    attnd_error err;
    ck_assert_bad(load(&c, &err, 3, "--threads", "-1"), err, "--threads");
    ck_assert_bad(load(&c, &err, 3, "--threads", "4x"), err, "--threads");
    ck_assert_bad(load(&c, &err, 3, "--page-size", "0"), err, "--page-size");
    ck_assert_bad(load(&c, &err, 3, "--kv-memory", "lots"), err, "--kv-memory");
    ck_assert_bad(load(&c, &err, 3, "--kv-dtype", "f64"), err, "--kv-dtype");
    ck_assert_bad(load(&c, &err, 3, "--max-message", "4Gi"), err, "--max-message");
    ck_assert_bad(load(&c, &err, 2, "--model"), err, "--model: missing");
    ck_assert_bad(load(&c, &err, 3, "--model", "gpt-5"), err, "--model: unknown preset");
    ck_assert_bad(load(&c, &err, 3, "--listen", "nowhere"), err, "--listen");
    ck_assert_bad(load(&c, &err, 2, "--help=yes"), err, "--help");
}
END_TEST

START_TEST(test_durable_with_a_token_file_is_accepted)
{
    attnd_srv_config c;
    attnd_error err;
    /* the log records each session's tenant (worker/TIERS.md) */
    ck_assert_int_eq(load(&c, &err, 4, "--durable", "--token-file", "/tmp/tokens"), ATTND_OK);
    ck_assert_int_eq(load(&c, &err, 4, "--durable=batch", "--token-file", "/tmp/tokens"),
                     ATTND_OK);
    ck_assert_int_eq(load(&c, &err, 4, "--durable=off", "--token-file", "/tmp/tokens"), ATTND_OK);
}
END_TEST

START_TEST(test_help_and_list_models_skip_resolution)
{
    attnd_srv_config c;
    attnd_error err;
    ck_assert_int_eq(load(&c, &err, 4, "--model", "gpt-5", "--help"), ATTND_OK);
    ck_assert_int_eq(c.show_help, 1);
    ck_assert_int_eq(load(&c, &err, 2, "--list-models"), ATTND_OK);
    ck_assert_int_eq(c.list_models, 1);
}
END_TEST

/* The environment this runs in must not leak into the defaults, nor one
 * test's variables into the next (CK_FORK=no runs them in one process). */
static void clear_env(void)
{
    static const char *vars[] = {"ATTND_LISTEN", "ATTND_MODEL", "ATTND_THREADS",
                                 "ATTND_MAX_SESSIONS", "ATTND_KV_MEMORY", "ATTND_PAGE_SIZE",
                                 "ATTND_KV_DTYPE", "ATTND_MAX_MESSAGE", "ATTND_PORT_FILE",
                                 "ATTND_SHUTDOWN_GRACE_MS", "ATTND_HTTP2_LOOKAHEAD",
                                 "ATTND_HTTP2_MAX_FRAME", "ATTND_KERNEL_THREADS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
}

static Suite *suite(void)
{
    Suite *s = suite_create("service_config");
    TCase *tc = tcase_create("config");
    tcase_add_checked_fixture(tc, clear_env, clear_env);
    tcase_add_test(tc, test_defaults_are_the_documented_ones);
    tcase_add_test(tc, test_every_flag_sets_its_field);
    tcase_add_test(tc, test_drain_and_connection_flags_set_their_fields);
    tcase_add_test(tc, test_default_max_connections_keeps_a_quarter_of_the_fd_limit);
    tcase_add_test(tc, test_environment_sets_and_flags_win);
    tcase_add_test(tc, test_bad_environment_value_names_the_variable);
    tcase_add_test(tc, test_sizes_take_si_and_binary_suffixes);
    tcase_add_test(tc, test_unknown_flag_is_refused);
    tcase_add_test(tc, test_bad_values_name_the_flag);
    tcase_add_test(tc, test_durable_with_a_token_file_is_accepted);
    tcase_add_test(tc, test_help_and_list_models_skip_resolution);
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
