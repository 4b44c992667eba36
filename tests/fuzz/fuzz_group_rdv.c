/* libFuzzer target: the group rendezvous port as a stranger reaches it
 * (issue 15 items 4 and 7). The input is every byte one connection sends
 * to a rank that holds a group secret; the rank's own code
 * (worker/group_rdv.c, attnd__grdv_tend over a real loopback socket)
 * answers. Whatever the bytes, the rank must not crash and must answer
 * only bare cards: a PROOF, or a refusal (an ANSWER with a nonzero
 * status), never its token, its UCX address or the group's settings, and
 * it must close the connection. (Getting past the proofs takes the
 * secret, which a fuzzer does not have: that is the point.)
 *
 * Built with -DATTND_FUZZ=ON; the corpus is replayed by CTest
 * (test_fuzz_replay_group_rdv). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "group_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_group_rdv: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                 \
        }                                                                            \
    } while (0)

#define RDV_INPUT_MAX 16384 /* less than a loopback socket buffer: one send */
#define TOKEN 0x5a5a1234abcd0001ull

static attnd_group *g;
static struct sockaddr_in where;

/* Rank 0 of 2 with a secret, its rendezvous port listening; no UCX (the
 * fuzzer never gets past the proofs, where UCX would come in). */
static void setup(void)
{
    socklen_t len = sizeof where;
    g = calloc(1, sizeof *g);
    CHECK(g);
    g->N = g->cfg.size = 2;
    g->me = g->cfg.rank = 0;
    g->cfg.has_secret = 1;
    memset(g->cfg.secret, 0x42, sizeof g->cfg.secret);
    g->token = TOKEN;
    g->rdv = calloc(ATTND__GRDV_MAX_CONNS, sizeof *g->rdv);
    CHECK(g->rdv);
    for (int i = 0; i < ATTND__GRDV_MAX_CONNS; i++)
        g->rdv[i].fd = -1;
    g->rdv_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(g->rdv_fd >= 0);
    where.sin_family = AF_INET;
    where.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(g->rdv_fd, (struct sockaddr *)&where, sizeof where) == 0);
    CHECK(listen(g->rdv_fd, 16) == 0);
    CHECK(getsockname(g->rdv_fd, (struct sockaddr *)&where, &len) == 0);
}

static int open_conns(void)
{
    int n = 0;
    for (int i = 0; i < ATTND__GRDV_MAX_CONNS; i++)
        n += g->rdv[i].fd >= 0;
    return n;
}

/* Every card in what the rank sent is bare and says nothing about it. */
static void check_answers(const unsigned char *p, size_t n)
{
    while (n > 0) {
        attnd__gcard c;
        CHECK(attnd__gcard_decode(p, n, &c) == 1);
        CHECK(c.kind == ATTND__GCARD_PROOF ||
              (c.kind == ATTND__GCARD_ANSWER && c.status != 0));
        CHECK(c.rank == 0 && c.token == 0 && c.size == 0 && c.mode == 0 &&
              c.n_layers == 0 && c.host.pid == 0 && c.host.pid_ns == 0);
        CHECK(n >= ATTND__GCARD_HDR + c.payload_len);
        p += ATTND__GCARD_HDR + c.payload_len;
        n -= ATTND__GCARD_HDR + c.payload_len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned char got[1 << 16];
    size_t have = 0;

    if (!g)
        setup();
    if (size > RDV_INPUT_MAX)
        return 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    CHECK(connect(fd, (struct sockaddr *)&where, sizeof where) == 0);
    if (size)
        CHECK(send(fd, data, size, MSG_NOSIGNAL) == (ssize_t)size);
    shutdown(fd, SHUT_WR);
    /* the rank reads it all, answers, and closes (on garbage, a refusal, or
     * our end of input); 2 s is the rank's own limit */
    attnd__grdv_tend(g);
    for (int i = 0; i < 200000 && open_conns(); i++)
        attnd__grdv_tend(g);
    CHECK(open_conns() == 0);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    for (;;) {
        ssize_t k = recv(fd, got + have, sizeof got - have, 0);
        if (k <= 0)
            break;
        have += (size_t)k;
    }
    close(fd);
    check_answers(got, have);
    return 0;
}
