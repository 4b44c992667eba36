/* attnd_log (common/attnd_log.h): one line per event; the level filters;
 * JSON lines escape what the message carries (quotes, backslashes,
 * newlines, control characters); text lines fold newlines; a request id
 * is appended when there is one; an overlong message is cut, the line
 * still ends in a newline (and, in JSON, still parses as an object).
 * stderr is redirected to a temporary file for each test. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attnd_log.h"

static char out[ATTND_LOG_LINE_MAX * 2];

/* Run fn with stderr going to a file; its text lands in out. */
static void capture(void (*fn)(void))
{
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    int saved = dup(STDERR_FILENO);
    dup2(fileno(f), STDERR_FILENO);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(f);
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = '\0';
    fclose(f);
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void log_levels(void)
{
    attnd_log_error("test", "e");
    attnd_log_warn("test", "w");
    attnd_log_info("test", "i");
    attnd_log_debug("test", "d");
}

START_TEST(test_the_level_hides_less_severe_lines)
{
    ck_assert_int_eq(attnd_log_configure("text", "warn"), 0);
    capture(log_levels);
    ck_assert_int_eq(count_lines(out), 2);
    ck_assert_ptr_nonnull(strstr(out, " error test: e\n"));
    ck_assert_ptr_nonnull(strstr(out, " warn  test: w\n"));
    ck_assert_int_eq(attnd_log_enabled(ATTND_LOG_INFO), 0);
    ck_assert_int_eq(attnd_log_configure(NULL, "debug"), 0);
    capture(log_levels);
    ck_assert_int_eq(count_lines(out), 4);
}
END_TEST

START_TEST(test_unknown_names_are_refused_and_change_nothing)
{
    ck_assert_int_eq(attnd_log_configure("text", "info"), 0);
    ck_assert_int_eq(attnd_log_configure("xml", "debug"), -1);
    ck_assert_int_eq(attnd_log_configure("json", "loud"), -1);
    ck_assert_int_eq(attnd_log_enabled(ATTND_LOG_DEBUG), 0);
    capture(log_levels);
    ck_assert_ptr_null(strchr(out, '{')); /* still text */
}
END_TEST

static void log_awkward(void)
{
    attnd_log_req(ATTND_LOG_WARN, "rpc", 42, "say \"hi\"\\ then\nnew line\ttab\x01");
}

START_TEST(test_json_escapes_the_message_and_adds_the_request_id)
{
    ck_assert_int_eq(attnd_log_configure("json", "info"), 0);
    capture(log_awkward);
    ck_assert_int_eq(count_lines(out), 1);
    ck_assert_int_eq(strncmp(out, "{\"ts\":\"", 7), 0);
    ck_assert_ptr_nonnull(strstr(out, "\",\"level\":\"warn\",\"component\":\"rpc\",\"msg\":"
                                      "\"say \\\"hi\\\"\\\\ then\\nnew line\\u0009tab\\u0001\""
                                      ",\"request_id\":42}\n"));
}
END_TEST

START_TEST(test_text_folds_newlines_and_appends_the_request_id)
{
    ck_assert_int_eq(attnd_log_configure("text", "info"), 0);
    capture(log_awkward);
    ck_assert_int_eq(count_lines(out), 1);
    ck_assert_ptr_nonnull(strstr(out, " warn  rpc: say \"hi\"\\ then new line\ttab\x01 "
                                      "request_id=42\n"));
    ck_assert_int_eq(out[4], '-'); /* 2026-12-01T... */
    ck_assert_int_eq(out[10], 'T');
}
END_TEST

static void log_long(void)
{
    static char big[ATTND_LOG_LINE_MAX * 2];
    memset(big, '"', sizeof big - 1); /* each escapes to two bytes */
    attnd_log_req(ATTND_LOG_ERROR, "big", 7, "%s", big);
}

START_TEST(test_an_overlong_message_is_cut_into_one_closed_json_line)
{
    ck_assert_int_eq(attnd_log_configure("json", "info"), 0);
    capture(log_long);
    size_t n = strlen(out);
    ck_assert_int_eq(count_lines(out), 1);
    ck_assert_int_eq(out[n - 1], '\n');
    ck_assert_int_eq(out[n - 2], '}');
    ck_assert_uint_le(n, ATTND_LOG_LINE_MAX + 256);
    /* the cut never splits an escape: the msg string is closed */
    ck_assert_ptr_nonnull(strstr(out, "\\\"\",\"request_id\":7}\n"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("common_log");
    TCase *tc = tcase_create("log");
    tcase_add_test(tc, test_the_level_hides_less_severe_lines);
    tcase_add_test(tc, test_unknown_names_are_refused_and_change_nothing);
    tcase_add_test(tc, test_json_escapes_the_message_and_adds_the_request_id);
    tcase_add_test(tc, test_text_folds_newlines_and_appends_the_request_id);
    tcase_add_test(tc, test_an_overlong_message_is_cut_into_one_closed_json_line);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
