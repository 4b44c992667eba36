/* Durability of a worker group (worker/TIERS.md, worker/GROUPS.md): two
 * attnd ranks in sequence mode, each with its own --kv-dir and --durable.
 * A rank killed and restarted recovers its own shard and the group's
 * lengths, so either rank leads exactly as before; both killed at once,
 * both recover; a rank that comes back without its directory makes the
 * leader answer DATA_LOSS for the sessions whose shard is really gone.
 * Outputs are checked against the float64 reference. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "tiers_testutil.h"

static cu_server rank[2];
static char gdir[64], kdir[2][64];
static char tokens[128]; /* with tenants: the token file (in gdir), else "" */

#define ALICE_TOKEN "alice-0123456789abcdef"
#define BOB_TOKEN "bob-0123456789abcdef01"
#define OPS_TOKEN "ops-0123456789abcdef012"

static void start_rank(int r)
{
    char rs[8];
    snprintf(rs, sizeof rs, "%d", r);
    const char *flags[32] = {"--model", "tiny-gqa", "--page-size", "16", "--threads", "2",
                             "--kernel-threads", "1", "--kv-memory", "1Mi", "--rank", rs,
                             "--group", "127.0.0.1:0,127.0.0.1:0", "--group-dir", gdir,
                             "--shard", "sequence", "--group-timeout-ms", "5000",
                             "--group-connect-ms", "100", "--kv-dir", kdir[r], "--durable", NULL};
    if (tokens[0]) {
        int n = 0;
        while (flags[n])
            n++;
        flags[n++] = "--token-file";
        flags[n++] = tokens;
        flags[n] = NULL;
    }
    ck_assert_msg(cu_server_start(&rank[r], flags) == 0, "rank %d did not start", r);
}

/* A client of rank r, with token (NULL: none; with tenants, the admin's). */
static attnd_client *connect_rank_as(int r, const char *token)
{
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;
    cu_srv = rank[r]; /* the target of cu_connect and tt_* helpers */
    attnd_client_options_init(&o);
    o.deadline_ms = 120000; /* hang guards only */
    o.connect_timeout_ms = 30000;
    o.token = token ? token : tokens[0] ? OPS_TOKEN : NULL;
    ck_assert_msg(attnd_client_connect(cu_srv.target, &o, &c, &err) == ATTND_OK, "connect: %s",
                  err.msg);
    return c;
}

static attnd_client *connect_rank(int r)
{
    return connect_rank_as(r, NULL);
}

/* Until both ranks see their peer (GetStats), up to 30 s (a hang guard). */
static void wait_whole(void)
{
    for (int r = 0; r < 2; r++) {
        attnd_client *c = connect_rank(r);
        attnd_stats st = {0};
        attnd_error err;
        for (int waited = 0; waited < 30000; waited += 20) {
            if (attnd_client_get_stats(c, &st, NULL, &err) == ATTND_OK && st.group_connected == 1)
                break;
            struct timespec ts = {0, 20000000L};
            nanosleep(&ts, NULL);
        }
        ck_assert_uint_eq(st.group_connected, 1);
        attnd_client_destroy(c);
    }
}

static void kill_rank(int r)
{
    kill(rank[r].pid, SIGKILL);
    waitpid(rank[r].pid, NULL, 0);
    rank[r].pid = 0;
}

/* Rank `survivor` learns that its peer is gone: a call it leads fails
 * UNAVAILABLE naming the peer (the group's own promise, whether the peer's
 * endpoint has errored yet or the group timeout ends the call), and the
 * peer is dropped. Without this a restart could race the old endpoint:
 * the survivor might still count the dead rank's connection as up, and the
 * next call would fail on it instead of reaching the new rank. */
static void notice_gone(cu_seqs *s, int survivor, int gone)
{
    char want[16];
    attnd_error err;
    attnd_client *keep = s->c;
    s->c = connect_rank(survivor);
    snprintf(want, sizeof want, "rank %d", gone);
    attnd_error_clear(&err);
    cu_assert_fails(tt_check_one(s, 0, &err), err, ATTND_ERR_UNAVAILABLE, want);
    attnd_client_destroy(s->c);
    s->c = keep;
}

static void lead_from(cu_seqs *s, int r)
{
    if (s->c)
        attnd_client_destroy(s->c);
    s->c = connect_rank(r);
}

static void decode(cu_seqs *s)
{
    attnd_error err;
    attnd_error_clear(&err);
    for (uint32_t l = 0; l < s->m.n_layers; l++) {
        tt_op op;
        tt_op_attend(s, &op, l, 0, s->n);
        ck_assert_msg(tt_op_send(s, &op, &err) == ATTND_OK, "decode: %s", err.msg);
        tt_op_mirror(s, &op, 1);
        tt_op_free(&op);
    }
}

static void teardown(void)
{
    for (int r = 0; r < 2; r++) {
        if (rank[r].pid > 0)
            ck_assert_int_eq(cu_server_stop(&rank[r]), 0);
        tt_rmdir(kdir[r]);
    }
    tt_rmdir(gdir);
    tokens[0] = '\0';
    memset(&cu_srv, 0, sizeof cu_srv);
}

