/* Check suite of attnd's file descriptors and connections: the soft fd
 * limit is raised to the hard one at start; connections beyond
 * --max-connections are closed at once; and after the process has run out
 * of descriptors (a small limit set before exec, then a crowd of idle TCP
 * connections), new clients are served again once the crowd is gone.
 * (gRPC 1.51's own listener stopped accepting for good after one EMFILE.)
 * Every test ends by requiring exit status 0. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "svc_server.h"

#define CROWD 300 /* idle connections: well past any limit set below */

/* Open n plain TCP connections to attnd (they send nothing); fds[i] = -1
 * where the connect itself failed. */
static void crowd_open(int *fds, int n)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)srv.port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fds[i], 0);
        if (connect(fds[i], (struct sockaddr *)&a, sizeof a)) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
}

static void crowd_close(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* How many of the crowd attnd closed (EOF or reset), waiting up to the
 * hang guard for at least `want`. */
static int crowd_closed_by_server(const int *fds, int n, int want)
{
    int64_t end = rg_now_ms() + RG_WAIT_MS;
    for (;;) {
        int closed = 0;
        for (int i = 0; i < n; i++) {
            char b;
            if (fds[i] < 0)
                continue;
            struct pollfd p = {fds[i], POLLIN, 0};
            if (poll(&p, 1, 0) == 1 && recv(fds[i], &b, 1, MSG_PEEK | MSG_DONTWAIT) <= 0)
                closed++;
        }
        if (closed >= want || rg_now_ms() > end)
            return closed;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* A new client (fresh channel, as a probe would) gets SERVING: polled,
 * since a connection may be refused while attnd has not yet seen the
 * crowd's connections close. */
static void new_client_is_served(void)
{
    int64_t end = rg_now_ms() + RG_WAIT_MS;
    for (;;) {
        grpc_channel *c = rg_channel(srv.target);
        int serving;
        int code = health(c, "", &serving, NULL);
        grpc_channel_destroy(c);
        if (code == GRPC_STATUS_OK) {
            ck_assert_int_eq(serving,
                             GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
            return;
        }
        ck_assert_msg(rg_now_ms() < end, "no new connection is served (last status %d)", code);
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

START_TEST(test_soft_fd_limit_is_raised_to_the_hard_limit)
{
    char path[64], line[256];
    long soft = -1, hard = -1;
    boot_nofile(NULL, NULL, 256, 2048);
    snprintf(path, sizeof path, "/proc/%d/limits", (int)srv.pid);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "Max open files", 14) == 0)
            ck_assert_int_eq(sscanf(line + 14, "%ld %ld", &soft, &hard), 2);
    fclose(f);
    ck_assert_int_eq(hard, 2048);
    ck_assert_int_eq(soft, 2048);
    stop_cleanly();
}
END_TEST

/* Beyond --max-connections new connections are closed at once; the
 * connections already held keep working; once the crowd leaves, new
 * clients are served. */
START_TEST(test_connections_beyond_the_cap_are_closed_and_later_ones_served)
{
    int fds[CROWD];
    int serving;
    boot("--max-connections", "16");
    ck_assert_int_eq(health(ch, "", &serving, NULL), GRPC_STATUS_OK); /* ch holds one */
    crowd_open(fds, CROWD);
    /* 16 connections in all: at least CROWD - 15 of the crowd are refused */
    ck_assert_int_ge(crowd_closed_by_server(fds, CROWD, CROWD - 15), CROWD - 15);
    ck_assert_int_eq(health(ch, "", &serving, NULL), GRPC_STATUS_OK);
    ck_assert_int_eq(serving, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    crowd_close(fds, CROWD);
    new_client_is_served();
    stop_cleanly();
}
END_TEST

/* With a cap above what the fd limit allows, the process really runs out
 * of descriptors; accepting goes on once some are free again. */
START_TEST(test_new_clients_are_served_after_running_out_of_descriptors)
{
    int fds[CROWD];
    boot_nofile("--max-connections", "100000", 128, 128);
    crowd_open(fds, CROWD);
    /* 128 descriptors in all: most of the crowd cannot be held */
    ck_assert_int_ge(crowd_closed_by_server(fds, CROWD, CROWD - 128), CROWD - 128);
    crowd_close(fds, CROWD);
    new_client_is_served();
    stop_cleanly();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("service_fds");
    TCase *tc = tcase_create("fds");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_soft_fd_limit_is_raised_to_the_hard_limit);
    tcase_add_test(tc, test_connections_beyond_the_cap_are_closed_and_later_ones_served);
    tcase_add_test(tc, test_new_clients_are_served_after_running_out_of_descriptors);
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
