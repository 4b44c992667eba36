/* common/attnd_ucxw.h's pure parts with a real UCX context and no peer:
 * which interface UCX is restricted to for a host, the check a peer's
 * worker address passes before UCX parses it, and the same-host rule. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <net/if.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "attnd_ucxw.h"

/* The interface of 127.0.0.1 (and ::1) is loopback's, whatever it is
 * called; a wildcard host means every interface (""). */
START_TEST(test_loopback_hosts_restrict_ucx_to_the_loopback_interface)
{
    char dev[IF_NAMESIZE + 1], dev6[IF_NAMESIZE + 1];
    ck_assert_int_eq(attnd_ucxw_net_device("127.0.0.1", dev, sizeof dev), 0);
    ck_assert_msg(dev[0] && if_nametoindex(dev) > 0, "127.0.0.1 -> \"%s\"", dev);
    ck_assert_int_eq(attnd_ucxw_net_device("[::1]", dev6, sizeof dev6), 0);
    ck_assert_str_eq(dev6, dev);
    ck_assert_int_eq(attnd_ucxw_net_device("0.0.0.0", dev, sizeof dev), 0);
    ck_assert_str_eq(dev, "");
    ck_assert_int_eq(attnd_ucxw_net_device("", dev, sizeof dev), 0);
    ck_assert_str_eq(dev, "");
    ck_assert_int_eq(attnd_ucxw_net_device("no-such-host.invalid", dev, sizeof dev), -1);
}
END_TEST

/* A worker's own address passes; anything too short, too long or of a
 * version UCX does not know (it would abort on it) does not. */
START_TEST(test_only_plausible_worker_addresses_reach_ucx)
{
    attnd_ucxw_config wc = {.thread_mode = UCS_THREAD_MODE_SINGLE, .net_host = "127.0.0.1"};
    attnd_ucxw w;
    attnd_error err;
    void *addr;
    size_t len;
    unsigned char junk[ATTND_UCXW_ADDR_MAX + 1];

    ck_assert_int_eq(attnd_ucxw_init(&w, &wc, "test", &err), ATTND_OK);
    ck_assert_int_eq(attnd_ucxw_address(&w, &addr, &len, &err), ATTND_OK);
    ck_assert_int_eq(attnd_ucxw_address_check(addr, len), 0);
    ck_assert_int_eq(attnd_ucxw_address_check(addr, 9), -1);
    ck_assert_int_eq(attnd_ucxw_address_check(NULL, len), -1);
    memset(junk, 0, sizeof junk);
    memcpy(junk, addr, len);
    ck_assert_int_eq(attnd_ucxw_address_check(junk, sizeof junk), -1);
    junk[0] = 0x0f; /* version 15 */
    ck_assert_int_eq(attnd_ucxw_address_check(junk, len), -1);
    ucp_ep_h ep = NULL;
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_ucxw_connect(&w, junk, len, ATTND_UCXW_PEER_CHECKED, NULL, NULL,
                                        "peer", &ep, &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "peer"));
    ck_assert_ptr_null(ep);
    free(addr);
    attnd_ucxw_cleanup(&w);
}
END_TEST

/* 0 when 127.0.0.1:port can be bound now, else the errno. */
static int loopback_bind_errno(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0), e = 0;
    ck_assert_int_ge(fd, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        e = errno;
    close(fd);
    return e;
}

/* --ucx-listen HOST:PORT: UCX's TCP transport listens on PORT. The port
 * is taken below the kernel's ephemeral range, which the port-0 binds of
 * every other test never use, and checked free first. */
START_TEST(test_a_requested_tcp_port_is_the_one_ucx_listens_on)
{
    int lo = 32768, hi = 60999, port = 0;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%d %d", &lo, &hi) != 2)
            lo = 32768;
        fclose(f);
    }
    if (getenv("UCX_TCP_PORT_RANGE") || getenv("UCX_TLS") || lo < 3000)
        return; /* the environment decides, or no room below the range */
    for (int i = 0; i < 100 && !port; i++) {
        int p = lo - 1000 - (int)((getpid() + 7 * i) % 1000);
        if (loopback_bind_errno(p) == 0)
            port = p;
    }
    ck_assert_int_gt(port, 0);

    attnd_ucxw_config wc = {.thread_mode = UCS_THREAD_MODE_SINGLE, .net_host = "127.0.0.1",
                            .tcp_port = port};
    attnd_ucxw w;
    attnd_error err;
    ck_assert_int_eq(attnd_ucxw_init(&w, &wc, "test", &err), ATTND_OK);
    ck_assert_msg(loopback_bind_errno(port) == EADDRINUSE,
                  "UCX does not listen on the requested port %d", port);
    attnd_ucxw_cleanup(&w);
    ck_assert_int_eq(loopback_bind_errno(port), 0);
}
END_TEST

START_TEST(test_same_host_needs_boot_id_namespaces_and_uid_to_match)
{
    attnd_ucxw_host a, b;
    attnd_ucxw_host_self(&a);
    ck_assert_int_eq(a.pid, getpid());
    b = a;
    ck_assert_int_eq(attnd_ucxw_host_same(&a, &b), 1);
    b.boot_id[0] ^= 1;
    ck_assert_int_eq(attnd_ucxw_host_same(&a, &b), 0);
    b = a;
    b.pid_ns++;
    ck_assert_int_eq(attnd_ucxw_host_same(&a, &b), 0);
    b = a;
    b.ipc_ns++;
    ck_assert_int_eq(attnd_ucxw_host_same(&a, &b), 0);
    b = a;
    b.net_ns++;
    ck_assert_int_eq(attnd_ucxw_host_same(&a, &b), 0);
    b = a;
    b.uid++;
    ck_assert_int_eq(attnd_ucxw_host_same(&a, &b), 0);
    memset(&b, 0, sizeof b); /* a peer that sent nothing */
    ck_assert_int_eq(attnd_ucxw_host_same(&b, &b), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ucxw");
    TCase *tc = tcase_create("ucxw");
    tcase_add_test(tc, test_loopback_hosts_restrict_ucx_to_the_loopback_interface);
    tcase_add_test(tc, test_only_plausible_worker_addresses_reach_ucx);
    tcase_add_test(tc, test_a_requested_tcp_port_is_the_one_ucx_listens_on);
    tcase_add_test(tc, test_same_host_needs_boot_id_namespaces_and_uid_to_match);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