START_TEST(test_group_ranks_recover_their_own_shards)
{
    static const uint32_t chunks[] = {24, 9, 0};
    cu_seqs s;
    attnd_error err;

    tt_must_mkdir(gdir);
    tt_must_mkdir(kdir[0]);
    tt_must_mkdir(kdir[1]);
    start_rank(0);
    start_rank(1);
    wait_whole();
    cu_must_open(&s, connect_rank(0), 3, ATTND_DTYPE_BF16);
    for (uint32_t i = 0; i < s.n; i++)
        cu_must_prefill(&s, i, 50, chunks); /* pages of 16 alternate between the ranks */
    decode(&s);
    decode(&s);
    tt_must_check_all(&s, 3);

    /* rank 1 crashes and comes back: the group is as it was */
    kill_rank(1);
    notice_gone(&s, 0, 1);
    start_rank(1);
    wait_whole();
    tt_must_check_all(&s, 3);
    decode(&s);
    lead_from(&s, 1); /* the restarted rank leads: it knows the lengths */
    tt_must_check_all(&s, 3);
    decode(&s);

    /* both crash */
    kill_rank(0);
    kill_rank(1);
    start_rank(0);
    start_rank(1);
    wait_whole();
    lead_from(&s, 0);
    tt_must_check_all(&s, 3);
    decode(&s);
    tt_must_check_all(&s, 3);

    /* rank 1 comes back without its shard: really gone, DATA_LOSS */
    kill_rank(1);
    notice_gone(&s, 0, 1);
    tt_rmdir(kdir[1]);
    start_rank(1);
    wait_whole();
    attnd_error_clear(&err);
    cu_assert_fails(tt_check_one(&s, 0, &err), err, ATTND_ERR_DATA_LOSS, "rank 1");
    attnd_client_destroy(s.c);
    attnd_refcheck_cleanup(&s.rc);
}
END_TEST

/* Tenants on a durable group: alice's sessions (one dense, one streaming
 * with a window wider than its context) created through rank 0 stay
 * alice's on both ranks after both are killed and restarted: through rank
 * 1 her Attends match float64 over exactly what she wrote, each rank
 * counts both sessions as hers, and bob gets NOT_FOUND for them. */
START_TEST(test_a_tenants_sessions_stay_its_own_after_both_ranks_crash)
{
    cu_seqs s;
    attnd_error err;

    tt_must_mkdir(gdir);
    tt_must_mkdir(kdir[0]);
    tt_must_mkdir(kdir[1]);
    snprintf(tokens, sizeof tokens, "%s/tokens", gdir);
    FILE *f = fopen(tokens, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "%s alice\n%s bob\n%s ops admin\n", ALICE_TOKEN, BOB_TOKEN, OPS_TOKEN);
    ck_assert_int_eq(fclose(f), 0);
    start_rank(0);
    start_rank(1);
    wait_whole();
    cu_must_open(&s, connect_rank_as(0, ALICE_TOKEN), 2, ATTND_DTYPE_BF16);
    ck_assert_int_eq(attnd_client_close_session(s.c, &s.ids[1], &err), ATTND_OK);
    const attnd_sparse_policy pol = {.kind = ATTND_SPARSE_STREAMING, .sink = 16, .window = 4096};
    ck_assert_msg(attnd_client_create_session_policy(s.c, NULL, 0, &pol, NULL, 0, &s.ids[1], NULL,
                                                     &err) == ATTND_OK, "%s", err.msg);
    for (uint32_t i = 0; i < s.n; i++)
        cu_must_prefill(&s, i, 50, NULL);
    decode(&s);

    kill_rank(0);
    kill_rank(1);
    start_rank(0);
    start_rank(1);
    wait_whole();
    attnd_client_destroy(s.c);
    s.c = connect_rank_as(1, ALICE_TOKEN);
    tt_must_check_all(&s, 2);
    decode(&s);
    for (int r = 0; r < 2; r++) {
        attnd_client *a = connect_rank_as(r, ALICE_TOKEN);
        attnd_stats st;
        ck_assert_int_eq(attnd_client_get_stats(a, &st, NULL, &err), ATTND_OK);
        ck_assert_uint_eq(st.sessions, 2);
        attnd_client_destroy(a);
    }
    attnd_client *bob = connect_rank_as(1, BOB_TOKEN);
    for (uint32_t i = 0; i < s.n; i++) {
        cu_step st;
        cu_step_make(&s, &st, 0, i, 1, 1, 0, 0, ATTND_DTYPE_INVALID);
        cu_assert_fails(attnd_client_attend(bob, &st.a, &err), err, ATTND_ERR_NOT_FOUND,
                        "session");
        cu_step_free(&st);
        cu_assert_fails(attnd_client_close_session(bob, &s.ids[i], &err), err,
                        ATTND_ERR_NOT_FOUND, "session");
    }
    attnd_client_destroy(bob);
    attnd_client_destroy(s.c);
    s.c = connect_rank_as(0, ALICE_TOKEN);
    tt_must_check_all(&s, 2);
    tt_seqs_done(&s);
}
END_TEST

static Suite *group_suite(void)
{
    Suite *su = suite_create("tiers_group");
    TCase *tc = tcase_create("group");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_group_ranks_recover_their_own_shards);
    tcase_add_test(tc, test_a_tenants_sessions_stay_its_own_after_both_ranks_crash);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(group_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
