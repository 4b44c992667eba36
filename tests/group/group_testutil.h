/* Helpers of the worker-group suites: real attnd rank processes on
 * loopback, and identical request streams sent to a group and to a lone
 * worker so that their outputs can be compared.
 *
 * A gt_group is N attnd processes started through cu_server_start (the
 * client suites' launcher: ephemeral gRPC port through --port-file, dies
 * with the test) with --rank r --group 127.0.0.1:0,... --group-dir <tmp>:
 * every UCX listener binds a free port and publishes it in the group dir,
 * where its peers look it up, so parallel test runs never collide.
 * gt_group_start returns once every rank reports all peers connected
 * (GetStats), or fails after 30 s.
 */
#ifndef ATTND_GROUP_TESTUTIL_H
#define ATTND_GROUP_TESTUTIL_H

#include <stdint.h>

#include "attnd/client.h"
#include "client_testutil.h"

#define GT_MAX_RANKS 8

typedef struct gt_group {
    int n;
    char dir[64];
    char group[256];
    const char *flags[32];  /* the shared flags (model, shard, ...) */
    int n_flags;
    cu_server rank[GT_MAX_RANKS];
    attnd_client *c[GT_MAX_RANKS];
} gt_group;

/* Start n ranks with the shared flags (NULL-terminated) and connect a
 * client to each. 0 or -1 (with a note on stderr). */
int gt_group_start(gt_group *g, int n, const char *const *flags);
/* (Re)start rank r alone with the group's flags and connect to it. */
int gt_rank_start(gt_group *g, int r);
/* Wait until rank r sees `want` peers connected (GetStats), up to 30 s.
 * 0 or -1. */
int gt_wait_connected(gt_group *g, int r, uint32_t want);
/* Stop rank r (SIGSTOP: its connections stay open, nothing answers) and
 * wait until it has stopped; resume it (SIGCONT). 0 or -1. */
int gt_rank_pause(gt_group *g, int r);
void gt_rank_resume(gt_group *g, int r);
/* Kill rank r with SIGKILL (no cleanup: as a crash). */
void gt_rank_kill(gt_group *g, int r);
/* Stop every rank (SIGTERM) and free the clients; 0 when every rank that
 * was running exited 0. */
int gt_group_stop(gt_group *g);

/* The bearer token gt_connect* send (ranks run with --token-file); NULL
 * (the default): none. */
extern const char *gt_token;

/* Connect to a server with generous hang-guard deadlines. */
attnd_client *gt_connect(const cu_server *s);
/* Connect with a per-call deadline of deadline_ms, over `transport`. */
attnd_client *gt_connect_opts(const cu_server *s, int64_t deadline_ms,
                              attnd_transport transport);

/* Normwise relative error of `got` against `ref`, per row of d floats,
 * maximum over rows: max|got - ref| / max|ref| (absolute for a zero row;
 * NaN counts as infinite). */
double gt_max_row_err(const float *got, const float *ref, size_t rows, size_t d);

#endif /* ATTND_GROUP_TESTUTIL_H */
