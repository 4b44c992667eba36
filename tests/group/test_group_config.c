/* Group settings from flags, environment and group files
 * (service/group_setup.c): what a rank's engine serves, and a message that
 * names the flag for every bad value. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "srv.h"

/* Load argv and the group settings; the status of whichever failed. */
static attnd_status load(const char *const *argv, attnd_engine_config *e, attnd_group_config *g,
                         int *on, attnd_error *err)
{
    attnd_srv_config cfg;
    int argc = 0;
    while (argv[argc])
        argc++;
    attnd_status st = attnd_srv_config_load(&cfg, argc, (char *const *)argv, err);
    if (st)
        return st;
    attnd_srv_config_engine(&cfg, e);
    return attnd_srv_config_group(&cfg, e, g, on, err);
}

#define LOAD(...) load((const char *const[]){"attnd", __VA_ARGS__, NULL}, &e, &g, &on, &err)

START_TEST(test_no_group_flags_is_a_lone_worker)
{
    attnd_engine_config e;
    attnd_group_config g;
    attnd_error err;
    int on = 1;
    ck_assert_int_eq(LOAD("--model", "tiny-gqa"), ATTND_OK);
    ck_assert_int_eq(on, 0);
}
END_TEST

START_TEST(test_head_sharding_gives_the_rank_a_shard_of_the_heads)
{
    attnd_engine_config e;
    attnd_group_config g;
    attnd_error err;
    int on = 0;
    ck_assert_int_eq(LOAD("--model", "tiny-gqa", "--rank", "1", "--group",
                          "127.0.0.1:7001, 127.0.0.1:7002", "--shard", "head"),
                     ATTND_OK);
    ck_assert_int_eq(on, 1);
    ck_assert_int_eq(g.size, 2);
    ck_assert_int_eq(g.rank, 1);
    ck_assert_str_eq(g.addrs[1], "127.0.0.1:7002");
    ck_assert_int_eq(g.model.n_kv_heads, 2);
    ck_assert_int_eq(e.model.n_kv_heads, 1);
    ck_assert_int_eq(e.model.n_q_heads, 4);
}
END_TEST

START_TEST(test_latent_settings_come_from_the_environment_too)
{
    attnd_engine_config e;
    attnd_group_config g;
    attnd_error err;
    int on = 0;
    setenv("ATTND_SHARD", "latent", 1);
    setenv("ATTND_TPLA_MU", "0.5", 1);
    attnd_status st = LOAD("--model", "tiny-mla", "--group", "h:1,h:2,h:3,h:4",
                           "--tpla-rope", "split");
    unsetenv("ATTND_SHARD");
    unsetenv("ATTND_TPLA_MU");
    ck_assert_int_eq(st, ATTND_OK);
    ck_assert_int_eq(g.mode, ATTND_GROUP_LATENT);
    ck_assert(g.mu == 0.5f);
    ck_assert_int_eq(g.rope_split, 1);
    ck_assert_int_eq(e.model.d_latent, 16);
    ck_assert_int_eq(e.model.d_rope, 4);
}
END_TEST

START_TEST(test_group_file_lists_ranks_one_a_line)
{
    attnd_engine_config e;
    attnd_group_config g;
    attnd_error err;
    int on = 0;
    char path[] = "/tmp/attnd-groupfile-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "# ranks\n10.0.0.1:7800\n\n10.0.0.2:7800\n10.0.0.3:7800\n");
    fclose(f);
    attnd_status st = LOAD("--model", "tiny-mla", "--group-file", path, "--rank", "2");
    unlink(path);
    ck_assert_int_eq(st, ATTND_OK);
    ck_assert_int_eq(g.size, 3);
    ck_assert_str_eq(g.addrs[2], "10.0.0.3:7800");
}
END_TEST

START_TEST(test_bad_group_values_name_their_flag)
{
    attnd_engine_config e;
    attnd_group_config g;
    attnd_error err;
    int on = 0;
    static const struct {
        const char *argv[8];
        const char *field;
    } bad[] = {
        {{"--group", "a:1,b:2", "--shard", "diagonal"}, "--shard"},
        {{"--group", "a:1,b:2", "--tpla-mu", "-1"}, "--tpla-mu"},
        {{"--group", "a:1,b:2", "--tpla-rope", "both"}, "--tpla-rope"},
        {{"--group", "a:1,nocolon"}, "--group"},
        {{"--group", "a:1,b:2", "--rank", "2"}, "--rank"},
        {{"--group", "a:1,b:2,c:3", "--shard", "head"}, "--shard head"},
        {{"--group", "a:1", "--group-file", "/nonexistent"}, "--group"},
        {{"--group-file", "/nonexistent/attnd-group"}, "--group-file"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *argv[12] = {"attnd", "--model", "tiny-gqa"};
        int n = 3;
        for (int k = 0; bad[i].argv[k]; k++)
            argv[n++] = bad[i].argv[k];
        argv[n] = NULL;
        attnd_error_clear(&err);
        attnd_status st = load(argv, &e, &g, &on, &err);
        ck_assert_msg(st == ATTND_ERR_INVALID_ARGUMENT, "case %zu: %s", i,
                      attnd_status_string(st));
        ck_assert_msg(strstr(err.msg, bad[i].field), "case %zu: \"%s\" does not name %s", i,
                      err.msg, bad[i].field);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("group_config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_no_group_flags_is_a_lone_worker);
    tcase_add_test(tc, test_head_sharding_gives_the_rank_a_shard_of_the_heads);
    tcase_add_test(tc, test_latent_settings_come_from_the_environment_too);
    tcase_add_test(tc, test_group_file_lists_ranks_one_a_line);
    tcase_add_test(tc, test_bad_group_values_name_their_flag);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
